"""Frames of a decrypted QUIC v1/v2 packet payload (RFC 9000 §19, RFC 9221 §4).

An observer needs two things from a decrypted Initial: the CRYPTO data (to reassemble the
ClientHello) and the list of frame types (to report what the packet carried). Every frame is
therefore walked, not interpreted: RFC 9312 §3.4.1 notes that an unknown frame type cannot be
skipped because its length is unknown, so it ends parsing with a WireError.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aioquic.buffer import Buffer, BufferReadError

from qasm.wire.errors import WireError

MAX_VARINT = (1 << 62) - 1  # RFC 9000 §16
MAX_CID_LENGTH = 20
STATELESS_RESET_TOKEN_LENGTH = 16
PATH_DATA_LENGTH = 8


@dataclass(frozen=True, slots=True)
class CryptoFrame:
    """RFC 9000 §19.6: `data` belongs at `offset` of the packet number space's crypto stream."""

    offset: int
    data: bytes


@dataclass(frozen=True, slots=True)
class PayloadFrames:
    """What a decrypted payload carried: frame type names in order (runs of PADDING count
    once, so a padded Initial reads ["crypto", "padding"]) and its CRYPTO frames."""

    frame_types: tuple[str, ...]
    crypto: tuple[CryptoFrame, ...]


def parse_frames(payload: bytes) -> PayloadFrames:
    """Walk every frame of a decrypted payload. Raises WireError on any malformed frame."""
    if not payload:
        # RFC 9000 §12.4: a packet must contain at least one frame.
        raise WireError("no frames in payload", field="frame type", offset=0)
    buf = Buffer(data=payload)
    end = len(payload)
    names: list[str] = []
    crypto: list[CryptoFrame] = []
    while buf.tell() < end:
        start = buf.tell()
        try:
            frame_type = buf.pull_uint_var()
        except BufferReadError:
            raise WireError("truncated", field="frame type", offset=start) from None
        entry = FRAME_TABLE.get(frame_type)
        if entry is None:
            raise WireError(
                f"unknown frame type 0x{frame_type:x}; its length cannot be known "
                "(RFC 9312 §3.4.1)",
                field="frame type",
                offset=start,
            )
        name, skip = entry
        try:
            frame = skip(buf, frame_type)
        except BufferReadError:
            raise WireError("truncated", field=f"{name} frame", offset=start) from None
        if frame is not None:
            crypto.append(frame)
        if not (name == "padding" and names and names[-1] == "padding"):
            names.append(name)
    return PayloadFrames(frame_types=tuple(names), crypto=tuple(crypto))


def _pull_length_prefixed(buf: Buffer, what: str) -> bytes:
    at = buf.tell()
    length = buf.pull_uint_var()
    remaining = buf.capacity - buf.tell()
    if length > remaining:
        raise WireError(f"says {length} bytes, {remaining} remain", field=what, offset=at)
    return buf.pull_bytes(length)


def _no_fields(buf: Buffer, frame_type: int) -> None:
    return None


def _varints(count: int) -> Callable[[Buffer, int], None]:
    def skip(buf: Buffer, frame_type: int) -> None:
        for _ in range(count):
            buf.pull_uint_var()

    return skip


def _ack(buf: Buffer, frame_type: int) -> None:
    # RFC 9000 §19.3: Largest Acknowledged, ACK Delay, ACK Range Count, First ACK Range,
    # then Range Count pairs of (Gap, ACK Range Length), then ECN Counts for type 0x03.
    buf.pull_uint_var()
    buf.pull_uint_var()
    at = buf.tell()
    range_count = buf.pull_uint_var()
    buf.pull_uint_var()
    # Each further range takes at least two bytes: refuse a count the packet cannot hold
    # before looping over it.
    if range_count > (buf.capacity - buf.tell()) // 2:
        raise WireError(
            f"{range_count} ranges cannot fit in the packet", field="ack range count", offset=at
        )
    for _ in range(range_count):
        buf.pull_uint_var()
        buf.pull_uint_var()
    if frame_type == 0x03:
        for _ in range(3):
            buf.pull_uint_var()


def _crypto(buf: Buffer, frame_type: int) -> CryptoFrame:
    # RFC 9000 §19.6: Offset (i), Length (i), Crypto Data (..)
    offset = buf.pull_uint_var()
    at = buf.tell()
    data = _pull_length_prefixed(buf, "crypto length")
    if offset + len(data) > MAX_VARINT:
        raise WireError("offset + length exceeds 2^62-1", field="crypto offset", offset=at)
    return CryptoFrame(offset=offset, data=data)


