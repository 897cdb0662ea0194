"""A per-connection rate limit: every path of a connection under one OpenFlow meter.

One meter is one token bucket (rate, burst), so a connection that migrates keeps spending the
same budget instead of getting a fresh bucket per 5-tuple. A connection's meter is its id
(unique across replicas that share a store, whose ids come from one counter), so the limiter
keeps no state per connection: a state holding a copy of the id cost every connection a
slot (make bench: bytes per connection), and each limited one 40 bytes more. A meter is a
switch's own, so the hop (qasm/controller/pipeline.py) installs it on its datapath with the
first rules that use it there and deletes it when the connection ends: a replica that takes
over a connection installs its own, and meter ids are never left behind.
"""

from __future__ import annotations

from dataclasses import dataclass

from qasm.controller.messages import MeterRule
from qasm.functions.base import MiddleboxFunction


@dataclass(frozen=True)
class RateLimit:
    rate_kbps: int
    burst_kbit: int


class RateLimiter(MiddleboxFunction):
    name = "ratelimit"

    def __init__(self, limit: RateLimit) -> None:
        self.limit = limit

    def meter(self, connection) -> int:
        return connection.id

    def meter_rule(self, meter_id: int) -> MeterRule:
        return MeterRule(meter_id, self.limit.rate_kbps, self.limit.burst_kbit)
