"""The middlebox as a sans-I/O state machine: packet-in in, switch messages and an event out.

Data flow (../shared/DESIGN.md): packet-in → parse → look up / update connection state → each
configured function decides → flow rules on the switch, so later packets of an admitted path
stay in the fast path. Forwarding is MAC learning; traffic to or from the protected service is
steered to the controller (above L2 rules) whenever the variant keeps middlebox state.

One controller drives every datapath of an emulation (`Controller`): the middlebox hops, in
path order from the clients (`Middlebox`, each with its own connection table, NAT pool and
public address), and plain forwarding switches (`Switch`). One Tracking Agent serves all hops.

How each variant finds the connection of a packet on a 5-tuple it has no rule for:
- `tuple`: it does not: every new 5-tuple is a new connection.
- `cid`: also by the short header's DCID, among server CIDs learnt from the handshake
  (RFC 9312 §3.5). To see the handshake, a connection's first rule for the service's packets
  forwards *and* copies to the controller until the server's SCID is known; then plain
  forwarding replaces it. The client's packets are never copied: they carry no server SCID.
- `qasm`: as `cid`, plus the Client Agent's reports to the Tracking Agent. In `push` mode the
  agent associates the next CID and the new path on every hop, in path order, and installs
  its rules before it acknowledges, so the first migrated packet is no packet-in. In `pull`
  mode it acknowledges at once and remembers the announcement; a hop that meets the new CID
  on an unknown path asks the agent which connection it belongs to, then installs the path
  (the packet waits in the controller meanwhile: one packet-in per hop and migration).

What each function does is in qasm/functions/ (one class each, with its typed per-connection
state); the hop calls their hooks in the configured order. `quic-lb` is the load balancer
alone, stateless, and `baseline` keeps no state (a load balancer's VIP goes to the first
backend by static rules).

Replicas. Several datapaths may share one position on the path (`HopSettings.position`): a
replica set behind a front end that spreads flows over them, each replica its own
`Middlebox` (its own locations, rules and meters: what is on its switch, `OnSwitch`). Where
connection state lives is `MiddleboxConfig.state`:
- `memory` (the default): each replica keeps its own table and its own slice of the NAT
  pool, as replicas without shared state do; a path the front end sends to another replica
  meets a replica that does not know its connection.
- `redis`: the replicas of a position share one table and one NAT pool in Redis
  (qasm/state/redis_store.py), so any replica finds any connection (by 5-tuple or DCID) and
  installs its path on its own switch (a pull from the store). In push mode the Tracking
  Agent writes an announced path to the store once and installs its rules on every replica of
  the position, since which replica the front end picks for the new path is the front end's
  business; a replica that ends a connection tells its siblings, which remove their rules
  and meters for it (one process here; between processes that message would be a Redis
  pub/sub channel). Each connection is saved back to the store before the decision that
  depends on it leaves (`ConnectionStore.save`).
Replicas of a position are wired alike (the same port towards the clients, the same towards
the service), so a path's ends on one replica are its ends on every other.
"""

from __future__ import annotations

import json
import math
import socket
from dataclasses import asdict, dataclass, field, fields, replace
from typing import NamedTuple

from qasm.agents.messages import Admit, Announce, Retire
from qasm.agents.tracking import (
    DEFAULT_BURST,
    DEFAULT_MAX_PATHS,
    DEFAULT_RATE_PER_S,
    TrackingAgent,
)
from qasm.controller.events import (
    AgentReport,
    ConnectionsEnded,
    ConnectionState,
    Event,
    HopStats,
    KernelPath,
    Locations,
    NatMapping,
    PacketIn,
    PathInstalled,
    PathRetired,
    ProbeEnded,
    Reason,
    Refusal,
    SwitchConnected,
    Verdict,
)
from qasm.controller.frame import (
    ETH_TYPE_ARP,
    ETH_TYPE_IPV4,
    IP_PROTO_UDP,
    Frame,
    FrameError,
    build_arp_reply,
    build_udp_frame,
    parse_frame,
)
from qasm.controller.messages import (
    COOKIE_OBSERVE,
    PORT_CONTROLLER,
    PORT_FLOOD,
    PRIORITY_ADMITTED_FLOW,
    PRIORITY_AGENT,
    PRIORITY_L2,
    PRIORITY_PROBE,
    PRIORITY_PROTECTED,
    PRIORITY_SOURCE_HELD,
    PRIORITY_TABLE_MISS,
    PRIORITY_VIP_REPLY,
    REMOVED_DELETE,
    ClearFlows,
    FlowRule,
    KernelPathChange,
    Match,
    PacketOut,
    RemoveFlow,
    RemoveMeter,
    SwitchMessage,
)
from qasm.flow import FlowKey
from qasm.functions.base import Change, MiddleboxFunction
from qasm.functions.firewall import Firewall, SniPolicy, client_initial_problem
from qasm.functions.loadbalancer import (
    Backend,
    LoadBalancer,
    LoadBalancerSettings,
    LoadBalancerState,
    QuicLbSettings,
    backend_by_initial_dcid,
    backend_by_server_id,
)
from qasm.functions.nat import Nat, NatSettings
from qasm.functions.ratelimit import RateLimit, RateLimiter
from qasm.state.buckets import TokenBuckets
from qasm.state.connections import (
    DEFAULT_HALF_OPEN_TIMEOUT_S,
    DEFAULT_IDLE_TIMEOUT_S,
    DEFAULT_MAX_CONNECTIONS,
    ESTABLISHED,
    EVICTED,
    EXPIRED,
    HALF_OPEN,
    OBSERVING,
    PROBING,
    Connection,
    ConnectionStore,
    ConnectionTable,
    PathEnds,
)
from qasm.state.half_open import DEFAULT_HALF_OPEN_PER_SOURCE, HalfOpenBySource
from qasm.state.redis_nat import SharedNatPool
from qasm.state.redis_store import RedisConnectionTable, connect_redis
from qasm.wire.errors import WireError
from qasm.wire.header import (
    KNOWN_VERSIONS,
    LONG_HEADER_BIT,
    HeaderForm,
    PacketType,
    parse_datagram,
    short_header_dcid,
)

# Variants this controller implements; the names are fixed in DESIGN.md.
CID_AWARE_VARIANTS = ("cid", "qasm")
STATEFUL_VARIANTS = ("tuple", *CID_AWARE_VARIANTS)
VARIANTS = ("baseline", *STATEFUL_VARIANTS, "quic-lb")
FUNCTIONS = ("firewall", "ratelimit", "nat", "loadbalancer")
# How the Tracking Agent anchors announcements: push installs them on the hops, pull lets a
# hop look them up; ahead is push, with each connection admitted by its agent before its
# first packet (the Client Agent's side: the hop admits any time it is asked).
AGENT_MODES = ("push", "pull", "ahead")
# Where connection state lives: each hop's own memory, or Redis, shared by a hop's replicas.
STATES = ("memory", "redis")
# Packet-ins of a path (or a MAC) whose rules went out less than this long ago were already
# queued before the switch had the rules; forward them without sending the rules again.
RULES_IN_FLIGHT_S = 1.0
UNSPECIFIED_ADDRESS = "0.0.0.0"  # an ARP probe's sender (RFC 5227)
# A host opens a handful of QUIC connections a second; 20 clients behind one address at
# start-up, a few hundred at once (scenarios/scale.yaml starts 20 per host in a window).
# A source refused for these is held at the switch for SOURCE_HOLD_S (`_hold_source`): a
# second is 100 connections of the default budget, and a real client's retransmitted
# Initial (RFC 9002 §6.2.2: an initial PTO of ~1 s) arrives after the hold.
SOURCE_HELD_REASONS = frozenset({Reason.ADMISSION_BUDGET, Reason.HALF_OPEN_QUOTA})
SOURCE_HOLD_S = 1
# A retired path's inbound rule stays this long, sending the server's datagrams still in
# flight to it on to the client's end of a path the connection holds (`retire`): a round
# trip at most, in OpenFlow's whole seconds. Its NAT port goes back at once; the pool hands
# it out again only a whole round of ports later, and the new path's own inbound rule (the
# same match and priority) then replaces this one.
RETIRED_INBOUND_S = 1
DEFAULT_ADMISSION_RATE_PER_S = 100.0
DEFAULT_ADMISSION_BURST = 400


class ConfigError(ValueError):
    """The controller configuration is invalid; the message names the field."""


@dataclass(frozen=True)
class AgentSettings:
    """Where the Tracking Agent listens (a management address answered by the controller),
    who may report (per-client keys, hex, and each client's addresses) and how it anchors
    announcements in the hops (AGENT_MODES)."""

    ip: str
    port: int
    mac: str
    keys: dict[str, str] = field(default_factory=dict)
    addresses: dict[str, list[str]] = field(default_factory=dict)
    mode: str = "push"
    reports_per_s: float = DEFAULT_RATE_PER_S  # each client's token bucket
    report_burst: int = DEFAULT_BURST
    max_paths: int = DEFAULT_MAX_PATHS  # live paths a client's connections may hold


@dataclass(frozen=True)
class Admission:
    """The per-source admission budget for new connections: `rate_per_s` sustained, `burst`
    at once, per source address masked to `prefix_length` bits (32: per address)."""

    rate_per_s: float = DEFAULT_ADMISSION_RATE_PER_S
    burst: int = DEFAULT_ADMISSION_BURST
    prefix_length: int = 32

    def key(self, address: str) -> int:
        shift = 32 - self.prefix_length
        return int.from_bytes(socket.inet_aton(address), "big") >> shift


@dataclass(frozen=True)
class HopSettings:
    """One middlebox datapath; `nat` gives it its own public address and port pool;
    `sources` the source addresses each port may carry (topologies/bindings.py): a packet
    from any other is dropped as spoofed. A port not listed is not checked."""

    dpid: int
    nat: NatSettings | None = None
    sources: tuple[tuple[int, tuple[str, ...]], ...] = ()
    # Replicas of one hop share a position (1-based, in path order); None: a hop of its own.
    position: int | None = None


def hop_positions(hops: tuple[HopSettings, ...]) -> list[list[HopSettings]]:
    """The hops grouped by position, in path order (replicas of a position adjacent)."""
    groups: list[list[HopSettings]] = []
    for hop in hops:
        if groups and hop.position is not None and groups[-1][0].position == hop.position:
            groups[-1].append(hop)
        else:
            groups.append([hop])
    return groups