def _new_token(buf: Buffer, frame_type: int) -> None:
    _pull_length_prefixed(buf, "token length")


def _stream(buf: Buffer, frame_type: int) -> None:
    # RFC 9000 §19.8: OFF (0x04), LEN (0x02) and FIN (0x01) bits select optional fields;
    # without LEN the data runs to the end of the packet.
    buf.pull_uint_var()
    if frame_type & 0x04:
        buf.pull_uint_var()
    if frame_type & 0x02:
        _pull_length_prefixed(buf, "stream data length")
    else:
        buf.seek(buf.capacity)


def _new_connection_id(buf: Buffer, frame_type: int) -> None:
    # RFC 9000 §19.15: Sequence Number, Retire Prior To, Length (8), CID, Reset Token (128)
    buf.pull_uint_var()
    buf.pull_uint_var()
    at = buf.tell()
    length = buf.pull_uint8()
    if not 1 <= length <= MAX_CID_LENGTH:
        raise WireError(f"{length} is not 1..20", field="connection id length", offset=at)
    buf.pull_bytes(length + STATELESS_RESET_TOKEN_LENGTH)


def _path_data(buf: Buffer, frame_type: int) -> None:
    buf.pull_bytes(PATH_DATA_LENGTH)


def _connection_close(buf: Buffer, frame_type: int) -> None:
    # RFC 9000 §19.19: Error Code, [Frame Type (0x1c only)], Reason Phrase Length, Reason
    buf.pull_uint_var()
    if frame_type == 0x1C:
        buf.pull_uint_var()
    _pull_length_prefixed(buf, "reason phrase length")


def _datagram(buf: Buffer, frame_type: int) -> None:
    # RFC 9221 §4: 0x31 carries a Length, 0x30 runs to the end of the packet.
    if frame_type == 0x31:
        _pull_length_prefixed(buf, "datagram length")
    else:
        buf.seek(buf.capacity)


_FrameSkip = Callable[[Buffer, int], "CryptoFrame | None"]

# RFC 9000 §19 / §12.4 table 3, plus RFC 9221 DATAGRAM: type -> (name, field walker).
FRAME_TABLE: dict[int, tuple[str, _FrameSkip]] = {
    0x00: ("padding", _no_fields),
    0x01: ("ping", _no_fields),
    0x02: ("ack", _ack),
    0x03: ("ack", _ack),
    0x04: ("reset_stream", _varints(3)),
    0x05: ("stop_sending", _varints(2)),
    0x06: ("crypto", _crypto),
    0x07: ("new_token", _new_token),
    **{stream_type: ("stream", _stream) for stream_type in range(0x08, 0x10)},
    0x10: ("max_data", _varints(1)),
    0x11: ("max_stream_data", _varints(2)),
    0x12: ("max_streams", _varints(1)),
    0x13: ("max_streams", _varints(1)),
    0x14: ("data_blocked", _varints(1)),
    0x15: ("stream_data_blocked", _varints(2)),
    0x16: ("streams_blocked", _varints(1)),
    0x17: ("streams_blocked", _varints(1)),
    0x18: ("new_connection_id", _new_connection_id),
    0x19: ("retire_connection_id", _varints(1)),
    0x1A: ("path_challenge", _path_data),
    0x1B: ("path_response", _path_data),
    0x1C: ("connection_close", _connection_close),
    0x1D: ("connection_close", _connection_close),
    0x1E: ("handshake_done", _no_fields),
    0x30: ("datagram", _datagram),
    0x31: ("datagram", _datagram),
}


# --- Frames with their fields -------------------------------------------------------------
#
# `parse_frames` above only walks a payload (names and CRYPTO data: all an Initial observer
# needs). An observer of 1-RTT packets (see `qasm.wire.onertt`) needs the fields of the frames
# that carry connection IDs and path validation, so `parse_frame_list` returns one object per
# frame. Frames whose fields nobody here reads come back as `OtherFrame` (name and type), so
# the list still says what the packet carried, in order.


@dataclass(frozen=True, slots=True)
class OtherFrame:
    """A frame whose fields are walked but not kept (PING, MAX_DATA, HANDSHAKE_DONE, ...)."""

    name: str
    frame_type: int


@dataclass(frozen=True, slots=True)
class PaddingFrame:
    """RFC 9000 §19.1: a run of `length` PADDING bytes (one object per run)."""

    length: int


