"""Measurements of the wire library's per-packet costs, for `make bench` (testbed/bench.py).

Each function returns figures as (name, value) pairs; values carry their unit
("2.4x", "42.0"). Inputs are real aioquic client Initials built in memory (sans-I/O, no
sockets), each with its own random DCID, so Initial key derivation is measured cold, as for
the first packet of every new connection.
"""

from __future__ import annotations

import gc
import os
import statistics
import time
import tracemalloc
from collections.abc import Callable

from qasm.wire.clienthello import ClientHelloAssembler
from qasm.wire.frames import CryptoFrame
from qasm.wire.header import parse_datagram, short_header_dcid
from qasm.wire.initial import _receive_context

Figure = tuple[str, str]
SHORT_DCID_LENGTH = 8


def _best_of(repeats: int, run: Callable[[], object]) -> float:
    """Fastest of `repeats` runs, in seconds: the least disturbed by the rest of the machine."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best


def dcid_extraction(packets: int = 20_000, repeats: int = 15) -> list[Figure]:
    """Short-header DCID per packet: `short_header_dcid` against a bare slice, interleaved.

    Both loops are list comprehensions over the same 1200-byte packets, so the ratio is the
    cost of the call and its checks over the slice alone; `parse_datagram` (a full header
    dataclass) is reported beside them for the controller's heavier path.
    """
    corpus = [
        bytes([0x40 | (i & 0x20)]) + os.urandom(SHORT_DCID_LENGTH + 1191) for i in range(packets)
    ]
    extract = short_header_dcid
    length = SHORT_DCID_LENGTH
    end = 1 + SHORT_DCID_LENGTH
    slice_times, extract_times, parse_times = [], [], []
    for _ in range(repeats):  # interleaved, so drifts in machine load hit all three alike
        slice_times.append(_best_of(1, lambda: [p[1:end] for p in corpus]))
        extract_times.append(_best_of(1, lambda: [extract(p, length) for p in corpus]))
        parse_times.append(_best_of(1, lambda: [parse_datagram(p, length) for p in corpus]))
    slice_s, extract_s, parse_s = min(slice_times), min(extract_times), min(parse_times)
    return [
        ("dcid_extract_vs_slice", f"{extract_s / slice_s:.1f}x"),
        ("dcid_extract_ns", f"{extract_s / packets * 1e9:.0f}"),
        ("dcid_slice_ns", f"{slice_s / packets * 1e9:.0f}"),
        ("parse_datagram_short_ns", f"{parse_s / packets * 1e9:.0f}"),
    ]


def client_initials(count: int) -> list[bytes]:
    """`count` first datagrams of real aioquic clients, each with its own random DCID."""
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection

    datagrams = []
    for index in range(count):
        configuration = QuicConfiguration(
            is_client=True, alpn_protocols=["h3"], server_name=f"host{index}.bench.example"
        )
        connection = QuicConnection(configuration=configuration)
        connection.connect(("192.0.2.1", 443), now=0.0)
        (datagram, _), *_ = connection.datagrams_to_send(now=0.0)
        datagrams.append(datagram)
    return datagrams


def initial_decrypt_sni(packets: int = 2_000) -> list[Figure]:
    """Per client Initial: parse, derive keys (cold), decrypt, reassemble, ClientHello -> SNI."""
    corpus = client_initials(packets)
    _receive_context.cache_clear()
    timings = []
    clock = time.perf_counter_ns
    for datagram in corpus:
        start = clock()
        header = parse_datagram(datagram, SHORT_DCID_LENGTH)[0]
        hello = ClientHelloAssembler().add_packet(datagram, header)
        timings.append(clock() - start)
        assert hello is not None and hello.sni is not None
    timings.sort()
    return [
        ("initial_decrypt_sni_median_us", f"{statistics.median(timings) / 1000:.1f}"),
        ("initial_decrypt_sni_p99_us", f"{timings[int(len(timings) * 0.99)] / 1000:.1f}"),
    ]


def reassembly_memory(states: int = 100_000, held_bytes: int = 1_100) -> list[Figure]:
    """Peak Python memory of `states` reassembly states, each mid-ClientHello.

    A state only lives between the first and the last Initial of a ClientHello that spans
    several packets, so each holds the first packet's worth of CRYPTO data (`held_bytes`,
    about one 1200-byte Initial) of a 2,000-byte ClientHello. Empty states are reported too.
    """
    fragment_head = bytes([1]) + (1996).to_bytes(3, "big")
    figures = []
    for name, payload_length in (
        ("reassembly_100k_peak_mib", held_bytes),
        ("reassembly_100k_empty_peak_mib", 0),
    ):
        gc.collect()
        tracemalloc.start()
        held = []
        for index in range(states):
            assembler = ClientHelloAssembler()
            if payload_length:
                data = fragment_head + index.to_bytes(8, "big") * (payload_length // 8)
                assembler.add_crypto((CryptoFrame(0, data),))
            held.append(assembler)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        del held
        label = name if states == 100_000 else name.replace("100k", f"{states}")
        figures.append((label, f"{peak / 2**20:.1f}"))
    return figures
