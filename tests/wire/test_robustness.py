"""Malformed input ends in WireError, never another exception, never a hang.

Property tests (hypothesis) over arbitrary and structured input, plus a short run of the
mutation fuzzer; `make fuzz` runs the same fuzzer for a million cases (test_fuzz.py).
"""

from __future__ import annotations

import contextlib

from hypothesis import given, settings
from hypothesis import strategies as st

from qasm.wire import (
    QUIC_V1,
    QUIC_V2,
    CryptoStreamReassembly,
    HeaderForm,
    PacketType,
    SpinBitRttEstimator,
    WireError,
    parse_client_hello,
    parse_datagram,
    parse_frames,
)
from qasm.wire.header import PacketHeader
from qasm.wire.summary import describe_datagram
from tests.wire import vectors
from tests.wire.mutation import WireFuzzer

cids = st.binary(max_size=20)
varint_values = st.integers(0, 2**62 - 1)


def encode_varint(value: int) -> bytes:
    for size, prefix in ((1, 0x00), (2, 0x40), (4, 0x80), (8, 0xC0)):
        if value < 1 << (8 * size - 2):
            return (value | prefix << (8 * size - 8)).to_bytes(size, "big")
    raise ValueError(value)


@given(st.binary(max_size=2048), st.integers(0, 20), st.sampled_from([None, b"", bytes(8)]))
def test_arbitrary_bytes_parse_or_raise_wire_error(data, dcid_length, odcid):
    try:
        headers = parse_datagram(data, dcid_length)
    except WireError:
        return
    # What parses is consistent: packets tile the datagram from offset 0, in order.
    offset = 0
    for header in headers:
        assert header.offset == offset and header.length >= 1
        offset += header.length
    assert offset <= len(data) and not data[offset:].strip(b"\x00")
    with contextlib.suppress(WireError):
        describe_datagram(data, original_dcid=odcid, short_dcid_length=dcid_length)


@given(
    version=st.sampled_from([QUIC_V1, QUIC_V2]),
    dcid=cids,
    scid=cids,
    token=st.binary(max_size=100),
    payload=st.binary(min_size=1, max_size=300),
    trailing=st.binary(max_size=50).filter(lambda t: not t or t[0] & 0x80 == 0),
)
def test_well_formed_initial_headers_round_trip(version, dcid, scid, token, payload, trailing):
    type_bits = 0b00 if version == QUIC_V1 else 0b01  # RFC 9369 §3.2 moved the codepoints
    packet = (
        bytes([0xC0 | type_bits << 4])
        + version.to_bytes(4, "big")
        + bytes([len(dcid)])
        + dcid
        + bytes([len(scid)])
        + scid
        + encode_varint(len(token))
        + token
        + encode_varint(len(payload))
        + payload
    )
    datagram = packet + (bytes([0x40]) + trailing if trailing else b"")
    headers = parse_datagram(datagram, 0)
    first = headers[0]
    assert (first.packet_type, first.version) == (PacketType.INITIAL, version)
    assert (first.dcid, first.scid, first.token) == (dcid, scid, token)
    assert first.length == len(packet) and first.pn_offset == len(packet) - len(payload)
    if trailing:
        assert headers[1].form is HeaderForm.SHORT and headers[1].offset == len(packet)


@given(st.binary(max_size=1500))
def test_arbitrary_payloads_walk_or_raise_wire_error(payload):
    with contextlib.suppress(WireError):
        parsed = parse_frames(payload)
        assert all(len(frame.data) <= len(payload) for frame in parsed.crypto)


@given(st.binary(max_size=600))
def test_arbitrary_client_hellos_parse_or_raise_wire_error(message):
    with contextlib.suppress(WireError):
        parse_client_hello(message)
    # With a correct handshake header the body is what gets exercised.
    framed = bytes([1]) + len(message).to_bytes(3, "big") + message
    with contextlib.suppress(WireError):
        parse_client_hello(framed)


@given(st.lists(st.tuples(st.integers(0, 40_000), st.binary(max_size=3000)), max_size=60))
def test_reassembly_stays_bounded(fragments):
    stream = CryptoStreamReassembly(max_bytes=16_384, max_fragments=32)
    for offset, data in fragments:
        with contextlib.suppress(WireError):
            stream.add(offset, data)
        assert stream.contiguous_length <= 16_384
        assert stream._pending_bytes <= 16_384
        assert len(stream._pending or ()) <= 32


@given(st.lists(st.tuples(st.floats(0, 10, allow_nan=False), st.booleans(), st.booleans())))
def test_spin_estimator_never_raises_and_samples_are_positive(events):
    estimator = SpinBitRttEstimator(initial_rtt=0.05)
    for now, spin, new_cid in events:
        header = PacketHeader(
            form=HeaderForm.SHORT,
            packet_type=PacketType.ONE_RTT,
            version=None,
            dcid=b"\x02" if new_cid else b"\x01",
            scid=b"",
            token=b"",
            first_byte=0x40 | (0x20 if spin else 0),
            offset=0,
            length=30,
        )
        sample = estimator.observe(header, now)
        assert sample is None or sample >= 0


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 2**32 - 1))
def test_mutated_real_packets_short_fuzz(seed):
    # 10 seeds x 5,000 mutations of real packets (about 2 s); the million-case run is
    # `make fuzz`.
    report = WireFuzzer(seed).run(5_000)
    assert report.cases >= 5_000


def test_rfc_vectors_survive_every_truncation():
    for packet in (vectors.CLIENT_INITIAL_V1, vectors.SERVER_INITIAL_V2, vectors.RETRY_V1):
        for cut in range(len(packet)):
            with contextlib.suppress(WireError):
                describe_datagram(packet[:cut], original_dcid=vectors.ORIGINAL_DCID)
