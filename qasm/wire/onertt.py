"""1-RTT (short header) packets opened with secrets from a key log, for an observer.

A host agent that can read its own client's SSLKEYLOGFILE (see `qasm.wire.keylog`) can see
inside that connection's 1-RTT packets: the NEW_CONNECTION_ID frames that announce the CIDs
the client may migrate to, RETIRE_CONNECTION_ID, PATH_CHALLENGE / PATH_RESPONSE. This module
is that observer, sans-I/O: one `OneRttObserver` per connection and direction, fed the
datagrams of that direction, returning each packet's number, key phase and frames.

What it implements, all with `cryptography` (aioquic's crypto is only a test oracle):
- RFC 9001 §5.1 packet protection keys: HKDF-Expand-Label(secret, "quic key" / "quic iv" /
  "quic hp"), and RFC 9369 §3.3.2's "quicv2 key" / "quicv2 iv" / "quicv2 hp" for QUIC v2.
- RFC 9001 §5.4 header protection: AES-ECB (§5.4.3) or ChaCha20 (§5.4.4) masks over a
  16-byte sample taken 4 bytes after the start of the packet number.
- RFC 9001 §5.3 AEAD: AES-128-GCM, AES-256-GCM, ChaCha20-Poly1305 and AES-128-CCM (every
  TLS 1.3 suite but AES_128_CCM_8, which QUIC excludes); nonce = IV XOR the reconstructed
  packet number (RFC 9000 §A.3, relative to the largest number this observer opened).
- RFC 9001 §6 key updates: the Key Phase bit selects between generations of keys, the next
  secret is HKDF-Expand-Label(secret, "quic ku" / "quicv2 ku", "", hash length) and the
  header protection key never changes. As §6.3 allows a receiver, the observer keeps the
  previous generation (for reordered packets) next to the current one, and tries the next.

**Cipher suite.** A 48-byte secret can only be TLS_AES_256_GCM_SHA384; a 32-byte one is
AES-128-GCM, ChaCha20-Poly1305 or AES-128-CCM (all SHA-256). The observer takes the suite as a
parameter, and when it is None it tries each suite the secret length allows on the first
packet and keeps the one that authenticates (a wrong key passes a 16-byte tag with
probability 2^-128). Trial is the default because a host agent that reads the key log may
have started after the handshake and never seen the ServerHello; when the Initials are at
hand, `HelloObserver` reads the suite the server chose (and the client random that names
the connection in the key log) from the ServerHello and ClientHello, which Initial keys
(public) already decrypt.

Everything malformed, truncated or unauthenticated raises `WireError` with the field named.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESCCM, AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from qasm.wire.clienthello import CryptoStreamReassembly
from qasm.wire.errors import WireError
from qasm.wire.frames import Frame, walk_frame_list
from qasm.wire.header import (
    LONG_HEADER_BIT,
    MAX_CID_LENGTH_V1,
    QUIC_V1,
    QUIC_V2,
    SPIN_BIT,
    HeaderForm,
    PacketType,
    parse_datagram,
)
from qasm.wire.initial import Sender, decrypt_initial, open_initial
from qasm.wire.keylog import ConnectionSecrets

KEY_PHASE_BIT = 0x04  # RFC 9000 §17.3.1
RESERVED_BITS_SHORT = 0x18  # RFC 9000 §17.3.1, protected; must be 0 once unprotected
PN_LENGTH_BITS = 0x03
SAMPLE_LENGTH = 16  # RFC 9001 §5.4.2
SAMPLE_OFFSET = 4  # the sample starts as if the packet number were 4 bytes long
IV_LENGTH = 12  # RFC 9001 §5.1: "quic iv" is 12 bytes for every TLS 1.3 AEAD
TAG_LENGTH = 16
MAX_PACKET_NUMBER = (1 << 62) - 1  # RFC 9000 §12.3


class CipherSuite(enum.IntEnum):
    """TLS 1.3 cipher suites QUIC may use (RFC 9001 §5.3; code points of RFC 8446 §B.4).
    Equal as ints to `aioquic.tls.CipherSuite`."""

    AES_128_GCM_SHA256 = 0x1301
    AES_256_GCM_SHA384 = 0x1302
    CHACHA20_POLY1305_SHA256 = 0x1303
    AES_128_CCM_SHA256 = 0x1304


@dataclass(frozen=True, slots=True)
class _SuiteParameters:
    hash: Callable[[], hashes.HashAlgorithm]
    key_length: int
    aead: Callable[[bytes], AESGCM | ChaCha20Poly1305 | AESCCM]
    chacha_header_protection: bool


_SUITES = {
    CipherSuite.AES_128_GCM_SHA256: _SuiteParameters(hashes.SHA256, 16, AESGCM, False),
    CipherSuite.AES_256_GCM_SHA384: _SuiteParameters(hashes.SHA384, 32, AESGCM, False),
    CipherSuite.CHACHA20_POLY1305_SHA256: _SuiteParameters(
        hashes.SHA256, 32, ChaCha20Poly1305, True
    ),
    CipherSuite.AES_128_CCM_SHA256: _SuiteParameters(hashes.SHA256, 16, AESCCM, False),
}

# RFC 9001 §5.1 / §6.1 and RFC 9369 §3.3.2: the labels per version.
_LABELS = {
    QUIC_V1: (b"quic key", b"quic iv", b"quic hp", b"quic ku"),
    QUIC_V2: (b"quicv2 key", b"quicv2 iv", b"quicv2 hp", b"quicv2 ku"),
}


def cipher_suite(value: int) -> CipherSuite:
    """The suite with TLS code point `value`; WireError for anything QUIC cannot use."""
    try:
        return CipherSuite(value)
    except ValueError:
        raise WireError(
            f"0x{value:04x} is not a TLS 1.3 cipher suite QUIC can use", field="cipher suite"
        ) from None


def suites_for_secret(secret: bytes) -> tuple[CipherSuite, ...]:
    """The suites whose hash produces a secret of this length, most common first."""
    if len(secret) == 32:
        return (
            CipherSuite.AES_128_GCM_SHA256,
            CipherSuite.CHACHA20_POLY1305_SHA256,
            CipherSuite.AES_128_CCM_SHA256,
        )
    if len(secret) == 48:
        return (CipherSuite.AES_256_GCM_SHA384,)
    raise WireError(
        f"{len(secret)} bytes is neither a SHA-256 (32) nor a SHA-384 (48) secret",
        field="traffic secret",
    )


def hkdf_expand_label(
    secret: bytes, label: bytes, context: bytes, length: int, hash_algorithm: hashes.HashAlgorithm
) -> bytes:
    """RFC 8446 §7.1 HKDF-Expand-Label: info = length (2) || "tls13 " + label || context."""
    full_label = b"tls13 " + label
    info = (
        length.to_bytes(2, "big")
        + bytes([len(full_label)])
        + full_label
        + bytes([len(context)])
        + context
    )
    return HKDFExpand(algorithm=hash_algorithm, length=length, info=info).derive(secret)


def _labels(version: int) -> tuple[bytes, bytes, bytes, bytes]:
    labels = _LABELS.get(version)
    if labels is None:
        raise WireError(f"no 1-RTT key labels for version 0x{version:08x}", field="version")
    return labels


def _suite(suite: int, secret: bytes) -> CipherSuite:
    suite = cipher_suite(suite)
    if suite not in suites_for_secret(secret):
        raise WireError(
            f"{suite.name} needs a {_SUITES[suite].hash.digest_size}-byte secret, "
            f"got {len(secret)} bytes",
            field="cipher suite",
        )
    return suite


@dataclass(frozen=True, slots=True)
class PacketProtection:
    """The keys one traffic secret yields (RFC 9001 §5.1): AEAD key, IV, header protection
    key, for one cipher suite and QUIC version."""

    cipher_suite: CipherSuite
    version: int
    secret: bytes
    key: bytes
    iv: bytes
    hp: bytes

    @classmethod
    def from_secret(
        cls, secret: bytes, cipher_suite: int, version: int = QUIC_V1
    ) -> PacketProtection:
        suite = _suite(cipher_suite, secret)
        parameters = _SUITES[suite]
        key_label, iv_label, hp_label, _ = _labels(version)
        digest = parameters.hash()
        return cls(
            cipher_suite=suite,
            version=version,
            secret=bytes(secret),
            key=hkdf_expand_label(secret, key_label, b"", parameters.key_length, digest),
            iv=hkdf_expand_label(secret, iv_label, b"", IV_LENGTH, digest),
            hp=hkdf_expand_label(secret, hp_label, b"", parameters.key_length, digest),
        )

    def next_generation(self) -> PacketProtection:
        """RFC 9001 §6.1: the keys after one key update. The secret is
        HKDF-Expand-Label(secret, "quic ku", "", Hash.length); "the header protection key is
        not updated", so `hp` stays."""
        parameters = _SUITES[self.cipher_suite]
        digest = parameters.hash()
        key_label, iv_label, _, ku_label = _labels(self.version)
        secret = hkdf_expand_label(self.secret, ku_label, b"", digest.digest_size, digest)
        return PacketProtection(
            cipher_suite=self.cipher_suite,
            version=self.version,
            secret=secret,
            key=hkdf_expand_label(secret, key_label, b"", parameters.key_length, digest),
            iv=hkdf_expand_label(secret, iv_label, b"", IV_LENGTH, digest),
            hp=self.hp,
        )

    def nonce(self, packet_number: int) -> bytes:
        """RFC 9001 §5.3: the IV XOR the packet number, left-padded to the IV's length."""
        return bytes(
            a ^ b for a, b in zip(self.iv, packet_number.to_bytes(IV_LENGTH, "big"), strict=True)
        )


