"""The core claim for the firewall, on real Mininet + OVS + os-ken + aioquic: every variant
under every migration kind (the firewall rows of scenarios/matrix.yaml)."""

from __future__ import annotations

import pytest

from tests.integration.conftest import records_of_function

pytestmark = pytest.mark.integration
KINDS = ("nat-rebind", "addr-rebind", "active")
SURVIVES = {
    "baseline": set(KINDS),
    "tuple": set(),
    "cid": {"nat-rebind", "addr-rebind"},
    "qasm": set(KINDS),
}


@pytest.fixture(scope="module")
def records(matrix_run):
    return records_of_function(matrix_run, "firewall")


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
