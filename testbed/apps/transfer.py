"""What client and server agree on: ALPN, the stream header, the payload, the reply.

Two workloads (`--protocol` of both apps):

`raw` (the default; ALPN `qasm-transfer/1`): one connection carries one bidirectional
stream: a JSON header line, then `bytes` payload bytes, then FIN. The server answers with a
JSON line holding the byte count and SHA-256 it computed, then FIN; the client compares with
its own digest (end-to-end verification). The client uploads.

`h3` (ALPN `h3`, HTTP/3, which every stack speaks, ngtcp2's programs only that): the client
downloads. It sends `GET /bytes/N?seed=S&client=NAME` (`h3_path`); the server answers 200
with `content-length: N`, `x-qasm-sha256: <hex>` and N payload bytes from
`payload_chunks(N, S)`, the same deterministic bytes the raw client would send. The client
hashes what it receives and checks it against the digest it computes itself from (N, S)
(`payload_digest`) and, when present, the header (ngtcp2's server sends no such header: it
serves a file the adapter wrote from the same seed). The server logs the digest of what it
sent. The seed is the run's (not per connection): a static-file server (gtlsserver) then
needs one file per run, not one per connection. The query is ignored by servers that
serve files (gtlsserver maps the path to `htdocs/bytes/N`), so the path alone names the
content and the query names who asks.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import parse_qs, quote, urlsplit

ALPN = "qasm-transfer/1"
H3_ALPN = "h3"  # RFC 9114 §3.1
PROTOCOLS = ("raw", "h3")
DIGEST_HEADER = "x-qasm-sha256"
H3_PATH_PREFIX = "/bytes/"
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


def payload_digest(total: int, seed: int) -> str:
    """SHA-256 (hex) of `payload_chunks(total, seed)`: what a receiver expects."""
    digest = hashlib.sha256()
    for chunk in payload_chunks(total, seed):
        digest.update(chunk)
    return digest.hexdigest()


def alpn(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol: expected one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    return H3_ALPN if protocol == "h3" else ALPN


@dataclass(frozen=True)
class H3Request:
    """What a `GET /bytes/N?seed=S&client=NAME` asks for."""

    bytes: int
    seed: int
    client: str

    @property
    def path(self) -> str:
        return f"{H3_PATH_PREFIX}{self.bytes}?seed={self.seed}&client={quote(self.client, safe='')}"

    @classmethod
    def parse(cls, path: str) -> H3Request:
        parts = urlsplit(path)
        count = parts.path.removeprefix(H3_PATH_PREFIX)
        query = parse_qs(parts.query)
        if not parts.path.startswith(H3_PATH_PREFIX) or not count.isdigit():
            raise TransferProtocolError(f"path {path[:80]!r}: expected /bytes/N?seed=S&client=C")
        try:
            seed = int(query["seed"][0])
            client = query.get("client", [""])[0]
        except (KeyError, ValueError) as exc:
            raise TransferProtocolError(f"path {path[:80]!r}: seed: {exc}") from exc
        return cls(bytes=int(count), seed=seed, client=client)
