"""The shared connection store on a real redis-server (loopback, started per test session):
the memory table's contract honoured by both stores, two replicas sharing one table, the
shared NAT pool, function states through Redis, and the private server's lifecycle."""

from __future__ import annotations

import shutil
import tempfile
import threading
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qasm.compact import compact
from qasm.flow import FlowKey
from qasm.functions.firewall import FirewallState
from qasm.functions.loadbalancer import LoadBalancerState
from qasm.functions.nat import NatSettings, NatState
from qasm.state.connections import (
    ESTABLISHED,
    EVICTED,
    EXPIRED,
    HALF_OPEN,
    OBSERVING,
    PROBING,
    Connection,
    ConnectionTable,
)
from qasm.state.redis_nat import SharedNatPool
from qasm.state.redis_store import RedisConnectionTable, StoreUnreachable, connect_redis
from testbed.emulation.ownership import process_start_time
from testbed.redis_server import RedisServer

pytestmark = pytest.mark.skipif(
    shutil.which("redis-server") is None, reason="redis-server not installed (make setup)"
)

A = FlowKey("10.0.1.1", 5000, "10.0.0.250", 4433)
B = FlowKey("10.0.2.1", 6000, "10.0.0.250", 4433)
C = FlowKey("10.0.3.1", 7000, "10.0.0.250", 4433)
STATE_TYPES = {
    "firewall": FirewallState,
    "nat": NatState,
    "loadbalancer": LoadBalancerState,
}
NAT = NatSettings("10.0.100.1", "02:00:00:00:01:01", first_port=20000, ports=8)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server.url


@pytest.fixture
def prefix() -> str:
    """A key prefix of this test's own: tests share the server, never keys."""
    return f"test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def replica(redis_url, prefix):
    """`replica(**table options)`: a RedisConnectionTable with its own client on this test's
    prefix, as another middlebox replica would have; expire() sweeps on every call."""

    def make(**options) -> RedisConnectionTable:
        options.setdefault("sweep_interval_s", 0.0)
        return RedisConnectionTable(connect_redis(redis_url), prefix, STATE_TYPES, **options)

    return make


@pytest.fixture(params=["memory", "redis"])
def make_table(request, replica):
    """Either store, built with the same options: both honour one contract."""
    if request.param == "memory":
        return ConnectionTable
    return replica


def fields(connection: Connection) -> dict:
    """Everything a connection holds (Connection compares by identity)."""
    return {name: getattr(connection, name) for name in Connection.__dataclass_fields__}


# --- the contract both stores honour ----------------------------------------------------------


def test_a_connection_is_found_by_every_path_and_cid_until_idle(make_table):
    table = make_table(idle_timeout_s=120)
    connection = table.put(A, now=0.0)
    assert table.take_ended() == [] and table.associate_cid(connection, b"\x01" * 8, now=1.0)
    assert table.associate_path(connection, B, now=2.0)
    assert table.by_path(B, 50.0) is table.by_cid(b"\x01" * 8, 60.0) is connection
    assert table.cid_lengths == {8}
    assert table.by_path(A, now=181.0) is None  # idle since 60 s
    assert len(table) == 0 and table.by_cid(b"\x01" * 8, 181.0) is None
    # Found expired on a lookup: queued for whoever holds its resources, once.
    assert table.take_ended() == [(connection, EXPIRED)] and table.expired == 1
    assert table.take_ended() == []


def test_paths_and_cids_cannot_be_stolen_by_another_connection(make_table):
    table = make_table()
    first = table.put(A, 0.0)
    second = table.put(B, 0.0)
    assert table.associate_cid(first, b"\x01", 0.0)
    assert not table.associate_cid(second, b"\x01", 0.0)
    assert not table.associate_path(second, A, 0.0)
    assert table.by_cid(b"\x01", 0.0) is first and table.by_path(A, 0.0) is first
    assert second.paths == (B,) and second.server_cids == ()


