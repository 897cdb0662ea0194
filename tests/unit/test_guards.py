"""Guards users rely on, each pinned by a test that fails when the guard goes: the Tracking
Agent's ownership, replay, tag and rate checks, the table's expiry and LRU order, and the
NAT pool's release."""

from __future__ import annotations

from qasm.agents.messages import TAG_SIZE, Announce, Retire, derive_client_key, seal
from qasm.agents.tracking import REPLAY_WINDOW, Report, TrackingAgent
from qasm.controller.events import AgentReport, NatMapping, PathInstalled, Reason
from qasm.flow import FlowKey
from qasm.functions.nat import Nat, NatPool, NatSettings
from qasm.state.connections import EVICTED, EXPIRED, Connection, ConnectionTable
from tests.unit.test_chain import LTE_IP as CHAIN_LTE_IP
from tests.unit.test_chain import WIFI_IP as CHAIN_WIFI_IP
from tests.unit.test_chain import ChainBench

SERVICE = ("10.0.0.250", 4433)
WIFI, LTE, ELSEWHERE = "10.0.1.1", "10.0.2.1", "10.0.3.1"
SECRET = b"guard secret"
KEYS = {client: derive_client_key(SECRET, client) for client in ("c1", "c2")}
CID, NEXT_CID = b"\x01" * 8, b"\x02" * 8


def path(ip: str, port: int) -> FlowKey:
    return FlowKey(ip, port, *SERVICE)


class Bench:
    """A Tracking Agent, the client-facing hop's table with c1's connection on its wifi
    address, and what the controller was asked to apply."""

    def __init__(self, rate_per_s: float = 20.0, burst: int = 20) -> None:
        self.agent = TrackingAgent(
            SERVICE, dict(KEYS), {"c1": frozenset({WIFI, LTE}), "c2": frozenset({ELSEWHERE})},
            rate_per_s=rate_per_s, burst=burst,
        )  # fmt: skip
        self.table = ConnectionTable()
        self.connection = self.table.put(path(WIFI, 5000), 0.0)
        assert self.table.associate_cid(self.connection, CID, 0.0)
        self.applied: list[tuple[Announce | Retire, Connection | None]] = []

    def apply(self, message, connection):
        self.applied.append((message, connection))
        return None

    def receive(self, datagram: bytes, source: str = WIFI, now: float = 1.0) -> Report:
        return self.agent.receive(datagram, source, now, self.table, self.apply)

    def announce(self, counter: int, new=(LTE, 6000), client="c1", old=(WIFI, 5000), **kwargs):
        message = Announce(client, counter, CID, NEXT_CID, old, new)
        return self.receive(seal(message, KEYS[client]), **kwargs)


def rejected(report: Report, reason: Reason) -> bool:
    return not report.accepted and report.reason is reason and report.message is None


def test_an_announce_is_accepted_only_for_a_new_address_of_the_client():
    bench = Bench()
    assert rejected(bench.announce(1, new=("10.0.9.9", 6000)), Reason.NEW_ADDRESS_NOT_CLIENTS)
    assert rejected(bench.announce(2, new=(ELSEWHERE, 6000)), Reason.NEW_ADDRESS_NOT_CLIENTS)
    assert bench.applied == [] and bench.connection.paths == (path(WIFI, 5000),)
    accepted = bench.announce(3, new=(LTE, 6000))
    assert accepted.accepted and accepted.reason is Reason.ANNOUNCED
    assert accepted.new_path == path(LTE, 6000)
    assert bench.applied == [(accepted.message, bench.connection)]


def test_no_report_is_accepted_for_another_clients_connection():
    bench = Bench()
    # c2 names c1's connection and its path, and moves it to one of c2's own addresses.
    theirs = bench.announce(1, client="c2", new=(ELSEWHERE, 7000), source=ELSEWHERE)
    assert rejected(theirs, Reason.NOT_CLIENTS_CONNECTION)
    # Once c1 reported it, the connection is c1's by name too.
    bench.connection.owner = "c1"
    theirs = bench.announce(2, client="c2", new=(ELSEWHERE, 7000), source=ELSEWHERE)
    assert rejected(theirs, Reason.CONNECTION_OF_ANOTHER_CLIENT)
    retire = seal(Retire("c2", 3, CID, (WIFI, 5000)), KEYS["c2"])
    assert rejected(bench.receive(retire, source=ELSEWHERE), Reason.CONNECTION_OF_ANOTHER_CLIENT)
    assert bench.applied == [] and bench.connection.owner == "c1"
    assert bench.announce(1, client="c1").accepted  # c1's own counter is untouched by c2's


