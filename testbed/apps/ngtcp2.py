"""ngtcp2's example programs as the testbed's client and server (HTTP/3 only).

    python -m testbed.apps.ngtcp2 client --server IP:PORT --local-ip IP --client NAME
        --bytes N --seed S --idle-timeout S --timeout S --server-name NAME --out FILE
        [--protocol h3] [--connections N [--first-index I] [--start-window S
         --total-connections M]] [--ready-file FILE --start-file FILE]
        [--migrate active --migrate-ip IP --at-seconds S [--spread X]]
        [--qlog-dir DIR] [--keylog FILE] [--socket-buffer BYTES]
    python -m testbed.apps.ngtcp2 server --listen IP:PORT --events FILE --idle-timeout S
        --max-lifetime S --bytes N --seed S [--protocol h3] [--qlog-dir DIR]
        [--socket-buffer BYTES]

Debian 12's `ngtcp2-client` / `ngtcp2-server` (0.12.1, GnuTLS) ship `gtlsclient` and
`gtlsserver`, which speak only HTTP/3. These adapters take the options of
testbed.apps.client / testbed.apps.server, run the programs as child processes, read what
they print on stderr (their debug log: no `-q`; `--no-quic-dump --no-http-dump` keep it to
~4 lines per packet, 17k lines for 4 MB) and write the SAME client report (a JSON list of
`ClientReport`) and server event log (`listening` / `first_data` / `finished`), so records
need no change. Times are `time.monotonic()` when a line arrives: stderr is unbuffered in
both programs, so a line arrives within the pipe's latency (< 1 ms) of the event.

The client (`gtlsclient`), per connection:
    gtlsclient --exit-on-all-streams-close --no-quic-dump --no-http-dump
        --download DIR --sni NAME --timeout=<idle>ms [--change-local-addr=<at>ms]
        [--qlog-dir DIR] SERVER_IP PORT https://NAME:PORT/bytes/N?seed=S&client=C
  with SSLKEYLOGFILE=FILE (appended to) for `--keylog`. What is measured and how:
  - `started_at`: the first Initial it sends (`pkt tx ... type=Initial`), so process start
    and GnuTLS's set-up are not in `handshake_ms`, which ends at `QUIC handshake has
    completed`.
  - `first_byte_sent_at`: `http: stream 0x0 submit request headers`; `last_byte_acknowledged_at`:
    the response's last STREAM frame (`frm rx ... id=0x0 fin=1`). `progress` samples the size
    of the file it downloads (every 20 ms); `verified`: that file's SHA-256 equals the digest
    of (N, S) (testbed/apps/transfer.py). Its exit code says nothing: it exits 0 after an
    idle close too.
  - `local_address`: the first `Sent packet: local=...` (it cannot bind a chosen address:
    the route picks it; `--local-ip` is only checked against it).
  - migration: only `active`, only by time: `--change-local-addr=T` moves T after the
    handshake completed to a new socket (same address, new port: the route picks the
    address) and a new CID, with path validation. `at` is `Changing local address`, `to`
    is `Local address is now ...`, `old_dcid` / `new_dcid` the DCIDs of the packets sent
    before and after, `spare_cids` the NEW_CONNECTION_IDs received before it, and
    `first_data_at` / `client_disruption_ms` the first response STREAM frame received on
    the new socket. Its `--nat-rebinding` is broken (after the move it sends nothing more,
    STACKS.md; re-measured: the transfer stalls and ends by idle timeout), so nat-rebind and
    addr-rebind are refused here: rebind in the network instead. `--at-bytes` and
    `--repeat-every` are refused (no such option in gtlsclient); so is a `--migrate-ip`
    other than `--local-ip`, since the program cannot choose its new address.
  - `smoothed_rtt_ms`: the last `smoothed_rtt=` it logged.
  Not measurable: acknowledged bytes (a download counts bytes received), the builtin Client
  Agent (announce with the host agent, testbed/apps/host_agent.py), socket buffers
  (`--socket-buffer` is accepted and ignored: the program sets none).

The server (`gtlsserver`):
    gtlsserver --no-quic-dump --no-http-dump -d HTDOCS --timeout=<idle>ms
        [--qlog-dir DIR] LISTEN_IP PORT KEY.pem CERT.pem
  It serves files, ignoring the query: the adapter writes `HTDOCS/bytes/N` from
  `payload_chunks(N, S)` with the run's `--bytes` and `--seed` (the h3 workload's seed is
  the run's, testbed/apps/transfer.py), and a throwaway self-signed certificate for the
  SNI. Events: `listening` once the port is bound (/proc/net/udp), with `server_stack`
  and `server_stack_version`; `first_data` the first time a connection sends response
  STREAM frames (`frm tx ... STREAM ... id=<request stream>`) in a datagram to a peer
  address it had not sent response bytes to (`Sent packet: ... remote=`), the client named
  by the request's `:path`; `finished` when it sends the response's FIN, with the bytes and
  SHA-256 of the file it served. The log names the connection (its first SCID) on every
  `I...` line and the program is single-threaded, so the lines between belong to it.
  Not measurable: what it received per path (nothing is uploaded in h3).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from testbed.apps.client import (
    ClientReport,
    ConnectionSpec,
    connection_specs,
    wait_for_start,
)
from testbed.apps.rebinding import NetworkRebinder
from testbed.apps.server import (
    EventLog,
    certificate_pem,
    parse_address,
    self_signed_certificate,
)
from testbed.apps.transfer import H3Request, payload_chunks, payload_digest
from testbed.migration import MIGRATION_KINDS
from testbed.records.metrics import goodput_mbps

CLIENT_PROGRAM = "gtlsclient"  # /usr/bin, Debian ngtcp2-client
SERVER_PROGRAM = "gtlsserver"  # /usr/sbin, Debian ngtcp2-server
PROGRESS_INTERVAL_S = 0.02
LISTEN_TIMEOUT_S = 10.0
STOP_GRACE_S = 2.0
# Its log lines are at most a few hundred bytes with the dumps off; the reader's bound.
LINE_LIMIT = 1 << 20
_PR_SET_PDEATHSIG = 1


def package_version(package: str) -> str | None:
    """The Debian package's version ("0.12.1+dfsg-1+deb12u1"), None when not installed."""
    try:
        result = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Version}", package],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None


