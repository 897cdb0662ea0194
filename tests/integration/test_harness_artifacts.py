"""Link emulation, artifacts, CPU pinning and the datapath's idle time in one real run
(`qasm run`).

One scenario exercises them all: 25 ms one-way delay and 1 % loss on the wifi link, every
artifact on, CPU pinning on; a baseline transfer migrates actively to the unimpaired lte link.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from testbed.emulation import links
from testbed.emulation.datapath import EMULATION_MAX_IDLE_MS, read_max_idle
from testbed.emulation.pinning import OVS_PIDFILE
from testbed.records.wire_checks import CHECKS
from tests.integration.conftest import (
    QASM,
    REPOSITORY,
    assert_controller_logged_no_exception,
    read_records,
)

pytestmark = pytest.mark.integration

DELAY_MS = 25
LOSS_PCT = 1
SCENARIO = f"""\
name: harness
seed: 3
variants: [baseline]
functions: [firewall]
topology:
  name: dualhomed
  clients: 1
  wifi_bw_mbit: 50
  lte_bw_mbit: 50
  wifi_delay_ms: {DELAY_MS}
  wifi_loss_pct: {LOSS_PCT}
workload: {{bytes: 1000000}}
migration: {{kind: active, at_bytes: 300000}}
timeouts: {{idle_s: 5, run_s: 60}}
artifacts: {{pcap: true, qlog: true, keylog: true}}
cpu_pinning: true
"""


def _ovs_affinity() -> dict[int, set[int]]:
    pid = int(OVS_PIDFILE.read_text())
    return {
        int(task.name): os.sched_getaffinity(int(task.name))
        for task in Path(f"/proc/{pid}/task").iterdir()
    }


@pytest.fixture(scope="module")
def harness_run(tmp_path_factory):
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("cpu pinning needs 2 CPUs")
    directory = tmp_path_factory.mktemp("harness")
    scenario = directory / "harness.yaml"
    scenario.write_text(textwrap.dedent(SCENARIO))
    run_dir = directory / "run"
    before = _ovs_affinity(), read_max_idle()
    result = subprocess.run(
        [*QASM, "run", str(scenario), "--out", str(run_dir)],
        capture_output=True, text=True, timeout=600, cwd=REPOSITORY,
    )  # fmt: skip
    after = _ovs_affinity(), read_max_idle()
    assert result.returncode == 0, result.stderr
    assert_controller_logged_no_exception(run_dir)
    (record,) = read_records(run_dir)
    metadata = json.loads((run_dir / "metadata.json").read_text())
    return run_dir, record, metadata, (before, after)


def _artifacts(run_dir: Path) -> Path:
    (directory,) = (run_dir / "artifacts").glob("001-*")
    return directory


def test_transfer_completes_and_its_handshake_pays_the_delay(harness_run):
    _, record, _, _ = harness_run
    assert record["completed"] and record["verified"], record["failure"]
    # Initial → server, server's flight → client: at least one round trip over the wifi
    # link, which delays each direction by DELAY_MS.
    assert record["handshake_ms"] >= 2 * DELAY_MS


def test_metadata_records_the_method_the_asked_conditions_and_their_fidelity(harness_run):
    _, _, metadata, _ = harness_run
    emulation = metadata["link_emulation"]
    assert emulation["method"] == links.emulation_method()
    by_name = {intf[5:]: link for intf, link in emulation["links"].items()}  # q + 4 hex
    assert set(by_name) == {"c1-wifi", "c1-lte", "srv-eth0"}
    wifi = by_name["c1-wifi"]
    assert wifi["method"] == emulation["method"]
    assert wifi["conditions"]["delay_ms"] == DELAY_MS
    assert wifi["conditions"]["loss_pct"] == LOSS_PCT
    assert wifi["conditions"]["bw_mbit"] == 50
    assert wifi["emulated_by"]["delay_ms"] != "none" and wifi["emulated_by"]["loss_pct"] != "none"
    assert by_name["c1-lte"]["method"] is None  # nothing asked beyond bandwidth
    if emulation["method"] == links.METHOD_NFQUEUE:
        report = wifi["delay_line"]  # the exit counters, after removal
        assert report["reason"] == "signal" and report["overruns"] == 0
        assert all(q["received"] > 0 for q in report["queues"].values())
    (fidelity,) = emulation["fidelity"]
    assert fidelity["asked"]["delay_ms"] == DELAY_MS
    for direction in (fidelity["forward"], fidelity["backward"]):
        assert direction["delay_ms"] == pytest.approx(DELAY_MS, abs=2)
        low, high = direction["loss_ci_pct"]
        assert low <= LOSS_PCT * 3 and high >= LOSS_PCT / 3  # 200 probes: a coarse interval


def test_cpu_pinning_is_recorded_and_ovs_gets_its_affinity_back(harness_run):
    _, _, metadata, ((before, _), (after, _)) = harness_run
    layout = metadata["cpu_pinning"]
    cpus = sorted(os.sched_getaffinity(0))
    assert layout["network"] == cpus[:1] and layout["endpoints"] == cpus[1:]
    for tid, mask in after.items():
        if tid in before:
            assert mask == before[tid]


def test_the_datapath_idle_time_is_recorded_and_put_back(harness_run):
    _, _, metadata, ((_, before), (_, after)) = harness_run
    assert metadata["ovs_datapath_max_idle_ms"] == EMULATION_MAX_IDLE_MS
    assert after == before


def test_a_pcap_per_host_interface_that_wire_pcap_reads_as_quic(harness_run):
    run_dir = harness_run[0]
    pcaps = _artifacts(run_dir) / "pcap"
    names = {p.name for p in pcaps.glob("*.pcap")}
    assert names == {"c1-wifi.pcap", "c1-lte.pcap", "srv-eth0.pcap"}
    counters = json.loads((pcaps / "captures.json").read_text())
    assert all(c["bytes"] > 10_000 and c["captured"] > 0 for c in counters), counters
    result = subprocess.run(
        [*QASM, "wire", "pcap", str(pcaps / "c1-wifi.pcap")],
        capture_output=True, text=True, timeout=120, cwd=REPOSITORY,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    packets = [json.loads(line) for line in result.stdout.splitlines()]
    assert packets[0]["type"] == "initial" and packets[0]["sni"] == "server.qasm.test"
    assert sum(p.get("form") == "short" for p in packets) > 100


def test_qlog_per_connection_end_readable_as_qlog_json(harness_run):
    qlogs = sorted((_artifacts(harness_run[0]) / "qlog").glob("*.qlog"))
    roles = sorted(path.stem.rpartition("-")[2] for path in qlogs)
    assert roles == ["client", "server"]
    assert len({path.stem.rpartition("-")[0] for path in qlogs}) == 1  # one ODCID, both ends
    for path in qlogs:
        document = json.loads(path.read_text())
        assert document["qlog_version"] == "0.3"
        (trace,) = document["traces"]
        assert trace["vantage_point"]["type"] in path.name
        names = {event["name"] for event in trace["events"]}
        assert "transport:packet_received" in names and "transport:packet_sent" in names


def test_the_record_judges_the_migration_on_the_wire(harness_run):
    """quic-interop-runner's migration checks, from the run's own client pcaps and key log
    (testbed/records/wire_checks.py): the active migration was validated with a
    PATH_CHALLENGE, moved to a DCID never used before, did not carry the old DCID onto the
    new path, and the server switched DCIDs too."""
    _, record, _, _ = harness_run
    wire = record["wire"]
    verdicts = tuple(wire[check] for check in CHECKS)
    assert verdicts == (True, True, False, True), wire["reasons"]
    assert wire["detail"]["undecryptable"] == 0 and wire["detail"]["opened"] > 0
    assert len(wire["detail"]["paths"]) == 2  # wifi, then lte


def test_the_switch_flow_table_is_dumped_after_the_run(harness_run):
    flows = (_artifacts(harness_run[0]) / "flows.txt").read_text()
    # One section per switch, headed by its bridge (one here: the dual-homed middlebox).
    header, reply = flows.splitlines()[:2]
    assert header.startswith("# q") and header.endswith("mb")
    assert reply.startswith("OFPST_FLOW reply (OF1.3)")
    assert "actions=CONTROLLER" in flows  # the table-miss entry
    assert "actions=output:" in flows  # baseline's learned forwarding