def header_protection_mask(suite: int, hp_key: bytes, sample: bytes) -> bytes:
    """The 5-byte header protection mask of RFC 9001 §5.4.3 (AES) / §5.4.4 (ChaCha20)."""
    if len(sample) != SAMPLE_LENGTH:
        raise WireError(f"{len(sample)} bytes, not {SAMPLE_LENGTH}", field="sample")
    return _HeaderProtection(cipher_suite(suite), hp_key).mask(sample)


class _HeaderProtection:
    __slots__ = ("_aes", "_chacha_key")

    def __init__(self, suite: CipherSuite, hp_key: bytes) -> None:
        if _SUITES[suite].chacha_header_protection:
            self._aes = None
            self._chacha_key = hp_key
        else:
            self._aes = Cipher(algorithms.AES(hp_key), modes.ECB())
            self._chacha_key = b""

    def mask(self, sample: bytes) -> bytes:
        if self._aes is not None:
            # §5.4.3: mask = AES-ECB(hp_key, sample)
            return self._aes.encryptor().update(sample)[:5]
        # §5.4.4: counter = sample[0..3] (little endian), nonce = sample[4..15]; the mask is
        # ChaCha20 over five zero bytes. cryptography's 16-byte ChaCha20 "nonce" is exactly
        # counter || nonce in that layout, i.e. the sample itself.
        chacha = Cipher(algorithms.ChaCha20(self._chacha_key, sample), mode=None)
        return chacha.encryptor().update(bytes(5))


