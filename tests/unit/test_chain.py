"""Chains of middlebox hops, sans-I/O: a real aioquic connection crosses K hops of a fake
OpenFlow network (tests/unit/fakenet.py) driven by the real controller; each hop has its own
table and NAT. What each variant does with a rebinding and an active migration, in push and
pull mode, and what every hop holds at the end."""

from __future__ import annotations

import pytest

from qasm.agents.client import ClientAgent
from qasm.agents.messages import derive_client_key
from qasm.controller.events import PacketIn, PathInstalled, Reason, Verdict
from qasm.controller.pipeline import (
    RETIRED_INBOUND_S,
    Admission,
    AgentSettings,
    Controller,
    HopSettings,
    MiddleboxConfig,
)
from qasm.flow import FlowKey
from qasm.functions.nat import NatSettings
from tests.unit.conftest import QuicPair, arp_frame, udp_frame
from tests.unit.fakenet import FakeNetwork

SERVER_IP, SERVER_MAC = "10.0.0.250", "02:00:00:00:04:00"
WIFI_IP, WIFI_MAC, WIFI_PORT = "10.0.1.1", "02:00:00:00:01:01", 2
LTE_IP, LTE_MAC, LTE_PORT = "10.0.2.1", "02:00:00:00:02:01", 3
AGENT_IP, AGENT_MAC = "10.0.0.254", "02:00:00:00:00:fe"
SECRET = b"chain secret"
PLAIN_DPID = 0x100


def public_address(hop: int) -> tuple[str, str]:
    return f"10.0.100.{hop}", f"02:00:00:00:01:{hop:02x}"


class RoundTrips:
    """A bench's QUIC exchanges, over whatever its `client_sends`, `server_receives`,
    `server_replies` and `client_receives` carry them through."""

    pair: QuicPair

    def round_trip(self, via="wifi", sport=50000) -> tuple[list[tuple[str, int]], int]:
        self.pair.now += 0.001
        self.client_sends(
            [d for d, _ in self.pair.client.datagrams_to_send(now=self.pair.now)], via, sport
        )
        sources = self.server_receives()
        self.server_replies()
        return sources, self.client_receives()

    def handshake(self, sport: int = 50000) -> None:
        self.pair.client.connect((SERVER_IP, 4433), now=self.pair.now)
        for _ in range(6):
            self.round_trip(sport=sport)
        assert self.pair.client._handshake_confirmed