def program_path(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if found is None:
        raise SystemExit(f"{name} not found: apt-get install ngtcp2-client ngtcp2-server")
    return found


def _die_with_parent() -> None:
    # In the child, before exec: a killed adapter must not leave the program running.
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


# --- the client's log (sans-I/O) -------------------------------------------------------------

_ADDRESS = r"\[([0-9a-fA-F.:]+)\]:(\d+)"
_SENT = re.compile(rf"^Sent packet: local={_ADDRESS} remote={_ADDRESS}")
_RECEIVED = re.compile(rf"^Received packet: local={_ADDRESS} remote={_ADDRESS}")
_LOCAL_NOW = re.compile(rf"^Local address is now {_ADDRESS}")
# "I00000022 0x<the connection's first SCID> <kind> <what>": group 2 is "<kind> <what>".
_LOG_LINE = re.compile(r"^I(\d+) 0x([0-9a-f]+) ((\w+) .*)$")
_PKT_TX = re.compile(r"^pkt tx pkn=\d+ dcid=0x([0-9a-f]*)(?: scid=0x[0-9a-f]*)?.* type=(\w+)")
_STREAM = re.compile(
    r"^(?:frm (rx|tx)) \d+ \w+ STREAM\(0x[0-9a-f]+\) id=0x([0-9a-f]+) fin=(\d) "
    r"offset=(\d+) len=(\d+)"
)
_SMOOTHED_RTT = re.compile(r"smoothed_rtt=(\d+)")
_NEW_CID_RX = re.compile(r"^frm rx \d+ \w+ NEW_CONNECTION_ID")


def _address(match: re.Match, first_group: int) -> tuple[str, int]:
    return match.group(first_group), int(match.group(first_group + 1))


@dataclass
class ClientLog:
    """What one gtlsclient run printed, fed line by line with the time each arrived."""

    started_at: float | None = None
    handshake_at: float | None = None
    request_at: float | None = None
    fin_at: float | None = None
    local_address: tuple[str, int] | None = None
    last_received_at: float | None = None
    smoothed_rtt_ms: float | None = None
    migrations: list[dict] = field(default_factory=list)
    new_cids_received: int = 0
    idle_closed: bool = False
    stream_error: str | None = None
    _local: tuple[str, int] | None = None  # the socket in use
    _receiving_on: tuple[str, int] | None = None
    _dcid: str | None = None
    _moving: dict | None = None  # "Changing local address" seen, new address not yet
    _origin: float = float("inf")  # the connection's start, on our clock (see _log_line)

    def feed(self, line: str, now: float) -> None:
        if line.startswith("I"):
            self._log_line(line, now)
        elif line.startswith("Sent packet"):
            match = _SENT.match(line)
            if match and self.local_address is None:
                self.local_address = self._local = _address(match, 1)
        elif line.startswith("Received packet"):
            match = _RECEIVED.match(line)
            if match:
                self._receiving_on = _address(match, 1)
                self.last_received_at = now
        elif line.startswith("QUIC handshake has completed"):
            self.handshake_at = now
        elif line.startswith("http: stream 0x0 submit request headers"):
            self.request_at = now
        elif line.startswith("Changing local address"):
            # `at` is this line's arrival for now; `moved_instants` corrects it.
            self._moving = {
                "kind": "active",
                "at": now,
                "from": list(self._local) if self._local else None,
                "old_dcid": self._dcid,
                "spare_cids": self.new_cids_received - len(self.migrations),
                "announced_ahead": False,
            }
        elif line.startswith("Local address is now"):
            match = _LOCAL_NOW.match(line)
            if match and self._moving is not None:
                self._local = _address(match, 1)
                self._moving.update(to=list(self._local), new_dcid=None, first_data_at=None)
                self.migrations.append(self._moving)
                self._moving = None
        elif "ERR_IDLE_CLOSE" in line:
            self.idle_closed = True
        elif line.startswith("HTTP stream 0 closed with error code"):
            code = line.rsplit(" ", 1)[-1]
            if code != "256":  # H3_NO_ERROR (RFC 9114 §8.1)
                self.stream_error = f"HTTP/3 stream closed with error code {code}"

    def moved_instants(self) -> None:
        """Corrects each migration's `at`. A line arrives a little after it was printed,
        more behind a burst of lines (0.8 ms was seen, by when the server had already
        answered on the new path, which made the metrics miss it). The first stamped line
        after the move (the new path's first packet, sent right after it) was printed at
        least its stamp after the connection's start: `at` is the earlier of the arrival
        and that, never later than the new path's first packet, at most ~1 ms early."""
        for moved in self.migrations:
            stamp = moved.pop("_stamp_ms", None)
            if stamp is not None and self._origin != float("inf"):
                moved["at"] = min(moved["at"], self._origin + stamp / 1000)

    def _log_line(self, line: str, now: float) -> None:
        match = _LOG_LINE.match(line)
        if not match:
            return
        kind, rest = match.group(4), match.group(3)
        # Each line is stamped with ms since the connection began (floored); arrival minus
        # stamp is never below that origin, and its minimum over the lines comes close.
        stamp = int(match.group(1))
        self._origin = min(self._origin, now - stamp / 1000)
        if self.migrations and "_stamp_ms" not in self.migrations[-1]:
            self.migrations[-1]["_stamp_ms"] = stamp  # the first line after the move
        if kind == "pkt":
            sent = _PKT_TX.match(rest)
            if sent:
                if self.started_at is None and sent.group(2) == "Initial":
                    self.started_at = now
                if sent.group(2) == "1RTT":
                    self._dcid = sent.group(1)
                    for moved in self.migrations:
                        if moved["new_dcid"] is None and moved["old_dcid"] != self._dcid:
                            moved["new_dcid"] = self._dcid
        elif kind == "frm":
            if _NEW_CID_RX.match(rest):
                self.new_cids_received += 1
                return
            stream = _STREAM.match(rest)
            if stream and stream.group(1) == "rx" and stream.group(2) == "0":
                if self.migrations and self._receiving_on == tuple(self.migrations[-1]["to"]):
                    last = self.migrations[-1]
                    if last["first_data_at"] is None:
                        last["first_data_at"] = now
                if stream.group(3) == "1" and self.fin_at is None:
                    self.fin_at = now
        elif kind == "rcv":
            rtt = _SMOOTHED_RTT.search(rest)
            if rtt:
                self.smoothed_rtt_ms = float(rtt.group(1))


def client_report(
    log: ClientLog,
    report: ClientReport,
    *,
    total: int,
    received: int,
    digest: str | None,
    expected: str,
    exit_code: int | None,
    idle_timeout: float,
) -> ClientReport:
    """Fills `report` from what the program printed and what it downloaded."""
    log.moved_instants()
    report.started_at = log.started_at
    if log.started_at is not None and log.handshake_at is not None:
        report.handshake_ms = (log.handshake_at - log.started_at) * 1000
    report.local_address = list(log.local_address) if log.local_address else None
    report.first_byte_sent_at = log.request_at
    report.last_received_at = log.last_received_at
    report.smoothed_rtt_ms = log.smoothed_rtt_ms
    for moved in log.migrations:
        arrived = moved["first_data_at"]
        moved["client_disruption_ms"] = (arrived - moved["at"]) * 1000 if arrived else None
    report.migrations = log.migrations
    report.migration = log.migrations[0] if log.migrations else None
    report.bytes_acknowledged = received
    report.digest = {"expected": expected, "received": digest, "server": None}
    if log.fin_at is not None:
        report.completed = True
        report.last_byte_acknowledged_at = log.fin_at
        report.progress.append([log.fin_at, received])
        report.verified = received == total and digest == expected
        if not report.verified:
            report.failure = f"payload mismatch: got {received} bytes, sha256 {digest}"
        elif log.request_at is not None:
            report.goodput_mbps = goodput_mbps(total, log.request_at, log.fin_at)
    elif report.failure is None:
        if log.idle_closed:
            report.failure = (
                f"connection closed by idle timeout ({idle_timeout:g} s without a packet "
                "from the server)"
            )
        elif log.stream_error:
            report.failure = log.stream_error
        elif log.handshake_at is None:
            report.failure = f"no handshake ({CLIENT_PROGRAM} exited with code {exit_code})"
        else:
            report.failure = f"{CLIENT_PROGRAM} exited with code {exit_code} before the response"
    return report


# --- the client's I/O -------------------------------------------------------------------------


def client_argv(
    args: argparse.Namespace, spec: ConnectionSpec, download: str, program: str
) -> list[str]:
    host, port = parse_address(args.server)
    request = H3Request(bytes=args.bytes, seed=args.seed, client=spec.name)
    argv = [
        program,
        "--exit-on-all-streams-close",
        "--no-quic-dump",
        "--no-http-dump",
        f"--download={download}",
        f"--sni={args.server_name}",
        f"--timeout={round(args.idle_timeout * 1000)}ms",
    ]
    if spec.plan is not None and not spec.plan.in_network:
        argv.append(f"--change-local-addr={round(spec.plan.at_seconds * 1000)}ms")
    if args.qlog_dir:
        argv.append(f"--qlog-dir={args.qlog_dir}")
    argv += [host, str(port), f"https://{args.server_name}:{port}{request.path}"]
    return argv


async def _read_lines(stream: asyncio.StreamReader, log) -> None:
    while True:
        try:
            line = await stream.readline()
        except ValueError:  # a line beyond LINE_LIMIT: skip it
            continue
        if not line:
            return
        log.feed(line.decode(errors="replace").rstrip("\r\n"), time.monotonic())


async def _sample_progress(path: Path, report: ClientReport, stop: asyncio.Event) -> None:
    while not stop.is_set():
        size = path.stat().st_size if path.exists() else 0
        report.progress.append([time.monotonic(), size])
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), PROGRESS_INTERVAL_S)


