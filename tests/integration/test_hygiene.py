"""Interrupted and killed runs: nothing of theirs may stay on the machine."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from testbed.emulation.ownership import STATE_DIR, OwnedProcess
from tests.integration.conftest import QASM, REPOSITORY, leftovers, read_records

pytestmark = pytest.mark.integration
SCENARIO = str(REPOSITORY / "scenarios" / "default.yaml")


def _start_run(run_dir: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [*QASM, "run", SCENARIO, "--out", str(run_dir)],
        cwd=REPOSITORY, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def _wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _run_record(run_dir: Path) -> dict | None:
    for path in (STATE_DIR / "runs").glob("*.json"):
        try:
            record = json.loads(path.read_text())
        except ValueError:
            continue
        if record["run_dir"] == str(run_dir) and record["processes"]:
            return record
    return None


def _first_record_written(run_dir: Path) -> bool:
    path = run_dir / "records.jsonl"
    return path.exists() and bool(path.read_text().strip())


def test_ctrl_c_tears_everything_down_and_keeps_finished_records(tmp_path):
    run = _start_run(tmp_path)
    record = _wait_for(lambda: _run_record(tmp_path), 60, "the run to start")
    _wait_for(lambda: _first_record_written(tmp_path), 120, "the first finished run")
    run.send_signal(signal.SIGINT)
    _, stderr = run.communicate(timeout=60)
    assert run.returncode == 130, stderr
    assert leftovers(record["prefix"]) == []
    assert [p for p in record["processes"] if OwnedProcess(**p).alive()] == []
    assert len(read_records(tmp_path)) >= 1
    assert json.loads((tmp_path / "metadata.json").read_text())["status"] == "interrupted"


def test_qasm_clean_removes_what_a_killed_run_left_and_nothing_else(tmp_path):
    run = _start_run(tmp_path)
    record = _wait_for(lambda: _run_record(tmp_path), 60, "the run to start")
    _wait_for(lambda: any(p["what"] == "controller" for p in (_run_record(tmp_path) or record)["processes"]),
              60, "the controller")  # fmt: skip
    run.send_signal(signal.SIGKILL)
    run.communicate(timeout=30)
    record = _run_record(tmp_path)  # as the killed runner last wrote it
    prefix = record["prefix"]
    assert leftovers(prefix), "a SIGKILLed runner should leave Mininet shells and its bridge"
    result = subprocess.run([*QASM, "clean"], capture_output=True, text=True, cwd=REPOSITORY)
    assert result.returncode == 0
    assert f"run {prefix}" in result.stdout
    assert leftovers(prefix) == []
    assert not (STATE_DIR / "runs" / f"{prefix}.json").exists()
    owned = [OwnedProcess(**p) for p in record["processes"]]
    assert {p.what for p in owned} >= {"controller"}
    still_running = [p for p in owned if p.alive()]
    assert still_running == []


def test_a_killed_run_resumes_where_it_stopped_with_the_runs_it_would_have_made(tmp_path):
    run = _start_run(tmp_path)
    record = _wait_for(lambda: _run_record(tmp_path), 60, "the run to start")
    _wait_for(lambda: _first_record_written(tmp_path), 120, "the first finished run")
    run.send_signal(signal.SIGKILL)
    run.communicate(timeout=30)
    finished_before = read_records(tmp_path)
    subprocess.run([*QASM, "clean"], capture_output=True, text=True, cwd=REPOSITORY, check=True)
    assert leftovers(record["prefix"]) == []
    result = subprocess.run(
        [*QASM, "run", "--resume", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=REPOSITORY,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert f"{len(finished_before)} of 4 runs finished before" in result.stdout
    records = read_records(tmp_path)
    # The finished runs' records kept as they were, then exactly the runs still to do.
    assert records[: len(finished_before)] == finished_before
    identity = sorted((r["variant"], r["migration"], r["repetition"]) for r in records)
    assert identity == sorted(
        (variant, kind, 0) for variant in ("baseline", "tuple") for kind in ("nat-rebind", "active")
    )
    names = [r["artifacts"] for r in records]
    assert len(set(names)) == len(names) == 4
    metadata = json.loads((tmp_path / "metadata.json").read_text())
    assert metadata["status"] == "finished"
    assert metadata["resumed"][0]["runs_finished_before"] == len(finished_before)
    # Going on again is refused: there is nothing left to do.
    again = subprocess.run(
        [*QASM, "run", "--resume", str(tmp_path)], capture_output=True, text=True, cwd=REPOSITORY
    )
    assert again.returncode == 2 and "the run finished: nothing to resume" in again.stderr