@dataclass(frozen=True)
class MiddleboxConfig:
    variant: str
    service_ip: str
    service_port: int
    functions: tuple[str, ...] = ("firewall",)
    # Middlebox datapaths in path order from the clients; every other datapath forwards only.
    hops: tuple[HopSettings, ...] = (HopSettings(1),)
    state_idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    # New connections each source prefix may open (a token bucket per prefix): a flood of
    # well-formed Initials may not take every slot of the table and every NAT port.
    admission: Admission = field(default_factory=Admission)
    # Connections the server has not answered end after this long idle (RFC 9312 §4.7), and
    # under nat a source (the admission prefix) holds at most `half_open_per_source` of them.
    half_open_timeout_s: float = DEFAULT_HALF_OPEN_TIMEOUT_S
    half_open_per_source: int = DEFAULT_HALF_OPEN_PER_SOURCE
    agent: AgentSettings | None = None
    ratelimit: RateLimit | None = None
    loadbalancer: LoadBalancerSettings | None = None
    sni: SniPolicy | None = None  # the firewall's allow/deny lists for the ClientHello's SNI
    # netfilter-qasm: the router's network namespace (a process in it), where the Tracking
    # Agent anchors announced paths in conntrack instead of on switches.
    kernel_netns_pid: int | None = None
    # Connection state: "memory" (each hop its own) or "redis" at `state_url`, under keys
    # starting with `state_prefix` (one per run, so runs never see each other's state).
    state: str = "memory"
    state_url: str | None = None
    state_prefix: str = "qasm"

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ConfigError(f"variant: {self.variant!r}, expected one of {', '.join(VARIANTS)}")
        unknown = set(self.functions) - set(FUNCTIONS)
        if unknown:
            raise ConfigError(f"functions: {sorted(unknown)}, expected from {', '.join(FUNCTIONS)}")
        if not 0 < self.service_port < 65536:
            raise ConfigError(f"service_port: {self.service_port}, expected 1..65535")
        if self.state_idle_timeout_s <= 0 or self.max_connections <= 0:
            raise ConfigError("state_idle_timeout_s and max_connections: expected positive numbers")
        if self.half_open_timeout_s <= 0 or self.half_open_per_source < 1:
            raise ConfigError(
                "half_open_timeout_s and half_open_per_source: expected positive numbers"
            )
        if len({hop.dpid for hop in self.hops}) != len(self.hops):
            raise ConfigError("hops: expected each dpid once")
        if self.variant == "qasm" and self.agent is None:
            raise ConfigError("agent: the qasm variant needs the Tracking Agent's settings")
        if self.agent is not None and self.agent.mode not in AGENT_MODES:
            raise ConfigError(f"agent.mode: {self.agent.mode!r}, expected push or pull")
        if "ratelimit" in self.functions and self.ratelimit is None:
            raise ConfigError("ratelimit: the ratelimit function needs rate_kbps and burst_kbit")
        if "nat" in self.functions and any(hop.nat is None for hop in self.hops):
            raise ConfigError("hops: the nat function needs every hop's public address and pool")
        if "loadbalancer" in self.functions and self.loadbalancer is None:
            raise ConfigError("loadbalancer: the loadbalancer function needs its backends")
        if self.kernel_netns_pid is not None and (self.variant != "qasm" or self.hops):
            raise ConfigError("kernel_netns_pid: expected variant qasm with no middlebox hops")
        if self.variant == "quic-lb" and self.functions != ("loadbalancer",):
            raise ConfigError("functions: the quic-lb variant is a load balancer only")
        if self.state not in STATES:
            raise ConfigError(f"state: {self.state!r}, expected memory or redis")
        if self.state == "redis" and not self.state_url:
            raise ConfigError("state_url: state redis needs the Redis URL")
        groups = hop_positions(self.hops)
        named = [group[0].position for group in groups if group[0].position is not None]
        if len(named) != len(set(named)) or named != sorted(named):
            raise ConfigError("hops: expected positions in path order, replicas side by side")
        for group in groups:
            nats = {hop.nat.public_ip for hop in group if hop.nat}
            if len(nats) > 1:
                raise ConfigError(f"hops: replicas of position {group[0].position} share one "
                                  f"NAT public address, not {sorted(nats)}")  # fmt: skip
            if self.state == "redis" and len({hop.nat for hop in group}) > 1:
                raise ConfigError(f"hops: replicas of position {group[0].position} share one "
                                  "NAT pool in Redis: expected the same NAT settings")  # fmt: skip

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
        try:
            if "functions" in values:
                values["functions"] = tuple(values["functions"])
            if "hops" in values:
                values["hops"] = tuple(
                    HopSettings(
                        hop["dpid"],
                        NatSettings(**hop["nat"]) if hop.get("nat") else None,
                        tuple((port, tuple(ips)) for port, ips in hop.get("sources", ())),
                        hop.get("position"),
                    )
                    for hop in values["hops"]
                )
            if values.get("agent") is not None:
                values["agent"] = AgentSettings(**values["agent"])
            if "admission" in values:
                values["admission"] = Admission(**values["admission"])
            if values.get("ratelimit") is not None:
                values["ratelimit"] = RateLimit(**values["ratelimit"])
            if values.get("loadbalancer") is not None:
                lb = values["loadbalancer"]
                values["loadbalancer"] = LoadBalancerSettings(
                    vip_mac=lb["vip_mac"],
                    backends=tuple(Backend(**b) for b in lb["backends"]),
                    quic_lb=QuicLbSettings(**lb.get("quic_lb", {})),
                )
            if values.get("sni") is not None:
                sni = values["sni"]
                values["sni"] = SniPolicy(tuple(sni["allow"]), tuple(sni["deny"]))
            return cls(**values)
        except (TypeError, ValueError, KeyError) as exc:
            raise ConfigError(str(exc)) from exc

    def to_json(self) -> str:
        return json.dumps(asdict(self))


# Not frozen: one per packet-in (see qasm/controller/messages.py).
@dataclass(slots=True)
class Decision:
    """The switch messages for one datapath and the event the controller logs for them.

    A packet-in's packet goes out first, before the decision's rules: a switch carries out
    one connection's messages in order, so the packet does not wait for the rules to be
    installed (a connection's first packet, a migration's). A packet-out carries its own
    actions, so it needs none of them; and an answer to the packet (a server's, after a link
    and its stack) reaches the switch long after the rules that follow it."""

    dpid: int
    messages: tuple[SwitchMessage, ...]
    event: Event

    @property
    def flow_mods(self) -> int:
        return _flow_mods(self.messages)


def _flow_mods(messages) -> int:
    # A loop, not sum() over a generator: once per decision, and the generator object was
    # the allocation that most often set off the garbage collector (py-spy).
    count = 0
    for message in messages:
        if isinstance(message, (FlowRule, RemoveFlow)):
            count += 1
    return count


