"""The host Client Agent: announces an unmodified client's migrations from the wire.

The builtin Client Agent (qasm/agents/client.py) lives inside the client and reads its QUIC
stack (aioquic) to know the next DCID before the client switches. The host agent runs beside
a client nobody can patch (qh3, ngtcp2, any program) on its host and touches nothing of
it. What it has instead:
- the datagrams the client sends to and receives from the service (a passive capture), with
  the long headers' CIDs in clear and, with the client's key log (SSLKEYLOGFILE, read as it
  grows), the 1-RTT packets opened (qasm.wire.onertt.OneRttObserver): NEW_CONNECTION_ID
  frames tell it every CID the server issued, RETIRE_CONNECTION_ID what the client gave up;
- the first datagram of every new client 4-tuple, held in the kernel (NFQUEUE on the host's
  OUTPUT chain for new conntrack flows) until it gives the verdict.

A held datagram with a short header whose DCID the server issued to a known connection, from
a 4-tuple that connection has not used, is a migration: the agent announces old path → new
path with that DCID (read from the held datagram's header: the server's CID length is known
from the handshake) to the Tracking Agent, with the same sealed messages as the builtin agent,
and lets the datagram (and whatever queued behind it) go once the ack arrives, or after
`hold_timeout_s` anyway (counted: `released_unacked`). A held long header (a new connection's
Initial) or a datagram of a connection it does not know is let go at once. Paths the client
stops using are retired: by the next announcement when the client moves again before the old
path is retired (as the builtin agent does: one message per migration), by a RETIRE of their
own once no datagram left on them for `quiet_after_s` (1 s, the builtin agent's grace), or
`retired_grace_s` (0.2 s: the server's datagrams in flight on it still arrive) after their
last datagram once the client retired (its own RETIRE_CONNECTION_ID) the CID it last used
there.

Sans-I/O: the caller feeds `observe()` (captured datagrams, either direction), `hold()`
(queued datagrams, with the kernel's packet id), `reply()` (datagrams from the Tracking
Agent), `add_key_log()` (new key log text) and `tick(now)`; each returns actions: `Send`
(a sealed report to the Tracking Agent, from an address of the client) and `Release` (the
held packet ids to accept). Nothing here reads a clock or opens a socket.

What it cannot know: a migration whose first datagram it did not hold (no NFQUEUE rule, or
a path conntrack still knew); the next DCID before the client uses it (so it announces the
DCID of the held datagram, which the Tracking Agent meets in the same instant, not earlier
as with the builtin agent); connections whose handshake it did not see (it names a
connection by the CIDs of its Initials: start it before the client).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from qasm.agents.client import ClientAgent
from qasm.agents.messages import Address, AgentMessageError
from qasm.wire.errors import WireError
from qasm.wire.frames import NewConnectionIdFrame, RetireConnectionIdFrame
from qasm.wire.header import HeaderForm, PacketType, parse_datagram
from qasm.wire.keylog import ConnectionSecrets, parse_key_log
from qasm.wire.onertt import HelloObserver, OneRttObserver

REPLY_TIMEOUT_S = 0.2  # as the builtin agent (testbed/apps/client.py)
ATTEMPTS = 3
HOLD_TIMEOUT_S = REPLY_TIMEOUT_S * ATTEMPTS
QUIET_AFTER_S = 1.0  # as the builtin agent's old-socket grace period
# After the client retired the CID it used on a path, the path goes this long after its last
# datagram: the server's datagrams already in flight on it still arrive (a few RTTs).
RETIRED_GRACE_S = 0.2
MAX_PENDING = 64  # 1-RTT datagrams kept per connection until its secrets are in the key log
MAX_CONNECTIONS = 4096


@dataclass(frozen=True)
class Send:
    """Send `datagram` to the Tracking Agent from `source_ip` (an address of the client)."""

    datagram: bytes
    source_ip: str


@dataclass(frozen=True)
class Release:
    """Accept these held packets (kernel packet ids, in order)."""

    packet_ids: tuple[int, ...]


Action = Send | Release


@dataclass
class _Path:
    address: Address  # the client's side
    last_sent: float
    dcid: bytes | None = None  # the last DCID the client sent with on it
    retiring: bool = False  # a retirement (or an announcement carrying it) is on its way
    abandoned: bool = False  # the client retired the CID it last used on it


@dataclass
class Connection:
    """One QUIC connection of the client, as the host sees it."""

    original_dcid: bytes
    client_cids: set[bytes]
    client_cid_length: int
    hello: HelloObserver
    server_cid_length: int | None = None
    server_cids: dict[bytes, int] = field(default_factory=dict)  # CID -> sequence number
    retired_server_cids: set[bytes] = field(default_factory=set)
    secrets: ConnectionSecrets | None = None
    to_server: OneRttObserver | None = None
    to_client: OneRttObserver | None = None
    pending: list[tuple[bytes, bool]] = field(default_factory=list)
    paths: dict[Address, _Path] = field(default_factory=dict)
    current: Address | None = None  # the path the client sends on now
    dcid: bytes | None = None  # the DCID in use towards the server
    opened: int = 0  # 1-RTT packets opened
    undecryptable: int = 0
    registered: bool = False  # `register`: its CIDs told to the Tracking Agent once


@dataclass
class _Exchange:
    what: str  # "announce" | "retire" | "register"
    counter: int
    datagram: bytes
    source_ip: str
    started: float
    next_retry: float
    connection: Connection
    attempts: int = 1
    new_path: Address | None = None  # announce: the held path
    packet_ids: list[int] = field(default_factory=list)  # announce: what it holds
    retired: Address | None = None  # the path this report retires, if any


class HostAgent:
    def __init__(
        self,
        agent: ClientAgent,
        service: Address,
        *,
        reply_timeout_s: float = REPLY_TIMEOUT_S,
        attempts: int = ATTEMPTS,
        hold_timeout_s: float = HOLD_TIMEOUT_S,
        quiet_after_s: float = QUIET_AFTER_S,
        retired_grace_s: float = RETIRED_GRACE_S,
        register: bool = False,
    ) -> None:
        self.agent = agent
        # Tell the Tracking Agent each connection's path and DCID once it is in 1-RTT, so a
        # middlebox can follow a rebinding done in the network, which nobody announces.
        self.register = register
        self.service = (service[0], int(service[1]))
        self.reply_timeout_s = reply_timeout_s
        self.attempts = attempts
        self.hold_timeout_s = hold_timeout_s
        self.quiet_after_s = quiet_after_s
        self.retired_grace_s = retired_grace_s
        self.hold_ms: list[float] = []  # each announcement's hold: the ack's round trip
        self.connections: list[Connection] = []
        self.counters: Counter = Counter()
        self.log: list[dict] = []  # what it did, for the caller to write out (and clear)
        self._exchanges: dict[int, _Exchange] = {}
        self._holding: dict[Address, _Exchange] = {}  # new path -> its announcement
        self._key_log_tail = ""
        self._secrets: dict[bytes, ConnectionSecrets] = {}

    # --- inputs ---------------------------------------------------------------------------

    def add_key_log(self, text: str) -> None:
        """New text appended to the client's key log (a partial last line is kept)."""
        text = self._key_log_tail + text
        complete, _, self._key_log_tail = text.rpartition("\n")
        if not complete:
            return
        try:
            parsed = parse_key_log(complete)
        except WireError:
            self.counters["key_log_errors"] += 1
            return
        for secrets in parsed:
            known = self._secrets.get(secrets.client_random)
            if known is not None:  # a later line completes an entry: merge
                secrets = ConnectionSecrets(
                    secrets.client_random,
                    **{
                        name: getattr(secrets, name) or getattr(known, name)
                        for name in (
                            "client_early",
                            "client_handshake",
                            "server_handshake",
                            "client_1rtt",
                            "server_1rtt",
                        )
                    },
                )
            self._secrets[secrets.client_random] = secrets
        for connection in self.connections:
            self._attach_secrets(connection)

    def observe(self, datagram: bytes, src: Address, dst: Address, now: float) -> None:
        """A captured datagram between the client and the service (either direction)."""
        src, dst = (src[0], int(src[1])), (dst[0], int(dst[1]))
        if dst == self.service:
            self._from_client(datagram, src, now)
        elif src == self.service:
            self._from_server(datagram)

    def hold(
        self, packet_id: int, datagram: bytes, src: Address, dst: Address, now: float
    ) -> list[Action]:
        """A datagram the kernel queued (the first of a new 4-tuple, and any behind it before
        the server answered): returns its verdict now, or holds it for an announcement."""
        src = (src[0], int(src[1]))
        self.counters["queued"] += 1
        holding = self._holding.get(src)
        if holding is not None:
            holding.packet_ids.append(packet_id)
            return []
        if (dst[0], int(dst[1])) != self.service or not datagram or datagram[0] & 0x80:
            return [Release((packet_id,))]  # a handshake, or not the service's
        connection, dcid = self._connection_of_short(datagram)
        if connection is None:
            self.counters["released_unknown"] += 1
            return [Release((packet_id,))]
        if src in connection.paths or connection.current is None:
            self.counters["released_known_path"] += 1
            self._sent_on(connection, src, dcid, now)
            return [Release((packet_id,))]
        return self._announce(connection, packet_id, src, dcid, now)

    def recognises(self, datagram: bytes) -> bool:
        """Whether a held datagram can be judged with what the agent knows now: a long
        header, or a short header whose DCID a known connection's server issued (if not,
        the caller should feed the capture it has not read yet first)."""
        if not datagram or datagram[0] & 0x80:
            return True
        return self._connection_of_short(datagram)[0] is not None

    def reply(self, datagram: bytes, now: float) -> list[Action]:
        """A datagram from the Tracking Agent."""
        for exchange in list(self._exchanges.values()):
            try:
                ack = self.agent.read_ack(datagram, exchange.counter)
            except AgentMessageError:
                continue
            return self._finish(exchange, now, ack.accepted, ack.reason)
        self.counters["replies_unmatched"] += 1
        return []

    def tick(self, now: float) -> list[Action]:
        """Retries, holds past their bound, quiet paths to retire."""
        actions: list[Action] = []
        for exchange in list(self._exchanges.values()):
            if exchange.new_path is not None and now - exchange.started >= self.hold_timeout_s:
                actions += self._finish(exchange, now, None, "no reply")
            elif now >= exchange.next_retry:
                if exchange.attempts >= self.attempts:
                    actions += self._finish(exchange, now, None, "no reply")
                else:
                    exchange.attempts += 1
                    exchange.next_retry = now + self.reply_timeout_s
                    actions.append(Send(exchange.datagram, exchange.source_ip))
        for connection in self.connections:
            if self.register and not connection.registered and connection.dcid is not None:
                actions += self._register(connection, now)
            for path in list(connection.paths.values()):
                if (
                    path.address != connection.current
                    and not path.retiring
                    and now >= self._retire_at(path)
                ):
                    why = "client retired its CID" if path.abandoned else "quiet"
                    actions += self._retire(connection, path, now, why)
        return actions

    def _retire_at(self, path: _Path) -> float:
        grace = self.retired_grace_s if path.abandoned else self.quiet_after_s
        return path.last_sent + grace

    def release_all(self) -> list[Action]:
        """Everything still held, to let go (the agent is stopping)."""
        ids = tuple(i for exchange in self._holding.values() for i in exchange.packet_ids)
        self._holding.clear()
        return [Release(ids)] if ids else []

    def next_deadline(self) -> float | None:
        """When `tick` next has something to do (None: nothing pending but quiet paths)."""
        times = [e.next_retry for e in self._exchanges.values()]
        times += [
            e.started + self.hold_timeout_s
            for e in self._exchanges.values()
            if e.new_path is not None
        ]
        times += [
            self._retire_at(p)
            for c in self.connections
            for p in c.paths.values()
            if p.address != c.current and not p.retiring
        ]
        return min(times, default=None)

    def summary(self) -> dict:
        return {
            "counters": dict(self.counters),
            "connections": len(self.connections),
            "hold_ms": [round(ms, 3) for ms in self.hold_ms],
            "opened": sum(c.opened for c in self.connections),
            "undecryptable": sum(c.undecryptable for c in self.connections),
        }

    # --- the client's datagrams -----------------------------------------------------------

    def _from_client(self, datagram: bytes, src: Address, now: float) -> None:
        if not datagram:
            return
        if datagram[0] & 0x80:
            self._long_from_client(datagram, src, now)
            return
        connection, dcid = self._connection_of_short(datagram)
        if connection is None:
            self.counters["short_unknown"] += 1
            return
        self._sent_on(connection, src, dcid, now)
        self._open(connection, datagram, from_client=True)

    def _long_from_client(self, datagram: bytes, src: Address, now: float) -> None:
        try:
            headers = parse_datagram(datagram, 0)
        except WireError:
            self.counters["malformed"] += 1
            return
        first = headers[0]
        if first.form is not HeaderForm.LONG or first.packet_type is None:
            return
        connection = self._by_client_cid(first.scid)
        if connection is None:
            if first.packet_type is not PacketType.INITIAL:
                return
            connection = Connection(
                original_dcid=first.dcid,
                client_cids={first.scid},
                client_cid_length=len(first.scid),
                hello=HelloObserver(first.dcid),
            )
            self.connections.append(connection)
            del self.connections[:-MAX_CONNECTIONS]
            self.counters["connections"] += 1
        if connection.current is None:
            connection.current = src
        connection.paths.setdefault(src, _Path(src, now)).last_sent = now
        self._long_header_datagram(connection, datagram, headers, from_client=True)

    def _long_header_datagram(
        self, connection: Connection, datagram: bytes, headers, from_client: bool
    ) -> None:
        """Either side's handshake datagram: its CRYPTO frames, the secrets they unlock, and
        any 1-RTT packet coalesced after the long headers."""
        try:
            connection.hello.add(datagram, from_client=from_client)
        except WireError:
            self.counters["malformed"] += 1
        self._attach_secrets(connection)
        if any(h.form is HeaderForm.SHORT for h in headers[1:]):
            self._open(connection, datagram, from_client=from_client)

    def _sent_on(self, connection: Connection, src: Address, dcid: bytes, now: float) -> None:
        """The client sent from `src` with `dcid`. A path it had not used becomes current; a
        known one does not become current again: a capture that lags behind a migration
        would otherwise move the connection back (a client moving back to an address uses
        a fresh port, so a new 4-tuple)."""
        path = connection.paths.get(src)
        if path is None:
            path = connection.paths[src] = _Path(src, now)
            connection.current = src
        path.last_sent = now
        path.dcid = dcid
        if src == connection.current:
            connection.dcid = dcid

    # --- the server's datagrams -----------------------------------------------------------

    def _from_server(self, datagram: bytes) -> None:
        if not datagram:
            return
        if datagram[0] & 0x80:
            try:
                headers = parse_datagram(datagram, 0)
            except WireError:
                self.counters["malformed"] += 1
                return
            first = headers[0]
            connection = self._by_client_cid(first.dcid)
            if connection is None or first.form is not HeaderForm.LONG:
                return
            if first.packet_type in (PacketType.INITIAL, PacketType.HANDSHAKE):
                connection.server_cid_length = len(first.scid)
                connection.server_cids.setdefault(first.scid, 0)
            self._long_header_datagram(connection, datagram, headers, from_client=False)
            return
        for connection in self.connections:
            length = connection.client_cid_length
            if datagram[1 : 1 + length] in connection.client_cids:
                self._open(connection, datagram, from_client=False)
                return
        self.counters["short_unknown"] += 1

    # --- 1-RTT packets --------------------------------------------------------------------

    def _attach_secrets(self, connection: Connection) -> None:
        if connection.secrets is not None or connection.hello.client_random is None:
            return
        secrets = self._secrets.get(connection.hello.client_random)
        if secrets is None or secrets.client_1rtt is None or secrets.server_1rtt is None:
            return
        if connection.server_cid_length is None:
            return
        connection.secrets = secrets
        suite = connection.hello.cipher_suite
        connection.to_server = OneRttObserver(
            secrets.client_1rtt, dcid_length=connection.server_cid_length, cipher_suite=suite
        )
        connection.to_client = OneRttObserver(
            secrets.server_1rtt, dcid_length=connection.client_cid_length, cipher_suite=suite
        )
        pending, connection.pending = connection.pending, []
        for datagram, from_client in pending:
            self._open(connection, datagram, from_client=from_client)

    def _open(self, connection: Connection, datagram: bytes, *, from_client: bool) -> None:
        observer = connection.to_server if from_client else connection.to_client
        if observer is None:
            if len(connection.pending) < MAX_PENDING:
                connection.pending.append((datagram, from_client))
            return
        try:
            packet = observer.open(datagram)
        except WireError:
            connection.undecryptable += 1
            return
        if packet is None:
            return
        connection.opened += 1
        for frame in packet.frames:
            if isinstance(frame, NewConnectionIdFrame):
                if from_client:
                    connection.client_cids.add(frame.connection_id)
                else:
                    connection.server_cids[frame.connection_id] = frame.sequence_number
            elif isinstance(frame, RetireConnectionIdFrame) and from_client:
                self._client_retired(connection, frame.sequence_number)

    def _client_retired(self, connection: Connection, sequence: int) -> None:
        """The client gave up a server CID: a path it last used that CID on is done."""
        retired = [cid for cid, seq in connection.server_cids.items() if seq == sequence]
        connection.retired_server_cids.update(retired)
        for path in connection.paths.values():
            if path.dcid in retired and path.address != connection.current:
                path.abandoned = True

    # --- connections ----------------------------------------------------------------------

    def _by_client_cid(self, cid: bytes) -> Connection | None:
        for connection in self.connections:
            if cid in connection.client_cids:
                return connection
        return None

    def _connection_of_short(self, datagram: bytes) -> tuple[Connection | None, bytes]:
        for connection in reversed(self.connections):
            length = connection.server_cid_length
            if length is None:
                continue
            dcid = datagram[1 : 1 + length]
            if dcid in connection.server_cids:
                return connection, dcid
        return None, b""

    # --- reports --------------------------------------------------------------------------

    def _announce(
        self, connection: Connection, packet_id: int, src: Address, dcid: bytes, now: float
    ) -> list[Action]:
        old = connection.current
        old_path = connection.paths[old]
        # The path before the old one, if nobody retired it yet: this announcement does.
        earlier = next(
            (p for p in connection.paths.values() if p.address != old and not p.retiring), None
        )
        if earlier is not None:
            earlier.retiring = True
        connection_cid = old_path.dcid or connection.dcid or dcid
        counter, sealed = self.agent.announce_cids(
            connection_cid, dcid, old, src, earlier.address if earlier else None
        )
        exchange = _Exchange(
            what="announce",
            counter=counter,
            datagram=sealed,
            source_ip=src[0],
            started=now,
            next_retry=now + self.reply_timeout_s,
            connection=connection,
            new_path=src,
            packet_ids=[packet_id],
            retired=earlier.address if earlier else None,
        )
        self._exchanges[counter] = exchange
        self._holding[src] = exchange
        self.counters["announced"] += 1
        self.log.append(
            {
                "what": "hold",
                "t": now,
                "old": list(old),
                "new": list(src),
                "connection_cid": connection_cid.hex(),
                "next_cid": dcid.hex(),
                "new_cid": dcid != connection_cid,
                "retire": list(earlier.address) if earlier else None,
                "counter": counter,
            }
        )
        # The held datagram is the client's now: the new path is current from here on.
        self._sent_on(connection, src, dcid, now)
        return [Send(sealed, src[0])]

    def _register(self, connection: Connection, now: float) -> list[Action]:
        """An announcement of the path the connection is on, to itself, with its DCID."""
        connection.registered = True
        path, dcid = connection.current, connection.dcid
        counter, sealed = self.agent.announce_cids(dcid, dcid, path, path)
        self._exchanges[counter] = _Exchange(
            what="register", counter=counter, datagram=sealed, source_ip=path[0], started=now,
            next_retry=now + self.reply_timeout_s, connection=connection,
        )  # fmt: skip
        self.counters["registered"] += 1
        return [Send(sealed, path[0])]

    def _retire(self, connection: Connection, path: _Path, now: float, why: str) -> list[Action]:
        path.retiring = True
        cid = connection.dcid or path.dcid
        if cid is None:
            return []
        counter, sealed = self.agent.retire_cid(cid, path.address)
        source_ip = connection.current[0] if connection.current else path.address[0]
        self._exchanges[counter] = _Exchange(
            what="retire",
            counter=counter,
            datagram=sealed,
            source_ip=source_ip,
            started=now,
            next_retry=now + self.reply_timeout_s,
            connection=connection,
            retired=path.address,
        )
        self.counters["retired"] += 1
        self.log.append({"what": "retire", "t": now, "path": list(path.address), "why": why})
        return [Send(sealed, source_ip)]

    def _finish(
        self, exchange: _Exchange, now: float, accepted: bool | None, reason: str
    ) -> list[Action]:
        del self._exchanges[exchange.counter]
        connection = exchange.connection
        entry = {
            "what": exchange.what,
            "t": now,
            "counter": exchange.counter,
            "accepted": bool(accepted),
            "reason": reason,
            "attempts": exchange.attempts,
            "bytes": len(exchange.datagram),
            # As the builtin agent's exchanges (testbed/apps/client.py AgentLink), so a
            # runner can put these in the client report's `agent.exchanges`.
            "ms": (now - exchange.started) * 1000,
        }
        actions: list[Action] = []
        if exchange.retired is not None:
            path = connection.paths.get(exchange.retired)
            if accepted and path is not None:
                del connection.paths[exchange.retired]
            elif path is not None and exchange.what == "announce":
                path.retiring = False  # not retired: its quiet timer retires it later
        if exchange.new_path is not None:
            self._holding.pop(exchange.new_path, None)
            entry["hold_ms"] = (now - exchange.started) * 1000
            self.hold_ms.append(entry["hold_ms"])
            entry["packets"] = len(exchange.packet_ids)
            if accepted is None:
                self.counters["released_unacked"] += 1
            actions.append(Release(tuple(exchange.packet_ids)))
        self.log.append(entry)
        return actions
