"""QUIC-LB CID codecs against draft-ietf-quic-load-balancers-21 (current four-pass)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qasm.wire import QuicLbConfig, WireError, decode_cid, encode_cid
from tests.wire import vectors


def test_worked_four_pass_example_reproduces_exactly():
    example = vectors.LB_WORKED_EXAMPLE
    config = QuicLbConfig(
        config_id=0,
        server_id_length=3,
        nonce_length=4,
        key=bytes.fromhex(example["key"]),
        encode_length=True,
    )
    cid = encode_cid(config, bytes.fromhex(example["server_id"]), bytes.fromhex(example["nonce"]))
    assert cid.hex() == example["cid"]
    decoded = decode_cid(config, cid)
    assert (decoded.server_id.hex(), decoded.nonce.hex()) == (
        example["server_id"],
        example["nonce"],
    )


@pytest.mark.parametrize(("config_id", "server_id", "nonce", "cid"), vectors.LB_UNENCRYPTED)
def test_unencrypted_vectors(config_id, server_id, nonce, cid):
    config = QuicLbConfig(config_id, len(server_id) // 2, len(nonce) // 2, encode_length=True)
    assert encode_cid(config, bytes.fromhex(server_id), bytes.fromhex(nonce)).hex() == cid
    decoded = decode_cid(config, bytes.fromhex(cid))
    assert (decoded.server_id.hex(), decoded.nonce.hex()) == (server_id, nonce)


@pytest.mark.parametrize(("config_id", "server_id", "nonce", "cid"), vectors.LB_ENCRYPTED)
def test_encrypted_vectors(config_id, server_id, nonce, cid):
    # Covers four-pass with an odd length (3+4), four-pass where the server ID is longer
    # than the nonce (10+5, needs the fourth decryption pass), single pass (8+8) and 9+9.
    config = QuicLbConfig(
        config_id,
        len(server_id) // 2,
        len(nonce) // 2,
        key=bytes.fromhex(vectors.LB_KEY),
        encode_length=True,
    )
    encoded = encode_cid(config, bytes.fromhex(server_id), bytes.fromhex(nonce))
    # The body is the vector's; the first octet is config << 5 | length (see vectors.py on
    # the draft's misprinted first octet of the last vector).
    assert encoded[1:].hex() == cid[2:]
    assert encoded[0] == (config_id << 5) | (len(encoded) - 1)
    decoded = decode_cid(config, encoded)
    assert (decoded.config_id, decoded.server_id.hex(), decoded.nonce.hex()) == (
        config_id,
        server_id,
        nonce,
    )


def test_not_the_old_drafts_four_pass():
    config_id, server_id, nonce, _ = vectors.LB_ENCRYPTED[0]
    config = QuicLbConfig(config_id, 3, 4, key=bytes.fromhex(vectors.LB_KEY), encode_length=True)
    encoded = encode_cid(config, bytes.fromhex(server_id), bytes.fromhex(nonce))
    assert encoded.hex() != vectors.LB_OLD_DRAFT_FIRST_CID


def test_without_length_self_encoding_the_low_bits_are_the_callers_random_bits():
    config = QuicLbConfig(2, 2, 4)
    cid = encode_cid(config, b"\xaa\xbb", b"\x01\x02\x03\x04", random_bits=0b10101)
    assert cid[0] == (2 << 5) | 0b10101
    assert decode_cid(config, cid).server_id == b"\xaa\xbb"


def test_server_use_bytes_after_the_nonce_are_ignored():
    config = QuicLbConfig(1, 2, 4)
    cid = encode_cid(config, b"\x01\x02", b"\x03\x04\x05\x06") + b"\xff\xfe"
    assert decode_cid(config, cid).nonce == b"\x03\x04\x05\x06"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"config_id": 7, "server_id_length": 1, "nonce_length": 4}, "config id"),
        ({"config_id": 0, "server_id_length": 0, "nonce_length": 4}, "server id length"),
        ({"config_id": 0, "server_id_length": 1, "nonce_length": 3}, "nonce length"),
        ({"config_id": 0, "server_id_length": 10, "nonce_length": 10}, "nonce length"),
        ({"config_id": 0, "server_id_length": 1, "nonce_length": 4, "key": b"short"}, "key"),
    ],
)
def test_invalid_configurations(kwargs, field):
    with pytest.raises(WireError) as caught:
        QuicLbConfig(**kwargs)
    assert caught.value.field == field


def test_unroutable_short_and_foreign_cids_are_errors():
    config = QuicLbConfig(1, 3, 4)
    with pytest.raises(WireError, match="unroutable"):
        decode_cid(config, bytes([0xE7]) + bytes(7))
    with pytest.raises(WireError, match="at least 8"):
        decode_cid(config, bytes([0x27]) + bytes(3))
    with pytest.raises(WireError, match="config 2"):
        decode_cid(config, bytes([0x47]) + bytes(7))
    with pytest.raises(WireError, match="empty"):
        decode_cid(config, b"")
    with pytest.raises(WireError, match="server id"):
        encode_cid(config, b"\x01", b"\x00" * 4)


@given(
    config_id=st.integers(0, 6),
    server_id=st.binary(min_size=1, max_size=15),
    data=st.data(),
    keyed=st.booleans(),
    encode_length=st.booleans(),
)
def test_encode_decode_round_trip(config_id, server_id, data, keyed, encode_length):
    nonce = data.draw(st.binary(min_size=4, max_size=19 - len(server_id)))
    key = data.draw(st.binary(min_size=16, max_size=16)) if keyed else None
    config = QuicLbConfig(config_id, len(server_id), len(nonce), key, encode_length)
    cid = encode_cid(config, server_id, nonce, random_bits=data.draw(st.integers(0, 255)))
    assert len(cid) == config.cid_length
    assert cid[0] >> 5 == config_id
    decoded = decode_cid(config, cid)
    assert (decoded.server_id, decoded.nonce) == (server_id, nonce)
