"""The core claim for the firewall, on real Mininet + OVS + os-ken + aioquic: every variant
under every migration kind (scenarios/firewall.yaml)."""

from __future__ import annotations

import subprocess

import pytest

from tests.integration.conftest import (
    QASM,
    REPOSITORY,
    assert_controller_logged_no_exception,
    read_records,
)

pytestmark = pytest.mark.integration
KINDS = ("nat-rebind", "addr-rebind", "active")
SURVIVES = {
    "baseline": set(KINDS),
    "tuple": set(),
    "cid": {"nat-rebind", "addr-rebind"},
    "qasm": set(KINDS),
}


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("firewall")
    result = subprocess.run(
        [*QASM, "run", str(REPOSITORY / "scenarios" / "firewall.yaml"), "--out", str(run_dir)],
        capture_output=True, text=True, timeout=900, cwd=REPOSITORY,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert_controller_logged_no_exception(run_dir)
    return {(r["variant"], r["migration"]): r for r in read_records(run_dir)}


@pytest.mark.parametrize("variant", sorted(SURVIVES))
@pytest.mark.parametrize("kind", KINDS)
def test_survival_matrix(records, variant, kind):
    record = records[(variant, kind)]
    assert record["migrated"], record["failure"]
    if kind in SURVIVES[variant]:
        assert record["completed"] and record["verified"], record["failure"]
    else:
        assert not record["completed"]
        assert "short header" in record["failure"], record["failure"]


@pytest.mark.parametrize("kind", KINDS)
def test_qasm_announced_migrations_cause_no_packet_in(records, kind):
    record = records[("qasm", kind)]
    announce, retire = record["agent_exchanges"]
    assert announce["what"] == "announce" and announce["accepted"], announce
    assert retire["what"] == "retire" and retire["accepted"], retire
    assert record["migration_packet_ins"] == 0
    assert record["agent_messages"] == 2 and 0 < record["agent_bytes"] < 1024


def test_cid_pays_packet_ins_for_a_rebinding_that_qasm_avoids(records):
    assert records[("cid", "nat-rebind")]["migration_packet_ins"] >= 1
    assert records[("baseline", "nat-rebind")]["migration_packet_ins"] == 0
