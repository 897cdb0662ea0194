"""Connection migration judged from the wire, the way quic-interop-runner judges it.

quic-interop-runner's rebind-port / rebind-addr / connectionmigration cases read the run's
pcaps with the key log and check that every new path was validated (PATH_CHALLENGE) and, for
an active migration, that the client's first packet on a new path carried a new DCID. This
module does the same for one connection of a testbed run, from the datagrams of that
connection in time order (each with its 4-tuple and direction), the client's key log and the
cipher suite, and returns four verdicts, each True / False / None (cannot be judged) with a
short reason:

- `path_challenge_on_new_path`: every client 4-tuple after the first carried a
  PATH_CHALLENGE, in either direction (RFC 9000 §8.2, §9.3). Needs decryption.
- `new_dcid_after_active`: after an active migration the client's first packet on each new
  path used a DCID it had not sent before (RFC 9000 §9.5). Judged only for `active=True`.
- `old_dcid_on_new_path`: the client sent, on a new path, a DCID it had sent on another path:
  the linkability RFC 9000 §9.5 forbids when the client itself moves. True means the
  violation happened. Judged only for `active=True` (a NAT rebinding keeps the DCID by
  design; the reason still says what was seen).
- `server_switched_dcid`: after each move of the client, the server sent with a DCID it had
  not used before the move (aioquic switches only when the client does).

DCIDs are cleartext once the CID lengths are known (learnt from the SCIDs of the long
headers, given, or found by trial decryption); only the PATH_CHALLENGE verdict needs the
keys. `datagrams_from_pcaps` is the I/O half: it reads host-interface pcaps.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from qasm.wire.capture import read_udp_datagrams
from qasm.wire.errors import WireError
from qasm.wire.frames import PathChallengeFrame, PathResponseFrame
from qasm.wire.header import (
    LONG_HEADER_BIT,
    MAX_CID_LENGTH_V1,
    QUIC_V1,
    HeaderForm,
    PacketType,
    parse_datagram,
)
from qasm.wire.keylog import ConnectionSecrets, KeyLog, parse_key_log
from qasm.wire.onertt import CipherSuite, HelloObserver, OneRttObserver

Endpoint = tuple[str, int]
Path = tuple[Endpoint, Endpoint]  # (client endpoint, server endpoint)
# Short-header datagrams tried per candidate (key, DCID length) when they must be found by
# trial: a few, in case the first ones were corrupted on the wire.
TRIAL_DATAGRAMS = 4


@dataclass(frozen=True, slots=True)
class ConnectionDatagram:
    """One UDP datagram of the connection as captured: when, which way, which 4-tuple."""

    time: float
    src: Endpoint
    dst: Endpoint
    from_client: bool
    payload: bytes


@dataclass(frozen=True, slots=True)
class Verdict:
    value: bool | None
    reason: str


@dataclass(frozen=True, slots=True)
class PathReport:
    """What one client 4-tuple carried. DCIDs in order of first use."""

    client: Endpoint
    server: Endpoint
    first_seen: float
    client_dcids: tuple[bytes, ...]
    server_dcids: tuple[bytes, ...]
    path_challenges: int
    path_responses: int
    opened: int
    undecryptable: int


@dataclass(frozen=True, slots=True)
class MigrationVerdicts:
    path_challenge_on_new_path: Verdict
    new_dcid_after_active: Verdict
    old_dcid_on_new_path: Verdict
    server_switched_dcid: Verdict
    paths: tuple[PathReport, ...]
    cipher_suite: CipherSuite | None
    client_cid_length: int | None
    server_cid_length: int | None
    opened: int
    undecryptable: int
    notes: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: verdicts as {value, reason}, bytes as hex, endpoints as "host:port"."""
        verdicts = {
            name: {"value": verdict.value, "reason": verdict.reason}
            for name, verdict in (
                ("path_challenge_on_new_path", self.path_challenge_on_new_path),
                ("new_dcid_after_active", self.new_dcid_after_active),
                ("old_dcid_on_new_path", self.old_dcid_on_new_path),
                ("server_switched_dcid", self.server_switched_dcid),
            )
        }
        return {
            **verdicts,
            "paths": [
                {
                    "client": _endpoint_text(p.client),
                    "server": _endpoint_text(p.server),
                    "first_seen": p.first_seen,
                    "client_dcids": [d.hex() for d in p.client_dcids],
                    "server_dcids": [d.hex() for d in p.server_dcids],
                    "path_challenges": p.path_challenges,
                    "path_responses": p.path_responses,
                    "opened": p.opened,
                    "undecryptable": p.undecryptable,
                }
                for p in self.paths
            ],
            "cipher_suite": None if self.cipher_suite is None else self.cipher_suite.name,
            "client_cid_length": self.client_cid_length,
            "server_cid_length": self.server_cid_length,
            "opened": self.opened,
            "undecryptable": self.undecryptable,
            "notes": list(self.notes),
        }


