"""Source NAT in every variant under every migration kind (the nat rows of
scenarios/matrix.yaml), on the real emulation: the server sees the address change, and how
many ports stay held afterwards."""

from __future__ import annotations

import json

import pytest

from tests.integration.conftest import records_of_function

pytestmark = pytest.mark.integration
KINDS = ("nat-rebind", "addr-rebind", "active")
HELD_AFTER_ONE_MIGRATION = {"tuple": 2, "cid": 2, "qasm": 1}


@pytest.fixture(scope="module")
def run(matrix_run):
    return matrix_run, records_of_function(matrix_run, "nat")


@pytest.mark.parametrize("variant", sorted(HELD_AFTER_ONE_MIGRATION))
@pytest.mark.parametrize("kind", KINDS)
def test_mappings_held_after_a_migration(run, variant, kind):
    record = run[1][(variant, kind)]
    assert record["completed"] and record["verified"], record["failure"]
    assert record["nat_mappings"] == HELD_AFTER_ONE_MIGRATION[variant]


@pytest.mark.parametrize("kind", KINDS)
def test_the_server_sees_the_public_address_change_with_the_migration(run, kind):
    run_dir, records = run
    (events_file,) = (run_dir / records[("qasm", kind)]["artifacts"]).glob("server-events-*.jsonl")
    events = events_file.read_text()
    addresses = [json.loads(line)["addr"] for line in events.splitlines() if "first_data" in line]
    assert [a[0] for a in addresses] == ["10.0.100.1", "10.0.100.1"]  # RFC 9312 §4.3
    assert addresses[0][1] != addresses[1][1]
