"""Client Agent ↔ Tracking Agent messages, authenticated with HMAC-SHA256.

A datagram is a 32-byte HMAC-SHA256 tag followed by a UTF-8 JSON body; the tag covers the
body bytes exactly, so nothing depends on JSON canonicalisation. Every body carries the
protocol version, the client's id and a counter that strictly increases per client (replay
protection). Bodies:

- `announce`: before migrating, the connection (the DCID the client sends to now), the DCID it
  will use next (the same one for a rebinding, the next spare server CID for active migration),
  the old and new client address/port and, optionally, a path the client no longer uses
  (`retire`): a client that migrates faster than its old paths go quiet retires each one with
  its next announcement, one message per migration instead of two.
- `retire`: the client no longer uses a path of the connection.
- `admit`: before a new connection's first packet, the path (client address/port) it will
  open on: the hops decide on it and install its rules now, so its Initial does not wait for
  the controller (agent mode `ahead`). The server has issued no CID yet, so the path alone
  names the connection, as it does in a first announcement.
- `ack`: the Tracking Agent's answer to a counter: accepted, or rejected with the reason.

Datagrams are bounded (MAX_DATAGRAM) and every field is checked, so malformed input ends in
AgentMessageError with the field named.
"""

from __future__ import annotations

import hmac
import json
import socket
from dataclasses import dataclass

PROTOCOL_VERSION = 1
MAX_DATAGRAM = 512
TAG_SIZE = 32
MAX_CID_BYTES = 20  # RFC 9000 §17.2: connection IDs are at most 20 bytes
MAX_CLIENT_ID = 32
Address = tuple[str, int]


class AgentMessageError(ValueError):
    """A datagram is not a valid agent message; the message names the field."""


@dataclass(frozen=True)
class Announce:
    client: str
    counter: int
    connection_cid: bytes
    next_cid: bytes
    old: Address
    new: Address
    retire: Address | None = None


@dataclass(frozen=True)
class Retire:
    client: str
    counter: int
    connection_cid: bytes
    path: Address


@dataclass(frozen=True)
class Admit:
    client: str
    counter: int
    path: Address


@dataclass(frozen=True)
class Ack:
    client: str
    counter: int
    accepted: bool
    reason: str


Message = Announce | Retire | Admit | Ack


def derive_client_key(secret: bytes, client: str) -> bytes:
    """Per-client key from the scenario's secret: HMAC-SHA256(secret, client id)."""
    return _tag(secret, client.encode())


def _tag(key: bytes, body: bytes) -> bytes:
    # hmac.digest with the digest named: OpenSSL's one-shot HMAC, without building an
    # hmac.HMAC object and its two hash objects in Python for every report and ack.
    return hmac.digest(key, body, "sha256")


def _body(message: Message) -> dict:
    body = {"v": PROTOCOL_VERSION, "client": message.client, "counter": message.counter}
    if isinstance(message, Announce):
        body.update(
            type="announce",
            conn=message.connection_cid.hex(),
            next_cid=message.next_cid.hex(),
            old=list(message.old),
            new=list(message.new),
        )
        if message.retire is not None:
            body["retire"] = list(message.retire)
    elif isinstance(message, Retire):
        body.update(type="retire", conn=message.connection_cid.hex(), path=list(message.path))
    elif isinstance(message, Admit):
        body.update(type="admit", path=list(message.path))
    else:
        body.update(type="ack", accepted=message.accepted, reason=message.reason)
    return body


def seal(message: Message, key: bytes) -> bytes:
    body = json.dumps(_body(message), separators=(",", ":")).encode()
    datagram = _tag(key, body) + body
    if len(datagram) > MAX_DATAGRAM:
        raise AgentMessageError(f"datagram: {len(datagram)} bytes, expected <= {MAX_DATAGRAM}")
    return datagram