@dataclass
class _PathState:
    client: Endpoint
    server: Endpoint
    first_seen: float
    client_dcids: dict[bytes, None] = field(default_factory=dict)
    server_dcids: dict[bytes, None] = field(default_factory=dict)
    path_challenges: int = 0
    path_responses: int = 0
    opened: int = 0
    undecryptable: int = 0

    def report(self) -> PathReport:
        return PathReport(
            client=self.client,
            server=self.server,
            first_seen=self.first_seen,
            client_dcids=tuple(self.client_dcids),
            server_dcids=tuple(self.server_dcids),
            path_challenges=self.path_challenges,
            path_responses=self.path_responses,
            opened=self.opened,
            undecryptable=self.undecryptable,
        )


def check_migration(
    datagrams: Iterable[ConnectionDatagram],
    key_log: KeyLog | ConnectionSecrets | str | bytes | None,
    cipher_suite: int | None = None,
    *,
    active: bool | None = None,
    client_cid_length: int | None = None,
    server_cid_length: int | None = None,
    version: int = QUIC_V1,
) -> MigrationVerdicts:
    """Judge one connection's migration from its captured datagrams.

    `datagrams`: the connection's datagrams in time order, both directions (anything with
    `time`, `src`, `dst`, `from_client`, `payload`, e.g. `ConnectionDatagram`).
    `key_log`: the client's key log (text, bytes, parsed) or one connection's secrets; with
    several connections in the log, the ClientHello's random picks the entry when the
    Initials were captured, else trial decryption does. `cipher_suite`: the TLS code point,
    or None to read it from the ServerHello or find it by trial. `active`: whether the
    migration was active (True), a rebinding (False) or unknown (None): the two DCID
    verdicts need it. CID lengths: given, else learnt from long headers, else by trial.
    """
    datagrams = list(datagrams)
    notes: list[str] = []
    hellos = HelloObserver()
    learnt_client, learnt_server = _learn_cid_lengths(datagrams, hellos)
    client_cid_length = client_cid_length if client_cid_length is not None else learnt_client
    server_cid_length = server_cid_length if server_cid_length is not None else learnt_server
    if cipher_suite is None and hellos.cipher_suite is not None:
        cipher_suite = hellos.cipher_suite
        notes.append(f"cipher suite {hellos.cipher_suite.name} read from the ServerHello")

    observers = _observers(
        datagrams,
        key_log,
        cipher_suite,
        hellos.client_random,
        client_cid_length,
        server_cid_length,
        version,
        notes,
    )
    to_server, to_client = observers
    if to_server is not None:
        server_cid_length = to_server.dcid_length
    if to_client is not None:
        client_cid_length = to_client.dcid_length

    paths: dict[Path, _PathState] = {}
    # (time, path, dcid) of every client datagram, and (time, dcid) of every server one.
    client_sends: list[tuple[float, Path, bytes | None]] = []
    server_sends: list[tuple[float, bytes | None]] = []
    opened = undecryptable = 0
    for datagram in datagrams:
        path: Path = (
            (datagram.src, datagram.dst) if datagram.from_client else (datagram.dst, datagram.src)
        )
        state = paths.get(path)
        if state is None:
            state = paths[path] = _PathState(path[0], path[1], datagram.time)
        observer = to_server if datagram.from_client else to_client
        if observer is not None:
            # With keys that work, a datagram that does not authenticate (corrupted, or
            # forged onto the client's 4-tuple) is counted, not taken as the client's.
            try:
                packet = observer.open(datagram.payload)
            except WireError:
                state.undecryptable += 1
                undecryptable += 1
                continue
            if packet is not None:
                state.opened += 1
                opened += 1
                for frame in packet.frames:
                    if isinstance(frame, PathChallengeFrame):
                        state.path_challenges += 1
                    elif isinstance(frame, PathResponseFrame):
                        state.path_responses += 1
        dcid_length = server_cid_length if datagram.from_client else client_cid_length
        dcid = _datagram_dcid(datagram.payload, dcid_length)
        if datagram.from_client:
            client_sends.append((datagram.time, path, dcid))
            if dcid is not None:
                state.client_dcids.setdefault(dcid, None)
        else:
            server_sends.append((datagram.time, dcid))
            if dcid is not None:
                state.server_dcids.setdefault(dcid, None)

    client_paths = _client_paths_in_order(client_sends)
    cipher = None
    if to_server is not None:
        cipher = to_server.cipher_suite
    if cipher is None and to_client is not None:
        cipher = to_client.cipher_suite
    result = dict(
        paths=tuple(paths[p].report() for p in paths),
        cipher_suite=cipher,
        client_cid_length=client_cid_length,
        server_cid_length=server_cid_length,
        opened=opened,
        undecryptable=undecryptable,
        notes=tuple(notes),
    )
    if len(client_paths) < 2:
        none = Verdict(None, "no migration seen: the client used one 4-tuple")
        if not client_paths:
            none = Verdict(None, "no datagram from the client")
        return MigrationVerdicts(
            path_challenge_on_new_path=none,
            new_dcid_after_active=none,
            old_dcid_on_new_path=none,
            server_switched_dcid=none,
            **result,
        )
    new_paths = client_paths[1:]
    moves = _moves(client_sends)
    return MigrationVerdicts(
        path_challenge_on_new_path=_path_challenge_verdict(
            [paths[p] for p in new_paths],
            directions=(to_server is not None) + (to_client is not None),
        ),
        new_dcid_after_active=_new_dcid_verdict(client_sends, new_paths, active, server_cid_length),
        old_dcid_on_new_path=_old_dcid_verdict(client_sends, new_paths, active, server_cid_length),
        server_switched_dcid=_server_switch_verdict(server_sends, moves, client_cid_length),
        **result,
    )