class Controller:
    """Every datapath of an emulation: the middlebox hops in path order (replicas of a hop
    side by side), plain switches (any other dpid) and the Tracking Agent that serves all
    hops."""

    def __init__(self, config: MiddleboxConfig) -> None:
        self.config = config
        self.tracking: TrackingAgent | None = None
        if config.variant == "qasm":
            agent = config.agent
            self.tracking = TrackingAgent(
                service=(config.service_ip, config.service_port),
                keys={client: bytes.fromhex(key) for client, key in agent.keys.items()},
                addresses={c: frozenset(a) for c, a in agent.addresses.items()},
                rate_per_s=agent.reports_per_s,
                burst=agent.report_burst,
                max_paths=agent.max_paths,
            )
        pull = self.tracking.announced if self.tracking and config.agent.mode == "pull" else None
        # Shared stores (Redis), one table and one NAT pool per position; none in memory.
        self._stores: list = []
        client = None
        if config.state == "redis" and config.variant in STATEFUL_VARIANTS:
            client = connect_redis(config.state_url)
        # Replicas of each position, in path order.
        self.positions: list[list[Middlebox]] = []
        for index, group in enumerate(hop_positions(config.hops)):
            table = pool = None
            if client is not None:
                prefix = f"{config.state_prefix}:hop{index + 1}"
                table = RedisConnectionTable(
                    client, prefix, state_types(config.functions),
                    config.state_idle_timeout_s, config.max_connections,
                    half_open_timeout_s=config.half_open_timeout_s,
                )  # fmt: skip
                self._stores.append(table)
                if "nat" in config.functions:
                    pool = SharedNatPool(client, prefix, group[0].nat)
                    self._stores.append(pool)
            replicas = [Middlebox(config, hop, pull, table, pool) for hop in group]
            for replica in replicas:
                replica.siblings = replicas if table is not None else [replica]
                if table is not None:  # one table: one count of each source's half-open
                    replica.half_open = replicas[0].half_open
            self.positions.append(replicas)
        self.hops: list[Middlebox] = [hop for replicas in self.positions for hop in replicas]
        self._hop_of: dict[int, Middlebox] = {hop.dpid: hop for hop in self.hops}
        self._plain: dict[int, Switch] = {}
        # The client-facing hop's connections, where the Tracking Agent judges ownership.
        self._agent_table: ConnectionStore | None = None
        if self.positions:
            first = self.positions[0]
            shared = first[0].siblings is first
            self._agent_table = first[0].table if shared else _AnyTable(first)

    def switch(self, dpid: int) -> Switch:
        hop = self._hop_of.get(dpid)
        if hop is not None:
            return hop
        return self._plain.setdefault(dpid, Switch(dpid))

    def switch_connected(self, dpid: int) -> Decision:
        messages = self.switch(dpid).connected()
        if self.tracking:
            agent = Match(ipv4_dst=self.config.agent.ip)
            messages.append(FlowRule(PRIORITY_AGENT, agent, PORT_CONTROLLER))
        return Decision(dpid, tuple(messages), SwitchConnected(dpid, _flow_mods(messages)))

    def packet_in(
        self, dpid: int, in_port: int, data: bytes, now: float, cookie: int = 0
    ) -> list[Decision]:
        switch = self.switch(dpid)
        hop = isinstance(switch, Middlebox)
        if hop:
            switch.expire(now)  # a periodic sweep: not this packet's cost
        before = self.store_round_trips()
        decisions = self._packet_in(switch, in_port, data, now, cookie)
        if hop and len(switch.siblings) > 1:
            # What a sibling must remove for connections this replica found ended.
            decisions[:0] = [
                d for s in switch.siblings if s is not switch and (d := s.ended_decision())
            ]
        spent = self.store_round_trips() - before
        if spent and isinstance(decisions[-1].event, PacketIn | AgentReport):
            last = decisions[-1]
            decisions[-1] = replace(last, event=replace(last.event, store_round_trips=spent))
        return decisions

    def flow_removed(
        self, dpid: int, flow: FlowKey | None, cookie: int, packets: int, reason: int, now: float
    ) -> list[Decision]:
        """A switch removed a flow entry that asked to be reported (OFPT_FLOW_REMOVED with
        its match as `flow`, its cookie, packet count and ofp_flow_removed_reason): only
        half-open probes ask, tagged with their connection's id."""
        hop = self._hop_of.get(dpid)
        if hop is None or flow is None or not cookie:
            return []
        decisions = hop.probe_ended(flow, cookie, packets, reason, now)
        decisions[:0] = [
            d for s in hop.siblings if s is not hop and (d := s.ended_decision())
        ]  # fmt: skip
        return decisions

    def _packet_in(
        self, switch: Switch, in_port: int, data: bytes, now: float, cookie: int
    ) -> list[Decision]:
        try:
            frame = parse_frame(data)
        except FrameError as exc:
            event = PacketIn(switch.dpid, in_port, Verdict.DROP, Reason.FRAME_UNREADABLE, str(exc))
            return [Decision(switch.dpid, (), event)]
        # A copy our own rule sent (COOKIE_OBSERVE) left the switch rewritten (a balancer's
        # reply carries the VIP as its source by then): it is ours, not the sender's word.
        if cookie != COOKIE_OBSERVE and switch.spoofed(in_port, frame):
            # Not learnt: a spoofed source would move the address's location (and its
            # traffic and rules) to the sender's port.
            context = switch.context(in_port, frame)
            text = f"source {frame.ip_src} does not belong to port {in_port}"
            return [
                switch.decide([], context, verdict=Verdict.DROP, reason=Reason.SPOOFED_SOURCE,
                              text=text)
            ]  # fmt: skip
        if self.tracking and frame.ip_dst == self.config.agent.ip:
            switch.learn(in_port, frame)
            return self._agent_datagram(switch, in_port, frame, now)
        return switch.packet_in(in_port, frame, data, now, cookie)

    def store_round_trips(self) -> int:
        """Requests sent to the shared stores so far (0 in memory)."""
        if not self._stores:
            return 0  # asked twice per packet-in
        return sum(store.round_trips for store in self._stores)

    def stats(self) -> list[HopStats]:
        agent = dict(self.tracking.counters) if self.tracking else None
        stats = []
        for replicas in self.positions:
            first = replicas[0]
            shared = first.siblings is replicas and len(replicas) > 1
            figures = first.stats(agent)
            stats.append(figures)
            for replica in replicas[1:]:
                # One store: its sizes asked once, not once per replica.
                stats.append(
                    replace(figures, dpid=replica.dpid, locations=len(replica.locations()))
                    if shared
                    else replica.stats(agent)
                )
        return stats

    def snapshot(self) -> list[ConnectionState]:
        """Every connection every hop holds now (logged when the controller stops); a table
        replicas share is written once, under the first replica's datapath."""
        states = []
        for replicas in self.positions:
            shared = replicas[0].siblings is replicas
            for replica in replicas[:1] if shared else replicas:
                states += replica.snapshot()
        return states

    def locations(self) -> list[Locations]:
        """Where each hop locates each address now (logged when the controller stops)."""
        return [Locations(hop.dpid, hop.locations()) for hop in self.hops]

    # --- the Tracking Agent ---------------------------------------------------------------

    def _agent_datagram(
        self, switch: Switch, in_port: int, frame: Frame, now: float
    ) -> list[Decision]:
        agent = self.config.agent
        context = dict(dpid=switch.dpid, in_port=in_port, addrs=frame.addresses())
        if frame.eth_type == ETH_TYPE_ARP:
            return [switch.arp_reply(in_port, frame, agent.mac)]
        flow = frame.flow
        if flow is None or flow.dst_port != agent.port:
            event = AgentReport(**context, verdict=Verdict.REJECT, reason=Reason.NOT_AGENT_PORT)
            return [Decision(switch.dpid, (), event)]
        installs: list[Decision] = []

        def apply(
            message: Announce | Retire | Admit, connection: Connection | None
        ) -> Refusal | None:
            if isinstance(message, Announce):
                return self._announce(message, connection, switch, in_port, frame, now, installs)
            if isinstance(message, Admit):
                return self._admit(message, now, installs)
            self._retire(message, connection, now, installs, switch.dpid)
            return None

        report = self.tracking.receive(
            frame.udp_payload, flow.src_ip, now, self._agent_table, apply
        )
        messages: list[SwitchMessage] = []
        if report.reply is not None:
            answer = build_udp_frame(agent.mac, frame.eth_src, flow.reversed(), report.reply)
            messages.append(PacketOut(PORT_CONTROLLER, in_port, answer))
        event = AgentReport(
            **context,
            verdict=Verdict.ACCEPT if report.accepted else Verdict.REJECT,
            reason=report.reason,
            text=report.text,
            bytes=len(frame.udp_payload),
            client=report.client,
            new_path=report.new_path if report.accepted else None,
            retired_path=report.retired_path if report.accepted else None,
        )
        ended = [d for hop in self.hops if (d := hop.ended_decision()) is not None]
        # The installs first: push mode promises the paths are on the switches before the
        # client hears the ack (the app sends messages in this order).
        return [*ended, *installs, Decision(switch.dpid, tuple(messages), event)]

    def _announce(
        self,
        message: Announce,
        connection: Connection | None,
        switch: Switch,
        in_port: int,
        frame: Frame,
        now: float,
        installs: list[Decision],
    ) -> Refusal | None:
        if self.config.kernel_netns_pid is not None:
            installs.append(self._kernel_change(switch.dpid, message))
            return None
        if connection is None:
            return None  # no middlebox hop: nothing to anchor
        if self.config.agent.mode == "pull":
            self.tracking.remember(message)
            done = []
        else:
            done = self._install_on_every_hop(message, connection, switch, in_port, frame, now)
            if isinstance(done, Refusal):
                return done
        if message.retire is not None:
            # Retired first on the switches: the path it replaces never shares a moment with
            # the new one (at most two paths, and two NAT ports, per connection).
            retire = Retire(message.client, message.counter, message.connection_cid, message.retire)
            self._retire(
                retire, self._agent_table.by_cid(message.connection_cid, now), now, installs,
                switch.dpid,
            )  # fmt: skip
        installs += [d for installed in done for d in installed.decisions()]
        return None

    def _admit(self, message: Admit, now: float, installs: list[Decision]) -> Refusal | None:
        """Agent mode ahead: the connection about to open on the reported path is opened on
        every hop, in path order, each seeing the path as the hops before it translated it;
        all hops or none."""
        if self.config.kernel_netns_pid is not None:
            text = "netfilter-qasm does not admit ahead (conntrack decides on the first packet)"
            return Refusal(Reason.NOT_ADMITTED_AHEAD, text)
        if self.config.agent.mode == "pull":
            return Refusal(Reason.NOT_ADMITTED_AHEAD, "pull does not admit ahead")
        path = FlowKey(*message.path, self.config.service_ip, self.config.service_port)
        done: list[tuple[Middlebox, Connection, Decision]] = []
        refusal = None
        for replicas in self.positions:
            if len(replicas) > 1:
                refusal = Refusal(
                    Reason.NOT_ADMITTED_AHEAD,
                    f"hop {replicas[0].dpid} has {len(replicas)} replicas: which one carries "
                    "the connection is the front end's hash of its first packet",
                )
                break
            hop = replicas[0]
            admitted = hop.admit_ahead(path, message.client, now)
            if isinstance(admitted, Refusal):
                refusal = admitted
                break
            connection, decision = admitted
            done.append((hop, connection, decision))
            path = hop.service_flow(connection, path)
        if refusal is not None:
            for hop, connection, _ in reversed(done):
                hop.undo_admission(connection)
            return refusal
        installs += [decision for _, _, decision in done]
        return None

    def _holder(
        self, replicas: list[Middlebox], path: FlowKey, cid: bytes, now: float, prefer=None
    ) -> tuple[Middlebox, Connection] | None:
        """The replica of a position that holds the connection on `path` or `cid`, and the
        connection: with a shared store any replica (`prefer`, if it is one), in memory the
        one whose table has it."""
        if replicas[0].siblings is replicas:
            holder = prefer if prefer in replicas else replicas[0]
            connection = holder.connection_of(path, cid, now)
            return (holder, connection) if connection is not None else None
        for replica in replicas:
            connection = replica.connection_of(path, cid, now)
            if connection is not None:
                return replica, connection
        return None

    def _install_on_every_hop(
        self,
        message: Announce,
        connection: Connection,
        switch: Switch,
        in_port: int,
        frame: Frame,
        now: float,
    ) -> list[Installed] | Refusal:
        """Push mode: the announced CID and path on every hop, in path order, each hop seeing
        the path as the hops before it translated it; all hops or none. With a shared store,
        the path's state is written once per position and its rules go to every replica."""
        old_path = FlowKey(*message.old, self.config.service_ip, self.config.service_port)
        new_path = FlowKey(*message.new, self.config.service_ip, self.config.service_port)
        done: list[Installed] = []
        for index, replicas in enumerate(self.positions):
            if index == 0:
                shared = replicas[0].siblings is replicas
                holder = next(
                    (r for r in replicas if r.table.is_live(connection)), None
                ) if not shared else (switch if switch in replicas else replicas[0])  # fmt: skip
                if holder is None:
                    continue
                # Where the new address is on the client-facing hop: the report came from it.
                client_port = holder.located_port(message.new[0])
                client_mac = holder.mac_of(message.new[0])
                if switch in replicas:
                    client_port = client_port or in_port
                    if frame.ip_src == message.new[0]:
                        client_mac = client_mac or frame.eth_src
                client = (client_port, client_mac)
            else:
                found = self._holder(replicas, old_path, message.connection_cid, now)
                if found is None:
                    continue  # this hop lost the connection (evicted): nothing to anchor
                holder, connection = found
                client = None
            installed = holder.install_announced(
                connection, message, old_path, new_path, client, now
            )
            if installed is None:
                # What the hops before did is undone and never sent, so a refused report
                # changes nothing.
                for earlier in reversed(done):
                    earlier.undo()
                return Refusal(
                    Reason.CONNECTION_FULL,
                    f"hop {holder.dpid}: connection holds its maximum of CIDs or paths",
                )
            done.append(installed)
            old_path = holder.service_flow(connection, old_path)
            new_path = installed.next_hop_path
        for installed in done:
            # Every hop agreed: written back (shared store), then the copies' rules.
            if not installed.hop.table.save(installed.connection, now):
                installed.abandon()
                continue
            for sibling in installed.hop.siblings:
                if sibling is not installed.hop:
                    installed.copies.append(sibling.install_copy(installed, now))
        return done

    def _kernel_change(self, dpid: int, message: Announce | Retire) -> Decision:
        """netfilter-qasm: what the router's conntrack must now hold for the client's paths."""
        service = (self.config.service_ip, self.config.service_port)
        if isinstance(message, Retire):
            change = KernelPathChange(message.client, retired=FlowKey(*message.path, *service))
        else:
            retired = FlowKey(*message.retire, *service) if message.retire else None
            change = KernelPathChange(
                message.client, FlowKey(*message.old, *service), FlowKey(*message.new, *service),
                retired,
            )  # fmt: skip
        event = KernelPath(dpid, change.client, change.old, change.new, change.retired)
        return Decision(dpid, (change,), event)

    def _retire(
        self,
        message: Retire,
        connection: Connection | None,
        now: float,
        installs: list,
        dpid: int,
    ) -> None:
        if self.config.kernel_netns_pid is not None:
            installs.append(self._kernel_change(dpid, message))
            return
        if connection is None:
            return
        path = FlowKey(*message.path, self.config.service_ip, self.config.service_port)
        for index, replicas in enumerate(self.positions):
            if index == 0 and replicas[0].siblings is not replicas:
                holder = next((r for r in replicas if r.table.is_live(connection)), None)
                if holder is None:
                    continue
            else:
                found = self._holder(replicas, path, message.connection_cid, now)
                if found is None:
                    continue
                holder, connection = found
            next_path = holder.service_flow(connection, path)
            # The siblings' rules first: they are found through the path's NAT mapping,
            # which the holder's retirement gives back.
            for sibling in holder.siblings:
                if sibling is not holder:
                    decision = sibling.retire_copy(connection, path, message.client)
                    if decision is not None:
                        installs.append(decision)
            decision = holder.retire(connection, path, message.client, now)
            if decision is not None:
                installs.append(decision)
            path = next_path


class _AnyTable:
    """The tables of replicas that keep state apart, as the Tracking Agent asks them: a
    connection is in one of them (the one whose replica carried its first packet)."""

    def __init__(self, replicas: list[Middlebox]) -> None:
        self._tables = [replica.table for replica in replicas]

    def by_cid(self, cid: bytes, now: float) -> Connection | None:
        return next((c for t in self._tables if (c := t.by_cid(cid, now)) is not None), None)

    def by_path(self, path: FlowKey, now: float) -> Connection | None:
        return next((c for t in self._tables if (c := t.by_path(path, now)) is not None), None)

    def is_live(self, connection: Connection) -> bool:
        return any(table.is_live(connection) for table in self._tables)


