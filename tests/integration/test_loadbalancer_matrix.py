"""A load balancer in front of 3 backends in every variant under every migration kind
(the loadbalancer rows of scenarios/matrix.yaml), on the real emulation."""

from __future__ import annotations

import pytest

from tests.integration.conftest import records_of_function

pytestmark = pytest.mark.integration
KINDS = ("nat-rebind", "addr-rebind", "active")


@pytest.fixture(scope="module")
def records(matrix_run):
    return records_of_function(matrix_run, "loadbalancer")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("variant", ["baseline", "qasm", "quic-lb"])
def test_survives_every_kind(records, variant, kind):
    record = records[(variant, kind)]
    assert record["completed"] and record["verified"], record["failure"]
    assert record["backend_changed"] in (None, False)


@pytest.mark.parametrize("kind", KINDS)
def test_tuple_survives_exactly_when_the_hash_kept_the_backend(records, kind):
    record = records[("tuple", kind)]
    assert record["backend_changed"] is not None
    assert record["completed"] == (not record["backend_changed"]), record


@pytest.mark.parametrize("kind", KINDS)
def test_cid_keeps_the_backend_on_rebindings_only(records, kind):
    record = records[("cid", kind)]
    if kind == "active":
        assert record["completed"] == (not record["backend_changed"]), record
    else:
        assert record["completed"] and record["backend_changed"] is False, record["failure"]


def test_qasm_migrations_cost_no_packet_in(records):
    assert [records[("qasm", kind)]["migration_packet_ins"] for kind in KINDS] == [0, 0, 0]
