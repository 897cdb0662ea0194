"""Connections indexed by every 5-tuple and every connection ID known to belong to them.

A classic middlebox keys state on the 5-tuple; a QUIC-aware one must also find a connection
by the connection IDs it uses (RFC 9312 §3.5 flow association), because migration changes the
5-tuple. One `Connection` holds the policy state of all its paths, so a rate limit, a NAT
mapping or a backend follows the connection, not the address.

Paths are keyed in the client→service direction. Every method takes `now`; nothing here
reads a clock. State ends by idle timeout (RFC 9312 §4.2: at least two minutes recommended)
or least-recently-used eviction at a hard bound; both return the connections that ended, so
the caller gives back what they held (qasm/functions/base.py: `connection_ended`).

Half-open connections (RFC 9312 §4.7: a flood of Initials opens state the server never
answers) are those not `ESTABLISHED`: no evidence yet that the server replied. They end
after the shorter `half_open_timeout_s` of idleness (cause `half_open`), unless a switch
`PROBING` them will report (the caller ends or establishes them then), and at the bound they
are evicted before any established connection: the unprobed oldest first, then the probed.
The table reads both flags lazily (the caller sets them in place and `save`s): each
connection moves between its half-open orders at most once, so every step stays O(1)
amortised.

A `Connection` is plain typed data (the functions' shares included), so it serialises with
`to_json_value` / `from_json_value` and can live in a store shared by middlebox replicas.
`ConnectionStore` is the interface both stores offer: this in-memory table, the embedded
default, and `qasm.state.redis_store.RedisConnectionTable`, shared by replicas. Callers change
a connection in place and then `save` it (a no-op here; a write-back to Redis there).
"""

from __future__ import annotations

import functools
import itertools
import typing
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

from qasm.codec import from_json_value, to_json_value
from qasm.compact import compact
from qasm.flow import FlowKey

# RFC 9312 §4.2: "a state timeout of at least two minutes is recommended for QUIC traffic".
DEFAULT_IDLE_TIMEOUT_S = 120.0
DEFAULT_MAX_CONNECTIONS = 100_000
# RFC 9312 §4.7 asks for a short timeout for state the server never confirmed; a handshake
# answers within a round trip (tens of ms here, a second on the worst real paths), so two
# seconds hold a real client's retransmitted Initial and free a flood's slots 60x sooner.
DEFAULT_HALF_OPEN_TIMEOUT_S = 2.0
# A connection's last-seen time is the `now` of the packet-in that saw it, a float of its own
# (`time.monotonic()` per packet-in): 24 B a connection, 32 as pymalloc rounds it. The table
# lets connections seen within this long of one another hold the first one's float instead,
# so a time costs a connection its share of one float (make bench: bytes per connection,
# 514 -> 490 B; a million 470 -> 448 MiB, 501 -> 476 MiB resident). The saving is the
# controller's whatever its traffic, not an artefact of the bench's fill: with the 120 s idle
# timeout its connections hold at most 12,000 distinct times (one a tick), 2.9 B a
# connection at 100,000, 0.3 B at a million. A time read up to a tick early ends a
# connection up to 10 ms early: 0.5 % of the half-open timeout, 0.01 % of the idle one.
SEEN_RESOLUTION_S = 0.01
# Why a connection left the table (ConnectionTable.take_ended).
EXPIRED = "expired"
EVICTED = "evicted"
HALF_OPEN = "half_open"  # never established, ended by the half-open timeout or a probe
# The middlebox functions that keep per-connection state (docs: DESIGN.md, `functions:`; the
# rate limiter's is the connection's id, its meter); each one's state is the `Connection`
# slot of its name.
FUNCTION_NAMES = ("firewall", "nat", "loadbalancer")


class RecencyLinks:
    """A connection's place in its in-memory table's least-recently-used order: the order is
    a circular doubly linked list through the connections themselves (the table holds the
    head), so it costs two pointers a connection where an OrderedDict entry cost 105 bytes
    (make bench: bytes per connection), and the indexes point at connections, not ids. Not
    dataclass fields: they are the table's, never serialised; unset or None outside a table."""

    __slots__ = ("newer", "older")


