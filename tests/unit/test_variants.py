"""Each variant's middlebox driven by a real aioquic connection held in memory: what it does
with the handshake, a rebinding (same DCID) and an active migration (new DCID)."""

from __future__ import annotations

from qasm.agents.client import ClientAgent
from qasm.agents.messages import derive_client_key
from qasm.controller.events import (
    AgentReport,
    NatMapping,
    PacketIn,
    PathInstalled,
    PathRetired,
    Reason,
    Verdict,
)
from qasm.controller.messages import (
    COOKIE_OBSERVE,
    FlowRule,
    Match,
    MeterRule,
    PacketOut,
    RemoveFlow,
)
from qasm.controller.pipeline import (
    AgentSettings,
    Controller,
    Decision,
    HopSettings,
    MiddleboxConfig,
)
from qasm.flow import FlowKey
from qasm.functions.firewall import client_initial_problem
from qasm.functions.loadbalancer import Backend, LoadBalancerSettings
from qasm.functions.nat import NatSettings
from qasm.functions.ratelimit import RateLimit
from qasm.state.connections import OBSERVING
from tests.unit.conftest import CLIENT_IP, CLIENT_MAC, SERVER_IP, SERVER_MAC, arp_frame, udp_frame

CLIENT_PORT, SERVER_PORT, LTE_PORT = 2, 1, 3
LTE_IP, LTE_MAC = "10.0.2.1", "02:00:00:00:01:01"
AGENT_IP, AGENT_MAC = "10.0.0.254", "02:00:00:00:00:fe"
PUBLIC_IP, PUBLIC_MAC = "10.0.100.1", "02:00:00:00:00:fd"
SECRET = b"scenario secret"
OLD_PATH = FlowKey(CLIENT_IP, 50000, SERVER_IP, 4433)
NEW_PATH = FlowKey(LTE_IP, 6000, SERVER_IP, 4433)


def agent_settings() -> AgentSettings:
    return AgentSettings(
        ip=AGENT_IP, port=7400, mac=AGENT_MAC,
        keys={"c1": derive_client_key(SECRET, "c1").hex()},
        addresses={"c1": [CLIENT_IP, LTE_IP]},
    )  # fmt: skip


def middlebox(variant: str, functions=("firewall",), nat_ports: int | None = None) -> Controller:
    nat = NatSettings(PUBLIC_IP, PUBLIC_MAC, first_port=20000, ports=nat_ports or 8)
    config = MiddleboxConfig(
        variant=variant, service_ip=SERVER_IP, service_port=4433, functions=functions,
        agent=agent_settings() if variant == "qasm" else None,
        ratelimit=RateLimit(8000, 800) if "ratelimit" in functions else None,
        hops=(HopSettings(1, nat if "nat" in functions else None),),
    )  # fmt: skip
    box = Controller(config)
    box.switch_connected(1)
    box.packet_in(1, SERVER_PORT, arp_frame(SERVER_MAC, SERVER_IP, CLIENT_IP), now=0.0)
    box.packet_in(1, CLIENT_PORT, arp_frame(CLIENT_MAC, CLIENT_IP, SERVER_IP), now=0.0)
    box.packet_in(1, LTE_PORT, arp_frame(LTE_MAC, LTE_IP, SERVER_IP), now=0.0)
    return box


def one(decisions: list[Decision]) -> Decision:
    """The only decision of a packet-in (nothing ended meanwhile)."""
    (decision,) = decisions
    assert decision.dpid == 1 and isinstance(decision.event, PacketIn)
    return decision


def from_client(payload: bytes, sport=50000, src=CLIENT_IP, mac=CLIENT_MAC) -> bytes:
    return udp_frame(payload, sport=sport, src=src, eth_src=mac)


def from_server(payload: bytes, dport=50000, dst=CLIENT_IP) -> bytes:
    return udp_frame(payload, sport=4433, dport=dport, src=SERVER_IP, dst=dst,
                     eth_src=SERVER_MAC, eth_dst=CLIENT_MAC)  # fmt: skip


def establish(box: Controller, pair) -> None:
    """The handshake as the controller sees it: the Initial as a packet-in, then the server's
    flight as copies from the observing rules."""
    first_client, first_server = pair.handshake()
    admitted = one(box.packet_in(1, CLIENT_PORT, from_client(first_client[0]), now=1.0))
    assert admitted.event.verdict is Verdict.ADMIT
    assert admitted.event.reason is Reason.OPENED_BY_INITIAL
    for datagram in first_server:
        box.packet_in(1, SERVER_PORT, from_server(datagram), now=1.01, cookie=COOKIE_OBSERVE)


