"""Scripted transfer client that migrates mid-transfer, then reports one JSON object.

    python -m testbed.apps.client --server IP:PORT --local-ip IP --client NAME --bytes N
        [--migrate nat-rebind|addr-rebind|active --migrate-ip IP [IP ...]
         (--at-bytes N | --at-seconds S) [--repeat-every S]]
        [--agent IP:PORT --agent-id ID --agent-key HEX]
        [--seed S] [--idle-timeout S] [--timeout S] [--qlog-dir DIR] [--keylog FILE]
        [--socket-buffer BYTES]
        --out FILE

Migration follows the recipe measured in ../shared/AIOQUIC.md: open the new socket first,
then swap the transport, switch CID (active migration only) and transmit with no `await`
in between, and close the old socket a little later so packets in flight still arrive.
The client uses its own IPv4 sockets so the new socket's address family matches the peer
address aioquic already holds.

With `--agent`, a Client Agent announces each migration to the Tracking Agent before the
client uses the new path: from the new address, the current and next DCID and the old and new
address; it waits for the signed ack (retrying with the identical datagram), then migrates,
and retires the old path once the old socket is closed.

With `--repeat-every S`, after the first migration the client migrates again every S seconds
while it sends, each time to the next `--migrate-ip` in turn (a fresh source port each time):
nat-rebind stays on its address, as a client behind a NAT whose mappings keep changing;
addr-rebind alternates between the wifi interface's two addresses; active alternates between
lte and wifi with a fresh server CID each time (aioquic retires the old one and the server
issues replacements; a migration finding no spare CID is skipped and counted). With `--agent`
each migration is announced and its old path retired like the first. `migration` stays the
first migration; `migrations` lists them all, each with the spare CIDs it found.

A connection that dies is a result: the report says `completed: false` and why.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from aioquic.asyncio import QuicConnectionProtocol
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, QuicEvent, StreamDataReceived

from qasm.agents.client import ClientAgent
from qasm.agents.messages import AgentMessageError
from testbed.apps.qlog import QlogDirectory
from testbed.apps.server import parse_address
from testbed.apps.sockets import enlarge_buffers
from testbed.apps.transfer import (
    ALPN,
    MAX_HEADER_BYTES,
    StreamHeader,
    TransferProtocolError,
    TransferReply,
    payload_chunks,
)
from testbed.migration import MIGRATION_KINDS, MigrationKind
from testbed.records.metrics import goodput_mbps

# Payload handed to aioquic but not yet acknowledged; aioquic buffers whatever it is given,
# so without this bound "migrate at byte N" would mean "N bytes queued", not "N delivered".
SEND_WINDOW_BYTES = 1024 * 1024
AGENT_REPLY_TIMEOUT_S = 0.2
AGENT_ATTEMPTS = 3
OLD_SOCKET_GRACE_S = 1.0
# Acknowledged-bytes samples for goodput-over-time plots: fine enough to see a migration gap
# (tens of ms) without bloating the report (a 60 s transfer gives 3000 samples at most).
PROGRESS_INTERVAL_S = 0.02


@dataclass
class ClientReport:
    client: str
    completed: bool = False
    verified: bool = False
    handshake_ms: float | None = None
    goodput_mbps: float | None = None
    bytes_requested: int = 0
    bytes_acknowledged: int = 0
    started_at: float | None = None
    first_byte_sent_at: float | None = None
    last_byte_acknowledged_at: float | None = None
    migration: dict | None = None  # the first migration
    migrations: list = field(default_factory=list)  # every migration, first included
    migrations_skipped: int = 0  # repeated active migrations that found no spare CID
    last_received_at: float | None = None
    failure: str | None = None
    smoothed_rtt_ms: float | None = None
    quic_close: dict | None = None
    digest: dict = field(default_factory=dict)
    agent: dict | None = None  # what the Client Agent sent and what the Tracking Agent said
    # [monotonic time, payload bytes acknowledged by the server], every PROGRESS_INTERVAL_S.
    progress: list = field(default_factory=list)


class _SocketForwarder(asyncio.DatagramProtocol):
    """Feeds the datagrams of a migrated-to socket into the QUIC protocol."""

    def __init__(self, protocol: TransferClientProtocol) -> None:
        self._protocol = protocol

    def connection_made(self, transport) -> None:
        if self._protocol.socket_buffer:
            enlarge_buffers(transport.get_extra_info("socket"), self._protocol.socket_buffer)

    def datagram_received(self, data: bytes, addr) -> None:
        self._protocol.datagram_received(data, addr)


class TransferClientProtocol(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.progress = asyncio.Event()
        self.reply_buffer = bytearray()
        self.reply_complete = False
        self.last_received_at: float | None = None
        self.close_event: ConnectionTerminated | None = None
        self.socket_buffer: int | None = None  # bytes, set before the socket is made

    def connection_made(self, transport) -> None:
        if self.socket_buffer:
            enlarge_buffers(transport.get_extra_info("socket"), self.socket_buffer)
        super().connection_made(transport)

    def datagram_received(self, data, addr) -> None:
        self.last_received_at = time.monotonic()
        super().datagram_received(data, addr)
        self.progress.set()

    def quic_event_received(self, event: QuicEvent) -> None:
        if isinstance(event, StreamDataReceived):
            if len(self.reply_buffer) + len(event.data) <= MAX_HEADER_BYTES:
                self.reply_buffer += event.data
            self.reply_complete = self.reply_complete or event.end_stream
        elif isinstance(event, ConnectionTerminated):
            self.close_event = event
        self.progress.set()

    @property
    def transport(self) -> asyncio.DatagramTransport:
        return self._transport

    def switch_transport(self, transport: asyncio.DatagramTransport, new_cid: bool) -> None:
        """Moves the connection to `transport`; no await may separate these steps."""
        self._transport = transport
        if new_cid:
            self._quic.change_connection_id()
        self.transmit()


@dataclass(frozen=True)
class MigrationPlan:
    kind: MigrationKind
    new_local_ips: tuple[str, ...]  # the addresses to move to, in turn
    at_bytes: int | None = None
    at_seconds: float | None = None
    repeat_every_s: float | None = None  # migrate again this often after the first

    @property
    def new_cid(self) -> bool:
        return self.kind.new_cid

    def address(self, migration_index: int) -> str:
        return self.new_local_ips[migration_index % len(self.new_local_ips)]

    def due(self, acknowledged: int, since_first_byte: float) -> bool:
        if self.at_bytes is not None:
            return acknowledged >= self.at_bytes
        return since_first_byte >= self.at_seconds


class _AgentReplies(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.replies: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr) -> None:
        self.replies.put_nowait(data)


@dataclass
class AgentLink:
    """The Client Agent and where its Tracking Agent listens."""

    agent: ClientAgent
    address: tuple[str, int]
    exchanges: list = field(default_factory=list)
    pending: list = field(default_factory=list)  # background exchanges (retirements)

    async def exchange(
        self, build: Callable[[], tuple[int, bytes]], local_ip: str, what: str
    ) -> dict:
        """Sends the report `build()` makes and waits for its ack, retrying the identical
        datagram. The report is built only once its socket exists, with no await before it
        is sent: its counter is taken when it leaves, so reports leave in counter order even
        when a retirement and the next announcement overlap (a retirement whose counter was
        taken before an announcement overtook it was rejected as a replay)."""
        loop = asyncio.get_running_loop()
        transport, channel = await loop.create_datagram_endpoint(
            _AgentReplies, local_addr=(local_ip, 0), remote_addr=self.address
        )
        counter, datagram = build()
        started = time.monotonic()
        result = {"what": what, "accepted": False, "reason": "no reply", "attempts": 0}
        try:
            for attempt in range(1, AGENT_ATTEMPTS + 1):
                result["attempts"] = attempt
                transport.sendto(datagram)
                try:
                    reply = await asyncio.wait_for(channel.replies.get(), AGENT_REPLY_TIMEOUT_S)
                except TimeoutError:
                    continue
                try:
                    ack = self.agent.read_ack(reply, counter)
                except AgentMessageError as exc:
                    result["reason"] = f"bad reply: {exc}"
                    break
                result.update(accepted=ack.accepted, reason=ack.reason)
                break
        finally:
            transport.close()
        result["ms"] = (time.monotonic() - started) * 1000
        self.exchanges.append(result)
        return result

    def summary(self) -> dict:
        return {
            "messages": self.agent.messages_sent,
            "bytes": self.agent.bytes_sent,
            "exchanges": self.exchanges,
        }


async def migrate(
    protocol: TransferClientProtocol, plan: MigrationPlan, agent: AgentLink | None, index: int
) -> dict | None:
    """Migration number `index` (0 first); None when active migration finds no spare CID."""
    loop = asyncio.get_running_loop()
    quic = protocol._quic
    spare_cids = len(quic._peer_cid_available)
    if plan.new_cid and not spare_cids:
        return None
    new_local_ip = plan.address(index)
    old_transport = protocol.transport
    old_local = tuple(old_transport.get_extra_info("sockname")[:2])
    new_transport, _ = await loop.create_datagram_endpoint(
        lambda: _SocketForwarder(protocol), local_addr=(new_local_ip, 0)
    )
    new_local = tuple(new_transport.get_extra_info("sockname")[:2])
    if agent is not None:
        await agent.exchange(
            lambda: agent.agent.announce(quic, old_local, new_local, plan.new_cid),
            new_local_ip,
            "announce",
        )
    old_dcid = quic._peer_cid.cid.hex()
    migrated_at = time.monotonic()
    protocol.switch_transport(new_transport, new_cid=plan.new_cid)
    loop.call_later(OLD_SOCKET_GRACE_S, old_transport.close)
    if agent is not None:
        agent.pending.append(loop.create_task(_retire_later(agent, quic, old_local, new_local_ip)))
    return {
        "kind": plan.kind,
        "at": migrated_at,
        "from": list(old_local),
        "to": list(new_local),
        "old_dcid": old_dcid,
        "new_dcid": quic._peer_cid.cid.hex(),
        "spare_cids": spare_cids,  # server CIDs the client held, unused, when it moved
    }


async def _retire_later(agent: AgentLink, quic: QuicConnection, old_local, local_ip: str):
    """Retires the old path once its socket is closed and nothing more can arrive on it."""
    await asyncio.sleep(OLD_SOCKET_GRACE_S)
    await agent.exchange(lambda: agent.agent.retire(quic, old_local), local_ip, "retire")


def _acknowledged_bytes(quic: QuicConnection, stream_id: int, header_size: int) -> int:
    # aioquic discards stream data once acknowledged contiguously; _buffer_start is that
    # offset (private, checked on aioquic 1.7.2).
    sender = quic._streams[stream_id].sender
    return max(0, sender._buffer_start - header_size)


def _buffered_bytes(quic: QuicConnection, stream_id: int) -> int:
    sender = quic._streams[stream_id].sender
    return sender._buffer_stop - sender._buffer_start


async def run_transfer(args: argparse.Namespace, report: ClientReport) -> None:
    loop = asyncio.get_running_loop()
    configuration = QuicConfiguration(
        is_client=True,
        alpn_protocols=[ALPN],
        server_name=args.server_name,
        verify_mode=ssl.CERT_NONE,  # the SNI may name a host the test certificate is not for
        idle_timeout=args.idle_timeout,
    )
    qlog = None
    if args.qlog_dir:
        qlog = configuration.quic_logger = QlogDirectory(args.qlog_dir, "client")
    if args.keylog:
        # Line-buffered: each secret is on disk once written, whatever ends the process.
        configuration.secrets_log_file = open(args.keylog, "a", buffering=1)  # noqa: SIM115 (lives as long as the process)
    quic = QuicConnection(configuration=configuration)
    server = parse_address(args.server)

    def make_protocol() -> TransferClientProtocol:
        protocol = TransferClientProtocol(quic)
        protocol.socket_buffer = args.socket_buffer
        return protocol

    transport, protocol = await loop.create_datagram_endpoint(
        make_protocol, local_addr=(args.local_ip, 0)
    )
    plan = (
        MigrationPlan(
            MigrationKind(args.migrate),
            tuple(args.migrate_ip),
            args.at_bytes,
            args.at_seconds,
            args.repeat_every,
        )
        if args.migrate
        else None
    )
    agent = None
    if args.agent:
        agent = AgentLink(
            ClientAgent(args.agent_id, bytes.fromhex(args.agent_key)), parse_address(args.agent)
        )
    try:
        report.started_at = time.monotonic()
        protocol.connect(server)
        await protocol.wait_connected()
        report.handshake_ms = (time.monotonic() - report.started_at) * 1000
        await _send_and_await_reply(protocol, quic, args, plan, agent, report)
    except ConnectionError:
        pass  # the close event below says why
    finally:
        if agent is not None:
            # Let a retirement in flight finish: the Tracking Agent should hear of it.
            if agent.pending:
                await asyncio.wait(agent.pending, timeout=OLD_SOCKET_GRACE_S + 1)
            report.agent = agent.summary()
        report.last_received_at = protocol.last_received_at
        if not report.completed and report.progress:
            report.bytes_acknowledged = report.progress[-1][1]
        report.smoothed_rtt_ms = quic._loss._rtt_smoothed * 1000
        if protocol.close_event is not None:
            event = protocol.close_event
            report.quic_close = {"error_code": event.error_code, "reason": event.reason_phrase}
            if not report.completed and report.failure is None:
                report.failure = f"connection closed: {event.reason_phrase or 'no reason'}"
                if event.reason_phrase == "Idle timeout":
                    report.failure = (
                        f"connection closed by idle timeout ({args.idle_timeout:g} s "
                        "without a packet from the server)"
                    )
        protocol.close()
        protocol.transport.close()
        if qlog is not None:
            qlog.close()  # the trace of a connection that has not ended yet


async def _send_and_await_reply(
    protocol: TransferClientProtocol,
    quic: QuicConnection,
    args: argparse.Namespace,
    plan: MigrationPlan | None,
    agent: AgentLink | None,
    report: ClientReport,
) -> None:
    stream_id = quic.get_next_available_stream_id()
    header = StreamHeader(client=args.client, bytes=args.bytes).encode()
    quic.send_stream_data(stream_id, header)
    chunks = payload_chunks(args.bytes, args.seed)
    digest = hashlib.sha256()
    sent = 0
    report.first_byte_sent_at = time.monotonic()
    last_attempt = report.first_byte_sent_at  # of a migration, for the repeat interval
    while not protocol.reply_complete:
        if protocol.close_event is not None:
            return
        acknowledged = _acknowledged_bytes(quic, stream_id, len(header))
        now = time.monotonic()
        if not report.progress or now - report.progress[-1][0] >= PROGRESS_INTERVAL_S:
            report.progress.append([now, acknowledged])
        if plan and report.migration is None and quic._handshake_confirmed:
            since_first = time.monotonic() - report.first_byte_sent_at
            if plan.due(acknowledged, since_first):
                report.migration = await migrate(protocol, plan, agent, 0)
                if report.migration is None:
                    report.failure = "no spare server connection ID for active migration"
                    return
                report.migrations.append(report.migration)
                last_attempt = report.migration["at"]
        elif (
            plan
            and plan.repeat_every_s
            and report.migrations
            and acknowledged < args.bytes  # while sending, not while awaiting the reply
            and time.monotonic() - last_attempt >= plan.repeat_every_s
        ):
            last_attempt = time.monotonic()
            moved = await migrate(protocol, plan, agent, len(report.migrations))
            if moved is None:
                report.migrations_skipped += 1
            else:
                report.migrations.append(moved)
        while sent < args.bytes and _buffered_bytes(quic, stream_id) < SEND_WINDOW_BYTES:
            chunk = next(chunks)
            digest.update(chunk)
            sent += len(chunk)
            quic.send_stream_data(stream_id, chunk, end_stream=sent >= args.bytes)
        protocol.transmit()
        protocol.progress.clear()
        # Also wake without traffic, so a stalled connection still samples (a flat line) and a
        # time-based migration fires on time.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(protocol.progress.wait(), PROGRESS_INTERVAL_S)
    report.last_byte_acknowledged_at = time.monotonic()
    report.bytes_acknowledged = args.bytes
    report.progress.append([report.last_byte_acknowledged_at, args.bytes])
    reply = TransferReply.decode(bytes(protocol.reply_buffer).partition(b"\n")[0])
    report.completed = True
    report.digest = {"sent": digest.hexdigest(), "received": reply.sha256}
    report.verified = reply.sha256 == digest.hexdigest() and reply.bytes == args.bytes
    if not report.verified:
        report.failure = f"payload mismatch: server got {reply.bytes} bytes, sha256 {reply.sha256}"
    if report.verified:
        report.goodput_mbps = goodput_mbps(
            args.bytes, report.first_byte_sent_at, report.last_byte_acknowledged_at
        )


async def main_async(args: argparse.Namespace) -> ClientReport:
    report = ClientReport(client=args.client, bytes_requested=args.bytes)
    try:
        await asyncio.wait_for(run_transfer(args, report), timeout=args.timeout)
    except TimeoutError:
        report.failure = f"transfer did not finish within the {args.timeout:g} s run timeout"
    except TransferProtocolError as exc:
        report.failure = f"bad reply from server: {exc}"
    except OSError as exc:
        report.failure = f"socket error: {exc}"
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True, help="IPv4:PORT")
    parser.add_argument("--local-ip", required=True)
    parser.add_argument("--client", required=True, help="client name carried in the stream")
    parser.add_argument("--bytes", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--migrate", choices=MIGRATION_KINDS)
    parser.add_argument("--migrate-ip", nargs="+", help="addresses to move to, in turn")
    parser.add_argument("--at-bytes", type=int)
    parser.add_argument("--at-seconds", type=float)
    parser.add_argument(
        "--repeat-every", type=float, help="migrate again every S seconds while sending"
    )
    parser.add_argument("--agent", help="Tracking Agent IPv4:PORT (enables the Client Agent)")
    parser.add_argument("--agent-id")
    parser.add_argument("--agent-key", help="this client's key, hex")
    parser.add_argument("--idle-timeout", type=float, required=True)
    parser.add_argument("--timeout", type=float, required=True)
    parser.add_argument("--server-name", required=True, help="SNI in the ClientHello")
    parser.add_argument("--qlog-dir")
    parser.add_argument("--keylog", help="SSLKEYLOGFILE to append this connection's secrets to")
    parser.add_argument(
        "--socket-buffer", type=int, help="SO_SNDBUF/SO_RCVBUF bytes (links with delay)"
    )
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.migrate and (
        args.migrate_ip is None or (args.at_bytes is None) == (args.at_seconds is None)
    ):
        parser.error("--migrate needs --migrate-ip and exactly one of --at-bytes/--at-seconds")
    if args.repeat_every is not None and (args.migrate is None or args.repeat_every <= 0):
        parser.error("--repeat-every needs --migrate and a positive number of seconds")
    if args.agent and not (args.agent_id and args.agent_key):
        parser.error("--agent needs --agent-id and --agent-key")
    return args


def main() -> None:
    args = parse_args()
    report = asyncio.run(main_async(args))
    with open(args.out, "w", encoding="utf-8") as stream:
        json.dump(asdict(report), stream)
    sys.exit(0)


if __name__ == "__main__":
    main()
