"""Repeated rebinding and garbage floods, without an emulation: the scenario syntax, the
record fields computed from decision logs, and what the middlebox does with every kind of
packet the flooder (testbed/apps/flood.py) sends."""

from __future__ import annotations

import random
import socket
import time

import pytest

from qasm.agents.messages import Retire, derive_client_key, seal
from qasm.agents.tracking import TrackingAgent
from qasm.controller.pipeline import AgentSettings, Middlebox, MiddleboxConfig, RateLimit
from qasm.functions.nat import NatSettings
from qasm.state.connections import ConnectionTable
from testbed.apps.client import parse_args
from testbed.apps.flood import AGENT_KINDS, SERVICE_KINDS, PacketFactory, ReportCapture
from testbed.metrics import (
    flood_effect,
    nat_mappings_held,
    nat_mappings_peak,
    nat_pool_exhausted,
    reason_category,
)
from testbed.scenario import load_scenario
from tests.unit.conftest import (
    CLIENT_IP,
    CLIENT_MAC,
    SERVER_IP,
    SERVER_MAC,
    arp_frame,
    load_scenario_text,
    scenario_problems,
    udp_frame,
)

KEY = derive_client_key(b"secret", "c1")
SCENARIO = """\
variants: [qasm]
functions: [ratelimit, nat]
ratelimit: {rate_mbit: 8, burst_kbit: 800}
nat: {ports: 8}
topology: {name: dualhomed, clients: 1}
workload: {bytes: 4000000}
migration:
  kind: nat-rebind
  at_seconds: 0.5
  repeat_every_s: 0.3
timeouts: {idle_s: 5, run_s: 30}
"""


# --- scenario syntax ------------------------------------------------------------------------


def test_repeat_every_and_flood_are_read(tmp_path):
    scenario = load_scenario_text(tmp_path, SCENARIO + "flood: {pps: 1500}\n")
    assert scenario.migration.repeat_every_s == 0.3
    assert scenario.flood_pps == 1500
    assert (
        load_scenario_text(
            tmp_path, SCENARIO.replace("  repeat_every_s: 0.3\n", "")
        ).migration.repeat_every_s
        is None
    )


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("kind: nat-rebind", "kind: [nat-rebind, active]"),
         "10: migration.repeat_every_s: expected only with kind nat-rebind"),
        (("repeat_every_s: 0.3", "repeat_every_s: 30"),
         "10: migration.repeat_every_s: expected less than timeouts.run_s (30)"),
        (("repeat_every_s: 0.3", "repeat_every_s: 0"),
         "10: migration.repeat_every_s: expected a number in (0, 3600]"),
        (("repeat_every_s: 0.3", "repeat_every_s: often"),
         "10: migration.repeat_every_s: expected a number"),
    ],
)  # fmt: skip
def test_bad_repeat_every_names_its_line(tmp_path, change, expected):
    found = scenario_problems(tmp_path, SCENARIO.replace(*change))
    assert any(expected in p for p in found), found


@pytest.mark.parametrize(
    ("flood", "expected"),
    [
        ("flood: {pps: 0}\n", "12: flood.pps: expected an integer 1..20000"),
        ("flood: {rate: 5}\n", "flood.rate: unknown key"),
        ("flood: {}\n", "flood.pps: expected this key"),
    ],
)
def test_bad_flood_block_names_its_line(tmp_path, flood, expected):
    found = scenario_problems(tmp_path, SCENARIO + flood)
    assert any(expected in p for p in found), found


def test_shipped_dos_and_flood_scenarios_are_valid():
    dos = load_scenario("scenarios/dos.yaml")
    assert dos.functions == ("ratelimit", "nat") and dos.migration.repeat_every_s
    assert set(dos.variants) == {"baseline", "tuple", "cid", "qasm"}
    assert load_scenario("scenarios/flood.yaml").flood_pps


def test_client_takes_repeat_every_only_for_nat_rebind():
    base = ["--server", "10.0.0.250:4433", "--local-ip", "10.0.1.1", "--client", "c",
            "--bytes", "1", "--out", "x", "--migrate-ip", "10.0.1.1", "--at-seconds", "1"]  # fmt: skip
    assert (
        parse_args([*base, "--migrate", "nat-rebind", "--repeat-every", "0.3"]).repeat_every == 0.3
    )
    with pytest.raises(SystemExit):
        parse_args([*base, "--migrate", "active", "--repeat-every", "0.3"])


