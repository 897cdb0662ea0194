"""A bounded half-open state (RFC 9312 §4.7) at the hop: under nat a source holds at most its
quota of connections the server never answered; a switch's probe rule tells a hop that
copies nothing whether the server answered, and those that never were end with their NAT
ports given back. (The table's half of it, for both stores, is in test_redis_store.py.)
Each test here fails if its guard is broken."""

from __future__ import annotations

import pytest

from qasm.controller.events import ConnectionsEnded, Logged, ProbeEnded, Reason, Verdict
from qasm.controller.messages import (
    PRIORITY_PROBE,
    PRIORITY_SOURCE_HELD,
    REMOVED_DELETE,
    REMOVED_HARD_TIMEOUT,
    FlowRule,
    Match,
    RemoveFlow,
)
from qasm.controller.pipeline import (
    Admission,
    Controller,
    Decision,
    HopSettings,
    MiddleboxConfig,
)
from qasm.flow import FlowKey
from qasm.functions.nat import NatSettings
from qasm.state.connections import ESTABLISHED, PROBING, ConnectionTable
from qasm.state.half_open import HalfOpenBySource
from testbed.records.metrics import connections_ended
from tests.unit.conftest import (
    CLIENT_IP,
    CLIENT_MAC,
    SERVER_IP,
    SERVER_MAC,
    QuicPair,
    arp_frame,
    load_scenario_text,
    scenario_problems,
    udp_frame,
)
from tests.unit.test_redis_store import A, B

CLIENT_PORT, SERVER_PORT = 2, 1
PUBLIC_IP, PUBLIC_MAC = "10.0.100.1", "02:00:00:00:01:01"


def test_half_open_counts_per_source_forget_what_is_no_longer_half_open():
    table = ConnectionTable()
    counts = HalfOpenBySource()
    first, second = table.put(A, 0.0), table.put(B, 0.0)
    counts.add("s", first)
    counts.add("s", second)
    assert counts.count("s", lambda c: not c.flags & ESTABLISHED) == 2
    first.flags |= ESTABLISHED
    assert counts.count("s", lambda c: not c.flags & ESTABLISHED) == 1
    counts.discard(second.id)
    assert counts.count("s", lambda c: True) == 0 and len(counts) == 0


# --- the hop -------------------------------------------------------------------------------


def nat_box(variant: str = "tuple", quota: int = 32, ports: int = 8) -> Controller:
    box = Controller(
        MiddleboxConfig(
            variant=variant, service_ip=SERVER_IP, service_port=4433, functions=("nat",),
            hops=(HopSettings(1, NatSettings(PUBLIC_IP, PUBLIC_MAC, 20000, ports)),),
            half_open_per_source=quota, admission=Admission(1000, 1000),
        )
    )  # fmt: skip
    box.switch_connected(1)
    box.packet_in(1, SERVER_PORT, arp_frame(SERVER_MAC, SERVER_IP, CLIENT_IP), now=0.0)
    box.packet_in(1, CLIENT_PORT, arp_frame(CLIENT_MAC, CLIENT_IP, SERVER_IP), now=0.0)
    return box


def initial(box: Controller, port: int, now: float = 1.0) -> Decision:
    pair = QuicPair()
    pair.client.connect((SERVER_IP, 4433), now=0.0)
    (datagram, _), *_ = pair.client.datagrams_to_send(now=0.0)
    *_, decision = box.packet_in(1, CLIENT_PORT, udp_frame(datagram, sport=port), now=now)
    return decision


def probe_of(decision) -> FlowRule:
    (probe,) = [m for m in decision.messages if isinstance(m, FlowRule) and m.tag]
    assert probe.priority == PRIORITY_PROBE and probe.notify_removed
    return probe


def test_under_nat_a_source_holds_at_most_its_quota_of_half_open_connections():
    box = nat_box(quota=2)
    hop = box.hops[0]
    opened = [initial(box, port) for port in (40000, 40001)]
    assert [d.event.reason for d in opened] == [Reason.OPENED_BY_INITIAL] * 2
    refused = initial(box, 40002)
    assert (refused.event.verdict, refused.event.reason) == (Verdict.DROP, Reason.HALF_OPEN_QUOTA)
    # Held at the switch for a second (its next Initials never reach the controller).
    (hold,) = refused.messages
    assert (hold.priority, hold.out_port, hold.hard_timeout_s) == (PRIORITY_SOURCE_HELD, None, 1)
    assert (hold.match.ipv4_src, hold.match.ipv4_dst) == ("10.0.0.1", SERVER_IP)
    assert refused.event.nat_allocated == ()
    assert len(hop.table) == 2 and hop.nat.pool.in_use == 2  # no slot, no port
    # Another source is not held to this one's quota.
    other = QuicPair()
    other.client.connect((SERVER_IP, 4433), now=0.0)
    (datagram, _), *_ = other.client.datagrams_to_send(now=0.0)
    frame = udp_frame(datagram, sport=40000, src="10.0.0.2", eth_src="02:00:00:00:00:02")
    *_, elsewhere = box.packet_in(1, 3, frame, now=1.0)
    assert elsewhere.event.reason is Reason.OPENED_BY_INITIAL
    # One of the first source's connections answered: room for one more.
    probe = probe_of(opened[0])
    box.flow_removed(1, probe.match.flow, probe.cookie, 3, REMOVED_HARD_TIMEOUT, now=3.0)
    assert initial(box, 40003, now=3.0).event.reason is Reason.OPENED_BY_INITIAL
    assert initial(box, 40004, now=3.0).event.reason is Reason.HALF_OPEN_QUOTA


