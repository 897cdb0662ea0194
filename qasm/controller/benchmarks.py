"""Measurements of the controller's decisions, for `make bench` (testbed/bench.py).

Two ways, on the same real frames:

- `sans_io_decisions`: `Controller.packet_in` called directly, for three kinds of event,
  each on the state it needs, built beforehand by the controller itself from real packets:
  - `initial`: a client Initial on a new 5-tuple (variant `cid`, firewall): a new connection,
    its two rules (the service's direction copied to the controller, RFC 9312 §3.5) and the
    packet-out;
  - `migrated_path`: a short-header datagram on a new 5-tuple whose DCID is a server CID the
    controller learnt from the connection's handshake copy (variant `cid`, firewall): the
    connection found by DCID, a new path, its rules;
  - `agent_announce`: an authenticated Client Agent announcement of an active migration
    (variant `qasm`, firewall + nat, push mode): HMAC, replay window and ownership checks, a
    NAT port and the rules for the new path, the signed ack.
  Every event has fresh state: its own connection, its own 5-tuple, its own client (agent).
- `openflow_decisions`: the same Initials end to end, through the real controller process
  (`python -m qasm.controller`, os-ken) over a real OpenFlow 1.3 TCP connection from a fake
  switch in this process, cbench-style: throughput with a window of outstanding packet-ins,
  then latency one packet-in at a time, the controller's CPU time per packet-in, and the
  ratio to sans-I/O measured in the same call.

Frames: client Initials come from real aioquic clients, a pool of them reused across
5-tuples (each takes ~2 ms of TLS key generation; the `cid` firewall reads only the header).
The server's first flight and a client 1-RTT datagram come from one aioquic handshake in
memory; each connection gets its own server CID, written into every long header's SCID of the
flight and into the short header's DCID (the middlebox never decrypts them, so only an
endpoint would notice that the AEAD no longer verifies).
"""

from __future__ import annotations

import ctypes
import datetime
import functools
import gc
import os
import signal
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from os_ken.ofproto import ofproto_v1_3 as ofp

from qasm.agents.client import ClientAgent
from qasm.agents.messages import derive_client_key
from qasm.controller.events import AgentReport, PacketIn, Reason, Verdict
from qasm.controller.frame import ETH_TYPE_ARP, ETH_TYPE_IPV4, build_udp_frame
from qasm.controller.messages import COOKIE_OBSERVE, ClearFlows
from qasm.controller.pipeline import (
    AgentSettings,
    Controller,
    HopSettings,
    MiddleboxConfig,
)
from qasm.flow import FlowKey
from qasm.functions.nat import NatSettings
from qasm.wire.header import HeaderForm, parse_datagram

Figure = tuple[str, str]

DPID = 1
SERVICE_IP, SERVICE_MAC, SERVICE_PORT, SERVICE_SWITCH_PORT = (
    "10.0.0.250", "02:00:00:00:04:00", 4433, 1,
)  # fmt: skip
AGENT_IP, AGENT_MAC, AGENT_PORT, AGENT_SOURCE_PORT = "10.0.0.254", "02:00:00:00:00:fe", 7400, 7777
PUBLIC_IP, PUBLIC_MAC = "10.0.100.1", "02:00:00:00:01:01"
SECRET = b"bench secret"
ALPN = "qasm-transfer/1"
# Clients of the `initial` and `migrated_path` events: this many hosts, each on its own switch
# port, with one connection per source port.
CLIENT_HOSTS = 250
FIRST_CLIENT_PORT = 1024
MIGRATED_PORT_OFFSET = 30000  # a NAT rebinding: same host, another port
INITIAL_POOL = 200  # distinct real Initials, ~2 ms each to make
SERVER_CID_LENGTH = 8  # what aioquic issues
# A synthetic clock: the controller only compares times (idle timeout 120 s, rules in flight
# 1 s), and no event here waits on another.
TICK_S = 1e-5


@dataclass(frozen=True)
class Event:
    """One packet-in: where it arrived, the frame, its flow entry's cookie, and `now`."""

    in_port: int
    frame: bytes
    now: float
    cookie: int = 0


