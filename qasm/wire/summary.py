"""JSON-ready descriptions of datagrams: the stable surface of `qasm wire decode` and `pcap`.

Keys of one packet's description (lowercase hex for byte strings):
- always: `form` ("long"/"short"), `type` ("initial", "0rtt", "handshake", "retry",
  "version_negotiation", "1rtt", or null for a long header of an unknown version), `version`
  (integer, null for short headers), `dcid`, `scid`, `token`, `length` (bytes in datagram);
- Initial, 0-RTT, Handshake, 1-RTT: `decrypted` (only Initials can be, by an observer);
- decrypted Initial: `sender` ("client"/"server"), `packet_number`, `frames` (type names);
- client Initial: `sni`, `alpn` (null until the ClientHello is complete) and
  `client_hello` ("complete", "partial" or "none");
- Retry: `retry_integrity` ("valid"/"invalid", null without the original DCID);
- Version Negotiation: `supported_versions`; short header: `spin`.
"""

from __future__ import annotations

from typing import Any

from qasm.wire.clienthello import ClientHelloAssembler
from qasm.wire.header import PacketHeader, PacketType, parse_datagram
from qasm.wire.initial import DecryptedInitial, Sender, open_initial
from qasm.wire.retry import verify_retry_integrity

# aioquic's default connection_id_length, and a common choice; only used when nobody says.
DEFAULT_SHORT_DCID_LENGTH = 8

_ENCRYPTED_TYPES = (PacketType.ZERO_RTT, PacketType.HANDSHAKE, PacketType.ONE_RTT)


def describe_header(header: PacketHeader) -> dict[str, Any]:
    description: dict[str, Any] = {
        "form": str(header.form),
        "type": None if header.packet_type is None else str(header.packet_type),
        "version": header.version,
        "dcid": header.dcid.hex(),
        "scid": header.scid.hex(),
        "token": header.token.hex(),
        "length": header.length,
    }
    if header.packet_type is PacketType.VERSION_NEGOTIATION:
        description["supported_versions"] = list(header.supported_versions)
    elif header.spin_bit is not None:
        description["spin"] = header.spin_bit
    if header.packet_type in _ENCRYPTED_TYPES:
        description["decrypted"] = False
    return description


def describe_initial(
    decrypted: DecryptedInitial, assembler: ClientHelloAssembler | None = None
) -> dict[str, Any]:
    """Fields a decrypted Initial adds; client Initials also feed `assembler`."""
    description: dict[str, Any] = {
        "decrypted": True,
        "sender": str(decrypted.sender),
        "packet_number": decrypted.packet_number,
        "frames": list(decrypted.frames.frame_types),
    }
    if decrypted.sender is Sender.CLIENT:
        assembler = assembler if assembler is not None else ClientHelloAssembler()
        hello = assembler.add_crypto(decrypted.frames.crypto)
        if hello is not None:
            state = "complete"
        elif decrypted.frames.crypto:
            state = "partial"
        else:
            state = "none"
        description["sni"] = hello.sni if hello else None
        description["alpn"] = list(hello.alpn) if hello else None
        description["client_hello"] = state
    return description


def describe_retry(
    datagram: bytes, header: PacketHeader, original_dcid: bytes | None
) -> dict[str, Any]:
    if original_dcid is None:
        return {"retry_integrity": None}
    valid = verify_retry_integrity(datagram, header, original_dcid)
    return {"retry_integrity": "valid" if valid else "invalid"}


def describe_datagram(
    datagram: bytes,
    *,
    original_dcid: bytes | None = None,
    short_dcid_length: int = DEFAULT_SHORT_DCID_LENGTH,
) -> list[dict[str, Any]]:
    """Describe every packet of one datagram, decrypting Initials and checking Retries.

    Strict: any malformed packet, and an Initial that authenticates with none of the keys
    available (its own DCID as a client Initial, `original_dcid` as a server Initial), raises
    WireError. The ClientHello is looked for within this datagram only.
    """
    described = []
    assembler = ClientHelloAssembler()
    for header in parse_datagram(datagram, short_dcid_length):
        description = describe_header(header)
        if header.packet_type is PacketType.INITIAL:
            decrypted = open_initial(datagram, header, original_dcid=original_dcid)
            description.update(describe_initial(decrypted, assembler))
        elif header.packet_type is PacketType.RETRY:
            description.update(describe_retry(datagram, header, original_dcid))
        described.append(description)
    return described