def _downloaded(directory: Path) -> Path | None:
    files = [p for p in directory.iterdir() if p.is_file()]
    return files[0] if files else None


async def run_client_connection(
    args: argparse.Namespace, spec: ConnectionSpec, start_at: float, expected: str, version: str
) -> ClientReport:
    report = ClientReport(
        client=spec.name,
        bytes_requested=args.bytes,
        client_stack="ngtcp2",
        client_stack_version=version,
        protocol="h3",
    )
    await asyncio.sleep(max(0.0, start_at + spec.start_offset_s - time.monotonic()))
    log = ClientLog()
    download = Path(tempfile.mkdtemp(prefix="qasm-ngtcp2-"))
    environment = dict(os.environ)
    if args.keylog:
        environment["SSLKEYLOGFILE"] = args.keylog  # gtlsclient appends
    exit_code = None
    received, digest = 0, None
    try:
        process = await asyncio.create_subprocess_exec(
            *client_argv(args, spec, str(download), program_path(CLIENT_PROGRAM)),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=environment,
            limit=LINE_LIMIT,
            preexec_fn=_die_with_parent,
        )
        stop = asyncio.Event()
        # The file's name is the request's last path component with its query.
        sampler = asyncio.create_task(
            _sample_progress(download / Path(_request_file(args, spec)), report, stop)
        )
        rebinding = None
        if spec.plan is not None and spec.plan.in_network:
            rebinding = asyncio.create_task(_rebind_in_network(args, spec, log))
        try:
            await asyncio.wait_for(
                asyncio.gather(_read_lines(process.stderr, log), process.wait()),
                timeout=args.timeout,
            )
        except TimeoutError:
            report.failure = f"transfer did not finish within the {args.timeout:g} s run timeout"
            process.kill()
            await process.wait()
        finally:
            stop.set()
            await sampler
            if rebinding is not None:
                rebinding.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    rebinder = await rebinding
                    rebinder.close()
        exit_code = process.returncode
        path = _downloaded(download)
        if path is not None:
            received, digest = _file_digest(path)
    finally:
        shutil.rmtree(download, ignore_errors=True)
    if log.local_address and log.local_address[0] != args.local_ip:
        report.failure = report.failure or (
            f"{CLIENT_PROGRAM} left from {log.local_address[0]}, not --local-ip {args.local_ip} "
            "(it cannot bind a chosen address: the route decides)"
        )
    return client_report(
        log,
        report,
        total=args.bytes,
        received=received,
        digest=digest,
        expected=expected,
        exit_code=exit_code,
        idle_timeout=args.idle_timeout,
    )


