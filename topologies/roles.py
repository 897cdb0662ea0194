"""The roles contract: what every topology tells the harness, as data.

A topology is a Mininet `Topo`; after `build()` its `roles` say who is who, so the runner
holds no topology-specific knowledge: the client hosts, their interfaces and, for each
migration kind, the addresses a client moves to in turn; the service (one server, or backends
behind a virtual IP) and its port; the middlebox datapaths in path order from the clients;
the switches to clean up and dump; the Tracking Agent's management address. Addresses that no
host owns (the VIP, the agent's address, each hop's NAT public address) are answered by the
controller.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Every topology's service listens here; the Tracking Agent on AGENT_IP:AGENT_PORT.
SERVICE_PORT = 4433
AGENT_IP = "10.0.0.254"
AGENT_MAC = "02:00:00:00:00:fe"  # locally administered, not any host's
AGENT_PORT = 7400
VIP = "10.0.0.100"  # the load balancer's virtual IP
VIP_MAC = "02:00:00:00:00:fa"
# How a front end in front of middlebox replicas picks one (topologies/replicas.py).
STEERINGS = ("hash", "next-replica")


@dataclass(frozen=True)
class Interface:
    name: str  # the host-side interface
    ip: str
    link: str  # the link kind whose conditions apply to it: wifi, lte or server
    extra_ips: tuple[str, ...] = ()  # more addresses on it (addr-rebind's)

    @property
    def ips(self) -> tuple[str, ...]:
        return (self.ip, *self.extra_ips)


@dataclass(frozen=True)
class ClientRole:
    index: int  # 1-based, stable across runs
    host: str  # the Mininet host, with the run's prefix
    interfaces: tuple[Interface, ...]
    start_ip: str  # the address a connection starts from
    # migration kind → the addresses the client moves to, in turn (a repeated migration
    # cycles through them; nat-rebind stays on its address with a fresh port each time).
    targets: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def agent_id(self) -> str:
        """Stable across runs (the host name carries the per-run prefix)."""
        return f"c{self.index}"

    @property
    def ips(self) -> tuple[str, ...]:
        """Every address the client owns: what the Tracking Agent lets it announce."""
        return tuple(ip for interface in self.interfaces for ip in interface.ips)

    def interface(self, link: str) -> Interface:
        return next(i for i in self.interfaces if i.link == link)


@dataclass(frozen=True)
class ServerRole:
    host: str
    ip: str
    mac: str
    switch_port: int  # on the last middlebox datapath (where a load balancer sends it)
    server_id: str  # hex, carried in its QUIC-LB connection IDs

    @property
    def interface(self) -> Interface:
        return Interface(f"{self.host}-eth0", self.ip, "server")


@dataclass(frozen=True)
class DatapathRole:
    """One middlebox hop: its OVS bridge, its OpenFlow datapath id and the public address
    its NAT translates to (each hop has its own; replicas of one hop share theirs).
    Replicas of one hop share a `position` (1-based, path order); None: a hop of its own."""

    switch: str
    dpid: int
    nat_public_ip: str
    nat_public_mac: str
    position: int | None = None


@dataclass(frozen=True)
class RouterRole:
    """A host that routes between the clients' subnet and the service's (IP forwarding), where
    the kernel variants run Linux's own middlebox (qasm/kernel/netfilter.py)."""

    host: str
    client_side: Interface  # its address is the clients' gateway
    service_side: Interface  # its address is the servers' gateway and the NAT's public one
    clients_subnet: str


@dataclass(frozen=True)
class Roles:
    clients: tuple[ClientRole, ...]
    server: ServerRole  # the service when it is not load balanced
    backends: tuple[ServerRole, ...]  # behind VIP when it is
    middleboxes: tuple[DatapathRole, ...]  # path order from the clients; may be empty
    switches: tuple[str, ...]  # every OVS bridge the topology creates
    service_port: int = SERVICE_PORT
    vip: str = VIP
    vip_mac: str = VIP_MAC
    agent_ip: str = AGENT_IP
    agent_port: int = AGENT_PORT
    agent_mac: str = AGENT_MAC
    router: RouterRole | None = None
    # Bridges the topology programs itself (`reset`, with ovs-ofctl) and that no controller
    # drives: a front end that spreads flows over replicas, as ECMP hardware would.
    static_switches: tuple[str, ...] = ()

    def service_ip(self, load_balanced: bool) -> str:
        return self.vip if load_balanced else self.server.ip

    def servers(self, load_balanced: bool) -> tuple[ServerRole, ...]:
        return self.backends if load_balanced else (self.server,)

    def link_ends(self) -> list[tuple[str, Interface]]:
        """(host, interface) of every host's link, for link emulation and captures."""
        ends = [(s.host, s.interface) for s in (self.server, *self.backends)]
        ends += [(c.host, i) for c in self.clients for i in c.interfaces]
        return ends
