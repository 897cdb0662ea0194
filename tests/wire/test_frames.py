"""Frame walking of decrypted payloads (RFC 9000 §19)."""

from __future__ import annotations

import contextlib

import pytest
from aioquic.buffer import Buffer

from qasm.wire import WireError, parse_frames


def frame(*fields: int | bytes) -> bytes:
    """One frame: ints are varints (the first is the frame type), bytes are copied as is."""
    buf = Buffer(capacity=4096)
    for value in fields:
        if isinstance(value, int):
            buf.push_uint_var(value)
        else:
            buf.push_bytes(value)
    return buf.data


ALL_FRAMES = b"".join(
    [
        frame(0x01),  # PING
        frame(0x02, 10, 0, 1, 2, 1, 1),  # ACK: largest, delay, 1 more range, first range
        frame(0x03, 5, 0, 0, 0, 1, 2, 3),  # ACK with ECN counts
        frame(0x04, 0, 1, 2),  # RESET_STREAM
        frame(0x05, 0, 1),  # STOP_SENDING
        frame(0x06, 7, 3, b"abc"),  # CRYPTO at offset 7
        frame(0x07, 2, b"tk"),  # NEW_TOKEN
        frame(0x0E, 4, 100, 2, b"hi"),  # STREAM with OFF and LEN
        frame(0x10, 1),  # MAX_DATA
        frame(0x11, 0, 1),  # MAX_STREAM_DATA
        frame(0x12, 1),  # MAX_STREAMS (bidi)
        frame(0x13, 1),  # MAX_STREAMS (uni)
        frame(0x14, 1),  # DATA_BLOCKED
        frame(0x15, 0, 1),  # STREAM_DATA_BLOCKED
        frame(0x16, 1),  # STREAMS_BLOCKED (bidi)
        frame(0x17, 1),  # STREAMS_BLOCKED (uni)
        frame(0x18, 1, 0, bytes([4]), bytes(4 + 16)),  # NEW_CONNECTION_ID
        frame(0x19, 1),  # RETIRE_CONNECTION_ID
        frame(0x1A, bytes(8)),  # PATH_CHALLENGE
        frame(0x1B, bytes(8)),  # PATH_RESPONSE
        frame(0x1C, 0x0A, 0x06, 3, b"why"),  # CONNECTION_CLOSE (transport)
        frame(0x1D, 0, 0),  # CONNECTION_CLOSE (application)
        frame(0x1E),  # HANDSHAKE_DONE
        frame(0x31, 2, b"dg"),  # DATAGRAM with Length
        frame(0x00) * 3,  # a run of PADDING
        frame(0x08, 0, b"stream data to the end"),  # STREAM without LEN
    ]
)


def test_every_v1_frame_type_is_walked_in_order():
    parsed = parse_frames(ALL_FRAMES)
    assert parsed.frame_types == (
        "ping", "ack", "ack", "reset_stream", "stop_sending", "crypto", "new_token", "stream",
        "max_data", "max_stream_data", "max_streams", "max_streams", "data_blocked",
        "stream_data_blocked", "streams_blocked", "streams_blocked", "new_connection_id",
        "retire_connection_id", "path_challenge", "path_response", "connection_close",
        "connection_close", "handshake_done", "datagram", "padding", "stream",
    )  # fmt: skip
    (crypto,) = parsed.crypto
    assert (crypto.offset, crypto.data) == (7, b"abc")


def test_every_truncation_of_a_valid_payload_is_a_wire_error_or_a_prefix():
    for cut in range(len(ALL_FRAMES)):
        with contextlib.suppress(WireError):
            parse_frames(ALL_FRAMES[:cut])


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "no frames"),
        (frame(0x21), "unknown frame type 0x21"),
        (frame(0x06, 0, 50, b"short"), "says 50 bytes"),
        (frame(0x06, (1 << 62) - 2, 3, b"abc"), r"2\^62"),
        (frame(0x02, 1, 0, 1_000_000, 0), "cannot fit"),
        (frame(0x18, 1, 0, bytes([21]), bytes(40)), "not 1..20"),
        (b"\x40", "truncated"),  # a 2-byte varint frame type cut short
        (frame(0x1A, bytes(7)), "truncated"),
    ],
)
def test_malformed_frames(payload, message):
    with pytest.raises(WireError, match=message):
        parse_frames(payload)
