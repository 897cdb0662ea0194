"""Metric computation, aggregation and result writing, on stored artifacts (no emulation)."""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import replace
from pathlib import Path

import pytest

from qasm.controller.events import (
    ConnectionState,
    Logged,
    NatMapping,
    PacketIn,
    Reason,
    SwitchConnected,
    Verdict,
)
from qasm.flow import FlowKey
from testbed import cli
from testbed.analysis.summary import bootstrap_interval, format_table, median_interval, summarize
from testbed.emulation.runner import (
    ExperimentRunner,
    _StopSignals,
    _Terminated,
    plan_runs,
    repetition_seed,
)
from testbed.records.metrics import build_record, disruption_ms, goodput_mbps
from testbed.scenario import load_scenario

REPOSITORY = Path(__file__).resolve().parents[2]
MIGRATION = {"kind": "active", "at": 100.0, "from": ["10.0.0.1", 5000], "to": ["10.0.0.101", 6000]}


def report(**overrides) -> dict:
    base = {
        "client": "c1", "completed": True, "verified": True, "handshake_ms": 9.0,
        "goodput_mbps": 40.0, "migration": MIGRATION, "failure": None, "bytes_requested": 10,
    }  # fmt: skip
    return {**base, **overrides}


SERVER_EVENTS = [
    {"event": "first_data", "t": 99.0, "client": "c1", "addr": ["10.0.0.1", 5000]},
    {"event": "first_data", "t": 99.5, "client": "c2", "addr": ["10.0.0.102", 7000]},
    {"event": "first_data", "t": 100.012, "client": "c1", "addr": ["10.0.0.101", 6000]},
]


def test_disruption_is_migration_to_first_server_byte_from_a_new_address():
    assert disruption_ms(report(), SERVER_EVENTS) == pytest.approx(12.0)
    assert disruption_ms(report(completed=False), SERVER_EVENTS) is None
    assert disruption_ms(report(migration=None), SERVER_EVENTS) is None


def test_disruption_ends_at_the_first_arrival_on_a_new_path_not_a_later_one():
    later = [
        *SERVER_EVENTS,
        {"event": "first_data", "t": 100.5, "client": "c1", "addr": ["10.0.0.101", 6001]},
        {"event": "first_data", "t": 100.030, "client": "c1", "addr": ["10.0.0.103", 6002]},
    ]
    assert disruption_ms(report(), later) == pytest.approx(12.0)
    # Arrivals from before the migration instant are not its end, whatever their address.
    early = [{**SERVER_EVENTS[2], "t": 99.9}, *SERVER_EVENTS]
    assert disruption_ms(report(), [SERVER_EVENTS[0], *early[:1], SERVER_EVENTS[2]]) == (
        pytest.approx(12.0)
    )


def test_goodput_is_payload_over_first_byte_to_reply_not_over_the_handshake():
    # 4 MB in 0.8 s from the first payload byte; a 0.2 s handshake before it is not counted.
    assert goodput_mbps(4_000_000, first_byte_sent_at=10.2, reply_received_at=11.0) == (
        pytest.approx(40.0)
    )
    with pytest.raises(ValueError, match="precede"):
        goodput_mbps(1, 5.0, 5.0)


def _logged(t: float, event) -> Logged:
    return Logged(t, "tuple", event)


def test_record_counts_only_this_clients_packet_ins_and_explains_a_failure():
    mine = FlowKey("10.0.0.1", 5000, "10.0.0.250", 4433)
    moved = FlowKey("10.0.0.101", 6000, "10.0.0.250", 4433)
    other = FlowKey("10.0.0.2", 5000, "10.0.0.250", 4433)
    decisions = [
        _logged(0.5, SwitchConnected(1, flow_mods=3)),
        _logged(1.0, PacketIn(1, 2, Verdict.ADMIT, Reason.OPENED_BY_INITIAL, flow=mine,
                              addrs=(mine.src_ip, mine.dst_ip), flow_mods=2)),
        _logged(101.0, PacketIn(1, 3, Verdict.DROP, Reason.NOT_AN_INITIAL, "short header",
                                flow=moved, addrs=(moved.src_ip, moved.dst_ip))),
        _logged(101.0, PacketIn(1, 4, Verdict.DROP, Reason.NOT_AN_INITIAL, "other client",
                                flow=other, addrs=(other.src_ip, other.dst_ip))),
    ]  # fmt: skip
    record = build_record(
        variant="tuple",
        functions=["firewall"],
        migration_kind="active",
        repetition=0,
        addresses=("10.0.0.1", "10.0.0.101"),
        report=report(completed=False, verified=False, goodput_mbps=None, failure="idle timeout"),
        server_events=SERVER_EVENTS,
        decisions=decisions,
    )
    assert (record["packet_ins"], record["flow_mods"]) == (2, 2)
    assert record["per_hop"]["packet_ins"] == [2]
    assert record["disruption_ms"] is None and record["completed"] is False
    assert record["failure"] == (
        "idle timeout; middlebox dropped 1 packets of 10.0.0.101:6000>10.0.0.250:4433: "
        "not_an_initial (short header)"
    )
    for field in ("variant", "functions", "migration", "repetition", "client", "completed",
                  "verified", "handshake_ms", "goodput_mbps", "disruption_ms", "packet_ins",
                  "flow_mods", "failure"):  # fmt: skip
        assert field in record


