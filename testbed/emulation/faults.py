"""Faults injected during a run, at a time after its connections start (scenario `faults`).

`kill_replica: N, at_seconds: S`: S seconds after the run's start time (the one the runner
writes for the clients; their handshakes are in it), replica N's datapath stops: its links go
down (topologies/replicas.py), and the front and back ends' group buckets that watch its ports
die with them. Time, not bytes: the clients report progress only when they finish, and
polling the switches' counters to find "40 % of the transfer" would cost the controller's
core the CPU the measurement needs; a transfer's duration is steady enough on these machines
(scenarios/replicas.yaml says how its time was chosen). Each record says when each fault
happened (`faults`: seconds after the start, or null if the run ended first).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

# How long after a fault its stall is looked for (a failover takes tens of milliseconds).
STALL_WINDOW_S = 2.0


class FaultSchedule:
    """Timers for a run's faults; `stop()` cancels those not due yet."""

    def __init__(self, faults, start_at: float, kill_replica: Callable[[int], object]) -> None:
        self.faults = tuple(faults)
        self.start_at = start_at  # time.monotonic() of the run's start
        self._kill_replica = kill_replica
        self._done: dict[int, float] = {}  # fault index → seconds after the start
        self._errors: dict[int, str] = {}
        self._timers: list[threading.Timer] = []
        self._lock = threading.Lock()

    def start(self) -> FaultSchedule:
        for index, fault in enumerate(self.faults):
            delay = max(0.0, self.start_at + fault.at_seconds - time.monotonic())
            timer = threading.Timer(delay, self._inject, (index,))
            timer.daemon = True
            self._timers.append(timer)
            timer.start()
        return self

    def _inject(self, index: int) -> None:
        with self._lock:
            try:
                self._kill_replica(self.faults[index].kill_replica)
                self._done[index] = round(time.monotonic() - self.start_at, 4)
            except Exception as exc:  # reported with the record, not lost in a thread
                self._errors[index] = str(exc)

    def stop(self) -> None:
        for timer in self._timers:
            timer.cancel()
        for timer in self._timers:
            timer.join()

    def error(self) -> str | None:
        with self._lock:
            return next(iter(self._errors.values()), None)

    def record(self, report: dict | None = None) -> list[dict]:
        """Each fault as asked, when it happened (null: the run ended before) and, given a
        client's report, the longest its transfer stood still after it (`stall_ms`)."""
        with self._lock:
            done = dict(self._done)
        return [
            {
                "kill_replica": fault.kill_replica,
                "at_seconds": fault.at_seconds,
                "happened_at_s": done.get(index),
                "stall_ms": stall_ms(report, self.start_at + done[index])
                if report is not None and index in done
                else None,
            }
            for index, fault in enumerate(self.faults)
        ]


def stall_ms(report: dict, at: float, window_s: float = STALL_WINDOW_S) -> float | None:
    """The longest time the client's acknowledged bytes stood still from `at` (monotonic)
    on, until the window or the client's next migration ends (its own disruption is not the
    fault's), from its progress samples (every 20 ms while it sends: the resolution); None
    when they never grew again (the transfer had ended, or broke)."""
    migration = report.get("migration") or {}
    end = at + window_s
    if migration.get("at", end) > at:
        end = min(end, migration.get("at", end))
    samples = report.get("progress") or []
    before = [acked for t, acked in samples if t <= at]
    if not before:
        return None
    moments, acked = [at], before[-1]
    for t, value in samples:
        if at < t <= end and value > acked:
            moments.append(t)
            acked = value
    if len(moments) == 1:
        return None
    return round(max(b - a for a, b in zip(moments, moments[1:], strict=False)) * 1000, 1)
