"""Agent mode ahead, sans-I/O: a Client Agent has its connection admitted on every hop before
the first packet, so the Initial and the whole handshake pass the (fake) switches with no
packet-in; an admission a hop cannot grant changes nothing, and the Initial then decides."""

from __future__ import annotations

import hmac

import pytest

from qasm.agents.messages import Admit, AgentMessageError, open_sealed, seal
from qasm.controller.events import AgentReport, PacketIn, PathInstalled, Reason, Verdict
from qasm.controller.messages import REMOVED_HARD_TIMEOUT
from qasm.controller.pipeline import PRIORITY_PROBE, Admission
from qasm.flow import FlowKey
from qasm.functions.firewall import SniPolicy
from tests.unit.conftest import QuicPair
from tests.unit.test_chain import LTE_IP, SERVER_IP, WIFI_IP, ChainBench, public_address

PATH = (WIFI_IP, 50000)  # where ChainBench's client sends from


def _admit(bench: ChainBench, path=PATH, via="wifi") -> AgentReport:
    _, datagram = bench.agent.admit(path)
    bench.net.events.clear()
    bench.report(datagram, via)
    (report,) = [e for e in bench.net.events if isinstance(e, AgentReport)]
    return report


def _held(bench: ChainBench) -> list[int]:
    """Connections each hop holds."""
    return [len(hop.table) for hop in bench.controller.hops]


@pytest.mark.parametrize("hops", [1, 3])
def test_an_admitted_connection_opens_and_migrates_through_every_hop_with_no_packet_in(hops):
    bench = ChainBench("qasm", hops, functions=("firewall", "nat"), mode="ahead")
    if hops > 1:
        # A hop past the first locates the hop before it by its packets: on a fresh chain it
        # cannot install rules yet, declines, and the first connection opens by its Initial.
        declined = _admit(bench, (WIFI_IP, 40000))
        assert declined.reason is Reason.NOT_ADMITTED_AHEAD, declined
        assert "is not located yet" in declined.text and _held(bench) == [0] * hops
        bench.handshake(sport=40000)
        bench.pair = QuicPair()
    report = _admit(bench)
    assert report.reason is Reason.ADMITTED_AHEAD, report
    installs = [e for e in bench.net.events if isinstance(e, PathInstalled)]
    assert [(e.dpid, e.opened) for e in installs] == [(d, True) for d in range(1, hops + 1)]
    # Each hop admits the path as the hop before it translated it.
    assert [e.path.src_ip for e in installs] == [WIFI_IP] + [
        public_address(i)[0] for i in range(1, hops)
    ]
    before = bench.hop_mappings()
    bench.net.packet_ins.clear()
    bench.handshake()
    assert sum(bench.net.packet_ins.values()) == 0  # the Initial did not wait for anybody
    assert bench.hop_mappings() == before
    # The client owns the connection its admission opened (no other client may announce
    # for it), and later announcements name it by its path.
    opened = bench.controller.hops[0].table.by_path(FlowKey(*PATH, SERVER_IP, 4433), 0.0)
    assert opened.owner == "c1"
    bench.migrate("active", sport=6000, announce=True)
    sources, received = bench.migrated
    assert sources and received and sum(bench.net.packet_ins.values()) == 0


def test_a_connection_is_not_admitted_twice_on_one_path():
    bench = ChainBench("qasm", 1, mode="ahead")
    assert _admit(bench).reason is Reason.ADMITTED_AHEAD
    again = _admit(bench)
    assert again.reason is Reason.NEW_PATH_OF_ANOTHER
    assert _held(bench) == [1] and bench.hop_mappings() == [1]
    # Every hop checks its own table, the first (above) and any past it.
    hop = bench.controller.hops[0]
    refused = hop.admit_ahead(FlowKey(*PATH, SERVER_IP, 4433), "c1", 1.0)
    assert refused.reason is Reason.NEW_PATH_OF_ANOTHER and len(hop.table) == 1


