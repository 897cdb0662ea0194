"""Replicas of one middlebox hop behind a front end, sans-I/O, with a real redis-server: a real
aioquic connection crosses R replica switches of a fake OpenFlow network (tests/unit/
fakenet.py) driven by the real controller. The test plays the front and back ends (which
replica each packet goes to), so a migrated path lands on another replica for certain.

What it pins down: with state in memory a replica that never saw the connection drops its
migrated path; with state in Redis any replica finds the connection (by 5-tuple or DCID),
pushed rules reach every replica, one NAT mapping serves the connection whichever replica
carries it, a replica that takes over after another died finds the connection, and what a
connection held on every replica's switch goes when it ends."""

from __future__ import annotations

import shutil
import uuid

import pytest

from qasm.agents.client import ClientAgent
from qasm.agents.messages import derive_client_key
from qasm.controller.events import (
    AgentReport,
    ConnectionsEnded,
    PacketIn,
    PathInstalled,
    Reason,
    Verdict,
)
from qasm.controller.messages import FlowRule, MeterRule, RemoveMeter
from qasm.controller.pipeline import (
    AgentSettings,
    ConfigError,
    Controller,
    HopSettings,
    MiddleboxConfig,
)
from qasm.flow import FlowKey
from qasm.functions.nat import NatSettings, pool_slice
from qasm.functions.ratelimit import RateLimit
from testbed.redis_server import RedisServer
from tests.unit.conftest import QuicPair, arp_frame, udp_frame
from tests.unit.fakenet import FakeNetwork
from tests.unit.test_chain import RoundTrips

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="redis-server not installed (make setup)"
)

SERVER_IP, SERVER_MAC = "10.0.0.250", "02:00:00:00:04:00"
WIFI_IP, WIFI_MAC = "10.0.1.1", "02:00:00:00:01:01"
LTE_IP, LTE_MAC = "10.0.2.1", "02:00:00:00:02:01"
AGENT_IP, AGENT_MAC = "10.0.0.254", "02:00:00:00:00:fe"
PUBLIC_IP, PUBLIC_MAC = "10.0.100.1", "02:00:00:00:01:01"
TO_SERVICE, TO_CLIENTS = 1, 2  # every replica's ports (replicas are wired alike)
SECRET = b"replica secret"
NAT = NatSettings(PUBLIC_IP, PUBLIC_MAC, first_port=20000, ports=16)


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


