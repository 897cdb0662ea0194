"""A per-connection rate limit: every path of a connection under one OpenFlow meter.

One meter is one token bucket (rate, burst), so a connection that migrates keeps spending the
same budget instead of getting a fresh bucket per 5-tuple. The connection's state names its
meter (its id: unique across replicas that share a store, whose ids come from one counter);
a meter is a switch's own, so the hop (qasm/controller/pipeline.py) installs it on its
datapath with the first rules that use it there and deletes it when the connection ends: a
replica that takes over a connection installs its own, and meter ids are never left behind.
"""

from __future__ import annotations

from dataclasses import dataclass

from qasm.controller.messages import MeterRule
from qasm.flow import FlowKey
from qasm.functions.base import Change, MiddleboxFunction


@dataclass(frozen=True)
class RateLimit:
    rate_kbps: int
    burst_kbit: int


@dataclass(slots=True)
class RateLimitState:
    meter_id: int | None = None  # the connection's meter, once it has a path


class RateLimiter(MiddleboxFunction):
    name = "ratelimit"
    State = RateLimitState

    def __init__(self, limit: RateLimit) -> None:
        self.limit = limit

    def path_added(self, connection, path: FlowKey, now: float) -> Change:
        state: RateLimitState = self.state(connection)
        if state.meter_id is not None:
            return Change()
        state.meter_id = connection.id
        return Change()

    def meter(self, connection) -> int | None:
        state = connection.ratelimit
        return state.meter_id if state else None

    def meter_rule(self, meter_id: int) -> MeterRule:
        return MeterRule(meter_id, self.limit.rate_kbps, self.limit.burst_kbit)