def test_a_counter_is_never_accepted_twice_with_another_body():
    bench = Bench()
    first = seal(Announce("c1", 5, CID, NEXT_CID, (WIFI, 5000), (LTE, 6000)), KEYS["c1"])
    assert bench.receive(first).accepted
    same_counter = bench.announce(5, new=(LTE, 6001))
    assert rejected(same_counter, Reason.REPLAYED)
    # Out of order but unused, a lower counter is fresh once (a report overtaken on another
    # interface); used, or older than the window, it is a replay.
    assert bench.announce(4, new=(LTE, 6002)).accepted
    assert rejected(bench.announce(4, new=(LTE, 6003)), Reason.REPLAYED)
    assert bench.announce(5 + REPLAY_WINDOW, new=(LTE, 6004)).accepted
    assert rejected(bench.announce(5, new=(LTE, 6005)), Reason.REPLAYED)  # out of the window
    assert bench.announce(6, new=(LTE, 6006)).accepted  # the window's oldest, unused
    # The very same datagram is a retry after a lost ack: answered again, applied once.
    again = bench.receive(first, now=1.5)
    assert again.reason is Reason.DUPLICATE and again.reply is not None
    assert [message.new for message, _ in bench.applied] == [
        (LTE, 6000),
        (LTE, 6002),
        (LTE, 6004),
        (LTE, 6006),
    ]


def test_the_whole_hmac_tag_is_checked():
    bench = Bench()
    real = seal(Announce("c1", 1, CID, NEXT_CID, (WIFI, 5000), (LTE, 6000)), KEYS["c1"])
    body = real[TAG_SIZE:]
    for tag in (
        real[:4] + bytes(TAG_SIZE - 4),  # only the first 4 bytes right
        real[: TAG_SIZE - 1] + bytes([real[TAG_SIZE - 1] ^ 1]),  # all but the last bit
        bytes(TAG_SIZE),
    ):
        report = bench.receive(tag + body)
        assert rejected(report, Reason.FORGED) and report.reply is None
    assert bench.applied == [] and "accepted" not in bench.agent.counters
    assert bench.receive(real).accepted  # the forgeries spent nothing


def test_the_rate_budget_never_refills_past_its_burst():
    bench = Bench(rate_per_s=1.0, burst=3)

    def retire(counter: int, now: float) -> Reason:
        datagram = seal(Retire("c1", counter, b"\x09", (WIFI, 5000)), KEYS["c1"])
        return bench.receive(datagram, now=now).reason

    assert retire(1, 0.0) is Reason.UNKNOWN_CONNECTION  # spends a token
    # Idle for ~11 days: still only the burst at once.
    reasons = [retire(n, 1e6) for n in range(2, 7)]
    assert reasons == [Reason.UNKNOWN_CONNECTION] * 3 + [Reason.RATE_LIMITED] * 2
    assert retire(7, 1e6 + 1.0) is Reason.UNKNOWN_CONNECTION  # one second: one token


def test_expire_ends_exactly_the_connections_idle_past_the_timeout():
    table = ConnectionTable(idle_timeout_s=120)
    a = table.put(path(WIFI, 1), 0.0)
    b = table.put(path(WIFI, 2), 50.0)
    table.associate_cid(b, CID, 50.0)
    table.expire(170.0)  # b idle exactly the timeout: kept
    assert len(table) == 1 and table.connections() == [b] and table.expired == 1
    assert table.take_ended() == [(a, EXPIRED)]
    table.expire(170.5)
    assert len(table) == 0 and table.take_ended() == [(b, EXPIRED)] and table.expired == 2
    # Its indices are gone too: a new connection may take its path and CID.
    c = table.put(path(WIFI, 2), 171.0)
    assert table.associate_cid(c, CID, 171.0) and table.by_cid(CID, 171.0) is c


