"""The `qasm` command line (contract in ../shared/DESIGN.md).

Exit codes: 0 success (a broken QUIC connection is a result, not an error), 2 invalid input,
1 infrastructure failure. Each subcommand module registers its own parser through a
`register(subparsers)` function and sets `handler=callable(args) -> int`.
"""

from __future__ import annotations

import argparse
import os
import sys

from qasm.wire import cli as wire_cli
from testbed import analysis_commands, commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qasm", description="QUIC-aware stateful middlebox testbed"
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.register(subparsers)
    analysis_commands.register(subparsers)
    wire_cli.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("qasm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`qasm compare A B | head`): not our failure. Point stdout at
        # /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
