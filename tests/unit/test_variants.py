"""Each variant's middlebox driven by a real aioquic connection held in memory: what it does
with the handshake, a rebinding (same DCID) and an active migration (new DCID)."""

from __future__ import annotations

from qasm.agents.client import ClientAgent
from qasm.agents.messages import derive_client_key
from qasm.controller.messages import COOKIE_OBSERVE, FlowRule, Match, MeterRule, RemoveFlow
from qasm.controller.pipeline import AgentSettings, Middlebox, MiddleboxConfig, RateLimit
from qasm.flow import FlowKey
from tests.unit.conftest import CLIENT_IP, CLIENT_MAC, SERVER_IP, SERVER_MAC, arp_frame, udp_frame

CLIENT_PORT, SERVER_PORT, LTE_PORT = 2, 1, 3
LTE_IP, LTE_MAC = "10.0.2.1", "02:00:00:00:01:01"
AGENT_IP, AGENT_MAC = "10.0.0.254", "02:00:00:00:00:fe"
SECRET = b"scenario secret"


def middlebox(variant: str, functions=("firewall",)) -> Middlebox:
    agent = AgentSettings(
        ip=AGENT_IP, port=7400, mac=AGENT_MAC,
        keys={"c1": derive_client_key(SECRET, "c1").hex()},
        addresses={"c1": [CLIENT_IP, LTE_IP]},
    )  # fmt: skip
    config = MiddleboxConfig(
        variant=variant, service_ip=SERVER_IP, service_port=4433, functions=functions,
        agent=agent if variant == "qasm" else None,
        ratelimit=RateLimit(8000, 800) if "ratelimit" in functions else None,
    )  # fmt: skip
    box = Middlebox(config)
    box.switch_connected(1)
    box.packet_in(1, SERVER_PORT, arp_frame(SERVER_MAC, SERVER_IP, CLIENT_IP), now=0.0)
    box.packet_in(1, CLIENT_PORT, arp_frame(CLIENT_MAC, CLIENT_IP, SERVER_IP), now=0.0)
    box.packet_in(1, LTE_PORT, arp_frame(LTE_MAC, LTE_IP, SERVER_IP), now=0.0)
    return box


def from_client(payload: bytes, sport=50000, src=CLIENT_IP, mac=CLIENT_MAC) -> bytes:
    return udp_frame(payload, sport=sport, src=src, eth_src=mac)


def from_server(payload: bytes, dport=50000, dst=CLIENT_IP) -> bytes:
    return udp_frame(payload, sport=4433, dport=dport, src=SERVER_IP, dst=dst,
                     eth_src=SERVER_MAC, eth_dst=CLIENT_MAC)  # fmt: skip


def establish(box: Middlebox, pair) -> None:
    """The handshake as the controller sees it: the Initial as a packet-in, then the server's
    flight as copies from the observing rules."""
    first_client, first_server = pair.handshake()
    admitted = box.packet_in(1, CLIENT_PORT, from_client(first_client[0]), now=1.0)
    assert admitted.record["verdict"] == "admit"
    for datagram in first_server:
        box.packet_in(1, SERVER_PORT, from_server(datagram), now=1.01, cookie=COOKIE_OBSERVE)


def flow_rules(decision) -> list[FlowRule]:
    return [m for m in decision.messages if isinstance(m, FlowRule)]


def test_cid_variant_observes_the_handshake_then_leaves_the_fast_path_to_the_switch(quic_pair):
    box = middlebox("cid")
    first_client, first_server = quic_pair.handshake()
    admitted = box.packet_in(1, CLIENT_PORT, from_client(first_client[0]), now=1.0)
    # Only the server's packets carry the SCIDs to learn; the client's are never copied.
    copied = {rule.match.flow: rule.copy_to_controller for rule in flow_rules(admitted)}
    client_path = FlowKey(CLIENT_IP, 50000, SERVER_IP, 4433)
    assert copied == {client_path: False, client_path.reversed(): True}
    copy = box.packet_in(
        1, SERVER_PORT, from_server(first_server[0]), now=1.01, cookie=COOKIE_OBSERVE
    )
    assert copy.record["verdict"] == "observe"
    (replaced,) = flow_rules(copy)
    assert replaced.match.flow == client_path.reversed() and not replaced.copy_to_controller
    (connection,) = box.table.connections()
    assert quic_pair.client._peer_cid.cid in connection.server_cids