def test_without_nat_there_is_no_half_open_quota(client_initial):
    box = Controller(MiddleboxConfig(variant="tuple", service_ip=SERVER_IP, service_port=4433,
                                     half_open_per_source=1))  # fmt: skip
    box.switch_connected(1)
    for port in (40000, 40001):
        *_, decision = box.packet_in(1, CLIENT_PORT, udp_frame(client_initial, sport=port), 1.0)
        assert decision.event.reason is Reason.OPENED_BY_INITIAL


def test_a_probe_that_forwarded_nothing_ends_the_connection_and_gives_back_its_nat_port():
    box = nat_box()
    hop = box.hops[0]
    opened = initial(box, 40000)
    (mapping,) = opened.event.nat_allocated
    probe = probe_of(opened)
    # The probe matches the server's replies to the public port, above the plain rule.
    assert probe.match.flow == FlowKey(SERVER_IP, 4433, PUBLIC_IP, mapping.public_port)
    assert probe.hard_timeout_s == 2
    # One empty probe is not a verdict (OVS credits rules late on a busy machine): a second
    # one, twice as long, is sent.
    (again,) = box.flow_removed(1, probe.match.flow, probe.cookie, 0, REMOVED_HARD_TIMEOUT, 3.0)
    assert again.event.reason is Reason.PROBED_AGAIN and len(hop.table) == 1
    (second,) = again.messages
    assert (second.match, second.hard_timeout_s) == (probe.match, 4)
    assert second.notify_removed and second.cookie == probe.cookie
    ended, report = box.flow_removed(
        1, probe.match.flow, probe.cookie, 0, REMOVED_HARD_TIMEOUT, now=7.0
    )
    assert report.event == ProbeEnded(
        dpid=1, connection=opened.event.connection, packets=0, reason=Reason.NEVER_ANSWERED,
        flow=probe.match.flow,
    )  # fmt: skip
    assert ended.event.half_open == (opened.event.connection,)
    assert ended.event.nat_released == (mapping,)
    assert hop.nat.pool.in_use == 0 and len(hop.table) == 0
    assert hop.table.half_open_ended == 1
    # Its rules go; the probe itself is gone already.
    assert {m.priority for m in ended.messages if isinstance(m, RemoveFlow)} == {200}


def test_a_probe_that_forwarded_packets_establishes_the_connection():
    box = nat_box(ports=2)
    hop = box.hops[0]
    opened = initial(box, 40000)
    probe = probe_of(opened)
    (report,) = box.flow_removed(1, probe.match.flow, probe.cookie, 5, REMOVED_HARD_TIMEOUT, 3.0)
    assert report.event.reason is Reason.SERVER_ANSWERED
    (connection,) = hop.table.connections()
    assert connection.flags & (ESTABLISHED | PROBING) == ESTABLISHED
    assert hop.nat.pool.in_use == 1 and hop.table.half_open_ended == 0
    # Established: past the half-open timeout it stays, and at the bound a half-open one
    # goes first, though newer (and its NAT port with it, for the next).
    hop.table.max_connections = 2
    newer = initial(box, 40001, now=100.0)
    newest = initial(box, 40002, now=100.0)
    assert newest.event.reason is Reason.OPENED_BY_INITIAL and newest.event.nat_allocated
    assert hop.table.is_live(connection) and hop.table.evicted == 1
    assert newer.event.connection not in {c.id for c in hop.table.connections()}


