"""The spine, end to end: scenarios/default.yaml on real Mininet + OVS + os-ken + aioquic."""

from __future__ import annotations

import json

import pytest

from tests.integration.conftest import (
    REPOSITORY,
    assert_controller_logged_no_exception,
    read_records,
    run_scenario,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("default")
    printed = run_scenario(REPOSITORY / "scenarios" / "default.yaml", run_dir, timeout_s=600)
    return run_dir, printed


def _record(records, variant, kind):
    (record,) = [r for r in records if r["variant"] == variant and r["migration"] == kind]
    return record


@pytest.mark.parametrize("kind", ["nat-rebind", "active"])
def test_baseline_completes_and_verifies(default_run, kind):
    record = _record(read_records(default_run[0]), "baseline", kind)
    assert record["completed"] and record["verified"], record["failure"]
    assert record["migrated"] and record["failure"] is None
    assert record["goodput_mbps"] > 0 and record["handshake_ms"] > 0
    assert record["disruption_ms"] is not None and record["disruption_ms"] >= 0
    detail = record["migration_detail"]
    if kind == "active":
        assert detail["to"][0] != detail["from"][0] and detail["new_dcid"] != detail["old_dcid"]
    else:
        assert detail["to"][0] == detail["from"][0] and detail["new_dcid"] == detail["old_dcid"]
        assert detail["to"][1] != detail["from"][1]


@pytest.mark.parametrize("kind", ["nat-rebind", "active"])
def test_tuple_loses_the_connection_and_says_why(default_run, kind):
    record = _record(read_records(default_run[0]), "tuple", kind)
    assert record["handshake_ms"] is not None  # the Initial opened the 5-tuple
    assert record["migrated"]
    assert not record["completed"] and not record["verified"]
    assert "short header" in record["failure"], record["failure"]
    assert record["disruption_ms"] is None


def test_outputs_follow_the_design_contract(default_run):
    run_dir, stdout = default_run
    metadata = json.loads((run_dir / "metadata.json").read_text())
    assert metadata["status"] == "finished" and metadata["ended_at"]
    for key in ("scenario_sha256", "seed", "git_commit", "ovs_datapath", "link_emulation"):
        assert key in metadata
    assert set(metadata["versions"]) >= {
        "python",
        "aioquic",
        "os-ken",
        "mininet",
        "openvswitch",
        "kernel",
    }
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["variants"]["baseline"]["completed"] == 2
    assert summary["variants"]["tuple"]["completed"] == 0
    assert "tuple" in summary["comparison_with_baseline"]
    assert "baseline  active" in stdout and "tuple     nat-rebind" in stdout
    assert_controller_logged_no_exception(run_dir)


def test_tuple_installs_a_fast_path_so_admitted_packets_stay_in_the_switch(default_run):
    run_dir = default_run[0]
    for record in read_records(run_dir):
        if record["variant"] == "tuple":
            # Without flow rules every one of the ~3000 datagrams would be a packet-in.
            assert 0 < record["packet_ins"] < 500
            assert record["flow_mods"] >= 2
