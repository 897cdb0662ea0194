"""1-RTT decryption from a key log (qasm.wire.onertt): RFC 9001 §A.5, aioquic as an oracle
for key derivation and protection, and a real in-memory aioquic connection whose
NEW_CONNECTION_ID frames the observer must find, across key updates."""

from __future__ import annotations

import contextlib
import os

import pytest
from aioquic.quic import crypto as aioquic_crypto
from aioquic.quic.packet import decode_packet_number as aioquic_decode_packet_number
from aioquic.tls import CipherSuite as AioquicSuite
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESCCM
from hypothesis import given, settings
from hypothesis import strategies as st

from qasm.wire import QUIC_V1, QUIC_V2, WireError
from qasm.wire.frames import NewConnectionIdFrame, OtherFrame, RetireConnectionIdFrame
from qasm.wire.keylog import parse_key_log
from qasm.wire.onertt import (
    CipherSuite,
    HelloObserver,
    OneRttObserver,
    PacketProtection,
    decode_packet_number,
    header_protection_mask,
    infer_cipher_suite,
    server_hello_cipher_suite,
)
from tests.wire import vectors
from tests.wire.memory_connection import MemoryConnection

# RFC 9001 §A.5 (ChaCha20-Poly1305 short header packet).
A5_SECRET = bytes.fromhex("9ac312a7f877468ebe69422748ad00a15443f18203a07d6060f688f30f21632b")
A5_KEY = bytes.fromhex("c6d98ff3441c3fe1b2182094f69caa2ed4b716b65488960a7a984979fb23e1c8")
A5_IV = bytes.fromhex("e0459b3474bdd0e44a41c144")
A5_HP = bytes.fromhex("25a282b9e82f06f21f488917a4fc8f1b73573685608597d0efcb076b0ab7a7a4")
A5_KU = bytes.fromhex("1223504755036d556342ee9361d253421a826c9ecdf3c7148684b36b714881f9")
A5_PACKET_NUMBER = 654360564
A5_NONCE = bytes.fromhex("e0459b3474bdd0e46d417eb0")
A5_SAMPLE = bytes.fromhex("5e5cd55c41f69080575d7999c25a5bfb")
A5_MASK = bytes.fromhex("aefefe7d03")
A5_PACKET = vectors.SHORT_HEADER_CHACHA20  # 4cfe4189655e5cd55c41f69080575d7999c25a5bfb

AIOQUIC_SUITES = {
    CipherSuite.AES_128_GCM_SHA256: AioquicSuite.AES_128_GCM_SHA256,
    CipherSuite.AES_256_GCM_SHA384: AioquicSuite.AES_256_GCM_SHA384,
    CipherSuite.CHACHA20_POLY1305_SHA256: AioquicSuite.CHACHA20_POLY1305_SHA256,
}


# --- RFC 9001 §A.5 ----------------------------------------------------------------------


def test_rfc9001_a5_keys():
    keys = PacketProtection.from_secret(A5_SECRET, CipherSuite.CHACHA20_POLY1305_SHA256)
    assert (keys.key, keys.iv, keys.hp) == (A5_KEY, A5_IV, A5_HP)
    assert keys.nonce(A5_PACKET_NUMBER) == A5_NONCE
    following = keys.next_generation()
    assert following.secret == A5_KU
    assert following.hp == A5_HP  # RFC 9001 §6: header protection keys are not updated


def test_rfc9001_a5_header_protection_mask():
    assert A5_PACKET[5:21] == A5_SAMPLE
    assert header_protection_mask(CipherSuite.CHACHA20_POLY1305_SHA256, A5_HP, A5_SAMPLE) == (
        A5_MASK
    )


def test_rfc9001_a5_packet_decrypts_exactly():
    observer = OneRttObserver(
        A5_SECRET,
        dcid_length=0,
        cipher_suite=CipherSuite.CHACHA20_POLY1305_SHA256,
        largest_packet_number=A5_PACKET_NUMBER - 1,
    )
    packet = observer.open(A5_PACKET)
    assert packet.packet_number == A5_PACKET_NUMBER
    assert packet.payload == b"\x01"  # a PING
    assert packet.frames == (OtherFrame("ping", 0x01),)
    assert (packet.dcid, packet.key_phase, packet.generation) == (b"", 0, 0)
    assert (packet.spin_bit, packet.reserved_bits, packet.frame_error) == (False, 0, None)
    assert observer.largest_packet_number == A5_PACKET_NUMBER


