"""A connection that ends gives back everything it held, by either route: evicted at the
table's bound or expired after the idle timeout. Its NAT ports go back to the hop's pool, its
rules leave the switch and its meter is deleted, so the next connection can allocate."""

from __future__ import annotations

import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from qasm.agents.client import ClientAgent
from qasm.agents.messages import derive_client_key
from qasm.controller.events import (
    AgentReport,
    ConnectionsEnded,
    NatMapping,
    PacketIn,
    Reason,
    Verdict,
)
from qasm.controller.messages import (
    COOKIE_OBSERVE,
    PRIORITY_ADMITTED_FLOW,
    Match,
    MeterRule,
    PacketOut,
    RemoveFlow,
    RemoveMeter,
)
from qasm.controller.pipeline import (
    AgentSettings,
    Controller,
    Decision,
    HopSettings,
    MiddleboxConfig,
)
from qasm.flow import FlowKey
from qasm.functions.nat import NatSettings
from qasm.functions.ratelimit import RateLimit
from tests.unit.conftest import (
    CLIENT_IP,
    CLIENT_MAC,
    SERVER_IP,
    SERVER_MAC,
    QuicPair,
    arp_frame,
    udp_frame,
)
from tests.unit.fakenet import FakeSwitch

CLIENT_PORT, SERVER_PORT, LTE_PORT = 2, 1, 3
LTE_IP, LTE_MAC = "10.0.2.1", "02:00:00:00:01:01"
PUBLIC_IP, PUBLIC_MAC = "10.0.100.1", "02:00:00:00:00:fd"
AGENT_IP, AGENT_MAC = "10.0.0.254", "02:00:00:00:00:fe"
KEY = derive_client_key(b"secret", "c1")
IDLE_S = 10.0


def a_client_initial() -> bytes:
    """The first datagram of a new aioquic client (its own random DCID)."""
    connection = QuicConnection(configuration=QuicConfiguration(is_client=True))
    connection.connect((SERVER_IP, 4433), now=0.0)
    (datagram, _), *_ = connection.datagrams_to_send(now=0.0)
    return datagram


class Hop:
    """A one-hop cid controller with room for one connection and a 2-port NAT pool, and the
    switch it programs (tests/unit/fakenet.py's rule table)."""

    def __init__(self, ratelimit: bool, variant: str = "cid") -> None:
        functions = ("ratelimit", "nat") if ratelimit else ("nat",)
        # Pull mode: the hop learns CIDs from the handshake, so A's rebinding is a DCID match.
        agent = AgentSettings(AGENT_IP, 7400, AGENT_MAC, keys={"c1": KEY.hex()},
                              addresses={"c1": [CLIENT_IP, LTE_IP]}, mode="pull")  # fmt: skip
        self.controller = Controller(MiddleboxConfig(
            variant=variant, service_ip=SERVER_IP, service_port=4433, functions=functions,
            agent=agent if variant == "qasm" else None,
            max_connections=1, state_idle_timeout_s=IDLE_S,
            ratelimit=RateLimit(8000, 800) if ratelimit else None,
            hops=(HopSettings(1, NatSettings(PUBLIC_IP, PUBLIC_MAC, first_port=20000, ports=2)),),
        ))  # fmt: skip
        (self.hop,) = self.controller.hops
        self.pool = self.hop.nat.pool
        self.switch = FakeSwitch(1)
        self.apply([self.controller.switch_connected(1)])
        for port, mac, ip, target in (
            (SERVER_PORT, SERVER_MAC, SERVER_IP, CLIENT_IP),
            (CLIENT_PORT, CLIENT_MAC, CLIENT_IP, SERVER_IP),
            (LTE_PORT, LTE_MAC, LTE_IP, SERVER_IP),
        ):
            self.packet_in(port, arp_frame(mac, ip, target), now=0.0)

    def apply(self, decisions: list[Decision]) -> list[Decision]:
        for decision in decisions:
            for message in decision.messages:
                if not isinstance(message, PacketOut):
                    self.switch.apply(message)
        return decisions

    def packet_in(self, port: int, frame: bytes, now: float, cookie: int = 0) -> list[Decision]:
        return self.apply(self.controller.packet_in(1, port, frame, now, cookie))

    def admitted_paths(self) -> set[FlowKey]:
        return {r.match.flow for r in self.switch.rules if r.priority == PRIORITY_ADMITTED_FLOW}


