"""The Initial flood and the greedy client (testbed/apps/flood.py) against the middlebox,
without an emulation: the flood's Initials are real ones (a server answers each, the
middlebox admits each as a new connection), a source's NAT ports are limited, and a greedy
client's announcements stop at its path quota."""

from __future__ import annotations

import random

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from qasm.agents.messages import derive_client_key, open_sealed
from qasm.controller.events import AgentReport, PacketIn, Reason
from qasm.flow import FlowKey
from qasm.functions.nat import Nat, NatSettings
from qasm.state.connections import Connection
from qasm.wire.header import PacketType, parse_datagram
from testbed.apps.flood import (
    GREEDY_FIRST_COUNTER,
    INITIAL_SIZE,
    GreedyClient,
    InitialFactory,
)
from testbed.apps.server import self_signed_certificate
from testbed.apps.transfer import ALPN
from tests.unit.conftest import udp_frame
from tests.unit.test_chain import SECRET, SERVER_IP, WIFI_IP, WIFI_PORT, ChainBench


def test_flood_initials_are_real_distinct_and_the_server_answers_each():
    factory = InitialFactory(random.Random(1), "server.qasm.test", ALPN, pool=2)
    certificate, private_key = self_signed_certificate()
    dcids = set()
    for _ in range(4):
        dcid, datagram = factory.initial()
        assert len(datagram) == INITIAL_SIZE
        (header,) = parse_datagram(datagram, 8)
        assert header.packet_type is PacketType.INITIAL and header.dcid == dcid
        dcids.add(dcid)
        configuration = QuicConfiguration(is_client=False, alpn_protocols=[ALPN])
        configuration.certificate, configuration.private_key = certificate, private_key
        server = QuicConnection(
            configuration=configuration, original_destination_connection_id=dcid
        )
        server.receive_datagram(datagram, ("10.0.2.1", 2000), now=0.0)
        answer = server.datagrams_to_send(now=0.0)
        # Its Initial (ServerHello) and Handshake: a full answer, not a CONNECTION_CLOSE.
        assert answer and server._close_event is None
    assert len(dcids) == 4


def test_the_middlebox_admits_each_flood_initial_as_a_new_connection():
    bench = ChainBench("tuple", 1, functions=("firewall", "nat"))
    factory = InitialFactory(random.Random(2), "server.qasm.test", ALPN, pool=1)
    for port in range(2000, 2005):
        frame = udp_frame(factory.initial()[1], sport=port, src=WIFI_IP, dst=SERVER_IP)
        bench.net.send(1, WIFI_PORT, frame, now=1.0)
    reasons = [e.reason for e in bench.net.events if isinstance(e, PacketIn)]
    assert reasons.count(Reason.OPENED_BY_INITIAL) == 5, reasons
    assert len(bench.controller.snapshot()) == 5


def _path(ip: str, port: int) -> FlowKey:
    return FlowKey(ip, port, SERVER_IP, 4433)


def test_a_source_holds_at_most_its_nat_ports_and_gets_one_back_when_a_path_goes():
    nat = Nat(NatSettings("10.0.100.1", "02:00:00:00:64:01", ports=16, ports_per_source=2))
    connections = [Connection(i, 0.0) for i in range(4)]
    changes = [nat.path_added(c, _path(WIFI_IP, 2000 + c.id), 0.0) for c in connections[:3]]
    assert [c.refusal for c in changes[:2]] == [None, None]
    assert changes[2].refusal.reason is Reason.NAT_SOURCE_QUOTA
    assert nat.pool.in_use == 2
    # Another source is not affected; a released port makes room again.
    assert nat.path_added(connections[3], _path("10.0.1.2", 2000), 0.0).refusal is None
    nat.connection_ended(connections[0])
    assert nat.path_added(connections[2], _path(WIFI_IP, 2002), 0.0).refusal is None
    assert nat.pool.in_use == 3


def test_a_greedy_clients_announcements_stop_at_its_path_quota():
    bench = ChainBench("qasm", 1, functions=("nat",), max_paths=3)
    bench.handshake()  # the greedy client's own connection: wifi:50000
    greedy = GreedyClient(random.Random(3), "c1", derive_client_key(SECRET, "c1"), WIFI_IP, 10)
    greedy.port = 50000
    greedy.cid = bench.pair.client._peer_cid.cid
    reasons = []
    while not greedy.done:
        datagram = greedy.announcement()
        assert open_sealed(datagram, greedy.key).counter >= GREEDY_FIRST_COUNTER  # authentic
        bench.net.events.clear()
        bench.report(datagram, "wifi")
        reasons += [e.reason for e in bench.net.events if isinstance(e, AgentReport)]
    assert reasons == [Reason.ANNOUNCED] * 2 + [Reason.PATH_QUOTA] * 8, reasons
    assert bench.hop_mappings() == [3]  # its ports: the quota's, no more
    assert bench.controller.tracking.counters[f"rejected: {Reason.PATH_QUOTA}"] == 8
