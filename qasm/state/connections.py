"""Connections indexed by every 5-tuple and every connection ID known to belong to them.

A classic middlebox keys state on the 5-tuple; a QUIC-aware one must also find a connection
by the connection IDs it uses (RFC 9312 §3.5 flow association), because migration changes the
5-tuple. One `Connection` holds the policy state of all its paths, so a rate limit, a NAT
mapping or a backend follows the connection, not the address.

Paths are keyed in the client→service direction. Every method takes `now`; nothing here
reads a clock. State ends by idle timeout (RFC 9312 §4.2: at least two minutes recommended)
or least-recently-used eviction at a hard bound.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from qasm.flow import FlowKey
from qasm.state.flows import DEFAULT_IDLE_TIMEOUT_S, DEFAULT_MAX_ENTRIES


@dataclass(eq=False)
class Connection:
    id: int
    created_at: float
    last_seen: float
    paths: set[FlowKey] = field(default_factory=set)  # client→service 5-tuples
    retired_paths: set[FlowKey] = field(default_factory=set)
    server_cids: set[bytes] = field(default_factory=set)  # DCIDs the client sends to
    owner: str | None = None  # the client agent that reported this connection, if any
    migrations: int = 0
    policy: dict[str, Any] = field(default_factory=dict)  # per-function state

    def summary(self) -> dict:
        return {
            "connection": self.id,
            "paths": sorted(str(p) for p in self.paths),
            "server_cids": sorted(c.hex() for c in self.server_cids),
            "migrations": self.migrations,
        }


class ConnectionTable:
    """get / put / associate / expire, all taking `now` (the seam for a shared store)."""

    def __init__(
        self,
        idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
        max_connections: int = DEFAULT_MAX_ENTRIES,
        max_cids_per_connection: int = 16,
        max_paths_per_connection: int = 16,
    ) -> None:
        if idle_timeout_s <= 0 or max_connections <= 0:
            raise ValueError("idle_timeout_s and max_connections must be positive")
        self.idle_timeout_s = idle_timeout_s
        self.max_connections = max_connections
        self.max_cids_per_connection = max_cids_per_connection
        self.max_paths_per_connection = max_paths_per_connection
        self.evicted = 0
        self.expired = 0
        self.cid_lengths: set[int] = set()  # lengths of server CIDs seen (short-header parsing)
        self._connections: OrderedDict[int, Connection] = OrderedDict()
        self._by_path: dict[FlowKey, int] = {}
        self._by_cid: dict[bytes, int] = {}
        self._by_retired_path: dict[FlowKey, int] = {}
        self._ids = itertools.count(1)

    def __len__(self) -> int:
        return len(self._connections)

    def connections(self) -> list[Connection]:
        return list(self._connections.values())

    # --- lookups (a hit refreshes the connection) ---------------------------------------

    def by_path(self, path: FlowKey, now: float) -> Connection | None:
        return self._live(self._by_path.get(path), now)

    def by_cid(self, cid: bytes, now: float) -> Connection | None:
        return self._live(self._by_cid.get(cid), now)

    def retired_by(self, path: FlowKey) -> Connection | None:
        """The connection in the table whose client retired this path (not refreshed: traffic
        on a retired path does not keep a connection alive)."""
        connection_id = self._by_retired_path.get(path)
        return None if connection_id is None else self._connections.get(connection_id)

    def _live(self, connection_id: int | None, now: float) -> Connection | None:
        if connection_id is None:
            return None
        connection = self._connections.get(connection_id)
        if connection is None:
            return None
        if now - connection.last_seen > self.idle_timeout_s:
            self._remove(connection)
            self.expired += 1
            return None
        connection.last_seen = now
        self._connections.move_to_end(connection.id)
        return connection

    # --- updates --------------------------------------------------------------------------

    def put(self, path: FlowKey, now: float) -> tuple[Connection, list[Connection]]:
        """A new connection first seen on `path`; returns it and any connection evicted."""
        connection = Connection(next(self._ids), created_at=now, last_seen=now)
        self._connections[connection.id] = connection
        self.associate_path(connection, path, now)
        evicted = []
        while len(self._connections) > self.max_connections:
            _, oldest = self._connections.popitem(last=False)
            self._remove(oldest)
            self.evicted += 1
            evicted.append(oldest)
        return connection, evicted

    def associate_path(self, connection: Connection, path: FlowKey, now: float) -> bool:
        """Adds a 5-tuple to the connection; False when the path belongs to another one or
        the connection already holds its maximum of paths."""
        owner = self._by_path.get(path)
        if owner is not None and owner != connection.id:
            return False
        if path not in connection.paths:
            if len(connection.paths) >= self.max_paths_per_connection:
                return False
            connection.paths.add(path)
            connection.retired_paths.discard(path)
            self._by_retired_path.pop(path, None)
            self._by_path[path] = connection.id
        connection.last_seen = now
        return True

    def associate_cid(self, connection: Connection, cid: bytes, now: float) -> bool:
        """Adds a server connection ID; False when another connection holds it or the
        connection already holds its maximum of CIDs."""
        owner = self._by_cid.get(cid)
        if owner is not None and owner != connection.id:
            return False
        if cid not in connection.server_cids:
            if len(connection.server_cids) >= self.max_cids_per_connection:
                return False
            connection.server_cids.add(cid)
            self._by_cid[cid] = connection.id
            self.cid_lengths.add(len(cid))
        connection.last_seen = now
        return True

    def retire_path(self, connection: Connection, path: FlowKey) -> bool:
        if path not in connection.paths:
            return False
        connection.paths.discard(path)
        connection.retired_paths.add(path)
        self._by_path.pop(path, None)
        self._by_retired_path[path] = connection.id
        return True

    def expire(self, now: float) -> list[Connection]:
        """Removes and returns the connections idle for longer than the timeout."""
        expired = []
        while self._connections:
            connection = next(iter(self._connections.values()))
            if now - connection.last_seen <= self.idle_timeout_s:
                break
            self._remove(connection)
            expired.append(connection)
        self.expired += len(expired)
        return expired

    def remove(self, connection: Connection) -> None:
        """Forgets a connection at once (a policy refused it)."""
        self._remove(connection)

    def _remove(self, connection: Connection) -> None:
        self._connections.pop(connection.id, None)
        for path in connection.paths:
            if self._by_path.get(path) == connection.id:
                del self._by_path[path]
        for cid in connection.server_cids:
            if self._by_cid.get(cid) == connection.id:
                del self._by_cid[cid]
        for path in connection.retired_paths:
            if self._by_retired_path.get(path) == connection.id:
                del self._by_retired_path[path]
