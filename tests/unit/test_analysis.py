"""qasm report / compare / check on synthetic run directories (no emulation)."""

from __future__ import annotations

import json
from dataclasses import replace
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


def write_run(
    directory: Path, records, *, status="finished", scenario="synthetic", tail="", **metadata
):
    directory.mkdir(parents=True)
    scenario_path = directory.parent / f"{scenario}.yaml"
    if not scenario_path.exists():
        scenario_path.write_text(SCENARIO.replace("name: synthetic", f"name: {scenario}"))
    metadata = {
        "schema_version": 1, "scenario": str(scenario_path), "scenario_sha256": None,
        "scenario_name": scenario, "seed": 3, "git_commit": "abc123", "status": status,
        "started_at": "2026-11-23T00:00:00", "ended_at": None, **metadata,
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


# --- readable at 1,000 records; link emulation; overhead panels; controller CPU ----------------

# metadata.json's link_emulation as recorded by `qasm run scenarios/default.yaml` on this
# project's CI machine (nfqueue method available, no link asking for delay or loss).
RECORDED_LINK_EMULATION = {
    "method": "nfqueue-delay+xt_statistic-loss",
    "bandwidth": "tc htb on both link ends (Mininet TCLink)",
    "links": {
        "q623fsrv-eth0": {
            "interface": "q623fsrv-eth0", "method": None,
            "conditions": {"bw_mbit": None, "delay_ms": 0.0, "jitter_ms": 0.0, "loss_pct": 0.0,
                           "limit_packets": 1000},
            "emulated_by": {"bw_mbit": "none", "delay_ms": "none", "jitter_ms": "none",
                            "loss_pct": "none"},
            "host": "q623fsrv",
        },
        "q623fc1-wifi": {
            "interface": "q623fc1-wifi", "method": None,
            "conditions": {"bw_mbit": 50.0, "delay_ms": 0.0, "jitter_ms": 0.0, "loss_pct": 0.0,
                           "limit_packets": 1000},
            "emulated_by": {"bw_mbit": "HTB on both link ends (Mininet TCLink)",
                            "delay_ms": "none", "jitter_ms": "none", "loss_pct": "none"},
            "host": "q623fc1",
        },
        "q623fc1-lte": {
            "interface": "q623fc1-lte", "method": None,
            "conditions": {"bw_mbit": 50.0, "delay_ms": 0.0, "jitter_ms": 0.0, "loss_pct": 0.0,
                           "limit_packets": 1000},
            "emulated_by": {"bw_mbit": "HTB on both link ends (Mininet TCLink)",
                            "delay_ms": "none", "jitter_ms": "none", "loss_pct": "none"},
            "host": "q623fc1",
        },
    },
    "fidelity": [],
    "fidelity_seconds": None,
}  # fmt: skip


def impaired_link_emulation() -> dict:
    """What EmulatedLinks.record() writes for a wifi link asking 25 ± 2 ms and 1 % loss, with
    the fidelity measured for it (values of a harness run's order of magnitude)."""
    from testbed.emulation import links
    from testbed.emulation.link_emulation import EmulatedLinks, LinkEnd

    wifi = links.LinkConditions(bw_mbit=50.0, delay_ms=25.0, jitter_ms=2.0, loss_pct=1.0)
    lte = links.LinkConditions(bw_mbit=50.0)
    ends = [LinkEnd("q9a1bc1", "q9a1bc1-wifi", wifi), LinkEnd("q9a1bc1", "q9a1bc1-lte", lte)]
    method = links.METHOD_NFQUEUE
    applied = links.LinkEmulation("q9a1bc1-wifi", wifi, method, popen=None)
    forward = links.DirectionFidelity(25.112, 1.954, 1.0, (0.275, 3.567), 200, 2, 196)
    backward = links.DirectionFidelity(24.987, 2.031, 0.505, (0.089, 2.78), 198, 1, 196)
    fidelity = links.Fidelity(
        replace(wifi, bw_mbit=None), method, 200, 0.002, forward, backward
    ).to_dict()
    emulated = EmulatedLinks(method, ends, [applied], [fidelity], 4.12)
    return json.loads(json.dumps(emulated.record()))  # as metadata.json holds it


def test_the_report_shows_link_emulation_as_a_table_not_a_dict(tmp_path):
    run = write_run(tmp_path / "run", good_records(), link_emulation=RECORDED_LINK_EMULATION)
    assert main(["report", str(run), "--no-plots"]) == 0
    markdown = (run / "report.md").read_text()
    assert "{'method'" not in markdown and "'links'" not in markdown
    assert (
        "| link emulation | delay/loss method nfqueue-delay+xt_statistic-loss; bandwidth by tc "
        "htb on both link ends (Mininet TCLink); no link asks for delay, jitter or loss; 3 "
        "link(s), per link below |"
    ) in markdown
    assert "| link | asked | emulated by | measured at start |" in markdown
    assert "| q623fsrv-eth0 | unshaped, no delay or loss | nothing to emulate | - |" in markdown
    assert (
        "| q623fc1-wifi, q623fc1-lte | 50 Mbit/s, no delay or loss | bandwidth: HTB on both link "
        "ends (Mininet TCLink) | - |"
    ) in markdown
    page = (run / "report.html").read_text()
    assert "<td>q623fsrv-eth0</td><td>unshaped, no delay or loss</td>" in page


def test_the_link_table_names_each_parameters_method_and_the_measured_fidelity():
    from testbed.analysis.report import link_emulation_fact, link_emulation_table

    recorded = impaired_link_emulation()
    assert link_emulation_fact(recorded) == (
        "delay/loss method nfqueue-delay+xt_statistic-loss; bandwidth by tc htb on both link "
        "ends (Mininet TCLink); fidelity measured for 1 condition(s) in 4.12 s; 2 link(s), per "
        "link below"
    )
    table = link_emulation_table(recorded)
    wifi, lte = table.rows
    assert wifi[:2] == (
        "q9a1bc1-wifi",
        "50 Mbit/s, delay 25 ± 2 ms, loss 1 %, at most 1000 packets held",
    )
    assert wifi[2] == (
        "bandwidth: HTB on both link ends (Mininet TCLink); delay: NFQUEUE delay line "
        "(testbed.emulation.delayline), host namespace, both directions; jitter: as delay, "
        "uniform ±, FIFO; loss: iptables-legacy xt_statistic random DROP, host namespace, both "
        "directions"
    )
    assert wifi[3] == (
        "egress delay 25.11 ± 1.95 ms, loss 1.0 % [0.3, 3.6]; "
        "ingress delay 24.99 ± 2.03 ms, loss 0.5 % [0.1, 2.8] (200 probes)"
    )
    assert lte == (
        "q9a1bc1-lte", "50 Mbit/s, no delay or loss",
        "bandwidth: HTB on both link ends (Mininet TCLink)", "-",
    )  # fmt: skip
    # an impaired link whose conditions were not measured says so
    recorded["fidelity"] = []
    assert link_emulation_table(recorded).rows[0][3] == "not measured"
    assert "fidelity not measured" in link_emulation_fact(recorded)
    assert link_emulation_fact(None).startswith("- (not recorded")
    assert link_emulation_table(None) is None and link_emulation_table({}) is None


def test_a_sweep_over_topology_gets_a_row_per_emulation_and_alike_links_share_one():
    from testbed.analysis.report import link_emulation_table

    first = {**RECORDED_LINK_EMULATION, "parameters": {"topology.clients": 1}}
    wide = json.loads(json.dumps(RECORDED_LINK_EMULATION))
    template = wide["links"].pop("q623fc1-wifi")
    for index in range(1, 101):
        name = f"q623fc{index}-wifi"
        wide["links"][name] = {**template, "interface": name, "host": f"q623fc{index}"}
    wide["parameters"] = {"topology.clients": 100}
    table = link_emulation_table({**first, "emulations": [wide]})
    assert table.header[:2] == ("emulation", "link")
    assert [row[:2] for row in table.rows] == [
        ("topology.clients=1", "q623fsrv-eth0"),
        ("topology.clients=1", "q623fc1-wifi, q623fc1-lte"),
        ("topology.clients=100", "q623fsrv-eth0"),
        ("topology.clients=100", "101 links: q623fc1-lte, q623fc1-wifi, q623fc2-wifi, …"),
    ]


def test_the_report_groups_a_thousand_failures_by_reason_and_labels_controller_cpu(tmp_path):
    records = good_records()
    for client in range(1000):
        failure = (
            f"connection closed by idle timeout (3 s without a packet from the server); "
            f"middlebox dropped {client % 90 + 10} packets of 10.0.1.1:{40000 + client}>"
            f"10.0.0.250:4433: not_an_initial (short header (not a connection's first packet))"
            if client % 4
            else "payload mismatch"
        )
        records.append(record("qasm", 3, 0, completed=False, client=f"c{client}", failure=failure))
    run = write_run(tmp_path / "run", records)
    assert main(["report", str(run), "--no-plots"]) == 0
    markdown = (run / "report.md").read_text()
    (row,) = [line for line in markdown.splitlines() if line.startswith("| qasm | active | 1003 |")]
    cells = row.split(" | ")
    assert cells[3:5] == ["3", "3"]  # completed, verified
    assert cells[-1] == (
        "750× connection closed by idle timeout (3 s without a packet from the server); "
        "middlebox dropped 11 packets of 10.0.1.1:40001>10.0.0.250:4433: not_an_initial (short "
        "header (not a connection's first packet)); 250× payload mismatch |"
    )
    assert "controller CPU s/conn (after start-up)" in markdown
    assert "from the switches' connection to the clients' end" in markdown


def test_overhead_draws_only_comparisons_some_variant_has_and_none_without(tmp_path):
    from testbed.analysis.report import overhead_metrics

    # nothing migrated: no disruption anywhere, so no disruption panel
    records = [{**r, "disruption_ms": None} for r in good_records()]
    compared = summarize(records, seed=3)["comparison_with_baseline"]
    assert overhead_metrics(compared) == [
        "goodput_ratio", "handshake_ms_difference", "handshake_ratio", "controller_cpu_ratio",
    ]  # fmt: skip
    run = write_run(tmp_path / "some", records)
    assert main(["report", str(run)]) == 0
    assert (run / "plots" / "overhead.png").exists()

    # every qasm connection lost before its handshake: no comparison has an estimate
    lost = [r for r in good_records() if r["variant"] == "baseline"] + [
        record("qasm", i, 0, completed=False, handshake_ms=None, controller_cpu_s=None)
        for i in range(3)
    ]
    assert overhead_metrics(summarize(lost, seed=3)["comparison_with_baseline"]) == []
    run = write_run(tmp_path / "none", lost)
    assert main(["report", str(run)]) == 0
    written = sorted(path.name for path in (run / "plots").iterdir())
    assert written == ["disruption.png", "goodput-around-migration.png", "matrix.png"]
    assert "overhead.png" not in (run / "report.md").read_text()


def test_the_report_plots_what_repeated_migration_costs_against_the_achieved_rate(tmp_path):
    records = []
    for period, achieved in ((0.1, 9.5), (0.01, 80.0), (0.005, 150.0)):
        for repetition in range(3):
            parameters = {"migration.repeat_every_s": period}
            records.append(record("baseline", repetition, 45.0, parameters=parameters,
                                  migration_rate_hz=achieved, migrations=int(achieved * 4)))  # fmt: skip
            records.append(
                record(
                    "qasm",
                    repetition,
                    44.0 - (achieved / 100),
                    parameters=parameters,
                    migration_rate_hz=achieved * 0.9,
                    migrations=int(achieved * 3.6),
                    agent_messages=int(achieved * 3.6) + 1,
                    nat_mappings=1,
                    nat_mappings_peak=2,
                )  # fmt: skip
            )
    rows = summarize(records, seed=1)["rates"]
    qasm = [r for r in rows if r["variant"] == "qasm"]
    assert [r["achieved_hz"] for r in qasm] == [8.55, 72.0, 135.0]  # slowest first
    fastest = qasm[-1]
    assert fastest["goodput_ratio"]["estimate"] == pytest.approx((44.0 - 1.5) / 45.0)
    assert fastest["nat_mappings_peak"] == 2 and fastest["nat_mappings_end"] == 1
    assert fastest["agent_messages_per_migration"] == pytest.approx(541 * 3 / (540 * 3), abs=1e-3)
    run = write_run(tmp_path / "run", records)
    assert main(["report", str(run)]) == 0
    assert (run / "plots" / "against-migration-rate.png").exists()
    assert "Against the achieved migration rate" in (run / "report.md").read_text()


def test_a_sweep_over_middlebox_state_compares_redis_with_memory_per_point():
    """What shared state costs, with its interval: redis runs against memory runs of the same
    variant, kind and other sweep values, never across points."""
    records = []
    for state, goodput in (("memory", (40.0, 41.0, 42.0)), ("redis", (20.0, 21.0, 22.0))):
        for replicas in (2, 4):
            for repetition, value in enumerate(goodput):
                parameters = {"middlebox.state": state, "topology.replicas": replicas}
                records.append(record("qasm", repetition, value, parameters=parameters))
    rows = summarize(records)["state_comparison"]
    assert [(r["variant"], r["migration"], r["point"]) for r in rows] == [
        ("qasm", "active", "topology.replicas=2"),
        ("qasm", "active", "topology.replicas=4"),
    ]
    goodput = rows[0]["goodput_ratio"]
    assert goodput["estimate"] == pytest.approx(21.0 / 41.0)
    assert goodput["ci95"][1] < 1.0 and goodput["note"] == "difference detected"
    assert rows[0]["redis_completed_fraction"] == rows[0]["memory_completed_fraction"] == 1.0
    # Without the sweep, nothing to compare.
    assert summarize(good_records())["state_comparison"] == []


def test_an_admission_ahead_is_not_counted_as_a_migration_message():
    records = [
        record("baseline", 0, 45.0, migration_rate_hz=50.0, migrations=100),
        record(
            "qasm-ahead", 0, 44.0, migration_rate_hz=50.0, migrations=100, agent_messages=102,
            admission_ms=1.5,
        ),  # admit, 100 announcements, a last retirement
    ]  # fmt: skip
    (ahead,) = [r for r in summarize(records, seed=1)["rates"] if r["variant"] == "qasm-ahead"]
    assert ahead["agent_messages_per_migration"] == 1.01