class ReplicaBench(RoundTrips):
    """Client (wifi, lte) → front end → replicas 1..R → back end → server. `via` names the
    replica each packet of the client takes (as a hashing front end would pick one), `back`
    the replica each packet of the server takes."""

    def __init__(
        self, variant: str, state: str, redis_url: str | None, replicas: int = 2,
        functions=("firewall", "nat"), mode: str = "push", ratelimit: RateLimit | None = None,
    ) -> None:  # fmt: skip
        self.replicas = replicas
        sources = ((TO_CLIENTS, (WIFI_IP, LTE_IP)), (TO_SERVICE, (SERVER_IP,)))
        hops = tuple(
            HopSettings(
                k, NAT if state == "redis" else pool_slice(NAT, k - 1, replicas), sources, 1
            )
            for k in range(1, replicas + 1)
        )
        agent = AgentSettings(
            ip=AGENT_IP, port=7400, mac=AGENT_MAC,
            keys={"c1": derive_client_key(SECRET, "c1").hex()},
            addresses={"c1": [WIFI_IP, LTE_IP]}, mode=mode,
        )  # fmt: skip
        self.config = MiddleboxConfig(
            variant=variant, service_ip=SERVER_IP, service_port=4433, functions=functions,
            hops=hops, agent=agent if variant == "qasm" else None, state=state,
            state_url=redis_url if state == "redis" else None,
            state_prefix=f"test-{uuid.uuid4().hex[:12]}", ratelimit=ratelimit,
        )  # fmt: skip
        self.controller = Controller(self.config)
        self.net = FakeNetwork(self.controller)
        for k in range(1, replicas + 1):
            self.net.add_switch(k)
            self.net.attach_host(k, TO_CLIENTS, "front")
            self.net.attach_host(k, TO_SERVICE, "back")
        self.pair = QuicPair()
        self.agent = ClientAgent("c1", derive_client_key(SECRET, "c1"))
        self.server_macs: dict[tuple[str, int], str] = {}
        self.via = 1  # the replica the client's packets take
        self.back = 1  # the replica the server's packets take
        # ARP goes through one replica (the front and back ends' first live one).
        self.net.send(1, TO_SERVICE, arp_frame(SERVER_MAC, SERVER_IP, WIFI_IP))
        self.net.send(1, TO_CLIENTS, arp_frame(WIFI_MAC, WIFI_IP, SERVER_IP))
        self.net.send(1, TO_CLIENTS, arp_frame(LTE_MAC, LTE_IP, SERVER_IP))
        self.net.received("front"), self.net.received("back")
        self.net.packet_ins.clear()

    def client_sends(self, datagrams, via="wifi", sport=50000) -> None:
        ip, mac = (WIFI_IP, WIFI_MAC) if via == "wifi" else (LTE_IP, LTE_MAC)
        for datagram in datagrams:
            frame = udp_frame(
                datagram, sport=sport, src=ip, dst=SERVER_IP, eth_src=mac, eth_dst=SERVER_MAC
            )
            self.net.send(self.via, TO_CLIENTS, frame, now=self.pair.now)

    def server_receives(self) -> list[tuple[str, int]]:
        sources = []
        for frame in self.net.received("back"):
            if frame.flow is None:
                continue
            source = (frame.flow.src_ip, frame.flow.src_port)
            self.server_macs[source] = frame.eth_src
            self.pair.server.receive_datagram(frame.udp_payload, source, now=self.pair.now)
            sources.append(source)
        return sources

    def server_replies(self) -> None:
        self.pair.now += 0.001
        for datagram, address in self.pair.server.datagrams_to_send(now=self.pair.now):
            frame = udp_frame(datagram, sport=4433, dport=address[1], src=SERVER_IP,
                              dst=address[0], eth_src=SERVER_MAC,
                              eth_dst=self.server_macs[address])  # fmt: skip
            self.net.send(self.back, TO_SERVICE, frame, now=self.pair.now)

    def client_receives(self) -> int:
        frames = [f for f in self.net.received("front") if f.flow is not None]
        for frame in frames:
            assert (frame.flow.src_ip, frame.flow.src_port) == (SERVER_IP, 4433)
            self.pair.client.receive_datagram(
                frame.udp_payload, (SERVER_IP, 4433), now=self.pair.now
            )
        return len(frames)

    def report(self, datagram: bytes, via="lte") -> None:
        ip, mac = (LTE_IP, LTE_MAC) if via == "lte" else (WIFI_IP, WIFI_MAC)
        frame = udp_frame(
            datagram, sport=7777, dport=7400, src=ip, dst=AGENT_IP, eth_src=mac, eth_dst=AGENT_MAC
        )
        self.net.send(self.via, TO_CLIENTS, frame, now=self.pair.now)
        self.net.received("front")  # the ack

    def migrate(self, kind: str, sport: int, announce: bool, to: int) -> tuple:
        """The client moves; its new path (and the server's replies on it) take replica
        `to`. Returns (sources the server saw, datagrams the client got) of one exchange."""
        via = "lte" if kind == "active" else "wifi"
        new_ip = LTE_IP if via == "lte" else WIFI_IP
        if announce:
            _, datagram = self.agent.announce(
                self.pair.client, (WIFI_IP, 50000), (new_ip, sport), kind == "active"
            )
            self.report(datagram, via)
        if kind == "active":
            self.pair.client.change_connection_id()
        self.via = self.back = to
        self.net.packet_ins.clear()
        self.pair.client.send_ping(7)
        return self.round_trip(via, sport)

    def mappings(self) -> list[int]:
        return [len(state.nat_mappings) for state in self.controller.snapshot()]

    def drops(self) -> list[PacketIn]:
        return [e for e in self.net.events if isinstance(e, PacketIn) and e.verdict is Verdict.DROP]