def test_rfc9001_a5_suite_is_found_by_trial():
    assert (
        infer_cipher_suite(
            A5_SECRET, A5_PACKET, dcid_length=0, largest_packet_number=A5_PACKET_NUMBER - 1
        )
        is CipherSuite.CHACHA20_POLY1305_SHA256
    )


def test_rfc9001_a5_needs_the_largest_packet_number():
    # Relative to 0 the 24-bit 0x00bff4 decodes to 49140: the nonce is wrong, the tag fails.
    observer = OneRttObserver(A5_SECRET, dcid_length=0, cipher_suite=0x1303)
    with pytest.raises(WireError) as caught:
        observer.open(A5_PACKET)
    assert caught.value.field == "packet protection"
    assert observer.largest_packet_number is None


# --- RFC 9000 §A.3 ------------------------------------------------------------------------


def test_rfc9000_a3_example():
    assert decode_packet_number(0xA82F30EA, 0x9B32, 16) == 0xA82F9B32


@pytest.mark.parametrize(
    ("largest", "truncated", "bits", "expected"),
    [
        (None, 0, 8, 0),
        (None, 0xFF, 8, 0xFF),
        (0xFF, 0x00, 8, 0x100),  # wraps forward
        (0x100, 0xFF, 8, 0xFF),  # just behind the expected one
        (0x17F, 0x00, 8, 0x200),
    ],
)
def test_packet_number_decoding(largest, truncated, bits, expected):
    assert decode_packet_number(largest, truncated, bits) == expected


@given(st.integers(0, 2**40), st.sampled_from([8, 16, 24, 32]), st.data())
def test_packet_number_decoding_matches_aioquic(largest, bits, data):
    truncated = data.draw(st.integers(0, (1 << bits) - 1))
    assert decode_packet_number(largest, truncated, bits) == aioquic_decode_packet_number(
        truncated, bits, largest + 1
    )


# --- key derivation against aioquic -----------------------------------------------------------


@pytest.mark.parametrize("version", [QUIC_V1, QUIC_V2])
@pytest.mark.parametrize("suite", list(AIOQUIC_SUITES))
def test_key_derivation_matches_aioquic(suite, version):
    secret = os.urandom(48 if suite is CipherSuite.AES_256_GCM_SHA384 else 32)
    ours = PacketProtection.from_secret(secret, suite, version)
    theirs = aioquic_crypto.derive_key_iv_hp(
        cipher_suite=AIOQUIC_SUITES[suite], secret=secret, version=version
    )
    assert (ours.key, ours.iv, ours.hp) == theirs
    context = aioquic_crypto.CryptoContext()
    context.setup(cipher_suite=AIOQUIC_SUITES[suite], secret=secret, version=version)
    following = aioquic_crypto.next_key_phase(context)
    assert ours.next_generation().secret == following.secret  # "quic ku" / "quicv2 ku"


def aioquic_short_packet(suite, secret, version, dcid, packet_number, payload, generation=0):
    """A short-header packet protected by aioquic (the oracle), 4-byte packet number, after
    `generation` key updates the way aioquic performs them (new AEAD, same HP key)."""
    context = aioquic_crypto.CryptoContext()
    context.setup(cipher_suite=AIOQUIC_SUITES[suite], secret=secret, version=version)
    for _ in range(generation):
        aioquic_crypto.apply_key_phase(
            context, aioquic_crypto.next_key_phase(context), trigger="test"
        )
    key_phase = generation % 2
    first = 0x40 | (key_phase << 2) | 0x03
    header = bytes([first]) + dcid + (packet_number & 0xFFFFFFFF).to_bytes(4, "big")
    return context.encrypt_packet(header, payload, packet_number)


