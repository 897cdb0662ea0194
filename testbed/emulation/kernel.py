"""The kernel variants' middlebox on the router host: applying and removing its rules,
reading its conntrack table, and checking before a run that this kernel can do it.

Rules and commands come from qasm/kernel/netfilter.py; this module runs them in the router's
network namespace (`popen` from its Mininet host). Each run starts from an empty conntrack
table and the variant's rules, and ends with both removed (the namespace itself goes with the
emulation).
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence

from qasm.kernel.netfilter import (
    ConntrackEntry,
    KernelSettings,
    kube_proxy_rules,
    kube_proxy_teardown,
    nft_ruleset,
    nft_teardown,
    parse_conntrack,
    service_entries,
)
from testbed.emulation.links import scratch_namespace

COMMAND_TIMEOUT_S = 10.0
SAMPLE_INTERVAL_S = 0.5
# What conntrack keeps for UDP, recorded in metadata.json (net.netfilter.*).
SYSCTLS = (
    "net.netfilter.nf_conntrack_udp_timeout",
    "net.netfilter.nf_conntrack_udp_timeout_stream",
    "net.netfilter.nf_conntrack_max",
)
REQUIRED_TOOLS = ("nft", "iptables-restore", "conntrack", "nsenter")

Popen = Callable[..., subprocess.Popen]


class KernelError(RuntimeError):
    """The router's kernel cannot do what the variant needs; the message says what."""


def _run(popen: Popen, argv: Sequence[str], stdin: str | None = None) -> tuple[int, str, str]:
    process = popen(
        list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        out, err = process.communicate(stdin, timeout=COMMAND_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
    return process.returncode, out, err


class RouterKernel:
    def __init__(self, popen: Popen) -> None:
        self.popen = popen
        self._applied: KernelSettings | None = None

    def apply(self, settings: KernelSettings) -> None:
        """An empty conntrack table and the variant's rules; KernelError says what failed."""
        self.clear()
        script = nft_ruleset(settings)
        if script:
            self._check(["nft", "-f", "-"], script, "nftables rules")
        self._applied = settings
        if "loadbalancer" in settings.functions:
            self._check(
                ["iptables-restore", "--noflush"], kube_proxy_rules(settings), "kube-proxy rules"
            )

    def clear(self) -> None:
        """Removes the rules this module applied and every conntrack entry."""
        for argv in nft_teardown():
            _run(self.popen, argv)
        if self._applied is not None and "loadbalancer" in self._applied.functions:
            _run(self.popen, ["iptables-restore", "--noflush"], kube_proxy_teardown(self._applied))
        self._applied = None
        _run(self.popen, ["conntrack", "-F"])

    def ruleset(self) -> str:
        """What the router runs now: nftables' ruleset and iptables' nat table (kube-proxy's
        rules, on iptables' nft backend they appear in both)."""
        _, nft, _ = _run(self.popen, ["nft", "list", "ruleset"])
        _, iptables, _ = _run(self.popen, ["iptables-save", "-t", "nat"])
        return f"# nft list ruleset\n{nft}\n# iptables-save -t nat\n{iptables}"

    def entries(self) -> list[ConntrackEntry]:
        _, out, _ = _run(self.popen, ["conntrack", "-L", "-p", "udp"])
        return parse_conntrack(out)

    def sysctls(self) -> dict[str, int | None]:
        values: dict[str, int | None] = {}
        for name in SYSCTLS:
            code, out, _ = _run(self.popen, ["sysctl", "-n", name])
            values[name] = int(out) if code == 0 and out.strip().isdigit() else None
        return values

    def _check(self, argv: list[str], stdin: str, what: str) -> None:
        code, _, err = _run(self.popen, argv, stdin)
        if code != 0:
            raise KernelError(f"{what} refused by the router's kernel: {err.strip()[:300]}")


class ConntrackSampler:
    """Counts each client's conntrack entries every SAMPLE_INTERVAL_S while a run goes on
    (the port-cycling story: how many a connection holds over time)."""

    def __init__(
        self, kernel: RouterKernel, clients: dict[str, Iterable[str]], service: tuple[str, int]
    ) -> None:
        self.kernel = kernel
        self.clients = {name: tuple(ips) for name, ips in clients.items()}
        self.service = service
        self.samples: dict[str, list[list[float]]] = {name: [] for name in clients}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> ConntrackSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self._stop.set()
        self._thread.join(timeout=COMMAND_TIMEOUT_S)

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL_S):
            now = time.monotonic()
            entries = self.kernel.entries()
            for name, ips in self.clients.items():
                held = len(service_entries(entries, ips, self.service))
                self.samples[name].append([round(now, 3), held])


def probe() -> str | None:
    """Why this machine cannot run the kernel variants (None if it can): their tools, and
    nftables, iptables' statistic match and conntrack in a network namespace."""
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not installed (run `make setup`)"
    with scratch_namespace("k") as namespace:

        def popen(argv, **kwargs):
            return subprocess.Popen(["ip", "netns", "exec", namespace, *argv], **kwargs)

        settings = KernelSettings(
            "netfilter-qasm", ("firewall", "ratelimit", "nat", "loadbalancer"), "10.2.0.100",
            4433, "10.1.0.0/16", "lo", ("10.2.4.1", "10.2.4.2"), "10.2.4.0/24", 1000, 100,
            "10.2.0.254",
        )  # fmt: skip
        kernel = RouterKernel(popen)
        try:
            kernel.apply(settings)
        except KernelError as exc:
            return str(exc)
        code, _, err = _run(popen, ["conntrack", "-L"])
        if code != 0:
            return f"conntrack cannot read the kernel's table: {err.strip()[:200]}"
        kernel.clear()
    return None
