"""The Tracking Agent: turns authenticated Client Agent reports into connection state.

Sans-I/O: `receive(datagram, source_ip, now, table, apply)` checks a report, lets `apply`
(the controller) carry an acceptable one out on the middlebox hops, and returns a `Report`
saying whether it was accepted, why not (a `Reason` code and text) and the signed reply to
send (if any). A rejected report changes nothing but the counters. One Tracking Agent serves
every hop of a path; `table` is the client-facing hop's connection table, where the client's
own addresses are the connection's (later hops see them translated), so ownership is judged
there. With no middlebox hop (`table` None) a valid report is acknowledged and anchors
nothing.

Checks, in order (cheap and unauthenticated first, so a flood costs little):
size bound → known client → HMAC tag → fields → counter (replay window) → per-client rate →
source address belongs to the client → the connection exists and the client owns it (its
current path is the reported old address, which is one of the client's) → the new address is
the client's and the next CID is not another connection's. An admission (`Admit`) has no
connection yet: its path must be the client's address and within the client's path quota;
`apply` then opens the connection on the hops (each refuses a path it already holds) and
names it.

The rate limit comes after the tag and the replay check: a report that only claims to be from
a client (forged) or repeats one it sent (replayed) must not spend that client's budget, or a
flood of them would lock the real client out (found by testbed/apps/flood.py). What bounds the
cost of unauthenticated reports is the controller's packet-in rate, and one HMAC over at most
MAX_DATAGRAM bytes is cheap beside parsing the packet-in. Counters are keyed by the reason's
code, never by text a sender chose, so they stay bounded under garbage.

Pull mode (`remember` / `announced`): the agent keeps each accepted announcement by its next
CID, so a hop that meets that CID on a path it does not know can ask which connection it
belongs to. Bounded: the oldest announcements are forgotten first.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from qasm.agents.messages import (
    Ack,
    Admit,
    AgentMessageError,
    Announce,
    Retire,
    seal,
    unseal,
)
from qasm.controller.events import Reason, Refusal
from qasm.flow import FlowKey
from qasm.state.buckets import TokenBuckets
from qasm.state.connections import Connection, ConnectionTable

DEFAULT_RATE_PER_S = 20.0
DEFAULT_BURST = 20
DEFAULT_MAX_PATHS = 256
# Announcements kept for hops to pull: a client announces one path per migration.
MAX_REMEMBERED = 100_000
# Reports may arrive out of counter order: a retirement sent from one interface can be
# overtaken by the next announcement from another (measured: 40 ms behind a full queue).
# As IPsec does (RFC 4303 §3.4.3), any counter not seen within this window of the highest is
# fresh; each is accepted once.
REPLAY_WINDOW = 64
ANSWERED_PER_CLIENT = 8  # recent (report, reply) pairs kept to answer a retry again


@dataclass
class ReplayWindow:
    """The highest counter a client used and which of the REPLAY_WINDOW below it it used."""

    highest: int = -1
    seen: int = 0  # bit k: counter highest - k was used

    def fresh(self, counter: int) -> bool:
        if counter > self.highest:
            return True
        behind = self.highest - counter
        return behind < REPLAY_WINDOW and not self.seen >> behind & 1

    def mark(self, counter: int) -> None:
        if counter > self.highest:
            shift = counter - self.highest
            self.seen = (self.seen << shift | 1) & ((1 << REPLAY_WINDOW) - 1)
            self.highest = counter
        else:
            self.seen |= 1 << (self.highest - counter)


@dataclass(frozen=True)
class Report:
    accepted: bool
    reason: Reason
    text: str = ""
    client: str | None = None
    reply: bytes | None = None  # signed ack to send back, None when the sender is unverified
    message: Announce | Retire | Admit | None = None  # the authenticated report, once one
    service: tuple[str, int] = ("", 0)  # where the paths of `message` lead

    @property
    def new_path(self) -> FlowKey | None:
        if isinstance(self.message, Admit):
            return self._path(self.message.path)
        return self._path(self.message.new) if isinstance(self.message, Announce) else None

    @property
    def retired_path(self) -> FlowKey | None:
        return self._path(self.message.path) if isinstance(self.message, Retire) else None

    def _path(self, address) -> FlowKey:
        return FlowKey(*address, *self.service)


# What the controller does with a report the agent finds acceptable: carry it out on the
# hops (the client-facing hop's connection, None without hops or for an admission) or say
# why it cannot.
Apply = Callable[[Announce | Retire | Admit, Connection | None], Refusal | None]


@dataclass
class TrackingAgent:
    service: tuple[str, int]
    keys: dict[str, bytes]  # client id -> key
    addresses: dict[str, frozenset[str]]  # client id -> its IPv4 addresses
    rate_per_s: float = DEFAULT_RATE_PER_S
    burst: int = DEFAULT_BURST
    # Live paths a client's connections may hold at once (each pre-installs rules and, with
    # a NAT, a public port on every hop): a valid key is not a licence to fill the switch.
    max_paths: int = DEFAULT_MAX_PATHS
    counters: Counter = field(default_factory=Counter)
    _windows: dict[str, ReplayWindow] = field(default_factory=dict)
    # The last reports and replies per client: an exact duplicate (the client retrying after
    # a lost ack) gets the same reply again instead of a replay rejection, and changes nothing.
    _answered: dict[str, OrderedDict[bytes, bytes]] = field(default_factory=dict)
    _announced: OrderedDict[bytes, Announce] = field(default_factory=OrderedDict)
    # The connections each client anchored (pruned of ended ones when counted).
    _owned: dict[str, list[Connection]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._buckets = TokenBuckets(self.rate_per_s, self.burst, max_keys=len(self.keys) or 1)

    def receive(
        self,
        datagram: bytes,
        source_ip: str,
        now: float,
        table: ConnectionTable | None,
        apply: Apply,
    ) -> Report:
        report = self._receive(datagram, source_ip, now, table, apply)
        self.counters["accepted" if report.accepted else f"rejected: {report.reason}"] += 1
        return report

    def remember(self, announce: Announce) -> None:
        """Pull mode: keep an accepted announcement for hops to ask about its next CID."""
        self._announced.pop(announce.next_cid, None)
        self._announced[announce.next_cid] = announce
        while len(self._announced) > MAX_REMEMBERED:
            self._announced.popitem(last=False)

    def announced(self, cid: bytes) -> Announce | None:
        """Pull mode: the accepted announcement whose next CID is `cid`, if any."""
        return self._announced.get(cid)

    def _receive(self, datagram, source_ip, now, table, apply) -> Report:
        try:
            sealed = unseal(datagram)
            client = sealed.client
        except AgentMessageError as exc:
            return self._report(False, Reason.MALFORMED, str(exc))
        key = self.keys.get(client)
        if key is None:
            return self._report(False, Reason.UNKNOWN_CLIENT, "", client)
        try:
            message = sealed.open(key)
        except AgentMessageError as exc:
            forged = str(exc).startswith("tag:")
            return self._report(
                False, Reason.FORGED if forged else Reason.MALFORMED, str(exc), client
            )
        if message.client != client or isinstance(message, Ack):
            return self._report(False, Reason.MALFORMED, "not a client report", client)
        answered = self._answered.setdefault(client, OrderedDict())
        if datagram in answered:
            return self._report(
                False, Reason.DUPLICATE, "answered again", client, answered[datagram]
            )
        window = self._windows.setdefault(client, ReplayWindow())
        if not window.fresh(message.counter):
            return self._reject(
                key, message, Refusal(Reason.REPLAYED, "counter already used or too old")
            )
        if not self._buckets.take(client, now):
            # Not answered (the client retries the same datagram) and the counter not
            # consumed, so that retry can still be accepted once tokens are back.
            return self._report(False, Reason.RATE_LIMITED, "", client)
        window.mark(message.counter)
        if source_ip not in self.addresses[client]:
            refusal = Refusal(Reason.SOURCE_NOT_CLIENTS, f"source {source_ip} is not this client's")
        else:
            connection = None
            refusal = None
            if table is not None:
                connection = self._check(table, message, now)
                if isinstance(connection, Refusal):
                    refusal, connection = connection, None
            refusal = refusal or apply(message, connection)
        if refusal is not None:
            report = self._reject(key, message, refusal)
        else:
            accepted = _ACCEPTED[type(message)]
            if isinstance(message, Admit) and table is not None:
                # Opened by `apply`: counted in the client's paths from now on.
                connection = table.by_path(FlowKey(*message.path, *self.service), now)
            owned = self._owned.setdefault(client, [])
            if connection is not None and not any(c is connection for c in owned):
                owned.append(connection)
            reply = self._ack(key, message, True, "ok")
            report = self._report(True, accepted, "", client, reply, message)
        answered[datagram] = report.reply
        while len(answered) > ANSWERED_PER_CLIENT:
            answered.popitem(last=False)
        return report

    def _report(self, accepted, reason, text="", client=None, reply=None, message=None) -> Report:
        return Report(accepted, reason, text, client, reply, message, self.service)

    def _live_paths(
        self, client: str, table: ConnectionTable, connection: Connection | None = None
    ) -> int:
        """The paths the client's connections hold now, `connection` (not yet anchored,
        maybe) included."""
        owned = self._owned.setdefault(client, [])
        owned[:] = [c for c in owned if table.is_live(c)]
        anchored = connection is None or any(c is connection for c in owned)
        counted = owned if anchored else [*owned, connection]
        return sum(len(c.paths) for c in counted)

    def _check(self, table: ConnectionTable, message, now: float) -> Connection | Refusal | None:
        """The client-facing hop's connection the report is about, if the client owns it and
        the report is consistent with it (ownership: its current path is one of the
        client's addresses); None for an admission the client may ask for."""
        if isinstance(message, Admit):
            return self._check_admission(table, message)
        connection = table.by_cid(message.connection_cid, now)
        if connection is None and isinstance(message, Announce):
            # A hop that keeps the handshake in the fast path never saw the server's CID: the
            # first announcement names the connection by the path it is on.
            connection = table.by_path(FlowKey(*message.old, *self.service), now)
        if connection is None:
            return Refusal(Reason.UNKNOWN_CONNECTION, "")
        if connection.owner not in (None, message.client):
            return Refusal(Reason.CONNECTION_OF_ANOTHER_CLIENT, "")
        client_addresses = self.addresses[message.client]
        paths = connection.paths
        if not any(path.src_ip in client_addresses for path in paths):
            return Refusal(Reason.NOT_CLIENTS_CONNECTION, "")
        if isinstance(message, Retire):
            path = FlowKey(*message.path, *self.service)
            if len(paths) < 2 or path not in paths:
                return Refusal(Reason.NOT_RETIRABLE, f"{path}")
            return connection
        old_path = FlowKey(*message.old, *self.service)
        new_path = FlowKey(*message.new, *self.service)
        if old_path not in paths:
            return Refusal(Reason.OLD_ADDRESS_NOT_A_PATH, f"{old_path}")
        if message.retire is not None:
            retired = FlowKey(*message.retire, *self.service)
            if retired not in paths or retired in (old_path, new_path):
                return Refusal(Reason.NOT_RETIRABLE, f"{retired}")
        if message.new[0] not in client_addresses:
            return Refusal(Reason.NEW_ADDRESS_NOT_CLIENTS, f"new address {message.new[0]}")
        if table.by_cid(message.next_cid, now) not in (None, connection):
            return Refusal(Reason.NEXT_CID_OF_ANOTHER, message.next_cid.hex())
        if table.by_path(new_path, now) not in (None, connection):
            return Refusal(Reason.NEW_PATH_OF_ANOTHER, f"{new_path}")
        live = self._live_paths(message.client, table, connection)
        adds = new_path not in paths
        if live + adds - (message.retire is not None) > self.max_paths:
            return Refusal(Reason.PATH_QUOTA, f"{live} live paths, at most {self.max_paths}")
        return connection

    def _check_admission(self, table: ConnectionTable, message: Admit) -> Refusal | None:
        """Why the client may not have a connection admitted on the reported path, if not."""
        if message.path[0] not in self.addresses[message.client]:
            return Refusal(Reason.NEW_ADDRESS_NOT_CLIENTS, f"path address {message.path[0]}")
        live = self._live_paths(message.client, table)
        if live + 1 > self.max_paths:
            return Refusal(Reason.PATH_QUOTA, f"{live} live paths, at most {self.max_paths}")
        return None

    def _reject(self, key: bytes, message: Announce | Retire | Admit, refusal: Refusal) -> Report:
        reply = self._ack(key, message, False, _text(refusal))
        return self._report(False, refusal.reason, refusal.text, message.client, reply)

    @staticmethod
    def _ack(key: bytes, message: Announce | Retire | Admit, accepted: bool, reason: str) -> bytes:
        return seal(Ack(message.client, message.counter, accepted, reason[:200]), key)


_ACCEPTED = {Announce: Reason.ANNOUNCED, Retire: Reason.RETIRED, Admit: Reason.ADMITTED_AHEAD}


def _text(refusal: Refusal) -> str:
    return f"{refusal.reason}: {refusal.text}" if refusal.text else str(refusal.reason)
