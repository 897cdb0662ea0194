"""Every key of a scenario file: its type, range, default and meaning, as pydantic models.

One model per section of the file, named after it (`topology:` is `DualhomedTopology` or
`ChainTopology`, picked by `topology.name`); `Scenario` is the whole file. Each default is
defined once, here or in the module that owns it (imported below). Range checks are done by the
scalar types of this module (`Integer`, `Number`, `Flag`, `Text`, `HostName`, `Choices`), whose
failures already read `expected ...`; rules between keys are validators on the model whose key
they report, rules between sections are validators of `Scenario` on the later field (pydantic
validates fields in order and `info.data` holds the earlier ones that were valid).

testbed/scenario/loading.py reads the YAML (keeping line numbers), expands `sweep:` into points
and turns each validation error into `FILE:LINE: KEY: expected ...`; schema.py writes the JSON
Schema of `Scenario` to scenarios/schema.json for editors.
"""

import functools
import hashlib
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.json_schema import WithJsonSchema
from pydantic_core import InitErrorDetails, PydanticCustomError

from qasm.agents.tracking import DEFAULT_BURST, DEFAULT_MAX_PATHS, DEFAULT_RATE_PER_S
from qasm.controller.pipeline import (
    AGENT_MODES,
    DEFAULT_ADMISSION_BURST,
    DEFAULT_ADMISSION_RATE_PER_S,
    FUNCTIONS,
    STATES,
    VARIANTS,
    Admission,
)
from qasm.functions.firewall import SniPolicy
from qasm.functions.ratelimit import RateLimit
from qasm.kernel.netfilter import KERNEL_VARIANTS
from qasm.state.connections import (
    DEFAULT_HALF_OPEN_TIMEOUT_S,
    DEFAULT_IDLE_TIMEOUT_S,
    DEFAULT_MAX_CONNECTIONS,
)
from qasm.state.half_open import DEFAULT_HALF_OPEN_PER_SOURCE
from testbed.analysis.regression import BLOCK_JSON_SCHEMA, Tolerance, check_block
from testbed.apps.transfer import PROTOCOLS, SERVER_NAME
from testbed.emulation.links import IMPAIRMENTS, LIMITS, LINK_KINDS, LinkConditions, link_conditions
from testbed.migration import MIGRATION_KINDS, trigger
from topologies.roles import STEERINGS

# The SDN variants (the controller), then the router's kernel ones.
ALL_VARIANTS = (*VARIANTS, *KERNEL_VARIANTS)
MAX_CLIENTS = 100
STACKS = ("aioquic", "qh3", "ngtcp2")
# The builtin Client Agent reads aioquic's internals (the next DCID before the switch).
BUILTIN_AGENT_STACKS = ("aioquic",)
AGENT_CLIENTS = ("builtin", "host")
REBINDERS = ("client", "network")
MAX_AGENT_PATHS = 1_000_000
MAX_ADMISSION_RATE_PER_S = 1_000_000
MAX_ADMISSION_BURST = 1_000_000
MAX_CONNECTIONS_PER_HOST = 1000
MAX_SERVER_PROCESSES = 8
MAX_AGENT_REPORTS_PER_S = 100_000
MAX_BACKENDS = 8
MAX_HOPS = 8
MAX_REPLICAS = 8
MAX_REPETITIONS = 1000
MAX_BYTES = 10**10
MAX_SECONDS = 3600.0  # timeouts, migration instants, spreads and repeat intervals
MAX_STATE_IDLE_TIMEOUT_S = 86400.0
MAX_CONNECTIONS = 10**7
MAX_RATE_MBIT = 1000.0
MAX_BURST_KBIT = 10**7
MAX_NAT_PORTS = 30000
# A Python flooder on a 2-core machine sustains a few thousand packets per second.
MAX_FLOOD_PPS = 20000
MAX_GREEDY_PATHS = 1_000_000
MAX_SWEEP_POINTS = 256
DEFAULT_IDLE_S = 5.0
DEFAULT_RUN_S = 60.0
DEFAULT_FUNCTIONS = ("firewall",)
DEFAULT_AGENT_MODES = ("push",)
# Client Agent keys derive from this unless the scenario sets `agent.secret`; an emulation
# needs reproducibility more than secrecy.
DEFAULT_AGENT_SECRET = "qasm-testbed"
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
    "agent",
    "faults",
)
# `migration.kind` values a `regression:` pattern may name; "None" is a run without migration.
REGRESSION_KINDS = (*MIGRATION_KINDS, "None")


# --- problems ------------------------------------------------------------------------------------


def problem(expected: str) -> PydanticCustomError:
    """A problem with the value being validated; `expected` reads `expected ...`."""
    return PydanticCustomError("scenario", expected)


def problems(*located: tuple[tuple[str | int, ...], str]) -> ValidationError:
    """Problems at keys below the value being validated: ((key, ...), "expected ...") each."""
    return ValidationError.from_exception_data(
        "scenario",
        [
            InitErrorDetails(type=problem(expected), loc=loc, input=None)
            for loc, expected in located
        ],
    )


def _again(error: dict) -> InitErrorDetails:
    """An error of a caught ValidationError, to raise again with more."""
    if error["type"] == "scenario":
        return InitErrorDetails(type=problem(error["msg"]), loc=error["loc"], input=None)
    details = InitErrorDetails(type=error["type"], loc=error["loc"], input=error.get("input"))
    if "ctx" in error:
        details["ctx"] = error["ctx"]
    return details


# --- scalar types: each checks itself and says what it expected --------------------------------


def _scalar(kind: type, check: Callable[[Any], Any], schema: dict) -> Any:
    return Annotated[kind, PlainValidator(check), WithJsonSchema(schema)]