def test_an_admission_a_later_hop_refuses_is_undone_on_the_hops_before_it():
    bench = ChainBench("qasm", 2, functions=("nat",), mode="ahead", admission=Admission(1, 1))
    second = bench.controller.hops[1]
    # Hop 2 sees the connection from hop 1's public address: spend that source's budget.
    assert second._admitted.take(second.admission.key(public_address(1)[0]), 0.0)
    refused = _admit(bench)
    assert refused.reason is Reason.ADMISSION_BUDGET, refused
    assert _held(bench) == [0, 0]
    assert [hop.nat.pool.in_use for hop in bench.controller.hops] == [0, 0]
    assert not [e for e in bench.net.events if isinstance(e, PathInstalled)]


@pytest.mark.parametrize(
    ("settings", "why"),
    [
        ({"mode": "pull"}, "pull does not admit ahead"),
        ({"functions": ("firewall",), "sni": SniPolicy(deny=("blocked.example",))}, "reads"),
    ],
)
def test_a_hop_that_cannot_admit_ahead_declines_and_the_initial_decides(settings, why):
    bench = ChainBench("qasm", 1, **settings)
    declined = _admit(bench)
    assert declined.reason is Reason.NOT_ADMITTED_AHEAD and why in declined.text, declined
    assert _held(bench) == [0]
    bench.handshake()
    opened = [e for e in bench.net.events if isinstance(e, PacketIn) and e.verdict is Verdict.ADMIT]
    assert opened and _held(bench) == [1]


def test_the_agent_admits_only_the_clients_own_addresses_within_its_path_quota():
    bench = ChainBench("qasm", 1, mode="ahead", max_paths=2)
    assert _admit(bench, ("10.0.9.9", 50000)).reason is Reason.NEW_ADDRESS_NOT_CLIENTS
    assert _admit(bench, (WIFI_IP, 50000)).reason is Reason.ADMITTED_AHEAD
    assert _admit(bench, (LTE_IP, 50001), via="lte").reason is Reason.ADMITTED_AHEAD
    quota = _admit(bench, (LTE_IP, 50002), via="lte")
    assert quota.reason is Reason.PATH_QUOTA and quota.text == "2 live paths, at most 2"
    assert _held(bench) == [2]


def test_an_admission_round_trips_and_a_bad_path_is_named():
    key = b"k" * 32
    admit = Admit("c1", 7, ("10.0.1.1", 50000))
    assert open_sealed(seal(admit, key), key) == admit
    body = b'{"v":1,"client":"c1","counter":8,"type":"admit","path":["10.0.1.1",70000]}'
    bad = hmac.digest(key, body, "sha256") + body
    with pytest.raises(AgentMessageError, match="path: expected a port"):
        open_sealed(bad, key)


def test_where_the_service_is_comes_from_the_topologys_bindings_before_it_sent_anything():
    """The first connection of a run is admitted ahead too: nothing from the server has
    reached the hop yet, but the topology binds its address to one port."""
    for sources, admitted in (((), False), (((1, (SERVER_IP,)),), True)):
        bench = ChainBench("qasm", 1, mode="ahead", sources=sources)
        hop = bench.controller.hops[0]
        hop._port_of_ip.pop(SERVER_IP)  # as if the server's ARP had not come by
        report = _admit(bench)
        assert (report.reason is Reason.ADMITTED_AHEAD) is admitted, report


def test_an_admitted_connection_the_server_never_answers_ends_as_half_open():
    """Admitted on its agent's word, a connection is half-open like one opened by its
    Initial: its probe rule reports no packet from the server, twice, and it ends, its NAT
    port back in the pool (a valid key must not hold ports it never uses)."""
    bench = ChainBench("qasm", 1, functions=("nat",), mode="ahead")
    assert _admit(bench).reason is Reason.ADMITTED_AHEAD
    hop, switch = bench.controller.hops[0], bench.net.switches[1]
    (probe,) = [r for r in switch.rules if r.priority == PRIORITY_PROBE]
    assert probe.notify_removed and hop.nat.pool.in_use == 1
    for now in (3.0, 7.0):
        bench.controller.flow_removed(
            1, probe.match.flow, probe.cookie, 0, REMOVED_HARD_TIMEOUT, now
        )
    assert _held(bench) == [0] and hop.nat.pool.in_use == 0
