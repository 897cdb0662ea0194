"""Stateful QUIC firewall in front of one service, keyed on the UDP 5-tuple.

A new client→service 5-tuple is admitted only when its first datagram is a QUIC client
Initial (RFC 9312 §3.1.2 first-packet garbage rejection, §4.7); service→client datagrams
pass only on admitted 5-tuples. This is the classic (`tuple`) middlebox: a migrated
connection's new 5-tuple starts with a short header and is dropped.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from qasm.controller.frame import IP_PROTO_UDP, Frame
from qasm.flow import FlowKey
from qasm.state.flows import FlowTable

# RFC 9000 §15 / RFC 9369 §3.1: the versions whose Initial packet type this firewall knows.
QUIC_V1 = 0x00000001
QUIC_V2 = 0x6B3343CF
INITIAL_TYPE_BITS = {QUIC_V1: 0b00, QUIC_V2: 0b01}
# RFC 9000 §14.1: a client MUST expand datagrams carrying Initial packets to >= 1200 bytes.
MIN_INITIAL_DATAGRAM = 1200


class Verdict(enum.Enum):
    ADMIT = "admit"  # new 5-tuple accepted; install its fast path
    FORWARD = "forward"  # 5-tuple already admitted (its switch entry had expired)
    DROP = "drop"


@dataclass(frozen=True, slots=True)
class FirewallDecision:
    verdict: Verdict
    reason: str


def client_initial_problem(payload: bytes) -> str | None:
    """None if `payload` starts with a QUIC v1/v2 client Initial, else why it does not.

    RFC 9312 §3.1.2 warns that first-byte bits may change meaning across versions, so the
    version is read first and the packet type is interpreted only for known versions.
    """
    if not payload:
        return "empty datagram"
    if not payload[0] & 0x80:
        return "short header (not a connection's first packet)"
    if len(payload) < 5:
        return f"long header truncated at {len(payload)} bytes"
    version = int.from_bytes(payload[1:5], "big")
    if version not in INITIAL_TYPE_BITS:
        return f"long header of unknown version 0x{version:08x}"
    packet_type = (payload[0] & 0x30) >> 4
    if packet_type != INITIAL_TYPE_BITS[version]:
        return f"long header type {packet_type}, not Initial"
    if len(payload) < MIN_INITIAL_DATAGRAM:
        return f"Initial in a {len(payload)}-byte datagram, below {MIN_INITIAL_DATAGRAM}"
    return None


class QuicFirewall:
    def __init__(self, service_ip: str, service_port: int, admitted: FlowTable[FlowKey, bool]):
        self.service_ip = service_ip
        self.service_port = service_port
        self.admitted = admitted

    def decide(self, frame: Frame, now: float) -> FirewallDecision:
        """Judges one IPv4 packet to or from the service."""
        if frame.ip_proto != IP_PROTO_UDP or frame.flow is None:
            return FirewallDecision(Verdict.DROP, f"IP protocol {frame.ip_proto} is not QUIC/UDP")
        flow = frame.flow
        if flow.dst_ip == self.service_ip:
            if flow.dst_port != self.service_port:
                return FirewallDecision(Verdict.DROP, f"UDP port {flow.dst_port} not served")
            if self.admitted.get(flow, now):
                return FirewallDecision(Verdict.FORWARD, "admitted 5-tuple")
            problem = client_initial_problem(frame.udp_payload)
            if problem:
                return FirewallDecision(Verdict.DROP, f"new 5-tuple: {problem}")
            self.admitted.put(flow, True, now)
            return FirewallDecision(Verdict.ADMIT, "new 5-tuple opened by a QUIC Initial")
        if flow.src_port == self.service_port and self.admitted.get(flow.reversed(), now):
            return FirewallDecision(Verdict.FORWARD, "reply on an admitted 5-tuple")
        return FirewallDecision(Verdict.DROP, "from the service on a 5-tuple never admitted")