@pytest.mark.parametrize("version", [QUIC_V1, QUIC_V2])
@pytest.mark.parametrize("suite", list(AIOQUIC_SUITES))
def test_packets_protected_by_aioquic_open(suite, version):
    secret = os.urandom(48 if suite is CipherSuite.AES_256_GCM_SHA384 else 32)
    dcid = os.urandom(8)
    payload = b"\x01" + bytes(30)
    observer = OneRttObserver(secret, dcid_length=8, version=version)  # suite by trial
    for packet_number in (0, 1, 2, 300, 70_000):
        packet = aioquic_short_packet(suite, secret, version, dcid, packet_number, payload)
        opened = observer.open(packet)
        assert (opened.packet_number, opened.dcid, opened.payload) == (packet_number, dcid, payload)
    assert observer.cipher_suite is suite


def test_aes_128_ccm_opens():
    # aioquic has no CCM: protect by hand (RFC 9001 §5.3 AEAD, §5.4.3 AES header protection).
    secret = os.urandom(32)
    keys = PacketProtection.from_secret(secret, CipherSuite.AES_128_CCM_SHA256)
    dcid, packet_number, payload = b"\x11" * 4, 5, b"\x01" + bytes(20)
    header = bytes([0x41]) + dcid + packet_number.to_bytes(2, "big")
    protected = AESCCM(keys.key).encrypt(keys.nonce(packet_number), payload, header)
    sample = protected[2:18]  # 4 bytes after the packet number offset, pn is 2 bytes
    mask = Cipher(algorithms.AES(keys.hp), modes.ECB()).encryptor().update(sample)
    packet = (
        bytes([header[0] ^ (mask[0] & 0x1F)])
        + dcid
        + bytes(b ^ m for b, m in zip(header[5:], mask[1:3], strict=True))
        + protected
    )
    observer = OneRttObserver(secret, dcid_length=4, cipher_suite=CipherSuite.AES_128_CCM_SHA256)
    assert observer.open(packet).payload == payload


@pytest.mark.parametrize(
    ("secret", "suite", "field"),
    [
        (bytes(32), CipherSuite.AES_256_GCM_SHA384, "cipher suite"),
        (bytes(48), CipherSuite.AES_128_GCM_SHA256, "cipher suite"),
        (bytes(32), 0x1305, "cipher suite"),  # AES_128_CCM_8: not for QUIC
        (bytes(20), None, "traffic secret"),
    ],
)
def test_bad_keys_are_wire_errors(secret, suite, field):
    with pytest.raises(WireError) as caught:
        OneRttObserver(secret, dcid_length=8, cipher_suite=suite)
    assert caught.value.field == field


def test_unknown_version_and_dcid_length_are_wire_errors():
    with pytest.raises(WireError) as caught:
        OneRttObserver(bytes(32), dcid_length=8, version=0x1A2A3A4A)
    assert caught.value.field == "version"
    with pytest.raises(WireError) as caught:
        OneRttObserver(bytes(32), dcid_length=21)
    assert caught.value.field == "short DCID length"


# --- key phases, synthetic --------------------------------------------------------------------


def test_key_updates_reordering_and_a_missed_generation():
    suite = CipherSuite.AES_128_GCM_SHA256
    secret = os.urandom(32)
    dcid = b"\x22" * 8

    def packet(generation, packet_number):
        return aioquic_short_packet(
            suite, secret, QUIC_V1, dcid, packet_number, b"\x01" + bytes(20), generation
        )

    observer = OneRttObserver(secret, dcid_length=8, cipher_suite=suite)
    opened = [observer.open(packet(g, pn)) for g, pn in [(0, 0), (0, 1), (1, 3), (1, 4)]]
    assert [p.generation for p in opened] == [0, 0, 1, 1]
    # A late packet of generation 0 (number below generation 1's first): the previous keys.
    late = observer.open(packet(0, 2))
    assert (late.generation, late.key_phase, late.packet_number) == (0, 0, 2)
    # Generation 2 reuses key phase 0; generation 3 is then skipped entirely (no packet
    # seen) and generation 4 still opens, within max_skipped_updates=1.
    assert observer.open(packet(2, 5)).generation == 2
    assert observer.open(packet(4, 6)).generation == 4
    assert observer.generation == 4
    # Generation 0 is long gone: its packet no longer authenticates.
    with pytest.raises(WireError):
        observer.open(packet(0, 7))


# --- a real aioquic connection --------------------------------------------------------------