def test_a_stale_or_deleted_probe_ends_nothing():
    box = nat_box()
    hop = box.hops[0]
    opened = initial(box, 40000)
    probe = probe_of(opened)
    # Another connection's id on this match (a probe of one that ended): nothing happens.
    (stale,) = box.flow_removed(1, probe.match.flow, probe.cookie + 1, 0, REMOVED_HARD_TIMEOUT, 3)
    assert stale.event.reason is Reason.PROBE_STALE and len(hop.table) == 1
    # Deleted without a verdict (the switch reconnected): the table's clock takes over.
    (deleted,) = box.flow_removed(1, probe.match.flow, probe.cookie, 0, REMOVED_DELETE, 3.0)
    assert deleted.event.reason is Reason.PROBE_DELETED
    (connection,) = hop.table.connections()
    assert not connection.flags & (ESTABLISHED | PROBING)
    hop.expire(5.5)
    assert (ended := hop.ended_decision()) is not None and ended.event.half_open == (connection.id,)
    assert hop.nat.pool.in_use == 0


def test_a_half_open_connection_without_a_probe_expires_with_its_nat_port():
    # cid copies the server's handshake to the controller: no probe; the table's clock.
    box = nat_box("cid")
    hop = box.hops[0]
    opened = initial(box, 40000)
    assert not [m for m in opened.messages if isinstance(m, FlowRule) and m.tag]
    (mapping,) = opened.event.nat_allocated
    decisions = box.packet_in(1, CLIENT_PORT, arp_frame(CLIENT_MAC, CLIENT_IP, SERVER_IP), 3.5)
    (ended,) = [d for d in decisions if isinstance(d.event, ConnectionsEnded)]
    assert ended.event.half_open == (opened.event.connection,)
    assert ended.event.nat_released == (mapping,) and hop.nat.pool.in_use == 0


def test_a_reply_from_the_service_establishes_the_connection():
    box = nat_box("cid")
    hop = box.hops[0]
    opened = initial(box, 40000)
    (mapping,) = opened.event.nat_allocated
    reply = udp_frame(
        b"\x40" + bytes(30), sport=4433, dport=mapping.public_port, src=SERVER_IP, dst=PUBLIC_IP,
        eth_src=SERVER_MAC, eth_dst=PUBLIC_MAC,
    )  # fmt: skip
    box.packet_in(1, SERVER_PORT, reply, now=1.5)
    (connection,) = hop.table.connections()
    assert connection.flags & ESTABLISHED
    box.packet_in(1, CLIENT_PORT, arp_frame(CLIENT_MAC, CLIENT_IP, SERVER_IP), 10.0)
    assert hop.table.connections() == [connection]


def test_ending_a_path_removes_its_probe_too():
    box = nat_box()
    hop = box.hops[0]
    opened = initial(box, 40000)
    probe = probe_of(opened)
    (connection,) = hop.table.connections()
    removed = hop._remove_path_rules(connection, connection.paths[0])
    assert RemoveFlow(PRIORITY_PROBE, Match(flow=probe.match.flow)) in removed


@pytest.mark.parametrize("value", [0, -1])
def test_the_half_open_settings_must_be_positive(value):
    from qasm.controller.pipeline import ConfigError

    with pytest.raises(ConfigError, match="half_open"):
        MiddleboxConfig("tuple", SERVER_IP, 4433, half_open_timeout_s=value)
    with pytest.raises(ConfigError, match="half_open"):
        MiddleboxConfig("tuple", SERVER_IP, 4433, half_open_per_source=value)


# --- scenario and records -------------------------------------------------------------------


def test_the_half_open_keys_are_read_and_checked(tmp_path):
    text = """\
variants: [tuple]
functions: [nat]
nat: {ports: 8}
topology: {name: dualhomed, clients: 1}
workload: {bytes: 100000}
middlebox: {half_open_timeout_s: 1.5, half_open_per_source: 4}
"""
    middlebox = load_scenario_text(tmp_path, text).middlebox
    assert (middlebox.half_open_timeout_s, middlebox.half_open_per_source) == (1.5, 4)
    line = "middlebox: {half_open_timeout_s: 1.5, half_open_per_source: 4}\n"
    defaults = load_scenario_text(tmp_path, text.replace(line, "")).middlebox
    assert (defaults.half_open_timeout_s, defaults.half_open_per_source) == (2.0, 32)
    problems = scenario_problems(tmp_path, text.replace("per_source: 4", "per_source: 0"))
    assert any("half_open_per_source" in str(p) for p in problems), problems


def test_records_count_connections_ended_by_cause():
    events = [
        ConnectionsEnded(
            dpid=1, expired=(1,), evicted=(2, 3), half_open=(4, 5, 6), evicted_established=(3,)
        ),
        ConnectionsEnded(dpid=2, half_open=(7,)),
    ]
    counts = connections_ended(Logged(1.0, "tuple", e) for e in events)
    assert counts == {
        "connections_expired": 1,
        "connections_evicted": 2,
        "connections_evicted_established": 1,
        "connections_half_open": 4,
    }
