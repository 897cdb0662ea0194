"""Scenario validation: the default is valid; each kind of mistake names its line and key."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest
import yaml

from qasm.functions.firewall import SniPolicy
from qasm.functions.ratelimit import RateLimit
from testbed.apps.transfer import SERVER_NAME
from testbed.cli import main
from testbed.scenario import load_scenario
from testbed.scenario.models import Artifacts, ChainTopology, Middlebox, Scenario, Timeouts
from testbed.scenario.schema import REGENERATE, SCHEMA_PATH, schema_text
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
    assert scenario.migration.at_bytes < scenario.workload.bytes


def test_minimal_scenario_gets_defaults(tmp_path):
    scenario = load_scenario_text(tmp_path, VALID)
    assert scenario.name == "scenario"
    assert scenario.seed == 0 and scenario.repetitions == 1
    assert scenario.functions == ("firewall",)
    assert scenario.migration.kinds == ("active",)
    assert scenario.topology.clients == 1 and scenario.topology.backends is None
    assert scenario.timeouts == Timeouts(idle_s=5.0, run_s=60.0)
    assert scenario.agent.secret == "qasm-testbed" and scenario.agent.modes == ("push",)
    assert scenario.artifacts == Artifacts() and scenario.cpu_pinning is False
    assert (scenario.ratelimit, scenario.nat, scenario.firewall, scenario.flood) == (None,) * 4
    assert scenario.regression == () and scenario.sweep == ()


def test_a_client_hosts_agent_budget_is_its_connections_times_one_connections(tmp_path):
    # One agent key per host: 20 connections announcing and retiring within a second need
    # 20 connections' worth of reports, or the Tracking Agent refuses their retirements.
    text = VALID.replace("  bytes: 4000\n", "  bytes: 4000\n  connections: 20\n")
    text += "agent:\n  reports_per_s: 30\n  report_burst: 5\n  max_paths: 4\n"
    scenario = load_scenario_text(tmp_path, text)
    budget = scenario.agent.host_budget(scenario.workload.connections)
    assert budget == {"reports_per_s": 600, "report_burst": 100, "max_paths": 80}


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
        # A rule about a section's keys names the section's own line.
        (VALID.replace("  at_bytes: 1000\n", ""), "7: migration: expected exactly one of"),
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
    points = [(p.topology.clients, p.workload.bytes, p.parameters) for p in scenario.points]
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
    assert scenario.workload.server_name == "video.blocked.example"
    assert scenario.firewall.policy() == SniPolicy(
        allow=("a.example", "*.b.example"), deny=("*.blocked.example",)
    )
    assert load_scenario_text(tmp_path, VALID).firewall is None
    assert load_scenario_text(tmp_path, VALID).workload.server_name == SERVER_NAME


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
            "10: firewall: expected functions to include firewall",
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
    assert default.middlebox == Middlebox(idle_timeout_s=120.0, max_connections=100_000)
    text = VALID + "middlebox: {idle_timeout_s: 300, max_connections: 5000}\n"
    scenario = load_scenario_text(tmp_path, text)
    assert (scenario.middlebox.idle_timeout_s, scenario.middlebox.max_connections) == (300.0, 5000)
    bad = VALID + "middlebox: {idle_timeout_s: 0, max_connections: 0}\n"
    found = scenario_problems(tmp_path, bad)
    assert any("middlebox.idle_timeout_s: expected a number in (0, 86400]" in p for p in found)
    assert any("middlebox.max_connections: expected an integer 1..10000000" in p for p in found)


# --- problems: every pydantic error reads `expected ...`, with the line of its key --------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (VALID + "seed: 1\nseed: 2\n", "11: seed: expected each key once (duplicate key)"),
        (
            VALID + "artifacts: {pcaps: true}\n",
            "10: artifacts.pcaps: unknown key, expected one of pcap, qlog, keylog",
        ),
        # A missing key: the line of the section that lacks it.
        (VALID + "flood:\n  {}\n", "10: flood.pps: expected this key (missing)"),
        (VALID + "timeouts: [3, 60]\n", "10: timeouts: expected a mapping"),
        (
            VALID.replace("  name: dualhomed\n", ""),
            "2: topology.name: expected this key (missing), one of dualhomed, chain, routed, replicas",
        ),
        (
            VALID.replace("name: dualhomed", "name: ring"),
            "3: topology.name: expected one of dualhomed, chain, routed, replicas, got 'ring'",
        ),
        (
            VALID.replace("clients: 1", "clients: 1\n  hops: 2"),
            "5: topology.hops: unknown key, expected one of name, clients,",
        ),
        (
            VALID.replace("tuple]", "tuple, tuple]"),
            "1: variants: expected each of baseline, tuple, cid, qasm, quic-lb, netfilter, "
            "netfilter-qasm once",
        ),
        (VALID.replace("[baseline, tuple]", "[]"), "1: variants: expected at least one of"),
        (
            VALID.replace("clients: 1", "clients: 1.0"),
            "4: topology.clients: expected an integer 1..100, got 1.0",
        ),
        (
            VALID.replace("clients: 1", "clients: true"),
            "4: topology.clients: expected an integer 1..100, got True",
        ),
        (
            VALID + "cpu_pinning: yes please\n",
            "10: cpu_pinning: expected true or false, got 'yes please'",
        ),
        (VALID + "seed: !!python/name:os.system\n", "10: seed: expected a plain YAML value"),
        (VALID + "description: 5\n", "10: description: expected a string, got 5"),
    ],
)
def test_each_pydantic_error_gets_our_own_message(tmp_path, text, expected):
    found = scenario_problems(tmp_path, text)
    assert any(expected in p for p in found), found
    assert not any(
        "Input should" in p or "Field required" in p or "Extra inputs" in p for p in found
    )


def test_a_problem_outside_the_sweep_is_reported_once_and_each_bad_point_once(tmp_path):
    text = VALID + "seed: -1\nsweep:\n  topology.clients: [1, 500, 600]\n"
    found = [p.split(":", 1)[1] for p in scenario_problems(tmp_path, text)]
    assert found == [
        "10: seed: expected an integer >= 0, got -1",
        "12: topology.clients: expected an integer 1..100, got 500",
        "12: topology.clients: expected an integer 1..100, got 600",
    ]


def test_a_bad_sweep_value_in_a_block_list_names_its_own_line(tmp_path):
    text = VALID + "sweep:\n  migration.at_bytes:\n    - 10\n    - 5000\n"
    (found,) = scenario_problems(tmp_path, text)
    assert found.endswith(
        ":13: migration.at_bytes: expected at_bytes + spread less than workload.bytes (4000): "
        "migration after the end"
    )


def test_a_bad_sweep_block_still_reports_the_rest_but_not_what_it_would_set(tmp_path):
    text = (
        VALID.replace("bytes: 4000", "bytes: 0") + "colour: red\n"
        "sweep:\n  workload.bytes: []\n  topology.clients: [1, 2]\n"
    )
    found = [p.split(":", 1)[1] for p in scenario_problems(tmp_path, text)]
    assert found == [
        "10: colour: unknown key, expected one of name, description, seed, repetitions, "
        "variants, functions, topology, workload, timeouts, migration, agent, ratelimit, nat, "
        "firewall, middlebox, regression, artifacts, cpu_pinning, flood, faults, sweep",
        "12: sweep.workload.bytes: expected a non-empty list of values",
    ]


def test_sweeps_can_create_sections_and_are_bounded(tmp_path):
    text = VALID + "functions: [nat]\nsweep:\n  nat.ports: [4, 8]\n"
    assert [p.nat.ports for p in load_scenario_text(tmp_path, text).points] == [4, 8]
    many = VALID + f"sweep:\n  seed: [0]\n  workload.bytes: {list(range(2000, 2257))}\n"
    found = scenario_problems(tmp_path, many)
    assert any("11: sweep.seed: expected a key under" in p for p in found), found
    assert any("10: sweep: expected at most 256 points, got 257" in p for p in found), found


def test_the_file_itself_is_recorded(tmp_path):
    path = write_scenario(tmp_path, VALID)
    scenario = load_scenario(path)
    assert scenario.path == path and scenario.name == "scenario"
    assert scenario.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert scenario.raw == yaml.safe_load(VALID)
    assert load_scenario_text(tmp_path, VALID + "name: other\n").name == "other"


# --- sections ----------------------------------------------------------------------------------


def test_chain_topology_has_hops_and_no_backends(tmp_path):
    chain = VALID.replace("name: dualhomed", "name: chain")
    topology = load_scenario_text(tmp_path, chain).topology
    assert isinstance(topology, ChainTopology) and topology.hops == 1
    assert topology.topo_kwargs() == {
        "clients": 1,
        "hops": 1,
        "bandwidths": {"wifi": None, "lte": None, "server": None},
    }
    assert load_scenario_text(tmp_path, chain.replace("clients: 1", "hops: 0")).topology.hops == 0
    found = scenario_problems(tmp_path, chain.replace("clients: 1", "hops: 9"))
    assert any("4: topology.hops: expected an integer 0..8, got 9" in p for p in found), found
    balancer = chain.replace("tuple]", "tuple]\nfunctions: [loadbalancer]")
    found = scenario_problems(tmp_path, balancer)
    assert any(
        "3: topology.backends: expected a topology with backends (dualhomed, routed), "
        "functions has loadbalancer" in p
        for p in found
    ), found


def test_dualhomed_topology_keyword_arguments_and_link_conditions(tmp_path):
    text = VALID.replace(
        "clients: 1",
        "clients: 2\n  backends: 3\n  wifi_bw_mbit: 50\n  wifi_delay_ms: 25\n"
        "  wifi_jitter_ms: 2\n  wifi_loss_pct: 1\n  server_delay_ms: 5",
    )
    topology = load_scenario_text(tmp_path, text).topology
    bandwidths = {"wifi": 50.0, "lte": None, "server": None}
    assert topology.bandwidths() == bandwidths
    assert topology.topo_kwargs() == {"clients": 2, "backends": 3, "bandwidths": bandwidths}
    conditions = topology.link_conditions()
    assert set(conditions) == {"wifi", "lte", "server"}
    wifi = conditions["wifi"]
    assert (wifi.bw_mbit, wifi.delay_ms, wifi.jitter_ms, wifi.loss_pct) == (50.0, 25.0, 2.0, 1.0)
    assert conditions["server"].delay_ms == 5.0 and not conditions["lte"].impaired


def test_jitter_is_at_most_the_same_links_delay(tmp_path):
    text = VALID.replace("clients: 1", "clients: 1\n  lte_delay_ms: 5\n  lte_jitter_ms: 6")
    found = scenario_problems(tmp_path, text)
    assert any("6: topology.lte_jitter_ms: expected at most lte_delay_ms (5)" in p for p in found)


def test_agent_modes(tmp_path):
    text = VALID + "agent:\n  mode: [push, pull]\n"
    assert load_scenario_text(tmp_path, text).agent.modes == ("push", "pull")
    assert load_scenario_text(tmp_path, VALID + "agent: {mode: pull}\n").agent.modes == ("pull",)
    found = scenario_problems(tmp_path, VALID + "agent: {mode: poll, secret: 5}\n")
    assert any("10: agent.mode: expected one of push, pull, ahead, got 'poll'" in p for p in found)
    assert any("10: agent.secret: expected a string, got 5" in p for p in found)
    sweep = VALID + "sweep:\n  agent.mode: [push, pull]\n"
    assert [p.agent.modes for p in load_scenario_text(tmp_path, sweep).points] == [
        ("push",),
        ("pull",),
    ]


AHEAD = """\
variants: [baseline, qasm]
topology: {name: dualhomed, clients: 1}
workload: {bytes: 4000}
agent: {mode: [push, ahead]}
"""


@pytest.mark.parametrize(
    ("old", "new", "why"),
    [
        ("name: dualhomed", "name: replicas", "topology replicas"),
        ("bytes: 4000", "bytes: 4000, client_stack: qh3", "host Client Agent"),
        ("agent:", "firewall: {sni_deny: [blocked.example]}\nagent:", "SNI policy"),
        ("agent:", "firewall: {sni_allow: []}\nagent:", "SNI policy"),
    ],
)
def test_agent_mode_ahead_is_refused_where_no_hop_could_admit_ahead(tmp_path, old, new, why):
    assert load_scenario_text(tmp_path, AHEAD).agent.modes == ("push", "ahead")
    found = scenario_problems(tmp_path, AHEAD.replace(old, new))
    assert any("agent.mode: expected push or pull (" in p and why in p for p in found), found


def test_repeated_migration_is_allowed_for_every_kind(tmp_path):
    text = VALID.replace("kind: active", "kind: [active, addr-rebind]").replace(
        "at_bytes: 1000", "at_seconds: 0.5\n  repeat_every_s: 1"
    )
    migration = load_scenario_text(tmp_path, text).migration
    assert migration.kinds == ("active", "addr-rebind") and migration.repeat_every_s == 1.0
    assert migration.trigger_for(1, seed=3) == ("at_seconds", 0.5)


def test_trigger_for_keeps_its_seeded_draw(tmp_path):
    bytes_spread = VALID.replace("at_bytes: 1000", "at_bytes: 1000\n  spread: 2000")
    migration = load_scenario_text(tmp_path, bytes_spread).migration
    assert migration.spread == 2000 and isinstance(migration.spread, int)
    draw = random.Random("7:3").uniform(0, 2000)
    assert migration.trigger_for(3, seed=7) == ("at_bytes", 1000 + int(draw))
    seconds = VALID.replace("at_bytes: 1000", "at_seconds: 2\n  spread: 1.5")
    migration = load_scenario_text(tmp_path, seconds).migration
    assert migration.trigger_for(3, seed=7) == (
        "at_seconds",
        2 + random.Random("7:3").uniform(0, 1.5),
    )
    found = scenario_problems(tmp_path, bytes_spread.replace("spread: 2000", "spread: 0.5"))
    assert any("10: migration.spread: expected an integer >= 0, got 0.5" in p for p in found)


def test_functions_need_their_sections_and_sections_build_their_settings(tmp_path):
    found = scenario_problems(tmp_path, VALID + "functions: [ratelimit, nat]\n")
    assert any(
        "1: ratelimit: expected rate_mbit and burst_kbit (functions has ratelimit)" in p
        for p in found
    )
    assert any("1: nat: expected ports (functions has nat)" in p for p in found)
    text = (
        VALID
        + "functions: [ratelimit, nat]\nratelimit: {rate_mbit: 8.5, burst_kbit: 800}\nnat: {ports: 64}\n"
    )
    scenario = load_scenario_text(tmp_path, text)
    assert scenario.ratelimit.limit() == RateLimit(rate_kbps=8500, burst_kbit=800)
    assert scenario.nat.ports == 64
    flood = load_scenario_text(tmp_path, VALID + "flood: {pps: 500}\n").flood
    assert flood.pps == 500


# --- the JSON Schema -----------------------------------------------------------------------------


def test_the_committed_json_schema_is_up_to_date():
    assert SCHEMA_PATH == REPOSITORY / "scenarios" / "schema.json"
    committed = SCHEMA_PATH.read_text(encoding="utf-8") if SCHEMA_PATH.exists() else None
    assert committed == schema_text(), (
        f"{SCHEMA_PATH} is out of date: regenerate it with `{REGENERATE}` and commit it"
    )


def test_the_json_schema_covers_and_describes_every_key():
    schema = json.loads(schema_text())
    assert tuple(schema["properties"]) == Scenario.yaml_keys()
    assert set(schema["required"]) == {"variants", "topology", "workload"}
    sections = [schema, *schema["$defs"].values()]
    undescribed = [
        key
        for section in sections
        for key, value in section["properties"].items()
        if not value.get("description")
    ]
    assert undescribed == []
    for path in sorted((REPOSITORY / "scenarios").glob("*.yaml")):
        assert set(yaml.safe_load(path.read_text())) <= set(schema["properties"]), path


def test_a_sweep_key_must_lead_through_mappings(tmp_path):
    text = VALID + "functions: [firewall]\nsweep:\n  functions.x: [1, 2]\n"
    found = scenario_problems(tmp_path, text)
    assert any(
        "12: sweep.functions.x: expected a path through mappings, functions is not one" in p
        for p in found
    ), found


def test_every_shipped_point_dumps_to_what_its_file_says(tmp_path):
    """model_dump(by_alias=True) writes the keys as the file does: it validates to the same."""
    for path in sorted((REPOSITORY / "scenarios").glob("*.yaml")):
        scenario = load_scenario(path)
        for point in scenario.points:
            data = point.model_dump(by_alias=True)
            again = Scenario.from_data(
                data, path=path, text="", raw=data, sweeping=bool(scenario.sweep)
            )
            assert again.model_dump() == point.model_dump(), path


def test_kernel_variants_run_on_the_routed_topology_without_sni_lists(tmp_path):
    routed = VALID.replace("[baseline, tuple]", "[netfilter, netfilter-qasm, qasm]").replace(
        "name: dualhomed", "name: routed"
    )
    scenario = load_scenario_text(tmp_path, routed)
    assert scenario.variants == ("netfilter", "netfilter-qasm", "qasm")
    found = scenario_problems(tmp_path, routed.replace("name: routed", "name: dualhomed"))
    assert any(
        "3: topology.name: expected routed: variant netfilter runs on a router host" in p
        for p in found
    ), found
    sni = routed + "functions: [firewall]\nfirewall: {sni_deny: ['*.blocked.example']}\n"
    found = scenario_problems(tmp_path, sni)
    assert any(
        "11: firewall: expected no SNI lists with variant netfilter (netfilter cannot read" in p
        for p in found
    ), found
    sdn_only = sni.replace("[netfilter, netfilter-qasm, qasm]", "[qasm]")
    assert load_scenario_text(tmp_path, sdn_only).firewall.sni_deny == ("*.blocked.example",)