def open_all(connection: MemoryConnection, *, from_client: bool, cipher_suite=None):
    (secrets,) = parse_key_log(connection.keylog.getvalue()).with_one_rtt()
    receiver_cid_length = 8  # aioquic's default on both sides
    observer = OneRttObserver.from_key_log(
        secrets,
        from_client=from_client,
        dcid_length=receiver_cid_length,
        cipher_suite=cipher_suite,
    )
    packets = []
    for datagram in connection.datagrams:
        if datagram.from_client == from_client:
            packet = observer.open(datagram.payload)
            if packet is not None:
                packets.append(packet)
    return observer, packets


def new_connection_ids(packets):
    return [f for p in packets for f in p.frames if isinstance(f, NewConnectionIdFrame)]


@pytest.mark.parametrize(
    "suite",
    [None, AioquicSuite.AES_128_GCM_SHA256, AioquicSuite.CHACHA20_POLY1305_SHA256],
)
def test_new_connection_ids_of_a_real_connection(suite):
    connection = MemoryConnection(cipher_suites=None if suite is None else [suite])
    connection.handshake()
    connection.send_data()
    observer, packets = open_all(connection, from_client=False)
    issued = new_connection_ids(packets)
    # Everything the server announced is what the client holds as spare CIDs.
    assert [f.connection_id for f in issued] == connection.client_known_server_cids()[1:]
    assert [f.sequence_number for f in issued] == list(range(1, len(issued) + 1))
    assert [f.stateless_reset_token for f in issued] == [
        c.stateless_reset_token for c in connection.client._peer_cid_available
    ]
    # And the other direction: the client's CIDs, as the server holds them.
    _, client_packets = open_all(connection, from_client=True)
    assert [f.connection_id for f in new_connection_ids(client_packets)] == [
        c.cid for c in connection.server._peer_cid_available
    ]
    assert all(p.dcid == connection.client_issued_cids()[0] for p in packets)
    expected_suite = CipherSuite.AES_256_GCM_SHA384 if suite is None else CipherSuite(suite)
    assert observer.cipher_suite is expected_suite  # learnt by trial


def test_new_connection_ids_after_key_updates():
    connection = MemoryConnection()
    connection.handshake()
    connection.send_data()
    before = connection.client_known_server_cids()[1:]
    connection.client.request_key_update()
    connection.send_data()
    # Switching CID retires one; the server replaces it with a NEW_CONNECTION_ID sent with
    # the updated keys.
    connection.client.change_connection_id()
    connection.send_data()
    connection.client.request_key_update()
    connection.send_data()
    connection.client.change_connection_id()
    connection.send_data()

    observer, packets = open_all(connection, from_client=False)
    assert observer.generation == 2
    assert {p.generation for p in packets} == {0, 1, 2}
    by_generation = {
        g: new_connection_ids([p for p in packets if p.generation == g]) for g in (0, 1, 2)
    }
    assert [f.connection_id for f in by_generation[0]] == before
    replacements = [f.connection_id for f in by_generation[1] + by_generation[2]]
    assert len(replacements) == 2
    assert replacements == [c.cid for c in connection.client._peer_cid_available][-2:]
    # Every CID the client can still use was seen on the wire.
    seen = {f.connection_id for f in new_connection_ids(packets)}
    assert set(connection.client_known_server_cids()) <= seen
    # The client's packets flipped key phase too and carried its RETIRE_CONNECTION_IDs.
    client_observer, client_packets = open_all(connection, from_client=True)
    assert client_observer.generation == 2
    retired = [
        f.sequence_number
        for p in client_packets
        for f in p.frames
        if isinstance(f, RetireConnectionIdFrame)
    ]
    assert retired == [0, 1]


def test_hello_observer_reads_client_random_and_suite():
    connection = MemoryConnection(cipher_suites=[AioquicSuite.CHACHA20_POLY1305_SHA256])
    connection.handshake()
    hellos = HelloObserver()
    for datagram in connection.datagrams:
        hellos.add(datagram.payload, from_client=datagram.from_client)
    assert hellos.complete
    assert hellos.client_random == connection.client.tls.client_random
    assert hellos.cipher_suite is CipherSuite.CHACHA20_POLY1305_SHA256
    assert parse_key_log(connection.keylog.getvalue()).get(hellos.client_random) is not None


