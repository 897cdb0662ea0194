"""NSS key log files (SSLKEYLOGFILE) as TLS 1.3 / QUIC endpoints write them.

One line per secret: `LABEL <client_random hex> <secret hex>`, `#` comments and blank lines
allowed. The client random (32 bytes, from the ClientHello) names the connection; the labels
a QUIC stack writes (aioquic's `QuicConfiguration.secrets_log_file` among them) are the
TLS 1.3 traffic secrets of RFC 8446 §7.1:

    CLIENT_EARLY_TRAFFIC_SECRET       0-RTT, client to server
    CLIENT_HANDSHAKE_TRAFFIC_SECRET   Handshake packets, client to server
    SERVER_HANDSHAKE_TRAFFIC_SECRET   Handshake packets, server to client
    CLIENT_TRAFFIC_SECRET_0           1-RTT, client to server (key phase generation 0)
    SERVER_TRAFFIC_SECRET_0           1-RTT, server to client

Other labels (EXPORTER_SECRET, TLS 1.2's CLIENT_RANDOM, ...) are legal in the format and
skipped. A line that is not `LABEL HEX HEX`, a client random that is not 32 bytes or a secret
that is not a SHA-256 or SHA-384 output (32 or 48 bytes) raises WireError naming the line.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace

from qasm.wire.errors import WireError

CLIENT_RANDOM_LENGTH = 32  # RFC 8446 §4.1.2
# TLS 1.3 secrets are as long as the suite's hash: SHA-256 (32) or SHA-384 (48).
SECRET_LENGTHS = (32, 48)

# Label -> field of ConnectionSecrets.
_LABELS = {
    "CLIENT_EARLY_TRAFFIC_SECRET": "client_early",
    "CLIENT_HANDSHAKE_TRAFFIC_SECRET": "client_handshake",
    "SERVER_HANDSHAKE_TRAFFIC_SECRET": "server_handshake",
    "CLIENT_TRAFFIC_SECRET_0": "client_1rtt",
    "SERVER_TRAFFIC_SECRET_0": "server_1rtt",
}


@dataclass(frozen=True, slots=True)
class ConnectionSecrets:
    """The secrets a key log holds for one TLS connection (one client random)."""

    client_random: bytes
    client_early: bytes | None = None
    client_handshake: bytes | None = None
    server_handshake: bytes | None = None
    client_1rtt: bytes | None = None
    server_1rtt: bytes | None = None

    def one_rtt(self, *, from_client: bool) -> bytes:
        """The generation-0 1-RTT secret of one direction; WireError when the log lacks it."""
        secret = self.client_1rtt if from_client else self.server_1rtt
        if secret is None:
            label = "CLIENT_TRAFFIC_SECRET_0" if from_client else "SERVER_TRAFFIC_SECRET_0"
            raise WireError(
                f"no {label} for client random {self.client_random.hex()}", field="key log"
            )
        return secret


@dataclass(frozen=True, slots=True)
class KeyLog:
    """Every connection of a key log, by client random, in the order they first appear."""

    connections: dict[bytes, ConnectionSecrets] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.connections)

    def __iter__(self) -> Iterator[ConnectionSecrets]:
        return iter(self.connections.values())

    def get(self, client_random: bytes) -> ConnectionSecrets | None:
        return self.connections.get(bytes(client_random))

    def with_one_rtt(self) -> list[ConnectionSecrets]:
        """Connections whose log has both 1-RTT secrets (those an observer can open)."""
        return [c for c in self if c.client_1rtt is not None and c.server_1rtt is not None]


def parse_key_log(text: str | bytes | Iterable[str]) -> KeyLog:
    """Parse an NSS key log (its text, bytes, or an iterable of lines, e.g. an open file).

    A repeated (label, client random) keeps the last secret, as Wireshark does.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError as exc:
            raise WireError(
                f"not ASCII text ({exc.reason})", field="key log", offset=exc.start
            ) from None
    lines = text.splitlines() if isinstance(text, str) else text
    connections: dict[bytes, ConnectionSecrets] = {}
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 3:
            raise WireError(
                f"expected 'LABEL CLIENT_RANDOM SECRET', got {len(parts)} fields",
                field=f"key log line {number}",
            )
        label, random_hex, secret_hex = parts
        slot = _LABELS.get(label)
        if slot is None:
            continue  # a label this observer has no use for (exporter, TLS 1.2, ...)
        client_random = _hex(random_hex, number, "client random")
        secret = _hex(secret_hex, number, "secret")
        if len(client_random) != CLIENT_RANDOM_LENGTH:
            raise WireError(
                f"client random is {len(client_random)} bytes, not {CLIENT_RANDOM_LENGTH}",
                field=f"key log line {number}",
            )
        if len(secret) not in SECRET_LENGTHS:
            raise WireError(
                f"{label} is {len(secret)} bytes; a TLS 1.3 secret is 32 (SHA-256) or 48 (SHA-384)",
                field=f"key log line {number}",
            )
        known = connections.get(client_random) or ConnectionSecrets(client_random)
        connections[client_random] = replace(known, **{slot: secret})
    return KeyLog(connections)


def _hex(value: str, number: int, what: str) -> bytes:
    try:
        return bytes.fromhex(value)
    except ValueError:
        raise WireError(f"{what} is not hex", field=f"key log line {number}") from None
