"""Transfer server: receives each client's stream, hashes it, replies with the digest.

It writes one JSON line per event to `--events` and flushes at once, so the runner can read
what happened even after killing it: `first_data` the first time stream bytes arrive from a
peer address (the receiver side of the disruption metric), `finished` when a stream's FIN
arrives. Times are `time.monotonic()`, the system-wide clock that the client also uses.

    python -m testbed.apps.server --listen 10.0.0.250:4433 --events FILE
        [--idle-timeout S] [--max-lifetime S] [--qlog-dir DIR] [--socket-buffer BYTES]
        [--quic-lb-server-id HEX [--quic-lb-nonce-len N] [--quic-lb-key HEX]]
        [--stack aioquic|qh3] [--protocol raw|h3]

The first event, `listening`, names the stack (`server_stack`, `server_stack_version`) and
the workload (`protocol`). `--stack qh3` runs the same server on qh3 (testbed/apps/stacks.py);
QUIC-LB CIDs and the reuse-port group need aioquic (they replace aioquic's private CID
generation). `--protocol h3` serves the HTTP/3 workload (testbed/apps/transfer.py): the
client downloads, so the server is the sender and `first_data` is logged the first time it
*sends* response bytes to a peer address (aioquic: the stream's highest sent offset grew in
that transmission; qh3 exposes no sent offset, so the first datagram to a new address while
response bytes are unacknowledged), with the offset it had reached; `finished` once the last byte is
handed to QUIC, with the SHA-256 of what it sent. The client's own view of the same gap
(its first data on its new path) is in its report.

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
import functools
import hashlib
import json
import os
import signal
import socket
import time
from typing import IO

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from qasm.wire.quic_lb import QuicLbConfig, encode_cid
from testbed.apps.qlog import qlog_directory
from testbed.apps.sockets import SO_ATTACH_REUSEPORT_CBPF, attach_classic_bpf, enlarge_buffers
from testbed.apps.stacks import PYTHON_STACKS, PythonStack, load_stack
from testbed.apps.transfer import (
    DIGEST_HEADER,
    MAX_HEADER_BYTES,
    PROTOCOLS,
    SERVER_NAME,
    H3Request,
    StreamHeader,
    TransferProtocolError,
    TransferReply,
    alpn,
    payload_chunks,
    payload_digest,
)

# Response bytes handed to QUIC but not yet acknowledged, per h3 response: the stacks buffer
# whatever they are given, and a hundred 4 MB responses queued at once would be 400 MB.
RESPONSE_WINDOW_BYTES = 1024 * 1024
MAX_RESPONSE_BYTES = 1 << 34


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


def certificate_pem(
    certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> tuple[bytes, bytes]:
    """The certificate and its key as PEM (for qh3, and for gtlsserver's files)."""
    return (
        certificate.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def issue_quic_lb_cids(connection, config: QuicLbConfig, server_id: bytes):
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


class _Response:
    """One h3 response being sent."""

    def __init__(self, request: H3Request, stream_id: int) -> None:
        self.request = request
        self.stream_id = stream_id
        self.chunks = payload_chunks(request.bytes, request.seed)
        self.digest = hashlib.sha256()
        self.handed = 0  # bytes handed to QUIC
        self.done = request.bytes == 0
        self.addresses_seen: set[tuple[str, int]] = set()


@functools.lru_cache(maxsize=8)
def _expected_digest(total: int, seed: int) -> str:
    # Every connection of a run asks for the same (bytes, seed): one pass, not one each.
    return payload_digest(total, seed)


class _RecordingTransport:
    """The server socket as one connection sees it: records where it sends."""

    def __init__(self, transport, sent_to: set) -> None:
        self._transport = transport
        self._sent_to = sent_to

    def sendto(self, data, addr=None) -> None:
        self._sent_to.add((addr[0], addr[1]))
        self._transport.sendto(data, addr)

    def __getattr__(self, name):
        return getattr(self._transport, name)


@functools.cache
def server_protocol_class(stack: PythonStack) -> type:
    """The transfer server's per-connection protocol on `stack`."""
    events, h3_events = stack.events, stack.h3_events

    class TransferServerProtocol(stack.QuicConnectionProtocol):
        def __init__(
            self, quic, *args, event_log: EventLog, quic_lb=None, protocol="raw", **kwargs
        ):
            if quic_lb is not None:
                issue_quic_lb_cids(quic, *quic_lb)
            super().__init__(quic, *args, **kwargs)
            self._event_log = event_log
            self._protocol = protocol
            self._streams: dict[int, _ReceivedStream] = {}
            self._datagram_source: tuple[str, int] | None = None
            self._h3 = None
            self._responses: dict[int, _Response] = {}
            self._sent_to: set[tuple[str, int]] = set()

        def connection_made(self, transport) -> None:
            if self._protocol == "h3":
                transport = _RecordingTransport(transport, self._sent_to)
            super().connection_made(transport)

        def datagram_received(self, data, addr) -> None:
            # Events produced by this datagram are attributed to the address it came from.
            self._datagram_source = (addr[0], addr[1])
            super().datagram_received(data, addr)

        def quic_event_received(self, event) -> None:
            if isinstance(event, events.ProtocolNegotiated) and self._protocol == "h3":
                self._h3 = stack.H3Connection(self._quic)
            if self._h3 is not None:
                for h3_event in self._h3.handle_event(event):
                    if isinstance(h3_event, h3_events.HeadersReceived):
                        self._request(h3_event)
            elif isinstance(event, events.StreamDataReceived):
                self._stream_data(event)
            if isinstance(event, events.ConnectionTerminated):
                clients = [s.header.client for s in self._streams.values() if s.header]
                clients += [r.request.client for r in self._responses.values()]
                self._event_log.write(
                    "terminated",
                    clients=clients,
                    error_code=event.error_code,
                    reason=event.reason_phrase,
                )

        # --- raw: the client uploads ------------------------------------------------------

        def _stream_data(self, event) -> None:
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
                    "finished",
                    client=stream.header.client,
                    bytes=reply.bytes,
                    sha256=reply.sha256,
                )
                self._quic.send_stream_data(event.stream_id, reply.encode(), end_stream=True)
                self.transmit()

        # --- h3: the client downloads -----------------------------------------------------

        def _request(self, event) -> None:
            headers = {name: value for name, value in event.headers}
            path = headers.get(b":path", b"").decode(errors="replace")
            try:
                if headers.get(b":method") != b"GET":
                    raise TransferProtocolError(f"method {headers.get(b':method')!r}")
                request = H3Request.parse(path)
                if request.bytes > MAX_RESPONSE_BYTES:
                    raise TransferProtocolError(f"{request.bytes} bytes is too many")
            except TransferProtocolError as exc:
                self._h3.send_headers(event.stream_id, [(b":status", b"400")], end_stream=False)
                self._h3.send_data(event.stream_id, str(exc).encode()[:200], end_stream=True)
                self.transmit()
                return
            self._h3.send_headers(
                event.stream_id,
                [
                    (b":status", b"200"),
                    (b"server", f"qasm-testbed ({stack.name})".encode()),
                    (b"content-type", b"application/octet-stream"),
                    (b"content-length", str(request.bytes).encode()),
                    (DIGEST_HEADER.encode(), _expected_digest(*_key(request)).encode()),
                ],
                end_stream=request.bytes == 0,
            )
            response = _Response(request, event.stream_id)
            self._responses[event.stream_id] = response
            if response.done:
                self._finished(response)
            self.transmit()

        def _top_up(self) -> None:
            for response in self._responses.values():
                if response.done:
                    continue
                while (
                    not response.done
                    and stack.buffered(self._quic, response.stream_id) < RESPONSE_WINDOW_BYTES
                ):
                    chunk = next(response.chunks)
                    response.digest.update(chunk)
                    response.handed += len(chunk)
                    response.done = response.handed >= response.request.bytes
                    self._h3.send_data(response.stream_id, chunk, end_stream=response.done)
                if response.done:
                    self._finished(response)

        def _finished(self, response: _Response) -> None:
            self._event_log.write(
                "finished",
                client=response.request.client,
                bytes=response.handed,
                sha256=response.digest.hexdigest(),
            )

        def transmit(self) -> None:
            if self._h3 is None or not self._responses:
                super().transmit()
                return
            self._top_up()
            before = {
                sid: (
                    stack.highest_sent(self._quic, sid),
                    stack.buffered(self._quic, sid) if response.handed else 0,
                )
                for sid, response in self._responses.items()
                if response.handed or response.done
            }
            self._sent_to.clear()
            super().transmit()
            if not self._sent_to:
                return
            for sid, (highest_before, unacknowledged) in before.items():
                response = self._responses[sid]
                highest = stack.highest_sent(self._quic, sid)
                if highest is None:
                    # Not exposed (qh3): a datagram while response bytes were unacknowledged.
                    sent_data = unacknowledged > 0
                else:
                    sent_data = highest > (highest_before or 0)
                if not sent_data:
                    continue
                for addr in sorted(self._sent_to - response.addresses_seen):
                    response.addresses_seen.add(addr)
                    self._event_log.write(
                        "first_data",
                        client=response.request.client,
                        addr=list(addr),
                        offset=highest if highest is not None else response.handed,
                    )

    return TransferServerProtocol


def _key(request: H3Request) -> tuple[int, int]:
    return request.bytes, request.seed


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
    stack = load_stack(args.stack)
    configuration = stack.QuicConfiguration(
        is_client=False, alpn_protocols=[alpn(args.protocol)], idle_timeout=args.idle_timeout
    )
    stack.configure(configuration, args.protocol)
    pem = certificate_pem(*self_signed_certificate())
    stack.load_certificate(configuration, *pem)
    stack.warm_up(*pem)  # the stack's one-time set-up, not in the first client's handshake
    qlog = None
    if args.qlog_dir:
        qlog = configuration.quic_logger = qlog_directory(stack, args.qlog_dir, "server")
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
    protocol_class = server_protocol_class(stack)
    with open(args.events, "a", encoding="utf-8") as stream:
        event_log = EventLog(stream)

        def create_protocol(*a, **kw):
            return protocol_class(
                *a, event_log=event_log, quic_lb=quic_lb, protocol=args.protocol, **kw
            )

        if args.process:
            # serve() without its bind: the socket of a steered reuse-port group.
            _, server = await asyncio.get_running_loop().create_datagram_endpoint(
                lambda: stack.QuicServer(
                    configuration=configuration, create_protocol=create_protocol
                ),
                sock=reuse_port_socket(host, port),
            )
        else:
            server = await stack.serve(
                host, port, configuration=configuration, create_protocol=create_protocol
            )
        if args.socket_buffer:
            # QuicServer keeps its transport private (aioquic 1.7.2); it is the one socket.
            enlarge_buffers(server._transport.get_extra_info("socket"), args.socket_buffer)
        event_log.write(
            "listening",
            addr=[host, port],
            server_stack=stack.name,
            server_stack_version=stack.version,
            protocol=args.protocol,
        )
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
    parser.add_argument("--stack", choices=PYTHON_STACKS, default="aioquic")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="raw", help="workload")
    args = parser.parse_args()
    if args.stack != "aioquic" and (args.quic_lb_server_id or args.process):
        parser.error("--quic-lb-server-id and --process need --stack aioquic")
    asyncio.run(serve_forever(args))


if __name__ == "__main__":
    main()
