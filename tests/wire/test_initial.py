"""Initial decryption, CRYPTO reassembly and ClientHello parsing against RFC 9001/9369 vectors."""

from __future__ import annotations

import itertools
import random

import pytest
from aioquic.quic.crypto import CryptoPair

from qasm.wire import (
    QUIC_V1,
    QUIC_V2,
    ClientHelloAssembler,
    CryptoFrame,
    CryptoStreamReassembly,
    Sender,
    WireError,
    decrypt_initial,
    open_initial,
    parse_client_hello,
    parse_datagram,
)
from qasm.wire.initial import initial_secret
from tests.wire import vectors


@pytest.mark.parametrize(
    ("version", "client_secret", "server_secret"),
    [
        (QUIC_V1, vectors.CLIENT_INITIAL_SECRET_V1, vectors.SERVER_INITIAL_SECRET_V1),
        (QUIC_V2, vectors.CLIENT_INITIAL_SECRET_V2, vectors.SERVER_INITIAL_SECRET_V2),
    ],
)
def test_initial_secrets_match_the_rfc(version, client_secret, server_secret):
    assert initial_secret(vectors.ORIGINAL_DCID, version, Sender.CLIENT) == client_secret
    assert initial_secret(vectors.ORIGINAL_DCID, version, Sender.SERVER) == server_secret


@pytest.mark.parametrize("packet", [vectors.CLIENT_INITIAL_V1, vectors.CLIENT_INITIAL_V2])
def test_client_initial_vector_decrypts_to_the_rfc_payload(packet):
    (header,) = parse_datagram(packet, 8)
    decrypted = decrypt_initial(packet, header, sender=Sender.CLIENT, key_dcid=header.dcid)
    assert decrypted.packet_number == vectors.CLIENT_INITIAL_PACKET_NUMBER
    assert decrypted.payload == vectors.CLIENT_INITIAL_PAYLOAD
    assert decrypted.frames.frame_types == ("crypto", "padding")
    (crypto,) = decrypted.frames.crypto
    assert (crypto.offset, len(crypto.data)) == (0, 0xF1)


@pytest.mark.parametrize("packet", [vectors.CLIENT_INITIAL_V1, vectors.CLIENT_INITIAL_V2])
def test_client_initial_vector_yields_sni_and_alpn(packet):
    # The RFC's ClientHello names example.com and offers the single ALPN "alpn".
    (header,) = parse_datagram(packet, 8)
    hello = ClientHelloAssembler().add_packet(packet, header)
    assert hello is not None
    assert hello.sni == "example.com"
    assert hello.alpn == ("alpn",)


@pytest.mark.parametrize("packet", [vectors.SERVER_INITIAL_V1, vectors.SERVER_INITIAL_V2])
def test_server_initial_decrypts_with_the_clients_original_dcid(packet):
    (header,) = parse_datagram(packet, 8)
    assert header.dcid == b"" and header.scid.hex() == "f067a5502a4262b5"
    decrypted = open_initial(packet, header, original_dcid=vectors.ORIGINAL_DCID)
    assert decrypted.sender is Sender.SERVER
    assert decrypted.packet_number == vectors.SERVER_INITIAL_PACKET_NUMBER
    assert decrypted.frames.frame_types == ("ack", "crypto")
    # The CRYPTO frame carries a ServerHello (handshake type 2) of 0x56 bytes.
    (crypto,) = decrypted.frames.crypto
    assert crypto.data[0] == 2 and len(crypto.data) == 0x5A


def test_server_initial_without_original_dcid_is_a_wire_error_naming_the_need():
    (header,) = parse_datagram(vectors.SERVER_INITIAL_V1, 8)
    with pytest.raises(WireError, match="server Initial needs the client's DCID"):
        open_initial(vectors.SERVER_INITIAL_V1, header)


def test_wrong_original_dcid_does_not_authenticate():
    (header,) = parse_datagram(vectors.SERVER_INITIAL_V1, 8)
    with pytest.raises(WireError) as caught:
        open_initial(vectors.SERVER_INITIAL_V1, header, original_dcid=bytes(8))
    assert caught.value.field == "packet protection"


def test_a_single_flipped_ciphertext_bit_fails_authentication():
    damaged = bytearray(vectors.CLIENT_INITIAL_V1)
    damaged[600] ^= 0x01
    (header,) = parse_datagram(bytes(damaged), 8)
    with pytest.raises(WireError, match="does not decrypt|does not authenticate"):
        open_initial(bytes(damaged), header)


def test_decrypt_rejects_non_initial_packets():
    (header,) = parse_datagram(vectors.RETRY_V1, 8)
    with pytest.raises(WireError, match="not an Initial"):
        decrypt_initial(vectors.RETRY_V1, header, sender=Sender.CLIENT, key_dcid=b"")


def _client_initial(
    dcid: bytes, payload: bytes, *, packet_number: int, version: int = QUIC_V1
) -> bytes:
    """A client Initial protected by aioquic with keys from `dcid` (test fixture builder)."""
    from aioquic.buffer import Buffer
    from aioquic.quic.packet import QuicPacketType, encode_long_header_first_byte

    pair = CryptoPair()
    pair.setup_initial(dcid, is_client=True, version=version)
    buf = Buffer(capacity=64)
    buf.push_uint8(encode_long_header_first_byte(version, QuicPacketType.INITIAL, 0x03))
    buf.push_uint32(version)
    buf.push_uint8(len(dcid))
    buf.push_bytes(dcid)
    buf.push_uint8(0)  # SCID
    buf.push_uint_var(0)  # token length
    buf.push_uint16(0x4000 | (4 + len(payload) + 16))  # Length, 2-byte varint
    buf.push_uint32(packet_number)
    return pair.encrypt_packet(buf.data, payload, packet_number)


