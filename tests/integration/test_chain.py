"""A reduced scenarios/chain.yaml on the real emulation: two middlebox hops in series, each
its own OVS bridge and middlebox instance, with [nat] and [firewall, nat], every variant,
qasm in push and pull mode, repeated rebinding and repeated active migration."""

from __future__ import annotations

import pytest
import yaml

from tests.integration.conftest import REPOSITORY, read_records, run_scenario

pytestmark = pytest.mark.integration
HOPS = 2


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    scenario = yaml.safe_load((REPOSITORY / "scenarios" / "chain.yaml").read_text())
    scenario.update(repetitions=1, workload={"bytes": 3_000_000})
    scenario["topology"].update(hops=HOPS, wifi_bw_mbit=20, lte_bw_mbit=20)
    scenario["migration"].update(at_seconds=0.3, repeat_every_s=0.4)
    scenario["sweep"] = {"functions": [["nat"], ["firewall", "nat"]]}
    run_dir = tmp_path_factory.mktemp("chain")
    path = run_dir.parent / "chain-reduced.yaml"
    path.write_text(yaml.safe_dump(scenario))
    run_scenario(path, run_dir, timeout_s=900)
    return {(tuple(r["functions"]), r["variant"], r["migration"]): r for r in read_records(run_dir)}


def _survived(record) -> bool:
    return record["completed"] and record["verified"]


@pytest.mark.parametrize("kind", ["nat-rebind", "active"])
@pytest.mark.parametrize("variant", ["baseline", "tuple", "cid", "qasm", "qasm-pull"])
def test_behind_a_chain_of_nats_every_variant_completes(records, variant, kind):
    record = records[(("nat",), variant, kind)]
    assert _survived(record), record["failure"]
    assert record["hops"] == HOPS and record["topology"] == "chain"
    assert record["migrations"] >= 3  # repeated, active included (a fresh CID each time)
    assert record["per_hop"]["dpid"] == [1, 2]


@pytest.mark.parametrize("variant", ["qasm", "qasm-pull"])
def test_qasm_ends_with_exactly_one_nat_mapping_per_hop(records, variant):
    for kind in ("nat-rebind", "active"):
        record = records[(("nat",), variant, kind)]
        assert record["per_hop"]["nat_mappings"] == [1] * HOPS, record["per_hop"]
        assert record["agent_mode"] == variant.removeprefix("qasm").lstrip("-") or "push"


@pytest.mark.parametrize("variant", ["tuple", "cid"])
def test_passive_variants_hold_a_mapping_per_path_they_used_until_the_idle_timeout(
    records, variant
):
    for kind in ("nat-rebind", "active"):
        record = records[(("nat",), variant, kind)]
        paths = record["migrations"] + 1
        assert record["per_hop"]["nat_mappings"] == [paths] * HOPS, (kind, record["per_hop"])


def test_push_pre_installs_every_hop_and_pull_asks_once_per_hop_and_migration(records):
    for kind in ("nat-rebind", "active"):
        assert records[(("firewall", "nat"), "qasm", kind)]["migration_packet_ins"] == 0
    pulled = records[(("firewall", "nat"), "qasm-pull", "active")]
    # Each active migration's first packet meets an unknown CID at each hop (a packet-in per
    # hop); a rebinding keeps its CID, so the hops follow it by DCID.
    assert pulled["migration_packet_ins"] >= HOPS * pulled["migrations"]


@pytest.mark.parametrize(
    ("variant", "kind", "survives"),
    [
        ("baseline", "nat-rebind", True), ("baseline", "active", True),
        ("tuple", "nat-rebind", False), ("tuple", "active", False),
        ("cid", "nat-rebind", True), ("cid", "active", False),
        ("qasm", "nat-rebind", True), ("qasm", "active", True),
        ("qasm-pull", "nat-rebind", True), ("qasm-pull", "active", True),
    ],
)  # fmt: skip
def test_with_firewalls_on_the_chain_only_the_cid_aware_follow(records, variant, kind, survives):
    record = records[(("firewall", "nat"), variant, kind)]
    assert _survived(record) is survives, record["failure"]
