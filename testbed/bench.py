"""`make bench`: run every registered benchmark and print one `name value` line per figure.

A benchmark is a function taking no arguments and returning its figures as (name, value)
pairs, e.g. ("dcid_extract_vs_slice", "2.4x"). Everything runs in one process, one after the
other, so figures that compare two things (an "x" ratio) were measured side by side under the
same conditions. To add a benchmark, append its function to BENCHMARKS.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from qasm.controller import benchmarks as controller
from qasm.state import benchmarks as state
from qasm.wire import benchmarks as wire
from testbed.redis_server import RedisServer

Figure = tuple[str, str]
Benchmark = Callable[[], Iterable[Figure]]


def redis_store() -> list[Figure]:
    """The connection store, memory vs Redis, against a private redis-server on loopback."""
    with tempfile.TemporaryDirectory() as base, RedisServer(Path(base)) as server:
        return state.store_operations(server.url)


BENCHMARKS: list[Benchmark] = [
    wire.dcid_extraction,
    wire.initial_decrypt_sni,
    wire.reassembly_memory,
    state.connection_memory,
    state.cid_lookup,
    redis_store,
    controller.sans_io_decisions,
    controller.openflow_decisions,
]


def main(benchmarks: Iterable[Benchmark] = BENCHMARKS) -> int:
    for benchmark in benchmarks:
        for name, value in benchmark():
            print(f"{name} {value}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