# Not frozen: built per admitted path (see qasm/controller/messages.py).
@dataclass(slots=True)
class PathEnds:
    """Where a path's two ends are on the hop's switch, once both are located."""

    client_port: int
    client_mac: str
    service_port: int


# The bits of a connection's `flags`.
# cid/qasm: the service's packets are copied to the controller until a server CID is learnt
# from a long header (RFC 9312 §3.5).
OBSERVING = 1
# Evidence that the server answered (its packet seen, a probe rule that forwarded some, an
# authenticated Client Agent's report); until then the connection is half-open.
ESTABLISHED = 2
# A switch holds a probe rule for the connection's service-side packets that reports when it
# goes (pipeline.py): the half-open timeout is the switch's, not the table's.
PROBING = 4
# What a connection serialises besides its functions' states, in order; the three index
# fields are held `compact` (see `Connection`) but read and written as tuples.
SERIALISED_FIELDS = (
    "id", "last_seen", "paths", "retired_paths", "server_cids", "owner", "flags",
)  # fmt: skip


@dataclass(eq=False, slots=True, init=False)
class Connection(RecencyLinks):
    id: int
    # No creation time: nothing read it, and it cost 32 bytes a connection (its slot and a
    # float of its own, `now` of its first packet).
    last_seen: float
    # The client→service 5-tuples, the retired ones and the server CIDs (the DCIDs the
    # client sends to), read and written through the tuple-valued properties `paths`,
    # `retired_paths` and `server_cids`. Tuples, not sets: an empty set costs 216 bytes
    # where an empty tuple costs none; held `compact`: a connection usually holds one path
    # and one CID, and a tuple of one costs 48 bytes (make bench: bytes per connection).
    _paths: FlowKey | tuple[FlowKey, ...]
    _retired_paths: FlowKey | tuple[FlowKey, ...]
    _server_cids: bytes | tuple[bytes, ...]
    owner: str | None  # the client agent that reported this connection, if any
    # No count of its migrations: nothing read it, and its slot cost 8 bytes a connection.
    # OBSERVING | ESTABLISHED | PROBING, the bits that are set: one slot holding a small
    # int, which Python shares, where a slot per flag cost 24 bytes (make bench: bytes per
    # connection). Bits, not bool properties over them: sans-I/O decisions were ~3% slower
    # with a property call per read, ~1-2% with bit tests (measured interleaved).
    flags: int
    # Where a path's ends are on a switch and when its rules went there are the switch's,
    # not the connection's (pipeline.py: OnSwitch), so replicas never share them.
    # Each function's typed state (qasm/functions/: FirewallState, NatState,
    # LoadBalancerState), in the slot named after the function; None until it keeps one.
    # Slots, not a dict of name → state: a dict holding one state cost 184 bytes a
    # connection, a slot costs 8 (make bench: bytes per connection).
    firewall: Any
    nat: Any
    loadbalancer: Any

    def __init__(
        self,
        id: int,
        last_seen: float,
        paths: tuple[FlowKey, ...] = (),
        retired_paths: tuple[FlowKey, ...] = (),
        server_cids: tuple[bytes, ...] = (),
        owner: str | None = None,
        flags: int = 0,
        firewall: Any = None,
        nat: Any = None,
        loadbalancer: Any = None,
    ) -> None:
        self.id = id
        self.last_seen = last_seen
        self._paths = compact(paths)
        self._retired_paths = compact(retired_paths)
        self._server_cids = compact(server_cids)
        self.owner = owner
        self.flags = flags
        self.firewall = firewall
        self.nat = nat
        self.loadbalancer = loadbalancer

    @property
    def paths(self) -> tuple[FlowKey, ...]:
        held = self._paths  # `expand`, inline: a packet-in reads these several times
        return held if type(held) is tuple else (held,)

    @paths.setter
    def paths(self, paths: tuple[FlowKey, ...]) -> None:
        self._paths = paths[0] if len(paths) == 1 else paths  # `compact`, inline

    @property
    def retired_paths(self) -> tuple[FlowKey, ...]:
        held = self._retired_paths  # `expand`, inline: a packet-in reads these several times
        return held if type(held) is tuple else (held,)

    @retired_paths.setter
    def retired_paths(self, paths: tuple[FlowKey, ...]) -> None:
        self._retired_paths = paths[0] if len(paths) == 1 else paths  # `compact`, inline

    @property
    def server_cids(self) -> tuple[bytes, ...]:
        held = self._server_cids  # `expand`, inline: a packet-in reads these several times
        return held if type(held) is tuple else (held,)

    @server_cids.setter
    def server_cids(self, cids: tuple[bytes, ...]) -> None:
        self._server_cids = cids[0] if len(cids) == 1 else cids  # `compact`, inline

    def function_states(self) -> dict[str, Any]:
        """Function name → its state, for the functions that keep one."""
        states = {name: getattr(self, name) for name in FUNCTION_NAMES}
        return {name: state for name, state in states.items() if state is not None}

    def to_json_value(self) -> dict:
        value = {name: to_json_value(getattr(self, name)) for name in SERIALISED_FIELDS}
        value["functions"] = {name: to_json_value(s) for name, s in self.function_states().items()}
        return value

    @classmethod
    def from_json_value(cls, value: dict, state_types: dict[str, type]) -> Connection:
        """The inverse of `to_json_value`; `state_types` maps function names to their state
        dataclass."""
        types = _serialised_field_types()
        return cls(
            **{
                name: from_json_value(types[name], value[name], f"connection.{name}")
                for name in SERIALISED_FIELDS
            },
            **{
                name: from_json_value(state_types[name], state, f"connection.functions.{name}")
                for name, state in value.get("functions", {}).items()
            },
        )


