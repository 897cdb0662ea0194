"""The kernel variants on the real emulation (topologies/routed.py): Linux netfilter on the
router host, with and without the Tracking Agent anchoring paths in its conntrack, beside
our SDN variants. Reduced versions of scenarios/netfilter.yaml and scenarios/kubernetes.yaml,
and the router's clean-up."""

from __future__ import annotations

import json
import subprocess

import pytest
import yaml

from qasm.kernel.netfilter import KernelSettings, parse_conntrack
from testbed.emulation.kernel import RouterKernel, probe
from testbed.emulation.links import scratch_namespace
from tests.integration.conftest import REPOSITORY, leftovers, read_records, run_scenario

pytestmark = pytest.mark.integration


def _run(tmp_path_factory, name: str, **changes) -> tuple[list[dict], dict]:
    scenario = yaml.safe_load((REPOSITORY / "scenarios" / f"{name}.yaml").read_text())
    scenario.pop("sweep", None)
    scenario.update({"repetitions": 1, "workload": {"bytes": 2_000_000}, **changes})
    scenario["migration"]["at_bytes"] = 500_000
    run_dir = tmp_path_factory.mktemp(name)
    path = run_dir.parent / f"{name}-reduced.yaml"
    path.write_text(yaml.safe_dump(scenario))
    run_scenario(path, run_dir, timeout_s=600)
    metadata = json.loads((run_dir / "metadata.json").read_text())
    return read_records(run_dir), metadata


@pytest.fixture(scope="module")
def active(tmp_path_factory):
    """A firewall, a per-client rate limit and a NAT, active migration."""
    records, metadata = _run(
        tmp_path_factory, "netfilter",
        variants=["tuple", "netfilter", "netfilter-qasm"],
        functions=["firewall", "ratelimit", "nat"],
    )  # fmt: skip
    return {r["variant"]: r for r in records if r["migration"] == "active"}, metadata


@pytest.fixture(scope="module")
def rebinding(tmp_path_factory):
    """kube-proxy's rules for a Service with 3 endpoints, NAT rebinding, twice each."""
    records, metadata = _run(
        tmp_path_factory, "kubernetes",
        variants=["netfilter", "netfilter-qasm", "qasm"],
        migration={"kind": "nat-rebind"}, repetitions=2,
    )  # fmt: skip
    return records, metadata


def _survived(record: dict) -> bool:
    return record["completed"] and record["verified"]


def test_a_migrated_path_is_a_new_flow_to_the_kernels_firewall_as_to_tuple(active):
    records, _ = active
    for variant in ("tuple", "netfilter"):
        record = records[variant]
        assert not _survived(record), variant
        assert record["migrations"] == 1 and record["handshake_ms"] is not None


def test_with_the_agent_the_kernel_keeps_admission_rate_budget_and_nat(active):
    records, _ = active
    record = records["netfilter-qasm"]
    assert _survived(record), record["failure"]
    assert record["agent_exchanges"] and all(e["accepted"] for e in record["agent_exchanges"])
    assert record["leakage_bytes"] == 0  # one meter bucket: the new entry carries the mark
    # The new path's entry, source-NATed; the old one deleted when the client retired it.
    assert record["conntrack_entries"] == 1 and record["nat_mappings"] == 1
    assert record["hops"] == 0 and record["topology"] == "routed"


def test_the_kernels_conntrack_settings_and_the_entries_are_recorded(active, tmp_path_factory):
    records, metadata = active
    conntrack = metadata["link_emulation"]["conntrack"]
    assert conntrack["net.netfilter.nf_conntrack_udp_timeout_stream"] > 0
    assert conntrack["net.netfilter.nf_conntrack_max"] > 0
    samples = records["netfilter-qasm"]["conntrack_over_time"]
    assert samples and max(held for _, held in samples) <= 3


def test_the_router_left_nothing_behind(active, rebinding):
    for _, metadata in (active, rebinding):
        assert leftovers(metadata["emulation_prefix"]) == []


def test_kube_proxy_sends_a_rebound_path_to_an_endpoint_drawn_afresh(rebinding):
    records, _ = rebinding
    netfilter = [r for r in records if r["variant"] == "netfilter"]
    assert len(netfilter) == 2
    for record in netfilter:
        # Two entries: the old path's and the new one's, each DNATed to the endpoint it drew.
        assert record["conntrack_entries"] == 2, record
        # The connection lives exactly when the new path drew the endpoint that holds it.
        assert _survived(record) == (record["backend_changed"] is False), record


@pytest.mark.parametrize("variant", ["netfilter-qasm", "qasm"])
def test_with_qasm_a_rebound_path_keeps_its_endpoint(rebinding, variant):
    records, _ = rebinding
    mine = [r for r in records if r["variant"] == variant]
    assert len(mine) == 2
    for record in mine:
        assert _survived(record), record["failure"]
        assert not record["backend_changed"]
    if variant == "netfilter-qasm":
        assert all(r["conntrack_entries"] == 1 for r in mine)


def test_the_router_starts_each_run_empty_and_ends_it_empty():
    assert probe() is None
    with scratch_namespace("kc") as namespace:

        def popen(argv, **kwargs):
            return subprocess.Popen(["ip", "netns", "exec", namespace, *argv], **kwargs)

        def run(*argv: str) -> str:
            return subprocess.run(
                ["ip", "netns", "exec", namespace, *argv], capture_output=True, text=True,
                check=True,
            ).stdout  # fmt: skip

        kernel = RouterKernel(popen)
        kernel.apply(
            KernelSettings(
                "netfilter-qasm", ("firewall", "ratelimit", "nat", "loadbalancer"),
                "10.2.0.100", 4433, "10.1.0.0/16", "lo", ("10.2.4.1", "10.2.4.2"),
                "10.2.4.0/24", 1000, 100, "10.2.0.254",
            )
        )  # fmt: skip
        run(
            "conntrack", "-I", "-p", "udp", "--orig-src", "10.1.1.1", "--orig-dst",
            "10.2.0.100", "--sport", "5000", "--dport", "4433", "--reply-src", "10.2.0.100",
            "--reply-dst", "10.1.1.1", "--reply-port-src", "4433", "--reply-port-dst", "5000",
            "--timeout", "100", "--dst-nat", "10.2.4.1:4433",
        )  # fmt: skip
        assert "KUBE-SVC-" in run("iptables-save", "-t", "nat")
        assert "table inet qasm" in run("nft", "list", "ruleset")
        (entry,) = kernel.entries()
        assert entry.dnat_target == ("10.2.4.1", 4433)
        kernel.clear()
        ruleset = run("nft", "list", "ruleset")
        assert "qasm" not in ruleset and "KUBE" not in ruleset
        # iptables' own nat table stays (its built-in chains), with no rule in it.
        assert [line for line in run("iptables-save", "-t", "nat").splitlines() if
                line.startswith("-A")] == []  # fmt: skip
        assert parse_conntrack(run("conntrack", "-L")) == []