@pytest.mark.parametrize("kind", ["nat-rebind", "active"])
def test_in_memory_a_replica_that_never_saw_the_connection_drops_its_migrated_path(kind):
    bench = ReplicaBench("qasm", "memory", None)
    bench.handshake()
    sources, received = bench.migrate(kind, 6000, announce=True, to=2)
    assert not sources and not received
    drop = bench.drops()[-1]
    assert (drop.dpid, drop.reason) == (2, Reason.NOT_AN_INITIAL)
    # The agent installed the path where the connection is (replica 1), in vain.
    installs = [e for e in bench.net.events if isinstance(e, PathInstalled)]
    assert [e.dpid for e in installs] == [1]


@pytest.mark.parametrize("kind", ["nat-rebind", "active"])
def test_in_memory_the_path_survives_on_the_replica_that_holds_the_connection(redis_url, kind):
    bench = ReplicaBench("qasm", "memory", None)
    bench.handshake()
    sources, received = bench.migrate(kind, 6000, announce=True, to=1)
    assert sources and received and not bench.net.packet_ins


@pytest.mark.parametrize("kind", ["nat-rebind", "active"])
def test_with_redis_push_installs_the_path_on_every_replica_and_no_packet_reaches_one(
    redis_url, kind
):
    bench = ReplicaBench("qasm", "redis", redis_url)
    bench.handshake()
    sources, received = bench.migrate(kind, 6000, announce=True, to=2)
    assert sources and received
    assert not bench.net.packet_ins  # pre-installed on replica 2 although it never saw it
    installs = [e for e in bench.net.events if isinstance(e, PathInstalled)]
    assert [e.dpid for e in installs] == [1, 2]
    assert [bool(e.nat_allocated) for e in installs] == [True, False]  # one mapping
    assert all(e.flow_mods == 2 for e in installs)
    _, retire = bench.agent.retire(bench.pair.client, (WIFI_IP, 50000))
    bench.report(retire, "lte" if kind == "active" else "wifi")
    assert bench.mappings() == [1]  # one table, written once, holding one mapping


@pytest.mark.parametrize(("kind", "reason"), [
    ("nat-rebind", Reason.DCID_MATCH), ("active", Reason.PULLED_FROM_AGENT),
])  # fmt: skip
def test_with_redis_pull_the_replica_that_meets_the_path_installs_it_once(redis_url, kind, reason):
    bench = ReplicaBench("qasm", "redis", redis_url, mode="pull")
    bench.handshake()
    sources, received = bench.migrate(kind, 6000, announce=True, to=2)
    assert sources and received
    admitted = [e for e in bench.net.events if isinstance(e, PacketIn) and e.dpid == 2]
    assert admitted[0].reason is reason and admitted[0].store_round_trips > 0
    assert dict(bench.net.packet_ins) == {2: 1}
    bench.net.packet_ins.clear()
    bench.pair.client.send_ping(8)
    via = "lte" if kind == "active" else "wifi"
    assert bench.round_trip(via, 6000)[1] and not bench.net.packet_ins


@pytest.mark.parametrize(("variant", "kind", "survives"), [
    ("tuple", "nat-rebind", False), ("tuple", "active", False),
    ("cid", "nat-rebind", True), ("cid", "active", False),
])  # fmt: skip
def test_with_redis_the_passive_variants_do_on_another_replica_what_they_do_on_one(
    redis_url, variant, kind, survives
):
    bench = ReplicaBench(variant, "redis", redis_url)
    bench.handshake()
    sources, received = bench.migrate(kind, 6000, announce=False, to=2)
    assert bool(sources and received) is survives
    if not survives:
        assert bench.drops()[-1].reason is Reason.NOT_AN_INITIAL


