"""Garbage flooder: malformed QUIC to the service and forged agent reports, at a set rate.

    python -m testbed.apps.flood --source-ip IP --service IP:PORT --pps N --out FILE
        [--agent IP:PORT --agent-client ID] [--spoof-as IP,IP...] [--seed S] [--duration S]
        [--initials --server-name NAME --alpn ALPN [--also-from IP,IP...]]
        [--greedy-paths N --agent-key HEX]

Run on an emulated host while a real transfer goes on, it tests that the middlebox survives
what an attacker on the client's network can send (RFC 9312 §4.7: a middlebox must expect
anything). Every packet is built by hand and sent through one raw IPv4 socket bound to
`--source-ip` (so policy routing picks that address's interface), from a random source port
below the kernel's ephemeral range (1024..32767), so it never takes a real client's 5-tuple.

To the service port (every variant):
- `truncated`: 0..24 random bytes, shorter than any QUIC header;
- `garbage`: 25..1400 random bytes;
- `bad_long_header`: a QUIC v1 long header whose DCID length exceeds 20 (RFC 9000 §17.2) or
  whose Length field runs past the datagram, half of them padded to an Initial's 1200 bytes;
- `random_cid_short`: short headers (RFC 9000 §17.3) with random 8-byte DCIDs, i.e. what a
  migrated packet of an unknown connection looks like;
- `bad_udp_length`: a UDP header whose length field disagrees with the IP packet.
To the Tracking Agent (with `--agent`; qasm/agents/messages.py is the format):
- `forged`: well-formed announcements for `--agent-client` with a random HMAC tag;
- `malformed_report`: a tag and a body that is not JSON, or JSON with wrong field types;
- `oversized_report`: 513..1400 bytes, above the agent's datagram bound;
- `unknown_client`: a well-formed body naming a client without a key;
- `replayed`: the real client's own reports, captured on this host (a packet socket with a BPF
  filter) and sent again at least REPLAY_DELAY_S later, so the original always arrives first.

Spoofing (with `--spoof-as`): every datagram to the service carries a source address drawn
from those victims' instead of `--source-ip` (the socket stays bound to `--source-ip`, so it
still leaves by that address's interface), and a further kind, `spoofed_service_reply`, sends
short headers from the service's address and port to a victim: an attempt to move the
victims' and the server's locations to this host's port (BCP 38).

Initial flood (with `--initials`): instead of garbage, every datagram to the service is a
well-formed QUIC v1 client Initial (kind `initial`): a real ClientHello (aioquic's, with the
service's name and ALPN), Initial protection (RFC 9001 §5), padded to 1200 bytes (RFC 9000
§14.1), so a middlebox must admit it as a new connection and the server answers it. A pool of
INITIAL_POOL ClientHellos is built once; each datagram is sealed again with a fresh random
DCID (its keys derive from it, RFC 9001 §5.2), so every one opens a new connection, from a
random source port and one of the host's own addresses (`--source-ip` and `--also-from`, each
with its own raw socket, so each leaves by its own interface and passes unicast RPF).

Greedy client (with `--greedy-paths N`): a client with a valid key (`--agent-key`, the key the
runner gives `--agent-client`) opens a connection of its own (one Initial from its address and
a port of the flood range) and then announces N fresh paths for it to the Tracking Agent (kind
`greedy_announce`): authentic, fresh counters (above any the real client uses), its own
address with a new port each. It reads the agent's signed acks and counts them by reason.

SIGTERM (or `--duration`) ends it; it then writes one JSON object: packets sent per kind,
send errors, the achieved rate.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import signal
import socket
import struct
import sys
import threading
import time

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.crypto import CryptoPair

from qasm.agents.messages import Ack, AgentMessageError, Announce, open_sealed, seal
from qasm.wire.header import parse_datagram
from qasm.wire.initial import Sender, decrypt_initial
from testbed.apps.server import parse_address
from testbed.apps.sockets import SO_ATTACH_FILTER, attach_classic_bpf

# Flood source ports stay below Linux's default ephemeral range (32768..60999), where the
# real client's sockets live; the capture filter tells the two apart by that.
FLOOD_PORTS = (1024, 32767)
EPHEMERAL_FIRST, EPHEMERAL_LAST = 32768, 60999
TICK_S = 0.005
REPLAY_DELAY_S = 1.0
MAX_CAPTURED = 64
SERVICE_KINDS = {
    "truncated": 15,
    "garbage": 15,
    "bad_long_header": 10,
    "random_cid_short": 15,
    "bad_udp_length": 5,
}
AGENT_KINDS = {
    "forged": 15,
    "malformed_report": 8,
    "oversized_report": 5,
    "unknown_client": 4,
    "replayed": 8,
}
SPOOFED_REPLY_WEIGHT = 30  # with --spoof-as, as often as the service kinds together
# Distinct ClientHellos (key shares, SCIDs) the Initial flood rotates; the DCID, hence the
# packet protection, is fresh for every datagram. Sealing one costs ~70 µs (measured on the
# testbed host), so 5,000 a second take a third of a core.
INITIAL_POOL = 32
INITIAL_SIZE = 1200  # RFC 9000 §14.1: a client's Initial datagrams are at least this
INITIAL_DCID_BYTES = 8
INITIAL_PN_BYTES = 2
QUIC_V1 = 1
# The greedy client's counters start above any a real client reaches in a run, so every
# announcement is fresh to the Tracking Agent's replay window.
GREEDY_FIRST_COUNTER = 1 << 32
GREEDY_OPEN_S = 0.3  # from its connection's Initial to its first announcement
_ETH_P_ALL = 0x0003


def _ipv4_udp(
    src: str, sport: int, dst: str, dport: int, payload: bytes, udp_length: int | None = None
) -> bytes:
    """IPv4 + UDP; the kernel fills the IP checksum, ID and total length (raw(7)). UDP
    checksum 0: optional over IPv4 (RFC 768)."""
    length = 8 + len(payload) if udp_length is None else udp_length
    udp = struct.pack("!HHHH", sport, dport, length & 0xFFFF, 0)
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 0, 0, 0, 64, socket.IPPROTO_UDP, 0,
        socket.inet_aton(src), socket.inet_aton(dst),
    )  # fmt: skip
    return header + udp + payload


class PacketFactory:
    """Builds one datagram payload (or whole IP packet) of each kind; seeded."""

    def __init__(self, rng: random.Random, agent_client: str | None) -> None:
        self.rng = rng
        self.agent_client = agent_client

    def _bytes(self, low: int, high: int) -> bytes:
        return self.rng.randbytes(self.rng.randint(low, high))

    def truncated(self) -> bytes:
        return self._bytes(0, 24)

    def garbage(self) -> bytes:
        return self._bytes(25, 1400)

    def bad_long_header(self) -> bytes:
        rng = self.rng
        first = 0xC0 | rng.randrange(0x40)  # long header, fixed bit, any type
        version = struct.pack("!I", 1)
        if rng.random() < 0.5:
            # DCID length above 20: invalid for QUIC v1 (RFC 9000 §17.2).
            dcid_len = rng.randint(21, 255)
            body = bytes([dcid_len]) + rng.randbytes(min(dcid_len, 40))
        else:
            # Initial with a Length (2-byte varint) far beyond what follows.
            body = bytes([8]) + rng.randbytes(8) + bytes([8]) + rng.randbytes(8)
            body += b"\x00" + struct.pack("!H", 0x4000 | rng.randint(2000, 0x3FFF))
            first = 0xC0 | rng.randrange(0x10)  # type Initial
        packet = bytes([first]) + version + body + self._bytes(0, 40)
        if rng.random() < 0.5:
            packet += bytes(max(0, 1200 - len(packet)))  # an Initial's minimum size
        return packet

    def random_cid_short(self) -> bytes:
        return bytes([0x40 | self.rng.randrange(0x40)]) + self._bytes(8 + 20, 8 + 1200)

    def _report_body(self, client: str) -> dict:
        rng = self.rng
        return {
            "v": 1, "client": client, "counter": rng.randrange(1, 2**40), "type": "announce",
            "conn": rng.randbytes(8).hex(), "next_cid": rng.randbytes(8).hex(),
            "old": ["10.0.1.1", rng.randint(1024, 65535)],
            "new": ["10.0.1.1", rng.randint(1024, 65535)],
        }  # fmt: skip

    def forged(self) -> bytes:
        body = json.dumps(self._report_body(self.agent_client), separators=(",", ":"))
        return self.rng.randbytes(32) + body.encode()

    def malformed_report(self) -> bytes:
        rng = self.rng
        choice = rng.randrange(4)
        if choice == 0:
            return rng.randbytes(32) + self._bytes(1, 200)  # not JSON
        if choice == 1:
            return self._bytes(0, 32)  # no body at all
        body = self._report_body(self.agent_client)
        if choice == 2:
            body["counter"] = rng.choice(["1", -5, 1.5, None, [1]])
        else:
            body["old"] = rng.choice([["999.1.1.1", 5], ["10.0.1.1", 70000], "x", []])
        return rng.randbytes(32) + json.dumps(body).encode()

    def oversized_report(self) -> bytes:
        body = json.dumps({**self._report_body(self.agent_client), "pad": "x" * 1200})
        return self.rng.randbytes(32) + body.encode()[: self.rng.randint(513 - 32, 1400)]

    def unknown_client(self) -> bytes:
        client = f"intruder{self.rng.randrange(10**6)}"
        return self.rng.randbytes(32) + json.dumps(self._report_body(client)).encode()


class InitialFactory:
    """Well-formed client Initials, each opening a new connection: a pool of real
    ClientHellos (aioquic's first flight), sealed again per datagram with a fresh DCID."""

    def __init__(self, rng: random.Random, server_name: str, alpn: str, pool: int) -> None:
        self.rng = rng
        self._hellos: list[tuple[bytes, bytes]] = []  # (SCID, plaintext frames)
        for _ in range(pool):
            configuration = QuicConfiguration(
                is_client=True, alpn_protocols=[alpn], server_name=server_name
            )
            connection = QuicConnection(configuration=configuration)
            connection.connect(("0.0.0.0", 0), now=0.0)
            datagram = connection.datagrams_to_send(now=0.0)[0][0]
            header = parse_datagram(datagram, INITIAL_DCID_BYTES)[0]
            opened = decrypt_initial(datagram, header, sender=Sender.CLIENT, key_dcid=header.dcid)
            # The ClientHello again as one CRYPTO frame (RFC 9000 §19.6), offset 0; the padding
            # is ours, PADDING frames inside the packet (aioquic pads the datagram instead).
            (hello,) = opened.frames.crypto
            frame = b"\x06\x00" + struct.pack("!H", 0x4000 | len(hello.data)) + hello.data
            self._hellos.append((header.scid, frame))

    def initial(self) -> tuple[bytes, bytes]:
        """(DCID, datagram): one Initial (packet number 0) with a fresh random DCID; the SCID
        stays the ClientHello's, which names it in its transport parameters (RFC 9000 §7.3)."""
        scid, frames = self.rng.choice(self._hellos)
        dcid = self.rng.randbytes(INITIAL_DCID_BYTES)
        header = (
            bytes([0xC0 | (INITIAL_PN_BYTES - 1)]) + struct.pack("!I", QUIC_V1)
            + bytes([len(dcid)]) + dcid + bytes([len(scid)]) + scid + b"\x00"  # no token
        )  # fmt: skip
        tag = 16  # AEAD_AES_128_GCM (RFC 9001 §5.3)
        payload_length = INITIAL_SIZE - len(header) - 2 - INITIAL_PN_BYTES - tag
        header += struct.pack("!H", 0x4000 | (INITIAL_PN_BYTES + payload_length + tag))
        header += bytes(INITIAL_PN_BYTES)  # packet number 0
        crypto = CryptoPair()
        crypto.setup_initial(cid=dcid, is_client=True, version=QUIC_V1)
        payload = frames + bytes(payload_length - len(frames))  # PADDING frames
        return dcid, crypto.encrypt_packet(header, payload, 0)


class GreedyClient:
    """A client with a valid key announcing paths for its own connection, as many as it may
    (issue 16): what a per-client path quota (agent.max_paths) must hold against."""

    def __init__(
        self, rng: random.Random, client: str, key: bytes, source_ip: str, paths: int,
        reports: socket.socket | None = None,
    ) -> None:  # fmt: skip
        """`reports`: a UDP socket bound to `source_ip` to send announcements and read the
        agent's acks by (none: build announcements only)."""
        self.rng, self.client, self.key, self.source_ip = rng, client, key, source_ip
        self.paths = paths
        self.port = rng.randint(*FLOOD_PORTS)  # the connection's path
        self.cid = b""  # its DCID, set when it opens
        self.opened_at: float | None = None
        self.announced = 0
        self.acks: collections.Counter = collections.Counter()
        self._ports = iter(rng.sample(range(FLOOD_PORTS[0], FLOOD_PORTS[1] + 1), paths + 1))
        self._socket = reports

    @property
    def done(self) -> bool:
        return self.announced >= self.paths

    def ready(self, now: float) -> bool:
        return self.opened_at is not None and now - self.opened_at >= GREEDY_OPEN_S

    def announcement(self) -> bytes:
        port = next(self._ports)
        if port == self.port:
            port = next(self._ports)
        message = Announce(
            self.client, GREEDY_FIRST_COUNTER + self.announced, self.cid,
            self.rng.randbytes(INITIAL_DCID_BYTES),
            (self.source_ip, self.port), (self.source_ip, port),
        )  # fmt: skip
        self.announced += 1
        return seal(message, self.key)

    def send(self, datagram: bytes, agent: tuple[str, int]) -> None:
        self._socket.sendto(datagram, agent)

    def read_acks(self) -> None:
        """The agent's signed answers, counted by reason code (a rate-limited report gets
        none, so announced - answered is what the agent's rate limit took)."""
        while True:
            try:
                datagram = self._socket.recv(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # ICMP for an earlier datagram: count it, go on
                self.acks[f"error: {exc.strerror}"] += 1
                continue
            try:
                ack = open_sealed(datagram, self.key)
            except AgentMessageError:
                self.acks["unreadable"] += 1
                continue
            if isinstance(ack, Ack):
                self.acks["accepted" if ack.accepted else ack.reason.split(":")[0]] += 1

    def report(self) -> dict:
        self.read_acks()
        return {
            "client": self.client,
            "path": [self.source_ip, self.port],
            "announced": self.announced,
            "acks": dict(self.acks),
        }

    def close(self) -> None:
        self._socket.close()


class ReportCapture:
    """The real client's reports to the Tracking Agent, seen on this host's interfaces."""

    def __init__(self, agent: tuple[str, int]) -> None:
        self.reports: collections.deque[tuple[float, bytes]] = collections.deque(
            maxlen=MAX_CAPTURED
        )
        self._socket = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(_ETH_P_ALL))
        self._attach_filter(*agent)
        self._socket.settimeout(0.2)
        self.stopped = threading.Event()
        self.error: str | None = None  # why capturing stopped early, if it did
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _attach_filter(self, ip: str, port: int) -> None:
        """Classic BPF over the IP header (a SOCK_DGRAM packet socket starts there): IPv4 UDP
        to the agent, from an ephemeral source port (not ours). The socket is ETH_P_ALL
        because only those see a host's outgoing packets (dev_queue_xmit_nit), so the
        filter checks the IP version itself."""
        (agent_ip,) = struct.unpack("!I", socket.inet_aton(ip))
        ld_w, ld_b, ld_h_ind, ldx_msh, and_k = 0x20, 0x30, 0x48, 0xB1, 0x54
        jeq, jge, ret = 0x15, 0x35, 0x06
        # (code, jump if true, jump if false, k); a jump skips that many instructions, so
        # every failed check lands on the last one, "ret 0" (drop).
        program = [
            (ld_b, 0, 0, 0), (and_k, 0, 0, 0xF0), (jeq, 0, 10, 0x40),  # IPv4
            (ld_w, 0, 0, 16), (jeq, 0, 8, agent_ip),  # destination address
            (ld_b, 0, 0, 9), (jeq, 0, 6, socket.IPPROTO_UDP),
            (ldx_msh, 0, 0, 0),  # X = IP header length
            (ld_h_ind, 0, 0, 2), (jeq, 0, 3, port),  # UDP destination port
            (ld_h_ind, 0, 0, 0), (jge, 0, 1, EPHEMERAL_FIRST),  # UDP source port
            (ret, 0, 0, 65535), (ret, 0, 0, 0),
        ]  # fmt: skip
        # The socket queued every packet the host sent or received between its creation and
        # the filter (the client's first Initial, replayed as a "report", was one). So, as
        # libpcap does: a drop-all filter, drain what is queued, then the real filter.
        self._set_filter([(ret, 0, 0, 0)])
        self._socket.setblocking(False)
        try:
            while True:
                self._socket.recv(2048)
        except BlockingIOError:
            pass
        self._set_filter(program)

    def _set_filter(self, program: list[tuple[int, int, int, int]]) -> None:
        attach_classic_bpf(self._socket, SO_ATTACH_FILTER, program)

    def _run(self) -> None:
        while not self.stopped.is_set():
            try:
                packet = self._socket.recv(2048)
            except TimeoutError:
                continue
            except OSError as exc:
                self.error = str(exc)
                return
            header_len = (packet[0] & 0x0F) * 4
            self.reports.append((time.monotonic(), packet[header_len + 8 :]))

    def replayable(self, now: float) -> list[bytes]:
        return [payload for seen, payload in list(self.reports) if now - seen >= REPLAY_DELAY_S]

    def close(self) -> None:
        self.stopped.set()
        self._thread.join(1.0)
        self._socket.close()


class Flooder:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        self.service = parse_address(args.service)
        self.agent = parse_address(args.agent) if args.agent else None
        self.factory = PacketFactory(self.rng, args.agent_client)
        self.spoof_as = [ip for ip in (args.spoof_as or "").split(",") if ip]
        self.initials = None
        if args.initials or args.greedy_paths:
            self.initials = InitialFactory(self.rng, args.server_name, args.alpn, INITIAL_POOL)
        self.greedy = None
        if args.greedy_paths and self.agent:  # nothing to be greedy with without an agent
            key = bytes.fromhex(args.agent_key)
            reports = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            reports.bind((args.source_ip, 0))
            reports.setblocking(False)
            self.greedy = GreedyClient(
                self.rng, args.agent_client, key, args.source_ip, args.greedy_paths, reports
            )
        weights: dict[str, int] = {}
        if args.initials:
            weights["initial"] = 1  # an Initial flood: nothing else to the service
        elif not args.greedy_paths:
            weights.update(SERVICE_KINDS)
            if self.agent:
                weights.update(AGENT_KINDS)
            if self.spoof_as:
                weights["spoofed_service_reply"] = SPOOFED_REPLY_WEIGHT
        if self.greedy:
            weights["greedy_announce"] = 1
        # Replays need the real client's reports captured.
        self.capture = ReportCapture(self.agent) if "replayed" in weights else None
        self.kinds, self.weights = list(weights), list(weights.values())
        self.sent: collections.Counter = collections.Counter()
        self.skipped: collections.Counter = collections.Counter()
        self.errors: collections.Counter = collections.Counter()
        self.stop = threading.Event()
        # One raw socket per own address: the source address picks the interface a
        # datagram leaves by (policy routing), so each passes the switch's unicast RPF.
        self.own = [args.source_ip, *(ip for ip in (args.also_from or "").split(",") if ip)]
        self._sockets = {}
        for ip in self.own:
            raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
            raw.bind((ip, 0))
            self._sockets[ip] = raw
        self._socket = self._sockets[args.source_ip]

    def _packet(self, kind: str, now: float) -> tuple[bytes, str, str] | None:
        """(IP packet, destination address, own address to send by), or None when nothing of
        that kind is ready."""
        src = self.rng.choice(self.own) if len(self.own) > 1 else self.own[0]
        sport = self.rng.randint(*FLOOD_PORTS)
        built = self._built(kind, src, sport, now)
        return None if built is None else (*built, src)

    def _built(self, kind: str, src: str, sport: int, now: float) -> tuple[bytes, str] | None:
        if self.spoof_as:
            src = self.rng.choice(self.spoof_as)
        if kind == "initial":
            ip, port = self.service
            return _ipv4_udp(src, sport, ip, port, self.initials.initial()[1]), ip
        if kind == "greedy_announce":
            if not self.greedy.ready(now):
                return None
            self.greedy.send(self.greedy.announcement(), self.agent)
            return b"", ""  # sent by the greedy client's own socket, to read the acks
        if kind == "spoofed_service_reply":
            ip, port = self.service
            victim = self.rng.choice(self.spoof_as)
            dport = self.rng.randint(EPHEMERAL_FIRST, EPHEMERAL_LAST)
            return _ipv4_udp(ip, port, victim, dport, self.factory.random_cid_short()), victim
        if kind in SERVICE_KINDS:
            ip, port = self.service
            if kind == "bad_udp_length":
                payload = self.factory.random_cid_short()
                wrong = self.rng.choice([0, 7, 8 + len(payload) + self.rng.randint(1, 500)])
                return _ipv4_udp(src, sport, ip, port, payload, udp_length=wrong), ip
            payload = getattr(self.factory, kind)()
            return _ipv4_udp(src, sport, ip, port, payload), ip
        ip, port = self.agent
        if kind == "replayed":
            captured = self.capture.replayable(now)
            if not captured:
                return None
            payload = self.rng.choice(captured)
        else:
            payload = getattr(self.factory, kind)()
        return _ipv4_udp(src, sport, ip, port, payload), ip

    def _open_greedy_connection(self, now: float) -> None:
        """The greedy client's own connection: one Initial from its path, which the
        middlebox admits and the server answers."""
        greedy = self.greedy
        greedy.cid, initial = self.initials.initial()
        ip, port = self.service
        self._socket.sendto(_ipv4_udp(greedy.source_ip, greedy.port, ip, port, initial), (ip, 0))
        greedy.opened_at = now

    def run(self) -> dict:
        started = time.monotonic()
        deadline = started + self.args.duration if self.args.duration else None
        if self.greedy:
            self._open_greedy_connection(started)
        total = 0
        while not self.stop.is_set():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            if self.greedy and self.greedy.done and "greedy_announce" in self.kinds:
                index = self.kinds.index("greedy_announce")
                del self.kinds[index], self.weights[index]
            due = int((now - started) * self.args.pps) - total
            kinds = self.rng.choices(self.kinds, self.weights, k=max(0, due)) if self.kinds else []
            total += max(0, due)
            for kind in kinds:
                built = self._packet(kind, now)
                if built is None:
                    self.skipped[kind] += 1
                    continue
                packet, destination, own = built
                try:
                    if packet:
                        self._sockets[own].sendto(packet, (destination, 0))
                    self.sent[kind] += 1
                except OSError as exc:
                    self.errors[exc.strerror or str(exc.errno)] += 1
            if self.greedy:
                self.greedy.read_acks()
            self.stop.wait(TICK_S)
        ended = time.monotonic()
        if self.capture:
            self.capture.close()
        sent = sum(self.sent.values())
        greedy = self.greedy.report() if self.greedy else None
        if self.greedy:
            self.greedy.close()
        return {
            "pps": self.args.pps,
            "source_ip": self.args.source_ip,
            "source_ips": self.own,
            "greedy": greedy,
            "spoofed_sources": self.spoof_as,
            "started_at": started,
            "ended_at": ended,
            "sent": dict(self.sent),
            "sent_total": sent,
            "achieved_pps": sent / (ended - started) if ended > started else 0.0,
            "skipped": dict(self.skipped),  # replays before any real report was captured
            "send_errors": dict(self.errors),
            "captured_reports": len(self.capture.reports) if self.capture else 0,
            "capture_error": self.capture.error if self.capture else None,
        }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source-ip", required=True, help="this host's address to send from")
    parser.add_argument("--service", required=True, help="IPv4:PORT of the QUIC service")
    parser.add_argument("--agent", help="Tracking Agent IPv4:PORT (adds forged reports)")
    parser.add_argument("--agent-client", default="c1", help="client id forged reports claim")
    parser.add_argument(
        "--spoof-as", help="comma-separated victim addresses to send from (spoofing)"
    )
    parser.add_argument(
        "--also-from",
        help="comma-separated further own addresses to send from (each by its own interface)",
    )
    parser.add_argument(
        "--initials", action="store_true", help="well-formed client Initials, not garbage"
    )
    parser.add_argument("--server-name", default="server.qasm.test", help="SNI of the Initials")
    parser.add_argument("--alpn", default="qasm-transfer/1", help="ALPN of the Initials")
    parser.add_argument(
        "--greedy-paths", type=int, default=0,
        help="announce this many paths as --agent-client, with --agent-key",
    )  # fmt: skip
    parser.add_argument("--agent-key", help="hex: the key of --agent-client (greedy client)")
    parser.add_argument("--pps", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--duration", type=float, help="seconds (default: until SIGTERM)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.pps <= 0:
        parser.error("--pps must be positive")
    if args.greedy_paths and args.agent and not args.agent_key:
        parser.error("--greedy-paths needs --agent-key")
    return args


def main() -> None:
    args = parse_args()
    flooder = Flooder(args)
    signal.signal(signal.SIGTERM, lambda *_: flooder.stop.set())
    signal.signal(signal.SIGINT, lambda *_: flooder.stop.set())
    report = flooder.run()
    with open(args.out, "w", encoding="utf-8") as stream:
        json.dump(report, stream)
    sys.exit(0)


if __name__ == "__main__":
    main()
