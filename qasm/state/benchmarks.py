"""Measurements of the connection table for `make bench` (testbed/bench.py).

Memory per connection is what a middlebox operator sizes the hard bound with; the lookup
figures compare finding a connection by CID (what a QUIC-aware middlebox does per packet-in
after a migration) with a bare dict lookup of the same keys, interleaved in one run.

`store_operations(url)` runs one hop's state work on the memory table and NAT pool and on
their shared Redis counterparts, interleaved, against the Redis server at `url`: a new
connection (put, its server CID, a NAT port, save), a lookup by CID, and an active migration
(found by CID, the next CID, the new path and its port, the old path retired and its port
given back, save); what the controller would do per packet-in, one round trip at a time.
Plus the one pipelined read (`connections()`), Redis round trips per new connection and per
migration, and Redis's bytes per connection (MEMORY USAGE of its keys).
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import time
import tracemalloc
import uuid

from qasm.flow import PORT_NUMBERS, FlowKey
from qasm.functions.nat import NatPool, NatSettings, NatState
from qasm.state.connections import ESTABLISHED, ConnectionStore, ConnectionTable
from qasm.state.redis_layout import StoreKeys, cid_field, path_field, retired_field
from qasm.state.redis_nat import SharedNatPool
from qasm.state.redis_store import RedisConnectionTable, connect_redis

Figure = tuple[str, str]
# A migrated connection as the qasm variant holds it: two paths (one retired) and the
# server CIDs the client used, including the spare one it announced.
CIDS_PER_CONNECTION = 3


def _fill(
    table: ConnectionStore, connections: int, migrated: bool = True, established: bool = True
) -> list[bytes]:
    """Connections as a qasm hop with a NAT holds them: migrated ones with two paths (one
    retired) and three server CIDs, or fresh ones with their first path and CID. A hop
    knows a server CID once the server answered (a copy of its handshake, or the client's
    agent), so they are established unless asked for half-open ones (a flood's, which the
    per-source quota and the half-open timeout bound). They arrive 10,000 a second, each
    at a `now` of its own, a float as the controller's `time.monotonic()` of a packet-in
    is: one constant shared by all hid those 24 B a connection. The table shares one among
    the connections it sees within `SEEN_RESOLUTION_S`, as it does a controller's."""
    cids = []
    for i in range(connections):
        now = i * 1e-4
        host = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
        first = FlowKey(host, 40000, "10.0.0.250", 4433)
        connection = table.put(first, now)
        # The NAT's public port as its pool hands it out: the shared int of that number.
        public_port = PORT_NUMBERS[20000 + i % 30000]
        nat_path = first
        if migrated:
            second = FlowKey(host, 40001, "10.0.0.250", 4433)
            table.associate_path(connection, second, now)
            table.retire_path(connection, first)
            nat_path = second
        for _ in range(CIDS_PER_CONNECTION if migrated else 1):
            cid = os.urandom(8)
            table.associate_cid(connection, cid, now)
            cids.append(cid)
        connection.nat = NatState(nat_path, public_port)
        if established:
            connection.flags |= ESTABLISHED
        table.save(connection, now)
    return cids


def _table_bytes(connections: int, migrated: bool, established: bool = True) -> int:
    gc.collect()
    tracemalloc.start()
    table = ConnectionTable(max_connections=connections)
    _fill(table, connections, migrated, established)
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(table) == connections
    return current


