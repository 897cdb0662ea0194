"""QUIC packet headers as an on-path observer sees them (no decryption).

`parse_datagram` splits a UDP payload into its coalesced packets (RFC 9000 §12.2) and returns
one `PacketHeader` per packet. It follows the version-independent invariants (RFC 8999) for
every long header and the version-specific layout (RFC 9000 §17.2, RFC 9369 §3.2) only for the
versions it knows, so unknown versions and Version Negotiation are *reported*, never rejected
and never decrypted. `short_header_dcid` is the per-packet fast path for the controller.

Why not `aioquic.quic.packet.pull_quic_header`: it parses every unknown version as if it were
QUIC v1 (token, Length, ...), rejects a clear fixed bit outright (RFC 9287 lets peers grease
it) and caps CIDs at 20 bytes even where RFC 8999 allows 255. Fine for an endpoint, wrong for
an observer. The buffer underneath is still aioquic's.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from aioquic.buffer import Buffer, BufferReadError

from qasm.wire.errors import WireError

QUIC_V1 = 0x00000001
QUIC_V2 = 0x6B3343CF  # RFC 9369 §3.1
VERSION_NEGOTIATION = 0x00000000  # RFC 9000 §17.2.1: the version field is zero

# RFC 9000 §17.2: "In QUIC version 1, this value MUST NOT exceed 20 bytes"; RFC 8999 §5.1
# allows up to 255 for other versions, so the cap applies only to versions we know.
MAX_CID_LENGTH_V1 = 20
RETRY_INTEGRITY_TAG_LENGTH = 16  # RFC 9001 §5.8

LONG_HEADER_BIT = 0x80  # RFC 8999 §5.1: the one bit every version shares
FIXED_BIT = 0x40  # RFC 9000 §17.2/§17.3; may be greased (RFC 9287), so only reported
SPIN_BIT = 0x20  # RFC 9000 §17.3.1: not under header protection, readable on path


class HeaderForm(enum.StrEnum):
    LONG = "long"
    SHORT = "short"


class PacketType(enum.StrEnum):
    INITIAL = "initial"
    ZERO_RTT = "0rtt"
    HANDSHAKE = "handshake"
    RETRY = "retry"
    VERSION_NEGOTIATION = "version_negotiation"
    ONE_RTT = "1rtt"


# The two Long Packet Type bits (0x30) per version: RFC 9000 §17.2 table 5, RFC 9369 §3.2.
LONG_PACKET_TYPES: dict[int, tuple[PacketType, PacketType, PacketType, PacketType]] = {
    QUIC_V1: (PacketType.INITIAL, PacketType.ZERO_RTT, PacketType.HANDSHAKE, PacketType.RETRY),
    QUIC_V2: (PacketType.RETRY, PacketType.INITIAL, PacketType.ZERO_RTT, PacketType.HANDSHAKE),
}
KNOWN_VERSIONS = frozenset(LONG_PACKET_TYPES)


# Not frozen: parsed once per packet-in (a frozen __init__ costs 3-4x; see
# qasm/controller/messages.py). Nothing changes one once parsed.
@dataclass(slots=True)
class PacketHeader:
    """One QUIC packet's cleartext header, located inside its datagram.

    `packet_type` is None for a long header of a version this library does not know: only
    the invariant fields (version, CIDs) mean anything there. `pn_offset` is where header
    protection starts, relative to the packet (Initial, 0-RTT, Handshake and 1-RTT only).
    """

    form: HeaderForm
    packet_type: PacketType | None
    version: int | None
    dcid: bytes
    scid: bytes
    token: bytes
    first_byte: int
    offset: int
    length: int
    pn_offset: int | None = None
    supported_versions: tuple[int, ...] = ()
    integrity_tag: bytes = b""

    @property
    def spin_bit(self) -> bool | None:
        """The latency spin bit of a short header (RFC 9000 §17.3.1), else None."""
        if self.form is HeaderForm.SHORT:
            return bool(self.first_byte & SPIN_BIT)
        return None

    @property
    def fixed_bit(self) -> bool:
        return bool(self.first_byte & FIXED_BIT)

    def packet_bytes(self, datagram: bytes) -> bytes:
        """This packet's bytes, cut out of the datagram it was parsed from."""
        return datagram[self.offset : self.offset + self.length]


def short_header_dcid(datagram: bytes, dcid_length: int) -> bytes:
    """DCID of a short-header packet whose CID length the caller knows (RFC 9000 §17.3).

    The per-packet fast path: one bounds check, one form check, one slice. Raises WireError
    for a long header or a datagram too short to hold the DCID.
    """
    if len(datagram) > dcid_length and not datagram[0] & LONG_HEADER_BIT:
        return datagram[1 : 1 + dcid_length]
    raise _short_dcid_error(datagram, dcid_length)