def test_the_servers_packets_on_a_retired_path_are_not_counted_as_the_migrations():
    """A server that gave up validating the new path goes back to the old one after the
    client retired it: a symptom of loss on the new path, counted apart."""
    new_path = PacketIn(
        1, 3, Verdict.ADMIT, Reason.DCID_MATCH, addrs=("10.0.0.101", "10.0.0.250"),
        flow=FlowKey("10.0.0.101", 6000, "10.0.0.250", 4433), flow_mods=2,
    )  # fmt: skip
    fallback = PacketIn(
        1, 1, Verdict.DROP, Reason.RETIRED_PATH, addrs=("10.0.0.250", "10.0.0.1"),
        flow=FlowKey("10.0.0.250", 4433, "10.0.0.1", 5000),
    )  # fmt: skip
    handshake_copy = replace(fallback, verdict=Verdict.OBSERVE, reason=Reason.HANDSHAKE_COPY)
    decisions = [_logged(99.0, handshake_copy), _logged(100.001, new_path),
                 _logged(101.3, fallback), _logged(101.4, fallback)]  # fmt: skip
    record = build_record(
        variant="qasm", functions=["firewall"], migration_kind="active", repetition=0,
        addresses=("10.0.0.1", "10.0.0.101"), report=report(), server_events=SERVER_EVENTS,
        decisions=decisions,
    )  # fmt: skip
    assert record["packet_ins"] == 4
    assert (record["migration_packet_ins"], record["retired_path_packet_ins"]) == (1, 2)


def test_behind_a_chain_of_nats_each_hop_counts_the_paths_the_hop_before_handed_on():
    client = FlowKey("10.0.1.1", 5000, "10.0.0.250", 4433)
    stranger = FlowKey("10.0.1.2", 5000, "10.0.0.250", 4433)
    hop1 = NatMapping(client, "10.0.100.1", 20000)
    hop1_stranger = NatMapping(stranger, "10.0.100.1", 20001)
    at_hop2 = FlowKey("10.0.100.1", 20000, "10.0.0.250", 4433)
    at_hop2_stranger = FlowKey("10.0.100.1", 20001, "10.0.0.250", 4433)
    hop2 = NatMapping(at_hop2, "10.0.100.2", 20000)
    decisions = [
        _logged(1.0, PacketIn(1, 2, Verdict.ADMIT, Reason.OPENED_BY_INITIAL, flow=client,
                              nat_allocated=(hop1,), flow_mods=2)),
        _logged(1.0, PacketIn(1, 4, Verdict.ADMIT, Reason.OPENED_BY_INITIAL, flow=stranger,
                              nat_allocated=(hop1_stranger,), flow_mods=2)),
        _logged(1.1, PacketIn(2, 2, Verdict.ADMIT, Reason.OPENED_BY_INITIAL, flow=at_hop2,
                              nat_allocated=(hop2,), flow_mods=2)),
        _logged(1.1, PacketIn(2, 2, Verdict.ADMIT, Reason.OPENED_BY_INITIAL,
                              flow=at_hop2_stranger, flow_mods=2)),
        _logged(9.0, ConnectionState(1, 1, None, (client,), (), (b"\x01",), (hop1,))),
        _logged(9.0, ConnectionState(2, 1, None, (at_hop2,), (), (b"\x01",), (hop2,))),
        _logged(9.0, ConnectionState(2, 2, None, (at_hop2_stranger,), (), (), ())),
    ]  # fmt: skip
    record = build_record(
        variant="tuple", functions=["nat"], migration_kind=None, repetition=0,
        addresses=("10.0.1.1",), report=report(migration=None), server_events=[],
        decisions=decisions, hops=(1, 2), nat=True,
    )  # fmt: skip
    assert record["per_hop"] == {
        "dpid": [1, 2],
        "packet_ins": [1, 1],
        "flow_mods": [2, 2],
        "nat_mappings": [1, 1],
    }
    assert (record["packet_ins"], record["nat_mappings"], record["state_entries"]) == (2, 2, 4)