def test_cid_variant_follows_a_rebinding_by_dcid_but_drops_an_active_migration(quic_pair):
    box = middlebox("cid")
    establish(box, quic_pair)
    rebound = box.packet_in(
        1, CLIENT_PORT, from_client(quic_pair.short_header_datagram(), sport=50001), now=2.0
    )
    assert rebound.record["verdict"] == "admit" and "DCID match" in rebound.record["reason"]
    assert {r.match.flow for r in flow_rules(rebound)} == {
        FlowKey(CLIENT_IP, 50001, SERVER_IP, 4433),
        FlowKey(SERVER_IP, 4433, CLIENT_IP, 50001),
    }
    quic_pair.client.change_connection_id()
    moved = box.packet_in(
        1,
        LTE_PORT,
        from_client(quic_pair.short_header_datagram(), sport=6000, src=LTE_IP, mac=LTE_MAC),
        now=3.0,
    )
    assert moved.record["verdict"] == "drop" and "short header" in moved.record["reason"]


def test_tuple_variant_drops_even_a_rebinding(quic_pair):
    box = middlebox("tuple")
    establish(box, quic_pair)
    rebound = box.packet_in(
        1, CLIENT_PORT, from_client(quic_pair.short_header_datagram(), sport=50001), now=2.0
    )
    assert rebound.record["verdict"] == "drop"


def agent_frame(datagram: bytes, src: str = LTE_IP, mac: str = LTE_MAC) -> bytes:
    """A Client Agent datagram as it reaches the switch, addressed to the Tracking Agent."""
    return udp_frame(
        datagram, sport=7777, dport=7400, src=src, dst=AGENT_IP, eth_src=mac, eth_dst=AGENT_MAC
    )


def agent_announce(
    box, pair, agent: ClientAgent, new=(LTE_IP, 6000), new_cid=True, port=LTE_PORT, mac=LTE_MAC
):
    _, datagram = agent.announce(pair.client, (CLIENT_IP, 50000), new, new_cid)
    return box.packet_in(1, port, agent_frame(datagram, new[0], mac), now=2.0)


def test_qasm_preinstalls_the_announced_path_so_the_migrated_packet_stays_in_the_switch(quic_pair):
    box = middlebox("qasm")
    establish(box, quic_pair)
    agent = ClientAgent("c1", derive_client_key(SECRET, "c1"))
    decision = agent_announce(box, quic_pair, agent)
    assert decision.record["event"] == "agent_report" and decision.record["accepted"], (
        decision.record
    )
    new_path = FlowKey(LTE_IP, 6000, SERVER_IP, 4433)
    rules = {(r.match.flow, r.out_port) for r in flow_rules(decision)}
    assert rules == {(new_path, SERVER_PORT), (new_path.reversed(), LTE_PORT)}
    ack = agent.read_ack(decision.messages[-1].data[42:], counter=1)  # Ethernet+IPv4+UDP = 42
    assert ack.accepted
    quic_pair.client.change_connection_id()
    migrated = box.packet_in(
        1,
        LTE_PORT,
        from_client(quic_pair.short_header_datagram(), sport=6000, src=LTE_IP, mac=LTE_MAC),
        now=2.1,
    )
    assert migrated.record["reason"] == "known path"  # had the rule been missed, still known


def test_qasm_retirement_removes_the_old_paths_rules(quic_pair):
    box = middlebox("qasm")
    establish(box, quic_pair)
    agent = ClientAgent("c1", derive_client_key(SECRET, "c1"))
    agent_announce(box, quic_pair, agent)
    quic_pair.client.change_connection_id()
    _, datagram = agent.retire(quic_pair.client, (CLIENT_IP, 50000))
    frame = agent_frame(datagram)
    decision = box.packet_in(1, LTE_PORT, frame, now=3.0)
    assert decision.record["accepted"], decision.record
    old = FlowKey(CLIENT_IP, 50000, SERVER_IP, 4433)
    removed = {m.match for m in decision.messages if isinstance(m, RemoveFlow)}
    assert removed == {Match(flow=old), Match(flow=old.reversed())}
    assert box.table.by_path(old, now=3.0) is None
    # The server going back to the old path (its validation of the new one timed out).
    fallback = box.packet_in(1, SERVER_PORT, from_server(b"\x40" + bytes(40)), now=3.5)
    assert fallback.record["verdict"] == "drop"
    assert fallback.record["reason"] == "from the service on a path its client retired"
    stranger = box.packet_in(1, SERVER_PORT, from_server(b"\x40" + bytes(40), dport=50001), now=3.6)
    assert stranger.record["reason"] == "from the service on a 5-tuple never admitted"