def _short_dcid_error(datagram: bytes, dcid_length: int) -> WireError:
    if not datagram:
        return WireError("empty datagram", field="first byte", offset=0)
    if datagram[0] & LONG_HEADER_BIT:
        return WireError("long header, not a short header", field="header form", offset=0)
    return WireError(
        f"{len(datagram)} bytes cannot hold a {dcid_length}-byte DCID after the first byte",
        field="destination connection id",
        offset=1,
    )


def datagram_dcid(datagram: bytes, short_dcid_length: int) -> bytes:
    """DCID of the first packet of a datagram, long or short header, without full parsing.

    RFC 9000 §12.2: every packet coalesced into one datagram must carry the same DCID, so the
    first one identifies the connection.
    """
    if datagram and datagram[0] & LONG_HEADER_BIT:
        if len(datagram) < 6:
            raise WireError("truncated long header", field="destination connection id length")
        dcid_length = datagram[5]
        if len(datagram) < 6 + dcid_length:
            raise WireError(
                f"needs {dcid_length} bytes, {len(datagram) - 6} remain",
                field="destination connection id",
                offset=6,
            )
        return datagram[6 : 6 + dcid_length]
    return short_header_dcid(datagram, short_dcid_length)


def parse_datagram(datagram: bytes, short_dcid_length: int) -> list[PacketHeader]:
    """Split a UDP payload into its QUIC packets and parse each header (RFC 9000 §12.2).

    `short_dcid_length` is the DCID length the receiver of a short-header packet chose; an
    observer learns it from the handshake (RFC 9312 §2.1). Long headers carrying a Length
    field delimit the next packet; Retry, Version Negotiation, unknown versions and short
    headers extend to the end of the datagram. A tail of zero bytes after at least one packet
    is accepted as padding (some stacks pad datagrams that way instead of with PADDING frames).
    """
    if not 0 <= short_dcid_length <= MAX_CID_LENGTH_V1:
        raise WireError(
            f"must be 0..{MAX_CID_LENGTH_V1}, got {short_dcid_length}", field="short DCID length"
        )
    end = len(datagram)
    if end == 0:
        raise WireError("empty datagram", field="first byte", offset=0)
    packets: list[PacketHeader] = []
    buf: Buffer | None = None
    offset = 0
    while offset < end:
        first_byte = datagram[offset]
        if packets and first_byte == 0 and datagram.endswith(bytes(end - offset)):
            break
        if first_byte & LONG_HEADER_BIT:
            if buf is None:
                buf = Buffer(data=datagram)
            header = _parse_long_header(buf, offset, end)
        else:
            header = _parse_short_header(datagram, offset, short_dcid_length)
        packets.append(header)
        offset += header.length
    return packets


def _parse_short_header(datagram: bytes, offset: int, dcid_length: int) -> PacketHeader:
    # RFC 9000 §17.3: a short header runs to the end of the datagram; it has no Length.
    end = len(datagram)
    if end - offset < 1 + dcid_length:
        raise WireError(
            f"needs {dcid_length} bytes, {end - offset - 1} remain",
            field="destination connection id",
            offset=offset + 1,
        )
    return PacketHeader(
        form=HeaderForm.SHORT,
        packet_type=PacketType.ONE_RTT,
        version=None,
        dcid=datagram[offset + 1 : offset + 1 + dcid_length],
        scid=b"",
        token=b"",
        first_byte=datagram[offset],
        offset=offset,
        length=end - offset,
        pn_offset=1 + dcid_length,
    )


def _pull_cid(buf: Buffer, which: str, bounded: bool) -> bytes:
    """A length-prefixed connection ID; `bounded` (known versions) enforces RFC 9000's limit.
    The field names are formatted only for an error: two CIDs a long header, and every
    client Initial is parsed (four f-strings were ~5% of parsing one)."""
    try:
        length = buf.pull_uint8()
    except BufferReadError:
        raise WireError(
            "truncated", field=f"{which} connection id length", offset=buf.tell()
        ) from None
    if bounded and length > MAX_CID_LENGTH_V1:
        raise WireError(
            f"{length} exceeds {MAX_CID_LENGTH_V1} (RFC 9000 §17.2)",
            field=f"{which} connection id length",
            offset=buf.tell() - 1,
        )
    try:
        return buf.pull_bytes(length)
    except BufferReadError:
        raise WireError("truncated", field=f"{which} connection id", offset=buf.tell()) from None


