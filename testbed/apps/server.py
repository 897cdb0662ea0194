"""Transfer server: receives each client's stream, hashes it, replies with the digest.

It writes one JSON line per event to `--events` and flushes at once, so the runner can read
what happened even after killing it: `first_data` the first time stream bytes arrive from a
peer address (the receiver side of the disruption metric), `finished` when a stream's FIN
arrives. Times are `time.monotonic()`, the system-wide clock that the client also uses.

    python -m testbed.apps.server --listen 10.0.0.250:4433 --events FILE
        [--idle-timeout S] [--max-lifetime S] [--qlog-dir DIR] [--socket-buffer BYTES]
        [--quic-lb-server-id HEX [--quic-lb-nonce-len N] [--quic-lb-key HEX]]

With --quic-lb-server-id every connection ID the server issues is a QUIC-LB CID carrying its
server ID (draft-ietf-quic-load-balancers §5.4), so a load balancer can route migrated
packets without state.

With --reuse-port --process I/N, N server processes share the port (SO_REUSEPORT), so the
server side uses more than one core. The kernel would pick a process by a hash of the 4-tuple,
which a migrated connection changes: its packets would reach a process that does not know its
CIDs. So process I issues QUIC-LB CIDs with server ID I, and a classic BPF program on the
group (SO_ATTACH_REUSEPORT_CBPF) sends every short-header packet to the process its DCID
names, as a QUIC-LB load balancer would; long-header packets (the handshake, whose first DCID
the client chose) keep the 4-tuple hash, which holds until the client migrates. Processes bind
in order (the runner starts each once the one before listens), so process I is socket I of
the group.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import hashlib
import json
import os
import signal
import socket
import time
from typing import IO

from aioquic.asyncio import QuicConnectionProtocol, serve
from aioquic.asyncio.server import QuicServer
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, QuicEvent, StreamDataReceived
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from qasm.wire.quic_lb import QuicLbConfig, encode_cid
from testbed.apps.qlog import QlogDirectory
from testbed.apps.sockets import SO_ATTACH_REUSEPORT_CBPF, attach_classic_bpf, enlarge_buffers
from testbed.apps.transfer import (
    ALPN,
    MAX_HEADER_BYTES,
    SERVER_NAME,
    StreamHeader,
    TransferProtocolError,
    TransferReply,
)


def self_signed_certificate(
    host_name: str = SERVER_NAME,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A throwaway certificate for `host_name` (clients here do not verify it)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host_name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host_name)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return certificate, key


def issue_quic_lb_cids(connection: QuicConnection, config: QuicLbConfig, server_id: bytes):
    """Makes every CID this server-side connection issues a QUIC-LB CID.

    aioquic 1.7.2 has no hook for CID generation: this replaces the first host CID before
    QuicServer registers it (the protocol is created first) and wraps the private
    `_replenish_connection_ids`, whose new entries are announced (ConnectionIdIssued, the
    NEW_CONNECTION_ID frame) only later, with the bytes set here.
    """

    def new_cid() -> bytes:
        nonce = os.urandom(config.nonce_length)
        return encode_cid(config, server_id, nonce, random_bits=os.urandom(1)[0])

    first = connection._host_cids[0]
    first.cid = new_cid()
    connection.host_cid = first.cid
    connection._local_initial_source_connection_id = first.cid
    replenish = connection._replenish_connection_ids

    def replenish_with_quic_lb_cids() -> None:
        already = len(connection._host_cids)
        replenish()
        for connection_id in connection._host_cids[already:]:
            connection_id.cid = new_cid()

    connection._replenish_connection_ids = replenish_with_quic_lb_cids


class EventLog:
    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def write(self, event: str, **fields: object) -> None:
        self._stream.write(json.dumps({"event": event, "t": time.monotonic(), **fields}) + "\n")
        self._stream.flush()


class _ReceivedStream:
    def __init__(self) -> None:
        self.header: StreamHeader | None = None
        self.pending_header = bytearray()
        self.digest = hashlib.sha256()
        self.received = 0
        self.addresses_seen: set[tuple[str, int]] = set()


class TransferServerProtocol(QuicConnectionProtocol):
    def __init__(self, quic: QuicConnection, *args, event_log: EventLog, quic_lb=None, **kwargs):
        if quic_lb is not None:
            issue_quic_lb_cids(quic, *quic_lb)
        super().__init__(quic, *args, **kwargs)
        self._event_log = event_log
        self._streams: dict[int, _ReceivedStream] = {}
        self._datagram_source: tuple[str, int] | None = None

    def datagram_received(self, data, addr) -> None:
        # Events produced by this datagram are attributed to the address it came from.
        self._datagram_source = (addr[0], addr[1])
        super().datagram_received(data, addr)

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived):
            self._stream_data(event)
        elif isinstance(event, ConnectionTerminated):
            clients = [s.header.client for s in self._streams.values() if s.header]
            self._event_log.write(
                "terminated",
                clients=clients,
                error_code=event.error_code,
                reason=event.reason_phrase,
            )

    def _stream_data(self, event: StreamDataReceived) -> None:
        stream = self._streams.setdefault(event.stream_id, _ReceivedStream())
        data = event.data
        if stream.header is None:
            stream.pending_header += data
            line, newline, rest = stream.pending_header.partition(b"\n")
            if not newline:
                if len(stream.pending_header) > MAX_HEADER_BYTES:
                    self._quic.close(error_code=0x1, reason_phrase="header too long")
                return
            try:
                stream.header = StreamHeader.decode(bytes(line))
            except TransferProtocolError as exc:
                self._quic.close(error_code=0x1, reason_phrase=str(exc)[:100])
                return
            data = bytes(rest)
        if data and self._datagram_source not in stream.addresses_seen:
            stream.addresses_seen.add(self._datagram_source)
            self._event_log.write(
                "first_data",
                client=stream.header.client,
                addr=list(self._datagram_source),
                offset=stream.received,
            )
        stream.digest.update(data)
        stream.received += len(data)
        if event.end_stream:
            reply = TransferReply(bytes=stream.received, sha256=stream.digest.hexdigest())
            self._event_log.write(
                "finished", client=stream.header.client, bytes=reply.bytes, sha256=reply.sha256
            )
            self._quic.send_stream_data(event.stream_id, reply.encode(), end_stream=True)
            self.transmit()


# Classic BPF over the UDP payload (the kernel runs a reuse-port program past the UDP header):
# a short header's DCID starts at byte 1 and a plaintext QUIC-LB CID's server ID follows its
# first octet, so byte 2 is the index of the process that issued it. Long headers, and any
# index past the group's sockets, get the kernel's 4-tuple hash.
_LD_B, _JSET, _RET_A, _RET_K = 0x30, 0x45, 0x16, 0x06
CID_STEERING = [
    (_LD_B, 0, 0, 0),  # A = first byte
    (_JSET, 2, 0, 0x80),  # long header: to the last instruction
    (_LD_B, 0, 0, 2),  # A = the DCID's server ID
    (_RET_A, 0, 0, 0),
    (_RET_K, 0, 0, 0xFFFFFFFF),  # no socket has this index: the 4-tuple hash decides
]


def reuse_port_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    attach_classic_bpf(sock, SO_ATTACH_REUSEPORT_CBPF, CID_STEERING)
    return sock


def _process(text: str) -> tuple[int, int]:
    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit() and int(index) < int(count) <= 255):
        raise argparse.ArgumentTypeError(f"expected I/N with 0 <= I < N <= 255, got {text!r}")
    return int(index), int(count)


def parse_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def serve_forever(args: argparse.Namespace) -> None:
    configuration = QuicConfiguration(
        is_client=False, alpn_protocols=[ALPN], idle_timeout=args.idle_timeout
    )
    configuration.certificate, configuration.private_key = self_signed_certificate()
    qlog = None
    if args.qlog_dir:
        qlog = configuration.quic_logger = QlogDirectory(args.qlog_dir, "server")
    quic_lb = None
    server_id_hex = args.quic_lb_server_id
    if args.process:
        server_id_hex = f"{args.process[0]:02x}"
    if server_id_hex:
        key = bytes.fromhex(args.quic_lb_key) if args.quic_lb_key else None
        server_id = bytes.fromhex(server_id_hex)
        config = QuicLbConfig(0, len(server_id), args.quic_lb_nonce_len, key)
        configuration.connection_id_length = config.cid_length
        quic_lb = (config, server_id)
    host, port = parse_address(args.listen)
    with open(args.events, "a", encoding="utf-8") as stream:
        event_log = EventLog(stream)

        def create_protocol(*a, **kw) -> TransferServerProtocol:
            return TransferServerProtocol(*a, event_log=event_log, quic_lb=quic_lb, **kw)

        if args.process:
            # aioquic's serve() without its bind: the socket of a steered reuse-port group.
            _, server = await asyncio.get_running_loop().create_datagram_endpoint(
                lambda: QuicServer(configuration=configuration, create_protocol=create_protocol),
                sock=reuse_port_socket(host, port),
            )
        else:
            server = await serve(
                host, port, configuration=configuration, create_protocol=create_protocol
            )
        if args.socket_buffer:
            # QuicServer keeps its transport private (aioquic 1.7.2); it is the one socket.
            enlarge_buffers(server._transport.get_extra_info("socket"), args.socket_buffer)
        event_log.write("listening", addr=[host, port])
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        # A leaked server (runner killed before teardown) still ends by itself.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=args.max_lifetime)
        server.close()
        if qlog is not None:
            qlog.close()  # traces of connections that had not ended


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="IPv4:PORT")
    parser.add_argument("--events", required=True, help="JSON-lines event file (appended)")
    parser.add_argument("--idle-timeout", type=float, required=True)
    parser.add_argument("--max-lifetime", type=float, required=True, help="exit after S seconds")
    parser.add_argument("--qlog-dir", help="one qlog per connection (ODCID-server.qlog)")
    parser.add_argument(
        "--socket-buffer", type=int, help="SO_SNDBUF/SO_RCVBUF bytes (links with delay)"
    )
    parser.add_argument("--quic-lb-server-id", help="hex; issue QUIC-LB CIDs carrying it")
    parser.add_argument("--quic-lb-nonce-len", type=int, default=6)
    parser.add_argument("--quic-lb-key", help="hex AES-128 key (default: plaintext CIDs)")
    parser.add_argument(
        "--process", type=_process, help="I/N: process I of N sharing the port (SO_REUSEPORT)"
    )
    asyncio.run(serve_forever(parser.parse_args()))


if __name__ == "__main__":
    main()
