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
Pure: the pipeline turns a Backend into rewriting flow rules.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from qasm.flow import FlowKey
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