class ChainBench(RoundTrips):
    """Client (wifi, lte) → hops 1..K → server, one QUIC connection between them."""

    def __init__(
        self, variant: str, hops: int, functions=("nat",), mode="push", ports=16,
        kernel_netns_pid: int | None = None, sources=(), max_paths=256, admission=None,
        sni=None,
    ) -> None:  # fmt: skip
        self.hops = hops
        agent = AgentSettings(
            ip=AGENT_IP, port=7400, mac=AGENT_MAC,
            keys={"c1": derive_client_key(SECRET, "c1").hex()},
            addresses={"c1": [WIFI_IP, LTE_IP]}, mode=mode, max_paths=max_paths,
        )  # fmt: skip
        config = MiddleboxConfig(
            variant=variant, service_ip=SERVER_IP, service_port=4433, functions=functions,
            hops=tuple(
                HopSettings(
                    i, NatSettings(*public_address(i), ports=ports), sources if i == 1 else ()
                )
                for i in range(1, hops + 1)
            ),
            agent=agent if variant == "qasm" else None,
            kernel_netns_pid=kernel_netns_pid, admission=admission or Admission(), sni=sni,
        )  # fmt: skip
        self.controller = Controller(config)
        self.net = FakeNetwork(self.controller)
        dpids = list(range(1, hops + 1)) or [PLAIN_DPID]
        for dpid in dpids:
            self.net.add_switch(dpid)
        for near, far in zip(dpids, dpids[1:], strict=False):
            self.net.link(near, 1, far, 2)
        self.first, self.last = dpids[0], dpids[-1]
        self.net.attach_host(self.first, WIFI_PORT, "wifi")
        self.net.attach_host(self.first, LTE_PORT, "lte")
        self.net.attach_host(self.last, 1, "server")
        self.pair = QuicPair()
        self.agent = ClientAgent("c1", derive_client_key(SECRET, "c1"))
        self.server_macs: dict[tuple[str, int], str] = {}  # the server's neighbour cache
        # ARP, as hosts do before any QUIC packet: every hop learns where they are.
        self.net.send(self.last, 1, arp_frame(SERVER_MAC, SERVER_IP, WIFI_IP))
        self.net.send(self.first, WIFI_PORT, arp_frame(WIFI_MAC, WIFI_IP, SERVER_IP))
        self.net.send(self.first, LTE_PORT, arp_frame(LTE_MAC, LTE_IP, SERVER_IP))
        for host in ("wifi", "lte", "server"):
            self.net.received(host)
        self.net.packet_ins.clear()

    def client_sends(self, datagrams, via="wifi", sport=50000) -> None:
        ip, mac, port = (
            (WIFI_IP, WIFI_MAC, WIFI_PORT) if via == "wifi" else (LTE_IP, LTE_MAC, LTE_PORT)
        )
        for datagram in datagrams:
            frame = udp_frame(
                datagram, sport=sport, src=ip, dst=SERVER_IP, eth_src=mac, eth_dst=SERVER_MAC
            )
            self.net.send(self.first, port, frame, now=self.pair.now)

    def server_receives(self) -> list[tuple[str, int]]:
        """Feeds what reached the server into it; returns the addresses it came from."""
        sources = []
        for frame in self.net.received("server"):
            source = (frame.flow.src_ip, frame.flow.src_port)
            self.server_macs[source] = frame.eth_src
            self.pair.server.receive_datagram(frame.udp_payload, source, now=self.pair.now)
            sources.append(source)
        return sources

    def server_replies(self) -> None:
        self.pair.now += 0.001
        for datagram, address in self.pair.server.datagrams_to_send(now=self.pair.now):
            flow = FlowKey(SERVER_IP, 4433, *address)
            frame = udp_frame(datagram, sport=4433, dport=address[1], src=SERVER_IP, dst=address[0],
                              eth_src=SERVER_MAC, eth_dst=self.server_macs[address])  # fmt: skip
            assert flow.src_ip == SERVER_IP
            self.net.send(self.last, 1, frame, now=self.pair.now)

    def client_receives(self) -> int:
        frames = self.net.received("wifi") + self.net.received("lte")
        for frame in frames:
            assert (frame.flow.src_ip, frame.flow.src_port) == (SERVER_IP, 4433)
            self.pair.client.receive_datagram(
                frame.udp_payload, (SERVER_IP, 4433), now=self.pair.now
            )
        return len(frames)

    def report(self, datagram: bytes, via="lte") -> None:
        ip, mac, port = (
            (LTE_IP, LTE_MAC, LTE_PORT) if via == "lte" else (WIFI_IP, WIFI_MAC, WIFI_PORT)
        )
        frame = udp_frame(
            datagram, sport=7777, dport=7400, src=ip, dst=AGENT_IP, eth_src=mac, eth_dst=AGENT_MAC
        )
        self.net.send(self.first, port, frame, now=self.pair.now)
        self.net.received(via)  # the ack

    def migrate(self, kind: str, sport: int, announce: bool) -> None:
        via = "lte" if kind == "active" else "wifi"
        new_ip = LTE_IP if via == "lte" else WIFI_IP
        if announce:
            _, datagram = self.agent.announce(
                self.pair.client, (WIFI_IP, 50000), (new_ip, sport), kind == "active"
            )
            self.report(datagram, via)
        if kind == "active":
            self.pair.client.change_connection_id()
        self.net.packet_ins.clear()
        self.pair.client.send_ping(7)
        self.migrated = self.round_trip(via, sport)

    def hop_mappings(self) -> list[int]:
        return [len(state.nat_mappings) for state in self.controller.snapshot()]


