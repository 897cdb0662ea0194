"""Aggregates records per variant and compares each variant with `baseline` (pure).

Ratios and differences are of medians, with a 95% percentile-bootstrap confidence interval
(scipy.stats.bootstrap, both groups resampled independently, seeded, so the same records
always give the same summary). With fewer than two samples on
either side the interval is null and the comparison says so instead of pretending.

Deterministic counters (packet-ins, flow-mods, migration packet-ins, agent messages and bytes,
state entries when the records carry them) are reported exactly, never as medians: per
variant and per (variant, migration kind) their `total`, `per_connection` (total / runs),
`per_migration` (total over the runs that migrated / those runs) and
`surviving_per_connection` (the same over the runs that completed and verified). Only the last
is stable enough for a CI gate: a connection the middlebox drops keeps retransmitting until its
idle timeout, so its packet-in count is a matter of timing, not of the code.

Controller CPU seconds are per connection (the runner divides a run's CPU by its clients) and
compared with baseline as a ratio with the same bootstrap interval. `comparison_by_migration`
repeats the comparison per migration kind. When records carry sweep `parameters`, `points`
holds one full summary per distinct parameter set (the top-level keys then mix the points and
are kept only for compatibility).

Failures are grouped by reason (`failure_reasons`): two failure texts that differ only in
numbers, IPv4 addresses, ports or hex identifiers (packet counts, the migrated 5-tuple, a CID)
are one reason, shown by the first real text of the group. At 1,000 connections per run most
failures share a few reasons, and a reader wants their counts, not a thousand lines. The
progress line after each run, the result table and the report all group with it.
"""

from __future__ import annotations

import json
import re
import statistics
import warnings
from collections.abc import Callable, Iterable

import numpy as np
from scipy import stats

from testbed.analysis.matrix import point_label, survival_matrix

SCHEMA_VERSION = 1
BOOTSTRAP_RESAMPLES = 2000
CONFIDENCE = 0.95
NUMERIC_METRICS = (
    "handshake_ms",
    "opening_ms",
    "goodput_mbps",
    "disruption_ms",
    "packet_ins",
    "flow_mods",
    "controller_cpu_s",
)
# Exact per-record counts, each reported where the records carry it (`conntrack_entries`:
# the kernel variants).
COUNTERS = (
    "packet_ins",
    "flow_mods",
    "migration_packet_ins",
    "agent_messages",
    "agent_bytes",
    "state_entries",
    "conntrack_entries",
)
# name -> (record field, "ratio" | "diff"); every variant against baseline.
COMPARISONS = {
    "goodput_ratio": ("goodput_mbps", "ratio"),
    "handshake_ms_difference": ("handshake_ms", "diff"),
    # The overhead targets are relative ("handshake within 5%"), so the ratio as well.
    "handshake_ratio": ("handshake_ms", "ratio"),
    # Agent mode ahead admits a connection before its handshake: what opening it took in all.
    "opening_ratio": ("opening_ms", "ratio"),
    "disruption_ms_difference": ("disruption_ms", "diff"),
    "controller_cpu_ratio": ("controller_cpu_s", "ratio"),
}


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
    """The CONFIDENCE percentile-bootstrap interval of compare(median(variant),
    median(baseline)), resampling both groups independently (scipy.stats.bootstrap); None
    with fewer than two samples on either side."""
    if len(variant) < 2 or len(baseline) < 2:
        return None

    def statistic(a, b, axis):
        return compare(np.median(a, axis=axis), np.median(b, axis=axis))

    # A ratio of medians that are both 0 is NaN in some resamples: scipy then warns on
    # stderr (in the middle of the progress lines) and the interval is None below.
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        result = stats.bootstrap(
            (np.asarray(variant, dtype=float), np.asarray(baseline, dtype=float)),
            statistic,
            n_resamples=BOOTSTRAP_RESAMPLES,
            confidence_level=CONFIDENCE,
            method="percentile",
            vectorized=True,
            random_state=np.random.default_rng(seed),
        )
    low, high = result.confidence_interval
    if not (np.isfinite(low) and np.isfinite(high)):
        return None  # a resampled baseline median of 0 under a ratio
    return [float(low), float(high)]


