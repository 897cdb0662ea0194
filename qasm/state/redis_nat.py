"""A NAT's public port pool in Redis, shared by the replicas of one hop (`NatPool`'s interface).

Keys, under the store's prefix and the NAT's public address (one pool per address):

    {prefix}:nat:{ip}:range      "first+ports": the pool's range, fixed by the first replica
    {prefix}:nat:{ip}:free       list: free ports, least recently released first
    {prefix}:nat:{ip}:port_of    hash: client→service path → its public port
    {prefix}:nat:{ip}:path_of    hash: public port → path
    {prefix}:nat:{ip}:exhausted  counter: allocations refused for lack of a free port

Allocation and release are Lua scripts (see qasm/state/redis_store.py for why not
MULTI/WATCH): taking the head of the free list and recording both directions is one step,
so two replicas never hand out one port, and a path asked for twice keeps its port. A
released port goes to the tail, so it is reused last, as `NatPool`'s round robin does: a
port's old rules on the switch are gone long before a new path gets it.
"""

from __future__ import annotations

import redis

from qasm.flow import FlowKey
from qasm.functions.nat import NatSettings
from qasm.state.redis_layout import parse_path

# KEYS: range, free. ARGV: "first+ports", first, ports. Fills the free list once per prefix.
_INIT = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX') then
  for port = tonumber(ARGV[2]), tonumber(ARGV[2]) + tonumber(ARGV[3]) - 1 do
    redis.call('RPUSH', KEYS[2], port)
  end
  return ARGV[1]
end
return redis.call('GET', KEYS[1])
"""

# KEYS: free, port_of, path_of, exhausted. ARGV: path. The port, or false if none is free.
_ALLOCATE = """
local port = redis.call('HGET', KEYS[2], ARGV[1])
if port then return port end
port = redis.call('LPOP', KEYS[1])
if not port then
  redis.call('INCR', KEYS[4])
  return false
end
redis.call('HSET', KEYS[2], ARGV[1], port)
redis.call('HSET', KEYS[3], port, ARGV[1])
return port
"""

# KEYS: free, port_of, path_of. ARGV: path. The port given back, or false.
_RELEASE = """
local port = redis.call('HGET', KEYS[2], ARGV[1])
if not port then return false end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], port)
redis.call('RPUSH', KEYS[1], port)
return port
"""


class SharedNatPool:
    """`NatPool` with its ports in Redis; replicas of a hop share it by sharing `prefix`."""

    def __init__(self, client: redis.Redis, prefix: str, settings: NatSettings) -> None:
        self.settings = settings
        base = f"{prefix}:nat:{settings.public_ip}"
        self._range, self._free = f"{base}:range", f"{base}:free"
        self._port_of, self._path_of = f"{base}:port_of", f"{base}:path_of"
        self._exhausted = f"{base}:exhausted"
        self._client = client
        self._allocate = client.register_script(_ALLOCATE)
        self._release = client.register_script(_RELEASE)
        wanted = f"{settings.first_port}+{settings.ports}"
        # One round trip: the scripts loaded (EVALSHA never falls back to sending their
        # text on a hot path), and the pool filled if this replica is the first.
        pipeline = client.pipeline(transaction=False)
        pipeline.script_load(_ALLOCATE)
        pipeline.script_load(_RELEASE)
        pipeline.eval(
            _INIT, 2, self._range, self._free, wanted, settings.first_port, settings.ports
        )
        *_, pool = pipeline.execute()
        self.round_trips = 1
        if pool != wanted:
            raise ValueError(f"NAT pool {base}: ports {pool} in Redis, this replica has {wanted}")

    @property
    def in_use(self) -> int:
        self.round_trips += 1
        return self._client.hlen(self._port_of)

    @property
    def exhausted(self) -> int:
        """Allocations refused for lack of a free port, by every replica."""
        self.round_trips += 1
        return int(self._client.get(self._exhausted) or 0)

    def allocate(self, path: FlowKey) -> int | None:
        """The public port of `path` (a stable mapping), or None when the pool is empty."""
        self.round_trips += 1
        keys = [self._free, self._port_of, self._path_of, self._exhausted]
        port = self._allocate(keys=keys, args=[str(path)], client=self._client)
        return None if port is None else int(port)

    def release(self, path: FlowKey) -> int | None:
        self.round_trips += 1
        keys = [self._free, self._port_of, self._path_of]
        port = self._release(keys=keys, args=[str(path)], client=self._client)
        return None if port is None else int(port)

    def path_of(self, public_port: int) -> FlowKey | None:
        self.round_trips += 1
        token = self._client.hget(self._path_of, str(public_port))
        return None if token is None else parse_path(token)

    def public_flow(self, path: FlowKey) -> FlowKey | None:
        """The client→service flow as the service sees it after translation."""
        self.round_trips += 1
        port = self._client.hget(self._port_of, str(path))
        if port is None:
            return None
        return FlowKey(self.settings.public_ip, int(port), path.dst_ip, path.dst_port)