class Switch:
    """A datapath that forwards by MAC learning and answers ARP for addresses the controller
    owns. Locations (port per MAC and per IPv4 address) are learnt from packet-ins."""

    # Slots (here and in Middlebox): a hop's attributes are read on every packet-in, and
    # CPython 3.11 keeps at most 29 of an instance's attributes in its shared-key layout,
    # where its attribute reads are specialised; a Middlebox had 27, and with 30 every read
    # of one became a dict lookup (+3.5% instructions a new connection's decision,
    # callgrind). Slots have no such bound.
    __slots__ = (
        "dpid", "arp_answers", "_sources", "_bound_port", "_port_of_mac", "_port_of_ip",
        "_mac_of_ip", "_l2_rules_sent",
    )  # fmt: skip

    def __init__(self, dpid: int, sources: tuple[tuple[int, tuple[str, ...]], ...] = ()) -> None:
        self.dpid = dpid
        self.arp_answers: dict[str, str] = {}  # IPv4 → MAC this datapath answers for
        self._sources = {port: frozenset(ips) for port, ips in sources}
        # An address the bindings allow on one port only is reached through that port: where
        # the service is, before any packet of it was seen (an admission ahead needs it).
        ports_of_ip: dict[str, list[int]] = {}
        for port, ips in self._sources.items():
            for ip in ips:
                ports_of_ip.setdefault(ip, []).append(port)
        self._bound_port = {ip: ports[0] for ip, ports in ports_of_ip.items() if len(ports) == 1}
        self._port_of_mac: dict[str, int] = {}
        self._port_of_ip: dict[str, int] = {}
        self._mac_of_ip: dict[str, str] = {}
        # MAC → the port and time of the last L2 rule sent for it (see _rules_due).
        self._l2_rules_sent: dict[str, tuple[int, float]] = {}

    def connected(self) -> list[SwitchMessage]:
        self._l2_rules_sent.clear()  # ClearFlows removes them from the switch
        return [ClearFlows(), FlowRule(PRIORITY_TABLE_MISS, Match(), PORT_CONTROLLER)]

    def spoofed(self, in_port: int, frame: Frame) -> bool:
        """Whether the packet's source address may not arrive on this port (strict uRPF over
        the topology's bindings; an ARP probe's 0.0.0.0 is anyone's)."""
        allowed = self._sources.get(in_port)
        return (
            allowed is not None
            and frame.ip_src is not None
            and frame.ip_src not in allowed
            and frame.ip_src != UNSPECIFIED_ADDRESS
        )

    def locations(self) -> dict[str, int]:
        return dict(self._port_of_ip)

    def located_port(self, ip: str) -> int | None:
        return self._port_of_ip.get(ip)

    def learn(self, in_port: int, frame: Frame) -> None:
        if not int(frame.eth_src[:2], 16) & 0x01:  # not a multicast source
            self._port_of_mac[frame.eth_src] = in_port
        if frame.ip_src and (frame.eth_type == ETH_TYPE_ARP or frame.flow is not None):
            self._port_of_ip[frame.ip_src] = in_port
            self._mac_of_ip[frame.ip_src] = frame.eth_src

    def packet_in(
        self, in_port: int, frame: Frame, data: bytes, now: float, cookie: int = 0
    ) -> list[Decision]:
        self.learn(in_port, frame)
        answer = self._arp_answer(frame)
        if answer is not None:
            return [self.arp_reply(in_port, frame, answer)]
        return [self.l2_forward(in_port, frame, data, now, self.context(in_port, frame))]

    def context(self, in_port: int, frame: Frame) -> dict:
        return dict(dpid=self.dpid, in_port=in_port, addrs=frame.addresses(), flow=frame.flow)

    def _arp_answer(self, frame: Frame) -> str | None:
        if frame.eth_type != ETH_TYPE_ARP:
            return None
        return self.arp_answers.get(frame.ip_dst)

    def decide(self, messages: list[SwitchMessage], context: dict, **event) -> Decision:
        """A packet-in decision: PacketIn's fields are the packet's `context` and `event`'s.
        The context is a dict argument, not spread into keywords: each spread was a dict
        built and unpacked again (3% of a new connection's decision, callgrind)."""
        packet_in = PacketIn(**context, **event, flow_mods=_flow_mods(messages))
        return Decision(self.dpid, tuple(messages), packet_in)

    def arp_reply(self, in_port: int, frame: Frame, mac: str) -> Decision:
        context = self.context(in_port, frame)
        if not frame.arp_request:
            return self.decide([], context, verdict=Verdict.DROP, reason=Reason.ARP_REPLY_TO_US)
        reply = build_arp_reply(mac, frame.ip_dst, frame.eth_src, frame.ip_src)
        messages = [PacketOut(PORT_CONTROLLER, in_port, reply)]
        return self.decide(messages, context, verdict=Verdict.ARP_REPLY, reason=Reason.OUR_ADDRESS)

    def l2_forward(
        self, in_port: int, frame: Frame, data: bytes, now: float, context: dict
    ) -> Decision:
        out_port = self._port_of_mac.get(frame.eth_dst)
        if out_port is None:
            messages = [PacketOut(in_port, PORT_FLOOD, data)]
            return self.decide(messages, context, verdict=Verdict.FLOOD, reason=Reason.L2)
        messages: list[SwitchMessage] = [PacketOut(in_port, out_port, data)]
        sent_port, sent_at = self._l2_rules_sent.get(frame.eth_dst, (None, None))
        if sent_port != out_port or _rules_due(sent_at, now):
            messages.append(FlowRule(PRIORITY_L2, Match(eth_dst=frame.eth_dst), out_port))
            self._l2_rules_sent[frame.eth_dst] = (out_port, now)
        return self.decide(messages, context, verdict=Verdict.FORWARD, reason=Reason.L2)


@dataclass(slots=True)
class OnSwitch:
    """What one datapath holds for one connection: the switch's own, never shared with other
    replicas. Each path's ends on this switch and when its rules were last sent here, whether
    its service-side rules copy packets to the controller, and the meter installed here."""

    ends: dict[FlowKey, PathEnds] = field(default_factory=dict)
    sent_at: dict[FlowKey, float] = field(default_factory=dict)
    copying: bool = False
    meter: int | None = None
    probe: FlowKey | None = None  # the path whose half-open probe is on this switch
    probes_empty: int = 0  # probes of the connection that reported no packet


class PathRules(NamedTuple):
    """A path's ends on a switch, its messages there (the connection's meter if the switch
    does not have it yet, then the client's direction, then the service's direction) and
    the fields each direction rewrites."""

    ends: PathEnds
    messages: list[SwitchMessage]
    forward: tuple
    backward: tuple

    @property
    def to_client(self) -> FlowRule:
        return self.messages[-1]


def state_types(functions: tuple[str, ...]) -> dict[str, type]:
    """The typed per-connection state of each configured function (to read a store)."""
    types = {
        "firewall": Firewall.State,
        "nat": Nat.State,
        "loadbalancer": LoadBalancer.State,
    }
    return {name: types[name] for name in functions if types.get(name) is not None}


