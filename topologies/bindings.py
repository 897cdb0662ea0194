"""Which source addresses may arrive on which port of each middlebox switch, from what the
topology declares: its links and its roles' addresses (strict unicast reverse-path
forwarding, BCP 38 / RFC 3704, computed instead of learnt).

Replicas of one hop (same `position`) are never crossed: the front and back ends in front of
a replica set send what a replica hands them on towards the clients or the service, never
to another replica.

For a switch S and its port P, the addresses that may arrive on P are: for a host on P
itself, the addresses of its interface on that link (policy routing on the clients makes a
packet from an address leave by the interface that owns it, so a client's lte port never
sources its wifi address); for whatever lies further, every address of every host reachable
through P without crossing S again: end hosts, routers and everything behind them (they
forward), and the NAT public address of every other middlebox on the way (a NAT hop sends
the clients' packets from it).
The middlebox then needs to learn no location from a packet it cannot vouch for: a packet
whose source does not belong to its in-port is dropped, not learnt (qasm/controller/
pipeline.py, `Switch.spoofed`).
"""

from __future__ import annotations

from collections import defaultdict

from topologies.roles import Roles


def source_bindings(topo, roles: Roles) -> dict[str, dict[int, frozenset[str]]]:
    """switch name → {port: the source addresses that may arrive on it}, for every middlebox
    switch of `roles`. `topo` is the built Mininet `Topo` (its links carry the ports)."""
    hosts = set(topo.hosts())
    addresses, interface_addresses = _addresses(roles)
    routers = {roles.router.host} if roles.router else set()
    nat_address = {datapath.switch: datapath.nat_public_ip for datapath in roles.middleboxes}
    # node → (its port, the node at the other end, the far end's interface name)
    neighbours: dict[str, list[tuple[int, str, str]]] = defaultdict(list)
    for node1, node2, info in topo.links(sort=False, withKeys=False, withInfo=True):
        port1, port2 = info.get("port1"), info.get("port2")
        # Mininet names an interface NODE-ethPORT unless the link names it.
        name1 = info.get("intfName1") or f"{node1}-eth{port1}"
        name2 = info.get("intfName2") or f"{node2}-eth{port2}"
        neighbours[node1].append((port1, node2, name2))
        neighbours[node2].append((port2, node1, name1))
    bindings = {}
    for datapath in roles.middleboxes:
        switch = datapath.switch
        siblings = {
            other.switch
            for other in roles.middleboxes
            if datapath.position is not None and other.position == datapath.position
        }
        ports: dict[int, set[str]] = defaultdict(set)
        for port, neighbour, interface in neighbours[switch]:
            if neighbour in hosts and neighbour not in routers:
                ports[port] |= interface_addresses.get(interface, set())
                continue
            seen, stack = {switch, neighbour} | siblings, [neighbour]
            while stack:
                node = stack.pop()
                if node in hosts:
                    ports[port] |= addresses.get(node, set())
                    if node not in routers:
                        continue  # an end host forwards nothing
                elif node in nat_address:
                    ports[port].add(nat_address[node])
                for _, further, _ in neighbours[node]:
                    if further not in seen:
                        seen.add(further)
                        stack.append(further)
        bindings[switch] = {port: frozenset(ips) for port, ips in ports.items()}
    return bindings


def _addresses(roles: Roles) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Each host's addresses, and each host interface's."""
    interfaces = [(client.host, i) for client in roles.clients for i in client.interfaces]
    interfaces += [(server.host, server.interface) for server in (roles.server, *roles.backends)]
    if roles.router:
        router = roles.router
        interfaces += [(router.host, router.client_side), (router.host, router.service_side)]
    by_host: dict[str, set[str]] = defaultdict(set)
    by_interface: dict[str, set[str]] = {}
    for host, interface in interfaces:
        by_host[host] |= set(interface.ips)
        by_interface[interface.name] = set(interface.ips)
    return by_host, by_interface