def test_retired_paths_no_longer_find_the_connection(make_table):
    table = make_table()
    connection = table.put(A, 0.0)
    table.associate_path(connection, B, 0.0)
    assert table.retire_path(connection, A)
    assert not table.retire_path(connection, A)
    assert (connection.paths, connection.retired_paths) == ((B,), (A,))
    assert table.by_path(A, 1.0) is None and table.retired_by(A) is connection
    assert table.associate_path(connection, A, 2.0) and table.retired_by(A) is None
    assert (connection.paths, connection.retired_paths) == ((B, A), ())
    table.retire_path(connection, A)
    table.remove(connection)
    assert table.retired_by(A) is None and table.by_path(B, 3.0) is None
    assert table.take_ended() == []  # removed on purpose: not ended by the table


def test_the_least_recently_used_connection_is_evicted_at_the_bound(make_table):
    table = make_table(max_connections=1, max_cids_per_connection=2)
    first = table.put(A, 0.0)
    table.associate_cid(first, b"\x01", 0.0)
    second = table.put(B, 1.0)
    assert table.take_ended() == [(first, EVICTED)] and table.evicted == 1
    assert table.by_cid(b"\x01", 1.0) is None
    assert table.associate_cid(second, b"\x02", 1.0) and table.associate_cid(second, b"\x03", 1.0)
    assert not table.associate_cid(second, b"\x04", 1.0)  # bounded per connection


def test_a_new_connection_is_never_the_one_evicted_for_it(make_table):
    table = make_table(max_connections=8)
    made = [table.put(FlowKey("10.0.1.1", port, "10.0.0.250", 4433), 0.0) for port in range(10)]
    # All seen at one instant: the oldest go, not the newest (id 10 sorts before 2 as text).
    assert table.take_ended() == [(made[0], EVICTED), (made[1], EVICTED)]
    assert table.by_path(made[9].paths[0], 0.0) is made[9]


def test_a_lookup_keeps_a_connection_from_being_the_least_recently_used(make_table):
    table = make_table(max_connections=2)
    first, second = table.put(A, 0.0), table.put(B, 1.0)
    assert table.by_path(A, 2.0) is first
    table.put(C, 3.0)
    assert table.take_ended() == [(second, EVICTED)]


def test_expire_ends_the_idle_connections_once(make_table):
    table = make_table(idle_timeout_s=10)
    old, fresh = table.put(A, 0.0), table.put(B, 5.0)
    table.expire(10.0)
    assert table.take_ended() == []  # idle for exactly the timeout: not yet
    table.expire(12.0)
    assert table.take_ended() == [(old, EXPIRED)] and table.connections() == [fresh]
    table.expire(13.0)
    assert table.take_ended() == [] and table.expired == 1


# Half-open connections (RFC 9312 §4.7): the server has not answered them.
D = FlowKey("10.0.4.1", 8000, "10.0.0.250", 4433)


def test_the_bound_evicts_a_half_open_connection_before_any_established_one(make_table):
    table = make_table(max_connections=3)
    old = table.put(A, 0.0)
    old.flags |= ESTABLISHED
    table.save(old, 0.0)
    half_open = table.put(B, 1.0)
    probed = table.put(C, 2.0)
    probed.flags |= PROBING
    table.save(probed, 2.0)
    newer = table.put(D, 3.0)
    # The oldest is established: the half-open one goes, though seen after it (an
    # unprobed one before a probed one: the probed may be answered yet).
    assert table.take_ended() == [(half_open, EVICTED)]
    newer.flags |= ESTABLISHED
    table.save(newer, 3.0)
    # Then the probed half-open one (never the new one, half-open too).
    table.put(FlowKey("10.0.5.1", 9000, "10.0.0.250", 4433), 4.0)
    assert table.take_ended() == [(probed, EVICTED)]
    assert table.is_live(old) and table.is_live(newer)


