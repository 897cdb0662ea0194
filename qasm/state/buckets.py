"""Token buckets by key (a client, a source address or prefix), bounded in number.

A key's bucket holds up to `burst` tokens and refills at `rate_per_s`; taking one fails when
it is empty. Every method takes `now`; nothing here reads a clock. At most `max_keys` buckets
are kept, the least recently used forgotten first: a forgotten key starts full again, which
only errs towards admitting, and keys an attacker invents cannot grow the table.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

DEFAULT_MAX_KEYS = 65_536


class TokenBuckets:
    def __init__(self, rate_per_s: float, burst: int, max_keys: int = DEFAULT_MAX_KEYS) -> None:
        if rate_per_s < 0 or burst < 1 or max_keys < 1:
            raise ValueError("rate_per_s >= 0, burst >= 1 and max_keys >= 1 expected")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_keys = max_keys
        self._buckets: OrderedDict[Hashable, list[float]] = OrderedDict()  # key → [tokens, at]

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, key: Hashable, now: float) -> bool:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = [float(self.burst), now]
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            bucket[0] = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate_per_s)
            bucket[1] = now
        if bucket[0] < 1:
            return False
        bucket[0] -= 1
        return True