def median_interval(values: list[float], seed: int) -> list[float] | None:
    """The CONFIDENCE percentile-bootstrap interval of one group's median (None below two
    samples): what a table of medians against a swept parameter shows as its spread."""
    if len(values) < 2:
        return None
    result = stats.bootstrap(
        (np.asarray(values, dtype=float),),
        np.median,
        n_resamples=BOOTSTRAP_RESAMPLES,
        confidence_level=CONFIDENCE,
        method="percentile",
        vectorized=True,
        random_state=np.random.default_rng(seed),
    )
    return [float(result.confidence_interval.low), float(result.confidence_interval.high)]


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


# Replaced, in this order, by placeholders before failure texts are compared: an IPv4
# address with its optional port, a hex identifier of 8+ digits holding a decimal digit (a
# CID; asking for a decimal digit keeps plain words out), then any other number.
_ADDRESS = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b")
_HEX = re.compile(r"\b(?=[0-9a-f]*\d)[0-9a-f]{8,}\b", re.IGNORECASE)
_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def failure_key(text: str) -> str:
    """The form failure texts are grouped on: numbers, addresses, ports and hex IDs replaced."""
    text = _ADDRESS.sub("<addr>", text)
    text = _HEX.sub("<hex>", text)
    return " ".join(_NUMBER.sub("<n>", text).split())


def failure_reason(record: dict) -> str | None:
    """Why this connection failed (None when it completed and verified)."""
    if record.get("completed") and record.get("verified"):
        return None
    if record.get("failure"):
        return record["failure"]
    return "completed but not verified" if record.get("completed") else "no reason recorded"


def failure_reasons(records: Iterable[dict]) -> list[dict]:
    """The failed records grouped by `failure_key` of their reason, most frequent first (ties
    in order of appearance): `reason` is the group's first real text, `count` its records,
    `clients` the distinct clients that failed so, in order of appearance."""
    groups: dict[str, dict] = {}
    for record in records:
        reason = failure_reason(record)
        if reason is None:
            continue
        group = groups.setdefault(
            failure_key(reason), {"reason": reason, "count": 0, "clients": {}}
        )
        group["count"] += 1
        if record.get("client") is not None:
            group["clients"][record["client"]] = None  # a dict: ordered, and O(1) to look up
    ordered = sorted(groups.values(), key=lambda group: -group["count"])  # stable: ties in order
    return [{**group, "clients": list(group["clients"])} for group in ordered]


MIN_REASON_CHARS = 40  # "connection closed by idle timeout (3 s…" still says what happened
# Characters of reason text in a row of `format_table`: one reason this long keeps the
# middlebox's drop evidence of the usual "idle timeout (…); middlebox dropped N packets of
# ADDR>ADDR: reason (…)" (121 characters in a run of scenarios/default.yaml).
TABLE_FAILURE_WIDTH = 130


def _asides(text: str) -> list[tuple[int, int]]:
    """The spans of top-level parenthesised asides in `text`, each with its leading space."""
    spans, depth, start = [], 0, 0
    for index, char in enumerate(text):
        if char == "(":
            if depth == 0:
                start = index - 1 if index and text[index - 1] == " " else index
            depth += 1
        elif char == ")" and depth:
            depth -= 1
            if depth == 0:
                spans.append((start, index + 1))
    return spans


def shorten(text: str, limit: int) -> str:
    """`text` in at most `limit` characters. Parenthesised asides become "(…)" first, the
    last one first (failure texts put detail there: "idle timeout (3 s without a packet
    ...); middlebox dropped ...: not_an_initial (short header ...)" keeps what was dropped
    and why); then the tail is cut, at a word boundary when one is near, and ends with …"""
    text = " ".join(text.split())
    for start, end in reversed(_asides(text)):
        if len(text) <= limit:
            return text
        text = text[:start] + (" (…)" if text[start] == " " else "(…)") + text[end:]
        text = text.replace(" (…) (…)", " (…)")
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    if space > limit // 2:
        cut = cut[:space]
    return cut.removesuffix(" (…)").rstrip(" ;,:(") + "…"


