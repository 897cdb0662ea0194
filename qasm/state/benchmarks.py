"""Measurements of the connection table for `make bench` (testbed/bench.py).

Memory per connection is what a middlebox operator sizes the hard bound with; the lookup
figures compare finding a connection by CID (what a QUIC-aware middlebox does per packet-in
after a migration) with a bare dict lookup of the same keys, interleaved in one run.
"""

from __future__ import annotations

import gc
import os
import time
import tracemalloc

from qasm.flow import FlowKey
from qasm.functions.nat import NatState
from qasm.state.connections import ConnectionTable

Figure = tuple[str, str]
# A migrated connection as the qasm variant holds it: two paths (one retired) and the
# server CIDs the client used, including the spare one it announced.
CIDS_PER_CONNECTION = 3


def _fill(table: ConnectionTable, connections: int, migrated: bool = True) -> list[bytes]:
    """Connections as a qasm hop with a NAT holds them: migrated ones with two paths (one
    retired) and three server CIDs, or fresh ones with their first path and CID."""
    cids = []
    for i in range(connections):
        host = f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"
        first = FlowKey(host, 40000, "10.0.0.250", 4433)
        connection = table.put(first, now=0.0)
        ports = {first: 20000 + i % 30000}
        if migrated:
            second = FlowKey(host, 40001, "10.0.0.250", 4433)
            table.associate_path(connection, second, now=0.0)
            table.retire_path(connection, first)
            ports = {second: 20000 + i % 30000}
        for _ in range(CIDS_PER_CONNECTION if migrated else 1):
            cid = os.urandom(8)
            table.associate_cid(connection, cid, now=0.0)
            cids.append(cid)
        connection.functions["nat"] = NatState(ports)
    return cids


def _bytes_per_connection(connections: int, migrated: bool) -> float:
    gc.collect()
    tracemalloc.start()
    table = ConnectionTable(max_connections=connections)
    _fill(table, connections, migrated)
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(table) == connections
    return current / connections


def connection_memory(connections: int = 100_000) -> list[Figure]:
    """Bytes per connection, everything the table allocates for it (indexes included)."""
    fresh = _bytes_per_connection(connections, migrated=False)
    migrated = _bytes_per_connection(connections, migrated=True)
    return [
        ("connection_table_bytes_per_connection", f"{fresh:.0f}"),
        ("connection_table_bytes_per_migrated_connection", f"{migrated:.0f}"),
        ("connection_table_1m_mib", f"{fresh * 1e6 / 2**20:.0f}"),
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
