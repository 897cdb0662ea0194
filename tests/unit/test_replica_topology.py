"""The replicas topology as data (roles, bindings, the front and back ends' tables), the
scenario keys that ask for it, faults, and the records' replica fields (pure: no Mininet)."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import pytest

from qasm.controller.events import Logged, PacketIn, Reason, Verdict
from qasm.controller.pipeline import HopSettings, MiddleboxConfig
from qasm.flow import FlowKey
from qasm.functions.nat import NatSettings, pool_slice
from testbed.emulation import ownership
from testbed.emulation.faults import FaultSchedule, stall_ms
from testbed.records.metrics import flow_packets, replica_record
from tests.unit.conftest import load_scenario_text, scenario_problems
from topologies.bindings import source_bindings
from topologies.replicas import (
    FAILOVER_GROUP_BASE,
    SELECT_GROUP,
    Replicas,
    nat_slices,
    port_prefixes,
    replica_port,
)

SERVER = "10.0.0.250"


def test_replicas_share_one_position_and_one_public_address_behind_static_ends():
    topo = Replicas(prefix="q0000", clients=2, replicas=3)
    roles = topo.roles
    assert [(m.switch, m.dpid, m.position) for m in roles.middleboxes] == [
        ("q0000r1", 1, 1), ("q0000r2", 2, 1), ("q0000r3", 3, 1),
    ]  # fmt: skip
    assert {m.nat_public_ip for m in roles.middleboxes} == {"10.0.100.1"}
    assert roles.switches == ("q0000fr", "q0000r1", "q0000r2", "q0000r3", "q0000bk")
    assert roles.static_switches == ("q0000fr", "q0000bk")
    assert topo.client_ports == {
        "10.0.1.1": 2, "10.0.3.1": 2, "10.0.2.1": 3, "10.0.1.2": 4, "10.0.3.2": 4, "10.0.2.2": 5,
    }  # fmt: skip
    links = {(a, b): info for a, b, info in topo.links(withInfo=True)}
    assert (links[("q0000fr", "q0000r2")]["port1"], links[("q0000fr", "q0000r2")]["port2"]) == (
        replica_port(2),
        2,
    )
    assert (links[("q0000r2", "q0000bk")]["port1"], links[("q0000r2", "q0000bk")]["port2"]) == (
        1,
        302,
    )
    assert topo.replica_interfaces(2) == ("q0000r2-eth1", "q0000r2-eth2")


def test_a_replica_accepts_clients_from_the_front_and_the_server_from_the_back_only():
    topo = Replicas(prefix="q0000", clients=1, replicas=2)
    bindings = source_bindings(topo, topo.roles)
    for replica in ("q0000r1", "q0000r2"):
        # Never a sibling's NAT address or the server's from the front: the front and back
        # ends hand nothing from one replica to another.
        assert bindings[replica] == {
            2: frozenset({"10.0.1.1", "10.0.3.1", "10.0.2.1"}),
            1: frozenset({SERVER}),
        }


def test_the_front_hashes_over_live_replicas_and_fails_over_in_order():
    topo = Replicas(prefix="q0000", clients=1, replicas=3)
    select, *failover = topo.groups()
    assert select.startswith(f"group_id={SELECT_GROUP},type=select,selection_method=hash,")
    assert "fields(ip_src,ip_dst,udp_src,udp_dst)" in select
    assert select.count("watch_port:") == 3
    assert failover[1] == (
        f"group_id={FAILOVER_GROUP_BASE + 2},type=ff,"
        "bucket=bucket_id:2,watch_port:302,actions=output:302,"
        "bucket=bucket_id:3,watch_port:303,actions=output:303,"
        "bucket=bucket_id:1,watch_port:301,actions=output:301"
    )
    flows = topo.front_flows()
    assert "priority=200,in_port=2,ip,actions=group:1" in flows
    assert not [f for f in flows if "learn(" in f]  # hash: no pinning


def test_next_replica_pins_an_addresss_first_path_and_sends_the_rest_to_the_next():
    topo = Replicas(prefix="q0000", clients=2, replicas=2, steering="next-replica")
    assert [topo.pinned_replica(ip) for ip in ("10.0.1.1", "10.0.2.1", "10.0.3.1")] == [1, 2, 2]
    assert [topo.pinned_replica(ip) for ip in ("10.0.1.2", "10.0.2.2")] == [2, 1]
    flows = topo.front_flows()
    (wifi,) = [f for f in flows if "table=1" in f and "nw_src=10.0.1.1," in f]
    assert "load:1->NXM_NX_REG0[]),learn(" in wifi and "load:2->NXM_NX_REG0[])" in wifi
    assert "table=2,priority=100,reg0=2,actions=group:102" in flows
    assert (
        "priority=300,in_port=2,udp,nw_dst=10.0.0.250,tp_dst=4433,"
        "actions=resubmit(,1),resubmit(,2)" in flows
    )


@pytest.mark.parametrize(("first", "count"), [(20000, 64), (20016, 16), (20001, 7), (0, 1)])
def test_port_prefixes_cover_a_range_exactly(first, count):
    covered = {
        port
        for value, mask in port_prefixes(first, count)
        for port in range(max(0, first - 70), first + count + 70)
        if port & mask == value
    }
    assert covered == set(range(first, first + count))


def test_the_back_steers_nat_replies_to_the_slice_owner_only_when_slices_are_apart():
    topo = Replicas(prefix="q0000", clients=1, replicas=2)
    nat = NatSettings("10.0.100.1", "02:00:00:00:00:fd", ports=64)

    def config(state):
        hops = tuple(
            HopSettings(k, pool_slice(nat, k - 1, 2) if state == "memory" else nat, (), 1)
            for k in (1, 2)
        )
        url = "redis://127.0.0.1:1/0" if state == "redis" else None
        return MiddleboxConfig("tuple", SERVER, 4433, ("nat",), hops, state=state, state_url=url)

    slices = nat_slices(config("memory"))
    assert slices == {1: ("10.0.100.1", 20000, 32), 2: ("10.0.100.1", 20032, 32)}
    flows = topo.back_flows(slices)
    assert (
        "priority=300,in_port=1,udp,nw_dst=10.0.100.1,tp_dst=0x4e40/0xffe0,actions=group:102"
        in flows
    )
    assert nat_slices(config("redis")) == {}  # one shared pool: replies hashed
    assert not [f for f in topo.back_flows({}) if "priority=300" in f]


SCENARIO = """
variants: [qasm]
functions: [firewall, nat]
nat: {ports: 64}
topology: {name: replicas, replicas: 4, steering: next-replica}
workload: {bytes: 1000000}
middlebox: {state: redis}
faults:
  - {kill_replica: 1, at_seconds: 0.4}
