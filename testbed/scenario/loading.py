"""Scenario files: YAML in, a validated `Scenario` out, or every problem with its line.

Each problem is reported as `FILE:LINE: KEY: expected ...` (../shared/DESIGN.md) and the
whole file is checked before anything starts, so one run of `qasm validate` lists them all.

    name: default                  # optional, defaults to the file name
    description: free text         # optional
    seed: 1
    repetitions: 1
    variants: [baseline, tuple]
    functions: [firewall]
    topology: {name: dualhomed, clients: 1, wifi_bw_mbit: 100, lte_bw_mbit: 100}
    workload: {bytes: 4000000}
    migration: {kind: [nat-rebind, addr-rebind, active], at_bytes: 1000000}  # or at_seconds
    timeouts: {idle_s: 3, run_s: 60}
    agent: {secret: text}          # optional: Client Agent keys derive from it (qasm variant)
    ratelimit: {rate_mbit: 8, burst_kbit: 800}   # required with functions: [ratelimit]
    nat: {ports: 64}               # the NAT's public port pool, required with functions: [nat]
    firewall: {sni_deny: ["*.blocked.example"], sni_allow: [...]}  # SNI lists (firewall)
    middlebox: {idle_timeout_s: 120, max_connections: 100000}  # connection table bounds
    sweep: {topology.clients: [1, 5, 20], workload.bytes: [1000000, 4000000]}
    regression: {comparison.qasm.goodput_ratio: {relative: 0.1}}  # qasm check tolerances
    artifacts: {pcap: true, qlog: true, keylog: true}   # optional, all false by default
    cpu_pinning: true              # optional: controller/switch and endpoints on own CPUs
    flood: {pps: 2000}             # optional: garbage at this rate from client 1's lte address

`sweep` runs the cross product of the listed values: each key is a dotted path into the
file (under functions, topology, workload, migration, timeouts, ratelimit, nat) and each
point is validated as if its values were written in place, so a bad value is reported at
its line in the sweep block. `migration.spread` gives every client its own schedule: client
i migrates at `at_bytes` (or `at_seconds`) plus a seeded uniform draw from [0, spread].
`migration.repeat_every_s` (nat-rebind only, less than `timeouts.run_s`): after the first
migration each client rebinds to a fresh source port this often while it sends.
`flood.pps`: testbed/apps/flood.py sends malformed QUIC and forged agent reports at this rate
while the clients run.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import random
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from qasm.controller.pipeline import FUNCTIONS, VARIANTS, RateLimit
from qasm.functions.firewall import SniPolicy
from qasm.state.flows import DEFAULT_IDLE_TIMEOUT_S, DEFAULT_MAX_ENTRIES
from testbed.apps.client import MIGRATION_KINDS
from testbed.apps.transfer import SERVER_NAME
from testbed.regression import Tolerance, check_block
from topologies import TOPOLOGIES, Parameter

TOP_LEVEL_KEYS = {
    "name": False,
    "description": False,
    "seed": False,
    "repetitions": False,
    "variants": True,
    "functions": False,
    "topology": True,
    "workload": True,
    "migration": False,
    "timeouts": False,
    "agent": False,
    "ratelimit": False,
    "nat": False,
    "firewall": False,
    "middlebox": False,
    "sweep": False,
    "regression": False,
    "artifacts": False,
    "cpu_pinning": False,
    "flood": False,
}  # key -> required
# Top-level sections a sweep may vary; the rest define the experiment, not a point of it.
SWEEPABLE_SECTIONS = (
    "firewall",
    "functions",
    "middlebox",
    "topology",
    "workload",
    "migration",
    "timeouts",
    "ratelimit",
    "nat",
)
MAX_SWEEP_POINTS = 256
# A Python flooder on a 2-core machine sustains a few thousand packets per second.
MAX_FLOOD_PPS = 20000
# Client Agent keys derive from this unless the scenario sets `agent.secret`; an emulation
# needs reproducibility more than secrecy.
DEFAULT_AGENT_SECRET = "qasm-testbed"


class ScenarioError(ValueError):
    """The scenario is invalid; `problems` holds one `FILE:LINE: KEY: expected ...` each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Migration:
    kinds: tuple[str, ...]
    at_bytes: int | None = None
    at_seconds: float | None = None
    spread: float = 0.0  # in the trigger's unit: bytes or seconds
    repeat_every_s: float | None = None  # nat-rebind again this often after the first

    def trigger_for(self, client_index: int, seed: int) -> tuple[str, float]:
        """("at_bytes" | "at_seconds", value) of one client: its own, reproducible schedule."""
        offset = (
            random.Random(f"{seed}:{client_index}").uniform(0, self.spread) if self.spread else 0
        )
        if self.at_bytes is not None:
            return "at_bytes", self.at_bytes + int(offset)
        return "at_seconds", self.at_seconds + offset


