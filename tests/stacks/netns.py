"""A pair of network namespaces joined by a veth, for tests: client and server hosts.

Every name starts with `h7-` (namespaces) / `h7` (veths) and a per-test suffix, and
everything is deleted on exit, whatever happened (`with NamespacePair() as pair:`).
Processes started with `pair.start(...)` are stopped (SIGTERM, then SIGKILL) by their own
pid before the namespaces go.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

CLIENT_IPS = ("10.77.0.1", "10.77.0.3")  # the client's two addresses (one veth)
SERVER_IP = "10.77.0.2"


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True, timeout=10)


class NamespacePair:
    def __init__(self) -> None:
        suffix = f"{os.getpid() % 100000}{os.urandom(2).hex()}"
        self.client = f"h7-c{suffix}"
        self.server = f"h7-s{suffix}"
        self._veth_client = f"h7c{suffix}"[:15]
        self._veth_server = f"h7s{suffix}"[:15]
        self.processes: list[subprocess.Popen] = []

    def __enter__(self) -> NamespacePair:
        try:
            _ip("netns", "add", self.client)
            _ip("netns", "add", self.server)
            _ip("link", "add", self._veth_client, "type", "veth", "peer", "name", self._veth_server)
            _ip("link", "set", self._veth_client, "netns", self.client)
            _ip("link", "set", self._veth_server, "netns", self.server)
            for address in CLIENT_IPS:
                _ip("-n", self.client, "addr", "add", f"{address}/24", "dev", self._veth_client)
            _ip("-n", self.server, "addr", "add", f"{SERVER_IP}/24", "dev", self._veth_server)
            for namespace, veth in (
                (self.client, self._veth_client),
                (self.server, self._veth_server),
            ):
                _ip("-n", namespace, "link", "set", veth, "up")
                _ip("-n", namespace, "link", "set", "lo", "up")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def start(self, namespace: str, argv: list[str], log: Path) -> subprocess.Popen:
        with open(log, "w") as stream:
            process = subprocess.Popen(
                ["ip", "netns", "exec", namespace, *argv],
                stdout=stream,
                stderr=subprocess.STDOUT,
                cwd=Path(__file__).resolve().parents[2],
            )
        self.processes.append(process)
        return process

    def run(self, namespace: str, argv: list[str], timeout: float) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["ip", "netns", "exec", namespace, *argv],
            capture_output=True, text=True, timeout=timeout, check=False,
            cwd=Path(__file__).resolve().parents[2],
        )  # fmt: skip

    def stop(self, process: subprocess.Popen) -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)

    def __exit__(self, *_exc) -> None:
        for process in self.processes:
            self.stop(process)
        for namespace in (self.client, self.server):
            subprocess.run(["ip", "netns", "del", namespace], capture_output=True, timeout=10)