@dataclass(frozen=True, slots=True)
class AckFrame:
    """RFC 9000 §19.3: `ranges` are (smallest, largest) acknowledged, largest first;
    `ack_delay` is the raw field (scaled by the sender's ack_delay_exponent);
    `ecn_counts` (ECT0, ECT1, ECN-CE) for type 0x03 only."""

    largest_acknowledged: int
    ack_delay: int
    ranges: tuple[tuple[int, int], ...]
    ecn_counts: tuple[int, int, int] | None


@dataclass(frozen=True, slots=True)
class StreamFrame:
    """RFC 9000 §19.8."""

    stream_id: int
    offset: int
    data: bytes
    fin: bool


@dataclass(frozen=True, slots=True)
class NewConnectionIdFrame:
    """RFC 9000 §19.15: a CID the sender of the frame will accept as DCID."""

    sequence_number: int
    retire_prior_to: int
    connection_id: bytes
    stateless_reset_token: bytes


@dataclass(frozen=True, slots=True)
class RetireConnectionIdFrame:
    """RFC 9000 §19.16: the sequence number of a CID the frame's receiver had issued."""

    sequence_number: int


@dataclass(frozen=True, slots=True)
class PathChallengeFrame:
    """RFC 9000 §19.17."""

    data: bytes


@dataclass(frozen=True, slots=True)
class PathResponseFrame:
    """RFC 9000 §19.18: echoes the data of a PATH_CHALLENGE."""

    data: bytes


@dataclass(frozen=True, slots=True)
class ConnectionCloseFrame:
    """RFC 9000 §19.19: `frame_type` is None for the application variant (0x1d)."""

    error_code: int
    frame_type: int | None
    reason: bytes
    application: bool


Frame = (
    OtherFrame
    | PaddingFrame
    | AckFrame
    | StreamFrame
    | CryptoFrame
    | NewConnectionIdFrame
    | RetireConnectionIdFrame
    | PathChallengeFrame
    | PathResponseFrame
    | ConnectionCloseFrame
)

_FRAME_NAMES = {
    PaddingFrame: "padding",
    AckFrame: "ack",
    StreamFrame: "stream",
    CryptoFrame: "crypto",
    NewConnectionIdFrame: "new_connection_id",
    RetireConnectionIdFrame: "retire_connection_id",
    PathChallengeFrame: "path_challenge",
    PathResponseFrame: "path_response",
    ConnectionCloseFrame: "connection_close",
}


def frame_name(frame: Frame) -> str:
    """The frame's name as `parse_frames` spells it ("new_connection_id", "ping", ...)."""
    if isinstance(frame, OtherFrame):
        return frame.name
    return _FRAME_NAMES[type(frame)]


def parse_frame_list(payload: bytes) -> tuple[Frame, ...]:
    """Every frame of a decrypted payload with its fields. Raises WireError on any malformed
    or unknown frame (RFC 9312 §3.4.1: an unknown frame's length cannot be known)."""
    frames, error = walk_frame_list(payload)
    if error is not None:
        raise error
    return frames


def walk_frame_list(payload: bytes) -> tuple[tuple[Frame, ...], WireError | None]:
    """Like `parse_frame_list`, but returns the frames before a malformed or unknown one
    together with the error instead of raising: an observer keeps what it could read."""
    if not payload:
        return (), WireError("no frames in payload", field="frame type", offset=0)
    buf = Buffer(data=payload)
    end = len(payload)
    frames: list[Frame] = []
    while buf.tell() < end:
        start = buf.tell()
        try:
            frame_type = buf.pull_uint_var()
        except BufferReadError:
            return tuple(frames), WireError("truncated", field="frame type", offset=start)
        entry = FRAME_TABLE.get(frame_type)
        if entry is None:
            return tuple(frames), WireError(
                f"unknown frame type 0x{frame_type:x}; its length cannot be known "
                "(RFC 9312 §3.4.1)",
                field="frame type",
                offset=start,
            )
        name, skip = entry
        reader = _FRAME_READERS.get(name)
        try:
            if frame_type == 0x00:
                frames.append(_padding_run(buf, payload))
            elif reader is not None:
                frames.append(reader(buf, frame_type))
            else:
                skip(buf, frame_type)
                frames.append(OtherFrame(name=name, frame_type=frame_type))
        except BufferReadError:
            return tuple(frames), WireError("truncated", field=f"{name} frame", offset=start)
        except WireError as exc:
            return tuple(frames), exc
    return tuple(frames), None


def _padding_run(buf: Buffer, payload: bytes) -> PaddingFrame:
    # The type byte is already read; the run continues while the next byte is 0x00.
    start = buf.tell() - 1
    end = start + 1
    while end < len(payload) and payload[end] == 0:
        end += 1
    buf.seek(end)
    return PaddingFrame(length=end - start)


