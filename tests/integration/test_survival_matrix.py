"""The survival/policy matrix of scenarios/matrix.yaml, as `qasm run` writes it into
summary.json: the issue's expectations per function, variant and migration kind."""

from __future__ import annotations

import json

import pytest

from tests.integration.conftest import records_of_function

pytestmark = pytest.mark.integration
KINDS = ("nat-rebind", "addr-rebind", "active")
FUNCTIONS = ("firewall", "ratelimit", "nat", "loadbalancer")
# Outcomes that hold whatever a hash decides; "chance" cells are checked against the record.
EXPECTED = {
    "baseline": dict.fromkeys(KINDS, "survives"),
    "qasm": dict.fromkeys(KINDS, "survives"),
    "cid": {"nat-rebind": "survives", "addr-rebind": "survives", "active": ("breaks", "leaks")},
    "tuple": dict.fromkeys(KINDS, ("breaks", "leaks")),
}


@pytest.fixture(scope="module")
def cells(matrix_run):
    summary = json.loads((matrix_run / "summary.json").read_text())
    return {(c["function"], c["variant"], c["migration"]): c for c in summary["matrix"]}


def test_every_function_variant_and_kind_has_a_cell(cells):
    for function in FUNCTIONS:
        variants = [*EXPECTED, *(["quic-lb"] if function == "loadbalancer" else [])]
        for variant in variants:
            for kind in KINDS:
                assert (function, variant, kind) in cells, (function, variant, kind)
    assert not [key for key in cells if key[1] == "quic-lb" and key[0] != "loadbalancer"]


@pytest.mark.parametrize("function", ("firewall", "ratelimit", "nat"))
@pytest.mark.parametrize("variant", sorted(EXPECTED))
@pytest.mark.parametrize("kind", KINDS)
def test_outcome_per_function_variant_and_kind(cells, function, variant, kind):
    cell = cells[(function, variant, kind)]
    expected = EXPECTED[variant][kind]
    if function == "nat" and variant in ("tuple", "cid"):
        # Neither learns that the old path is retired: its mapping stays held until the
        # idle timeout, after any kind, even where the connection itself survives.
        expected = "leaks"
        assert "NAT mappings held" in cell["detail"], cell
    assert cell["outcome"] in ((expected,) if isinstance(expected, str) else expected), cell


@pytest.mark.parametrize("kind", KINDS)
def test_load_balancer_cells_follow_what_the_hash_did(matrix_run, cells, kind):
    records = records_of_function(matrix_run, "loadbalancer")
    for variant in ("baseline", "qasm", "quic-lb"):
        assert cells[("loadbalancer", variant, kind)]["outcome"] == "survives"
    for variant in ("tuple", "cid"):
        record, cell = records[(variant, kind)], cells[("loadbalancer", variant, kind)]
        if record["completed"] and record["verified"]:
            assert cell["outcome"] == ("moved" if record["backend_changed"] else "survives")
        else:
            assert cell["outcome"] == "breaks" and record["backend_changed"], record