@dataclass(frozen=True)
class Measured:
    """Sans-I/O, `per_s` is events over the CPU time spent inside `packet_in` (the
    controller's own cost); through os-ken, packet-ins answered over wall time."""

    per_s: float
    latencies_ns: list[int]

    def figures(self, prefix: str) -> list[Figure]:
        return [
            (f"{prefix}_decisions_per_s", f"{self.per_s:.0f}"),
            (f"{prefix}_p50_us", f"{statistics.median(self.latencies_ns) / 1000:.1f}"),
            (f"{prefix}_p99_us", f"{_percentile(self.latencies_ns, 0.99) / 1000:.1f}"),
        ]


def _percentile(values: list[int], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


# --- real frames ----------------------------------------------------------------------------


def _client_initials(count: int) -> list[bytes]:
    return _initial_pool(max(1, min(count, INITIAL_POOL)))


@functools.lru_cache(maxsize=2)
def _initial_pool(size: int) -> list[bytes]:
    from qasm.wire.benchmarks import client_initials

    return client_initials(size)


def _certificate():
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench.example")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return certificate, key


@functools.cache
def _handshake_datagrams() -> tuple[bytes, bytes]:
    """The server's first datagram (its Initial and Handshake packets) and a client 1-RTT
    datagram (a PING), from one aioquic handshake run in memory."""
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection

    server_configuration = QuicConfiguration(is_client=False, alpn_protocols=[ALPN])
    server_configuration.certificate, server_configuration.private_key = _certificate()
    client = QuicConnection(
        configuration=QuicConfiguration(
            is_client=True, alpn_protocols=[ALPN], verify_mode=ssl.CERT_NONE
        )
    )
    server = QuicConnection(
        configuration=server_configuration,
        original_destination_connection_id=client._peer_cid.cid,
    )
    now = 0.0
    client.connect((SERVICE_IP, SERVICE_PORT), now=now)
    first_flight = None
    for _ in range(6):
        now += 0.001
        for datagram, _ in client.datagrams_to_send(now=now):
            server.receive_datagram(datagram, ("10.1.0.1", 50000), now=now)
        now += 0.001
        for datagram, _ in server.datagrams_to_send(now=now):
            first_flight = first_flight or datagram
            client.receive_datagram(datagram, (SERVICE_IP, SERVICE_PORT), now=now)
    if first_flight is None or not client._handshake_confirmed:
        raise RuntimeError("the in-memory aioquic handshake did not complete")
    client.send_ping(1)
    now += 0.001
    short = [d for d, _ in client.datagrams_to_send(now=now) if not d[0] & 0x80]
    return first_flight, short[0]


def _with_server_cid(flight: bytes, cid: bytes) -> bytes:
    """The server's datagram with `cid` as the SCID of every long header in it."""
    data = bytearray(flight)
    for header in parse_datagram(flight, short_dcid_length=0):
        if header.form is HeaderForm.LONG:
            if len(header.scid) != len(cid):
                raise ValueError(f"server SCID of {len(header.scid)} bytes, expected {len(cid)}")
            # RFC 9000 §17.2: first byte, version (4), DCID length, DCID, SCID length, SCID.
            start = header.offset + 7 + len(header.dcid)
            data[start : start + len(cid)] = cid
    return bytes(data)


def _with_dcid(short: bytes, cid: bytes) -> bytes:
    return short[:1] + cid + short[1 + len(cid) :]


def _server_cid(index: int) -> bytes:
    """Unique by construction, random otherwise (as a server would issue them)."""
    return index.to_bytes(4, "big") + os.urandom(SERVER_CID_LENGTH - 4)


def _host(index: int) -> tuple[str, str, int]:
    """The IPv4 address, MAC and switch port of the host with this index (< 2**16)."""
    if not 0 <= index < 1 << 16:
        raise ValueError(f"host {index}: at most {1 << 16} hosts")
    return (
        f"10.{1 + (index >> 8) % 128}.{index & 255}.{1 + (index >> 15)}",
        f"02:00:00:01:{(index >> 8) & 255:02x}:{index & 255:02x}",
        2 + index,
    )


def _client(index: int) -> tuple[str, str, int, int]:
    """The client address of connection `index` (CLIENT_HOSTS hosts, a port per connection)."""
    ip, mac, in_port = _host(index % CLIENT_HOSTS)
    port = FIRST_CLIENT_PORT + index // CLIENT_HOSTS
    if port + MIGRATED_PORT_OFFSET > 65535:
        raise ValueError(f"connection {index}: at most {CLIENT_HOSTS} clients' ports")
    return ip, mac, in_port, port


def _udp(src: tuple[str, str, int], dst: tuple[str, str, int], payload: bytes) -> bytes:
    """A UDP frame from (ip, mac, port) to (ip, mac, port)."""
    flow = FlowKey(src[0], src[2], dst[0], dst[2])
    return build_udp_frame(src[1], dst[1], flow, payload)


def _arp_request(mac: str, ip: str, target_ip: str) -> bytes:
    """RFC 826 request, as a host sends before its first IPv4 packet."""
    return (
        b"\xff" * 6
        + bytes.fromhex(mac.replace(":", ""))
        + struct.pack("!HHHBBH", ETH_TYPE_ARP, 1, ETH_TYPE_IPV4, 6, 4, 1)
        + bytes.fromhex(mac.replace(":", ""))
        + socket.inet_aton(ip)
        + b"\x00" * 6
        + socket.inet_aton(target_ip)
    )


def _to_service(payload: bytes, ip: str, mac: str, port: int) -> bytes:
    return _udp((ip, mac, port), (SERVICE_IP, SERVICE_MAC, SERVICE_PORT), payload)


def _from_service(payload: bytes, ip: str, mac: str, port: int) -> bytes:
    return _udp((SERVICE_IP, SERVICE_MAC, SERVICE_PORT), (ip, mac, port), payload)


def _service_arp() -> Event:
    """The service's ARP request: where the service is, before any QUIC packet."""
    return Event(SERVICE_SWITCH_PORT, _arp_request(SERVICE_MAC, SERVICE_IP, "10.1.0.1"), 0.0)


def _initial_events(count: int) -> list[Event]:
    """`count` client Initials, each on its own new 5-tuple (a new connection)."""
    initials = _client_initials(count)
    events = []
    for index in range(count):
        ip, mac, in_port, port = _client(index)
        payload = initials[index % len(initials)]
        events.append(Event(in_port, _to_service(payload, ip, mac, port), index * TICK_S))
    return events


def _cid_config() -> MiddleboxConfig:
    # No server answers here: with the default half-open timeout every connection would end
    # 2 s into the run and its rules' removal would be counted among the Initials' decisions.
    return MiddleboxConfig(
        variant="cid", service_ip=SERVICE_IP, service_port=SERVICE_PORT,
        half_open_timeout_s=3600.0,
    )  # fmt: skip


def _qasm_config(clients: dict[str, tuple[str, str]]) -> MiddleboxConfig:
    agent = AgentSettings(
        ip=AGENT_IP, port=AGENT_PORT, mac=AGENT_MAC,
        keys={client: derive_client_key(SECRET, client).hex() for client in clients},
        addresses={client: list(addresses) for client, addresses in clients.items()},
        mode="push",
    )  # fmt: skip
    # Two public ports per connection: the handshake's path and the announced one.
    nat = NatSettings(PUBLIC_IP, PUBLIC_MAC, first_port=1024, ports=65536 - 1024)
    return MiddleboxConfig(
        variant="qasm", service_ip=SERVICE_IP, service_port=SERVICE_PORT,
        functions=("firewall", "nat"), hops=(HopSettings(DPID, nat),), agent=agent,
    )  # fmt: skip


# --- sans-I/O -------------------------------------------------------------------------------


def _replay(controller: Controller, events: list[Event]) -> list:
    """Feeds set-up events; returns each one's last decision's event."""
    return [
        controller.packet_in(DPID, e.in_port, e.frame, e.now, e.cookie)[-1].event for e in events
    ]


def _measure(
    controller: Controller, events: list[Event], accepted: Callable[[object], bool]
) -> Measured:
    """Times `packet_in` per event; every event's decision must be the one measured.

    CPU time of this thread, not wall time: what a decision costs the controller, the same
    whether or not another process shares the cores (these machines run emulations)."""
    clock = time.thread_time_ns
    packet_in = controller.packet_in
    latencies = []
    refused = Counter()
    gc.collect()
    for event in events:
        start = clock()
        decisions = packet_in(DPID, event.in_port, event.frame, event.now, event.cookie)
        latencies.append(clock() - start)
        last = decisions[-1].event
        if not accepted(last):
            refused[(last.verdict, last.reason)] += 1
    if refused:
        raise RuntimeError(f"decisions other than the one measured: {dict(refused)}")
    return Measured(len(events) / (sum(latencies) / 1e9), latencies)


def _admitted(reason: Reason) -> Callable[[object], bool]:
    return lambda e: isinstance(e, PacketIn) and e.verdict is Verdict.ADMIT and e.reason is reason


def _initial(events: int) -> Measured:
    controller = Controller(_cid_config())
    controller.switch_connected(DPID)
    _replay(controller, [_service_arp()])
    return _measure(controller, _initial_events(events), _admitted(Reason.OPENED_BY_INITIAL))


def _migrated_path(events: int) -> Measured:
    """Connections whose server CID the controller learnt from their handshake copy, then one
    short-header datagram each from a new source port (a NAT rebinding) with that CID."""
    flight, short = _handshake_datagrams()
    controller = Controller(_cid_config())
    controller.switch_connected(DPID)
    setup = [_service_arp(), *_initial_events(events)]
    migrated = []
    now = events * TICK_S
    for index in range(events):
        ip, mac, in_port, port = _client(index)
        cid = _server_cid(index)
        frame = _from_service(_with_server_cid(flight, cid), ip, mac, port)
        setup.append(Event(SERVICE_SWITCH_PORT, frame, now + index * TICK_S, COOKIE_OBSERVE))
        frame = _to_service(_with_dcid(short, cid), ip, mac, port + MIGRATED_PORT_OFFSET)
        migrated.append(Event(in_port, frame, now + (events + index) * TICK_S))
    _replay(controller, setup)
    return _measure(controller, migrated, _admitted(Reason.DCID_MATCH))


def _agent_announce(events: int) -> Measured:
    """One client per connection (its Wi-Fi and LTE hosts): the connection opened by an
    Initial from Wi-Fi, its server CID learnt from the handshake copy; then the client's
    announcement, sent from LTE, of an active migration to LTE with the next server CID."""
    flight, _ = _handshake_datagrams()
    initials = _client_initials(events)
    hosts = {f"c{i}": (_host(2 * i), _host(2 * i + 1)) for i in range(events)}
    addresses = {client: (wifi[0], lte[0]) for client, (wifi, lte) in hosts.items()}
    controller = Controller(_qasm_config(addresses))
    controller.switch_connected(DPID)
    setup, announcements = [_service_arp()], []
    for index, (client, (wifi, lte)) in enumerate(hosts.items()):
        now = index * TICK_S
        cid = _server_cid(index)
        (wifi_ip, wifi_mac, wifi_port), (lte_ip, lte_mac, lte_port) = wifi, lte
        initial = _to_service(initials[index % len(initials)], wifi_ip, wifi_mac, 50000)
        setup.append(Event(wifi_port, initial, now))
        # The copy of the server's reply, as the switch output it: translated back.
        flight_copy = _from_service(_with_server_cid(flight, cid), wifi_ip, wifi_mac, 50000)
        setup.append(Event(SERVICE_SWITCH_PORT, flight_copy, now, COOKIE_OBSERVE))
        # ClientAgent.announce reads the DCID in use and the next spare one from aioquic.
        quic = SimpleNamespace(
            _peer_cid=SimpleNamespace(cid=cid),
            _peer_cid_available=[SimpleNamespace(cid=_server_cid(events + index))],
        )
        agent = ClientAgent(client, derive_client_key(SECRET, client))
        _, datagram = agent.announce(quic, (wifi_ip, 50000), (lte_ip, 50000), True)
        frame = _udp(
            (lte_ip, lte_mac, AGENT_SOURCE_PORT), (AGENT_IP, AGENT_MAC, AGENT_PORT), datagram
        )
        announcements.append(Event(lte_port, frame, (events + index) * TICK_S))
    _replay(controller, setup)

    def accepted(event) -> bool:
        return isinstance(event, AgentReport) and event.verdict is Verdict.ACCEPT

    return _measure(controller, announcements, accepted)


def sans_io_decisions(events: int = 20_000) -> list[Figure]:
    """Decisions per second and p50/p99 latency of `Controller.packet_in`, per kind of event."""
    figures = []
    for name, measure in (
        ("initial", _initial),
        ("migrated_path", _migrated_path),
        ("agent_announce", _agent_announce),
    ):
        figures += measure(events).figures(f"controller_{name}")
    return figures


# --- end to end through os-ken --------------------------------------------------------------

_HEADER = struct.Struct(ofp.OFP_HEADER_PACK_STR)
_PACKET_IN = struct.Struct(ofp.OFP_PACKET_IN_PACK_STR)
CONTROLLER_START_TIMEOUT_S = 30.0
ANSWER_TIMEOUT_S = 10.0
STOP_GRACE_S = 10.0  # the controller logs every connection it holds when it stops
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # In the child before exec: if this process dies (even by SIGKILL), the kernel kills the
    # controller too, so no benchmark leaves one behind.
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _message(msg_type: int, body: bytes = b"", xid: int = 0) -> bytes:
    return _HEADER.pack(ofp.OFP_VERSION, msg_type, _HEADER.size + len(body), xid) + body


def packet_in_message(in_port: int, frame: bytes, xid: int, cookie: int = 0) -> bytes:
    """OFPT_PACKET_IN (OpenFlow 1.3 §7.4.1) as a switch sends it for a flow entry whose
    action is output to the controller, the whole frame unbuffered."""
    # ofp_match with one OXM TLV (in_port, OpenFlow 1.3 §7.2.3), padded to 8 bytes.
    oxm = struct.pack("!II", ofp.OXM_OF_IN_PORT, in_port)
    match = struct.pack("!HH", ofp.OFPMT_OXM, 4 + len(oxm)) + oxm
    match += b"\x00" * (-len(match) % 8)
    body = _PACKET_IN.pack(ofp.OFP_NO_BUFFER, len(frame), ofp.OFPR_ACTION, 0, cookie)
    body += match + b"\x00\x00" + frame
    return _message(ofp.OFPT_PACKET_IN, body, xid)


class FakeSwitch:
    """The switch end of one OpenFlow 1.3 connection, as cbench plays it: it answers what the
    controller asks (features, port description, echo, barrier) and counts the rest."""

    def __init__(self, sock: socket.socket, alive: Callable[[], None], dpid: int = DPID) -> None:
        self.sock = sock
        self.dpid = dpid
        self._alive = alive  # raises when the controller process is gone
        self._buffer = bytearray()
        self.received: Counter = Counter()  # message type → count

    def handshake(self, connect_messages: int) -> None:
        """HELLO, FEATURES_REPLY (its datapath id), an empty port description; then waits for
        the `connect_messages` flow and meter mods the controller sends a new switch."""
        self.sock.sendall(_message(ofp.OFPT_HELLO, xid=1))
        while self.received[ofp.OFPT_FLOW_MOD] + self.received[ofp.OFPT_METER_MOD] < (
            connect_messages
        ):
            self.pump()

    def pump(self) -> int:
        """Reads what has arrived (waiting up to ANSWER_TIMEOUT_S for something), answers
        requests; returns the number of PACKET_OUTs among it."""
        deadline = time.monotonic() + ANSWER_TIMEOUT_S
        while True:
            try:
                chunk = self.sock.recv(1 << 18)
                break
            except TimeoutError:
                self._alive()
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the controller sent nothing for {ANSWER_TIMEOUT_S:g} s"
                    ) from None
        if not chunk:
            self._alive()
            raise RuntimeError("the controller closed the OpenFlow connection")
        self._buffer += chunk
        packet_outs = 0
        offset = 0
        while len(self._buffer) - offset >= _HEADER.size:
            _, msg_type, length, xid = _HEADER.unpack_from(self._buffer, offset)
            if len(self._buffer) - offset < length:
                break
            body = bytes(self._buffer[offset + _HEADER.size : offset + length])
            offset += length
            self.received[msg_type] += 1
            if msg_type == ofp.OFPT_PACKET_OUT:
                packet_outs += 1
            else:
                self._answer(msg_type, xid, body)
        del self._buffer[:offset]
        return packet_outs

    def _answer(self, msg_type: int, xid: int, body: bytes) -> None:
        if msg_type == ofp.OFPT_ERROR:
            error_type, code = struct.unpack_from("!HH", body)
            raise RuntimeError(f"the controller sent OFPT_ERROR type {error_type} code {code}")
        if msg_type == ofp.OFPT_ECHO_REQUEST:
            self.sock.sendall(_message(ofp.OFPT_ECHO_REPLY, body, xid))
        elif msg_type == ofp.OFPT_FEATURES_REQUEST:
            features = struct.pack(
                ofp.OFP_SWITCH_FEATURES_PACK_STR, self.dpid, 0, 254, 0,
                ofp.OFPC_FLOW_STATS | ofp.OFPC_PORT_STATS, 0,
            )  # fmt: skip
            self.sock.sendall(_message(ofp.OFPT_FEATURES_REPLY, features, xid))
        elif msg_type == ofp.OFPT_MULTIPART_REQUEST:
            (kind,) = struct.unpack_from("!H", body)
            # A port description with no ports (os-ken asks for it before MAIN_DISPATCHER).
            reply = struct.pack(ofp.OFP_MULTIPART_REPLY_PACK_STR, kind, 0)
            self.sock.sendall(_message(ofp.OFPT_MULTIPART_REPLY, reply, xid))
        elif msg_type == ofp.OFPT_BARRIER_REQUEST:
            self.sock.sendall(_message(ofp.OFPT_BARRIER_REPLY, b"", xid))

    def throughput(self, messages: list[bytes], window: int) -> float:
        """Packet-ins answered per second with up to `window` outstanding (one PACKET_OUT
        each)."""
        sent = answered = 0
        start = time.perf_counter()
        while answered < len(messages):
            if sent - answered < window and sent < len(messages):
                burst = messages[sent : answered + window]
                self.sock.sendall(b"".join(burst))
                sent += len(burst)
            answered += self.pump()
        return len(messages) / (time.perf_counter() - start)

    def latencies(self, messages: list[bytes]) -> list[int]:
        """Nanoseconds from each packet-in sent to its PACKET_OUT, one at a time."""
        clock = time.perf_counter_ns
        latencies = []
        for message in messages:
            start = clock()
            self.sock.sendall(message)
            while not self.pump():
                pass
            latencies.append(clock() - start)
        return latencies


