"""`qasm wire ...` and `qasm lb ...`: inspection commands over the wire library.

Placeholder registration; the wire library work (issue 4) fills this in.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds the `wire` and `lb` subcommands; each sets `handler(args) -> int`."""