@functools.cache
def _serialised_field_types() -> dict[str, Any]:
    """Each of `SERIALISED_FIELDS`' type as `Connection.__init__` takes it (the index fields as
    tuples, not as they are held)."""
    return typing.get_type_hints(Connection.__init__)


class ConnectionStore(Protocol):
    """What the pipeline, the functions and the Tracking Agent use of a connection table.

    A connection's paths, retired paths and server CIDs change only through the store's
    methods (they are indexes); everything else of it (its functions' states, `ends`,
    `owner`, its flags...) the caller changes in place and then hands to `save`, before
    the decision that depends on it leaves the process (another replica may read it next).
    """

    idle_timeout_s: float
    half_open_timeout_s: float
    max_connections: int
    evicted: int  # connections this store instance ended at the bound
    expired: int  # ... and by idle timeout
    half_open_ended: int  # ... and as half-open (timeout, or `end_half_open`)
    cid_lengths: set[int]
    # Whether the last `put` found the path's connection made by another replica (racing on
    # its first packet) instead of making one: then it was opened already.
    last_put_existing: bool

    def __len__(self) -> int: ...
    def connections(self) -> list[Connection]: ...
    def by_path(self, path: FlowKey, now: float) -> Connection | None: ...
    def by_cid(self, cid: bytes, now: float) -> Connection | None: ...
    def retired_by(self, path: FlowKey) -> Connection | None: ...
    def put(self, path: FlowKey, now: float) -> Connection: ...
    def associate_path(self, connection: Connection, path: FlowKey, now: float) -> bool: ...
    def associate_cid(self, connection: Connection, cid: bytes, now: float) -> bool: ...
    def forget_path(self, connection: Connection, path: FlowKey) -> None: ...
    def forget_cid(self, connection: Connection, cid: bytes) -> None: ...
    def retire_path(self, connection: Connection, path: FlowKey) -> bool: ...
    def save(self, connection: Connection, now: float) -> bool: ...
    def expire(self, now: float) -> None: ...
    def take_ended(self) -> list[tuple[Connection, str]]: ...
    def end_half_open(self, connection: Connection) -> bool: ...
    def remove(self, connection: Connection) -> None: ...
    def is_live(self, connection: Connection) -> bool: ...


