"""A per-connection rate limit: every path of a connection under one OpenFlow meter.

One meter is one token bucket (rate, burst), so a connection that migrates keeps spending the
same budget instead of getting a fresh bucket per 5-tuple. The meter is created with the
connection's first path rules and deleted when the connection ends, so meter ids (the
connection's id) are never left behind on the switch.
"""

from __future__ import annotations

from dataclasses import dataclass

from qasm.controller.messages import MeterRule, RemoveMeter
from qasm.flow import FlowKey
from qasm.functions.base import Change, MiddleboxFunction


@dataclass(frozen=True)
class RateLimit:
    rate_kbps: int
    burst_kbit: int


@dataclass(slots=True)
class RateLimitState:
    meter_id: int | None = None  # set once the meter is on the switch


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
        return Change([MeterRule(state.meter_id, self.limit.rate_kbps, self.limit.burst_kbit)])

    def connection_ended(self, connection) -> Change:
        state = connection.functions.get(self.name)
        if state is None or state.meter_id is None:
            return Change()
        return Change([RemoveMeter(state.meter_id)])

    def meter(self, connection) -> int | None:
        state = connection.functions.get(self.name)
        return state.meter_id if state else None
