"""A valid key is not a licence to fill the switch: a client's connections hold at most
`agent.max_paths` live paths, each with its pre-installed rules and NAT ports."""

from __future__ import annotations

from qasm.controller.events import AgentReport, PacketIn, Reason
from qasm.controller.pipeline import Admission
from qasm.state.buckets import TokenBuckets
from tests.unit.conftest import QuicPair, udp_frame
from tests.unit.test_chain import SERVER_IP, WIFI_IP, WIFI_PORT, ChainBench

MAX_PATHS = 3


def _announce(bench: ChainBench, old_port: int, new_port: int, retire: int | None = None):
    _, datagram = bench.agent.announce(
        bench.pair.client, (WIFI_IP, old_port), (WIFI_IP, new_port), False,
        retire=(WIFI_IP, retire) if retire else None,
    )  # fmt: skip
    bench.net.events.clear()
    bench.report(datagram, "wifi")
    (report,) = [e for e in bench.net.events if isinstance(e, AgentReport)]
    return report


def test_announcements_beyond_the_clients_path_quota_are_refused_and_install_nothing():
    bench = ChainBench("qasm", 2, functions=("nat",), max_paths=MAX_PATHS)
    bench.handshake()  # path 1: wifi:50000
    assert _announce(bench, 50000, 6000).reason is Reason.ANNOUNCED  # path 2
    assert _announce(bench, 6000, 6001).reason is Reason.ANNOUNCED  # path 3
    refused = _announce(bench, 6001, 6002)
    assert refused.reason is Reason.PATH_QUOTA, refused
    assert refused.text == f"{MAX_PATHS} live paths, at most {MAX_PATHS}"
    assert bench.hop_mappings() == [MAX_PATHS, MAX_PATHS]  # no port taken on any hop
    # Retiring a path with the announcement keeps the count: accepted.
    assert _announce(bench, 6001, 6002, retire=50000).reason is Reason.ANNOUNCED
    assert bench.hop_mappings() == [MAX_PATHS, MAX_PATHS]
    counters = bench.controller.tracking.counters
    assert counters[f"rejected: {Reason.PATH_QUOTA}"] == 1


def test_token_buckets_refill_at_their_rate_up_to_their_burst_and_forget_the_oldest_key():
    buckets = TokenBuckets(rate_per_s=2, burst=3, max_keys=2)
    assert [buckets.take("a", 0.0) for _ in range(4)] == [True, True, True, False]
    assert buckets.take("a", 0.5)  # one token back after half a second
    assert not buckets.take("a", 0.5)
    assert [buckets.take("a", 100.0) for _ in range(4)] == [True, True, True, False]  # burst
    buckets.take("b", 100.0)
    buckets.take("c", 100.0)  # a third key: "a", the least recently used, is forgotten
    assert len(buckets) == 2 and buckets.take("a", 100.0)


def _initials_from(bench: ChainBench, ports, source=WIFI_IP) -> list[Reason]:
    """A fresh client Initial from each source port; the reason each was decided with."""
    reasons = []
    for port in ports:
        pair = QuicPair()
        pair.client.connect((SERVER_IP, 4433), now=0.0)
        (datagram, _), *_ = pair.client.datagrams_to_send(now=0.0)
        bench.net.events.clear()
        bench.net.send(1, WIFI_PORT, udp_frame(datagram, sport=port, src=source), now=1.0)
        reasons += [e.reason for e in bench.net.events if isinstance(e, PacketIn)]
    return reasons


def test_a_source_opens_at_most_its_burst_of_connections_at_once():
    bench = ChainBench("tuple", 1, functions=("firewall", "nat"), admission=Admission(1, 3))
    reasons = _initials_from(bench, range(40000, 40005))
    # The first refusal holds the source at the switch for a second: the next Initial is
    # dropped there, no packet-in (a flood would cost the controller one per packet).
    assert reasons == [Reason.OPENED_BY_INITIAL] * 3 + [Reason.ADMISSION_BUDGET]
    assert len(bench.controller.snapshot()) == 3  # no slot, no NAT port for the others
    assert bench.hop_mappings() == [1, 1, 1]  # one NAT port per admitted connection
    # Per address: another source still gets in; per /16, it shares the bucket.
    assert _initials_from(bench, [40010], source="10.0.1.2") == [Reason.OPENED_BY_INITIAL]
    shared = ChainBench("tuple", 1, functions=("firewall",), admission=Admission(1, 1, 16))
    assert _initials_from(shared, [40000]) == [Reason.OPENED_BY_INITIAL]
    assert _initials_from(shared, [40000], source="10.0.1.2") == [Reason.ADMISSION_BUDGET]
