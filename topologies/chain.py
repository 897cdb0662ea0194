"""Dual-homed clients, then `hops` middlebox datapaths in series, then the server.

    client_i ──wifi/lte── m1 ── m2 ── … ── mK ── server        (K = hops, 1..8)
    client_i ──wifi/lte── sw ── server                          (K = 0: plain forwarding)

Each hop is its own OVS bridge (datapath id i) with its own middlebox instance in the
controller: its own connection table, NAT pool and public address 10.0.100.i, so
`functions: [nat]` with K = 5 is five NATs in a row, as in the QASM prototype's chain. All
hosts share one /16 (the hops are transparent bridges that rewrite addresses); on each hop
port 1 leads towards the server and port 2 (or the clients' ports on m1) towards the clients.
With K = 0 the one switch is not a middlebox: every variant forwards only.
"""

from __future__ import annotations

from mininet.topo import Topo

from topologies.clients import add_clients, add_server, configure_clients
from topologies.roles import DatapathRole, Roles

TOWARDS_SERVER_PORT = 1
TOWARDS_CLIENTS_PORT = 2
PLAIN_SWITCH_DPID = 0x100


def hop_public_address(index: int) -> tuple[str, str]:
    """The NAT public address and MAC of hop `index` (1-based)."""
    return f"10.0.100.{index}", f"02:00:00:00:01:{index:02x}"


class Chain(Topo):
    def build(self, prefix: str, clients: int = 1, hops: int = 1, bandwidths=None) -> None:
        bandwidths = bandwidths or {}
        if hops == 0:
            names = [f"{prefix}sw"]
            dpids = [PLAIN_SWITCH_DPID]
        else:
            names = [f"{prefix}m{i}" for i in range(1, hops + 1)]
            dpids = list(range(1, hops + 1))
        for name, dpid in zip(names, dpids, strict=True):
            self.addSwitch(name, dpid=f"{dpid:016x}", protocols="OpenFlow13")
        for near, far in zip(names, names[1:], strict=False):
            self.addLink(near, far, port1=TOWARDS_SERVER_PORT, port2=TOWARDS_CLIENTS_PORT)
        self.roles = Roles(
            clients=add_clients(self, prefix, names[0], clients, bandwidths),
            server=add_server(self, prefix, names[-1], bandwidths),
            backends=(),
            middleboxes=tuple(
                DatapathRole(names[i - 1], i, *hop_public_address(i)) for i in range(1, hops + 1)
            ),
            switches=tuple(names),
        )

    def configure(self, net) -> None:
        configure_clients(net, self.roles.clients)
