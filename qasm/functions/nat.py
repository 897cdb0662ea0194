"""Source NAT of the clients' addresses to one public address, with a bounded port pool.

RFC 9312 §4.3: a NAT should not hide a client's address change from the server, so every
path of a connection gets its own public port; what a middlebox can do is give the port of a
retired path back as soon as it knows, instead of holding it for the idle timeout.

A per-source limit (`ports_per_source`, RFC 6888 REQ-4: a carrier-grade NAT limits the
external ports one subscriber may hold) keeps one source from taking the pool: a flood of
well-formed Initials the server answers is, to the middlebox, established connections (the
half-open quota no longer counts them), admitted at the source's admission budget and each
holding a port until it goes idle. Counted per hop process (replicas sharing one pool in
Redis each apply it to what they allocated).

The pool (`NatPool`) is the hop's, shared by its connections; which ports a connection holds
is the connection's own typed state (`NatState`), so a connection that ends by any route
(idle timeout, eviction at the table's bound) gives back exactly what it holds. Pure: `Nat`
returns the mappings it made or released; rules rewrite the packets.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from qasm.codec import CodecError, from_json_value, to_json_value
from qasm.compact import compact, expand
from qasm.controller.events import NatMapping, Reason
from qasm.controller.messages import (
    PORT_CONTROLLER,
    PRIORITY_PROTECTED,
    FlowRule,
    Match,
    SwitchMessage,
)
from qasm.flow import PORT_NUMBERS, FlowKey
from qasm.functions.base import Change, MiddleboxFunction, Refusal, Translation


@dataclass(frozen=True)
class NatSettings:
    public_ip: str
    public_mac: str
    first_port: int = 20000
    ports: int = 1024
    ports_per_source: int | None = None  # public ports one source address may hold

    def __post_init__(self) -> None:
        if self.ports <= 0 or not 1024 <= self.first_port <= 65536 - self.ports:
            raise ValueError(f"NAT port pool {self.first_port}+{self.ports} outside 1024..65535")
        if self.ports_per_source is not None and self.ports_per_source <= 0:
            raise ValueError(f"NAT ports per source {self.ports_per_source}, expected >= 1")


def pool_slice(settings: NatSettings, index: int, count: int) -> NatSettings:
    """Slice `index` (0-based) of `count` equal contiguous slices of a pool: replicas of one
    hop that keep state apart share its public address but never a port, so the service's
    replies can be steered back to the replica that holds the mapping (by port range)."""
    size = settings.ports // count
    if size < 1 or not 0 <= index < count:
        raise ValueError(f"NAT port pool of {settings.ports} ports: no slice {index} of {count}")
    return NatSettings(
        settings.public_ip, settings.public_mac, settings.first_port + index * size, size,
        settings.ports_per_source,
    )  # fmt: skip


@dataclass
class NatPool:
    settings: NatSettings
    exhausted: int = 0  # allocations refused for lack of a free port
    _port_of_path: dict[FlowKey, int] = field(default_factory=dict)
    _path_of_port: dict[int, FlowKey] = field(default_factory=dict)
    _next: int = 0

    @property
    def in_use(self) -> int:
        # Not __len__: an empty pool must still be truthy where the pipeline asks "is NAT on?".
        return len(self._port_of_path)

    def allocate(self, path: FlowKey) -> int | None:
        """The public port of `path` (a stable mapping), or None when the pool is empty."""
        port = self._port_of_path.get(path)
        if port is not None:
            return port
        size = self.settings.ports
        for step in range(size):
            candidate = self.settings.first_port + (self._next + step) % size
            if candidate not in self._path_of_port:
                self._next = (self._next + step + 1) % size
                candidate = PORT_NUMBERS[candidate]  # held by the path's NatState too
                self._port_of_path[path] = candidate
                self._path_of_port[candidate] = path
                return candidate
        self.exhausted += 1
        return None

    def release(self, path: FlowKey) -> int | None:
        port = self._port_of_path.pop(path, None)
        if port is not None:
            del self._path_of_port[port]
        return port

    def path_of(self, public_port: int) -> FlowKey | None:
        return self._path_of_port.get(public_port)

    def public_flow(self, path: FlowKey) -> FlowKey | None:
        """The client→service flow as the service sees it after translation."""
        port = self._port_of_path.get(path)
        if port is None:
            return None
        return FlowKey(self.settings.public_ip, port, path.dst_ip, path.dst_port)


@dataclass(slots=True)
class NatState:
    """The public port of each path of the connection (retired ones until released).

    Paths and their ports side by side, each held compact (qasm/compact.py): a connection
    usually holds one of each, which then cost nothing beyond this object, where a tuple of
    one (path, port) pair cost 104 bytes (make bench: bytes per connection).

    Its JSON is still the list of [path, port] pairs: as {"paths": [...], "ports": [...]}
    one NAT port's text grew past 64 bytes, Redis's bound for a hash's compact (listpack)
    encoding, and a connection's hash in Redis went from 581 to 1,004 bytes (make bench:
    redis_bytes_per_connection)."""

    paths: FlowKey | tuple[FlowKey, ...] = ()
    ports: int | tuple[int, ...] = ()

    def to_json_value(self) -> dict:
        return {"ports": [[to_json_value(path), port] for path, port in self.pairs()]}

    @classmethod
    def from_json_value(cls, value: Any, where: str) -> NatState:
        if not isinstance(value, dict) or set(value) != {"ports"}:
            raise CodecError(f'{where}: expected {{"ports": [[path, port], ...]}}, got {value!r}')
        pairs = from_json_value(tuple[tuple[FlowKey, int], ...], value["ports"], f"{where}.ports")
        return cls(compact(tuple(p for p, _ in pairs)), compact(tuple(port for _, port in pairs)))

    def pairs(self) -> tuple[tuple[FlowKey, int], ...]:
        """(path, public port), in the order the paths were added."""
        return tuple(zip(expand(self.paths), expand(self.ports), strict=True))

    def port(self, path: FlowKey) -> int | None:
        if type(self.paths) is not tuple:  # one path: the usual case, read per packet-in
            return self.ports if self.paths == path else None  # type: ignore[return-value]
        for held, port in zip(self.paths, self.ports, strict=True):
            if held == path:
                return port
        return None

    def add(self, path: FlowKey, port: int) -> None:
        self.paths = compact((*expand(self.paths), path))
        self.ports = compact((*expand(self.ports), port))

    def remove(self, path: FlowKey) -> int | None:
        """Forgets the path's port and returns it (None if it held none)."""
        port = self.port(path)
        if port is not None:
            kept = [pair for pair in self.pairs() if pair[0] != path]
            self.paths = compact(tuple(held for held, _ in kept))
            self.ports = compact(tuple(public for _, public in kept))
        return port


