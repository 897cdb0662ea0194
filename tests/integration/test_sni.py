"""The firewall's SNI deny list on the real emulation (scenarios/sni.yaml): the middlebox
decrypts each new connection's client Initial and refuses a blocked server name; an allowed
one opens and, with cid or qasm, keeps its admission across the migration."""

from __future__ import annotations

import json

import pytest

from qasm.controller.events import PacketIn, Reason, Verdict
from testbed.records.metrics import read_decisions
from tests.integration.conftest import REPOSITORY, read_records, run_scenario

pytestmark = pytest.mark.integration
BLOCKED, ALLOWED = "video.blocked.example", "video.allowed.example"
STATEFUL = ("tuple", "cid", "qasm")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("sni")
    run_scenario(REPOSITORY / "scenarios" / "sni.yaml", run_dir, timeout_s=600)
    records = {
        (r["parameters"]["workload.server_name"], r["variant"]): r for r in read_records(run_dir)
    }
    return run_dir, records


@pytest.mark.parametrize("variant", STATEFUL)
def test_a_blocked_server_name_never_gets_its_handshake(run, variant):
    record = run[1][(BLOCKED, variant)]
    assert not record["completed"] and record["handshake_ms"] is None
    assert "SNI 'video.blocked.example' matches sni_deny '*.blocked.example'" in record["failure"]


def test_the_refusal_is_a_logged_decision_on_the_clients_initial(run):
    run_dir, records = run
    log = run_dir / records[(BLOCKED, "qasm")]["artifacts"] / "decisions.jsonl"
    refusals = [
        e.event
        for e in read_decisions(log)
        if isinstance(e.event, PacketIn) and e.event.reason is Reason.SNI_REFUSED
    ]
    assert refusals and all(d.verdict is Verdict.DROP for d in refusals)
    assert all("sni_deny" in d.text for d in refusals)


def test_baseline_keeps_no_policy(run):
    for name in (BLOCKED, ALLOWED):
        assert run[1][(name, "baseline")]["completed"]


@pytest.mark.parametrize("variant", ["cid", "qasm"])
def test_an_allowed_name_stays_admitted_after_migrating(run, variant):
    record = run[1][(ALLOWED, variant)]
    assert record["completed"] and record["verified"] and record["migrated"], record["failure"]


def test_tuple_cannot_read_the_name_again_on_the_migrated_path(run):
    record = run[1][(ALLOWED, "tuple")]
    assert record["handshake_ms"] is not None and not record["completed"]
    assert "short header" in record["failure"]


def test_the_matrix_says_refused_for_the_blocked_name(run):
    summary = json.loads((run[0] / "summary.json").read_text())
    cells = {(c["point"], c["variant"]): c["outcome"] for c in summary["matrix"]}
    for variant in STATEFUL:
        assert cells[(f"workload.server_name={BLOCKED}", variant)] == "refused"
    assert cells[(f"workload.server_name={ALLOWED}", "qasm")] == "survives"