@pytest.mark.parametrize("hops", [1, 3])
def test_a_nat_chain_translates_at_every_hop_and_the_connection_completes_its_handshake(hops):
    bench = ChainBench("tuple", hops)
    bench.handshake()
    bench.pair.client.send_ping(1)
    (source, *_), received = bench.round_trip()
    # The server sees the last hop's public address; the client gets the server's packets back.
    assert source[0] == public_address(hops)[0] and received
    assert bench.hop_mappings() == [1] * hops


@pytest.mark.parametrize("hops", [1, 3])
def test_qasm_push_installs_the_announced_path_on_every_hop_before_the_first_packet(hops):
    bench = ChainBench("qasm", hops)
    bench.handshake()
    bench.migrate("active", sport=6000, announce=True)
    sources, received = bench.migrated
    assert sources and sources[0] != (public_address(hops)[0], 20000) and received
    assert sum(bench.net.packet_ins.values()) == 0  # the whole path was pre-installed
    installs = [e for e in bench.net.events if isinstance(e, PathInstalled)]
    assert [e.dpid for e in installs] == list(range(1, hops + 1))
    # Each hop's install is the path as that hop sees it: the previous hop's public address.
    assert [e.path.src_ip for e in installs] == [LTE_IP] + [
        public_address(i)[0] for i in range(1, hops)
    ]
    assert bench.hop_mappings() == [2] * hops
    _, retire = bench.agent.retire(bench.pair.client, (WIFI_IP, 50000))
    bench.report(retire)
    assert bench.hop_mappings() == [1] * hops  # the old path's port went back at every hop
    assert [hop.nat.pool.in_use for hop in bench.controller.hops] == [1] * hops


def test_qasm_pull_asks_the_agent_once_per_hop_and_then_forwards_in_the_fast_path():
    bench = ChainBench("qasm", 3, mode="pull")
    bench.handshake()
    bench.migrate("active", sport=6000, announce=True)
    sources, received = bench.migrated
    assert sources and received
    assert dict(bench.net.packet_ins) == {1: 1, 2: 1, 3: 1}
    pulled = [
        e
        for e in bench.net.events
        if isinstance(e, PacketIn) and e.reason is Reason.PULLED_FROM_AGENT
    ]
    assert [e.dpid for e in pulled] == [1, 2, 3]
    bench.net.packet_ins.clear()
    bench.pair.client.send_ping(8)
    assert bench.round_trip("lte", 6000)[1] and not bench.net.packet_ins


@pytest.mark.parametrize(("variant", "kind", "survives"), [
    ("tuple", "nat-rebind", False),
    ("tuple", "active", False),
    ("cid", "nat-rebind", True),
    ("cid", "active", False),
    ("qasm", "nat-rebind", True),
    ("qasm", "active", True),
])  # fmt: skip
def test_with_a_firewall_on_every_hop_only_cid_awareness_follows_the_migration(
    variant, kind, survives
):
    bench = ChainBench(variant, 2, functions=("firewall", "nat"))
    bench.handshake()
    bench.migrate(kind, sport=6000, announce=variant == "qasm")
    sources, received = bench.migrated
    assert bool(sources and received) is survives
    if not survives:
        drops = [
            e for e in bench.net.events if isinstance(e, PacketIn) and e.verdict is Verdict.DROP
        ]
        assert drops and drops[-1].dpid == 1 and drops[-1].reason is Reason.NOT_AN_INITIAL


def test_with_no_hop_every_variant_only_forwards_and_the_agent_still_answers():
    bench = ChainBench("qasm", 0, functions=("firewall", "nat"))
    bench.handshake()
    bench.migrate("active", sport=6000, announce=True)
    assert all(bench.migrated)
    assert bench.controller.snapshot() == []


