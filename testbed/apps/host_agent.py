"""The host Client Agent's I/O: NFQUEUE, a packet capture, the key log, the Tracking Agent.

    python -m testbed.apps.host_agent --service IP:PORT --agent IP:PORT --agent-id ID
        --agent-key HEX --keylog FILE --events FILE [--queue N (65000)]
        [--install-rule [--iptables PROGRAM]] [--hold-timeout S] [--quiet-after S]
        [--retired-grace S] [--lifetime-s S] [--register]
        [--parent-pid PID] [--ready-file FILE]

Runs on the client's host beside an unmodified client (any stack), as root. The logic is
qasm/agents/host.py (sans-I/O); this file only moves bytes:
- NFQUEUE queue N, payload copied (NFQNL_COPY_PACKET): the first datagrams of every new
  client 4-tuple to the service, held until the core's verdict. The rule that queues them
  (`--install-rule` adds it at start and deletes it at exit; otherwise the runner does):
      iptables-legacy -w -I OUTPUT -p udp -d SERVICE_IP --dport SERVICE_PORT
          -m conntrack --ctstate NEW -j NFQUEUE --queue-num N --queue-bypass
  conntrack calls a UDP flow NEW until the server answered, so every datagram the client
  sends on a new path before the server's first reply is held with the first, and
  `--queue-bypass` lets traffic pass when no agent is bound.
- an AF_PACKET capture (SOCK_DGRAM and ETH_P_ALL, since only such taps see outgoing
  packets; all interfaces of the namespace; a classic BPF filter for UDP to or from the
  service port): the client's datagrams as they leave (PACKET_OUTGOING) and the server's as
  they arrive (PACKET_HOST), so loopback's double copies count once. Passive: the agent
  never delays these.
- the key log (the client's SSLKEYLOGFILE), read as it grows, every loop turn (<= 10 ms).
- one UDP socket per client address to the Tracking Agent (reports leave from the address
  of the path they are about).

The netlink messages are testbed.emulation.delayline's (bind, verdict, errors); what that
module lacks for a payload-reading queue is here: the copy-packet parameters and reading
NFQA_PAYLOAD (delayline copies metadata only). Events (`--events`, JSON lines): each hold,
announcement (with `hold_ms`, the ack's round trip the held datagram waited), retirement,
and an `exit` line with the counters.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import errno
import json
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

from qasm.agents.client import ClientAgent
from qasm.agents.host import HostAgent, Release, Send
from testbed.apps.sockets import SO_ATTACH_FILTER, attach_classic_bpf
from testbed.emulation.delayline import (
    NETLINK_NETFILTER,
    NF_ACCEPT,
    NFGENMSG,
    NFQA_CFG_PARAMS,
    NFQA_CFG_QUEUE_MAXLEN,
    NFQA_PACKET_HDR,
    NFQNL_MSG_CONFIG,
    NLA_HDR,
    NLM_F_ACK,
    NLM_F_REQUEST,
    NLMSG_HDR,
    PACKET_MESSAGE_TYPE,
    bind_message,
    parse_error,
    queue_message,
    verdict_message,
)

NFQNL_COPY_PACKET = 2  # nfnetlink_queue.h: copy the packet, up to copy_range bytes
NFQA_PAYLOAD = 10
COPY_RANGE = 0xFFFF
QUEUE_LIMIT = 1024
ETH_P_IP = 0x0800
ETH_P_ALL = 0x0003
PACKET_HOST, PACKET_OUTGOING = 0, 4  # linux/if_packet.h
# Above the queue numbers the link delay lines take in a host (2 x ifindex + 0/1, small).
DEFAULT_QUEUE = 65000
# As the link emulation: the nft front end needs CONFIG_NFT_QUEUE for NFQUEUE, which some of
# these kernels lack; the legacy xtables path uses xt_NFQUEUE.
IPTABLES = "iptables-legacy" if shutil.which("iptables-legacy") else "iptables"
LOOP_WAKE_S = 0.01  # the key log is read at least this often
CAPTURE_BATCH = 256  # captured datagrams opened per loop turn (~30 µs each)
_PR_SET_PDEATHSIG = 1


# --- netlink: a queue that copies payloads (pure) ----------------------------------------------


def _attribute(kind: int, payload: bytes) -> bytes:
    # As delayline's private helper (netlink attributes are 4-byte aligned).
    length = NLA_HDR.size + len(payload)
    return NLA_HDR.pack(length, kind) + payload + b"\0" * (-length % 4)


def copy_packet_params(queue: int, limit: int, seq: int) -> bytes:
    """NFQA_CFG_PARAMS with the packet copied (up to COPY_RANGE bytes) and a kernel bound."""
    attributes = _attribute(NFQA_CFG_PARAMS, struct.pack("!IB", COPY_RANGE, NFQNL_COPY_PACKET))
    attributes += _attribute(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", limit))
    return queue_message(NFQNL_MSG_CONFIG, queue, attributes, NLM_F_REQUEST | NLM_F_ACK, seq)


def parse_queued(buffer, length: int) -> tuple[int, int, bytes] | None:
    """(queue, packet id, IP packet) of an NFQNL_MSG_PACKET message; None otherwise."""
    if length < NLMSG_HDR.size + NFGENMSG.size:
        return None
    _, kind, _, _, _ = NLMSG_HDR.unpack_from(buffer, 0)
    if kind != PACKET_MESSAGE_TYPE:
        return None
    (queue,) = struct.unpack_from("!H", buffer, NLMSG_HDR.size + 2)
    offset = NLMSG_HDR.size + NFGENMSG.size
    packet_id, payload = None, None
    while offset + NLA_HDR.size <= length:
        attr_len, attr_type = NLA_HDR.unpack_from(buffer, offset)
        if attr_len < NLA_HDR.size:
            return None
        body = offset + NLA_HDR.size
        if attr_type & 0x3FFF == NFQA_PACKET_HDR:
            (packet_id,) = struct.unpack_from("!I", buffer, body)
        elif attr_type & 0x3FFF == NFQA_PAYLOAD:
            payload = bytes(buffer[body : offset + attr_len])
        offset += (attr_len + 3) & ~3
    if packet_id is None:
        return None
    return queue, packet_id, payload or b""


def udp_datagram(packet: bytes) -> tuple[tuple[str, int], tuple[str, int], bytes] | None:
    """(source, destination, UDP payload) of an IPv4 UDP packet; None for anything else."""
    if len(packet) < 28 or packet[0] >> 4 != 4 or packet[9] != socket.IPPROTO_UDP:
        return None
    header = (packet[0] & 0x0F) * 4
    if struct.unpack_from("!H", packet, 6)[0] & 0x3FFF:  # a fragment: no whole datagram
        return None
    source_port, destination_port, udp_length = struct.unpack_from("!HHH", packet, header)
    end = min(len(packet), header + udp_length)
    return (
        (socket.inet_ntoa(packet[12:16]), source_port),
        (socket.inet_ntoa(packet[16:20]), destination_port),
        packet[header + 8 : end],
    )


# Classic BPF on a SOCK_DGRAM packet socket starts at the IP header: IPv4 (the skb's
# protocol, an ancillary load), UDP, not a fragment, source or destination port = the
# service's. Jump offsets count from the next instruction.
_LD_B, _LD_H, _LDX_MSH, _LD_H_IND = 0x30, 0x28, 0xB1, 0x48
_JEQ, _JSET, _RET = 0x15, 0x45, 0x06
SKF_AD_PROTOCOL = 0xFFFFF000  # SKF_AD_OFF + SKF_AD_PROTOCOL (linux/filter.h)


def capture_filter(port: int) -> list[tuple[int, int, int, int]]:
    return [
        (_LD_H, 0, 0, SKF_AD_PROTOCOL),
        (_JEQ, 0, 10, ETH_P_IP),
        (_LD_B, 0, 0, 9),  # protocol
        (_JEQ, 0, 8, socket.IPPROTO_UDP),
        (_LD_H, 0, 0, 6),  # flags and fragment offset
        (_JSET, 6, 0, 0x1FFF),
        (_LDX_MSH, 0, 0, 0),  # X = IP header length
        (_LD_H_IND, 0, 0, 0),  # source port
        (_JEQ, 2, 0, port),
        (_LD_H_IND, 0, 0, 2),  # destination port
        (_JEQ, 0, 1, port),
        (_RET, 0, 0, 0xFFFF),
        (_RET, 0, 0, 0),
    ]


# --- the process --------------------------------------------------------------------------------


class Queue:
    """One NFQUEUE queue, bound with payload copies."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.bind((0, 0))
        self._buffer = bytearray(COPY_RANGE + 4096)
        self._request(bind_message(number, 1), f"bind queue {number}")
        self._request(copy_packet_params(number, QUEUE_LIMIT, 2), f"configure queue {number}")
        self.sock.setblocking(False)

    def _request(self, message: bytes, what: str) -> None:
        self.sock.send(message)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            length = self.sock.recv_into(self._buffer)
            code = parse_error(self._buffer, length)
            if code is None:
                continue
            if code == 0:
                return
            raise OSError(-code, f"{what}: {os.strerror(-code)}")
        raise OSError(errno.ETIMEDOUT, f"{what}: no answer from the kernel")

    def receive(self) -> list[tuple[int, bytes]]:
        queued = []
        while True:
            try:
                length = self.sock.recv_into(self._buffer)
            except BlockingIOError:
                return queued
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    continue
                raise
            parsed = parse_queued(self._buffer, length)
            if parsed is not None:
                queued.append((parsed[1], parsed[2]))

    def accept(self, packet_id: int) -> None:
        self.sock.send(verdict_message(self.number, packet_id, NF_ACCEPT, batch=False))

    def close(self) -> None:
        self.sock.close()


