"""Aggregates records per variant and compares each variant with `baseline` (pure).

Ratios and differences are of medians, with a 95% percentile-bootstrap confidence interval
(seeded, so the same records always give the same summary). With fewer than two samples on
either side the interval is null and the comparison says so instead of pretending.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable, Iterable

from testbed.matrix import survival_matrix

SCHEMA_VERSION = 1
BOOTSTRAP_RESAMPLES = 2000
CONFIDENCE = 0.95
NUMERIC_METRICS = ("handshake_ms", "goodput_mbps", "disruption_ms", "packet_ins", "flow_mods")


def _values(records: Iterable[dict], metric: str) -> list[float]:
    return [r[metric] for r in records if r.get(metric) is not None]


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def bootstrap_interval(
    variant: list[float],
    baseline: list[float],
    compare: Callable[[float, float], float],
    seed: int,
) -> list[float] | None:
    """CI of compare(median(variant), median(baseline)) by resampling both groups."""
    if len(variant) < 2 or len(baseline) < 2:
        return None
    rng = random.Random(seed)
    estimates = []
    for _ in range(BOOTSTRAP_RESAMPLES):
        a = statistics.median(rng.choices(variant, k=len(variant)))
        b = statistics.median(rng.choices(baseline, k=len(baseline)))
        if b != 0 or compare is _difference:
            estimates.append(compare(a, b))
    if not estimates:
        return None
    estimates.sort()
    tail = (1 - CONFIDENCE) / 2
    low = estimates[int(tail * (len(estimates) - 1))]
    high = estimates[int((1 - tail) * (len(estimates) - 1))]
    return [low, high]


def _ratio(a: float, b: float) -> float:
    return a / b


def _difference(a: float, b: float) -> float:
    return a - b


def _comparison(variant: list[float], baseline: list[float], kind: str, seed: int) -> dict:
    compare = _ratio if kind == "ratio" else _difference
    a, b = _median(variant), _median(baseline)
    if a is None or b is None or (kind == "ratio" and b == 0):
        return {"estimate": None, "ci95": None, "note": "not enough completed samples"}
    interval = bootstrap_interval(variant, baseline, compare, seed)
    neutral = 1.0 if kind == "ratio" else 0.0
    if interval is None:
        note = "fewer than 2 samples per side: no confidence interval"
    elif interval[0] <= neutral <= interval[1]:
        note = "no difference detectable"
    else:
        note = "difference detected"
    return {"estimate": compare(a, b), "ci95": interval, "note": note}


def summarize_group(records: list[dict]) -> dict:
    group = {
        "runs": len(records),
        "completed": sum(r["completed"] for r in records),
        "verified": sum(r["verified"] for r in records),
        "failures": sorted({r["failure"] for r in records if r.get("failure")}),
    }
    for metric in NUMERIC_METRICS:
        group[f"median_{metric}"] = _median(_values(records, metric))
    return group


def summarize(records: list[dict], seed: int = 0) -> dict:
    """summary.json: per variant, per (variant, migration), and comparisons to baseline."""
    variants = sorted({r["variant"] for r in records}, key=lambda v: (v != "baseline", v))
    by_variant = {v: [r for r in records if r["variant"] == v] for v in variants}
    summary: dict = {"schema_version": SCHEMA_VERSION, "variants": {}, "by_migration": {}}
    for variant, group in by_variant.items():
        summary["variants"][variant] = summarize_group(group)
        for kind in sorted({str(r["migration"]) for r in group}):
            subset = [r for r in group if str(r["migration"]) == kind]
            summary["by_migration"].setdefault(variant, {})[kind] = summarize_group(subset)
    baseline = by_variant.get("baseline")
    summary["comparison_with_baseline"] = {}
    if baseline:
        for variant, group in by_variant.items():
            if variant == "baseline":
                continue
            summary["comparison_with_baseline"][variant] = {
                "goodput_ratio": _comparison(
                    _values(group, "goodput_mbps"), _values(baseline, "goodput_mbps"), "ratio", seed
                ),
                "handshake_ms_difference": _comparison(
                    _values(group, "handshake_ms"), _values(baseline, "handshake_ms"), "diff", seed
                ),
                "disruption_ms_difference": _comparison(
                    _values(group, "disruption_ms"),
                    _values(baseline, "disruption_ms"),
                    "diff",
                    seed,
                ),
                "completed_fraction": summary["variants"][variant]["completed"] / len(group),
                "baseline_completed_fraction": summary["variants"]["baseline"]["completed"]
                / len(baseline),
            }
    summary["matrix"] = survival_matrix(records)
    return summary


def _format(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def format_table(records: list[dict]) -> str:
    """One row per (variant, migration kind): the numbers a reader checks first."""
    header = (
        "variant", "migration", "runs", "completed", "verified", "handshake_ms",
        "goodput_mbps", "disruption_ms", "packet_ins", "flow_mods", "failure",
    )  # fmt: skip
    rows = [header]
    keys = sorted(
        {(r["variant"], str(r["migration"])) for r in records},
        key=lambda k: (k[0] != "baseline", k),
    )
    for variant, kind in keys:
        group = summarize_group(
            [r for r in records if r["variant"] == variant and str(r["migration"]) == kind]
        )
        failure = group["failures"][0] if group["failures"] else ""
        rows.append(
            (
                variant,
                kind,
                str(group["runs"]),
                str(group["completed"]),
                str(group["verified"]),
                _format(group["median_handshake_ms"]),
                _format(group["median_goodput_mbps"]),
                _format(group["median_disruption_ms"]),
                _format(group["median_packet_ins"]),
                _format(group["median_flow_mods"]),
                failure[:90] + ("..." if len(failure) > 90 else ""),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    lines = [
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])) + "  " + row[-1]
        for row in rows
    ]
    return "\n".join(line.rstrip() for line in lines)
