from __future__ import annotations

from qasm.flow import FlowKey
from qasm.state.connections import (
    ESTABLISHED,
    EVICTED,
    EXPIRED,
    PROBING,
    SEEN_RESOLUTION_S,
    ConnectionTable,
)

A = FlowKey("10.0.1.1", 5000, "10.0.0.250", 4433)
B = FlowKey("10.0.2.1", 6000, "10.0.0.250", 4433)
C = FlowKey("10.0.3.1", 7000, "10.0.0.250", 4433)


def test_a_connection_is_found_by_every_path_and_cid_until_idle():
    table = ConnectionTable(idle_timeout_s=120)
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


def test_paths_and_cids_cannot_be_stolen_by_another_connection():
    table = ConnectionTable()
    first = table.put(A, 0.0)
    second = table.put(B, 0.0)
    assert table.associate_cid(first, b"\x01", 0.0)
    assert not table.associate_cid(second, b"\x01", 0.0)
    assert not table.associate_path(second, A, 0.0)
    assert table.by_cid(b"\x01", 0.0) is first and table.by_path(A, 0.0) is first


def test_retired_paths_no_longer_find_the_connection():
    table = ConnectionTable()
    connection = table.put(A, 0.0)
    table.associate_path(connection, B, 0.0)
    assert table.retire_path(connection, A)
    assert table.by_path(A, 1.0) is None and table.retired_by(A) is connection
    assert table.associate_path(connection, A, 2.0) and table.retired_by(A) is None
    table.retire_path(connection, A)
    table.remove(connection)
    assert table.retired_by(A) is None
    assert table.take_ended() == []  # removed on purpose: not ended by the table


def test_the_least_recently_used_connection_is_evicted_at_the_bound():
    table = ConnectionTable(max_connections=1, max_cids_per_connection=2)
    first = table.put(A, 0.0)
    table.associate_cid(first, b"\x01", 0.0)
    second = table.put(B, 1.0)
    assert table.take_ended() == [(first, EVICTED)] and table.evicted == 1
    assert table.by_cid(b"\x01", 1.0) is None
    assert table.associate_cid(second, b"\x02", 1.0) and table.associate_cid(second, b"\x03", 1.0)
    assert not table.associate_cid(second, b"\x04", 1.0)  # bounded per connection


def test_connections_seen_within_the_resolution_share_one_last_seen_time():
    # A memory property (make bench: a float a connection is 24 B), so it reads identities.
    table = ConnectionTable()
    start = 100.0
    first = table.put(A, start)
    second = table.put(B, start + SEEN_RESOLUTION_S / 2)
    assert second.last_seen is first.last_seen == start
    third = table.put(C, start + SEEN_RESOLUTION_S)  # a tick later: a float of its own
    assert third.last_seen == start + SEEN_RESOLUTION_S
    assert table.by_path(A, start + SEEN_RESOLUTION_S * 1.5) is first
    assert first.last_seen is third.last_seen
    # A time before the one held (another datapath's packet-in) is taken as it is.
    assert table.by_path(B, start + SEEN_RESOLUTION_S / 4) is second
    assert second.last_seen == start + SEEN_RESOLUTION_S / 4


def test_a_lookup_makes_a_connection_the_most_recently_used():
    table = ConnectionTable(max_connections=2, idle_timeout_s=10)
    first, second = table.put(A, 0.0), table.put(B, 1.0)
    for connection in (first, second):
        connection.flags |= ESTABLISHED
        table.save(connection, 1.0)
    assert table.by_path(A, 2.0) is first and table.connections() == [second, first]
    table.put(C, 3.0)
    assert table.take_ended() == [(second, EVICTED)] and table.is_live(first)
    assert not table.is_live(second) and len(table) == 2
    table.expire(12.5)  # the new one, seen at 3.0, stays
    assert table.take_ended() == [(first, EXPIRED)] and len(table) == 1


def test_an_established_connection_saved_keeps_no_half_open_entry():
    # A memory property (make bench: an entry of a half-open order is 105 bytes), so it
    # reads the orders themselves: established ones leave on save, half-open ones stay.
    table = ConnectionTable()
    probed, answered, silent = table.put(A, 0.0), table.put(B, 0.0), table.put(C, 0.0)
    probed.flags |= PROBING
    table.save(probed, 0.0)
    table.expire(0.0)  # moves the probed one to the probed order
    for connection in (probed, answered):
        connection.flags |= ESTABLISHED
        assert table.save(connection, 1.0)
    orders = (table._half_open, table._probed)
    assert [list(order) for order in orders] == [[silent.id], []]
