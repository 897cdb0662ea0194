"""Cleartext headers: forms, versions, coalescing, the DCID fast path and bad input."""

from __future__ import annotations

import pytest

from qasm.wire import (
    QUIC_V1,
    QUIC_V2,
    HeaderForm,
    PacketType,
    WireError,
    datagram_dcid,
    parse_datagram,
    short_header_dcid,
)
from tests.wire import vectors


def long_header(
    first_byte: int, version: int, dcid: bytes, scid: bytes, rest: bytes = b""
) -> bytes:
    return (
        bytes([first_byte])
        + version.to_bytes(4, "big")
        + bytes([len(dcid)])
        + dcid
        + bytes([len(scid)])
        + scid
        + rest
    )


def test_rfc_client_initial_header_fields():
    (header,) = parse_datagram(vectors.CLIENT_INITIAL_V1, 8)
    assert header.form is HeaderForm.LONG
    assert header.packet_type is PacketType.INITIAL
    assert header.version == QUIC_V1
    assert header.dcid == vectors.ORIGINAL_DCID and header.scid == b"" and header.token == b""
    # first byte, version, DCID len + 8, SCID len, token len, 2-byte Length = 18
    assert header.pn_offset == 18
    assert header.length == 1200


def test_v2_packet_types_use_the_rfc_9369_codepoints():
    (initial,) = parse_datagram(vectors.CLIENT_INITIAL_V2, 8)
    (retry,) = parse_datagram(vectors.RETRY_V2, 8)
    assert (initial.version, initial.packet_type) == (QUIC_V2, PacketType.INITIAL)
    assert (retry.version, retry.packet_type) == (QUIC_V2, PacketType.RETRY)


def test_retry_token_and_tag():
    (retry,) = parse_datagram(vectors.RETRY_V1, 8)
    assert retry.token == b"token"
    assert retry.integrity_tag.hex() == "04a265ba2eff4d829058fb3f0f2496ba"
    assert retry.pn_offset is None


def test_version_negotiation_is_reported_with_its_versions():
    packet = long_header(0x80 | 0x2A, 0, b"\x01\x02", b"\x03") + bytes.fromhex(
        "000000016b3343cf1a2a3a4a"
    )
    (header,) = parse_datagram(packet, 8)
    assert header.packet_type is PacketType.VERSION_NEGOTIATION
    assert header.version == 0
    assert header.supported_versions == (QUIC_V1, QUIC_V2, 0x1A2A3A4A)


def test_version_negotiation_with_a_partial_version_is_an_error():
    packet = long_header(0x80, 0, b"\x01", b"") + bytes(6)
    with pytest.raises(WireError, match="32-bit versions"):
        parse_datagram(packet, 8)


def test_unknown_version_is_reported_not_decrypted_and_may_have_long_cids():
    # RFC 8999 allows CIDs up to 255 bytes outside v1; the rest is version-specific.
    dcid = bytes(range(40))
    packet = long_header(0xC0, 0xFF00001D, dcid, b"\xaa", b"whatever follows")
    (header,) = parse_datagram(packet, 8)
    assert header.packet_type is None
    assert header.version == 0xFF00001D
    assert header.dcid == dcid and header.scid == b"\xaa"
    assert header.length == len(packet)


def test_v1_cid_longer_than_20_bytes_is_an_error():
    packet = long_header(0xC0, QUIC_V1, bytes(21), b"", bytes(30))
    with pytest.raises(WireError) as caught:
        parse_datagram(packet, 8)
    assert caught.value.field == "destination connection id length"
    assert caught.value.offset == 5


def test_coalesced_initial_handshake_and_short_header():
    # RFC 9000 §12.2: long headers with Length, then one short header to the end.
    dcid, scid = bytes.fromhex("0102030405060708"), bytes.fromhex("a1a2a3a4")
    initial = long_header(0xC0, QUIC_V1, dcid, scid, b"\x00" + b"\x15" + bytes(21))
    handshake = long_header(0xE0, QUIC_V1, dcid, scid, b"\x40\x20" + bytes(32))
    short = bytes([0x40 | 0x20]) + dcid + bytes(25)
    headers = parse_datagram(initial + handshake + short, len(dcid))
    assert [h.packet_type for h in headers] == [
        PacketType.INITIAL,
        PacketType.HANDSHAKE,
        PacketType.ONE_RTT,
    ]
    assert [h.offset for h in headers] == [0, len(initial), len(initial) + len(handshake)]
    assert sum(h.length for h in headers) == len(initial + handshake + short)
    assert headers[2].dcid == dcid and headers[2].spin_bit is True