def open_a_migrated_connection(hop: Hop):
    """Connection A: a real handshake on 50000, then a rebinding to 50001 (a DCID match),
    so A holds both of the pool's ports."""
    pair = QuicPair()
    first_client, first_server = pair.handshake()
    (admitted,) = hop.packet_in(CLIENT_PORT, udp_frame(first_client[0]), now=1.0)
    assert admitted.event.reason is Reason.OPENED_BY_INITIAL
    for datagram in first_server:
        reply = udp_frame(datagram, sport=4433, dport=50000, src=SERVER_IP, dst=CLIENT_IP,
                          eth_src=SERVER_MAC, eth_dst=CLIENT_MAC)  # fmt: skip
        # As the switch delivers the copy: after the NAT's rewrite towards the client.
        hop.packet_in(SERVER_PORT, reply, now=1.01, cookie=COOKIE_OBSERVE)
    rebound = udp_frame(pair.short_header_datagram(), sport=50001)
    (moved,) = hop.packet_in(CLIENT_PORT, rebound, now=2.0)
    assert moved.event.reason is Reason.DCID_MATCH, moved.event
    (a,) = hop.hop.table.connections()
    mappings = tuple(
        NatMapping(FlowKey(CLIENT_IP, port, SERVER_IP, 4433), PUBLIC_IP, public)
        for port, public in ((50000, 20000), (50001, 20001))
    )
    assert (*admitted.event.nat_allocated, *moved.event.nat_allocated) == mappings
    assert hop.pool.in_use == 2  # the pool is full
    return a, mappings, pair


def new_connection(hop: Hop, sport: int, now: float) -> list[Decision]:
    frame = udp_frame(a_client_initial(), sport=sport, src=LTE_IP, eth_src=LTE_MAC)
    return hop.packet_in(LTE_PORT, frame, now=now)


def assert_gave_back(hop: Hop, ended: Decision, connection, mappings, cause: str, meter: bool):
    """`connection` ended by `cause`, and its decision gives back all it held."""
    assert isinstance(ended.event, ConnectionsEnded)
    assert ended.event.dpid == 1 and getattr(ended.event, cause) == (connection.id,)
    other = "expired" if cause == "evicted" else "evicted"
    assert getattr(ended.event, other) == ()
    assert set(ended.event.nat_released) == set(mappings)
    removed = {m.match for m in ended.messages if isinstance(m, RemoveFlow)}
    expected = set()
    for mapping in mappings:
        public = FlowKey(PUBLIC_IP, mapping.public_port, SERVER_IP, 4433)
        expected |= {Match(flow=mapping.path), Match(flow=public.reversed())}
    assert removed == expected and ended.event.flow_mods == len(expected)
    meters = [m for m in ended.messages if isinstance(m, RemoveMeter)]
    assert meters == ([RemoveMeter(connection.id)] if meter else [])
    # Nothing of it stays on the switch or in the pool.
    assert not {m.path for m in mappings} & hop.admitted_paths()
    assert connection.id not in hop.switch.meters
    for mapping in mappings:
        assert hop.pool.path_of(mapping.public_port) in (None, *hop.admitted_paths())


