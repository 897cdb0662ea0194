"""The Python QUIC stacks the testbed's own client and server run on: aioquic and qh3.

    load_stack("aioquic" | "qh3") -> PythonStack

Both have the same public API (qh3 is an aioquic fork: `qh3.quic.connection.QuicConnection`,
`qh3.asyncio.QuicConnectionProtocol`, `qh3.h3.connection.H3Connection`, the same events),
so the apps take their classes from a `PythonStack` rather than importing aioquic.
Their internals differ, and the apps need a few of them; each accessor here says what it
reads and what it returns when the stack does not expose it:

- `buffered(quic, stream)`, stream bytes queued and not yet acknowledged:
  aioquic `sender._buffer_stop - _buffer_start`; qh3 `core.get_send_buffer_size(stream)`.
- `highest_sent(quic, stream)`, the highest stream offset sent: aioquic
  `sender.highest_offset`; qh3 None (not exposed).
- `smoothed_rtt_s(quic)`: aioquic `_loss._rtt_smoothed`; qh3 `core.smoothed_rtt`.
- `peer_cid(quic)`, the DCID in use: aioquic `_peer_cid.cid`; qh3 None.
- `spare_peer_cids(quic)`, unused server CIDs: aioquic `len(_peer_cid_available)`; qh3 None.

So the builtin Client Agent (which must know the next DCID before the client switches) needs
aioquic; a qh3 client migrates the same way (swap the socket, `change_connection_id()`) and
is announced by the host Client Agent, which reads the CIDs on the wire instead
(qasm/agents/host.py). qh3 2.1.0 is no longer aioquic's Python core: its connection state is
in Rust, and STACKS.md's "same migration code as aioquic" is only true of the Python API.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from qasm.agents.client import spare_peer_cid

PYTHON_STACKS = ("aioquic", "qh3")


@dataclass(frozen=True)
class PythonStack:
    name: str
    version: str
    QuicConfiguration: type
    QuicConnection: type
    QuicConnectionProtocol: type
    QuicServer: type
    QuicLogger: type
    QLOG_VERSION: str
    events: ModuleType  # ConnectionTerminated, StreamDataReceived, HandshakeCompleted, ...
    H3Connection: type
    h3_events: ModuleType  # HeadersReceived, DataReceived
    serve: Any
    errors: tuple[type[Exception], ...]  # what the stack raises on a dead connection

    def buffered(self, quic, stream_id: int) -> int:
        """Stream bytes handed to the stack and not yet acknowledged by the peer."""
        if self.name == "aioquic":
            sender = quic._streams[stream_id].sender
            return sender._buffer_stop - sender._buffer_start
        return quic._core.get_send_buffer_size(stream_id)

    def highest_sent(self, quic, stream_id: int) -> int | None:
        """The highest stream offset sent at least once; None where not exposed (qh3)."""
        if self.name == "aioquic":
            stream = quic._streams.get(stream_id)
            return None if stream is None else stream.sender.highest_offset
        return None

    def smoothed_rtt_s(self, quic) -> float | None:
        if self.name == "aioquic":
            return quic._loss._rtt_smoothed
        core = quic._core
        return None if core is None else core.smoothed_rtt

    def peer_cid(self, quic) -> bytes | None:
        """The DCID the client sends with now; None where not exposed (qh3)."""
        return quic._peer_cid.cid if self.name == "aioquic" else None

    def peer_cid_next(self, quic) -> bytes | None:
        """The DCID change_connection_id() takes next; None where there is none or the stack
        does not say (qh3)."""
        return spare_peer_cid(quic) if self.name == "aioquic" else None

    def spare_peer_cids(self, quic) -> int | None:
        """Server CIDs the client holds unused; None where not exposed (qh3)."""
        return len(quic._peer_cid_available) if self.name == "aioquic" else None

    def handshake_confirmed(self, quic) -> bool:
        return bool(quic._handshake_confirmed)

    def configure(self, configuration, protocol: str) -> None:
        """Stack-specific settings a workload needs."""
        if protocol == "h3" and self.name == "qh3":
            # qh3's H3Connection always sends SETTINGS_H3_DATAGRAM=1, which RFC 9297 §2.1.1
            # allows only with the max_datagram_frame_size transport parameter: without it
            # aioquic and qh3 peers close with H3_SETTINGS_ERROR (measured, qh3 2.1.0).
            configuration.max_datagram_frame_size = 65536

    def warm_up(self, certificate_pem: bytes, key_pem: bytes) -> None:
        """One handshake in memory, client and server of this stack, so that the run's first
        connection does not pay the stack's one-time set-up: qh3's first connect() costs
        ~85 ms (its Rust TLS initialising), aioquic's ~5 ms, later ones < 1 ms (measured)."""
        import ssl

        server_configuration = self.QuicConfiguration(is_client=False, alpn_protocols=["warm"])
        self.load_certificate(server_configuration, certificate_pem, key_pem)
        client = self.QuicConnection(
            configuration=self.QuicConfiguration(
                is_client=True, alpn_protocols=["warm"], verify_mode=ssl.CERT_NONE
            )
        )
        now = 0.0
        address = ("127.0.0.1", 9)
        client.connect(address, now=now)
        first = client.datagrams_to_send(now=now)
        server = self.QuicConnection(
            configuration=server_configuration,
            original_destination_connection_id=_long_header_dcid(first[0][0]),
        )
        for _ in range(4):
            now += 0.001
            for data, _ in first:
                server.receive_datagram(data, address, now=now)
            first = []
            for data, _ in server.datagrams_to_send(now=now):
                client.receive_datagram(data, address, now=now)
            first = client.datagrams_to_send(now=now)

    def load_certificate(self, configuration, certificate_pem: bytes, key_pem: bytes) -> None:
        """Sets the server's certificate and key from PEM (each stack has its own types)."""
        if self.name == "aioquic":
            from cryptography import x509
            from cryptography.hazmat.primitives.serialization import load_pem_private_key

            configuration.certificate = x509.load_pem_x509_certificate(certificate_pem)
            configuration.private_key = load_pem_private_key(key_pem, None)
            return
        from qh3.tls import load_pem_private_key, load_pem_x509_certificates

        configuration.certificate = load_pem_x509_certificates(certificate_pem)[0]
        configuration.private_key = load_pem_private_key(key_pem)


