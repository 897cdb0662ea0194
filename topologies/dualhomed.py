"""Dual-homed clients behind one middlebox switch, in front of one server.

    client_i ──wifi──┐
    client_i ──lte───┼── middlebox switch (OVS, OpenFlow 1.3, our controller only) ── server
                     ┘

Each client has two interfaces on one /16, each on its own link to the switch, with
source-based policy routing so a socket bound to an interface's address leaves through that
interface (needed for active migration to really change the path). The wifi interface also
holds a second address, the target of an address rebinding. Parameters map one-to-one onto
the scenario's `topology:` block.

Addresses (client i = 1..100): wifi 10.0.1.i, wifi's second address 10.0.3.i, lte 10.0.2.i,
server 10.0.0.250, and with `backends: N` (N >= 2) backends 10.0.4.1..N behind the load
balancer's virtual IP 10.0.0.100. The VIP, the Tracking Agent's management address 10.0.0.254
and the NAT's public address 10.0.100.1 are answered by the controller through the switch (no
host owns them).
"""

from __future__ import annotations

from dataclasses import dataclass

from mininet.topo import Topo

from topologies.parameters import Parameter

SUBNET = "10.0.0.0/16"
PREFIX_LENGTH = 16
SERVER_IP = "10.0.0.250"
AGENT_IP = "10.0.0.254"
AGENT_MAC = "02:00:00:00:00:fe"  # locally administered, not any host's
AGENT_PORT = 7400
# The NAT function's public address: in the server's subnet, answered by the controller.
NAT_PUBLIC_IP = "10.0.100.1"
NAT_PUBLIC_MAC = "02:00:00:00:00:fd"
MAX_CLIENTS = 100
MAX_BACKENDS = 8
VIP = "10.0.0.100"  # the load balancer's virtual IP, answered by the controller
VIP_MAC = "02:00:00:00:00:fa"


@dataclass(frozen=True)
class ClientAddresses:
    index: int
    name: str  # the Mininet host, with the run's prefix
    wifi_ip: str
    wifi_alt_ip: str  # a second address on the wifi interface
    lte_ip: str
    wifi_intf: str
    lte_intf: str

    @property
    def agent_id(self) -> str:
        """Stable across runs (the host name carries the per-run prefix)."""
        return f"c{self.index}"

    @property
    def ips(self) -> tuple[str, str, str]:
        return (self.wifi_ip, self.wifi_alt_ip, self.lte_ip)


@dataclass(frozen=True)
class ServerAddresses:
    name: str
    ip: str
    mac: str
    switch_port: int
    server_id: str  # hex, carried in its QUIC-LB connection IDs


class DualHomed(Topo):
    """Parameters: prefix (per-run name prefix) plus PARAMETERS, from the scenario."""

    # Mininet's TCIntf accepts bandwidths up to 1000 Mbit/s.
    PARAMETERS = {
        "clients": Parameter(int, 1, MAX_CLIENTS, "dual-homed client hosts"),
        "backends": Parameter(int, 2, MAX_BACKENDS, "servers behind the load balancer's VIP"),
        "wifi_bw_mbit": Parameter(float, 0, 1000, "wifi link bandwidth (HTB), Mbit/s"),
        "lte_bw_mbit": Parameter(float, 0, 1000, "lte link bandwidth (HTB), Mbit/s"),
        "server_bw_mbit": Parameter(float, 0, 1000, "server link bandwidth (HTB), Mbit/s"),
    }

    def build(
        self,
        prefix: str,
        clients: int = 1,
        backends: int = 0,
        wifi_bw_mbit: float | None = None,
        lte_bw_mbit: float | None = None,
        server_bw_mbit: float | None = None,
    ) -> None:
        if not 1 <= clients <= MAX_CLIENTS:
            raise ValueError(f"clients: {clients}, expected 1..{MAX_CLIENTS}")
        self.prefix = prefix
        self.switch_name = f"{prefix}mb"
        self.vip, self.vip_mac = VIP, VIP_MAC
        self.agent_ip, self.agent_mac, self.agent_port = AGENT_IP, AGENT_MAC, AGENT_PORT
        self.nat_public_ip, self.nat_public_mac = NAT_PUBLIC_IP, NAT_PUBLIC_MAC
        # Mininet derives a DPID from digits in the name unless told; ours has hex digits.
        switch = self.addSwitch(self.switch_name, dpid="0000000000000001", protocols="OpenFlow13")
        self.server = ServerAddresses(f"{prefix}srv", SERVER_IP, "02:00:00:00:04:00", 1, "00")
        self.backends = [
            ServerAddresses(
                f"{prefix}srv{i}", f"10.0.4.{i}", f"02:00:00:00:04:{i:02x}", 200 + i, f"{i:02x}"
            )
            for i in range(1, backends + 1)
        ]
        for server in (self.server, *self.backends):
            host = self.addHost(server.name, ip=f"{server.ip}/{PREFIX_LENGTH}", mac=server.mac)
            self.addLink(host, switch, port2=server.switch_port, **_bandwidth(server_bw_mbit))
        self.clients: list[ClientAddresses] = []
        for index in range(1, clients + 1):
            addresses = ClientAddresses(
                index=index,
                name=f"{prefix}c{index}",
                wifi_ip=f"10.0.1.{index}",
                wifi_alt_ip=f"10.0.3.{index}",
                lte_ip=f"10.0.2.{index}",
                wifi_intf=f"{prefix}c{index}-wifi",
                lte_intf=f"{prefix}c{index}-lte",
            )
            host = self.addHost(addresses.name, ip=f"{addresses.wifi_ip}/{PREFIX_LENGTH}")
            self.addLink(
                host,
                switch,
                intfName1=addresses.wifi_intf,
                params1={"ip": f"{addresses.wifi_ip}/{PREFIX_LENGTH}"},
                port2=2 * index,
                **_bandwidth(wifi_bw_mbit),
            )
            self.addLink(
                host,
                switch,
                intfName1=addresses.lte_intf,
                params1={"ip": f"{addresses.lte_ip}/{PREFIX_LENGTH}"},
                port2=2 * index + 1,
                **_bandwidth(lte_bw_mbit),
            )
            self.clients.append(addresses)

    def configure(self, net) -> None:
        """Per-host set-up that a Topo cannot declare: policy routing on the clients."""
        for addresses in self.clients:
            host = net.get(addresses.name)
            # Per-namespace sysctls: answer ARP only on the interface owning the address and
            # announce the right source, else both interfaces answer for both addresses.
            for setting in (
                "net.ipv4.conf.all.arp_ignore=1",
                "net.ipv4.conf.all.arp_announce=2",
                "net.ipv4.conf.all.rp_filter=0",
            ):
                host.cmd("sysctl", "-qw", setting)
            host.cmd(
                "ip", "addr", "add", f"{addresses.wifi_alt_ip}/{PREFIX_LENGTH}",
                "dev", addresses.wifi_intf,
            )  # fmt: skip
            for table, ip, intf in (
                (101, addresses.wifi_ip, addresses.wifi_intf),
                (102, addresses.lte_ip, addresses.lte_intf),
                (103, addresses.wifi_alt_ip, addresses.wifi_intf),
            ):
                host.cmd("ip", "rule", "add", "from", ip, "table", str(table))
                host.cmd("ip", "route", "add", SUBNET, "dev", intf, "src", ip, "table", str(table))


def _bandwidth(bw_mbit: float | None) -> dict:
    # HTB shaping through Mininet's TCLink; no netem (this kernel has no sch_netem).
    return {"bw": bw_mbit} if bw_mbit else {}
