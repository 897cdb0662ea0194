"""Runs a scenario: per point of its sweep, one emulation, then each (repetition, migration
kind, variant) in turn. Consecutive points with the same topology share the emulation.

Every run gets a fresh controller (so no state leaks between variants), fresh ARP caches and
a fresh server; clients then transfer and migrate. Records are appended to records.jsonl and
flushed as each run ends, and summary.json is rewritten, so an interrupted experiment keeps
every finished run. Artifacts of each run land in RUN_DIR/artifacts/NNN-variant-kind-rR/.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import importlib.metadata
import itertools
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from qasm.agents.messages import derive_client_key
from qasm.controller.pipeline import (
    STATEFUL_VARIANTS,
    AgentSettings,
    HopSettings,
    MiddleboxConfig,
)
from qasm.functions.loadbalancer import Backend, LoadBalancerSettings
from qasm.functions.nat import NatSettings, pool_slice
from qasm.functions.ratelimit import RateLimit
from qasm.kernel.netfilter import KERNEL_VARIANTS, KernelSettings, kernel_bucket_bytes
from testbed.analysis.matrix import format_matrix, survival_matrix
from testbed.analysis.summary import format_table, summarize
from testbed.apps.transfer import alpn
from testbed.emulation import kernel as router_kernel
from testbed.emulation.captures import start_captures, stop_captures
from testbed.emulation.datapath import EMULATION_MAX_IDLE_MS
from testbed.emulation.faults import FaultSchedule
from testbed.emulation.kernel import ConntrackSampler
from testbed.emulation.network import Emulation, InfrastructureError, ManagedProcess
from testbed.emulation.ownership import emulation_lock, new_run_record
from testbed.emulation.progress import Progress
from testbed.emulation.resume import Resumption, code_fingerprint
from testbed.records.metrics import (
    arm,
    build_record,
    connections_ended,
    controller_memory,
    flood_effect,
    flow_packets,
    hijacked_locations,
    host_agent_summary,
    kernel_record,
    read_decisions,
    replica_record,
)
from testbed.records.wire_checks import wire_record
from testbed.scenario import Scenario
from topologies.roles import ClientRole, Roles, ServerRole

SERVER_READY_TIMEOUT_S = 15.0
# Beyond the client's own run timeout, before the runner gives up on the client process.
CLIENT_EXIT_GRACE_S = 15.0
# How often the runner looks for a stop signal that Python swallowed (see _StopSignals).
STOP_POLL_S = 0.1
REPOSITORY = Path(__file__).resolve().parents[2]
SOCKET_BUFFER_BYTES = 4 * 1024 * 1024
# Every client process has this long to set up before the run's connections start without
# the late ones (measured: ~0.3 s of CPU per process; 50 processes share 2 cores).
CLIENTS_READY_TIMEOUT_S = 60.0
HOST_AGENT_READY_TIMEOUT_S = 10.0
# After its client exits: the host agent's last retirements (quiet paths) go out in this.
HOST_AGENT_QUIET_S = 1.0
START_MARGIN_S = 0.05  # from the start time written to the connections' first packets
START_FILE = "start"


@dataclass(frozen=True)
class RunSpec:
    index: int
    repetition: int
    migration: str | None
    variant: str
    scenario: Scenario  # the sweep point this run belongs to
    agent_mode: str | None = None  # qasm only: push or pull

    @property
    def arm(self) -> str:
        """The variant as results name it (records.metrics.arm)."""
        return arm(self.variant, self.agent_mode)

    @property
    def name(self) -> str:
        return f"{self.index:03d}-{self.arm}-{self.migration or 'none'}-r{self.repetition}"

    @property
    def topology_key(self) -> str:
        return self.scenario.topology.model_dump_json()

    def describe(self) -> str:
        point = ", ".join(f"{k}={v}" for k, v in self.scenario.parameters.items())
        where = f" [{point}]" if point else ""
        return f"{self.arm} {self.migration or 'no migration'} rep {self.repetition}{where}"


def plan_runs(scenario: Scenario, variants: tuple[str, ...], repetitions: int) -> list[RunSpec]:
    """Per sweep point, variants (qasm once per agent mode) interleaved with their order
    rotated per repetition, so drift hits all alike."""
    specs = []
    for point in scenario.points:
        arms = [
            (variant, mode)
            for variant in point.applicable(variants)
            for mode in (point.agent.modes if variant == "qasm" else (None,))
        ]
        for repetition in range(repetitions):
            shift = repetition % len(arms)
            order = arms[shift:] + arms[:shift]
            for kind in point.migration_kinds:
                for variant, mode in order:
                    specs.append(RunSpec(len(specs) + 1, repetition, kind, variant, point, mode))
    return specs


def records_per_run(specs: list[RunSpec]) -> dict[str, int]:
    """How many records each run writes when it finishes: one per connection."""
    return {
        spec.name: spec.scenario.topology.clients * spec.scenario.workload.connections
        for spec in specs
    }


def repetition_seed(scenario_seed: int, repetition: int) -> int:
    digest = hashlib.sha256(f"{scenario_seed}:{repetition}".encode()).digest()
    return int.from_bytes(digest[:4], "big")


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _command_output(*argv: str) -> str | None:
    try:
        result = subprocess.run(list(argv), capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return None
    return (
        result.stdout.strip().splitlines()[0] if result.returncode == 0 and result.stdout else None
    )


def collect_metadata(scenario: Scenario, seed: int, variants, repetitions: int) -> dict:
    from mininet.net import VERSION as MININET_VERSION

    dirty = _command_output("git", "-C", str(REPOSITORY), "status", "--porcelain")
    return {
        "schema_version": 1,
        "scenario": str(scenario.path),
        "scenario_sha256": scenario.sha256,
        "scenario_name": scenario.name,
        "seed": seed,
        "variants": list(variants),
        "repetitions": repetitions,
        "repetition_seeds": [repetition_seed(seed, r) for r in range(repetitions)],
        "sweep": [point.parameters for point in scenario.sweep],
        "git_commit": _command_output("git", "-C", str(REPOSITORY), "rev-parse", "HEAD"),
        "git_dirty": bool(dirty),
        "versions": {
            "python": platform.python_version(),
            "aioquic": _version("aioquic"),
            "os-ken": _version("os-ken"),
            "mininet": MININET_VERSION,
            "openvswitch": _command_output("ovs-vsctl", "--version"),
            "kernel": platform.release(),
        },
        "ovs_datapath": "netdev (userspace)",
        # other_config:max-idle while the emulation runs (testbed.emulation.datapath).
        "ovs_datapath_max_idle_ms": EMULATION_MAX_IDLE_MS,
        # Filled in once each emulation is up (ExperimentRunner._record_emulation).
        "link_emulation": None,
        "cpu_pinning": None,
        "argv": sys.argv,
        "started_at": datetime.datetime.now(datetime.UTC).isoformat(),
        "ended_at": None,
        "status": "running",
    }


class _Terminated(KeyboardInterrupt):
    """SIGTERM/SIGHUP received: unwind like Ctrl-C so teardown runs (and be reported as
    Ctrl-C is: `qasm run` names where the finished runs are)."""


class _StopSignals:
    """Ctrl-C, SIGTERM and SIGHUP stop the experiment, reliably.

    The handler raises at once (KeyboardInterrupt for SIGINT, _Terminated otherwise), but
    Python swallows an exception raised where it only prints "Exception ignored" (an
    at-fork hook while a process starts, a __del__): the signal would be lost and the run
    go on. So the handler also records the signal, and `check()`, called at the runner's
    safe points, raises it again.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict = {}

    def __enter__(self) -> _StopSignals:
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *_exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum, _frame) -> None:
        self.received = signum
        self.check()

    def check(self) -> None:
        if self.received == signal.SIGINT:
            raise KeyboardInterrupt
        if self.received is not None:
            raise _Terminated(f"signal {signal.Signals(self.received).name}")


