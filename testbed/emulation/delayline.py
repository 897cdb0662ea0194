"""A delay line for kernels without sch_netem: holds NFQUEUE'd packets for delay ± jitter.

Run inside a host's network namespace, next to iptables rules that send the link's packets
to NFQUEUE (see `testbed.emulation.links`):

    python -m testbed.emulation.delayline --queue 10:20:5 --queue 11:20:5 --limit 1000 \
        --lifetime-s 3600 --parent-pid PID --seed 1

Each `--queue NUM:DELAY_MS:JITTER_MS` is one direction of one link. The kernel keeps the
packets; we only see their metadata (NFQNL_COPY_META: no payload is copied to user space) and
give the verdict NF_ACCEPT when a packet is due. Semantics, chosen to match netem:
- a packet's due time is arrival + delay + uniform(-jitter, +jitter) (netem's default jitter
  distribution when no table is given), clamped so that it is never earlier than the previous
  packet's: a link is a FIFO and does not reorder (netem behaves so when a rate is set);
- at most `--limit` packets are held per queue (netem's `limit`, 1000 by default); the kernel
  itself drops beyond that (NFQA_CFG_QUEUE_MAXLEN), so the bound holds even when we lag.
Because release is FIFO, one NFQNL_MSG_VERDICT_BATCH accepts every due packet at once, which
is what keeps the CPU cost per packet low (one recv per packet, one send per wake-up).

The process ends on SIGTERM/SIGINT (accepting what it holds), after `--lifetime-s`, or when its
parent dies (PR_SET_PDEATHSIG), so a leaked delay line cannot outlive its run. It prints one
JSON line of counters on exit.

Netlink formats: include/uapi/linux/netfilter/nfnetlink_queue.h, nfnetlink.h, netlink.h.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import json
import os
import random
import select
import signal
import socket
import struct
import sys
import time
from collections import deque
from dataclasses import dataclass, field

# --- netlink / nfnetlink_queue constants --------------------------------------------------
NETLINK_NETFILTER = 12
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLMSG_ERROR = 0x2
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = 0
NFQNL_MSG_VERDICT = 1
NFQNL_MSG_CONFIG = 2
NFQNL_MSG_VERDICT_BATCH = 3
NFQA_PACKET_HDR = 1
NFQA_VERDICT_HDR = 2
NFQA_CFG_CMD = 1
NFQA_CFG_PARAMS = 2
NFQA_CFG_QUEUE_MAXLEN = 3
NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NF_DROP = 0
NF_ACCEPT = 1
SOL_NETLINK = 270
NLMSG_HDR = struct.Struct("=IHHII")  # len, type, flags, seq, portid (host order)
NFGENMSG = struct.Struct("!BBH")  # family, version, res_id (queue number, big endian)
NLA_HDR = struct.Struct("=HH")  # len, type
PACKET_MESSAGE_TYPE = (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET

RECEIVE_BUFFER_BYTES = 8 << 20  # ~80k queued metadata messages: bursts never overrun it
DRAIN_BATCH = 256  # messages read per wake-up before releasing due packets
_PR_SET_PDEATHSIG = 1


class DelayLineError(RuntimeError):
    """The delay line could not bind its queues (e.g. another process holds one)."""


# --- the schedule (sans-I/O) ----------------------------------------------------------------


@dataclass
class DelaySchedule:
    """FIFO release times for one queue: arrival + delay ± jitter, never before the previous.

    Times are seconds on any monotonic clock, given by the caller (no clock is read here).
    """

    delay_s: float
    jitter_s: float
    limit: int
    rng: random.Random = field(default_factory=random.Random)
    held: deque = field(default_factory=deque)  # (due, packet_id), due non-decreasing
    received: int = 0
    released: int = 0
    dropped: int = 0
    max_held: int = 0
    _last_due: float = float("-inf")

    def arrive(self, packet_id: int, now: float) -> float | None:
        """Schedules a packet; returns its due time, or None when the queue is full (drop)."""
        self.received += 1
        if len(self.held) >= self.limit:
            self.dropped += 1
            return None
        due = now + self.delay_s
        if self.jitter_s:
            due += self.rng.uniform(-self.jitter_s, self.jitter_s)
        due = max(due, self._last_due)
        self._last_due = due
        self.held.append((due, packet_id))
        self.max_held = max(self.max_held, len(self.held))
        return due

    def release(self, now: float) -> int | None:
        """Removes every packet due by `now`; returns the id of the last one, or None."""
        last = None
        held = self.held
        while held and held[0][0] <= now:
            last = held.popleft()[1]
            self.released += 1
        return last

    def release_all(self) -> int | None:
        return self.release(float("inf"))

    def next_due(self) -> float | None:
        return self.held[0][0] if self.held else None

    def counters(self) -> dict:
        return {
            "received": self.received,
            "released": self.released,
            "dropped_full": self.dropped,
            "max_held": self.max_held,
            "held": len(self.held),
        }


# --- netlink messages (pure) -----------------------------------------------------------------


def _attribute(kind: int, payload: bytes) -> bytes:
    length = NLA_HDR.size + len(payload)
    return NLA_HDR.pack(length, kind) + payload + b"\0" * (-length % 4)


def queue_message(message: int, queue: int, attributes: bytes, flags: int, seq: int = 0) -> bytes:
    body = NFGENMSG.pack(socket.AF_UNSPEC, 0, queue) + attributes
    kind = (NFNL_SUBSYS_QUEUE << 8) | message
    return NLMSG_HDR.pack(NLMSG_HDR.size + len(body), kind, flags, seq, 0) + body


def bind_message(queue: int, seq: int) -> bytes:
    command = struct.pack("!BxH", NFQNL_CFG_CMD_BIND, socket.AF_INET)
    return queue_message(
        NFQNL_MSG_CONFIG, queue, _attribute(NFQA_CFG_CMD, command), NLM_F_REQUEST | NLM_F_ACK, seq
    )


def params_message(queue: int, limit: int, seq: int) -> bytes:
    """Metadata only (no payload copy) and the kernel-side bound on held packets."""
    attributes = _attribute(NFQA_CFG_PARAMS, struct.pack("!IB", 0, NFQNL_COPY_META))
    attributes += _attribute(NFQA_CFG_QUEUE_MAXLEN, struct.pack("!I", limit))
    return queue_message(NFQNL_MSG_CONFIG, queue, attributes, NLM_F_REQUEST | NLM_F_ACK, seq)


def verdict_message(queue: int, packet_id: int, verdict: int, batch: bool) -> bytes:
    """A verdict for one packet, or (batch) for every held packet with id <= packet_id."""
    header = _attribute(NFQA_VERDICT_HDR, struct.pack("!II", verdict, packet_id))
    message = NFQNL_MSG_VERDICT_BATCH if batch else NFQNL_MSG_VERDICT
    return queue_message(message, queue, header, NLM_F_REQUEST)


def parse_packet(buffer, length: int) -> tuple[int, int] | None:
    """(queue, packet id) of an NFQNL_MSG_PACKET message, None for any other message."""
    if length < NLMSG_HDR.size + NFGENMSG.size:
        return None
    _, kind, _, _, _ = NLMSG_HDR.unpack_from(buffer, 0)
    if kind != PACKET_MESSAGE_TYPE:
        return None
    (queue,) = struct.unpack_from("!H", buffer, 18)
    offset = NLMSG_HDR.size + NFGENMSG.size
    while offset + NLA_HDR.size <= length:
        attr_len, attr_type = NLA_HDR.unpack_from(buffer, offset)
        if attr_len < NLA_HDR.size:
            return None
        if attr_type & 0x3FFF == NFQA_PACKET_HDR:
            (packet_id,) = struct.unpack_from("!I", buffer, offset + NLA_HDR.size)
            return queue, packet_id
        offset += (attr_len + 3) & ~3
    return None


def parse_error(buffer, length: int) -> int | None:
    """The (negative) errno of an NLMSG_ERROR message (0 is an ack), None otherwise."""
    if length < NLMSG_HDR.size + 4:
        return None
    _, kind, _, _, _ = NLMSG_HDR.unpack_from(buffer, 0)
    if kind != NLMSG_ERROR:
        return None
    return struct.unpack_from("=i", buffer, NLMSG_HDR.size)[0]


# --- the process ----------------------------------------------------------------------------


@dataclass(frozen=True)
class QueueSpec:
    number: int
    delay_ms: float
    jitter_ms: float

    @classmethod
    def parse(cls, text: str) -> QueueSpec:
        try:
            number, delay, jitter = text.split(":")
            spec = cls(int(number), float(delay), float(jitter))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"--queue {text!r}: expected NUM:DELAY_MS:JITTER_MS"
            ) from None
        if not 0 <= spec.number <= 65535:
            raise argparse.ArgumentTypeError(f"--queue {text!r}: queue number 0..65535")
        if not (0 <= spec.jitter_ms <= spec.delay_ms):
            raise argparse.ArgumentTypeError(f"--queue {text!r}: expected 0 <= jitter <= delay")
        return spec

    def argument(self) -> str:
        return f"{self.number}:{self.delay_ms:g}:{self.jitter_ms:g}"


class DelayLine:
    def __init__(self, queues: list[QueueSpec], limit: int, seed: int | None) -> None:
        rng = random.Random(seed)
        self.schedules = {
            spec.number: DelaySchedule(
                spec.delay_ms / 1000, spec.jitter_ms / 1000, limit, random.Random(rng.random())
            )
            for spec in queues
        }
        self.limit = limit
        self.overruns = 0  # ENOBUFS: the kernel dropped packets our socket had no room for
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, 33, RECEIVE_BUFFER_BYTES)  # SO_RCVBUFFORCE
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
        self.sock.bind((0, 0))
        self._seq = 0
        self._buffer = bytearray(65536)
        for number in self.schedules:
            self._request(bind_message(number, self._next_seq()), f"bind queue {number}")
            self._request(params_message(number, limit, self._next_seq()), f"configure {number}")

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _request(self, message: bytes, what: str) -> None:
        self.sock.send(message)
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            length = self.sock.recv_into(self._buffer)
            code = parse_error(self._buffer, length)
            if code is None:
                continue  # a packet already queued: it stays held by the kernel until later
            if code == 0:
                return
            raise DelayLineError(f"{what}: {os.strerror(-code)}")
        raise DelayLineError(f"{what}: no answer from the kernel")

    def run(self, lifetime_s: float, stop, wakeup_fd: int | None = None) -> None:
        """Serves until stop() is true or lifetime_s passes; then accepts what it holds.

        wakeup_fd (readable when a signal arrived) ends a wait early: Python retries an
        interrupted select() with the remaining timeout (PEP 475), so a signal alone would
        not wake us.
        """
        sock, buffer, schedules = self.sock, self._buffer, self.schedules
        sock.setblocking(False)
        fileno = sock.fileno()
        readable = [fileno] if wakeup_fd is None else [fileno, wakeup_fd]
        end = time.monotonic() + lifetime_s
        while not stop():
            now = time.monotonic()
            if now >= end:
                break
            dues = [due for s in schedules.values() if (due := s.next_due()) is not None]
            timeout = min(min(dues, default=end), end) - now
            if timeout > 0:
                # select() takes a microsecond timeval (hrtimer-backed), unlike poll/epoll's
                # milliseconds, so a wake-up lands within tens of microseconds of a due time.
                ready, _, _ = select.select(readable, [], [], timeout)
                if wakeup_fd in ready:
                    os.read(wakeup_fd, 512)
            for _ in range(DRAIN_BATCH):
                try:
                    length = sock.recv_into(buffer)
                except BlockingIOError:
                    break
                except OSError as exc:
                    if exc.errno == errno.ENOBUFS:
                        self.overruns += 1
                        continue
                    raise
                parsed = parse_packet(buffer, length)
                if parsed is None:
                    continue
                queue, packet_id = parsed
                schedule = schedules.get(queue)
                if schedule is None or schedule.arrive(packet_id, time.monotonic()) is None:
                    sock.send(verdict_message(queue, packet_id, NF_DROP, batch=False))
            now = time.monotonic()
            for number, schedule in schedules.items():
                last = schedule.release(now)
                if last is not None:
                    sock.send(verdict_message(number, last, NF_ACCEPT, batch=True))
        for number, schedule in schedules.items():
            last = schedule.release_all()
            if last is not None:
                sock.send(verdict_message(number, last, NF_ACCEPT, batch=True))

    def counters(self) -> dict:
        kernel = _kernel_queue_counters()
        return {
            "queues": {
                str(number): {**schedule.counters(), **kernel.get(number, {})}
                for number, schedule in self.schedules.items()
            },
            "overruns": self.overruns,
        }

    def close(self) -> None:
        self.sock.close()  # the kernel unbinds the queues of a closed socket


def _kernel_queue_counters() -> dict[int, dict]:
    """Kernel-side drops per queue (/proc/net/netfilter/nfnetlink_queue, this namespace)."""
    counters = {}
    try:
        with open("/proc/net/netfilter/nfnetlink_queue") as table:
            for line in table:
                fields = line.split()
                if len(fields) >= 7:
                    counters[int(fields[0])] = {
                        "kernel_dropped_full": int(fields[5]),
                        "kernel_dropped_user": int(fields[6]),
                    }
    except OSError:
        pass
    return counters


def _die_with(parent_pid: int | None) -> None:
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if parent_pid is not None and os.getppid() != parent_pid:
        sys.exit("delayline: parent already gone")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m testbed.emulation.delayline", description=__doc__
    )
    parser.add_argument("--queue", type=QueueSpec.parse, action="append", required=True)
    parser.add_argument("--limit", type=int, default=1000, help="packets held per queue")
    parser.add_argument("--lifetime-s", type=float, required=True)
    parser.add_argument("--parent-pid", type=int, help="exit if this is no longer our parent")
    parser.add_argument("--seed", type=int, help="seed of the jitter draws")
    args = parser.parse_args(argv)
    if len({spec.number for spec in args.queue}) != len(args.queue):
        parser.error("--queue numbers must differ")
    if not 1 <= args.limit <= 1_000_000:
        parser.error("--limit: expected 1..1000000")
    _die_with(args.parent_pid)
    stopping = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.append(True))
    wakeup_read, wakeup_write = os.pipe()
    os.set_blocking(wakeup_write, False)
    os.set_blocking(wakeup_read, False)
    signal.set_wakeup_fd(wakeup_write)
    try:
        line = DelayLine(args.queue, args.limit, args.seed)
    except (OSError, DelayLineError) as exc:
        print(json.dumps({"event": "failed", "error": str(exc)}), flush=True)
        return 1
    print(json.dumps({"event": "ready", "queues": [s.argument() for s in args.queue]}), flush=True)
    started = time.monotonic()
    try:
        line.run(args.lifetime_s, lambda: bool(stopping), wakeup_read)
    finally:
        cpu = os.times()
        print(
            json.dumps(
                {
                    "event": "exit",
                    "reason": "signal" if stopping else "lifetime",
                    "seconds": round(time.monotonic() - started, 3),
                    "cpu_s": round(cpu.user + cpu.system, 3),
                    **line.counters(),
                }
            ),
            flush=True,
        )
        line.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