def _parse_body(datagram: bytes) -> dict:
    if len(datagram) > MAX_DATAGRAM:
        raise AgentMessageError(f"datagram: {len(datagram)} bytes, expected <= {MAX_DATAGRAM}")
    if len(datagram) <= TAG_SIZE:
        raise AgentMessageError(f"datagram: {len(datagram)} bytes, expected a tag and a body")
    try:
        body = json.loads(datagram[TAG_SIZE:].decode())
    except (UnicodeDecodeError, ValueError) as exc:
        raise AgentMessageError(f"body: expected UTF-8 JSON ({exc})") from exc
    if not isinstance(body, dict):
        raise AgentMessageError("body: expected a JSON object")
    return body


@dataclass(frozen=True)
class Sealed:
    """A datagram's body, parsed once: who it claims to be from, before authentication (to
    pick the key to verify with), then `open(key)`."""

    datagram: bytes
    body: dict

    @property
    def client(self) -> str:
        client = self.body.get("client")
        if not isinstance(client, str) or not 0 < len(client) <= MAX_CLIENT_ID:
            raise AgentMessageError(f"client: expected a string of 1..{MAX_CLIENT_ID} characters")
        return client

    def open(self, key: bytes) -> Message:
        """Verifies the tag, then checks every field."""
        expected = _tag(key, self.datagram[TAG_SIZE:])
        if not hmac.compare_digest(expected, self.datagram[:TAG_SIZE]):
            raise AgentMessageError("tag: HMAC does not verify (forged or wrong key)")
        return _message(self.body)


def unseal(datagram: bytes) -> Sealed:
    return Sealed(datagram, _parse_body(datagram))


def peek_client(datagram: bytes) -> str:
    """The claimed client id, read before authentication to pick the key to verify with."""
    return unseal(datagram).client


def open_sealed(datagram: bytes, key: bytes) -> Message:
    """Verifies the tag, then parses and checks every field."""
    return unseal(datagram).open(key)


def _field(body: dict, name: str, kind: type):
    value = body.get(name)
    if type(value) is not kind:
        raise AgentMessageError(f"{name}: expected {kind.__name__}, got {value!r:.40}")
    return value


def _cid(body: dict, name: str) -> bytes:
    text = _field(body, name, str)
    try:
        cid = bytes.fromhex(text)
    except ValueError as exc:
        raise AgentMessageError(f"{name}: expected hex, got {text!r:.40}") from exc
    if not 0 < len(cid) <= MAX_CID_BYTES:
        raise AgentMessageError(f"{name}: {len(cid)} bytes, expected 1..{MAX_CID_BYTES}")
    return cid


def _address(body: dict, name: str) -> Address:
    value = body.get(name)
    if not (isinstance(value, list) and len(value) == 2):
        raise AgentMessageError(f"{name}: expected [ipv4, port]")
    ip, port = value
    try:
        socket.inet_pton(socket.AF_INET, ip)  # dotted quad only, as ipaddress, but in C
    except (OSError, TypeError) as exc:
        raise AgentMessageError(f"{name}: expected an IPv4 address, got {ip!r:.40}") from exc
    if type(port) is not int or not 0 < port < 65536:
        raise AgentMessageError(f"{name}: expected a port 1..65535, got {port!r:.20}")
    return ip, port


def _message(body: dict) -> Message:
    if body.get("v") != PROTOCOL_VERSION:
        raise AgentMessageError(f"v: expected {PROTOCOL_VERSION}, got {body.get('v')!r:.20}")
    client = _field(body, "client", str)
    counter = _field(body, "counter", int)
    if not 0 <= counter < 2**63:
        raise AgentMessageError(f"counter: expected 0..2^63-1, got {counter}")
    kind = body.get("type")
    if kind == "announce":
        return Announce(
            client, counter, _cid(body, "conn"), _cid(body, "next_cid"),
            _address(body, "old"), _address(body, "new"),
            _address(body, "retire") if "retire" in body else None,
        )  # fmt: skip
    if kind == "retire":
        return Retire(client, counter, _cid(body, "conn"), _address(body, "path"))
    if kind == "admit":
        return Admit(client, counter, _address(body, "path"))
    if kind == "ack":
        return Ack(client, counter, _field(body, "accepted", bool), _field(body, "reason", str))
    raise AgentMessageError(f"type: expected announce, retire, admit or ack, got {kind!r:.20}")
