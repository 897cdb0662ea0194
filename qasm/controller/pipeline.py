"""The middlebox as a sans-I/O state machine: packet-in in, switch messages and a log out.

Data flow (../shared/DESIGN.md): packet-in → parse → look up / update connection state → each
configured function decides → flow rules on the switch, so later packets of an admitted path
stay in the fast path. Forwarding is MAC learning; traffic to or from the protected service is
steered to the controller (above L2 rules) whenever the variant keeps middlebox state.

How each variant finds the connection of a packet on a 5-tuple it has no rule for:
- `tuple`: it does not: every new 5-tuple is a new connection.
- `cid`: also by the short header's DCID, among server CIDs learnt from the handshake
  (RFC 9312 §3.5). To see the handshake, a connection's first rule for the service's packets
  forwards *and* copies to the controller until the server's SCID is known; then plain
  forwarding replaces it. The client's packets are never copied: they carry no server SCID.
- `qasm`: as `cid`, plus the Client Agent's reports to the Tracking Agent, which associate the
  next CID and the new path before the client uses them and pre-install the new path's rules.

Functions: `firewall` admits a new connection only on a QUIC Initial (RFC 9312 §3.1.2, §4.7);
`ratelimit` puts every path of a connection under one OpenFlow meter (one token bucket);
`nat` gives every path its own public port (RFC 9312 §4.3) and frees a path's port when the
Tracking Agent retires it or the connection idles out; `loadbalancer` sends each connection to
one backend behind the service's virtual IP (qasm/functions/loadbalancer.py says how each
variant picks it; `quic-lb` is the load balancer alone, stateless).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields

from qasm.agents.tracking import TrackingAgent
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
    PRIORITY_PROTECTED,
    PRIORITY_TABLE_MISS,
    PRIORITY_VIP_REPLY,
    ClearFlows,
    FlowRule,
    Match,
    MeterRule,
    PacketOut,
    RemoveFlow,
    SwitchMessage,
)
from qasm.flow import FlowKey
from qasm.functions.firewall import SniPolicy, client_initial_problem
from qasm.functions.loadbalancer import (
    Backend,
    LoadBalancerSettings,
    QuicLbSettings,
    backend_by_hash,
    backend_by_initial_dcid,
    backend_by_server_id,
)
from qasm.functions.nat import NatPool, NatSettings
from qasm.state.connections import Connection, ConnectionTable
from qasm.state.flows import DEFAULT_IDLE_TIMEOUT_S, DEFAULT_MAX_ENTRIES
from qasm.wire.clienthello import ClientHelloAssembler
from qasm.wire.errors import WireError
from qasm.wire.header import (
    KNOWN_VERSIONS,
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
# Packet-ins of a path (or a MAC) whose rules went out less than this long ago were already
# queued before the switch had the rules; forward them without sending the rules again.
RULES_IN_FLIGHT_S = 1.0
# Drop reasons the metrics count apart: the server on a path the client left (not a cost of
# the migration), and a NAT without a free port (the reason goes on with the pool size).
FROM_SERVICE_ON_RETIRED_PATH = "from the service on a path its client retired"
NAT_POOL_EXHAUSTED = "NAT port pool exhausted"


class ConfigError(ValueError):
    """The controller configuration is invalid; the message names the field."""


@dataclass(frozen=True)
class AgentSettings:
    """Where the Tracking Agent listens (a management address answered by the controller)
    and who may report: per-client keys (hex) and each client's addresses."""

    ip: str
    port: int
    mac: str
    keys: dict[str, str] = field(default_factory=dict)
    addresses: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class RateLimit:
    rate_kbps: int
    burst_kbit: int