def _shares(width: int, texts: list[str]) -> list[int]:
    """`width` characters shared among `texts`: a short one gets what it needs, the long ones
    split the rest evenly (so "5× payload mismatch" leaves its room to a long reason)."""
    shares = [0] * len(texts)
    left, waiting = width, sorted(range(len(texts)), key=lambda i: len(texts[i]))
    while waiting:
        index = waiting.pop(0)
        shares[index] = min(len(texts[index]), left // (len(waiting) + 1))
        left -= shares[index]
    return shares


def failure_text(
    reasons: list[dict],
    *,
    max_reasons: int = 3,
    width: int = 120,
    clients: int = 0,
    times: str = "× ",
) -> str:
    """`15× idle timeout; 5× payload mismatch` from `failure_reasons`: the `max_reasons` most
    frequent, their texts sharing `width` characters (`_shares`; one reason gets them all, so
    its evidence after the first clause survives; never under MIN_REASON_CHARS each), with up
    to `clients` example clients each, then how many other reasons and failures were left out."""
    shown, rest = reasons[:max_reasons], reasons[max_reasons:]
    texts = [" ".join(group["reason"].split()) for group in shown]
    parts = []
    for group, text, limit in zip(shown, texts, _shares(width, texts), strict=True):
        part = f"{group['count']}{times}{shorten(text, max(MIN_REASON_CHARS, limit))}"
        if clients and group["clients"]:
            examples = ", ".join(map(str, group["clients"][:clients]))
            more = ", …" if len(group["clients"]) > clients else ""
            part += f" ({examples}{more})"
        parts.append(part)
    if rest:
        others = "reason" if len(rest) == 1 else "reasons"
        parts.append(f"+{len(rest)} other {others} ({sum(g['count'] for g in rest)} failed)")
    return "; ".join(parts)


def summarize_group(records: list[dict]) -> dict:
    group = {
        "runs": len(records),
        "completed": sum(r["completed"] for r in records),
        "verified": sum(r["verified"] for r in records),
        "failures": sorted({r["failure"] for r in records if r.get("failure")}),
        "failure_reasons": failure_reasons(records),
    }
    for metric in NUMERIC_METRICS:
        group[f"median_{metric}"] = _median(_values(records, metric))
    group["counters"] = counters(records)
    return group


def _exact_mean(total: int, count: int) -> float | int | None:
    """total / count, as an int when it divides (so equal counts compare equal in JSON)."""
    if not count:
        return None
    return total // count if total % count == 0 else round(total / count, 6)


def counters(records: list[dict]) -> dict:
    """Exact totals and means of each counter the records carry (see the module docstring)."""
    migrated = [r for r in records if r.get("migrated") or r.get("migration_detail")]
    surviving = [r for r in records if r.get("completed") and r.get("verified")]
    result = {}
    for name in COUNTERS:
        if not any(r.get(name) is not None for r in records):
            continue
        total = sum(r.get(name) or 0 for r in records)
        migrated_total = sum(r.get(name) or 0 for r in migrated)
        surviving_total = sum(r.get(name) or 0 for r in surviving)
        result[name] = {
            "total": total,
            "per_connection": _exact_mean(total, len(records)),
            "per_migration": _exact_mean(migrated_total, len(migrated)),
            "surviving_per_connection": _exact_mean(surviving_total, len(surviving)),
        }
    return result


def compare_groups(group: list[dict], baseline: list[dict], seed: int) -> dict:
    """Every COMPARISONS entry of `group` against `baseline`, plus completed fractions."""
    result = {
        name: _comparison(_values(group, field), _values(baseline, field), kind, seed)
        for name, (field, kind) in COMPARISONS.items()
    }
    result["completed_fraction"] = sum(r["completed"] for r in group) / len(group)
    result["baseline_completed_fraction"] = sum(r["completed"] for r in baseline) / len(baseline)
    return result


STATE_KEY = "middlebox.state"
# What shared state costs a surviving connection, Redis against memory.
STATE_COMPARISONS = ("goodput_ratio", "handshake_ratio", "disruption_ms_difference")


def state_comparison(records: list[dict], seed: int) -> list[dict]:
    """Where a run sweeps `middlebox.state` over memory and redis: per variant, migration
    kind and the other sweep values, each STATE_COMPARISONS entry of the redis runs against
    the memory runs (the same bootstrap intervals as against baseline)."""
    rows = []
    groups: dict[tuple, dict[str, list[dict]]] = {}
    for record in records:
        parameters = dict(record.get("parameters") or {})
        state = parameters.pop(STATE_KEY, None)
        if state not in ("memory", "redis"):
            continue
        key = (record["variant"], str(record["migration"]), parameters_label(parameters))
        groups.setdefault(key, {"memory": [], "redis": []})[state].append(record)
    for (variant, kind, point), states in sorted(groups.items()):
        if not (states["memory"] and states["redis"]):
            continue
        comparison = compare_groups(states["redis"], states["memory"], seed)
        rows.append(
            {
                "variant": variant,
                "migration": kind,
                "point": point,
                **{name: comparison[name] for name in STATE_COMPARISONS},
                "redis_completed_fraction": comparison["completed_fraction"],
                "memory_completed_fraction": comparison["baseline_completed_fraction"],
            }  # fmt: skip
        )
    return rows


def parameters_label(parameters: dict) -> str:
    """`topology.clients=5,workload.bytes=4000000`; list values join with `+`."""
    return ",".join(
        f"{key}={'+'.join(map(str, value)) if isinstance(value, list) else value}"
        for key, value in sorted(parameters.items())
    )


def summarize(records: list[dict], seed: int = 0, split_points: bool = True) -> dict:
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
            summary["comparison_with_baseline"][variant] = compare_groups(group, baseline, seed)
    summary["comparison_by_migration"] = {}
    if baseline:
        for variant, group in by_variant.items():
            if variant == "baseline":
                continue
            for kind in sorted({str(r["migration"]) for r in group}):
                subset = [r for r in group if str(r["migration"]) == kind]
                base = [r for r in baseline if str(r["migration"]) == kind]
                if base:
                    summary["comparison_by_migration"].setdefault(variant, {})[kind] = (
                        compare_groups(subset, base, seed)
                    )
    summary["matrix"] = survival_matrix(records)
    if split_points:
        summary["curves"] = {key: curves(records, key, seed) for key in curve_parameters(records)}
        summary["rates"] = rate_rows(records, seed)
        summary["state_comparison"] = state_comparison(records, seed)
    labels = sorted({parameters_label(r.get("parameters") or {}) for r in records})
    if split_points and labels != [""] and labels:
        summary["points"] = [
            {
                "label": label,
                "parameters": next(
                    r.get("parameters") or {}
                    for r in records
                    if parameters_label(r.get("parameters") or {}) == label
                ),
                "summary": summarize(
                    [r for r in records if parameters_label(r.get("parameters") or {}) == label],
                    seed,
                    split_points=False,
                ),
            }
            for label in labels
        ]
    return summary


def _format(value, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def format_table(records: list[dict]) -> str:
    """One row per (point, variant, migration kind): the numbers a reader checks first, and
    why connections failed, grouped (`failure_reasons`) with counts, most frequent first. The
    point column (functions and sweep values) appears only when records differ in it."""
    header = (
        "point", "variant", "migration", "runs", "completed", "verified", "handshake_ms",
        "goodput_mbps", "disruption_ms", "packet_ins", "flow_mods", "failures",
    )  # fmt: skip
    rows = [header]
    keys = sorted(
        {(point_label(r), r["variant"], str(r["migration"])) for r in records},
        key=lambda k: (k[0], k[1] != "baseline", k[1:]),
    )
    for point, variant, kind in keys:
        group = summarize_group(
            [
                r
                for r in records
                if (point_label(r), r["variant"], str(r["migration"])) == (point, variant, kind)
            ]
        )
        failure = failure_text(group["failure_reasons"], width=TABLE_FAILURE_WIDTH)
        rows.append(
            (
                point,
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
                failure,
            )
        )
    if len({row[0] for row in rows[1:]}) <= 1:
        rows = [row[1:] for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = [
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])) + "  " + row[-1]
        for row in rows
    ]
    return "\n".join(line.rstrip() for line in lines)