@dataclass(frozen=True)
class Artifacts:
    """What a run captures on request, besides the logs it always keeps."""

    pcap: bool = False  # tcpdump on every host interface, one file per interface per run
    qlog: bool = False  # one qlog per connection, client and server side (qvis reads them)
    keylog: bool = False  # SSLKEYLOGFILE per client, so Wireshark decrypts the pcaps


@dataclass(frozen=True)
class Scenario:
    path: Path
    sha256: str
    name: str
    description: str
    seed: int
    repetitions: int
    variants: tuple[str, ...]
    functions: tuple[str, ...]
    topology: str
    topology_params: dict[str, Any]
    bytes: int
    migration: Migration | None
    idle_timeout_s: float
    run_timeout_s: float
    agent_secret: str = DEFAULT_AGENT_SECRET
    ratelimit: RateLimit | None = None
    nat_ports: int | None = None
    server_name: str = SERVER_NAME  # the SNI every client asks for
    sni: SniPolicy | None = None
    # The middlebox's connection state: idle timeout (RFC 9312 §4.2) and hard bound (LRU).
    state_idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
    max_connections: int = DEFAULT_MAX_ENTRIES
    raw: dict = field(repr=False, default_factory=dict)
    # The values this point of a sweep sets ({"topology.clients": 20}); empty without a sweep.
    parameters: dict[str, Any] = field(default_factory=dict)
    sweep: tuple[Scenario, ...] = field(repr=False, default=())
    # `qasm check` tolerances: (metric pattern, tolerance), later ones win (regression.py).
    regression: tuple[tuple[str, Tolerance], ...] = ()
    artifacts: Artifacts = field(default_factory=Artifacts)
    # Controller, switch and delay lines on one CPU, endpoints on the others (testbed.pinning).
    cpu_pinning: bool = False
    flood_pps: int | None = None  # garbage packets per second while the clients run

    @property
    def migration_kinds(self) -> tuple[str | None, ...]:
        return self.migration.kinds if self.migration else (None,)

    @property
    def points(self) -> tuple[Scenario, ...]:
        """What to run: every point of the sweep, or the scenario itself."""
        return self.sweep or (self,)

    def applicable(self, variants: tuple[str, ...]) -> tuple[str, ...]:
        """quic-lb is a load balancer: at a sweep point with other functions it has no role."""
        if self.functions == ("loadbalancer",):
            return variants
        return tuple(v for v in variants if v != "quic-lb")


