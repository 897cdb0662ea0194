"""Repeated migration with a Client Agent announces the next path ahead of its moment: the
migration then waits for no exchange, each announcement retires the path left before, and a
path announced but never used is retired when the transfer ends."""

from __future__ import annotations

import asyncio
import itertools
from types import SimpleNamespace

from testbed.apps import client as client_app
from testbed.apps.client import MigrationPlan
from testbed.migration import MigrationKind
from tests.unit.conftest import FakeDatagramSocket

REPEAT_S = 0.02
_ports = itertools.count(2000)


class _Protocol:
    def __init__(self) -> None:
        self.transport = FakeDatagramSocket(("10.0.1.1", 1000))
        self._quic = SimpleNamespace()
        self.close_event = None
        self.progress = asyncio.Event()
        self.stack = SimpleNamespace(
            smoothed_rtt_s=lambda quic: 0.001,
            spare_peer_cids=lambda quic: 4,
            peer_cid=lambda quic: b"\x01" * 8,
            peer_cid_next=lambda quic: b"\x02" * 8,
        )

    def switch_transport(self, transport, new_cid: bool) -> None:
        self.transport = transport


class _Agent:
    """Records each report: (what, old, new, retire) or (what, path)."""

    def __init__(self) -> None:
        self.reports: list[tuple] = []
        self.pending: list = []
        self.agent = self

    def announce(self, quic, old, new, new_cid, retire):
        self.reports.append(("announce", old, new, retire))

    def retire(self, quic, path):
        self.reports.append(("retire", path))

    async def exchange(self, build, local_ip, what, name, rtt_s):
        build()
        await asyncio.sleep(0)  # the ack is a round trip away: others run meanwhile
        return {"accepted": True}


def _migrator(repeat_every_s: float) -> tuple[_Agent, client_app.Migrator]:
    """A nat-rebind Migrator with a recording agent, its sockets fakes of this event loop's."""

    async def create_datagram_endpoint(factory, local_addr):
        return FakeDatagramSocket((local_addr[0], next(_ports))), None

    asyncio.get_running_loop().create_datagram_endpoint = create_datagram_endpoint
    agent = _Agent()
    plan = MigrationPlan(
        MigrationKind("nat-rebind"), ("10.0.1.1",), at_seconds=0.0, repeat_every_s=repeat_every_s
    )
    return agent, client_app.Migrator(_Protocol(), plan, agent, "c1", ("10.0.0.100", 4433))


def _run(moves: int, stop_ahead_before_last: bool = False, stop_during_last: bool = False):
    async def scenario():
        loop = asyncio.get_running_loop()
        agent, migrator = _migrator(REPEAT_S)
        moved = []
        for index in range(moves):
            exchanged_before = len(agent.reports)
            if stop_ahead_before_last and index == moves - 1:
                migrator.stop_announcing_ahead()  # the transfer ended (client.py's run)
            migration = loop.create_task(migrator.migrate(index))
            if stop_during_last and index == moves - 1:
                await asyncio.sleep(0)  # under way
                migrator.stop_announcing_ahead()  # the transfer ended meanwhile
            record = await migration
            record["exchanges"] = len(agent.reports) - exchanged_before
            moved.append(record)
            await asyncio.sleep(REPEAT_S)
        migrator.stop_announcing_ahead()
        for task in migrator.in_flight():
            await task
        migrator.retire_old_paths()
        await asyncio.gather(*agent.pending)
        return moved, agent.reports, migrator

    return asyncio.run(scenario())


def test_after_the_first_each_migration_uses_a_path_announced_ahead():
    moved, reports, _ = _run(moves=3)
    assert [m["announced_ahead"] for m in moved] == [False, True, True]
    assert [m["exchanges"] for m in moved] == [1, 0, 0]  # no wait on the agent
    announces = [r for r in reports if r[0] == "announce"]
    # Each announcement of the next path comes from the path the connection is on, with the
    # path it left retired in the same message.
    for (_, old, _new, retire), move in zip(announces[1:], moved, strict=False):
        assert old == tuple(move["to"]) and retire == tuple(move["from"])
    assert tuple(moved[1]["to"]) == announces[1][2]


def test_a_path_announced_but_never_used_is_retired_at_the_end():
    moved, reports, migrator = _run(moves=2)
    unused = [r[2] for r in reports if r[0] == "announce"][-1]
    assert unused not in [tuple(m["to"]) for m in moved]
    assert ("retire", unused) in reports
    assert migrator.ahead is None


def test_once_stopped_no_next_path_is_announced():
    moved, reports, migrator = _run(moves=2, stop_ahead_before_last=True)
    announced = [r[2] for r in reports if r[0] == "announce"]
    assert announced == [tuple(m["to"]) for m in moved]  # none beyond the last move
    assert migrator.ahead is None


def test_a_migration_that_ends_after_the_stop_announces_no_next_path():
    """The transfer ended while a migration was under way (client.py waits for it): that
    migration must not set up the next announcement, which nobody would retire (measured:
    a connection ending with two NAT mappings at 200 Hz)."""
    moved, reports, migrator = _run(moves=1, stop_during_last=True)
    announced = [r[2] for r in reports if r[0] == "announce"]
    assert announced == [tuple(m["to"]) for m in moved]
    assert migrator.ahead is None


def test_the_next_path_is_announced_as_soon_as_the_connection_moved():
    """Not half an interval later: an exchange takes a few ms under load, and at 100 Hz a
    quarter to a half of the migrations found the next path still unannounced."""

    async def scenario():
        agent, migrator = _migrator(repeat_every_s=10.0)
        left = migrator.paths[0]
        moved = await migrator.migrate(0)
        for _ in range(5):  # no time passes: only what is already due runs
            await asyncio.sleep(0)
        announces = [r for r in agent.reports if r[0] == "announce"]
        # The path just left is retired by the announcement, its socket kept a little longer.
        lingering = left.transport.closed
        await asyncio.sleep(3 * 0.001 + 0.01)  # OLD_PATH_RTTS smoothed RTTs of 1 ms
        migrator.stop_announcing_ahead()
        return moved, announces, lingering, left.transport.closed

    moved, announces, closed_at_once, closed_later = asyncio.run(scenario())
    assert len(announces) == 2
    assert announces[1][1] == tuple(moved["to"]) and announces[1][3] == tuple(moved["from"])
    assert not closed_at_once and closed_later