def test_qasm_rejects_forged_replayed_oversized_and_foreign_reports(quic_pair):
    box = middlebox("qasm")
    establish(box, quic_pair)
    forger = ClientAgent("c1", b"wrong key".ljust(32, b"\0"))
    assert agent_announce(box, quic_pair, forger).record["reason"] == "forged"
    agent = ClientAgent("c1", derive_client_key(SECRET, "c1"))
    _, datagram = agent.announce(quic_pair.client, (CLIENT_IP, 50000), (LTE_IP, 6000), True)
    frame = agent_frame(datagram)
    assert box.packet_in(1, LTE_PORT, frame, now=2.0).record["accepted"]
    duplicate = box.packet_in(1, LTE_PORT, frame, now=2.1)  # a retry after a lost ack
    assert duplicate.record["reason"] == "duplicate (answered again)" and duplicate.flow_mods == 0
    assert agent.read_ack(duplicate.messages[-1].data[42:], counter=1).accepted
    _, retire = agent.retire(quic_pair.client, (CLIENT_IP, 50000))
    retire_frame = agent_frame(retire)
    assert box.packet_in(1, LTE_PORT, retire_frame, now=2.2).record["accepted"]
    replay = box.packet_in(1, LTE_PORT, frame, now=2.3)  # the old announce, after a newer report
    assert replay.record["reason"].startswith("replayed") and replay.flow_mods == 0
    oversized = agent_frame(bytes(600))
    assert "512" in box.packet_in(1, LTE_PORT, oversized, now=2.2).record["reason"]
    stranger = agent_announce(box, quic_pair, agent, new=("10.0.9.9", 6000))
    assert "not this client's" in stranger.record["reason"] and stranger.flow_mods == 0
    assert box.tracking.counters["accepted"] == 2


def test_ratelimit_keeps_a_migrated_connection_under_one_meter_only_when_cid_aware(quic_pair):
    for variant, same_meter in (("cid", True), ("tuple", False)):
        pair = type(quic_pair)()
        box = middlebox(variant, functions=("ratelimit",))
        establish(box, pair)
        rebound = box.packet_in(
            1, CLIENT_PORT, from_client(pair.short_header_datagram(), sport=50001), now=2.0
        )
        meters = [m for m in rebound.messages if isinstance(m, MeterRule)]
        upstream = [r for r in flow_rules(rebound) if r.match.flow.dst_ip == SERVER_IP]
        assert rebound.record["verdict"] == "admit"
        assert (
            (upstream[0].meter_id == 1 and not meters)
            if same_meter
            else (meters and upstream[0].meter_id == 2)
        ), variant


def nat_middlebox(variant: str, ports: int = 8) -> Middlebox:
    from qasm.functions.nat import NatSettings

    agent = AgentSettings(
        ip=AGENT_IP, port=7400, mac=AGENT_MAC,
        keys={"c1": derive_client_key(SECRET, "c1").hex()}, addresses={"c1": [CLIENT_IP, LTE_IP]},
    )  # fmt: skip
    box = Middlebox(MiddleboxConfig(
        variant=variant, service_ip=SERVER_IP, service_port=4433, functions=("nat",),
        agent=agent if variant == "qasm" else None,
        nat=NatSettings("10.0.100.1", "02:00:00:00:00:fd", first_port=20000, ports=ports),
    ))  # fmt: skip
    box.switch_connected(1)
    for port, mac, ip in (
        (SERVER_PORT, SERVER_MAC, SERVER_IP),
        (CLIENT_PORT, CLIENT_MAC, CLIENT_IP),
        (LTE_PORT, LTE_MAC, LTE_IP),
    ):
        box.packet_in(
            1, port, arp_frame(mac, ip, SERVER_IP if ip != SERVER_IP else CLIENT_IP), now=0.0
        )
    return box


def test_nat_translates_both_directions_of_a_path(quic_pair):
    box = nat_middlebox("cid")
    first_client, _ = quic_pair.handshake()
    decision = box.packet_in(1, CLIENT_PORT, from_client(first_client[0]), now=1.0)
    assert (
        decision.record["nat_allocated"] == f"{CLIENT_IP}:50000>10.0.0.250:4433 as 10.0.100.1:20000"
    )
    upstream, downstream = flow_rules(decision)
    assert upstream.set_fields == (("ipv4_src", "10.0.100.1"), ("udp_src", 20000))
    assert downstream.match.flow == FlowKey(SERVER_IP, 4433, "10.0.100.1", 20000)
    assert downstream.set_fields == (
        ("ipv4_dst", CLIENT_IP),
        ("udp_dst", 50000),
        ("eth_dst", CLIENT_MAC),
    )
    assert decision.messages[-1].set_fields == upstream.set_fields  # the packet-in itself too


