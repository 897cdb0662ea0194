"""scenarios/flood.yaml on the real emulation: the qasm middlebox (firewall, rate limiter,
NAT) while testbed/apps/flood.py floods it with malformed QUIC and forged, malformed,
oversized, unknown-client and replayed agent reports, and a real transfer migrates through
it. The transfer must complete, the controller stay up (the runner raises
InfrastructureError, exit 1, if it died) with its memory and tables flat, and every piece of
garbage be dropped or rejected and counted."""

from __future__ import annotations

import pytest

from qasm.controller.events import HopStats, PacketIn, Reason, Verdict
from testbed.apps.flood import AGENT_KINDS, SERVICE_KINDS
from testbed.records.metrics import read_decisions
from testbed.scenario import load_scenario
from tests.integration.conftest import (
    REPOSITORY,
    assert_each_path_announced_and_retired_once,
    read_records,
    run_scenario,
)

pytestmark = pytest.mark.integration
SCENARIO = REPOSITORY / "scenarios" / "flood.yaml"
# Measured: the controller's RSS grows ~0.4-0.9 MiB while Python's allocator warms up in the
# first seconds of a flood, then stays within a few KiB for 130k packets at 5000/s.
MAX_RSS_GROWTH_KIB = 8 * 1024


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("flood")
    # run_scenario asserts exit 0: a controller that died under the flood would be exit 1.
    run_scenario(SCENARIO, run_dir, timeout_s=600)
    (record,) = read_records(run_dir)
    (decision_log,) = run_dir.glob("artifacts/*/decisions.jsonl")
    return record, [logged.event for logged in read_decisions(decision_log)]


def test_the_transfer_migrates_completes_and_verifies_under_the_flood(run):
    record, _ = run
    assert record["completed"] and record["verified"], record["failure"]
    assert record["migrations"] >= 2
    assert record["leakage_bytes"] == 0


def test_the_flood_ran_at_about_its_rate_with_every_kind(run):
    record, _ = run
    flood = record["flood"]
    pps = load_scenario(SCENARIO).flood.pps
    assert flood["achieved_pps"] >= 0.8 * pps, flood
    assert flood["send_errors"] == {}
    for kind in (*SERVICE_KINDS, *AGENT_KINDS):
        assert flood["sent"].get(kind, 0) > 0, kind  # replays too: real reports were captured


def test_garbage_to_the_service_is_dropped_and_counted(run):
    record, decisions = run
    sent = sum(record["flood"]["sent"].get(kind, 0) for kind in SERVICE_KINDS)
    dropped = {
        reason: count
        for reason, count in record["controller_drops"].items()
        if reason in (Reason.NOT_AN_INITIAL, Reason.FRAME_UNREADABLE)
    }
    # Every one reached the controller and was dropped, none admitted (a few of the real
    # client's own packets may be dropped too, so at least, not exactly).
    assert sum(dropped.values()) >= 0.95 * sent, (sent, record["controller_drops"])
    assert not any(
        isinstance(d, PacketIn)
        and d.verdict is Verdict.ADMIT
        and d.flow is not None
        and d.flow.src_ip == record["flood"]["source_ip"]
        for d in decisions
    )


def test_forged_and_replayed_reports_are_rejected_counted_and_change_nothing(run):
    record, decisions = run
    sent = record["flood"]["sent"]
    rejections = record["agent_rejections"]
    to_agent = sum(sent.get(kind, 0) for kind in AGENT_KINDS)
    assert record["agent_rejected"] >= 0.95 * to_agent, (to_agent, rejections)
    # The tag is checked before the fields, so a well-formed body with a wrong field type
    # and a random tag counts as forged, like the forgeries proper.
    assert rejections[Reason.FORGED] >= 0.95 * sent["forged"]
    assert rejections[Reason.UNKNOWN_CLIENT] >= 0.95 * sent["unknown_client"]
    assert rejections[Reason.MALFORMED] >= 0.95 * sent["oversized_report"]
    replays = rejections.get(Reason.REPLAYED, 0) + rejections.get(Reason.DUPLICATE, 0)
    assert replays >= 0.95 * sent["replayed"], (sent["replayed"], rejections)
    # Accepted reports are exactly the real client's, and every one of those went through:
    # forged reports did not spend its rate budget.
    real = record["agent_exchanges"]
    # What the flooder replays is what the client sent the agent, every attempt, nothing else.
    assert record["flood"]["captured_reports"] == sum(e["attempts"] for e in real), real
    assert all(e["accepted"] for e in real), real
    assert record["agent_reports_accepted"] == len(real)
    assert_each_path_announced_and_retired_once(real, record["migrations"])
    # So the NAT released every retired path's port.
    assert record["nat_mappings"] == 1
    # The controller's own counters (its last stats line) agree.
    last = [d for d in decisions if isinstance(d, HopStats)][-1]
    assert last.agent[f"rejected: {Reason.FORGED}"] > 0
    assert len(last.agent) <= 8  # keyed by reason code, not by what a sender wrote


def test_controller_memory_and_tables_stay_bounded(run):
    record, decisions = run
    growth = record["controller_rss_end_kib"] - record["controller_rss_start_kib"]
    assert growth < MAX_RSS_GROWTH_KIB, growth
    assert record["connections_peak"] == 1 <= record["connections_bound"]
    stats = [d for d in decisions if isinstance(d, HopStats)]
    assert len(stats) >= 3
    # Nothing keyed by the flood's random source ports: locations are the hosts' addresses.
    assert max(s.locations for s in stats) <= 4
    assert max(s.nat_in_use for s in stats) <= 3
