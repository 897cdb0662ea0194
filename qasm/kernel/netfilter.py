"""Netfilter rule sets and conntrack commands, built as operators and kube-proxy build them.

Pure: every function returns text for `nft -f -` / `iptables-restore --noflush`, or an
argument list for `conntrack`; the testbed runs them in the router host's network namespace.

The variant `netfilter` is Linux's stateful middlebox on the router, per function:
- firewall (nftables, forward hook): established and related traffic passes; a new
  client→service flow passes only when its first datagram looks like a QUIC Initial (the
  long-header bit set, a UDP payload of at least 1200 bytes: RFC 9312 §3.1.2, §4.7); any other
  new flow to or from the service is dropped;
- nat (nftables): the clients' traffic towards the service is masqueraded to the router's
  service-side address (each new 5-tuple gets its own conntrack entry and port);
- ratelimit (nftables): one token bucket per client source address (a meter keyed by
  `ip saddr`), packets over the rate dropped. In bytes (nft's kbytes are 1024 bytes). The
  kernel's bucket holds one second of the rate on top of the burst (nft_limit: tokens_max =
  unit x (rate + burst) / rate), so a fresh bucket lets rate x 1 s + burst through at once
  (`kernel_bucket_bytes`);
- loadbalancer: the rules kube-proxy writes in iptables mode for a ClusterIP Service with N
  endpoints (`kube_proxy_rules`), a random endpoint per new conntrack entry.

`netfilter-qasm` is the same dataplane with QASM: each new connection gets a conntrack mark
(its connection number), the rate meter is keyed by that mark rather than the source address,
and the Tracking Agent, told of a new path, creates the path's conntrack entry before the
client uses it (`conntrack_insert`): the same DNAT target (endpoint), the same mark (rate
budget), established (the firewall's admission), its own SNAT port; a retired path's entry is
deleted (`conntrack_delete`).
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

# RFC 9000 §14.1: a client's Initial datagram is at least 1200 bytes of UDP payload, and the
# UDP header is 8 more.
MIN_INITIAL_UDP_LENGTH = 1200 + 8
KERNEL_VARIANTS = ("netfilter", "netfilter-qasm")
TABLE = "qasm"  # the nftables table the testbed owns (inet family)
NAT_TABLE = "qasm_nat"  # ip family: masquerade
KUBE_SERVICE = "default/quic:quic"  # the Service's "namespace/name:port", as kube-proxy names it
KUBE_CHAINS = ("KUBE-SERVICES", "KUBE-MARK-MASQ", "KUBE-POSTROUTING")
# kube-proxy's masquerade mark (pkg/proxy/iptables: --iptables-masquerade-bit 14).
KUBE_MASQ_MARK = "0x4000"


@dataclass(frozen=True)
class KernelSettings:
    variant: str  # netfilter | netfilter-qasm
    functions: tuple[str, ...]
    service_ip: str  # the server, or the Service's ClusterIP
    service_port: int
    clients: str  # the clients' subnet, e.g. 10.1.0.0/16
    service_side: str  # the router's interface towards the service
    endpoints: tuple[str, ...] = ()  # the Service's endpoints (backends' IPs)
    endpoints_cidr: str | None = None  # kube-proxy's --cluster-cidr: the endpoints' subnet
    rate_bytes_per_s: int | None = None  # ratelimit
    burst_bytes: int | None = None
    # The Tracking Agent's address: part of the middlebox, so its reports are not translated
    # (it checks that they come from the client's own addresses).
    agent_ip: str | None = None

    @property
    def qasm(self) -> bool:
        return self.variant == "netfilter-qasm"


def kernel_bucket_bytes(rate_bytes_per_s: int, burst_bytes: int) -> int:
    """What a fresh nftables byte-rate bucket lets through at once (see the module doc)."""
    return rate_bytes_per_s + burst_bytes


def nft_ruleset(settings: KernelSettings) -> str:
    """The nftables script for firewall, nat and ratelimit (`nft -f -`); empty without them.

    Rules match the connection's original destination (`ct original ip daddr`): behind
    kube-proxy's DNAT the forward hook sees the endpoint's address, not the ClusterIP."""
    service, port = settings.service_ip, settings.service_port
    to_service = f"ct original ip daddr {service} udp dport {port}"
    service_side = " , ".join(settings.endpoints) if settings.endpoints else service
    forward: list[str] = []
    if settings.qasm:
        # A connection's number, carried by every path's entry (the Tracking Agent copies it).
        forward.append("ct state new ct mark 0 ct mark set numgen inc mod 4294967295 offset 1")
    if "ratelimit" in settings.functions:
        key = "ct mark" if settings.qasm else "ip saddr"
        forward.append(
            f"{to_service} meter rate_per_connection {{ {key} "
            f"limit rate over {settings.rate_bytes_per_s} bytes/second burst "
            f"{settings.burst_bytes} bytes }} drop"
        )
    if "firewall" in settings.functions:
        forward += [
            "ct state established,related accept",
            f"{to_service} ct state new udp length >= {MIN_INITIAL_UDP_LENGTH} @th,64,1 1 accept",
            f"ct original ip daddr {service} drop",
            f"ip saddr {{ {service_side} }} drop",
        ]
    lines = []
    if forward:
        lines += [f"table inet {TABLE} {{", "  chain forward {",
                  "    type filter hook forward priority filter; policy accept;"]  # fmt: skip
        lines += [f"    {rule}" for rule in forward]
        lines += ["  }", "}"]
    if "nat" in settings.functions:
        not_agent = f" ip daddr != {settings.agent_ip}" if settings.agent_ip else ""
        lines += [
            f"table ip {NAT_TABLE} {{",
            "  chain postrouting {",
            "    type nat hook postrouting priority srcnat; policy accept;",
            f'    ip saddr {settings.clients}{not_agent} oifname "{settings.service_side}" '
            "masquerade",
            "  }",
            "}",
        ]
    return "\n".join(lines) + ("\n" if lines else "")


def nft_teardown() -> list[list[str]]:
    """Commands that remove what `nft_ruleset` created (each may fail if absent)."""
    return [["nft", "delete", "table", "inet", TABLE], ["nft", "delete", "table", "ip", NAT_TABLE]]


def kube_chain(prefix: str, *parts: str) -> str:
    """kube-proxy's chain names: prefix + the first 16 characters of base32(sha256(parts))
    (pkg/proxy/iptables/proxier.go: servicePortChainName, servicePortEndpointChainName)."""
    digest = hashlib.sha256("".join(parts).encode()).digest()
    return prefix + base64.b32encode(digest).decode()[:16]


def kube_proxy_rules(settings: KernelSettings) -> str:
    """The nat table kube-proxy's iptables mode writes for one ClusterIP Service (UDP) with
    N endpoints, for `iptables-restore --noflush`. Follows kubernetes/kubernetes
    pkg/proxy/iptables/proxier.go (syncProxyRules, writeServiceToEndpointRules): KUBE-SERVICES
    matches the ClusterIP and port and jumps to the Service's KUBE-SVC chain, marking
    traffic from outside the cluster CIDR for masquerade; KUBE-SVC picks an endpoint with
    `statistic --mode random --probability 1/(N-i)` (formatted %0.10f) and a guaranteed last
    rule; each KUBE-SEP chain DNATs to its endpoint (and marks hairpin traffic);
    KUBE-POSTROUTING masquerades what was marked."""
    protocol = "udp"
    service = kube_chain("KUBE-SVC-", KUBE_SERVICE, protocol)
    endpoints = [f"{ip}:{settings.service_port}" for ip in settings.endpoints]
    separate = [kube_chain("KUBE-SEP-", KUBE_SERVICE, protocol, ep) for ep in endpoints]
    lines = ["*nat"]
    lines += [f":{chain} - [0:0]" for chain in (*KUBE_CHAINS, service, *separate)]
    lines += [
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
        f"-A KUBE-MARK-MASQ -j MARK --or-mark {KUBE_MASQ_MARK}",
        f"-A KUBE-POSTROUTING -m mark ! --mark {KUBE_MASQ_MARK}/{KUBE_MASQ_MARK} -j RETURN",
        f"-A KUBE-POSTROUTING -j MARK --xor-mark {KUBE_MASQ_MARK}",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" '
        "-j MASQUERADE --random-fully",
    ]
    portal = (
        f'-m comment --comment "{KUBE_SERVICE} cluster IP" -m {protocol} -p {protocol} '
        f"-d {settings.service_ip}/32 --dport {settings.service_port}"
    )
    if settings.endpoints_cidr:
        lines.append(f"-A KUBE-SERVICES ! -s {settings.endpoints_cidr} {portal} -j KUBE-MARK-MASQ")
    lines.append(f"-A KUBE-SERVICES {portal} -j {service}")
    count = len(endpoints)
    for index, (endpoint, chain) in enumerate(zip(endpoints, separate, strict=True)):
        rule = f'-A {service} -m comment --comment "{KUBE_SERVICE} -> {endpoint}"'
        if index < count - 1:
            rule += f" -m statistic --mode random --probability {1.0 / (count - index):0.10f}"
        lines.append(f"{rule} -j {chain}")
    for endpoint, chain in zip(endpoints, separate, strict=True):
        ip = endpoint.rpartition(":")[0]
        lines += [
            f'-A {chain} -m comment --comment "{KUBE_SERVICE}" -s {ip}/32 -j KUBE-MARK-MASQ',
            f'-A {chain} -m comment --comment "{KUBE_SERVICE}" -m {protocol} -p {protocol} '
            f"-j DNAT --to-destination {endpoint}",
        ]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def kube_proxy_teardown(settings: KernelSettings) -> str:
    """iptables-restore --noflush input that removes kube-proxy's jumps and chains."""
    protocol = "udp"
    service = kube_chain("KUBE-SVC-", KUBE_SERVICE, protocol)
    endpoints = [f"{ip}:{settings.service_port}" for ip in settings.endpoints]
    separate = [kube_chain("KUBE-SEP-", KUBE_SERVICE, protocol, ep) for ep in endpoints]
    chains = (*KUBE_CHAINS, service, *separate)
    lines = [
        "*nat",
        '-D PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        '-D POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING',
    ]
    lines += [f"-F {chain}" for chain in chains]
    lines += [f"-X {chain}" for chain in chains]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


