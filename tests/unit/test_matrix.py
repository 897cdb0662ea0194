"""The survival/policy matrix from records."""

from __future__ import annotations

from testbed.analysis.matrix import format_matrix, survival_matrix


def record(variant="qasm", kind="active", functions=("ratelimit",), **fields):
    base = {
        "variant": variant,
        "migration": kind,
        "functions": list(functions),
        "completed": True,
        "verified": True,
        "handshake_ms": 10.0,
        "failure": None,
        "leakage_bytes": 0,
        "nat_mappings": None,
        "backend_changed": None,
    }
    return base | fields


def test_clean_runs_survive():
    (cell,) = survival_matrix([record(), record()])
    assert cell["outcome"] == "survives"
    assert (cell["runs"], cell["completed"], cell["verified"]) == (2, 2, 2)
    assert cell["function"] == "ratelimit" and cell["detail"] == ""


def test_one_broken_run_breaks_the_cell_and_names_the_failure():
    broken = record(completed=False, verified=False, failure="short header on a new 5-tuple")
    (cell,) = survival_matrix([record(), broken])
    assert cell["outcome"] == "breaks"
    assert "1/2 runs lost the connection" in cell["detail"]
    assert "short header" in cell["detail"]


def test_leakage_and_stale_nat_mappings_leak():
    cells = survival_matrix(
        [
            record(variant="tuple", leakage_bytes=344_000),
            record(variant="cid", functions=("nat",), leakage_bytes=None, nat_mappings=2),
            record(variant="qasm", functions=("nat",), leakage_bytes=None, nat_mappings=1),
        ]
    )
    outcomes = {(c["function"], c["variant"]): (c["outcome"], c["detail"]) for c in cells}
    assert outcomes[("ratelimit", "tuple")] == ("leaks", "up to 344000 B above the rate limit")
    assert outcomes[("nat", "cid")] == ("leaks", "up to 2 NAT mappings held on a hop")
    assert outcomes[("nat", "qasm")] == ("survives", "")


def test_behind_a_chain_each_hop_may_hold_one_mapping_of_the_connection():
    chained = {"nat_mappings": 3, "leakage_bytes": None, "functions": ("nat",)}
    cells = survival_matrix(
        [
            record(variant="qasm", **chained, per_hop={"nat_mappings": [1, 1, 1]}),
            record(variant="cid", **chained, per_hop={"nat_mappings": [1, 2, 0]}),
        ]
    )
    outcomes = {c["variant"]: c["outcome"] for c in cells}
    assert outcomes == {"qasm": "survives", "cid": "leaks"}


def test_backend_change_that_survived_is_moved():
    (cell,) = survival_matrix(
        [record(variant="tuple", functions=("loadbalancer",), backend_changed=True)]
    )
    assert cell["outcome"] == "moved" and "backend changed in 1/1" in cell["detail"]


def test_cells_are_grouped_and_ordered_baseline_first():
    records = [
        record(variant="qasm", kind="active"),
        record(variant="baseline", kind="nat-rebind", leakage_bytes=None),
        record(variant="baseline", kind="active", leakage_bytes=None),
        record(variant="qasm", kind="active", functions=("ratelimit", "nat"), nat_mappings=1),
    ]
    keys = [(c["function"], c["variant"], c["migration"]) for c in survival_matrix(records)]
    assert keys == [
        ("ratelimit", "baseline", "active"),
        ("ratelimit", "baseline", "nat-rebind"),
        ("ratelimit", "qasm", "active"),
        ("ratelimit+nat", "qasm", "active"),
    ]


def test_format_matrix_lays_kinds_out_as_columns():
    text = format_matrix(
        survival_matrix(
            [
                record(variant="tuple", kind="active", completed=False, verified=False),
                record(variant="tuple", kind="nat-rebind", leakage_bytes=5),
            ]
        )
    )
    header, row = text.splitlines()
    assert header.split() == ["function", "variant", "active", "nat-rebind"]
    assert row.split() == ["ratelimit", "tuple", "breaks", "leaks"]


def test_a_connection_turned_away_before_its_handshake_is_refused_not_broken():
    refused = record(
        completed=False, verified=False, handshake_ms=None, failure="SNI matches sni_deny"
    )
    (cell,) = survival_matrix([refused])
    assert cell["outcome"] == "refused"
    assert cell["detail"] == "no handshake in 1 runs; SNI matches sni_deny"


def test_sweep_values_other_than_functions_split_cells():
    cells = survival_matrix(
        [
            record(parameters={"functions": ["ratelimit"], "workload.bytes": 1000}),
            record(parameters={"functions": ["ratelimit"], "workload.bytes": 2000}),
        ]
    )
    assert [c["point"] for c in cells] == ["workload.bytes=1000", "workload.bytes=2000"]