def _crypto_frame(offset: int, data: bytes) -> bytes:
    from aioquic.buffer import Buffer

    buf = Buffer(capacity=len(data) + 20)
    buf.push_uint_var(0x06)
    buf.push_uint_var(offset)
    buf.push_uint_var(len(data))
    buf.push_bytes(data)
    return buf.data


RFC_CLIENT_HELLO = vectors.CLIENT_INITIAL_PAYLOAD[4 : 4 + 0xF1]


def test_client_hello_split_across_packets_out_of_order_is_reassembled():
    dcid = bytes.fromhex("0011223344556677")
    first, second = RFC_CLIENT_HELLO[:100], RFC_CLIENT_HELLO[100:]
    later = _client_initial(dcid, _crypto_frame(100, second) + bytes(40), packet_number=1)
    earlier = _client_initial(dcid, _crypto_frame(0, first) + bytes(40), packet_number=0)
    assembler = ClientHelloAssembler()
    (header,) = parse_datagram(later, 8)
    assert assembler.add_packet(later, header) is None
    (header,) = parse_datagram(earlier, 8)
    hello = assembler.add_packet(earlier, header)
    assert hello is not None and hello.sni == "example.com" and hello.alpn == ("alpn",)


def test_a_later_client_initial_needs_the_original_dcid_for_its_keys(handshake):
    # aioquic's second client Initial (an ACK) addresses the server's CID, keyed as before.
    first, second = [d.payload for d in handshake.from_client()[:2]]
    (first_header,) = [h for h in parse_datagram(first, 8) if h.packet_type == "initial"]
    second_header = parse_datagram(second, 8)[0]
    assert second_header.packet_type == "initial" and second_header.dcid != first_header.dcid
    assembler = ClientHelloAssembler()
    with pytest.raises(WireError):
        assembler.add_packet(second, second_header)
    assert assembler.add_packet(second, second_header, original_dcid=first_header.dcid) is None


@pytest.mark.parametrize("seed", range(20))
def test_reassembly_of_any_fragmentation_and_order(seed):
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, len(RFC_CLIENT_HELLO)), rng.randint(1, 12)))
    bounds = [0, *cuts, len(RFC_CLIENT_HELLO)]
    frames = [
        CryptoFrame(offset=a, data=RFC_CLIENT_HELLO[a:b]) for a, b in itertools.pairwise(bounds)
    ]
    frames += rng.sample(frames, k=min(3, len(frames)))  # retransmissions
    rng.shuffle(frames)
    assembler = ClientHelloAssembler()
    results = [assembler.add_crypto([frame]) for frame in frames]
    assert results[-1] is not None and results[-1].sni == "example.com"
    assert sum(result is not None for result in results) >= 1


def test_overlapping_fragments_are_merged():
    stream = CryptoStreamReassembly()
    stream.add(10, RFC_CLIENT_HELLO[10:50])
    stream.add(30, RFC_CLIENT_HELLO[30:90])
    stream.add(0, RFC_CLIENT_HELLO[0:20])
    assert stream.prefix == RFC_CLIENT_HELLO[:90]


def test_reassembly_refuses_data_beyond_its_limit():
    stream = CryptoStreamReassembly(max_bytes=1000)
    with pytest.raises(WireError, match="limit"):
        stream.add(990, bytes(20))


def test_reassembly_refuses_too_many_pending_fragments():
    stream = CryptoStreamReassembly(max_bytes=10_000, max_fragments=4)
    for index in range(4):
        stream.add(100 + 10 * index, b"x")
    with pytest.raises(WireError, match="out-of-order fragments"):
        stream.add(500, b"x")


def test_assembler_rejects_a_client_hello_announcing_more_than_the_limit():
    assembler = ClientHelloAssembler(max_bytes=4096)
    header = bytes([1]) + (100_000).to_bytes(3, "big")
    with pytest.raises(WireError, match="exceeds"):
        assembler.add_crypto([CryptoFrame(0, header)])


def test_assembler_rejects_a_stream_that_is_not_a_client_hello():
    with pytest.raises(WireError, match="not ClientHello"):
        ClientHelloAssembler().add_crypto([CryptoFrame(0, bytes([2, 0, 0, 4, 0, 0, 0, 0]))])


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (b"", "client hello"),
        (bytes([2, 0, 0, 0]), "client hello"),
        (bytes([1, 0, 0, 9]) + bytes(4), "client hello length"),
        (bytes([1, 0, 0, 4, 3, 3, 0, 0]), "client hello"),  # truncated body
        (RFC_CLIENT_HELLO[:4] + bytes(len(RFC_CLIENT_HELLO) - 4), "client hello"),
    ],
)
def test_malformed_client_hellos_are_wire_errors(message, field):
    with pytest.raises(WireError) as caught:
        parse_client_hello(message)
    assert caught.value.field == field


def test_client_hello_without_sni_or_alpn():
    # Drop the server_name (0x0000) and ALPN (0x0010) extensions from the RFC ClientHello by
    # rebuilding it with aioquic; the observer reports None and an empty ALPN list.
    from aioquic.buffer import Buffer
    from aioquic.tls import pull_client_hello, push_client_hello

    hello = pull_client_hello(Buffer(data=RFC_CLIENT_HELLO))
    hello.server_name = None
    hello.alpn_protocols = None
    buf = Buffer(capacity=1000)
    push_client_hello(buf, hello)
    info = parse_client_hello(buf.data)
    assert info.sni is None and info.alpn == ()
