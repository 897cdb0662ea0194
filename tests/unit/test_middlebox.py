"""The controller's sans-I/O core: frames in, switch messages and a typed event out."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qasm.controller.events import (
    ConnectionsEnded,
    PacketIn,
    Reason,
    SwitchConnected,
    Verdict,
)
from qasm.controller.frame import FrameError, parse_frame
from qasm.controller.messages import (
    PORT_CONTROLLER,
    PORT_FLOOD,
    PRIORITY_ADMITTED_FLOW,
    PRIORITY_PROBE,
    ClearFlows,
    FlowRule,
    Match,
    PacketOut,
    RemoveFlow,
)
from qasm.controller.pipeline import (
    ConfigError,
    Controller,
    Decision,
    HopSettings,
    MiddleboxConfig,
    Switch,
)
from qasm.flow import FlowKey
from qasm.functions.firewall import client_initial_problem
from qasm.functions.nat import NatPool, NatSettings
from qasm.functions.ratelimit import RateLimit
from tests.unit.conftest import (
    CLIENT_IP,
    CLIENT_MAC,
    SERVER_IP,
    SERVER_MAC,
    arp_frame,
    icmp_frame,
    udp_frame,
)

CLIENT_PORT, SERVER_PORT = 2, 1


def controller(variant: str) -> Controller:
    box = Controller(MiddleboxConfig(variant=variant, service_ip=SERVER_IP, service_port=4433))
    box.switch_connected(dpid=1)
    # Both MACs learnt, as after the ARP exchange that precedes any QUIC packet.
    box.packet_in(1, SERVER_PORT, arp_frame(SERVER_MAC, SERVER_IP, CLIENT_IP), now=0.0)
    box.packet_in(1, CLIENT_PORT, arp_frame(CLIENT_MAC, CLIENT_IP, SERVER_IP), now=0.0)
    return box


def one(decisions: list[Decision]) -> Decision:
    """The only decision of a packet-in (nothing ended meanwhile)."""
    (decision,) = decisions
    assert decision.dpid == 1 and isinstance(decision.event, PacketIn)
    return decision


def rules(decision) -> list[FlowRule]:
    return [m for m in decision.messages if isinstance(m, FlowRule)]


def test_switch_connect_clears_stale_rules_and_steers_service_traffic_to_the_controller():
    tuple_box = Controller(
        MiddleboxConfig(variant="tuple", service_ip=SERVER_IP, service_port=4433)
    )
    connected = tuple_box.switch_connected(1)
    messages = connected.messages
    assert isinstance(messages[0], ClearFlows)
    steered = {
        m.match for m in messages if isinstance(m, FlowRule) and m.out_port == PORT_CONTROLLER
    }
    assert Match(ipv4_dst=SERVER_IP) in steered and Match(ipv4_src=SERVER_IP) in steered
    assert connected.event == SwitchConnected(1, flow_mods=connected.flow_mods)
    assert connected.flow_mods == len(rules(connected)) == 3  # table miss + both directions
    baseline = Controller(
        MiddleboxConfig(variant="baseline", service_ip=SERVER_IP, service_port=4433)
    )
    assert [type(m) for m in baseline.switch_connected(1).messages] == [ClearFlows, FlowRule]
    # A datapath that is no hop only forwards, whatever the variant.
    assert isinstance(tuple_box.switch(7), Switch) and tuple_box.switch(7) not in tuple_box.hops
    assert [type(m) for m in tuple_box.switch_connected(7).messages] == [ClearFlows, FlowRule]


def test_tuple_admits_a_new_5tuple_on_a_quic_initial_and_installs_both_directions(client_initial):
    decision = one(
        controller("tuple").packet_in(1, CLIENT_PORT, udp_frame(client_initial), now=1.0)
    )
    assert decision.event.verdict is Verdict.ADMIT
    assert decision.event.reason is Reason.OPENED_BY_INITIAL
    forward = FlowKey(CLIENT_IP, 50000, SERVER_IP, 4433)
    assert decision.event.flow == forward and decision.event.connection == 1
    admitted = [r for r in rules(decision) if r.priority == PRIORITY_ADMITTED_FLOW]
    assert {(r.match.flow, r.out_port) for r in admitted} == {
        (forward, SERVER_PORT),
        (forward.reversed(), CLIENT_PORT),
    }
    assert all(r.idle_timeout_s >= 120 and not r.notify_removed for r in admitted)
    # And the half-open probe: the service's direction again, one priority above, reported
    # by the switch when its hard timeout ends it (tagged with the connection).
    (probe,) = [r for r in rules(decision) if r.priority == PRIORITY_PROBE]
    assert (probe.match.flow, probe.out_port) == (forward.reversed(), CLIENT_PORT)
    assert (probe.hard_timeout_s, probe.idle_timeout_s) == (2, 0)
    assert probe.notify_removed and probe.cookie == probe.tag == 1
    assert PacketOut(CLIENT_PORT, SERVER_PORT, udp_frame(client_initial)) in decision.messages
    assert decision.flow_mods == 3 and decision.event.flow_mods == 3


def test_tuple_drops_a_migrated_5tuple_that_starts_with_a_short_header(client_initial):
    box = controller("tuple")
    box.packet_in(1, CLIENT_PORT, udp_frame(client_initial), now=1.0)
    short_header = bytes([0x40]) + bytes(8) + b"\x00" * 40
    decision = one(box.packet_in(1, CLIENT_PORT, udp_frame(short_header, sport=50001), now=2.0))
    assert decision.event.verdict is Verdict.DROP
    assert decision.event.reason is Reason.NOT_AN_INITIAL
    # The text is the firewall's own account of the datagram (a short header).
    assert decision.event.text == client_initial_problem(short_header)
    assert decision.messages == () and decision.event.connection is None
    assert len(box.hops[0].table) == 1


def test_tuple_forwards_replies_only_on_admitted_5tuples(client_initial):
    box = controller("tuple")
    reply = udp_frame(
        b"\x40" + bytes(30),
        sport=4433,
        dport=50000,
        src=SERVER_IP,
        dst=CLIENT_IP,
        eth_src=SERVER_MAC,
        eth_dst=CLIENT_MAC,
    )
    dropped = one(box.packet_in(1, SERVER_PORT, reply, now=0.5)).event
    assert (dropped.verdict, dropped.reason) == (Verdict.DROP, Reason.NEVER_ADMITTED)
    box.packet_in(1, CLIENT_PORT, udp_frame(client_initial), now=1.0)
    forwarded = one(box.packet_in(1, SERVER_PORT, reply, now=1.5)).event
    assert (forwarded.verdict, forwarded.reason) == (Verdict.FORWARD, Reason.KNOWN_PATH)


def test_tuple_state_expires_after_the_idle_timeout(client_initial):
    box = controller("tuple")
    box.packet_in(1, CLIENT_PORT, udp_frame(client_initial), now=0.0)
    later = udp_frame(b"\x40" + bytes(30))
    forwarded = one(box.packet_in(1, CLIENT_PORT, later, now=100.0)).event
    assert (forwarded.verdict, forwarded.reason) == (Verdict.FORWARD, Reason.KNOWN_PATH)
    ended, dropped = box.packet_in(1, CLIENT_PORT, later, now=221.0)
    # The expired connection's rules go first, then the packet is judged as a new 5-tuple.
    # (Its probe too: no switch reported it gone here.)
    assert ended.event == ConnectionsEnded(dpid=1, expired=(1,), flow_mods=3)
    path = FlowKey(CLIENT_IP, 50000, SERVER_IP, 4433)
    assert set(ended.messages) == {
        RemoveFlow(PRIORITY_ADMITTED_FLOW, Match(flow=path)),
        RemoveFlow(PRIORITY_ADMITTED_FLOW, Match(flow=path.reversed())),
        RemoveFlow(PRIORITY_PROBE, Match(flow=path.reversed())),
    }
    assert (dropped.event.verdict, dropped.event.reason) == (Verdict.DROP, Reason.NOT_AN_INITIAL)
    assert len(box.hops[0].table) == 0


def long_packet(first_byte: int, version: int, size: int, token: bool = True) -> bytes:
    """A well-formed long header (RFC 9000 §17.2) with an 8-byte DCID and `size` bytes after."""
    header = bytes([first_byte]) + version.to_bytes(4, "big") + b"\x08" + bytes(range(8)) + b"\x00"
    if token:
        header += b"\x00"  # empty token (Initial only)
    remaining = size - len(header) - 2
    return header + bytes([0x40 | remaining >> 8, remaining & 0xFF]) + bytes(remaining)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"", "empty datagram"),
        (b"\x40" + bytes(1300), "short header"),
        (b"\xc0\x00\x00", "not a QUIC packet"),
        (b"\xc0\xff\x00\x00\x1d\x00\x00" + bytes(1300), "unknown version 0xff00001d"),
        (long_packet(0xE0, 1, 1300, token=False), "type handshake, not Initial"),
        (long_packet(0xC0, 1, 300), "below 1200"),
        (long_packet(0xC0, 1, 1250), None),
        (long_packet(0xD0, 0x6B3343CF, 1250), None),  # QUIC v2's Initial type is 0b01
    ],
)
def test_first_packet_rules(payload, reason):
    problem = client_initial_problem(payload)
    assert (problem is None) if reason is None else (reason in problem)


def test_tuple_drops_non_quic_traffic_to_the_service():
    icmp = one(controller("tuple").packet_in(1, CLIENT_PORT, icmp_frame(), now=0.0))
    assert (icmp.event.verdict, icmp.event.reason) == (Verdict.DROP, Reason.NOT_UDP)
    assert icmp.event.flow is None and icmp.messages == ()
    other_port = udp_frame(b"\xc0" + bytes(1300), dport=53)
    dns = one(controller("tuple").packet_in(1, CLIENT_PORT, other_port, now=0)).event
    assert (dns.verdict, dns.reason) == (Verdict.DROP, Reason.PORT_NOT_SERVED)
    assert dns.flow.dst_port == 53


def test_baseline_forwards_by_mac_learning_and_keeps_no_middlebox_state(client_initial):
    box = Controller(MiddleboxConfig(variant="baseline", service_ip=SERVER_IP, service_port=4433))
    first = one(box.packet_in(1, CLIENT_PORT, udp_frame(client_initial), now=0.0))
    assert first.messages == (PacketOut(CLIENT_PORT, PORT_FLOOD, udp_frame(client_initial)),)
    assert (first.event.verdict, first.event.reason) == (Verdict.FLOOD, Reason.L2)
    box.packet_in(1, SERVER_PORT, arp_frame(SERVER_MAC, SERVER_IP, CLIENT_IP), now=0.0)
    short = one(box.packet_in(1, CLIENT_PORT, udp_frame(b"\x40" + bytes(40), sport=1234), now=1.0))
    assert (short.event.verdict, short.event.reason) == (Verdict.FORWARD, Reason.L2)
    assert rules(short) == [FlowRule(10, Match(eth_dst=SERVER_MAC), SERVER_PORT)]
    (hop,) = box.hops
    assert hop.firewall is None and hop.functions == [] and len(hop.table) == 0


def test_an_l2_rule_in_flight_is_not_sent_again_for_the_packets_queued_before_it():
    box = Controller(MiddleboxConfig(variant="baseline", service_ip=SERVER_IP, service_port=4433))
    box.switch_connected(1)
    box.packet_in(1, SERVER_PORT, arp_frame(SERVER_MAC, SERVER_IP, CLIENT_IP), now=0.0)
    to_server = udp_frame(b"\x40" + bytes(40), sport=1234)
    first, queued = (one(box.packet_in(1, CLIENT_PORT, to_server, now=t)) for t in (1.0, 1.01))
    assert rules(first) == [FlowRule(10, Match(eth_dst=SERVER_MAC), SERVER_PORT)]
    assert rules(queued) == [] and queued.messages == (
        PacketOut(CLIENT_PORT, SERVER_PORT, to_server),
    )
    # Long after (the rule was lost), when the MAC moved, and after the switch reconnected
    # (its table was cleared).
    assert rules(one(box.packet_in(1, CLIENT_PORT, to_server, now=2.5)))
    box.packet_in(1, 7, arp_frame(SERVER_MAC, SERVER_IP, CLIENT_IP), now=2.55)
    assert rules(one(box.packet_in(1, CLIENT_PORT, to_server, now=2.56))) == [
        FlowRule(10, Match(eth_dst=SERVER_MAC), 7)
    ]
    box.switch_connected(1)
    assert rules(one(box.packet_in(1, CLIENT_PORT, to_server, now=2.6)))


def test_malformed_frames_are_dropped_with_the_layer_named():
    box = controller("tuple")
    good = udp_frame(b"x" * 20)
    for data, layer in [
        (good[:10], "ethernet"),
        (good[:20], "ipv4"),
        (good[:36], "ipv4: total length"),
    ]:
        decision = one(box.packet_in(1, CLIENT_PORT, data, now=0.0))
        assert decision.event.verdict is Verdict.DROP
        assert decision.event.reason is Reason.FRAME_UNREADABLE
        assert decision.event.text.startswith(layer), decision.event.text  # the layer at fault
        assert decision.messages == ()
    with pytest.raises(FrameError, match="udp: length field"):
        lying = bytearray(good)
        lying[38:40] = (500).to_bytes(2, "big")
        parse_frame(bytes(lying))


def test_port_numbers_parsed_or_allocated_are_shared_objects():
    # Memory, not behaviour: the table keeps a 5-tuple per path of every connection and the
    # NAT a port per path, so each holds the one int object of that number (qasm/flow.py).
    first, second = (parse_frame(udp_frame(b"x" * 20, sport=50000)).flow for _ in range(2))
    assert first.src_port is second.src_port and first.dst_port is second.dst_port
    settings = NatSettings("10.0.100.1", "02:00:00:00:00:fd", first_port=20000, ports=4)
    ports = [NatPool(settings).allocate(first) for _ in range(2)]
    assert ports[0] == 20000 and ports[0] is ports[1]


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=1600), st.integers(1, 8))
def test_packet_in_never_raises_on_arbitrary_bytes(data, port):
    box = controller("tuple")
    decision = one(box.packet_in(1, port, data, now=0.0))
    assert isinstance(decision.event.verdict, Verdict) and isinstance(decision.event.reason, Reason)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1400), st.integers(0, 65535))
def test_packet_in_never_raises_on_arbitrary_udp_payloads_to_the_service(payload, sport):
    decision = one(
        controller("tuple").packet_in(1, CLIENT_PORT, udp_frame(payload, sport=sport), now=0.0)
    )
    assert decision.event.verdict in {Verdict.ADMIT, Verdict.DROP}


def test_config_rejects_unknown_variants_and_keys():
    with pytest.raises(ConfigError, match="variant"):
        MiddleboxConfig(variant="nope", service_ip=SERVER_IP, service_port=4433)
    with pytest.raises(ConfigError, match="unknown keys"):
        MiddleboxConfig.from_json(
            '{"variant": "tuple", "service_ip": "x", "service_port": 1, "x": 1}'
        )
    with pytest.raises(ConfigError, match="hops"):
        MiddleboxConfig(
            variant="tuple", service_ip=SERVER_IP, service_port=4433,
            hops=(HopSettings(1), HopSettings(1)),
        )  # fmt: skip
    with pytest.raises(ConfigError, match="hops"):
        MiddleboxConfig(
            variant="tuple", service_ip=SERVER_IP, service_port=4433, functions=("nat",)
        )
    config = MiddleboxConfig(variant="tuple", service_ip=SERVER_IP, service_port=4433)
    assert MiddleboxConfig.from_json(config.to_json()) == config
    nat = MiddleboxConfig(
        variant="cid", service_ip=SERVER_IP, service_port=4433,
        functions=("firewall", "ratelimit", "nat"), max_connections=7,
        ratelimit=RateLimit(8000, 800),
        hops=(
            HopSettings(1, NatSettings("10.0.100.1", "02:00:00:00:00:fd", ports=8)),
            HopSettings(2, NatSettings("10.0.100.2", "02:00:00:00:00:fc", first_port=30000)),
        ),
    )  # fmt: skip
    assert MiddleboxConfig.from_json(nat.to_json()) == nat
