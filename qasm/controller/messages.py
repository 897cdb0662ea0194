"""What the middlebox logic asks the switch to do, independent of the OpenFlow library.

The os-ken app is the one place that turns these into OpenFlow 1.3 messages, so decisions
are unit-tested as plain values (faucet's pattern: logic returns messages, one place sends).
"""

from __future__ import annotations

from dataclasses import dataclass

from qasm.flow import FlowKey

# OpenFlow 1.3 reserved ports (ofp_port_no).
PORT_FLOOD = 0xFFFFFFFB
PORT_CONTROLLER = 0xFFFFFFFD

PRIORITY_TABLE_MISS = 0
PRIORITY_L2 = 10
PRIORITY_PROTECTED = 100  # service traffic goes to the middlebox, above L2 forwarding
PRIORITY_ADMITTED_FLOW = 200


@dataclass(frozen=True, slots=True)
class Match:
    """Fields to match; None means wildcard. `flow` matches an IPv4/UDP 5-tuple exactly."""

    eth_dst: str | None = None
    ipv4_src: str | None = None
    ipv4_dst: str | None = None
    flow: FlowKey | None = None


@dataclass(frozen=True, slots=True)
class FlowRule:
    priority: int
    match: Match
    out_port: int | None  # None drops
    idle_timeout_s: int = 0


@dataclass(frozen=True, slots=True)
class PacketOut:
    in_port: int
    out_port: int
    data: bytes


@dataclass(frozen=True, slots=True)
class ClearFlows:
    """Delete every flow entry: a (re)connected switch may hold a previous run's rules."""


SwitchMessage = FlowRule | PacketOut | ClearFlows