class TableBounds:
    """The bounds every `ConnectionStore` keeps (in memory or in Redis), checked once."""

    def __init__(
        self,
        idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_cids_per_connection: int = 16,
        max_paths_per_connection: int = 16,
        half_open_timeout_s: float | None = None,
    ) -> None:
        if idle_timeout_s <= 0 or max_connections <= 0:
            raise ValueError("idle_timeout_s and max_connections must be positive")
        if half_open_timeout_s is not None and half_open_timeout_s <= 0:
            raise ValueError("half_open_timeout_s must be positive")
        self.idle_timeout_s = idle_timeout_s
        # None: no shorter timeout for half-open connections (they still go first at the bound).
        self.half_open_timeout_s = min(half_open_timeout_s or idle_timeout_s, idle_timeout_s)
        self.max_connections = max_connections
        self.max_cids_per_connection = max_cids_per_connection
        self.max_paths_per_connection = max_paths_per_connection


class ConnectionTable(TableBounds):
    """get / put / associate / expire, all taking `now`: the in-memory `ConnectionStore`."""

    def __init__(
        self,
        idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_cids_per_connection: int = 16,
        max_paths_per_connection: int = 16,
        half_open_timeout_s: float | None = None,
    ) -> None:
        super().__init__(
            idle_timeout_s, max_connections, max_cids_per_connection,
            max_paths_per_connection, half_open_timeout_s,
        )  # fmt: skip
        self.evicted = 0
        self.expired = 0
        self.half_open_ended = 0
        self.cid_lengths: set[int] = set()  # lengths of server CIDs seen (short-header parsing)
        self.last_put_existing = False  # one table, no other replica: every put makes one
        # LRU order: the head of the list through the connections' `RecencyLinks`; its
        # `newer` is the least recently used connection, its `older` the most (empty: itself).
        # Not a plain dict popped and reinserted: the holes that leaves at its front make
        # finding the oldest, on every packet-in, scan them (measured: 590 µs with 50,000 of
        # 100,000 refreshed).
        self._recency = RecencyLinks()
        self._recency.newer = self._recency.older = self._recency
        self._count = 0
        # Half-open connections in LRU order: not probed (the table's clock ends them), and
        # probed (a switch will). Established ones leave on `save`; ended ones, and any
        # established but not saved, lazily (`_first_half_open`).
        self._half_open: OrderedDict[int, Connection] = OrderedDict()
        self._probed: OrderedDict[int, Connection] = OrderedDict()
        self._by_path: dict[FlowKey, Connection] = {}
        self._by_cid: dict[bytes, Connection] = {}
        self._by_retired_path: dict[FlowKey, Connection] = {}
        self._ids = itertools.count(1)
        self._ended: list[tuple[Connection, str]] = []
        self._seen_at = float("-inf")  # the float connections seen now share (`_seen`)

    def __len__(self) -> int:
        return self._count

    def connections(self) -> list[Connection]:
        """Least recently used first."""
        found = []
        connection = self._recency.newer
        while connection is not self._recency:
            found.append(connection)
            connection = connection.newer
        return found

    # --- lookups (a hit refreshes the connection) ---------------------------------------

    def by_path(self, path: FlowKey, now: float) -> Connection | None:
        return self._live(self._by_path.get(path), now)

    def by_cid(self, cid: bytes, now: float) -> Connection | None:
        return self._live(self._by_cid.get(cid), now)

    def retired_by(self, path: FlowKey) -> Connection | None:
        """The connection in the table whose client retired this path (not refreshed: traffic
        on a retired path does not keep a connection alive)."""
        return self._by_retired_path.get(path)

    def _live(self, connection: Connection | None, now: float) -> Connection | None:
        if connection is None:
            return None
        if now - connection.last_seen > self.idle_timeout_s:
            self._end(connection, EXPIRED)
            return None
        if self._half_open_due(connection, now):
            self._end(connection, HALF_OPEN)
            return None
        held = self._seen_at  # `_seen`, inline: this is every lookup
        if not 0.0 <= now - held < SEEN_RESOLUTION_S:
            self._seen_at = held = now
        connection.last_seen = held
        head = self._recency
        newest = head.older
        if newest is not connection:  # to the newest end, inline: this is every lookup
            connection.older.newer = connection.newer
            connection.newer.older = connection.older
            connection.older, connection.newer = newest, head
            newest.newer = head.older = connection
        if not connection.flags & ESTABLISHED:  # an established one leaves the orders on `save`
            for order in (self._half_open, self._probed):
                if connection.id in order:
                    order.move_to_end(connection.id)
        return connection

    def _seen(self, now: float) -> float:
        """`now` as a connection's last-seen time: the float the table took for an earlier
        `now` less than `SEEN_RESOLUTION_S` before it, else `now` itself, taken."""
        held = self._seen_at
        if 0.0 <= now - held < SEEN_RESOLUTION_S:
            return held
        self._seen_at = now
        return now

    def _oldest(self) -> Connection | None:
        oldest = self._recency.newer
        return None if oldest is self._recency else oldest

    def _half_open_due(self, connection: Connection, now: float) -> bool:
        return (
            not connection.flags & (ESTABLISHED | PROBING)
            and now - connection.last_seen > self.half_open_timeout_s
        )

    def _first_half_open(self, order: OrderedDict[int, Connection]) -> Connection | None:
        """The least recently seen connection of a half-open order that still belongs there;
        an established or ended one leaves it, a probed one moves to the probed order."""
        while order:
            connection = next(iter(order.values()))
            probing = connection.flags & PROBING != 0
            if connection.flags & ESTABLISHED or not self.is_live(connection):
                del order[connection.id]
            elif (order is self._half_open) == probing:
                # Its probe started (or went without a verdict): to the other order, whose
                # clock is now its own.
                del order[connection.id]
                other = self._probed if probing else self._half_open
                other[connection.id] = connection
            else:
                return connection
        return None

    # --- updates --------------------------------------------------------------------------

    def put(self, path: FlowKey, now: float) -> Connection:
        """A new connection first seen on `path`; the least recently used ones beyond the
        bound are evicted (see `take_ended`)."""
        connection = Connection(next(self._ids), last_seen=self._seen(now))
        head = self._recency
        connection.older, connection.newer = head.older, head
        head.older.newer = head.older = connection
        self._count += 1
        self.associate_path(connection, path, now)
        while self._count > self.max_connections:
            self._end(self._victim(connection), EVICTED)
        self._half_open[connection.id] = connection  # new: the server has not answered yet
        return connection

    def _victim(self, spared: Connection) -> Connection:
        """Whom the bound evicts: a half-open connection (not probed, then probed, least
        recently seen first) before any established one (RFC 9312 §4.7); never `spared`."""
        for order in (self._half_open, self._probed):
            victim = self._first_half_open(order)
            if victim is not None:
                return victim
        oldest = self._oldest()
        return oldest.newer if oldest is spared else oldest

    def associate_path(self, connection: Connection, path: FlowKey, now: float) -> bool:
        """Adds a 5-tuple to the connection; False when the path belongs to another one or
        the connection already holds its maximum of paths."""
        owner = self._by_path.get(path)
        if owner is not None and owner is not connection:
            return False
        paths = connection.paths
        if path not in paths:
            if len(paths) >= self.max_paths_per_connection:
                return False
            connection.paths = (*paths, path)
            retired = connection.retired_paths
            if path in retired:
                connection.retired_paths = _without(retired, path)
                self._by_retired_path.pop(path, None)
            self._by_path[path] = connection
        connection.last_seen = self._seen(now)
        return True

    def associate_cid(self, connection: Connection, cid: bytes, now: float) -> bool:
        """Adds a server connection ID; False when another connection holds it or the
        connection already holds its maximum of CIDs."""
        owner = self._by_cid.get(cid)
        if owner is not None and owner is not connection:
            return False
        cids = connection.server_cids
        if cid not in cids:
            if len(cids) >= self.max_cids_per_connection:
                return False
            connection.server_cids = (*cids, cid)
            self._by_cid[cid] = connection
            self.cid_lengths.add(len(cid))
        connection.last_seen = self._seen(now)
        return True

    def forget_path(self, connection: Connection, path: FlowKey) -> None:
        """Undoes `associate_path` (not a retirement: the path was never used)."""
        paths = connection.paths
        if path in paths:
            connection.paths = _without(paths, path)
            self._by_path.pop(path, None)

    def forget_cid(self, connection: Connection, cid: bytes) -> None:
        """Undoes `associate_cid`."""
        cids = connection.server_cids
        if cid in cids:
            connection.server_cids = _without(cids, cid)
            self._by_cid.pop(cid, None)

    def retire_path(self, connection: Connection, path: FlowKey) -> bool:
        paths = connection.paths
        if path not in paths:
            return False
        connection.paths = _without(paths, path)
        connection.retired_paths += (path,)
        self._by_path.pop(path, None)
        self._by_retired_path[path] = connection
        return True

    def save(self, connection: Connection, now: float) -> bool:
        """Nothing to write back: the table holds the very object the caller changed, but an
        established connection leaves the half-open orders now, not when it reaches their
        front: an entry there is 105 bytes, which a table of established connections would
        otherwise carry for each. False when the connection is no longer in the table (it
        ended meanwhile)."""
        if not self.is_live(connection):
            return False
        if connection.flags & ESTABLISHED:
            self._half_open.pop(connection.id, None)
            self._probed.pop(connection.id, None)
        return True

    def expire(self, now: float) -> None:
        """Ends the connections idle for longer than the timeout, and the half-open ones
        (not probed) idle for longer than the half-open timeout (see `take_ended`)."""
        while (connection := self._oldest()) is not None:
            if now - connection.last_seen <= self.idle_timeout_s:
                break
            self._end(connection, EXPIRED)
        while (connection := self._first_half_open(self._half_open)) is not None:
            if not self._half_open_due(connection, now):
                break
            self._end(connection, HALF_OPEN)

    def end_half_open(self, connection: Connection) -> bool:
        """Ends a connection a probe found half-open (see `take_ended`); False when it is no
        longer in the table or was established meanwhile."""
        if connection.flags & ESTABLISHED or not self.is_live(connection):
            return False
        self._end(connection, HALF_OPEN)
        return True

    def take_ended(self) -> list[tuple[Connection, str]]:
        """Connections that ended since the last call, by idle timeout (`expired`, also found
        on a lookup), at the bound (`evicted`) or as half-open (`half_open`): whoever holds
        resources for them (NAT ports, meters, rules) gives them back."""
        ended, self._ended = self._ended, []
        return ended

    def _end(self, connection: Connection, cause: str) -> None:
        self._remove(connection)
        if cause == EXPIRED:
            self.expired += 1
        elif cause == HALF_OPEN:
            self.half_open_ended += 1
        else:
            self.evicted += 1
        self._ended.append((connection, cause))

    def remove(self, connection: Connection) -> None:
        """Forgets a connection at once (a policy refused it)."""
        self._remove(connection)

    def is_live(self, connection: Connection) -> bool:
        # Linked while in a table (one in-memory table per hop holds a connection); never
        # linked, or unlinked when it left.
        return getattr(connection, "newer", None) is not None

    def _remove(self, connection: Connection) -> None:
        if not self.is_live(connection):
            return
        connection.older.newer = connection.newer
        connection.newer.older = connection.older
        connection.older = connection.newer = None
        self._count -= 1
        self._half_open.pop(connection.id, None)
        self._probed.pop(connection.id, None)
        for path in connection.paths:
            if self._by_path.get(path) is connection:
                del self._by_path[path]
        for cid in connection.server_cids:
            if self._by_cid.get(cid) is connection:
                del self._by_cid[cid]
        for path in connection.retired_paths:
            if self._by_retired_path.get(path) is connection:
                del self._by_retired_path[path]


def _without(items: tuple, item) -> tuple:
    return tuple(x for x in items if x != item)
