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

from topologies.links import LIMITS, LinkConditions, LinkConditionsError
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
# Link kinds with their own conditions, each per direction (topologies.links): every client's
# wifi link, every client's lte link, every server's (and backend's) link.
LINKS = ("wifi", "lte", "server")
IMPAIRMENTS = ("delay_ms", "jitter_ms", "loss_pct")
# Packets a delay holds per direction at most; netem's default (1000) is too few for a
# 1000 Mbit/s link with tens of ms of delay, and a full queue drops (a loss nobody asked for).
MAX_HELD_PACKETS = 100_000
DATAGRAM_BYTES = 1200


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
        **{
            f"{link}_{name}": Parameter(
                float, limit.minimum, limit.maximum, f"{link} link: {limit.description}", True
            )
            for link in LINKS
            for name, limit in LIMITS.items()
            if name in IMPAIRMENTS
        },
    }

    def build(
        self,
        prefix: str,
        clients: int = 1,
        backends: int = 0,
        wifi_bw_mbit: float | None = None,
        lte_bw_mbit: float | None = None,
        server_bw_mbit: float | None = None,
        **impairments: float,
    ) -> None:
        if not 1 <= clients <= MAX_CLIENTS:
            raise ValueError(f"clients: {clients}, expected 1..{MAX_CLIENTS}")
        self.prefix = prefix
        self.switch_name = f"{prefix}mb"
        self.vip, self.vip_mac = VIP, VIP_MAC
        self.agent_ip, self.agent_mac, self.agent_port = AGENT_IP, AGENT_MAC, AGENT_PORT
        self.nat_public_ip, self.nat_public_mac = NAT_PUBLIC_IP, NAT_PUBLIC_MAC
        bandwidths = {"wifi": wifi_bw_mbit, "lte": lte_bw_mbit, "server": server_bw_mbit}
        self.conditions = link_conditions(bandwidths, impairments)
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

    @classmethod
    def parameter_problems(cls, params: dict) -> list[tuple[str, str]]:
        """(key, expected ...) for combinations the per-parameter ranges cannot express."""
        problems = []
        for link in LINKS:
            delay, jitter = params.get(f"{link}_delay_ms", 0), params.get(f"{link}_jitter_ms", 0)
            if jitter and jitter > (delay or 0):
                # netem would clamp negative delays to 0, shifting the mean above the delay.
                problems.append(
                    (f"{link}_jitter_ms", f"expected at most {link}_delay_ms ({delay or 0:g})")
                )
        return problems

    def link_ends(self) -> list[tuple[str, str, LinkConditions]]:
        """(host, host-side interface, conditions) of every link, for the emulation."""
        ends = [(s.name, f"{s.name}-eth0", self.conditions["server"]) for s in self.servers]
        for addresses in self.clients:
            ends.append((addresses.name, addresses.wifi_intf, self.conditions["wifi"]))
            ends.append((addresses.name, addresses.lte_intf, self.conditions["lte"]))
        return ends

    @property
    def servers(self) -> list[ServerAddresses]:
        return [self.server, *self.backends]

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
    # HTB shaping through Mininet's TCLink; delay, jitter and loss are applied by the
    # emulation on the host end (topologies.links), with netem or its fallback.
    return {"bw": bw_mbit} if bw_mbit else {}


def link_conditions(bandwidths: dict, impairments: dict) -> dict[str, LinkConditions]:
    """LinkConditions per link kind from the topology's parameters."""
    unknown = sorted(set(impairments) - {f"{k}_{n}" for k in LINKS for n in IMPAIRMENTS})
    if unknown:
        raise TypeError(f"unexpected topology parameter {unknown[0]!r}")
    conditions = {}
    for link in LINKS:
        values = {n: float(impairments.get(f"{link}_{n}") or 0) for n in IMPAIRMENTS}
        held_s = (values["delay_ms"] + values["jitter_ms"]) / 1000
        # Room for 2 x what the link carries at full rate during the longest hold (unshaped:
        # 1000 Mbit/s, TCIntf's maximum).
        rate = (bandwidths[link] or 1000) * 1e6 / 8 / DATAGRAM_BYTES
        limit = min(MAX_HELD_PACKETS, max(1000, int(2 * rate * held_s) + 1))
        try:
            conditions[link] = LinkConditions(
                bw_mbit=bandwidths[link], limit_packets=limit, **values
            )
        except LinkConditionsError as exc:
            raise ValueError(f"{link} link: {exc}") from exc
    return conditions
