"""Location integrity: a middlebox hop learns where an address is only from a port that
address belongs to (topologies/bindings.py computes which), so a host sending with another
host's source address moves no location, no traffic and no rule to itself."""

from __future__ import annotations

import pytest

from qasm.controller.events import Locations, Logged, PacketIn, Reason, Verdict
from qasm.controller.messages import COOKIE_OBSERVE
from qasm.controller.pipeline import HopSettings, MiddleboxConfig
from testbed.records.metrics import hijacked_locations
from tests.unit.conftest import arp_frame, udp_frame
from tests.unit.test_chain import (
    LTE_IP,
    LTE_MAC,
    LTE_PORT,
    SERVER_IP,
    WIFI_IP,
    WIFI_PORT,
    ChainBench,
)
from topologies.bindings import source_bindings
from topologies.chain import Chain
from topologies.dualhomed import DualHomed
from topologies.routed import Routed

SERVER_PORT = 1
# What topologies/bindings.py gives the dual-homed switch for one client.
SOURCES = ((SERVER_PORT, (SERVER_IP,)), (WIFI_PORT, (WIFI_IP,)), (LTE_PORT, (LTE_IP,)))


def _spoofed_drops(bench: ChainBench) -> list[PacketIn]:
    return [
        e for e in bench.net.events
        if isinstance(e, PacketIn) and e.reason is Reason.SPOOFED_SOURCE
    ]  # fmt: skip


@pytest.mark.parametrize("victim", [SERVER_IP, WIFI_IP, "10.0.1.2"])
def test_a_spoofed_source_is_dropped_and_moves_nothing(victim):
    bench = ChainBench("qasm", 1, functions=("firewall",), sources=SOURCES)
    bench.handshake()
    hop = bench.controller.switch(1)
    located = {ip: hop.located_port(ip) for ip in (SERVER_IP, WIFI_IP)}
    rules_before = list(bench.net.switches[1].rules)
    bench.net.events.clear()
    # From the client's lte port: a UDP datagram and an ARP claiming the victim's address.
    for frame in (
        udp_frame(b"\x40" + bytes(40), sport=1234, src=victim, dst=SERVER_IP, eth_src=LTE_MAC),
        arp_frame(LTE_MAC, victim, SERVER_IP),
    ):
        bench.net.send(1, LTE_PORT, frame, now=bench.pair.now)
    drops = _spoofed_drops(bench)
    assert len(drops) == 2 and all(d.verdict is Verdict.DROP for d in drops)
    assert f"source {victim} does not belong to port {LTE_PORT}" in drops[0].text
    assert {ip: hop.located_port(ip) for ip in (SERVER_IP, WIFI_IP)} == located
    assert bench.net.switches[1].rules == rules_before  # no rule towards the sender
    # The real connection carries on over its own path.
    bench.pair.client.send_ping(3)
    sources, received = bench.round_trip("wifi", 50000)
    assert sources == [(WIFI_IP, 50000)] and received


def test_owned_addresses_pass_and_a_migration_to_the_lte_port_still_works():
    bench = ChainBench("qasm", 1, functions=("firewall",), sources=SOURCES)
    bench.handshake()
    bench.migrate("active", sport=6000, announce=True)
    assert all(bench.migrated)
    assert _spoofed_drops(bench) == []
    # An ARP probe (sender 0.0.0.0, RFC 5227) belongs to no one and is not spoofing.
    bench.net.send(1, LTE_PORT, arp_frame(LTE_MAC, "0.0.0.0", LTE_IP))
    assert _spoofed_drops(bench) == []


def test_without_bindings_nothing_is_checked():
    bench = ChainBench("qasm", 1, functions=("firewall",))
    bench.handshake()
    bench.net.send(1, LTE_PORT, arp_frame(LTE_MAC, SERVER_IP, WIFI_IP))
    assert _spoofed_drops(bench) == []
    assert bench.controller.switch(1).located_port(SERVER_IP) == LTE_PORT  # what it prevents