class Middlebox(Switch):
    """One middlebox hop (or one replica of it): its own instance of every configured
    function, with its table and NAT pool its own (`state` memory) or its position's, shared
    in Redis (`state` redis); what is installed on its switch is always its own."""

    __slots__ = (
        "config", "variant", "stateful", "cid_aware", "observes", "_pull", "table", "siblings",
        "admission", "_admitted", "half_open", "lb", "_backend_ips", "functions",
        "_adding_paths", "_translating", "_metering", "nat", "_ended", "_evicted_established",
        "_ended_change", "firewall", "_on_switch",
    )  # fmt: skip

    def __init__(
        self,
        config: MiddleboxConfig,
        hop: HopSettings,
        pull=None,
        table: ConnectionStore | None = None,
        nat_pool=None,
    ) -> None:
        super().__init__(hop.dpid, hop.sources)
        self.config = config
        self.variant = config.variant
        self.stateful = config.variant in STATEFUL_VARIANTS
        self.cid_aware = config.variant in CID_AWARE_VARIANTS
        # Learning server CIDs from the handshake means copying the service's packets to the
        # controller, which sends them through OVS's slow path (measured: the handshake 6 ms
        # longer). qasm in push mode needs no CID it did not hear from its Client Agent, so it
        # keeps the handshake in the fast path; cid, and a pulling hop, learn passively.
        self.observes = config.variant == "cid" or (
            config.variant == "qasm" and config.agent.mode == "pull"
        )
        # pull mode: next CID → the announcement the Tracking Agent accepted, or None.
        self._pull = pull
        self.table: ConnectionStore = (
            table
            if table is not None  # (an empty table is falsy: it has a length)
            else ConnectionTable(
                config.state_idle_timeout_s,
                config.max_connections,
                half_open_timeout_s=config.half_open_timeout_s,
            )
        )
        # The replicas sharing this hop's table, itself included (itself alone in memory).
        self.siblings: list[Middlebox] = [self]
        self.admission = config.admission
        self._admitted = TokenBuckets(config.admission.rate_per_s, config.admission.burst)
        # Under nat: each source's half-open connections (shared by replicas of one table).
        self.half_open = HalfOpenBySource()
        self.lb = config.loadbalancer if "loadbalancer" in config.functions else None
        self._backend_ips = {b.ip: b for b in self.lb.backends} if self.lb else {}
        self.functions: list[MiddleboxFunction] = []
        if self.stateful:
            self.functions = [self._function(name, hop, nat_pool) for name in config.functions]
        # Per path, the hop calls a hook only on the functions that implement it: the
        # defaults change nothing, and a firewall's empty Change and Translation were 4% of
        # a new connection's decision (instructions, callgrind).
        self._adding_paths = [f for f in self.functions if f.implements("path_added")]
        self._translating = [f for f in self.functions if f.implements("translate")]
        self._metering = [f for f in self.functions if f.implements("meter")]
        for function in self.functions:
            self.arp_answers.update(function.arp_addresses())
        if self.lb:
            self.arp_answers[config.service_ip] = self.lb.vip_mac
        self.nat = next((f for f in self.functions if isinstance(f, Nat)), None)
        self._ended: dict[str, list[int]] = {EXPIRED: [], EVICTED: [], HALF_OPEN: []}
        self._evicted_established: list[int] = []  # of the evicted, the established
        self._ended_change = Change()
        self.firewall = next((f for f in self.functions if isinstance(f, Firewall)), None)
        # Connection id → what this switch holds for it (rules, ends, meter).
        self._on_switch: dict[int, OnSwitch] = {}

    def _function(self, name: str, hop: HopSettings, nat_pool=None) -> MiddleboxFunction:
        config = self.config
        if name == "firewall":
            return Firewall(config.sni)
        if name == "ratelimit":
            return RateLimiter(config.ratelimit)
        if name == "nat":
            return Nat(hop.nat, nat_pool)
        return LoadBalancer(config.loadbalancer, config.service_ip)

    def stats(self, agent: dict | None = None) -> HopStats:
        round_trips = getattr(self.table, "round_trips", None)
        if round_trips is not None and self.nat is not None:
            round_trips += getattr(self.nat.pool, "round_trips", 0)
        return HopStats(
            dpid=self.dpid,
            connections=len(self.table),
            max_connections=self.table.max_connections,
            evicted=self.table.evicted,
            expired=self.table.expired,
            half_open_ended=self.table.half_open_ended,
            locations=len(self._port_of_ip),
            nat_in_use=self.nat.pool.in_use if self.nat else None,
            nat_exhausted=self.nat.pool.exhausted if self.nat else None,
            agent=agent,
            store_round_trips=round_trips,
        )

    def snapshot(self) -> list[ConnectionState]:
        return [
            ConnectionState(
                dpid=self.dpid,
                connection=c.id,
                owner=c.owner,
                paths=tuple(sorted(c.paths, key=str)),
                retired_paths=tuple(sorted(c.retired_paths, key=str)),
                server_cids=tuple(sorted(c.server_cids)),
                nat_mappings=tuple(self.nat.mappings(c)) if self.nat else (),
            )
            for c in self.table.connections()
        ]

    def mac_of(self, ip: str) -> str | None:
        return self._mac_of_ip.get(ip)

    def _local(self, connection: Connection) -> OnSwitch:
        local = self._on_switch.get(connection.id)
        if local is None:
            local = self._on_switch[connection.id] = OnSwitch()
        return local

    def on_switch(self, connection: Connection) -> OnSwitch | None:
        """What this switch holds for `connection`, if anything."""
        return self._on_switch.get(connection.id)

    # --- events ---------------------------------------------------------------------------

    def connected(self) -> list[SwitchMessage]:
        messages = super().connected()
        # ClearFlows removed every rule and meter of this switch: nothing of ours is on it.
        self._on_switch.clear()
        if self.stateful:
            service = self.config.service_ip
            messages += [
                FlowRule(PRIORITY_PROTECTED, Match(ipv4_dst=service), PORT_CONTROLLER),
                FlowRule(PRIORITY_PROTECTED, Match(ipv4_src=service), PORT_CONTROLLER),
            ]
        for function in self.functions:
            messages += function.switch_rules()
        if self.lb and not self.stateful:
            messages += self._stateless_balancer_rules()
        return messages

    def _stateless_balancer_rules(self) -> list[SwitchMessage]:
        """baseline: the VIP to the first backend by static rules, its replies to the
        controller; quic-lb: everything to and from the service to the controller."""
        vip = self.config.service_ip
        if self.variant == "baseline":
            first = self.lb.backends[0]
            return [
                FlowRule(
                    PRIORITY_PROTECTED, Match(ipv4_dst=vip), first.switch_port,
                    set_fields=(("ipv4_dst", first.ip), ("eth_dst", first.mac)),
                ),
                FlowRule(PRIORITY_PROTECTED, Match(ipv4_src=first.ip), PORT_CONTROLLER),
            ]  # fmt: skip
        return [
            *(
                FlowRule(PRIORITY_PROTECTED, Match(ipv4_src=b.ip), PORT_CONTROLLER)
                for b in self.lb.backends
            ),
            FlowRule(PRIORITY_PROTECTED, Match(ipv4_dst=vip), PORT_CONTROLLER),
        ]

    def packet_in(
        self, in_port: int, frame: Frame, data: bytes, now: float, cookie: int = 0
    ) -> list[Decision]:
        if cookie != COOKIE_OBSERVE:
            self.learn(in_port, frame)  # (a copy's source may be a rewritten one)
        context = self.context(in_port, frame)
        # (Controller.packet_in swept the table just before: `expire`.)
        if cookie == COOKIE_OBSERVE:
            # Already forwarded by the switch; this copy only feeds CID learning.
            decision = self._observe(frame, now, context)
        elif (answer := self._arp_answer(frame)) is not None:
            decision = self.arp_reply(in_port, frame, answer)
        elif self.variant == "quic-lb" and self._touches_service(frame):
            decision = self._quic_lb_packet(in_port, frame, data, context)
        elif (
            self.lb
            and self.variant == "baseline"
            and frame.eth_type == ETH_TYPE_IPV4
            and frame.ip_src in self._backend_ips
        ):
            decision = self._baseline_backend_reply(in_port, frame, data, context)
        elif self.stateful and self._touches_service(frame):
            decision = self._service_packet(in_port, frame, data, now, context)
        else:
            decision = self.l2_forward(in_port, frame, data, now, context)
        # What ended connections held goes first: a rule removed after the new ones could
        # take a rule of a new path with it (a reused NAT port gives the same match).
        ended = self.ended_decision()
        return [ended, decision] if ended else [decision]

    def expire(self, now: float) -> None:
        """Ends the connections idle past the timeout (a shared store sweeps at most once a
        second) and gives back what they held."""
        self.table.expire(now)
        self._release_ended()

    def _release_ended(self) -> None:
        """Connections that ended in the table (idle timeout, eviction, found expired on a
        lookup) give back everything at once, so a port they held is free for the packet
        being decided; `ended_decision` then reports it. Every replica sharing the table
        removes its own rules and meter for them; their NAT ports go back once."""
        for connection, cause in self.table.take_ended():
            self._ended[cause].append(connection.id)
            if cause == EVICTED and connection.flags & ESTABLISHED:
                self._evicted_established.append(connection.id)
            self.half_open.discard(connection.id)
            for replica in self.siblings:
                replica._ended_change.messages += replica._forget(connection)
            for function in self.functions:
                self._ended_change.merge(function.connection_ended(connection))

    def _forget(self, connection: Connection) -> list[SwitchMessage]:
        """This switch's rules and meter of a connection that is no longer in the table."""
        local = self._on_switch.get(connection.id)
        if local is None:
            return []
        messages = []
        for path in list(local.ends):
            messages += self._remove_path_rules(connection, path)
        del self._on_switch[connection.id]
        if local.meter is not None:
            messages.append(RemoveMeter(local.meter))
        return messages

    def ended_decision(self) -> Decision | None:
        """The messages and event for connections ended since the last call, if any."""
        self._release_ended()
        if not any(self._ended.values()) and not self._ended_change.messages:
            return None
        change, ended = self._ended_change, self._ended
        self._ended_change, self._ended = Change(), {EXPIRED: [], EVICTED: [], HALF_OPEN: []}
        evicted_established, self._evicted_established = self._evicted_established, []
        event = ConnectionsEnded(
            dpid=self.dpid,
            expired=tuple(ended[EXPIRED]),
            evicted=tuple(ended[EVICTED]),
            evicted_established=tuple(evicted_established),
            half_open=tuple(ended[HALF_OPEN]),
            nat_released=tuple(change.nat_released),
            flow_mods=_flow_mods(change.messages),
        )
        return Decision(self.dpid, tuple(change.messages), event)

    # --- service traffic ------------------------------------------------------------------

    def _touches_service(self, frame: Frame) -> bool:
        if frame.eth_type != ETH_TYPE_IPV4:
            return False
        service = self.config.service_ip
        return service in (frame.ip_src, frame.ip_dst) or frame.ip_src in self._backend_ips

    def _client_path(self, flow: FlowKey) -> tuple[FlowKey | Refusal, bool]:
        """The client→service 5-tuple a packet belongs to and whether it travels that way;
        a function that rewrote the service side's addresses (NAT, load balancer) says."""
        if flow.dst_ip == self.config.service_ip:
            return flow, True
        for function in self.functions:
            path = function.service_path(flow)
            if path is not None:
                return path, False
        return flow.reversed(), False

    def _service_packet(
        self, in_port: int, frame: Frame, data: bytes, now: float, context: dict
    ) -> Decision:
        flow = frame.flow
        if frame.ip_proto != IP_PROTO_UDP or flow is None:
            if self.firewall:
                text = f"IP protocol {frame.ip_proto} is not QUIC/UDP"
                return self.decide(
                    [], context, verdict=Verdict.DROP, reason=Reason.NOT_UDP, text=text
                )
            return self.l2_forward(in_port, frame, data, now, context)
        path, to_service = self._client_path(flow)
        if isinstance(path, Refusal):
            return self._drop(context, path)
        if path.dst_port != self.config.service_port:
            if self.firewall:
                text = f"UDP port {path.dst_port} not served"
                return self._drop(context, Refusal(Reason.PORT_NOT_SERVED, text))
            return self.l2_forward(in_port, frame, data, now, context)
        located = self._locate(path, to_service, frame.udp_payload, now)
        if isinstance(located, Refusal):
            if located.reason in SOURCE_HELD_REASONS:
                return self._hold_source(context, located, path)
            return self._drop(context, located)
        connection, reason = located
        if reason is Reason.RETIRED_PATH:
            return self._deliver_left_behind(in_port, connection, data, to_service, context)
        if not to_service:
            self._established(connection)  # the server answered (RFC 9312 §4.7)
        if to_service:
            for function in self.functions:
                outcome = function.inspect(connection, frame.udp_payload)
                if isinstance(outcome, Refusal):
                    self._remove(connection)
                    return self._drop(context, outcome, connection=connection.id)
                if outcome is not None:
                    reason = outcome
        pending = False
        for function in self.functions:
            pending = pending or function.pending(connection)
        change = self._path_added(connection, path, now)
        if change.refusal is not None:
            if not self.table.save(connection, now):
                self._ended_meanwhile(connection)
            return self._drop(context, change.refusal, connection=connection.id)
        messages = list(change.messages)
        rules = self._rules(connection, path)
        if rules is None:
            # A side's location not learnt yet: deliver this packet, install rules later.
            _, forward, backward, _ = self._translations(connection, path)
            rewrite = forward if to_service else backward
            messages.insert(0, PacketOut(in_port, PORT_FLOOD, data, rewrite))
        else:
            ends, path_rules, forward, backward = rules
            learnt = self._learn_server_cids(connection, to_service, frame.udp_payload, now)
            messages += learnt
            local = self._local(connection)
            if pending:
                pass  # SNI not read yet: no rules, so the next Initials come here too
            elif not learnt and _rules_due(local.sent_at.get(path), now):
                messages += path_rules
                local.sent_at[path] = now
                messages += self._probe(connection, path, rules.to_client)
            out_port = ends.service_port if to_service else ends.client_port
            rewrite = forward if to_service else backward
            messages.insert(0, PacketOut(in_port, out_port, data, rewrite))
        if not self.table.save(connection, now):
            # Another replica ended it (idle) since it was read: what this decision
            # allocated for it goes back, and the packet is dropped.
            released = self._ended_meanwhile(connection)
            refusal = Refusal(Reason.CONNECTION_ENDED, "the connection ended meanwhile")
            return self._drop(context, refusal, connection=connection.id, nat_released=released)
        verdict = Verdict.FORWARD if reason is Reason.KNOWN_PATH else Verdict.ADMIT
        return self.decide(
            messages, context, verdict=verdict, reason=reason, connection=connection.id,
            backend=change.backend, nat_allocated=tuple(change.nat_allocated),
        )  # fmt: skip

    def _ended_meanwhile(self, connection: Connection) -> tuple[NatMapping, ...]:
        """A connection found ended on `save`: every replica forgets it, and what it still
        holds goes back (its NAT ports; giving one back twice changes nothing)."""
        for replica in self.siblings:
            replica._ended_change.messages += replica._forget(connection)
        change = Change()
        for function in self.functions:
            change.merge(function.connection_ended(connection))
        self.half_open.discard(connection.id)
        return tuple(change.nat_released)

    def _remove(self, connection: Connection) -> None:
        """A policy refused the connection while deciding on it (no rules anywhere yet): out
        of the table, and out of every replica's records."""
        self.table.remove(connection)
        self.half_open.discard(connection.id)
        for replica in self.siblings:
            replica._on_switch.pop(connection.id, None)

    def _hold_source(self, context: dict, refusal: Refusal, path: FlowKey) -> Decision:
        """A source over its admission budget or half-open quota: its packets to the service
        on paths without a rule are dropped by the switch for SOURCE_HOLD_S, not sent here one
        by one (5,000 Initials a second were 5,000 packet-ins a second, and the controller's
        CPU was what the flood took: measured, scenarios/initial-flood.yaml). Below the
        admitted paths' rules, so the source's live connections, and paths its agent
        announces, are untouched; its new connections would have been refused anyway."""
        hold = FlowRule(
            PRIORITY_SOURCE_HELD,
            Match(ipv4_src=path.src_ip, ipv4_dst=path.dst_ip),
            None,
            hard_timeout_s=SOURCE_HOLD_S,
        )
        return self.decide(
            [hold], context, verdict=Verdict.DROP, reason=refusal.reason, text=refusal.text
        )

    def _drop(self, context: dict, refusal: Refusal, **fields) -> Decision:
        return self.decide(
            [], context, verdict=Verdict.DROP, reason=refusal.reason, text=refusal.text, **fields
        )

    def _locate(
        self, path: FlowKey, to_service: bool, payload: bytes, now: float
    ) -> tuple[Connection, Reason] | Refusal:
        connection = self.table.by_path(path, now)
        if connection is not None:
            return connection, Reason.KNOWN_PATH
        if not to_service:
            retiring = self.table.retired_by(path)
            if retiring is not None:
                # Sent before the server saw the client move (at 100 migrations a second,
                # a round trip is more than one path's life), or a server whose validation
                # of the new path timed out going back to the last validated one (RFC 9000
                # §9.3.2): delivered, not re-admitted.
                return retiring, Reason.RETIRED_PATH
            return Refusal(Reason.NEVER_ADMITTED, "from the service on a 5-tuple never admitted")
        if self.cid_aware:
            retiring = self.table.retired_by(path)
            if retiring is not None and self._sent_within(retiring, payload, now):
                return retiring, Reason.RETIRED_PATH  # delivered, not re-admitted
            found = self._locate_by_dcid(path, payload, now)
            if found is not None:
                return found
        problem = client_initial_problem(payload)
        for function in self.functions:
            refusal = function.admit(problem)
            if refusal is not None:
                return refusal
        return self._open(path, payload if problem is None else None, now)

    def _open(
        self, path: FlowKey, initial: bytes | None, now: float
    ) -> tuple[Connection, Reason] | Refusal:
        """A new connection on `path`, if its source is within its half-open quota and
        admission budget. `initial`: the client Initial it opens with (None: its first
        packet is not one, or its agent admitted it ahead, `admit_ahead`)."""
        source = self.admission.key(path.src_ip)
        if self.nat is not None:
            held = self.half_open.count(source, self._still_half_open)
            if held >= self.config.half_open_per_source:
                # Before a NAT port or a table slot is taken (and before a token: the
                # source's budget is not spent on what is refused anyway).
                return Refusal(
                    Reason.HALF_OPEN_QUOTA,
                    f"{path.src_ip}/{self.admission.prefix_length} holds {held} connections "
                    f"the server has not answered (quota {self.config.half_open_per_source})",
                )
        if not self._admitted.take(source, now):
            return Refusal(
                Reason.ADMISSION_BUDGET,
                f"new connections from {path.src_ip}/{self.admission.prefix_length} over "
                f"{self.admission.rate_per_s:g}/s (burst {self.admission.burst})",
            )
        connection = self.table.put(path, now)
        self._release_ended()  # what the bound evicted, before this connection allocates
        if self.table.last_put_existing:
            # Another replica opened it first, racing on the same first packet.
            return connection, Reason.KNOWN_PATH
        if self.nat is not None:
            self.half_open.add(source, connection)
        # Only a connection that starts with its handshake has server SCIDs to observe; one
        # first seen mid-flight would be copied to the controller packet by packet for nothing.
        if self.observes and initial is not None:
            connection.flags |= OBSERVING
        if initial is not None:
            for function in self.functions:
                function.opened(connection, initial)
            return connection, Reason.OPENED_BY_INITIAL
        return connection, Reason.NOT_LINKABLE

    def _make_room_for_cids(
        self, connection: Connection, keep: tuple[bytes, ...], adding: int = 1
    ) -> None:
        """Forgets the connection's oldest server CIDs, other than `keep`, so that `adding`
        more fit. A client holds at most active_connection_id_limit of them and retires each
        one it leaves (RFC 9000 §5.1.1-§5.1.2): repeated active migration moves to a fresh
        CID every time, so the oldest are retired ones. Refusing instead would fail the
        connection's 17th migration."""
        held = connection.server_cids
        excess = len(held) + adding - self.table.max_cids_per_connection
        if excess <= 0:
            return
        stale = [cid for cid in held if cid not in keep][:excess]
        for cid in stale:
            self.table.forget_cid(connection, cid)

    def _short_header_dcids(self, payload: bytes) -> list[bytes]:
        """The DCID a short-header packet carries at each server CID length seen, shortest
        first; none for a long header."""
        if not payload or payload[0] & LONG_HEADER_BIT:
            # Not a migrated packet (a client Initial, say). Asked first: once a server CID
            # was learnt, the WireError each Initial raised here made its decision a sixth
            # slower (measured interleaved, 6 runs each).
            return []
        dcids = []
        for length in sorted(self.table.cid_lengths):
            try:
                dcids.append(short_header_dcid(payload, length))
            except WireError:
                break  # too short for this length's DCID, so for the longer ones too
        return dcids

    def _sent_within(self, connection: Connection, payload: bytes, now: float) -> bool:
        """Whether a short-header packet's DCID is one of the connection's."""
        for dcid in self._short_header_dcids(payload):
            found = self.table.by_cid(dcid, now)
            if found is not None and found.id == connection.id:
                return True
        return False

    def _deliver_left_behind(
        self, in_port: int, connection: Connection, data: bytes, to_service: bool, context: dict
    ) -> Decision:
        """A packet on a path its client had left and the agent then retired: it goes on as
        on the oldest path the connection holds (the client's, which the server has seen),
        with no path, rule or NAT port taken for it again, so a connection holds at most two
        paths however late its packets come.
        - From the client: one a queue held until the path was retired. Re-admitted by its
          DCID instead, it took a third NAT port and, while Open vSwitch still cached the
          retired path as "to the controller", tens of packet-ins (rate.yaml at 100 Hz).
        - From the service: one sent before the server saw the client move, or a server gone
          back to the last path it validated. Dropped, each was a loss the connection had to
          recover from; the client takes it on the path it uses now."""
        paths = connection.paths
        held = paths[0] if paths else None
        if held is None:
            text = "on a path its client retired, and the connection holds no other"
            return self._drop(context, Refusal(Reason.RETIRED_PATH, text), connection=connection.id)
        if to_service:
            flow, forward, _, service_port = self._translations(connection, held)
            ends = self._path_ends(self._local(connection), held, flow, service_port)
            out_port, actions = (ends.service_port if ends else PORT_FLOOD), forward
        else:
            delivery = self._to_client_end(connection, held)
            if delivery is None:
                text = f"on a path its client retired, and {held.src_ip} is not located yet"
                refusal = Refusal(Reason.RETIRED_PATH, text)
                return self._drop(context, refusal, connection=connection.id)
            out_port, actions = delivery
        return self.decide(
            [PacketOut(in_port, out_port, data, actions)], context,
            verdict=Verdict.FORWARD, reason=Reason.RETIRED_PATH, connection=connection.id,
        )  # fmt: skip

    def _locate_by_dcid(
        self, path: FlowKey, payload: bytes, now: float
    ) -> tuple[Connection, Reason] | None:
        for dcid in self._short_header_dcids(payload):
            connection = self.table.by_cid(dcid, now)
            reason = Reason.DCID_MATCH
            if connection is None and self._pull is not None:
                announcement = self._pull(dcid)
                if announcement is not None:
                    connection = self.table.by_cid(announcement.connection_cid, now)
                    if connection is not None:
                        self._make_room_for_cids(connection, (announcement.connection_cid, dcid))
                    if connection is not None and not self.table.associate_cid(
                        connection, dcid, now
                    ):
                        connection = None
                    if connection is not None:
                        connection.owner = announcement.client
                    reason = Reason.PULLED_FROM_AGENT
            if connection and self.table.associate_path(connection, path, now):
                return connection, reason
        return None

    # --- half-open connections (RFC 9312 §4.7) ---------------------------------------------
    #
    # A connection is half-open until there is evidence the server answered: a packet from
    # the service side reaches the controller (a copy while cid learns server CIDs, or a
    # packet without a rule), the client's agent reports it (push: its connection CID is one
    # the server issued), or a probe rule forwarded some. The probe is how a hop that copies
    # nothing (tuple, qasm push) learns it without putting the handshake through the
    # controller: with the first rules of a half-open connection goes a copy of its
    # service-side rule one priority above, with a hard timeout of half_open_timeout_s and
    # OFPFF_SEND_FLOW_REM. When it goes, the switch reports how many packets it forwarded:
    # some, the connection is established; none, it ends as half-open. The plain rule below
    # takes over with no gap and nothing to re-send, and a hard (not idle) timeout gives the
    # verdict at a known time, so a busy real connection is not taken for half-open (first
    # to be evicted, counted in its source's quota) for as long as its server talks.
    # One empty probe is not a verdict: OVS's userspace datapath credits a rule with the
    # packets of its datapath flows only when its revalidators get round to it, which on a
    # saturated machine can be later than the probe's end (measured: 29 of 200 connections
    # of a 2-core scale run reported 0 packets though their servers had answered, and were
    # ended). A second probe, twice as long, decides.

    def _still_half_open(self, connection: Connection) -> bool:
        # A shared store's liveness costs a round trip: there, ends are discarded as they
        # are found (`_release_ended`), and this checks the flag alone.
        shared = len(self.siblings) > 1
        return not connection.flags & ESTABLISHED and (shared or self.table.is_live(connection))

    def _established(self, connection: Connection) -> None:
        """Evidence that the server answered; the caller saves the connection."""
        if not connection.flags & ESTABLISHED:
            connection.flags = connection.flags & ~PROBING | ESTABLISHED
            self.half_open.discard(connection.id)

    def _probe(self, connection: Connection, path: FlowKey, to_client: FlowRule) -> list:
        """The probe to send with a half-open connection's first rules on this switch, if
        it needs one: not while the service's packets are copied here (cid and pull learn
        from those copies, and a probe above the rule would keep copying after it)."""
        if connection.flags & (ESTABLISHED | OBSERVING | PROBING):
            return []
        connection.flags |= PROBING
        local = self._local(connection)
        local.probe = path
        timeout_s = self.config.half_open_timeout_s * 2**local.probes_empty
        probe = replace(
            to_client, priority=PRIORITY_PROBE, idle_timeout_s=0, copy_to_controller=False,
            hard_timeout_s=max(1, math.ceil(timeout_s)), notify_removed=True, tag=connection.id,
        )  # fmt: skip
        return [probe]

    def probe_ended(
        self, flow: FlowKey, cookie: int, packets: int, reason: int, now: float
    ) -> list[Decision]:
        """The switch removed a probe (`flow` its match, `cookie` its connection's id)."""
        path, to_service = self._client_path(flow)
        connection = None
        if isinstance(path, FlowKey) and not to_service:
            connection = self.table.by_path(path, now)
        self._release_ended()
        event = dict(dpid=self.dpid, connection=cookie, packets=packets, flow=flow)
        if connection is None or connection.id != cookie:
            decision = Decision(self.dpid, (), ProbeEnded(**event, reason=Reason.PROBE_STALE))
            ended = self.ended_decision()
            return [ended, decision] if ended else [decision]
        local = self.on_switch(connection)
        if local is not None and local.probe == path:
            local.probe = None
        ended_here = False
        messages: list[SwitchMessage] = []
        if packets > 0:
            self._established(connection)
            outcome = Reason.SERVER_ANSWERED
        elif connection.flags & ESTABLISHED:
            outcome = Reason.SERVER_ANSWERED  # learnt otherwise meanwhile
        elif reason == REMOVED_DELETE:
            # Deleted without a verdict (the switch reconnected, or the path was retired):
            # the table's half-open clock takes over.
            connection.flags &= ~PROBING
            outcome = Reason.PROBE_DELETED
        elif local is not None and local.probes_empty == 0 and path in local.ends:
            local.probes_empty = 1
            connection.flags &= ~PROBING
            messages = self._probe(connection, path, self._rules(connection, path).to_client)
            outcome = Reason.PROBED_AGAIN
        else:
            ended_here = self.table.end_half_open(connection)
            outcome = Reason.NEVER_ANSWERED
        if not ended_here and not self.table.save(connection, now):
            self._ended_meanwhile(connection)
            messages = []
        event = ProbeEnded(**event, reason=outcome)
        decision = Decision(self.dpid, tuple(messages), event)
        ended = self.ended_decision()
        return [ended, decision] if ended else [decision]

    def connection_of(self, path: FlowKey, cid: bytes, now: float) -> Connection | None:
        """The connection a path (as this hop sees it) or a server CID belongs to."""
        return self.table.by_path(path, now) or self.table.by_cid(cid, now)

    def service_flow(self, connection: Connection, path: FlowKey) -> FlowKey:
        """A path as the next hop sees it (after this hop's rewriting)."""
        return self._translations(connection, path)[0]

    def _path_added(self, connection: Connection, path: FlowKey, now: float) -> Change:
        change = Change()
        for function in self._adding_paths:
            change.merge(function.path_added(connection, path, now))
            if change.refusal is not None:
                break
        return change

    # --- rules ----------------------------------------------------------------------------

    def _translations(self, connection: Connection, path: FlowKey, functions=None):
        """The path as the service sees it, the fields to set each way, and the switch port
        of the service side if a function decides it."""
        flow, forward, backward, service_port = path, (), (), None
        for function in self._translating if functions is None else functions:
            translation = function.translate(connection, path, flow)
            flow = translation.service_flow
            forward += translation.to_service
            backward += translation.to_client
            service_port = translation.service_port or service_port
        return flow, forward, backward, service_port

    def _to_client_end(
        self, connection: Connection, path: FlowKey
    ) -> tuple[int, tuple[tuple[str, str | int], ...]] | None:
        """The switch port and the fields to set that bring a datagram from the service to
        the client's end of `path`, whichever path it was sent on (None while that end is
        not located)."""
        flow, _, backward, service_port = self._translations(connection, path)
        ends = self._path_ends(self._local(connection), path, flow, service_port)
        if ends is None:
            return None
        # Whatever the translations set (nothing without NAT), the client's own address.
        to_client = {"ipv4_dst": path.src_ip, "udp_dst": path.src_port}
        delivered = dict(backward) | to_client | {"eth_dst": ends.client_mac}
        return ends.client_port, tuple(delivered.items())

    def _path_ends(
        self, local: OnSwitch, path: FlowKey, flow: FlowKey, service_port: int | None
    ) -> PathEnds | None:
        """Where `path`'s ends are on this switch: as its rules recorded them, else as
        located now (None while one is not)."""
        return local.ends.get(path) or self._ends(path, flow, service_port)

    def _ends(self, path: FlowKey, flow: FlowKey, service_port: int | None):
        """The two ends on this switch of `path`, which the service sees as `flow`, or None
        while one is not located. A replica takes what a sibling located (wired alike): the
        front and back ends send ARP and the like through one replica only."""
        client_port = self._located(self._port_of_ip, path.src_ip)
        service_port = (
            service_port
            or self._located(self._port_of_ip, flow.dst_ip)
            or self._bound_port.get(flow.dst_ip)
        )
        client_mac = self._located(self._mac_of_ip, path.src_ip)
        if client_port is None or service_port is None or client_mac is None:
            return None
        return PathEnds(client_port, client_mac, service_port)

    def _located(self, table: dict, ip: str):
        found = table.get(ip)
        if found is None and len(self.siblings) > 1:
            name = "_port_of_ip" if table is self._port_of_ip else "_mac_of_ip"
            found = next(
                (f for s in self.siblings if (f := getattr(s, name).get(ip)) is not None), None
            )
        return found

    def _rules(
        self,
        connection: Connection,
        path: FlowKey,
        ends: PathEnds | None = None,
        functions=None,
        local: OnSwitch | None = None,
    ) -> PathRules | None:
        """The path's rules on this switch, or None while an end is not located. The
        client's direction goes under the connection's meter, installed on this switch
        first if it is not there yet."""
        local = local if local is not None else self._local(connection)
        flow, forward, backward, service_port = self._translations(connection, path, functions)
        ends = ends or self._path_ends(local, path, flow, service_port)
        if ends is None:
            return None
        local.ends[path] = ends
        if backward:
            backward += (("eth_dst", ends.client_mac),)
        messages: list[SwitchMessage] = []
        meter = None
        for function in self._metering if functions is None else functions:
            meter = function.meter(connection)
            if meter is not None:
                if local.meter != meter:
                    messages.append(function.meter_rule(meter))
                    local.meter = meter
                break
        idle = int(self.config.state_idle_timeout_s)
        observing = local.copying = connection.flags & OBSERVING != 0
        messages += [
            FlowRule(
                PRIORITY_ADMITTED_FLOW, Match(flow=path), ends.service_port, idle,
                meter_id=meter, set_fields=forward,
            ),
            FlowRule(
                PRIORITY_ADMITTED_FLOW, Match(flow=flow.reversed()), ends.client_port, idle,
                copy_to_controller=observing, set_fields=backward,
            ),
        ]  # fmt: skip
        return PathRules(ends, messages, forward, backward)

    def _remove_path_rules(
        self, connection: Connection, path: FlowKey, inbound_to: FlowKey | None = None
    ) -> list[SwitchMessage]:
        """The path's rules go; with `inbound_to`, its inbound rule becomes, for
        RETIRED_INBOUND_S, a redirect to the client's end of that path."""
        local = self._on_switch.get(connection.id)
        if local is None or path not in local.ends:
            return []
        flow = self._translations(connection, path)[0]
        inbound = Match(flow=flow.reversed())
        delivery = self._to_client_end(connection, inbound_to) if inbound_to else None
        messages: list[SwitchMessage] = [
            RemoveFlow(PRIORITY_ADMITTED_FLOW, Match(flow=path)),
            RemoveFlow(PRIORITY_ADMITTED_FLOW, inbound)
            if delivery is None
            else FlowRule(
                PRIORITY_ADMITTED_FLOW, inbound, delivery[0], hard_timeout_s=RETIRED_INBOUND_S,
                set_fields=delivery[1],
            ),
        ]  # fmt: skip
        if local.probe == path:
            messages.append(RemoveFlow(PRIORITY_PROBE, Match(flow=flow.reversed())))
            local.probe = None
        return messages

    def _learn_server_cids(
        self, connection: Connection, to_service: bool, payload: bytes, now: float
    ) -> list[SwitchMessage]:
        """RFC 9312 §3.5: the server's long-header SCIDs are the DCIDs its client will use.
        Returns this switch's service-side rules without copies once a server CID is known
        (learnt here, or by another replica sharing the table)."""
        if not self.observes or to_service:
            return []
        try:
            headers = parse_datagram(payload, short_dcid_length=0)
        except WireError:
            return []
        learnt = False
        for header in headers:
            if header.form is HeaderForm.LONG and header.version in KNOWN_VERSIONS and header.scid:
                learnt |= self.table.associate_cid(connection, header.scid, now)
        if learnt:
            connection.flags &= ~OBSERVING
        local = self._local(connection)
        if connection.flags & OBSERVING or not local.copying:
            return []
        messages: list[SwitchMessage] = []
        paths = connection.paths
        for path, ends in local.ends.items():
            if path in paths:
                messages.append(self._rules(connection, path, ends).to_client)
        local.copying = False
        return messages

    def _observe(self, frame: Frame, now: float, context: dict) -> Decision:
        messages: list[SwitchMessage] = []
        flow = frame.flow
        if flow is not None and frame.ip_proto == IP_PROTO_UDP:
            path, to_service = self._client_path(flow)
            if not to_service and isinstance(path, FlowKey):
                connection = self.table.by_path(path, now)
                if connection is not None:
                    self._established(connection)  # a copy of the server's packet
                    messages = self._learn_server_cids(connection, False, frame.udp_payload, now)
                    if not self.table.save(connection, now):
                        self._ended_meanwhile(connection)
                        messages = []
        return self.decide(messages, context, verdict=Verdict.OBSERVE, reason=Reason.HANDSHAKE_COPY)

    # --- what the Tracking Agent asks of a hop ----------------------------------------------

    def admit_ahead(
        self, path: FlowKey, client: str, now: float
    ) -> tuple[Connection, Decision] | Refusal:
        """Agent mode ahead: a connection about to open on `path` (as this hop sees it) is
        decided now, on its agent's authenticated word, as its Initial would have been
        (half-open quota, admission budget, NAT port, backend) and its rules installed, so
        the Initial passes the switch without a round trip through the controller. Declined
        (NOT_ADMITTED_AHEAD, nothing changed) where the hop must read the Initial itself or
        has not located an end of the path: the Initial then decides as without an agent.
        The caller sends the decision, or undoes it (`undo_admission`) if a later hop
        refuses."""
        readers = [f.name for f in self.functions if f.reads_first_packets()]
        if readers:
            text = f"hop {self.dpid}: {', '.join(readers)} reads the connection's Initial"
            return Refusal(Reason.NOT_ADMITTED_AHEAD, text)
        if self.table.by_path(path, now) is not None:
            return Refusal(Reason.NEW_PATH_OF_ANOTHER, f"hop {self.dpid}: {path} is held")
        opened = self._open(path, None, now)
        if isinstance(opened, Refusal):
            return opened
        connection, _ = opened
        connection.owner = client
        change = self._path_added(connection, path, now)
        rules = self._rules(connection, path) if change.refusal is None else None
        if rules is None:
            self.undo_admission(connection)
            return change.refusal or Refusal(
                Reason.NOT_ADMITTED_AHEAD, f"hop {self.dpid}: an end of {path} is not located yet"
            )
        self._local(connection).sent_at[path] = now
        messages = [*change.messages, *rules.messages]
        messages += self._probe(connection, path, rules.to_client)
        if not self.table.save(connection, now):
            self.undo_admission(connection)
            return Refusal(Reason.CONNECTION_ENDED, "the connection ended meanwhile")
        event = PathInstalled(
            dpid=self.dpid, client=client, connection=connection.id, path=path,
            nat_allocated=tuple(change.nat_allocated), backend=change.backend,
            flow_mods=_flow_mods(messages), opened=True,
        )  # fmt: skip
        return connection, Decision(self.dpid, tuple(messages), event)

    def undo_admission(self, connection: Connection) -> None:
        """An admission ahead that is not carried out: the connection leaves the table and
        gives back what it took (its NAT port); nothing of it was sent."""
        self._remove(connection)
        for function in self.functions:
            function.connection_ended(connection)

    def install_announced(
        self,
        connection: Connection,
        message: Announce,
        old_path: FlowKey,
        new_path: FlowKey,
        client: tuple[int | None, str | None] | None,
        now: float,
    ) -> Installed | None:
        """Push mode: the announced next CID and new path (as this hop sees it) join the
        connection and get their rules now. `client` is where the new address is on the
        client-facing hop (port and MAC, where known); None past it. None, changing
        nothing, if the connection holds its maximum of CIDs or paths, or the path is
        another connection's. The caller saves the connection once every hop agreed."""
        # The connection's current CID too: in push mode nothing else told this hop of it.
        cids = dict.fromkeys((message.connection_cid, message.next_cid))
        held = connection.server_cids
        added = [cid for cid in cids if cid not in held]
        self._make_room_for_cids(connection, tuple(cids), len(added))
        associated = []
        for cid in added:
            if not self.table.associate_cid(connection, cid, now):
                break
            associated.append(cid)
        if len(associated) < len(added) or not self.table.associate_path(connection, new_path, now):
            for cid in associated:
                self.table.forget_cid(connection, cid)
            return None
        # The client's agent reports a connection whose handshake it finished (its connection
        # CID is one the server issued): established.
        self._established(connection)
        change = self._path_added(connection, new_path, now)
        fields = dict(
            dpid=self.dpid, client=message.client, connection=connection.id, path=new_path,
            nat_allocated=tuple(change.nat_allocated), backend=change.backend,
        )  # fmt: skip
        installed = Installed(self, connection, new_path, tuple(added), client=message.client)
        if change.refusal is not None:
            # Announced, but the path has no public port: its packets will be dropped.
            installed.decision = Decision(
                self.dpid, (), PathInstalled(**fields, nat_exhausted=True)
            )
            installed.next_hop_path = new_path
            return installed
        connection.owner = message.client
        messages = list(change.messages)
        ends = None
        # The old path's ends on this switch, or on a replica that carried it (replicas
        # are wired alike).
        old_ends = next(
            (
                local.ends[old_path]
                for replica in (self, *self.siblings)
                if (local := replica.on_switch(connection)) and old_path in local.ends
            ),
            None,
        )
        if old_ends is not None:
            # Past the first hop a path's ends are where the old path's are; on the first
            # hop the client may have moved to another interface.
            client_port, client_mac = client or (None, None)
            ends = PathEnds(
                client_port or old_ends.client_port,
                client_mac or old_ends.client_mac,
                old_ends.service_port,
            )
        rules = self._rules(connection, new_path, ends)
        if rules is not None:
            messages += rules.messages
            self._local(connection).sent_at[new_path] = now
            installed.ends = rules.ends
        event = PathInstalled(**fields, flow_mods=_flow_mods(messages))
        installed.decision = Decision(self.dpid, tuple(messages), event)
        installed.next_hop_path = self.service_flow(connection, new_path)
        return installed

    def install_copy(self, installed: Installed, now: float) -> Decision:
        """Push mode, shared store: the rules of a path a sibling replica installed, on this
        replica's switch too (the front end may send the path here)."""
        connection, path = installed.connection, installed.path
        ends = None
        if installed.ends is not None:
            flow, _, _, service_port = self._translations(connection, path)
            ends = self._ends(path, flow, service_port) or installed.ends
        rules = self._rules(connection, path, ends) if ends is not None else None
        messages = rules.messages if rules is not None else []
        if rules is not None:
            self._local(connection).sent_at[path] = now
        event = PathInstalled(
            dpid=self.dpid, client=installed.client, connection=connection.id, path=path,
            flow_mods=_flow_mods(messages),
        )  # fmt: skip
        return Decision(self.dpid, tuple(messages), event)

    def undo_install(self, installed: Installed) -> None:
        """Forgets a path `install_announced` added (its decision was never sent)."""
        connection, path = installed.connection, installed.path
        for function in self.functions:
            function.path_retired(connection, path)  # gives back its NAT port
        self.table.forget_path(connection, path)
        for cid in installed.added_cids:
            self.table.forget_cid(connection, cid)
        local = self.on_switch(connection)
        if local is not None:
            local.ends.pop(path, None)
            local.sent_at.pop(path, None)

    def retire(
        self, connection: Connection, path: FlowKey, client: str, now: float | None = None
    ) -> Decision | None:
        """A path the client stopped using: its rules go (the inbound one, for a moment, to
        a path the connection holds), its NAT port goes back."""
        held = next((p for p in connection.paths if p != path), None)
        messages = self._remove_path_rules(connection, path, inbound_to=held)
        if not self.table.retire_path(connection, path):
            return None
        connection.owner = client
        change = Change(messages)
        for function in self.functions:
            change.merge(function.path_retired(connection, path))
        self._forget_path(connection, path)
        if now is not None and not self.table.save(connection, now):
            self._ended_meanwhile(connection)
        event = PathRetired(
            dpid=self.dpid, client=client, connection=connection.id, path=path,
            nat_released=tuple(change.nat_released), flow_mods=_flow_mods(change.messages),
        )  # fmt: skip
        return Decision(self.dpid, tuple(change.messages), event)

    def retire_copy(self, connection: Connection, path: FlowKey, client: str) -> Decision | None:
        """A sibling replica retires a path: this switch's rules for it go too."""
        messages = self._remove_path_rules(connection, path)
        if not messages:
            return None
        self._forget_path(connection, path)
        event = PathRetired(
            dpid=self.dpid, client=client, connection=connection.id, path=path,
            flow_mods=_flow_mods(messages),
        )  # fmt: skip
        return Decision(self.dpid, tuple(messages), event)

    def _forget_path(self, connection: Connection, path: FlowKey) -> None:
        local = self.on_switch(connection)
        if local is not None:
            local.ends.pop(path, None)
            local.sent_at.pop(path, None)

    # --- stateless load balancing: baseline's static VIP, quic-lb ---------------------------

    def _baseline_backend_reply(
        self, in_port: int, frame: Frame, data: bytes, context: dict
    ) -> Decision:
        """baseline behind a virtual IP: the first backend's replies leave as the VIP, by
        destination MAC like L2 learning (no per-connection state)."""
        out_port = self._port_of_mac.get(frame.eth_dst)
        rewrite = (("ipv4_src", self.config.service_ip), ("eth_src", self.lb.vip_mac))
        if out_port is None:
            messages = [PacketOut(in_port, PORT_FLOOD, data, rewrite)]
            return self.decide(messages, context, verdict=Verdict.FLOOD, reason=Reason.VIP_REPLY)
        match = Match(eth_dst=frame.eth_dst, ipv4_src=frame.ip_src)
        messages = [
            PacketOut(in_port, out_port, data, rewrite),
            FlowRule(PRIORITY_VIP_REPLY, match, out_port, set_fields=rewrite),
        ]
        return self.decide(messages, context, verdict=Verdict.FORWARD, reason=Reason.VIP_REPLY)

    def _quic_lb_packet(self, in_port: int, frame: Frame, data: bytes, context: dict) -> Decision:
        flow = frame.flow
        if flow is None:
            return self._drop(context, Refusal(Reason.NOT_UDP, "not UDP"))
        balancer = LoadBalancer(self.lb, self.config.service_ip)
        path = balancer.service_path(flow)
        to_service = path is None
        if not to_service:
            # The reverse rule is installed with the forward one; a backend's packet without
            # it (rule expired) goes back to the client that the 5-tuple names.
            backend = self._backend_ips[flow.src_ip]
            reason = Reason.BACKEND_REPLY
        else:
            path = flow
            try:
                first = parse_datagram(
                    frame.udp_payload, short_dcid_length=self.lb.quic_lb.config().cid_length
                )[0]
            except WireError as exc:
                return self._drop(context, Refusal(Reason.NOT_QUIC, f"not QUIC: {exc}"))
            backend = None
            if first.form is HeaderForm.SHORT or first.packet_type is not PacketType.INITIAL:
                backend = backend_by_server_id(self.lb, first.dcid)
                reason = Reason.SERVER_ID
            if backend is None:
                # A client Initial's DCID is the client's own choice: hash it (every Initial of
                # the connection repeats it); an undecodable DCID falls back the same way.
                backend = backend_by_initial_dcid(self.lb, first.dcid)
                long_header = first.form is HeaderForm.LONG
                reason = Reason.INITIAL_DCID_HASH if long_header else Reason.UNDECODABLE_DCID_HASH
        # quic-lb keeps no connection: its rules are built for a placeholder that names the
        # backend (the pipeline's one rule builder, with the balancer as the only function).
        placeholder = Connection(id=0, last_seen=0.0)
        placeholder.loadbalancer = LoadBalancerState(backend.ip)
        rules = self._rules(placeholder, path, functions=[balancer], local=OnSwitch())
        if rules is None:
            refusal = Refusal(Reason.LOCATION_UNKNOWN, "client location unknown")
            return self._drop(context, refusal, backend=backend.ip)
        ends, messages, forward, backward = rules
        out_port = ends.service_port if to_service else ends.client_port
        messages.insert(0, PacketOut(in_port, out_port, data, forward if to_service else backward))
        return self.decide(
            messages, context, verdict=Verdict.ADMIT, reason=reason, backend=backend.ip
        )


