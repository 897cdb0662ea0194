"""Per-flow state with idle expiry and a hard bound (RFC 9312 §4.2).

QUIC has no network-visible end of flow, so state ends by timer or by least-recently-used
eviction. Every method takes `now` (seconds, any monotonic origin): no clock is read here,
so timeouts are tested without sleeping.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

# RFC 9312 §4.2: "a state timeout of at least two minutes is recommended for QUIC traffic".
DEFAULT_IDLE_TIMEOUT_S = 120.0
DEFAULT_MAX_ENTRIES = 100_000


@dataclass(slots=True)
class _Entry(Generic[V]):
    value: V
    last_seen: float


class FlowTable(Generic[K, V]):
    """Entries ordered by last activity; the oldest is evicted first when full."""

    def __init__(
        self,
        idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
        max_entries: int = DEFAULT_MAX_ENTRIES,
    ) -> None:
        if idle_timeout_s <= 0 or max_entries <= 0:
            raise ValueError("idle_timeout_s and max_entries must be positive")
        self.idle_timeout_s = idle_timeout_s
        self.max_entries = max_entries
        self.evicted = 0
        self._entries: OrderedDict[K, _Entry[V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K, now: float) -> V | None:
        """The live value for `key`, refreshing its activity; None if absent or expired."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now - entry.last_seen > self.idle_timeout_s:
            del self._entries[key]
            return None
        entry.last_seen = now
        self._entries.move_to_end(key)
        return entry.value

    def put(self, key: K, value: V, now: float) -> None:
        self._entries[key] = _Entry(value, now)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
            self.evicted += 1

    def expire(self, now: float) -> list[K]:
        """Removes and returns the keys idle for longer than the timeout."""
        expired = []
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if now - entry.last_seen <= self.idle_timeout_s:
                break
            del self._entries[key]
            expired.append(key)
        return expired
