"""Named metrics of a summary, the scenario's `regression:` tolerances, and the CI gate (pure).

Metric names (`@POINT` is appended for sweep points, e.g. `@workload.bytes=4000000`):

    survival.VARIANT.KIND                     fraction of runs completed and verified
    counters.VARIANT.KIND.COUNTER             exact, per surviving connection
    comparison.VARIANT.METRIC                 vs baseline over all kinds: estimate and ci95
    comparison.VARIANT.KIND.METRIC            vs baseline, per migration kind
    median.VARIANT.KIND.FIELD                 absolute medians: shown by `qasm compare`, never
                                              gated (absolute times depend on the machine)

COUNTER is one of summary.COUNTERS, METRIC one of summary.COMPARISONS. Counters are gated on
surviving connections only: a dropped connection retransmits until its idle timeout, so its
counts measure timing; the survival metric is what catches it breaking.

The `regression:` block of a scenario maps metric patterns to tolerances:

    regression:
      counters.*.*.agent_bytes: exact
      counters.*.*.packet_ins: {absolute: 6}
      comparison.qasm.goodput_ratio: {relative: 0.1}
      comparison.*.*.handshake_ms_difference: ignore

A pattern has the shape of a metric name; each dot-separated segment is a name or `*`. The last
pattern matching a metric wins. Without a match the defaults apply: `exact` for survival and
counters, `{relative: 0.2}` for ratios and `{absolute: 20}` (ms) for differences.

Judging (`check`): a counter or survival with `exact` regresses on any change; with a
tolerance, when |new - old| exceeds it. A comparison regresses only in its worse direction
(lower goodput ratio; higher CPU ratio, handshake or disruption difference) and only when the
new run's whole 95% interval lies beyond the reference estimate ± tolerance, so noise inside the
interval never fails the gate. Without an interval (fewer than 2 samples per side) the estimate
itself must lie beyond. Past the bound in the better direction is reported as improved, not a
failure. A metric the reference has but the new run lacks (e.g. a variant no longer completes
and so has no goodput ratio) regresses.
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed.analysis.summary import COMPARISONS, COUNTERS
from testbed.records.rundir import read_json_object

REFERENCE_SCHEMA_VERSION = 1
FAMILIES = ("survival", "counters", "comparison")
# comparison metric -> the direction in which it gets worse
WORSE = {
    "goodput_ratio": "lower",
    "controller_cpu_ratio": "higher",
    "handshake_ms_difference": "higher",
    "handshake_ratio": "higher",
    "disruption_ms_difference": "higher",
}
MEDIAN_FIELDS = ("handshake_ms", "goodput_mbps", "disruption_ms", "controller_cpu_s")
KIND_NAMES = ("nat-rebind", "addr-rebind", "active", "None")  # "None": no migration
MAX_RELATIVE = 10.0


class ReferenceError(ValueError):
    """Bad reference or mismatched run: the message names the file and field."""


@dataclass(frozen=True)
class Tolerance:
    mode: str  # "exact" | "relative" | "absolute" | "ignore"
    value: float = 0.0

    def describe(self) -> str:
        return self.mode if self.mode in ("exact", "ignore") else f"{self.mode} {self.value:g}"

    def bound(self, reference: float) -> float:
        return abs(reference) * self.value if self.mode == "relative" else self.value


DEFAULT_RATIO = Tolerance("relative", 0.2)
DEFAULT_DIFFERENCE = Tolerance("absolute", 20.0)


def metric_type(name: str) -> str:
    """ "counter" | "survival" | "ratio" | "difference" | "median" for a metric name."""
    base = name.split("@")[0]
    family, *_, last = base.split(".")
    if family == "comparison":
        return "ratio" if COMPARISONS[last][1] == "ratio" else "difference"
    return {"counters": "counter", "survival": "survival", "median": "median"}[family]


def default_tolerance(name: str) -> Tolerance:
    kind = metric_type(name)
    if kind == "ratio":
        return DEFAULT_RATIO
    if kind == "difference":
        return DEFAULT_DIFFERENCE
    return Tolerance("exact")


def _flatten_one(summary: dict, suffix: str) -> dict[str, dict]:
    metrics: dict[str, dict] = {}
    for variant, kinds in summary.get("by_migration", {}).items():
        for kind, group in kinds.items():
            metrics[f"survival.{variant}.{kind}{suffix}"] = {
                "value": round(group["verified"] / group["runs"], 6) if group["runs"] else None
            }
            for counter, values in group.get("counters", {}).items():
                if values.get("surviving_per_connection") is not None:
                    metrics[f"counters.{variant}.{kind}.{counter}{suffix}"] = {
                        "value": values["surviving_per_connection"]
                    }
            for field in MEDIAN_FIELDS:
                metrics[f"median.{variant}.{kind}.{field}{suffix}"] = {
                    "value": group.get(f"median_{field}")
                }
    for variant, comparison in summary.get("comparison_with_baseline", {}).items():
        for name in COMPARISONS:
            if name in comparison:
                metrics[f"comparison.{variant}.{name}{suffix}"] = _estimate(comparison[name])
    for variant, kinds in summary.get("comparison_by_migration", {}).items():
        for kind, comparison in kinds.items():
            for name in COMPARISONS:
                if name in comparison:
                    metrics[f"comparison.{variant}.{kind}.{name}{suffix}"] = _estimate(
                        comparison[name]
                    )
    return metrics


def _estimate(comparison: dict) -> dict:
    return {"estimate": comparison.get("estimate"), "ci95": comparison.get("ci95")}


def flatten(summary: dict) -> dict[str, dict]:
    """Every named metric of a summary (of each sweep point when there are points)."""
    if summary.get("points"):
        metrics: dict[str, dict] = {}
        for point in summary["points"]:
            metrics.update(_flatten_one(point["summary"], f"@{point['label']}"))
        return dict(sorted(metrics.items()))
    return dict(sorted(_flatten_one(summary, "").items()))


def gated(metrics: dict[str, dict]) -> dict[str, dict]:
    """The metrics a reference holds: all but the absolute medians."""
    return {k: v for k, v in metrics.items() if metric_type(k) != "median"}


def value_of(metric: dict) -> float | None:
    return metric.get("value", metric.get("estimate"))


# --- the scenario's regression block ------------------------------------------------------------


def _segment_problem(segment: str, allowed, what: str) -> str | None:
    if segment == "*" or segment in allowed:
        return None
    return f"expected {what} ({', '.join(allowed)}) or *, got {segment!r}"


def pattern_problem(pattern: str, variants: tuple[str, ...], kinds: tuple[str, ...]) -> str | None:
    """Why `pattern` names no metric of this scenario, or None when it is well formed."""
    base, _, point = pattern.partition("@")
    segments = base.split(".")
    family = segments[0]
    shapes = {
        "survival": "survival.VARIANT.KIND",
        "counters": "counters.VARIANT.KIND.COUNTER",
        "comparison": "comparison.VARIANT.METRIC or comparison.VARIANT.KIND.METRIC",
    }
    if family not in FAMILIES:
        return f"expected a metric name starting with {', '.join(FAMILIES)}, got {pattern!r}"
    lengths = {"survival": (3,), "counters": (4,), "comparison": (3, 4)}[family]
    if len(segments) not in lengths:
        return f"expected the shape {shapes[family]}, got {pattern!r}"
    compared = tuple(v for v in variants if v != "baseline")
    problem = _segment_problem(
        segments[1],
        compared if family == "comparison" else variants,
        "a compared variant of the scenario" if family == "comparison" else "a scenario variant",
    )
    if problem:
        return problem
    if len(segments) == 4 or family == "survival":
        problem = _segment_problem(segments[2], kinds, "a migration kind of the scenario")
        if problem:
            return problem
    if family == "counters":
        return _segment_problem(segments[3], COUNTERS, "a counter")
    if family == "comparison":
        return _segment_problem(segments[-1], tuple(COMPARISONS), "a comparison")
    del point  # any sweep point label (or glob) is accepted
    return None


def check_block(
    block: Any, variants: Sequence[str], kinds: Sequence[str]
) -> tuple[tuple[tuple[str, Tolerance], ...], list[tuple[tuple[str, ...], str]]]:
    """Checks a scenario's `regression:` mapping (plain YAML data, None when absent).

    Returns its (pattern, tolerance) rules and its problems, each ((pattern,), "expected ...")
    or ((), ...) for the block itself; testbed/scenario/models.py reports them with the line.
    """
    if block is None:
        return (), []
    if not isinstance(block, dict):
        return (), [((), "expected a mapping of metric patterns to tolerances")]
    rules, located = [], []
    kinds = tuple(str(k) for k in kinds)
    for pattern, value in block.items():
        problem = pattern_problem(str(pattern), tuple(variants or ()), kinds)
        if problem is None:
            tolerance, problem = _tolerance(value, str(pattern))
        if problem is not None:
            located.append(((pattern,), problem))
        else:
            rules.append((str(pattern), tolerance))
    return tuple(rules), located


TOLERANCE_EXPECTED = "expected exact, ignore, {relative: F} (0 < F <= 10) or {absolute: X} (X >= 0)"
# The JSON Schema of the `regression:` block (scenarios/schema.json), for editors.
BLOCK_JSON_SCHEMA = {
    "type": "object",
    "propertyNames": {"pattern": rf"^({'|'.join(FAMILIES)})\."},
    "additionalProperties": {
        "anyOf": [
            {"type": "string", "enum": ["exact", "ignore"]},
            {
                "type": "object",
                "properties": {
                    "relative": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_RELATIVE}
                },
                "required": ["relative"],
                "additionalProperties": False,
            },
            {
                "type": "object",
                "properties": {"absolute": {"type": "number", "minimum": 0}},
                "required": ["absolute"],
                "additionalProperties": False,
            },
        ]
    },
}


def _tolerance(value: Any, pattern: str) -> tuple[Tolerance | None, str | None]:
    """(tolerance, None), or (None, what was expected)."""
    comparison = pattern.startswith("comparison.")
    if not isinstance(value, dict | list):
        if value == "ignore":
            return Tolerance("ignore"), None
        if value == "exact" and not comparison:
            return Tolerance("exact"), None
        if value == "exact":
            return None, ("expected {relative: F} or {absolute: X}: a comparison is a bootstrap "
                          "estimate, never exact")  # fmt: skip
        return None, f"{TOLERANCE_EXPECTED}, got {value!r}"
    if not isinstance(value, dict) or len(value) != 1:
        return None, TOLERANCE_EXPECTED
    ((mode, number),) = value.items()
    if isinstance(number, dict | list):
        number = None
    numeric = type(number) in (int, float)
    if mode == "relative" and numeric and 0 < number <= MAX_RELATIVE:
        return Tolerance("relative", float(number)), None
    if mode == "absolute" and numeric and number >= 0:
        return Tolerance("absolute", float(number)), None
    return None, f"{TOLERANCE_EXPECTED}, got {{{mode}: {number!r}}}"


def _matches(pattern: str, name: str) -> bool:
    pattern_base, _, pattern_point = pattern.partition("@")
    name_base, _, name_point = name.partition("@")
    if pattern_point and pattern_point not in ("*", name_point):
        return False
    wanted, actual = pattern_base.split("."), name_base.split(".")
    return len(wanted) == len(actual) and all(
        w in ("*", a) for w, a in zip(wanted, actual, strict=True)
    )


def tolerance_for(name: str, rules) -> Tolerance:
    chosen = default_tolerance(name)
    for pattern, tolerance in rules:
        if _matches(pattern, name):
            chosen = tolerance
    return chosen


# --- references ----------------------------------------------------------------------------------


def build_reference(run, summary: dict) -> dict:
    """The reference JSON for a run (a testbed.records.rundir.RunDir) and its recomputed summary."""
    metadata = run.metadata
    return {
        "schema_version": REFERENCE_SCHEMA_VERSION,
        "scenario": run.scenario_name,
        "scenario_file": metadata.get("scenario"),
        "scenario_sha256": metadata.get("scenario_sha256"),
        "source": {
            "git_commit": metadata.get("git_commit"),
            "git_dirty": metadata.get("git_dirty"),
            "seed": metadata.get("seed"),
            "repetitions": metadata.get("repetitions"),
            "records": len(run.records),
            "run_started_at": metadata.get("started_at"),
            "written_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        },
        "metrics": gated(flatten(summary)),
    }


def load_reference(path: Path) -> dict:
    reference = read_json_object(
        path, ReferenceError, "a reference (missing; write one with --update)"
    )
    if reference.get("schema_version") != REFERENCE_SCHEMA_VERSION:
        raise ReferenceError(
            f"{path}:1: schema_version: expected {REFERENCE_SCHEMA_VERSION}, "
            f"got {reference.get('schema_version')!r}"
        )
    if not isinstance(reference.get("scenario"), str):
        raise ReferenceError(f"{path}:1: scenario: expected the scenario's name (a string)")
    metrics = reference.get("metrics")
    if not isinstance(metrics, dict) or not metrics:
        raise ReferenceError(f"{path}:1: metrics: expected a non-empty mapping of metric names")
    for name, metric in metrics.items():
        try:
            kind = metric_type(name)
        except (KeyError, ValueError, IndexError):
            raise ReferenceError(
                f"{path}:1: metrics.{name}: expected a known metric name"
            ) from None
        field = "value" if kind in ("counter", "survival") else "estimate"
        if not isinstance(metric, dict) or field not in metric:
            raise ReferenceError(f"{path}:1: metrics.{name}: expected an object with {field!r}")
        value = metric[field]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ReferenceError(f"{path}:1: metrics.{name}.{field}: expected a number or null")
    return reference


def write_reference(path: Path, reference: dict) -> None:
    """Atomically: a crash leaves the old reference or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w", encoding="utf-8") as stream:
        stream.write(json.dumps(reference, indent=2, sort_keys=False) + "\n")
        stream.flush()
        os.fsync(stream.fileno())
    temporary.replace(path)


