"""The os-ken (Ryu API) app: a thin shell around `Controller` (every datapath of the run).

Each handler is one delegation call, run on the receiving datapath's thread; `_send_and_log`
is the one place that turns decisions into OpenFlow 1.3 messages, written to the socket of the
datapath each decision names, and writes the decision log (one typed event per line,
qasm/controller/events.py). A datapath's messages are read by `_receive` (in place of
os-ken's receive loop): packet-ins of the usual shape go straight to `_packet_in`, the rest
through os-ken's parsers and handlers as before. An unhandled
exception ends the process loudly (faucet's kill_on_exception): the runner sees a dead
controller and reports an infrastructure failure instead of measuring a half-dead middlebox.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import os
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from dataclasses import replace

from os_ken import cfg
from os_ken.base import app_manager
from os_ken.controller import ofp_event
from os_ken.controller.handler import (
    DEAD_DISPATCHER,
    HANDSHAKE_DISPATCHER,
    MAIN_DISPATCHER,
    set_ev_cls,
)
from os_ken.ofproto import ofproto_parser, ofproto_v1_3

from qasm.controller.events import KernelPath
from qasm.controller.kernel_anchor import ConntrackAnchor
from qasm.controller.openflow import encode
from qasm.controller.packet_in import unpack_packet_in
from qasm.controller.pipeline import Controller, Decision, MiddleboxConfig
from qasm.flow import FlowKey

CONF = cfg.CONF
CONF.register_cli_opts(
    [
        cfg.StrOpt("qasm-config", help="middlebox configuration (JSON file)"),
        cfg.StrOpt("qasm-decision-log", help="JSON-lines decision log (appended)"),
    ]
)
_HEADER = struct.Struct(ofproto_v1_3.OFP_HEADER_PACK_STR)
# One read takes whatever the switch has sent, up to this much: os-ken's loop read each
# message in two (its header, then the rest), two system calls per packet-in.
RECEIVE_BYTES = 1 << 16
EXIT_HANDLER_CRASHED = 70
# A decision log line as json.dumps writes it; records are trees that to_json_value built,
# never cyclic, so the encoder need not track what it is inside (0.7 us of ~5.5 us a line).
_JSON = json.JSONEncoder(check_circular=False)
# At most this often, a `stats` line (table and counter sizes) joins the decision log; written
# from the event thread, so it never reads the tables while a handler changes them.
STATS_INTERVAL_S = 1.0
STOP_LOCK_TIMEOUT_S = 1.0
FLUSH_INTERVAL_S = 0.2


def kill_on_exception(handler):
    @functools.wraps(handler)
    def wrapper(*args, **kwargs):
        try:
            return handler(*args, **kwargs)
        except Exception:
            traceback.print_exc(file=sys.stderr)
            sys.stderr.flush()
            os._exit(EXIT_HANDLER_CRASHED)

    return wrapper


class MiddleboxApp(app_manager.OSKenApp):
    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        with open(CONF.qasm_config, encoding="utf-8") as stream:
            self.config = MiddleboxConfig.from_json(stream.read())
        self.controller = Controller(self.config)
        self.kernel = (
            ConntrackAnchor(self.config.kernel_netns_pid)
            if self.config.kernel_netns_pid is not None
            else None
        )
        self.decision_log = open(  # noqa: SIM115 (lives as long as the process)
            CONF.qasm_decision_log, "a", encoding="utf-8", buffering=1 << 20
        )
        self._datapaths: dict[int, object] = {}
        self._stats_at = float("-inf")
        self._flushed_at = float("-inf")
        self._xid = 0  # of the messages we send (packed by qasm.controller.openflow)
        # Handlers run on os-ken's threads and the stop signal on the main thread: one lock,
        # so the final snapshot never reads a table a handler is changing.
        self._lock = threading.Lock()
        # The runner stops the controller with SIGTERM: the tables as they are then are the
        # run's end state (`connection_state` events), read by the metrics.
        signal.signal(signal.SIGTERM, self._stop)
        # Everything made so far (os-ken, its parsers, the config) lives as long as the
        # process: out of the collector's reach, so full collections, which the growing
        # connection table sets off, walk only the tables (os-ken benchmark: ~10% more
        # packet-ins per second, measured three times against three).
        gc.freeze()

    def _send_event(self, ev, state) -> None:
        # Handled on the thread that read the message (the datapath's receive loop), not
        # queued for the app's event thread: the thread handoff per packet-in cost more than
        # deciding it. Events of one switch stay in the order it sent them; the lock keeps
        # switches apart.
        if ev is self._event_stop:
            super()._send_event(ev, state)
            return
        for handler in self.get_handlers(ev, state):
            handler(ev)

    @set_ev_cls(ofp_event.EventOFPStateChange, HANDSHAKE_DISPATCHER)
    @kill_on_exception
    def switch_connecting(self, ev) -> None:
        # Called while os-ken builds the Datapath, before its send thread and its receive
        # loop exist: no write of os-ken's can be under way on the plain socket, and
        # Datapath.serve() calls the `_recv_loop` set here.
        datapath = ev.datapath
        # Each write is a whole answer the switch waits for (a packet-out first): sent at
        # once, not held by Nagle's algorithm until the previous one is acknowledged.
        datapath.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        datapath.socket = SerialSocket(datapath.socket)
        datapath._recv_loop = functools.partial(self._receive, datapath)

    @set_ev_cls(ofp_event.EventOFPStateChange, MAIN_DISPATCHER)
    @kill_on_exception
    def switch_ready(self, ev) -> None:
        # Once os-ken's handshake (features, port description) is over: the switch's first
        # packet-ins are answers to the rules sent here, never earlier than them.
        datapath = ev.datapath
        self._datapaths[datapath.id] = datapath
        with self._lock:
            self._send_and_log([self.controller.switch_connected(datapath.id)])
            self.decision_log.flush()  # at once: the runner waits for the switch's line

    @set_ev_cls(ofp_event.EventOFPPacketIn, MAIN_DISPATCHER)
    @kill_on_exception
    def packet_in(self, ev) -> None:
        # A packet-in of another shape than `_receive` unpacks, parsed by os-ken.
        msg = ev.msg
        self._packet_in(msg.datapath, msg.match["in_port"], bytes(msg.data), msg.cookie)

    @kill_on_exception
    def _packet_in(self, datapath, in_port: int, frame: bytes, cookie: int) -> None:
        self._datapaths.setdefault(datapath.id, datapath)
        with self._lock:
            decisions = self.controller.packet_in(
                datapath.id, in_port, frame, time.monotonic(), cookie
            )
            self._send_and_log(decisions)

    def _receive(self, datapath) -> None:
        """os-ken's Datapath._recv_loop, the same messages to the same handlers, cheaper:
        one read for whatever has arrived, and a packet-in of the usual shape unpacked and
        decided with no OFPPacketIn, OFPMatch or event object on the way (os-ken's framing,
        parsing and dispatch cost ~40 µs of a packet-in's ~170 µs, measured with py-spy).
        Plain TCP, as `python -m qasm.controller` listens."""
        pending = bytearray()
        try:
            while datapath.state != DEAD_DISPATCHER:
                try:
                    chunk = datapath.socket.recv(RECEIVE_BYTES)
                except TimeoutError:
                    continue  # os-ken's socket timeout: read again, as its loop does
                except (EOFError, OSError):
                    break
                if not chunk:
                    break
                pending += chunk
                start = 0
                while len(pending) - start >= _HEADER.size:
                    version, msg_type, length, xid = _HEADER.unpack_from(pending, start)
                    # As os-ken: a length shorter than the header is read as the header.
                    length = max(length, _HEADER.size)
                    if len(pending) - start < length:
                        break
                    message = pending[start : start + length]
                    start += length
                    packet_in = (
                        unpack_packet_in(message)
                        if msg_type == ofproto_v1_3.OFPT_PACKET_IN
                        and datapath.state == MAIN_DISPATCHER
                        else None
                    )
                    if packet_in is not None:
                        # This app is the only observer of packet-ins: no event needed.
                        in_port, cookie, frame = packet_in
                        self._packet_in(datapath, in_port, frame, cookie)
                    else:
                        _dispatch(datapath, version, msg_type, length, xid, message)
                del pending[:start]
        finally:
            # What os-ken's loop does once it ends (its `_deactivate`).
            with contextlib.suppress(OSError):
                datapath.socket.close()

    @set_ev_cls(ofp_event.EventOFPFlowRemoved, MAIN_DISPATCHER)
    @kill_on_exception
    def flow_removed(self, ev) -> None:
        # Only entries that asked (OFPFF_SEND_FLOW_REM: half-open probes) are reported.
        msg = ev.msg
        with self._lock:
            decisions = self.controller.flow_removed(
                msg.datapath.id, _flow_of(msg.match), msg.cookie, msg.packet_count, msg.reason,
                time.monotonic(),
            )  # fmt: skip
            self._send_and_log(decisions)

    def _send_and_log(self, decisions: list[Decision]) -> None:
        now = time.monotonic()
        # Consecutive decisions for one switch are written at once (one write per packet-in,
        # as a rule): os-ken's send() hands every buffer to the datapath's send thread, and
        # that handoff cost more than the bytes. Writes keep the decisions' order across
        # switches: push mode's installs on every hop go out before the agent's ack.
        datapath, encoded, events = None, [], []
        for decision in decisions:
            if isinstance(decision.event, KernelPath):
                # Carried out here, before the decisions after it (the agent's ack).
                _write(datapath, encoded)
                datapath, encoded = None, []
                (change,) = decision.messages
                ok, text = self.kernel.apply(change)
                events.append(replace(decision.event, ok=ok, text=text))
                continue
            target = self._datapaths.get(decision.dpid)
            if target is None:
                raise RuntimeError(f"decision for datapath {decision.dpid}, not connected")
            if target is not datapath:
                _write(datapath, encoded)
                datapath, encoded = target, []
            for message in decision.messages:
                self._xid = (self._xid + 1) & 0xFFFFFFFF
                encoded.append(encode(message, self._xid))
            events.append(decision.event)
        _write(datapath, encoded)
        # Logged once the switches have their messages: encoding a line (~10 µs) no longer
        # holds back the packet-out, which a connection's handshake waits for.
        for event in events:
            self._log(event, now)
        if now - self._stats_at >= STATS_INTERVAL_S:
            self._stats_at = now
            rss = _rss_kib()
            for stats in self.controller.stats():
                self._log(replace(stats, rss_kib=rss), now)
        # A write per decision cost a tenth of a packet-in's time: the log is flushed at most
        # every FLUSH_INTERVAL_S, at once for a switch's connection (`switch_ready`), and
        # when the controller stops.
        if now - self._flushed_at >= FLUSH_INTERVAL_S:
            self._flushed_at = now
            self.decision_log.flush()

    def _log(self, event, now: float) -> None:
        record = event.to_record(now, self.config.variant)
        self.decision_log.write(_JSON.encode(record) + "\n")

    def _stop(self, _signum, _frame) -> None:
        # A handler may hold the lock while blocked on a dead switch: give up after a while
        # rather than hang the runner's teardown (the end state is then missing, not wrong).
        if self._lock.acquire(timeout=STOP_LOCK_TIMEOUT_S):
            now = time.monotonic()
            for state in (*self.controller.snapshot(), *self.controller.locations()):
                self._log(state, now)
            self.decision_log.flush()
        os._exit(0)


class SerialSocket:
    """A datapath's socket whose writes never interleave: this app's handlers write their
    messages to it directly and os-ken's send thread writes its own (echo, port description)."""

    def __init__(self, sock) -> None:
        self._socket = sock
        self._lock = threading.Lock()
        self.recv = sock.recv  # os-ken's receive loop, once per read

    def sendall(self, data: bytes) -> None:
        with self._lock:
            self._socket.sendall(data)

    def __getattr__(self, name: str):
        return getattr(self._socket, name)


def _dispatch(datapath, version: int, msg_type: int, length: int, xid: int, message) -> None:
    """One message as os-ken's receive loop hands it on: parsed, as an event to the apps
    that observe it, and to os-ken's own handlers (handshake, echo) in the datapath's state."""
    msg = ofproto_parser.msg(datapath, version, msg_type, length, xid, message)
    if not msg:
        return
    ev = ofp_event.ofp_msg_to_ev(msg)
    brick = datapath.ofp_brick
    if brick is None:
        return
    brick.send_event_to_observers(ev, datapath.state)
    # Chosen before any runs, as os-ken does: a handshake handler changes the state.
    state = datapath.state
    handlers = [h for h in brick.get_handlers(ev) if state in h.callers[ev.__class__].dispatchers]
    for handler in handlers:
        handler(ev)


def _write(datapath, encoded: list[bytes]) -> None:
    if not encoded:
        return
    try:
        datapath.socket.sendall(b"".join(encoded))
    except OSError as exc:
        # The switch is gone, or stopped reading for os-ken's socket timeout: give up on it
        # as os-ken's own send thread does (a partial write leaves the stream unreadable);
        # its receive loop then ends.
        print(f"datapath {datapath.id}: {exc!r}, closing", file=sys.stderr)
        datapath.close()


def _flow_of(match) -> FlowKey | None:
    """The IPv4/UDP 5-tuple an OFPMatch names exactly, or None."""
    try:
        return FlowKey(
            match["ipv4_src"], match["udp_src"], match["ipv4_dst"], match["udp_dst"]
        )  # fmt: skip
    except KeyError:
        return None


def _rss_kib() -> int | None:
    """This process's resident set (Linux /proc), to see whether anything grows."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None
