"""Dual-homed clients behind one middlebox switch, in front of one server.

    client_i ──wifi──┐
    client_i ──lte───┼── middlebox switch (OVS, OpenFlow 1.3, our controller only) ── server
                     ┘                                                        └─ backends

With `backends: N` (N >= 2) backends 10.0.4.1..N sit behind the load balancer's virtual IP.
The middlebox's NAT translates to 10.0.100.1. Parameters map one-to-one onto the scenario's
`topology:` block (testbed/scenario/models.py checks them).
"""

from __future__ import annotations

from mininet.topo import Topo

from topologies.clients import add_backends, add_clients, add_server, configure_clients
from topologies.roles import DatapathRole, Roles

NAT_PUBLIC_IP = "10.0.100.1"
NAT_PUBLIC_MAC = "02:00:00:00:00:fd"


class DualHomed(Topo):
    def build(
        self, prefix: str, clients: int = 1, backends: int | None = None, bandwidths=None
    ) -> None:
        bandwidths = bandwidths or {}
        switch = f"{prefix}mb"
        # Mininet derives a DPID from digits in the name unless told; ours has hex digits.
        self.addSwitch(switch, dpid="0000000000000001", protocols="OpenFlow13")
        server = add_server(self, prefix, switch, bandwidths)
        self.roles = Roles(
            clients=add_clients(self, prefix, switch, clients, bandwidths),
            server=server,
            backends=add_backends(self, prefix, switch, backends or 0, bandwidths),
            middleboxes=(DatapathRole(switch, 1, NAT_PUBLIC_IP, NAT_PUBLIC_MAC),),
            switches=(switch,),
        )

    def configure(self, net) -> None:
        configure_clients(net, self.roles.clients)