_LOADED: dict[str, PythonStack] = {}


def load_stack(name: str) -> PythonStack:
    """The stack's classes, imported on first use (qh3 need not be installed for aioquic)."""
    if name not in PYTHON_STACKS:
        raise ValueError(f"stack: expected one of {', '.join(PYTHON_STACKS)}, got {name!r}")
    if name not in _LOADED:
        asyncio_package = importlib.import_module(f"{name}.asyncio")
        server_module = importlib.import_module(f"{name}.asyncio.server")
        logger = importlib.import_module(f"{name}.quic.logger")
        _LOADED[name] = PythonStack(
            name=name,
            version=importlib.metadata.version(name),
            QuicConfiguration=importlib.import_module(
                f"{name}.quic.configuration"
            ).QuicConfiguration,
            QuicConnection=importlib.import_module(f"{name}.quic.connection").QuicConnection,
            QuicConnectionProtocol=asyncio_package.QuicConnectionProtocol,
            QuicServer=server_module.QuicServer,
            QuicLogger=logger.QuicLogger,
            QLOG_VERSION=logger.QLOG_VERSION,
            events=importlib.import_module(f"{name}.quic.events"),
            H3Connection=importlib.import_module(f"{name}.h3.connection").H3Connection,
            h3_events=importlib.import_module(f"{name}.h3.events"),
            serve=asyncio_package.serve,
            errors=_errors(name),
        )
    return _LOADED[name]


def _errors(name: str) -> tuple[type[Exception], ...]:
    if name == "qh3":
        # qh3 raises from calls into a closed connection (its Rust core says so).
        return (importlib.import_module("qh3.quic.connection").QuicConnectionError,)
    return ()


def _long_header_dcid(datagram: bytes) -> bytes:
    # RFC 9000 §17.2: flags (1), version (4), DCID length (1), DCID.
    return datagram[6 : 6 + datagram[5]]
