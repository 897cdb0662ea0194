"""A layer-4 load balancer: one virtual IP in front of N backend servers.

How a packet on a 5-tuple without a rule finds its backend:
- `tuple`: a hash of the 5-tuple, so a migrated connection lands wherever its new 5-tuple
  hashes (a coin toss between staying and breaking);
- `cid` / `qasm`: the backend pinned to the connection in the table when it opened;
- `quic-lb`: no state at all: the server ID the backend encoded in its connection IDs
  (draft-ietf-quic-load-balancers §5), read from the short header's DCID. A client Initial
  carries a DCID the client chose, so Initials are routed by a hash of that DCID, which every
  Initial of the connection repeats.
`baseline` keeps no state: it forwards the virtual IP to the first backend with static rules.
Pure: `LoadBalancer` (the stateful variants' function) returns rewrites and rules; the
pipeline sends them. The stateless modes (baseline, quic-lb) are the pipeline's, as they
keep no connection.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from qasm.controller.messages import PORT_CONTROLLER, PRIORITY_PROTECTED, FlowRule, Match
from qasm.flow import FlowKey
from qasm.functions.base import Change, MiddleboxFunction, Translation
from qasm.wire.errors import WireError
from qasm.wire.quic_lb import QuicLbConfig, decode_cid


@dataclass(frozen=True)
class Backend:
    ip: str
    mac: str
    switch_port: int
    server_id: str  # hex, as encoded in the backend's QUIC-LB connection IDs


@dataclass(frozen=True)
class QuicLbSettings:
    config_id: int = 0
    server_id_length: int = 1
    # With the 1-byte server ID and the first octet: 8-byte CIDs, aioquic's default length.
    nonce_length: int = 6
    key: str | None = None  # hex; None for the plaintext algorithm

    def config(self) -> QuicLbConfig:
        key = bytes.fromhex(self.key) if self.key else None
        return QuicLbConfig(self.config_id, self.server_id_length, self.nonce_length, key)


@dataclass(frozen=True)
class LoadBalancerSettings:
    vip_mac: str
    backends: tuple[Backend, ...]
    quic_lb: QuicLbSettings = QuicLbSettings()

    def __post_init__(self) -> None:
        if len(self.backends) < 2:
            raise ValueError("a load balancer needs at least 2 backends")


def _stable_hash(data: bytes) -> int:
    # Not hash(): Python randomises it per process, and a restarted controller must agree.
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "big")


def backend_by_hash(settings: LoadBalancerSettings, path: FlowKey) -> Backend:
    return settings.backends[_stable_hash(str(path).encode()) % len(settings.backends)]


def backend_by_initial_dcid(settings: LoadBalancerSettings, dcid: bytes) -> Backend:
    return settings.backends[_stable_hash(dcid) % len(settings.backends)]


def backend_by_server_id(settings: LoadBalancerSettings, dcid: bytes) -> Backend | None:
    """The backend whose server ID the DCID encodes, or None if it routes nowhere."""
    try:
        server_id = decode_cid(settings.quic_lb.config(), dcid).server_id.hex()
    except WireError:
        return None
    return next((b for b in settings.backends if b.server_id == server_id), None)


@dataclass(slots=True)
class LoadBalancerState:
    backend: str | None = None  # the backend's IP, chosen when the connection's first path came


class LoadBalancer(MiddleboxFunction):
    """The stateful variants' balancer: a connection's first path picks a backend by a hash
    of its 5-tuple and every later path of the connection goes to the same one. Under
    `tuple` every 5-tuple is its own connection, so a migrated one is hashed afresh."""

    name = "loadbalancer"
    State = LoadBalancerState

    def __init__(self, settings: LoadBalancerSettings, vip: str) -> None:
        self.settings = settings
        self.vip = vip
        self.backends = {b.ip: b for b in settings.backends}

    def arp_addresses(self) -> dict[str, str]:
        return {self.vip: self.settings.vip_mac}

    def switch_rules(self) -> list:
        return [
            FlowRule(PRIORITY_PROTECTED, Match(ipv4_src=ip), PORT_CONTROLLER)
            for ip in self.backends
        ]

    def service_path(self, flow: FlowKey) -> FlowKey | None:
        if flow.src_ip not in self.backends:
            return None
        return FlowKey(flow.dst_ip, flow.dst_port, self.vip, flow.src_port)

    def backend(self, connection) -> Backend | None:
        state = connection.loadbalancer
        return self.backends.get(state.backend) if state and state.backend else None

    def path_added(self, connection, path: FlowKey, now: float) -> Change:
        state: LoadBalancerState = self.state(connection)
        if state.backend is None:
            state.backend = backend_by_hash(self.settings, path).ip
        return Change(backend=state.backend)

    def translate(self, connection, path: FlowKey, flow: FlowKey) -> Translation:
        backend = self.backend(connection)
        if backend is None:
            return Translation(flow)
        return Translation(
            FlowKey(flow.src_ip, flow.src_port, backend.ip, flow.dst_port),
            to_service=(("ipv4_dst", backend.ip), ("eth_dst", backend.mac)),
            to_client=(("ipv4_src", self.vip), ("eth_src", self.settings.vip_mac)),
            service_port=backend.switch_port,
        )
