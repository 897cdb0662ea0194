"""Initial packet protection as an observer can undo it (RFC 9001 §5.2–§5.4, RFC 9369 §3.3).

Initial keys derive from public data only: a version-specific salt and the Destination
Connection ID of the client's first Initial. So an on-path observer can remove header
protection and decrypt both the client's Initials (keys from their own DCID) and the server's
(keys from the client's DCID, which the observer must remember: RFC 9312 §3.4.1).

The key schedule, AEAD and header protection are aioquic's (`hkdf_extract`,
`hkdf_expand_label`, `CryptoContext`); what this module adds is the observer's view (one
direction at a time, only Initial packets, every failure a WireError) and a small cache so the
several Initials of one handshake derive keys once.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass

from aioquic.quic.crypto import (
    INITIAL_CIPHER_SUITE,
    INITIAL_SALT_VERSION_1,
    INITIAL_SALT_VERSION_2,
    CryptoContext,
    CryptoError,
)
from aioquic.tls import cipher_suite_hash, hkdf_expand_label, hkdf_extract

from qasm.wire.errors import WireError
from qasm.wire.frames import PayloadFrames, parse_frames
from qasm.wire.header import (
    MAX_CID_LENGTH_V1,
    QUIC_V1,
    QUIC_V2,
    PacketHeader,
    PacketType,
)

# RFC 9001 §5.2 (v1) and RFC 9369 §3.3.1 (v2).
INITIAL_SALTS = {QUIC_V1: INITIAL_SALT_VERSION_1, QUIC_V2: INITIAL_SALT_VERSION_2}
_HASH = cipher_suite_hash(INITIAL_CIPHER_SUITE)

# Derived contexts are reused across the Initials of one handshake (several per direction);
# 1024 entries of two small cipher objects each bound the memory to well under a megabyte.
_KEY_CACHE_SIZE = 1024


class Sender(enum.StrEnum):
    CLIENT = "client"
    SERVER = "server"


@dataclass(frozen=True, slots=True)
class DecryptedInitial:
    """A decrypted Initial packet: who sent it, the DCID its keys came from, its packet
    number and its frames."""

    header: PacketHeader
    sender: Sender
    key_dcid: bytes
    packet_number: int
    payload: bytes
    frames: PayloadFrames


def initial_secret(key_dcid: bytes, version: int, sender: Sender) -> bytes:
    """client_initial_secret / server_initial_secret of RFC 9001 §5.2."""
    salt = INITIAL_SALTS.get(version)
    if salt is None:
        raise WireError(f"no Initial salt for version 0x{version:08x}", field="version")
    if len(key_dcid) > MAX_CID_LENGTH_V1:
        raise WireError(f"{len(key_dcid)} bytes exceeds 20", field="original DCID")
    common = hkdf_extract(_HASH, salt, key_dcid)
    label = b"client in" if sender is Sender.CLIENT else b"server in"
    return hkdf_expand_label(_HASH, common, label, b"", _HASH.digest_size)


@functools.lru_cache(maxsize=_KEY_CACHE_SIZE)
def _receive_context(key_dcid: bytes, version: int, sender: Sender) -> CryptoContext:
    # Safe to share: for long headers CryptoContext.decrypt_packet only reads its keys (key
    # phase, the one mutable part, applies to short headers).
    context = CryptoContext()
    context.setup(
        cipher_suite=INITIAL_CIPHER_SUITE,
        secret=initial_secret(key_dcid, version, sender),
        version=version,
    )
    return context


def decrypt_initial(
    datagram: bytes, header: PacketHeader, *, sender: Sender, key_dcid: bytes
) -> DecryptedInitial:
    """Remove header protection and decrypt one Initial packet of `datagram`.

    `key_dcid` is the DCID the client put in its Initial: the packet's own DCID for a
    client Initial, the client's (original, or post-Retry) DCID for a server Initial.
    Raises WireError when the packet is not an Initial of a known version, is too short to
    sample, or does not authenticate (wrong keys or corrupted).
    """
    if header.packet_type is not PacketType.INITIAL or header.pn_offset is None:
        raise WireError(f"not an Initial packet ({header.packet_type})", field="packet type")
    assert header.version is not None  # an Initial always has a known version
    context = _receive_context(bytes(key_dcid), header.version, sender)
    packet = header.packet_bytes(datagram)
    try:
        # RFC 9001 §5.4.2: the sample starts 4 bytes after the packet number offset. The
        # packet number is recovered relative to 0: Initial numbering starts at 0 and an
        # observer of the first flight sees small numbers (RFC 9000 §17.1, Appendix A.3).
        _, payload, packet_number, _ = context.decrypt_packet(packet, header.pn_offset, 0)
    except CryptoError as exc:
        raise WireError(
            f"{sender} Initial does not decrypt with keys from DCID {key_dcid.hex() or '(empty)'}"
            f" ({exc or 'authentication failed'})",
            field="packet protection",
            offset=header.offset,
        ) from None
    return DecryptedInitial(
        header=header,
        sender=sender,
        key_dcid=bytes(key_dcid),
        packet_number=packet_number,
        payload=payload,
        frames=parse_frames(payload),
    )


def open_initial(
    datagram: bytes, header: PacketHeader, *, original_dcid: bytes | None = None
) -> DecryptedInitial:
    """Decrypt an Initial without knowing who sent it, trying each plausible key.

    Keys come from the DCID of the client's first Initial (RFC 9001 §5.2): a client's first
    Initial carries it, but a server Initial, and a client Initial sent after the server's
    first reply (whose DCID is then the server's CID), need it as `original_dcid`. AEAD
    authentication makes trying each candidate safe: wrong keys fail.
    """
    candidates: list[tuple[Sender, bytes]] = [(Sender.CLIENT, header.dcid)]
    if original_dcid is not None:
        candidates.insert(0, (Sender.SERVER, original_dcid))
        if original_dcid != header.dcid:
            candidates.append((Sender.CLIENT, original_dcid))
    failures = []
    for sender, key_dcid in candidates:
        try:
            return decrypt_initial(datagram, header, sender=sender, key_dcid=key_dcid)
        except WireError as exc:
            if exc.field != "packet protection":
                raise
            failures.append(f"{sender} keys from {key_dcid.hex() or '(empty)'}")
    hint = "" if original_dcid is not None else "; a server Initial needs the client's DCID"
    raise WireError(
        f"Initial does not authenticate with {' or '.join(failures)}{hint}",
        field="packet protection",
        offset=header.offset,
    )
