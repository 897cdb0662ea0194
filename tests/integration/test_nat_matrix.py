"""Source NAT in every variant under every migration kind (scenarios/nat.yaml), on the real
emulation: the server sees the address change, and how many ports stay held afterwards."""

from __future__ import annotations

import json
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
HELD_AFTER_ONE_MIGRATION = {"tuple": 2, "cid": 2, "qasm": 1}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("nat")
    result = subprocess.run(
        [*QASM, "run", str(REPOSITORY / "scenarios" / "nat.yaml"), "--out", str(run_dir)],
        capture_output=True, text=True, timeout=900, cwd=REPOSITORY,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert_controller_logged_no_exception(run_dir)
    return run_dir, {(r["variant"], r["migration"]): r for r in read_records(run_dir)}


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
