"""The decision log: one typed event per controller decision, one JSON line each.

Every line names its event (`event`), carries the controller's monotonic time (`t`), the
datapath (`dpid`) and, for decisions about packets, a verdict, a reason *code* (`Reason`, an
enum whose values never change meaning) and free human `text`. Metrics read codes and fields,
never text, so rewording a message cannot change a count. `read_event` turns a logged line
back into the dataclass it was written from; unknown events are skipped by readers, so old
logs and new fields do not break analysis.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, ClassVar

from qasm.codec import from_json_value, to_json_value
from qasm.flow import FlowKey


class Verdict(enum.StrEnum):
    FORWARD = "forward"  # a packet of something already decided
    ADMIT = "admit"  # a new connection, or a new path of a known one
    DROP = "drop"
    FLOOD = "flood"  # L2: destination not learnt yet
    OBSERVE = "observe"  # a copy of a packet the switch already forwarded
    ARP_REPLY = "arp_reply"  # the controller answered for an address it owns
    ACCEPT = "accept"  # a Client Agent report
    REJECT = "reject"


class Reason(enum.StrEnum):
    """Why a decision was taken. Values are stable identifiers; add, never rename."""

    # Plain forwarding and addresses the controller answers for.
    L2 = "l2"
    OUR_ADDRESS = "our_address"  # ARP for an address the controller answers (VIP, NAT, agent)
    ARP_REPLY_TO_US = "arp_reply_to_us"
    FRAME_UNREADABLE = "frame_unreadable"
    SPOOFED_SOURCE = "spoofed_source"  # a source address that does not belong to the in-port
    HANDSHAKE_COPY = "handshake_copy"  # a server packet copied to learn its SCIDs
    # Service traffic.
    KNOWN_PATH = "known_path"
    OPENED_BY_INITIAL = "opened_by_initial"
    NOT_LINKABLE = (
        "not_linkable"  # a new 5-tuple without Initial, admitted on its own (no firewall)
    )
    DCID_MATCH = "dcid_match"  # a new path of a known connection, by its DCID (RFC 9312 §3.5)
    PULLED_FROM_AGENT = "pulled_from_agent"  # pull mode: the Tracking Agent knew the DCID
    NOT_AN_INITIAL = "not_an_initial"  # the firewall refuses a new 5-tuple
    ADMISSION_BUDGET = "admission_budget"  # the source opened too many connections too fast
    # Under nat: the source holds middlebox.half_open_per_source connections the server has
    # not answered (RFC 9312 §4.7); refused before a NAT port or a table slot is taken.
    HALF_OPEN_QUOTA = "half_open_quota"
    NOT_UDP = "not_udp"
    PORT_NOT_SERVED = "port_not_served"
    NEVER_ADMITTED = "never_admitted"  # from the service on a 5-tuple no connection holds
    RETIRED_PATH = "retired_path"  # on a path its client retired: late, or the server gone back
    NO_NAT_MAPPING = "no_nat_mapping"
    NAT_POOL_EXHAUSTED = "nat_pool_exhausted"
    # The source address holds nat.ports_per_source public ports (RFC 6888 REQ-4).
    NAT_SOURCE_QUOTA = "nat_source_quota"
    SNI_PENDING = "sni_pending"
    SNI_ALLOWED = "sni_allowed"
    SNI_REFUSED = "sni_refused"
    CLIENT_HELLO_UNREADABLE = "client_hello_unreadable"
    # Load balancer.
    VIP_REPLY = "vip_reply"  # baseline: the first backend's replies leave as the VIP
    SERVER_ID = "server_id"  # quic-lb: the server ID in the DCID
    INITIAL_DCID_HASH = "initial_dcid_hash"
    UNDECODABLE_DCID_HASH = "undecodable_dcid_hash"
    BACKEND_REPLY = "backend_reply"
    NOT_QUIC = "not_quic"
    LOCATION_UNKNOWN = "location_unknown"
    # The Tracking Agent.
    ANNOUNCED = "announced"
    RETIRED = "retired"
    ADMITTED_AHEAD = "admitted_ahead"  # a new connection, on its agent's word before its Initial
    # Admission ahead declined: the hop must see the Initial (SNI policy), cannot tell which
    # replica the front end will pick, has not located an end of the path yet, or the agent
    # mode does not admit ahead. Not a verdict on the connection: its Initial decides.
    NOT_ADMITTED_AHEAD = "not_admitted_ahead"
    NOT_AGENT_PORT = "not_agent_port"
    MALFORMED = "malformed"
    UNKNOWN_CLIENT = "unknown_client"
    FORGED = "forged"
    DUPLICATE = "duplicate"  # an exact repeat: answered again, changes nothing
    REPLAYED = "replayed"
    RATE_LIMITED = "rate_limited"
    SOURCE_NOT_CLIENTS = "source_not_clients"
    UNKNOWN_CONNECTION = "unknown_connection"
    CONNECTION_OF_ANOTHER_CLIENT = "connection_of_another_client"
    NOT_CLIENTS_CONNECTION = "not_clients_connection"
    OLD_ADDRESS_NOT_A_PATH = "old_address_not_a_path"
    NEW_ADDRESS_NOT_CLIENTS = "new_address_not_clients"
    NEXT_CID_OF_ANOTHER = "next_cid_of_another"
    NEW_PATH_OF_ANOTHER = "new_path_of_another"
    CONNECTION_FULL = "connection_full"  # at its maximum of CIDs or paths
    PATH_QUOTA = "path_quota"  # the client's connections hold agent.max_paths live paths
    NOT_RETIRABLE = "not_retirable"
    # A half-open probe rule went (ProbeEnded): the server had answered through it, it had
    # not (the connection ends as half-open), or the probe was deleted or is of a connection
    # the hop no longer holds.
    SERVER_ANSWERED = "server_answered"
    NEVER_ANSWERED = "never_answered"
    PROBE_DELETED = "probe_deleted"
    PROBE_STALE = "probe_stale"
    PROBED_AGAIN = "probed_again"
    # A shared store: the connection ended (another replica's lookup found it idle) while
    # this packet was decided; what was allocated for it is given back.
    CONNECTION_ENDED = "connection_ended"


@dataclass(frozen=True)
class Refusal:
    """Why something is refused: a reason code and the particulars, for people."""

    reason: Reason
    text: str


@dataclass(frozen=True, slots=True)
class NatMapping:
    """A client→service path and the public port a NAT gave it."""

    path: FlowKey
    public_ip: str
    public_port: int


class Event:
    """Base of every logged event; `name` is the `event` field of its line."""

    __slots__ = ()
    name: ClassVar[str]

    def to_record(self, t: float, variant: str) -> dict[str, Any]:
        record = {"event": self.name, "t": t, "variant": variant}
        record.update(to_json_value(self))
        return record


@dataclass(frozen=True)
class SwitchConnected(Event):
    name: ClassVar[str] = "switch_connected"
    dpid: int
    flow_mods: int = 0


# The events of every packet-in and agent report are not frozen (see
# qasm/controller/messages.py: measured, PacketIn 2.4 µs frozen against 0.6 µs); like the
# others they are values nothing changes once built.
@dataclass(slots=True)
class PacketIn(Event):
    """A packet the switch sent to the controller, and what the middlebox made of it."""

    name: ClassVar[str] = "packet_in"
    dpid: int
    in_port: int
    verdict: Verdict
    reason: Reason
    text: str = ""
    addrs: tuple[str, ...] = ()  # the frame's IPv4 (or ARP) addresses
    flow: FlowKey | None = None  # as it travelled, if UDP
    connection: int | None = None  # the hop's connection id
    backend: str | None = None
    nat_allocated: tuple[NatMapping, ...] = ()
    nat_released: tuple[NatMapping, ...] = ()  # also ports of connections that ended
    flow_mods: int = 0
    # Requests to the shared connection store (Redis) this decision made; 0 in memory.
    store_round_trips: int = 0


@dataclass(slots=True)
class AgentReport(Event):
    """A datagram to the Tracking Agent and its answer (installs on hops are PathInstalled)."""

    name: ClassVar[str] = "agent_report"
    dpid: int
    in_port: int
    verdict: Verdict
    reason: Reason
    text: str = ""
    addrs: tuple[str, ...] = ()
    bytes: int = 0
    client: str | None = None
    new_path: FlowKey | None = None  # as the client announced it
    retired_path: FlowKey | None = None
    flow_mods: int = 0
    store_round_trips: int = 0  # checking and carrying it out on every hop


@dataclass(slots=True)
class PathInstalled(Event):
    """A hop's state and rules for a path the Tracking Agent told it about (push; `opened`:
    a new connection's first, admitted ahead), or that it pulled from the Tracking Agent;
    `path` is the path as this hop sees it."""

    name: ClassVar[str] = "path_installed"
    dpid: int
    client: str
    connection: int
    path: FlowKey
    nat_allocated: tuple[NatMapping, ...] = ()
    nat_exhausted: bool = False  # announced, but the path has no public port
    backend: str | None = None
    flow_mods: int = 0
    opened: bool = False  # the connection's first path, admitted ahead of its Initial


@dataclass(frozen=True)
class PathRetired(Event):
    name: ClassVar[str] = "path_retired"
    dpid: int
    client: str
    connection: int
    path: FlowKey
    nat_released: tuple[NatMapping, ...] = ()
    flow_mods: int = 0


@dataclass(frozen=True)
class KernelPath(Event):
    """What the Tracking Agent asked of the router's conntrack (netfilter-qasm), and how it
    went (`ok`, `text`: filled in by the app that carried it out)."""

    name: ClassVar[str] = "kernel_path"
    dpid: int
    client: str
    old_path: FlowKey | None = None
    new_path: FlowKey | None = None
    retired_path: FlowKey | None = None
    ok: bool | None = None
    text: str = ""


@dataclass(frozen=True)
class ConnectionsEnded(Event):
    """Connections a hop forgot: idle past the timeout, evicted at the table's bound, or
    half-open (never answered: past the half-open timeout, or as a probe reported)."""

    name: ClassVar[str] = "connections_ended"
    dpid: int
    expired: tuple[int, ...] = ()
    evicted: tuple[int, ...] = ()
    half_open: tuple[int, ...] = ()
    # Of `evicted`, those the server had answered: what a flood must never push out.
    evicted_established: tuple[int, ...] = ()
    nat_released: tuple[NatMapping, ...] = ()
    flow_mods: int = 0


@dataclass(frozen=True)
class ProbeEnded(Event):
    """A switch reported that a connection's half-open probe rule went (OFPT_FLOW_REMOVED,
    qasm/controller/pipeline.py), and what the hop made of it (`reason`): established
    (SERVER_ANSWERED), probed once more after a first probe counted nothing (PROBED_AGAIN),
    ended as half-open after the second (NEVER_ANSWERED, also in a ConnectionsEnded), or
    nothing (PROBE_DELETED, PROBE_STALE)."""

    name: ClassVar[str] = "probe_ended"
    dpid: int
    connection: int
    packets: int
    reason: Reason
    flow: FlowKey | None = None  # the probe's match (service→client, as on the switch)


@dataclass(frozen=True)
class HopStats(Event):
    """Sizes of what one hop keeps: what a flood could grow."""

    name: ClassVar[str] = "stats"
    dpid: int
    connections: int
    max_connections: int
    evicted: int
    expired: int
    locations: int
    half_open_ended: int | None = None  # connections ended as half-open so far
    nat_in_use: int | None = None
    nat_exhausted: int | None = None
    agent: dict[str, int] | None = None
    rss_kib: int | None = None
    # The hop's shared store (Redis): requests sent so far by everything using it.
    store_round_trips: int | None = None


@dataclass(frozen=True)
class Locations(Event):
    """Where a hop believes each address is (address, port) when the controller stops: with
    location integrity, always a port the address belongs to."""

    name: ClassVar[str] = "locations"
    dpid: int
    ports: dict[str, int]  # address → port


@dataclass(frozen=True)
class ConnectionState(Event):
    """One connection as a hop holds it when the controller stops (the table at the end)."""

    name: ClassVar[str] = "connection_state"
    dpid: int
    connection: int
    owner: str | None
    paths: tuple[FlowKey, ...]
    retired_paths: tuple[FlowKey, ...]
    server_cids: tuple[bytes, ...]
    nat_mappings: tuple[NatMapping, ...] = ()

    @property
    def state_entries(self) -> int:
        """Index entries the table keeps for it: 5-tuples, retired 5-tuples and CIDs."""
        return len(self.paths) + len(self.retired_paths) + len(self.server_cids)


EVENTS: dict[str, type[Event]] = {
    kind.name: kind
    for kind in (
        SwitchConnected,
        PacketIn,
        AgentReport,
        PathInstalled,
        PathRetired,
        KernelPath,
        ConnectionsEnded,
        ProbeEnded,
        HopStats,
        ConnectionState,
        Locations,
    )
}


@dataclass(frozen=True)
class Logged:
    """An event read back from the log, with when and for which variant it was decided."""

    t: float
    variant: str | None
    event: Event = field(repr=True)


def read_event(record: dict[str, Any]) -> Logged | None:
    """The event a log line holds, or None for a line of a kind this code does not know."""
    kind = EVENTS.get(record.get("event"))  # type: ignore[arg-type]
    if kind is None:
        return None
    values = {k: v for k, v in record.items() if k not in ("event", "t", "variant")}
    return Logged(float(record["t"]), record.get("variant"), from_json_value(kind, values))