class ExperimentRunner:
    def __init__(
        self,
        scenario: Scenario,
        out_dir: Path,
        variants: tuple[str, ...] | None = None,
        repetitions: int | None = None,
        seed: int | None = None,
        log=print,
        cpu_pinning: bool | None = None,
        resume: Resumption | None = None,
    ) -> None:
        self.scenario = scenario
        self.out_dir = out_dir
        self.variants = variants or scenario.variants
        self.repetitions = repetitions or scenario.repetitions
        self.seed = scenario.seed if seed is None else seed
        self.log = log
        self.cpu_pinning = scenario.cpu_pinning if cpu_pinning is None else cpu_pinning
        self.records: list[dict] = []
        self.stop_signals = _StopSignals()
        self.resume = resume

    def options(self) -> dict:
        """What, besides the scenario file, decides the runs (a resumed run must match)."""
        return {
            "variants": list(self.variants),
            "repetitions": self.repetitions,
            "seed": self.seed,
            "cpu_pinning": self.cpu_pinning,
        }

    def run(self) -> list[dict]:
        """Runs everything; raises InfrastructureError (or KeyboardInterrupt) after saving
        what finished."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        specs = plan_runs(self.scenario, self.variants, self.repetitions)
        if self.resume is None:
            metadata = collect_metadata(self.scenario, self.seed, self.variants, self.repetitions)
            metadata["options"] = self.options()
            metadata["code_sha256"] = code_fingerprint(REPOSITORY)
            (self.out_dir / "records.jsonl").touch()
        else:
            metadata = self.resume.metadata
            metadata.setdefault("resumed", []).append(
                {
                    "at": datetime.datetime.now(datetime.UTC).isoformat(),
                    "runs_finished_before": len(self.resume.finished),
                    "argv": sys.argv,
                }
            )
            metadata["status"] = "running"
            # Only the finished runs' records stay; the others' runs are done again.
            self.records = list(self.resume.records)
            temporary = self.out_dir / ".records.jsonl.tmp"
            temporary.write_text("".join(json.dumps(r) + "\n" for r in self.records))
            temporary.replace(self.out_dir / "records.jsonl")
            specs = [spec for spec in specs if spec.name not in self.resume.finished]
        self._write_json("metadata.json", metadata)
        try:
            if any(spec.variant in KERNEL_VARIANTS for spec in specs):
                # Before anything starts: a kernel that cannot run the variant is named.
                problem = router_kernel.probe()
                if problem:
                    raise InfrastructureError(f"the kernel variants cannot run here: {problem}")
            with (
                self.stop_signals,
                emulation_lock(on_wait=lambda: self.log("waiting for another qasm emulation")),
            ):
                done_before = len(self.resume.finished) if self.resume else 0
                # Elapsed and ETA exclude the wait.
                progress = Progress(len(specs) + done_before, done_before=done_before)
                record = new_run_record(str(self.out_dir))
                # Every bridge, link and host process of the run starts with it.
                metadata["emulation_prefix"] = record.prefix
                for _, group in itertools.groupby(specs, key=lambda spec: spec.topology_key):
                    group = list(group)
                    point = group[0].scenario
                    with Emulation(
                        point.topology,
                        record,
                        self.out_dir / "artifacts",
                        cpu_pinning=self.cpu_pinning,
                        link_seed=self.seed,
                    ) as emulation:
                        links = self._record_emulation(metadata, emulation, point)
                        for spec in group:
                            self._run_one(emulation, spec, progress)
                    # Now removed: the delay lines' exit counters (drops, most held).
                    links["links"] = emulation.link_record().get("links", {})
                self.stop_signals.check()
            metadata["status"] = "finished"
        except KeyboardInterrupt:  # also SIGTERM and SIGHUP (_Terminated)
            metadata["status"] = "interrupted"
            raise
        except InfrastructureError as exc:
            metadata["status"] = f"infrastructure failure: {exc}"
            raise
        finally:
            metadata["ended_at"] = datetime.datetime.now(datetime.UTC).isoformat()
            self._write_json("metadata.json", metadata)
        return self.records

    def _run_one(self, emulation: Emulation, spec: RunSpec, progress: Progress) -> None:
        self.stop_signals.check()
        started = time.monotonic()
        progress.begin(spec.index, spec.describe())
        scenario = spec.scenario
        roles = emulation.roles
        artifacts = self.out_dir / "artifacts" / spec.name
        if artifacts.exists():  # a resumed run's unfinished attempt: its files go
            shutil.rmtree(artifacts)
        artifacts.mkdir(parents=True)
        config = self._middlebox_config(scenario, spec, roles, emulation)
        if emulation.kernel is not None:
            emulation.kernel.clear()  # no rules or entries of the run before
            if spec.variant in KERNEL_VARIANTS:
                emulation.kernel.apply(_kernel_settings(scenario, spec.variant, roles))
                (artifacts / "router-rules.txt").write_text(emulation.kernel.ruleset())
        emulation.forget_neighbours()
        emulation.forget_cached_flows()
        decision_log = emulation.launch_controller(config, artifacts)
        seed = repetition_seed(self.seed, spec.repetition)
        servers = []
        for server in roles.servers(_load_balanced(scenario)):
            for process in range(scenario.workload.server_processes):
                # One at a time: processes sharing a port are its sockets in binding order.
                events_path = artifacts / _server_file(server, process, "events", "jsonl")
                launched = self._start_server(scenario, emulation, server, process, artifacts, seed)
                self._wait_for_server(launched, events_path)
                servers.append((launched, events_path))
        captures = start_captures(emulation, artifacts / "pcap") if scenario.artifacts.pcap else []
        host_agents = {
            client.host: self._start_host_agent(emulation, client, spec, artifacts)
            for client in roles.clients
            if _host_agent(spec)
        }
        clients = [
            (client, self._start_client(emulation, client, spec, seed, artifacts))
            for client in roles.clients
        ]
        emulation.await_switches(decision_log)
        controller_memory_start = emulation.controller.memory_kib()
        # CPU spent starting up (imports, os-ken, the switches' connection): not the run's.
        controller_cpu_start = emulation.controller.cpu_seconds()
        self._start_connections(clients, artifacts)
        start_at = float((artifacts / START_FILE).read_text())
        faults = FaultSchedule(scenario.faults, start_at, emulation.kill_replica).start()
        flood = self._start_flood(emulation, spec, seed, artifacts) if scenario.flood else None
        service = (config.service_ip, config.service_port)
        prefix = emulation.record.prefix
        with contextlib.ExitStack() as sampling:
            sampler = None
            if spec.variant in KERNEL_VARIANTS:
                sampler = sampling.enter_context(
                    ConntrackSampler(emulation.kernel, {c.host: c.ips for c, _ in clients}, service)
                )
            reports = [
                self._await_client(scenario, process, artifacts, client.host)
                for client, process in clients
            ]
        faults.stop()
        for (client, _), host_reports in zip(clients, reports, strict=True):
            if client.host in host_agents:
                agent = host_agents[client.host]
                _add_host_agent(host_reports, self._stop_host_agent(emulation, agent, artifacts))
        conntrack = emulation.kernel.entries() if spec.variant in KERNEL_VARIANTS else None
        if conntrack is not None:
            (artifacts / "conntrack.txt").write_text("".join(f"{entry}\n" for entry in conntrack))
        flood_report = self._stop_flood(emulation, flood, artifacts) if flood else None
        if captures:
            counters = stop_captures(emulation, captures)
            _write_json_file(artifacts / "pcap" / "captures.json", counters)
        emulation.dump_flows(artifacts / "flows.txt")  # the switches' tables as the run left them
        failure = emulation.controller_failure() or emulation.link_failure() or faults.error()
        controller_cpu_end = emulation.controller.cpu_seconds()
        controller_cpu_s = (
            controller_cpu_end - controller_cpu_start
            if controller_cpu_end is not None and controller_cpu_start is not None
            else None
        )
        controller_memory_end = emulation.controller.memory_kib()
        for process, _ in servers:
            emulation.stop_process(process)
        emulation.stop_controller()  # it logs its tables' end state as it stops
        emulation.forget_store(config)  # the run's keys in the shared store
        if failure:
            raise InfrastructureError(f"run {spec.name}: {failure}")
        events = sorted(
            (e for _, path in servers for e in _read_jsonl(path)), key=lambda e: e.get("t", 0)
        )
        decisions = read_decisions(decision_log)
        hops = tuple(datapath.dpid for datapath in roles.middleboxes)
        if spec.variant in KERNEL_VARIANTS:
            hops = ()  # the switches only forward: the router is the middlebox
        positions = _positions(roles) if len(_positions(roles)) < len(hops) else None
        carried = None
        if positions:  # replicas: which carried each path, from the rules' counters
            bridges = {datapath.switch: datapath.dpid for datapath in roles.middleboxes}
            carried = flow_packets((artifacts / "flows.txt").read_text(), bridges)
        stateful = spec.variant != "baseline"
        shared_host = scenario.workload.connections > 1
        records = []
        connections = sum(len(host_reports) for host_reports in reports)
        for (client, _), host_reports in zip(clients, reports, strict=True):
            for connection, report in enumerate(host_reports):
                record = build_record(
                    variant=spec.variant,
                    agent_mode=spec.agent_mode,
                    functions=scenario.functions,
                    migration_kind=spec.migration,
                    repetition=spec.repetition,
                    addresses=client.ips,
                    report=report,
                    server_events=events,
                    decisions=decisions,
                    hops=hops,
                    ratelimit=_enforced_limit(scenario, spec.variant),
                    nat="nat" in scenario.functions and stateful,
                    shared_host=shared_host,
                    positions=positions,
                )
                record["topology"] = scenario.topology.name
                record["state"] = config.state
                if positions:
                    record["replicas"] = len(positions[0])
                    record.update(
                        replica_record(
                            decisions, positions, client.ips, report, carried, shared_host
                        )
                    )
                if scenario.faults:
                    record["faults"] = faults.record(report)
                record["parameters"] = scenario.parameters
                if spec.migration:
                    index = _first_index(client, scenario) + connection
                    unit, value = scenario.migration.trigger_for(index, seed)
                    record["migration_trigger"] = {unit: value}
                record["artifacts"] = str(artifacts.relative_to(self.out_dir))
                record["controller_cpu_startup_s"] = controller_cpu_start
                record["controller_cpu_s"] = (
                    controller_cpu_s / connections if controller_cpu_s is not None else None
                )
                record.update(
                    controller_memory(controller_memory_start, controller_memory_end, decisions)
                )
                record.update(connections_ended(decisions))
                if flood_report is not None:
                    record["flood"] = flood_report
                    record.update(flood_effect(decisions))
                    record["hijacked_locations"] = hijacked_locations(
                        decisions,
                        {d.dpid: emulation.source_bindings[d.switch] for d in roles.middleboxes},
                    )
                if conntrack is not None:
                    record.update(
                        kernel_record(
                            conntrack, client.ips, service, scenario.functions, shared_host
                        )
                    )
                    record["conntrack_over_time"] = sampler.samples[client.host]
                if scenario.artifacts.pcap and scenario.artifacts.keylog:
                    record["wire"] = wire_record(
                        [
                            artifacts / "pcap" / f"{i.name.removeprefix(prefix)}.pcap"
                            for i in client.interfaces
                        ],
                        artifacts / f"client-{client.host}.keylog",
                        service, spec.migration, shared_host,
                    )  # fmt: skip
                records.append(record)
        self._append_records(records)
        outcome = _outcome(records)
        progress.end(spec.index, spec.describe(), outcome, time.monotonic() - started)

    def _start_server(
        self,
        scenario: Scenario,
        emulation: Emulation,
        server: ServerRole,
        process: int,
        artifacts: Path,
        seed: int,
    ) -> ManagedProcess:
        workload = scenario.workload
        argv = [
            sys.executable, "-m", *_SERVER_MODULES[workload.server_stack],
            "--listen", f"{server.ip}:{emulation.roles.service_port}",
            "--events", str(artifacts / _server_file(server, process, "events", "jsonl")),
            "--idle-timeout", str(scenario.timeouts.idle_s),
            "--max-lifetime", str(
                scenario.timeouts.run_s + workload.start_window_s + 2 * CLIENT_EXIT_GRACE_S
            ),
            "--protocol", workload.protocol,
        ]  # fmt: skip
        if workload.server_stack == "ngtcp2":
            # gtlsserver serves a file: the adapter writes the payload the clients ask for.
            argv += ["--bytes", str(workload.bytes), "--seed", str(seed)]
            argv += ["--server-name", workload.server_name]
        else:
            argv += ["--stack", workload.server_stack]
        if _load_balanced(scenario):
            # Every variant meets the same servers: QUIC-LB CIDs whatever the balancer reads.
            argv += ["--quic-lb-server-id", server.server_id]
        elif scenario.workload.server_processes > 1:
            processes = scenario.workload.server_processes
            argv += ["--process", f"{process}/{processes}"]
        argv += self._endpoint_artifacts(scenario, emulation, artifacts)
        connections = len(emulation.roles.clients) * workload.connections
        if "--socket-buffer" not in argv and connections > workload.server_processes:
            # One socket is the receive queue of every connection a server process serves:
            # at the default size (~208 kB, 170 datagrams) the handshakes of a scale run's
            # hundreds of connections overflow it, and a connection whose handshake and
            # retransmissions keep being dropped dies (measured: 53 of 200 connections in a
            # reduced scale.yaml with pcaps on, the server never seeing their Finished).
            argv += ["--socket-buffer", str(SOCKET_BUFFER_BYTES)]
        log = artifacts / _server_file(server, process, "", "log")
        return emulation.start_on_host(server.host, argv, log)

    def _endpoint_artifacts(self, scenario: Scenario, emulation: Emulation, artifacts: Path):
        """Options both apps take: qlog on request; big socket buffers when a link delays
        (testbed/apps/sockets.py says why)."""
        argv = []
        if scenario.artifacts.qlog:
            argv += ["--qlog-dir", str(artifacts / "qlog")]
        if emulation.links is not None and emulation.links.has_delay:
            argv += ["--socket-buffer", str(SOCKET_BUFFER_BYTES)]
        return argv

    def _record_emulation(self, metadata: dict, emulation: Emulation, point: Scenario) -> dict:
        """metadata.json: how links are emulated (asked, method, measured fidelity) and the
        CPU layout; with several emulations (a sweep over topology), one entry each.
        Returns the entry, to complete with the delay lines' exit counters."""
        entry = emulation.link_record()
        if point.parameters:
            entry["parameters"] = point.parameters
        if metadata["link_emulation"] is None:
            metadata["link_emulation"] = entry
        else:
            metadata["link_emulation"].setdefault("emulations", []).append(entry)
        metadata["cpu_pinning"] = emulation.layout.to_dict() if emulation.layout else None
        if emulation.kernel is not None:
            # What the router's conntrack keeps for UDP (the kernel variants' middlebox).
            entry["conntrack"] = emulation.kernel.sysctls()
        self._write_json("metadata.json", metadata)
        return entry

    def _client_key(self, client: ClientRole) -> bytes:
        return derive_client_key(self.scenario.agent.secret.encode(), client.agent_id)

    def _middlebox_config(
        self, scenario: Scenario, spec: RunSpec, roles: Roles, emulation: Emulation
    ) -> MiddleboxConfig:
        agent = None
        if _uses_agent(spec.variant):
            agent = AgentSettings(
                ip=roles.agent_ip,
                port=roles.agent_port,
                mac=roles.agent_mac,
                keys={c.agent_id: self._client_key(c).hex() for c in roles.clients},
                addresses={c.agent_id: list(c.ips) for c in roles.clients},
                # netfilter-qasm anchors in conntrack, which cannot ask: push.
                mode=spec.agent_mode or "push",
                **scenario.agent.host_budget(scenario.workload.connections),
            )
        nat = scenario.nat
        # Shared state (redis) for the variants that keep state; the others keep none.
        state = scenario.middlebox.state if spec.variant in STATEFUL_VARIANTS else "memory"
        positions = {dpid: group for group in _positions(roles) for dpid in group}

        def nat_settings(datapath) -> NatSettings | None:
            if not nat:
                return None
            settings = NatSettings(
                datapath.nat_public_ip, datapath.nat_public_mac, ports=nat.ports,
                ports_per_source=nat.ports_per_source,
            )  # fmt: skip
            replicas = positions[datapath.dpid]
            if state == "memory" and len(replicas) > 1:
                # Replicas keeping state apart: each its own slice of the one public pool.
                return pool_slice(settings, replicas.index(datapath.dpid), len(replicas))
            return settings

        hops = tuple(
            HopSettings(
                datapath.dpid,
                nat_settings(datapath),
                tuple(
                    (port, tuple(sorted(ips)))
                    for port, ips in sorted(emulation.source_bindings[datapath.switch].items())
                ),
                datapath.position,
            )
            for datapath in roles.middleboxes
        )
        load_balanced = _load_balanced(scenario)
        if spec.variant in KERNEL_VARIANTS:
            # The router's kernel is the middlebox: the switches only forward, and the
            # Tracking Agent (netfilter-qasm) anchors announced paths in its conntrack.
            router = emulation.net.get(roles.router.host)
            return MiddleboxConfig(
                variant="qasm" if agent else "baseline",
                service_ip=roles.service_ip(load_balanced),
                service_port=roles.service_port,
                functions=(),
                hops=(),
                agent=agent,
                kernel_netns_pid=router.pid if agent else None,
            )
        return MiddleboxConfig(
            variant=spec.variant,
            service_ip=roles.service_ip(load_balanced),
            service_port=roles.service_port,
            functions=scenario.functions,
            hops=hops,
            agent=agent,
            ratelimit=scenario.ratelimit.limit() if scenario.ratelimit else None,
            sni=scenario.firewall.policy() if scenario.firewall else None,
            state_idle_timeout_s=scenario.middlebox.idle_timeout_s,
            max_connections=scenario.middlebox.max_connections,
            admission=scenario.middlebox.admission(),
            half_open_timeout_s=scenario.middlebox.half_open_timeout_s,
            half_open_per_source=scenario.middlebox.half_open_per_source,
            loadbalancer=LoadBalancerSettings(
                vip_mac=roles.vip_mac,
                backends=tuple(
                    Backend(s.ip, s.mac, s.switch_port, s.server_id) for s in roles.backends
                ),
            )
            if load_balanced
            else None,
            state=state,
            state_url=emulation.state_store_url(scenario.middlebox.state_url)
            if state == "redis"
            else None,
            state_prefix=f"{emulation.record.prefix}:{spec.name}",
        )

    def _wait_for_server(self, server: ManagedProcess, events_path: Path) -> None:
        deadline = time.monotonic() + SERVER_READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if server.popen.poll() is not None:
                raise InfrastructureError(
                    f"server exited with code {server.popen.returncode}: {server.log_tail()}"
                )
            if any(e.get("event") == "listening" for e in _read_jsonl(events_path)):
                return
            self.stop_signals.check()
            time.sleep(0.05)
        raise InfrastructureError(f"server not listening after {SERVER_READY_TIMEOUT_S:g} s")

    def _start_client(
        self, emulation: Emulation, client: ClientRole, spec: RunSpec, seed: int, artifacts: Path
    ) -> ManagedProcess:
        scenario = spec.scenario
        roles = emulation.roles
        service_ip = roles.service_ip(_load_balanced(scenario))
        workload = scenario.workload
        argv = [
            sys.executable, "-m", *_CLIENT_MODULES[workload.client_stack],
            "--server", f"{service_ip}:{roles.service_port}",
            "--local-ip", client.start_ip,
            "--client", client.host,
            "--bytes", str(scenario.workload.bytes),
            "--server-name", scenario.workload.server_name,
            "--seed", str(seed),
            "--idle-timeout", str(scenario.timeouts.idle_s),
            "--timeout", str(scenario.timeouts.run_s),
            "--out", str(artifacts / f"client-{client.host}.json"),
            "--connections", str(scenario.workload.connections),
            "--first-index", str(_first_index(client, scenario)),
            "--total-connections", str(len(roles.clients) * scenario.workload.connections),
            "--start-window", str(scenario.workload.start_window_s),
            "--ready-file", str(_ready_file(client, artifacts)),
            "--start-file", str(artifacts / START_FILE),
        ]  # fmt: skip
        argv += self._endpoint_artifacts(scenario, emulation, artifacts)
        argv += ["--protocol", workload.protocol]
        if workload.client_stack != "ngtcp2":
            argv += ["--stack", workload.client_stack]
        if scenario.artifacts.keylog or _host_agent(spec):  # the host agent reads it
            argv += ["--keylog", str(_keylog(client, artifacts))]
        if spec.migration:
            migration = scenario.migration
            targets = client.targets[spec.migration]
            if workload.client_stack == "ngtcp2" and spec.migration == "active":
                # gtlsclient cannot choose an address: it moves to a new port on its own.
                targets = (client.start_ip,)
            argv += ["--migrate", spec.migration, "--migrate-ip", *targets]
            if migration.at_bytes is not None:
                argv += ["--at-bytes", str(migration.at_bytes)]
            else:
                argv += ["--at-seconds", str(migration.at_seconds)]
            argv += ["--spread", str(migration.spread)]
            if scenario.migration.repeat_every_s:
                argv += ["--repeat-every", str(scenario.migration.repeat_every_s)]
            if spec.migration != "active":
                argv += ["--rebind-by", migration.rebind_by]
        if _uses_agent(spec.variant) and not _host_agent(spec):
            argv += [
                "--agent", f"{roles.agent_ip}:{roles.agent_port}",
                "--agent-id", client.agent_id,
                "--agent-key", self._client_key(client).hex(),
            ]  # fmt: skip
            if _rebound_by_network(spec):
                argv.append("--agent-register")
            if spec.agent_mode == "ahead":
                argv.append("--agent-admit")
        return emulation.start_on_host(client.host, argv, artifacts / f"client-{client.host}.log")

    def _start_host_agent(
        self, emulation: Emulation, client: ClientRole, spec: RunSpec, artifacts: Path
    ) -> ManagedProcess:
        """The host Client Agent beside an unmodified client (qasm/agents/host.py): it holds
        the first datagram of each new path in an NFQUEUE until the Tracking Agent acks. It
        must see the client's first Initial, so it runs (ready) before the client starts."""
        roles, scenario = emulation.roles, spec.scenario
        service_ip = roles.service_ip(_load_balanced(scenario))
        ready = artifacts / f"host-agent-{client.host}.ready"
        argv = [
            sys.executable, "-m", "testbed.apps.host_agent",
            "--service", f"{service_ip}:{roles.service_port}",
            "--agent", f"{roles.agent_ip}:{roles.agent_port}",
            "--agent-id", client.agent_id,
            "--agent-key", self._client_key(client).hex(),
            "--keylog", str(_keylog(client, artifacts)),
            "--events", str(artifacts / f"host-agent-{client.host}.jsonl"),
            "--install-rule",
            *(["--register"] if _rebound_by_network(spec) else []),
            "--ready-file", str(ready),
            "--lifetime-s", str(
                scenario.timeouts.run_s + scenario.workload.start_window_s
                + 2 * CLIENT_EXIT_GRACE_S
            ),
        ]  # fmt: skip
        process = emulation.start_on_host(
            client.host, argv, artifacts / f"host-agent-{client.host}.log", what="host agent"
        )
        deadline = time.monotonic() + HOST_AGENT_READY_TIMEOUT_S
        while not ready.exists():
            if process.popen.poll() is not None or time.monotonic() > deadline:
                raise InfrastructureError(
                    f"host agent on {client.host} not ready: {process.log_tail()}"
                )
            self.stop_signals.check()
            time.sleep(STOP_POLL_S / 10)
        return process

    def _stop_host_agent(
        self, emulation: Emulation, process: ManagedProcess, artifacts: Path
    ) -> dict:
        """Stops it once its retirements had time to finish; what it sent and held."""
        time.sleep(HOST_AGENT_QUIET_S)
        emulation.stop_process(process)
        events = process.log_path.with_suffix(".jsonl")
        return host_agent_summary(_read_jsonl(events))

    def _start_flood(self, emulation: Emulation, spec: RunSpec, seed: int, artifacts: Path):
        """The flooder on the first client's host, from its lte address (nat-rebind and
        addr-rebind keep the transfer on wifi, so the flood has its own link); forged agent
        reports only where a Tracking Agent listens."""
        roles = emulation.roles
        client = roles.clients[0]
        source_ip = client.interface("lte").ip
        argv = [
            sys.executable, "-m", "testbed.apps.flood",
            "--source-ip", source_ip,
            "--service", f"{roles.service_ip(_load_balanced(spec.scenario))}:{roles.service_port}",
            "--pps", str(spec.scenario.flood.pps),
            "--seed", str(seed),
            "--out", str(artifacts / "flood.json"),
        ]  # fmt: skip
        if _uses_agent(spec.variant):
            argv += ["--agent", f"{roles.agent_ip}:{roles.agent_port}"]
            argv += ["--agent-client", client.agent_id]
        flood = spec.scenario.flood
        if flood.spoof:
            # Every address but the one it sends from: its own wifi's, the other clients'.
            victims = [ip for c in roles.clients for ip in c.ips if ip != source_ip]
            argv += ["--spoof-as", ",".join(victims)]
        if flood.initials or flood.greedy_paths:
            workload = spec.scenario.workload
            argv += ["--server-name", workload.server_name, "--alpn", alpn(workload.protocol)]
        if flood.initials:
            # From every address the host owns (each by its own interface, so each passes
            # unicast RPF): a flooder without spoofing has no others.
            argv += ["--initials", "--also-from", ",".join(i for i in client.ips if i != source_ip)]
        if flood.greedy_paths and _uses_agent(spec.variant):
            # The client's own key, as its Client Agent has it: a valid key, used greedily.
            argv += ["--greedy-paths", str(flood.greedy_paths)]
            argv += ["--agent-key", self._client_key(client).hex()]
        return emulation.start_on_host(client.host, argv, artifacts / "flood.log")

    def _stop_flood(self, emulation, flood: ManagedProcess, artifacts: Path) -> dict:
        emulation.stop_process(flood)
        try:
            return json.loads((artifacts / "flood.json").read_text())
        except (OSError, ValueError) as exc:
            raise InfrastructureError(
                f"flooder exited with code {flood.popen.returncode} without a report "
                f"({exc}): {flood.log_tail()}"
            ) from exc

    def _start_connections(
        self, clients: list[tuple[ClientRole, ManagedProcess]], artifacts: Path
    ) -> None:
        """Once every client process is set up (or gone), tells them all when the run's
        connections start: launching a process costs ~0.3 s of CPU, so connections started
        at launch would be spread over the launches, not over the start window."""
        deadline = time.monotonic() + CLIENTS_READY_TIMEOUT_S
        waiting = list(clients)
        while waiting and time.monotonic() < deadline:
            waiting = [
                (client, process)
                for client, process in waiting
                if process.popen.poll() is None and not _ready_file(client, artifacts).exists()
            ]
            self.stop_signals.check()
            time.sleep(STOP_POLL_S / 10)
        start_file = artifacts / START_FILE
        temporary = start_file.with_suffix(".tmp")
        temporary.write_text(f"{time.monotonic() + START_MARGIN_S}\n")
        temporary.replace(start_file)

    def _await_client(
        self, scenario: Scenario, process: ManagedProcess, artifacts: Path, name: str
    ) -> list[dict]:
        """The reports of every connection of one client host's process."""
        names = [
            name if scenario.workload.connections == 1 else f"{name}/{k + 1}"
            for k in range(scenario.workload.connections)
        ]
        limit = scenario.timeouts.run_s + scenario.workload.start_window_s + CLIENT_EXIT_GRACE_S
        deadline = time.monotonic() + limit
        while process.popen.poll() is None:
            if time.monotonic() > deadline:
                process.stop()
                failure = f"client process still running after {limit:g} s"
                return [{"client": n, "failure": failure} for n in names]
            self.stop_signals.check()
            time.sleep(STOP_POLL_S)
        report_path = artifacts / f"client-{name}.json"
        try:
            return json.loads(report_path.read_text())
        except (OSError, ValueError):
            failure = (
                f"client process exited with code {process.popen.returncode} "
                f"without a report: {process.log_tail()}"
            )
            return [{"client": n, "failure": failure} for n in names]

    def _append_records(self, records: list[dict]) -> None:
        """A run's records, appended and fsynced together, then the summary rewritten once
        (per record it would cost a bootstrap per record: quadratic at 1,000 connections)."""
        self.records += records
        with open(self.out_dir / "records.jsonl", "a", encoding="utf-8") as stream:
            for record in records:
                stream.write(json.dumps(record) + "\n")
            stream.flush()
            os.fsync(stream.fileno())
        self._write_json("summary.json", summarize(self.records, seed=self.seed))

    def _write_json(self, name: str, value: dict) -> None:
        temporary = self.out_dir / f".{name}.tmp"
        temporary.write_text(json.dumps(value, indent=2) + "\n")
        temporary.replace(self.out_dir / name)

    def table(self) -> str:
        """The result table, then the survival/policy matrix."""
        matrix = format_matrix(survival_matrix(self.records))
        return format_table(self.records) + ("\n\n" + matrix if matrix else "")