# --- verdicts -----------------------------------------------------------------------------


def _path_challenge_verdict(new_paths: list[_PathState], *, directions: int) -> Verdict:
    """`directions`: how many directions decrypt (0, 1 or 2); a PATH_CHALLENGE may come from
    either side, so its absence is only known when both do."""
    if directions == 0:
        return Verdict(None, "not decryptable: no usable 1-RTT keys for this connection")
    missing, unknown = [], []
    for state in new_paths:
        if state.path_challenges:
            continue
        if directions < 2 or state.opened == 0 or state.undecryptable:
            unknown.append(state)
        else:
            missing.append(state)
    if missing:
        return Verdict(
            False,
            "no PATH_CHALLENGE on " + ", ".join(_path_text(s) for s in missing),
        )
    if unknown:
        return Verdict(
            None,
            "no PATH_CHALLENGE found on "
            + ", ".join(_path_text(s) for s in unknown)
            + ", where some packets (or one direction) did not decrypt",
        )
    answered = sum(1 for s in new_paths if s.path_responses)
    return Verdict(
        True,
        f"PATH_CHALLENGE on all {len(new_paths)} new path(s); PATH_RESPONSE on {answered} of them",
    )


def _new_dcid_verdict(
    client_sends: list[tuple[float, Path, bytes | None]],
    new_paths: list[Path],
    active: bool | None,
    dcid_length: int | None,
) -> Verdict:
    if active is None:
        return Verdict(None, "migration kind not given (active=None)")
    if not active:
        return Verdict(None, "not an active migration (a rebinding keeps its DCID)")
    if dcid_length is None:
        return Verdict(None, "server CID length unknown: client DCIDs cannot be read")
    reused = []
    for path in new_paths:
        used_before, first = _before_and_first(client_sends, path)
        if first is None:
            return Verdict(None, f"no readable client DCID on {_path_pair_text(path)}")
        if first in used_before:
            reused.append(f"{_path_pair_text(path)} started with used DCID {first.hex()}")
    if reused:
        return Verdict(False, "; ".join(reused))
    return Verdict(True, f"a fresh DCID on each of {len(new_paths)} new path(s)")


