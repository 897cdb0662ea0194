"""The os-ken shell end to end: the controller process (`python -m qasm.controller`) against
the benchmark's fake OpenFlow 1.3 switch over a real TCP connection.

What the sans-I/O tests cannot see: the app's threads, its writes to the switch's socket and
its decision log (one line per decision, in decision order)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from os_ken.ofproto import ofproto_v1_3 as ofp

from qasm.controller import benchmarks as bench

INITIALS = 5


def test_every_packet_in_is_answered_and_logged_in_order():
    config = bench._cid_config()
    arp = bench._service_arp()
    initials = bench._initial_events(INITIALS)
    with bench.ControllerProcess(config) as process:
        sock = process.connect()
        try:
            switch = bench.FakeSwitch(sock, process.check_alive)
            switch.handshake(bench._connect_messages(config))
            switch.latencies([bench.packet_in_message(arp.in_port, arp.frame, 1)])
            flow_mods = switch.received[ofp.OFPT_FLOW_MOD]
            messages = [
                bench.packet_in_message(e.in_port, e.frame, xid)
                for xid, e in enumerate(initials, 2)
            ]
            switch.latencies(messages)  # each answered by its PACKET_OUT
            flow_mods = switch.received[ofp.OFPT_FLOW_MOD] - flow_mods
        finally:
            sock.close()
        # SIGTERM: the controller logs its tables and flushes the log before it exits.
        process.popen.send_signal(signal.SIGTERM)
        process.popen.wait(bench.STOP_GRACE_S)
        log = Path(process.directory.name) / "decisions.jsonl"
        records = [json.loads(line) for line in log.read_text().splitlines()]
    assert flow_mods == INITIALS * bench._flow_mods_per_initial(config)
    decided = [r for r in records if r["event"] in ("switch_connected", "packet_in")]
    assert [r["event"] for r in decided] == ["switch_connected"] + ["packet_in"] * (1 + INITIALS)
    assert decided[1]["verdict"] == "flood"  # the service's ARP request
    assert [r["reason"] for r in decided[2:]] == ["opened_by_initial"] * INITIALS
    clients = [r["flow"][0] for r in decided[2:]]
    assert clients == [bench._client(i)[0] for i in range(INITIALS)]  # in the order sent
    states = [r for r in records if r["event"] == "connection_state"]
    assert len(states) == INITIALS
