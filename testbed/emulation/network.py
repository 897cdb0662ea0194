"""The emulated network of one scenario: Mininet hosts, an OVS switch, our controller.

`Emulation` is a context manager that owns everything it creates and removes it on exit,
also on an exception, Ctrl-C or SIGTERM (the runner turns those into exceptions). Facts it
relies on (measured on these machines): no openvswitch kernel module, so the switch uses OVS's
userspace datapath; veth offloads must be off or UDP checksums break through that datapath.

Shared connection state (`middlebox.state: redis`): unless the scenario names an external
Redis, the emulation starts a private redis-server (testbed/redis_server.py) the first time a
run needs one, on 127.0.0.1 where the controller is, with its directory under
/run/qasm/redis/<prefix>/ (recorded in the run record before it is made, the server's PID
right after it starts: `qasm clean` removes both after a crash), and stops it at teardown.
Each run keeps its keys under its own prefix, deleted when the run ends.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

from mininet.link import TCLink
from mininet.log import lg as mininet_log
from mininet.net import Mininet
from mininet.node import OVSSwitch, RemoteController

from qasm.controller.pipeline import MiddleboxConfig
from testbed.emulation.datapath import (
    EMULATION_MAX_IDLE_MS,
    DatapathSettingError,
    read_max_idle,
    write_max_idle,
)
from testbed.emulation.kernel import RouterKernel
from testbed.emulation.link_emulation import EmulatedLinks, LinkEnd, LinkSetupError
from testbed.emulation.ownership import (
    STATE_DIR,
    RunRecord,
    process_start_time,
    remove_run_resources,
)
from testbed.emulation.pinning import (
    CpuLayout,
    OvsAffinity,
    PinningError,
    pin_in_child,
    plan_layout,
)
from testbed.redis_server import RedisServer, RedisServerError
from topologies import TOPOLOGIES
from topologies.bindings import source_bindings
from topologies.roles import Roles

OFFLOADS = ("tx", "rx", "tso", "gso", "gro")
SWITCH_CONNECT_TIMEOUT_S = 20.0
# OVS backs off up to this long between controller connection attempts; the controller is
# restarted per variant, so keep it short. 1000 ms is the minimum OVS accepts. OVS 3.1 does
# not keep to it after a refused attempt (measured: retries 2, 4 and 8 s apart), hence
# `await_switches` points the switches at each controller only once it listens.
SWITCH_RECONNECT_MS = 1000
SWITCH_CONNECT_POLL_S = 0.02
_PR_SET_PDEATHSIG = 1
# ovs-ctl starts ovs-vswitchd at nice -10 (its --nice default); the controller, the rest of
# the middlebox, runs there too.
MIDDLEBOX_NICE = -10
REDIS_DIR = STATE_DIR / "redis"


class InfrastructureError(RuntimeError):
    """The emulation itself failed (not the QUIC connection under test)."""


def _die_with_parent() -> None:
    # Runs in the child before exec: if the runner dies (even by SIGKILL), the kernel sends
    # SIGKILL to this process, so no app outlives its run.
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _middlebox_process() -> None:
    """The controller's preexec: dies with the runner, and runs at the switch's priority.
    The middlebox stands for an appliance with its own CPU; at the endpoints' priority, 1,000
    connections' endpoints queued its packet-ins behind them (median handshake 4.1 s in qasm
    against 2.0 s in baseline), which measured the emulation, not the middlebox."""
    _die_with_parent()
    os.setpriority(os.PRIO_PROCESS, 0, MIDDLEBOX_NICE)


def _free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _connected_switches(decision_log: Path) -> set[int]:
    return {
        record.get("dpid")
        for line in decision_log.read_text().splitlines()
        if (record := json.loads(line)).get("event") == "switch_connected"
    }


def _set_controller(bridges: list[str], target: str) -> None:
    command = ["ovs-vsctl"]
    for bridge in bridges:
        command += ["--", "set-controller", bridge, target]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise InfrastructureError(f"ovs-vsctl set-controller {target}: {done.stderr.strip()}")


def _listening(port: int) -> bool:
    """Whether a socket of this network namespace listens on 127.0.0.1:`port`."""
    local = f"0100007F:{port:04X}"
    with open("/proc/net/tcp", encoding="ascii") as table:
        next(table)
        return any(
            fields[1] == local and fields[3] == "0A"  # 0A: TCP_LISTEN
            for fields in map(str.split, table)
        )


def check_prerequisites() -> None:
    """Fails with the reason when this machine cannot emulate (before creating anything)."""
    if os.geteuid() != 0:
        raise InfrastructureError("emulation needs root (Mininet creates namespaces and links)")
    for tool in ("mnexec", "ovs-vsctl", "ethtool", "tc", "ip"):
        if shutil.which(tool) is None:
            raise InfrastructureError(f"{tool} not found: run `make setup`")
    probe = subprocess.run(
        ["ovs-vsctl", "--timeout=5", "show"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        raise InfrastructureError(
            f"Open vSwitch is not running ({probe.stderr.strip()}): run `make setup`"
        )


class ManagedProcess:
    """A process the emulation started, with its log file; stopped on teardown."""

    def __init__(self, popen: subprocess.Popen, what: str, log_path: Path) -> None:
        self.popen = popen
        self.what = what
        self.log_path = log_path

    def stop(self, grace_s: float = 3.0, signum: int = signal.SIGTERM) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signum)
            try:
                self.popen.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()

    def cpu_seconds(self) -> float | None:
        """User + system CPU time so far (/proc/PID/stat fields 14-15), None once reaped."""
        try:
            stat = Path(f"/proc/{self.popen.pid}/stat").read_text()
        except OSError:
            return None
        fields = stat.rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def memory_kib(self) -> dict[str, int] | None:
        """Resident set now and its peak (/proc/PID/status VmRSS, VmHWM), None once reaped."""
        try:
            status = Path(f"/proc/{self.popen.pid}/status").read_text()
        except OSError:
            return None
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        try:
            return {
                "rss": int(fields["VmRSS"].split()[0]),
                "peak": int(fields["VmHWM"].split()[0]),
            }
        except (KeyError, ValueError, IndexError):
            return None  # a zombie has no memory lines

    def log_tail(self, lines: int = 5) -> str:
        with contextlib.suppress(OSError):
            return " | ".join(
                self.log_path.read_text(errors="replace").strip().splitlines()[-lines:]
            )
        return ""


class Emulation:
    """`topology` is the scenario's topology model (testbed/scenario/models.py): its name
    picks the Topo, `topo_kwargs()` builds it and `link_conditions()` says what each link
    kind asks for."""

    def __init__(
        self,
        topology,
        record: RunRecord,
        log_dir: Path,
        cpu_pinning: bool = False,
        link_seed: int | None = None,
    ) -> None:
        self.record = record
        # Pinning (testbed.emulation.pinning): planned here so an impossible layout fails before
        # anything is created.
        self.layout: CpuLayout | None = None
        if cpu_pinning:
            try:
                self.layout = plan_layout(os.sched_getaffinity(0))
            except PinningError as exc:
                raise InfrastructureError(str(exc)) from exc
        self._ovs_affinity: OvsAffinity | None = None
        self.links: EmulatedLinks | None = None
        self._link_seed = link_seed
        self.log_dir = log_dir
        self.topo = TOPOLOGIES[topology.name](prefix=record.prefix, **topology.topo_kwargs())
        self.roles: Roles = self.topo.roles
        # Which source addresses each middlebox port may carry (location integrity).
        self.source_bindings = source_bindings(self.topo, self.roles)
        # The router host's kernel middlebox (topologies with a router), once it runs.
        self.kernel: RouterKernel | None = None
        self._conditions = topology.link_conditions()
        self.openflow_port = _free_tcp_port()
        self.net: Mininet | None = None
        self.controller: ManagedProcess | None = None
        self._processes: list[ManagedProcess] = []
        self.redis: RedisServer | None = None  # the private store, once a run needs it

    # --- lifecycle -----------------------------------------------------------------------

    def __enter__(self) -> Emulation:
        try:
            self._build()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.teardown()

    def _build(self) -> None:
        check_prerequisites()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(self.log_dir / "mininet.log")
        mininet_log.handlers[:] = [handler]
        mininet_log.setLevel(logging.INFO)
        # Recorded before creation, so a crash at any later point leaves a clean-up trail.
        self.record.bridges = list(self.roles.switches)
        self.record.save()
        # batch: Mininet otherwise adds every port in one ovs-vsctl line typed into the
        # switch's shell, and the terminal cuts lines at 4 KB: with 60 clients the switch got
        # 45 ports and one called "q2". Batch start-up runs ovs-vsctl as a process instead.
        switch = partial(OVSSwitch, datapath="user", reconnectms=SWITCH_RECONNECT_MS, batch=True)
        self.net = Mininet(
            topo=self.topo,
            switch=switch,
            link=TCLink,
            controller=None,
            autoSetMacs=False,
            build=False,
            waitConnected=False,
        )
        self.net.addController(
            RemoteController(f"{self.record.prefix}ctl", ip="127.0.0.1", port=self.openflow_port)
        )
        self.net.build()
        for node in self.net.hosts + self.net.switches:
            self.record.own(node.pid, f"mininet shell {node.name}")
        self._disable_ipv6()
        self.net.start()
        # Mininet logs a failed ovs-vsctl and carries on; a missing bridge must stop us here.
        for bridge in self.roles.switches:
            if subprocess.run(["ovs-vsctl", "br-exists", bridge], check=False).returncode != 0:
                raise InfrastructureError(
                    f"OVS bridge {bridge} was not created; see {self.log_dir / 'mininet.log'}"
                )
        self._disable_offloads()
        self._shorten_datapath_idle()
        self.topo.configure(self.net)
        if self.roles.router is not None:
            self.kernel = RouterKernel(self.net.get(self.roles.router.host).popen)
        if self.layout is not None:
            self._pin_switch()
        self._apply_link_conditions()

    def _shorten_datapath_idle(self) -> None:
        """Cached datapath flows go after EMULATION_MAX_IDLE_MS idle, not 10 s
        (testbed.emulation.datapath). The value it replaces is saved in the run record first:
        teardown's `remove_run_resources`, or `qasm clean` after a crash, puts it back."""
        try:
            self.record.datapath_max_idle = {"saved": read_max_idle()}
            self.record.save()
            write_max_idle(str(EMULATION_MAX_IDLE_MS))
        except DatapathSettingError as exc:
            raise InfrastructureError(str(exc)) from exc

    def _pin_switch(self) -> None:
        try:
            self._ovs_affinity = OvsAffinity(self.layout.network)
        except PinningError as exc:
            raise InfrastructureError(str(exc)) from exc
        self._ovs_affinity.pin()
        # Saved in the run record too, so `qasm clean` restores it after a crash.
        self.record.pinned = {
            "process": {
                "pid": self._ovs_affinity.pid,
                "start_time": process_start_time(self._ovs_affinity.pid),
                "what": "ovs-vswitchd",
            },
            "saved": {str(tid): cpus for tid, cpus in self._ovs_affinity.saved.items()},
        }
        self.record.save()

    def _apply_link_conditions(self) -> None:
        """Delay, jitter and loss on the host ends (testbed.emulation.link_emulation); bandwidth is
        TCLink's, applied by Mininet above."""
        ends = [
            LinkEnd(host, interface.name, self._conditions[interface.link])
            for host, interface in self.roles.link_ends()
        ]
        try:
            self.links = EmulatedLinks.apply(
                ends, lambda host: self.net.get(host).popen, self.record.own, self._link_seed
            )
            self.links.measure()
        except LinkSetupError as exc:
            raise InfrastructureError(str(exc)) from exc
        if self.layout is not None:
            for pid in self.links.delay_line_pids:
                _pin_process(pid, self.layout.network)

    def link_failure(self) -> str | None:
        """Why a link no longer emulates its asked conditions (naming it), or None."""
        return self.links.failure() if self.links is not None else None

    def link_record(self) -> dict:
        """metadata.json's link_emulation: method, asked conditions per link, fidelity."""
        return self.links.record() if self.links is not None else {}

    def dump_flows(self, path: Path) -> None:
        """Every switch's flow table now (OpenFlow 1.3), into `path`, one section per switch;
        a failure is written there instead (the table is evidence, never a reason to fail
        the run)."""
        sections = []
        for bridge in self.roles.switches:
            commands = [["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", bridge]]
            if bridge in self.roles.static_switches:
                # A front or back end: OpenFlow 1.5 tables, groups and what each bucket took.
                commands = [
                    ["ovs-ofctl", "-O", "OpenFlow15", what, bridge]
                    for what in ("dump-flows", "dump-groups", "dump-group-stats")
                ]
            text = ""
            for argv in commands:
                try:
                    result = subprocess.run(argv, capture_output=True, text=True, timeout=10)
                    ok = result.returncode == 0
                    text += result.stdout if ok else f"# {argv}: {result.stderr}"
                except (OSError, subprocess.TimeoutExpired) as exc:
                    text += f"# {argv}: {exc}\n"
            sections.append(f"# {bridge}\n{text}")
        path.write_text("".join(sections))

    def _disable_ipv6(self) -> None:
        """The testbed is IPv4. A host's IPv6 sends router solicitations, MLD reports and
        duplicate-address probes at times of its own, each a packet-in that the controller
        floods; off before the switch starts, none of them adds noise to the counts."""
        for host in self.net.hosts:
            host.cmd(
                "sysctl", "-qw",
                "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1",
            )  # fmt: skip

    def _disable_offloads(self) -> None:
        for host in self.net.hosts:
            for intf in host.intfList():
                if intf.name != "lo":
                    host.cmd("ethtool", "-K", intf.name, *_offload_args())
        for switch in self.net.switches:
            for intf in switch.intfList():
                if intf.name != "lo":
                    subprocess.run(
                        ["ethtool", "-K", intf.name, *_offload_args()],
                        capture_output=True,
                        check=False,
                    )

    def teardown(self) -> None:
        for process in reversed(self._processes):
            process.stop()
        self._processes.clear()
        self.stop_controller()
        self._stop_redis()
        if self.links is not None:
            for problem in self.links.remove():  # before the namespaces go with net.stop()
                mininet_log.error(f"link emulation removal: {problem}")
        if self._ovs_affinity is not None:
            for problem in self._ovs_affinity.restore():
                mininet_log.error(f"restoring ovs-vswitchd's CPU affinity: {problem}")
            self._ovs_affinity = None
            self.record.pinned = None
            with contextlib.suppress(OSError):
                self.record.save()
        if self.net is not None:
            try:
                self.net.stop()
            except Exception as exc:  # fall through to the prefix-scoped removal below
                mininet_log.error(f"net.stop failed: {exc}")
            self.net = None
        # Whatever Mininet missed, scoped to this run's prefix and recorded processes only.
        remove_run_resources(self.record)
        self.record.path.unlink(missing_ok=True)

    # --- the controller ------------------------------------------------------------------

    def launch_controller(self, config: MiddleboxConfig, artifacts: Path) -> Path:
        """Starts the controller for one variant and returns its decision log, without
        waiting: its start-up (~1 s of imports and the switches' reconnection) overlaps the
        endpoints' own. No traffic may start before `await_switches`."""
        self.stop_controller()
        reset = getattr(self.topo, "reset", None)
        if reset is not None:
            # The network's own state (a front end's tables, replicas' links) as every run
            # starts from it.
            try:
                reset(self.net, config)
            except RuntimeError as exc:
                raise InfrastructureError(str(exc)) from exc
        # A port of its own: the switches connect to it as soon as it listens, not at their
        # next retry of the last controller's port (await_switches).
        self.openflow_port = _free_tcp_port()
        config_path = artifacts / "controller.json"
        config_path.write_text(config.to_json())
        decision_log = artifacts / "decisions.jsonl"
        decision_log.touch()
        log_path = artifacts / "controller.log"
        argv = [
            sys.executable, "-m", "qasm.controller",
            "--config", str(config_path),
            "--decision-log", str(decision_log),
            "--listen", f"127.0.0.1:{self.openflow_port}",
        ]  # fmt: skip
        with open(log_path, "w") as log:
            popen = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=pin_in_child(self.layout and self.layout.network, _middlebox_process),
            )
        self.record.own(popen.pid, "controller")
        self.controller = ManagedProcess(popen, "controller", log_path)
        return decision_log

    def await_switches(self, decision_log: Path) -> None:
        """Once the controller listens, points every switch it drives at it (a new target:
        OVS connects at once, with no backoff left from the last controller), and returns
        once they have all connected."""
        # The topology's own (static) switches never connect: no controller drives them.
        controlled = [s for s in self.roles.switches if s not in self.roles.static_switches]
        deadline = time.monotonic() + SWITCH_CONNECT_TIMEOUT_S
        target = f"tcp:127.0.0.1:{self.openflow_port}"
        pointed = False
        while time.monotonic() < deadline:
            failure = self.controller_failure()
            if failure:
                raise InfrastructureError(failure)
            if not pointed and _listening(self.openflow_port):
                _set_controller(controlled, target)
                pointed = True
            elif pointed and len(_connected_switches(decision_log)) >= len(controlled):
                return
            time.sleep(SWITCH_CONNECT_POLL_S)
        if not pointed:
            problem = f"the controller did not listen on {target}"
        else:
            problem = f"not every switch ({len(controlled)}) connected to the controller"
        raise InfrastructureError(
            f"{problem} within {SWITCH_CONNECT_TIMEOUT_S:g} s: {self.controller.log_tail()}"
        )

    def stop_controller(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    # --- shared connection state and faults --------------------------------------------

    def state_store_url(self, external: str | None = None) -> str:
        """Where a run keeps its middlebox state with `state: redis`: `external`, or this
        emulation's private redis-server (started on first use, from the runner's main
        thread: the server dies with the thread that started it)."""
        if external:
            return external
        if self.redis is None:
            base = REDIS_DIR / self.record.prefix
            # Recorded before it exists, so a crash at any later point leaves a trail.
            self.record.directories.append(str(base))
            self.record.save()
            base.mkdir(parents=True, exist_ok=True)
            server = RedisServer(base, own=self.record.own)
            try:
                server.start()
            except RedisServerError as exc:
                raise InfrastructureError(str(exc)) from exc
            self.redis = server
        return self.redis.url

    def forget_store(self, config: MiddleboxConfig) -> None:
        """Deletes a finished run's keys (its own prefix) from the store it used."""
        if config.state != "redis" or not config.state_url:
            return
        from qasm.state.redis_store import connect_redis

        try:
            client = connect_redis(config.state_url)
        except (ValueError, ConnectionError) as exc:
            raise InfrastructureError(f"the run's state store went away: {exc}") from exc
        try:
            keys = list(client.scan_iter(match=f"{config.state_prefix}:*", count=1000))
            for start in range(0, len(keys), 1000):
                client.unlink(*keys[start : start + 1000])
        finally:
            client.close()

    def _stop_redis(self) -> None:
        if self.redis is None:
            return
        self.redis.stop()
        self.redis = None
        base = REDIS_DIR / self.record.prefix
        shutil.rmtree(base, ignore_errors=True)
        if str(base) in self.record.directories:
            self.record.directories.remove(str(base))
            with contextlib.suppress(OSError):
                self.record.save()

    def kill_replica(self, replica: int) -> list[str]:
        """Stops a middlebox replica's datapath (topologies that have replicas); returns
        what went down."""
        kill = getattr(self.topo, "kill_replica", None)
        if kill is None:
            raise InfrastructureError(f"topology {type(self.topo).__name__} has no replicas")
        return kill(self.net, replica)

    def controller_failure(self) -> str | None:
        """Why the controller is no longer running, or None while it is."""
        if self.controller is None or self.controller.popen.poll() is None:
            return None
        return (
            f"controller exited with code {self.controller.popen.returncode}: "
            f"{self.controller.log_tail()}"
        )

    # --- hosts ---------------------------------------------------------------------------

    def forget_neighbours(self) -> None:
        """Flushes ARP caches so every run starts from the same state."""
        for host in self.net.hosts:
            host.cmd("ip", "neigh", "flush", "all")

    def forget_cached_flows(self) -> None:
        """Empties Open vSwitch's datapath flow cache, so every run starts from its own
        tables. The cache outlives the run before and its controller: the switches keep
        their datapath port numbers, so an entry of that run (a retired path's "to the
        controller", kept until idle for other_config:max-idle, 500 ms here) matches this run's
        packets on the same 4-tuple until the revalidators catch up with the new rules, a
        few ms. Measured at 200 Hz (rate.yaml), five series without this: the first run of
        each had 0 migration packet-ins, 19 of the 24 runs after a first had 2-44, all on the
        NAT's public ports (each run's controller hands them out from the first again) or on
        client ports the run before used. The cache is the whole machine's (one netdev
        datapath), but only a cache: the next packet of any bridge fills it again from that
        bridge's tables, and emulations run one at a time (the emulation lock)."""
        done = subprocess.run(
            ["ovs-appctl", "revalidator/purge"], capture_output=True, text=True, timeout=10
        )
        if done.returncode != 0:
            raise InfrastructureError(f"ovs-appctl revalidator/purge: {done.stderr.strip()}")

    def start_on_host(
        self, host_name: str, argv: list[str], log_path: Path, what: str | None = None
    ) -> ManagedProcess:
        host = self.net.get(host_name)
        with open(log_path, "w") as log:
            popen = host.popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=pin_in_child(self.layout and self.layout.endpoints, _die_with_parent),
            )
        what = what or (argv[2] if len(argv) > 2 else argv[0])
        self.record.own(popen.pid, f"{what} on {host_name}")
        process = ManagedProcess(popen, host_name, log_path)
        self._processes.append(process)
        return process

    def stop_process(
        self, process: ManagedProcess, grace_s: float = 3.0, signum: int = signal.SIGTERM
    ) -> None:
        process.stop(grace_s, signum)
        if process in self._processes:
            self._processes.remove(process)


def _pin_process(pid: int, cpus: tuple[int, ...]) -> None:
    """Every thread of a running process onto `cpus` (threads it starts later inherit)."""
    with contextlib.suppress(OSError):  # it ended: its failure is reported elsewhere
        for task in Path(f"/proc/{pid}/task").iterdir():
            os.sched_setaffinity(int(task.name), cpus)


def _offload_args() -> list[str]:
    return [arg for name in OFFLOADS for arg in (name, "off")]