def _read_ack(buf: Buffer, frame_type: int) -> AckFrame:
    at = buf.tell()
    largest = buf.pull_uint_var()
    delay = buf.pull_uint_var()
    count_at = buf.tell()
    range_count = buf.pull_uint_var()
    if range_count > (buf.capacity - buf.tell()) // 2:
        raise WireError(
            f"{range_count} ranges cannot fit in the packet",
            field="ack range count",
            offset=count_at,
        )
    # RFC 9000 §19.3.1: smallest = largest - First ACK Range; each later range starts
    # Gap + 2 below the previous smallest. A negative number is a FRAME_ENCODING_ERROR.
    smallest = largest - buf.pull_uint_var()
    if smallest < 0:
        raise WireError(
            "first ack range exceeds largest acknowledged", field="ack range", offset=at
        )
    ranges = [(smallest, largest)]
    for _ in range(range_count):
        gap = buf.pull_uint_var()
        length = buf.pull_uint_var()
        range_largest = smallest - gap - 2
        smallest = range_largest - length
        if smallest < 0:
            raise WireError("ack range goes below packet number 0", field="ack range", offset=at)
        ranges.append((smallest, range_largest))
    ecn = None
    if frame_type == 0x03:
        ecn = (buf.pull_uint_var(), buf.pull_uint_var(), buf.pull_uint_var())
    return AckFrame(
        largest_acknowledged=largest, ack_delay=delay, ranges=tuple(ranges), ecn_counts=ecn
    )


def _read_stream(buf: Buffer, frame_type: int) -> StreamFrame:
    stream_id = buf.pull_uint_var()
    offset = buf.pull_uint_var() if frame_type & 0x04 else 0
    at = buf.tell()
    if frame_type & 0x02:
        data = _pull_length_prefixed(buf, "stream data length")
    else:
        data = buf.pull_bytes(buf.capacity - buf.tell())
    if offset + len(data) > MAX_VARINT:
        raise WireError("offset + length exceeds 2^62-1", field="stream offset", offset=at)
    return StreamFrame(stream_id=stream_id, offset=offset, data=data, fin=bool(frame_type & 1))


def _read_new_connection_id(buf: Buffer, frame_type: int) -> NewConnectionIdFrame:
    at = buf.tell()
    sequence_number = buf.pull_uint_var()
    retire_prior_to = buf.pull_uint_var()
    if retire_prior_to > sequence_number:
        # RFC 9000 §19.15: "MUST be less than or equal to the value in the Sequence Number".
        raise WireError(
            f"retire prior to {retire_prior_to} exceeds sequence number {sequence_number}",
            field="retire prior to",
            offset=at,
        )
    length_at = buf.tell()
    length = buf.pull_uint8()
    if not 1 <= length <= MAX_CID_LENGTH:
        raise WireError(f"{length} is not 1..20", field="connection id length", offset=length_at)
    connection_id = buf.pull_bytes(length)
    token = buf.pull_bytes(STATELESS_RESET_TOKEN_LENGTH)
    return NewConnectionIdFrame(
        sequence_number=sequence_number,
        retire_prior_to=retire_prior_to,
        connection_id=connection_id,
        stateless_reset_token=token,
    )


def _read_retire_connection_id(buf: Buffer, frame_type: int) -> RetireConnectionIdFrame:
    return RetireConnectionIdFrame(sequence_number=buf.pull_uint_var())


def _read_path_challenge(buf: Buffer, frame_type: int) -> PathChallengeFrame:
    return PathChallengeFrame(data=buf.pull_bytes(PATH_DATA_LENGTH))


def _read_path_response(buf: Buffer, frame_type: int) -> PathResponseFrame:
    return PathResponseFrame(data=buf.pull_bytes(PATH_DATA_LENGTH))


def _read_connection_close(buf: Buffer, frame_type: int) -> ConnectionCloseFrame:
    error_code = buf.pull_uint_var()
    offending = buf.pull_uint_var() if frame_type == 0x1C else None
    reason = _pull_length_prefixed(buf, "reason phrase length")
    return ConnectionCloseFrame(
        error_code=error_code,
        frame_type=offending,
        reason=reason,
        application=frame_type == 0x1D,
    )


_FRAME_READERS: dict[str, Callable[[Buffer, int], Frame]] = {
    "ack": _read_ack,
    "stream": _read_stream,
    "crypto": _crypto,
    "new_connection_id": _read_new_connection_id,
    "retire_connection_id": _read_retire_connection_id,
    "path_challenge": _read_path_challenge,
    "path_response": _read_path_response,
    "connection_close": _read_connection_close,
}
