"""The middlebox as a sans-I/O state machine: packet-in in, switch messages and a log out.

Data flow (../shared/DESIGN.md): packet-in → parse → look up / update state → each configured
function decides → flow rules on the switch, so later packets of an admitted 5-tuple stay in
the fast path. Forwarding is MAC learning; traffic to or from the protected service is
steered to the controller (above L2 rules) whenever the variant keeps middlebox state.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields

from qasm.controller.frame import ETH_TYPE_IPV4, Frame, FrameError, parse_frame
from qasm.controller.messages import (
    PORT_CONTROLLER,
    PORT_FLOOD,
    PRIORITY_ADMITTED_FLOW,
    PRIORITY_L2,
    PRIORITY_PROTECTED,
    PRIORITY_TABLE_MISS,
    ClearFlows,
    FlowRule,
    Match,
    PacketOut,
    SwitchMessage,
)
from qasm.functions.firewall import QuicFirewall, Verdict
from qasm.state.flows import DEFAULT_IDLE_TIMEOUT_S, DEFAULT_MAX_ENTRIES, FlowTable

# Variants this controller implements; the names are fixed in DESIGN.md.
STATEFUL_VARIANTS = ("tuple",)
VARIANTS = ("baseline", *STATEFUL_VARIANTS)
FUNCTIONS = ("firewall",)


class ConfigError(ValueError):
    """The controller configuration is invalid; the message names the field."""


@dataclass(frozen=True)
class MiddleboxConfig:
    variant: str
    service_ip: str
    service_port: int
    functions: tuple[str, ...] = ("firewall",)
    state_idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
    max_flows: int = DEFAULT_MAX_ENTRIES

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ConfigError(f"variant: {self.variant!r}, expected one of {', '.join(VARIANTS)}")
        unknown = set(self.functions) - set(FUNCTIONS)
        if unknown:
            raise ConfigError(f"functions: {sorted(unknown)}, expected from {', '.join(FUNCTIONS)}")
        if not 0 < self.service_port < 65536:
            raise ConfigError(f"service_port: {self.service_port}, expected 1..65535")
        if self.state_idle_timeout_s <= 0 or self.max_flows <= 0:
            raise ConfigError("state_idle_timeout_s and max_flows: expected positive numbers")

    @classmethod
    def from_json(cls, text: str) -> MiddleboxConfig:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"not JSON: {exc}") from exc
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ConfigError(f"unknown keys {sorted(unknown)}, expected from {sorted(known)}")
        if "functions" in values:
            values["functions"] = tuple(values["functions"])
        try:
            return cls(**values)
        except TypeError as exc:
            raise ConfigError(str(exc)) from exc

    def to_json(self) -> str:
        return json.dumps({f.name: getattr(self, f.name) for f in fields(self)})


@dataclass(frozen=True)
class Decision:
    """The switch messages for one event and the JSON record the controller logs for it."""

    messages: tuple[SwitchMessage, ...]
    record: dict

    @property
    def flow_mods(self) -> int:
        return sum(isinstance(m, FlowRule) for m in self.messages)


class Middlebox:
    def __init__(self, config: MiddleboxConfig) -> None:
        self.config = config
        self._port_of_mac: dict[tuple[int, str], int] = {}
        self.firewall: QuicFirewall | None = None
        if config.variant in STATEFUL_VARIANTS and "firewall" in config.functions:
            admitted = FlowTable(config.state_idle_timeout_s, config.max_flows)
            self.firewall = QuicFirewall(config.service_ip, config.service_port, admitted)

    def switch_connected(self, dpid: int) -> Decision:
        messages: list[SwitchMessage] = [
            ClearFlows(),
            FlowRule(PRIORITY_TABLE_MISS, Match(), PORT_CONTROLLER),
        ]
        if self.firewall:
            service = self.config.service_ip
            messages += [
                FlowRule(PRIORITY_PROTECTED, Match(ipv4_dst=service), PORT_CONTROLLER),
                FlowRule(PRIORITY_PROTECTED, Match(ipv4_src=service), PORT_CONTROLLER),
            ]
        return self._decision(messages, event="switch_connected", dpid=dpid)

    def packet_in(self, dpid: int, in_port: int, data: bytes, now: float) -> Decision:
        try:
            frame = parse_frame(data)
        except FrameError as exc:
            return self._decision(
                [], event="packet_in", dpid=dpid, in_port=in_port, verdict="drop", reason=str(exc)
            )
        if not _is_multicast(frame.eth_src):
            self._port_of_mac[(dpid, frame.eth_src)] = in_port
        out_port = self._port_of_mac.get((dpid, frame.eth_dst))
        context = {
            "event": "packet_in",
            "dpid": dpid,
            "in_port": in_port,
            "addrs": list(frame.addresses()),
            "flow": str(frame.flow) if frame.flow else None,
        }
        if self.firewall and self._touches_service(frame):
            return self._firewall_decision(frame, in_port, out_port, data, now, context)
        if out_port is None:
            return self._decision(
                [PacketOut(in_port, PORT_FLOOD, data)], **context, verdict="flood", reason="l2"
            )
        messages = [
            FlowRule(PRIORITY_L2, Match(eth_dst=frame.eth_dst), out_port),
            PacketOut(in_port, out_port, data),
        ]
        return self._decision(messages, **context, verdict="forward", reason="l2")

    def _touches_service(self, frame: Frame) -> bool:
        return frame.eth_type == ETH_TYPE_IPV4 and self.config.service_ip in frame.addresses()

    def _firewall_decision(
        self,
        frame: Frame,
        in_port: int,
        out_port: int | None,
        data: bytes,
        now: float,
        context: dict,
    ) -> Decision:
        verdict = self.firewall.decide(frame, now)
        if verdict.verdict is Verdict.DROP:
            return self._decision([], **context, verdict="drop", reason=verdict.reason)
        if out_port is None:
            # Destination MAC not learnt yet: deliver this packet, decide the fast path later.
            messages: list[SwitchMessage] = [PacketOut(in_port, PORT_FLOOD, data)]
        else:
            idle = int(self.config.state_idle_timeout_s)
            messages = [FlowRule(PRIORITY_ADMITTED_FLOW, Match(flow=frame.flow), out_port, idle)]
            if verdict.verdict is Verdict.ADMIT:
                reverse = Match(flow=frame.flow.reversed())
                messages.append(FlowRule(PRIORITY_ADMITTED_FLOW, reverse, in_port, idle))
            messages.append(PacketOut(in_port, out_port, data))
        return self._decision(
            messages, **context, verdict=verdict.verdict.value, reason=verdict.reason
        )

    def _decision(self, messages: list[SwitchMessage], **record) -> Decision:
        decision = Decision(tuple(messages), record)
        record["flow_mods"] = decision.flow_mods
        record["variant"] = self.config.variant
        return decision


def _is_multicast(mac: str) -> bool:
    return int(mac[:2], 16) & 0x01 == 1