async def _rebind_in_network(
    args: argparse.Namespace, spec: ConnectionSpec, log: ClientLog
) -> NetworkRebinder:
    """NAT rebinding done by the host's NAT at_seconds after the request (gtlsclient's own
    rebinding is broken): the program's socket stays, the server sees a new address."""
    while log.request_at is None or log.local_address is None:
        await asyncio.sleep(PROGRESS_INTERVAL_S)
    await asyncio.sleep(max(0.0, log.request_at + spec.plan.at_seconds - time.monotonic()))
    rebinder = NetworkRebinder(log.local_address, parse_address(args.server))
    public = await rebinder.rebind(spec.plan.address(0))
    log.migrations.append(
        {
            "kind": spec.plan.kind, "at": time.monotonic(), "from": list(log.local_address),
            "to": list(public), "by": "network", "old_dcid": log._dcid, "new_dcid": log._dcid,
            "spare_cids": log.new_cids_received, "announced_ahead": False,
            "first_data_at": None,  # the program's socket did not change: not seen here
            "_stamp_ms": None,  # our own clock: no log line to correct it with
        }
    )  # fmt: skip
    return rebinder


def _request_file(args: argparse.Namespace, spec: ConnectionSpec) -> str:
    # gtlsclient names the file after the path's last component, query included, as sent
    # (the client name is percent-encoded, so it holds no "/").
    return H3Request(bytes=args.bytes, seed=args.seed, client=spec.name).path.rsplit("/", 1)[-1]


