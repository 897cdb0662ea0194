"""Handlers of `qasm run`, `qasm validate` and `qasm clean` (contracts in DESIGN.md)."""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

from testbed.emulation.network import InfrastructureError
from testbed.emulation.ownership import clean_dead_runs
from testbed.emulation.resume import (
    ResumeError,
    check_resumable,
    code_fingerprint,
    finished_runs,
    read_run_dir,
)
from testbed.scenario import ScenarioError, load_scenario
from testbed.scenario.models import ALL_VARIANTS

EXIT_OK, EXIT_INFRASTRUCTURE, EXIT_INVALID = 0, 1, 2
EXIT_INTERRUPTED = 130  # as a shell reports a process ended by SIGINT


def register(subparsers: argparse._SubParsersAction) -> None:
    run = subparsers.add_parser("run", help="run a scenario and write RUN_DIR")
    run.add_argument("scenario", nargs="?", help="the scenario file (with --resume: optional)")
    run.add_argument("--out", help="run directory (default results/NAME-TIMESTAMP)")
    run.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="go on with an interrupted run: keep its finished runs, do the others",
    )
    run.add_argument("--variants", help=f"comma-separated subset of {','.join(ALL_VARIANTS)}")
    run.add_argument("--repetitions", type=int)
    run.add_argument("--seed", type=int)
    run.add_argument(
        "--pin-cpus",
        action="store_true",
        help="pin controller and switch to one CPU, endpoints to the others (cpu_pinning)",
    )
    run.set_defaults(handler=run_command)

    validate = subparsers.add_parser("validate", help="check a scenario file")
    validate.add_argument("scenario")
    validate.set_defaults(handler=validate_command)

    clean = subparsers.add_parser("clean", help="remove leftovers of crashed runs (ours only)")
    clean.set_defaults(handler=clean_command)


def _print_problems(problems: list[str]) -> int:
    for problem in problems:
        print(problem, file=sys.stderr)
    return EXIT_INVALID


def validate_command(args: argparse.Namespace) -> int:
    try:
        load_scenario(args.scenario)
    except ScenarioError as exc:
        return _print_problems(exc.problems)
    print(f"{args.scenario}: valid")
    return EXIT_OK


def run_command(args: argparse.Namespace) -> int:
    # Imports Mininet: not needed to validate.
    from testbed.emulation.runner import REPOSITORY, ExperimentRunner, plan_runs, records_per_run

    metadata, records = None, []
    if args.resume is not None:
        if args.out is not None:
            return _print_problems(["--out: expected nothing with --resume (it names the run)"])
        try:
            metadata, records = read_run_dir(Path(args.resume))
        except ResumeError as exc:
            return _print_problems([f"--resume: {exc}"])
        args.out = args.resume
        args.scenario = args.scenario or metadata.get("scenario")
        options = metadata.get("options") or {}
        args.variants = args.variants or ",".join(options.get("variants") or ()) or None
        args.repetitions = args.repetitions or options.get("repetitions")
        args.seed = options.get("seed") if args.seed is None else args.seed
        args.pin_cpus = args.pin_cpus or bool(options.get("cpu_pinning"))
    if args.scenario is None:
        return _print_problems(["scenario: expected a scenario file (or --resume RUN_DIR)"])
    try:
        scenario = load_scenario(args.scenario)
    except ScenarioError as exc:
        return _print_problems(exc.problems)
    problems = []
    variants = None
    if args.variants is not None:
        variants = tuple(v for v in args.variants.split(",") if v)
        unknown = [v for v in variants if v not in ALL_VARIANTS]
        if unknown or not variants:
            problems.append(
                f"--variants: expected names from {', '.join(ALL_VARIANTS)}, got {args.variants!r}"
            )
    if args.repetitions is not None and args.repetitions < 1:
        problems.append(f"--repetitions: expected an integer >= 1, got {args.repetitions}")
    if args.seed is not None and args.seed < 0:
        problems.append(f"--seed: expected an integer >= 0, got {args.seed}")
    if problems:
        return _print_problems(problems)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = Path(args.out or f"results/{scenario.name}-{stamp}")
    runner = ExperimentRunner(
        scenario,
        out_dir,
        variants,
        args.repetitions,
        args.seed,
        cpu_pinning=True if args.pin_cpus else None,  # else as the scenario says
    )
    if metadata is not None:
        problems = check_resumable(
            metadata, scenario.sha256, code_fingerprint(REPOSITORY), runner.options()
        )
        if problems:
            return _print_problems([f"--resume {args.resume}: {p}" for p in problems])
        expected = records_per_run(plan_runs(scenario, runner.variants, runner.repetitions))
        runner.resume = finished_runs(metadata, records, expected)
        print(
            f"qasm: resuming {out_dir}: {len(runner.resume.finished)} of {len(expected)} runs "
            "finished before",
            flush=True,
        )
    print(f"qasm: running {scenario.path} into {out_dir}", flush=True)
    try:
        runner.run()
    except InfrastructureError as exc:
        print(f"qasm: infrastructure failure: {exc}", file=sys.stderr)
        print(f"qasm: finished runs kept in {out_dir}", file=sys.stderr)
        return EXIT_INFRASTRUCTURE
    except TimeoutError as exc:
        print(f"qasm: infrastructure failure: {exc}", file=sys.stderr)
        return EXIT_INFRASTRUCTURE
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM/SIGHUP (the runner's _Terminated)
        print(
            f"qasm: interrupted ({exc or 'SIGINT'}); finished runs kept in {out_dir}; "
            f"go on with: qasm run --resume {out_dir}",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    print(runner.table())
    print(f"qasm: results in {out_dir}")
    return EXIT_OK


def clean_command(args: argparse.Namespace) -> int:
    lines = clean_dead_runs()
    for line in lines:
        print(line)
    if not lines:
        print("qasm clean: no leftovers of crashed runs")
    return EXIT_OK
