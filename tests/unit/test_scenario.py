"""Scenario validation: the default is valid; each kind of mistake names its line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from testbed.cli import main
from testbed.scenario import load_scenario
from tests.unit.conftest import load_scenario_text, scenario_problems, write_scenario

REPOSITORY = Path(__file__).resolve().parents[2]
VALID = """\
variants: [baseline, tuple]
topology:
  name: dualhomed
  clients: 1
workload:
  bytes: 4000
migration:
  kind: active
  at_bytes: 1000
"""


def test_default_scenario_is_valid_and_runs_both_kinds_and_variants():
    scenario = load_scenario(REPOSITORY / "scenarios" / "default.yaml")
    assert scenario.variants == ("baseline", "tuple")
    assert scenario.migration_kinds == ("nat-rebind", "active")
    assert scenario.migration.at_bytes < scenario.bytes


def test_minimal_scenario_gets_defaults(tmp_path):
    scenario = load_scenario_text(tmp_path, VALID)
    assert scenario.name == "scenario"
    assert scenario.seed == 0 and scenario.repetitions == 1
    assert scenario.functions == ("firewall",)
    assert scenario.migration.kinds == ("active",)
    assert scenario.topology_params == {"clients": 1}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (VALID + "colour: blue\n", "scenario.yaml:10: colour: unknown key"),
        (VALID.replace("clients: 1", "clients: one"), "4: topology.clients: expected an integer"),
        (VALID.replace("bytes: 4000", "bytes: -5"), "6: workload.bytes: expected an integer"),
        (VALID.replace("tuple]", "tupel]"), "1: variants: expected one of baseline, tuple"),
        (
            VALID.replace("at_bytes: 1000", "at_bytes: 4000"),
            "9: migration.at_bytes: expected at_bytes + spread less",
        ),
        (VALID.replace("kind: active", "kind: teleport"), "8: migration.kind: expected one of"),
        (VALID.replace("name: dualhomed", "name: ring"), "3: topology.name: expected one of"),
        (VALID.replace("  clients: 1\n", "  clients: 1\n  clients: 2\n"), "duplicate key"),
        (VALID.replace("  at_bytes: 1000\n", ""), "8: migration: expected exactly one of"),
        (
            VALID.replace("  clients: 1", "  wifi_bw_mbit: 0"),
            "topology.wifi_bw_mbit: expected a number",
        ),
        (
            VALID.replace("topology:\n  name: dualhomed\n  clients: 1\n", ""),
            "1: topology: expected this key",
        ),
        ("variants: [baseline\n", "(syntax): expected valid YAML"),
        ("", "expected a mapping, the file is empty"),
        ("- a\n- b\n", "(top level): expected a mapping"),
    ],
)
def test_each_kind_of_mistake_is_reported_with_file_line_and_key(tmp_path, text, expected):
    found = scenario_problems(tmp_path, text)
    assert any(expected in p for p in found), found
    assert all(p.startswith(str(tmp_path / "scenario.yaml") + ":") for p in found)


def test_all_problems_are_reported_in_one_pass(tmp_path):
    text = VALID.replace("tuple]", "tupel]").replace("bytes: 4000", "bytes: 0") + "extra: 1\n"
    assert len(scenario_problems(tmp_path, text)) == 3


def test_validate_command_exit_codes(tmp_path, capsys):
    assert main(["validate", str(write_scenario(tmp_path, VALID))]) == 0
    bad = write_scenario(tmp_path, VALID.replace("bytes: 4000", "bytes: -1"))
    assert main(["validate", str(bad)]) == 2
    assert f"{bad}:6: workload.bytes: expected" in capsys.readouterr().err


def test_run_rejects_bad_input_before_starting_anything(tmp_path, capsys):
    bad = write_scenario(tmp_path, VALID.replace("kind: active", "kind: teleport"))
    assert main(["run", str(bad), "--out", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()
    good = write_scenario(tmp_path, VALID)
    assert (
        main(["run", str(good), "--variants", "baseline,cidd", "--out", str(tmp_path / "o")]) == 2
    )
    assert "--variants: expected names" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_sweep_runs_the_cross_product_and_records_each_points_values(tmp_path):
    text = VALID + "sweep:\n  topology.clients: [1, 20]\n  workload.bytes: [4000, 8000]\n"
    scenario = load_scenario_text(tmp_path, text)
    points = [(p.topology_params["clients"], p.bytes, p.parameters) for p in scenario.points]
    assert points == [
        (1, 4000, {"topology.clients": 1, "workload.bytes": 4000}),
        (1, 8000, {"topology.clients": 1, "workload.bytes": 8000}),
        (20, 4000, {"topology.clients": 20, "workload.bytes": 4000}),
        (20, 8000, {"topology.clients": 20, "workload.bytes": 8000}),
    ]


def test_scenario_without_sweep_is_its_own_only_point(tmp_path):
    scenario = load_scenario_text(tmp_path, VALID)
    assert scenario.points == (scenario,) and scenario.parameters == {}


def test_sweep_over_functions_offers_quic_lb_only_where_it_balances(tmp_path):
    text = (
        VALID.replace("[baseline, tuple]", "[baseline, quic-lb]").replace(
            "clients: 1", "clients: 1\n  backends: 3"
        )
        + "sweep:\n  functions: [[firewall], [loadbalancer]]\n"
    )
    firewall, balancer = load_scenario_text(tmp_path, text).points
    assert firewall.applicable(firewall.variants) == ("baseline",)
    assert balancer.applicable(balancer.variants) == ("baseline", "quic-lb")


@pytest.mark.parametrize(
    ("sweep", "expected"),
    [
        (
            "sweep:\n  topology.clients: [1, 500]\n",
            "11: topology.clients: expected an integer 1..100",
        ),
        (
            "sweep:\n  variants: [[baseline]]\n",
            "11: sweep.variants: expected a key under firewall, functions",
        ),
        ("sweep:\n  workload.bytes: []\n", "11: sweep.workload.bytes: expected a non-empty list"),
        (
            "sweep:\n  workload.bytes: [5, 5]\n",
            "11: sweep.workload.bytes: expected each value once",
        ),
        ("sweep:\n  topology.colour: [red]\n", "11: topology.colour: unknown key"),
        ("sweep: [1, 2]\n", "10: sweep: expected a mapping"),
    ],
)
def test_bad_sweeps_name_the_line_in_the_sweep_block(tmp_path, sweep, expected):
    found = scenario_problems(tmp_path, VALID + sweep)
    assert any(expected in p for p in found), found


def test_migration_spread_gives_each_client_its_own_reproducible_trigger(tmp_path):
    text = VALID.replace("at_bytes: 1000", "at_bytes: 1000\n  spread: 2000")
    migration = load_scenario_text(tmp_path, text).migration
    triggers = [migration.trigger_for(client, seed=7) for client in range(1, 21)]
    assert triggers == [migration.trigger_for(client, seed=7) for client in range(1, 21)]
    values = [value for unit, value in triggers]
    assert {unit for unit, _ in triggers} == {"at_bytes"}
    assert all(1000 <= v <= 3000 for v in values) and len(set(values)) > 10
    late = VALID.replace("at_bytes: 1000", "at_bytes: 1000\n  spread: 3000")
    assert (
        "expected at_bytes + spread less than workload.bytes"
        in scenario_problems(tmp_path, late)[0]
    )


def test_firewall_sni_lists_and_the_client_server_name(tmp_path):
    text = VALID + (
        "firewall:\n  sni_deny: ['*.blocked.example']\n  sni_allow: [a.example, '*.b.example']\n"
    )
    text = text.replace("bytes: 4000", "bytes: 4000\n  server_name: video.blocked.example")
    scenario = load_scenario_text(tmp_path, text)
    assert scenario.server_name == "video.blocked.example"
    assert scenario.sni.deny == ("*.blocked.example",)
    assert scenario.sni.allow == ("a.example", "*.b.example")
    assert load_scenario_text(tmp_path, VALID).sni is None


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("firewall:\n  sni_deny: 'x.example'\n", "11: firewall.sni_deny: expected a list of host"),
        (
            "firewall:\n  sni_deny: ['bad name!']\n",
            "11: firewall.sni_deny: expected a host name or *.domain",
        ),
        (
            "firewall:\n  sni_allow: [a.example]\nfunctions: [nat]\nnat: {ports: 4}\n",
            "11: firewall: expected functions to include firewall",
        ),
        ("firewall:\n  colour: red\n", "11: firewall.colour: unknown key"),
    ],
)
def test_bad_firewall_blocks(tmp_path, extra, expected):
    found = scenario_problems(tmp_path, VALID + extra)
    assert any(expected in p for p in found), found


def test_a_bad_server_name_is_reported(tmp_path):
    text = VALID.replace("bytes: 4000", "bytes: 4000\n  server_name: '*.wild'")
    assert (
        "7: workload.server_name: expected a host name, got '*.wild'"
        in scenario_problems(tmp_path, text)[0]
    )


def test_middlebox_state_bounds_default_to_rfc9312_and_are_configurable(tmp_path):
    default = load_scenario_text(tmp_path, VALID)
    assert default.state_idle_timeout_s == 120.0 and default.max_connections == 100_000
    text = VALID + "middlebox: {idle_timeout_s: 300, max_connections: 5000}\n"
    scenario = load_scenario_text(tmp_path, text)
    assert (scenario.state_idle_timeout_s, scenario.max_connections) == (300.0, 5000)
    bad = VALID + "middlebox: {idle_timeout_s: 0, max_connections: 0}\n"
    found = scenario_problems(tmp_path, bad)
    assert any("middlebox.idle_timeout_s: expected a number in (0, 86400]" in p for p in found)
    assert any("middlebox.max_connections: expected an integer 1..10000000" in p for p in found)