def _integer_check(minimum: int, maximum: int | None) -> Callable[[Any], int]:
    bound = f"{minimum}..{maximum}" if maximum is not None else f">= {minimum}"

    def check(value: Any) -> int:
        # YAML's true and 1.0 are no integers here (a bool is an int to Python).
        if type(value) is not int or value < minimum or (maximum is not None and value > maximum):
            raise problem(f"expected an integer {bound}, got {value!r}")
        return value

    return check


def Integer(minimum: int, maximum: int | None = None) -> Any:
    """An integer in minimum..maximum (inclusive), or >= minimum without a maximum."""
    schema = {"type": "integer", "minimum": minimum}
    if maximum is not None:
        schema["maximum"] = maximum
    return _scalar(int, _integer_check(minimum, maximum), schema)


def _number_check(minimum: float, maximum: float, inclusive: bool) -> Callable[[Any], float]:
    low = "[" if inclusive else "("

    def check(value: Any) -> float:
        number = type(value) in (int, float)
        above = number and (minimum <= value if inclusive else minimum < value)
        if not above or not value <= maximum:  # NaN is neither
            raise problem(f"expected a number in {low}{minimum:g}, {maximum:g}], got {value!r}")
        return float(value)

    return check


def Number(minimum: float, maximum: float, *, inclusive: bool = False) -> Any:
    """A number in (minimum, maximum], or [minimum, maximum] when `inclusive`."""
    schema = {"type": "number", "minimum" if inclusive else "exclusiveMinimum": minimum}
    schema["maximum"] = maximum
    return _scalar(float, _number_check(minimum, maximum, inclusive), schema)


def _flag(value: Any) -> bool:
    if type(value) is not bool:
        raise problem(f"expected true or false, got {value!r}")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise problem(f"expected a string, got {value!r}")
    return value


Flag = _scalar(bool, _flag, {"type": "boolean"})
Text = _scalar(str, _text, {"type": "string"})