def test_a_lookup_refreshes_the_connections_place_in_the_lru_order():
    for lookup in ("by_path", "by_cid"):
        table = ConnectionTable(max_connections=2)
        a = table.put(path(WIFI, 1), 0.0)
        table.associate_cid(a, CID, 0.0)
        b = table.put(path(WIFI, 2), 1.0)
        key = path(WIFI, 1) if lookup == "by_path" else CID
        assert getattr(table, lookup)(key, 2.0) is a
        table.put(path(WIFI, 3), 3.0)
        assert table.take_ended() == [(b, EVICTED)], lookup  # not a: it was just used
        assert table.by_path(path(WIFI, 1), 3.0) is a


def test_releasing_a_nat_port_returns_it_to_the_pool():
    pool = NatPool(NatSettings("10.0.100.1", "02:00:00:00:00:fd", first_port=20000, ports=2))
    first, second, third = path(WIFI, 1), path(WIFI, 2), path(WIFI, 3)
    assert (pool.allocate(first), pool.allocate(second)) == (20000, 20001)
    assert pool.allocate(third) is None and pool.exhausted == 1
    assert pool.release(first) == 20000
    assert pool.in_use == 1 and pool.path_of(20000) is None and pool.public_flow(first) is None
    assert pool.allocate(third) == 20000 and pool.path_of(20000) == third
    # Through the function: a retired path's port, then everything a connection ends with.
    nat = Nat(NatSettings("10.0.100.1", "02:00:00:00:00:fd", first_port=30000, ports=4))
    connection = Connection(id=1, last_seen=0.0)
    for p in (first, second):
        nat.path_added(connection, p, 0.0)
    assert nat.pool.in_use == 2
    retired = nat.path_retired(connection, first)
    assert retired.nat_released == [NatMapping(first, "10.0.100.1", 30000)]
    assert nat.pool.in_use == 1 and nat.pool.path_of(30000) is None
    ended = nat.connection_ended(connection)
    assert ended.nat_released == [NatMapping(second, "10.0.100.1", 30001)]
    assert nat.pool.in_use == 0 and nat.pool.path_of(30001) is None
    assert connection.nat.pairs() == ()


def test_a_retired_ports_inbound_side_names_its_path_until_the_port_is_reused():
    """The service's datagrams to a port whose client retired its path still find the path
    (the middlebox delivers them on a held one); once the port went to another path, or
    was given back by a connection that ended, they find only the pool's own answer."""
    nat = Nat(NatSettings("10.0.100.1", "02:00:00:00:00:fd", first_port=30000, ports=2))
    a, b = Connection(id=1, last_seen=0.0), Connection(id=2, last_seen=0.0)
    first, second, third = path(WIFI, 1), path(WIFI, 2), path(WIFI, 3)

    def to_public(port: int):
        return nat.service_path(FlowKey(*SERVICE, "10.0.100.1", port))

    nat.path_added(a, first, 0.0)  # 30000
    nat.path_added(a, second, 0.0)  # 30001
    nat.path_retired(a, first)
    assert to_public(30000) == first and to_public(30001) == second
    nat.path_added(b, third, 0.0)  # 30000 again: the pool's turn came round
    assert to_public(30000) == third
    nat.connection_ended(b)
    assert to_public(30000).reason is Reason.NO_NAT_MAPPING
    nat.connection_ended(a)
    assert to_public(30001).reason is Reason.NO_NAT_MAPPING


def test_an_announce_refused_on_a_later_hop_changes_no_hop():
    bench = ChainBench("qasm", 2)
    bench.handshake()
    first, second = bench.controller.hops
    (full,) = second.table.connections()
    while second.table.associate_path(full, path("10.0.100.1", 40000 + len(full.paths)), 1.0):
        pass  # the second hop's connection is at its maximum of paths
    (connection,) = first.table.connections()
    paths_before, cids_before = connection.paths, connection.server_cids
    bench.net.events.clear()
    _, datagram = bench.agent.announce(
        bench.pair.client, (CHAIN_WIFI_IP, 50000), (CHAIN_LTE_IP, 6000), True
    )
    bench.report(datagram, "lte")
    (report,) = [e for e in bench.net.events if isinstance(e, AgentReport)]
    assert report.reason is Reason.CONNECTION_FULL and not report.new_path
    assert not [e for e in bench.net.events if isinstance(e, PathInstalled)]
    assert connection.paths == paths_before and connection.server_cids == cids_before
    assert first.nat.pool.in_use == 1
    assert not [
        r
        for r in bench.net.switches[1].rules
        if r.match.flow and r.match.flow.src_ip == CHAIN_LTE_IP
    ]