# --- record fields from decision logs -------------------------------------------------------


def test_nat_peak_held_and_exhaustion_follow_the_decision_log():
    mine = ("10.0.1.1",)
    decisions = [
        {"t": 1, "nat_allocated": "10.0.1.1:1000->10.0.0.250:4433 as 10.0.100.1:20000"},
        {"t": 2, "nat_allocated": "10.0.1.1:1001->10.0.0.250:4433 as 10.0.100.1:20001"},
        {"t": 3, "nat_allocated": "10.0.9.9:5->10.0.0.250:4433 as 10.0.100.1:20002"},
        {"t": 4, "nat_released": ["10.0.1.1:1000->10.0.0.250:4433"]},
        {"t": 5, "nat_allocated": "10.0.1.1:1002->10.0.0.250:4433 as 10.0.100.1:20000"},
        {"t": 6, "verdict": "drop", "reason": "NAT port pool exhausted (8 ports)"},
        {"t": 7, "event": "agent_report", "nat_exhausted": True},
    ]
    assert nat_mappings_peak(decisions, mine) == 2
    assert nat_mappings_held(decisions, mine) == 2
    assert nat_pool_exhausted(decisions) == 2


def test_flood_effect_counts_rejections_and_drops_by_category():
    decisions = [
        {"event": "agent_report", "verdict": "reject", "reason": "forged"},
        {
            "event": "agent_report",
            "verdict": "reject",
            "reason": "malformed: v: expected 1, got 'x'",
        },
        {"event": "agent_report", "verdict": "reject", "reason": "malformed: body: expected UTF-8"},
        {"event": "agent_report", "verdict": "accept", "reason": "announced"},
        {"event": "packet_in", "verdict": "drop", "reason": "udp: length field 7 outside [8, 30]"},
        {"event": "packet_in", "verdict": "drop", "reason": "udp: length field 9 outside [8, 20]"},
        {"event": "packet_in", "verdict": "forward", "reason": "known path"},
    ]
    effect = flood_effect(decisions)
    assert effect["agent_rejections"] == {"forged": 1, "malformed": 2}
    assert effect["agent_reports_accepted"] == 1 and effect["agent_rejected"] == 3
    assert effect["controller_drops"] == {"udp: length field N outside [N, N]": 2}
    assert reason_category("new 5-tuple: short header (not a first packet)") == (
        "new 5-tuple: short header"
    )
    assert reason_category("new 5-tuple: long header of unknown version 0x1a2b3c4d") == (
        "new 5-tuple: long header of unknown version 0xN"
    )


# --- the Tracking Agent under forged and replayed reports -----------------------------------


def agent(rate_per_s=1.0, burst=3) -> TrackingAgent:
    return TrackingAgent(ConnectionTable(), ("10.0.0.250", 4433), {"c1": KEY},
                         {"c1": frozenset({"10.0.1.1"})}, rate_per_s=rate_per_s, burst=burst)  # fmt: skip


def test_forged_and_replayed_reports_do_not_spend_the_real_clients_budget():
    tracking = agent()
    real = seal(Retire("c1", 1, b"\x01", ("10.0.1.1", 5)), KEY)
    assert tracking.receive(real, "10.0.1.1", 0.0).reason == "unknown connection"
    forged = seal(Retire("c1", 9, b"\x01", ("10.0.1.1", 5)), b"not the key" * 3)
    for _ in range(1000):
        assert tracking.receive(forged, "10.0.2.1", 0.0).reason == "forged"
        assert tracking.receive(real, "10.0.2.1", 0.0).reason == "duplicate (answered again)"
    older = seal(Retire("c1", 0, b"\x01", ("10.0.1.1", 5)), KEY)
    assert tracking.receive(older, "10.0.2.1", 0.0).reason.startswith("replayed")
    # The real client still has the rest of its burst.
    fresh = [seal(Retire("c1", n, b"\x01", ("10.0.1.1", 5)), KEY) for n in (2, 3, 4)]
    reasons = [tracking.receive(d, "10.0.1.1", 0.0).reason for d in fresh]
    assert reasons == ["unknown connection", "unknown connection", "rate limited"]
    # Rate limited is not an answer: the same datagram goes through once a token is back.
    assert tracking.receive(fresh[2], "10.0.1.1", 1.0).reason == "unknown connection"


