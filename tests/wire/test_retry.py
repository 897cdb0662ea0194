"""Retry integrity against RFC 9001 §A.4 and RFC 9369 §A.4."""

from __future__ import annotations

import pytest

from qasm.wire import WireError, parse_datagram, verify_retry_integrity
from tests.wire import vectors


@pytest.mark.parametrize("packet", [vectors.RETRY_V1, vectors.RETRY_V2])
def test_rfc_retry_is_valid_for_the_original_dcid(packet):
    (header,) = parse_datagram(packet, 8)
    assert verify_retry_integrity(packet, header, vectors.ORIGINAL_DCID)


@pytest.mark.parametrize("packet", [vectors.RETRY_V1, vectors.RETRY_V2])
def test_rfc_retry_is_invalid_for_another_dcid(packet):
    (header,) = parse_datagram(packet, 8)
    assert not verify_retry_integrity(packet, header, bytes(8))


def test_a_changed_token_invalidates_the_tag():
    damaged = bytearray(vectors.RETRY_V1)
    damaged[17] ^= 0x20  # inside "token"
    (header,) = parse_datagram(bytes(damaged), 8)
    assert not verify_retry_integrity(bytes(damaged), header, vectors.ORIGINAL_DCID)


def test_v1_retry_bytes_under_the_v2_version_do_not_verify():
    # Same layout, v2 version number (type bits 00 are Retry in v2): wrong key and nonce.
    swapped = bytes([0xCF]) + vectors.RETRY_V2[1:5] + vectors.RETRY_V1[5:]
    (header,) = parse_datagram(swapped, 8)
    assert not verify_retry_integrity(swapped, header, vectors.ORIGINAL_DCID)


def test_verify_rejects_other_packet_types_and_long_dcids():
    (initial,) = parse_datagram(vectors.CLIENT_INITIAL_V1, 8)
    with pytest.raises(WireError, match="not a Retry"):
        verify_retry_integrity(vectors.CLIENT_INITIAL_V1, initial, vectors.ORIGINAL_DCID)
    (retry,) = parse_datagram(vectors.RETRY_V1, 8)
    with pytest.raises(WireError, match="exceeds 20"):
        verify_retry_integrity(vectors.RETRY_V1, retry, bytes(21))
