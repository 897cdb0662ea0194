"""How long Open vSwitch's datapath keeps an idle flow, set for the emulation's lifetime.

ovs-vswitchd caches each packet's translation in the datapath (a megaflow) and keeps it until
it has been idle `other_config:max-idle` ms, 10 s by default. Every OpenFlow table change makes
its revalidators translate every cached flow again. A middlebox that installs exact 5-tuple
rules per path (qasm, tuple, cid) leaves one cached flow per path it retired, so at a
migration rate R the cache holds about R × 10 s dead paths, each retranslated at every later
table change: work growing with R². Measured, one 64 MB active transfer through qasm: at
100 Hz 800+ cached flows, 165-223k retranslations; at 200 Hz 1.25-1.55 M retranslations,
ovs-vswitchd 5.6-6.8 s of CPU and 42-50 Mbit/s. With 1 s: ~150 flows at 100 Hz (75k), at
200 Hz 190-204k, 3.1 s of CPU and 61-62 Mbit/s. The revalidator thread's CPU at 100 Hz
(perf samples over 3 s, two runs each): 279-328 with 1 s, 208-213 with 500 ms, 155-166
with 250 ms, 105-108 with 100 ms. A live flow is never idle that long, so forwarding is the
same; an idle one comes back through one upcall (no controller).

The setting is the whole machine's (one ovs-vswitchd), so the emulation saves what was there
in its run record before changing it and puts it back at teardown, or `qasm clean` does after
a crash (testbed.emulation.ownership); emulations run one at a time.
"""

from __future__ import annotations

import subprocess

# The least ovs-vswitchd.conf.db(5) allows ("at least 500"); lower values took effect here,
# but outside the documented range.
EMULATION_MAX_IDLE_MS = 500
_KEY = "other_config:max-idle"


class DatapathSettingError(RuntimeError):
    pass


def _vsctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ovs-vsctl", "--timeout=5", *args], capture_output=True, text=True, check=False
    )


def read_max_idle() -> str | None:
    """The configured value, or None when ovs-vswitchd uses its default."""
    done = _vsctl("--if-exists", "get", "Open_vSwitch", ".", _KEY)
    if done.returncode != 0:
        raise DatapathSettingError(f"ovs-vsctl get {_KEY}: {done.stderr.strip()}")
    value = done.stdout.strip().strip('"')
    return value or None


def write_max_idle(value: str | None) -> None:
    """Sets the value, or removes it (ovs-vswitchd's default) for None."""
    if value is None:
        done = _vsctl("remove", "Open_vSwitch", ".", "other_config", "max-idle")
    else:
        done = _vsctl("set", "Open_vSwitch", ".", f'{_KEY}="{value}"')
    if done.returncode != 0:
        raise DatapathSettingError(f"ovs-vsctl {_KEY}={value}: {done.stderr.strip()}")
