"""A new path avoids a local port a recent path of the process used: Open vSwitch's
datapath would still hold the old path's cached entry, and the new path's first packets
would go to the controller (PORT_REUSE_DELAY_S in testbed/apps/client.py)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from testbed.apps import client as client_app
from testbed.apps.client import MigrationPlan, RecentPorts
from testbed.migration import MigrationKind
from tests.unit.conftest import FakeDatagramSocket


def test_a_port_is_recent_for_the_delay_after_its_last_use():
    ports = RecentPorts(delay_s=10.0)
    ports.used(("10.0.1.1", 5000), now=100.0)
    assert ports.recent(("10.0.1.1", 5000), now=109.9)
    assert not ports.recent(("10.0.1.1", 5000), now=110.0)
    assert not ports.recent(("10.0.1.1", 5001), now=100.0)
    assert not ports.recent(("10.0.3.1", 5000), now=100.0)  # the address is part of it


def test_pruning_keeps_the_recent_ports():
    ports = RecentPorts(delay_s=1.0)
    ports.PRUNE_AT = 3
    for port in range(4):
        ports.used(("10.0.1.1", port), now=float(port))
    assert ports.recent(("10.0.1.1", 3), now=3.5)
    assert not ports.recent(("10.0.1.1", 0), now=3.5)


def _open_paths(offered: list[int], recent: list[int]):
    """Opens one path while the OS offers `offered` ports in turn and `recent` were used."""
    sockets: list[FakeDatagramSocket] = []

    async def scenario():
        loop = asyncio.get_running_loop()
        ports = iter(offered)

        async def create_datagram_endpoint(factory, local_addr):
            sockets.append(FakeDatagramSocket((local_addr[0], next(ports))))
            return sockets[-1], None

        loop.create_datagram_endpoint = create_datagram_endpoint
        protocol = SimpleNamespace(transport=FakeDatagramSocket(("10.0.1.1", 1000)))
        plan = MigrationPlan(MigrationKind("nat-rebind"), ("10.0.1.1",), at_seconds=0.0)
        migrator = client_app.Migrator(protocol, plan, None, "c1", ("10.0.0.100", 4433))
        migrator.recent_ports = RecentPorts()
        now = client_app.time.monotonic()
        for port in recent:
            migrator.recent_ports.used(("10.0.1.1", port), now)
        path = await migrator._open_path("10.0.1.1")
        return path, migrator

    path, migrator = asyncio.run(scenario())
    return path, sockets, migrator


def test_a_new_path_skips_recently_used_ports_and_closes_their_sockets():
    path, sockets, migrator = _open_paths(offered=[5000, 5001, 5002], recent=[5000, 5001])
    assert path.local == ("10.0.1.1", 5002)
    assert [s.closed for s in sockets] == [True, True, False]
    assert migrator.recent_ports.recent(path.local, client_app.time.monotonic())


def test_when_every_offered_port_is_recent_the_last_one_is_used():
    offered = list(range(5000, 5000 + client_app.PORT_REUSE_TRIES))
    path, sockets, _ = _open_paths(offered=offered, recent=offered)
    assert path.local == ("10.0.1.1", offered[-1])
    assert [s.closed for s in sockets] == [True] * (len(offered) - 1) + [False]


def test_closing_a_path_counts_as_its_last_use(monkeypatch):
    path, _, migrator = _open_paths(offered=[5000], recent=[])
    opened = client_app.time.monotonic()
    monkeypatch.setattr(client_app.time, "monotonic", lambda: opened + 12.0)
    migrator.paths.append(path)
    migrator._close(path)  # 12 s after it was opened
    assert migrator.recent_ports.recent(path.local, now=opened + 15.0)


def test_a_connections_first_socket_skips_a_port_another_connection_just_left():
    # scale.yaml: the OS handed a connection the port another connection of its host had
    # retired a second before, and the middlebox met a new connection on a retired path.
    sockets: list[FakeDatagramSocket] = []
    recent = RecentPorts()
    recent.used(("10.0.1.2", 53579), client_app.time.monotonic())

    async def scenario():
        loop = asyncio.get_running_loop()
        ports = iter([53579, 40000])

        async def create_datagram_endpoint(factory, local_addr):
            sockets.append(FakeDatagramSocket((local_addr[0], next(ports))))
            return sockets[-1], factory()

        loop.create_datagram_endpoint = create_datagram_endpoint
        return await client_app.open_fresh_endpoint(lambda: "protocol", "10.0.1.2", recent)

    transport, protocol, local = asyncio.run(scenario())
    assert local == ("10.0.1.2", 40000) and transport is sockets[1] and protocol == "protocol"
    assert sockets[0].closed and not sockets[1].closed
    assert recent.recent(local, client_app.time.monotonic())