class Nat(MiddleboxFunction):
    name = "nat"
    State = NatState

    def __init__(self, settings: NatSettings, pool=None) -> None:
        # `pool`: another `NatPool` implementation, e.g. the one replicas share in Redis
        # (qasm.state.redis_nat.SharedNatPool).
        self.pool = pool if pool is not None else NatPool(settings)
        self._held: Counter[str] = Counter()  # ports each source address holds, by this hop
        # Public port -> the path whose client retired it, until the port is allocated again
        # (the pool hands ports out in turn, so that is a whole round of the pool later):
        # the service's datagrams still in flight to it go on to the connection, as a NAT
        # keeps a mapping's inbound side for a while, without holding the port or a rule.
        # At 100 migrations a second the server's datagrams a round trip behind the client
        # met no mapping: 85-108 drops per 290 migrations (rate.yaml), each a loss to
        # recover from. Bounded by the pool's size.
        self._retired_ports: dict[int, FlowKey] = {}

    @property
    def settings(self) -> NatSettings:
        return self.pool.settings

    def _mapping(self, path: FlowKey, port: int) -> NatMapping:
        return NatMapping(path, self.settings.public_ip, port)

    def arp_addresses(self) -> dict[str, str]:
        return {self.settings.public_ip: self.settings.public_mac}

    def switch_rules(self) -> list[SwitchMessage]:
        public = Match(ipv4_dst=self.settings.public_ip)
        return [FlowRule(PRIORITY_PROTECTED, public, PORT_CONTROLLER)]

    def service_path(self, flow: FlowKey) -> FlowKey | Refusal | None:
        if flow.dst_ip != self.settings.public_ip:
            return None
        path = self.pool.path_of(flow.dst_port) or self._retired_ports.get(flow.dst_port)
        if path is None:
            return Refusal(Reason.NO_NAT_MAPPING, f"no NAT mapping for public port {flow.dst_port}")
        return path

    def path_added(self, connection, path: FlowKey, now: float) -> Change:
        state: NatState = self.state(connection)
        if state.port(path) is not None:
            return Change()
        quota = self.settings.ports_per_source
        if quota is not None and self._held[path.src_ip] >= quota:
            text = f"{path.src_ip} holds {quota} ports, at most {quota}"
            return Change(refusal=Refusal(Reason.NAT_SOURCE_QUOTA, text))
        port = self.pool.allocate(path)
        if port is None:
            text = f"NAT port pool exhausted ({self.settings.ports} ports)"
            return Change(refusal=Refusal(Reason.NAT_POOL_EXHAUSTED, text))
        state.add(path, port)
        self._held[path.src_ip] += 1
        self._retired_ports.pop(port, None)
        return Change(nat_allocated=[self._mapping(path, port)])

    def path_retired(self, connection, path: FlowKey) -> Change:
        change = self._release(connection, path)
        for mapping in change.nat_released:
            self._retired_ports[mapping.public_port] = path
        return change

    def _release(self, connection, path: FlowKey) -> Change:
        state: NatState = self.state(connection)
        port = state.remove(path)
        if port is None:
            return Change()
        self.pool.release(path)
        self._held[path.src_ip] -= 1
        if self._held[path.src_ip] <= 0:
            del self._held[path.src_ip]  # bounded by the sources holding ports now
        return Change(nat_released=[self._mapping(path, port)])

    def connection_ended(self, connection) -> Change:
        change = Change()
        state = connection.nat
        for path, _ in state.pairs() if state else ():
            change.merge(self._release(connection, path))
        return change

    def translate(self, connection, path: FlowKey, flow: FlowKey) -> Translation:
        state = connection.nat
        port = state.port(path) if state else None
        if port is None:
            return Translation(flow)
        public = self.settings
        return Translation(
            FlowKey(public.public_ip, port, flow.dst_ip, flow.dst_port),
            to_service=(
                ("ipv4_src", public.public_ip),
                ("udp_src", port),
                ("eth_src", public.public_mac),
            ),
            to_client=(("ipv4_dst", path.src_ip), ("udp_dst", path.src_port)),
        )

    def mappings(self, connection) -> list[NatMapping]:
        state = connection.nat
        return [self._mapping(p, port) for p, port in (state.pairs() if state else ())]
