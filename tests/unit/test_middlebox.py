"""The controller's sans-I/O core: frames in, switch messages and a log record out."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qasm.controller.frame import FrameError, parse_frame
from qasm.controller.messages import (
    PORT_CONTROLLER,
    PORT_FLOOD,
    PRIORITY_ADMITTED_FLOW,
    ClearFlows,
    FlowRule,
    Match,
    PacketOut,
)
from qasm.controller.pipeline import ConfigError, Middlebox, MiddleboxConfig
from qasm.flow import FlowKey
from qasm.functions.firewall import client_initial_problem
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


def middlebox(variant: str) -> Middlebox:
    box = Middlebox(MiddleboxConfig(variant=variant, service_ip=SERVER_IP, service_port=4433))
    box.switch_connected(dpid=1)
    # Both MACs learnt, as after the ARP exchange that precedes any QUIC packet.
    box.packet_in(1, SERVER_PORT, arp_frame(SERVER_MAC, SERVER_IP, CLIENT_IP), now=0.0)
    box.packet_in(1, CLIENT_PORT, arp_frame(CLIENT_MAC, CLIENT_IP, SERVER_IP), now=0.0)
    return box


def rules(decision) -> list[FlowRule]:
    return [m for m in decision.messages if isinstance(m, FlowRule)]


def test_switch_connect_clears_stale_rules_and_steers_service_traffic_to_the_controller():
    tuple_box = Middlebox(MiddleboxConfig(variant="tuple", service_ip=SERVER_IP, service_port=4433))
    messages = tuple_box.switch_connected(1).messages
    assert isinstance(messages[0], ClearFlows)
    steered = {
        m.match for m in messages if isinstance(m, FlowRule) and m.out_port == PORT_CONTROLLER
    }
    assert Match(ipv4_dst=SERVER_IP) in steered and Match(ipv4_src=SERVER_IP) in steered
    baseline = Middlebox(
        MiddleboxConfig(variant="baseline", service_ip=SERVER_IP, service_port=4433)
    )
    assert [type(m) for m in baseline.switch_connected(1).messages] == [ClearFlows, FlowRule]


def test_tuple_admits_a_new_5tuple_on_a_quic_initial_and_installs_both_directions(client_initial):
    decision = middlebox("tuple").packet_in(1, CLIENT_PORT, udp_frame(client_initial), now=1.0)
    assert decision.record["verdict"] == "admit"
    forward = FlowKey(CLIENT_IP, 50000, SERVER_IP, 4433)
    assert {(r.match.flow, r.out_port) for r in rules(decision)} == {
        (forward, SERVER_PORT),
        (forward.reversed(), CLIENT_PORT),
    }
    assert all(
        r.priority == PRIORITY_ADMITTED_FLOW and r.idle_timeout_s >= 120 for r in rules(decision)
    )
    assert PacketOut(CLIENT_PORT, SERVER_PORT, udp_frame(client_initial)) in decision.messages
    assert decision.flow_mods == 2 and decision.record["flow_mods"] == 2


def test_tuple_drops_a_migrated_5tuple_that_starts_with_a_short_header(client_initial):
    box = middlebox("tuple")
    box.packet_in(1, CLIENT_PORT, udp_frame(client_initial), now=1.0)
    short_header = bytes([0x40]) + bytes(8) + b"\x00" * 40
    decision = box.packet_in(1, CLIENT_PORT, udp_frame(short_header, sport=50001), now=2.0)
    assert decision.record["verdict"] == "drop"
    assert "short header" in decision.record["reason"]
    assert decision.messages == ()


def test_tuple_forwards_replies_only_on_admitted_5tuples(client_initial):
    box = middlebox("tuple")
    reply = udp_frame(
        b"\x40" + bytes(30),
        sport=4433,
        dport=50000,
        src=SERVER_IP,
        dst=CLIENT_IP,
        eth_src=SERVER_MAC,
        eth_dst=CLIENT_MAC,
    )
    assert box.packet_in(1, SERVER_PORT, reply, now=0.5).record["verdict"] == "drop"
    box.packet_in(1, CLIENT_PORT, udp_frame(client_initial), now=1.0)
    assert box.packet_in(1, SERVER_PORT, reply, now=1.5).record["verdict"] == "forward"


def test_tuple_state_expires_after_the_idle_timeout(client_initial):
    box = middlebox("tuple")
    box.packet_in(1, CLIENT_PORT, udp_frame(client_initial), now=0.0)
    later = udp_frame(b"\x40" + bytes(30))
    assert box.packet_in(1, CLIENT_PORT, later, now=100.0).record["verdict"] == "forward"
    assert box.packet_in(1, CLIENT_PORT, later, now=221.0).record["verdict"] == "drop"


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
    decision = middlebox("tuple").packet_in(1, CLIENT_PORT, icmp_frame(), now=0.0)
    assert decision.record["verdict"] == "drop" and "IP protocol 1" in decision.record["reason"]
    other_port = udp_frame(b"\xc0" + bytes(1300), dport=53)
    assert (
        "port 53"
        in middlebox("tuple").packet_in(1, CLIENT_PORT, other_port, now=0).record["reason"]
    )


def test_baseline_forwards_by_mac_learning_and_keeps_no_middlebox_state(client_initial):
    box = Middlebox(MiddleboxConfig(variant="baseline", service_ip=SERVER_IP, service_port=4433))
    first = box.packet_in(1, CLIENT_PORT, udp_frame(client_initial), now=0.0)
    assert first.messages == (PacketOut(CLIENT_PORT, PORT_FLOOD, udp_frame(client_initial)),)
    box.packet_in(1, SERVER_PORT, arp_frame(SERVER_MAC, SERVER_IP, CLIENT_IP), now=0.0)
    short = box.packet_in(1, CLIENT_PORT, udp_frame(b"\x40" + bytes(40), sport=1234), now=1.0)
    assert short.record["verdict"] == "forward"
    assert rules(short) == [FlowRule(10, Match(eth_dst=SERVER_MAC), SERVER_PORT)]
    assert not box.firewall and len(box.table) == 0


def test_an_l2_rule_in_flight_is_not_sent_again_for_the_packets_queued_before_it():
    box = Middlebox(MiddleboxConfig(variant="baseline", service_ip=SERVER_IP, service_port=4433))
    box.switch_connected(1)
    box.packet_in(1, SERVER_PORT, arp_frame(SERVER_MAC, SERVER_IP, CLIENT_IP), now=0.0)
    to_server = udp_frame(b"\x40" + bytes(40), sport=1234)
    first, queued = (box.packet_in(1, CLIENT_PORT, to_server, now=t) for t in (1.0, 1.01))
    assert rules(first) == [FlowRule(10, Match(eth_dst=SERVER_MAC), SERVER_PORT)]
    assert rules(queued) == [] and queued.messages == (
        PacketOut(CLIENT_PORT, SERVER_PORT, to_server),
    )
    # Long after (the rule was lost), when the MAC moved, and after the switch reconnected
    # (its table was cleared).
    assert rules(box.packet_in(1, CLIENT_PORT, to_server, now=2.5))
    box.packet_in(1, 7, arp_frame(SERVER_MAC, SERVER_IP, CLIENT_IP), now=2.55)
    assert rules(box.packet_in(1, CLIENT_PORT, to_server, now=2.56)) == [
        FlowRule(10, Match(eth_dst=SERVER_MAC), 7)
    ]
    box.switch_connected(1)
    assert rules(box.packet_in(1, CLIENT_PORT, to_server, now=2.6))


def test_malformed_frames_are_dropped_with_the_layer_named():
    box = middlebox("tuple")
    good = udp_frame(b"x" * 20)
    for data, layer in [
        (good[:10], "ethernet"),
        (good[:20], "ipv4"),
        (good[:36], "ipv4: total length"),
    ]:
        decision = box.packet_in(1, CLIENT_PORT, data, now=0.0)
        assert decision.record["verdict"] == "drop" and layer in decision.record["reason"]
    with pytest.raises(FrameError, match="udp: length field"):
        lying = bytearray(good)
        lying[38:40] = (500).to_bytes(2, "big")
        parse_frame(bytes(lying))


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=1600), st.integers(1, 8))
def test_packet_in_never_raises_on_arbitrary_bytes(data, port):
    box = middlebox("tuple")
    assert box.packet_in(1, port, data, now=0.0).record["event"] == "packet_in"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1400), st.integers(0, 65535))
def test_packet_in_never_raises_on_arbitrary_udp_payloads_to_the_service(payload, sport):
    decision = middlebox("tuple").packet_in(
        1, CLIENT_PORT, udp_frame(payload, sport=sport), now=0.0
    )
    assert decision.record["verdict"] in {"admit", "drop"}


def test_config_rejects_unknown_variants_and_keys():
    with pytest.raises(ConfigError, match="variant"):
        MiddleboxConfig(variant="nope", service_ip=SERVER_IP, service_port=4433)
    with pytest.raises(ConfigError, match="unknown keys"):
        MiddleboxConfig.from_json(
            '{"variant": "tuple", "service_ip": "x", "service_port": 1, "x": 1}'
        )
    config = MiddleboxConfig(variant="tuple", service_ip=SERVER_IP, service_port=4433)
    assert MiddleboxConfig.from_json(config.to_json()) == config
