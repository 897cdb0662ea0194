"""The Tracking Agent's hands in the router's kernel (variant netfilter-qasm): I/O only.

Given a `KernelPathChange`, it runs conntrack in the router's network namespace (`nsenter
--net`): reads the old path's entry, creates the new path's from it (the same DNAT target,
mark and source-NAT address, established: qasm/kernel/netfilter.py `conntrack_insert`) and
deletes a retired path's. It runs before the Client Agent's ack is sent, so the entry exists
before the client's first packet on the new path.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable

from qasm.controller.messages import KernelPathChange
from qasm.kernel.netfilter import (
    conntrack_delete,
    conntrack_get,
    conntrack_insert,
    parse_conntrack,
)

COMMAND_TIMEOUT_S = 5.0
# nf_conntrack_udp_timeout_stream's default: what an established UDP entry gets.
ENTRY_TIMEOUT_S = 120

Run = Callable[[list[str]], subprocess.CompletedProcess]


class ConntrackAnchor:
    def __init__(self, netns_pid: int, run: Run | None = None) -> None:
        self.namespace = ["nsenter", f"--net=/proc/{netns_pid}/ns/net"]
        self._run = run or _run

    def apply(self, change: KernelPathChange) -> tuple[bool, str]:
        """(whether every step worked, what was done or why not)."""
        done, ok = [], True
        if change.old is not None and change.new is not None:
            old = change.old
            listed = self._run([*self.namespace, *conntrack_get(*old)])
            entries = parse_conntrack(listed.stdout)
            if not entries:
                ok = False
                done.append(f"no conntrack entry for {old}: {listed.stderr.strip()[:120]}")
            else:
                new = change.new
                argv = conntrack_insert(entries[0], new.src_ip, new.src_port, ENTRY_TIMEOUT_S)
                created = self._run([*self.namespace, *argv])
                ok = created.returncode == 0
                done.append(
                    f"created {new}" if ok else f"create {new}: {created.stderr.strip()[:120]}"
                )
        if change.retired is not None:
            deleted = self._run([*self.namespace, *conntrack_delete(*change.retired)])
            # Absent already (never used, or timed out) is not a failure.
            done.append(f"deleted {change.retired}" if deleted.returncode == 0 else "")
        return ok, "; ".join(d for d in done if d)


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False
    )