def assert_allocated(hop: Hop, admitted: Decision, sport: int, meter: bool):
    assert isinstance(admitted.event, PacketIn)
    assert (admitted.event.verdict, admitted.event.reason) == (
        Verdict.ADMIT,
        Reason.OPENED_BY_INITIAL,
    ), admitted.event
    path = FlowKey(LTE_IP, sport, SERVER_IP, 4433)
    (mapping,) = admitted.event.nat_allocated
    assert mapping.path == path and hop.pool.path_of(mapping.public_port) == path
    assert hop.pool.in_use == 1 and hop.pool.exhausted == 0
    (connection,) = hop.hop.table.connections()
    assert connection.id == admitted.event.connection and connection.paths == (path,)
    assert hop.admitted_paths() == {path, FlowKey(SERVER_IP, 4433, PUBLIC_IP, mapping.public_port)}
    assert hop.switch.meters == ({connection.id} if meter else set())
    if meter:
        assert MeterRule(connection.id, 8000, 800) in admitted.messages
    return connection, (mapping,)


@pytest.mark.parametrize("ratelimit", [False, True], ids=["nat", "ratelimit+nat"])
def test_an_evicted_connection_gives_back_its_ports_rules_and_meter(ratelimit):
    hop = Hop(ratelimit)
    a, a_mappings, _ = open_a_migrated_connection(hop)
    # B evicts A (the table holds one): A's ports are free before B allocates.
    ended, admitted = new_connection(hop, 6000, now=3.0)
    assert_gave_back(hop, ended, a, a_mappings, "evicted", ratelimit)
    b, b_mappings = assert_allocated(hop, admitted, 6000, ratelimit)
    # And again: C evicts B.
    ended, admitted = new_connection(hop, 6001, now=4.0)
    assert_gave_back(hop, ended, b, b_mappings, "evicted", ratelimit)
    assert_allocated(hop, admitted, 6001, ratelimit)
    (stats,) = hop.controller.stats()
    assert (stats.evicted, stats.expired, stats.nat_in_use) == (2, 0, 1)


@pytest.mark.parametrize("ratelimit", [False, True], ids=["nat", "ratelimit+nat"])
def test_an_expired_connection_gives_back_the_same(ratelimit):
    hop = Hop(ratelimit)
    a, a_mappings, _ = open_a_migrated_connection(hop)
    # A was last seen at 2.0; the next packet-in after the idle timeout ends it first.
    ended, admitted = new_connection(hop, 6000, now=2.0 + IDLE_S + 0.5)
    assert_gave_back(hop, ended, a, a_mappings, "expired", ratelimit)
    b, b_mappings = assert_allocated(hop, admitted, 6000, ratelimit)
    ended, admitted = new_connection(hop, 6001, now=2.0 + 2 * IDLE_S + 1.0)
    assert_gave_back(hop, ended, b, b_mappings, "expired", ratelimit)
    assert_allocated(hop, admitted, 6001, ratelimit)
    (stats,) = hop.controller.stats()
    assert (stats.evicted, stats.expired, stats.nat_in_use) == (0, 2, 1)


def test_a_connection_the_tracking_agent_finds_expired_gives_back_the_same():
    hop = Hop(ratelimit=True, variant="qasm")
    a, a_mappings, pair = open_a_migrated_connection(hop)
    _, datagram = ClientAgent("c1", KEY).announce(
        pair.client, (CLIENT_IP, 50001), (LTE_IP, 6000), new_cid=True
    )
    report = udp_frame(datagram, sport=7777, dport=7400, src=LTE_IP, dst=AGENT_IP,
                       eth_src=LTE_MAC, eth_dst=AGENT_MAC)  # fmt: skip
    # Too late: the agent's lookup finds A idle past the timeout, and A ends there.
    ended, answered = hop.packet_in(LTE_PORT, report, now=2.0 + IDLE_S + 0.5)
    assert_gave_back(hop, ended, a, a_mappings, "expired", meter=True)
    assert isinstance(answered.event, AgentReport)
    assert answered.event.reason is Reason.UNKNOWN_CONNECTION
    assert hop.pool.in_use == 0 and len(hop.hop.table) == 0 and not hop.switch.meters
