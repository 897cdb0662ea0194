"""The os-ken (Ryu API) app: a thin shell around `Controller` (every datapath of the run).

Each handler is one delegation call; `_apply` is the one place that turns decisions into
OpenFlow 1.3 messages, sent to the datapath each decision names, and writes the decision log
(one typed event per line, qasm/controller/events.py). An unhandled
exception ends the process loudly (faucet's kill_on_exception): the runner sees a dead
controller and reports an infrastructure failure instead of measuring a half-dead middlebox.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import threading
import time
import traceback
from dataclasses import replace

from os_ken import cfg
from os_ken.base import app_manager
from os_ken.controller import ofp_event
from os_ken.controller.handler import CONFIG_DISPATCHER, MAIN_DISPATCHER, set_ev_cls
from os_ken.ofproto import ofproto_v1_3

from qasm.controller.messages import (
    PORT_CONTROLLER,
    ClearFlows,
    FlowRule,
    Match,
    MeterRule,
    PacketOut,
    RemoveFlow,
    RemoveMeter,
)
from qasm.controller.pipeline import Controller, Decision, MiddleboxConfig

CONF = cfg.CONF
CONF.register_cli_opts(
    [
        cfg.StrOpt("qasm-config", help="middlebox configuration (JSON file)"),
        cfg.StrOpt("qasm-decision-log", help="JSON-lines decision log (appended)"),
    ]
)
EXIT_HANDLER_CRASHED = 70
# At most this often, a `stats` line (table and counter sizes) joins the decision log; written
# from the event thread, so it never reads the tables while a handler changes them.
STATS_INTERVAL_S = 1.0
STOP_LOCK_TIMEOUT_S = 1.0


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
        self.decision_log = open(CONF.qasm_decision_log, "a", encoding="utf-8")  # noqa: SIM115
        self._datapaths: dict[int, object] = {}
        self._stats_at = float("-inf")
        # Handlers run on os-ken's threads and the stop signal on the main thread: one lock,
        # so the final snapshot never reads a table a handler is changing.
        self._lock = threading.Lock()
        # The runner stops the controller with SIGTERM: the tables as they are then are the
        # run's end state (`connection_state` events), read by the metrics.
        signal.signal(signal.SIGTERM, self._stop)

    @set_ev_cls(ofp_event.EventOFPSwitchFeatures, CONFIG_DISPATCHER)
    @kill_on_exception
    def switch_features(self, ev) -> None:
        datapath = ev.msg.datapath
        self._datapaths[datapath.id] = datapath
        with self._lock:
            self._send_and_log([self.controller.switch_connected(datapath.id)])

    @set_ev_cls(ofp_event.EventOFPPacketIn, MAIN_DISPATCHER)
    @kill_on_exception
    def packet_in(self, ev) -> None:
        msg = ev.msg
        self._datapaths.setdefault(msg.datapath.id, msg.datapath)
        with self._lock:
            decisions = self.controller.packet_in(
                msg.datapath.id, msg.match["in_port"], bytes(msg.data), time.monotonic(), msg.cookie
            )
            self._send_and_log(decisions)

    def _send_and_log(self, decisions: list[Decision]) -> None:
        now = time.monotonic()
        for decision in decisions:
            datapath = self._datapaths.get(decision.dpid)
            if datapath is None:
                raise RuntimeError(f"decision for datapath {decision.dpid}, not connected")
            for message in decision.messages:
                for openflow_message in _to_openflow(datapath, message):
                    datapath.send_msg(openflow_message)
            self._log(decision.event, now)
        if now - self._stats_at >= STATS_INTERVAL_S:
            self._stats_at = now
            rss = _rss_kib()
            for stats in self.controller.stats():
                self._log(replace(stats, rss_kib=rss), now)
        self.decision_log.flush()

    def _log(self, event, now: float) -> None:
        record = event.to_record(now, self.config.variant)
        self.decision_log.write(json.dumps(record) + "\n")

    def _stop(self, _signum, _frame) -> None:
        # A handler may hold the lock while blocked on a dead switch: give up after a while
        # rather than hang the runner's teardown (the end state is then missing, not wrong).
        if self._lock.acquire(timeout=STOP_LOCK_TIMEOUT_S):
            now = time.monotonic()
            for state in self.controller.snapshot():
                self._log(state, now)
            self.decision_log.flush()
        os._exit(0)


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


def _to_openflow(datapath, message) -> list:
    ofp, parser = datapath.ofproto, datapath.ofproto_parser
    if isinstance(message, ClearFlows):
        return [
            parser.OFPFlowMod(
                datapath,
                command=ofp.OFPFC_DELETE,
                table_id=ofp.OFPTT_ALL,
                out_port=ofp.OFPP_ANY,
                out_group=ofp.OFPG_ANY,
                match=parser.OFPMatch(),
            ),
            parser.OFPMeterMod(datapath, command=ofp.OFPMC_DELETE, meter_id=ofp.OFPM_ALL),
        ]
    if isinstance(message, MeterRule):
        band = parser.OFPMeterBandDrop(rate=message.rate_kbps, burst_size=message.burst_kbit)
        return [
            parser.OFPMeterMod(
                datapath,
                command=ofp.OFPMC_ADD,
                flags=ofp.OFPMF_KBPS | ofp.OFPMF_BURST,
                meter_id=message.meter_id,
                bands=[band],
            )
        ]
    if isinstance(message, RemoveMeter):
        return [parser.OFPMeterMod(datapath, command=ofp.OFPMC_DELETE, meter_id=message.meter_id)]
    if isinstance(message, RemoveFlow):
        return [
            parser.OFPFlowMod(
                datapath,
                command=ofp.OFPFC_DELETE_STRICT,
                priority=message.priority,
                out_port=ofp.OFPP_ANY,
                out_group=ofp.OFPG_ANY,
                match=parser.OFPMatch(**_match_fields(message.match)),
            )
        ]
    if isinstance(message, PacketOut):
        return [
            parser.OFPPacketOut(
                datapath,
                buffer_id=ofp.OFP_NO_BUFFER,
                in_port=message.in_port,
                actions=[
                    *_set_field_actions(parser, message.set_fields),
                    parser.OFPActionOutput(message.out_port),
                ],
                data=message.data,
            )
        ]
    if isinstance(message, FlowRule):
        to_controller = parser.OFPActionOutput(ofp.OFPP_CONTROLLER, ofp.OFPCML_NO_BUFFER)
        actions = []
        if message.out_port == PORT_CONTROLLER:
            actions = [to_controller]
        elif message.out_port is not None:
            actions = [
                *_set_field_actions(parser, message.set_fields),
                parser.OFPActionOutput(message.out_port),
            ]
            if message.copy_to_controller:
                actions.append(to_controller)
        instructions = [parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, actions)]
        if message.meter_id is not None:
            instructions.insert(0, parser.OFPInstructionMeter(message.meter_id))
        return [
            parser.OFPFlowMod(
                datapath,
                cookie=message.cookie,
                priority=message.priority,
                match=parser.OFPMatch(**_match_fields(message.match)),
                idle_timeout=message.idle_timeout_s,
                instructions=instructions,
            )
        ]
    raise TypeError(f"no OpenFlow translation for {message!r}")


def _set_field_actions(parser, set_fields) -> list:
    return [parser.OFPActionSetField(**{name: value}) for name, value in set_fields]


def _match_fields(match: Match) -> dict:
    fields: dict = {}
    if match.eth_dst:
        fields["eth_dst"] = match.eth_dst
    if match.flow:
        flow = match.flow
        fields.update(
            eth_type=0x0800,
            ip_proto=17,
            ipv4_src=flow.src_ip,
            ipv4_dst=flow.dst_ip,
            udp_src=flow.src_port,
            udp_dst=flow.dst_port,
        )
    elif match.ipv4_src or match.ipv4_dst:
        fields["eth_type"] = 0x0800
        if match.ipv4_src:
            fields["ipv4_src"] = match.ipv4_src
        if match.ipv4_dst:
            fields["ipv4_dst"] = match.ipv4_dst
    return fields
