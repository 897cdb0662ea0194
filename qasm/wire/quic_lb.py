"""QUIC-LB connection IDs: server IDs encoded in CIDs (draft-ietf-quic-load-balancers-21).

A CID is First Octet || Plaintext Block (Server ID || Nonce), optionally followed by bytes
for the server's own use (§5.4). The first octet holds 3 config-rotation bits and 5 bits that
are either random or the CID length after the first octet (§3.4). With a key, the block is
AES-128-ECB encrypted in one pass when Server ID + Nonce is exactly 16 octets (§5.4.1) and
with the four-pass Feistel construction of the *current* draft otherwise (§5.4.2): its
expand() ends with the plaintext length and the pass number (older drafts omitted the
length and produce different CIDs; see ../shared/QUIC-LB.md).

Randomness is the caller's: `encode_cid` takes the bits it would otherwise draw, so the
codec stays deterministic and testable (sans-I/O).
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from qasm.wire.errors import WireError

UNROUTABLE_CONFIG_ID = 0b111  # §3.2: "fall back to 4-tuple routing"; never a configuration
MIN_SERVER_ID_LENGTH = 1  # §5.3
MIN_NONCE_LENGTH = 4  # §5.3
MAX_PLAINTEXT_LENGTH = 19  # §5.3: QUIC v1 CIDs are at most 20 octets, one is the first octet
KEY_LENGTH = 16
AES_BLOCK = 16
LENGTH_BITS_MASK = 0x1F


@dataclass(frozen=True, slots=True)
class QuicLbConfig:
    """One QUIC-LB configuration (§5.3); `key=None` means the plaintext algorithm."""

    config_id: int
    server_id_length: int
    nonce_length: int
    key: bytes | None = None
    encode_length: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.config_id < UNROUTABLE_CONFIG_ID:
            raise WireError(
                f"{self.config_id} is not 0..6 (0b111 is reserved for unroutable CIDs)",
                field="config id",
            )
        if self.server_id_length < MIN_SERVER_ID_LENGTH:
            raise WireError(f"{self.server_id_length} is below 1", field="server id length")
        if self.nonce_length < MIN_NONCE_LENGTH:
            raise WireError(f"{self.nonce_length} is below 4", field="nonce length")
        if self.plaintext_length > MAX_PLAINTEXT_LENGTH:
            raise WireError(
                f"server id ({self.server_id_length}) + nonce ({self.nonce_length}) exceeds 19",
                field="nonce length",
            )
        if self.key is not None and len(self.key) != KEY_LENGTH:
            raise WireError(f"{len(self.key)} bytes, expected 16", field="key")

    @property
    def plaintext_length(self) -> int:
        return self.server_id_length + self.nonce_length

    @property
    def cid_length(self) -> int:
        return 1 + self.plaintext_length


@dataclass(frozen=True, slots=True)
class DecodedCid:
    config_id: int
    server_id: bytes
    nonce: bytes


def encode_cid(
    config: QuicLbConfig, server_id: bytes, nonce: bytes, *, random_bits: int = 0
) -> bytes:
    """Build a CID carrying `server_id` (§5.4 server actions).

    `random_bits` fills the five low bits of the first octet when the configuration does not
    self-encode the length; pass fresh randomness (e.g. `os.urandom(1)[0]`) in production.
    """
    if len(server_id) != config.server_id_length:
        raise WireError(
            f"{len(server_id)} bytes, configuration says {config.server_id_length}",
            field="server id",
        )
    if len(nonce) != config.nonce_length:
        raise WireError(
            f"{len(nonce)} bytes, configuration says {config.nonce_length}", field="nonce"
        )
    low_bits = config.plaintext_length if config.encode_length else random_bits
    first_octet = (config.config_id << 5) | (low_bits & LENGTH_BITS_MASK)
    plaintext = bytes(server_id) + bytes(nonce)
    if config.key is None:
        body = plaintext
    elif config.plaintext_length == AES_BLOCK:
        body = _aes_ecb(config.key).update(plaintext)
    else:
        body = _four_pass_encrypt(config.key, plaintext)
    return bytes([first_octet]) + body


def config_id_of(cid: bytes) -> int:
    """The config rotation bits of a CID (§3.1)."""
    if not cid:
        raise WireError("empty connection id", field="first octet", offset=0)
    return cid[0] >> 5


def decode_cid(config: QuicLbConfig, cid: bytes) -> DecodedCid:
    """Recover server ID and nonce (§5.5 load balancer actions).

    Bytes after Server ID + Nonce are the server's own (§5.4) and ignored. Raises WireError
    for an unroutable CID: too short, config 0b111, or a config ID other than `config`'s.
    """
    config_id = config_id_of(cid)
    if config_id == UNROUTABLE_CONFIG_ID:
        raise WireError(
            "config 0b111 marks an unroutable CID: route by 4-tuple (§3.2)",
            field="config id",
            offset=0,
        )
    if config_id != config.config_id:
        raise WireError(
            f"CID uses config {config_id}, this configuration is {config.config_id}",
            field="config id",
            offset=0,
        )
    if len(cid) < config.cid_length:
        raise WireError(
            f"{len(cid)} bytes, configuration needs at least {config.cid_length}",
            field="connection id",
        )
    block = bytes(cid[1 : config.cid_length])
    if config.key is None:
        plaintext = block
    elif config.plaintext_length == AES_BLOCK:
        plaintext = _aes_ecb(config.key, decrypt=True).update(block)
    else:
        plaintext = _four_pass_decrypt(config.key, block)
    return DecodedCid(
        config_id=config_id,
        server_id=plaintext[: config.server_id_length],
        nonce=plaintext[config.server_id_length :],
    )


def _aes_ecb(key: bytes, *, decrypt: bool = False):
    cipher = Cipher(algorithms.AES(key), modes.ECB())
    return cipher.decryptor() if decrypt else cipher.encryptor()


def _expand(length: int, pass_number: int, half: bytes) -> bytes:
    # §5.4.2.2: input bytes, zero padding, then the plaintext length and the pass number as
    # the 15th and 16th octets, so every pass (and every length) has a distinct AES input.
    return half + bytes(14 - len(half)) + bytes([length, pass_number])


def _xor(left: bytes, right: bytes) -> bytes:
    return bytes(a ^ b for a, b in zip(left, right, strict=False))


def _clear_first_nibble(half: bytes) -> bytes:
    return bytes([half[0] & 0x0F]) + half[1:]


def _clear_last_nibble(half: bytes) -> bytes:
    return half[:-1] + bytes([half[-1] & 0xF0])


class _FourPass:
    """The four-round Feistel network of §5.4.2 over a plaintext of 5..19 octets (not 16).

    For an odd length the middle octet is split by nibbles: left keeps its high nibble,
    right its low one, and the unused nibbles are cleared after every pass (steps 5-11).
    """

    def __init__(self, key: bytes, length: int) -> None:
        self.length = length
        self.half = (length + 1) // 2
        self.odd = length % 2 == 1
        self._encryptor = _aes_ecb(key)

    def round(self, pass_number: int, source: bytes, target: bytes) -> bytes:
        mask = self._encryptor.update(_expand(self.length, pass_number, source))[: self.half]
        return _xor(target, mask)

    def fix_left(self, half: bytes) -> bytes:
        return _clear_last_nibble(half) if self.odd else half

    def fix_right(self, half: bytes) -> bytes:
        return _clear_first_nibble(half) if self.odd else half

    def split(self, block: bytes) -> tuple[bytes, bytes]:
        left = self.fix_left(block[: self.half])
        right = self.fix_right(block[self.length - self.half :])
        return left, right

    def join(self, left: bytes, right: bytes) -> bytes:
        if not self.odd:
            return left + right
        # Step 12: the cleared nibbles are dropped, the two halves share the middle octet.
        middle = left[-1] | right[0]
        return left[:-1] + bytes([middle]) + right[1:]


def _four_pass_encrypt(key: bytes, plaintext: bytes) -> bytes:
    feistel = _FourPass(key, len(plaintext))
    left_0, right_0 = feistel.split(plaintext)
    right_1 = feistel.fix_right(feistel.round(1, left_0, right_0))
    left_1 = feistel.fix_left(feistel.round(2, right_1, left_0))
    right_2 = feistel.fix_right(feistel.round(3, left_1, right_1))
    left_2 = feistel.fix_left(feistel.round(4, right_2, left_1))
    return feistel.join(left_2, right_2)


def _four_pass_decrypt(key: bytes, ciphertext: bytes) -> bytes:
    # §5.5.2: the passes in reverse. All four are run because the nonce is reported too
    # (a router that needs only a short server ID could stop after three).
    feistel = _FourPass(key, len(ciphertext))
    left_2, right_2 = feistel.split(ciphertext)
    left_1 = feistel.fix_left(feistel.round(4, right_2, left_2))
    right_1 = feistel.fix_right(feistel.round(3, left_1, right_2))
    left_0 = feistel.fix_left(feistel.round(2, right_1, left_1))
    right_0 = feistel.fix_right(feistel.round(1, left_0, right_1))
    return feistel.join(left_0, right_0)