def test_a_half_open_connection_expires_at_the_half_open_timeout(make_table):
    table = make_table(idle_timeout_s=120, half_open_timeout_s=2)
    half_open, established, probed = table.put(A, 0.0), table.put(B, 0.0), table.put(C, 0.0)
    established.flags |= ESTABLISHED
    probed.flags |= PROBING
    for connection in (established, probed):
        table.save(connection, 0.0)
    table.expire(2.0)
    assert table.take_ended() == []  # idle for exactly the timeout: not yet
    table.expire(2.5)
    assert table.take_ended() == [(half_open, HALF_OPEN)] and table.half_open_ended == 1
    # A probed one waits for its switch's verdict (or the idle timeout); an established one
    # for the idle timeout.
    assert table.by_path(B, 100.0) is established and table.by_path(C, 100.0) is probed
    assert table.by_path(A, 100.0) is None


def test_a_lookup_ends_a_half_open_connection_past_its_timeout(make_table):
    table = make_table(idle_timeout_s=120, half_open_timeout_s=2)
    connection = table.put(A, 0.0)
    assert table.by_path(A, 1.5) is connection  # refreshed: a client retransmitting
    assert table.by_path(A, 3.0) is connection
    assert table.by_path(A, 5.5) is None
    assert table.take_ended() == [(connection, HALF_OPEN)]


def test_end_half_open_refuses_an_established_or_ended_connection(make_table):
    table = make_table()
    connection, other = table.put(A, 0.0), table.put(B, 0.0)
    other.flags |= ESTABLISHED
    table.save(other, 0.0)
    assert not table.end_half_open(other)
    assert table.end_half_open(connection) and not table.end_half_open(connection)
    assert table.take_ended() == [(connection, HALF_OPEN)]


def test_forgetting_undoes_an_association(make_table):
    table = make_table()
    connection = table.put(A, 0.0)
    assert table.associate_path(connection, B, 0.0) and table.associate_cid(
        connection, b"\x07", 0.0
    )
    table.forget_path(connection, B)
    table.forget_cid(connection, b"\x07")
    assert (connection.paths, connection.server_cids) == ((A,), ())
    assert table.by_path(B, 1.0) is None and table.by_cid(b"\x07", 1.0) is None
    other = table.put(B, 1.0)
    assert table.associate_cid(other, b"\x07", 1.0)  # free again


def test_a_connection_holds_at_most_its_maximum_of_paths(make_table):
    table = make_table(max_paths_per_connection=2)
    connection = table.put(A, 0.0)
    assert table.associate_path(connection, B, 0.0)
    assert not table.associate_path(connection, C, 0.0) and table.by_path(C, 0.0) is None


def test_save_reports_a_connection_that_ended_and_is_live_tells(make_table):
    table = make_table()
    connection = table.put(A, 0.0)
    connection.owner = "h1"
    assert table.save(connection, 1.0) and table.is_live(connection)
    table.remove(connection)
    connection.owner = "h2"
    assert not table.save(connection, 2.0) and not table.is_live(connection)
    assert len(table) == 0 and table.by_path(A, 2.0) is None  # not brought back


# --- Redis specifics: prefixes, TTLs, round trips ---------------------------------------------


def test_keys_are_namespaced_by_the_prefix(redis_url, replica, prefix):
    table = replica()
    elsewhere = RedisConnectionTable(connect_redis(redis_url), prefix + "-other", STATE_TYPES)
    table.put(B, 0.0)  # so the two tables' connections of A get different ids
    mine, theirs = table.put(A, 0.0), elsewhere.put(A, 0.0)
    assert elsewhere.by_path(A, 1.0) is theirs and table.by_path(A, 1.0) is mine
    assert (len(table), len(elsewhere)) == (2, 1)
    client = connect_redis(redis_url)
    assert client.get(f"{prefix}:path:{A}") == str(mine.id)
    assert client.get(f"{prefix}-other:path:{A}") == str(theirs.id)