def _outcome(records: list[dict]) -> str:
    """One line for a run: "ok" or "FAILED (reason)" for one client; for many,
    "980/1000 ok; 15 × reason (c3, c17, c40, …); 5 × other reason (c9)": failures grouped by
    reason (testbed.analysis.summary.failure_reasons), most frequent first, a few examples."""
    from testbed.analysis.summary import failure_reason, failure_reasons, failure_text

    failed = [r for r in records if not (r["completed"] and r["verified"])]
    if not failed:
        return "ok" if len(records) == 1 else f"{len(records)}/{len(records)} ok"
    if len(records) == 1:
        return f"FAILED ({failure_reason(failed[0])})"
    # Whatever the clients, one line: the 4 most frequent reasons in about two terminal
    # lines of text, and the first 3 clients of each as examples to look up.
    reasons = failure_text(
        failure_reasons(failed), max_reasons=4, width=200, clients=3, times=" × "
    )
    return f"{len(records) - len(failed)}/{len(records)} ok; {reasons}"


def _host_agent(spec: RunSpec) -> bool:
    """Whether the run's clients are announced by the host Client Agent."""
    scenario = spec.scenario
    return (
        _uses_agent(spec.variant)
        and scenario.agent.client_for(scenario.workload.client_stack) == "host"
    )