def test_qasm_releases_the_retired_paths_port_while_cid_holds_it(quic_pair):
    box = nat_middlebox("qasm")
    establish(box, quic_pair)
    agent = ClientAgent("c1", derive_client_key(SECRET, "c1"))
    announced = agent_announce(box, quic_pair, agent)
    assert announced.record["nat_allocated"].endswith("as 10.0.100.1:20001")
    _, datagram = agent.retire(quic_pair.client, (CLIENT_IP, 50000))
    frame = agent_frame(datagram)
    retired = box.packet_in(1, LTE_PORT, frame, now=3.0)
    assert retired.record["nat_released"] == [f"{CLIENT_IP}:50000>10.0.0.250:4433"]
    assert box.nat.in_use == 1


def test_an_exhausted_pool_drops_new_paths(quic_pair):
    box = nat_middlebox("tuple", ports=1)
    establish(box, quic_pair)
    rebound = box.packet_in(
        1, CLIENT_PORT, from_client(quic_pair.short_header_datagram(), sport=50001), now=2.0
    )
    assert rebound.record["verdict"] == "drop" and "exhausted (1 ports)" in rebound.record["reason"]
    assert box.nat.exhausted == 1


def lb_middlebox(variant: str):
    from qasm.functions.loadbalancer import Backend, LoadBalancerSettings

    backends = tuple(
        Backend(f"10.0.4.{i}", f"02:00:00:00:04:0{i}", 200 + i, f"0{i}") for i in (1, 2, 3)
    )
    box = Middlebox(MiddleboxConfig(
        variant=variant, service_ip=SERVER_IP, service_port=4433, functions=("loadbalancer",),
        loadbalancer=LoadBalancerSettings("02:00:00:00:00:fa", backends),
    ))  # fmt: skip
    box.switch_connected(1)
    box.packet_in(1, CLIENT_PORT, arp_frame(CLIENT_MAC, CLIENT_IP, SERVER_IP), now=0.0)
    box.packet_in(1, LTE_PORT, arp_frame(LTE_MAC, LTE_IP, SERVER_IP), now=0.0)
    return box, backends


def test_the_virtual_ip_is_answered_and_backend_arp_is_left_alone():
    box, backends = lb_middlebox("baseline")
    answer = box.packet_in(1, CLIENT_PORT, arp_frame(CLIENT_MAC, CLIENT_IP, SERVER_IP), now=0.0)
    assert answer.record["verdict"] == "arp_reply"
    backend_arp = box.packet_in(
        1, 201, arp_frame(backends[0].mac, backends[0].ip, CLIENT_IP), now=0.0
    )
    assert backend_arp.record["reason"] == "l2" and not backend_arp.messages[-1].set_fields


def test_cid_keeps_the_connections_backend_for_a_rebinding(quic_pair):
    box, backends = lb_middlebox("cid")
    establish(box, quic_pair)
    (connection,) = box.table.connections()
    rebound = box.packet_in(
        1, CLIENT_PORT, from_client(quic_pair.short_header_datagram(), sport=50001), now=2.0
    )
    assert rebound.record["backend"] == connection.policy["backend"].ip
    upstream = [r for r in flow_rules(rebound) if r.match.flow.dst_ip == SERVER_IP][0]
    backend = connection.policy["backend"]
    assert upstream.out_port == backend.switch_port
    assert upstream.set_fields == (("ipv4_dst", backend.ip), ("eth_dst", backend.mac))


def test_quic_lb_routes_a_migrated_packet_by_the_server_id_in_its_dcid():
    from qasm.wire.quic_lb import QuicLbConfig, encode_cid

    box, backends = lb_middlebox("quic-lb")
    dcid = encode_cid(QuicLbConfig(0, 1, 6), bytes([3]), bytes(6))
    packet = bytes([0x40]) + dcid + bytes(40)  # a short header with backend 3's CID
    decision = box.packet_in(
        1, LTE_PORT, from_client(packet, sport=6000, src=LTE_IP, mac=LTE_MAC), now=1.0
    )
    assert (
        decision.record["backend"] == "10.0.4.3"
        and decision.record["reason"] == "server ID in the DCID"
    )
    assert len(box.table) == 0  # stateless