def _file_digest(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


async def client_main(args: argparse.Namespace) -> list[ClientReport]:
    version = package_version("ngtcp2-client") or "unknown"
    specs = connection_specs(args)
    expected = payload_digest(args.bytes, args.seed)
    start_at = await wait_for_start(args)
    reports = await asyncio.gather(
        *(run_client_connection(args, spec, start_at, expected, version) for spec in specs)
    )
    return list(reports)


def client_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m testbed.apps.ngtcp2 client")
    parser.add_argument("--server", required=True, help="IPv4:PORT")
    parser.add_argument("--local-ip", required=True, help="checked: gtlsclient cannot bind it")
    parser.add_argument("--client", required=True)
    parser.add_argument("--bytes", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--connections", type=int, default=1)
    parser.add_argument("--first-index", type=int, default=1)
    parser.add_argument("--total-connections", type=int)
    parser.add_argument("--start-window", type=float, default=0.0)
    parser.add_argument("--ready-file")
    parser.add_argument("--start-file")
    parser.add_argument("--migrate", choices=MIGRATION_KINDS)
    parser.add_argument("--migrate-ip", nargs="+")
    parser.add_argument("--at-bytes", type=int)
    parser.add_argument("--at-seconds", type=float)
    parser.add_argument("--spread", type=float, default=0.0)
    parser.add_argument("--repeat-every", type=float)
    parser.add_argument("--rebind-by", choices=("client", "network"), default="client")
    parser.add_argument("--agent")
    parser.add_argument("--idle-timeout", type=float, required=True)
    parser.add_argument("--timeout", type=float, required=True)
    parser.add_argument("--server-name", required=True)
    parser.add_argument("--qlog-dir")
    parser.add_argument("--keylog")
    parser.add_argument("--socket-buffer", type=int, help="accepted and ignored")
    parser.add_argument("--protocol", choices=("h3",), default="h3")
    parser.add_argument("--out", required=True)
    return parser


def parse_client_args(argv: list[str]) -> argparse.Namespace:
    parser = client_parser()
    args = parser.parse_args(argv)
    if args.migrate and args.migrate != "active" and args.rebind_by != "network":
        parser.error(
            f"--migrate {args.migrate}: ngtcp2's client rebinds only by --change-local-addr "
            "(active: new port, new CID); its --nat-rebinding stops sending after the move. "
            "Rebind in the network instead (migration.rebind_by: network)"
        )
    if args.migrate and (args.at_seconds is None or args.at_bytes is not None):
        parser.error("--migrate with ngtcp2 needs --at-seconds (gtlsclient migrates by time)")
    moves = args.migrate == "active"
    if moves and any(ip != args.local_ip for ip in args.migrate_ip or [args.local_ip]):
        parser.error(
            "--migrate-ip: gtlsclient cannot choose its new address (the route picks it); "
            "pass --migrate-ip equal to --local-ip (active migration to a new port and CID)"
        )
    if args.repeat_every is not None:
        parser.error("--repeat-every: gtlsclient migrates once (--change-local-addr)")
    if args.agent:
        parser.error("--agent: the builtin Client Agent needs aioquic; use the host agent")
    if bool(args.start_file) != bool(args.ready_file):
        parser.error("--start-file and --ready-file go together")
    if args.migrate and not args.migrate_ip:
        args.migrate_ip = [args.local_ip]
    return args


# --- the server's log (sans-I/O) -------------------------------------------------------------

_PATH_HEADER = re.compile(r"^http: stream 0x([0-9a-f]+) \[:path: (.*)\]$")


@dataclass
class _ServedConnection:
    clients: dict[int, str] = field(default_factory=dict)  # request stream -> client name
    requests: dict[int, H3Request | None] = field(default_factory=dict)
    addresses_seen: dict[int, set] = field(default_factory=dict)
    pending: dict[int, tuple[int, bool]] = field(default_factory=dict)  # stream -> (end, fin)


@dataclass
class ServerLog:
    """What gtlsserver printed, turned into the server app's events. `served` maps
    (bytes) -> the SHA-256 of the file the adapter wrote for that size."""

    served: dict[int, str]
    connections: dict[str, _ServedConnection] = field(default_factory=dict)
    _current: str | None = None  # the connection the lines are about now

    def feed(self, line: str, now: float) -> list[tuple[str, dict]]:
        line = line.rstrip("\n")
        if line.startswith("I"):
            match = _LOG_LINE.match(line)
            if not match:
                return []
            self._current = match.group(2)
            if match.group(4) == "frm":
                stream = _STREAM.match(match.group(3))
                if stream and stream.group(1) == "tx":
                    stream_id = int(stream.group(2), 16)
                    if stream_id % 4 == 0:  # a client-initiated bidirectional stream
                        end = int(stream.group(4)) + int(stream.group(5))
                        connection = self.connections.setdefault(self._current, _ServedConnection())
                        before = connection.pending.get(stream_id, (0, False))
                        connection.pending[stream_id] = (
                            max(end, before[0]),
                            before[1] or stream.group(3) == "1",
                        )
            return []
        if line.startswith("Sent packet"):
            match = _SENT.match(line)
            if match and self._current is not None:
                return self._sent(_address(match, 3))
            return []
        path = _PATH_HEADER.match(line)
        if path and self._current is not None:
            stream_id = int(path.group(1), 16)
            connection = self.connections.setdefault(self._current, _ServedConnection())
            try:
                request = H3Request.parse(path.group(2))
            except ValueError:
                request = None
            connection.requests[stream_id] = request
            connection.clients[stream_id] = request.client if request else path.group(2)
        return []

    def _sent(self, remote: tuple[str, int]) -> list[tuple[str, dict]]:
        connection = self.connections.get(self._current)
        if connection is None:
            return []
        events = []
        for stream_id, (end, fin) in list(connection.pending.items()):
            client = connection.clients.get(stream_id)
            if client is None:
                continue
            seen = connection.addresses_seen.setdefault(stream_id, set())
            if remote not in seen:
                seen.add(remote)
                events.append(
                    ("first_data", {"client": client, "addr": list(remote), "offset": end})
                )
            if fin:
                request = connection.requests.get(stream_id)
                size = request.bytes if request and request.bytes in self.served else 0
                events.append(
                    (
                        "finished",
                        {"client": client, "bytes": size, "sha256": self.served.get(size)},
                    )
                )
                connection.clients.pop(stream_id, None)
            del connection.pending[stream_id]
        return events


# --- the server's I/O -------------------------------------------------------------------------


def udp_port_bound(port: int) -> bool:
    """Whether a UDP socket of this network namespace is bound to `port`."""
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with contextlib.suppress(OSError), open(table) as rows:
            next(rows, None)
            for row in rows:
                local = row.split()[1]
                if int(local.rsplit(":", 1)[1], 16) == port:
                    return True
    return False


def write_payload(htdocs: Path, total: int, seed: int) -> str:
    """HTDOCS/bytes/N with the h3 workload's payload; returns its SHA-256."""
    target = htdocs / "bytes" / str(total)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as stream:
        for chunk in payload_chunks(total, seed):
            stream.write(chunk)
    return payload_digest(total, seed)


def server_argv(args: argparse.Namespace, htdocs: Path, key: Path, cert: Path, program: str):
    host, port = parse_address(args.listen)
    argv = [
        program,
        "--no-quic-dump",
        "--no-http-dump",
        f"--htdocs={htdocs}",
        f"--timeout={round(args.idle_timeout * 1000)}ms",
    ]
    if args.qlog_dir:
        argv.append(f"--qlog-dir={args.qlog_dir}")
    return argv + [host, str(port), str(key), str(cert)]


async def server_main(args: argparse.Namespace) -> int:
    version = package_version("ngtcp2-server") or "unknown"
    host, port = parse_address(args.listen)
    workdir = Path(tempfile.mkdtemp(prefix="qasm-ngtcp2-server-"))
    try:
        htdocs = workdir / "htdocs"
        served = {args.bytes: write_payload(htdocs, args.bytes, args.seed)}
        certificate, key = certificate_pem(*self_signed_certificate(args.server_name))
        certificate_file, key_file = workdir / "cert.pem", workdir / "key.pem"
        certificate_file.write_bytes(certificate)
        key_file.write_bytes(key)
        if args.qlog_dir:
            os.makedirs(args.qlog_dir, exist_ok=True)
        process = await asyncio.create_subprocess_exec(
            *server_argv(
                args,
                htdocs,
                workdir / "key.pem",
                workdir / "cert.pem",
                program_path(SERVER_PROGRAM),
            ),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            limit=LINE_LIMIT,
            preexec_fn=_die_with_parent,
        )
        with open(args.events, "a", encoding="utf-8") as stream:
            events = EventLog(stream)
            log = _EventWriter(ServerLog(served), events)
            reader = asyncio.create_task(_read_lines(process.stderr, log))
            deadline = time.monotonic() + LISTEN_TIMEOUT_S
            while not udp_port_bound(port):
                if process.returncode is not None or time.monotonic() > deadline:
                    print(f"{SERVER_PROGRAM} did not bind {args.listen}", file=sys.stderr)
                    return 1
                await asyncio.sleep(0.02)
            events.write(
                "listening",
                addr=[host, port],
                server_stack="ngtcp2",
                server_stack_version=version,
                protocol="h3",
            )
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, stop.set)
            waiter = asyncio.create_task(process.wait())
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait(
                {waiter, stopper}, timeout=args.max_lifetime, return_when=asyncio.FIRST_COMPLETED
            )
            stopper.cancel()
            if process.returncode is None:
                process.terminate()
                try:
                    await asyncio.wait_for(process.wait(), STOP_GRACE_S)
                except TimeoutError:
                    process.kill()
                    await process.wait()
            await reader
        return 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


class _EventWriter:
    def __init__(self, log: ServerLog, events: EventLog) -> None:
        self.log, self.events = log, events

    def feed(self, line: str, now: float) -> None:
        for name, fields in self.log.feed(line, now):
            self.events.write(name, **fields)


def parse_server_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m testbed.apps.ngtcp2 server")
    parser.add_argument("--listen", required=True, help="IPv4:PORT")
    parser.add_argument("--events", required=True)
    parser.add_argument("--idle-timeout", type=float, required=True)
    parser.add_argument("--max-lifetime", type=float, required=True)
    parser.add_argument("--bytes", type=int, required=True, help="the size clients ask for")
    parser.add_argument("--seed", type=int, required=True, help="the run's payload seed")
    parser.add_argument("--server-name", default="server.qasm.test", help="certificate name")
    parser.add_argument("--qlog-dir")
    parser.add_argument("--socket-buffer", type=int, help="accepted and ignored")
    parser.add_argument("--protocol", choices=("h3",), default="h3")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("client", "server"):
        print("usage: python -m testbed.apps.ngtcp2 client|server ...", file=sys.stderr)
        return 2
    if argv[0] == "server":
        return asyncio.run(server_main(parse_server_args(argv[1:])))
    args = parse_client_args(argv[1:])
    reports = asyncio.run(client_main(args))
    with open(args.out, "w", encoding="utf-8") as stream:
        json.dump([asdict(report) for report in reports], stream)
    return 0


if __name__ == "__main__":
    sys.exit(main())