def test_server_hello_prefix():
    assert server_hello_cipher_suite(b"") is None
    hello = bytes([2, 0, 0, 80, 3, 3]) + bytes(32) + bytes([0]) + b"\x13\x01"
    assert server_hello_cipher_suite(hello[:-1]) is None
    assert server_hello_cipher_suite(hello) is CipherSuite.AES_128_GCM_SHA256
    with pytest.raises(WireError) as caught:
        server_hello_cipher_suite(b"\x01" + hello[1:])
    assert caught.value.field == "server hello"


# --- robustness -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_traffic():
    connection = MemoryConnection(cipher_suites=[AioquicSuite.AES_128_GCM_SHA256])
    connection.handshake()
    connection.send_data()
    (secrets,) = parse_key_log(connection.keylog.getvalue()).with_one_rtt()
    datagrams = [d.payload for d in connection.datagrams if not d.from_client]
    short = [d for d in datagrams if not d[0] & 0x80]
    return secrets, short


def server_observer(secrets):
    return OneRttObserver.from_key_log(
        secrets, from_client=False, dcid_length=8, cipher_suite=0x1301
    )


def test_every_truncation_of_a_real_packet_is_a_wire_error(real_traffic):
    secrets, short = real_traffic
    packet = short[0]
    for cut in range(len(packet)):
        observer = server_observer(secrets)
        with pytest.raises(WireError):
            observer.open(packet[:cut])
        assert observer.open(packet) is not None  # the state survived the garbage


def test_every_bit_flip_of_a_real_packet_is_rejected(real_traffic):
    secrets, short = real_traffic
    packet = short[0]
    for index in range(len(packet)):
        for bit in range(8):
            garbled = bytearray(packet)
            garbled[index] ^= 1 << bit
            observer = server_observer(secrets)
            try:
                assert observer.open(bytes(garbled)) is None  # became a long header
            except WireError as exc:
                assert exc.field  # every error names its field
            assert observer.open(packet) is not None


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_mutated_real_packets_raise_only_wire_errors(real_traffic, data):
    secrets, short = real_traffic
    packet = bytearray(data.draw(st.sampled_from(short)))
    for _ in range(data.draw(st.integers(1, 4))):
        action = data.draw(st.sampled_from(["flip", "cut", "extend", "byte"]))
        if action == "flip" and packet:
            packet[data.draw(st.integers(0, len(packet) - 1))] ^= 1 << data.draw(st.integers(0, 7))
        elif action == "cut":
            del packet[data.draw(st.integers(0, len(packet))) :]
        elif action == "extend":
            packet += data.draw(st.binary(max_size=40))
        elif packet:
            packet[data.draw(st.integers(0, len(packet) - 1))] = data.draw(st.integers(0, 255))
    observer = server_observer(secrets)
    with contextlib.suppress(WireError):
        observer.open(bytes(packet))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1500), st.integers(0, 20), st.sampled_from([32, 48]))
def test_arbitrary_bytes_raise_only_wire_errors(datagram, dcid_length, secret_length):
    observer = OneRttObserver(bytes(secret_length), dcid_length=dcid_length)
    with contextlib.suppress(WireError):
        assert observer.open(datagram) is None  # an all-zero key never authenticates these


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=1300), max_size=6), st.booleans())
def test_hello_observer_raises_only_wire_errors(datagrams, from_client):
    hellos = HelloObserver()
    for datagram in datagrams:
        with contextlib.suppress(WireError):
            hellos.add(datagram, from_client=from_client)
    for initial in (vectors.CLIENT_INITIAL_V1, vectors.SERVER_INITIAL_V1):
        for cut in range(0, len(initial), 97):
            with contextlib.suppress(WireError):
                HelloObserver(vectors.ORIGINAL_DCID).add(initial[:cut], from_client=True)


@pytest.mark.parametrize(("truncated", "bits"), [(256, 8), (-1, 8), (0, 12)])
def test_impossible_truncated_packet_numbers_are_wire_errors(truncated, bits):
    with pytest.raises(WireError) as caught:
        decode_packet_number(None, truncated, bits)
    assert caught.value.field == "packet number"