def decode_packet_number(largest_pn: int | None, truncated_pn: int, pn_nbits: int) -> int:
    """RFC 9000 §A.3: the full packet number closest to largest_pn + 1.

    `largest_pn` is the largest number successfully processed so far in this packet number
    space, None before the first (then the expected number is 0).
    """
    if pn_nbits not in (8, 16, 24, 32) or not 0 <= truncated_pn < 1 << pn_nbits:
        raise WireError(
            f"{truncated_pn} is not a {pn_nbits}-bit packet number (8, 16, 24 or 32 bits)",
            field="packet number",
        )
    expected_pn = 0 if largest_pn is None else largest_pn + 1
    pn_win = 1 << pn_nbits
    pn_hwin = pn_win // 2
    pn_mask = pn_win - 1
    candidate_pn = (expected_pn & ~pn_mask) | truncated_pn
    if candidate_pn <= expected_pn - pn_hwin and candidate_pn < (1 << 62) - pn_win:
        return candidate_pn + pn_win
    if candidate_pn > expected_pn + pn_hwin and candidate_pn >= pn_win:
        return candidate_pn - pn_win
    return candidate_pn


@dataclass(frozen=True, slots=True)
class OneRttPacket:
    """One opened short-header packet.

    `generation` counts key updates since the key log's secret (0 for *_TRAFFIC_SECRET_0);
    its parity is `key_phase`. `reserved_bits` must be 0 (RFC 9000 §17.3.1): reported, not
    rejected. `frames` are those read before `frame_error` (None when all parsed).
    """

    dcid: bytes
    packet_number: int
    key_phase: int
    generation: int
    spin_bit: bool
    reserved_bits: int
    payload: bytes
    frames: tuple[Frame, ...]
    frame_error: str | None = None


