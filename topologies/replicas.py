"""Dual-homed clients, a front switch that spreads flows over R middlebox replicas, a back
switch, then the server.

    client_i ──wifi/lte── front ──┬── r1 ──┬── back ── server
                                  ├── r2 ──┤
                                  └── rR ──┘

Each replica is its own OVS bridge (datapath id k) with its own middlebox instance in the
controller, all at one position on the path (one logical hop) sharing one NAT public address
(10.0.100.1). On each replica port 1 leads to the back switch, port 2 to the front switch
(replicas are wired alike); the front and back switches reach replica k on port 300 + k.

The front and back switches are the network, not middleboxes: no controller drives them (a
hashing front end is ECMP or a load-balancing switch's job); `reset` programs them with
ovs-ofctl in OpenFlow 1.5, whose group syntax takes a hash selection method (the controller
speaks OpenFlow 1.3 to the replicas, which does not). Their tables:
- front, client→service (and to the Tracking Agent, and anything else IPv4): a select group,
  `selection_method=hash,fields(ip_src,ip_dst,udp_src,udp_dst)`, one bucket per replica
  watching the replica's port, as ECMP does: OVS picks among live buckets by highest random
  weight, so a dead replica's flows (and only those) move to the survivors.
- `steering: next-replica` (deterministic tests): a client address's first 5-tuple to the
  service goes to the replica the address is pinned to (client i: wifi to replica
  (i - 1) mod R + 1, lte and the wifi's second address to the next one), every later 5-tuple
  of that address to the next replica. An OVS `learn` action remembers the first 5-tuple
  (table 1, reset per run), so a rebinding (new port) and an active migration (new address)
  both land on another replica than the path before, with no change to the client.
- ARP from the clients, and from the server, to the first live replica (a fast-failover
  group); from a replica, to the client or the server the packet is for (by address): a
  replica's packet never goes to another replica.
- back, service→client: replies to the NAT's public address are steered by the public port
  when the replicas hold disjoint slices of the port pool (state kept apart: the replica
  that made the mapping gets its replies), through a fast-failover group per slice (the
  owner first, then the next replicas); otherwise (shared state, or no NAT) by the same
  hash select group over the reverse 5-tuple: any replica can serve them.

`kill_replica(net, k)` stops replica k's datapath mid-run by taking its links down (as a
crashed box looks to its neighbours); the groups' bucket liveness takes it out of the front
and back ends within OVS's link-state polling, with no rule change. `reset` brings every
replica back for the next run.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

from mininet.topo import Topo

from topologies.clients import add_clients, add_server, configure_clients
from topologies.roles import STEERINGS, DatapathRole, Roles

NAT_PUBLIC_IP = "10.0.100.1"
NAT_PUBLIC_MAC = "02:00:00:00:00:fd"
FRONT_DPID, BACK_DPID = 0x200, 0x201
TOWARDS_SERVICE_PORT, TOWARDS_CLIENTS_PORT = 1, 2  # on every replica
REPLICA_PORT_BASE = 300  # the front's and back's port towards replica k: 300 + k
SELECT_GROUP = 1
FAILOVER_GROUP_BASE = 100  # group 100 + k: replica k if alive, else the next one alive
STATIC_PROTOCOLS = "OpenFlow10,OpenFlow13,OpenFlow15"
OFCTL = ("ovs-ofctl", "-O", "OpenFlow15")
HASH_FIELDS = "fields(ip_src,ip_dst,udp_src,udp_dst)"
LEARNED_IDLE_S = 600
LINK_STATE_TIMEOUT_S = 5.0  # OVS notices a veth's carrier within ~1 s (measured)


def replica_port(k: int) -> int:
    return REPLICA_PORT_BASE + k


def port_prefixes(first: int, count: int) -> list[tuple[int, int]]:
    """(value, mask) pairs whose masked matches cover exactly the ports first..first+count-1
    (a range as OpenFlow matches it: power-of-two aligned blocks)."""
    prefixes = []
    port, end = first, first + count
    while port < end:
        size = port & -port if port else 1 << 16
        while size > end - port:
            size >>= 1
        prefixes.append((port, 0xFFFF & ~(size - 1)))
        port += size
    return prefixes


class Replicas(Topo):
    def build(
        self,
        prefix: str,
        clients: int = 1,
        replicas: int = 2,
        steering: str = "hash",
        bandwidths=None,
    ) -> None:
        if steering not in STEERINGS:
            raise ValueError(f"steering {steering!r}: expected one of {', '.join(STEERINGS)}")
        bandwidths = bandwidths or {}
        self.prefix = prefix
        self.replica_count = replicas
        self.steering = steering
        front, back = f"{prefix}fr", f"{prefix}bk"
        for name, dpid in ((front, FRONT_DPID), (back, BACK_DPID)):
            self.addSwitch(name, dpid=f"{dpid:016x}", protocols=STATIC_PROTOCOLS)
        names = [f"{prefix}r{k}" for k in range(1, replicas + 1)]
        for k, name in enumerate(names, start=1):
            self.addSwitch(name, dpid=f"{k:016x}", protocols="OpenFlow13")
            self.addLink(front, name, port1=replica_port(k), port2=TOWARDS_CLIENTS_PORT)
            self.addLink(name, back, port1=TOWARDS_SERVICE_PORT, port2=replica_port(k))
        self.roles = Roles(
            clients=add_clients(self, prefix, front, clients, bandwidths),
            server=add_server(self, prefix, back, bandwidths),
            backends=(),
            middleboxes=tuple(
                DatapathRole(name, k, NAT_PUBLIC_IP, NAT_PUBLIC_MAC, position=1)
                for k, name in enumerate(names, start=1)
            ),
            switches=(front, *names, back),
            static_switches=(front, back),
        )
        # Each client address's port on the front switch.
        self.client_ports: dict[str, int] = {}
        ports = {
            info["intfName1"]: info["port2"]
            for _, _, info in self.links(withInfo=True)
            if info.get("intfName1")
        }
        for client in self.roles.clients:
            for interface in client.interfaces:
                for ip in interface.ips:
                    self.client_ports[ip] = ports[interface.name]

    # --- set-up -------------------------------------------------------------------------

    def configure(self, net) -> None:
        configure_clients(net, self.roles.clients)
        for bridge in self.roles.static_switches:
            # Mininet gave every bridge the controller: these two are the network's own.
            _run("ovs-vsctl", "del-controller", bridge)

    def replica_interfaces(self, k: int) -> tuple[str, str]:
        """Replica k's ends of its links (towards the service, towards the clients)."""
        name = f"{self.prefix}r{k}"
        return f"{name}-eth{TOWARDS_SERVICE_PORT}", f"{name}-eth{TOWARDS_CLIENTS_PORT}"

    def reset(self, net, config) -> None:
        """Before each run: every replica up, the front and back ends programmed afresh
        (the learnt first paths forgotten) for this run's middlebox `config` (whose NAT
        slices decide how the back end steers replies)."""
        down = False
        for k in range(1, self.replica_count + 1):
            for interface in self.replica_interfaces(k):
                down |= "state DOWN" in _run("ip", "link", "show", interface).stdout
                _run("ip", "link", "set", interface, "up")
        front, back = self.roles.static_switches
        groups = self.groups()
        flows = {front: self.front_flows(), back: self.back_flows(nat_slices(config))}
        for bridge in (front, back):
            _run(*OFCTL, "del-flows", bridge)
            _run(*OFCTL, "del-groups", bridge)
            _ofctl_file("add-groups", bridge, groups)
            _ofctl_file("add-flows", bridge, flows[bridge])
        if down:
            self._wait_until_live()

    def kill_replica(self, net, k: int) -> list[str]:
        """Replica k's datapath stops: its links go down. Returns the interfaces."""
        interfaces = list(self.replica_interfaces(k))
        for interface in interfaces:
            _run("ip", "link", "set", interface, "down")
        return interfaces

    def _wait_until_live(self) -> None:
        deadline = time.monotonic() + LINK_STATE_TIMEOUT_S
        while time.monotonic() < deadline:
            shown = "".join(_run(*OFCTL, "show", b).stdout for b in self.roles.static_switches)
            if "LINK_DOWN" not in shown:
                return
            time.sleep(0.1)

    # --- the front and back ends' tables (pure) --------------------------------------------

    def groups(self) -> list[str]:
        """The select group (hash over every live replica) and one fast-failover group per
        replica (it first, then the next ones), for both switches (same replica ports)."""
        count = self.replica_count
        buckets = ",".join(
            f"bucket=bucket_id:{k},watch_port:{replica_port(k)},actions=output:{replica_port(k)}"
            for k in range(1, count + 1)
        )
        lines = [
            f"group_id={SELECT_GROUP},type=select,selection_method=hash,{HASH_FIELDS},{buckets}"
        ]
        for k in range(1, count + 1):
            order = [(k - 1 + i) % count + 1 for i in range(count)]
            failover = ",".join(
                f"bucket=bucket_id:{j},watch_port:{replica_port(j)},actions=output:{replica_port(j)}"
                for j in order
            )
            lines.append(f"group_id={FAILOVER_GROUP_BASE + k},type=ff,{failover}")
        return lines

    def front_flows(self) -> list[str]:
        roles = self.roles
        from_replicas = [replica_port(k) for k in range(1, self.replica_count + 1)]
        lines = []
        for ip, port in self.client_ports.items():
            for in_port in from_replicas:
                lines.append(f"priority=400,in_port={in_port},ip,nw_dst={ip},actions=output:{port}")
                lines.append(
                    f"priority=400,in_port={in_port},arp,arp_tpa={ip},actions=output:{port}"
                )
        service = f"udp,nw_dst={roles.server.ip},tp_dst={roles.service_port}"
        for port in sorted(set(self.client_ports.values())):
            if self.steering == "next-replica":
                lines.append(
                    f"priority=300,in_port={port},{service},actions=resubmit(,1),resubmit(,2)"
                )
            lines.append(f"priority=200,in_port={port},ip,actions=group:{SELECT_GROUP}")
            lines.append(f"priority=200,in_port={port},arp,actions=group:{FAILOVER_GROUP_BASE + 1}")
        if self.steering == "next-replica":
            lines += self._pinned_flows()
        return lines

    def pinned_replica(self, ip: str) -> int:
        """The replica a client address's first path goes to (`next-replica`)."""
        count = self.replica_count
        for client in self.roles.clients:
            wifi = client.interface("wifi")
            if ip == wifi.ip:
                return (client.index - 1) % count + 1
            if ip in client.ips:
                return client.index % count + 1
        raise KeyError(ip)

    def _pinned_flows(self) -> list[str]:
        count = self.replica_count
        lines = []
        for ip in self.client_ports:
            first = self.pinned_replica(ip)
            later = first % count + 1
            # Table 1 learns the address's first 5-tuple (to `first`) and sends every other
            # 5-tuple of the address to `later`; table 2 outputs to the replica's
            # fast-failover group.
            lines.append(
                f"table=1,priority=100,udp,nw_src={ip},actions="
                f"learn(table=1,priority=200,idle_timeout={LEARNED_IDLE_S},eth_type=0x800,"
                f"nw_proto=17,NXM_OF_IP_SRC[],NXM_OF_UDP_SRC[],load:{first}->NXM_NX_REG0[]),"
                f"learn(table=1,priority=150,idle_timeout={LEARNED_IDLE_S},eth_type=0x800,"
                f"NXM_OF_IP_SRC[],load:{later}->NXM_NX_REG0[]),"
                f"load:{first}->NXM_NX_REG0[]"
            )
        for k in range(1, count + 1):
            lines.append(f"table=2,priority=100,reg0={k},actions=group:{FAILOVER_GROUP_BASE + k}")
        return lines

    def back_flows(self, slices: dict[int, tuple[str, int, int]] | None = None) -> list[str]:
        """`slices`: replica k → (public address, first port, ports) when the replicas hold
        disjoint slices of the NAT pool."""
        roles = self.roles
        server_port = roles.server.switch_port
        lines = [
            f"priority=400,in_port={replica_port(k)},actions=output:{server_port}"
            for k in range(1, self.replica_count + 1)
        ]
        for k, (public_ip, first, count) in sorted((slices or {}).items()):
            for value, mask in port_prefixes(first, count):
                lines.append(
                    f"priority=300,in_port={server_port},udp,nw_dst={public_ip},"
                    f"tp_dst={value:#x}/{mask:#x},actions=group:{FAILOVER_GROUP_BASE + k}"
                )
        lines.append(f"priority=200,in_port={server_port},ip,actions=group:{SELECT_GROUP}")
        lines.append(
            f"priority=200,in_port={server_port},arp,actions=group:{FAILOVER_GROUP_BASE + 1}"
        )
        return lines


def nat_slices(config) -> dict[int, tuple[str, int, int]]:
    """Replica dpid → (public address, first port, ports) when the middlebox configuration
    gives the replicas disjoint slices of one pool; {} when they share it (or no NAT)."""
    hops = [hop for hop in config.hops if hop.nat is not None]
    ranges = {hop.dpid: (hop.nat.public_ip, hop.nat.first_port, hop.nat.ports) for hop in hops}
    spans = sorted((first, first + count) for _, first, count in ranges.values())
    disjoint = all(end <= start for (_, end), (start, _) in zip(spans, spans[1:], strict=False))
    return ranges if len(ranges) > 1 and disjoint else {}


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), capture_output=True, text=True, check=False, timeout=30)


def _ofctl_file(command: str, bridge: str, lines: list[str]) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".ofctl", delete=False) as stream:
        stream.write("\n".join(lines) + "\n")
    try:
        result = _run(*OFCTL, command, bridge, stream.name)
        if result.returncode != 0:
            raise RuntimeError(f"ovs-ofctl {command} {bridge}: {result.stderr.strip()}")
    finally:
        Path(stream.name).unlink(missing_ok=True)