def flow_rules(decision) -> list[FlowRule]:
    return [m for m in decision.messages if isinstance(m, FlowRule)]


def rebind(box: Controller, pair, now=2.0) -> Decision:
    """The client's next packet from a new port, same address and DCID."""
    datagram = pair.short_header_datagram()
    return one(box.packet_in(1, CLIENT_PORT, from_client(datagram, sport=50001), now=now))


def test_cid_variant_observes_the_handshake_then_leaves_the_fast_path_to_the_switch(quic_pair):
    box = middlebox("cid")
    first_client, first_server = quic_pair.handshake()
    admitted = one(box.packet_in(1, CLIENT_PORT, from_client(first_client[0]), now=1.0))
    # Only the server's packets carry the SCIDs to learn; the client's are never copied.
    copied = {rule.match.flow: rule.copy_to_controller for rule in flow_rules(admitted)}
    assert copied == {OLD_PATH: False, OLD_PATH.reversed(): True}
    copy = one(
        box.packet_in(1, SERVER_PORT, from_server(first_server[0]), now=1.01, cookie=COOKIE_OBSERVE)
    )
    assert (copy.event.verdict, copy.event.reason) == (Verdict.OBSERVE, Reason.HANDSHAKE_COPY)
    assert not [m for m in copy.messages if isinstance(m, PacketOut)]  # the switch forwarded it
    (replaced,) = flow_rules(copy)
    assert replaced.match.flow == OLD_PATH.reversed() and not replaced.copy_to_controller
    (connection,) = box.hops[0].table.connections()
    assert quic_pair.client._peer_cid.cid in connection.server_cids
    assert not connection.flags & OBSERVING


def test_cid_variant_follows_a_rebinding_by_dcid_but_drops_an_active_migration(quic_pair):
    box = middlebox("cid")
    establish(box, quic_pair)
    rebound = rebind(box, quic_pair)
    assert (rebound.event.verdict, rebound.event.reason) == (Verdict.ADMIT, Reason.DCID_MATCH)
    assert {r.match.flow for r in flow_rules(rebound)} == {
        FlowKey(CLIENT_IP, 50001, SERVER_IP, 4433),
        FlowKey(SERVER_IP, 4433, CLIENT_IP, 50001),
    }
    (connection,) = box.hops[0].table.connections()
    assert rebound.event.connection == connection.id
    quic_pair.client.change_connection_id()
    datagram = quic_pair.short_header_datagram()
    moved = one(
        box.packet_in(
            1, LTE_PORT, from_client(datagram, sport=6000, src=LTE_IP, mac=LTE_MAC), now=3.0
        )
    )
    assert (moved.event.verdict, moved.event.reason) == (Verdict.DROP, Reason.NOT_AN_INITIAL)
    assert moved.event.text == client_initial_problem(datagram)  # a short header
    assert NEW_PATH not in connection.paths


def test_tuple_variant_drops_even_a_rebinding(quic_pair):
    box = middlebox("tuple")
    establish(box, quic_pair)
    rebound = rebind(box, quic_pair)
    assert (rebound.event.verdict, rebound.event.reason) == (Verdict.DROP, Reason.NOT_AN_INITIAL)
    assert rebound.messages == () and len(box.hops[0].table) == 1


def agent_frame(datagram: bytes, src: str = LTE_IP, mac: str = LTE_MAC) -> bytes:
    """A Client Agent datagram as it reaches the switch, addressed to the Tracking Agent."""
    return udp_frame(
        datagram, sport=7777, dport=7400, src=src, dst=AGENT_IP, eth_src=mac, eth_dst=AGENT_MAC
    )


def agent_announce(
    box, pair, agent: ClientAgent, new=(LTE_IP, 6000), new_cid=True, port=LTE_PORT, mac=LTE_MAC
) -> list[Decision]:
    _, datagram = agent.announce(pair.client, (CLIENT_IP, 50000), new, new_cid)
    return box.packet_in(1, port, agent_frame(datagram, new[0], mac), now=2.0)


def report_of(decisions: list[Decision]) -> AgentReport:
    """The agent report's event: always the last decision."""
    event = decisions[-1].event
    assert isinstance(event, AgentReport)
    return event


def ack_of(decisions: list[Decision], agent: ClientAgent, counter: int):
    (reply,) = [m for m in decisions[-1].messages if isinstance(m, PacketOut)]
    return agent.read_ack(reply.data[42:], counter=counter)  # Ethernet+IPv4+UDP = 42


