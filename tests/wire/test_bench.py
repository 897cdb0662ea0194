"""`make bench` output contract: one `name value` line per figure, numbers a script can read."""

from __future__ import annotations

import functools
import re

from qasm.wire import benchmarks
from testbed import bench

FIGURE_LINE = re.compile(r"^[a-z0-9_]+ [0-9]+(\.[0-9]+)?x?$")


def test_registry_lists_the_wire_benchmarks():
    assert benchmarks.dcid_extraction in bench.BENCHMARKS
    assert benchmarks.initial_decrypt_sni in bench.BENCHMARKS
    assert benchmarks.reassembly_memory in bench.BENCHMARKS


def test_main_prints_one_parsable_line_per_figure(capsys):
    small = [
        functools.partial(benchmarks.dcid_extraction, packets=200, repeats=2),
        functools.partial(benchmarks.initial_decrypt_sni, packets=5),
        functools.partial(benchmarks.reassembly_memory, states=100),
    ]
    assert bench.main(small) == 0
    lines = capsys.readouterr().out.splitlines()
    assert all(FIGURE_LINE.match(line) for line in lines), lines
    names = [line.split()[0] for line in lines]
    assert "dcid_extract_vs_slice" in names and "initial_decrypt_sni_median_us" in names
    assert lines[names.index("dcid_extract_vs_slice")].endswith("x")