def test_every_key_of_a_connection_has_a_ttl_refreshed_at_most_once_a_second(
    redis_url, replica, prefix
):
    table = replica(idle_timeout_s=30)
    connection = table.put(A, 0.0)
    table.associate_cid(connection, b"\x01", 0.0)
    client = connect_redis(redis_url)
    keys = [f"{prefix}:conn:{connection.id}", f"{prefix}:path:{A}", f"{prefix}:cid:01"]
    # A backstop beyond the idle timeout (GC_TTL_FACTOR x 30 s + 1 s), on Redis's clock.
    assert all(30_000 < client.pttl(key) <= 61_000 for key in keys)
    touched = lambda: client.hget(keys[0], "_touched")  # noqa: E731
    table.by_path(A, 0.5)
    assert touched() == "0.0"
    table.by_path(A, 1.0)
    assert touched() == "1.0"


def test_round_trips_are_counted(replica):
    table = replica()
    connection = table.put(A, 0.0)
    start = table.round_trips
    table.by_path(A, 1.0)
    table.save(connection, 1.0)  # nothing changed: nothing sent
    assert table.round_trips == start + 1
    connection.owner = "h1"
    table.save(connection, 1.0)
    table.associate_cid(connection, b"\x01", 1.0)
    table.associate_cid(connection, b"\x01", 1.0)  # already held: nothing sent
    assert table.round_trips == start + 3


def test_a_sweep_runs_at_most_once_per_interval(replica):
    table = replica(idle_timeout_s=10, sweep_interval_s=1.0)
    table.put(A, 0.0)
    trips = table.round_trips
    table.expire(0.5)
    table.expire(1.0)  # within a second of the last sweep: nothing sent
    assert table.round_trips == trips + 1
    table.expire(11.0)
    assert table.round_trips == trips + 2 and len(table.take_ended()) == 1


# --- two replicas on one prefix ----------------------------------------------------------------


def test_a_connection_put_by_one_replica_is_found_by_path_and_cid_by_the_other(replica):
    first, second = replica(), replica()
    connection = first.put(A, 0.0)
    first.associate_cid(connection, b"\xaa" * 8, 0.0)
    connection.nat = NatState(A, 20001)
    connection.loadbalancer = LoadBalancerState("10.0.0.11")
    assert first.save(connection, 0.0)
    by_cid = second.by_cid(b"\xaa" * 8, 1.0)
    assert by_cid is second.by_path(A, 1.0) and by_cid is not connection
    assert fields(by_cid) == fields(connection) | {"last_seen": 1.0}
    # The migrated path joins on the second replica; the first sees it at its next lookup.
    assert second.associate_path(by_cid, B, 2.0)
    by_cid.owner = "h1"
    second.save(by_cid, 2.0)
    assert first.by_path(B, 3.0) is connection
    assert (connection.paths, connection.owner) == ((A, B), "h1")