@pytest.mark.parametrize("mode", ["push", "pull"])
def test_an_announcement_can_retire_the_path_before_the_old_one(mode):
    """At a high migration rate the client retires each old path with its next announcement:
    every hop then holds at most two paths (and NAT ports) of the connection."""
    bench = ChainBench("qasm", 2, mode=mode)
    bench.handshake()
    bench.migrate("nat-rebind", sport=6000, announce=True)  # wifi:50000 → wifi:6000
    assert bench.hop_mappings() == [2, 2]
    _, datagram = bench.agent.announce(
        bench.pair.client, (WIFI_IP, 6000), (WIFI_IP, 6001), False, retire=(WIFI_IP, 50000)
    )
    bench.net.events.clear()
    bench.report(datagram, "wifi")
    kinds = [type(e).__name__ for e in bench.net.events]
    if mode == "push":
        # Retirements first: the switches never hold three paths of the connection.
        assert kinds == [
            "PathRetired",
            "PathRetired",
            "PathInstalled",
            "PathInstalled",
            "AgentReport",
        ]
    else:
        assert kinds == ["PathRetired", "PathRetired", "AgentReport"]
    assert bench.hop_mappings() == ([2, 2] if mode == "push" else [1, 1])
    bench.net.packet_ins.clear()
    bench.pair.client.send_ping(9)
    sources, received = bench.round_trip("wifi", 6001)
    assert sources and received
    assert bench.hop_mappings() == [2, 2]


@pytest.mark.parametrize("hops", [1, 2])
def test_a_packet_sent_before_its_path_was_retired_goes_on_as_on_a_held_path(hops):
    """A queue held it on the path the client left until the agent had retired that path: it
    reaches the server as from the oldest path the connection holds (one the server has
    seen), and no path, rule or NAT port is taken for it again."""
    bench = ChainBench("qasm", hops)
    bench.handshake()
    bench.migrate("nat-rebind", sport=6000, announce=True)  # wifi:50000 → wifi:6000
    (on_held_path, *_), _ = bench.migrated
    _, datagram = bench.agent.announce(
        bench.pair.client, (WIFI_IP, 6000), (WIFI_IP, 6001), False, retire=(WIFI_IP, 50000)
    )
    bench.report(datagram, "wifi")
    assert bench.hop_mappings() == [2] * hops
    bench.net.events.clear()
    bench.pair.client.send_ping(11)
    bench.pair.now += 0.001
    late = [d for d, _ in bench.pair.client.datagrams_to_send(now=bench.pair.now)]
    bench.client_sends(late, "wifi", 50000)
    assert bench.server_receives() == [on_held_path] * len(late)
    assert bench.hop_mappings() == [2] * hops
    packet_ins = [e for e in bench.net.events if isinstance(e, PacketIn)]
    assert [(e.dpid, e.verdict, e.reason) for e in packet_ins] == [
        (1, Verdict.FORWARD, Reason.RETIRED_PATH)
    ] * len(late)  # only the first hop: the next ones see the held path, ruled already
    assert not [e for e in bench.net.events if isinstance(e, PathInstalled)]