class _Checker:
    """Walks the composed YAML node tree, so every value keeps its line number."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.problems: list[str] = []

    def problem(self, node: yaml.Node | None, key: str, expected: str) -> None:
        line = node.start_mark.line + 1 if node is not None else 1
        self.problems.append(f"{self.filename}:{line}: {key}: {expected}")

    def mapping(
        self, node: yaml.Node, key: str, allowed: dict[str, bool]
    ) -> dict[str, yaml.Node] | None:
        """Children of a mapping; unknown, duplicate and missing required keys are problems."""
        if not isinstance(node, yaml.MappingNode):
            self.problem(node, key or "(top level)", "expected a mapping")
            return None
        children: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            name = key_node.value
            path = f"{key}.{name}" if key else name
            if name in children:
                self.problem(key_node, path, "expected each key once (duplicate key)")
            elif name not in allowed:
                self.problem(key_node, path, f"unknown key, expected one of {', '.join(allowed)}")
            else:
                children[name] = value_node
        for name, required in allowed.items():
            if required and name not in children:
                path = f"{key}.{name}" if key else name
                self.problem(node, path, "expected this key (missing)")
        return children

    def scalar(self, node: yaml.Node, key: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            self.problem(node, key, "expected a single value, not a list or mapping")
            return None
        return yaml.safe_load(yaml.serialize(node))

    def integer(self, node: yaml.Node | None, key: str, minimum: int, maximum: int | None = None):
        if node is None:
            return None
        value = self.scalar(node, key)
        if type(value) is not int or value < minimum or (maximum is not None and value > maximum):
            bound = f"{minimum}..{maximum}" if maximum is not None else f">= {minimum}"
            self.problem(node, key, f"expected an integer {bound}, got {value!r}")
            return None
        return value

    def number(
        self,
        node: yaml.Node | None,
        key: str,
        minimum: float,
        maximum: float,
        inclusive: bool = False,
    ):
        if node is None:
            return None
        value = self.scalar(node, key)
        above = type(value) in (int, float) and (minimum <= value if inclusive else minimum < value)
        if not above or not value <= maximum:
            low = "[" if inclusive else "("
            self.problem(
                node, key, f"expected a number in {low}{minimum:g}, {maximum:g}], got {value!r}"
            )
            return None
        return float(value)

    def flag(self, node: yaml.Node | None, key: str) -> bool | None:
        if node is None:
            return None
        value = self.scalar(node, key)
        if type(value) is not bool:
            self.problem(node, key, f"expected true or false, got {value!r}")
            return None
        return value

    def text(self, node: yaml.Node | None, key: str) -> str | None:
        if node is None:
            return None
        value = self.scalar(node, key)
        if not isinstance(value, str):
            self.problem(node, key, f"expected a string, got {value!r}")
            return None
        return value

    def choices(self, node: yaml.Node | None, key: str, allowed: tuple[str, ...]):
        """A name or a list of names, each from `allowed`, without repeats."""
        if node is None:
            return None
        items = node.value if isinstance(node, yaml.SequenceNode) else [node]
        names: list[str] = []
        for item in items:
            value = self.scalar(item, key)
            if value not in allowed:
                self.problem(item, key, f"expected one of {', '.join(allowed)}, got {value!r}")
            elif value in names:
                self.problem(item, key, f"expected each of {', '.join(allowed)} once")
            else:
                names.append(value)
        if not items:
            self.problem(node, key, f"expected at least one of {', '.join(allowed)}")
        return tuple(names)

    def parameter(self, node: yaml.Node, key: str, spec: Parameter):
        if spec.kind is int:
            return self.integer(node, key, int(spec.minimum), int(spec.maximum))
        return self.number(node, key, spec.minimum, spec.maximum, spec.inclusive_minimum)


def load_scenario(path: str | Path) -> Scenario:
    """Reads and validates a scenario file; raises ScenarioError listing every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError([f"{path}:1: (file): expected a readable UTF-8 file ({exc})"]) from exc
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        raise ScenarioError([f"{path}:{line}: (syntax): expected valid YAML ({exc})"]) from exc
    if root is None:
        raise ScenarioError([f"{path}:1: (top level): expected a mapping, the file is empty"])
    checker = _Checker(str(path))
    sweep_node = _detach_sweep(root)
    if sweep_node is None:
        scenario = _check(checker, root, path, text)
    else:
        scenario = _check_sweep(checker, root, sweep_node, path, text)
    if checker.problems:
        # A problem outside the sweep block repeats at every point: report it once.
        raise ScenarioError(list(dict.fromkeys(checker.problems)))
    return scenario