class ControllerProcess:
    """`python -m qasm.controller` on 127.0.0.1 with a temporary config and decision log;
    a context manager that stops it (SIGTERM, then SIGKILL) and removes its files."""

    def __init__(self, config: MiddleboxConfig) -> None:
        self.config = config
        self.directory: tempfile.TemporaryDirectory | None = None
        self.popen: subprocess.Popen | None = None
        self.port = 0

    def __enter__(self) -> ControllerProcess:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *_exc) -> None:
        self.stop()

    def _start(self) -> None:
        self.directory = tempfile.TemporaryDirectory(prefix="qasm-bench-")
        root = Path(self.directory.name)
        (root / "controller.json").write_text(self.config.to_json())
        self.port = _free_tcp_port()
        argv = [
            sys.executable, "-m", "qasm.controller",
            "--config", str(root / "controller.json"),
            "--decision-log", str(root / "decisions.jsonl"),
            "--listen", f"127.0.0.1:{self.port}",
        ]  # fmt: skip
        with open(root / "controller.log", "wb") as log:
            self.popen = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
            )

    def connect(self) -> socket.socket:
        deadline = time.monotonic() + CONTROLLER_START_TIMEOUT_S
        while True:
            self.check_alive()
            try:
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=1.0)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the controller did not listen within {CONTROLLER_START_TIMEOUT_S:g} s"
                    ) from None
                time.sleep(0.05)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(0.5)
        return sock

    def cpu_seconds(self) -> float:
        """CPU time the controller's threads have run so far, in nanoseconds summed over its
        threads (proc(5): /proc/PID/task/TID/schedstat), where /proc/PID/stat counts 10 ms
        ticks; the controller's threads live as long as it does."""
        total_ns = 0
        for task in Path(f"/proc/{self.popen.pid}/task").iterdir():
            try:
                total_ns += int((task / "schedstat").read_text().split()[0])
            except (OSError, IndexError):
                continue  # a thread that ended meanwhile
        return total_ns / 1e9

    def check_alive(self) -> None:
        if self.popen is not None and self.popen.poll() is not None:
            raise RuntimeError(
                f"the controller exited with code {self.popen.returncode}: {self.log_tail()}"
            )

    def log_tail(self, lines: int = 10) -> str:
        try:
            text = (Path(self.directory.name) / "controller.log").read_text(errors="replace")
        except (OSError, AttributeError):
            return ""
        return " | ".join(text.strip().splitlines()[-lines:])

    def stop(self) -> None:
        try:
            if self.popen is not None and self.popen.poll() is None:
                self.popen.send_signal(signal.SIGTERM)
                try:
                    self.popen.wait(STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    self.popen.kill()
                    self.popen.wait()
        finally:
            self.popen = None
            if self.directory is not None:
                self.directory.cleanup()
                self.directory = None


def _flow_mods_per_initial(config: MiddleboxConfig) -> int:
    """The flow mods of an admitted Initial (sans-I/O), to check the process sent them."""
    controller = Controller(config)
    controller.switch_connected(DPID)
    _replay(controller, [_service_arp()])
    event = _initial_events(1)[0]
    return controller.packet_in(DPID, event.in_port, event.frame, event.now)[-1].flow_mods


def _connect_messages(config: MiddleboxConfig, dpid: int = DPID) -> int:
    """How many OpenFlow messages the controller sends a switch that connects (ClearFlows is
    a flow mod and a meter mod, qasm/controller/app.py)."""
    messages = Controller(config).switch_connected(dpid).messages
    return sum(2 if isinstance(m, ClearFlows) else 1 for m in messages)


def openflow_decisions(
    round_events: int = 2_000,
    rounds: int = 5,
    warmup_events: int = 1_000,
    latency_events: int = 2_000,
    window: int = 64,
) -> list[Figure]:
    """Client Initials (each a new 5-tuple) through the real controller process over
    OpenFlow 1.3: answered per second with `window` packet-ins outstanding, then p50/p99
    one at a time; `oskens_vs_sans_io` divides that rate by `Controller.packet_in`'s on the
    same frames, measured just before.

    The rate is the median of `rounds` rounds of `round_events`, after `warmup_events`: the
    first thousand packet-ins of a fresh process ran up to a third slower (tables and buffers
    growing), and a round that another process starves on these shared cores is then an
    outlier, not the figure. `oskens_initial_controller_cpu_us` is the controller process's
    CPU time (all its threads, user and system) per packet-in over the rounds: what a
    decision costs whatever else runs, and what it takes from the endpoints in a run.

    What is measured is everything the process does per packet-in: reading and unpacking
    the OFPT_PACKET_IN, `Controller.packet_in`, packing the flow mods and the PACKET_OUT,
    writing them, and writing (and flushing) the decision's JSON line to the decision log,
    as in every run. The fake switch shares the machine's cores (it spends ~10 µs a
    packet-in, measured with its own CPU time).
    """
    config = _cid_config()
    sans_io = _initial(rounds * round_events)
    frames = _initial_events(warmup_events + rounds * round_events + latency_events)
    # The warm-up's packet-ins, the rounds', then the latency's: every one a new 5-tuple.
    messages = [packet_in_message(e.in_port, e.frame, xid) for xid, e in enumerate(frames, 2)]
    warmup, measured = messages[:warmup_events], messages[warmup_events:]
    service_arp = _service_arp()
    with ControllerProcess(config) as process:
        sock = process.connect()
        try:
            switch = FakeSwitch(sock, process.check_alive)
            switch.handshake(_connect_messages(config))
            # Where the service is (as in a run, its ARP comes first): one flooded PACKET_OUT.
            switch.latencies([packet_in_message(service_arp.in_port, service_arp.frame, 1)])
            flow_mods = switch.received[ofp.OFPT_FLOW_MOD]
            if warmup:
                switch.throughput(warmup, window)
            cpu_s = process.cpu_seconds()
            rates = [
                switch.throughput(measured[i * round_events : (i + 1) * round_events], window)
                for i in range(rounds)
            ]
            cpu_s = process.cpu_seconds() - cpu_s
            latencies = switch.latencies(measured[rounds * round_events :])
            flow_mods = switch.received[ofp.OFPT_FLOW_MOD] - flow_mods
        finally:
            sock.close()
    expected = len(frames) * _flow_mods_per_initial(config)
    if flow_mods != expected:
        # Each PACKET_OUT was counted as a decision: make sure each was an admission.
        raise RuntimeError(f"{flow_mods} flow mods for {len(frames)} Initials, expected {expected}")
    per_s = statistics.median(rates)
    return [
        *Measured(per_s, latencies).figures("oskens_initial"),
        ("oskens_initial_controller_cpu_us", f"{cpu_s / (rounds * round_events) * 1e6:.1f}"),
        ("oskens_vs_sans_io", f"{per_s / sans_io.per_s:.2f}x"),
    ]


__all__ = ["openflow_decisions", "packet_in_message", "sans_io_decisions"]
