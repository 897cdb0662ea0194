"""The client's TLS ClientHello, reassembled from Initial CRYPTO frames (RFC 9312 §3.4.1).

CRYPTO frames may arrive out of order, overlap (retransmissions re-chunk data) and span
several Initial packets (post-quantum key shares push a ClientHello past one datagram). The
caller owns one `ClientHelloAssembler` per connection attempt, keyed as it likes (e.g. by
the client's original DCID), and drops it once `client_hello` is set. Buffers are bounded so a
hostile client cannot grow the state without limit.

The ClientHello itself is parsed by aioquic's `pull_client_hello`, guarded: it `assert`s on the
message type and raises `tls.Alert` (not a ValueError) or `BufferReadError`; all become
WireError here.
"""

from __future__ import annotations

from dataclasses import dataclass

from aioquic.buffer import Buffer, BufferReadError
from aioquic.tls import Alert, HandshakeType, pull_client_hello

from qasm.wire.errors import WireError
from qasm.wire.frames import CryptoFrame
from qasm.wire.header import PacketHeader
from qasm.wire.initial import Sender, decrypt_initial

HANDSHAKE_HEADER_LENGTH = 4  # RFC 8446 §4: msg_type (1), length (3)
# Real ClientHellos are 250-2,000 bytes (a few KB with post-quantum key shares and session
# tickets); 16 KiB leaves room for that and bounds what one connection attempt may buffer.
DEFAULT_MAX_CLIENT_HELLO_BYTES = 16 * 1024
# Out-of-order fragments held at once: a real client sends a handful; many tiny fragments
# would cost per-object overhead far above their payload.
DEFAULT_MAX_PENDING_FRAGMENTS = 32


@dataclass(frozen=True, slots=True)
class ClientHelloInfo:
    """What an observer learns from a cleartext ClientHello (RFC 9312 §3.4)."""

    sni: str | None
    alpn: tuple[str, ...]


def parse_client_hello(message: bytes) -> ClientHelloInfo:
    """Parse one complete TLS handshake message that must be a ClientHello."""
    if len(message) < HANDSHAKE_HEADER_LENGTH:
        raise WireError("truncated handshake header", field="client hello", offset=0)
    if message[0] != HandshakeType.CLIENT_HELLO:
        raise WireError(
            f"handshake type {message[0]} is not ClientHello (1)", field="client hello", offset=0
        )
    body_length = int.from_bytes(message[1:4], "big")
    if body_length != len(message) - HANDSHAKE_HEADER_LENGTH:
        raise WireError(
            f"length says {body_length} bytes, message has {len(message) - 4}",
            field="client hello length",
            offset=1,
        )
    buf = Buffer(data=message)
    try:
        hello = pull_client_hello(buf)
    except (Alert, BufferReadError) as exc:
        raise WireError(
            f"malformed ClientHello ({type(exc).__name__}: {exc})",
            field="client hello",
            offset=buf.tell(),
        ) from None
    return ClientHelloInfo(sni=hello.server_name, alpn=tuple(hello.alpn_protocols or ()))


class CryptoStreamReassembly:
    """Bounded reassembly of one crypto stream (RFC 9000 §19.6), from offset 0.

    Contiguous data is appended to `prefix`; out-of-order fragments wait in a small table
    until the gap before them fills.
    """

    __slots__ = ("max_bytes", "max_fragments", "_prefix", "_pending", "_pending_bytes")

    def __init__(
        self,
        max_bytes: int = DEFAULT_MAX_CLIENT_HELLO_BYTES,
        max_fragments: int = DEFAULT_MAX_PENDING_FRAGMENTS,
    ) -> None:
        self.max_bytes = max_bytes
        self.max_fragments = max_fragments
        self._prefix = bytearray()
        self._pending: dict[int, bytes] | None = None  # created on the first gap only
        self._pending_bytes = 0

    @property
    def prefix(self) -> bytes:
        return bytes(self._prefix)

    @property
    def pending(self) -> dict[int, bytes]:
        """Out-of-order fragments waiting for the gap before them, by offset."""
        return dict(self._pending or {})

    def resume(self, prefix: bytes, pending: dict[int, bytes]) -> CryptoStreamReassembly:
        """Carries on from a `prefix` and `pending` saved earlier (state kept as plain data,
        e.g. by a middlebox replica); the limits apply to it as if it had been added here."""
        self.add(0, prefix)
        for offset, data in sorted(pending.items()):
            self.add(offset, data)
        return self

    @property
    def contiguous_length(self) -> int:
        return len(self._prefix)

    def add(self, offset: int, data: bytes) -> None:
        end = offset + len(data)
        if end > self.max_bytes:
            raise WireError(
                f"data up to offset {end} exceeds the {self.max_bytes}-byte reassembly limit",
                field="crypto offset",
            )
        if end <= len(self._prefix):
            return  # a retransmission of data already held
        if offset > len(self._prefix):
            self._hold(offset, data)
            return
        self._prefix += data[len(self._prefix) - offset :]
        self._drain()

    def _hold(self, offset: int, data: bytes) -> None:
        if self._pending is None:
            self._pending = {}
        held = self._pending.get(offset)
        if held is not None and len(held) >= len(data):
            return
        if held is None and len(self._pending) >= self.max_fragments:
            raise WireError(
                f"more than {self.max_fragments} out-of-order fragments", field="crypto offset"
            )
        self._pending_bytes += len(data) - (len(held) if held else 0)
        if self._pending_bytes > self.max_bytes:
            raise WireError(
                f"more than {self.max_bytes} bytes waiting for a gap", field="crypto offset"
            )
        self._pending[offset] = data

    def _drain(self) -> None:
        pending = self._pending
        while pending:
            ready = [offset for offset in pending if offset <= len(self._prefix)]
            if not ready:
                return
            for offset in sorted(ready):
                data = pending.pop(offset)
                self._pending_bytes -= len(data)
                if offset + len(data) > len(self._prefix):
                    self._prefix += data[len(self._prefix) - offset :]
        self._pending = None
        self._pending_bytes = 0