sweep:
  faults: [[], [{kill_replica: 2, at_seconds: 1}]]
"""


def test_a_replicas_scenario_with_faults_and_redis_state(tmp_path):
    scenario = load_scenario_text(tmp_path, SCENARIO)
    assert scenario.topology.topo_kwargs()["replicas"] == 4
    assert scenario.topology.topo_kwargs()["steering"] == "next-replica"
    assert scenario.middlebox.state == "redis" and scenario.middlebox.state_url is None
    assert [p.faults for p in scenario.points][0] == ()
    assert scenario.points[1].faults[0].kill_replica == 2


@pytest.mark.parametrize(("good", "bad", "expected"), [
    ("replicas: 4", "replicas: 9", "5: topology.replicas: expected an integer 2..8"),
    ("steering: next-replica", "steering: random",
     "5: topology.steering: expected one of hash, next-replica"),
    ("state: redis", "state: etcd", "7: middlebox.state: expected one of memory, redis"),
    ("kill_replica: 1,", "kill_replica: 5,",
     "9: faults.kill_replica: expected 1..4 (topology.replicas)"),
    ("at_seconds: 0.4", "at_seconds: 60",
     "9: faults.at_seconds: expected less than timeouts.run_s (60)"),
])  # fmt: skip
def test_bad_replica_keys_name_their_line(tmp_path, good, bad, expected):
    text = SCENARIO.replace(good, bad).split("sweep:")[0]
    problems = scenario_problems(tmp_path, text)
    assert any(expected in p for p in problems), problems


def test_an_unreachable_state_url_is_named_before_anything_starts(tmp_path):
    text = SCENARIO.replace("{state: redis}", "{state: redis, state_url: 'redis://127.0.0.1:1/0'}")
    (problem,) = [p for p in scenario_problems(tmp_path, text) if "state_url" in p]
    assert ":7: middlebox.state_url: expected a reachable Redis server" in problem
    assert "127.0.0.1:1" in problem


def test_faults_need_replicas_and_memory_replicas_need_a_port_each(tmp_path):
    text = SCENARIO.replace("name: replicas, replicas: 4, steering: next-replica", "name: chain")
    assert any("faults.kill_replica: expected topology replicas" in p
               for p in scenario_problems(tmp_path, text))  # fmt: skip
    text = SCENARIO.replace("{ports: 64}", "{ports: 3}").replace("state: redis", "state: memory")
    assert any("middlebox.state: expected redis, or nat.ports >= 4" in p
               for p in scenario_problems(tmp_path, text))  # fmt: skip


def _packet_in(t, dpid, src, verdict=Verdict.FORWARD):
    flow = FlowKey(*src, SERVER, 4433)
    event = PacketIn(dpid, 2, verdict, Reason.KNOWN_PATH, flow=flow, addrs=(src[0], SERVER))
    return Logged(t, "qasm", event)


def test_records_say_which_replica_carried_each_path():
    report = {
        "local_address": ["10.0.1.1", 50000],
        "migration": {"at": 5.0, "to": ["10.0.2.1", 6000]},
    }
    decisions = [_packet_in(1.0, 1, ("10.0.1.1", 50000)), _packet_in(5.1, 2, ("10.0.2.1", 6000))]
    record = replica_record(decisions, ((1, 2),), ("10.0.1.1", "10.0.2.1"), report)
    assert (record["replica_before"], record["replica_after"]) == (1, 2)
    assert record["migration_packet_ins_per_replica"] == {"1": 0, "2": 1}
    # Pushed to every replica: no packet-in; the rules' counters say where it went.
    carried = {1: {("10.0.2.1", 6000): 0}, 2: {("10.0.2.1", 6000): 812}}
    pushed = replica_record(decisions[:1], ((1, 2),), ("10.0.1.1",), report, carried)
    assert pushed["replica_after"] == 2


def test_flow_counters_are_read_per_bridge():
    text = (
        "# q0000r1\n cookie=0x0, duration=1s, table=0, n_packets=5, n_bytes=900, "
        "idle_timeout=120, priority=200,udp,nw_src=10.0.1.1,nw_dst=10.0.0.250,tp_src=50000,"
        "tp_dst=4433 actions=output:1\n"
        "# q0000r2\n cookie=0x0, duration=1s, table=0, n_packets=7, n_bytes=900, "
        "priority=200,udp,nw_src=10.0.2.1,nw_dst=10.0.0.250,tp_src=6000,tp_dst=4433 "
        "actions=output:1\n"
        "# q0000fr\n n_packets=3, priority=300,udp,nw_src=10.0.2.1,tp_src=6000 actions=drop\n"
    )
    assert flow_packets(text, {"q0000r1": 1, "q0000r2": 2}) == {
        1: {("10.0.1.1", 50000): 5}, 2: {("10.0.2.1", 6000): 7},
    }  # fmt: skip


def test_a_fault_fires_at_its_time_and_one_not_due_is_cancelled():
    killed = []
    faults = [SimpleNamespace(kill_replica=1, at_seconds=0.05),
              SimpleNamespace(kill_replica=2, at_seconds=30)]  # fmt: skip
    schedule = FaultSchedule(faults, time.monotonic(), killed.append).start()
    time.sleep(0.3)
    schedule.stop()
    assert killed == [1]
    first, second = schedule.record()
    assert first["happened_at_s"] >= 0.05 and second["happened_at_s"] is None
    assert schedule.error() is None


def test_a_faults_stall_is_the_longest_the_acknowledged_bytes_stood_still_after_it():
    progress = [[1.0, 100], [1.02, 200], [1.031, 250], [1.05, 250], [1.5, 250], [1.52, 300],
                [1.54, 400], [3.2, 400], [3.3, 500]]  # fmt: skip
    report = {"progress": progress}
    # Bytes in flight still arrive just after the fault; the stall is the gap after them.
    assert stall_ms(report, 1.03) == 489.0
    assert stall_ms(report, 1.03, window_s=0.3) == 1.0  # the gap ends outside the window
    # The client's migration ends the window: its own disruption is not the fault's.
    report["migration"] = {"at": 2.0}
    assert stall_ms(report, 1.53) == 10.0
    assert stall_ms(report, 3.4) is None and stall_ms(report, 0.5) is None


def test_a_fault_that_fails_is_reported():
    def broken(_replica):
        raise RuntimeError("no such replica")

    schedule = FaultSchedule([SimpleNamespace(kill_replica=3, at_seconds=0)], 0.0, broken).start()
    schedule.stop()
    time.sleep(0.05)
    assert schedule.error() == "no such replica"


def test_a_run_records_its_directories_and_clean_removes_only_those_under_state(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(ownership, "STATE_DIR", tmp_path / "state")
    record = ownership.new_run_record(str(tmp_path / "run"))
    inside = tmp_path / "state" / "redis" / record.prefix / "redis-x"
    inside.mkdir(parents=True)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    record.directories += [str(inside.parent), str(outside)]
    record.save()
    loaded = ownership.RunRecord.load(record.path)
    assert loaded.directories == [str(inside.parent), str(outside)]
    removed = ownership.remove_run_resources(loaded)
    assert f"directory {inside.parent}" in removed
    assert not inside.parent.exists() and outside.exists()
    assert json.loads(record.path.read_text())["directories"]