class Capture:
    """Passive copies of the service's UDP datagrams, both directions."""

    def __init__(self, port: int) -> None:
        # ETH_P_ALL: only taps on every protocol see outgoing packets (dev_queue_xmit_nit).
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
        attach_classic_bpf(self.sock, SO_ATTACH_FILTER, capture_filter(port))
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE
        self.sock.setblocking(False)
        # Datagrams queued before the filter was attached may be of any kind: drop them.
        while True:
            try:
                self.sock.recv(65535)
            except BlockingIOError:
                break

    def receive(self, limit: int | None = None) -> list[tuple[int, bytes]]:
        packets = []
        while limit is None or len(packets) < limit:
            try:
                packet, address = self.sock.recvfrom(65535)
            except BlockingIOError:
                break
            packets.append((address[2], packet))
        return packets


class KeyLogReader:
    def __init__(self, path: str) -> None:
        self.path = path
        self.offset = 0

    def read(self) -> str:
        try:
            with open(self.path, "rb") as stream:
                stream.seek(self.offset)
                data = stream.read()
        except FileNotFoundError:
            return ""
        self.offset += len(data)
        return data.decode("ascii", errors="replace")


def rule(args: argparse.Namespace, action: str) -> list[str]:
    ip, port = _address(args.service)
    return [
        args.iptables, "-w", action, "OUTPUT", "-p", "udp", "-d", ip, "--dport", str(port),
        "-m", "conntrack", "--ctstate", "NEW",
        "-j", "NFQUEUE", "--queue-num", str(args.queue), "--queue-bypass",
    ]  # fmt: skip


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


