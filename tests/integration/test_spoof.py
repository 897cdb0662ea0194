"""A reduced scenarios/spoof.yaml on the real emulation: client 1's host floods from its lte
port with other hosts' source addresses while both clients transfer through the qasm
middlebox. Nothing may move: no address located on a port it does not belong to, no rule
sending a victim's traffic to the attacker's port, and both transfers complete."""

from __future__ import annotations

import re

import pytest
import yaml

from tests.integration.conftest import REPOSITORY, read_records, run_scenario

pytestmark = pytest.mark.integration
ATTACKER_PORT = 3  # client 1's lte port on the dual-homed switch (topologies/clients.py)
ATTACKER_IP = "10.0.2.1"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    scenario = yaml.safe_load((REPOSITORY / "scenarios" / "spoof.yaml").read_text())
    scenario.update(variants=["qasm"], workload={"bytes": 3_000_000})
    run_dir = tmp_path_factory.mktemp("spoof")
    path = run_dir.parent / "spoof-reduced.yaml"
    path.write_text(yaml.safe_dump(scenario))
    run_scenario(path, run_dir, timeout_s=600)
    (flows,) = run_dir.glob("artifacts/*/flows.txt")
    return read_records(run_dir), flows.read_text()


def test_both_transfers_complete_under_the_spoofing_flood(run):
    records, _ = run
    assert len(records) == 2
    for record in records:
        assert record["completed"] and record["verified"], record["failure"]
        flood = record["flood"]
        assert flood["sent"]["spoofed_service_reply"] > 0
        assert ATTACKER_IP not in flood["spoofed_sources"]


def test_no_location_moved_and_the_spoofed_packets_were_dropped(run):
    records, _ = run
    for record in records:
        assert record["hijacked_locations"] == 0
        assert record["controller_drops"].get("spoofed_source", 0) > 0


def test_no_rule_sends_another_hosts_traffic_to_the_attackers_port(run):
    _, flows = run
    towards_attacker = [line for line in flows.splitlines() if f"output:{ATTACKER_PORT}" in line]
    for line in towards_attacker:
        destinations = re.findall(r"nw_dst=([\d.]+)", line)
        # L2 rules match the lte interface's own MAC; any IP match is the lte address.
        assert destinations in ([], [ATTACKER_IP]), line