# --- conntrack --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tuple:
    src: str
    dst: str
    sport: int
    dport: int


@dataclass(frozen=True)
class ConntrackEntry:
    """One UDP entry as `conntrack -L` prints it: the original and reply tuples and mark."""

    original: Tuple
    reply: Tuple
    mark: int = 0

    @property
    def dnat_target(self) -> tuple[str, int] | None:
        """Where the original direction's destination was translated to, if it was."""
        if (self.reply.src, self.reply.sport) == (self.original.dst, self.original.dport):
            return None
        return self.reply.src, self.reply.sport

    @property
    def snat_source(self) -> tuple[str, int] | None:
        if (self.reply.dst, self.reply.dport) == (self.original.src, self.original.sport):
            return None
        return self.reply.dst, self.reply.dport


def service_entries(
    entries: list[ConntrackEntry], addresses: Iterable[str], service: tuple[str, int]
) -> list[ConntrackEntry]:
    """The entries of a client's paths to the service (not, say, its Tracking Agent reports)."""
    ips = set(addresses)
    return [
        e for e in entries
        if e.original.src in ips and (e.original.dst, e.original.dport) == service
    ]  # fmt: skip


_FIELD = re.compile(r"(src|dst|sport|dport|mark)=(\S+)")


def parse_conntrack(text: str) -> list[ConntrackEntry]:
    """The UDP entries of `conntrack -L -p udp` output (other lines are skipped)."""
    entries = []
    for line in text.splitlines():
        if not line.startswith("udp"):
            continue
        fields = _FIELD.findall(line)
        tuples, mark, current = [], 0, {}
        for name, value in fields:
            if name == "mark":
                mark = int(value, 0)
                continue
            current[name] = value
            if len(current) == 4:
                tuples.append(
                    Tuple(current["src"], current["dst"], int(current["sport"]),
                          int(current["dport"]))
                )  # fmt: skip
                current = {}
        if len(tuples) == 2:
            entries.append(ConntrackEntry(tuples[0], tuples[1], mark))
    return entries


