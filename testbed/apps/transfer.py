"""What client and server agree on: ALPN, the stream header, the payload, the reply.

One connection carries one bidirectional stream: a JSON header line, then `bytes` payload
bytes, then FIN. The server answers with a JSON line holding the byte count and SHA-256 it
computed, then FIN; the client compares with its own digest (end-to-end verification).
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass

ALPN = "qasm-transfer/1"
SERVER_NAME = "server.qasm.test"
CHUNK_SIZE = 64 * 1024
MAX_HEADER_BYTES = 4096


class TransferProtocolError(ValueError):
    """The peer broke the transfer protocol (malformed header or reply)."""


@dataclass(frozen=True)
class StreamHeader:
    client: str
    bytes: int

    def encode(self) -> bytes:
        return json.dumps({"client": self.client, "bytes": self.bytes}).encode() + b"\n"

    @classmethod
    def decode(cls, line: bytes) -> StreamHeader:
        try:
            fields = json.loads(line)
            return cls(client=str(fields["client"]), bytes=int(fields["bytes"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise TransferProtocolError(f"stream header {line[:80]!r}: {exc}") from exc


@dataclass(frozen=True)
class TransferReply:
    bytes: int
    sha256: str

    def encode(self) -> bytes:
        return json.dumps({"bytes": self.bytes, "sha256": self.sha256}).encode() + b"\n"

    @classmethod
    def decode(cls, line: bytes) -> TransferReply:
        try:
            fields = json.loads(line)
            return cls(bytes=int(fields["bytes"]), sha256=str(fields["sha256"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise TransferProtocolError(f"reply {line[:80]!r}: {exc}") from exc


def payload_chunks(total: int, seed: int) -> Iterator[bytes]:
    """Deterministic pseudo-random payload, so a rerun with the same seed sends the same bytes."""
    rng = random.Random(seed)
    remaining = total
    while remaining > 0:
        size = min(CHUNK_SIZE, remaining)
        yield rng.randbytes(size)
        remaining -= size
