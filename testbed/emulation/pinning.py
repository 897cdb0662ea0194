"""Optional CPU pinning: the network on one CPU, the QUIC endpoints on the others.

Why: on these 2-core machines the scheduler moves the controller, Open vSwitch's userspace
datapath, the delay lines and the endpoints between cores at will, and a run that happens to
put the switch and a CPU-bound aioquic receiver on one core measures the scheduler, not the
middlebox. Pinning makes that placement the same in every run.

Layout (`plan_layout`), over the CPUs this process may use (`os.sched_getaffinity(0)`):
- `network`: the first CPU: the controller (os-ken), every thread of `ovs-vswitchd` (the
  userspace datapath forwards every packet), and the delay lines of link emulation.
- `endpoints`: every other CPU: servers, clients and tcpdump captures, left to the scheduler
  within that set. With 2 CPUs that is one core for all endpoints: a client and a server
  then share it (aioquic: ~4.4 MB/s instead of ~7.5 MB/s, ../shared/AIOQUIC.md), so pinned
  and unpinned goodput are not comparable; compare variants within one run, as always.
Fewer than 2 CPUs: pinning is refused (nothing to separate).

`ovs-vswitchd` is a machine-wide daemon: `OvsAffinity` saves each of its threads' affinity,
pins them, and restores them on exit (also on exceptions). The saved masks are also written
into the run's ownership record, so `qasm clean` restores them after a crash.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

OVS_PIDFILE = Path("/var/run/openvswitch/ovs-vswitchd.pid")


class PinningError(RuntimeError):
    """Pinning was asked for but cannot be done here."""


@dataclass(frozen=True)
class CpuLayout:
    network: tuple[int, ...]  # controller, ovs-vswitchd, delay lines
    endpoints: tuple[int, ...]  # servers, clients, captures

    def to_dict(self) -> dict:
        return {
            "network": list(self.network),
            "endpoints": list(self.endpoints),
            "network_processes": ["controller", "ovs-vswitchd (all threads)", "delay lines"],
            "endpoint_processes": ["servers", "clients", "tcpdump"],
        }


def plan_layout(cpus: Iterable[int]) -> CpuLayout:
    available = sorted(set(cpus))
    if len(available) < 2:
        raise PinningError(
            f"cpu pinning needs at least 2 CPUs, this process may use {len(available)} "
            f"({available})"
        )
    return CpuLayout(network=(available[0],), endpoints=tuple(available[1:]))


def pin_in_child(cpus: tuple[int, ...] | None, then: Callable[[], None] | None = None):
    """A preexec_fn that pins the new process (before exec, so every thread it starts
    inherits the mask), after running `then` (e.g. the parent-death signal)."""

    def preexec() -> None:
        if then is not None:
            then()
        if cpus:
            os.sched_setaffinity(0, cpus)

    return preexec


def _threads(pid: int) -> list[int]:
    try:
        return [int(entry.name) for entry in Path(f"/proc/{pid}/task").iterdir()]
    except OSError:
        return []


def ovs_vswitchd_pid(pidfile: Path = OVS_PIDFILE) -> int:
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError) as exc:
        raise PinningError(f"cannot read ovs-vswitchd's pid from {pidfile} ({exc})") from exc
    if not Path(f"/proc/{pid}").exists():
        raise PinningError(f"ovs-vswitchd (pid {pid} in {pidfile}) is not running")
    return pid


class OvsAffinity:
    """Pins every thread of ovs-vswitchd to `cpus`; `restore()` puts back what it saved.

    Threads that ovs-vswitchd starts while pinned inherit the pin; `restore()` gives those
    the main thread's original mask.
    """

    def __init__(self, cpus: tuple[int, ...], pid: int | None = None) -> None:
        self.cpus = cpus
        self.pid = pid if pid is not None else ovs_vswitchd_pid()
        self.saved: dict[int, list[int]] = {}

    def pin(self) -> None:
        for tid in _threads(self.pid):
            with contextlib.suppress(ProcessLookupError):
                self.saved[tid] = sorted(os.sched_getaffinity(tid))
                os.sched_setaffinity(tid, self.cpus)

    def restore(self) -> list[str]:
        """Restores the saved masks; returns problems (a thread that ended is not one)."""
        return restore_affinity(self.pid, self.saved)


def restore_affinity(pid: int, saved: dict[int, list[int]]) -> list[str]:
    if not saved:
        return []
    default = saved.get(pid) or sorted({cpu for mask in saved.values() for cpu in mask})
    problems = []
    for tid in _threads(pid):
        try:
            os.sched_setaffinity(tid, saved.get(tid, default))
        except ProcessLookupError:
            continue
        except OSError as exc:
            problems.append(f"thread {tid} of ovs-vswitchd: {exc}")
    return problems