def _old_dcid_verdict(
    client_sends: list[tuple[float, Path, bytes | None]],
    new_paths: list[Path],
    active: bool | None,
    dcid_length: int | None,
) -> Verdict:
    if dcid_length is None:
        return Verdict(None, "server CID length unknown: client DCIDs cannot be read")
    # For each new path: client DCIDs that had been sent on a different path before.
    seen_on: dict[bytes, set[Path]] = {}
    violations: dict[Path, list[bytes]] = {}
    for _, path, dcid in client_sends:
        if dcid is None:
            continue
        elsewhere = seen_on.get(dcid, set()) - {path}
        if path in new_paths and elsewhere and dcid not in violations.get(path, []):
            violations.setdefault(path, []).append(dcid)
        seen_on.setdefault(dcid, set()).add(path)
    seen = "; ".join(
        f"{_path_pair_text(p)} reused {', '.join(d.hex() for d in dcids)}"
        for p, dcids in violations.items()
    )
    if active is None:
        return Verdict(None, "migration kind not given (active=None); " + (seen or "no reuse"))
    if not active:
        return Verdict(
            None,
            "a rebinding keeps its DCID by design (RFC 9000 §9.5 forbids reuse only when the"
            " client moves itself); " + (seen or "no reuse seen"),
        )
    if violations:
        return Verdict(True, seen)
    return Verdict(False, f"no DCID of an old path on {len(new_paths)} new path(s)")


def _server_switch_verdict(
    server_sends: list[tuple[float, bytes | None]],
    moves: list[tuple[float, Path]],
    dcid_length: int | None,
) -> Verdict:
    if dcid_length is None:
        return Verdict(None, "client CID length unknown: server DCIDs cannot be read")
    switched, kept, unknown = [], [], []
    bounds = [t for t, _ in moves[1:]] + [float("inf")]
    for (moved_at, path), until in zip(moves, bounds, strict=True):
        before = {d for t, d in server_sends if t < moved_at and d is not None}
        after = [d for t, d in server_sends if moved_at <= t < until and d is not None]
        where = f"move to {_path_pair_text(path)}"
        if not before or not after:
            unknown.append(where)
        elif any(d not in before for d in after):
            switched.append(where)
        else:
            kept.append(where)
    if kept:
        return Verdict(False, "server kept its old DCID after " + ", ".join(kept))
    if unknown:
        return Verdict(None, "no server short header before or after " + ", ".join(unknown))
    return Verdict(True, f"server used a new DCID after each of {len(switched)} move(s)")


# --- helpers ------------------------------------------------------------------------------


def _client_paths_in_order(client_sends) -> list[Path]:
    return list(dict.fromkeys(path for _, path, _ in client_sends))


def _moves(client_sends) -> list[tuple[float, Path]]:
    """Each time the client first sends on a 4-tuple it had not used: a datagram on an
    earlier path (an ACK or PATH_RESPONSE from the old socket, still open for the server's
    late datagrams) is not a move back."""
    moves = []
    used: set[Path] = set()
    for time, path, _ in client_sends:
        if used and path not in used:
            moves.append((time, path))
        used.add(path)
    return moves


def _before_and_first(client_sends, path: Path) -> tuple[set[bytes], bytes | None]:
    """DCIDs the client sent before it first used `path`, and its first DCID there."""
    used: set[bytes] = set()
    for _, sent_on, dcid in client_sends:
        if sent_on == path:
            if dcid is not None:
                return used, dcid
            continue
        if dcid is not None:
            used.add(dcid)
    return used, None


def _datagram_dcid(payload: bytes, short_dcid_length: int | None) -> bytes | None:
    """The DCID of the datagram's first packet, None when it cannot be read."""
    if not payload:
        return None
    if payload[0] & LONG_HEADER_BIT:
        if len(payload) < 6 or len(payload) < 6 + payload[5]:
            return None
        return payload[6 : 6 + payload[5]]
    if short_dcid_length is None or len(payload) <= short_dcid_length:
        return None
    return payload[1 : 1 + short_dcid_length]


def _learn_cid_lengths(
    datagrams: Sequence[ConnectionDatagram], hellos: HelloObserver
) -> tuple[int | None, int | None]:
    """CID lengths from the SCIDs of each side's long headers (RFC 9312 §2.1), feeding the
    Initials to `hellos` on the way (client random, cipher suite)."""
    client_length = server_length = None
    for datagram in datagrams:
        payload = datagram.payload
        if not payload or not payload[0] & LONG_HEADER_BIT:
            continue
        with contextlib.suppress(WireError):
            hellos.add(payload, from_client=datagram.from_client)
        dcid_length = min(payload[5], MAX_CID_LENGTH_V1) if len(payload) > 5 else 0
        try:
            headers = parse_datagram(payload, dcid_length)
        except WireError:
            continue
        for header in headers:
            if header.form is not HeaderForm.LONG or header.packet_type in (
                None,
                PacketType.VERSION_NEGOTIATION,
            ):
                continue
            if datagram.from_client and client_length is None:
                client_length = len(header.scid)
            elif not datagram.from_client and server_length is None:
                server_length = len(header.scid)
        if client_length is not None and server_length is not None and hellos.complete:
            break
    return client_length, server_length


