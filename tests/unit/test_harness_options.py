"""The scenario's artifacts and cpu_pinning keys, the CPU layout, and qlog files that are
written even for connections still open when an app stops."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from testbed.apps.qlog import QlogDirectory
from testbed.emulation.pinning import OvsAffinity, PinningError, pin_in_child, plan_layout
from testbed.scenario import Artifacts
from tests.unit.conftest import load_scenario_text, scenario_problems

BASE = """\
variants: [baseline]
topology: {name: dualhomed, clients: 1}
workload: {bytes: 4000}
"""


def load(tmp_path: Path, extra: str):
    return load_scenario_text(tmp_path, BASE + textwrap.dedent(extra))


def problems(tmp_path: Path, extra: str) -> list[str]:
    return scenario_problems(tmp_path, BASE + textwrap.dedent(extra))


def test_artifacts_and_pinning_are_off_unless_asked(tmp_path):
    scenario = load(tmp_path, "")
    assert scenario.artifacts == Artifacts(pcap=False, qlog=False, keylog=False)
    assert scenario.cpu_pinning is False
    scenario = load(tmp_path, "artifacts: {pcap: true, keylog: true}\ncpu_pinning: true\n")
    assert scenario.artifacts == Artifacts(pcap=True, qlog=False, keylog=True)
    assert scenario.cpu_pinning is True


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("artifacts: {pcap: 1}", ":4: artifacts.pcap: expected true or false, got 1"),
        ("artifacts: {qlog: 'yes'}", ":4: artifacts.qlog: expected true or false, got 'yes'"),
        (
            "artifacts:\n  pcap: true\n  pcaps: true",
            ":6: artifacts.pcaps: unknown key, expected one of pcap, qlog, keylog",
        ),
        ("artifacts: [pcap]", ":4: artifacts: expected a mapping"),
        ("cpu_pinning: 2", ":4: cpu_pinning: expected true or false, got 2"),
    ],
)
def test_bad_artifacts_and_pinning_name_their_line_and_key(tmp_path, extra, expected):
    found = problems(tmp_path, extra)
    assert any(p.endswith(expected) for p in found), found


def test_layout_puts_the_network_on_the_first_cpu_and_endpoints_on_the_rest():
    two = plan_layout({1, 0})
    assert (two.network, two.endpoints) == ((0,), (1,))
    four = plan_layout([3, 2, 5, 4])
    assert (four.network, four.endpoints) == ((2,), (3, 4, 5))
    assert four.to_dict()["network"] == [2]
    with pytest.raises(PinningError, match="at least 2 CPUs, this process may use 1"):
        plan_layout({0})


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")
def test_pinning_a_daemon_is_undone_thread_by_thread():
    """On a process of our own standing in for ovs-vswitchd (two threads)."""
    cpus = sorted(os.sched_getaffinity(0))
    code = "import threading, time; threading.Thread(target=time.sleep, args=(30,)).start(); time.sleep(30)"
    daemon = subprocess.Popen([sys.executable, "-c", code])
    try:
        tasks = Path(f"/proc/{daemon.pid}/task")
        deadline = time.monotonic() + 10
        while len(list(tasks.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        affinity = OvsAffinity((cpus[0],), pid=daemon.pid)
        affinity.pin()
        assert len(affinity.saved) == 2
        assert all(os.sched_getaffinity(int(t.name)) == {cpus[0]} for t in tasks.iterdir())
        assert affinity.restore() == []
        assert all(os.sched_getaffinity(int(t.name)) == set(cpus) for t in tasks.iterdir())
    finally:
        daemon.kill()
        daemon.wait()


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")
def test_a_started_process_is_pinned_before_it_runs():
    cpus = sorted(os.sched_getaffinity(0))
    out = subprocess.run(
        [sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
        preexec_fn=pin_in_child((cpus[-1],)),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert json.loads(out) == [cpus[-1]]


def test_qlog_of_a_connection_still_open_is_written_on_close(tmp_path):
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection

    qlog = QlogDirectory(str(tmp_path / "qlog"), "client")
    configuration = QuicConfiguration(is_client=True, server_name="x", quic_logger=qlog)
    connection = QuicConnection(configuration=configuration)
    connection.connect(("10.0.0.250", 4433), now=0.0)
    connection.datagrams_to_send(now=0.0)  # the Initial: one packet_sent event
    assert list((tmp_path / "qlog").iterdir()) == []  # aioquic writes only at the end
    qlog.close()
    (path,) = (tmp_path / "qlog").iterdir()
    odcid = connection.original_destination_connection_id.hex()
    assert path.name == f"{odcid}-client.qlog"
    document = json.loads(path.read_text())
    (trace,) = document["traces"]
    assert trace["vantage_point"]["type"] == "client"
    assert any(e["name"] == "transport:packet_sent" for e in trace["events"])
    qlog.close()  # idempotent: nothing left to write
    assert len(list((tmp_path / "qlog").iterdir())) == 1


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 CPUs")
def test_clean_gives_a_crashed_runs_pinned_daemon_its_cpus_back(tmp_path, monkeypatch):
    from testbed.emulation import ownership
    from testbed.emulation.ownership import (
        OwnedProcess,
        RunRecord,
        clean_dead_runs,
        process_start_time,
    )

    monkeypatch.setattr(ownership, "STATE_DIR", tmp_path)
    cpus = sorted(os.sched_getaffinity(0))
    daemon = subprocess.Popen(["sleep", "60"], preexec_fn=pin_in_child((cpus[0],)))
    finished = subprocess.Popen(["true"])
    finished.wait()
    try:
        start = process_start_time(daemon.pid)
        record = RunRecord("qcrsh", OwnedProcess(finished.pid, 1, "runner"), "/tmp/x")
        record.pinned = {
            "process": {"pid": daemon.pid, "start_time": start + 1, "what": "ovs-vswitchd"},
            "saved": {str(daemon.pid): cpus},
        }
        record.save()
        clean_dead_runs()  # a different process now has that pid: left alone
        assert os.sched_getaffinity(daemon.pid) == {cpus[0]}
        record.pinned["process"]["start_time"] = start
        record.save()
        (line,) = clean_dead_runs()
        assert f"cpu pinning of process {daemon.pid} (ovs-vswitchd)" in line
        assert os.sched_getaffinity(daemon.pid) == set(cpus)
        assert daemon.poll() is None  # restored, not killed: it is not the run's
    finally:
        daemon.kill()
        daemon.wait()
