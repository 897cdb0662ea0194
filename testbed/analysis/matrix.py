"""The survival/policy matrix: one cell per (functions, sweep point, variant, migration
kind) (pure).

A cell answers the issue's question for that combination: did the connection survive the
migration, and did the middlebox keep its policy while it did? Outcomes, worst first:

    breaks   some run did not complete or did not verify its payload
    leaks    every run completed, but the policy slipped in some run: bytes admitted above
             the rate limit (`leakage_bytes` > 0), or the NAT still holds the retired path's
             mapping (`nat_mappings` > 1: one connection, one live path)
    moved    every run completed, but the load balancer sent the connection to another
             backend (`backend_changed`), which only a stateless backend could survive
    survives every run completed, verified, and kept its policy
    refused  no run got through its handshake: a policy (e.g. the SNI deny list) turned the
             connection away before it started, which is the policy working, not a migration
             breaking it

The cell's `detail` names the evidence (the worst figure over its runs), so a reader can tell
a leak of 300 kB from one of 3 kB. A record without a policy figure (baseline keeps no state,
so it has no limit to leak from) counts as keeping its policy.
"""

from __future__ import annotations

from collections.abc import Iterable

OUTCOMES = ("survives", "refused", "moved", "leaks", "breaks")
# One connection after migrating has one live path, hence at most one NAT mapping.
NAT_MAPPINGS_PER_CONNECTION = 1


def functions_label(record: dict) -> str:
    return "+".join(record.get("functions") or ()) or "none"


def point_parameters(record: dict) -> str:
    """The sweep values other than functions, e.g. "workload.server_name=a.example"."""
    parameters = record.get("parameters") or {}
    return " ".join(f"{k}={v}" for k, v in parameters.items() if k != "functions")


def point_label(record: dict) -> str:
    """Functions and sweep values of a record's point, e.g. "nat workload.bytes=1000000"."""
    return row_label(functions_label(record), point_parameters(record))


def row_label(function: str, point: str) -> str:
    """How a matrix row (and a result-table point) is named: functions, then sweep values."""
    return f"{function} {point}" if point else function


def _policy_evidence(records: list[dict]) -> tuple[str, list[str]]:
    outcome, detail = "survives", []
    leakage = max((r.get("leakage_bytes") or 0 for r in records), default=0)
    if leakage > 0:
        outcome = "leaks"
        detail.append(f"up to {leakage} B above the rate limit")
    # Per hop: behind a chain of NATs each hop holds its own mapping of the connection.
    mappings = max((max(_per_hop_mappings(r)) for r in records), default=0)
    if mappings > NAT_MAPPINGS_PER_CONNECTION:
        outcome = "leaks"
        detail.append(f"up to {mappings} NAT mappings held on a hop")
    moved = sum(1 for r in records if r.get("backend_changed"))
    if moved:
        outcome = outcome if outcome == "leaks" else "moved"
        detail.append(f"backend changed in {moved}/{len(records)} runs")
    return outcome, detail


def _per_hop_mappings(record: dict) -> list[int]:
    per_hop = (record.get("per_hop") or {}).get("nat_mappings")
    if per_hop:
        return [m or 0 for m in per_hop]
    return [record.get("nat_mappings") or 0]  # records from before per-hop counts


def matrix_cell(records: list[dict]) -> dict:
    """Aggregates the records of one (functions, variant, migration kind)."""
    first = records[0]
    completed = sum(1 for r in records if r.get("completed"))
    verified = sum(1 for r in records if r.get("completed") and r.get("verified"))
    outcome, detail = _policy_evidence([r for r in records if r.get("completed")])
    if not any(r.get("handshake_ms") is not None for r in records):
        outcome = "refused"
        failures = sorted({r["failure"] for r in records if r.get("failure")})
        detail = [f"no handshake in {len(records)} runs"] + failures[:1]
    elif verified < len(records):
        outcome = "breaks"
        failures = sorted({r["failure"] for r in records if r.get("failure")})
        detail = [f"{len(records) - verified}/{len(records)} runs lost the connection"]
        detail += failures[:1]
    return {
        "function": functions_label(first),
        "point": point_parameters(first),
        "variant": first["variant"],
        "migration": str(first["migration"]),
        "runs": len(records),
        "completed": completed,
        "verified": verified,
        "outcome": outcome,
        "detail": "; ".join(detail),
    }


def survival_matrix(records: Iterable[dict]) -> list[dict]:
    """Cells in a stable order: functions, then variant (baseline first), then kind."""
    groups: dict[tuple[str, str, str, str], list[dict]] = {}
    for record in records:
        key = (
            functions_label(record),
            point_parameters(record),
            record["variant"],
            str(record["migration"]),
        )
        groups.setdefault(key, []).append(record)
    order = sorted(groups, key=lambda k: (k[0], k[1], k[2] != "baseline", k[2], k[3]))
    return [matrix_cell(groups[key]) for key in order]


def format_matrix(cells: list[dict]) -> str:
    """Rows (functions, variant) × columns (migration kind); each entry an outcome."""
    if not cells:
        return ""
    kinds = sorted({c["migration"] for c in cells})
    rows: dict[tuple[str, str], dict[str, str]] = {}
    for cell in cells:
        function = row_label(cell["function"], cell.get("point", ""))
        row = rows.setdefault((function, cell["variant"]), {})
        row[cell["migration"]] = cell["outcome"]
    header = ("function", "variant", *kinds)
    table = [header] + [
        (function, variant, *(row.get(kind, "-") for kind in kinds))
        for (function, variant), row in rows.items()
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip() for line in table
    )
