"""A server app and a client app on loopback, as the runner starts them: the client's
report and the server's events, for tests of the apps and stacks."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

BYTES = 600_000
SEED = 11


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def run_pair(
    tmp_path: Path, server: list[str], client: list[str], timeout: float = 30, size: int = BYTES
) -> tuple:
    """Runs a server (argv after `python -m`) until a client (likewise) is done: returns
    the client's report and the server's events."""
    port = _free_port()
    events = tmp_path / "events.jsonl"
    out = tmp_path / "report.json"
    common = ["--idle-timeout", "3"]
    server_process = subprocess.Popen(
        [sys.executable, "-m", *server, "--listen", f"127.0.0.1:{port}", "--events",
         str(events), "--max-lifetime", str(timeout + 10), *common],
        stdout=subprocess.DEVNULL, stderr=open(tmp_path / "server.log", "w"),  # noqa: SIM115
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 15
        while not any(e["event"] == "listening" for e in _events(events)):
            assert server_process.poll() is None, (tmp_path / "server.log").read_text()
            assert time.monotonic() < deadline, "server did not listen"
            time.sleep(0.05)
        result = subprocess.run(
            [sys.executable, "-m", *client, "--server", f"127.0.0.1:{port}",
             "--local-ip", "127.0.0.1", "--client", "h1", "--bytes", str(size),
             "--seed", str(SEED), "--timeout", str(timeout), "--server-name",
             "server.qasm.test", "--out", str(out), *common],
            capture_output=True, text=True, timeout=timeout + 15, check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
    finally:
        server_process.terminate()
        server_process.wait(timeout=10)
    (report,) = json.loads(out.read_text())
    return report, _events(events)
