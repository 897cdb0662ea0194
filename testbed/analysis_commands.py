"""Handlers of `qasm report`, `qasm compare` and `qasm check`: they only read RUN_DIRs.

All three load a run with testbed.records.rundir (validated; partial runs load with a warning) and
recompute its summary from the records. Exit codes follow DESIGN.md: 0 done, 1 a regression
(`check` only), 2 bad input (a corrupt run directory, a bad reference, a reference from
another scenario, an invalid scenario), with one `FILE:LINE: FIELD: expected ...` line on
stderr and nothing written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from testbed.analysis.compare import compare_rows, format_rows
from testbed.analysis.regression import (
    ReferenceError,
    build_reference,
    cells,
    check,
    ensure_same_scenario,
    flatten,
    gated,
    load_reference,
    write_reference,
)
from testbed.analysis.summary import summarize
from testbed.records.rundir import RunDir, RunDirError, load_run
from testbed.scenario import ScenarioError, load_scenario

EXIT_OK, EXIT_REGRESSED, EXIT_INVALID = 0, 1, 2
REPOSITORY = Path(__file__).resolve().parent.parent


def register(subparsers: argparse._SubParsersAction) -> None:
    report = subparsers.add_parser("report", help="write report.md/.html and plots into RUN_DIR")
    report.add_argument("run_dir")
    report.add_argument("--no-plots", action="store_true", help="tables only (no matplotlib)")
    report.set_defaults(handler=report_command)

    compare = subparsers.add_parser("compare", help="what changed between two runs")
    compare.add_argument("run_a")
    compare.add_argument("run_b")
    compare.add_argument("--changed", action="store_true", help="only metrics that changed")
    compare.set_defaults(handler=compare_command)

    gate = subparsers.add_parser("check", help="fail when a metric regressed against a reference")
    gate.add_argument("run_dir")
    gate.add_argument("--reference", required=True, help="results/reference/NAME.json")
    gate.add_argument("--update", action="store_true", help="rewrite the reference from RUN_DIR")
    gate.add_argument("--scenario", help="tolerances from this file (default: the run's scenario)")
    gate.set_defaults(handler=check_command)


def _invalid(message: str) -> int:
    print(message, file=sys.stderr)
    return EXIT_INVALID


def _load(path: str) -> RunDir:
    run = load_run(path)
    for warning in run.warnings:
        print(f"qasm: warning: {warning}", file=sys.stderr)
    return run


def report_command(args: argparse.Namespace) -> int:
    from testbed.analysis.report import write_report

    try:
        run = _load(args.run_dir)
    except RunDirError as exc:
        return _invalid(str(exc))
    markdown, page = write_report(run, plots=not args.no_plots)
    print(f"qasm: report in {markdown} and {page}")
    return EXIT_OK


def compare_command(args: argparse.Namespace) -> int:
    try:
        run_a, run_b = _load(args.run_a), _load(args.run_b)
    except RunDirError as exc:
        return _invalid(str(exc))
    if run_a.scenario_name != run_b.scenario_name:
        return _invalid(
            f"{run_b.path / 'metadata.json'}:1: scenario_name: expected {run_a.scenario_name!r} "
            f"like {run_a.path}, got {run_b.scenario_name!r}: runs of different scenarios"
        )
    if run_a.metadata.get("scenario_sha256") != run_b.metadata.get("scenario_sha256"):
        print("qasm: warning: the scenario file differs between the runs (sha256)", file=sys.stderr)
    rows = compare_rows(
        summarize(run_a.records, seed=run_a.seed), summarize(run_b.records, seed=run_b.seed)
    )
    if args.changed:
        rows = [row for row in rows if row[3] not in ("=", "")]
    print(
        f"A: {run_a.path} (commit {str(run_a.metadata.get('git_commit'))[:12]}, "
        f"{len(run_a.records)} records, {run_a.status})"
    )
    print(
        f"B: {run_b.path} (commit {str(run_b.metadata.get('git_commit'))[:12]}, "
        f"{len(run_b.records)} records, {run_b.status})"
    )
    print(format_rows(rows, ("metric", "A", "B", "change")))
    return EXIT_OK


def _scenario_path(run: RunDir, override: str | None) -> Path:
    if override:
        return Path(override)
    recorded = Path(run.metadata["scenario"])
    if recorded.is_absolute() or recorded.exists():
        return recorded
    return REPOSITORY / recorded


def check_command(args: argparse.Namespace) -> int:
    reference_path = Path(args.reference)
    try:
        run = _load(args.run_dir)
        scenario = load_scenario(_scenario_path(run, args.scenario))
    except RunDirError as exc:
        return _invalid(str(exc))
    except ScenarioError as exc:
        return _invalid("\n".join(exc.problems))
    if scenario.name != run.scenario_name:
        return _invalid(
            f"{scenario.path}:1: name: expected {run.scenario_name!r} (the scenario of "
            f"{run.path}), got {scenario.name!r}"
        )
    if run.metadata.get("scenario_sha256") not in (None, scenario.sha256):
        print(
            f"qasm: warning: {scenario.path} changed since the run; tolerances are today's",
            file=sys.stderr,
        )
    summary = summarize(run.records, seed=run.seed)
    if args.update:
        return _update(run, summary, reference_path)
    try:
        reference = load_reference(reference_path)
        ensure_same_scenario(reference, reference_path, run)
    except ReferenceError as exc:
        return _invalid(str(exc))
    missing = cells(reference["metrics"]) - cells(gated(flatten(summary)))
    if missing:
        return _invalid(
            f"{run.path / 'records.jsonl'}:1: (records): expected the reference's cells, "
            f"missing {', '.join(sorted(missing))} (run with other --variants, or partial?)"
        )
    verdicts = check(reference, summary, scenario.regression)
    source = reference.get("source", {})
    print(
        f"qasm check: {run.path} ({len(run.records)} records, {run.status}) against "
        f"{reference_path} (commit {str(source.get('git_commit'))[:12]})"
    )
    for verdict in verdicts:
        if verdict.status in ("regressed", "improved", "new"):
            print(
                f"{verdict.status.upper():9} {verdict.name}: {verdict.old} → {verdict.new} "
                f"({verdict.why})"
            )
    regressed = [v for v in verdicts if v.status == "regressed"]
    judged = [v for v in verdicts if v.status in ("ok", "regressed", "improved")]
    ignored = sum(1 for v in verdicts if v.status == "ignored")
    if regressed:
        print(f"qasm check: {len(regressed)} of {len(judged)} metrics regressed")
        return EXIT_REGRESSED
    print(f"qasm check: {len(judged)} metrics within tolerance ({ignored} ignored)")
    return EXIT_OK


def _update(run: RunDir, summary: dict, reference_path: Path) -> int:
    if run.partial:
        return _invalid(
            f"{run.path / 'metadata.json'}:1: status: expected 'finished' to write a reference, "
            f"got {run.status!r}"
        )
    if not run.records:
        return _invalid(f"{run.path / 'records.jsonl'}:1: (records): expected at least one record")
    if reference_path.exists():
        try:
            ensure_same_scenario(load_reference(reference_path), reference_path, run)
        except ReferenceError as exc:
            if "scenario:" in str(exc):
                return _invalid(str(exc))
            print(f"qasm: replacing an unreadable reference: {exc}", file=sys.stderr)
    reference = build_reference(run, summary)
    write_reference(reference_path, reference)
    print(
        f"qasm check: wrote {reference_path} ({len(reference['metrics'])} metrics from {run.path})"
    )
    return EXIT_OK