def test_qasm_preinstalls_the_announced_path_so_the_migrated_packet_stays_in_the_switch(quic_pair):
    box = middlebox("qasm")
    establish(box, quic_pair)
    agent = ClientAgent("c1", derive_client_key(SECRET, "c1"))
    decisions = agent_announce(box, quic_pair, agent)
    installed, reported = decisions
    report = report_of(decisions)
    assert (report.verdict, report.reason) == (Verdict.ACCEPT, Reason.ANNOUNCED), report
    assert report.client == "c1" and report.new_path == NEW_PATH
    (connection,) = box.hops[0].table.connections()
    assert installed.event == PathInstalled(
        dpid=1, client="c1", connection=connection.id, path=NEW_PATH, flow_mods=2
    )
    rules = {(r.match.flow, r.out_port) for r in flow_rules(installed)}
    assert rules == {(NEW_PATH, SERVER_PORT), (NEW_PATH.reversed(), LTE_PORT)}
    # The rules go out before the ack, which is the report decision's only message.
    assert [type(m) for m in reported.messages] == [PacketOut]
    assert ack_of(decisions, agent, counter=1).accepted
    quic_pair.client.change_connection_id()
    assert quic_pair.client._peer_cid.cid in connection.server_cids  # the announced next CID
    migrated = one(
        box.packet_in(
            1,
            LTE_PORT,
            from_client(quic_pair.short_header_datagram(), sport=6000, src=LTE_IP, mac=LTE_MAC),
            now=2.1,
        )
    )
    # Had the rule been missed, the path is still known.
    assert (migrated.event.verdict, migrated.event.reason) == (Verdict.FORWARD, Reason.KNOWN_PATH)
    assert migrated.event.connection == connection.id


def test_qasm_retirement_removes_the_old_paths_rules(quic_pair):
    box = middlebox("qasm")
    establish(box, quic_pair)
    agent = ClientAgent("c1", derive_client_key(SECRET, "c1"))
    agent_announce(box, quic_pair, agent)
    quic_pair.client.change_connection_id()
    _, datagram = agent.retire(quic_pair.client, (CLIENT_IP, 50000))
    decisions = box.packet_in(1, LTE_PORT, agent_frame(datagram), now=3.0)
    retired, _ = decisions
    report = report_of(decisions)
    assert (report.verdict, report.reason) == (Verdict.ACCEPT, Reason.RETIRED), report
    assert report.retired_path == OLD_PATH
    (connection,) = box.hops[0].table.connections()
    # Both directions, and the half-open probe of the connection's first path, still on the
    # switch (a reused NAT port must not meet it).
    assert retired.event == PathRetired(
        dpid=1, client="c1", connection=connection.id, path=OLD_PATH, flow_mods=3
    )
    removed = {m.match for m in retired.messages if isinstance(m, RemoveFlow)}
    assert removed == {Match(flow=OLD_PATH), Match(flow=OLD_PATH.reversed())}
    assert box.hops[0].table.by_path(OLD_PATH, now=3.0) is None
    assert connection.paths == (NEW_PATH,) and connection.retired_paths == (OLD_PATH,)
    # The server going back to the old path (its validation of the new one timed out): the
    # client gets it on the path it holds.
    fallback = one(box.packet_in(1, SERVER_PORT, from_server(b"\x40" + bytes(40)), now=3.5))
    assert (fallback.event.verdict, fallback.event.reason) == (Verdict.FORWARD, Reason.RETIRED_PATH)
    (delivered,) = fallback.messages
    assert delivered.out_port == LTE_PORT
    assert dict(delivered.set_fields) == {
        "ipv4_dst": LTE_IP, "udp_dst": 6000, "eth_dst": LTE_MAC
    }  # fmt: skip
    stranger = one(
        box.packet_in(1, SERVER_PORT, from_server(b"\x40" + bytes(40), dport=50001), now=3.6)
    )
    assert (stranger.event.verdict, stranger.event.reason) == (Verdict.DROP, Reason.NEVER_ADMITTED)


def flow_mods(decisions: list[Decision]) -> int:
    return sum(d.flow_mods for d in decisions)


