"""The os-ken shell end to end: the controller process (`python -m qasm.controller`) against
the benchmark's fake OpenFlow 1.3 switch over a real TCP connection.

What the sans-I/O tests cannot see: the app's threads, its writes to the switch's socket and
its decision log (one line per decision, in decision order)."""

from __future__ import annotations

import contextlib
import json
import signal
import struct
import time
from pathlib import Path

from os_ken.ofproto import ofproto_v1_3 as ofp

from qasm.controller import benchmarks as bench

INITIALS = 5


@contextlib.contextmanager
def _switch_past_the_arp(process: bench.ControllerProcess, config):
    """A fake switch connected to the controller process, past the OpenFlow handshake and
    the service's ARP request (the controller floods it); its socket closes after."""
    sock = process.connect()
    try:
        switch = bench.FakeSwitch(sock, process.check_alive)
        switch.handshake(bench._connect_messages(config))
        arp = bench._service_arp()
        switch.latencies([bench.packet_in_message(arp.in_port, arp.frame, 1)])
        yield sock, switch
    finally:
        sock.close()


def _log_once_stopped(process: bench.ControllerProcess) -> list[dict]:
    """SIGTERM: the controller logs its tables and flushes the log before it exits."""
    process.popen.send_signal(signal.SIGTERM)
    process.popen.wait(bench.STOP_GRACE_S)
    log = Path(process.directory.name) / "decisions.jsonl"
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_every_packet_in_is_answered_and_logged_in_order():
    config = bench._cid_config()
    initials = bench._initial_events(INITIALS)
    with bench.ControllerProcess(config) as process:
        with _switch_past_the_arp(process, config) as (_, switch):
            flow_mods = switch.received[ofp.OFPT_FLOW_MOD]
            messages = [
                bench.packet_in_message(e.in_port, e.frame, xid)
                for xid, e in enumerate(initials, 2)
            ]
            switch.latencies(messages)  # each answered by its PACKET_OUT
            flow_mods = switch.received[ofp.OFPT_FLOW_MOD] - flow_mods
        records = _log_once_stopped(process)
    assert flow_mods == INITIALS * bench._flow_mods_per_initial(config)
    decided = [r for r in records if r["event"] in ("switch_connected", "packet_in")]
    assert [r["event"] for r in decided] == ["switch_connected"] + ["packet_in"] * (1 + INITIALS)
    assert decided[1]["verdict"] == "flood"  # the service's ARP request
    assert [r["reason"] for r in decided[2:]] == ["opened_by_initial"] * INITIALS
    clients = [r["flow"][0] for r in decided[2:]]
    assert clients == [bench._client(i)[0] for i in range(INITIALS)]  # in the order sent
    states = [r for r in records if r["event"] == "connection_state"]
    assert len(states) == INITIALS


def test_a_packet_in_in_pieces_or_of_another_match_is_decided_once_whole():
    """The app's own receive loop: a packet-in that arrives in pieces is decided once whole;
    one whose match os-ken must parse (in_port and metadata) goes through os-ken's handler;
    an echo request reaches os-ken's own handler, which answers it."""
    config = bench._cid_config()
    pieces, other_match = bench._initial_events(2)
    whole = bench.packet_in_message(pieces.in_port, pieces.frame, 2)
    with bench.ControllerProcess(config) as process:
        with _switch_past_the_arp(process, config) as (sock, switch):
            for start, end in ((0, 5), (5, 100), (100, len(whole))):
                sock.sendall(whole[start:end])
                time.sleep(0.05)  # each piece its own read
            while not switch.pump():
                pass
            sock.sendall(_with_metadata(other_match, xid=3) + bench._message(ofp.OFPT_ECHO_REQUEST))
            while not switch.pump():
                pass
            while not switch.received[ofp.OFPT_ECHO_REPLY]:
                switch.pump()
        records = _log_once_stopped(process)
    decided = [r for r in records if r["event"] == "packet_in"][1:]  # after the ARP
    assert [(r["in_port"], r["reason"]) for r in decided] == [
        (pieces.in_port, "opened_by_initial"),
        (other_match.in_port, "opened_by_initial"),
    ]


def test_each_switch_is_logged_at_once_when_it_connects():
    """The runner waits for a switch's line before it goes on: it is flushed then, not with
    the next decision (the log is otherwise flushed at most every FLUSH_INTERVAL_S)."""
    config = bench._cid_config()
    with bench.ControllerProcess(config) as process:
        sockets = []
        try:
            for dpid in (1, 2):  # the second one within the first one's flush interval
                sockets.append(process.connect())
                switch = bench.FakeSwitch(sockets[-1], process.check_alive, dpid)
                switch.handshake(bench._connect_messages(config, dpid))
            assert _logged_within(process, "switch_connected", 2, timeout_s=2.0)
        finally:
            for sock in sockets:
                sock.close()


def _logged_within(
    process: bench.ControllerProcess, event: str, count: int, timeout_s: float
) -> bool:
    """Whether the decision log file holds `count` lines of `event` within `timeout_s`."""
    log = Path(process.directory.name) / "decisions.jsonl"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if log.read_text().count(f'"event": "{event}"') >= count:
            return True
        time.sleep(0.01)
    return False


def _with_metadata(event: bench.Event, xid: int) -> bytes:
    """A packet-in whose match holds metadata after in_port (OpenFlow 1.3.5 §7.2.3)."""
    oxms = struct.pack("!IIIQ", ofp.OXM_OF_IN_PORT, event.in_port, ofp.OXM_OF_METADATA, 7)
    match = struct.pack("!HH", ofp.OFPMT_OXM, 4 + len(oxms)) + oxms
    match += bytes(-len(match) % 8)
    body = struct.pack(ofp.OFP_PACKET_IN_PACK_STR, ofp.OFP_NO_BUFFER, len(event.frame), 1, 0, 0)
    return bench._message(ofp.OFPT_PACKET_IN, body + match + bytes(2) + event.frame, xid)