def ensure_same_scenario(reference: dict, reference_path: Path, run) -> None:
    if reference["scenario"] != run.scenario_name:
        raise ReferenceError(
            f"{reference_path}:1: scenario: expected {run.scenario_name!r} (the scenario of "
            f"{run.path}), got {reference['scenario']!r}: a reference from another scenario"
        )


# --- judging -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    name: str
    status: str  # "ok" | "regressed" | "improved" | "ignored" | "new"
    old: str
    new: str
    why: str


def format_value(metric: dict | None) -> str:
    if metric is None:
        return "absent"
    value = value_of(metric)
    if value is None:
        return "none"
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    if metric.get("ci95"):
        low, high = metric["ci95"]
        text += f" [{low:.4g}, {high:.4g}]"
    return text


def judge(name: str, old: dict, new: dict | None, tolerance: Tolerance) -> Verdict:
    old_text, new_text = format_value(old), format_value(new)
    if tolerance.mode == "ignore":
        return Verdict(name, "ignored", old_text, new_text, "ignore")
    reference = value_of(old)
    current = value_of(new) if new is not None else None
    if reference is None:
        status = "ok" if current is None else "new"
        return Verdict(name, status, old_text, new_text, "no reference value")
    if current is None:
        return Verdict(name, "regressed", old_text, new_text, "no value in the new run")
    kind = metric_type(name)
    if kind in ("counter", "survival"):
        if tolerance.mode == "exact":
            bad = current != reference
            return Verdict(name, "regressed" if bad else "ok", old_text, new_text, "exact")
        bad = abs(current - reference) > tolerance.bound(reference)
        return Verdict(name, "regressed" if bad else "ok", old_text, new_text, tolerance.describe())
    bound = tolerance.bound(reference)
    low, high = new.get("ci95") or (current, current)
    lower_is_worse = WORSE[name.split("@")[0].split(".")[-1]] == "lower"
    worse_limit = reference - bound if lower_is_worse else reference + bound
    better_limit = reference + bound if lower_is_worse else reference - bound
    if lower_is_worse:
        regressed, improved = high < worse_limit, low > better_limit
        side = "below"
    else:
        regressed, improved = low > worse_limit, high < better_limit
        side = "above"
    interval = "CI" if new.get("ci95") else "estimate (no CI)"
    why = f"{tolerance.describe()}: {interval} {side} {worse_limit:.4g}"
    if regressed:
        return Verdict(name, "regressed", old_text, new_text, why)
    if improved:
        return Verdict(name, "improved", old_text, new_text, f"{tolerance.describe()}: better")
    return Verdict(name, "ok", old_text, new_text, tolerance.describe())


def check(reference: dict, summary: dict, rules) -> list[Verdict]:
    """One verdict per reference metric, then one `new` per metric the reference lacks."""
    current = gated(flatten(summary))
    verdicts = [
        judge(name, old, current.get(name), tolerance_for(name, rules))
        for name, old in reference["metrics"].items()
    ]
    verdicts += [
        Verdict(name, "new", "absent", format_value(metric), "not in the reference")
        for name, metric in current.items()
        if name not in reference["metrics"]
    ]
    return verdicts


def cells(metrics: dict[str, dict]) -> set[str]:
    """The (variant, kind[, point]) cells that metrics cover, from their survival names."""
    return {name.removeprefix("survival.") for name in metrics if name.startswith("survival.")}