@dataclass(frozen=True)
class MiddleboxConfig:
    variant: str
    service_ip: str
    service_port: int
    functions: tuple[str, ...] = ("firewall",)
    state_idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
    max_flows: int = DEFAULT_MAX_ENTRIES
    agent: AgentSettings | None = None
    ratelimit: RateLimit | None = None
    nat: NatSettings | None = None
    loadbalancer: LoadBalancerSettings | None = None
    sni: SniPolicy | None = None  # the firewall's allow/deny lists for the ClientHello's SNI

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
        if self.variant == "qasm" and self.agent is None:
            raise ConfigError("agent: the qasm variant needs the Tracking Agent's settings")
        if "ratelimit" in self.functions and self.ratelimit is None:
            raise ConfigError("ratelimit: the ratelimit function needs rate_kbps and burst_kbit")
        if "nat" in self.functions and self.nat is None:
            raise ConfigError("nat: the nat function needs public_ip, public_mac and a port pool")
        if "loadbalancer" in self.functions and self.loadbalancer is None:
            raise ConfigError("loadbalancer: the loadbalancer function needs its backends")
        if self.variant == "quic-lb" and self.functions != ("loadbalancer",):
            raise ConfigError("functions: the quic-lb variant is a load balancer only")

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
            if values.get("agent") is not None:
                values["agent"] = AgentSettings(**values["agent"])
            if values.get("ratelimit") is not None:
                values["ratelimit"] = RateLimit(**values["ratelimit"])
            if values.get("nat") is not None:
                values["nat"] = NatSettings(**values["nat"])
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


@dataclass(frozen=True)
class Decision:
    """The switch messages for one event and the JSON record the controller logs for it."""

    messages: tuple[SwitchMessage, ...]
    record: dict

    @property
    def flow_mods(self) -> int:
        return sum(isinstance(m, (FlowRule, RemoveFlow)) for m in self.messages)


@dataclass
class _PathPorts:
    client_port: int
    service_port: int
    client_mac: str
    backend: Backend | None = None  # behind a load balancer


