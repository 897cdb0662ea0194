"""qasm report / compare / check on synthetic run directories (no emulation)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from testbed.analysis.regression import Tolerance, flatten, judge
from testbed.analysis.summary import summarize
from testbed.cli import main
from testbed.records.rundir import RunDirError, load_run
from testbed.scenario import ScenarioError, load_scenario

SCENARIO = """\
name: synthetic
seed: 3
repetitions: 3
variants: [baseline, qasm]
functions: [firewall]
topology: {name: dualhomed, clients: 1}
workload: {bytes: 4000000}
migration: {kind: [active], at_bytes: 1000000}
"""


def record(variant, repetition, goodput, *, kind="active", packet_ins=6, completed=True, **extra):
    base = {
        "variant": variant, "functions": ["firewall"], "migration": kind,
        "repetition": repetition, "client": "c1", "completed": completed, "verified": completed,
        "handshake_ms": 10.0 + repetition, "goodput_mbps": goodput if completed else None,
        "disruption_ms": 5.0 + repetition if completed else None, "packet_ins": packet_ins,
        "flow_mods": 4, "failure": None if completed else "idle timeout",
        "migration_packet_ins": 0, "agent_messages": 2 if variant == "qasm" else 0,
        "agent_bytes": 322 if variant == "qasm" else 0, "controller_cpu_s": 0.25,
        "migrated": True, "migration_detail": {"kind": kind, "at": 100.0},
        "progress": [[99.8 + i * 0.02, i * 50000] for i in range(30)],
    }  # fmt: skip
    return {**base, **extra}


def good_records(qasm_goodput=(44.0, 45.0, 46.0), qasm_packet_ins=6):
    records = []
    for repetition in range(3):
        records.append(record("baseline", repetition, 45.0 + repetition))
        records.append(
            record("qasm", repetition, qasm_goodput[repetition], packet_ins=qasm_packet_ins)
        )
    return records


def write_run(directory: Path, records, *, status="finished", scenario="synthetic", tail=""):
    directory.mkdir(parents=True)
    scenario_path = directory.parent / f"{scenario}.yaml"
    if not scenario_path.exists():
        scenario_path.write_text(SCENARIO.replace("name: synthetic", f"name: {scenario}"))
    metadata = {
        "schema_version": 1, "scenario": str(scenario_path), "scenario_sha256": None,
        "scenario_name": scenario, "seed": 3, "git_commit": "abc123", "status": status,
        "started_at": "2026-11-23T00:00:00", "ended_at": None,
    }  # fmt: skip
    (directory / "metadata.json").write_text(json.dumps(metadata))
    lines = "".join(json.dumps(r) + "\n" for r in records)
    (directory / "records.jsonl").write_text(lines + tail)
    return directory


def test_summary_counts_counters_exactly_per_connection_and_per_surviving_connection():
    records = good_records() + [record("qasm", 3, 0, packet_ins=93, completed=False)]
    counters = summarize(records)["by_migration"]["qasm"]["active"]["counters"]
    assert counters["packet_ins"] == {
        "total": 6 * 3 + 93, "per_connection": round(111 / 4, 6), "per_migration": round(111 / 4, 6),
        "surviving_per_connection": 6,
    }  # fmt: skip
    assert counters["agent_bytes"]["surviving_per_connection"] == 322
    assert "state_entries" not in counters  # not recorded: not invented


def test_report_writes_markdown_html_and_plots_with_the_same_tables(tmp_path):
    run = write_run(tmp_path / "run", good_records())
    assert main(["report", str(run)]) == 0
    markdown = (run / "report.md").read_text()
    page = (run / "report.html").read_text()
    assert (
        "# QASM run report: synthetic" in markdown and "<h1>QASM run report: synthetic</h1>" in page
    )
    # the same result row in both renderings
    assert "| qasm | active | 3 | 3 | 3 | 11.0 | 45.0 | 6.0 |" in markdown
    assert "<td>qasm</td><td>active</td><td>3</td><td>3</td><td>3</td><td>11.0</td>" in page
    assert "| qasm | active | agent_bytes | 966 | 322 | 322 | 322 |" in markdown
    # survival matrix: a green cell for survives
    assert '<td style="background:#b7e1b0">survives</td>' in page
    for name in ("goodput-around-migration", "disruption", "overhead", "matrix"):
        png = run / "plots" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"plots/{name}.png" in markdown and f'src="plots/{name}.png"' in page


def test_report_colours_a_broken_cell_red_and_works_on_a_partial_run(tmp_path, capsys):
    records = good_records()[:4] + [record("qasm", 2, 0, completed=False)]
    # killed mid-write: the last line has no newline and no end
    run = write_run(tmp_path / "run", records, status="interrupted", tail='{"variant": "qa')
    assert main(["report", str(run), "--no-plots"]) == 0
    err = capsys.readouterr().err
    assert "unfinished last record" in err and "'interrupted'" in err
    page = (run / "report.html").read_text()
    assert "Partial or damaged run" in (run / "report.md").read_text()
    assert '<td style="background:#f4a6a6">breaks</td>' in page
    assert not (run / "plots").exists()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ('{"variant": "baseline"}\nnot json\n', "records.jsonl:1: functions: expected this field"),
        (json.dumps(record("baseline", 0, 40)) + "\nnot json\n" + json.dumps(record("baseline", 1, 40)) + "\n",
         "records.jsonl:2: (syntax): expected one JSON object per line"),
        (json.dumps(record("baseline", 0, 40, packet_ins="7")) + "\n",
         "records.jsonl:1: packet_ins: expected an integer, got '7'"),
        (json.dumps(record("baseline", 0, 40, completed=1)) + "\n",
         "records.jsonl:1: completed: expected true or false, got 1"),
    ],
)  # fmt: skip
def test_a_corrupt_record_names_its_file_line_and_field(tmp_path, capsys, content, expected):
    run = write_run(tmp_path / "run", [])
    (run / "records.jsonl").write_text(content)
    with pytest.raises(RunDirError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        load_run(run)
    assert main(["report", str(run)]) == 2
    assert expected in capsys.readouterr().err
    assert not (run / "report.md").exists()


def test_a_directory_without_metadata_is_refused(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "empty/metadata.json:1: (file): expected a run directory" in capsys.readouterr().err


def test_compare_shows_each_metric_old_new_and_change(tmp_path, capsys):
    a = write_run(tmp_path / "a", good_records())
    b = write_run(tmp_path / "b", good_records(qasm_goodput=(30.0, 31.0, 32.0), qasm_packet_ins=8))
    assert main(["compare", str(a), str(b)]) == 0
    lines = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[2:]}
    assert lines["counters.qasm.active.packet_ins"][1:] == ["6", "8", "+2"]
    assert lines["counters.qasm.active.agent_bytes"][1:] == ["322", "322", "="]
    assert lines["median.qasm.active.goodput_mbps"][1:3] == ["45", "31"]
    assert lines["comparison.qasm.goodput_ratio"][-1] == "(-31.1%)"


def test_compare_refuses_runs_of_different_scenarios(tmp_path, capsys):
    a = write_run(tmp_path / "a", good_records())
    b = write_run(tmp_path / "b", good_records(), scenario="other")
    assert main(["compare", str(a), str(b)]) == 2
    assert "scenario_name: expected 'synthetic'" in capsys.readouterr().err


def test_check_update_then_pass_then_fail_naming_each_regressed_metric(tmp_path, capsys):
    reference = tmp_path / "reference" / "synthetic.json"
    good = write_run(tmp_path / "good", good_records())
    assert main(["check", str(good), "--reference", str(reference), "--update"]) == 0
    stored = json.loads(reference.read_text())
    assert stored["scenario"] == "synthetic"
    assert stored["metrics"]["counters.qasm.active.packet_ins"] == {"value": 6}
    assert not any(name.startswith("median.") for name in stored["metrics"])  # no absolute times
    assert main(["check", str(good), "--reference", str(reference)]) == 0
    assert "metrics within tolerance" in capsys.readouterr().out

    bad = write_run(
        tmp_path / "bad", good_records(qasm_goodput=(30.0, 31.0, 32.0), qasm_packet_ins=7)
    )
    assert main(["check", str(bad), "--reference", str(reference)]) == 1
    out = capsys.readouterr().out
    assert "REGRESSED counters.qasm.active.packet_ins: 6 → 7 (exact)" in out
    assert "REGRESSED comparison.qasm.goodput_ratio: 0.9783 [" in out
    assert "REGRESSED comparison.qasm.active.goodput_ratio" in out
    assert "agent_bytes" not in out  # unchanged counters pass silently


def test_scenario_tolerances_decide_and_noise_inside_the_interval_passes(tmp_path, capsys):
    reference = tmp_path / "synthetic.json"
    write_run(tmp_path / "good", good_records())
    (tmp_path / "synthetic.yaml").write_text(
        SCENARIO
        + "regression:\n  counters.*.*.packet_ins: {absolute: 1}\n"
        + "  comparison.*.goodput_ratio: ignore\n  comparison.*.*.goodput_ratio: {relative: 0.5}\n"
    )
    assert main(["check", str(tmp_path / "good"), "--reference", str(reference), "--update"]) == 0
    slower = write_run(
        tmp_path / "slower", good_records(qasm_goodput=(30.0, 31.0, 32.0), qasm_packet_ins=7)
    )
    assert main(["check", str(slower), "--reference", str(reference)]) == 0
    assert "within tolerance (1 ignored)" in capsys.readouterr().out


def test_a_comparison_regresses_only_when_the_whole_interval_is_beyond_the_tolerance():
    name, old = "comparison.qasm.goodput_ratio", {"estimate": 1.0, "ci95": [0.95, 1.05]}
    tolerance = Tolerance("relative", 0.1)
    assert judge(name, old, {"estimate": 0.85, "ci95": [0.80, 0.91]}, tolerance).status == "ok"
    assert (
        judge(name, old, {"estimate": 0.85, "ci95": [0.80, 0.89]}, tolerance).status == "regressed"
    )
    assert judge(name, old, {"estimate": 1.3, "ci95": [1.2, 1.4]}, tolerance).status == "improved"
    assert judge(name, old, {"estimate": None, "ci95": None}, tolerance).status == "regressed"
    # higher is worse for a time difference
    diff = "comparison.qasm.active.disruption_ms_difference"
    old_diff = {"estimate": 5.0, "ci95": [1.0, 9.0]}
    assert (
        judge(
            diff, old_diff, {"estimate": 40.0, "ci95": [30.0, 50.0]}, Tolerance("absolute", 20)
        ).status
        == "regressed"
    )
    assert (
        judge(
            diff, old_diff, {"estimate": 40.0, "ci95": [20.0, 50.0]}, Tolerance("absolute", 20)
        ).status
        == "ok"
    )


def test_update_never_writes_from_a_partial_run_nor_over_another_scenarios_reference(
    tmp_path, capsys
):
    reference = tmp_path / "synthetic.json"
    good = write_run(tmp_path / "good", good_records())
    assert main(["check", str(good), "--reference", str(reference), "--update"]) == 0
    before = reference.read_bytes()
    partial = write_run(tmp_path / "partial", good_records()[:3], status="interrupted")
    assert main(["check", str(partial), "--reference", str(reference), "--update"]) == 2
    assert (
        "status: expected 'finished' to write a reference, got 'interrupted'"
        in capsys.readouterr().err
    )
    other = write_run(tmp_path / "other", good_records(), scenario="other")
    assert main(["check", str(other), "--reference", str(reference), "--update"]) == 2
    assert "scenario: expected 'other'" in capsys.readouterr().err
    assert main(["check", str(other), "--reference", str(reference)]) == 2
    assert "a reference from another scenario" in capsys.readouterr().err
    assert reference.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_check_refuses_a_corrupt_reference_and_a_run_missing_its_cells(tmp_path, capsys):
    reference = tmp_path / "synthetic.json"
    good = write_run(tmp_path / "good", good_records())
    reference.write_text(
        '{"schema_version": 1,\n "scenario": "synthetic",\n "metrics": {"x.y": }\n}'
    )
    assert main(["check", str(good), "--reference", str(reference)]) == 2
    assert f"{reference}:3: (syntax): expected JSON" in capsys.readouterr().err
    assert main(["check", str(good), "--reference", str(reference), "--update"]) == 0
    capsys.readouterr()
    baseline_only = write_run(
        tmp_path / "subset", [r for r in good_records() if r["variant"] == "baseline"]
    )
    assert main(["check", str(baseline_only), "--reference", str(reference)]) == 2
    assert "missing qasm.active" in capsys.readouterr().err


def test_sweep_points_get_their_own_metric_names():
    records = [{**r, "parameters": {"workload.bytes": 1000}} for r in good_records()]
    records += [{**r, "parameters": {"workload.bytes": 2000}} for r in good_records()]
    metrics = flatten(summarize(records))
    assert metrics["counters.qasm.active.packet_ins@workload.bytes=1000"] == {"value": 6}
    assert "counters.qasm.active.packet_ins@workload.bytes=2000" in metrics
    assert "counters.qasm.active.packet_ins" not in metrics


def test_regression_block_problems_name_line_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        SCENARIO
        + "regression:\n"
        + "  counters.qasm.active.packet_in: exact\n"  # line 10: unknown counter
        + "  comparison.qasm.goodput_ratio: exact\n"  # line 11
        + "  comparison.tuple.goodput_ratio: {relative: 0.1}\n"  # 12: not a scenario variant
        + "  survival.qasm.active: {relative: 0}\n"  # 13
        + "  latency.qasm: exact\n"  # 14
        + "  counters.qasm.packet_ins: exact\n"  # 15: wrong shape
    )
    with pytest.raises(ScenarioError) as error:
        load_scenario(path)
    problems = error.value.problems
    assert len(problems) == 6
    assert problems[0].startswith(
        f"{path}:10: regression.counters.qasm.active.packet_in: expected a counter"
    )
    assert problems[1].startswith(
        f"{path}:11: regression.comparison.qasm.goodput_ratio: expected {{relative"
    )
    assert problems[2].startswith(
        f"{path}:12: regression.comparison.tuple.goodput_ratio: expected a compared variant"
    )
    assert problems[3] == (f"{path}:13: regression.survival.qasm.active: expected exact, ignore, "
                           "{relative: F} (0 < F <= 10) or {absolute: X} (X >= 0), got {relative: 0}")  # fmt: skip
    assert problems[4].startswith(f"{path}:14: regression.latency.qasm: expected a metric name")
    assert problems[5].startswith(
        f"{path}:15: regression.counters.qasm.packet_ins: expected the shape"
    )


def test_the_shipped_ci_scenario_declares_valid_tolerances():
    scenario = load_scenario(Path(__file__).resolve().parents[2] / "scenarios" / "ci.yaml")
    patterns = dict(scenario.regression)
    assert patterns["counters.*.*.packet_ins"] == Tolerance("absolute", 8.0)
