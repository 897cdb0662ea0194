"""`qasm clean` removes a dead run's processes and records, and nothing of a live run."""

from __future__ import annotations

import os
import subprocess

import pytest

from testbed.emulation import ownership
from testbed.emulation.ownership import OwnedProcess, RunRecord, clean_dead_runs, process_start_time


@pytest.fixture(autouse=True)
def state_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(ownership, "STATE_DIR", tmp_path)
    return tmp_path


def _dead_pid() -> int:
    finished = subprocess.Popen(["true"])
    finished.wait()
    return finished.pid


def test_clean_kills_a_dead_runs_processes_and_forgets_the_run():
    leftover = subprocess.Popen(["sleep", "60"])
    try:
        record = RunRecord("qdead", OwnedProcess(_dead_pid(), 1, "runner"), "/tmp/x")
        record.save()
        record.own(leftover.pid, "server on host")
        report = clean_dead_runs()
        assert leftover.wait(timeout=5) == -9
        assert "run qdead" in report[0] and f"process {leftover.pid}" in report[0]
        assert not record.path.exists()
    finally:
        leftover.kill()


def test_clean_leaves_a_live_run_alone():
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        me = OwnedProcess(os.getpid(), process_start_time(os.getpid()), "runner")
        record = RunRecord("qlive", me, "/tmp/y")
        record.save()
        record.own(bystander.pid, "server")
        assert clean_dead_runs() == []
        assert bystander.poll() is None and record.path.exists()
    finally:
        bystander.kill()


def test_a_recycled_pid_is_not_killed():
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        record = RunRecord("qrecy", OwnedProcess(_dead_pid(), 1, "runner"), "/tmp/z")
        record.processes.append(OwnedProcess(bystander.pid, 12345, "long gone"))
        record.save()
        clean_dead_runs()
        assert bystander.poll() is None
    finally:
        bystander.kill()


def test_new_records_get_distinct_prefixes():
    first, second = ownership.new_run_record("/a"), ownership.new_run_record("/b")
    assert first.prefix != second.prefix
    assert ownership.PREFIX_PATTERN.match(first.prefix)
    assert RunRecord.load(first.path).runner.pid == os.getpid()


def test_clean_puts_back_the_datapath_idle_time_a_dead_run_changed(monkeypatch):
    from testbed.emulation import datapath

    written = []
    monkeypatch.setattr(datapath, "write_max_idle", written.append)
    record = RunRecord("qidle", OwnedProcess(_dead_pid(), 1, "runner"), "/tmp/w")
    record.datapath_max_idle = {"saved": "2500"}
    record.save()
    assert RunRecord.load(record.path).datapath_max_idle == {"saved": "2500"}
    report = clean_dead_runs()
    assert written == ["2500"] and "max-idle" in report[0]