# Medians with intervals against a swept numeric parameter (e.g. topology.hops).
CURVE_METRICS = ("goodput_mbps", "handshake_ms", "disruption_ms")
MIN_CURVE_POINTS = 3


def curve_parameters(records: list[dict]) -> list[str]:
    """Swept keys with at least MIN_CURVE_POINTS numeric values: worth a curve."""
    values: dict[str, set] = {}
    for record in records:
        for key, value in (record.get("parameters") or {}).items():
            values.setdefault(key, set()).add(json.dumps(value))
    return sorted(
        key
        for key, seen in values.items()
        if len(seen) >= MIN_CURVE_POINTS
        and all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in map(json.loads, seen)
        )
    )


def curves(records: list[dict], key: str, seed: int = 0) -> list[dict]:
    """One row per (rest of the sweep point, variant, migration kind, value of `key`): the
    median of each CURVE_METRICS with its 95% bootstrap interval, what survived, and the
    NAT mappings connections held at the end; rows ordered for plotting against `key`."""

    def rest(record: dict) -> str:
        others = {k: v for k, v in (record.get("parameters") or {}).items() if k != key}
        return parameters_label(others)

    groups: dict[tuple, list[dict]] = {}
    for record in records:
        value = (record.get("parameters") or {}).get(key)
        if value is None:
            continue
        group = (rest(record), record["variant"], str(record["migration"]), value)
        groups.setdefault(group, []).append(record)
    rows = []
    for (point, variant, kind, value), group in sorted(
        groups.items(), key=lambda item: (item[0][0], item[0][1] != "baseline", item[0][1:])
    ):
        row = {
            "point": point,
            "variant": variant,
            "migration": kind,
            key: value,
            "runs": len(group),
            "verified": sum(bool(r["completed"] and r["verified"]) for r in group),
            "nat_mappings": _median(_values(group, "nat_mappings")),
        }
        for metric in CURVE_METRICS:
            values = _values(group, metric)
            row[metric] = {"median": _median(values), "ci95": median_interval(values, seed)}
        rows.append(row)
    return rows