def _observers(
    datagrams: Sequence[ConnectionDatagram],
    key_log: KeyLog | ConnectionSecrets | str | bytes | None,
    cipher_suite: int | None,
    client_random: bytes | None,
    client_cid_length: int | None,
    server_cid_length: int | None,
    version: int,
    notes: list[str],
) -> tuple[OneRttObserver | None, OneRttObserver | None]:
    """(client-to-server, server-to-client) observers, or None where no key fits."""
    if key_log is None:
        notes.append("no key log")
        return None, None
    if isinstance(key_log, str | bytes):
        key_log = parse_key_log(key_log)
    if isinstance(key_log, ConnectionSecrets):
        candidates = [key_log]
    else:
        candidates = key_log.with_one_rtt()
        if client_random is not None and key_log.get(client_random) is not None:
            candidates = [key_log.get(client_random)]
            notes.append(f"key log entry chosen by the ClientHello random {client_random.hex()}")
    candidates = [c for c in candidates if c.client_1rtt is not None or c.server_1rtt is not None]
    if not candidates:
        notes.append("the key log has no 1-RTT secrets")
        return None, None
    from_client = [d.payload for d in datagrams if d.from_client and _short_first(d.payload)]
    from_server = [d.payload for d in datagrams if not d.from_client and _short_first(d.payload)]

    def find(
        secrets_of: list[tuple[ConnectionSecrets, bytes]],
        payloads: list[bytes],
        dcid_length: int | None,
    ) -> tuple[ConnectionSecrets, OneRttObserver] | None:
        lengths = [dcid_length] if dcid_length is not None else range(MAX_CID_LENGTH_V1 + 1)
        for secrets, secret in secrets_of:
            try:
                # Keys do not depend on the DCID length: derive once, probe every length.
                probe = OneRttObserver(
                    secret, dcid_length=0, cipher_suite=cipher_suite, version=version
                )
            except WireError as exc:
                notes.append(f"key log entry {secrets.client_random.hex()} unusable: {exc}")
                continue
            for length in lengths:
                probe.dcid_length = length
                for payload in payloads[:TRIAL_DATAGRAMS]:
                    try:
                        probe.open(payload)
                    except WireError:
                        continue
                    # Found: a fresh observer for the whole capture, with the settled suite.
                    return secrets, OneRttObserver(
                        secret,
                        dcid_length=length,
                        cipher_suite=probe.cipher_suite,
                        version=version,
                    )
        return None

    found_client = find(
        [(c, c.client_1rtt) for c in candidates if c.client_1rtt is not None],
        from_client,
        server_cid_length,
    )
    if found_client is not None:
        candidates = [found_client[0]]
    found_server = find(
        [(c, c.server_1rtt) for c in candidates if c.server_1rtt is not None],
        from_server,
        client_cid_length,
    )
    if found_client is None and found_server is None:
        notes.append("no key log entry opens this connection's 1-RTT packets")
        return None, None
    return (
        None if found_client is None else found_client[1],
        None if found_server is None else found_server[1],
    )


def _short_first(payload: bytes) -> bool:
    return bool(payload) and not payload[0] & LONG_HEADER_BIT


def _endpoint_text(endpoint: Endpoint) -> str:
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _path_pair_text(path: Path) -> str:
    return f"{_endpoint_text(path[0])}->{_endpoint_text(path[1])}"


def _path_text(state: _PathState) -> str:
    return _path_pair_text((state.client, state.server))


# --- I/O: pcaps -----------------------------------------------------------------------------


def datagrams_from_pcaps(pcap_paths: Iterable[str], server: Endpoint) -> list[ConnectionDatagram]:
    """The datagrams to and from `server` in one or more pcaps, merged in time order.

    Give the captures of one side (e.g. the client host's wifi and lte interfaces): the same
    datagram captured on both sides of a middlebox would otherwise appear twice. Direction
    is "to the server's address and port" = from the client.
    """
    merged: list[ConnectionDatagram] = []
    for pcap in pcap_paths:
        for udp in read_udp_datagrams(str(pcap)):
            if udp.dst == server:
                merged.append(ConnectionDatagram(udp.time, udp.src, udp.dst, True, udp.payload))
            elif udp.src == server:
                merged.append(ConnectionDatagram(udp.time, udp.src, udp.dst, False, udp.payload))
    merged.sort(key=lambda d: d.time)  # stable: one pcap's order is kept at equal times
    return merged
