"""A fake OpenFlow network for sans-I/O tests of the controller (faucet's fakeoftable idea).

Switches hold the rules the controller sends (priority, match, set-fields, output, copy to
the controller, meters) and forward frames between hosts and each other by them; a frame no
rule matches (or one copied) becomes a packet-in to the real `Controller`, whose decisions are
applied as os-ken's shell would. So a test can send a real QUIC datagram from a client host
through K middlebox hops and see what reaches the server, with what addresses, after how many
packet-ins per hop, without Mininet.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from qasm.controller.events import Event
from qasm.controller.frame import ETH_TYPE_IPV4, Frame, build_udp_frame, parse_frame
from qasm.controller.messages import (
    COOKIE_OBSERVE,
    PORT_CONTROLLER,
    PORT_FLOOD,
    ClearFlows,
    FlowRule,
    Match,
    MeterRule,
    PacketOut,
    RemoveFlow,
    RemoveMeter,
)
from qasm.controller.pipeline import Controller
from qasm.flow import FlowKey


def _matches(match: Match, frame: Frame) -> bool:
    if match.eth_dst is not None and match.eth_dst != frame.eth_dst:
        return False
    if match.flow is not None:
        return frame.flow == match.flow
    ipv4 = frame.eth_type == ETH_TYPE_IPV4
    if match.ipv4_src is not None and not (ipv4 and frame.ip_src == match.ipv4_src):
        return False
    return match.ipv4_dst is None or (ipv4 and frame.ip_dst == match.ipv4_dst)


def rewrite(data: bytes, set_fields) -> bytes:
    """The frame with OpenFlow set-field actions applied (UDP/IPv4 frames only)."""
    if not set_fields:
        return data
    frame = parse_frame(data)
    values = {
        "eth_src": frame.eth_src, "eth_dst": frame.eth_dst,
        "ipv4_src": frame.flow.src_ip, "ipv4_dst": frame.flow.dst_ip,
        "udp_src": frame.flow.src_port, "udp_dst": frame.flow.dst_port,
    }  # fmt: skip
    values.update(dict(set_fields))
    flow = FlowKey(values["ipv4_src"], values["udp_src"], values["ipv4_dst"], values["udp_dst"])
    return build_udp_frame(values["eth_src"], values["eth_dst"], flow, frame.udp_payload)


@dataclass
class FakeSwitch:
    dpid: int
    rules: list[FlowRule] = field(default_factory=list)
    meters: set[int] = field(default_factory=set)
    ports: dict[int, tuple[str, object]] = field(default_factory=dict)  # port → ("host", name)

    def apply(self, message) -> None:
        if isinstance(message, ClearFlows):
            self.rules.clear()
            self.meters.clear()
        elif isinstance(message, FlowRule):
            self.rules = [
                r for r in self.rules if (r.priority, r.match) != (message.priority, message.match)
            ]
            self.rules.append(message)
        elif isinstance(message, RemoveFlow):
            self.rules = [
                r for r in self.rules if (r.priority, r.match) != (message.priority, message.match)
            ]
        elif isinstance(message, MeterRule):
            self.meters.add(message.meter_id)
        elif isinstance(message, RemoveMeter):
            self.meters.discard(message.meter_id)
            self.rules = [r for r in self.rules if r.meter_id != message.meter_id]

    def lookup(self, frame: Frame) -> FlowRule | None:
        matching = [r for r in self.rules if _matches(r.match, frame)]
        return max(matching, key=lambda r: r.priority, default=None)


class FakeNetwork:
    def __init__(self, controller: Controller) -> None:
        self.controller = controller
        self.switches: dict[int, FakeSwitch] = {}
        self.delivered: dict[str, list[bytes]] = {}  # host → frames it received
        self.packet_ins: Counter = Counter()  # dpid → packet-ins
        self.events: list[Event] = []
        self.now = 0.0

    def add_switch(self, dpid: int) -> FakeSwitch:
        switch = self.switches[dpid] = FakeSwitch(dpid)
        self._apply([self.controller.switch_connected(dpid)])
        return switch

    def attach_host(self, dpid: int, port: int, host: str) -> None:
        self.switches[dpid].ports[port] = ("host", host)
        self.delivered.setdefault(host, [])

    def link(self, dpid_a: int, port_a: int, dpid_b: int, port_b: int) -> None:
        self.switches[dpid_a].ports[port_a] = ("switch", (dpid_b, port_b))
        self.switches[dpid_b].ports[port_b] = ("switch", (dpid_a, port_a))

    def send(self, dpid: int, in_port: int, data: bytes, now: float | None = None) -> None:
        """A frame arriving at a switch port (from the host on it)."""
        if now is not None:
            self.now = now
        self._arrive(dpid, in_port, data, hops_left=64)

    def _arrive(self, dpid: int, in_port: int, data: bytes, hops_left: int) -> None:
        if hops_left == 0:
            raise RuntimeError("forwarding loop")
        switch = self.switches[dpid]
        frame = parse_frame(data)
        rule = switch.lookup(frame)
        if rule is None or rule.out_port == PORT_CONTROLLER:
            self._packet_in(dpid, in_port, data, cookie=0, hops_left=hops_left)
            return
        if rule.out_port is None:
            return  # dropped
        if rule.meter_id is not None and rule.meter_id not in switch.meters:
            return  # OpenFlow: a rule whose meter is gone drops
        out = rewrite(data, rule.set_fields)
        self._output(dpid, in_port, rule.out_port, out, hops_left)
        if rule.copy_to_controller:
            # The copy carries the packet as the switch output it (after set-fields).
            self._packet_in(dpid, in_port, out, cookie=COOKIE_OBSERVE, hops_left=hops_left)

    def _packet_in(self, dpid: int, in_port: int, data: bytes, cookie: int, hops_left: int):
        self.packet_ins[dpid] += 1
        self._apply(self.controller.packet_in(dpid, in_port, data, self.now, cookie), hops_left)

    def _apply(self, decisions, hops_left: int = 64) -> None:
        for decision in decisions:
            switch = self.switches[decision.dpid]
            self.events.append(decision.event)
            for message in decision.messages:
                if isinstance(message, PacketOut):
                    out = rewrite(message.data, message.set_fields)
                    self._output(decision.dpid, message.in_port, message.out_port, out, hops_left)
                else:
                    switch.apply(message)

    def _output(self, dpid: int, in_port: int, out_port: int, data: bytes, hops_left: int):
        switch = self.switches[dpid]
        ports = [p for p in switch.ports if p != in_port] if out_port == PORT_FLOOD else [out_port]
        for port in ports:
            kind, peer = switch.ports.get(port, (None, None))
            if kind == "host":
                self.delivered[peer].append(data)
            elif kind == "switch":
                self._arrive(peer[0], peer[1], data, hops_left - 1)

    def received(self, host: str) -> list[Frame]:
        """Frames a host received since the last call, parsed."""
        frames = [parse_frame(d) for d in self.delivered[host]]
        self.delivered[host].clear()
        return frames