def rate_rows(records: list[dict], seed: int = 0) -> list[dict]:
    """Against the migration rate actually achieved: per (sweep point, variant, kind) with
    repeated migration, the median achieved rate (records' `migration_rate_hz`), the goodput
    ratio to baseline at the same point and kind with its 95% interval, the migration
    packet-ins, the most NAT mappings a hop held at once and at the end, and the agent's
    messages per migration. Empty when no record migrated more than once."""
    rated = [r for r in records if r.get("migration_rate_hz") is not None]
    if not rated:
        return []
    groups: dict[tuple, list[dict]] = {}
    for record in records:
        point = parameters_label(record.get("parameters") or {})
        groups.setdefault((point, record["variant"], str(record["migration"])), []).append(record)
    rows = []
    for (point, variant, kind), group in groups.items():
        rates = _values(group, "migration_rate_hz")
        if not rates:
            continue
        baseline = groups.get((point, "baseline", kind), [])
        migrations = sum(r.get("migrations") or 0 for r in group)
        # Per migration: a connection's admission ahead (one report, before its handshake) is
        # not what migrating costs.
        messages = sum(
            (r.get("agent_messages") or 0) - (r.get("admission_ms") is not None) for r in group
        )
        peaks = _values(group, "nat_mappings_peak")
        rows.append(
            {
                "point": point,
                "variant": variant,
                "migration": kind,
                "runs": len(group),
                "verified": sum(bool(r["completed"] and r["verified"]) for r in group),
                "achieved_hz": _median(rates),
                "goodput_ratio": (
                    _comparison(
                        _values(group, "goodput_mbps"), _values(baseline, "goodput_mbps"),
                        "ratio", seed,
                    )
                    if baseline and variant != "baseline"
                    else None
                ),
                "migration_packet_ins": _median(_values(group, "migration_packet_ins")),
                "nat_mappings_peak": max(peaks) if peaks else None,
                "nat_mappings_end": _median(_values(group, "nat_mappings")),
                "agent_messages_per_migration": (
                    round(messages / migrations, 3) if migrations and messages else None
                ),
            }
        )  # fmt: skip
    # Each variant and kind as a curve, slowest first.
    return sorted(
        rows,
        key=lambda r: (r["variant"] != "baseline", r["variant"], r["migration"], r["achieved_hz"]),
    )