def _resident_growth(connections: int) -> int:
    """Bytes the process's resident set grows by while it fills a table of `connections`
    fresh ones, without tracemalloc."""
    gc.collect()
    before = _resident_bytes()
    table = ConnectionTable(max_connections=connections)
    _fill(table, connections, migrated=False)
    gc.collect()
    grown = _resident_bytes() - before
    assert len(table) == connections
    return grown


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:  # Linux: sizes in pages, resident second
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def connection_memory(connections: int = 100_000, million: int = 1_000_000) -> list[Figure]:
    """Bytes per connection, everything the table allocates for it (indexes included), at
    `connections` (the table's default bound), and the MiB of a table filled with `million`
    fresh connections, measured, not extrapolated: an index dict's share of a connection
    depends on how full its power-of-two table is (52 B at 100,000 connections, 42 B at a
    million), so the one figure does not scale to the other.

    tracemalloc counts the bytes Python asked for; the process grows by more, as pymalloc
    rounds every object up to a multiple of 16 bytes (a 24-byte float takes 32), so the
    million is also reported as the growth of a fresh interpreter's resident set (in this
    one, memory that earlier benchmarks freed would be reused without it growing): 30-40 B a
    connection more. The million takes ~35 s of CPU under tracemalloc and ~10 s without on
    this 2-core machine (about twice that when another job shares it), most of this
    benchmark's time."""
    fresh = _table_bytes(connections, migrated=False) / connections
    migrated = _table_bytes(connections, migrated=True) / connections
    half_open = _table_bytes(connections, migrated=False, established=False) / connections
    filled = _table_bytes(million, migrated=False)
    with multiprocessing.get_context("spawn").Pool(1) as fresh_interpreter:
        resident = fresh_interpreter.apply(_resident_growth, (million,))
    label = "1m" if million == 1_000_000 else f"{million}"
    return [
        ("connection_table_bytes_per_connection", f"{fresh:.0f}"),
        ("connection_table_bytes_per_migrated_connection", f"{migrated:.0f}"),
        ("connection_table_bytes_per_half_open_connection", f"{half_open:.0f}"),
        (f"connection_table_{label}_mib", f"{filled / 2**20:.0f}"),
        (f"connection_table_{label}_resident_mib", f"{resident / 2**20:.0f}"),
    ]


def cid_lookup(connections: int = 20_000, repeats: int = 9) -> list[Figure]:
    table = ConnectionTable(max_connections=connections)
    cids = _fill(table, connections)
    bare = {cid: i for i, cid in enumerate(cids)}
    table_times, dict_times = [], []
    for _ in range(repeats):  # interleaved, so drifts in machine load hit both alike
        start = time.perf_counter()
        for cid in cids:
            table.by_cid(cid, 1.0)
        table_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        for cid in cids:
            bare.get(cid)
        dict_times.append(time.perf_counter() - start)
    table_s, dict_s = min(table_times), min(dict_times)
    return [
        ("cid_lookup_vs_dict", f"{table_s / dict_s:.1f}x"),
        ("cid_lookup_ns", f"{table_s / len(cids) * 1e9:.0f}"),
    ]


# --- memory vs Redis ----------------------------------------------------------------------

SERVICE = ("10.0.0.250", 4433)
NAT_SETTINGS = NatSettings("10.0.100.1", "02:00:00:00:01:01", first_port=20000, ports=8192)
STORE_CONNECTIONS = 2000


def _client_path(i: int, port: int) -> FlowKey:
    return FlowKey(f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}", port, *SERVICE)


def _cid(i: int, generation: int) -> bytes:
    return i.to_bytes(6, "big") + generation.to_bytes(2, "big")


def _new_connections(
    table: ConnectionStore, pool: NatPool | SharedNatPool, connections: int
) -> None:
    for i in range(connections):
        path = _client_path(i, 40000)
        connection = table.put(path, 1.0)
        table.associate_cid(connection, _cid(i, 0), 1.0)
        connection.nat = NatState(path, pool.allocate(path))
        table.save(connection, 1.0)


def _lookups(table: ConnectionStore, connections: int) -> None:
    for i in range(connections):
        table.by_cid(_cid(i, 0), 2.0)


def _migrations(table: ConnectionStore, pool: NatPool | SharedNatPool, connections: int) -> None:
    for i in range(connections):
        old, new = _client_path(i, 40000), _client_path(i, 40001)
        connection = table.by_cid(_cid(i, 0), 3.0)
        table.associate_cid(connection, _cid(i, 1), 3.0)
        table.associate_path(connection, new, 3.0)
        nat = connection.nat
        nat.add(new, pool.allocate(new))
        table.retire_path(connection, old)
        nat.remove(old)
        pool.release(old)
        table.save(connection, 3.0)


