"""Twenty concurrent dual-homed clients, each migrating at its own moment (scenarios/clients.yaml),
through the qasm firewall and the baseline, on the real emulation."""

from __future__ import annotations

import pytest

from tests.integration.conftest import REPOSITORY, read_records, run_scenario

pytestmark = pytest.mark.integration
CLIENTS = 20


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("clients")
    printed = run_scenario(REPOSITORY / "scenarios" / "clients.yaml", run_dir)
    assert f"{CLIENTS}/{CLIENTS} ok" in printed
    return read_records(run_dir)


@pytest.mark.parametrize("variant", ["baseline", "qasm"])
def test_every_client_completes_its_own_migration(records, variant):
    mine = [r for r in records if r["variant"] == variant]
    assert sorted(r["client"] for r in mine) == sorted({r["client"] for r in mine})
    assert len(mine) == CLIENTS
    for record in mine:
        assert record["completed"] and record["verified"], (record["client"], record["failure"])
        assert record["migrated"] and record["disruption_ms"] is not None
    triggers = [r["migration_trigger"]["at_bytes"] for r in mine]
    assert len(set(triggers)) == CLIENTS  # each its own schedule
    assert all(200_000 <= t <= 800_000 for t in triggers)


def test_the_tracking_agent_serves_every_client_without_a_migration_packet_in(records):
    for record in (r for r in records if r["variant"] == "qasm"):
        assert record["agent_messages"] == 2, record["client"]
        assert record["migration_packet_ins"] == 0, record["client"]
