"""A reduced scenarios/replicas.yaml on the real emulation: two middlebox replicas behind a
hashing front end (OVS select and fast-failover groups), the client's migrated path forced
onto the other replica, connection state in memory or in a real redis-server, and replica 1
killed mid-transfer. Plus: a run leaves no Redis process, socket or directory behind, also
when its runner is SIGKILLed and `qasm clean` runs."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
import yaml

from testbed.emulation.ownership import STATE_DIR, OwnedProcess
from tests.integration.conftest import (
    QASM,
    REPOSITORY,
    command_lines,
    leftovers,
    read_records,
    run_scenario,
)
from tests.integration.test_hygiene import _run_record, _wait_for

pytestmark = pytest.mark.integration
# The client's first path is on replica 1 until it migrates (at 2 MB, ~0.9 s): the kill
# (at ~0.75 MB) hits the replica that carries it. The transfer goes on long enough after the
# migration (4 MB, ~1.6 s) for the client to retire its old path (after 1 s).
KILL_AT_S = 0.3
NO_FAULT = "[]"


def reduced_scenario(path: Path) -> Path:
    scenario = yaml.safe_load((REPOSITORY / "scenarios" / "replicas.yaml").read_text())
    scenario.update(repetitions=1, variants=["qasm"], workload={"bytes": 6_000_000})
    scenario["topology"].update(replicas=2)
    # Push mode only (pull doubles the runs; the full scenario and the README show it).
    scenario["agent"]["mode"] = "push"
    scenario["migration"] = {"kind": ["active"], "at_bytes": 2_000_000}
    scenario["sweep"] = {
        "middlebox.state": ["memory", "redis"],
        "faults": [[], [{"kill_replica": 1, "at_seconds": KILL_AT_S}]],
    }
    path.write_text(yaml.safe_dump(scenario))
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, dict]:
    run_dir = tmp_path_factory.mktemp("replicas")
    scenario = reduced_scenario(run_dir.parent / "replicas-reduced.yaml")
    run_scenario(scenario, run_dir, timeout_s=600)
    records = {}
    for record in read_records(run_dir):
        parameters = record["parameters"]
        faults = "kill" if parameters["faults"] else NO_FAULT
        records[(parameters["middlebox.state"], faults)] = record
    return run_dir, records


def _survived(record: dict) -> bool:
    return record["completed"] and record["verified"]


def test_in_memory_the_path_moved_to_the_other_replica_is_lost(run):
    _, records = run
    record = records[("memory", NO_FAULT)]
    assert (record["replica_before"], record["replica_after"]) == (1, 2)
    assert not _survived(record)
    assert "not_an_initial" in record["failure"]  # replica 2 never heard of the connection
    assert record["migration_packet_ins_per_replica"]["2"] > 0


def test_with_redis_the_other_replica_carries_it_with_one_nat_mapping(run):
    _, records = run
    record = records[("redis", NO_FAULT)]
    assert _survived(record), record["failure"]
    assert (record["replica_before"], record["replica_after"]) == (1, 2)
    assert record["state"] == "redis" and record["replicas"] == 2
    assert record["nat_mappings"] == 1  # the old path's port went back: one table
    # Pushed to both replicas before the client moved: no packet-in on either.
    assert record["migration_packet_ins_per_replica"] == {"1": 0, "2": 0}
    assert record["store_round_trips_opening"] > 0
    assert record["store_round_trips_per_migration"] > 0
    assert records[("memory", NO_FAULT)]["store_round_trips_opening"] == 0


def test_when_replica_1_dies_the_survivor_takes_the_connection_only_with_redis(run):
    _, records = run
    killed = records[("redis", "kill")]
    assert killed["faults"][0]["happened_at_s"] is not None
    assert _survived(killed), killed["failure"]
    assert killed["nat_mappings"] == 1
    replica_2 = killed["per_hop"]["dpid"].index(2)
    assert killed["per_hop"]["packet_ins"][replica_2] > 0  # it looked the path up in Redis
    lost = records[("memory", "kill")]
    assert lost["faults"][0]["happened_at_s"] is not None
    assert not _survived(lost)


def test_the_front_end_stopped_sending_to_the_dead_replica(run):
    run_dir, records = run
    flows = (run_dir / records[("redis", "kill")]["artifacts"] / "flows.txt").read_text()
    front = flows.split("# ")[1]
    assert "type=select,selection_method=hash" in front and "watch_port:301" in front


def _redis_processes(prefix: str) -> list[str]:
    return [
        f"{pid}: {cmdline}"
        for pid, cmdline in command_lines()
        if cmdline.startswith("redis-server") and f"/redis/{prefix}/" in cmdline
    ]


def test_a_run_leaves_no_redis_process_or_directory(run):
    run_dir, _ = run
    prefix = json.loads((run_dir / "metadata.json").read_text())["emulation_prefix"]
    assert not (STATE_DIR / "redis" / prefix).exists()
    assert _redis_processes(prefix) == []
    assert leftovers(prefix) == []


def test_qasm_clean_removes_the_redis_a_killed_run_left(tmp_path):
    scenario = yaml.safe_load(reduced_scenario(tmp_path / "s.yaml").read_text())
    scenario["sweep"] = {"middlebox.state": ["redis"]}
    scenario["workload"] = {"bytes": 20_000_000}  # still running when it is killed
    scenario["migration"] = None
    path = tmp_path / "killed.yaml"
    path.write_text(yaml.safe_dump(scenario))
    run_dir = tmp_path / "run"
    runner = subprocess.Popen(
        [*QASM, "run", str(path), "--out", str(run_dir)],
        cwd=REPOSITORY, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip

    def redis_started():
        record = _run_record(run_dir)
        return (
            record
            if record and any(p["what"] == "redis-server" for p in record["processes"])
            else None
        )

    record = _wait_for(redis_started, 120, "the run's redis-server")
    prefix = record["prefix"]
    (directory,) = record["directories"]
    assert Path(directory).exists()
    runner.send_signal(signal.SIGKILL)
    runner.communicate(timeout=30)
    result = subprocess.run([*QASM, "clean"], capture_output=True, text=True, cwd=REPOSITORY)
    assert result.returncode == 0 and f"directory {directory}" in result.stdout
    assert not Path(directory).exists()
    server = next(OwnedProcess(**p) for p in record["processes"] if p["what"] == "redis-server")
    assert not server.alive() and _redis_processes(prefix) == []
    assert leftovers(prefix) == []