def test_racing_puts_for_one_path_end_in_one_connection(replica):
    replicas = [replica(), replica()]
    paths = [FlowKey("10.0.1.1", port, "10.0.0.250", 4433) for port in range(40000, 40200)]
    got: list[list[int]] = [[], []]
    start = threading.Barrier(2)

    def first_packets(index: int) -> None:
        start.wait()
        got[index] = [replicas[index].put(path, 0.0).id for path in paths]

    threads = [threading.Thread(target=first_packets, args=(i,)) for i in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert got[0] == got[1] and len(set(got[0])) == len(paths) == len(replicas[0])
    assert replicas[0].take_ended() == replicas[1].take_ended() == []


def test_a_cid_one_replica_associated_is_refused_to_another_connection_on_the_other(replica):
    first, second = replica(), replica()
    mine = first.put(A, 0.0)
    theirs = second.put(B, 0.0)
    assert first.associate_cid(mine, b"\x01\x02", 0.0)
    assert not second.associate_cid(theirs, b"\x01\x02", 0.0)
    assert not second.associate_path(theirs, A, 0.0)
    assert second.by_cid(b"\x01\x02", 1.0).id == mine.id
    assert second.cid_lengths == set()  # until its next sweep
    second.expire(1.0)
    assert second.cid_lengths == {2}


def test_the_bound_holds_across_replicas_and_each_eviction_is_returned_once(replica):
    first, second = replica(max_connections=3), replica(max_connections=3)
    oldest = first.put(A, 0.0)
    first.put(B, 1.0)
    second.put(C, 2.0)
    second.put(FlowKey("10.0.4.1", 1, "10.0.0.250", 4433), 3.0)
    assert len(first) == len(second) == 3
    (evicted,) = second.take_ended()
    assert evicted[0].id == oldest.id and evicted[1] == EVICTED and first.take_ended() == []
    assert first.by_path(A, 4.0) is None


def test_expiry_from_either_replica_returns_each_ended_connection_exactly_once(replica):
    replicas = [replica(idle_timeout_s=10) for _ in range(2)]
    for port in range(50):
        replicas[port % 2].put(FlowKey("10.0.1.1", port, "10.0.0.250", 4433), float(port % 5))
    ended: list[list] = [[], []]
    start = threading.Barrier(2)

    def sweep(index: int) -> None:
        start.wait()
        table = replicas[index]
        for now in (15.0, 15.5, 16.0, 16.5, 17.0):
            table.expire(now)
            table.by_path(FlowKey("10.0.1.1", 49, "10.0.0.250", 4433), now)
        ended[index] = table.take_ended()

    threads = [threading.Thread(target=sweep, args=(i,)) for i in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    ids = [connection.id for connection, cause in ended[0] + ended[1]]
    assert sorted(ids) == list(range(1, 51)) and len(replicas[0]) == 0
    assert {cause for _, cause in ended[0] + ended[1]} == {EXPIRED}
    assert replicas[0].expired + replicas[1].expired == 50


def test_replicas_changing_different_fields_keep_both_changes(replica):
    first, second = replica(), replica()
    connection = first.put(A, 0.0)
    other = second.by_path(A, 0.0)
    connection.nat = NatState(A, 20003)
    other.owner = "h1"
    assert first.save(connection, 1.0) and second.save(other, 1.0)
    # An unsaved change here survives a lookup that brings in the other replica's changes,
    # also where both changed one field (the unsaved one is written at the next save).
    mine, theirs = LoadBalancerState("10.0.0.11"), LoadBalancerState("10.0.0.12")
    connection.loadbalancer, other.loadbalancer = mine, theirs
    second.save(other, 1.5)
    assert first.by_path(A, 2.0) is connection
    assert (connection.owner, connection.loadbalancer) == ("h1", mine)
    first.save(connection, 2.0)
    assert second.by_path(A, 3.0) is other
    assert (other.nat, other.loadbalancer) == (NatState(A, 20003), mine)


def test_replicas_setting_different_flags_keep_both(replica):
    # One int on the connection, a hash field per flag in Redis.
    first, second = replica(), replica()
    connection = first.put(A, 0.0)
    other = second.by_path(A, 0.0)
    connection.flags |= ESTABLISHED
    other.flags |= PROBING
    assert first.save(connection, 1.0) and second.save(other, 1.0)
    assert first.by_path(A, 2.0) is connection
    assert connection.flags == ESTABLISHED | PROBING
    assert replica().by_path(A, 3.0).flags == ESTABLISHED | PROBING
    other.flags &= ~PROBING  # its probe went
    assert second.save(other, 4.0)
    assert first.by_path(A, 5.0) is connection and connection.flags == ESTABLISHED


def test_a_put_on_a_path_whose_connection_is_idle_ends_it_and_makes_a_new_one(replica):
    first, second = replica(idle_timeout_s=10), replica(idle_timeout_s=10)
    old = first.put(A, 0.0)
    assert second.put(A, 5.0).id == old.id  # live: the other replica's first packet
    new = second.put(A, 16.0)
    assert new.id != old.id and first.by_path(A, 16.0) is not old
    (ended,) = second.take_ended()
    assert (ended[0].id, ended[1]) == (old.id, EXPIRED)


def test_a_path_one_replica_retired_is_not_retired_again_by_the_other(replica):
    first, second = replica(), replica()
    connection = first.put(A, 0.0)
    first.associate_path(connection, B, 0.0)
    stale = second.by_path(A, 0.0)
    assert first.retire_path(connection, A)
    assert not second.retire_path(stale, A)  # its copy still lists A: Redis decides
    assert second.by_path(B, 1.0) is stale and stale.retired_paths == (A,)


def test_a_replica_cannot_bring_back_a_connection_another_ended(replica):
    first, second = replica(idle_timeout_s=10), replica(idle_timeout_s=10)
    connection = first.put(A, 0.0)
    stale = second.by_path(A, 1.0)
    first.expire(20.0)
    assert first.take_ended() == [(connection, EXPIRED)]
    stale.nat = NatState(B, 20004)
    assert not second.save(stale, 20.0) and not second.associate_path(stale, B, 20.0)
    assert len(second) == 0 and second.by_path(B, 20.0) is None


# --- the shared NAT pool -----------------------------------------------------------------------


def test_two_pools_on_one_prefix_never_hand_out_one_port(redis_url, prefix):
    pools = [SharedNatPool(connect_redis(redis_url), prefix, NAT) for _ in range(2)]
    got: list[list] = [[], []]
    start = threading.Barrier(2)

    def allocate(index: int) -> None:
        start.wait()
        got[index] = [
            pools[index].allocate(FlowKey(f"10.0.{index}.1", port, "10.0.0.250", 4433))
            for port in range(6)
        ]

    threads = [threading.Thread(target=allocate, args=(i,)) for i in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    ports = [port for port in got[0] + got[1] if port is not None]
    assert sorted(ports) == list(range(20000, 20008))  # all 8, each once
    assert pools[0].exhausted == pools[1].exhausted == 4 and pools[1].in_use == 8


def test_a_port_released_by_one_pool_is_seen_by_the_other(redis_url, prefix):
    first, second = (SharedNatPool(connect_redis(redis_url), prefix, NAT) for _ in range(2))
    port = first.allocate(A)
    assert second.allocate(A) == port  # a stable mapping, whichever replica asks
    assert second.path_of(port) == A
    assert second.public_flow(A) == FlowKey(NAT.public_ip, port, A.dst_ip, A.dst_port)
    assert first.release(A) == port and first.release(A) is None
    assert second.path_of(port) is None and second.public_flow(A) is None
    assert second.in_use == 0
    for path in (B, C, *(FlowKey("10.0.9.1", p, "10.0.0.250", 4433) for p in range(5))):
        second.allocate(path)
    assert second.allocate(A) == port  # reused last


def test_a_pool_of_other_settings_on_the_same_prefix_is_refused(redis_url, prefix):
    SharedNatPool(connect_redis(redis_url), prefix, NAT)
    other = NatSettings(NAT.public_ip, NAT.public_mac, first_port=30000, ports=8)
    with pytest.raises(ValueError, match="20000\\+8"):
        SharedNatPool(connect_redis(redis_url), prefix, other)


# --- function states through the store -----------------------------------------------------------

firewall_states = st.builds(
    FirewallState,
    sni_pending=st.booleans(),
    original_dcid=st.none() | st.binary(min_size=1, max_size=20),
    hello_prefix=st.binary(max_size=64),
    hello_pending=st.dictionaries(st.integers(1, 2**20), st.binary(min_size=1, max_size=32)),
)
ports = st.integers(1024, 65535)
paths = st.builds(
    FlowKey, st.ip_addresses(v=4).map(str), ports, st.just("10.0.0.250"), st.just(4433)
)


def test_paths_and_cids_keep_their_order_in_a_large_connection(replica):
    first, second = replica(max_paths_per_connection=32, max_cids_per_connection=32), replica()
    connection = first.put(A, 0.0)
    # Over 64 bytes in one field: Redis keeps this hash unordered (hashtable encoding).
    connection.firewall = FirewallState(hello_prefix=bytes(200))
    first.save(connection, 0.0)
    for port in range(20, 0, -1):
        first.associate_path(connection, FlowKey("10.0.5.1", port, "10.0.0.250", 4433), 0.0)
        first.associate_cid(connection, bytes([port]) * 8, 0.0)
    first.retire_path(connection, A)
    found = second.by_path(connection.paths[0], 0.0)
    assert (found.paths, found.retired_paths) == (connection.paths, (A,))
    assert found.server_cids == connection.server_cids


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    firewall=firewall_states,
    nat=st.dictionaries(paths, ports, max_size=4),
    backend=st.none() | st.ip_addresses(v=4).map(str),
    owner=st.none() | st.text(max_size=16),
)
def test_function_states_round_trip_through_the_store_unchanged(
    replica, firewall, nat, backend, owner
):
    first, second = replica(), replica()
    connection = first.put(FlowKey("10.0.1.1", 1, "10.0.0.250", 4433), 0.0)
    connection.firewall = firewall
    connection.nat = NatState(compact(tuple(nat)), compact(tuple(nat.values())))
    connection.loadbalancer = LoadBalancerState(backend)
    connection.owner, connection.flags = owner, OBSERVING
    first.save(connection, 0.0)
    found = second.by_path(connection.paths[0], 0.0)
    assert fields(found) == fields(connection)
    assert all(type(getattr(found, name)) is kind for name, kind in STATE_TYPES.items())


# --- connecting, and the private server ----------------------------------------------------------


def test_an_unreachable_url_gives_an_error_naming_it(tmp_path):
    with RedisServer(tmp_path) as server:
        url = server.url  # a port nothing listens on any more
    with pytest.raises(StoreUnreachable, match=f"cannot reach Redis at {url}"):
        connect_redis(url, timeout_s=0.5)
    with pytest.raises(StoreUnreachable, match="unix:///nonexistent/redis.sock"):
        connect_redis("unix:///nonexistent/redis.sock")
    with pytest.raises(StoreUnreachable, match=r"redis://:\*\*\*@127.0.0.1"):
        connect_redis(url.replace("//", "//:secret@"), timeout_s=0.5)
    with pytest.raises(ValueError, match="Redis URL http://x"):
        connect_redis("http://x")


def test_the_server_leaves_no_process_or_directory_behind(tmp_path, redis_url):
    owned = []
    server = RedisServer(tmp_path, own=lambda pid, what: owned.append((pid, what)))
    with server:
        pid, directory = server.pid, server.directory
        assert owned == [(pid, "redis-server")] and process_start_time(pid) is not None
        assert directory.parent == tmp_path and (directory / "redis.log").exists()
        assert connect_redis(server.url).ping()
    assert process_start_time(pid) is None and not directory.exists()
    assert list(tmp_path.iterdir()) == []
    server.stop()  # twice: nothing left to do
    assert connect_redis(redis_url).ping()  # the session's server was not touched


def test_the_server_listens_on_a_unix_socket_only_when_asked():
    base = Path(tempfile.mkdtemp(prefix="qasm-test-"))  # short: sun_path holds 108 bytes
    try:
        with RedisServer(base, unix_socket=True) as server:
            assert server.url == f"unix://{server.directory}/redis.sock"
            client = connect_redis(server.url)
            assert client.config_get("port") == {"port": "0"}
            assert client.config_get("save") == {"save": ""}
            assert client.config_get("appendonly") == {"appendonly": "no"}
    finally:
        base.rmdir()  # fails if the server left anything in it
