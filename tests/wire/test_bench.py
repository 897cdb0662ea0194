"""`make bench` output contract: one `name value` line per figure, numbers a script can read."""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

from qasm.controller import benchmarks as controller
from qasm.state import benchmarks as state
from qasm.state.connections import ConnectionTable
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


def test_connection_memory_fills_the_large_table_it_reports(monkeypatch):
    filled = []
    fill = state._fill

    def recording_fill(table, connections, *args):
        filled.append(connections)
        return fill(table, connections, *args)

    monkeypatch.setattr(state, "_fill", recording_fill)
    figures = dict(state.connection_memory(connections=200, million=3000))
    assert list(figures) == [
        "connection_table_bytes_per_connection",
        "connection_table_bytes_per_migrated_connection",
        "connection_table_bytes_per_half_open_connection",
        "connection_table_3000_mib",
        "connection_table_3000_resident_mib",
    ]
    assert all(FIGURE_LINE.match(f"{name} {value}") for name, value in figures.items())
    assert 3000 in filled  # measured on a table that large, not scaled up from 200


def test_the_memory_figure_fills_connections_seen_at_times_of_their_own(monkeypatch):
    times = []
    put = ConnectionTable.put

    def recording_put(table, path, now):
        times.append(now)
        return put(table, path, now)

    monkeypatch.setattr(ConnectionTable, "put", recording_put)
    state._fill(ConnectionTable(), 3)
    # A float object of its own each, as a controller's packet-ins bring theirs: connections
    # share one only as the table shares it (SEEN_RESOLUTION_S), never by the fill's doing.
    assert len({id(now) for now in times}) == 3


CONTROLLER_FIGURES = [
    f"controller_{kind}_{figure}"
    for kind in ("initial", "migrated_path", "agent_announce")
    for figure in ("decisions_per_s", "p50_us", "p99_us")
]


def _children() -> set[int]:
    """Processes whose parent is this one (Linux /proc)."""
    children = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # ended meanwhile
        if int(fields[1]) == os.getpid():
            children.add(int(stat.parent.name))
    return children


def test_registry_lists_the_controller_benchmarks_after_the_others():
    assert bench.BENCHMARKS[-2:] == [
        controller.sans_io_decisions,
        controller.openflow_decisions,
    ]


def test_sans_io_controller_figures_are_named_numbers():
    figures = controller.sans_io_decisions(events=30)
    assert [name for name, _ in figures] == CONTROLLER_FIGURES
    assert all(float(value) > 0 for _, value in figures), figures
    assert all(FIGURE_LINE.match(f"{name} {value}") for name, value in figures)


def test_the_controller_process_answers_a_fake_openflow_switch_and_is_stopped():
    before = _children()
    figures = dict(
        controller.openflow_decisions(
            round_events=20, rounds=3, warmup_events=10, latency_events=10, window=8
        )
    )
    assert list(figures) == [
        "oskens_initial_decisions_per_s",
        "oskens_initial_p50_us",
        "oskens_initial_p99_us",
        "oskens_initial_controller_cpu_us",
        "oskens_vs_sans_io",
    ]
    assert all(float(value.removesuffix("x")) > 0 for value in figures.values()), figures
    assert figures["oskens_vs_sans_io"].endswith("x")
    assert _children() <= before  # the controller process was stopped and reaped
