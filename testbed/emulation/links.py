"""Link conditions (bandwidth, delay, jitter, loss) and their emulation on this machine.

Semantics (the same on both methods, and the same as Mininet's TCLink with netem): every
parameter holds **per direction**. A link with `delay_ms=10, jitter_ms=2, loss_pct=1` delays
each packet in each direction by 10 ms ± 2 ms (uniform, netem's default distribution) and drops
1 % of the packets in each direction independently, so a round trip over it takes 20 ms ± 4 ms
and loses 1 - 0.99² ≈ 2 % of request/response pairs. Packets are never reordered within a
direction (a link is a FIFO; netem with a rate behaves so).

Placement: inside the host's network namespace, on the host end of the link, for both
directions. The switch end lives in the root namespace and is read by OVS's userspace datapath
through AF_PACKET, so netfilter there never sees switched packets; the host end sees all of its
link's traffic.

Methods (`emulation_method()` probes once which one this kernel supports):
- `netem`: tc netem on the host end's egress (under Mininet's HTB class 5:1 when there is
  one) and on an IFB device that the ingress is redirected to. `rate 100gbit` makes netem keep
  FIFO order under jitter at no measurable rate cost.
- `nfqueue-delay+xt_statistic-loss` (no sch_netem, as on these machines): iptables-legacy rules
  in the mangle table, POSTROUTING -o for egress and PREROUTING -i for ingress. Loss first:
  `-m statistic --mode random --probability p -j DROP`; then `-j NFQUEUE` to a delay line
  (`testbed.emulation.delayline`) that holds each packet for delay ± jitter in FIFO order. IPv4
  only: ARP and IPv6 are not delayed or dropped on this path.

Bandwidth stays with Mininet's TCLink (topologies.clients.bandwidth): HTB on both link ends.
Delay composes with it as a pure FIFO shift: on egress the delay line holds a packet before
it enters the HTB queue, on ingress after the switch end's HTB released it; a constant delay
in series with a FIFO rate limiter gives the same departure times in either order.

Fidelity: `python -m testbed.emulation.links fidelity` measures asked vs measured delay, jitter and
loss per direction on a namespace pair; `python -m testbed.emulation.links throughput` measures the
packet rate the delay line sustains and its CPU cost.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import math
import os
import re
import secrets
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

METHOD_NETEM = "netem"
METHOD_NFQUEUE = "nfqueue-delay+xt_statistic-loss"
METHODS = (METHOD_NETEM, METHOD_NFQUEUE)
# iptables-legacy, not iptables-nft: the nft front end would need nf_tables' own `queue`
# expression for NFQUEUE, and these kernels lack CONFIG_NFT_QUEUE; the legacy xtables path
# uses xt_NFQUEUE and xt_statistic, which they have.
IPTABLES = "iptables-legacy"
RULE_COMMENT = "qasm-link"
NETEM_HANDLE = "10:"
MININET_HTB_CLASS = "5:1"  # mininet.link.TCIntf.bwCmds: root 5:0 htb, class 5:1
NETEM_FIFO_RATE = "100gbit"  # see the module docstring: FIFO order under jitter
DEFAULT_LIFETIME_S = 6 * 3600.0
READY_TIMEOUT_S = 10.0
COMMAND_TIMEOUT_S = 15.0

# A callable that starts argv inside a namespace: Mininet's `host.popen`, or `netns_popen(n)`.
Popen = Callable[..., subprocess.Popen]


class LinkConditionsError(ValueError):
    """A link parameter is out of range; the message names the parameter."""


class LinkEmulationError(RuntimeError):
    """This machine cannot emulate the asked conditions, or applying them failed."""


# --- the conditions ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Limit:
    minimum: float
    maximum: float
    description: str


LIMITS = {
    # Mininet's TCIntf accepts bandwidths up to 1000 Mbit/s (TCIntf.bwParamMax).
    "bw_mbit": Limit(0, 1000, "bandwidth per direction (HTB), Mbit/s, > 0; none: unshaped"),
    "delay_ms": Limit(0, 5000, "one-way delay per direction, ms"),
    "jitter_ms": Limit(0, 5000, "uniform ± jitter per direction, ms, at most delay_ms"),
    "loss_pct": Limit(0, 100, "random loss per direction, percent"),
    # netem's default `limit`; bounds the packets held per direction (delay × rate).
    "limit_packets": Limit(1, 100_000, "packets held per direction by the delay"),
}


@dataclass(frozen=True)
class LinkConditions:
    bw_mbit: float | None = None
    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_pct: float = 0.0
    limit_packets: int = 1000

    def __post_init__(self) -> None:
        for name, limit in LIMITS.items():
            value = getattr(self, name)
            if name == "bw_mbit" and value is None:
                continue
            integral = name == "limit_packets"
            kinds = (int,) if integral else (int, float)
            if isinstance(value, bool) or not isinstance(value, kinds):
                kind = "an integer" if integral else "a number"
                raise LinkConditionsError(f"{name}: {value!r}, expected {kind}")
            if not math.isfinite(value) or not limit.minimum <= value <= limit.maximum:
                raise LinkConditionsError(
                    f"{name}: {value!r}, expected {limit.minimum:g}..{limit.maximum:g}"
                )
        if self.bw_mbit is not None and self.bw_mbit <= 0:
            raise LinkConditionsError(f"bw_mbit: {self.bw_mbit!r}, expected > 0 (or none)")
        if self.jitter_ms > self.delay_ms:
            # netem would clamp negative delays to 0, shifting the mean above delay_ms.
            raise LinkConditionsError(
                f"jitter_ms: {self.jitter_ms!r}, expected at most delay_ms ({self.delay_ms!r})"
            )

    @property
    def impaired(self) -> bool:
        """Whether delay, jitter or loss is asked (bandwidth is TCLink's business)."""
        return bool(self.delay_ms or self.jitter_ms or self.loss_pct)

    def to_dict(self) -> dict:
        return asdict(self)


# Link kinds with their own conditions, each per direction: every client's wifi link, every
# client's lte link, every server's (and backend's) link (topologies.roles.Interface.link).
LINK_KINDS = ("wifi", "lte", "server")
IMPAIRMENTS = ("delay_ms", "jitter_ms", "loss_pct")
# Packets a delay holds per direction at most; netem's default (1000) is too few for a
# 1000 Mbit/s link with tens of ms of delay, and a full queue drops (a loss nobody asked for).
MAX_HELD_PACKETS = 100_000
DATAGRAM_BYTES = 1200


def link_conditions(bandwidths: dict, impairments: dict) -> dict[str, LinkConditions]:
    """LinkConditions per link kind from a topology's bandwidths ({kind: Mbit/s or None})
    and impairments ({"wifi_delay_ms": 25, ...}; absent or None means none)."""
    unknown = sorted(set(impairments) - {f"{k}_{n}" for k in LINK_KINDS for n in IMPAIRMENTS})
    if unknown:
        raise TypeError(f"unexpected topology parameter {unknown[0]!r}")
    conditions = {}
    for link in LINK_KINDS:
        values = {n: float(impairments.get(f"{link}_{n}") or 0) for n in IMPAIRMENTS}
        held_s = (values["delay_ms"] + values["jitter_ms"]) / 1000
        # Room for 2 x what the link carries at full rate during the longest hold (unshaped:
        # 1000 Mbit/s, TCIntf's maximum).
        rate = (bandwidths.get(link) or 1000) * 1e6 / 8 / DATAGRAM_BYTES
        limit = min(MAX_HELD_PACKETS, max(1000, int(2 * rate * held_s) + 1))
        try:
            conditions[link] = LinkConditions(
                bw_mbit=bandwidths.get(link), limit_packets=limit, **values
            )
        except LinkConditionsError as exc:
            raise ValueError(f"{link} link: {exc}") from exc
    return conditions


# --- running commands in a namespace ------------------------------------------------------------


def netns_popen(namespace: str) -> Popen:
    """A Popen-like callable that runs argv inside a named namespace (`ip netns exec`)."""

    def popen(argv: Sequence[str], **kwargs) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", namespace, *argv], **kwargs)

    return popen


def run_in(popen: Popen, argv: Sequence[str], timeout_s: float = COMMAND_TIMEOUT_S) -> str:
    """Runs argv to completion in the namespace; its stdout, or LinkEmulationError."""
    process = popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        raise LinkEmulationError(f"{' '.join(argv)}: no answer within {timeout_s:g} s") from None
    if process.returncode != 0:
        reason = (err or out).decode(errors="replace").strip()
        raise LinkEmulationError(f"{' '.join(argv)}: exit {process.returncode}: {reason}")
    return out.decode(errors="replace")


# --- command construction (pure) ----------------------------------------------------------------


@dataclass(frozen=True)
class Rule:
    """One iptables rule: `IPTABLES -t table -A chain *spec`."""

    table: str
    chain: str
    spec: tuple[str, ...]

    def add(self) -> list[str]:
        return [IPTABLES, "-w", "5", "-t", self.table, "-A", self.chain, *self.spec]

    def delete(self) -> list[str]:
        return [IPTABLES, "-w", "5", "-t", self.table, "-D", self.chain, *self.spec]


def probability(loss_pct: float) -> str:
    # xt_statistic keeps the probability as a 31-bit fraction; 11 decimals lose nothing.
    return f"{loss_pct / 100:.11f}"


def queue_numbers(ifindex: int) -> tuple[int, int]:
    """(egress, ingress) NFQUEUE numbers of an interface, unique within its namespace."""
    base = 2 * (ifindex % 32768)
    return base, base + 1


def nfqueue_rules(intf: str, conditions: LinkConditions, queues: tuple[int, int]) -> list[Rule]:
    """Loss, then delay, per direction: dropped packets never occupy the delay line."""
    rules = []
    directions = (("POSTROUTING", "-o", queues[0]), ("PREROUTING", "-i", queues[1]))
    for chain, flag, queue in directions:
        match = (flag, intf, "-m", "comment", "--comment", RULE_COMMENT)
        if conditions.loss_pct:
            statistic = ("-m", "statistic", "--mode", "random")
            drop = ("--probability", probability(conditions.loss_pct), "-j", "DROP")
            rules.append(Rule("mangle", chain, (*match, *statistic, *drop)))
        if conditions.delay_ms or conditions.jitter_ms:
            # No --queue-bypass: if the delay line is gone the link drops everything, which a
            # run notices, rather than silently carrying packets without their delay.
            rules.append(
                Rule("mangle", chain, (*match, "-j", "NFQUEUE", "--queue-num", str(queue)))
            )
    return rules


def delay_line_argv(
    conditions: LinkConditions,
    queues: tuple[int, int],
    lifetime_s: float,
    parent_pid: int | None,
    seed: int | None,
    python: str = sys.executable,
) -> list[str]:
    argv = [python, "-m", "testbed.emulation.delayline"]
    for queue in queues:
        argv += ["--queue", f"{queue}:{conditions.delay_ms:g}:{conditions.jitter_ms:g}"]
    argv += ["--limit", str(conditions.limit_packets), "--lifetime-s", f"{lifetime_s:g}"]
    if parent_pid is not None:
        argv += ["--parent-pid", str(parent_pid)]
    if seed is not None:
        argv += ["--seed", str(seed)]
    return argv


def netem_args(conditions: LinkConditions) -> list[str]:
    args = ["netem", "limit", str(conditions.limit_packets)]
    if conditions.delay_ms or conditions.jitter_ms:
        args += ["delay", f"{conditions.delay_ms:g}ms"]
        if conditions.jitter_ms:
            args += [f"{conditions.jitter_ms:g}ms"]
    if conditions.loss_pct:
        args += ["loss", f"{conditions.loss_pct:g}%"]
    return [*args, "rate", NETEM_FIFO_RATE]


def ifb_name(intf: str) -> str:
    # Lives in the host's namespace (names are per namespace) and dies with it.
    return f"i{intf}"[:15]


def netem_commands(
    intf: str, conditions: LinkConditions, under_htb: bool
) -> list[tuple[list[str], list[str] | None]]:
    """(apply, undo or None) tc/ip steps of the netem method on one host end, both
    directions; undo the applied steps in reverse order."""
    ifb = ifb_name(intf)
    netem = netem_args(conditions)
    parent = ["parent", MININET_HTB_CLASS] if under_htb else ["root"]
    return [
        (["tc", "qdisc", "add", "dev", intf, *parent, "handle", NETEM_HANDLE, *netem],
         ["tc", "qdisc", "del", "dev", intf, *parent, "handle", NETEM_HANDLE]),
        (["ip", "link", "add", ifb, "type", "ifb"], ["ip", "link", "del", ifb]),
        (["ip", "link", "set", ifb, "up"], None),
        (["tc", "qdisc", "add", "dev", intf, "handle", "ffff:", "ingress"],
         ["tc", "qdisc", "del", "dev", intf, "ingress"]),  # also deletes its filter
        (["tc", "filter", "add", "dev", intf, "parent", "ffff:", "protocol", "all", "u32",
          "match", "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", ifb], None),
        (["tc", "qdisc", "add", "dev", ifb, "root", "handle", NETEM_HANDLE, *netem], None),
    ]  # fmt: skip


def describe(conditions: LinkConditions, method: str) -> dict[str, str]:
    """How each asked parameter is emulated: for metadata, so none is silently ignored."""
    if method == METHOD_NETEM:
        delay = loss = "netem on the host end (egress) and on its IFB (ingress)"
    else:
        delay = "NFQUEUE delay line (testbed.emulation.delayline), host namespace, both directions"
        loss = "iptables-legacy xt_statistic random DROP, host namespace, both directions"
    how = {"bw_mbit": "HTB on both link ends (Mininet TCLink)" if conditions.bw_mbit else "none"}
    how["delay_ms"] = delay if conditions.delay_ms else "none"
    how["jitter_ms"] = f"{delay}, uniform ±, FIFO" if conditions.jitter_ms else "none"
    how["loss_pct"] = loss if conditions.loss_pct else "none"
    return how


# --- what this kernel supports (probed once) ----------------------------------------------------


@contextlib.contextmanager
def scratch_namespace(tag: str = "p"):
    """A throwaway namespace named qlk<hex><tag>, deleted on exit."""
    name = f"qlk{secrets.token_hex(3)}{tag}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def _probe(name: str, argv_list: list[list[str]]) -> str | None:
    """None when every command succeeds in a scratch namespace, else the first failure."""
    popen = netns_popen(name)
    try:
        for argv in argv_list:
            run_in(popen, argv)
    except (LinkEmulationError, OSError) as exc:
        return str(exc)
    return None


NFQUEUE_ZERO = ("-j", "NFQUEUE", "--queue-num", "0")


@functools.cache
def probe_methods() -> dict[str, str | None]:
    """Each method → None if this kernel supports it, else why not."""
    if os.geteuid() != 0:
        reason = "needs root (network namespaces)"
        return {METHOD_NETEM: reason, METHOD_NFQUEUE: reason}
    found: dict[str, str | None] = {}
    with scratch_namespace() as name:
        netem = ["tc", "qdisc", "add", "dev", "lo", "root", "handle", NETEM_HANDLE, "netem"]
        found[METHOD_NETEM] = _probe(name, [[*netem, "delay", "1ms", "rate", NETEM_FIFO_RATE]])
        if found[METHOD_NETEM] and "netem" in found[METHOD_NETEM].lower():
            found[METHOD_NETEM] = f"kernel has no sch_netem ({found[METHOD_NETEM]})"
        if shutil.which(IPTABLES) is None:
            found[METHOD_NFQUEUE] = f"{IPTABLES} not installed (Debian package iptables)"
        else:
            statistic = ("-m", "statistic", "--mode", "random", "--probability", "0.5")
            rule = Rule("mangle", "POSTROUTING", ("-o", "lo", *statistic, *NFQUEUE_ZERO))
            found[METHOD_NFQUEUE] = _probe(name, [rule.add()])
    return found


def emulation_method() -> str:
    """The method used on this machine: netem where the kernel has it, else the fallback."""
    found = probe_methods()
    for method in METHODS:
        if found[method] is None:
            return method
    raise LinkEmulationError(
        "no link emulation method works here: "
        + "; ".join(f"{method}: {reason}" for method, reason in found.items())
    )


# --- applying conditions to one link end ----------------------------------------------------------


@dataclass
class LinkEmulation:
    """Owns what was applied to one host end of a link; `remove()` undoes all of it."""

    intf: str
    conditions: LinkConditions
    method: str
    popen: Popen = field(repr=False)
    rules: list[Rule] = field(default_factory=list)
    undo: list[list[str]] = field(default_factory=list)
    delay_line: subprocess.Popen | None = field(default=None, repr=False)
    delay_line_report: dict | None = None
    removed: bool = False

    def __enter__(self) -> LinkEmulation:
        return self

    def __exit__(self, *exc_info) -> None:
        self.remove()

    def failure(self) -> str | None:
        """Why this link no longer emulates its conditions (the delay line ended), or None."""
        if self.delay_line is None or self.delay_line.poll() is None:
            return None
        return f"delay line on {self.intf} exited with code {self.delay_line.returncode}"

    def remove(self) -> list[str]:
        """Deletes the rules, stops the delay line, undoes tc; returns problems, if any."""
        if self.removed:
            return []
        self.removed = True
        problems = []
        for rule in reversed(self.rules):
            try:
                run_in(self.popen, rule.delete())
            except (LinkEmulationError, OSError) as exc:
                problems.append(str(exc))
        for argv in self.undo:
            try:
                run_in(self.popen, argv)
            except (LinkEmulationError, OSError) as exc:
                problems.append(str(exc))
        if self.delay_line is not None:
            self.delay_line_report = _stop(self.delay_line)
        return problems

    def record(self) -> dict:
        """For metadata.json: what was asked, how each parameter is emulated, counters."""
        return {
            "interface": self.intf,
            "method": self.method,
            "conditions": self.conditions.to_dict(),
            "emulated_by": describe(self.conditions, self.method),
            "delay_line": self.delay_line_report,
        }


def _stop(process: subprocess.Popen, grace_s: float = 5.0) -> dict | None:
    """Stops a delay line; returns its exit report (the last JSON line it printed)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        out, _ = process.communicate(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
    report = None
    for line in (out or b"").decode(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            report = json.loads(line)
    return report


def _ifindex(popen: Popen, intf: str) -> int:
    out = run_in(popen, ["ip", "-o", "link", "show", "dev", intf])
    match = re.match(r"(\d+):", out)
    if not match:
        raise LinkEmulationError(f"cannot read the ifindex of {intf}: {out.strip()!r}")
    return int(match.group(1))


def _wait_ready(process: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    line = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.1)
        if ready:
            line = process.stdout.readline()
            if b'"ready"' in line:
                return
            if not line:
                break
        elif process.poll() is not None:
            break
    report = _stop(process)
    reason = (report or {}).get("error") or line.decode(errors="replace").strip() or "no output"
    raise LinkEmulationError(f"{what} did not start: {reason}")


def apply_link_conditions(
    intf: str,
    conditions: LinkConditions,
    popen: Popen,
    *,
    method: str | None = None,
    lifetime_s: float = DEFAULT_LIFETIME_S,
    seed: int | None = None,
) -> LinkEmulation:
    """Applies delay, jitter and loss to both directions of `intf`, from inside its namespace.

    `popen(argv, **popen_kwargs)` starts argv in that namespace: Mininet's `host.popen` or
    `netns_popen(name)`. Bandwidth is not applied here (Mininet's TCLink does it).
    The delay line ends by itself after `lifetime_s`, or when this process dies. On any
    failure, whatever was applied is removed before LinkEmulationError is raised.
    """
    method = method or emulation_method()
    if method not in METHODS:
        raise LinkEmulationError(f"method: {method!r}, expected one of {', '.join(METHODS)}")
    if probe_methods().get(method) is not None:
        raise LinkEmulationError(f"{method} is not available here: {probe_methods()[method]}")
    owner = LinkEmulation(intf, conditions, method, popen)
    if not conditions.impaired:
        return owner
    try:
        if method == METHOD_NETEM:
            qdiscs = run_in(popen, ["tc", "qdisc", "show", "dev", intf])
            under_htb = re.search(r"qdisc htb 5: root", qdiscs) is not None
            for argv, undo in netem_commands(intf, conditions, under_htb):
                run_in(popen, argv)
                if undo is not None:
                    owner.undo.insert(0, undo)
        else:
            queues = queue_numbers(_ifindex(popen, intf))
            if conditions.delay_ms or conditions.jitter_ms:
                argv = delay_line_argv(conditions, queues, lifetime_s, os.getpid(), seed)
                owner.delay_line = popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                _wait_ready(owner.delay_line, f"delay line on {intf}")
            for rule in nfqueue_rules(intf, conditions, queues):
                run_in(popen, rule.add())
                owner.rules.append(rule)
    except BaseException:
        owner.remove()
        raise
    return owner


# --- measuring fidelity ---------------------------------------------------------------------------

# As in testbed.emulation.network: veth offloads off, else UDP checksums break through OVS
# userspace.
OFFLOADS_OFF = [arg for offload in ("tx", "rx", "tso", "gso", "gro") for arg in (offload, "off")]
PROBE = struct.Struct("!Idd")  # sequence, sender's send time, echo's receive time (monotonic)
# Beyond the asked round trip: the unimpaired veth pair answers within a millisecond; the
# rest is scheduling slack on a loaded 2-core machine.
REPLY_WAIT_S = 0.3
# The prober tells the echo it is done, so a measurement does not wait out the echo's
# deadline (1.5 s each); several copies, as the link under test may drop some.
STOP = b"stop"
STOP_COPIES = 8


@dataclass
class NamespacePair:
    """Two namespaces joined by a veth pair: what a Mininet link is. Names start with qlk."""

    prefix: str = field(default_factory=lambda: f"qlk{secrets.token_hex(3)}")
    subnet: str = "10.254.0"

    @property
    def names(self) -> tuple[str, str]:
        return f"{self.prefix}a", f"{self.prefix}b"

    @property
    def interfaces(self) -> tuple[str, str]:
        return f"{self.prefix}x", f"{self.prefix}y"

    @property
    def addresses(self) -> tuple[str, str]:
        return f"{self.subnet}.1", f"{self.subnet}.2"

    def popen(self, side: int) -> Popen:
        return netns_popen(self.names[side])

    def __enter__(self) -> NamespacePair:
        try:
            for name in self.names:
                subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
            (a, b), (x, y) = self.names, self.interfaces
            subprocess.run(
                ["ip", "link", "add", x, "netns", a, "type", "veth", "peer", "name", y, "netns", b],
                check=True,
                capture_output=True,
            )
            for side in (0, 1):
                run = functools.partial(run_in, self.popen(side))
                intf, address = self.interfaces[side], self.addresses[side]
                run(["ip", "addr", "add", f"{address}/24", "dev", intf])
                run(["ip", "link", "set", intf, "up"])
                run(["ip", "link", "set", "lo", "up"])
                # As in the testbed's emulation: no offloads on veths.
                with contextlib.suppress(LinkEmulationError, OSError):
                    run(["ethtool", "-K", intf, *OFFLOADS_OFF])
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        for name in self.names:  # deleting a namespace deletes its veth end, hence the pair
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)

    def start(self, side: int, argv: list[str]) -> subprocess.Popen:
        return self.popen(side)(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _options(**options) -> list[str]:
    """Command-line options from keywords: interval_s=0.002 → --interval-s 0.002."""
    argv = []
    for name, value in options.items():
        argv += [
            f"--{name.replace('_', '-')}",
            f"{value:g}" if isinstance(value, float) else str(value),
        ]
    return argv


def _json_output(process: subprocess.Popen, timeout_s: float) -> dict:
    try:
        out, err = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
    lines = out.decode(errors="replace").strip().splitlines()
    if not lines:
        raise LinkEmulationError(f"no report: {err.decode(errors='replace').strip()}")
    return json.loads(lines[-1])


def echo_main(bind: str, duration_s: float) -> dict:
    """UDP echo that stamps its receive time; reports how many probes it received."""
    host, port = bind.rsplit(":", 1)
    received = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, int(port)))
        print(json.dumps({"event": "ready"}), flush=True)
        end = time.monotonic() + duration_s
        while (remaining := end - time.monotonic()) > 0:
            sock.settimeout(remaining)
            try:
                data, peer = sock.recvfrom(65535)
            except TimeoutError:
                break
            if data == STOP:
                break
            if len(data) < PROBE.size:
                continue
            received += 1
            sequence, sent, _ = PROBE.unpack_from(data)
            reply = PROBE.pack(sequence, sent, time.monotonic()) + data[PROBE.size :]
            sock.sendto(reply, peer)
    return {"received": received}


def probe_main(target: str, count: int, interval_s: float, size: int, wait_s: float) -> dict:
    """Sends `count` probes at a fixed interval; returns one-way delays of the echoed ones."""
    host, port = target.rsplit(":", 1)
    forward, backward = {}, {}
    padding = b"\0" * max(0, size - PROBE.size)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((host, int(port)))
        sock.setblocking(False)
        start = time.monotonic()
        sent = 0
        end = start + count * interval_s + wait_s
        while (now := time.monotonic()) < end:
            if sent < count and now >= start + sent * interval_s:
                with contextlib.suppress(OSError):  # ENOBUFS etc.: counted as lost
                    sock.send(PROBE.pack(sent, now, 0.0) + padding)
                sent += 1
                continue
            next_send = start + sent * interval_s if sent < count else end
            ready, _, _ = select.select([sock], [], [], max(0.0, min(next_send, end) - now))
            while ready:
                try:
                    data = sock.recv(65535)
                except (BlockingIOError, ConnectionRefusedError):
                    break
                arrived = time.monotonic()
                sequence, sent_at, echoed_at = PROBE.unpack_from(data)
                forward[sequence] = (echoed_at - sent_at) * 1000
                backward[sequence] = (arrived - echoed_at) * 1000
        for _ in range(STOP_COPIES):
            with contextlib.suppress(OSError):
                sock.send(STOP)
    return {
        "sent": sent,
        "forward_ms": list(forward.values()),
        "backward_ms": list(backward.values()),
    }


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a binomial proportion."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = (
        z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    )
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class DirectionFidelity:
    delay_ms: float  # mean one-way delay minus the unimpaired link's
    jitter_ms: float  # √3 · σ: the half-width of the uniform distribution with that σ
    loss_pct: float
    loss_ci_pct: tuple[float, float]
    sent: int  # packets that entered this direction
    lost: int
    samples: int  # delays measured (probes that completed the round trip)


@dataclass(frozen=True)
class Fidelity:
    asked: LinkConditions
    method: str
    probes: int
    interval_s: float
    forward: DirectionFidelity  # from the impaired end (egress)
    backward: DirectionFidelity  # towards the impaired end (ingress)

    def to_dict(self) -> dict:
        return {
            "asked": self.asked.to_dict(),
            "method": self.method,
            "probes": self.probes,
            "interval_s": self.interval_s,
            "forward": asdict(self.forward),
            "backward": asdict(self.backward),
        }


def _direction(
    delays: list[float], base: float, arrived: int, sent: int, base_var: float
) -> DirectionFidelity:
    lost = sent - arrived
    low, high = wilson_interval(lost, sent)
    variance = statistics.pvariance(delays) if len(delays) > 1 else 0.0
    return DirectionFidelity(
        delay_ms=round(statistics.fmean(delays) - base, 3) if delays else float("nan"),
        jitter_ms=round(math.sqrt(3 * max(0.0, variance - base_var)), 3),
        loss_pct=round(100 * lost / sent, 3) if sent else float("nan"),
        loss_ci_pct=(round(100 * low, 3), round(100 * high, 3)),
        sent=sent,
        lost=lost,
        samples=len(delays),
    )


def measure_fidelity(
    cases: Sequence[LinkConditions],
    probes: int = 1000,
    interval_s: float = 0.002,
    size: int = 200,
    method: str | None = None,
    spread_for_jitter: bool = True,
    max_probing_s: float | None = None,
) -> list[Fidelity]:
    """Asked vs measured per direction on a fresh namespace pair, conditions on side 0.

    Probes are UDP datagrams to an echo that stamps its receive time; all namespaces share
    one CLOCK_MONOTONIC, so each direction's one-way delay is measured on its own, minus the
    unimpaired link's (measured first). Forward loss comes from the echo's own count.
    With `spread_for_jitter`, probes of a jittered case are sent at least 2 × jitter + 1 ms
    apart: closer packets are held back by FIFO order (no reordering), which raises the mean
    and narrows the spread, and that would hide whether the asked distribution is honoured;
    `max_probing_s` then bounds that case's probing time by sending fewer probes.
    """
    method = method or emulation_method()
    results = []
    with NamespacePair() as pair:
        base = _measure(pair, probes, interval_s, size, REPLY_WAIT_S)
        base_forward = statistics.fmean(base["forward_ms"])
        base_backward = statistics.fmean(base["backward_ms"])
        var_forward = statistics.pvariance(base["forward_ms"])
        var_backward = statistics.pvariance(base["backward_ms"])
        for conditions in cases:
            interval = interval_s
            count = probes
            if spread_for_jitter and conditions.jitter_ms:
                interval = max(interval_s, (2 * conditions.jitter_ms + 1) / 1000)
                if max_probing_s is not None:  # fewer, spread probes: a time budget per case
                    count = max(1, min(probes, int(max_probing_s / interval)))
            with apply_link_conditions(
                pair.interfaces[0], conditions, pair.popen(0), method=method, seed=1
            ):
                # Replies still in flight after the last probe: a round trip at most.
                wait = REPLY_WAIT_S + 2 * (conditions.delay_ms + conditions.jitter_ms) / 1000
                raw = _measure(pair, count, interval, size, wait)
            results.append(
                Fidelity(
                    asked=conditions,
                    method=method,
                    probes=raw["sent"],
                    interval_s=interval,
                    forward=_direction(
                        raw["forward_ms"], base_forward, raw["received"], raw["sent"], var_forward
                    ),
                    backward=_direction(
                        raw["backward_ms"],
                        base_backward,
                        len(raw["backward_ms"]),
                        raw["received"],
                        var_backward,
                    ),
                )
            )
    return results


def _measure(pair: NamespacePair, count: int, interval_s: float, size: int, wait_s: float) -> dict:
    """One probe run: the prober's report plus the echo's count of received probes, which
    waits `wait_s` after the last send for replies still in flight."""
    port = 40000 + secrets.randbelow(20000)
    duration = count * interval_s + wait_s + 1.5
    python = [sys.executable, "-m", "testbed.emulation.links"]
    echo_args = _options(bind=f"{pair.addresses[1]}:{port}", duration_s=duration)
    echo = pair.start(1, [*python, "echo", *echo_args])
    try:
        ready, _, _ = select.select([echo.stdout], [], [], READY_TIMEOUT_S)
        if not ready or b"ready" not in echo.stdout.readline():
            raise LinkEmulationError("echo did not start")
        probe_args = _options(
            target=f"{pair.addresses[1]}:{port}",
            count=count,
            interval_s=interval_s,
            size=size,
            wait_s=wait_s,
        )
        probe = pair.start(0, [*python, "probe", *probe_args])
        result = _json_output(probe, duration + 10)
        result["received"] = _json_output(echo, duration + 10)["received"]
    finally:
        if echo.poll() is None:
            echo.kill()
            echo.communicate()
    return result


def format_fidelity(results: Sequence[Fidelity]) -> str:
    header = (
        "asked delay/jitter/loss | fwd delay  jitter  loss% [95% CI]        "
        "| bwd delay  jitter  loss% [95% CI]        | probes @ interval"
    )
    lines = [f"method: {results[0].method}" if results else "method: -", header]
    for r in results:
        cells = [f"{r.asked.delay_ms:>5g} ms/{r.asked.jitter_ms:>3g} ms/{r.asked.loss_pct:>3g} %"]
        for d in (r.forward, r.backward):
            ci = f"[{d.loss_ci_pct[0]:.2f}, {d.loss_ci_pct[1]:.2f}]"
            cells.append(f"{d.delay_ms:9.2f} {d.jitter_ms:7.2f} {d.loss_pct:6.2f} {ci:<16}")
        cells.append(f"{r.probes} @ {r.interval_s * 1000:g} ms")
        lines.append(" | ".join(cells))
    return "\n".join(lines)


DEFAULT_CASES = tuple(
    LinkConditions(delay_ms=delay, jitter_ms=jitter, loss_pct=loss)
    for delay in (10, 50)
    for jitter in (0, 5)
    for loss in (0, 1, 5)
)


# --- delay line throughput ------------------------------------------------------------------------


def sink_main(bind: str, duration_s: float) -> dict:
    """Counts datagrams and their one-way delays (sender's monotonic stamp in the first 8 bytes)."""
    host, port = bind.rsplit(":", 1)
    received, delays = 0, []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        sock.bind((host, int(port)))
        print(json.dumps({"event": "ready"}), flush=True)
        end = time.monotonic() + duration_s
        while (remaining := end - time.monotonic()) > 0:
            sock.settimeout(remaining)
            try:
                data = sock.recv(65535)
            except TimeoutError:
                break
            received += 1
            if received % 16 == 0:
                delays.append((time.monotonic() - struct.unpack_from("!d", data)[0]) * 1000)
    delays.sort()
    return {
        "received": received,
        "delay_ms_p50": round(delays[len(delays) // 2], 3) if delays else None,
        "delay_ms_p99": round(delays[int(len(delays) * 0.99)], 3) if delays else None,
    }


def blast_main(target: str, rate_pps: float, seconds: float, size: int) -> dict:
    """Sends at a fixed rate (paced per half millisecond) for `seconds`.

    Packets held by an egress delay still count against the sending socket's SO_SNDBUF
    (the skb is orphaned only at the veth), so the buffer must hold rate × delay packets:
    212 KB (wmem_default here) holds ~90 datagrams of 1200 bytes. We ask for 8 MB.
    """
    host, port = target.rsplit(":", 1)
    padding = b"\0" * max(0, size - 8)
    sent = failed = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8 << 20)
        sock.connect((host, int(port)))
        sock.setblocking(False)
        start = time.monotonic()
        while (now := time.monotonic()) < start + seconds:
            due = int((now - start) * rate_pps)
            while sent < due:
                try:
                    sock.send(struct.pack("!d", time.monotonic()) + padding)
                except OSError:
                    failed += 1
                sent += 1
            time.sleep(0.0005)
    return {"sent": sent, "send_failed": failed}


def measure_throughput(
    rates_pps: Sequence[float], seconds: float = 5.0, size: int = 1200, delay_ms: float = 10.0
) -> list[dict]:
    """Per offered rate: delivered fraction, delay percentiles, delay line CPU share."""
    results = []
    python = [sys.executable, "-m", "testbed.emulation.links"]
    with NamespacePair() as pair:
        for rate in rates_pps:
            conditions = LinkConditions(delay_ms=delay_ms, limit_packets=10_000)
            port = 40000 + secrets.randbelow(20000)
            target = f"{pair.addresses[1]}:{port}"
            emulation = apply_link_conditions(pair.interfaces[0], conditions, pair.popen(0))
            try:
                sink_args = _options(bind=target, duration_s=seconds + 2)
                sink = pair.start(1, [*python, "sink", *sink_args])
                select.select([sink.stdout], [], [], READY_TIMEOUT_S)
                sink.stdout.readline()
                blast_args = _options(target=target, rate_pps=rate, seconds=seconds, size=size)
                blast = pair.start(0, [*python, "blast", *blast_args])
                blasted = _json_output(blast, seconds + 10)
                sent = blasted["sent"]
                got = _json_output(sink, seconds + 10)
            finally:
                emulation.remove()
            report = emulation.delay_line_report or {}
            queue = next(iter(report.get("queues", {}).values()), {})
            results.append(
                {
                    "offered_pps": rate,
                    "sent": sent,
                    "send_failed": blasted["send_failed"],
                    "delivered_pct": round(100 * got["received"] / sent, 2) if sent else None,
                    "delivered_pps": round(got["received"] / seconds),
                    "delay_ms_p50": got["delay_ms_p50"],
                    "delay_ms_p99": got["delay_ms_p99"],
                    "delay_line_cpu_pct": round(100 * report.get("cpu_s", 0) / seconds, 1),
                    "delay_line_max_held": queue.get("max_held"),
                    "kernel_dropped": queue.get("kernel_dropped_full"),
                    "overruns": report.get("overruns"),
                }
            )
    return results


# --- command line --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testbed.emulation.links")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("method", help="print the emulation method this machine uses")
    fidelity = commands.add_parser("fidelity", help="asked vs measured delay, jitter, loss")
    fidelity.add_argument("--probes", type=int, default=1000)
    fidelity.add_argument("--interval-s", type=float, default=0.002)
    fidelity.add_argument("--json", action="store_true")
    throughput = commands.add_parser("throughput", help="packets/s the delay line sustains")
    throughput.add_argument("--rates", default="2000,6500,10000,20000")
    throughput.add_argument("--seconds", type=float, default=5.0)
    throughput.add_argument("--json", action="store_true")
    echo = commands.add_parser("echo", help="(internal) UDP echo for fidelity probes")
    echo.add_argument("--bind", required=True)
    echo.add_argument("--duration-s", type=float, required=True)
    probe = commands.add_parser("probe", help="(internal) fidelity prober")
    probe.add_argument("--target", required=True)
    probe.add_argument("--count", type=int, required=True)
    probe.add_argument("--interval-s", type=float, required=True)
    probe.add_argument("--size", type=int, default=200)
    probe.add_argument("--wait-s", type=float, default=1.0)
    sink = commands.add_parser("sink", help="(internal) UDP sink for throughput")
    sink.add_argument("--bind", required=True)
    sink.add_argument("--duration-s", type=float, required=True)
    blast = commands.add_parser("blast", help="(internal) paced UDP sender")
    blast.add_argument("--target", required=True)
    blast.add_argument("--rate-pps", type=float, required=True)
    blast.add_argument("--seconds", type=float, required=True)
    blast.add_argument("--size", type=int, default=1200)
    args = parser.parse_args(argv)

    if args.command == "echo":
        print(json.dumps(echo_main(args.bind, args.duration_s)), flush=True)
    elif args.command == "probe":
        report = probe_main(args.target, args.count, args.interval_s, args.size, args.wait_s)
        print(json.dumps(report), flush=True)
    elif args.command == "sink":
        print(json.dumps(sink_main(args.bind, args.duration_s)), flush=True)
    elif args.command == "blast":
        print(json.dumps(blast_main(args.target, args.rate_pps, args.seconds, args.size)))
    else:
        try:
            method = emulation_method()
        except LinkEmulationError as exc:
            print(f"links: {exc}", file=sys.stderr)
            return 1
        if args.command == "method":
            print(method)
        elif args.command == "fidelity":
            results = measure_fidelity(DEFAULT_CASES, args.probes, args.interval_s)
            if args.json:
                print(json.dumps([r.to_dict() for r in results]))
            else:
                print(format_fidelity(results))
        elif args.command == "throughput":
            rates = [float(rate) for rate in args.rates.split(",")]
            results = measure_throughput(rates, args.seconds)
            if args.json:
                print(json.dumps(results))
            else:
                for row in results:
                    print(" ".join(f"{key}={value}" for key, value in row.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