def test_zero_padding_after_the_last_packet_is_not_a_packet():
    dcid = bytes(8)
    initial = long_header(0xC0, QUIC_V1, dcid, b"", b"\x00\x15" + bytes(21))
    headers = parse_datagram(initial + bytes(100), 8)
    assert len(headers) == 1


def test_zero_bytes_followed_by_others_are_a_packet_not_padding():
    dcid = bytes(8)
    initial = long_header(0xC0, QUIC_V1, dcid, b"", b"\x00\x15" + bytes(21))
    headers = parse_datagram(initial + bytes(100) + b"\x01", 8)
    assert [h.offset for h in headers] == [0, len(initial)]
    assert headers[1].form is HeaderForm.SHORT and headers[1].length == 101


@pytest.mark.parametrize(
    ("packet", "field"),
    [
        (b"", "first byte"),
        (b"\xc0\x00\x00", "version"),
        (b"\xc0\x00\x00\x00\x01", "destination connection id length"),
        (b"\xc0\x00\x00\x00\x01\x08\x01\x02", "destination connection id"),
        (b"\xc0\x00\x00\x00\x01\x00", "source connection id length"),
        (b"\xc0\x00\x00\x00\x01\x00\x00", "token length"),
        # token length says 50 bytes, 1 remains
        (b"\xc0\x00\x00\x00\x01\x00\x00\x32\x00", "token length"),
        # a 2-byte varint cut after its first byte
        (b"\xc0\x00\x00\x00\x01\x00\x00\x00\x40", "length"),
        # Length says 300 bytes, 3 remain
        (b"\xc0\x00\x00\x00\x01\x00\x00\x00\x41\x2c\x00\x00\x00", "length"),
        (b"\xc0\x00\x00\x00\x01\x00\x00\x00\x00", "length"),  # Length 0: no packet number
        (b"\xf0\x00\x00\x00\x01\x00\x00" + bytes(15), "retry integrity tag"),
        (b"\x40\x01\x02", "destination connection id"),  # short header, 8-byte DCID
    ],
)
def test_malformed_headers_name_the_field(packet, field):
    with pytest.raises(WireError) as caught:
        parse_datagram(packet, 8)
    assert caught.value.field == field
    assert field in str(caught.value)


def test_lying_length_in_a_later_coalesced_packet_is_an_error():
    first = long_header(0xC0, QUIC_V1, bytes(8), b"", b"\x00\x15" + bytes(21))
    second = long_header(0xE0, QUIC_V1, bytes(8), b"", b"\x7f\xff" + bytes(10))
    with pytest.raises(WireError) as caught:
        parse_datagram(first + second, 8)
    assert caught.value.offset == len(first) + 15


def test_short_dcid_length_must_be_a_v1_cid_length():
    with pytest.raises(WireError, match="short DCID length"):
        parse_datagram(b"\x40" + bytes(30), 21)


def test_short_header_dcid_fast_path():
    packet = bytes([0x41]) + bytes.fromhex("b01fd24a586a9cf3") + bytes(30)
    assert short_header_dcid(packet, 8) == bytes.fromhex("b01fd24a586a9cf3")
    assert short_header_dcid(vectors.SHORT_HEADER_CHACHA20, 0) == b""


@pytest.mark.parametrize(
    ("packet", "field"),
    [
        (b"", "first byte"),
        (vectors.CLIENT_INITIAL_V1, "header form"),
        (b"\x40\x01", "destination connection id"),
    ],
)
def test_short_header_dcid_errors(packet, field):
    with pytest.raises(WireError) as caught:
        short_header_dcid(packet, 8)
    assert caught.value.field == field


def test_datagram_dcid_reads_either_form():
    assert datagram_dcid(vectors.CLIENT_INITIAL_V1, 4) == vectors.ORIGINAL_DCID
    assert datagram_dcid(b"\x40abcdxyz", 4) == b"abcd"
    with pytest.raises(WireError):
        datagram_dcid(b"\xc0\x00\x00\x00\x01\x08\x01", 4)


def test_a_64_kib_blob_is_handled():
    # Length is a 4-byte varint 0x3fbfbfbf: far more than the 64 KiB that follow.
    blob = bytes([0xC0]) + QUIC_V1.to_bytes(4, "big") + b"\x00\x00\x00" + b"\xbf" * 65_000
    with pytest.raises(WireError, match="says 1069531071 bytes"):
        parse_datagram(blob, 8)
    (short,) = parse_datagram(b"\x40" * 65_536, 8)
    assert short.length == 65_536