def test_with_redis_the_servers_replies_may_take_any_replica(redis_url):
    bench = ReplicaBench("qasm", "redis", redis_url)
    bench.pair.client.connect((SERVER_IP, 4433), now=bench.pair.now)
    bench.via, bench.back = 1, 2
    for _ in range(6):
        bench.round_trip()
    assert bench.pair.client._handshake_confirmed
    # Replica 2 met the replies first: it found the connection by its public port in Redis.
    firsts = [e for e in bench.net.events if isinstance(e, PacketIn) and e.dpid == 2]
    assert firsts[0].reason is Reason.KNOWN_PATH and firsts[0].store_round_trips >= 2
    assert bench.mappings() == [1]


def test_a_replica_that_takes_over_finds_the_connection_by_its_path(redis_url):
    """Failover: replica 1 is gone; the front end sends the same path to replica 2."""
    bench = ReplicaBench("qasm", "redis", redis_url)
    bench.handshake()
    bench.via = bench.back = 2
    bench.net.packet_ins.clear()
    bench.pair.client.send_ping(5)
    sources, received = bench.round_trip()
    assert sources == [(PUBLIC_IP, 20000)] and received  # the same public port
    assert bench.net.packet_ins[2] >= 1
    taken_over = [e for e in bench.net.events if isinstance(e, PacketIn) and e.dpid == 2]
    assert taken_over[0].reason is Reason.KNOWN_PATH
    bench.net.packet_ins.clear()
    bench.pair.client.send_ping(6)
    assert bench.round_trip()[1] and not bench.net.packet_ins  # in replica 2's fast path


def test_in_memory_a_replica_that_takes_over_knows_nothing(redis_url):
    bench = ReplicaBench("qasm", "memory", None)
    bench.handshake()
    bench.via = bench.back = 2
    bench.pair.client.send_ping(5)
    sources, received = bench.round_trip()
    assert not sources and bench.drops()[-1].reason is Reason.NOT_AN_INITIAL


def test_in_memory_replicas_take_ports_from_their_own_slice_of_the_pool():
    bench = ReplicaBench("tuple", "memory", None, replicas=4)
    assert [hop.nat.settings.first_port for hop in bench.controller.hops] == [
        20000, 20004, 20008, 20012,
    ]  # fmt: skip
    bench.via = bench.back = 3
    bench.handshake()
    assert bench.server_macs and list(bench.server_macs)[0] == (PUBLIC_IP, 20008)


def test_a_meter_is_each_switchs_own(redis_url):
    """A replica that carries a connection another replica opened installs the connection's
    meter on its own switch before the first rule that uses it; both go when it ends."""
    bench = ReplicaBench(
        "qasm", "redis", redis_url, functions=("ratelimit", "nat"), ratelimit=RateLimit(8000, 800)
    )
    bench.handshake()
    (connection,) = bench.controller.hops[0].table.connections()
    assert bench.net.switches[1].meters == {connection.id}
    bench.migrate("nat-rebind", 6000, announce=True, to=2)
    assert bench.net.switches[2].meters == {connection.id}
    copy = [e for e in bench.net.events if isinstance(e, PathInstalled) and e.dpid == 2]
    assert copy and bench.net.switches[2].rules
    metered = [r for r in bench.net.switches[2].rules if isinstance(r, FlowRule) and r.meter_id]
    assert metered and all(r.meter_id == connection.id for r in metered)
    # Idle past the timeout: whichever replica finds it ended, both switches are cleared.
    bench.net.events.clear()
    later = bench.pair.now + bench.config.state_idle_timeout_s + 5
    bench.net.send(1, TO_CLIENTS, arp_frame(WIFI_MAC, WIFI_IP, SERVER_IP), now=later)
    ended = [e for e in bench.net.events if isinstance(e, ConnectionsEnded)]
    assert {e.dpid for e in ended} == {1, 2}
    assert sum(len(e.nat_released) for e in ended) == 2  # both paths' ports, once
    assert bench.net.switches[1].meters == bench.net.switches[2].meters == set()
    assert not [r for s in bench.net.switches.values() for r in s.rules if r.meter_id]