def test_the_bootstrap_interval_is_the_95_percent_one_with_both_groups_resampled():
    variant = [10.0, 11.0, 12.5, 9.5, 10.5, 11.5]
    baseline = [10.0, 10.2, 9.8, 10.1, 9.9, 10.4]
    ratio = lambda a, b: a / b  # noqa: E731
    # Pinned for this seed: a narrower confidence level, or a baseline never resampled,
    # gives other endpoints.
    assert bootstrap_interval(variant, baseline, ratio, seed=1) == pytest.approx(
        [0.9708556730908563, 1.1940298507462686]
    )
    # A constant variant against a spread baseline still has an interval: the baseline moves.
    low, high = bootstrap_interval([10.0] * 6, baseline, ratio, seed=1)
    assert low < 10.0 / 10.05 < high and high - low > 0.03
    assert median_interval(variant, seed=1) == pytest.approx([9.75, 12.0])


def test_a_ratio_of_zero_medians_has_no_interval_and_no_warning(recwarn):
    # 0 migration packet-ins in both groups: some resampled ratios are 0/0.
    assert bootstrap_interval([0.0, 0.0, 1.0], [0.0, 0.0, 0.0], lambda a, b: a / b, 1) is None
    assert not recwarn.list  # stderr between the progress lines is noise to a reader


def _records(variant: str, goodputs: list[float], completed=True) -> list[dict]:
    return [
        {"variant": variant, "migration": "active", "completed": completed, "verified": completed,
         "goodput_mbps": g if completed else None, "handshake_ms": 10.0, "disruption_ms": 5.0,
         "packet_ins": 4, "flow_mods": 3, "failure": None if completed else "idle timeout"}
        for g in goodputs
    ]  # fmt: skip


def test_summary_compares_each_variant_with_baseline():
    records = _records("baseline", [40, 42, 44, 46]) + _records("tuple", [20, 21, 22, 23])
    summary = summarize(records, seed=1)
    comparison = summary["comparison_with_baseline"]["tuple"]["goodput_ratio"]
    assert comparison["estimate"] == pytest.approx(21.5 / 43)
    low, high = comparison["ci95"]
    assert low <= comparison["estimate"] <= high < 1
    assert comparison["note"] == "difference detected"
    assert summary == summarize(records, seed=1)  # seeded bootstrap: reproducible


def test_summary_says_when_it_cannot_compare():
    records = _records("baseline", [40]) + _records("tuple", [0], completed=False)
    comparison = summarize(records)["comparison_with_baseline"]["tuple"]
    assert comparison["goodput_ratio"]["estimate"] is None
    assert comparison["completed_fraction"] == 0 and comparison["baseline_completed_fraction"] == 1
    assert bootstrap_interval([1.0], [1.0, 2.0], lambda a, b: a / b, seed=0) is None


def test_table_has_a_row_per_variant_and_kind_with_the_failure():
    table = format_table(_records("baseline", [40]) + _records("tuple", [0], completed=False))
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["variant", "migration", "runs"]
    assert lines[1].startswith("baseline") and lines[2].startswith("tuple")
    assert lines[2].endswith("idle timeout")


def test_runs_are_interleaved_and_rotated_per_repetition():
    scenario = load_scenario(REPOSITORY / "scenarios" / "default.yaml")
    specs = plan_runs(scenario, ("baseline", "tuple"), repetitions=2)
    assert [(s.repetition, s.migration, s.variant) for s in specs] == [
        (0, "nat-rebind", "baseline"), (0, "nat-rebind", "tuple"),
        (0, "active", "baseline"), (0, "active", "tuple"),
        (1, "nat-rebind", "tuple"), (1, "nat-rebind", "baseline"),
        (1, "active", "tuple"), (1, "active", "baseline"),
    ]  # fmt: skip
    assert repetition_seed(1, 0) != repetition_seed(1, 1) == repetition_seed(1, 1)


def test_each_record_is_appended_and_the_summary_rewritten(tmp_path):
    scenario = load_scenario(REPOSITORY / "scenarios" / "default.yaml")
    runner = ExperimentRunner(scenario, tmp_path)
    runner._append_records(_records("baseline", [40, 41]))
    lines = (tmp_path / "records.jsonl").read_text().splitlines()
    assert [json.loads(line)["goodput_mbps"] for line in lines] == [40, 41]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["variants"]["baseline"]["runs"] == 2