class _KeyGenerations:
    """The key generations of one cipher suite, derived lazily, oldest pruned."""

    __slots__ = ("suite", "header_protection", "_protections", "_aeads")

    def __init__(self, protection: PacketProtection) -> None:
        self.suite = protection.cipher_suite
        self.header_protection = _HeaderProtection(protection.cipher_suite, protection.hp)
        self._protections: dict[int, PacketProtection] = {0: protection}
        self._aeads: dict[int, AESGCM | ChaCha20Poly1305 | AESCCM] = {}

    def protection(self, generation: int) -> PacketProtection:
        known = self._protections.get(generation)
        if known is not None:
            return known
        base = max(g for g in self._protections if g < generation)
        protection = self._protections[base]
        for step in range(base + 1, generation + 1):
            protection = protection.next_generation()
            self._protections[step] = protection
        return protection

    def open(self, generation: int, packet_number: int, header: bytes, ciphertext: bytes):
        protection = self.protection(generation)
        aead = self._aeads.get(generation)
        if aead is None:
            aead = self._aeads[generation] = _SUITES[self.suite].aead(protection.key)
        try:
            return aead.decrypt(protection.nonce(packet_number), ciphertext, header)
        except InvalidTag:
            return None

    def prune(self, oldest_kept: int) -> None:
        for generation in [g for g in self._protections if g < oldest_kept]:
            if len(self._protections) > 1:
                del self._protections[generation]
                self._aeads.pop(generation, None)


