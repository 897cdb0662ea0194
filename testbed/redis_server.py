"""A private `redis-server` for one run (or one test session): the shared connection store of
replicated middleboxes.

It listens on its own TCP port on the given address (127.0.0.1 by default), or on a unix
socket only, with its data directory, socket and log inside a fresh directory under the
caller's `base_dir`; no persistence (`--save ''`, `--appendonly no`: the state is a run's
and dies with it), in the foreground (`--daemonize no`, so its PID is ours to watch and
stop). `start()` returns once it answers PING; `stop()` ends it and removes its directory;
it is also a context manager. Only the process it started is ever signalled.

Crash clean-up: `own(pid, what)` is told the server's PID right after it starts, e.g. a run
record's `RunRecord.own` (testbed/emulation/ownership.py), so `qasm clean` kills it when its
runner died; besides, the kernel kills it when the process that started it dies
(PR_SET_PDEATHSIG: strictly, when the starting *thread* ends, so start it from a thread that
outlives it, as the runner's main thread does).
"""

from __future__ import annotations

import contextlib
import ctypes
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
# A free port probed by binding port 0 may be taken before redis-server binds it.
PORT_ATTEMPTS = 3
_PR_SET_PDEATHSIG = 1


class RedisServerError(RuntimeError):
    """The private redis-server could not start (the message has its log's tail)."""


def _die_with_parent() -> None:
    # Runs in the child before exec: if the process that started it dies (even by SIGKILL),
    # the kernel kills the server too, so none outlives its run.
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _free_tcp_port(address: str) -> int:
    with socket.socket() as probe:
        probe.bind((address, 0))
        return probe.getsockname()[1]


class RedisServer:
    """One redis-server this process starts and stops. `url` is what clients connect to."""

    def __init__(
        self,
        base_dir: Path,
        bind: str = "127.0.0.1",
        unix_socket: bool = False,
        own: Callable[[int, str], None] | None = None,
        executable: str = "redis-server",
    ) -> None:
        self.base_dir = Path(base_dir)
        self.bind = bind
        self.unix_socket = unix_socket
        self.own = own
        self.executable = executable
        self.directory: Path | None = None
        self.url: str | None = None
        self._process: subprocess.Popen | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def start(self) -> RedisServer:
        if self._process is not None:
            raise RuntimeError(f"redis-server already started ({self.url})")
        if shutil.which(self.executable) is None:
            raise RedisServerError(f"{self.executable} not found (make setup installs it)")
        self.directory = Path(tempfile.mkdtemp(prefix="redis-", dir=self.base_dir))
        try:
            self._launch_on_a_free_port()
        except BaseException:
            self.stop()
            raise
        return self

    def _launch_on_a_free_port(self) -> None:
        attempts = 1 if self.unix_socket else PORT_ATTEMPTS
        for attempt in range(attempts):
            try:
                self._launch()
                return
            except RedisServerError:
                self._terminate()
                if attempt == attempts - 1:
                    raise

    def _launch(self) -> None:
        directory = self.directory
        log = directory / "redis.log"
        argv = [
            self.executable,
            "--dir", str(directory),
            "--logfile", str(log),
            "--save", "",
            "--appendonly", "no",
            "--daemonize", "no",
        ]  # fmt: skip
        if self.unix_socket:
            # Port 0 turns TCP off; a path under 108 bytes (sun_path) is the caller's to keep.
            socket_path = directory / "redis.sock"
            argv += ["--port", "0", "--unixsocket", str(socket_path), "--unixsocketperm", "700"]
            self.url = f"unix://{socket_path}"
        else:
            port = _free_tcp_port(self.bind)
            argv += ["--port", str(port), "--bind", self.bind]
            host = f"[{self.bind}]" if ":" in self.bind else self.bind
            self.url = f"redis://{host}:{port}/0"
        self._process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        if self.own is not None:
            self.own(self._process.pid, "redis-server")
        self._wait_until_answering(log)

    def _wait_until_answering(self, log: Path) -> None:
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.5, socket_timeout=0.5)
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            while True:
                if self._process.poll() is not None:
                    raise RedisServerError(
                        f"redis-server for {self.url} exited with {self._process.returncode}: "
                        + _tail(log)
                    )
                with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
                    if client.ping():
                        return
                if time.monotonic() > deadline:
                    raise RedisServerError(
                        f"redis-server for {self.url} did not answer PING within "
                        f"{START_TIMEOUT_S:g} s: " + _tail(log)
                    )
                time.sleep(0.02)
        finally:
            client.close()

    def _terminate(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def stop(self) -> None:
        """Ends the server (SIGTERM, then SIGKILL after STOP_TIMEOUT_S) and removes its
        directory. Safe to call twice."""
        self._terminate()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            self.directory = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def _tail(log: Path, lines: int = 5) -> str:
    try:
        return " | ".join(log.read_text(errors="replace").splitlines()[-lines:]) or "(empty log)"
    except OSError:
        return "(no log)"