def test_bindings_survive_the_controllers_json_config():
    config = MiddleboxConfig(
        variant="tuple", service_ip=SERVER_IP, service_port=4433,
        hops=(HopSettings(1, None, SOURCES),),
    )  # fmt: skip
    assert MiddleboxConfig.from_json(config.to_json()) == config


def test_bindings_follow_each_topologys_links():
    dualhomed = DualHomed(prefix="q1", clients=2, backends=2)
    (switch,) = source_bindings(dualhomed, dualhomed.roles).values()
    assert switch == {
        1: {"10.0.0.250"},
        2: {"10.0.1.1", "10.0.3.1"}, 3: {"10.0.2.1"},  # an interface's own addresses only
        4: {"10.0.1.2", "10.0.3.2"}, 5: {"10.0.2.2"},
        201: {"10.0.4.1"}, 202: {"10.0.4.2"},
    }  # fmt: skip
    chain = Chain(prefix="q1", clients=1, hops=3)
    bindings = source_bindings(chain, chain.roles)
    # Behind hop 1's NAT, hop 2 sees the clients' packets from 10.0.100.1, on its client side.
    towards_clients = bindings["q1m2"][2]
    assert {"10.0.100.1", "10.0.1.1", "10.0.2.1", "10.0.3.1"} <= towards_clients
    assert "10.0.0.250" not in towards_clients and "10.0.0.250" in bindings["q1m2"][1]
    routed = Routed(prefix="q1", clients=2, backends=2)
    (service,) = source_bindings(routed, routed.roles).values()
    # Everything behind the router arrives on its port, the router's own addresses too.
    assert service[100] == {
        "10.1.0.1", "10.2.0.1", "10.1.1.1", "10.1.3.1", "10.1.2.1", "10.1.1.2", "10.1.3.2",
        "10.1.2.2",
    }  # fmt: skip
    assert service[1] == {"10.2.0.250"}


def test_the_controller_reports_where_each_hop_locates_each_address():
    bench = ChainBench("qasm", 1, functions=("firewall",), sources=SOURCES)
    bench.handshake()
    bench.net.send(1, LTE_PORT, arp_frame(LTE_MAC, SERVER_IP, WIFI_IP))  # spoofed: not learnt
    (locations,) = bench.controller.locations()
    assert locations.dpid == 1
    assert locations.ports == {SERVER_IP: SERVER_PORT, WIFI_IP: WIFI_PORT, LTE_IP: LTE_PORT}


def test_a_location_on_a_port_the_address_does_not_belong_to_counts_as_hijacked():
    bindings = {1: {port: frozenset(ips) for port, ips in SOURCES}}
    honest = Logged(1.0, "qasm", Locations(1, {SERVER_IP: SERVER_PORT, WIFI_IP: WIFI_PORT}))
    moved = Logged(1.0, "qasm", Locations(1, {SERVER_IP: LTE_PORT, WIFI_IP: WIFI_PORT}))
    other_hop = Logged(1.0, "qasm", Locations(2, {SERVER_IP: LTE_PORT}))  # no bindings there
    assert hijacked_locations([honest, other_hop], bindings) == 0
    assert hijacked_locations([moved], bindings) == 1


def test_a_copy_from_our_own_rule_is_not_judged_by_its_rewritten_source():
    """A service-side rule that copies packets to the controller (COOKIE_OBSERVE) sends them
    after its rewrites: a balancer's reply then carries the VIP, which belongs to no port.
    The copy is ours, not the sender's word: not dropped as spoofed, and not learnt."""
    bench = ChainBench("cid", 1, functions=("firewall",), sources=SOURCES)
    bench.handshake()
    vip = "10.0.0.100"
    copy = udp_frame(b"\x40" + bytes(40), sport=4433, dport=50000, src=vip, dst=WIFI_IP)
    bench.net.events.clear()
    decisions = bench.controller.packet_in(
        1, SERVER_PORT, copy, bench.pair.now, cookie=COOKIE_OBSERVE
    )  # fmt: skip
    assert _spoofed_drops(bench) == [] and decisions
    assert all(d.event.reason is not Reason.SPOOFED_SOURCE for d in decisions)
    assert bench.controller.switch(1).located_port(vip) is None