def test_qasm_rejects_forged_replayed_oversized_and_foreign_reports(quic_pair):
    box = middlebox("qasm")
    establish(box, quic_pair)
    forger = ClientAgent("c1", b"wrong key".ljust(32, b"\0"))
    forged = agent_announce(box, quic_pair, forger)
    assert len(forged) == 1 and report_of(forged).reason is Reason.FORGED
    assert forged[0].messages == ()  # an unverified sender gets no answer
    agent = ClientAgent("c1", derive_client_key(SECRET, "c1"))
    _, datagram = agent.announce(quic_pair.client, (CLIENT_IP, 50000), (LTE_IP, 6000), True)
    frame = agent_frame(datagram)
    assert report_of(box.packet_in(1, LTE_PORT, frame, now=2.0)).verdict is Verdict.ACCEPT
    duplicate = box.packet_in(1, LTE_PORT, frame, now=2.1)  # a retry after a lost ack
    assert report_of(duplicate).reason is Reason.DUPLICATE and flow_mods(duplicate) == 0
    assert len(duplicate) == 1 and ack_of(duplicate, agent, counter=1).accepted
    _, retire = agent.retire(quic_pair.client, (CLIENT_IP, 50000))
    retire_frame = agent_frame(retire)
    assert report_of(box.packet_in(1, LTE_PORT, retire_frame, now=2.2)).verdict is Verdict.ACCEPT
    # The old announce again, after a newer report: one of the last few answered, it gets its
    # answer again and changes nothing.
    replay = box.packet_in(1, LTE_PORT, frame, now=2.3)
    assert report_of(replay).reason is Reason.DUPLICATE and flow_mods(replay) == 0
    oversized = box.packet_in(1, LTE_PORT, agent_frame(bytes(600)), now=2.2)
    assert report_of(oversized).reason is Reason.MALFORMED and "512" in report_of(oversized).text
    assert report_of(oversized).bytes == 600
    stranger = agent_announce(box, quic_pair, agent, new=("10.0.9.9", 6000))
    assert report_of(stranger).reason is Reason.SOURCE_NOT_CLIENTS and flow_mods(stranger) == 0
    assert box.tracking.counters["accepted"] == 2
    (connection,) = box.hops[0].table.connections()
    assert connection.paths == (NEW_PATH,)  # only the authentic reports changed anything


def test_ratelimit_keeps_a_migrated_connection_under_one_meter_only_when_cid_aware(quic_pair):
    for variant, same_meter in (("cid", True), ("tuple", False)):
        pair = type(quic_pair)()
        box = middlebox(variant, functions=("ratelimit",))
        establish(box, pair)
        rebound = rebind(box, pair)
        meters = [m for m in rebound.messages if isinstance(m, MeterRule)]
        upstream = [r for r in flow_rules(rebound) if r.match.flow.dst_ip == SERVER_IP]
        assert rebound.event.verdict is Verdict.ADMIT
        assert (
            (upstream[0].meter_id == 1 and not meters)
            if same_meter
            else (meters == [MeterRule(2, 8000, 800)] and upstream[0].meter_id == 2)
        ), variant


def test_nat_translates_both_directions_of_a_path(quic_pair):
    box = middlebox("cid", functions=("nat",))
    first_client, _ = quic_pair.handshake()
    decision = one(box.packet_in(1, CLIENT_PORT, from_client(first_client[0]), now=1.0))
    assert decision.event.nat_allocated == (NatMapping(OLD_PATH, PUBLIC_IP, 20000),)
    upstream, downstream = flow_rules(decision)
    assert upstream.set_fields == (
        ("ipv4_src", PUBLIC_IP),
        ("udp_src", 20000),
        ("eth_src", PUBLIC_MAC),
    )
    assert downstream.match.flow == FlowKey(SERVER_IP, 4433, PUBLIC_IP, 20000)
    assert downstream.set_fields == (
        ("ipv4_dst", CLIENT_IP),
        ("udp_dst", 50000),
        ("eth_dst", CLIENT_MAC),
    )
    packet_out = decision.messages[0]  # sent first (Decision)
    assert isinstance(packet_out, PacketOut)
    assert packet_out.set_fields == upstream.set_fields  # the packet-in itself too


def test_an_admitted_packet_goes_out_before_its_rules_and_a_meter_before_its_rule(quic_pair):
    # The packet does not wait for the switch to install the rules; a rule still follows
    # the meter it uses.
    box = middlebox("tuple", functions=("ratelimit",))
    first_client, _ = quic_pair.handshake()
    decision = one(box.packet_in(1, CLIENT_PORT, from_client(first_client[0]), now=1.0))
    assert decision.event.verdict is Verdict.ADMIT
    kinds = [type(m) for m in decision.messages]
    assert kinds[:2] == [PacketOut, MeterRule] and set(kinds[2:]) == {FlowRule}, kinds