class Agent:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.core = HostAgent(
            ClientAgent(args.agent_id, bytes.fromhex(args.agent_key)),
            _address(args.service),
            hold_timeout_s=args.hold_timeout,
            quiet_after_s=args.quiet_after,
            retired_grace_s=args.retired_grace,
            register=args.register,
        )
        self.tracking = _address(args.agent)
        self.sockets: dict[str, socket.socket] = {}
        self.queue = Queue(args.queue)
        self.capture = Capture(_address(args.service)[1])
        self.keylog = KeyLogReader(args.keylog) if args.keylog else None
        self.events = open(args.events, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())

    def _socket(self, source_ip: str) -> socket.socket:
        sock = self.sockets.get(source_ip)
        if sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((source_ip, 0))
            sock.setblocking(False)
            self.sockets[source_ip] = sock
        return sock

    def _do(self, actions) -> None:
        for action in actions:
            if isinstance(action, Send):
                try:
                    self._socket(action.source_ip).sendto(action.datagram, self.tracking)
                except OSError as exc:
                    self.core.counters[f"send_error: {exc.strerror}"] += 1
            elif isinstance(action, Release):
                for packet_id in action.packet_ids:
                    self.queue.accept(packet_id)
        for entry in self.core.log:
            self.events.write(json.dumps(entry) + "\n")
        if self.core.log:
            self.events.flush()
            self.core.log.clear()

    def turn(self, timeout: float, wakeup_fd: int) -> None:
        readable = [self.queue.sock, self.capture.sock, wakeup_fd, *self.sockets.values()]
        ready, _, _ = select.select(readable, [], [], max(0.0, timeout))
        if wakeup_fd in ready:
            os.read(wakeup_fd, 512)
        queued = [(packet_id, udp_datagram(packet)) for packet_id, packet in self.queue.receive()]
        # A held datagram waits for the verdict, so it goes before the capture's backlog
        # (tens of datagrams to open in a burst), unless its DCID is not known yet: then the
        # capture may hold the NEW_CONNECTION_ID that names it, and goes first.
        if any(p is not None and not self.core.recognises(p[2]) for _, p in queued):
            self._drain_capture()
            self._read_key_log()
        for packet_id, parsed in queued:
            if parsed is None:
                self._do([Release((packet_id,))])
                continue
            source, destination, payload = parsed
            self._do(self.core.hold(packet_id, payload, source, destination, time.monotonic()))
        # Then the Tracking Agent's answers (they release held datagrams), then the capture,
        # a bounded batch per turn so that an answer never waits behind a long backlog.
        for sock in list(self.sockets.values()):
            while True:
                try:
                    reply = sock.recv(4096)
                except (BlockingIOError, ConnectionRefusedError):
                    break
                self._do(self.core.reply(reply, time.monotonic()))
        self._do(self.core.tick(time.monotonic()))
        self._drain_capture(CAPTURE_BATCH)
        self._read_key_log()

    def _read_key_log(self) -> None:
        if self.keylog is not None:
            text = self.keylog.read()
            if text:
                self.core.add_key_log(text)

    def _drain_capture(self, limit: int | None = None) -> None:
        service = _address(self.args.service)
        for kind, packet in self.capture.receive(limit):
            parsed = udp_datagram(packet)
            if parsed is None:
                continue
            source, destination, payload = parsed
            to_service = destination == service
            if (to_service and kind != PACKET_OUTGOING) or (not to_service and kind != PACKET_HOST):
                continue  # loopback shows each datagram twice
            self.core.observe(payload, source, destination, time.monotonic())

    def run(self, stop, wakeup_fd: int) -> None:
        end = time.monotonic() + self.args.lifetime_s
        while not stop() and time.monotonic() < end:
            deadline = self.core.next_deadline()
            timeout = LOOP_WAKE_S
            if deadline is not None:
                timeout = min(timeout, deadline - time.monotonic())
            self.turn(timeout, wakeup_fd)
        # Let whatever is still held go: the agent must never be what stops a client.
        self._do(self.core.release_all())

    def close(self) -> None:
        summary = self.core.summary()
        cpu = os.times()
        summary["cpu_s"] = round(cpu.user + cpu.system, 3)
        self.events.write(json.dumps({"what": "exit", "t": time.monotonic(), **summary}) + "\n")
        self.events.close()
        self.queue.close()
        for sock in self.sockets.values():
            sock.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--service", required=True, help="the server's IPv4:PORT")
    parser.add_argument("--agent", required=True, help="the Tracking Agent's IPv4:PORT")
    parser.add_argument("--agent-id", required=True)
    parser.add_argument("--agent-key", required=True, help="this client's key, hex")
    parser.add_argument("--keylog", help="the client's SSLKEYLOGFILE (read as it grows)")
    parser.add_argument(
        "--queue",
        type=int,
        default=DEFAULT_QUEUE,
        help="NFQUEUE number (the link delay lines use 2*ifindex and 2*ifindex+1)",
    )
    parser.add_argument(
        "--iptables",
        default=IPTABLES,
        help="iptables-legacy where present, as the link emulation (testbed/emulation/links.py)",
    )
    parser.add_argument("--events", required=True, help="JSON lines of what it did")
    parser.add_argument("--install-rule", action="store_true", help="add/remove the rule")
    parser.add_argument("--hold-timeout", type=float, default=0.6, help="seconds")
    parser.add_argument("--quiet-after", type=float, default=1.0, help="seconds")
    parser.add_argument(
        "--retired-grace", type=float, default=0.2, help="seconds, after the client's RETIRE"
    )
    parser.add_argument(
        "--register",
        action="store_true",
        help="tell each connection's path and DCID once it is in 1-RTT (for rebinding done "
        "in the network, which nobody announces)",
    )
    parser.add_argument("--lifetime-s", type=float, default=3600.0)
    parser.add_argument("--parent-pid", type=int, help="exit when this parent is gone")
    parser.add_argument("--ready-file", help="written once the queue is bound")
    args = parser.parse_args(argv)
    if not 0 <= args.queue <= 65535:
        parser.error("--queue: expected 0..65535")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if args.parent_pid is not None and os.getppid() != args.parent_pid:
        return 1
    stopping: list[bool] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.append(True))
    wakeup_read, wakeup_write = os.pipe()
    os.set_blocking(wakeup_read, False)
    os.set_blocking(wakeup_write, False)
    signal.set_wakeup_fd(wakeup_write)
    agent = Agent(args)
    installed = False
    try:
        if args.install_rule:
            subprocess.run(rule(args, "-I"), check=True, timeout=10)
            installed = True
        if args.ready_file:
            Path(args.ready_file).write_text("ready\n")
        agent.run(lambda: bool(stopping), wakeup_read)
    finally:
        if installed:
            subprocess.run(rule(args, "-D"), check=False, timeout=10)
        agent.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