# A DNS name (RFC 1123 labels), lowercase or not; patterns may start with "*." (subdomains).
_HOST_NAME = re.compile(r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
                        r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?")  # fmt: skip


def _host_names(
    checker: _Checker, node: yaml.Node, key: str, many: bool = False, wildcard: bool = False
):
    """A host name, or with `many` a list of them; `wildcard` allows a leading `*.`."""
    items = node.value if many and isinstance(node, yaml.SequenceNode) else [node]
    if many and not isinstance(node, yaml.SequenceNode):
        checker.problem(node, key, "expected a list of host names")
        return None
    names = []
    for item in items:
        value = checker.scalar(item, key)
        bare = (
            value[2:] if wildcard and isinstance(value, str) and value.startswith("*.") else value
        )
        if not isinstance(value, str) or not _HOST_NAME.fullmatch(bare):
            what = "a host name or *.domain" if wildcard else "a host name"
            checker.problem(item, key, f"expected {what}, got {value!r}")
        else:
            names.append(value)
    return names if many else (names[0] if names else None)


def _detach_sweep(root: yaml.Node) -> yaml.Node | None:
    """Removes the `sweep` entry from the top-level mapping and returns its value."""
    if not isinstance(root, yaml.MappingNode):
        return None
    for pair in root.value:
        if pair[0].value == "sweep":
            root.value.remove(pair)
            return pair[1]
    return None


def _check_sweep(
    checker: _Checker, root: yaml.Node, sweep_node: yaml.Node, path: Path, text: str
) -> Scenario | None:
    axes: list[tuple[yaml.Node, list[yaml.Node]]] = []
    if not isinstance(sweep_node, yaml.MappingNode) or not sweep_node.value:
        checker.problem(sweep_node, "sweep", "expected a mapping of dotted keys to lists of values")
        return None
    for key_node, values_node in sweep_node.value:
        key = f"sweep.{key_node.value}"
        section = str(key_node.value).split(".")[0]
        if section not in SWEEPABLE_SECTIONS or key_node.value in ("topology.name",):
            checker.problem(key_node, key, f"expected a key under {', '.join(SWEEPABLE_SECTIONS)}")
        elif not isinstance(values_node, yaml.SequenceNode) or not values_node.value:
            checker.problem(values_node, key, "expected a non-empty list of values")
        else:
            canonical = [yaml.serialize(v) for v in values_node.value]
            if len(set(canonical)) != len(canonical):
                checker.problem(values_node, key, "expected each value once")
            axes.append((key_node, values_node.value))
    count = 1
    for _, values in axes:
        count *= len(values)
    if count > MAX_SWEEP_POINTS:
        checker.problem(
            sweep_node, "sweep", f"expected at most {MAX_SWEEP_POINTS} points, got {count}"
        )
    if checker.problems:
        return None
    points = []
    for combination in itertools.product(*(values for _, values in axes)):
        point_root = copy.deepcopy(root)
        parameters = {}
        for (key_node, _), value_node in zip(axes, combination, strict=True):
            _set_node(point_root, key_node, value_node)
            parameters[key_node.value] = yaml.safe_load(yaml.serialize(value_node))
        scenario = _check(checker, point_root, path, text, sweeping=True)
        if scenario is not None:
            points.append(replace(scenario, parameters=parameters))
    if checker.problems:
        return None
    variants = points[0].variants
    if "quic-lb" in variants and not any(p.functions == ("loadbalancer",) for p in points):
        checker.problem(
            root, "variants", "expected a sweep point with functions [loadbalancer] for quic-lb"
        )
        return None
    return replace(points[0], sweep=tuple(points))


def _set_node(root: yaml.MappingNode, key_node: yaml.ScalarNode, value: yaml.Node) -> None:
    """Writes `value` at the dotted path; keys it creates carry the sweep key's line."""
    node = root
    *parents, last = str(key_node.value).split(".")
    for name in parents:
        child = next((v for k, v in node.value if k.value == name), None)
        if child is None:
            child = yaml.MappingNode("tag:yaml.org,2002:map", [], start_mark=key_node.start_mark)
            node.value.append((_key(name, key_node), child))
        if not isinstance(child, yaml.MappingNode):
            return  # the point's check reports the section as not a mapping
        node = child
    node.value[:] = [(k, v) for k, v in node.value if k.value != last]
    node.value.append((_key(last, key_node), value))


def _key(name: str, mark_from: yaml.Node) -> yaml.ScalarNode:
    return yaml.ScalarNode("tag:yaml.org,2002:str", name, start_mark=mark_from.start_mark)


def _check(
    checker: _Checker, root: yaml.Node, path: Path, text: str, sweeping: bool = False
) -> Scenario | None:
    top = checker.mapping(root, "", TOP_LEVEL_KEYS)
    if top is None:
        return None
    name = checker.text(top.get("name"), "name") or path.stem
    description = checker.text(top.get("description"), "description") or ""
    seed = checker.integer(top.get("seed"), "seed", 0)
    repetitions = checker.integer(top.get("repetitions"), "repetitions", 1, 1000)
    variants = checker.choices(top.get("variants"), "variants", VARIANTS)
    functions = checker.choices(top.get("functions"), "functions", FUNCTIONS)

    topology, topology_params = None, {}
    topology_node = top.get("topology")
    if topology_node is not None:
        topology_name_node = (
            dict((k.value, v) for k, v in topology_node.value).get("name")
            if isinstance(topology_node, yaml.MappingNode)
            else None
        )
        topology = checker.text(topology_name_node, "topology.name")
        if topology_name_node is not None and topology is not None and topology not in TOPOLOGIES:
            checker.problem(
                topology_name_node,
                "topology.name",
                f"expected one of {', '.join(TOPOLOGIES)}, got {topology!r}",
            )
            topology = None
        specs = TOPOLOGIES[topology].PARAMETERS if topology else {}
        allowed = {"name": True, **{k: False for k in specs}}
        children = checker.mapping(topology_node, "topology", allowed) if topology else None
        for key, node in (children or {}).items():
            if key != "name":
                topology_params[key] = checker.parameter(node, f"topology.{key}", specs[key])
        combined = getattr(TOPOLOGIES[topology], "parameter_problems", None) if topology else None
        if combined and children and None not in topology_params.values():
            for key, expected in combined(topology_params):
                checker.problem(children.get(key, topology_node), f"topology.{key}", expected)

    total_bytes, server_name = None, SERVER_NAME
    workload = top.get("workload")
    if workload is not None:
        children = checker.mapping(workload, "workload", {"bytes": True, "server_name": False})
        if children:
            total_bytes = checker.integer(children.get("bytes"), "workload.bytes", 1, 10**10)
            if "server_name" in children:
                server_name = _host_names(checker, children["server_name"], "workload.server_name")
    state = {"idle_timeout_s": DEFAULT_IDLE_TIMEOUT_S, "max_connections": DEFAULT_MAX_ENTRIES}
    if top.get("middlebox") is not None:
        allowed = {"idle_timeout_s": False, "max_connections": False}
        children = checker.mapping(top["middlebox"], "middlebox", allowed) or {}
        if "idle_timeout_s" in children:
            state["idle_timeout_s"] = checker.number(
                children["idle_timeout_s"], "middlebox.idle_timeout_s", 0, 86400
            )
        if "max_connections" in children:
            state["max_connections"] = checker.integer(
                children["max_connections"], "middlebox.max_connections", 1, 10**7
            )
    sni = None
    if top.get("firewall") is not None:
        allowed = {"sni_allow": False, "sni_deny": False}
        children = checker.mapping(top["firewall"], "firewall", allowed)
        if children is not None:
            lists = {
                key: _host_names(checker, node, f"firewall.{key}", many=True, wildcard=True)
                for key, node in children.items()
            }
            sni = SniPolicy(tuple(lists.get("sni_allow") or ()), tuple(lists.get("sni_deny") or ()))
        if functions is not None and "firewall" not in functions:
            checker.problem(top["firewall"], "firewall", "expected functions to include firewall")

    timeouts = {"idle_s": 5.0, "run_s": 60.0}
    if top.get("timeouts") is not None:
        children = checker.mapping(top["timeouts"], "timeouts", {"idle_s": False, "run_s": False})
        for key, node in (children or {}).items():
            value = checker.number(node, f"timeouts.{key}", 0, 3600)
            if value is not None:
                timeouts[key] = value

    migration = None
    if top.get("migration") is not None:
        migration = _check_migration(checker, top["migration"], total_bytes, timeouts["run_s"])
    regression = check_block(
        checker, top.get("regression"), variants or (), (*MIGRATION_KINDS, "None")
    )

    agent_secret = DEFAULT_AGENT_SECRET
    if top.get("agent") is not None:
        children = checker.mapping(top["agent"], "agent", {"secret": True})
        if children and "secret" in children:
            agent_secret = checker.text(children["secret"], "agent.secret") or agent_secret

    ratelimit = None
    if top.get("ratelimit") is not None:
        allowed = {"rate_mbit": True, "burst_kbit": True}
        children = checker.mapping(top["ratelimit"], "ratelimit", allowed)
        if children:
            rate = checker.number(children.get("rate_mbit"), "ratelimit.rate_mbit", 0, 1000)
            burst = checker.integer(children.get("burst_kbit"), "ratelimit.burst_kbit", 1, 10**7)
            if rate is not None and burst is not None:
                ratelimit = RateLimit(rate_kbps=int(rate * 1000), burst_kbit=burst)
    nat_ports = None
    if top.get("nat") is not None:
        children = checker.mapping(top["nat"], "nat", {"ports": True})
        if children:
            nat_ports = checker.integer(children.get("ports"), "nat.ports", 1, 30000)
    if functions and "nat" in functions and top.get("nat") is None:
        checker.problem(root, "nat", "expected ports (functions has nat)")
    if functions and "loadbalancer" in functions and not topology_params.get("backends"):
        checker.problem(
            top.get("topology"),
            "topology.backends",
            "expected 2 or more (functions has loadbalancer)",
        )
    if (
        not sweeping
        and variants
        and "quic-lb" in variants
        and tuple(functions or ()) != ("loadbalancer",)
    ):
        checker.problem(
            top.get("functions"), "functions", "expected [loadbalancer] alone with variant quic-lb"
        )
    if functions and "ratelimit" in functions and top.get("ratelimit") is None:
        checker.problem(
            root, "ratelimit", "expected rate_mbit and burst_kbit (functions has ratelimit)"
        )

    artifacts = _check_artifacts(checker, top.get("artifacts"))
    cpu_pinning = checker.flag(top.get("cpu_pinning"), "cpu_pinning") or False
    flood_pps = None
    if top.get("flood") is not None:
        children = checker.mapping(top["flood"], "flood", {"pps": True})
        if children:
            flood_pps = checker.integer(children.get("pps"), "flood.pps", 1, MAX_FLOOD_PPS)

    if checker.problems:
        return None
    return Scenario(
        path=path,
        sha256=hashlib.sha256(text.encode()).hexdigest(),
        name=name,
        description=description,
        seed=seed if seed is not None else 0,
        repetitions=repetitions or 1,
        variants=variants,
        functions=functions if functions is not None else ("firewall",),
        topology=topology,
        topology_params=topology_params,
        bytes=total_bytes,
        migration=migration,
        idle_timeout_s=timeouts["idle_s"],
        run_timeout_s=timeouts["run_s"],
        agent_secret=agent_secret,
        ratelimit=ratelimit,
        nat_ports=nat_ports,
        server_name=server_name,
        sni=sni,
        state_idle_timeout_s=state["idle_timeout_s"],
        max_connections=state["max_connections"],
        raw=yaml.safe_load(text),
        regression=regression,
        artifacts=artifacts,
        cpu_pinning=cpu_pinning,
        flood_pps=flood_pps,
    )


def _check_artifacts(checker: _Checker, node: yaml.Node | None) -> Artifacts:
    if node is None:
        return Artifacts()
    allowed = {name: False for name in Artifacts.__dataclass_fields__}
    children = checker.mapping(node, "artifacts", allowed) or {}
    return Artifacts(
        **{name: bool(checker.flag(child, f"artifacts.{name}")) for name, child in children.items()}
    )


def _check_migration(
    checker: _Checker, node: yaml.Node, total_bytes: int | None, run_timeout_s: float
) -> Migration | None:
    allowed = {
        "kind": True,
        "at_bytes": False,
        "at_seconds": False,
        "spread": False,
        "repeat_every_s": False,
    }
    children = checker.mapping(node, "migration", allowed)
    if children is None:
        return None
    kinds = checker.choices(children.get("kind"), "migration.kind", MIGRATION_KINDS)
    at_bytes = checker.integer(children.get("at_bytes"), "migration.at_bytes", 1)
    at_seconds = checker.number(children.get("at_seconds"), "migration.at_seconds", 0, 3600)
    if ("at_bytes" in children) == ("at_seconds" in children):
        checker.problem(node, "migration", "expected exactly one of at_bytes, at_seconds")
    spread = 0.0
    if "spread" in children:
        if at_bytes is not None:
            spread = checker.integer(children["spread"], "migration.spread", 0) or 0
        else:
            spread = checker.number(children["spread"], "migration.spread", 0, 3600) or 0.0
    if at_bytes is not None and total_bytes is not None and at_bytes + spread >= total_bytes:
        checker.problem(
            children["at_bytes"],
            "migration.at_bytes",
            f"expected at_bytes + spread less than workload.bytes ({total_bytes}): "
            "migration after the end",
        )
    if at_seconds is not None and at_seconds + spread >= run_timeout_s:
        checker.problem(
            children["at_seconds"],
            "migration.at_seconds",
            f"expected at_seconds + spread less than timeouts.run_s ({run_timeout_s:g}): "
            "migration after the end",
        )
    repeat_every_s = checker.number(
        children.get("repeat_every_s"), "migration.repeat_every_s", 0, 3600
    )
    if repeat_every_s is not None:
        if kinds and kinds != ("nat-rebind",):
            checker.problem(
                children["repeat_every_s"],
                "migration.repeat_every_s",
                "expected only with kind nat-rebind (repeated rebinding keeps the interface)",
            )
        if repeat_every_s >= run_timeout_s:
            checker.problem(
                children["repeat_every_s"],
                "migration.repeat_every_s",
                f"expected less than timeouts.run_s ({run_timeout_s:g})",
            )
    return Migration(kinds or (), at_bytes, at_seconds, spread, repeat_every_s)
