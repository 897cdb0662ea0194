"""Integration tests run the real emulation; they skip only where the machine cannot."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]
QASM = [sys.executable, "-m", "testbed.cli"]


def _missing_capability() -> str | None:
    if os.geteuid() != 0:
        return "needs root (Mininet creates namespaces and links)"
    for tool in ("mnexec", "ovs-vsctl"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (run `make setup`)"
    probe = subprocess.run(["ovs-vsctl", "--timeout=5", "show"], capture_output=True, check=False)
    if probe.returncode != 0:
        return "Open vSwitch is not running (run `make setup`)"
    return None


def pytest_collection_modifyitems(items):
    reason = _missing_capability()
    for item in items:
        if item.get_closest_marker("integration") and reason:
            item.add_marker(pytest.mark.skip(reason=reason))


def read_records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "records.jsonl").read_text().splitlines()]


def leftovers(prefix: str) -> list[str]:
    """Anything on the machine that still carries this run's prefix."""
    found = []
    bridges = subprocess.run(["ovs-vsctl", "list-br"], capture_output=True, text=True).stdout
    found += [f"bridge {b}" for b in bridges.split() if b.startswith(prefix)]
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    found += [
        f"link {line.split(':')[1].strip()}"
        for line in links.splitlines()
        if line.split(":")[1].strip().startswith(prefix)
    ]
    found += [
        f"process {pid}: {cmdline}"
        for pid, cmdline in command_lines()
        if f"mininet:{prefix}" in cmdline
    ]
    return found


def command_lines() -> list[tuple[str, str]]:
    """(pid, command line) of every process now."""
    lines = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            lines.append((entry.name, cmdline))
    return lines


def run_scenario(scenario: Path, run_dir: Path, timeout_s: float = 900) -> str:
    """`qasm run SCENARIO --out RUN_DIR` on the real emulation; asserts the experiment ran
    (exit 0: exit 1 would be an infrastructure failure such as a dead controller) and the
    controller logged no exception. Returns what the run printed."""
    result = subprocess.run(
        [*QASM, "run", str(scenario), "--out", str(run_dir)],
        capture_output=True, text=True, timeout=timeout_s, cwd=REPOSITORY,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert_controller_logged_no_exception(run_dir)
    return result.stdout


def assert_each_path_announced_and_retired_once(exchanges: list[dict], migrations: int) -> None:
    """A Client Agent's reports for a connection that migrated `migrations` times: one
    announcement per migration, plus at most one for a path announced ahead that the transfer
    ended before using; each old path, and that one, retired once, by the next announcement
    or by a retirement of its own."""
    announced = [e for e in exchanges if e["what"] == "announce"]
    unused = len(announced) - migrations
    assert unused in (0, 1), (len(announced), migrations)
    retired = sum(1 for e in announced if e["retired_path"])
    retirements = [e["what"] for e in exchanges].count("retire")
    assert retired + retirements == migrations + unused, (retired, retirements, migrations)


def assert_controller_logged_no_exception(run_dir: Path) -> None:
    for log in run_dir.glob("artifacts/*/controller.log"):
        assert "Traceback" not in log.read_text(), f"{log} has an exception"


@pytest.fixture(scope="session")
def matrix_run(tmp_path_factory) -> Path:
    """scenarios/matrix.yaml run once: every function x variant x kind, shared by the
    per-function test modules (running each function's own scenario would repeat it)."""
    run_dir = tmp_path_factory.mktemp("matrix")
    run_scenario(REPOSITORY / "scenarios" / "matrix.yaml", run_dir, timeout_s=1500)
    return run_dir


def records_of_function(run_dir: Path, function: str) -> dict[tuple[str, str], dict]:
    """{(variant, migration kind): record} of the runs whose functions are [function]."""
    return {
        (r["variant"], r["migration"]): r
        for r in read_records(run_dir)
        if r["functions"] == [function]
    }