def test_counters_stay_bounded_whatever_garbage_says():
    tracking = agent(rate_per_s=1e9, burst=10**9)
    factory = PacketFactory(random.Random(7), "c1")
    for _ in range(3000):
        kind = random.Random(len(tracking.counters)).choice(list(AGENT_KINDS)[:-1])
        tracking.receive(getattr(factory, kind)(), "10.0.2.1", 0.0)
    assert sum(tracking.counters.values()) == 3000
    assert len(tracking.counters) <= 4, tracking.counters  # forged, malformed, unknown client


# --- the middlebox against every kind of flood packet ---------------------------------------


def flooded_middlebox() -> Middlebox:
    config = MiddleboxConfig(
        variant="qasm", service_ip=SERVER_IP, service_port=4433,
        functions=("firewall", "ratelimit", "nat"),
        agent=AgentSettings(ip="10.0.0.254", port=7400, mac="02:00:00:00:00:fe",
                            keys={"c1": KEY.hex()}, addresses={"c1": [CLIENT_IP]}),
        ratelimit=RateLimit(8000, 800),
        nat=NatSettings("10.0.100.1", "02:00:00:00:00:fd", ports=8),
    )  # fmt: skip
    box = Middlebox(config)
    box.switch_connected(1)
    box.packet_in(1, 1, arp_frame(SERVER_MAC, SERVER_IP, CLIENT_IP), now=0.0)
    box.packet_in(1, 2, arp_frame(CLIENT_MAC, CLIENT_IP, SERVER_IP), now=0.0)
    return box


@pytest.mark.parametrize("kind", sorted(SERVICE_KINDS.keys() - {"bad_udp_length"}))
def test_every_kind_of_service_garbage_is_dropped_and_leaves_no_state(kind):
    box, factory, rng = flooded_middlebox(), PacketFactory(random.Random(3), "c1"), random.Random(4)
    for n in range(300):
        frame = udp_frame(getattr(factory, kind)(), sport=rng.randint(1024, 32767))
        decision = box.packet_in(1, 2, frame, now=1.0 + n / 1000)
        assert decision.record["verdict"] == "drop", decision.record
        assert not decision.messages
    stats = box.stats()
    assert stats["connections"] == 0 and stats["nat_in_use"] == 0


@pytest.mark.parametrize("kind", sorted(AGENT_KINDS.keys() - {"replayed"}))
def test_every_kind_of_forged_report_is_rejected_and_changes_nothing(kind):
    box, factory = flooded_middlebox(), PacketFactory(random.Random(5), "c1")
    for n in range(200):
        frame = udp_frame(getattr(factory, kind)(), sport=2000 + n, dport=7400, dst="10.0.0.254",
                          eth_dst="02:00:00:00:00:fe")  # fmt: skip
        decision = box.packet_in(1, 2, frame, now=1.0 + n / 1000)
        assert decision.record["verdict"] in ("reject", "drop"), decision.record
        assert not decision.messages  # an unverified sender gets no answer
    stats = box.stats()
    assert stats["connections"] == 0 and "accepted" not in stats["agent"]


# --- the flooder's capture of real reports --------------------------------------------------


def test_capture_keeps_only_reports_even_what_was_sent_before_its_filter(monkeypatch):
    """A packet the host sends between the capture socket's creation and its filter must not
    become a "report" the flooder replays (a client's 1200-byte Initial once was)."""
    agent = ("127.0.0.2", 7400)
    stray, report = b"an Initial to the service", b"a report"

    def send(payload: bytes, destination: tuple[str, int]) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.bind(("127.0.0.1", 0))  # an ephemeral port, as a real client's
            sender.sendto(payload, destination)

    attach = ReportCapture._attach_filter

    def stray_then_attach(capture, *address):
        send(stray, ("127.0.0.3", 4433))
        attach(capture, *address)

    monkeypatch.setattr(ReportCapture, "_attach_filter", stray_then_attach)
    capture = ReportCapture(agent)
    try:
        send(report, agent)
        deadline = time.monotonic() + 5
        while not capture.reports and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        capture.close()
    assert capture.error is None
    # Loopback shows a packet twice (sent and received); the stray never.
    assert {payload for _, payload in capture.reports} == {report}
