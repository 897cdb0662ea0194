"""A deterministic mutation fuzzer for the wire library.

Seeds are real packets: the RFC vectors and every datagram of an aioquic handshake run in
memory. Each case mutates a seed and feeds it to one target; the only acceptable outcomes
are a result or a WireError, within a time bound. Ciphertext mutations never get past AEAD,
so one target mutates *plaintext* Initial payloads and re-encrypts them as valid client
Initials: that is how the frame walker and the ClientHello parser see hostile input.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aioquic.buffer import Buffer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.crypto import CryptoPair
from aioquic.quic.packet import QuicPacketType, encode_long_header_first_byte

from qasm.wire import (
    QUIC_V1,
    QuicLbConfig,
    WireError,
    datagram_dcid,
    decode_cid,
    parse_client_hello,
    parse_datagram,
    parse_frames,
    short_header_dcid,
)
from qasm.wire.capture import CaptureSummarizer
from qasm.wire.summary import describe_datagram
from testbed.apps.server import self_signed_certificate
from tests.wire import vectors
from tests.wire.handshake_capture import ALPN, SERVER_NAME

# Bytes that sit on boundaries of the formats: varint length prefixes (0x40, 0x80, 0xc0),
# header form and fixed bits, maximal lengths.
INTERESTING_BYTES = (0x00, 0x01, 0x06, 0x14, 0x15, 0x3F, 0x40, 0x7F, 0x80, 0xBF, 0xC0, 0xFF)
FUZZ_DCID = bytes.fromhex("f022c0ffee123456")
MAX_SECONDS_PER_CASE = 0.5


def in_memory_handshake() -> list[bytes]:
    """Every datagram of an aioquic client/server handshake plus a little stream data."""
    server_configuration = QuicConfiguration(is_client=False, alpn_protocols=[ALPN])
    certificate, key = self_signed_certificate(SERVER_NAME)
    server_configuration.certificate, server_configuration.private_key = certificate, key
    client = QuicConnection(
        configuration=QuicConfiguration(
            is_client=True, alpn_protocols=[ALPN], server_name=SERVER_NAME, verify_mode=0
        )
    )
    now = 0.0
    client.connect(("192.0.2.2", 443), now=now)
    server: QuicConnection | None = None
    datagrams: list[bytes] = []
    for round_trip in range(8):
        now += 0.01
        for datagram, _ in client.datagrams_to_send(now=now):
            datagrams.append(datagram)
            if server is None:
                header_dcid = datagram_dcid(datagram, 8)
                server = QuicConnection(
                    configuration=server_configuration,
                    original_destination_connection_id=header_dcid,
                )
            server.receive_datagram(datagram, ("192.0.2.1", 50000), now=now)
        if round_trip == 3:
            stream = client.get_next_available_stream_id()
            client.send_stream_data(stream, b"fuzz seed data" * 20, end_stream=True)
        assert server is not None
        for datagram, _ in server.datagrams_to_send(now=now):
            datagrams.append(datagram)
            client.receive_datagram(datagram, ("192.0.2.2", 443), now=now)
    return datagrams


def protect_client_initial(pair: CryptoPair, payload: bytes, packet_number: int) -> bytes:
    """`payload` as a valid client Initial with DCID FUZZ_DCID (keys already in `pair`)."""
    buf = Buffer(capacity=64)
    buf.push_uint8(encode_long_header_first_byte(QUIC_V1, QuicPacketType.INITIAL, 0x03))
    buf.push_uint32(QUIC_V1)
    buf.push_uint8(len(FUZZ_DCID))
    buf.push_bytes(FUZZ_DCID)
    buf.push_uint8(0)
    buf.push_uint_var(0)
    buf.push_uint_var(4 + len(payload) + 16)
    buf.push_uint32(packet_number)
    return pair.encrypt_packet(buf.data, payload, packet_number)


class Mutator:
    def __init__(self, rng: random.Random, seeds: list[bytes]) -> None:
        self.rng = rng
        self.seeds = seeds
        self.strategies: list[Callable[[bytes], bytes]] = [
            self.flip_bits,
            self.set_interesting_bytes,
            self.truncate,
            self.extend,
            self.delete_chunk,
            self.insert_chunk,
            self.splice,
            self.coalesce,
            self.lying_varint,
            self.garbage,
        ]

    def mutate(self, data: bytes) -> bytes:
        for _ in range(self.rng.choice((1, 1, 1, 2, 3))):
            data = self.rng.choice(self.strategies)(data)
        return data

    def _index(self, data: bytes) -> int:
        return self.rng.randrange(len(data)) if data else 0

    def flip_bits(self, data: bytes) -> bytes:
        if not data:
            return data
        out = bytearray(data)
        for _ in range(self.rng.randint(1, 8)):
            out[self._index(out)] ^= 1 << self.rng.randrange(8)
        return bytes(out)

    def set_interesting_bytes(self, data: bytes) -> bytes:
        if not data:
            return data
        out = bytearray(data)
        for _ in range(self.rng.randint(1, 4)):
            # Header fields live in the first ~60 bytes: aim there most of the time.
            limit = min(len(out), 64) if self.rng.random() < 0.7 else len(out)
            out[self.rng.randrange(limit)] = self.rng.choice(INTERESTING_BYTES)
        return bytes(out)

    def truncate(self, data: bytes) -> bytes:
        return data[: self._index(data)]

    def extend(self, data: bytes) -> bytes:
        return data + self.rng.randbytes(self.rng.randint(1, 64))

    def delete_chunk(self, data: bytes) -> bytes:
        start = self._index(data)
        return data[:start] + data[start + self.rng.randint(1, 32) :]

    def insert_chunk(self, data: bytes) -> bytes:
        start = self._index(data)
        return data[:start] + self.rng.randbytes(self.rng.randint(1, 32)) + data[start:]

    def splice(self, data: bytes) -> bytes:
        other = self.rng.choice(self.seeds)
        return data[: self._index(data)] + other[self._index(other) :]

    def coalesce(self, data: bytes) -> bytes:
        return data + self.rng.choice(self.seeds)

    def lying_varint(self, data: bytes) -> bytes:
        # Overwrite a spot with a varint of random size and value: a lying length field.
        value = self.rng.choice((0, 1, 63, 64, 16383, 16384, 2**30, 2**62 - 1))
        value = min(value, self.rng.randrange(2**62))
        buf = Buffer(capacity=8)
        buf.push_uint_var(value)
        start = self._index(data)
        return data[:start] + buf.data + data[start + len(buf.data) :]

    def garbage(self, data: bytes) -> bytes:
        if self.rng.random() < 0.002:
            return self.rng.randbytes(65_536)  # a 64 KiB blob
        return self.rng.randbytes(self.rng.randint(0, 1500))


@dataclass
class FuzzReport:
    cases: int = 0  # mutated inputs (packets, payloads, CIDs), each fed to >= 1 parser
    calls: int = 0  # parser calls made with them
    wire_errors: int = 0
    seconds: float = 0.0
    slowest: float = 0.0
    per_target: dict[str, int] = field(default_factory=dict)


class WireFuzzer:
    """Feeds mutated inputs to every public parser; raises AssertionError on a bad outcome."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        handshake = in_memory_handshake()
        self.datagrams = [
            vectors.CLIENT_INITIAL_V1,
            vectors.CLIENT_INITIAL_V2,
            vectors.SERVER_INITIAL_V1,
            vectors.SERVER_INITIAL_V2,
            vectors.RETRY_V1,
            vectors.RETRY_V2,
            vectors.SHORT_HEADER_CHACHA20,
            bytes.fromhex("80000000000401020304000000000100000002"),
            *handshake,
        ]
        client_hello = handshake[0]
        from qasm.wire import open_initial

        first = open_initial(client_hello, parse_datagram(client_hello, 8)[0])
        self.payloads = [vectors.CLIENT_INITIAL_PAYLOAD, first.payload]
        self.client_hellos = [
            bytes(vectors.CLIENT_INITIAL_PAYLOAD[4 : 4 + 0xF1]),
            first.frames.crypto[0].data,
        ]
        self.mutator = Mutator(self.rng, self.datagrams)
        self.payload_mutator = Mutator(self.rng, self.payloads)
        self.pair = CryptoPair()
        self.pair.setup_initial(FUZZ_DCID, is_client=True, version=QUIC_V1)
        self.summarizer = CaptureSummarizer()
        self.targets: list[tuple[str, int, Callable[[], None]]] = [
            ("datagram", 50, self.fuzz_datagram),
            ("initial_plaintext", 25, self.fuzz_initial_plaintext),
            ("frames", 8, self.fuzz_frames),
            ("client_hello", 7, self.fuzz_client_hello),
            ("capture", 5, self.fuzz_capture),
            ("quic_lb", 5, self.fuzz_quic_lb),
        ]
        self._weights = [weight for _, weight, _ in self.targets]

    def fuzz_datagram(self) -> None:
        data = self.mutator.mutate(self.rng.choice(self.datagrams))
        odcid = self.rng.choice((None, vectors.ORIGINAL_DCID, data[6:14]))
        self._expect(lambda: describe_datagram(data, original_dcid=odcid), data)
        length = self.rng.randrange(21)
        self._expect(lambda: parse_datagram(data, length), data)
        self._expect(lambda: short_header_dcid(data, length), data)
        self._expect(lambda: datagram_dcid(data, length), data)

    def fuzz_initial_plaintext(self) -> None:
        payload = self.payload_mutator.mutate(self.rng.choice(self.payloads))
        packet = protect_client_initial(self.pair, payload, self.rng.randrange(256))
        self._expect(lambda: describe_datagram(packet), packet)

    def fuzz_frames(self) -> None:
        payload = self.payload_mutator.mutate(self.rng.choice(self.payloads))
        self._expect(lambda: parse_frames(payload), payload)

    def fuzz_client_hello(self) -> None:
        message = self.payload_mutator.mutate(self.rng.choice(self.client_hellos))
        self._expect(lambda: parse_client_hello(message), message)

    def fuzz_capture(self) -> None:
        data = self.mutator.mutate(self.rng.choice(self.datagrams))
        ends = [("10.0.0.1", 5000), ("10.0.0.2", 443)]
        self.rng.shuffle(ends)
        self._expect(
            lambda: self.summarizer.summarize(data, src=ends[0], dst=ends[1], time=0.0), data
        )

    def fuzz_quic_lb(self) -> None:
        server_id_length = self.rng.randint(1, 15)
        nonce_length = self.rng.randint(4, 19 - server_id_length)
        key = self.rng.randbytes(16) if self.rng.random() < 0.7 else None
        cid = self.rng.randbytes(self.rng.randint(0, 21))
        config = QuicLbConfig(cid[0] >> 5 if cid and cid[0] >> 5 < 7 else 0,
                              server_id_length, nonce_length, key)  # fmt: skip
        self._expect(lambda: decode_cid(config, cid), cid)

    def _expect(self, call: Callable[[], object], data: bytes) -> None:
        self.report.calls += 1
        start = time.perf_counter()
        try:
            call()
        except WireError:
            self.report.wire_errors += 1
        except Exception as exc:  # noqa: BLE001 - the property under test
            raise AssertionError(
                f"{type(exc).__name__}: {exc} escaped for input {data.hex()}"
            ) from exc
        elapsed = time.perf_counter() - start
        self.report.slowest = max(self.report.slowest, elapsed)
        assert elapsed < MAX_SECONDS_PER_CASE, f"{elapsed:.3f} s for input {data.hex()}"

    def run(self, cases: int) -> FuzzReport:
        self.report = FuzzReport()
        start = time.perf_counter()
        while self.report.cases < cases:
            name, _, target = self.rng.choices(self.targets, weights=self._weights)[0]
            target()
            self.report.cases += 1
            self.report.per_target[name] = self.report.per_target.get(name, 0) + 1
        self.report.seconds = time.perf_counter() - start
        return self.report
