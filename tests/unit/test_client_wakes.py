"""When the transfer loop wakes without traffic: at a time-based migration's moment, else
after the process's idle interval (a thousand connections must not poll every 20 ms)."""

from __future__ import annotations

import argparse
import asyncio
import time
from types import SimpleNamespace

import pytest

from testbed.apps import client as client_app
from testbed.apps.client import ClientReport, MigrationPlan
from testbed.migration import MigrationKind

IDLE = 0.4


def _plan(**timing) -> MigrationPlan:
    return MigrationPlan(MigrationKind("nat-rebind"), ("10.0.0.1",), **timing)


def _migrator(started=0, last_start=None, busy=False) -> SimpleNamespace:
    return SimpleNamespace(started=started, last_start=last_start, busy=busy)


def _report(first_byte_sent_at: float) -> ClientReport:
    report = ClientReport(client="h1")
    report.first_byte_sent_at = first_byte_sent_at
    return report


def test_the_first_migration_at_a_time_wakes_the_loop_at_that_time():
    now = time.monotonic()
    plan = _plan(at_seconds=0.1)
    wake = client_app._next_wake(plan, _migrator(), _report(now), IDLE)
    assert wake == pytest.approx(now + 0.1, abs=0.01)


def test_a_repeated_migration_wakes_the_loop_when_the_next_is_due():
    now = time.monotonic()
    plan = _plan(at_seconds=0.0, repeat_every_s=0.05)
    wake = client_app._next_wake(plan, _migrator(started=3, last_start=now), _report(now), IDLE)
    assert wake == pytest.approx(now + 0.05, abs=0.01)


def test_without_a_migration_due_the_loop_wakes_after_the_idle_interval():
    now = time.monotonic()
    for plan, migrator in [
        (None, None),
        (_plan(at_bytes=1000), _migrator()),  # bytes arrive with datagrams, which wake it
        (_plan(at_seconds=0.1), _migrator(busy=True)),  # its end wakes it
        (_plan(at_seconds=0.1), _migrator(started=1, last_start=now)),  # done, no repeat
        (_plan(at_seconds=0.0), _migrator()),  # due, waiting for the handshake's datagrams
        (_plan(at_seconds=5.0), _migrator()),  # later than the idle interval
    ]:
        wake = client_app._next_wake(plan, migrator, _report(now), IDLE)
        assert wake == pytest.approx(now + IDLE, abs=0.01), (plan, migrator)


def test_the_idle_interval_is_the_processs_budget_shared_by_its_connections():
    one = client_app._idle_wake_s(argparse.Namespace(connections=1))
    many = client_app._idle_wake_s(argparse.Namespace(connections=20))
    assert one == client_app.PROGRESS_INTERVAL_S  # one connection samples as finely as ever
    assert many == pytest.approx(20 / client_app.IDLE_WAKES_PER_PROCESS_S)


def test_progress_or_deadline_returns_at_the_deadline_or_on_progress():
    async def scenario() -> tuple[float, float]:
        protocol = SimpleNamespace(progress=asyncio.Event())
        started = time.monotonic()
        await client_app._progress_or_deadline(protocol, started + 0.05)
        timed_out = time.monotonic() - started
        protocol.progress.clear()
        asyncio.get_running_loop().call_later(0.01, protocol.progress.set)
        started = time.monotonic()
        await client_app._progress_or_deadline(protocol, started + 30)
        return timed_out, time.monotonic() - started

    timed_out, woken = asyncio.run(scenario())
    assert timed_out >= 0.05
    assert woken < 5  # the set, not the 30 s deadline, ended the wait
