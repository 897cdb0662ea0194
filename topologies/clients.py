"""Dual-homed client hosts and the service's hosts, as every topology here attaches them.

Each client has two interfaces on one /16, each on its own link to the client-side switch,
with source-based policy routing so a socket bound to an interface's address leaves through
that interface (needed for active migration to really change the path). The wifi interface
also holds a second address, the target of an address rebinding.

Addresses in a /16 `net` (10.0 by default; client i = 1..100): wifi net.1.i, wifi's second
address net.3.i, lte net.2.i; the server net.0.250; backends net.4.1..N. Behind a router
(`gateway`), hosts route everything off their subnet through it.
"""

from __future__ import annotations

from mininet.topo import Topo

from topologies.roles import ClientRole, Interface, ServerRole

NET = "10.0"
PREFIX_LENGTH = 16
SERVER_PORT = 1  # the server's port on its switch
FIRST_BACKEND_PORT = 201
SERVER_MAC = "02:00:00:00:04:00"


def add_clients(
    topo: Topo, prefix: str, switch: str, count: int, bandwidths: dict, net: str = NET
) -> tuple[ClientRole, ...]:
    """Client hosts 1..count, wifi on port 2i and lte on port 2i+1 of `switch`."""
    clients = []
    for index in range(1, count + 1):
        host = f"{prefix}c{index}"
        wifi_alt_ip = f"{net}.3.{index}"
        wifi = Interface(f"{host}-wifi", f"{net}.1.{index}", "wifi", (wifi_alt_ip,))
        lte = Interface(f"{host}-lte", f"{net}.2.{index}", "lte")
        topo.addHost(host, ip=f"{wifi.ip}/{PREFIX_LENGTH}")
        for interface, port in ((wifi, 2 * index), (lte, 2 * index + 1)):
            topo.addLink(
                host, switch, intfName1=interface.name, port2=port,
                params1={"ip": f"{interface.ip}/{PREFIX_LENGTH}"},
                **bandwidth(bandwidths.get(interface.link)),
            )  # fmt: skip
        clients.append(
            ClientRole(
                index=index,
                host=host,
                interfaces=(wifi, lte),
                start_ip=wifi.ip,
                targets={
                    "nat-rebind": (wifi.ip,),
                    "addr-rebind": (wifi_alt_ip, wifi.ip),
                    "active": (lte.ip, wifi.ip),
                },
            )
        )
    return tuple(clients)


def add_server(
    topo: Topo, prefix: str, switch: str, bandwidths: dict, net: str = NET
) -> ServerRole:
    server = ServerRole(f"{prefix}srv", f"{net}.0.250", SERVER_MAC, SERVER_PORT, "00")
    _add_server_host(topo, server, switch, bandwidths)
    return server


def add_backends(
    topo: Topo, prefix: str, switch: str, count: int, bandwidths: dict, net: str = NET
) -> tuple[ServerRole, ...]:
    backends = tuple(
        ServerRole(
            f"{prefix}srv{i}",
            f"{net}.4.{i}",
            f"02:00:00:00:04:{i:02x}",
            FIRST_BACKEND_PORT + i - 1,
            f"{i:02x}",
        )  # fmt: skip
        for i in range(1, count + 1)
    )
    for backend in backends:
        _add_server_host(topo, backend, switch, bandwidths)
    return backends


def _add_server_host(topo: Topo, server: ServerRole, switch: str, bandwidths: dict) -> None:
    topo.addHost(server.host, ip=f"{server.ip}/{PREFIX_LENGTH}", mac=server.mac)
    topo.addLink(
        server.host, switch, port2=server.switch_port, **bandwidth(bandwidths.get("server"))
    )


def configure_clients(
    net, clients: tuple[ClientRole, ...], subnet: str = f"{NET}.0.0/16", gateway: str | None = None
) -> None:
    """Per-host set-up a Topo cannot declare: the second address and policy routing (through
    `gateway`, the router, when the service is off the clients' subnet)."""
    for client in clients:
        host = net.get(client.host)
        # Per-namespace sysctls: answer ARP only on the interface owning the address and
        # announce the right source, else both interfaces answer for both addresses.
        for setting in (
            "net.ipv4.conf.all.arp_ignore=1",
            "net.ipv4.conf.all.arp_announce=2",
            "net.ipv4.conf.all.rp_filter=0",
        ):
            host.cmd("sysctl", "-qw", setting)
        wifi, lte = client.interface("wifi"), client.interface("lte")
        (wifi_alt_ip,) = wifi.extra_ips
        host.cmd("ip", "addr", "add", f"{wifi_alt_ip}/{PREFIX_LENGTH}", "dev", wifi.name)
        for table, ip, intf in (
            (101, wifi.ip, wifi.name),
            (102, lte.ip, lte.name),
            (103, wifi_alt_ip, wifi.name),
        ):
            host.cmd("ip", "rule", "add", "from", ip, "table", str(table))
            host.cmd("ip", "route", "add", subnet, "dev", intf, "src", ip, "table", str(table))
            if gateway:
                host.cmd(
                    "ip", "route", "add", "default", "via", gateway, "dev", intf, "src", ip,
                    "table", str(table),
                )  # fmt: skip
        if gateway:
            host.cmd("ip", "route", "add", "default", "via", gateway, "dev", wifi.name)


def route_servers(net, servers: tuple[ServerRole, ...], gateway: str) -> None:
    for server in servers:
        net.get(server.host).cmd("ip", "route", "add", "default", "via", gateway)


def bandwidth(bw_mbit: float | None) -> dict:
    # HTB shaping through Mininet's TCLink; delay, jitter and loss are applied by the
    # emulation on the host end (testbed/emulation/links.py), with netem or its fallback.
    return {"bw": bw_mbit} if bw_mbit else {}
