"""Repeated rebinding and garbage floods, without an emulation: the scenario syntax, the
record fields computed from decision logs, and what the middlebox does with every kind of
packet the flooder (testbed/apps/flood.py) sends."""

from __future__ import annotations

import json
import random
import socket
import time

import pytest

from qasm.agents.messages import Retire, derive_client_key, seal
from qasm.agents.tracking import TrackingAgent
from qasm.controller.events import (
    AgentReport,
    ConnectionsEnded,
    ConnectionState,
    NatMapping,
    PacketIn,
    PathInstalled,
    PathRetired,
    Reason,
    Verdict,
)
from qasm.controller.pipeline import AgentSettings, Controller, HopSettings, MiddleboxConfig
from qasm.flow import FlowKey
from qasm.functions.nat import NatSettings
from qasm.functions.ratelimit import RateLimit
from qasm.state.connections import ConnectionTable
from testbed.apps.client import parse_args
from testbed.apps.flood import AGENT_KINDS, SERVICE_KINDS, PacketFactory, ReportCapture
from testbed.records.metrics import (
    client_events,
    flood_effect,
    nat_mappings_held,
    nat_mappings_peak,
    nat_pool_exhausted,
    read_decisions,
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
    assert scenario.flood.pps == 1500
    assert (
        load_scenario_text(
            tmp_path, SCENARIO.replace("  repeat_every_s: 0.3\n", "")
        ).migration.repeat_every_s
        is None
    )


@pytest.mark.parametrize(
    ("change", "expected"),
    [
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
    assert set(dos.variants) == {"baseline", "tuple", "cid", "qasm", "netfilter", "netfilter-qasm"}
    assert dos.topology.name == "routed"  # where the kernel variants run
    assert load_scenario("scenarios/flood.yaml").flood.pps


def test_repeat_every_goes_with_every_migration_kind(tmp_path):
    # Repeated migration is no longer nat-rebind only: the client repeats any kind.
    both = SCENARIO.replace("kind: nat-rebind", "kind: [nat-rebind, active]")
    assert load_scenario_text(tmp_path, both).migration.repeat_every_s == 0.3


def test_client_takes_repeat_every_with_a_migration_and_a_positive_interval():
    base = ["--server", "10.0.0.250:4433", "--local-ip", "10.0.1.1", "--client", "c",
            "--bytes", "1", "--out", "x", "--seed", "1", "--idle-timeout", "5",
            "--timeout", "30", "--server-name", "qasm.test"]  # fmt: skip
    migrate = ["--migrate-ip", "10.0.1.1", "--at-seconds", "1"]
    for kind in ("nat-rebind", "active"):
        args = parse_args([*base, *migrate, "--migrate", kind, "--repeat-every", "0.3"])
        assert args.repeat_every == 0.3, kind
    assert parse_args([*base, *migrate, "--migrate", "active"]).repeat_every is None
    with pytest.raises(SystemExit):
        parse_args([*base, "--repeat-every", "0.3"])  # nothing to repeat
    with pytest.raises(SystemExit):
        parse_args([*base, *migrate, "--migrate", "nat-rebind", "--repeat-every", "0"])


# --- record fields from decision logs -------------------------------------------------------

PUBLIC_IP = "10.0.100.1"


def _path(ip: str, port: int) -> FlowKey:
    return FlowKey(ip, port, SERVER_IP, 4433)


def _logged(tmp_path, events) -> list:
    """The events as the controller logs them and the metrics read them back."""
    log = tmp_path / "decisions.jsonl"
    lines = [json.dumps(event.to_record(t, "qasm")) for t, event in events]
    log.write_text("\n".join(lines) + "\n", encoding="utf-8")
    logged = read_decisions(log)
    assert [e.event for e in logged] == [event for _, event in events]
    return logged


def test_nat_peak_held_and_exhaustion_follow_the_decision_log(tmp_path):
    p0, p1, p2, p3, p4 = (_path("10.0.1.1", port) for port in (1000, 1001, 1002, 1003, 1004))
    other = _path("10.0.9.9", 5)
    mapping = {path: NatMapping(path, PUBLIC_IP, port) for path, port in (
        (p0, 20000), (p1, 20001), (other, 20002), (p2, 20000))}  # fmt: skip
    admit = dict(dpid=1, in_port=2, verdict=Verdict.ADMIT, reason=Reason.OPENED_BY_INITIAL)
    exhausted = dict(dpid=1, in_port=2, verdict=Verdict.DROP, reason=Reason.NAT_POOL_EXHAUSTED)
    events = [
        (1, PacketIn(**admit, flow=p0, connection=1, nat_allocated=(mapping[p0],))),
        (2, PathInstalled(1, "c1", 1, p1, nat_allocated=(mapping[p1],))),
        (3, PacketIn(**admit, flow=other, connection=2, nat_allocated=(mapping[other],))),
        (4, PathRetired(1, "c1", 1, p0, nat_released=(mapping[p0],))),
        (5, PacketIn(**admit, flow=p2, connection=3, nat_allocated=(mapping[p2],))),
        (5.5, ConnectionsEnded(1, evicted=(2,), nat_released=(mapping[other],))),
        (6, PacketIn(**exhausted, flow=p3, text="NAT port pool exhausted (8 ports)")),
        (6.5, PacketIn(**exhausted, flow=_path("10.0.9.9", 6))),  # another client's
        (7, PathInstalled(1, "c1", 1, p4, nat_exhausted=True)),
        (8, ConnectionState(1, 1, "c1", (p1,), (p0,), (b"\x01",), (mapping[p1],))),
        (8, ConnectionState(1, 3, None, (p2,), (), (), (mapping[p2],))),
    ]
    mine = client_events(_logged(tmp_path, events), (1,), ("10.0.1.1",))[1]
    assert [e.t for e in mine] == [1, 2, 4, 5, 6, 7, 8, 8]
    assert nat_mappings_peak(mine) == 2
    assert nat_mappings_held(mine) == 2
    assert nat_pool_exhausted(mine) == 2


def test_flood_effect_counts_rejections_and_drops_by_code(tmp_path):
    report = dict(dpid=1, in_port=2, addrs=("10.0.2.1", "10.0.0.254"))
    drop = dict(dpid=1, in_port=2, verdict=Verdict.DROP, reason=Reason.FRAME_UNREADABLE)
    events = [
        (1, AgentReport(**report, verdict=Verdict.REJECT, reason=Reason.FORGED)),
        (2, AgentReport(**report, verdict=Verdict.REJECT, reason=Reason.MALFORMED,
                        text="v: expected 1, got 'x'")),
        (3, AgentReport(**report, verdict=Verdict.REJECT, reason=Reason.MALFORMED,
                        text="body: expected UTF-8")),
        (4, AgentReport(**report, verdict=Verdict.ACCEPT, reason=Reason.ANNOUNCED)),
        (5, PacketIn(**drop, text="udp: length field 7 outside [8, 30]")),
        (6, PacketIn(**drop, text="udp: length field 9 outside [8, 20]")),
        (7, PacketIn(1, 2, Verdict.FORWARD, Reason.KNOWN_PATH)),
    ]  # fmt: skip
    effect = flood_effect(_logged(tmp_path, events))
    # Counted by code: texts that differ in their particulars fall together.
    assert effect["agent_rejections"] == {"forged": 1, "malformed": 2}
    assert effect["agent_reports_accepted"] == 1 and effect["agent_rejected"] == 3
    assert effect["controller_drops"] == {"frame_unreadable": 2}
    assert effect["controller_dropped"] == 2


# --- the Tracking Agent under forged and replayed reports -----------------------------------


def never_applied(message, connection):
    raise AssertionError(f"a report was applied: {message}")


def agent(rate_per_s=1.0, burst=3) -> TrackingAgent:
    return TrackingAgent(("10.0.0.250", 4433), {"c1": KEY}, {"c1": frozenset({"10.0.1.1"})},
                         rate_per_s=rate_per_s, burst=burst)  # fmt: skip


def test_forged_and_replayed_reports_do_not_spend_the_real_clients_budget():
    tracking, table = agent(), ConnectionTable()

    def receive(datagram: bytes, source: str, now: float) -> Reason:
        return tracking.receive(datagram, source, now, table, never_applied).reason

    real = seal(Retire("c1", 1, b"\x01", ("10.0.1.1", 5)), KEY)
    assert receive(real, "10.0.1.1", 0.0) is Reason.UNKNOWN_CONNECTION
    forged = seal(Retire("c1", 9, b"\x01", ("10.0.1.1", 5)), b"not the key" * 3)
    for _ in range(1000):
        assert receive(forged, "10.0.2.1", 0.0) is Reason.FORGED
        assert receive(real, "10.0.2.1", 0.0) is Reason.DUPLICATE
    reused = seal(Retire("c1", 1, b"\x01", ("10.0.1.1", 6)), KEY)  # counter 1, another body
    assert receive(reused, "10.0.2.1", 0.0) is Reason.REPLAYED
    # The real client still has the rest of its burst.
    fresh = [seal(Retire("c1", n, b"\x01", ("10.0.1.1", 5)), KEY) for n in (2, 3, 4)]
    reasons = [receive(d, "10.0.1.1", 0.0) for d in fresh]
    assert reasons == [Reason.UNKNOWN_CONNECTION, Reason.UNKNOWN_CONNECTION, Reason.RATE_LIMITED]
    # Rate limited is not an answer: the same datagram goes through once a token is back.
    assert receive(fresh[2], "10.0.1.1", 1.0) is Reason.UNKNOWN_CONNECTION


def test_counters_stay_bounded_whatever_garbage_says():
    tracking = agent(rate_per_s=1e9, burst=10**9)
    factory = PacketFactory(random.Random(7), "c1")
    for _ in range(3000):
        kind = random.Random(len(tracking.counters)).choice(list(AGENT_KINDS)[:-1])
        tracking.receive(getattr(factory, kind)(), "10.0.2.1", 0.0, None, never_applied)
    assert sum(tracking.counters.values()) == 3000
    assert len(tracking.counters) <= 4, tracking.counters  # forged, malformed, unknown client


# --- the middlebox against every kind of flood packet ---------------------------------------


def flooded_middlebox() -> Controller:
    config = MiddleboxConfig(
        variant="qasm", service_ip=SERVER_IP, service_port=4433,
        functions=("firewall", "ratelimit", "nat"),
        agent=AgentSettings(ip="10.0.0.254", port=7400, mac="02:00:00:00:00:fe",
                            keys={"c1": KEY.hex()}, addresses={"c1": [CLIENT_IP]}),
        ratelimit=RateLimit(8000, 800),
        hops=(HopSettings(1, NatSettings("10.0.100.1", "02:00:00:00:00:fd", ports=8)),),
    )  # fmt: skip
    box = Controller(config)
    box.switch_connected(1)
    box.packet_in(1, 1, arp_frame(SERVER_MAC, SERVER_IP, CLIENT_IP), now=0.0)
    box.packet_in(1, 2, arp_frame(CLIENT_MAC, CLIENT_IP, SERVER_IP), now=0.0)
    return box


@pytest.mark.parametrize("kind", sorted(SERVICE_KINDS.keys() - {"bad_udp_length"}))
def test_every_kind_of_service_garbage_is_dropped_and_leaves_no_state(kind):
    box, factory, rng = flooded_middlebox(), PacketFactory(random.Random(3), "c1"), random.Random(4)
    for n in range(300):
        frame = udp_frame(getattr(factory, kind)(), sport=rng.randint(1024, 32767))
        (decision,) = box.packet_in(1, 2, frame, now=1.0 + n / 1000)
        assert decision.event.verdict is Verdict.DROP, decision.event
        assert not decision.messages
    (stats,) = box.stats()
    assert stats.connections == 0 and stats.nat_in_use == 0


@pytest.mark.parametrize("kind", sorted(AGENT_KINDS.keys() - {"replayed"}))
def test_every_kind_of_forged_report_is_rejected_and_changes_nothing(kind):
    box, factory = flooded_middlebox(), PacketFactory(random.Random(5), "c1")
    for n in range(200):
        frame = udp_frame(getattr(factory, kind)(), sport=2000 + n, dport=7400, dst="10.0.0.254",
                          eth_dst="02:00:00:00:00:fe")  # fmt: skip
        (decision,) = box.packet_in(1, 2, frame, now=1.0 + n / 1000)
        assert decision.event.verdict in (Verdict.REJECT, Verdict.DROP), decision.event
        assert not decision.messages  # an unverified sender gets no answer
    (stats,) = box.stats()
    assert stats.connections == 0 and "accepted" not in stats.agent


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