class OneRttObserver:
    """Opens the short-header packets of one connection in one direction.

    `secret` is that direction's generation-0 1-RTT secret (CLIENT_TRAFFIC_SECRET_0 for
    client-to-server packets, SERVER_TRAFFIC_SECRET_0 for the reverse); `dcid_length` the
    length of the CIDs the *receiver* of these packets issued (RFC 9312 §2.1); a None
    `cipher_suite` is learnt by trial on the first packet (see the module docstring).
    `max_skipped_updates` is how many key updates the observer may have missed entirely
    (no packet seen in a generation) and still follow, at one extra AEAD attempt each.
    """

    def __init__(
        self,
        secret: bytes,
        *,
        dcid_length: int,
        cipher_suite: int | None = None,
        version: int = QUIC_V1,
        largest_packet_number: int | None = None,
        max_skipped_updates: int = 1,
    ) -> None:
        if not 0 <= dcid_length <= MAX_CID_LENGTH_V1:
            raise WireError(f"must be 0..20, got {dcid_length}", field="short DCID length")
        suites = (
            suites_for_secret(secret) if cipher_suite is None else (_suite(cipher_suite, secret),)
        )
        self.dcid_length = dcid_length
        self.version = version
        self.max_skipped_updates = max_skipped_updates
        self._candidates = [
            _KeyGenerations(PacketProtection.from_secret(secret, suite, version))
            for suite in suites
        ]
        self.largest_packet_number = largest_packet_number
        self.generation = 0
        self._generation_first_pn: int | None = None

    @classmethod
    def from_key_log(
        cls,
        secrets: ConnectionSecrets,
        *,
        from_client: bool,
        dcid_length: int,
        cipher_suite: int | None = None,
        version: int = QUIC_V1,
    ) -> OneRttObserver:
        return cls(
            secrets.one_rtt(from_client=from_client),
            dcid_length=dcid_length,
            cipher_suite=cipher_suite,
            version=version,
        )

    @property
    def cipher_suite(self) -> CipherSuite | None:
        """The suite in use; None until a packet authenticated when it was not given."""
        return self._candidates[0].suite if len(self._candidates) == 1 else None

    def open(self, datagram: bytes) -> OneRttPacket | None:
        """Open the short-header packet of a datagram: the whole datagram, or what follows
        coalesced long-header packets (RFC 9000 §12.2; those are not this observer's).
        Returns None when the datagram holds only long-header packets."""
        if datagram and not datagram[0] & LONG_HEADER_BIT:
            return self.open_packet(datagram)
        for header in parse_datagram(datagram, self.dcid_length):
            if header.form is HeaderForm.SHORT:
                return self.open_packet(header.packet_bytes(datagram))
        return None

    def open_packet(self, packet: bytes) -> OneRttPacket:
        """Remove header protection, pick the key generation, decrypt, parse frames."""
        pn_offset = 1 + self.dcid_length
        if not packet:
            raise WireError("empty packet", field="first byte", offset=0)
        if packet[0] & LONG_HEADER_BIT:
            raise WireError("long header, not a short header", field="header form", offset=0)
        if len(packet) < pn_offset + SAMPLE_OFFSET + SAMPLE_LENGTH:
            # RFC 9001 §5.4.2: a packet too short to sample cannot be unprotected.
            raise WireError(
                f"{len(packet)} bytes cannot hold a {self.dcid_length}-byte DCID, a packet "
                f"number and a {SAMPLE_LENGTH}-byte sample",
                field="header protection sample",
                offset=pn_offset + SAMPLE_OFFSET,
            )
        sample = packet[pn_offset + SAMPLE_OFFSET : pn_offset + SAMPLE_OFFSET + SAMPLE_LENGTH]
        tried = []
        for keys in self._candidates:
            opened = self._open_with(keys, packet, pn_offset, sample)
            if opened is not None:
                self._candidates = [keys]  # the suite is settled
                return opened
            tried.append(keys.suite.name)
        raise WireError(
            f"does not authenticate with {' or '.join(tried)} keys of generations "
            f"{self._generations_tried_text()} (wrong keys, wrong DCID length, or corrupted)",
            field="packet protection",
            offset=0,
        )

    def _open_with(
        self, keys: _KeyGenerations, packet: bytes, pn_offset: int, sample: bytes
    ) -> OneRttPacket | None:
        mask = keys.header_protection.mask(sample)
        # RFC 9001 §5.4.1: short headers protect the low 5 bits of the first byte.
        first_byte = packet[0] ^ (mask[0] & 0x1F)
        pn_length = (first_byte & PN_LENGTH_BITS) + 1
        truncated = bytes(
            b ^ m
            for b, m in zip(
                packet[pn_offset : pn_offset + pn_length], mask[1 : 1 + pn_length], strict=True
            )
        )
        packet_number = decode_packet_number(
            self.largest_packet_number, int.from_bytes(truncated, "big"), 8 * pn_length
        )
        if packet_number > MAX_PACKET_NUMBER:
            return None
        header = bytes([first_byte]) + packet[1:pn_offset] + truncated
        ciphertext = packet[pn_offset + pn_length :]
        key_phase = (first_byte & KEY_PHASE_BIT) >> 2
        for generation in self._generations_for(key_phase, packet_number):
            payload = keys.open(generation, packet_number, header, ciphertext)
            if payload is not None:
                self._accept(keys, generation, packet_number)
                frames, error = walk_frame_list(payload)
                return OneRttPacket(
                    dcid=packet[1:pn_offset],
                    packet_number=packet_number,
                    key_phase=key_phase,
                    generation=generation,
                    spin_bit=bool(first_byte & SPIN_BIT),
                    reserved_bits=(first_byte & RESERVED_BITS_SHORT) >> 3,
                    payload=payload,
                    frames=frames,
                    frame_error=None if error is None else str(error),
                )
        return None

    def _generations_for(self, key_phase: int, packet_number: int) -> list[int]:
        """Generations with this key phase worth trying, the likeliest first (RFC 9001 §6.3:
        a packet with a different phase is either the next generation or, if its number is
        below the first of the current generation, a reordered packet of the previous)."""
        current = self.generation
        skips = range(1, self.max_skipped_updates + 1)
        if key_phase == current % 2:
            return [current] + [current + 2 * k for k in skips]
        following = [current + 1] + [current + 1 + 2 * k for k in skips]
        if current == 0:
            return following
        first = self._generation_first_pn
        if first is not None and packet_number < first:
            return [current - 1, *following]
        return [*following, current - 1]

    def _generations_tried_text(self) -> str:
        current = self.generation
        low = max(0, current - 1)
        return f"{low}..{current + 1 + 2 * self.max_skipped_updates}"

    def _accept(self, keys: _KeyGenerations, generation: int, packet_number: int) -> None:
        if self.largest_packet_number is None or packet_number > self.largest_packet_number:
            self.largest_packet_number = packet_number
        if generation > self.generation:
            self.generation = generation
            self._generation_first_pn = packet_number
            keys.prune(generation - 1)  # keep the previous generation (RFC 9001 §6.3)
        elif generation == self.generation and (
            self._generation_first_pn is None or packet_number < self._generation_first_pn
        ):
            self._generation_first_pn = packet_number


def infer_cipher_suite(
    secret: bytes,
    datagram: bytes,
    *,
    dcid_length: int,
    version: int = QUIC_V1,
    largest_packet_number: int | None = None,
) -> CipherSuite:
    """The suite under which this 1-RTT datagram authenticates with `secret` (trial)."""
    observer = OneRttObserver(
        secret,
        dcid_length=dcid_length,
        version=version,
        largest_packet_number=largest_packet_number,
    )
    if observer.open(datagram) is None:
        raise WireError("no short-header packet in the datagram", field="header form")
    suite = observer.cipher_suite
    assert suite is not None  # open() settles it or raises
    return suite


