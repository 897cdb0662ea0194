"""The firewall's admission rule for a new connection (RFC 9312 §3.1.2, §4.7).

A new client→service 5-tuple is admitted only when its first datagram starts with a QUIC
client Initial of a version the middlebox knows, in a datagram of at least 1200 bytes
(RFC 9000 §14.1). RFC 9312 §3.1.2 warns that first-byte bits may change meaning across
versions, so the version is read first and the packet type only interpreted for known ones.
The rest of the firewall (service→client only on admitted paths, drop everything else) is
in the pipeline, because which paths count as admitted depends on the variant.
"""

from __future__ import annotations

from qasm.wire.errors import WireError
from qasm.wire.header import HeaderForm, PacketType, parse_datagram

# RFC 9000 §14.1: a client MUST expand datagrams carrying Initial packets to >= 1200 bytes.
MIN_INITIAL_DATAGRAM = 1200


def client_initial_problem(payload: bytes) -> str | None:
    """None if `payload` starts with a QUIC v1/v2 client Initial, else why it does not."""
    try:
        first = parse_datagram(payload, short_dcid_length=0)[0]
    except WireError as exc:
        return f"not a QUIC packet ({exc})"
    if first.form is HeaderForm.SHORT:
        return "short header (not a connection's first packet)"
    if first.packet_type is None:
        return f"long header of unknown version 0x{first.version:08x}"
    if first.packet_type is not PacketType.INITIAL:
        return f"long header type {first.packet_type}, not Initial"
    if len(payload) < MIN_INITIAL_DATAGRAM:
        return f"Initial in a {len(payload)}-byte datagram, below {MIN_INITIAL_DATAGRAM}"
    return None
