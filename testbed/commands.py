"""Handlers of `qasm run`, `qasm validate` and `qasm clean` (contracts in DESIGN.md)."""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

from qasm.controller.pipeline import VARIANTS
from testbed.emulation.network import InfrastructureError
from testbed.emulation.ownership import clean_dead_runs
from testbed.scenario import ScenarioError, load_scenario

EXIT_OK, EXIT_INFRASTRUCTURE, EXIT_INVALID = 0, 1, 2


def register(subparsers: argparse._SubParsersAction) -> None:
    run = subparsers.add_parser("run", help="run a scenario and write RUN_DIR")
    run.add_argument("scenario")
    run.add_argument("--out", help="run directory (default results/NAME-TIMESTAMP)")
    run.add_argument("--variants", help=f"comma-separated subset of {','.join(VARIANTS)}")
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
    from testbed.emulation.runner import ExperimentRunner  # imports Mininet; not needed to validate

    try:
        scenario = load_scenario(args.scenario)
    except ScenarioError as exc:
        return _print_problems(exc.problems)
    problems = []
    variants = None
    if args.variants is not None:
        variants = tuple(v for v in args.variants.split(",") if v)
        unknown = [v for v in variants if v not in VARIANTS]
        if unknown or not variants:
            problems.append(
                f"--variants: expected names from {', '.join(VARIANTS)}, got {args.variants!r}"
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