# --- The TLS hellos, from the Initials -----------------------------------------------------

HANDSHAKE_HEADER_LENGTH = 4  # RFC 8446 §4: msg_type (1), length (3)
CLIENT_HELLO = 1
SERVER_HELLO = 2
# RFC 8446 §4.1.2/§4.1.3: legacy_version (2) then random (32).
RANDOM_OFFSET = HANDSHAKE_HEADER_LENGTH + 2
RANDOM_LENGTH = 32
# Enough crypto stream for the fields read here; a ServerHello with a post-quantum key share
# is ~1.2 KB, but the cipher suite comes before the extensions.
MAX_HELLO_PREFIX = 16 * 1024


class HelloObserver:
    """Reads the client random (ClientHello) and the chosen cipher suite (ServerHello) of one
    connection from its Initial packets, both directions (RFC 9001 §5.2: Initial keys come
    from public data). The client random names the connection in a key log.

    `original_dcid` is the DCID of the client's first Initial; learnt from it when None.
    """

    def __init__(self, original_dcid: bytes | None = None) -> None:
        self.original_dcid = original_dcid
        self.client_random: bytes | None = None
        self.cipher_suite: CipherSuite | None = None
        self._client = CryptoStreamReassembly(MAX_HELLO_PREFIX)
        self._server = CryptoStreamReassembly(MAX_HELLO_PREFIX)

    @property
    def complete(self) -> bool:
        return self.client_random is not None and self.cipher_suite is not None

    def add(self, datagram: bytes, *, from_client: bool) -> None:
        """Feed one datagram; Initials are decrypted, everything else is ignored. Raises
        WireError for a malformed datagram or an Initial that does not authenticate."""
        if not datagram or not datagram[0] & LONG_HEADER_BIT:
            return
        # Coalesced packets share the first packet's DCID (RFC 9000 §12.2), so a short
        # header after long ones has the same DCID length.
        dcid_length = datagram[5] if len(datagram) > 5 else 0
        for header in parse_datagram(datagram, min(dcid_length, MAX_CID_LENGTH_V1)):
            if header.packet_type is not PacketType.INITIAL:
                continue
            if from_client:
                decrypted = open_initial(datagram, header, original_dcid=self.original_dcid)
                if decrypted.sender is not Sender.CLIENT:
                    continue
                if self.original_dcid is None or decrypted.key_dcid == header.dcid:
                    self.original_dcid = header.dcid  # first Initial, or the one after Retry
                self._add_client(decrypted.frames.crypto)
            elif self.original_dcid is not None:
                decrypted = decrypt_initial(
                    datagram, header, sender=Sender.SERVER, key_dcid=self.original_dcid
                )
                self._add_server(decrypted.frames.crypto)

    def _add_client(self, frames) -> None:
        for frame in frames:
            self._client.add(frame.offset, frame.data)
        head = self._client.prefix
        if self.client_random is None and len(head) >= RANDOM_OFFSET + RANDOM_LENGTH:
            if head[0] != CLIENT_HELLO:
                raise WireError(
                    f"handshake type {head[0]} is not ClientHello (1)", field="client hello"
                )
            self.client_random = head[RANDOM_OFFSET : RANDOM_OFFSET + RANDOM_LENGTH]

    def _add_server(self, frames) -> None:
        for frame in frames:
            self._server.add(frame.offset, frame.data)
        if self.cipher_suite is None:
            suite = server_hello_cipher_suite(self._server.prefix)
            if suite is not None:
                self.cipher_suite = suite


def server_hello_cipher_suite(crypto_prefix: bytes) -> CipherSuite | None:
    """The cipher_suite of a ServerHello (RFC 8446 §4.1.3) at the start of the server's
    Initial crypto stream; None while too little of it is known."""
    if not crypto_prefix:
        return None
    if crypto_prefix[0] != SERVER_HELLO:
        raise WireError(
            f"handshake type {crypto_prefix[0]} is not ServerHello (2)",
            field="server hello",
            offset=0,
        )
    session_id_at = RANDOM_OFFSET + RANDOM_LENGTH
    if len(crypto_prefix) <= session_id_at:
        return None
    suite_at = session_id_at + 1 + crypto_prefix[session_id_at]
    if len(crypto_prefix) < suite_at + 2:
        return None
    return cipher_suite(int.from_bytes(crypto_prefix[suite_at : suite_at + 2], "big"))