class ClientHelloAssembler:
    """Per-connection-attempt state: feed it the client's Initials, get the ClientHello.

    Holds no keys (they are re-derived, and cached, per packet), only the crypto stream, so
    100,000 of them fit in memory; see `testbed.bench`.
    """

    __slots__ = ("_stream", "client_hello")

    def __init__(
        self,
        max_bytes: int = DEFAULT_MAX_CLIENT_HELLO_BYTES,
        max_fragments: int = DEFAULT_MAX_PENDING_FRAGMENTS,
    ) -> None:
        self._stream = CryptoStreamReassembly(max_bytes, max_fragments)
        self.client_hello: ClientHelloInfo | None = None

    @classmethod
    def resume(
        cls,
        prefix: bytes,
        pending: dict[int, bytes],
        max_bytes: int = DEFAULT_MAX_CLIENT_HELLO_BYTES,
    ) -> ClientHelloAssembler:
        """An assembler that carries on from the crypto stream saved by `saved()`."""
        assembler = cls(max_bytes)
        assembler._stream.resume(prefix, pending)
        return assembler

    def saved(self) -> tuple[bytes, dict[int, bytes]]:
        """The crypto stream so far as plain data: contiguous prefix and pending fragments."""
        return self._stream.prefix, self._stream.pending

    def add_packet(
        self, datagram: bytes, header: PacketHeader, *, original_dcid: bytes | None = None
    ) -> ClientHelloInfo | None:
        """Decrypt one client Initial and add its CRYPTO frames.

        Keys come from `original_dcid`, the DCID of the client's first Initial (RFC 9001
        §5.2); it defaults to the packet's own DCID, which is the same thing until the server
        has replied (the client then addresses the server's CID with the same keys).
        """
        key_dcid = header.dcid if original_dcid is None else original_dcid
        decrypted = decrypt_initial(datagram, header, sender=Sender.CLIENT, key_dcid=key_dcid)
        return self.add_crypto(decrypted.frames.crypto)

    def add_crypto(
        self, frames: tuple[CryptoFrame, ...] | list[CryptoFrame]
    ) -> ClientHelloInfo | None:
        """Add CRYPTO frames; returns the ClientHello once it is complete, else None."""
        if self.client_hello is not None:
            return self.client_hello
        for frame in frames:
            self._stream.add(frame.offset, frame.data)
        have = self._stream.contiguous_length
        if have < HANDSHAKE_HEADER_LENGTH:
            return None
        head = self._stream.prefix
        if head[0] != HandshakeType.CLIENT_HELLO:
            raise WireError(
                f"handshake type {head[0]} is not ClientHello (1)", field="client hello", offset=0
            )
        needed = HANDSHAKE_HEADER_LENGTH + int.from_bytes(head[1:4], "big")
        if needed > self._stream.max_bytes:
            raise WireError(
                f"a {needed}-byte ClientHello exceeds the {self._stream.max_bytes}-byte limit",
                field="client hello length",
                offset=1,
            )
        if have < needed:
            return None
        self.client_hello = parse_client_hello(head[:needed])
        self._stream = CryptoStreamReassembly(0, 0)  # done: release the buffered bytes
        return self.client_hello
