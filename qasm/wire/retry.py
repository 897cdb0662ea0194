"""Retry integrity (RFC 9001 §5.8, RFC 9369 §3.3.3).

A Retry carries an AES-128-GCM tag over a pseudo-packet that starts with the client's
original DCID, which the Retry itself does not contain: the verifier must have seen (or be
told) the DCID of the Initial that the Retry answers. The tag computation is aioquic's
`get_retry_integrity_tag` (fixed, public key and nonce per version).
"""

from __future__ import annotations

import hmac

from aioquic.quic.packet import get_retry_integrity_tag

from qasm.wire.errors import WireError
from qasm.wire.header import MAX_CID_LENGTH_V1, RETRY_INTEGRITY_TAG_LENGTH, PacketHeader, PacketType


def verify_retry_integrity(datagram: bytes, header: PacketHeader, original_dcid: bytes) -> bool:
    """True when the Retry's integrity tag matches `original_dcid` (RFC 9001 §5.8)."""
    if header.packet_type is not PacketType.RETRY or header.version is None:
        raise WireError(f"not a Retry packet ({header.packet_type})", field="packet type")
    if len(original_dcid) > MAX_CID_LENGTH_V1:
        raise WireError(f"{len(original_dcid)} bytes exceeds 20", field="original DCID")
    packet = header.packet_bytes(datagram)
    expected = get_retry_integrity_tag(
        packet[:-RETRY_INTEGRITY_TAG_LENGTH], bytes(original_dcid), version=header.version
    )
    return hmac.compare_digest(expected, header.integrity_tag)
