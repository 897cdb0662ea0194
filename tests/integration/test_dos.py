"""scenarios/dos.yaml on the real emulation: one QUIC connection rebinds to a new UDP source
port every 0.3 s through a rate limiter and an 8-port NAT, in every variant, and through
Linux's (netfilter, netfilter-qasm on the router host). What each variant's rate limiter and
NAT make of it, judged from the records."""

from __future__ import annotations

import math
import statistics

import pytest

from testbed.apps.client import OLD_SOCKET_GRACE_S
from testbed.scenario import load_scenario
from tests.integration.conftest import (
    REPOSITORY,
    assert_each_path_announced_and_retired_once,
    read_records,
    run_scenario,
)

pytestmark = pytest.mark.integration
SCENARIO = REPOSITORY / "scenarios" / "dos.yaml"


@pytest.fixture(scope="module")
def scenario():
    return load_scenario(SCENARIO)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("dos")
    run_scenario(SCENARIO, run_dir)
    return {r["variant"]: r for r in read_records(run_dir)}


def test_every_variant_keeps_rebinding_while_it_sends(records, scenario):
    repeat = scenario.migration.repeat_every_s
    for variant, record in records.items():
        instants = record["migration_instants_s"]
        assert record["migrations"] == len(instants) >= 2, variant
        gaps = [b - a for a, b in zip(instants, instants[1:], strict=False)]
        # A migration starts every repeat_every_s; its instant is when the client switched,
        # after the agent's ack, which takes longer some times than others (netfilter-qasm:
        # conntrack commands), so single gaps vary around it.
        assert statistics.median(gaps) >= repeat - 0.01, (variant, gaps)
        assert min(gaps) >= repeat / 2, (variant, gaps)


def test_baseline_has_neither_limit_nor_nat_and_completes(records):
    record = records["baseline"]
    assert record["completed"] and record["verified"], record["failure"]
    assert record["leakage_bytes"] is None and record["nat_mappings"] is None


def test_qasm_keeps_one_bucket_and_releases_every_retired_port(records, scenario):
    record = records["qasm"]
    assert record["completed"] and record["verified"], record["failure"]
    assert record["leakage_bytes"] == 0
    assert record["nat_pool_exhausted"] == 0
    # The transfer outlasts many rebinds: (bytes - burst) at the limited rate.
    rate_bytes = scenario.ratelimit.limit().rate_kbps * 1000 / 8
    burst_bytes = scenario.ratelimit.limit().burst_kbit * 1000 / 8
    least_s = (scenario.workload.bytes - burst_bytes) / rate_bytes - scenario.migration.at_seconds
    assert record["migrations"] >= least_s / scenario.migration.repeat_every_s / 2
    # Every rebind was announced and its old path retired, and the Tracking Agent took all.
    exchanges = record["agent_exchanges"]
    assert_each_path_announced_and_retired_once(exchanges, record["migrations"])
    assert all(e["accepted"] for e in exchanges), exchanges
    # Only live paths hold a port: the current one and those whose old socket is still in
    # its grace period (plus one in flight); one at the end.
    live = 2 + math.ceil(OLD_SOCKET_GRACE_S / scenario.migration.repeat_every_s)
    assert record["nat_mappings_peak"] <= min(live, scenario.nat.ports)
    assert record["nat_mappings"] == 1
    # The real connection was never taken for half-open (its agent's reports and its probe
    # say the server answered), nor evicted.
    assert record["connections_half_open"] == 0 and record["connections_evicted"] == 0


@pytest.mark.parametrize("variant", ["tuple", "cid"])
def test_without_the_agent_the_nat_never_learns_a_path_died_and_runs_out(
    records, scenario, variant
):
    record = records[variant]
    ports = scenario.nat.ports
    assert record["migrations"] >= ports  # more paths than ports were tried
    assert record["nat_mappings"] == record["nat_mappings_peak"] == ports
    assert record["nat_pool_exhausted"] > 0
    # The next path got no port, so the connection broke, and the record says why.
    assert not record["completed"]
    assert "NAT port pool exhausted" in record["failure"]


def test_a_fresh_bucket_per_port_leaks_only_for_tuple(records):
    # tuple: every port is a new connection with its own meter; cid follows the DCID.
    assert records["tuple"]["leakage_bytes"] > 0
    assert records["cid"]["leakage_bytes"] == 0


def test_completion_goes_with_the_pool_not_running_out(records):
    for variant, record in records.items():
        if record["nat_pool_exhausted"] is not None:
            assert record["completed"] == (record["nat_pool_exhausted"] == 0), variant


def test_the_kernels_nat_keeps_an_entry_per_port_and_qasm_only_the_live_ones(records, scenario):
    """The paper's NAT-exhaustion story on Linux: masquerade has the whole port range, so the
    connection completes, but conntrack keeps every port's entry for the stream timeout."""
    netfilter, anchored = records["netfilter"], records["netfilter-qasm"]
    for record in (netfilter, anchored):
        assert record["completed"] and record["verified"], record["failure"]
        # The meter is per source address, which a rebinding keeps: one bucket.
        assert record["leakage_bytes"] == 0
    assert netfilter["conntrack_entries"] == netfilter["nat_mappings"]
    assert netfilter["conntrack_entries"] >= netfilter["migrations"]  # one per port used
    held = [count for _, count in netfilter["conntrack_over_time"]]
    assert held == sorted(held) and held[-1] >= scenario.nat.ports  # only ever grows
    live = 2 + math.ceil(OLD_SOCKET_GRACE_S / scenario.migration.repeat_every_s)
    assert max(count for _, count in anchored["conntrack_over_time"]) <= live
    assert anchored["conntrack_entries"] == anchored["nat_mappings"] == 1
