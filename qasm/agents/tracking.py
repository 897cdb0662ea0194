"""The Tracking Agent: turns authenticated Client Agent reports into connection state.

Sans-I/O: `receive(datagram, source_ip, now)` returns a `Report` saying whether it was
accepted, why not, the signed reply to send (if any) and the paths the controller must now
install or remove. A rejected report changes nothing but the counters.

Checks, in order (cheap and unauthenticated first, so a flood costs little):
size bound → known client → HMAC tag → fields → counter (replay) → per-client rate →
source address belongs to the client → the connection exists and the client owns it (its
current path is the reported old address, which is one of the client's) → the new address is
the client's and the next CID is not another connection's.

The rate limit comes after the tag and the replay check: a report that only claims to be from
a client (forged) or repeats one it sent (replayed) must not spend that client's budget, or a
flood of them would lock the real client out (found by testbed/apps/flood.py). What bounds the
cost of unauthenticated reports is the controller's packet-in rate, and one HMAC over at most
MAX_DATAGRAM bytes is cheap beside parsing the packet-in. Counters are keyed by the reason's
category, never by text a sender chose, so they stay bounded under garbage.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from qasm.agents.messages import (
    Ack,
    AgentMessageError,
    Announce,
    Retire,
    open_sealed,
    peek_client,
    seal,
)
from qasm.flow import FlowKey
from qasm.state.connections import Connection, ConnectionTable

DEFAULT_RATE_PER_S = 20.0
DEFAULT_BURST = 20


@dataclass
class _Bucket:
    tokens: float
    updated: float


@dataclass(frozen=True)
class Report:
    accepted: bool
    reason: str
    client: str | None = None
    reply: bytes | None = None  # signed ack to send back, None when the sender is unverified
    connection: Connection | None = None
    new_path: FlowKey | None = None  # to pre-install (client→service direction)
    retired_path: FlowKey | None = None  # to remove

    def record(self) -> dict:
        return {
            "accepted": self.accepted,
            "reason": self.reason,
            "client": self.client,
            "connection": self.connection.id if self.connection else None,
            "new_path": str(self.new_path) if self.new_path else None,
            "retired_path": str(self.retired_path) if self.retired_path else None,
        }


@dataclass
class TrackingAgent:
    table: ConnectionTable
    service: tuple[str, int]
    keys: dict[str, bytes]  # client id -> key
    addresses: dict[str, frozenset[str]]  # client id -> its IPv4 addresses
    rate_per_s: float = DEFAULT_RATE_PER_S
    burst: int = DEFAULT_BURST
    counters: Counter = field(default_factory=Counter)
    _last_counter: dict[str, int] = field(default_factory=dict)
    # The last report and reply per client: an exact duplicate (the client retrying after a
    # lost ack) gets the same reply again instead of a replay rejection, and changes nothing.
    _last_exchange: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)
    _buckets: dict[str, _Bucket] = field(default_factory=dict)

    def receive(self, datagram: bytes, source_ip: str, now: float) -> Report:
        report = self._receive(datagram, source_ip, now)
        self.counters["accepted" if report.accepted else f"rejected: {_category(report)}"] += 1
        return report

    def _receive(self, datagram: bytes, source_ip: str, now: float) -> Report:
        try:
            client = peek_client(datagram)
        except AgentMessageError as exc:
            return Report(False, f"malformed: {exc}")
        key = self.keys.get(client)
        if key is None:
            return Report(False, "unknown client", client)
        try:
            message = open_sealed(datagram, key)
        except AgentMessageError as exc:
            reason = "forged" if str(exc).startswith("tag:") else f"malformed: {exc}"
            return Report(False, reason, client)
        if message.client != client or isinstance(message, Ack):
            return Report(False, "malformed: not a client report", client)
        last = self._last_exchange.get(client)
        if last is not None and last[0] == datagram:
            return Report(False, "duplicate (answered again)", client, last[1])
        if message.counter <= self._last_counter.get(client, -1):
            return self._reject(key, message, "replayed (counter not increasing)")
        if not self._take_token(client, now):
            # Not answered (the client retries the same datagram) and the counter not
            # consumed, so that retry can still be accepted once tokens are back.
            return Report(False, "rate limited", client)
        self._last_counter[client] = message.counter
        if source_ip not in self.addresses[client]:
            report = self._reject(key, message, f"source {source_ip} is not this client's")
        elif isinstance(message, Announce):
            report = self._announce(key, message, now)
        else:
            report = self._retire(key, message, now)
        self._last_exchange[client] = (datagram, report.reply)
        return report

    def _take_token(self, client: str, now: float) -> bool:
        bucket = self._buckets.setdefault(client, _Bucket(self.burst, now))
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate_per_s)
        bucket.updated = now
        if bucket.tokens < 1:
            return False
        bucket.tokens -= 1
        return True

    def _owned_connection(self, message: Announce | Retire, now: float) -> Connection | str:
        connection = self.table.by_cid(message.connection_cid, now)
        if connection is None:
            return "unknown connection"
        if connection.owner not in (None, message.client):
            return "connection owned by another client"
        client_addresses = self.addresses[message.client]
        if not any(path.src_ip in client_addresses for path in connection.paths):
            return "connection does not belong to this client"
        return connection

    def _announce(self, key: bytes, message: Announce, now: float) -> Report:
        connection = self._owned_connection(message, now)
        if isinstance(connection, str):
            return self._reject(key, message, connection)
        old_path = FlowKey(*message.old, *self.service)
        new_path = FlowKey(*message.new, *self.service)
        if old_path not in connection.paths:
            return self._reject(key, message, "old address is not a path of this connection")
        if message.new[0] not in self.addresses[message.client]:
            return self._reject(key, message, f"new address {message.new[0]} is not this client's")
        owner = self.table.by_cid(message.next_cid, now)
        if owner not in (None, connection):
            return self._reject(key, message, "next CID belongs to another connection")
        owner = self.table.by_path(new_path, now)
        if owner not in (None, connection):
            return self._reject(key, message, "new path belongs to another connection")
        if not (
            self.table.associate_cid(connection, message.next_cid, now)
            and self.table.associate_path(connection, new_path, now)
        ):
            return self._reject(key, message, "connection holds its maximum of CIDs or paths")
        connection.owner = message.client
        connection.migrations += 1
        return Report(
            True, "announced", message.client, self._ack(key, message, True, "ok"),
            connection, new_path=new_path,
        )  # fmt: skip

    def _retire(self, key: bytes, message: Retire, now: float) -> Report:
        connection = self._owned_connection(message, now)
        if isinstance(connection, str):
            return self._reject(key, message, connection)
        path = FlowKey(*message.path, *self.service)
        if len(connection.paths) < 2 or not self.table.retire_path(connection, path):
            return self._reject(key, message, "not a retirable path of this connection")
        connection.owner = message.client
        return Report(
            True, "retired", message.client, self._ack(key, message, True, "ok"),
            connection, retired_path=path,
        )  # fmt: skip

    def _reject(self, key: bytes, message: Announce | Retire, reason: str) -> Report:
        return Report(False, reason, message.client, self._ack(key, message, False, reason))

    @staticmethod
    def _ack(key: bytes, message: Announce | Retire, accepted: bool, reason: str) -> bytes:
        return seal(Ack(message.client, message.counter, accepted, reason[:200]), key)


def _category(report: Report) -> str:
    """The rejection reason without sender-chosen text: a `malformed: FIELD: ...` reason
    quotes the offending value, and unverified senders pick those freely."""
    return report.reason.split(":")[0] if report.reason.startswith("malformed") else report.reason
