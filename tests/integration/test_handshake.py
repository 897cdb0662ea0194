"""A reduced scenarios/handshake.yaml on the real emulation: baseline, qasm (push) and
qasm-ahead, each opening a few connections from one client host. In qasm-ahead every
connection is admitted by its agent before its first packet and none of its packets reaches
the controller; in qasm each Initial does."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.integration.conftest import (
    REPOSITORY,
    assert_controller_logged_no_exception,
    read_records,
    run_scenario,
)

pytestmark = pytest.mark.integration
CONNECTIONS = 4


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    scenario = yaml.safe_load((REPOSITORY / "scenarios" / "handshake.yaml").read_text())
    assert scenario["agent"]["mode"] == ["push", "ahead"]
    scenario.update(repetitions=1)
    scenario["workload"].update(connections=CONNECTIONS, start_window_s=2)
    run_dir = tmp_path_factory.mktemp("handshake")
    path = run_dir.parent / "handshake-reduced.yaml"
    path.write_text(yaml.safe_dump(scenario))
    run_scenario(path, run_dir, timeout_s=300)
    return run_dir


def _records(run_dir, variant: str) -> list[dict]:
    records = [r for r in read_records(run_dir) if r["variant"] == variant]
    assert len(records) == CONNECTIONS
    for record in records:
        assert record["completed"] and record["verified"], record["failure"]
    return records


def test_qasm_ahead_admits_every_connection_before_its_first_packet(run_dir):
    for record in _records(run_dir, "qasm-ahead"):
        (admit,) = [e for e in record["agent_exchanges"] if e["what"] == "admit"]
        assert admit["accepted"], admit
        assert record["packet_ins"] == 0  # not even the Initial went to the controller
        assert record["admission_ms"] > 0
        # Admitted from ADMIT_LEAD_S before it is due, a connection waits for its admission
        # only if it is due sooner: the first, due START_MARGIN_S after the run's start
        # signal, if its admission takes longer than that; the others never.
        waited = record["opening_ms"] - record["handshake_ms"]
        assert 0 <= waited < record["admission_ms"], record["client"]
        if not record["client"].endswith("/1"):
            assert waited == 0, record["client"]
    assert_controller_logged_no_exception(run_dir)


def test_in_push_mode_every_initial_goes_through_the_controller(run_dir):
    for record in _records(run_dir, "qasm"):
        assert record["packet_ins"] >= 1 and record["admission_ms"] is None
        assert not [e for e in record["agent_exchanges"] if e["what"] == "admit"]
        assert record["opening_ms"] == record["handshake_ms"]


def test_the_summary_compares_handshake_and_opening_against_baseline(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    compared = summary["comparison_with_baseline"]
    for variant in ("qasm", "qasm-ahead"):
        for name in ("handshake_ratio", "opening_ratio"):
            assert compared[variant][name]["estimate"] > 0, (variant, name)
    # In push mode the opening is the handshake.
    push = compared["qasm"]
    assert push["opening_ratio"] == push["handshake_ratio"]
