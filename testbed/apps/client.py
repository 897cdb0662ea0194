"""Scripted transfer clients that migrate mid-transfer, then report one JSON object each.

    python -m testbed.apps.client --server IP:PORT --local-ip IP --client NAME --bytes N
        --seed S --idle-timeout S --timeout S --server-name NAME --out FILE
        [--connections N [--first-index I] [--start-window S --total-connections M]]
        [--ready-file FILE --start-file FILE]
        [--migrate nat-rebind|addr-rebind|active --migrate-ip IP [IP ...]
         (--at-bytes N | --at-seconds S) [--spread X] [--repeat-every S]]
        [--agent IP:PORT --agent-id ID --agent-key HEX]
        [--qlog-dir DIR] [--keylog FILE] [--socket-buffer BYTES]
        [--stack aioquic|qh3] [--protocol raw|h3]

One process drives `--connections` QUIC connections from its host (asyncio), each its own
transfer, socket, migration schedule and report; `--out` gets a JSON list of the reports.
Connection k of the process is connection `first-index + k` of the run: its name is
`NAME/k+1` (just NAME with one connection), its payload seed and its migration trigger
(testbed.migration.trigger: the scenario's at_bytes/at_seconds plus a seeded draw from
[0, spread]) derive from that index. With `--start-file` the process writes `--ready-file`
once it is set up and waits for the start file, which holds the monotonic time T at which
the run's connections start: connection i of the run at T + start_window × (i-1) / total,
so a thousand connections start within the window rather than one process launch at a time.

Migration follows the recipe measured in ../shared/AIOQUIC.md: open the new socket first,
then swap the transport, switch CID (active migration only) and transmit with no `await`
in between, and close the old socket a little later so packets in flight still arrive.
The client uses its own IPv4 sockets so the new socket's address family matches the peer
address aioquic already holds. A migration runs beside the transfer, which keeps sending on
the current path while the Client Agent waits for the Tracking Agent's answer.

With `--agent`, a Client Agent announces each migration to the Tracking Agent before the
client uses the new path: from the new address, the current and next DCID and the old and new
address; it waits for the signed ack (retrying with the identical datagram), then migrates.
Old paths are retired: by the next announcement when the client migrates again before the old
path's grace period ends (one message per migration, and at most two paths per connection at
the middlebox), otherwise by a retirement of its own once the grace period is over. With
`--repeat-every S` the next path is announced ahead: as soon as a migration has moved, the
agent opens the next path's socket and announces it with the DCID it will use, retiring the
path just left in the same message, so the next migration waits for nobody (`announced_ahead`
in its record); the retired path's socket stays open a few RTTs more for the packets in
flight to it. A path announced but never used is retired when the transfer ends.

With `--agent-admit` (agent mode ahead) the Client Agent also has each connection admitted
before its first packet: ADMIT_LEAD_S before the connection is due, its socket is bound and
the agent reports the socket's address and waits for the ack; the handshake starts when the
connection is due, or once admitted if that is later. The hops have then decided on the
connection and installed its rules, so its Initial is not held at the switch for the
controller (about 1 ms on these machines, handshake.yaml); the report's `admission_ms` says
what the admission took and `admission_wait_ms` how long the connection waited for it.

With `--repeat-every S`, after the first migration the client migrates again every S seconds
while it sends, each time to the next `--migrate-ip` in turn (a fresh source port each time):
nat-rebind stays on its address, as a client behind a NAT whose mappings keep changing;
addr-rebind alternates between the wifi interface's two addresses; active alternates between
lte and wifi with a fresh server CID each time (aioquic retires the old one and the server
issues replacements; a migration finding no spare CID is skipped and counted). `migration` is
the first migration; `migrations` lists them all, each with the spare CIDs it found.

A connection that dies is a result: the report says `completed: false` and why.

Stacks and workloads. `--stack qh3` runs the same client on qh3 (testbed/apps/stacks.py
says which internals each exposes); the builtin Client Agent (`--agent`) needs aioquic,
whose next DCID it reads before the client switches (a qh3 client is announced by the host
Client Agent, testbed/apps/host_agent.py). `--protocol h3` downloads instead of uploading
(testbed/apps/transfer.py): `GET /bytes/N?seed=S&client=NAME`, verified against the digest
computed from (N, S) and the server's `x-qasm-sha256` header. The report keeps its fields,
read for a download: `first_byte_sent_at` is when the request left, `bytes_acknowledged`
and `progress` count bytes received, `last_byte_acknowledged_at` is when the last byte
arrived, `at_bytes` triggers a migration on bytes received. Each migration of a download
also records `first_data_at`, when the client first received response bytes on its new
socket (`client_disruption_ms` from the switch): the receiver's side of the disruption,
where the server's `first_data` event is the sender's. Every report names its
`client_stack`, `client_stack_version` and `protocol`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import hashlib
import json
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from qasm.agents.client import ClientAgent
from qasm.agents.messages import AgentMessageError
from testbed.apps.qlog import qlog_directory
from testbed.apps.rebinding import NetworkRebinder
from testbed.apps.server import certificate_pem, parse_address, self_signed_certificate
from testbed.apps.sockets import enlarge_buffers
from testbed.apps.stacks import PYTHON_STACKS, PythonStack, load_stack
from testbed.apps.transfer import (
    DIGEST_HEADER,
    MAX_HEADER_BYTES,
    PROTOCOLS,
    H3Request,
    StreamHeader,
    TransferProtocolError,
    TransferReply,
    alpn,
    payload_chunks,
    payload_digest,
)
from testbed.migration import MIGRATION_KINDS, MigrationKind, trigger
from testbed.records.metrics import goodput_mbps

# Payload handed to aioquic but not yet acknowledged; aioquic buffers whatever it is given,
# so without this bound "migrate at byte N" would mean "N bytes queued", not "N delivered".
SEND_WINDOW_BYTES = 1024 * 1024
# A report waits for its ack at least AGENT_REPLY_TIMEOUT_S and at least AGENT_RTT_FACTOR
# smoothed RTTs of its connection, doubling at each retry as QUIC's PTO does: a report shares
# the path's queues, and with 1,000 connections on 2 cores RTTs reach seconds (a fixed 0.2 s
# gave up on 790 of 1,000 announcements, whose clients then moved to paths nobody knew).
AGENT_REPLY_TIMEOUT_S = 0.2
AGENT_RTT_FACTOR = 2
AGENT_ATTEMPTS = 3
# An old path's socket stays open this long, or 3 smoothed RTTs if longer (RFC 9000 §9.4
# keeps old path state for a while too), so the peer's packets in flight still arrive.
OLD_SOCKET_GRACE_S = 1.0
# --agent-admit: a connection's socket is opened and admitted this long before the connection
# is due, as an agent that keeps admitted sockets ready would have done; a connection due at
# the run's start (or one whose admission is slow) waits for its admission instead.
ADMIT_LEAD_S = 0.1
OLD_PATH_RTTS = 3
# Acknowledged-bytes samples for goodput-over-time plots: fine enough to see a migration gap
# (tens of ms) without bloating the report (a 60 s transfer gives 3000 samples at most).
PROGRESS_INTERVAL_S = 0.02
# Wakes without traffic (to sample a stalled connection's flat line) cost a process this many
# a second in all, whatever its number of connections: at one per connection every 20 ms, a
# thousand connections spent on polling the CPU their transfers needed (measured: 1.4 of the
# 2 cores in the client processes, and 158 of 1,000 transfers finished). A migration due at
# a time gets its own wake-up at that time.
IDLE_WAKES_PER_PROCESS_S = 50
START_POLL_S = 0.01  # how often a ready client looks for the run's start time
# A new path does not take a local address a path of this process used in the last
# PORT_REUSE_DELAY_S, the reason TCP has TIME_WAIT: Open vSwitch's datapath keeps a retired
# path's cached entry (now "to the controller") until it has been idle for
# other_config:max-idle (10 s by default, 500 ms in an emulation: testbed.emulation.datapath),
# and a new path on the same 4-tuple meets that entry until the revalidators catch up with
# its rules, so its first packets go to the controller. Measured in rate.yaml at 200 Hz with
# 10 s: 8-50 migration packet-ins per run, all but 3 on reused ports. Across runs the
# harness empties that cache instead (Emulation.forget_cached_flows).
PORT_REUSE_DELAY_S = 10.0
PORT_REUSE_TRIES = 8  # sockets held open at most, each making the OS hand out another port


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
    local_address: list | None = None  # [ip, port] of the socket the connection started on
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
    # --agent-admit: how long the hops took to admit the connection, and how much of that
    # came after the connection was due to start (its handshake started that much later).
    admission_ms: float | None = None
    admission_wait_ms: float | None = None
    # [monotonic time, payload bytes acknowledged by the server], every PROGRESS_INTERVAL_S.
    progress: list = field(default_factory=list)
    client_stack: str | None = None
    client_stack_version: str | None = None
    protocol: str = "raw"


class _SocketForwarder(asyncio.DatagramProtocol):
    """Feeds the datagrams of a migrated-to socket into the QUIC protocol."""

    def __init__(self, protocol) -> None:
        self._protocol = protocol
        self.local: tuple[str, int] | None = None

    def connection_made(self, transport) -> None:
        self.local = tuple(transport.get_extra_info("sockname")[:2])
        if self._protocol.socket_buffer:
            enlarge_buffers(transport.get_extra_info("socket"), self._protocol.socket_buffer)

    def datagram_received(self, data: bytes, addr) -> None:
        self._protocol.receiving_on = self.local
        try:
            self._protocol.datagram_received(data, addr)
        finally:
            self._protocol.receiving_on = None


@functools.cache
def client_protocol_class(stack: PythonStack) -> type:
    """The transfer client's protocol on `stack` (testbed/apps/stacks.py)."""
    events, h3_events = stack.events, stack.h3_events

    class TransferClientProtocol(stack.QuicConnectionProtocol):
        def __init__(self, *args, protocol: str = "raw", **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.stack = stack
            self.progress = asyncio.Event()
            self.reply_buffer = bytearray()
            self.reply_complete = False
            self.last_received_at: float | None = None
            self.close_event = None
            self.socket_buffer: int | None = None  # bytes, set before the socket is made
            # The socket the datagram being processed came in on (None: the first one).
            self.receiving_on: tuple[str, int] | None = None
            # Per socket migrated to: when response bytes first arrived on it (h3).
            self.first_data_on: dict[tuple[str, int], float] = {}
            # h3: the response.
            self.h3 = stack.H3Connection(self._quic) if protocol == "h3" else None
            self.response_headers: dict[bytes, bytes] = {}
            self.response_digest = hashlib.sha256()
            self.response_bytes = 0
            self.response_completed_at: float | None = None

        def connection_made(self, transport) -> None:
            if self.socket_buffer:
                enlarge_buffers(transport.get_extra_info("socket"), self.socket_buffer)
            super().connection_made(transport)

        def datagram_received(self, data, addr) -> None:
            self.last_received_at = time.monotonic()
            super().datagram_received(data, addr)
            self.progress.set()

        def quic_event_received(self, event) -> None:
            if self.h3 is not None:
                for h3_event in self.h3.handle_event(event):
                    self._response_event(h3_event)
            elif isinstance(event, events.StreamDataReceived):
                if len(self.reply_buffer) + len(event.data) <= MAX_HEADER_BYTES:
                    self.reply_buffer += event.data
                self.reply_complete = self.reply_complete or event.end_stream
            if isinstance(event, events.ConnectionTerminated):
                self.close_event = event
            self.progress.set()

        def _response_event(self, event) -> None:
            if isinstance(event, h3_events.HeadersReceived):
                self.response_headers.update(event.headers)
            elif isinstance(event, h3_events.DataReceived):
                if event.data:
                    if self.receiving_on is not None:
                        self.first_data_on.setdefault(self.receiving_on, time.monotonic())
                    self.response_digest.update(event.data)
                    self.response_bytes += len(event.data)
            else:
                return
            if event.stream_ended and self.response_completed_at is None:
                self.response_completed_at = time.monotonic()
                self.reply_complete = True

        @property
        def transport(self) -> asyncio.DatagramTransport:
            return self._transport

        def switch_transport(self, transport: asyncio.DatagramTransport, new_cid: bool) -> None:
            """Moves the connection to `transport`; no await may separate these steps."""
            self._transport = transport
            if hasattr(self, "_sendto_many"):  # qh3 batches through the transport (GSO)
                self._sendto_many = getattr(transport, "sendto_many", None)
            if new_cid:
                self._quic.change_connection_id()
            self.transmit()

    return TransferClientProtocol


@dataclass(frozen=True)
class MigrationPlan:
    kind: MigrationKind
    new_local_ips: tuple[str, ...]  # the addresses to move to, in turn
    at_bytes: int | None = None
    at_seconds: float | None = None
    repeat_every_s: float | None = None  # migrate again this often after the first
    # Rebinding kinds only: "network" changes the mapping in the host's NAT instead of the
    # socket (testbed/apps/rebinding.py); the client does not know, so it announces nothing.
    rebind_by: str = "client"

    @property
    def new_cid(self) -> bool:
        return self.kind.new_cid

    @property
    def in_network(self) -> bool:
        return self.rebind_by == "network" and not self.kind.new_cid

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


def reply_timeouts(rtt_s: float | None) -> list[float]:
    """How long each attempt of an agent exchange waits for the ack."""
    first = max(AGENT_REPLY_TIMEOUT_S, AGENT_RTT_FACTOR * (rtt_s or 0.0))
    return [first * 2**k for k in range(AGENT_ATTEMPTS)]


@dataclass
class AgentLink:
    """The Client Agent and where its Tracking Agent listens."""

    agent: ClientAgent
    address: tuple[str, int]
    exchanges: list = field(default_factory=list)
    pending: list = field(default_factory=list)  # background exchanges (retirements)
    longest_wait_s: float = 0.0  # the longest an exchange so far could take

    async def exchange(
        self,
        build: Callable[[], tuple[int, bytes]],
        local_ip: str,
        what: str,
        owner: str,
        rtt_s: float | None,
    ) -> dict:
        """Sends the report `build()` makes and waits for its ack, retrying the identical
        datagram. The report is built only once its socket exists, with no await before it
        is sent: its counter is taken when it leaves, so reports leave in counter order even
        when a retirement and the next announcement overlap (a retirement whose counter was
        taken before an announcement overtook it was rejected as a replay). `rtt_s` is the
        connection's smoothed RTT, which sets how long each attempt waits."""
        timeouts = reply_timeouts(rtt_s)
        self.longest_wait_s = max(self.longest_wait_s, sum(timeouts))
        loop = asyncio.get_running_loop()
        transport, channel = await loop.create_datagram_endpoint(
            _AgentReplies, local_addr=(local_ip, 0), remote_addr=self.address
        )
        counter, datagram = build()
        started = time.monotonic()
        result = {
            "what": what, "connection": owner, "accepted": False, "reason": "no reply",
            "attempts": 0, "bytes": len(datagram),
        }  # fmt: skip
        try:
            for attempt, timeout in enumerate(timeouts, 1):
                result["attempts"] = attempt
                transport.sendto(datagram)
                try:
                    reply = await asyncio.wait_for(channel.replies.get(), timeout)
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

    def summary(self, owner: str) -> dict:
        """What the agent sent and heard for one connection (reports, not retries)."""
        mine = [e for e in self.exchanges if e["connection"] == owner]
        return {
            "messages": len(mine),
            "bytes": sum(e["bytes"] for e in mine),
            "exchanges": mine,
        }


class RecentPorts:
    """Local addresses this process's paths used lately, and when (the caller says)."""

    PRUNE_AT = 4096

    def __init__(self, delay_s: float = PORT_REUSE_DELAY_S) -> None:
        self.delay_s = delay_s
        self._last_used: dict[tuple[str, int], float] = {}

    def used(self, address: tuple[str, int], now: float) -> None:
        self._last_used[address] = now
        if len(self._last_used) > self.PRUNE_AT:
            self._last_used = {a: t for a, t in self._last_used.items() if self.recent(a, now)}

    def recent(self, address: tuple[str, int], now: float) -> bool:
        last = self._last_used.get(address)
        return last is not None and now - last < self.delay_s


RECENT_PORTS = RecentPorts()  # one per process: its connections share the host's ports


async def open_fresh_endpoint(factory, local_ip: str, recent: RecentPorts):
    """A datagram endpoint (transport, protocol, local address) on a local port no recent
    path of the process used (PORT_REUSE_DELAY_S), if the OS hands one out within
    PORT_REUSE_TRIES. A connection's first path too: the OS handed a connection of a
    scale.yaml host the port another of its connections had left a second before, and the
    middlebox met a new connection on a path it had just retired."""
    loop = asyncio.get_running_loop()
    held: list[asyncio.DatagramTransport] = []
    try:
        for _ in range(PORT_REUSE_TRIES):
            transport, protocol = await loop.create_datagram_endpoint(
                factory, local_addr=(local_ip, 0)
            )
            local = tuple(transport.get_extra_info("sockname")[:2])
            if not recent.recent(local, time.monotonic()):
                break
            held.append(transport)
        else:
            held.pop()  # every port recent: the last one does
    finally:
        for rejected in held:
            rejected.close()
    recent.used(local, time.monotonic())
    return transport, protocol, local


@dataclass
class _Path:
    local: tuple[str, int]
    transport: asyncio.DatagramTransport
    retired: bool = False  # told the Tracking Agent (or nobody to tell): its socket may go


class Migrator:
    """One connection's migrations, run beside its transfer (at most one at a time)."""

    def __init__(
        self,
        protocol,
        plan: MigrationPlan,
        agent: AgentLink | None,
        name: str,
        server: tuple[str, int],
    ) -> None:
        self.protocol = protocol
        self.server = server
        self.name = name  # the connection's, for the agent's per-connection account
        self.plan = plan
        self.agent = agent
        transport = protocol.transport
        self.paths = [_Path(tuple(transport.get_extra_info("sockname")[:2]), transport)]
        self.task: asyncio.Task | None = None
        self.rebinder: NetworkRebinder | None = None  # rebinding in the network
        self.public: tuple[str, int] | None = None  # the mapping the network gave it
        self.started = 0  # migrations begun (the index of the next one)
        self.last_start: float | None = None
        # Repeated migration with an agent: the next path, announced (and acknowledged)
        # ahead of its moment with the DCID it will use, so the migration waits for nobody.
        self.ahead: _Path | None = None
        self.ahead_cid: bytes | None = None
        self.recent_ports = RECENT_PORTS
        self.ahead_task: asyncio.Task | None = None  # its announcement, in flight
        self._ahead_timer: asyncio.Handle | None = None
        self._ahead_stopped = False

    @property
    def announces_ahead(self) -> bool:
        plan = self.plan
        return self.agent is not None and plan.repeat_every_s is not None and not plan.in_network

    @property
    def rtt_s(self) -> float | None:
        return self.protocol.stack.smoothed_rtt_s(self.protocol._quic)

    @property
    def busy(self) -> bool:
        return self.task is not None and not self.task.done()

    def start(self, report: ClientReport) -> None:
        self.last_start = time.monotonic()
        self.task = asyncio.get_running_loop().create_task(self._run(report, self.started))
        # The transfer loop sleeps until something happens: the end of a migration is one (the
        # next may be due already).
        self.task.add_done_callback(lambda _task: self.protocol.progress.set())
        self.started += 1

    async def _run(self, report: ClientReport, index: int) -> None:
        moved = await self.migrate(index)
        if moved is None:
            if index == 0:
                report.failure = "no spare server connection ID for active migration"
            report.migrations_skipped += 1
            return
        report.migration = report.migration or moved
        report.migrations.append(moved)

    async def migrate(self, index: int) -> dict | None:
        """Migration number `index` (0 first); None when active migration finds no spare
        CID."""
        loop = asyncio.get_running_loop()
        protocol, plan, agent = self.protocol, self.plan, self.agent
        quic, stack = protocol._quic, protocol.stack
        spare_cids = stack.spare_peer_cids(quic)  # None where the stack does not say (qh3)
        if plan.new_cid and spare_cids == 0:
            return None
        new_local_ip = plan.address(index)
        if plan.in_network:
            return await self._rebind_in_network(new_local_ip, spare_cids)
        old = self.paths[-1]
        self._cancel_ahead_timer()  # due before its next path was announced
        if self.ahead_task is not None:
            task, self.ahead_task = self.ahead_task, None
            with contextlib.suppress(Exception):  # failed: this migration announces its own
                await asyncio.shield(task)
        new, announced_ahead = self.ahead, False
        self.ahead = None
        if new is not None and plan.new_cid and self.ahead_cid != stack.peer_cid_next(quic):
            # The server retired the CID it was announced with: announce the path again.
            self._close(new)
            new = None
        if new is not None:
            announced_ahead = True
        else:
            new = await self._open_path(new_local_ip)
            if agent is not None:
                await self._announce(old, new)
        old_dcid = stack.peer_cid(quic)
        migrated_at = time.monotonic()
        protocol.switch_transport(new.transport, new_cid=plan.new_cid)
        self.paths.append(new)
        if self.announces_ahead and not self._ahead_stopped:
            # Now: announce the next path and retire the one just left, in one message. An
            # exchange takes a few ms under load (median 2.7-4 ms, p90 5-9 ms at 100 Hz):
            # started half an interval later, as it was, 25-45 % of the next migrations at
            # 100 Hz found it unanswered and announced on the spot (`announced_ahead` false).
            self._ahead_timer = loop.call_soon(self._announce_next, index + 1)
        loop.call_later(
            max(OLD_SOCKET_GRACE_S, OLD_PATH_RTTS * (self.rtt_s or 0.0)), self._grace_over, old
        )
        new_dcid = stack.peer_cid(quic)
        return {
            "kind": plan.kind,
            "at": migrated_at,
            "from": list(old.local),
            "to": list(new.local),
            "old_dcid": old_dcid.hex() if old_dcid is not None else None,
            "new_dcid": new_dcid.hex() if new_dcid is not None else None,
            "spare_cids": spare_cids,  # server CIDs the client held, unused, when it moved
            "announced_ahead": announced_ahead,
        }

    async def _open_path(self, local_ip: str) -> _Path:
        transport, _, local = await open_fresh_endpoint(
            lambda: _SocketForwarder(self.protocol), local_ip, self.recent_ports
        )
        return _Path(local, transport)

    async def _announce(self, old: _Path, new: _Path) -> bool:
        """Announces `new` (the connection is on `old`), retiring the path before `old` if
        nobody has yet: one message per migration, at most two paths at the middlebox."""
        agent, quic, new_cid = self.agent, self.protocol._quic, self.plan.new_cid
        earlier = next((p for p in self.paths[:-1] if not p.retired), None)
        if earlier is not None:
            earlier.retired = True  # claimed: its grace timer leaves it to us
        retire = earlier.local if earlier else None
        result = await agent.exchange(
            lambda: agent.agent.announce(quic, old.local, new.local, new_cid, retire),
            new.local[0], "announce", self.name, self.rtt_s,
        )  # fmt: skip
        result["retired_path"] = list(retire) if retire else None
        if earlier is not None:
            if result["accepted"]:
                # Packets in flight to it still arrive for a few RTTs; the middlebox sends
                # later ones to the current path (its retired-path redirect).
                asyncio.get_running_loop().call_later(
                    OLD_PATH_RTTS * (self.rtt_s or 0.0), self._close, earlier
                )
            else:
                earlier.retired = False  # its grace timer retires it on its own
        return result["accepted"]

    def _announce_next(self, index: int) -> None:
        self._ahead_timer = None
        stack, quic = self.protocol.stack, self.protocol._quic
        if self.protocol.close_event is not None or (
            self.plan.new_cid and not stack.spare_peer_cids(quic)
        ):
            return  # over, or no spare CID: the migration will find out and skip
        self.ahead_task = asyncio.get_running_loop().create_task(self._prepare(index))

    async def _prepare(self, index: int) -> None:
        """Opens the path of migration `index` and announces it from the current one."""
        current = self.paths[-1]
        path = await self._open_path(self.plan.address(index))
        cid = self.protocol.stack.peer_cid_next(self.protocol._quic)
        if await self._announce(current, path):
            self.ahead, self.ahead_cid = path, cid
        else:
            self._close(path)  # the migration announces its own

    async def _rebind_in_network(self, public_ip: str, spare_cids: int | None) -> dict:
        """The host's NAT moves the connection to a new public address and port; the socket,
        the DCID and the agent (which cannot know) stay as they are."""
        socket_address = self.paths[0].local
        if self.rebinder is None:
            self.rebinder = NetworkRebinder(socket_address, self.server)
        before = self.public or socket_address
        self.public = await self.rebinder.rebind(public_ip)
        dcid = self.protocol.stack.peer_cid(self.protocol._quic)
        return {
            "kind": self.plan.kind,
            "at": time.monotonic(),
            "from": list(before),
            "to": list(self.public),
            "by": "network",
            "old_dcid": dcid.hex() if dcid is not None else None,
            "new_dcid": dcid.hex() if dcid is not None else None,
            "spare_cids": spare_cids,
            "announced_ahead": False,
        }

    def stop_announcing_ahead(self) -> None:
        """No next path will be opened and announced, also after a migration still under
        way (one announcement already under way carries on)."""
        self._ahead_stopped = True
        self._cancel_ahead_timer()

    def _cancel_ahead_timer(self) -> None:
        if self._ahead_timer is not None:
            self._ahead_timer.cancel()
            self._ahead_timer = None

    def in_flight(self) -> list[asyncio.Task]:
        """Migration work that may have reached the Tracking Agent already: cancelled, it
        would leave an announced path (and its NAT port) held there with nobody to retire
        it."""
        return [t for t in (self.task, self.ahead_task) if t is not None and not t.done()]

    def retire_old_paths(self) -> None:
        """The connection is over: old paths still in their grace period carry nothing
        more, and a path announced ahead never will, so they are retired now rather than
        left to the middlebox's idle timeout (the timers would fire after the process has
        gone)."""
        if self.ahead is not None:
            self.paths.insert(0, self.ahead)
            self.ahead = None
        for path in list(self.paths[:-1]):
            self._grace_over(path)

    def close(self) -> None:
        if self.rebinder is not None:
            self.rebinder.close()

    def _close(self, path: _Path) -> None:
        path.transport.close()
        self.recent_ports.used(path.local, time.monotonic())
        if path in self.paths:
            self.paths.remove(path)

    def _grace_over(self, path: _Path) -> None:
        """Nothing more arrives on an old path after its grace period: retire it, unless a
        later announcement has already taken it."""
        if path.retired or path is self.paths[-1]:
            return
        path.retired = True
        if self.agent is None:
            self._close(path)
            return
        agent, quic = self.agent, self.protocol._quic
        local_ip = self.paths[-1].local[0]

        async def retire() -> None:
            await agent.exchange(
                lambda: agent.agent.retire(quic, path.local), local_ip, "retire", self.name,
                self.rtt_s,
            )  # fmt: skip
            self._close(path)

        agent.pending.append(asyncio.get_running_loop().create_task(retire()))


def _acknowledged_bytes(stack: PythonStack, quic, stream_id: int, queued: int, header: int):
    # The stacks discard stream data once acknowledged contiguously: what is queued and no
    # longer buffered was acknowledged (aioquic 1.7.2: _buffer_start; qh3: its core's send
    # buffer size).
    return max(0, queued - stack.buffered(quic, stream_id) - header)


@dataclass(frozen=True)
class ConnectionSpec:
    """One connection of this process: its name, payload seed and migration plan."""

    name: str
    index: int  # 1-based over the run
    seed: int
    plan: MigrationPlan | None
    start_offset_s: float  # after the run's start time


def connection_specs(args: argparse.Namespace) -> list[ConnectionSpec]:
    specs = []
    for k in range(args.connections):
        index = args.first_index + k
        plan = None
        if args.migrate:
            unit, value = trigger(args.at_bytes, args.at_seconds, args.spread, index, args.seed)
            plan = MigrationPlan(
                MigrationKind(args.migrate),
                tuple(args.migrate_ip),
                at_bytes=int(value) if unit == "at_bytes" else None,
                at_seconds=value if unit == "at_seconds" else None,
                repeat_every_s=args.repeat_every,
                rebind_by=args.rebind_by,
            )
        total = args.total_connections or args.connections
        specs.append(
            ConnectionSpec(
                name=args.client if args.connections == 1 else f"{args.client}/{k + 1}",
                index=index,
                seed=args.seed + index,
                plan=plan,
                start_offset_s=args.start_window * (index - 1) / total,
            )
        )
    return specs


async def run_transfer(
    args: argparse.Namespace,
    spec: ConnectionSpec,
    report: ClientReport,
    agent: AgentLink | None,
    wanted_at: float,
) -> None:
    """One connection, started at `wanted_at` (monotonic); with --agent-admit its socket is
    bound and admitted before that, from ADMIT_LEAD_S ahead of it. Only the socket, as an
    agent keeping admitted sockets ready would: the QUIC connection is made when it is due,
    as every variant's is, so each handshake starts from the same work."""
    admitted = None
    if agent is not None and args.agent_admit:
        admitted = await open_fresh_endpoint(_NotYetConnected, args.local_ip, RECENT_PORTS)
        asked_at = time.monotonic()
        await _admit(agent, admitted[2], spec.name, report)
        admitted_at = time.monotonic()
        report.admission_wait_ms = max(0.0, admitted_at - max(wanted_at, asked_at)) * 1000
        await asyncio.sleep(max(0.0, wanted_at - admitted_at))
    stack = load_stack(args.stack)
    configuration = stack.QuicConfiguration(
        is_client=True,
        alpn_protocols=[alpn(args.protocol)],
        server_name=args.server_name,
        verify_mode=ssl.CERT_NONE,  # the SNI may name a host the test certificate is not for
        idle_timeout=args.idle_timeout,
    )
    stack.configure(configuration, args.protocol)
    qlog = None
    if args.qlog_dir:
        qlog = configuration.quic_logger = qlog_directory(stack, args.qlog_dir, "client")
    if args.keylog:
        # Line-buffered: each secret is on disk once written, whatever ends the process.
        configuration.secrets_log_file = open(args.keylog, "a", buffering=1)  # noqa: SIM115 (lives as long as the process)
    quic = stack.QuicConnection(configuration=configuration)
    server = parse_address(args.server)
    protocol_class = client_protocol_class(stack)

    def make_protocol():
        protocol = protocol_class(quic, protocol=args.protocol)
        protocol.socket_buffer = args.socket_buffer
        return protocol

    if admitted is None:
        _, protocol, local = await open_fresh_endpoint(make_protocol, args.local_ip, RECENT_PORTS)
    else:
        transport, _, local = admitted
        protocol = make_protocol()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
    report.local_address = list(local)
    migrator = Migrator(protocol, spec.plan, agent, spec.name, server) if spec.plan else None
    try:
        report.started_at = time.monotonic()
        protocol.connect(server)
        await protocol.wait_connected()
        report.handshake_ms = (time.monotonic() - report.started_at) * 1000
        if agent is not None and args.agent_register:
            _register(agent, protocol, spec.name)
        if args.protocol == "h3":
            await _fetch(protocol, quic, args, spec, migrator, report)
        else:
            await _send_and_await_reply(protocol, quic, args, spec, migrator, report)
    except ConnectionError:
        pass  # the close event below says why
    finally:
        if migrator is not None:
            # Let a migration begun during the transfer finish (Migrator.in_flight).
            migrator.stop_announcing_ahead()
            for task in migrator.in_flight():
                try:
                    await asyncio.wait_for(
                        asyncio.shield(task), sum(reply_timeouts(migrator.rtt_s))
                    )
                except Exception:  # noqa: BLE001 (timed out or failed: either way it stops)
                    task.cancel()
            migrator.retire_old_paths()
            migrator.close()
        report.last_received_at = protocol.last_received_at
        if not report.completed and report.progress:
            report.bytes_acknowledged = report.progress[-1][1]
        rtt = stack.smoothed_rtt_s(quic)
        report.smoothed_rtt_ms = rtt * 1000 if rtt is not None else None
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
        # Its last path was in use until now: no other connection of the process takes it.
        last = tuple(protocol.transport.get_extra_info("sockname")[:2])
        RECENT_PORTS.used(last, time.monotonic())
        protocol.transport.close()
        if qlog is not None:
            qlog.close()  # the trace of a connection that has not ended yet


class _NotYetConnected(asyncio.DatagramProtocol):
    """An admitted socket's protocol until its connection is made: nothing arrives on it
    before the connection's first packet leaves."""


async def _admit(agent: AgentLink, local: tuple[str, int], name: str, report) -> None:
    """Has the hops admit the connection on its socket before its first packet (agent mode
    ahead), so its Initial passes the switch without waiting for the controller: the time
    that takes goes in `admission_ms`, not in the handshake's (the record's `opening_ms`
    adds what of it the connection waited for). Refused or unanswered, the connection opens
    all the same and its Initial is decided as without an agent."""
    result = await agent.exchange(
        lambda: agent.agent.admit(local), local[0], "admit", name, rtt_s=None
    )
    report.admission_ms = result["ms"]


def _register(agent: AgentLink, protocol, name: str) -> None:
    """Tells the Tracking Agent the path the connection is on and its DCID, once, beside the
    transfer: a rebinding done in the network, which the client cannot announce, is then
    followed by that DCID."""
    quic, local = protocol._quic, tuple(protocol.transport.get_extra_info("sockname")[:2])
    agent.pending.append(
        asyncio.get_running_loop().create_task(
            agent.exchange(
                lambda: agent.agent.announce(quic, local, local, False), local[0], "register",
                name, protocol.stack.smoothed_rtt_s(quic),
            )
        )
    )  # fmt: skip


def _maybe_migrate(
    quic, args, plan: MigrationPlan | None, migrator: Migrator | None, report, done: int
) -> None:
    """Starts the next migration when it is due: the first at its trigger (`done` bytes:
    acknowledged by the server, or received for a download), then every repeat_every_s while
    the payload is still moving; never before the handshake is confirmed (RFC 9000 §9)."""
    if migrator is None or migrator.busy or not migrator.protocol.stack.handshake_confirmed(quic):
        return
    now = time.monotonic()
    if migrator.started == 0:
        due = plan.due(done, now - report.first_byte_sent_at)
    else:
        due = (
            plan.repeat_every_s is not None
            and done < args.bytes  # while the payload moves, not awaiting the reply
            and now - migrator.last_start >= plan.repeat_every_s
        )
    if due:
        migrator.start(report)


def _next_wake(
    plan: MigrationPlan | None, migrator: Migrator | None, report: ClientReport, idle: float
) -> float:
    """When (monotonic) the transfer loop must look again even if nothing arrives: after
    `idle`, or when a time-based migration falls due. Everything else that matters (a
    datagram, a QUIC event, a migration ending) sets `protocol.progress` itself."""
    now = time.monotonic()
    wake = now + idle
    if migrator is None or migrator.busy:
        return wake
    due_at = None
    if migrator.started == 0 and plan.at_seconds is not None and report.first_byte_sent_at:
        due_at = report.first_byte_sent_at + plan.at_seconds
    elif migrator.started and plan.repeat_every_s is not None:
        due_at = migrator.last_start + plan.repeat_every_s
    # Due already but not started (the handshake is not confirmed yet): a datagram wakes it.
    if due_at is not None and due_at > now:
        wake = min(wake, due_at)
    return wake


async def _progress_or_deadline(protocol, deadline: float) -> None:
    """Until the connection makes progress or `deadline` (monotonic) passes. A timer handle,
    not asyncio.wait_for, which makes a task for every wait."""
    loop = asyncio.get_running_loop()
    timer = loop.call_later(max(0.0, deadline - time.monotonic()), protocol.progress.set)
    try:
        await protocol.progress.wait()
    finally:
        timer.cancel()


def _idle_wake_s(args: argparse.Namespace) -> float:
    return max(PROGRESS_INTERVAL_S, args.connections / IDLE_WAKES_PER_PROCESS_S)


async def _send_and_await_reply(
    protocol,
    quic,
    args: argparse.Namespace,
    spec: ConnectionSpec,
    migrator: Migrator | None,
    report: ClientReport,
) -> None:
    stack = protocol.stack
    stream_id = quic.get_next_available_stream_id()
    header = StreamHeader(client=spec.name, bytes=args.bytes).encode()
    quic.send_stream_data(stream_id, header)  # leaves with the first chunk (bytes >= 1)
    chunks = payload_chunks(args.bytes, spec.seed)
    digest = hashlib.sha256()
    sent = 0
    report.first_byte_sent_at = time.monotonic()
    plan = spec.plan
    idle = _idle_wake_s(args)
    while not protocol.reply_complete:
        if protocol.close_event is not None:
            return
        queued = len(header) + sent
        acknowledged = _acknowledged_bytes(stack, quic, stream_id, queued, len(header))
        now = time.monotonic()
        if not report.progress or now - report.progress[-1][0] >= PROGRESS_INTERVAL_S:
            report.progress.append([now, acknowledged])
        _maybe_migrate(quic, args, plan, migrator, report, acknowledged)
        before = sent
        while sent < args.bytes and stack.buffered(quic, stream_id) < SEND_WINDOW_BYTES:
            chunk = next(chunks)
            digest.update(chunk)
            sent += len(chunk)
            quic.send_stream_data(stream_id, chunk, end_stream=sent >= args.bytes)
        if sent != before:
            # Only new data needs sending here: the protocol transmits after every datagram
            # it receives and every timer, and a migration after switching.
            protocol.transmit()
        protocol.progress.clear()
        await _progress_or_deadline(protocol, _next_wake(plan, migrator, report, idle))
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


async def _fetch(
    protocol,
    quic,
    args: argparse.Namespace,
    spec: ConnectionSpec,
    migrator: Migrator | None,
    report: ClientReport,
) -> None:
    """The h3 workload: GET /bytes/N and verify what arrives (testbed/apps/transfer.py)."""
    request = H3Request(bytes=args.bytes, seed=args.seed, client=spec.name)
    expected = payload_digest(args.bytes, args.seed)  # before the clock starts
    stream_id = quic.get_next_available_stream_id()
    protocol.h3.send_headers(
        stream_id,
        [
            (b":method", b"GET"),
            (b":scheme", b"https"),
            (b":authority", args.server_name.encode()),
            (b":path", request.path.encode()),
            (b"user-agent", f"qasm-testbed ({protocol.stack.name})".encode()),
        ],
        end_stream=True,
    )
    report.first_byte_sent_at = time.monotonic()
    protocol.transmit()
    plan = spec.plan
    idle = _idle_wake_s(args)
    while not protocol.reply_complete:
        if protocol.close_event is not None:
            return
        received = protocol.response_bytes
        now = time.monotonic()
        if not report.progress or now - report.progress[-1][0] >= PROGRESS_INTERVAL_S:
            report.progress.append([now, received])
        _maybe_migrate(quic, args, plan, migrator, report, received)
        protocol.progress.clear()
        await _progress_or_deadline(protocol, _next_wake(plan, migrator, report, idle))
    report.last_byte_acknowledged_at = protocol.response_completed_at
    report.bytes_acknowledged = protocol.response_bytes
    report.progress.append([report.last_byte_acknowledged_at, protocol.response_bytes])
    for moved in report.migrations:
        arrived = protocol.first_data_on.get(tuple(moved["to"]))
        moved["first_data_at"] = arrived
        moved["client_disruption_ms"] = (arrived - moved["at"]) * 1000 if arrived else None
    status = protocol.response_headers.get(b":status", b"").decode(errors="replace")
    announced = protocol.response_headers.get(DIGEST_HEADER.encode())
    received_digest = protocol.response_digest.hexdigest()
    report.completed = True
    report.digest = {
        "expected": expected,
        "received": received_digest,
        "server": announced.decode(errors="replace") if announced else None,
    }
    report.verified = (
        status == "200"
        and protocol.response_bytes == args.bytes
        and received_digest == expected
        and (announced is None or announced.decode(errors="replace") == expected)
    )
    if not report.verified:
        report.failure = (
            f"payload mismatch: status {status or 'none'}, got {protocol.response_bytes} "
            f"bytes, sha256 {received_digest}"
        )
    else:
        report.goodput_mbps = goodput_mbps(
            args.bytes, report.first_byte_sent_at, report.last_byte_acknowledged_at
        )


async def run_connection(
    args: argparse.Namespace, spec: ConnectionSpec, start_at: float, agent: AgentLink | None
) -> ClientReport:
    stack = load_stack(args.stack)
    report = ClientReport(
        client=spec.name,
        bytes_requested=args.bytes,
        client_stack=stack.name,
        client_stack_version=stack.version,
        protocol=args.protocol,
    )
    wanted_at = start_at + spec.start_offset_s
    lead = ADMIT_LEAD_S if agent is not None and args.agent_admit else 0.0
    await asyncio.sleep(max(0.0, wanted_at - lead - time.monotonic()))
    try:
        await asyncio.wait_for(
            run_transfer(args, spec, report, agent, wanted_at), timeout=args.timeout
        )
    except TimeoutError:
        report.failure = f"transfer did not finish within the {args.timeout:g} s run timeout"
    except TransferProtocolError as exc:
        report.failure = f"bad reply from server: {exc}"
    except OSError as exc:
        report.failure = f"socket error: {exc}"
    except stack.errors as exc:
        report.failure = f"{stack.name}: {exc}"
    return report


async def wait_for_start(args: argparse.Namespace) -> float:
    """The run's start time: now, or with --start-file the monotonic time the runner writes
    there once every client process is ready (this one says so in --ready-file)."""
    if not args.start_file:
        return time.monotonic()
    Path(args.ready_file).write_text("ready\n")
    while True:
        with contextlib.suppress(FileNotFoundError, ValueError):
            return float(Path(args.start_file).read_text())
        await asyncio.sleep(START_POLL_S)


async def main_async(args: argparse.Namespace) -> list[ClientReport]:
    agent = None
    if args.agent:
        # One Client Agent for every connection of the host: one key, one counter.
        agent = AgentLink(
            ClientAgent(args.agent_id, bytes.fromhex(args.agent_key)), parse_address(args.agent)
        )
    specs = connection_specs(args)
    # The stack's one-time set-up (qh3: ~85 ms) before the clock starts, not in a handshake.
    load_stack(args.stack).warm_up(*certificate_pem(*self_signed_certificate()))
    start_at = await wait_for_start(args)
    reports = await asyncio.gather(*(run_connection(args, s, start_at, agent) for s in specs))
    if agent is not None:
        # Let retirements in flight finish: the Tracking Agent should hear of them.
        if agent.pending:
            await asyncio.wait(agent.pending, timeout=OLD_SOCKET_GRACE_S + agent.longest_wait_s)
        for report in reports:
            report.agent = agent.summary(report.client)
    return list(reports)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True, help="IPv4:PORT")
    parser.add_argument("--local-ip", required=True)
    parser.add_argument("--client", required=True, help="client name carried in the stream")
    parser.add_argument("--bytes", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--connections", type=int, default=1, help="connections from this host")
    parser.add_argument("--first-index", type=int, default=1, help="of this host's first one")
    parser.add_argument("--total-connections", type=int, help="of the run (for the window)")
    parser.add_argument("--start-window", type=float, default=0.0, help="seconds")
    parser.add_argument("--ready-file", help="written once set up (with --start-file)")
    parser.add_argument("--start-file", help="holds the run's monotonic start time")
    parser.add_argument("--migrate", choices=MIGRATION_KINDS)
    parser.add_argument("--migrate-ip", nargs="+", help="addresses to move to, in turn")
    parser.add_argument("--at-bytes", type=int)
    parser.add_argument("--at-seconds", type=float)
    parser.add_argument("--spread", type=float, default=0.0, help="seeded per connection")
    parser.add_argument(
        "--repeat-every", type=float, help="migrate again every S seconds while sending"
    )
    parser.add_argument(
        "--agent-register",
        action="store_true",
        help="tell the Tracking Agent each connection's path and DCID after its handshake",
    )
    parser.add_argument(
        "--agent-admit",
        action="store_true",
        help="have each connection admitted by the hops before its first packet (mode ahead)",
    )
    parser.add_argument(
        "--rebind-by",
        choices=("client", "network"),
        default="client",
        help="nat-rebind/addr-rebind: a new socket, or the host's NAT changes the mapping",
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
    parser.add_argument("--stack", choices=PYTHON_STACKS, default="aioquic")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="raw", help="workload")
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
    if args.agent_admit and not args.agent:
        parser.error("--agent-admit needs --agent (the Client Agent asks for the admission)")
    if args.agent and args.stack != "aioquic":
        parser.error(
            "--agent (the builtin Client Agent) needs --stack aioquic: it reads aioquic's "
            "next DCID; announce other stacks with the host agent (testbed.apps.host_agent)"
        )
    if args.bytes < 1:
        parser.error("--bytes: expected 1 or more")
    if args.connections < 1 or args.first_index < 1:
        parser.error("--connections and --first-index: expected 1 or more")
    if bool(args.start_file) != bool(args.ready_file):
        parser.error("--start-file and --ready-file go together")
    return args


def main() -> None:
    args = parse_args()
    reports = asyncio.run(main_async(args))
    with open(args.out, "w", encoding="utf-8") as stream:
        json.dump([asdict(report) for report in reports], stream)
    sys.exit(0)


if __name__ == "__main__":
    main()
