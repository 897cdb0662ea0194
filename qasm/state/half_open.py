"""Half-open connections per source (an address or a prefix), to hold each source to a quota.

Under NAT every connection takes a public port, so a source that opens connections the server
never answers could drain the pool long before the half-open timeout frees them (RFC 9312
§4.7). The hop counts each source's half-open connections and refuses the next Initial at the
quota, before it takes a port or a table slot. Entries leave when the connection is
established or ends; `count` also drops any the caller's `still_half_open` denies, so an end
this bookkeeping missed can delay a source's next connection but never lock it out.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable

from qasm.state.connections import Connection

DEFAULT_HALF_OPEN_PER_SOURCE = 32


class HalfOpenBySource:
    def __init__(self) -> None:
        self._by_key: dict[Hashable, dict[int, Connection]] = {}
        self._key_of: dict[int, Hashable] = {}

    def __len__(self) -> int:
        return len(self._key_of)

    def add(self, key: Hashable, connection: Connection) -> None:
        self.discard(connection.id)
        self._by_key.setdefault(key, {})[connection.id] = connection
        self._key_of[connection.id] = key

    def discard(self, connection_id: int) -> None:
        key = self._key_of.pop(connection_id, None)
        if key is None:
            return
        held = self._by_key[key]
        del held[connection_id]
        if not held:
            del self._by_key[key]

    def count(self, key: Hashable, still_half_open: Callable[[Connection], bool]) -> int:
        """The source's half-open connections (O(held): at most the quota plus one)."""
        held = self._by_key.get(key)
        if not held:
            return 0
        for connection in list(held.values()):
            if not still_half_open(connection):
                self.discard(connection.id)
        return len(self._by_key.get(key, ()))