def _rebound_by_network(spec: RunSpec) -> bool:
    """A rebinding the network does, which no Client Agent can announce: the agents then
    register each connection's DCID after its handshake, for the middlebox to follow."""
    migration = spec.scenario.migration
    return (
        spec.migration not in (None, "active")
        and migration is not None
        and migration.rebind_by == "network"
    )


def _add_host_agent(reports: list[dict], summary: dict) -> None:
    """A host agent serves every connection of its host; with one, its exchanges are that
    connection's (as the builtin agent's are); with several, each report carries it whole."""
    for report in reports:
        if len(reports) == 1:
            report["agent"] = {k: summary[k] for k in ("messages", "bytes", "exchanges")}
        report["host_agent"] = {k: v for k, v in summary.items() if k != "exchanges"}


def _keylog(client: ClientRole, artifacts: Path) -> Path:
    return artifacts / f"client-{client.host}.keylog"


def _uses_agent(variant: str) -> bool:
    """Whether the variant's clients run the Client Agent (and a Tracking Agent listens)."""
    return variant in ("qasm", "netfilter-qasm")


def _enforced_limit(scenario: Scenario, variant: str) -> RateLimit | None:
    """The one token bucket a connection's bytes are judged against (leakage): the limit as
    configured, except that the kernel's byte bucket also holds a second of the rate
    (qasm/kernel/netfilter.py); baseline keeps no state, so it has no limit to leak from."""
    if "ratelimit" not in scenario.functions or variant == "baseline":
        return None
    limit = scenario.ratelimit.limit()
    if variant in KERNEL_VARIANTS:
        bucket = kernel_bucket_bytes(limit.rate_kbps * 1000 // 8, limit.burst_kbit * 1000 // 8)
        limit = RateLimit(limit.rate_kbps, bucket * 8 // 1000)
    return limit


def _kernel_settings(scenario: Scenario, variant: str, roles: Roles) -> KernelSettings:
    router = roles.router
    load_balanced = _load_balanced(scenario)
    limit = scenario.ratelimit.limit() if scenario.ratelimit else None
    return KernelSettings(
        variant=variant,
        functions=scenario.functions,
        service_ip=roles.service_ip(load_balanced),
        service_port=roles.service_port,
        clients=router.clients_subnet,
        service_side=router.service_side.name,
        endpoints=tuple(b.ip for b in roles.backends) if load_balanced else (),
        # kube-proxy's --cluster-cidr: the endpoints' /24.
        endpoints_cidr=f"{roles.backends[0].ip.rpartition('.')[0]}.0/24" if load_balanced else None,
        rate_bytes_per_s=limit.rate_kbps * 1000 // 8 if limit else None,
        burst_bytes=limit.burst_kbit * 1000 // 8 if limit else None,
        agent_ip=roles.agent_ip,
    )


# How each stack's client and server run (python -m ...): the adapters take our apps' options.
_CLIENT_MODULES = {
    "aioquic": ("testbed.apps.client",),
    "qh3": ("testbed.apps.client",),
    "ngtcp2": ("testbed.apps.ngtcp2", "client"),
}
_SERVER_MODULES = {
    "aioquic": ("testbed.apps.server",),
    "qh3": ("testbed.apps.server",),
    "ngtcp2": ("testbed.apps.ngtcp2", "server"),
}


def _positions(roles: Roles) -> tuple[tuple[int, ...], ...]:
    """The middlebox datapaths grouped by hop position (replicas share one), path order."""
    groups: list[list] = []
    for datapath in roles.middleboxes:
        if groups and datapath.position is not None and groups[-1][0].position == datapath.position:
            groups[-1].append(datapath)
        else:
            groups.append([datapath])
    return tuple(tuple(d.dpid for d in group) for group in groups)


def _first_index(client: ClientRole, scenario: Scenario) -> int:
    """The run-wide 1-based index of a client host's first connection."""
    return (client.index - 1) * scenario.workload.connections + 1


def _server_file(server: ServerRole, process: int, what: str, suffix: str) -> str:
    """server-events-q1234srv.jsonl, or with several server processes -p1, -p2, ..."""
    number = f"-p{process + 1}" if process else ""
    return f"server-{what + '-' if what else ''}{server.host}{number}.{suffix}"


def _ready_file(client: ClientRole, artifacts: Path) -> Path:
    return artifacts / f"client-{client.host}.ready"


def _load_balanced(scenario: Scenario) -> bool:
    """Clients talk to the load balancer's VIP in front of backends, else to the server."""
    return "loadbalancer" in scenario.functions


def _write_json_file(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n")


def _read_jsonl(path: Path) -> list[dict]:
    records = []
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError):
                records.append(json.loads(line))
    return records
