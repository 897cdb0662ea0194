"""A reduced scenarios/initial-flood.yaml on the real emulation: client 1's host sends 5,000
well-formed client Initials a second (each a new connection the server would answer) from
its own addresses while three clients upload through the qasm middlebox (firewall, NAT) and
migrate actively. The other clients' transfers must complete and verify, no established
connection be evicted, the NAT pool never run out, the controller's memory stay bounded,
and the flood be held by the defences, each counted."""

from __future__ import annotations

import pytest
import yaml

from qasm.controller.events import Reason
from tests.integration.conftest import REPOSITORY, read_records, run_scenario

pytestmark = pytest.mark.integration
SCENARIO = REPOSITORY / "scenarios" / "initial-flood.yaml"
PPS = 5000
# Measured on the garbage flood (test_garbage_flood.py): Python's allocator warms up by
# ~1 MiB in a flood's first seconds; here every admitted Initial is a connection (a few KiB
# with its rules) until it ends, bounded by the per-source quotas.
MAX_RSS_GROWTH_KIB = 16 * 1024


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    scenario = yaml.safe_load(SCENARIO.read_text())
    # ~10 s of flood: 8 MB each over the shared 24 Mbit/s server link.
    scenario.update(variants=["qasm"], workload={"bytes": 8_000_000})
    scenario["migration"].update(at_seconds=2, repeat_every_s=3)
    scenario["timeouts"]["run_s"] = 40
    run_dir = tmp_path_factory.mktemp("initial-flood")
    path = run_dir.parent / "initial-flood-reduced.yaml"
    path.write_text(yaml.safe_dump(scenario))
    run_scenario(path, run_dir, timeout_s=600)
    records = sorted(read_records(run_dir), key=lambda r: r["client"])
    return records[0], records[1:]  # client 1 is the flooding host


def test_the_flood_ran_at_its_rate_from_the_hosts_own_addresses(run):
    flooder, _ = run
    flood = flooder["flood"]
    assert set(flood["sent"]) == {"initial"}
    # The generator is Python, building every Initial beside three uploads on 2 cores: it
    # reached 3,616-4,512 of the 5,000 asked (this test alone, minutes apart, on the same
    # code). What matters is a flood far above the middlebox's admission budget (100 a
    # second), which 60 % of the asked rate is 30 times over.
    assert flood["achieved_pps"] >= 0.6 * PPS, flood
    assert flood["send_errors"] == {}
    assert len(flood["source_ips"]) >= 2 and flood["spoofed_sources"] == []  # its own


def test_the_other_clients_migrate_complete_and_verify(run):
    _, others = run
    assert len(others) == 2
    for record in others:
        assert record["completed"] and record["verified"], record["failure"]
        assert record["migrations"] >= 2
        assert record["nat_pool_exhausted"] == 0


def test_no_established_connection_is_evicted_and_the_pool_never_runs_out(run):
    flooder, others = run
    for record in (flooder, *others):
        assert record["connections_evicted_established"] == 0
        assert record["controller_drops"].get(Reason.NAT_POOL_EXHAUSTED, 0) == 0


def test_the_defences_held_the_flood_and_counted_it(run):
    flooder, _ = run
    drops = flooder["controller_drops"]
    sent = flooder["flood"]["sent"]["initial"]
    refused = drops.get(Reason.ADMISSION_BUDGET, 0) + drops.get(Reason.HALF_OPEN_QUOTA, 0)
    assert refused > 0 and drops.get(Reason.NAT_SOURCE_QUOTA, 0) > 0, drops
    assert flooder["connections_half_open"] > 0
    # A refused source is held at the switch for a second: most Initials never reach the
    # controller (one packet-in each was what took its CPU).
    assert flooder["controller_dropped"] < 0.2 * sent, (sent, drops)


def test_controller_memory_stays_bounded(run):
    flooder, _ = run
    growth = flooder["controller_rss_end_kib"] - flooder["controller_rss_start_kib"]
    assert growth < MAX_RSS_GROWTH_KIB, growth