def _parse_long_header(buf: Buffer, offset: int, end: int) -> PacketHeader:
    field = "first byte"
    try:
        buf.seek(offset)
        first_byte = buf.pull_uint8()
        field = "version"
        version = buf.pull_uint32()
        known = version in KNOWN_VERSIONS
    except BufferReadError:
        raise WireError("truncated", field=field, offset=buf.tell()) from None
    dcid = _pull_cid(buf, "destination", bounded=known)
    scid = _pull_cid(buf, "source", bounded=known)

    if version == VERSION_NEGOTIATION:
        return _version_negotiation(buf, first_byte, dcid, scid, offset, end)
    if not known:
        # RFC 8999 §5.1: beyond the CIDs, a long header is version-specific; report what the
        # invariants define and treat the rest of the datagram as this packet.
        return PacketHeader(
            form=HeaderForm.LONG,
            packet_type=None,
            version=version,
            dcid=dcid,
            scid=scid,
            token=b"",
            first_byte=first_byte,
            offset=offset,
            length=end - offset,
        )

    packet_type = LONG_PACKET_TYPES[version][(first_byte & 0x30) >> 4]
    if packet_type is PacketType.RETRY:
        return _retry(buf, first_byte, version, dcid, scid, offset, end)

    token = b""
    try:
        if packet_type is PacketType.INITIAL:
            # RFC 9000 §17.2.2: Token Length (i), Token (..)
            field = "token length"
            token_length = buf.pull_uint_var()
            if token_length > end - buf.tell():
                raise WireError(
                    f"says {token_length} bytes, {end - buf.tell()} remain",
                    field=field,
                    offset=buf.tell(),
                )
            field = "token"
            token = buf.pull_bytes(token_length)
        field = "length"
        length_at = buf.tell()
        payload_length = buf.pull_uint_var()
    except BufferReadError:
        raise WireError("truncated", field=field, offset=buf.tell()) from None
    pn_offset = buf.tell() - offset
    if payload_length > end - buf.tell():
        raise WireError(
            f"says {payload_length} bytes, {end - buf.tell()} remain in the datagram",
            field="length",
            offset=length_at,
        )
    if payload_length < 1:
        # RFC 9000 §17.2: Length covers the Packet Number (8..32) and the payload.
        raise WireError("0 cannot hold a packet number", field="length", offset=length_at)
    return PacketHeader(
        form=HeaderForm.LONG,
        packet_type=packet_type,
        version=version,
        dcid=dcid,
        scid=scid,
        token=token,
        first_byte=first_byte,
        offset=offset,
        length=pn_offset + payload_length,
        pn_offset=pn_offset,
    )


def _version_negotiation(
    buf: Buffer, first_byte: int, dcid: bytes, scid: bytes, offset: int, end: int
) -> PacketHeader:
    # RFC 8999 §6 / RFC 9000 §17.2.1: a list of 32-bit versions fills the rest of the datagram.
    start = buf.tell()
    if (end - start) % 4:
        raise WireError(
            f"{end - start} bytes is not a whole number of 32-bit versions",
            field="supported versions",
            offset=start,
        )
    versions = tuple(buf.pull_uint32() for _ in range((end - start) // 4))
    return PacketHeader(
        form=HeaderForm.LONG,
        packet_type=PacketType.VERSION_NEGOTIATION,
        version=VERSION_NEGOTIATION,
        dcid=dcid,
        scid=scid,
        token=b"",
        first_byte=first_byte,
        offset=offset,
        length=end - offset,
        supported_versions=versions,
    )


def _retry(
    buf: Buffer, first_byte: int, version: int, dcid: bytes, scid: bytes, offset: int, end: int
) -> PacketHeader:
    # RFC 9000 §17.2.5: Retry Token (..), Retry Integrity Tag (128), to the end of the datagram.
    start = buf.tell()
    if end - start < RETRY_INTEGRITY_TAG_LENGTH:
        raise WireError(
            f"needs {RETRY_INTEGRITY_TAG_LENGTH} bytes, {end - start} remain",
            field="retry integrity tag",
            offset=start,
        )
    token = buf.pull_bytes(end - start - RETRY_INTEGRITY_TAG_LENGTH)
    tag = buf.pull_bytes(RETRY_INTEGRITY_TAG_LENGTH)
    return PacketHeader(
        form=HeaderForm.LONG,
        packet_type=PacketType.RETRY,
        version=version,
        dcid=dcid,
        scid=scid,
        token=token,
        first_byte=first_byte,
        offset=offset,
        length=end - offset,
        integrity_tag=tag,
    )