def test_sweep_points_run_in_order_and_share_an_emulation_per_topology(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text(
        (REPOSITORY / "scenarios" / "default.yaml").read_text()
        + "sweep:\n  topology.clients: [1, 2]\n  workload.bytes: [3000000, 4000000]\n"
    )
    specs = plan_runs(load_scenario(path), ("baseline", "tuple"), repetitions=1)
    assert len(specs) == 4 * 2 * 2  # points x kinds x variants
    assert [s.index for s in specs] == list(range(1, 17))
    topologies = [s.topology_key for s in specs]
    assert topologies[:8] == [topologies[0]] * 8 and topologies[8:] == [topologies[8]] * 8
    assert topologies[0] != topologies[8]
    assert specs[-1].describe() == (
        "tuple active rep 0 [topology.clients=2, workload.bytes=4000000]"
    )


@pytest.mark.parametrize(
    ("signum", "raised"), [(signal.SIGINT, KeyboardInterrupt), (signal.SIGTERM, _Terminated)]
)
def test_a_stop_signal_python_swallowed_is_raised_again_at_the_next_check(signum, raised):
    before = signal.getsignal(signum)
    stop = _StopSignals()
    with stop:
        stop.check()  # nothing received yet
        try:
            os.kill(os.getpid(), signum)
            time.sleep(1)
        except raised:
            pass  # what Python does to an exception raised in an at-fork hook or __del__
        with pytest.raises(raised):
            stop.check()
    assert signal.getsignal(signum) is before


def test_a_host_agents_figures_reach_the_record():
    """A client nobody patched is announced by the host agent: its hold times and counters
    are the record's (`host_agent`), None for the builtin agent."""
    host = {"hold_ms": [1.5], "counters": {"queued": 1}, "cpu_s": 0.6, "exited": True}
    kwargs = dict(
        variant="qasm", functions=["firewall"], migration_kind="active", repetition=0,
        addresses=("10.0.0.1", "10.0.0.101"), server_events=SERVER_EVENTS, decisions=[],
    )  # fmt: skip
    assert build_record(report=report(host_agent=host), **kwargs)["host_agent"] == host
    assert build_record(report=report(), **kwargs)["host_agent"] is None


def test_a_run_stopped_by_sigterm_says_where_its_finished_runs_are(tmp_path, monkeypatch, capsys):
    """`kill` of `qasm run` (SIGTERM, or SIGHUP when its terminal goes) ends it as Ctrl-C does:
    exit 130 and the way to go on, not a traceback."""

    def terminated(self):
        raise _Terminated("signal SIGTERM")

    monkeypatch.setattr(ExperimentRunner, "run", terminated)
    out = tmp_path / "run"
    code = cli.main(["run", str(REPOSITORY / "scenarios" / "default.yaml"), "--out", str(out)])
    assert code == 130
    err = capsys.readouterr().err
    assert f"interrupted (signal SIGTERM); finished runs kept in {out}" in err
    assert f"qasm run --resume {out}" in err


def test_an_admission_ahead_counts_in_the_opening_as_far_as_it_was_waited_for():
    """qasm-ahead's handshake starts after its admission: opening_ms adds what of the
    admission came after the connection was due, so its cost shows where it was paid; an
    admission done ahead adds nothing, and without one the opening is the handshake."""
    kwargs = dict(
        functions=["firewall"], migration_kind="active", repetition=0,
        addresses=("10.0.0.1", "10.0.0.101"), server_events=SERVER_EVENTS, decisions=[],
    )  # fmt: skip
    waited = report(admission_ms=1.5, admission_wait_ms=1.25)
    ahead = build_record(variant="qasm", agent_mode="ahead", report=waited, **kwargs)
    assert (ahead["variant"], ahead["admission_ms"], ahead["opening_ms"]) == (
        "qasm-ahead", 1.5, 10.25,
    )  # fmt: skip
    in_time = report(admission_ms=1.5, admission_wait_ms=0.0)
    assert (
        build_record(variant="qasm", agent_mode="ahead", report=in_time, **kwargs)["opening_ms"]
        == 9.0
    )
    push = build_record(variant="qasm", agent_mode="push", report=report(), **kwargs)
    assert (push["variant"], push["admission_ms"], push["opening_ms"]) == ("qasm", None, 9.0)
