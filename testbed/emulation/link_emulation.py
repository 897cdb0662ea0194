"""Delay, jitter and loss on an emulation's links, and what metadata.json says about them.

The topology declares per-link conditions (`link_ends()`: host, host-side interface,
`LinkConditions`); bandwidth is already applied by Mininet's TCLink when the network is
built. `EmulatedLinks.apply` adds delay, jitter and loss on the host end of every impaired
link with the method this kernel supports (`testbed.emulation.links.emulation_method`: netem, else
the NFQUEUE delay line with xt_statistic loss). Nothing asked is ever dropped on the floor:
if no method works here, or applying one fails, the run stops with the reason and the link.

Delay lines are processes in the hosts' namespaces; each is recorded in the run's ownership
record (so `qasm clean` kills it after a crash), checked after every run (`failure()`), and
removed before Mininet stops the network.

Fidelity: when any link asks for delay or loss, `measure()` runs the same method on a twin
veth pair (`testbed.emulation.links.measure_fidelity`, a fresh namespace pair, not the Mininet link:
the switch only forwards once a controller runs) with the asked delay, jitter and loss, and
records asked vs measured per direction, all cases on one pair after one unimpaired baseline.
~200 probes per case, fewer spread ones for jitter (measured: 4 s for three cases), enough to
catch a method that does not honour delay (error ≪ 1 ms measured) though not to pin a loss
rate of 1 % more closely than its 95 % interval, which is recorded with it.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from testbed.emulation import links
from testbed.emulation.links import LinkConditions, LinkEmulation, LinkEmulationError

FIDELITY_PROBES = 200
FIDELITY_INTERVAL_S = 0.002
FIDELITY_MAX_PROBING_S = 0.6  # a jittered case spreads its probes: fewer of them


class LinkSetupError(RuntimeError):
    """The asked link conditions cannot be emulated here; the message names the link."""


@dataclass(frozen=True)
class LinkEnd:
    host: str
    intf: str
    conditions: LinkConditions


def select_method(ends: Sequence[LinkEnd]) -> str | None:
    """The method for these links: None when none asks for delay, jitter or loss (and no
    method works here); LinkSetupError when one asks and no method works."""
    impaired = [end for end in ends if end.conditions.impaired]
    try:
        return links.emulation_method()
    except LinkEmulationError as exc:
        if not impaired:
            return None
        raise LinkSetupError(
            f"link {impaired[0].intf} asks for {_asked(impaired[0].conditions)}, but {exc}"
        ) from exc


def _asked(conditions: LinkConditions) -> str:
    asked = [
        f"{name}={getattr(conditions, name):g}"
        for name in ("delay_ms", "jitter_ms", "loss_pct")
        if getattr(conditions, name)
    ]
    return ", ".join(asked)


@dataclass
class EmulatedLinks:
    """Owns the delay/loss emulation of every impaired link end of one emulation."""

    method: str | None
    ends: list[LinkEnd]
    applied: list[LinkEmulation] = field(default_factory=list)
    fidelity: list[dict] = field(default_factory=list)
    fidelity_seconds: float | None = None  # how long measuring it took (0 when cached)

    @classmethod
    def apply(
        cls,
        ends: Sequence[LinkEnd],
        popen_of: Callable[[str], Callable],
        own: Callable[[int, str], None],
        seed: int | None = None,
    ) -> EmulatedLinks:
        """Applies every impaired end; `popen_of(host)` starts argv in the host's namespace,
        `own(pid, what)` records a process for clean-up. On failure, removes what it applied
        and raises LinkSetupError naming the link."""
        emulated = cls(select_method(ends), list(ends))
        try:
            for index, end in enumerate(ends):
                if not end.conditions.impaired:
                    continue
                try:
                    applied = links.apply_link_conditions(
                        end.intf,
                        end.conditions,
                        popen_of(end.host),
                        method=emulated.method,
                        seed=None if seed is None else seed + index,
                    )
                except LinkEmulationError as exc:
                    raise LinkSetupError(
                        f"link {end.intf} ({_asked(end.conditions)}): {exc}"
                    ) from exc
                emulated.applied.append(applied)
                if applied.delay_line is not None:
                    own(applied.delay_line.pid, f"delay line on {end.intf}")
        except BaseException:
            emulated.remove()
            raise
        return emulated

    @property
    def delay_line_pids(self) -> list[int]:
        return [a.delay_line.pid for a in self.applied if a.delay_line is not None]

    @property
    def has_delay(self) -> bool:
        return any(end.conditions.delay_ms for end in self.ends)

    def failure(self) -> str | None:
        """Why some link no longer emulates its conditions, naming it; None if all do."""
        for applied in self.applied:
            reason = applied.failure()
            if reason:
                return f"link {applied.intf}: {reason}"
        return None

    def remove(self) -> list[str]:
        problems = []
        for applied in reversed(self.applied):
            problems += [f"link {applied.intf}: {p}" for p in applied.remove()]
        return problems

    def measure(self) -> list[dict]:
        """Asked vs measured, once per distinct impaired condition (see the module doc)."""
        distinct = {
            replace(end.conditions, bw_mbit=None): None
            for end in self.ends
            if end.conditions.impaired
        }
        if self.method is None or not distinct:
            return []
        started = time.monotonic()
        self.fidelity = [result.to_dict() for result in _measured(tuple(distinct), self.method)]
        self.fidelity_seconds = round(time.monotonic() - started, 2)
        return self.fidelity

    def record(self) -> dict:
        """For metadata.json: the method, every link's asked conditions and how each
        parameter is emulated, and the fidelity measured at start."""
        applied = {a.intf: a for a in self.applied}
        by_intf = {}
        for end in self.ends:
            if end.intf in applied:
                entry = applied[end.intf].record()
            else:
                entry = {
                    "interface": end.intf,
                    "method": None,
                    "conditions": end.conditions.to_dict(),
                    "emulated_by": links.describe(end.conditions, self.method or ""),
                }
            entry["host"] = end.host
            by_intf[end.intf] = entry
        return {
            "method": self.method,
            "bandwidth": "tc htb on both link ends (Mininet TCLink)",
            "links": by_intf,
            "fidelity": self.fidelity,
            "fidelity_seconds": self.fidelity_seconds,
        }


@functools.cache
def _measured(cases: tuple[LinkConditions, ...], method: str) -> list[links.Fidelity]:
    # One namespace pair and one unimpaired baseline for all cases; cached per process, so
    # a sweep's emulations with the same conditions measure once.
    return links.measure_fidelity(
        cases,
        probes=FIDELITY_PROBES,
        interval_s=FIDELITY_INTERVAL_S,
        method=method,
        max_probing_s=FIDELITY_MAX_PROBING_S,
    )
