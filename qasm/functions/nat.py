"""Source NAT of the clients' addresses to one public address, with a bounded port pool.

RFC 9312 §4.3: a NAT should not hide a client's address change from the server, so every
path of a connection gets its own public port; what a middlebox can do is give the port of a
retired path back as soon as it knows, instead of holding it for the idle timeout. Pure:
the pipeline asks for and releases mappings; rules rewrite the packets.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from qasm.flow import FlowKey


@dataclass(frozen=True)
class NatSettings:
    public_ip: str
    public_mac: str
    first_port: int = 20000
    ports: int = 1024

    def __post_init__(self) -> None:
        if self.ports <= 0 or not 1024 <= self.first_port <= 65536 - self.ports:
            raise ValueError(f"NAT port pool {self.first_port}+{self.ports} outside 1024..65535")


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