def test_a_switch_gets_a_connections_meter_once_whatever_its_paths(redis_url):
    bench = ReplicaBench(
        "qasm", "redis", redis_url, functions=("ratelimit", "nat"), ratelimit=RateLimit(8000, 800)
    )
    sent: list[tuple[int, object]] = []
    decide = bench.controller.packet_in

    def recording(*args, **kwargs):
        decisions = decide(*args, **kwargs)
        sent.extend((d.dpid, m) for d in decisions for m in d.messages)
        return decisions

    bench.controller.packet_in = recording
    bench.handshake()
    bench.migrate("nat-rebind", 6000, announce=True, to=2)
    _, datagram = bench.agent.announce(bench.pair.client, (WIFI_IP, 6000), (WIFI_IP, 6001), False)
    bench.report(datagram, "wifi")
    meters = [(dpid, m) for dpid, m in sent if isinstance(m, MeterRule)]
    assert meters == [(1, MeterRule(1, 8000, 800)), (2, MeterRule(1, 8000, 800))]
    assert not [m for _, m in sent if isinstance(m, RemoveMeter)]


def test_redis_state_needs_its_url_and_replicas_share_one_public_address():
    hop = HopSettings(1, NAT, (), 1)
    with pytest.raises(ConfigError, match="state_url"):
        MiddleboxConfig("tuple", SERVER_IP, 4433, functions=("nat",), hops=(hop,), state="redis")
    other = HopSettings(2, NatSettings("10.0.100.2", PUBLIC_MAC), (), 1)
    with pytest.raises(ConfigError, match="one NAT public address"):
        MiddleboxConfig("tuple", SERVER_IP, 4433, functions=("nat",), hops=(hop, other))
    apart = HopSettings(3, NAT, (), 2)
    with pytest.raises(ConfigError, match="side by side"):
        MiddleboxConfig("tuple", SERVER_IP, 4433, functions=("nat",), hops=(hop, apart, other))
    config = MiddleboxConfig(
        "tuple", SERVER_IP, 4433, functions=("nat",), hops=(hop, HopSettings(2, NAT, (), 1)),
        state="redis", state_url="redis://127.0.0.1:1/0", state_prefix="run",
    )  # fmt: skip
    assert MiddleboxConfig.from_json(config.to_json()) == config


def test_round_trips_per_new_connection_and_per_migration_are_logged(redis_url):
    bench = ReplicaBench("qasm", "redis", redis_url)
    bench.handshake()
    opening = [e for e in bench.net.events if isinstance(e, PacketIn) and e.flow]
    assert sum(e.store_round_trips for e in opening) > 0
    bench.net.events.clear()
    bench.migrate("active", 6000, announce=True, to=2)
    (report,) = [e for e in bench.net.events if type(e).__name__ == "AgentReport"]
    assert report.store_round_trips > 0
    stats = bench.controller.stats()
    assert [s.dpid for s in stats] == [1, 2]
    assert stats[0].store_round_trips == stats[1].store_round_trips > 0
    (connection,) = bench.controller.hops[1].table.connections()
    assert FlowKey(LTE_IP, 6000, SERVER_IP, 4433) in connection.paths


def test_replicas_in_memory_decline_an_admission_ahead_and_hold_nothing():
    """Which replica a connection's first packet reaches is the front end's hash: no replica
    can be told ahead, so none opens it and the Initial decides."""
    bench = ReplicaBench("qasm", "memory", None, mode="ahead")
    _, datagram = bench.agent.admit((WIFI_IP, 50000))
    bench.net.events.clear()
    bench.report(datagram, via="wifi")
    (report,) = [e for e in bench.net.events if isinstance(e, AgentReport)]
    assert report.reason is Reason.NOT_ADMITTED_AHEAD and "2 replicas" in report.text, report
    assert [len(hop.table) for hop in bench.controller.hops] == [0, 0]