class Middlebox:
    def __init__(self, config: MiddleboxConfig) -> None:
        self.config = config
        self.stateful = config.variant in STATEFUL_VARIANTS
        self.cid_aware = config.variant in CID_AWARE_VARIANTS
        self.firewall = self.stateful and "firewall" in config.functions
        self.sni = config.sni if self.firewall else None
        self.ratelimit = config.ratelimit if "ratelimit" in config.functions else None
        self.nat = NatPool(config.nat) if self.stateful and "nat" in config.functions else None
        self.lb = config.loadbalancer if "loadbalancer" in config.functions else None
        self._backend_ips = {b.ip: b for b in self.lb.backends} if self.lb else {}
        self.table = ConnectionTable(config.state_idle_timeout_s, config.max_flows)
        self._port_of_mac: dict[tuple[int, str], int] = {}
        self._port_of_ip: dict[tuple[int, str], int] = {}
        self._mac_of_ip: dict[tuple[int, str], str] = {}
        # (dpid, MAC) → the port and time of the last L2 rule sent for it (see _rules_due).
        self._l2_rules_sent: dict[tuple[int, str], tuple[int, float]] = {}
        self.tracking: TrackingAgent | None = None
        if config.variant == "qasm":
            agent = config.agent
            self.tracking = TrackingAgent(
                table=self.table,
                service=(config.service_ip, config.service_port),
                keys={client: bytes.fromhex(key) for client, key in agent.keys.items()},
                addresses={c: frozenset(a) for c, a in agent.addresses.items()},
            )

    def stats(self) -> dict:
        """Sizes of everything the middlebox keeps, for the decision log: what a flood
        could grow."""
        return {
            "event": "stats",
            "connections": len(self.table),
            "max_connections": self.table.max_connections,
            "evicted": self.table.evicted,
            "expired": self.table.expired,
            "locations": len(self._port_of_ip),
            "nat_in_use": self.nat.in_use if self.nat else None,
            "nat_exhausted": self.nat.exhausted if self.nat else None,
            "agent": dict(self.tracking.counters) if self.tracking else None,
        }

    # --- events ---------------------------------------------------------------------------

    def switch_connected(self, dpid: int) -> Decision:
        for key in [key for key in self._l2_rules_sent if key[0] == dpid]:
            del self._l2_rules_sent[key]  # ClearFlows below removes them from the switch
        messages: list[SwitchMessage] = [
            ClearFlows(),
            FlowRule(PRIORITY_TABLE_MISS, Match(), PORT_CONTROLLER),
        ]
        if self.stateful:
            service = self.config.service_ip
            messages += [
                FlowRule(PRIORITY_PROTECTED, Match(ipv4_dst=service), PORT_CONTROLLER),
                FlowRule(PRIORITY_PROTECTED, Match(ipv4_src=service), PORT_CONTROLLER),
            ]
        if self.tracking:
            agent = Match(ipv4_dst=self.config.agent.ip)
            messages.append(FlowRule(PRIORITY_AGENT, agent, PORT_CONTROLLER))
        if self.nat:
            public = Match(ipv4_dst=self.nat.settings.public_ip)
            messages.append(FlowRule(PRIORITY_PROTECTED, public, PORT_CONTROLLER))
        if self.lb:
            messages += self._load_balancer_rules()
        return self._decision(messages, event="switch_connected", dpid=dpid)

    def _load_balancer_rules(self) -> list[SwitchMessage]:
        """Backends' traffic to the controller; baseline's static first-backend forwarding."""
        vip = self.config.service_ip
        if self.config.variant == "baseline":
            first = self.lb.backends[0]
            return [
                FlowRule(
                    PRIORITY_PROTECTED, Match(ipv4_dst=vip), first.switch_port,
                    set_fields=(("ipv4_dst", first.ip), ("eth_dst", first.mac)),
                ),
                FlowRule(PRIORITY_PROTECTED, Match(ipv4_src=first.ip), PORT_CONTROLLER),
            ]  # fmt: skip
        messages: list[SwitchMessage] = [
            FlowRule(PRIORITY_PROTECTED, Match(ipv4_src=b.ip), PORT_CONTROLLER)
            for b in self.lb.backends
        ]
        if self.config.variant == "quic-lb":
            messages.append(FlowRule(PRIORITY_PROTECTED, Match(ipv4_dst=vip), PORT_CONTROLLER))
        return messages

    def packet_in(
        self, dpid: int, in_port: int, data: bytes, now: float, cookie: int = 0
    ) -> Decision:
        try:
            frame = parse_frame(data)
        except FrameError as exc:
            return self._decision(
                [], event="packet_in", dpid=dpid, in_port=in_port, verdict="drop", reason=str(exc)
            )
        self._learn_location(dpid, in_port, frame)
        context = {
            "event": "packet_in",
            "dpid": dpid,
            "in_port": in_port,
            "addrs": list(frame.addresses()),
            "flow": str(frame.flow) if frame.flow else None,
        }
        released = self._expire(now)
        if released:
            context["nat_released"] = released
        if cookie == COOKIE_OBSERVE:
            # Already forwarded by the switch; this copy only feeds CID learning.
            return self._observe(dpid, frame, now, context)
        if (
            self.nat
            and frame.eth_type == ETH_TYPE_ARP
            and frame.ip_dst == self.nat.settings.public_ip
        ):
            return self._arp_reply(in_port, frame, self.nat.settings.public_mac, context)
        if self.lb and frame.eth_type == ETH_TYPE_ARP and frame.ip_dst == self.config.service_ip:
            return self._arp_reply(in_port, frame, self.lb.vip_mac, context)
        if self.config.variant == "quic-lb" and self._touches_service(frame):
            return self._quic_lb_packet(dpid, in_port, frame, data, context)
        if (
            self.lb
            and self.config.variant == "baseline"
            and frame.eth_type == ETH_TYPE_IPV4
            and frame.ip_src in self._backend_ips
        ):
            return self._baseline_backend_reply(dpid, in_port, frame, data, context)
        if self.tracking and frame.ip_dst == self.config.agent.ip:
            return self._agent_datagram(dpid, in_port, frame, now, context)
        if self.stateful and self._touches_service(frame):
            return self._service_packet(dpid, in_port, frame, data, now, context)
        return self._l2_forward(dpid, in_port, frame, data, now, context)

    # --- forwarding -----------------------------------------------------------------------

    def _learn_location(self, dpid: int, in_port: int, frame: Frame) -> None:
        if not int(frame.eth_src[:2], 16) & 0x01:  # not a multicast source
            self._port_of_mac[(dpid, frame.eth_src)] = in_port
        if frame.ip_src and (frame.eth_type == ETH_TYPE_ARP or frame.flow is not None):
            self._port_of_ip[(dpid, frame.ip_src)] = in_port
            self._mac_of_ip[(dpid, frame.ip_src)] = frame.eth_src

    def _expire(self, now: float) -> list[str]:
        """Idle connections leave the table; their NAT ports go back to the pool."""
        released = []
        for connection in self.table.expire(now):
            if self.nat:
                for path in connection.paths | connection.retired_paths:
                    if self.nat.release(path) is not None:
                        released.append(str(path))
        return released

    def _arp_reply(self, in_port: int, frame: Frame, mac: str, context: dict) -> Decision:
        if not frame.arp_request:
            return self._decision([], **context, verdict="drop", reason="ARP reply to our address")
        reply = build_arp_reply(mac, frame.ip_dst, frame.eth_src, frame.ip_src)
        messages = [PacketOut(PORT_CONTROLLER, in_port, reply)]
        return self._decision(messages, **context, verdict="arp_reply", reason="our address")

    def _l2_forward(
        self, dpid: int, in_port: int, frame: Frame, data: bytes, now: float, context: dict
    ) -> Decision:
        out_port = self._port_of_mac.get((dpid, frame.eth_dst))
        if out_port is None:
            return self._decision(
                [PacketOut(in_port, PORT_FLOOD, data)], **context, verdict="flood", reason="l2"
            )
        messages: list[SwitchMessage] = [PacketOut(in_port, out_port, data)]
        sent_port, sent_at = self._l2_rules_sent.get((dpid, frame.eth_dst), (None, None))
        if sent_port != out_port or _rules_due(sent_at, now):
            messages.insert(0, FlowRule(PRIORITY_L2, Match(eth_dst=frame.eth_dst), out_port))
            self._l2_rules_sent[(dpid, frame.eth_dst)] = (out_port, now)
        return self._decision(messages, **context, verdict="forward", reason="l2")

    def _touches_service(self, frame: Frame) -> bool:
        if frame.eth_type != ETH_TYPE_IPV4:
            return False
        return self.config.service_ip in frame.addresses() or frame.ip_src in self._backend_ips

    def _client_path(self, flow: FlowKey) -> tuple[FlowKey, bool]:
        """The client→service 5-tuple a packet belongs to, and whether it travels that way;
        behind a load balancer the service's end is the virtual IP, whichever backend."""
        if flow.dst_ip == self.config.service_ip:
            return flow, True
        if flow.src_ip in self._backend_ips:
            return FlowKey(flow.dst_ip, flow.dst_port, self.config.service_ip, flow.src_port), False
        return flow.reversed(), False

    # --- service traffic ------------------------------------------------------------------

    def _service_packet(
        self, dpid: int, in_port: int, frame: Frame, data: bytes, now: float, context: dict
    ) -> Decision:
        flow = frame.flow
        if frame.ip_proto != IP_PROTO_UDP or flow is None:
            if self.firewall:
                reason = f"IP protocol {frame.ip_proto} is not QUIC/UDP"
                return self._decision([], **context, verdict="drop", reason=reason)
            return self._l2_forward(dpid, in_port, frame, data, now, context)
        path, to_service = self._client_path(flow)
        if not to_service and self.nat and flow.dst_ip == self.nat.settings.public_ip:
            path = self.nat.path_of(flow.dst_port)
            if path is None:
                reason = f"no NAT mapping for public port {flow.dst_port}"
                return self._decision([], **context, verdict="drop", reason=reason)
        if path.dst_port != self.config.service_port:
            if self.firewall:
                reason = f"UDP port {path.dst_port} not served"
                return self._decision([], **context, verdict="drop", reason=reason)
            return self._l2_forward(dpid, in_port, frame, data, now, context)
        connection, how = self._locate(path, to_service, frame.udp_payload, now)
        if connection is not None and "client_hello" in connection.policy and to_service:
            connection, how = self._read_client_hello(connection, frame.udp_payload, how)
        if connection is None:
            return self._decision([], **context, verdict="drop", reason=how)
        nat_allocated = self._allocate_nat(path)
        if nat_allocated is False:
            reason = f"{NAT_POOL_EXHAUSTED} ({self.nat.settings.ports} ports)"
            return self._decision([], **context, verdict="drop", reason=reason)
        if nat_allocated:
            context["nat_allocated"] = nat_allocated
        backend = None
        if self.lb:
            backend = connection.policy.setdefault("backend", backend_by_hash(self.lb, path))
            context["backend"] = backend.ip
        ports = self._path_ports(dpid, path, backend)
        if ports is None:
            # A side's location not learnt yet: deliver this packet, install rules later.
            messages = [PacketOut(in_port, PORT_FLOOD, data, self._rewrite(path, to_service))]
        else:
            connection.policy.setdefault("ports", {})[path] = ports
            messages = self._learn_server_cids(connection, to_service, frame.udp_payload, now)
            installed = connection.policy.setdefault("installed", {})
            rules_due = _rules_due(installed.get(path), now)
            if "client_hello" in connection.policy:
                pass  # SNI not read yet: no rules, so the next Initials come here too
            elif not messages and rules_due:
                messages = self._path_rules(connection, path, ports)
                installed[path] = now
            out_port = ports.service_port if to_service else ports.client_port
            rewrite = self._rewrite(path, to_service, ports)
            messages.append(PacketOut(in_port, out_port, data, rewrite))
        verdict = "forward" if how == "known path" else "admit"
        return self._decision(
            messages, **context, verdict=verdict, reason=how, connection=connection.id
        )

    def _read_client_hello(
        self, connection: Connection, payload: bytes, how: str
    ) -> tuple[Connection | None, str]:
        """Adds a client datagram's Initials to the connection's ClientHello; once complete,
        the SNI policy decides. A refused or unreadable connection is forgotten at once."""
        assembler: ClientHelloAssembler = connection.policy["client_hello"]
        hello = None
        try:
            for header in parse_datagram(payload, short_dcid_length=0):
                if header.packet_type is PacketType.INITIAL:
                    # Initial keys come from the client's first DCID (RFC 9001 §5.2).
                    original = connection.policy.setdefault("original_dcid", header.dcid)
                    hello = assembler.add_packet(payload, header, original_dcid=original)
        except WireError as exc:
            self.table.remove(connection)
            return None, f"new 5-tuple: ClientHello unreadable ({exc})"
        if hello is None:
            return connection, f"{how}; ClientHello incomplete, SNI pending"
        del connection.policy["client_hello"]
        problem = self.sni.problem(hello.sni)
        if problem:
            self.table.remove(connection)
            return None, f"new 5-tuple: {problem}"
        return connection, f"{how}; SNI {hello.sni!r} allowed"

    def _locate(
        self, path: FlowKey, to_service: bool, payload: bytes, now: float
    ) -> tuple[Connection | None, str]:
        connection = self.table.by_path(path, now)
        if connection is not None:
            return connection, "known path"
        if not to_service:
            if self.table.retired_by(path) is not None:
                # A server whose validation of the new path timed out goes back to the last
                # validated one (RFC 9000 §9.3.2), which the client has left.
                return None, FROM_SERVICE_ON_RETIRED_PATH
            return None, "from the service on a 5-tuple never admitted"
        if self.cid_aware:
            for length in self.table.cid_lengths:
                try:
                    dcid = short_header_dcid(payload, length)
                except WireError:
                    break  # a long header: not a migrated packet
                connection = self.table.by_cid(dcid, now)
                if connection and self.table.associate_path(connection, path, now):
                    connection.migrations += 1
                    return connection, "new path of a known connection (DCID match)"
        problem = client_initial_problem(payload)
        if problem and self.firewall:
            return None, f"new 5-tuple: {problem}"
        connection, _ = self.table.put(path, now)
        # Only a connection that starts with its handshake has server SCIDs to observe; one
        # first seen mid-flight would be copied to the controller packet by packet for nothing.
        connection.policy["observing"] = self.cid_aware and problem is None
        if self.sni and problem is None:
            connection.policy["client_hello"] = ClientHelloAssembler()
        if problem is None:
            return connection, "new connection opened by a QUIC Initial"
        return connection, f"new 5-tuple, not linkable: {problem}"

    def _learn_server_cids(
        self, connection: Connection, to_service: bool, payload: bytes, now: float
    ) -> list[SwitchMessage]:
        """RFC 9312 §3.5: the server's long-header SCIDs are the DCIDs its client will use.
        Returns the service-side rules without copies once a server CID is known."""
        if not self.cid_aware or to_service:
            return []
        try:
            headers = parse_datagram(payload, short_dcid_length=0)
        except WireError:
            return []
        learnt = False
        for header in headers:
            if header.form is HeaderForm.LONG and header.version in KNOWN_VERSIONS and header.scid:
                learnt |= self.table.associate_cid(connection, header.scid, now)
        if not (learnt and connection.policy.get("observing")):
            return []
        connection.policy["observing"] = False
        messages: list[SwitchMessage] = []
        for path, ports in connection.policy.get("ports", {}).items():
            if path in connection.paths:
                messages.append(self._service_side_rule(connection, path, ports))
        return messages

    def _observe(self, dpid: int, frame: Frame, now: float, context: dict) -> Decision:
        messages: list[SwitchMessage] = []
        flow = frame.flow
        if flow is not None and self.config.service_ip in (flow.src_ip, flow.dst_ip):
            to_service = flow.dst_ip == self.config.service_ip
            path = flow if to_service else flow.reversed()
            connection = self.table.by_path(path, now)
            if connection is not None:
                messages = self._learn_server_cids(connection, to_service, frame.udp_payload, now)
        return self._decision(messages, **context, verdict="observe", reason="handshake copy")

    def _path_ports(
        self, dpid: int, path: FlowKey, backend: Backend | None = None
    ) -> _PathPorts | None:
        client_port = self._port_of_ip.get((dpid, path.src_ip))
        if backend is not None:
            service_port = backend.switch_port
        else:
            service_port = self._port_of_ip.get((dpid, path.dst_ip))
        if client_port is None or service_port is None:
            return None
        client_mac = self._mac_of_ip[(dpid, path.src_ip)]
        return _PathPorts(client_port, service_port, client_mac, backend)

    def _allocate_nat(self, path: FlowKey) -> str | bool | None:
        """The new mapping's description, None if none was needed, False if none is free."""
        if not self.nat or self.nat.public_flow(path) is not None:
            return None
        port = self.nat.allocate(path)
        if port is None:
            return False
        return f"{path} as {self.nat.settings.public_ip}:{port}"

    def _rewrite(
        self, path: FlowKey, to_service: bool, ports: _PathPorts | None = None
    ) -> tuple[tuple[str, str | int], ...]:
        """NAT and load-balancer rewriting for one direction of a path (none without them)."""
        rewrite: tuple[tuple[str, str | int], ...] = ()
        public = self.nat.public_flow(path) if self.nat else None
        backend = ports.backend if ports else None
        if to_service:
            if public is not None:
                rewrite += (("ipv4_src", public.src_ip), ("udp_src", public.src_port))
            if backend is not None:
                rewrite += (("ipv4_dst", backend.ip), ("eth_dst", backend.mac))
            return rewrite
        if public is not None:
            rewrite += (("ipv4_dst", path.src_ip), ("udp_dst", path.src_port))
        if backend is not None:
            rewrite += (("ipv4_src", self.config.service_ip), ("eth_src", self.lb.vip_mac))
        if rewrite and ports:
            rewrite += (("eth_dst", ports.client_mac),)
        return rewrite

    def _service_side_match(self, path: FlowKey, backend: Backend | None = None) -> Match:
        """How the service's packets of a path look on the wire (after NAT, from a backend)."""
        public = self.nat.public_flow(path) if self.nat else None
        flow = (public or path).reversed()
        if backend is not None:
            flow = FlowKey(backend.ip, flow.src_port, flow.dst_ip, flow.dst_port)
        return Match(flow=flow)

    def _path_rules(
        self, connection: Connection, path: FlowKey, ports: _PathPorts
    ) -> list[SwitchMessage]:
        """Both directions of one path; the client's under the connection's meter."""
        messages: list[SwitchMessage] = []
        meter_id = None
        if self.ratelimit:
            meter_id = connection.policy.get("meter")
            if meter_id is None:
                meter_id = connection.policy["meter"] = connection.id
                messages.append(
                    MeterRule(meter_id, self.ratelimit.rate_kbps, self.ratelimit.burst_kbit)
                )
        messages.append(
            FlowRule(
                PRIORITY_ADMITTED_FLOW, Match(flow=path), ports.service_port,
                int(self.config.state_idle_timeout_s), meter_id=meter_id,
                set_fields=self._rewrite(path, to_service=True, ports=ports),
            )
        )  # fmt: skip
        messages.append(self._service_side_rule(connection, path, ports))
        return messages

    def _service_side_rule(
        self, connection: Connection, path: FlowKey, ports: _PathPorts
    ) -> FlowRule:
        """The service's packets of one path to the client, copied to the controller while
        the connection's server CIDs are still to be learnt."""
        return FlowRule(
            PRIORITY_ADMITTED_FLOW, self._service_side_match(path, ports.backend),
            ports.client_port, int(self.config.state_idle_timeout_s),
            copy_to_controller=bool(connection.policy.get("observing")),
            set_fields=self._rewrite(path, to_service=False, ports=ports),
        )  # fmt: skip

    def _baseline_backend_reply(
        self, dpid: int, in_port: int, frame: Frame, data: bytes, context: dict
    ) -> Decision:
        """baseline behind a virtual IP: the first backend's replies leave as the VIP, by
        destination MAC like L2 learning (no per-connection state)."""
        out_port = self._port_of_mac.get((dpid, frame.eth_dst))
        rewrite = (("ipv4_src", self.config.service_ip), ("eth_src", self.lb.vip_mac))
        if out_port is None:
            messages = [PacketOut(in_port, PORT_FLOOD, data, rewrite)]
            return self._decision(messages, **context, verdict="flood", reason="vip reply")
        match = Match(eth_dst=frame.eth_dst, ipv4_src=frame.ip_src)
        messages = [
            FlowRule(PRIORITY_VIP_REPLY, match, out_port, set_fields=rewrite),
            PacketOut(in_port, out_port, data, rewrite),
        ]
        return self._decision(messages, **context, verdict="forward", reason="vip reply")

    # --- quic-lb: stateless routing by the server ID in the DCID ---------------------------

    def _quic_lb_packet(
        self, dpid: int, in_port: int, frame: Frame, data: bytes, context: dict
    ) -> Decision:
        flow = frame.flow
        if flow is None:
            return self._decision([], **context, verdict="drop", reason="not UDP")
        path, to_service = self._client_path(flow)
        if not to_service:
            # The reverse rule is installed with the forward one; a backend's packet without
            # it (rule expired) goes back to the client that the 5-tuple names.
            backend = self._backend_ips[flow.src_ip]
            how = "backend reply"
        else:
            payload = frame.udp_payload
            try:
                first = parse_datagram(
                    payload, short_dcid_length=self.lb.quic_lb.config().cid_length
                )[0]
            except WireError as exc:
                return self._decision([], **context, verdict="drop", reason=f"not QUIC: {exc}")
            backend = None
            if first.form is HeaderForm.SHORT or first.packet_type is not PacketType.INITIAL:
                backend = backend_by_server_id(self.lb, first.dcid)
                how = "server ID in the DCID"
            if backend is None:
                # A client Initial's DCID is the client's own choice: hash it (every Initial of
                # the connection repeats it); an undecodable DCID falls back the same way.
                backend = backend_by_initial_dcid(self.lb, first.dcid)
                how = (
                    "hash of an Initial's DCID"
                    if first.form is HeaderForm.LONG
                    else "hash (undecodable DCID)"
                )
        context["backend"] = backend.ip
        ports = self._path_ports(dpid, path, backend)
        if ports is None:
            return self._decision([], **context, verdict="drop", reason="client location unknown")
        messages = self._path_rules(_STATELESS, path, ports)
        out_port = ports.service_port if to_service else ports.client_port
        messages.append(PacketOut(in_port, out_port, data, self._rewrite(path, to_service, ports)))
        return self._decision(messages, **context, verdict="admit", reason=how)

    # --- the Tracking Agent ---------------------------------------------------------------

    def _agent_datagram(
        self, dpid: int, in_port: int, frame: Frame, now: float, context: dict
    ) -> Decision:
        agent = self.config.agent
        if frame.eth_type == ETH_TYPE_ARP:
            return self._arp_reply(in_port, frame, agent.mac, context)
        flow = frame.flow
        if flow is None or flow.dst_port != agent.port:
            reason = "not a report to the Tracking Agent's port"
            return self._decision([], **context, verdict="drop", reason=reason)
        report = self.tracking.receive(frame.udp_payload, flow.src_ip, now)
        messages: list[SwitchMessage] = []
        nat: dict[str, object] = {}
        if report.new_path is not None:
            backend = report.connection.policy.get("backend")
            if backend is not None:
                service_port = backend.switch_port
                nat["backend"] = backend.ip
            else:
                service_port = self._port_of_ip.get((dpid, self.config.service_ip))
            allocated = self._allocate_nat(report.new_path)
            if allocated:
                nat["nat_allocated"] = allocated
            elif allocated is False:
                # Announced, but the path has no public port: its packets will be dropped.
                nat["nat_exhausted"] = True
            if service_port is not None and allocated is not False:
                ports = _PathPorts(in_port, service_port, frame.eth_src, backend)
                report.connection.policy.setdefault("ports", {})[report.new_path] = ports
                report.connection.policy.setdefault("installed", {})[report.new_path] = now
                messages += self._path_rules(report.connection, report.new_path, ports)
        if report.retired_path is not None:
            retired = report.retired_path
            backend = report.connection.policy.get("backend")
            for match in (Match(flow=retired), self._service_side_match(retired, backend)):
                messages.append(RemoveFlow(PRIORITY_ADMITTED_FLOW, match))
            if self.nat and self.nat.release(retired) is not None:
                nat["nat_released"] = [str(retired)]
        if report.reply is not None:
            answer = build_udp_frame(agent.mac, frame.eth_src, flow.reversed(), report.reply)
            messages.append(PacketOut(PORT_CONTROLLER, in_port, answer))
        return self._decision(
            messages, **{**context, "event": "agent_report"}, bytes=len(frame.udp_payload),
            verdict="accept" if report.accepted else "reject", **report.record(), **nat,
        )  # fmt: skip

    def _decision(self, messages: list[SwitchMessage], **record) -> Decision:
        decision = Decision(tuple(messages), record)
        record["flow_mods"] = decision.flow_mods
        record["variant"] = self.config.variant
        return decision


def _rules_due(sent_at: float | None, now: float) -> bool:
    """Whether rules last sent at `sent_at` (None: never) are to be sent now: packet-ins
    within RULES_IN_FLIGHT_S of them were queued before the switch applied them."""
    return sent_at is None or now - sent_at >= RULES_IN_FLIGHT_S


# quic-lb keeps no connection: its rules are built for this placeholder.
_STATELESS = Connection(id=0, created_at=0.0, last_seen=0.0)
