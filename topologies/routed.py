"""Dual-homed clients, an edge switch, a router host, a service-side switch, the service.

    client_i ──wifi/lte── edge ── router ── svc ── server | backends (behind VIP 10.2.0.100)
               10.1.0.0/16        (IP fwd)      10.2.0.0/16

The router (10.1.0.1 towards the clients, 10.2.0.1 towards the service) forwards between
the two subnets; the kernel variants (netfilter, netfilter-qasm) run Linux's stateful
middlebox in its network namespace: conntrack, nftables, kube-proxy's iptables rules
(qasm/kernel/netfilter.py). The SDN variants run on the service-side switch (`svc`,
datapath 1), in front of the service as kube-proxy is; the edge switch only forwards. The
Tracking Agent's address (10.2.0.254) and the SDN NAT's public address (10.2.100.1) are in the
service's subnet, answered by the controller on `svc`.
"""

from __future__ import annotations

from mininet.topo import Topo

from topologies.clients import (
    PREFIX_LENGTH,
    add_backends,
    add_clients,
    add_server,
    configure_clients,
    route_servers,
)
from topologies.roles import DatapathRole, Interface, Roles, RouterRole

CLIENTS_NET, SERVICE_NET = "10.1", "10.2"
EDGE_DPID, SERVICE_DPID = 0x100, 1
ROUTER_EDGE_PORT, ROUTER_SERVICE_PORT = 1, 100


class Routed(Topo):
    def build(
        self, prefix: str, clients: int = 1, backends: int | None = None, bandwidths=None
    ) -> None:
        bandwidths = bandwidths or {}
        edge, service = f"{prefix}edge", f"{prefix}svc"
        self.addSwitch(edge, dpid=f"{EDGE_DPID:016x}", protocols="OpenFlow13")
        self.addSwitch(service, dpid=f"{SERVICE_DPID:016x}", protocols="OpenFlow13")
        router = f"{prefix}rt"
        client_side = Interface(f"{router}-edge", f"{CLIENTS_NET}.0.1", "router")
        service_side = Interface(f"{router}-svc", f"{SERVICE_NET}.0.1", "router")
        self.addHost(router, ip=None)
        for interface, switch, port in (
            (client_side, edge, ROUTER_EDGE_PORT),
            (service_side, service, ROUTER_SERVICE_PORT),
        ):
            self.addLink(
                router, switch, intfName1=interface.name, port2=port,
                params1={"ip": f"{interface.ip}/{PREFIX_LENGTH}"},
            )  # fmt: skip
        self.roles = Roles(
            clients=add_clients(self, prefix, edge, clients, bandwidths, CLIENTS_NET),
            server=add_server(self, prefix, service, bandwidths, SERVICE_NET),
            backends=add_backends(self, prefix, service, backends or 0, bandwidths, SERVICE_NET),
            middleboxes=(
                DatapathRole(service, SERVICE_DPID, f"{SERVICE_NET}.100.1", "02:00:00:00:00:fd"),
            ),
            switches=(edge, service),
            vip=f"{SERVICE_NET}.0.100",
            agent_ip=f"{SERVICE_NET}.0.254",
            router=RouterRole(router, client_side, service_side, f"{CLIENTS_NET}.0.0/16"),
        )

    def configure(self, net) -> None:
        router = self.roles.router
        host = net.get(router.host)
        for setting in ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0"):
            host.cmd("sysctl", "-qw", setting)
        configure_clients(
            net, self.roles.clients, router.clients_subnet, gateway=router.client_side.ip
        )
        route_servers(net, (self.roles.server, *self.roles.backends), router.service_side.ip)