@dataclass
class Installed:
    """What a hop's `install_announced` did, to send or, if a later hop refuses, undo."""

    hop: Middlebox
    connection: Connection
    path: FlowKey
    added_cids: tuple[bytes, ...]  # the CIDs the connection did not hold before
    decision: Decision | None = None
    next_hop_path: FlowKey | None = None  # the new path as the next hop sees it
    client: str = ""
    ends: PathEnds | None = None  # the path's ends on the hop's switch, once located
    copies: list[Decision] = field(default_factory=list)  # its rules on sibling replicas

    def undo(self) -> None:
        self.hop.undo_install(self)

    def abandon(self) -> None:
        """The connection ended before this install was saved: nothing of it is sent, and
        what it allocated goes back."""
        released = self.hop._ended_meanwhile(self.connection)
        event = PathRetired(
            dpid=self.hop.dpid, client=self.client, connection=self.connection.id,
            path=self.path, nat_released=released,
        )  # fmt: skip
        self.decision = Decision(self.hop.dpid, (), event)

    def decisions(self) -> list[Decision]:
        return [*([self.decision] if self.decision else []), *self.copies]


def _rules_due(sent_at: float | None, now: float) -> bool:
    """Whether rules last sent at `sent_at` (None: never) are to be sent now: packet-ins
    within RULES_IN_FLIGHT_S of them were queued before the switch applied them."""
    return sent_at is None or now - sent_at >= RULES_IN_FLIGHT_S


__all__ = [
    "AGENT_MODES",
    "FUNCTIONS",
    "VARIANTS",
    "AgentSettings",
    "ConfigError",
    "Controller",
    "Decision",
    "HopSettings",
    "Middlebox",
    "MiddleboxConfig",
    "NatMapping",
    "RemoveMeter",
    "Switch",
]