@pytest.mark.parametrize("hops", [1, 2])
def test_a_server_packet_to_a_retired_path_reaches_the_client_on_a_held_path(hops):
    """Sent before the server saw the client move (at 100 migrations a second a round trip
    outlives a path): for RETIRED_INBOUND_S the retired path's inbound rule takes it to the
    client's end of the oldest path the connection holds; after that the controller does.
    No path, rule or NAT port is taken for it again."""
    bench = ChainBench("qasm", hops)
    bench.handshake()
    (old_address,) = bench.server_macs
    bench.migrate("nat-rebind", sport=6000, announce=True)  # wifi:50000 → wifi:6000
    for _ in range(2):  # the server validates the new path
        bench.round_trip("wifi", 6000)
    _, datagram = bench.agent.announce(
        bench.pair.client, (WIFI_IP, 6000), (WIFI_IP, 6001), False, retire=(WIFI_IP, 50000)
    )
    bench.report(datagram, "wifi")
    redirects = [r for s in bench.net.switches.values() for r in s.rules if r.hard_timeout_s]
    assert [(r.hard_timeout_s, r.idle_timeout_s) for r in redirects] == [
        (RETIRED_INBOUND_S, 0)
    ] * hops  # one per hop, gone by itself

    def server_sends_to_the_old_address() -> list:
        bench.net.events.clear()
        bench.pair.server.send_ping(12)
        bench.pair.now += 0.001
        late = [d for d, _ in bench.pair.server.datagrams_to_send(now=bench.pair.now)]
        assert late
        for payload in late:
            frame = udp_frame(
                payload, sport=4433, dport=old_address[1], src=SERVER_IP, dst=old_address[0],
                eth_src=SERVER_MAC, eth_dst=bench.server_macs[old_address],
            )  # fmt: skip
            bench.net.send(bench.last, 1, frame, now=bench.pair.now)
        frames = bench.net.received("wifi")
        assert [(f.flow.dst_ip, f.flow.dst_port, f.eth_dst) for f in frames] == [
            (WIFI_IP, 6000, WIFI_MAC)
        ] * len(late)
        for frame in frames:  # datagrams of its connection to the client
            bench.pair.client.receive_datagram(frame.udp_payload, (SERVER_IP, 4433), bench.pair.now)
        assert bench.pair.client._close_event is None
        assert bench.hop_mappings() == [2] * hops
        assert not [e for e in bench.net.events if isinstance(e, PathInstalled)]
        return [(e.verdict, e.reason) for e in bench.net.events if isinstance(e, PacketIn)]

    assert server_sends_to_the_old_address() == []  # the switches' redirects
    for switch in bench.net.switches.values():  # RETIRED_INBOUND_S later
        switch.rules = [r for r in switch.rules if r not in redirects]
    packet_ins = server_sends_to_the_old_address()
    # Only the last hop: the ones before see the held path, ruled already.
    assert packet_ins == [(Verdict.FORWARD, Reason.RETIRED_PATH)] * len(packet_ins)
    assert packet_ins


def test_an_announcement_cannot_retire_the_path_it_moves_from():
    bench = ChainBench("qasm", 1)
    bench.handshake()
    _, datagram = bench.agent.announce(
        bench.pair.client, (WIFI_IP, 50000), (WIFI_IP, 6001), False, retire=(WIFI_IP, 50000)
    )
    bench.report(datagram, "wifi")
    (report,) = [e for e in bench.net.events if type(e).__name__ == "AgentReport"]
    assert report.reason is Reason.NOT_RETIRABLE and bench.hop_mappings() == [1]


@pytest.mark.parametrize(("variant", "mode", "copies"), [
    ("qasm", "push", False),  # its Client Agent names the CIDs: the handshake stays fast
    ("qasm", "pull", True),
    ("cid", "push", True),
])  # fmt: skip
def test_only_hops_that_learn_cids_passively_copy_the_servers_handshake(variant, mode, copies):
    bench = ChainBench(variant, 1, mode=mode)
    bench.handshake()
    copied = [
        e for e in bench.net.events if isinstance(e, PacketIn) and e.verdict is Verdict.OBSERVE
    ]
    assert bool(copied) is copies
    (connection,) = bench.controller.hops[0].table.connections()
    assert bool(connection.server_cids) is copies


def test_an_announcement_makes_room_among_the_cids_instead_of_refusing():
    """Repeated active migration moves to a fresh server CID every time and the client
    retires the one it left: a connection holding its maximum of CIDs forgets its oldest
    ones for the announced CID, so its 17th migration is not refused (seen at 200 Hz)."""
    bench = ChainBench("qasm", 1)
    bench.handshake()
    hop = bench.controller.switch(1)
    (connection,) = hop.table.connections()
    current = connection.server_cids
    for filler in range(hop.table.max_cids_per_connection - len(current)):
        assert hop.table.associate_cid(connection, bytes([0xEE, filler]) * 4, bench.pair.now)
    oldest = connection.server_cids[len(current)]
    bench.migrate("active", sport=6000, announce=True)
    sources, received = bench.migrated
    assert sources and received
    assert sum(bench.net.packet_ins.values()) == 0  # pre-installed: the announcement held
    assert len(connection.server_cids) <= hop.table.max_cids_per_connection
    assert oldest not in connection.server_cids
    assert all(cid in connection.server_cids for cid in current)  # in use: kept