# A DNS name (RFC 1123 labels), lowercase or not; patterns may start with "*." (subdomains).
HOST_NAME = (r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*"
             r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?")  # fmt: skip
_HOST_NAME = re.compile(HOST_NAME)


def HostName(*, wildcard: bool = False) -> Any:
    """A host name; with `wildcard` also `*.domain` (that domain's subdomains)."""
    what = "a host name or *.domain" if wildcard else "a host name"

    def check(value: Any) -> str:
        bare = (
            value[2:] if wildcard and isinstance(value, str) and value.startswith("*.") else value
        )
        if not isinstance(bare, str) or not _HOST_NAME.fullmatch(bare):
            raise problem(f"expected {what}, got {value!r}")
        return value

    pattern = "^" + (r"(\*\.)?" if wildcard else "") + HOST_NAME + "$"
    return _scalar(str, check, {"type": "string", "pattern": pattern})


def _require_list(value: Any) -> Any:
    if not isinstance(value, list | tuple):
        raise problem("expected a list of host names")
    return value


# The firewall's SNI lists: host names or `*.domain` patterns.
HostNames = Annotated[tuple[HostName(wildcard=True), ...], BeforeValidator(_require_list)]


def Choice(allowed: Sequence[str]) -> Any:
    """One name from `allowed`."""
    names = ", ".join(allowed)

    def check(value: Any) -> str:
        if value not in allowed:
            raise problem(f"expected one of {names}, got {value!r}")
        return value

    return _scalar(str, check, {"type": "string", "enum": list(allowed)})


def Choices(allowed: Sequence[str]) -> Any:
    """A name from `allowed`, or a non-empty list of them, each once; always a tuple."""
    names = ", ".join(allowed)

    def one(value: Any) -> str:
        if value not in allowed:
            raise problem(f"expected one of {names}, got {value!r}")
        return value

    def one_or_list(value: Any) -> Any:
        if isinstance(value, dict):
            raise problem(f"expected one of {names}, or a list of them, got {value!r}")
        return value if isinstance(value, list | tuple) else (value,)

    def each_once(value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise problem(f"expected at least one of {names}")
        repeated = [i for i, name in enumerate(value) if name in value[:i]]
        if repeated:
            raise problems(*(((i,), f"expected each of {names} once") for i in repeated))
        return value

    item = {"type": "string", "enum": list(allowed)}
    schema = {"anyOf": [item, {"type": "array", "items": item, "minItems": 1, "uniqueItems": True}]}
    return Annotated[
        tuple[Annotated[str, PlainValidator(one)], ...],
        BeforeValidator(one_or_list),
        AfterValidator(each_once),
        WithJsonSchema(schema),
    ]


Seconds = Number(0, MAX_SECONDS)
Bandwidth = Number(0, LIMITS["bw_mbit"].maximum)  # Mininet's TCIntf shapes up to 1000 Mbit/s
Delay = Number(0, LIMITS["delay_ms"].maximum, inclusive=True)
Jitter = Number(0, LIMITS["jitter_ms"].maximum, inclusive=True)
Loss = Number(0, LIMITS["loss_pct"].maximum, inclusive=True)


# --- sections ------------------------------------------------------------------------------------


class Section(BaseModel):
    """A mapping of the file: unknown keys are problems, and nothing changes after loading."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def yaml_keys(cls) -> tuple[str, ...]:
        """The keys this section accepts, as written in the file."""
        return tuple(field.alias or name for name, field in cls.model_fields.items())


def _link(kind: str, parameter: str) -> Any:
    limit = LIMITS[parameter]
    return Field(None, description=f"{kind} link: {limit.description}")


class Topology(Section):
    """What every topology has: its clients and the conditions of each link kind, per
    direction (testbed/emulation/links.py); none means unshaped or unimpaired."""

    name: str
    clients: Integer(1, MAX_CLIENTS) = Field(1, description="dual-homed client hosts")
    wifi_bw_mbit: Bandwidth | None = _link("wifi", "bw_mbit")
    lte_bw_mbit: Bandwidth | None = _link("lte", "bw_mbit")
    server_bw_mbit: Bandwidth | None = _link("server", "bw_mbit")
    wifi_delay_ms: Delay | None = _link("wifi", "delay_ms")
    wifi_jitter_ms: Jitter | None = _link("wifi", "jitter_ms")
    wifi_loss_pct: Loss | None = _link("wifi", "loss_pct")
    lte_delay_ms: Delay | None = _link("lte", "delay_ms")
    lte_jitter_ms: Jitter | None = _link("lte", "jitter_ms")
    lte_loss_pct: Loss | None = _link("lte", "loss_pct")
    server_delay_ms: Delay | None = _link("server", "delay_ms")
    server_jitter_ms: Jitter | None = _link("server", "jitter_ms")
    server_loss_pct: Loss | None = _link("server", "loss_pct")

    @model_validator(mode="after")
    def _jitter_at_most_delay(self) -> "Topology":
        # netem would clamp negative delays to 0, shifting the mean above the delay.
        located = []
        for kind in LINK_KINDS:
            delay = getattr(self, f"{kind}_delay_ms") or 0
            if (getattr(self, f"{kind}_jitter_ms") or 0) > delay:
                located.append(
                    ((f"{kind}_jitter_ms",), f"expected at most {kind}_delay_ms ({delay:g})")
                )
        if located:
            raise problems(*located)
        return self

    def bandwidths(self) -> dict[str, float | None]:
        """Mbit/s per link kind (None: unshaped)."""
        return {kind: getattr(self, f"{kind}_bw_mbit") for kind in LINK_KINDS}

    def impairments(self) -> dict[str, float]:
        """The delay, jitter and loss keys that are set ({"wifi_delay_ms": 25.0, ...})."""
        keys = (f"{kind}_{name}" for kind in LINK_KINDS for name in IMPAIRMENTS)
        return {key: getattr(self, key) for key in keys if getattr(self, key) is not None}

    def link_conditions(self) -> dict[str, LinkConditions]:
        """LinkConditions per link kind ("wifi", "lte", "server")."""
        return link_conditions(self.bandwidths(), self.impairments())

    def topo_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the topology's Topo: its own keys, plus `bandwidths`."""
        own = [key for key in type(self).model_fields if key not in Topology.model_fields]
        kwargs = {"clients": self.clients, **{key: getattr(self, key) for key in own}}
        return {**kwargs, "bandwidths": self.bandwidths()}


class DualhomedTopology(Topology):
    """One middlebox switch between dual-homed clients (wifi and lte) and one server."""

    name: Literal["dualhomed"] = Field(description="topologies/dualhomed.py: one switch")
    backends: Integer(2, MAX_BACKENDS) | None = Field(
        None, description="servers behind the load balancer's virtual IP (functions: loadbalancer)"
    )


class ChainTopology(Topology):
    """`hops` middleboxes in series between the clients and the server."""

    name: Literal["chain"] = Field(description="topologies/chain.py: hops in series")
    hops: Integer(0, MAX_HOPS) = Field(1, description="middlebox hops in series")


class RoutedTopology(Topology):
    """An edge switch, a router host (where the kernel variants run netfilter), a service-side
    switch (where the SDN variants run), then the server or backends."""

    name: Literal["routed"] = Field(description="topologies/routed.py: clients, router, service")
    backends: Integer(2, MAX_BACKENDS) | None = Field(
        None, description="the Service's endpoints behind its ClusterIP (functions: loadbalancer)"
    )


class ReplicasTopology(Topology):
    """`replicas` middlebox replicas behind a front switch that spreads flows over them, a
    back switch, then the server (topologies/replicas.py)."""

    name: Literal["replicas"] = Field(
        description="topologies/replicas.py: replicas behind a hashing front end"
    )
    replicas: Integer(2, MAX_REPLICAS) = Field(
        2, description="middlebox replicas: one hop, one NAT public address, each its own switch"
    )
    steering: Choice(STEERINGS) = Field(
        "hash",
        description="how the front end picks a replica: hash (a select group over the "
        "5-tuple, as ECMP) or next-replica (a client address's first path on the replica "
        "pinned to it, every later path on the next one: a migrated path always lands on "
        "another replica)",
    )


AnyTopology = Annotated[
    DualhomedTopology | ChainTopology | RoutedTopology | ReplicasTopology,
    Field(discriminator="name"),
]


class Workload(Section):
    """What each connection transfers, how many connections each client host drives and
    when they start."""

    bytes: Integer(1, MAX_BYTES) = Field(
        description="payload per connection, verified by SHA-256 at both ends"
    )
    server_name: HostName() = Field(SERVER_NAME, description="the SNI every client asks for")
    connections: Integer(1, MAX_CONNECTIONS_PER_HOST) = Field(
        1, description="QUIC connections per client host, driven by one process (asyncio)"
    )
    start_window_s: Number(0, MAX_SECONDS, inclusive=True) = Field(
        0.0, description="the run's connections start evenly spread over this many seconds"
    )
    server_processes: Integer(1, MAX_SERVER_PROCESSES) = Field(
        1,
        description="server processes sharing the service port (SO_REUSEPORT; each "
        "connection's packets reach its process by the server ID in its CIDs)",
    )
    protocol: Choice(PROTOCOLS) = Field(
        "raw",
        description="raw: one stream carrying the payload; h3: an HTTP/3 GET of the payload "
        "(testbed/apps/transfer.py), which every stack speaks",
    )
    client_stack: Choice(STACKS) = Field(
        "aioquic", description="the clients' QUIC stack (ngtcp2: Debian's gtlsclient)"
    )
    server_stack: Choice(STACKS) = Field(
        "aioquic", description="the servers' QUIC stack (ngtcp2: Debian's gtlsserver)"
    )

    @model_validator(mode="after")
    def _stacks_speak_the_protocol(self) -> "Workload":
        located = []
        for side in ("client_stack", "server_stack"):
            if getattr(self, side) == "ngtcp2" and self.protocol != "h3":
                located.append(
                    (("protocol",), f"expected h3 with {side} ngtcp2 (gtlsclient and "
                     "gtlsserver speak only HTTP/3)")
                )  # fmt: skip
        if self.server_stack != "aioquic" and self.server_processes > 1:
            located.append(
                (("server_stack",), "expected aioquic with server_processes > 1 (its CIDs "
                 "carry each process's QUIC-LB server ID)")
            )  # fmt: skip
        if located:
            raise problems(*located)
        return self


def _spread_in_the_trigger_unit(value: Any, info: ValidationInfo) -> int | float:
    if info.data.get("at_bytes") is not None:
        return _integer_check(0, None)(value)
    return _number_check(0, MAX_SECONDS, inclusive=True)(value)


# Bytes (an integer) with `at_bytes`, seconds with `at_seconds`: the field after both.
Spread = Annotated[
    int | float,
    PlainValidator(_spread_in_the_trigger_unit),
    WithJsonSchema({"type": "number", "minimum": 0}),
]


class Migration(Section):
    """When and how each client moves its connection (testbed/migration.py)."""

    kinds: Choices(MIGRATION_KINDS) = Field(
        alias="kind", description="a migration kind or a list of them: each kind is its own run"
    )
    at_bytes: Integer(1) | None = Field(
        None, description="migrate once the server acknowledged this many bytes"
    )
    at_seconds: Number(0, MAX_SECONDS) | None = Field(
        None, description="migrate this many seconds after the first stream byte"
    )
    spread: Spread = Field(
        0,
        description="each client migrates at its trigger plus a seeded uniform draw from "
        "[0, spread]: bytes (an integer) with at_bytes, seconds (at most 3600) with at_seconds",
    )
    repeat_every_s: Number(0, MAX_SECONDS) | None = Field(
        None,
        description="after the first migration, migrate again this often while sending "
        "(less than timeouts.run_s)",
    )
    rebind_by: Choice(REBINDERS) = Field(
        "client",
        description="who rebinds for nat-rebind and addr-rebind: the client (a new socket) "
        "or the network (a NAT on the client's host changes the connection's mapping; the "
        "client does not know); active migration is always the client's",
    )

    @model_validator(mode="wrap")
    @classmethod
    def _one_trigger(cls, data: Any, handler: Callable) -> "Migration":
        # Checked on the keys given, so that it is reported with the keys' own problems.
        if not isinstance(data, dict):
            return handler(data)
        at_bytes, at_seconds = (data.get(key) is not None for key in ("at_bytes", "at_seconds"))
        if at_bytes != at_seconds:
            return handler(data)
        rule = problem("expected exactly one of at_bytes, at_seconds")
        errors = [InitErrorDetails(type=rule, loc=(), input=None)]
        try:
            handler(data)
        except ValidationError as exc:
            errors += [_again(error) for error in exc.errors(include_url=False)]
        raise ValidationError.from_exception_data(cls.__name__, errors)

    def trigger_for(self, index: int, seed: int) -> tuple[str, float]:
        """("at_bytes" | "at_seconds", value) of connection `index`: its own, reproducible
        schedule (testbed.migration.trigger)."""
        return trigger(self.at_bytes, self.at_seconds, self.spread, index, seed)


class Timeouts(Section):
    """The endpoints' QUIC idle timeout and the bound on each transfer, in seconds."""

    idle_s: Seconds = Field(DEFAULT_IDLE_S, description="QUIC idle timeout of both endpoints")
    run_s: Seconds = Field(DEFAULT_RUN_S, description="bound on each client's transfer")


class Agent(Section):
    """The Client Agents and the Tracking Agent (variant qasm)."""

    secret: Text = Field(DEFAULT_AGENT_SECRET, description="the Client Agents' keys derive from it")
    modes: Choices(AGENT_MODES) = Field(
        DEFAULT_AGENT_MODES,
        alias="mode",
        description="how announcements reach the middlebox hops: push (the Tracking Agent "
        "installs them), pull (a hop looks them up) or ahead (push, and each connection's "
        "agent has it admitted before its first packet, so its Initial does not wait for the "
        "controller: builtin Client Agent, one replica per hop, no SNI policy); a list runs "
        "qasm in each",
    )
    reports_per_s: Number(0, MAX_AGENT_REPORTS_PER_S) = Field(
        DEFAULT_RATE_PER_S,
        description="each connection's authenticated reports the Tracking Agent takes per "
        "second (a client host's token bucket gets this times workload.connections; a "
        "connection migrating N times a second sends about N)",
    )
    report_burst: Integer(1, MAX_AGENT_REPORTS_PER_S) = Field(
        DEFAULT_BURST, description="the bucket's size per connection, reports"
    )
    client: Choice(AGENT_CLIENTS) | None = Field(
        None,
        description="the Client Agent: builtin (in the client process; aioquic clients) or "
        "host (beside an unmodified client: key log, 1-RTT decryption, NFQUEUE); default "
        "builtin where the client stack has the hook, host otherwise",
    )

    def client_for(self, client_stack: str) -> str:
        """The Client Agent a client of this stack runs."""
        return self.client or ("builtin" if client_stack in BUILTIN_AGENT_STACKS else "host")

    max_paths: Integer(2, MAX_AGENT_PATHS) = Field(
        DEFAULT_MAX_PATHS,
        description="live paths each connection may hold at once (a client host's quota is "
        "this times workload.connections); announcements beyond are refused (path_quota)",
    )

    def host_budget(self, connections: int) -> dict[str, float | int]:
        """The budgets of the Client Agent of a host driving `connections` connections.
        The Tracking Agent knows a host by its agent key, one per host, and 20 connections
        of a host announce and retire together: a per-key budget sized for one connection
        refused most of their retirements (scale.yaml's reduced run: 44 rate_limited,
        3 of 200 connections left holding their old path's NAT port)."""
        return {
            "reports_per_s": self.reports_per_s * connections,
            "report_burst": self.report_burst * connections,
            "max_paths": self.max_paths * connections,
        }


class Ratelimit(Section):
    """One token bucket per connection, an OpenFlow meter (functions: ratelimit)."""

    rate_mbit: Number(0, MAX_RATE_MBIT) = Field(description="the bucket's rate, Mbit/s")
    burst_kbit: Integer(1, MAX_BURST_KBIT) = Field(description="the bucket's size, kbit")

    def limit(self) -> RateLimit:
        return RateLimit(rate_kbps=int(self.rate_mbit * 1000), burst_kbit=self.burst_kbit)


class Nat(Section):
    """Source NAT (functions: nat)."""

    ports: Integer(1, MAX_NAT_PORTS) = Field(description="the NAT's public port pool")
    ports_per_source: Integer(1, MAX_NAT_PORTS) | None = Field(
        None,
        description="public ports one client address may hold at once (RFC 6888 REQ-4); "
        "its next new path is dropped (nat_source_quota); none: no limit",
    )


class Firewall(Section):
    """The firewall's SNI policy (qasm/functions/firewall.py): the deny list wins; a
    non-empty allow list admits only what it matches."""

    sni_allow: HostNames = Field((), description="host names or *.domain patterns admitted")
    sni_deny: HostNames = Field((), description="host names or *.domain patterns refused")

    def policy(self) -> SniPolicy:
        return SniPolicy(allow=self.sni_allow, deny=self.sni_deny)


class Middlebox(Section):
    """The middlebox's connection table (RFC 9312 §4.2: idle timeout; a hard bound, LRU)."""

    idle_timeout_s: Number(0, MAX_STATE_IDLE_TIMEOUT_S) = Field(
        DEFAULT_IDLE_TIMEOUT_S, description="a connection without packets this long is forgotten"
    )
    max_connections: Integer(1, MAX_CONNECTIONS) = Field(
        DEFAULT_MAX_CONNECTIONS, description="connections held at most (least recently used go)"
    )
    new_connections_per_s: Number(0, MAX_ADMISSION_RATE_PER_S) = Field(
        DEFAULT_ADMISSION_RATE_PER_S,
        description="new connections each source prefix may open per second (a token bucket)",
    )
    new_connections_burst: Integer(1, MAX_ADMISSION_BURST) = Field(
        DEFAULT_ADMISSION_BURST, description="the bucket's size, connections"
    )
    new_connections_prefix_length: Integer(0, 32) = Field(
        32, description="the source prefix a bucket covers, bits (32: one per address)"
    )
    half_open_timeout_s: Number(0, MAX_STATE_IDLE_TIMEOUT_S) = Field(
        DEFAULT_HALF_OPEN_TIMEOUT_S,
        description="a connection the server has not answered is forgotten after this long "
        "(RFC 9312 §4.7); such connections are evicted first at max_connections",
    )
    half_open_per_source: Integer(1, MAX_CONNECTIONS) = Field(
        DEFAULT_HALF_OPEN_PER_SOURCE,
        description="with nat: connections the server has not answered a source prefix "
        "(new_connections_prefix_length) may hold; its next Initial is dropped",
    )
    state: Choice(STATES) = Field(
        "memory",
        description="where connection state lives: memory (each hop, each replica its own) "
        "or redis (one table per hop shared by its replicas and the Tracking Agent; the run "
        "starts a private redis-server unless state_url names one)",
    )
    state_url: Text | None = Field(
        None,
        description="redis://[:password@]host:port/db or unix:///path.sock: an external "
        "Redis (one server, not a Cluster) instead of the run's own (state: redis)",
    )

    @field_validator("state_url")
    @classmethod
    def _a_reachable_redis(cls, url: str | None) -> str | None:
        if url is not None:
            trouble = redis_trouble(url)
            if trouble:
                raise problem(f"expected a reachable Redis server ({trouble})")
        return url

    @model_validator(mode="after")
    def _url_with_redis(self) -> "Middlebox":
        if self.state_url is not None and self.state != "redis":
            raise problems((("state_url",), "expected no state_url with state memory"))
        return self

    def admission(self) -> Admission:
        return Admission(
            self.new_connections_per_s,
            self.new_connections_burst,
            self.new_connections_prefix_length,
        )


@functools.cache
def redis_trouble(url: str) -> str | None:
    """Why `url` is no Redis the middlebox can keep its state in, or None (asked once per
    URL and process: every point of a sweep is validated)."""
    from qasm.state.redis_store import connect_redis  # (the redis client; validation only)

    try:
        client = connect_redis(url)
    except (ValueError, ConnectionError) as exc:
        return str(exc)
    try:
        if client.info("cluster").get("cluster_enabled"):
            return f"{url} is a Redis Cluster node: the store's scripts need one server"
    finally:
        client.close()
    return None


class Fault(Section):
    """A fault injected during every run of the point (topology: replicas)."""

    kill_replica: Integer(1, MAX_REPLICAS) = Field(
        description="the replica whose datapath stops: its links go down, as a crashed box's"
    )
    at_seconds: Number(0, MAX_SECONDS, inclusive=True) = Field(
        description="seconds after the run's connections start (their handshakes included)"
    )


class Artifacts(Section):
    """What a run captures on request, besides the logs it always keeps."""

    pcap: Flag = Field(False, description="tcpdump on every host interface, one file each")
    qlog: Flag = Field(False, description="one qlog per connection at each end (qvis reads them)")
    keylog: Flag = Field(False, description="SSLKEYLOGFILE per client (Wireshark decrypts pcaps)")


class Flood(Section):
    """A hostile client 1 while the clients run (testbed/apps/flood.py): garbage from its lte
    address, or well-formed Initials (`initials`), or a greedy Client Agent (`greedy_paths`)."""

    pps: Integer(1, MAX_FLOOD_PPS) = Field(description="packets per second")
    spoof: Flag = Field(
        False,
        description="send from the other clients', client 1's wifi and the server's "
        "addresses instead of its own (location hijacking, BCP 38)",
    )
    initials: Flag = Field(
        False,
        description="well-formed QUIC v1 client Initials (a real ClientHello, 1200 bytes), "
        "each with a fresh DCID, from random source ports of client 1's own addresses (with "
        "spoof: the victims' instead), instead of garbage: each opens a new connection",
    )
    greedy_paths: Integer(1, MAX_GREEDY_PATHS) | None = Field(
        None,
        description="client 1, with its own valid agent key, opens a connection and announces "
        "this many fresh paths for it (its address, new ports) at `pps` (qasm only)",
    )


def _sweep_axes(value: Any) -> dict[str, tuple[Any, ...]]:
    if not isinstance(value, dict) or not value:
        raise problem("expected a mapping of dotted keys to lists of values")
    located: list[tuple[tuple[str | int, ...], str]] = []
    count = 1
    for key, values in value.items():
        if key.split(".")[0] not in SWEEPABLE_SECTIONS or key == "topology.name":
            located.append(((key,), f"expected a key under {', '.join(SWEEPABLE_SECTIONS)}"))
        elif not isinstance(values, list) or not values:
            located.append(((key,), "expected a non-empty list of values"))
        else:
            canonical = [json.dumps(v, sort_keys=True, default=repr) for v in values]
            if len(set(canonical)) != len(canonical):
                located.append(((key,), "expected each value once"))
            count *= len(values)
    if count > MAX_SWEEP_POINTS:
        located.append(((), f"expected at most {MAX_SWEEP_POINTS} points, got {count}"))
    if located:
        raise problems(*located)
    return {key: tuple(values) for key, values in value.items()}


# `sweep:` maps dotted keys (under SWEEPABLE_SECTIONS) to the values each point writes there.
SweepAxes = Annotated[
    dict[str, tuple[Any, ...]],
    PlainValidator(_sweep_axes),
    PlainSerializer(lambda axes: {key: list(values) for key, values in axes.items()}),
    WithJsonSchema(
        {
            "type": "object",
            "minProperties": 1,
            "propertyNames": {"pattern": rf"^({'|'.join(SWEEPABLE_SECTIONS)})(\..+)?$"},
            "additionalProperties": {"type": "array", "minItems": 1},
        }
    ),
]


def _regression_block(rules: tuple[tuple[str, Tolerance], ...]) -> dict[str, Any]:
    """The rules as they are written in the file."""
    return {
        pattern: tolerance.mode
        if tolerance.mode in ("exact", "ignore")
        else {tolerance.mode: tolerance.value}
        for pattern, tolerance in rules
    }


def _regression_rules(block: Any, info: ValidationInfo) -> tuple[tuple[str, Tolerance], ...]:
    # A pattern naming a variant is checked against the scenario's (all, if they are bad).
    variants = info.data.get("variants", VARIANTS)
    rules, located = check_block(block, variants, REGRESSION_KINDS)
    if located:
        raise problems(*located)
    return rules


# `regression:` maps metric patterns to tolerances (testbed/analysis/regression.py), kept as
# ((pattern, Tolerance), ...) in order; a field after `variants`.
RegressionRules = Annotated[
    tuple[tuple[str, Tolerance], ...],
    PlainValidator(_regression_rules),
    PlainSerializer(_regression_block),
    WithJsonSchema(BLOCK_JSON_SCHEMA),
]


# --- the file ------------------------------------------------------------------------------------


def _ngtcp2_client_migration(migration: Migration) -> list[tuple[tuple[str, ...], str]]:
    """What gtlsclient cannot do (../shared/STACKS.md): rebind itself (its --nat-rebinding
    stops sending after the move), migrate at a byte count or more than once."""
    located = []
    rebinds = [k for k in migration.kinds if k != "active"]
    if rebinds and migration.rebind_by != "network":
        located.append(
            (("rebind_by",), f"expected network for {rebinds[0]} with workload.client_stack "
             "ngtcp2 (its --nat-rebinding stops sending after the move)")
        )  # fmt: skip
    if migration.at_bytes is not None:
        located.append(
            (("at_bytes",), "expected at_seconds with workload.client_stack ngtcp2 (it "
             "migrates by time only)")
        )  # fmt: skip
    if migration.repeat_every_s is not None:
        located.append(
            (("repeat_every_s",), "expected none with workload.client_stack ngtcp2 (it "
             "migrates once)")
        )  # fmt: skip
    return located


class Scenario(Section):
    """A scenario file, or one point of its sweep (see `points`).

    Besides the file's keys: `path`, `sha256` (of the file's text), `raw` (the file's data),
    `parameters` (this point's sweep values, {"topology.clients": 20}; {} without a sweep) and
    `sweep` (the points; () without a sweep), set by testbed/scenario/loading.py.
    """

    name: Text = Field(
        None,
        validate_default=True,
        description="the scenario's name (default: the file name without .yaml)",
        json_schema_extra=lambda schema: schema.pop("default", None),
    )
    description: Text = Field("", description="free text")
    seed: Integer(0) = Field(0, description="payload and per-repetition seeds derive from it")
    repetitions: Integer(1, MAX_REPETITIONS) = Field(1, description="runs of each cell")
    variants: Choices(ALL_VARIANTS) = Field(
        description="the middlebox variants compared (../shared/DESIGN.md)"
    )
    functions: Choices(FUNCTIONS) = Field(
        DEFAULT_FUNCTIONS, validate_default=True, description="the middlebox functions"
    )
    topology: AnyTopology = Field(description="the emulated network, by name")
    workload: Workload = Field(description="what each client transfers")
    timeouts: Timeouts = Field(Timeouts(), description="QUIC idle timeout, transfer bound, s")
    migration: Migration | None = Field(None, description="none: the clients never migrate")
    agent: Agent = Field(Agent(), description="Client and Tracking Agent settings (qasm)")
    ratelimit: Ratelimit | None = Field(
        None, validate_default=True, description="required with functions: ratelimit"
    )
    nat: Nat | None = Field(None, validate_default=True, description="required with functions: nat")
    firewall: Firewall | None = Field(None, description="only with functions: firewall")
    middlebox: Middlebox = Field(Middlebox(), description="the connection table's bounds")
    regression: RegressionRules = Field(
        (),
        description="`qasm check` tolerances: metric pattern -> tolerance, the last match "
        "wins (testbed/analysis/regression.py)",
    )
    artifacts: Artifacts = Field(Artifacts(), description="captures kept per run")
    cpu_pinning: Flag = Field(
        False, description="controller, switch and delay lines on one CPU, endpoints on others"
    )
    flood: Flood | None = Field(None, description="none: no hostile traffic")
    faults: tuple[Fault, ...] = Field(
        (), description="faults injected during each run (kill_replica: topology replicas)"
    )
    sweep_axes: SweepAxes | None = Field(
        None,
        alias="sweep",
        description="run the cross product of these values (at most 256 points), each point "
        "validated as if its values were written in place",
    )

    _path: Path = PrivateAttr(Path())
    _sha256: str = PrivateAttr("")
    _raw: dict = PrivateAttr(default_factory=dict)
    _parameters: dict[str, Any] = PrivateAttr(default_factory=dict)
    _sweep: "tuple[Scenario, ...]" = PrivateAttr(())

    # --- defaults that need the file, and rules across sections ---------------------------------

    @field_validator("name", mode="before")
    @classmethod
    def _name_defaults_to_the_file_name(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            path = (info.context or {}).get("path")
            return Path(path).stem if path else "scenario"
        return value

    @field_validator("functions")
    @classmethod
    def _quic_lb_balances_alone(cls, functions: tuple, info: ValidationInfo) -> tuple:
        # In a sweep, quic-lb just skips the points where other functions run (`applicable`).
        sweeping = (info.context or {}).get("sweeping", False)
        quic_lb = "quic-lb" in info.data.get("variants", ())
        if quic_lb and not sweeping and functions != ("loadbalancer",):
            raise problem("expected [loadbalancer] alone with variant quic-lb")
        return functions

    @field_validator("topology")
    @classmethod
    def _kernel_variants_on_a_router(cls, topology: Topology, info: ValidationInfo):
        kernel = [v for v in info.data.get("variants", ()) if v in KERNEL_VARIANTS]
        if kernel and not isinstance(topology, RoutedTopology):
            raise problems(
                (("name",), f"expected routed: variant {kernel[0]} runs on a router host")
            )
        return topology

    @field_validator("topology")
    @classmethod
    def _backends_for_the_load_balancer(cls, topology: Topology, info: ValidationInfo):
        if "loadbalancer" in info.data.get("functions", ()):
            if not isinstance(topology, DualhomedTopology | RoutedTopology):
                raise problems(
                    (
                        ("backends",),
                        "expected a topology with backends (dualhomed, routed), functions has "
                        "loadbalancer",
                    )
                )
            if not topology.backends:
                raise problems((("backends",), "expected 2 or more (functions has loadbalancer)"))
        return topology

    @field_validator("workload")
    @classmethod
    def _quic_lb_servers_are_ours(cls, workload: Workload, info: ValidationInfo):
        balanced = "loadbalancer" in info.data.get("functions", ())
        if balanced and workload.server_stack != "aioquic":
            raise problems(
                (
                    ("server_stack",),
                    "expected aioquic with functions loadbalancer (the backends issue QUIC-LB "
                    "CIDs, which only our aioquic server does)",
                )
            )
        return workload

    @field_validator("workload")
    @classmethod
    def _one_server_process_per_backend(cls, workload: Workload, info: ValidationInfo):
        if workload.server_processes > 1 and "loadbalancer" in info.data.get("functions", ()):
            raise problems(
                (
                    ("server_processes",),
                    "expected 1 with functions loadbalancer (each backend's CIDs carry its own "
                    "server ID)",
                )
            )
        return workload

    @field_validator("migration")
    @classmethod
    def _migration_before_the_end(cls, migration: Migration | None, info: ValidationInfo):
        if migration is None:
            return None
        located = []
        workload, timeouts = info.data.get("workload"), info.data.get("timeouts")
        at_bytes, at_seconds = migration.at_bytes, migration.at_seconds
        if workload and at_bytes is not None and at_bytes + migration.spread >= workload.bytes:
            located.append(
                (
                    ("at_bytes",),
                    f"expected at_bytes + spread less than workload.bytes ({workload.bytes}): "
                    "migration after the end",
                )
            )
        if timeouts and at_seconds is not None and at_seconds + migration.spread >= timeouts.run_s:
            located.append(
                (
                    ("at_seconds",),
                    "expected at_seconds + spread less than timeouts.run_s "
                    f"({timeouts.run_s:g}): migration after the end",
                )
            )
        repeat = migration.repeat_every_s
        if timeouts and repeat is not None and repeat >= timeouts.run_s:
            located.append(
                (("repeat_every_s",), f"expected less than timeouts.run_s ({timeouts.run_s:g})")
            )
        if workload and workload.client_stack == "ngtcp2":
            located += _ngtcp2_client_migration(migration)
        if located:
            raise problems(*located)
        return migration

    @field_validator("agent")
    @classmethod
    def _builtin_agent_needs_its_hook(cls, agent: Agent, info: ValidationInfo):
        workload = info.data.get("workload")
        uses_agent = {"qasm", "netfilter-qasm"} & set(info.data.get("variants", ()))
        stack = workload.client_stack if workload else None
        if (
            uses_agent
            and stack is not None
            and agent.client_for(stack) == "builtin"
            and stack not in BUILTIN_AGENT_STACKS
        ):
            raise problems(
                (
                    ("client",),
                    f"expected host with workload.client_stack {stack} (the builtin Client "
                    "Agent reads aioquic's internals)",
                )
            )
        return agent

    @model_validator(mode="after")
    def _admission_ahead_where_a_hop_can_admit(self) -> "Scenario":
        """Agent mode ahead needs a Client Agent that knows a connection's socket before its
        first packet, a hop that need not read that packet, and one replica per hop (which
        replica a connection lands on is the front end's hash of its first packet)."""
        if "ahead" not in self.agent.modes or "qasm" not in self.variants:
            return self
        why = None
        if self.agent.client_for(self.workload.client_stack) != "builtin":
            why = "the host Client Agent sees a connection only once it sends"
        elif isinstance(self.topology, ReplicasTopology):
            why = "topology replicas: the front end picks a replica by the first packet"
        elif self.firewall is not None:
            # Any firewall section, empty lists too, becomes the hop's SNI policy (runner).
            why = "the firewall's SNI policy reads each connection's Initial"
        if why:
            raise problems((("agent", "mode"), f"expected push or pull ({why})"))
        return self

    @field_validator("ratelimit")
    @classmethod
    def _ratelimit_with_its_function(cls, ratelimit: Ratelimit | None, info: ValidationInfo):
        if ratelimit is None and "ratelimit" in info.data.get("functions", ()):
            raise problem("expected rate_mbit and burst_kbit (functions has ratelimit)")
        return ratelimit

    @field_validator("nat")
    @classmethod
    def _nat_with_its_function(cls, nat: Nat | None, info: ValidationInfo):
        if nat is None and "nat" in info.data.get("functions", ()):
            raise problem("expected ports (functions has nat)")
        return nat

    @field_validator("firewall")
    @classmethod
    def _firewall_with_its_function(cls, firewall: Firewall | None, info: ValidationInfo):
        functions = info.data.get("functions")
        if firewall is not None and functions is not None and "firewall" not in functions:
            raise problem("expected functions to include firewall")
        kernel = [v for v in info.data.get("variants", ()) if v in KERNEL_VARIANTS]
        if firewall is not None and (firewall.sni_allow or firewall.sni_deny) and kernel:
            raise problem(
                f"expected no SNI lists with variant {kernel[0]} (netfilter cannot read the "
                "ClientHello, which the Initial's keys protect)"
            )
        return firewall

    @field_validator("middlebox")
    @classmethod
    def _a_pool_slice_per_replica(cls, middlebox: Middlebox, info: ValidationInfo):
        topology, nat = info.data.get("topology"), info.data.get("nat")
        replicas = getattr(topology, "replicas", 1)
        if middlebox.state == "memory" and nat is not None and nat.ports < replicas:
            raise problems(
                (
                    ("state",),
                    f"expected redis, or nat.ports >= {replicas}: replicas keeping state apart "
                    f"each take a slice of the NAT pool ({nat.ports} ports)",
                )
            )
        return middlebox

    @field_validator("faults")
    @classmethod
    def _faults_on_replicas(cls, faults: tuple, info: ValidationInfo):
        topology, timeouts = info.data.get("topology"), info.data.get("timeouts")
        located = []
        for index, fault in enumerate(faults):
            if topology is None:
                pass  # the topology has problems of its own
            elif not isinstance(topology, ReplicasTopology):
                located.append(((index, "kill_replica"), "expected topology replicas"))
            elif fault.kill_replica > topology.replicas:
                located.append(
                    (
                        (index, "kill_replica"),
                        f"expected 1..{topology.replicas} (topology.replicas)",
                    )
                )
            if timeouts and fault.at_seconds >= timeouts.run_s:
                located.append(
                    (
                        (index, "at_seconds"),
                        f"expected less than timeouts.run_s ({timeouts.run_s:g})",
                    )
                )
        if located:
            raise problems(*located)
        return faults

    # --- what the runner reads besides the keys -----------------------------------------------

    @classmethod
    def from_data(
        cls,
        data: Any,
        *,
        path: Path,
        text: str,
        raw: Any,
        parameters: dict[str, Any] | None = None,
        sweeping: bool = False,
    ) -> "Scenario":
        """Validates one point's data (raises ValidationError) and records where it came from."""
        scenario = cls.model_validate(data, context={"path": path, "sweeping": sweeping})
        scenario._path = path
        scenario._sha256 = hashlib.sha256(text.encode()).hexdigest()
        scenario._raw = raw
        scenario._parameters = dict(parameters or {})
        return scenario

    def with_points(self, points: Sequence["Scenario"]) -> "Scenario":
        """This scenario as the file of a sweep with these points (raises ValidationError)."""
        if "quic-lb" in self.variants and not any(p.functions == ("loadbalancer",) for p in points):
            raise problems(
                (("variants",), "expected a sweep point with functions [loadbalancer] for quic-lb")
            )
        scenario = self.model_copy()
        scenario._sweep = tuple(points)
        return scenario

    @property
    def path(self) -> Path:
        return self._path

    @property
    def sha256(self) -> str:
        return self._sha256

    @property
    def raw(self) -> dict:
        return self._raw

    @property
    def parameters(self) -> dict[str, Any]:
        """The values this point of a sweep sets ({"topology.clients": 20}); {} without one."""
        return self._parameters

    @property
    def sweep(self) -> "tuple[Scenario, ...]":
        """The points of the sweep; () without a sweep."""
        return self._sweep

    @property
    def points(self) -> "tuple[Scenario, ...]":
        """What to run: every point of the sweep, or the scenario itself."""
        return self._sweep or (self,)

    @property
    def migration_kinds(self) -> tuple[str | None, ...]:
        return self.migration.kinds if self.migration else (None,)

    def applicable(self, variants: Sequence[str]) -> tuple[str, ...]:
        """quic-lb is a load balancer: at a sweep point with other functions it has no role."""
        if self.functions == ("loadbalancer",):
            return tuple(variants)
        return tuple(v for v in variants if v != "quic-lb")
