"""Frames with their fields (frames.parse_frame_list / walk_frame_list, RFC 9000 §19)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qasm.wire import WireError, parse_frames
from qasm.wire.frames import (
    AckFrame,
    ConnectionCloseFrame,
    CryptoFrame,
    NewConnectionIdFrame,
    OtherFrame,
    PaddingFrame,
    PathChallengeFrame,
    PathResponseFrame,
    RetireConnectionIdFrame,
    StreamFrame,
    frame_name,
    parse_frame_list,
    walk_frame_list,
)
from tests.wire.test_frames import ALL_FRAMES, frame


def test_every_frame_type_comes_back_in_the_order_parse_frames_names_them():
    frames = parse_frame_list(ALL_FRAMES)
    assert tuple(frame_name(f) for f in frames) == parse_frames(ALL_FRAMES).frame_types


def test_fields_of_the_frames_an_observer_of_migration_reads():
    token = bytes(range(16))
    payload = (
        frame(0x18, 7, 3, bytes([4]), b"\x01\x02\x03\x04", token)
        + frame(0x19, 2)
        + frame(0x1A, b"challng!")
        + frame(0x1B, b"response")
        + frame(0x03, 10, 5, 1, 2, 1, 3, 7, 8, 9)
        + frame(0x0F, 4, 100, 2, b"hi")
        + frame(0x06, 0, 3, b"abc")
        + frame(0x1C, 0x0A, 0x06, 3, b"why")
        + frame(0x1D, 0, 0)
        + frame(0x01)
        + bytes(5)
    )
    assert parse_frame_list(payload) == (
        NewConnectionIdFrame(
            sequence_number=7,
            retire_prior_to=3,
            connection_id=b"\x01\x02\x03\x04",
            stateless_reset_token=token,
        ),
        RetireConnectionIdFrame(sequence_number=2),
        PathChallengeFrame(data=b"challng!"),
        PathResponseFrame(data=b"response"),
        # largest 10, first range 2 -> 8..10; gap 1, length 3 -> largest 8-1-2=5, 2..5
        AckFrame(
            largest_acknowledged=10, ack_delay=5, ranges=((8, 10), (2, 5)), ecn_counts=(7, 8, 9)
        ),
        StreamFrame(stream_id=4, offset=100, data=b"hi", fin=True),
        CryptoFrame(offset=0, data=b"abc"),
        ConnectionCloseFrame(error_code=0x0A, frame_type=0x06, reason=b"why", application=False),
        ConnectionCloseFrame(error_code=0, frame_type=None, reason=b"", application=True),
        OtherFrame(name="ping", frame_type=0x01),
        PaddingFrame(length=5),
    )


def test_stream_without_length_runs_to_the_end():
    (stream,) = parse_frame_list(frame(0x08, 0, b"to the end"))
    assert stream == StreamFrame(stream_id=0, offset=0, data=b"to the end", fin=False)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        (b"", "frame type"),
        (frame(0x18, 1, 2, bytes([4]), bytes(20)), "retire prior to"),  # RPT > sequence
        (frame(0x18, 1, 0, bytes([21]), bytes(40)), "connection id length"),
        (frame(0x18, 1, 0, bytes([4]), bytes(10)), "new_connection_id frame"),  # truncated
        (frame(0x02, 3, 0, 0, 4), "ack range"),  # first range below 0
        (frame(0x02, 5, 0, 1, 0, 4, 0), "ack range"),  # later range below 0
        (frame(0x02, 5, 0, 1000, 0), "ack range count"),
        (frame(0x1A, b"short"), "path_challenge frame"),
        (frame(0x40, 0), "frame type"),  # unknown type 0x40 (a two-byte varint 0x4000)
    ],
)
def test_malformed_frames_raise_wire_error_naming_the_field(payload, field):
    with pytest.raises(WireError) as caught:
        parse_frame_list(payload)
    assert caught.value.field == field


def test_walk_keeps_the_frames_before_an_error():
    frames, error = walk_frame_list(frame(0x01) + frame(0x19, 4) + b"\x3f")
    assert frames == (OtherFrame("ping", 1), RetireConnectionIdFrame(4))
    assert error is not None and error.field == "frame type"


@given(st.binary(max_size=1500))
def test_arbitrary_payloads_parse_or_raise_wire_error(payload):
    with contextlib.suppress(WireError):
        for parsed in parse_frame_list(payload):
            assert frame_name(parsed)
    frames, error = walk_frame_list(payload)
    assert error is None or isinstance(error, WireError)
