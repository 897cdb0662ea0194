"""What each run owns on this machine, so a crashed run's leftovers can be removed, and only
those: never a broad `mn -c` that would kill another run's processes.

Before a run creates anything it writes `/run/qasm/runs/<prefix>.json` naming its runner
process; it adds every process it starts and every directory it makes outside the run
directory (a private redis-server's, under /run/qasm/redis/<prefix>). `qasm clean` removes,
for records whose runner is dead, the recorded processes (only while their start time still
matches, so a recycled pid is never killed), Mininet shells named `mininet:<prefix>...`, OVS
bridges and interfaces named with the prefix, the recorded directories (only under
/run/qasm), then the record. Runs whose runner is alive are left alone.

One emulation at a time: the runner holds an exclusive lock on /run/qasm/emulation.lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

STATE_DIR = Path(os.environ.get("QASM_STATE_DIR", "/run/qasm"))
PREFIX_PATTERN = re.compile(r"^q[0-9a-f]{4}$")


def process_start_time(pid: int) -> int | None:
    """Start time in clock ticks since boot (/proc/PID/stat field 22); None if the process
    is gone or a zombie (dead, waiting to be reaped: PID 1 of a container may never reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; fields after it follow the last ')'.
    fields = stat.rpartition(")")[2].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


@dataclass
class OwnedProcess:
    pid: int
    start_time: int
    what: str

    def alive(self) -> bool:
        return process_start_time(self.pid) == self.start_time


@dataclass
class RunRecord:
    prefix: str
    runner: OwnedProcess
    run_dir: str
    bridges: list[str] = field(default_factory=list)
    processes: list[OwnedProcess] = field(default_factory=list)
    # A machine-wide daemon this run pinned (testbed.emulation.pinning): {"process": OwnedProcess
    # fields, "saved": {tid: cpus}}; its threads get their saved CPUs back on removal.
    pinned: dict | None = None
    # The datapath's idle time this run set (testbed.emulation.datapath): {"saved": the value
    # it replaced, None for ovs-vswitchd's default}; put back on removal.
    datapath_max_idle: dict | None = None
    # Directories the run made under STATE_DIR (recorded before they are made).
    directories: list[str] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return STATE_DIR / "runs" / f"{self.prefix}.json"

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(asdict(self)))
        temporary.replace(self.path)

    def own(self, pid: int, what: str) -> None:
        start = process_start_time(pid)
        if start is not None:
            self.processes.append(OwnedProcess(pid, start, what))
            self.save()

    @classmethod
    def load(cls, path: Path) -> RunRecord:
        data = json.loads(path.read_text())
        return cls(
            prefix=data["prefix"],
            runner=OwnedProcess(**data["runner"]),
            run_dir=data["run_dir"],
            bridges=list(data["bridges"]),
            processes=[OwnedProcess(**p) for p in data["processes"]],
            pinned=data.get("pinned"),
            datapath_max_idle=data.get("datapath_max_idle"),
            directories=list(data.get("directories", [])),
        )


def new_run_record(run_dir: str) -> RunRecord:
    """Claims a fresh prefix (q + 4 hex digits) and records this process as its runner."""
    (STATE_DIR / "runs").mkdir(parents=True, exist_ok=True)
    pid = os.getpid()
    while True:
        prefix = "q" + secrets.token_hex(2)
        path = STATE_DIR / "runs" / f"{prefix}.json"
        record = RunRecord(prefix, OwnedProcess(pid, process_start_time(pid), "runner"), run_dir)
        with contextlib.suppress(FileExistsError), open(path, "x") as claimed:
            claimed.write(json.dumps(asdict(record)))
            return record


@contextlib.contextmanager
def emulation_lock(timeout_s: float = 1800.0, on_wait=None):
    """Exclusive machine-wide lock for one emulation at a time."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    with open(STATE_DIR / "emulation.lock", "a+") as lock:
        deadline = time.monotonic() + timeout_s
        waited = False
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waited and on_wait:
                    on_wait()
                waited = True
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"another qasm emulation held {lock.name} for {timeout_s:g} s"
                    ) from None
                time.sleep(0.5)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(command), capture_output=True, text=True, check=False)


def remove_run_resources(record: RunRecord) -> list[str]:
    """Kills the run's processes and deletes its bridges and links; returns what it removed."""
    removed = []
    if record.pinned:
        from testbed.emulation.pinning import restore_affinity

        daemon = OwnedProcess(**record.pinned["process"])
        if daemon.alive():
            saved = {int(tid): cpus for tid, cpus in record.pinned["saved"].items()}
            restore_affinity(daemon.pid, saved)
            removed.append(f"cpu pinning of process {daemon.pid} ({daemon.what})")
    if record.datapath_max_idle:
        from testbed.emulation.datapath import DatapathSettingError, write_max_idle

        saved = record.datapath_max_idle["saved"]
        try:
            write_max_idle(saved)
            removed.append(f"datapath max-idle (back to {saved or 'the default'})")
        except DatapathSettingError as exc:
            removed.append(f"datapath max-idle not restored: {exc}")
    for process in record.processes:
        if process.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            removed.append(f"process {process.pid} ({process.what})")
    # Mininet host shells carry their node name in their command line.
    marker = f"mininet:{record.prefix}"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            if any(arg.decode(errors="replace").startswith(marker) for arg in argv):
                os.kill(int(entry.name), signal.SIGKILL)
                removed.append(f"process {entry.name} ({marker}...)")
    for directory in map(Path, record.directories):
        # Only under the state directory: a corrupt record never removes anything else.
        inside = STATE_DIR.resolve() in directory.resolve().parents
        if inside and directory.exists():
            shutil.rmtree(directory, ignore_errors=True)
            removed.append(f"directory {directory}")
    for bridge in record.bridges:
        if _run("ovs-vsctl", "--timeout=5", "br-exists", bridge).returncode == 0:
            _run("ovs-vsctl", "--timeout=5", "--if-exists", "del-br", bridge)
            removed.append(f"bridge {bridge}")
    links = _run("ip", "-o", "link", "show").stdout
    for name in re.findall(r"^\d+: ([^:@\s]+)", links, flags=re.MULTILINE):
        if name.startswith(record.prefix):
            _run("ip", "link", "del", name)
            removed.append(f"link {name}")
    return removed


def clean_dead_runs() -> list[str]:
    """Removes leftovers of runs whose runner is no longer alive; returns a line each."""
    report = []
    runs = STATE_DIR / "runs"
    if not runs.is_dir():
        return report
    for path in sorted(runs.glob("*.json")):
        try:
            record = RunRecord.load(path)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            report.append(f"{path}: unreadable run record left in place ({exc})")
            continue
        if record.runner.alive():
            continue
        removed = remove_run_resources(record)
        path.unlink(missing_ok=True)
        report.append(
            f"run {record.prefix} ({record.run_dir}): removed "
            + (", ".join(removed) if removed else "nothing (already gone)")
        )
    return report