def _timed(operation, *args) -> float:
    start = time.perf_counter()
    operation(*args)
    return time.perf_counter() - start


def store_operations(
    redis_url: str, connections: int = STORE_CONNECTIONS, repeats: int = 3
) -> list[Figure]:
    client = connect_redis(redis_url)
    best: dict[str, float] = {}
    trips: dict[str, float] = {}

    def keep(name: str, seconds: float) -> None:
        best[name] = min(best.get(name, float("inf")), seconds)

    for _ in range(repeats):  # interleaved, so drifts in machine load hit both alike
        memory, memory_pool = ConnectionTable(), NatPool(NAT_SETTINGS)
        prefix = f"bench-{uuid.uuid4().hex[:8]}"
        shared = RedisConnectionTable(client, prefix, {"nat": NatState})
        shared_pool = SharedNatPool(client, prefix, NAT_SETTINGS)
        steps = (
            ("new_connection", _new_connections, (memory, memory_pool), (shared, shared_pool)),
            ("lookup", _lookups, (memory,), (shared,)),
            ("migration", _migrations, (memory, memory_pool), (shared, shared_pool)),
        )
        for name, operation, on_memory, on_redis in steps:
            keep(f"{name} memory", _timed(operation, *on_memory, connections))
            before = shared.round_trips + shared_pool.round_trips
            keep(f"{name} redis", _timed(operation, *on_redis, connections))
            after = shared.round_trips + shared_pool.round_trips
            trips[name] = (after - before) / connections
        keep("listing redis", _timed(shared.connections))
        client.delete(*client.scan_iter(f"{prefix}:*"))
    figures = []
    for name, _, _, _ in steps:
        memory_s, redis_s = best[f"{name} memory"], best[f"{name} redis"]
        figures += [
            (f"store_{name}_memory_ops_s", f"{connections / memory_s:.0f}"),
            (f"store_{name}_redis_ops_s", f"{connections / redis_s:.0f}"),
            (f"store_{name}_memory_vs_redis", f"{redis_s / memory_s:.1f}x"),
        ]
    listing_s = best["listing redis"]
    figures += [
        ("store_read_redis_pipelined_ops_s", f"{connections / listing_s:.0f}"),
        ("store_read_redis_pipelined_vs_lookup", f"{best['lookup redis'] / listing_s:.1f}x"),
        ("redis_round_trips_per_new_connection", f"{trips['new_connection']:.1f}"),
        ("redis_round_trips_per_lookup", f"{trips['lookup']:.1f}"),
        ("redis_round_trips_per_migration", f"{trips['migration']:.1f}"),
    ]
    return figures + _redis_bytes_per_connection(client, connections)


def _redis_bytes_per_connection(client, connections: int) -> list[Figure]:
    """MEMORY USAGE of each connection's keys (its hash and the index entries it owns),
    summed; the LRU sorted set, shared by all, is its own figure."""
    figures = []
    for migrated, name in (
        (False, "redis_bytes_per_connection"),
        (True, "redis_bytes_per_migrated_connection"),
    ):
        prefix = f"bench-{uuid.uuid4().hex[:8]}"
        table = RedisConnectionTable(client, prefix, {"nat": NatState}, max_connections=connections)
        _fill(table, connections, migrated)
        keys = StoreKeys(prefix)
        pipeline = client.pipeline(transaction=False)
        for connection in table.connections():
            pipeline.memory_usage(keys.connection(connection.id), samples=0)
            owned = [path_field(p) for p in connection.paths]
            owned += [retired_field(p) for p in connection.retired_paths]
            owned += [cid_field(cid) for cid in connection.server_cids]
            for field in owned:
                pipeline.memory_usage(keys.index(field), samples=0)
        figures.append((name, f"{sum(pipeline.execute()) / connections:.0f}"))
        if not migrated:
            lru = client.memory_usage(keys.lru, samples=0) / connections
            figures.append(("redis_lru_bytes_per_connection", f"{lru:.0f}"))
        client.delete(*client.scan_iter(f"{prefix}:*"))
    return figures