def test_qasm_releases_the_retired_paths_port_while_cid_holds_it(quic_pair):
    box = middlebox("qasm", functions=("nat",))
    establish(box, quic_pair)
    agent = ClientAgent("c1", derive_client_key(SECRET, "c1"))
    installed, _ = agent_announce(box, quic_pair, agent)
    assert installed.event.nat_allocated == (NatMapping(NEW_PATH, PUBLIC_IP, 20001),)
    _, datagram = agent.retire(quic_pair.client, (CLIENT_IP, 50000))
    retired, _ = box.packet_in(1, LTE_PORT, agent_frame(datagram), now=3.0)
    assert retired.event.nat_released == (NatMapping(OLD_PATH, PUBLIC_IP, 20000),)
    nat = box.hops[0].nat
    assert nat.pool.in_use == 1 and nat.pool.path_of(20000) is None
    assert nat.pool.path_of(20001) == NEW_PATH


def test_an_exhausted_pool_drops_new_paths(quic_pair):
    box = middlebox("tuple", functions=("nat",), nat_ports=1)
    establish(box, quic_pair)
    rebound = rebind(box, quic_pair)
    assert (rebound.event.verdict, rebound.event.reason) == (
        Verdict.DROP,
        Reason.NAT_POOL_EXHAUSTED,
    )
    assert "(1 ports)" in rebound.event.text and rebound.messages == ()
    assert box.hops[0].nat.pool.exhausted == 1 and box.hops[0].nat.pool.in_use == 1


def lb_middlebox(variant: str):
    backends = tuple(
        Backend(f"10.0.4.{i}", f"02:00:00:00:04:0{i}", 200 + i, f"0{i}") for i in (1, 2, 3)
    )
    box = Controller(MiddleboxConfig(
        variant=variant, service_ip=SERVER_IP, service_port=4433, functions=("loadbalancer",),
        loadbalancer=LoadBalancerSettings("02:00:00:00:00:fa", backends),
    ))  # fmt: skip
    box.switch_connected(1)
    box.packet_in(1, CLIENT_PORT, arp_frame(CLIENT_MAC, CLIENT_IP, SERVER_IP), now=0.0)
    box.packet_in(1, LTE_PORT, arp_frame(LTE_MAC, LTE_IP, SERVER_IP), now=0.0)
    return box, backends


def test_the_virtual_ip_is_answered_and_backend_arp_is_left_alone():
    box, backends = lb_middlebox("baseline")
    answer = one(box.packet_in(1, CLIENT_PORT, arp_frame(CLIENT_MAC, CLIENT_IP, SERVER_IP), now=0))
    assert (answer.event.verdict, answer.event.reason) == (Verdict.ARP_REPLY, Reason.OUR_ADDRESS)
    backend_arp = one(
        box.packet_in(1, 201, arp_frame(backends[0].mac, backends[0].ip, CLIENT_IP), now=0.0)
    )
    assert backend_arp.event.reason is Reason.L2 and not backend_arp.messages[-1].set_fields


def test_cid_keeps_the_connections_backend_for_a_rebinding(quic_pair):
    box, backends = lb_middlebox("cid")
    establish(box, quic_pair)
    (connection,) = box.hops[0].table.connections()
    chosen = connection.loadbalancer.backend
    (backend,) = [b for b in backends if b.ip == chosen]
    rebound = rebind(box, quic_pair)
    assert rebound.event.reason is Reason.DCID_MATCH and rebound.event.backend == backend.ip
    upstream = [r for r in flow_rules(rebound) if r.match.flow.dst_ip == SERVER_IP][0]
    assert upstream.out_port == backend.switch_port
    assert upstream.set_fields == (("ipv4_dst", backend.ip), ("eth_dst", backend.mac))


def test_quic_lb_routes_a_migrated_packet_by_the_server_id_in_its_dcid():
    from qasm.wire.quic_lb import QuicLbConfig, encode_cid

    box, backends = lb_middlebox("quic-lb")
    dcid = encode_cid(QuicLbConfig(0, 1, 6), bytes([3]), bytes(6))
    packet = bytes([0x40]) + dcid + bytes(40)  # a short header with backend 3's CID
    decision = one(
        box.packet_in(1, LTE_PORT, from_client(packet, sport=6000, src=LTE_IP, mac=LTE_MAC), now=1)
    )
    assert decision.event.backend == "10.0.4.3" and decision.event.reason is Reason.SERVER_ID
    assert decision.event.verdict is Verdict.ADMIT
    upstream = [r for r in flow_rules(decision) if r.match.flow.dst_ip == SERVER_IP][0]
    assert upstream.out_port == backends[2].switch_port
    assert isinstance(decision.messages[0], PacketOut)  # the packet before its rules
    assert len(box.hops[0].table) == 0  # stateless