def conntrack_get(src: str, sport: int, dst: str, dport: int) -> list[str]:
    return ["conntrack", "-L", *_original_tuple(src, sport, dst, dport)]


def conntrack_delete(src: str, sport: int, dst: str, dport: int) -> list[str]:
    return ["conntrack", "-D", *_original_tuple(src, sport, dst, dport)]


def _original_tuple(src: str, sport: int, dst: str, dport: int) -> list[str]:
    return [
        "-p", "udp", "--orig-src", src, "--orig-dst", dst, "--sport", str(sport),
        "--dport", str(dport),
    ]  # fmt: skip


def conntrack_insert(
    old: ConntrackEntry, new_src: str, new_sport: int, timeout_s: int
) -> list[str]:
    """A new path's entry that belongs to `old`'s connection: the same destination, the same
    DNAT target and mark, established; source-NATed, if `old` was, to the same address (the
    kernel keeps each path's own port: the new path's client port, as masquerade would pick
    when it is free). The reply tuple is given un-NATed: with --dst-nat / --src-nat the
    kernel sets up the binding itself (measured: a reply tuple given NATed creates an entry
    whose packets are not translated)."""
    original = old.original
    argv = [
        "conntrack", "-I", "-p", "udp",
        "--orig-src", new_src, "--orig-dst", original.dst,
        "--sport", str(new_sport), "--dport", str(original.dport),
        "--reply-src", original.dst, "--reply-dst", new_src,
        "--reply-port-src", str(original.dport), "--reply-port-dst", str(new_sport),
        "--timeout", str(timeout_s), "--status", "SEEN_REPLY,ASSURED",
    ]  # fmt: skip
    if old.mark:
        argv += ["--mark", str(old.mark)]
    if old.dnat_target is not None:
        ip, port = old.dnat_target
        argv += ["--dst-nat", f"{ip}:{port}"]
    if old.snat_source is not None:
        argv += ["--src-nat", old.snat_source[0]]
    return argv
