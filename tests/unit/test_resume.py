"""`qasm run --resume`: what counts as finished, and when going on would mix results."""

from __future__ import annotations

import json

import pytest

from testbed.cli import main
from testbed.emulation.resume import (
    ResumeError,
    check_resumable,
    code_fingerprint,
    finished_runs,
    read_run_dir,
)
from testbed.emulation.runner import REPOSITORY, plan_runs, records_per_run
from tests.unit.conftest import write_scenario

OPTIONS = {"variants": ["baseline", "tuple"], "repetitions": 2, "seed": 0, "cpu_pinning": False}
SCENARIO = """\
variants: [baseline, tuple]
repetitions: 2
topology:
  name: dualhomed
  clients: 2
workload:
  bytes: 4000
migration:
  kind: [nat-rebind, active]
  at_bytes: 1000
"""


def _record(name: str, client: str) -> dict:
    return {"artifacts": f"artifacts/{name}", "client": client, "completed": True}


def test_a_run_is_finished_only_with_a_record_per_connection():
    expected = {"001-baseline-active-r0": 2, "002-tuple-active-r0": 2, "003-x-r0": 2}
    records = [
        _record("001-baseline-active-r0", "c1"),
        _record("001-baseline-active-r0", "c2"),
        _record("002-tuple-active-r0", "c1"),  # killed before c2's record
    ]
    resumption = finished_runs({"status": "running"}, records, expected)
    assert resumption.finished == {"001-baseline-active-r0"}
    assert resumption.records == records[:2]
    assert resumption.metadata == {"status": "running"}


def test_a_torn_last_line_is_dropped_and_a_torn_middle_line_refused(tmp_path):
    (tmp_path / "metadata.json").write_text('{"status": "running"}')
    whole = json.dumps(_record("001-a-r0", "c1"))
    (tmp_path / "records.jsonl").write_text(f"{whole}\n{whole[:20]}")
    metadata, records = read_run_dir(tmp_path)
    assert metadata == {"status": "running"} and records == [json.loads(whole)]
    (tmp_path / "records.jsonl").write_text(f"{whole[:20]}\n{whole}\n")
    with pytest.raises(ResumeError, match="records.jsonl:1: not a JSON record"):
        read_run_dir(tmp_path)
    (tmp_path / "metadata.json").unlink()
    with pytest.raises(ResumeError, match="metadata.json: cannot read it"):
        read_run_dir(tmp_path)


def test_the_code_fingerprint_follows_the_content_of_the_result_making_code(tmp_path):
    (tmp_path / "qasm").mkdir()
    (tmp_path / "docs").mkdir()
    source = tmp_path / "qasm" / "a.py"
    source.write_text("x = 1\n")
    before = code_fingerprint(tmp_path)
    (tmp_path / "docs" / "b.py").write_text("unrelated = True\n")
    assert code_fingerprint(tmp_path) == before
    source.write_text("x = 2\n")
    assert code_fingerprint(tmp_path) != before
    source.write_text("x = 1\n")
    assert code_fingerprint(tmp_path) == before


def test_going_on_is_refused_when_it_would_mix_results():
    metadata = {
        "status": "interrupted", "scenario": "s.yaml", "scenario_sha256": "a" * 64,
        "code_sha256": "c" * 64, "options": OPTIONS,
    }  # fmt: skip
    assert check_resumable(metadata, "a" * 64, "c" * 64, OPTIONS) == []
    problems = check_resumable(
        {**metadata, "status": "finished"}, "b" * 64, "d" * 64, {**OPTIONS, "seed": 7}
    )
    assert problems == [
        "the run finished: nothing to resume",
        "scenario s.yaml changed since the run started (sha256 aaaaaaaaaaaa then, bbbbbbbbbbbb "
        "now)",
        "the code (qasm/, testbed/, topologies/) changed since the run started (sha256 "
        "cccccccccccc then, dddddddddddd now)",
        "seed: 7 now, 0 in the run",
    ]


def test_runs_are_planned_again_with_the_same_names(tmp_path):
    from testbed.scenario import load_scenario

    scenario = load_scenario(write_scenario(tmp_path, SCENARIO))
    first = records_per_run(plan_runs(scenario, scenario.variants, 2))
    assert first == records_per_run(plan_runs(scenario, scenario.variants, 2))
    assert len(first) == 2 * 2 * 2 and set(first.values()) == {2}  # 2 clients, 1 connection


def test_the_command_refuses_to_resume_a_changed_scenario(tmp_path, capsys):
    path = write_scenario(tmp_path, SCENARIO)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    metadata = {
        "status": "interrupted", "scenario": str(path), "scenario_sha256": "0" * 64,
        "code_sha256": code_fingerprint(REPOSITORY), "options": OPTIONS,
    }  # fmt: skip
    (run_dir / "metadata.json").write_text(json.dumps(metadata))
    assert main(["run", "--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert f"--resume {run_dir}: scenario {path} changed since the run started" in err
    assert main(["run", str(path), "--resume", str(run_dir), "--out", "x"]) == 2
    assert "--out: expected nothing with --resume" in capsys.readouterr().err
    assert main(["run"]) == 2
    assert "scenario: expected a scenario file (or --resume RUN_DIR)" in capsys.readouterr().err
