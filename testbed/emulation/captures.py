"""Packet captures on request: tcpdump on every host interface, for one run.

One pcap per interface, named by the interface without the run's prefix (`c1-wifi.pcap`,
`c1-lte.pcap`, `srv-eth0.pcap`), so names are the same in every run directory. Each tcpdump
runs in its host's namespace and is started before the clients; `start_captures` returns
only once every tcpdump has opened its interface ("listening on" on its stderr), so the
handshake is in the capture. They stop with SIGINT after the clients finished, which makes
tcpdump write its last buffered packets and its counters; with `-U` every packet is written
as it arrives anyway, so a capture cut short by a crash is still a readable pcap.

`-Z root`: Debian's tcpdump drops to the `tcpdump` user after opening the interface and would
then fail to create files in a root-owned run directory. Full packets (`-s 0`), so with the
clients' SSLKEYLOGFILE Wireshark (or `tshark -o tls.keylog_file:FILE`) decrypts QUIC.
"""

from __future__ import annotations

import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from testbed.emulation.network import Emulation, InfrastructureError, ManagedProcess

READY_TIMEOUT_S = 5.0
STOP_GRACE_S = 5.0
# Kernel buffer per capture, KiB: holds ~3 s of a 50 Mbit/s link should tcpdump lag.
BUFFER_KIB = 16384


@dataclass
class Capture:
    intf: str
    path: Path
    process: ManagedProcess

    def counters(self) -> dict:
        """tcpdump's closing counters (captured, received by filter, dropped by kernel)."""
        text = self.process.log_path.read_text(errors="replace") if self.process else ""
        found = {
            key.replace(" ", "_"): int(number)
            for number, key in re.findall(
                r"(\d+) packets? (captured|received by filter|dropped by kernel)", text
            )
        }
        size = self.path.stat().st_size if self.path.exists() else 0
        return {"interface": self.intf, "file": self.path.name, "bytes": size, **found}


def host_interfaces(emulation: Emulation) -> list[tuple[str, str]]:
    """(host, interface) of every host interface but loopback."""
    return [
        (host.name, intf.name)
        for host in emulation.net.hosts
        for intf in host.intfList()
        if intf.name != "lo"
    ]


def start_captures(emulation: Emulation, directory: Path) -> list[Capture]:
    directory.mkdir(parents=True, exist_ok=True)
    prefix = emulation.record.prefix
    captures = []
    for host, intf in host_interfaces(emulation):
        name = intf.removeprefix(prefix)
        path = directory / f"{name}.pcap"
        argv = [
            "tcpdump", "-i", intf, "-w", str(path), "-U", "-s", "0", "-n",
            "-B", str(BUFFER_KIB), "-Z", "root",
        ]  # fmt: skip
        log = directory / f"{name}.tcpdump.log"
        process = emulation.start_on_host(host, argv, log, what=f"tcpdump {intf}")
        captures.append(Capture(intf, path, process))
    deadline = time.monotonic() + READY_TIMEOUT_S
    for capture in captures:
        while "listening on" not in capture.process.log_path.read_text(errors="replace"):
            if capture.process.popen.poll() is not None or time.monotonic() > deadline:
                stop_captures(emulation, captures)
                raise InfrastructureError(
                    f"tcpdump on {capture.intf} did not start: {capture.process.log_tail()}"
                )
            time.sleep(0.02)
    return captures


def stop_captures(emulation: Emulation, captures: list[Capture]) -> list[dict]:
    """SIGINT to every tcpdump (they finish in parallel), then their counters."""
    for capture in captures:
        if capture.process.popen.poll() is None:
            capture.process.popen.send_signal(signal.SIGINT)
    for capture in captures:
        emulation.stop_process(capture.process, grace_s=STOP_GRACE_S, signum=signal.SIGINT)
    return [capture.counters() for capture in captures]
