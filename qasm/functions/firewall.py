"""The firewall's admission rule for a new connection (RFC 9312 §3.1.2, §4.7).

A new client→service 5-tuple is admitted only when its first datagram starts with a QUIC
client Initial of a version the middlebox knows, in a datagram of at least 1200 bytes
(RFC 9000 §14.1). RFC 9312 §3.1.2 warns that first-byte bits may change meaning across
versions, so the version is read first and the packet type only interpreted for known ones.
The rest of the firewall (service→client only on admitted paths, drop everything else) is
in the pipeline, because which paths count as admitted depends on the variant.

Optionally the firewall also decides on the server name (SNI) of the decrypted ClientHello
(`SniPolicy`): Initial packets are protected with keys anyone can derive from the DCID
(RFC 9001 §5.2), so an on-path middlebox can read the ClientHello (RFC 9312 §3.3).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from qasm.controller.events import Reason
from qasm.functions.base import MiddleboxFunction, Refusal
from qasm.wire.clienthello import ClientHelloAssembler
from qasm.wire.errors import WireError
from qasm.wire.header import HeaderForm, PacketType, parse_datagram

# RFC 9000 §14.1: a client MUST expand datagrams carrying Initial packets to >= 1200 bytes.
MIN_INITIAL_DATAGRAM = 1200


def client_initial_problem(payload: bytes) -> str | None:
    """None if `payload` starts with a QUIC v1/v2 client Initial, else why it does not."""
    try:
        first = parse_datagram(payload, short_dcid_length=0)[0]
    except WireError as exc:
        return f"not a QUIC packet ({exc})"
    if first.form is HeaderForm.SHORT:
        return "short header (not a connection's first packet)"
    if first.packet_type is None:
        return f"long header of unknown version 0x{first.version:08x}"
    if first.packet_type is not PacketType.INITIAL:
        return f"long header type {first.packet_type}, not Initial"
    if len(payload) < MIN_INITIAL_DATAGRAM:
        return f"Initial in a {len(payload)}-byte datagram, below {MIN_INITIAL_DATAGRAM}"
    return None


@dataclass(frozen=True)
class SniPolicy:
    """Allow/deny lists for the server name a client asks for in its ClientHello.

    A pattern is a host name, or `*.` and a domain, which matches that domain's subdomains
    (not the domain itself), as in certificates. Names compare case-insensitively, without a
    trailing dot. The deny list wins; a non-empty allow list admits only what it matches, so
    a ClientHello without SNI is then refused too.
    """

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()

    def problem(self, sni: str | None) -> str | None:
        """None if a connection asking for `sni` may open, else why not."""
        name = sni.rstrip(".").lower() if sni else None
        if name is not None:
            for pattern in self.deny:
                if sni_matches(pattern, name):
                    return f"SNI {sni!r} matches sni_deny {pattern!r}"
        if self.allow and (name is None or not any(sni_matches(p, name) for p in self.allow)):
            return f"SNI {sni!r} not in sni_allow" if sni else "no SNI, and sni_allow is set"
        return None


def sni_matches(pattern: str, name: str) -> bool:
    pattern = pattern.rstrip(".").lower()
    if pattern.startswith("*."):
        return name.endswith(pattern[1:]) and len(name) > len(pattern) - 1
    return name == pattern


@dataclass(slots=True)
class FirewallState:
    """A connection whose SNI is still to be read: the ClientHello's crypto stream so far
    (contiguous prefix and out-of-order fragments) and the DCID its Initial keys derive from
    (RFC 9001 §5.2). Empty once the name is decided."""

    sni_pending: bool = False
    original_dcid: bytes | None = None
    hello_prefix: bytes = b""
    hello_pending: dict[int, bytes] = field(default_factory=dict)


class Firewall(MiddleboxFunction):
    """Admits a new connection only on a QUIC Initial; with an SniPolicy, only once the
    ClientHello's server name is allowed (no fast path until then, so every Initial of the
    connection comes to the controller)."""

    name = "firewall"
    State = FirewallState

    def __init__(self, sni: SniPolicy | None = None) -> None:
        self.sni = sni

    def admit(self, initial_problem: str | None) -> Refusal | None:
        return Refusal(Reason.NOT_AN_INITIAL, initial_problem) if initial_problem else None

    def opened(self, connection, payload: bytes) -> None:
        if self.sni is not None:
            self.state(connection).sni_pending = True

    def reads_first_packets(self) -> bool:
        return self.sni is not None  # the SNI policy reads the ClientHello

    def pending(self, connection) -> bool:
        state = connection.firewall
        return bool(state and state.sni_pending)

    def inspect(self, connection, payload: bytes) -> Refusal | Reason | None:
        """Adds a client datagram's Initials to the ClientHello; once complete, the SNI
        policy decides."""
        if not self.pending(connection):
            return None
        state: FirewallState = self.state(connection)
        hello = None
        try:
            assembler = ClientHelloAssembler.resume(state.hello_prefix, state.hello_pending)
            for header in parse_datagram(payload, short_dcid_length=0):
                if header.packet_type is PacketType.INITIAL:
                    if state.original_dcid is None:
                        state.original_dcid = header.dcid
                    hello = assembler.add_packet(payload, header, original_dcid=state.original_dcid)
        except WireError as exc:
            return Refusal(Reason.CLIENT_HELLO_UNREADABLE, f"ClientHello unreadable ({exc})")
        if hello is None:
            state.hello_prefix, state.hello_pending = assembler.saved()
            return Reason.SNI_PENDING
        connection.firewall = FirewallState()  # decided: drop the buffered bytes
        problem = self.sni.problem(hello.sni)
        if problem:
            return Refusal(Reason.SNI_REFUSED, problem)
        return Reason.SNI_ALLOWED
