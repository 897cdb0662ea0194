"""The connection table in Redis, shared by middlebox replicas (a `ConnectionStore`).

A replica that a migrated path is hashed onto finds the connection the other replica made:
by the new path's CID, with its paths, NAT ports, meter and backend. Layout (keys, hash
fields) is in `qasm.state.redis_layout`; this module is the I/O.

Atomicity: every operation that reads and then writes shared state is one Lua script, run
with EVALSHA (redis-py `register_script`; all loaded once at construction). Redis runs a
script alone, so a script is a transaction that cannot fail half-way for a lost race, and it
costs one round trip. MULTI/WATCH would take at least two (read, then the conditional
write) and a retry loop under contention, which two replicas racing on one connection's
first packets (exactly the case that matters) would hit. So:
- `put` reads the path's owner and, if none holds it live, creates the connection, takes
  the path and evicts the least recently used connections beyond the bound, in one step:
  two replicas racing on a first packet end with one connection (the loser gets the
  winner's), and the bound holds over all replicas of the prefix;
- `associate_path` / `associate_cid` take an index entry only if no other live connection
  holds it (False otherwise, as the memory table);
- ending a connection (idle, evicted, removed) deletes its hash and every index entry in one
  step, and hands it to exactly one caller (`take_ended`), who gives back its NAT ports and
  meter; a `save` after that is refused, so an ended connection is never brought back;
- connection ids come from one counter, so a rate limiter's meter id (the connection id) is
  unique across replicas without another allocation.
Scripts name keys built from the prefix (index entries listed in the hash), which a
single Redis server allows and Redis Cluster would not: the store needs one server.

Two clocks: `now` is the caller's (one clock for all replicas of a prefix: CLOCK_MONOTONIC on
one host, as the controller's `time.monotonic()`), and it alone decides idleness: the LRU
sorted set is scored by `now`, lookups end a connection idle past the timeout, `expire(now)`
sweeps the rest. Redis's own clock only drives TTLs, a garbage-collection backstop at
GC_TTL_FACTOR times the idle timeout for a prefix whose every replica died: that long, so
the sweep always ends a connection (and returns it, to give back its resources) before
Redis would drop it unseen. A lookup refreshes the TTLs of all of a connection's keys at
most once per TTL_REFRESH_INTERVAL_S of `now`, inside the lookup's own script: no extra
round trip, and a bounded amount of Redis work for busy connections.

Objects: within one table instance a connection id maps to one `Connection` object, so
`is` works as with the memory table (the Tracking Agent compares connections so). A lookup
brings it up to date field by field: a field another replica changed is taken unless this
replica changed it too and has not saved it yet (then the local value wins at the next
`save`). Paths, retired paths and CIDs always come from Redis: only the scripts change them.

`round_trips` counts commands and pipelines sent, to report Redis round trips per new
connection and per migration.
"""

from __future__ import annotations

import math
import urllib.parse
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from qasm.flow import FlowKey
from qasm.state.connections import (
    DEFAULT_IDLE_TIMEOUT_S,
    DEFAULT_MAX_CONNECTIONS,
    ESTABLISHED,
    EXPIRED,
    HALF_OPEN,
    Connection,
    TableBounds,
)
from qasm.state.redis_layout import (
    CID,
    PATH,
    StoreKeys,
    apply_data_field,
    apply_index_fields,
    cid_field,
    connection_from_fields,
    data_fields,
    is_data_field,
    path_field,
    retired_field,
)

CONNECT_TIMEOUT_S = 2.0
# Redis's TTLs collect a dead prefix's connections this many idle timeouts after their last
# refresh; the sweep by the callers' clock ends them long before (see the module doc).
GC_TTL_FACTOR = 2
TTL_REFRESH_INTERVAL_S = 1.0
# expire() sweeps at most this often (of `now`): every packet-in calls it, and a lookup
# ends an idle connection it finds by itself, so a late sweep only delays the give-back.
SWEEP_INTERVAL_S = 1.0
# Connections one sweep ends at most: a script blocks every replica while it runs.
SWEEP_LIMIT = 1000


class StoreUnreachable(ConnectionError):
    """Redis cannot be reached at the store URL (the message names it)."""


def connect_redis(url: str, timeout_s: float = CONNECT_TIMEOUT_S) -> redis.Redis:
    """A client for `redis://host:port/db` or `unix:///path/to.sock`, checked with a PING.

    No automatic retries: the scripts are not idempotent (a retried `put` whose first reply
    was lost would make a second connection, a retried port allocation would leak one)."""
    shown = _without_password(url)
    try:
        client = redis.Redis.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=timeout_s,
            socket_timeout=timeout_s,
            retry=Retry(NoBackoff(), 0),
        )
        client.ping()
    except ValueError as exc:
        raise ValueError(f"Redis URL {shown}: {exc}") from exc
    except (redis.RedisError, OSError) as exc:
        raise StoreUnreachable(f"cannot reach Redis at {shown}: {exc}") from exc
    return client


def _without_password(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


# --- scripts ------------------------------------------------------------------------------
# Every script gets the prefix as ARGV[1]. A connection as a script returns it ("found"):
# {id, last_seen (its LRU score), flat HGETALL of its hash}; why one ended is 'expired',
# 'evicted' or 'half_open', EXPIRED, EVICTED and HALF_OPEN of qasm.state.connections.

_PRELUDE = """
local prefix = ARGV[1]
local lru = prefix .. ':lru'
local half_open = prefix .. ':half_open'
local probed = prefix .. ':probed'
local function connection_key(id) return prefix .. ':conn:' .. id end
local function owns_index(field)
  local kind = string.match(field, '^(%a+):')
  return kind == 'path' or kind == 'retired' or kind == 'cid'
end
-- Deletes a connection's hash, LRU entry and the index entries it still owns.
local function end_connection(id, fields)
  for i = 1, #fields, 2 do
    if owns_index(fields[i]) then
      local key = prefix .. ':' .. fields[i]
      if redis.call('GET', key) == id then redis.call('DEL', key) end
    end
  end
  redis.call('DEL', connection_key(id))
  redis.call('ZREM', lru, id)
  redis.call('ZREM', half_open, id)
  redis.call('ZREM', probed, id)
end
-- A connection, or false when it is gone. Half of one (its hash collected by its TTL, or
-- an LRU entry without hash) is removed: nothing can be given back for it any more.
local function load(id)
  local score = redis.call('ZSCORE', lru, id)
  local fields = redis.call('HGETALL', connection_key(id))
  if not score or #fields == 0 then
    if score or #fields > 0 then end_connection(id, fields) end
    return false
  end
  return {id, score, fields}
end
local function idle(found, now, timeout)
  return tonumber(now) - tonumber(found[2]) > tonumber(timeout)
end
-- last_seen never goes back (a replica may decide on an older packet after a newer one).
local function seen(found, now)
  if tonumber(now) > tonumber(found[2]) then
    redis.call('ZADD', lru, now, found[1])
    redis.call('ZADD', half_open, 'XX', now, found[1])
    redis.call('ZADD', probed, 'XX', now, found[1])
    found[2] = now
  end
end
local function flag(fields, name)
  for i = 1, #fields, 2 do
    if fields[i] == name then return fields[i + 1] == 'true' end
  end
  return false
end
-- Not established, not probed, idle past the half-open timeout.
local function half_open_due(found, now, timeout)
  return not flag(found[3], 'established') and not flag(found[3], 'probing')
    and idle(found, now, timeout)
end
-- The least recently seen connection of a half-open order that still belongs there: an
-- established or ended one leaves it, one probed (or no longer) moves to the other order.
local function first_half_open(order)
  while true do
    local head = redis.call('ZRANGE', order, 0, 0)
    if #head == 0 then return false end
    local found = load(head[1])
    if not found or flag(found[3], 'established') then
      redis.call('ZREM', order, head[1])
    elseif (order == half_open) == flag(found[3], 'probing') then
      redis.call('ZREM', order, head[1])
      redis.call('ZADD', (order == half_open) and probed or half_open, found[2], head[1])
    else
      return found
    end
  end
end
"""

# KEYS[1]: an index key. ARGV: prefix, now, idle timeout, TTL ms, TTL refresh interval,
# half-open timeout.
_LOOKUP = """
local id = redis.call('GET', KEYS[1])
if not id then return false end
local found = load(id)
if not found then return false end
local now = ARGV[2]
if idle(found, now, ARGV[3]) then
  end_connection(id, found[3])
  return {'expired', found}
end
if half_open_due(found, now, ARGV[6]) then
  end_connection(id, found[3])
  return {'half_open', found}
end
seen(found, now)
local fields, touched = found[3], nil
for i = 1, #fields, 2 do
  if fields[i] == '_touched' then touched = tonumber(fields[i + 1]) end
end
if not touched or tonumber(now) - touched >= tonumber(ARGV[5]) then
  for i = 1, #fields, 2 do
    if owns_index(fields[i]) then redis.call('PEXPIRE', prefix .. ':' .. fields[i], ARGV[4]) end
  end
  redis.call('PEXPIRE', connection_key(id), ARGV[4])
  redis.call('HSET', connection_key(id), '_touched', now)
end
return {'live', found}
"""

# KEYS[1]: an index key. ARGV: prefix. No expiry check and no refresh.
_PEEK = """
local id = redis.call('GET', KEYS[1])
if not id then return false end
return load(id)
"""

# KEYS[1]: the path's index key, KEYS[2]: the id counter. ARGV: prefix, now, idle timeout,
# TTL ms, max connections, the path's field, half-open timeout, then the new connection's
# data field/value pairs. At the bound, half-open connections go first (not probed, then
# probed, least recently seen first), then the least recently seen; never the new one.
_PUT = """
local now, ended = ARGV[2], {}
local owner = redis.call('GET', KEYS[1])
local found = owner and load(owner)
if found then
  if not idle(found, now, ARGV[3]) and not half_open_due(found, now, ARGV[7]) then
    seen(found, now)
    return {'existing', found, ended}
  end
  end_connection(owner, found[3])
  table.insert(ended, {idle(found, now, ARGV[3]) and 'expired' or 'half_open', found})
end
local id = tostring(redis.call('INCR', KEYS[2]))
local key = connection_key(id)
redis.call('HSET', key, ARGV[6], '1', '_seq', '1', '_touched', now, unpack(ARGV, 8))
redis.call('PEXPIRE', key, ARGV[4])
redis.call('SET', KEYS[1], id, 'PX', ARGV[4])
redis.call('ZADD', lru, now, id)
local excess = redis.call('ZCARD', lru) - tonumber(ARGV[5])
while excess > 0 do
  local victim = first_half_open(half_open) or first_half_open(probed)
  if not victim then
    for _, other in ipairs(redis.call('ZRANGE', lru, 0, 1)) do
      if other ~= id then
        victim = load(other)  -- (false: half of one, removed by load)
        break
      end
    end
  end
  if victim then
    end_connection(victim[1], victim[3])
    table.insert(ended, {'evicted', victim})
  end
  excess = excess - 1
end
redis.call('ZADD', half_open, now, id)
return {'created', {id, now, {}}, ended}
"""

# KEYS[1]: the index key, KEYS[2]: the CID lengths set. ARGV: prefix, now, id, field, kind
# (path | cid), the most of that kind a connection holds, TTL ms, then for a path its
# retired field, for a CID its length. 1: associated; 0: another connection holds it, or
# the connection holds its maximum; -1: the connection is gone.
_ASSOCIATE = """
local id, field, kind = ARGV[3], ARGV[4], ARGV[5]
local key = connection_key(id)
if redis.call('EXISTS', key) == 0 then return -1 end
local owner = redis.call('GET', KEYS[1])
if owner and owner ~= id and redis.call('EXISTS', connection_key(owner)) == 1 then return 0 end
if redis.call('HEXISTS', key, field) == 0 then
  local held = 0
  for _, name in ipairs(redis.call('HKEYS', key)) do
    if string.sub(name, 1, #kind + 1) == kind .. ':' then held = held + 1 end
  end
  if held >= tonumber(ARGV[6]) then return 0 end
  redis.call('HSET', key, field, redis.call('HINCRBY', key, '_seq', 1))
  redis.call('SET', KEYS[1], id, 'PX', ARGV[7])
  if kind == 'path' then
    -- A retired path the client takes up again is no longer retired.
    if redis.call('HDEL', key, ARGV[8]) == 1 then
      local retired = prefix .. ':' .. ARGV[8]
      if redis.call('GET', retired) == id then redis.call('DEL', retired) end
    end
  else
    redis.call('SADD', KEYS[2], ARGV[8])
  end
end
redis.call('ZADD', lru, 'XX', 'GT', ARGV[2], id)
return 1
"""

# KEYS[1]: the index key. ARGV: prefix, id, field.
_FORGET = """
if redis.call('HDEL', connection_key(ARGV[2]), ARGV[3]) == 1
    and redis.call('GET', KEYS[1]) == ARGV[2] then
  redis.call('DEL', KEYS[1])
end
return 1
"""

# KEYS[1]: the path's index key, KEYS[2]: its retired index key. ARGV: prefix, id, path
# field, retired field, TTL ms.
_RETIRE = """
local key = connection_key(ARGV[2])
if redis.call('HDEL', key, ARGV[3]) == 0 then return 0 end
if redis.call('GET', KEYS[1]) == ARGV[2] then redis.call('DEL', KEYS[1]) end
redis.call('HSET', key, ARGV[4], redis.call('HINCRBY', key, '_seq', 1))
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[5])
return 1
"""

# ARGV: prefix, now, id, then field/value pairs. 0 (nothing written) if the connection ended.
_SAVE = """
local key = connection_key(ARGV[3])
if redis.call('EXISTS', key) == 0 then return 0 end
redis.call('HSET', key, unpack(ARGV, 4))
redis.call('ZADD', lru, 'XX', 'GT', ARGV[2], ARGV[3])
return 1
"""

# ARGV: prefix, id. The connection if it was half-open and is now ended, else false.
_END_HALF_OPEN = """
local found = load(ARGV[2])
if not found or flag(found[3], 'established') then return false end
end_connection(ARGV[2], found[3])
return found
"""

# ARGV: prefix, id.
_REMOVE = """
end_connection(ARGV[2], redis.call('HGETALL', connection_key(ARGV[2])))
return 1
"""

# KEYS[1]: the CID lengths set. ARGV: prefix, now, idle timeout, now - idle timeout, limit,
# half-open timeout. {ended connections, CID lengths, how many were due (the limit: sweep
# again)}.
_SWEEP = """
local ended = {}
local due = redis.call('ZRANGEBYSCORE', lru, '-inf', ARGV[4], 'LIMIT', 0, ARGV[5])
for _, id in ipairs(due) do
  local found = load(id)
  if found and idle(found, ARGV[2], ARGV[3]) then
    end_connection(id, found[3])
    table.insert(ended, {'expired', found})
  end
end
local count = #due
while count < tonumber(ARGV[5]) do
  local found = first_half_open(half_open)
  if not found or not half_open_due(found, ARGV[2], ARGV[6]) then break end
  end_connection(found[1], found[3])
  table.insert(ended, {'half_open', found})
  count = count + 1
end
return {ended, redis.call('SMEMBERS', KEYS[1]), count}
"""


class _Scripts:
    def __init__(self, client: redis.Redis) -> None:
        def register(body: str):
            return client.register_script(_PRELUDE + body)

        self.lookup = register(_LOOKUP)
        self.peek = register(_PEEK)
        self.put = register(_PUT)
        self.associate = register(_ASSOCIATE)
        self.forget = register(_FORGET)
        self.retire = register(_RETIRE)
        self.save = register(_SAVE)
        self.remove = register(_REMOVE)
        self.end_half_open = register(_END_HALF_OPEN)
        self.sweep = register(_SWEEP)
        # Loaded now, in one round trip: a syntax error shows at start, and EVALSHA never
        # falls back to sending the script's text on a hot path.
        pipeline = client.pipeline(transaction=False)
        for script in vars(self).values():
            pipeline.script_load(script.script)
        pipeline.execute()


@dataclass(slots=True)
class _Tracked:
    connection: Connection
    stored: dict[str, str]  # data field → its JSON as last read from or written to Redis


class RedisConnectionTable(TableBounds):
    """The `ConnectionStore` interface over Redis; replicas share a table by sharing
    `prefix`. `state_types` maps function names to their state dataclass (to read them)."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        state_types: Mapping[str, type] | None = None,
        idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_cids_per_connection: int = 16,
        max_paths_per_connection: int = 16,
        sweep_interval_s: float = SWEEP_INTERVAL_S,
        half_open_timeout_s: float | None = None,
    ) -> None:
        super().__init__(
            idle_timeout_s, max_connections, max_cids_per_connection,
            max_paths_per_connection, half_open_timeout_s,
        )  # fmt: skip
        self.state_types = dict(state_types or {})
        self.keys = StoreKeys(prefix)
        self.evicted = 0
        self.expired = 0
        self.half_open_ended = 0
        self.cid_lengths: set[int] = set()  # refreshed from Redis by every sweep
        self.last_put_existing = False
        self.round_trips = 1  # loading the scripts
        self._client = client
        self._scripts = _Scripts(client)
        self._sweep_interval_s = sweep_interval_s
        self._swept_at = -math.inf
        self._ttl_ms = str(
            math.ceil(1000 * (GC_TTL_FACTOR * idle_timeout_s + TTL_REFRESH_INTERVAL_S))
        )
        # One object per connection id (bounded like the table: a connection another
        # replica ended is dropped at the latest when the bound pushes it out).
        self._tracked: OrderedDict[int, _Tracked] = OrderedDict()
        self._ended: list[tuple[Connection, str]] = []

    def _run(self, script, keys: list[str], args: list) -> object:
        self.round_trips += 1
        return script(keys=keys, args=[self.keys.prefix, *args], client=self._client)

    def __len__(self) -> int:
        self.round_trips += 1
        return self._client.zcard(self.keys.lru)

    def connections(self) -> list[Connection]:
        """Every connection, least recently seen first (two round trips, the second
        pipelined: one HGETALL per connection)."""
        members = self._client.zrange(self.keys.lru, 0, -1, withscores=True)
        pipeline = self._client.pipeline(transaction=False)
        for member, _ in members:
            pipeline.hgetall(self.keys.connection(member))
        self.round_trips += 2
        return [
            self._adopt(member, last_seen, fields)
            for (member, last_seen), fields in zip(members, pipeline.execute(), strict=True)
            if fields
        ]

    # --- lookups (a hit refreshes the connection) ---------------------------------------

    def by_path(self, path: FlowKey, now: float) -> Connection | None:
        return self._lookup(self.keys.index(path_field(path)), now)

    def by_cid(self, cid: bytes, now: float) -> Connection | None:
        return self._lookup(self.keys.index(cid_field(cid)), now)

    def retired_by(self, path: FlowKey) -> Connection | None:
        """The connection whose client retired this path (not refreshed, as in memory)."""
        found = self._run(self._scripts.peek, [self.keys.index(retired_field(path))], [])
        return None if found is None else self._adopt(*_found_fields(found))

    def _lookup(self, key: str, now: float) -> Connection | None:
        args = [
            _number(now), _number(self.idle_timeout_s), self._ttl_ms, TTL_REFRESH_INTERVAL_S,
            _number(self.half_open_timeout_s),
        ]  # fmt: skip
        reply = self._run(self._scripts.lookup, [key], args)
        if reply is None:
            return None
        state, found = reply
        if state in (EXPIRED, HALF_OPEN):
            self._end(found, state)
            return None
        return self._adopt(*_found_fields(found))

    # --- updates --------------------------------------------------------------------------

    def put(self, path: FlowKey, now: float) -> Connection:
        """A new connection first seen on `path`, or the connection another replica made for
        it first (racing on the same first packet); the least recently used connections
        beyond the bound are evicted, half-open ones first (see `take_ended`; among
        connections last seen at the same `now`, the lower id as text goes first, never the
        new one)."""
        now = float(now)
        stored = data_fields(Connection(0, last_seen=now))
        args = [
            _number(now), _number(self.idle_timeout_s), self._ttl_ms, self.max_connections,
            path_field(path), _number(self.half_open_timeout_s), *_flatten(stored),
        ]  # fmt: skip
        state, found, ended = self._run(
            self._scripts.put, [self.keys.index(path_field(path)), self.keys.ids], args
        )
        for cause, victim in ended:
            self._end(victim, cause)
        self.last_put_existing = state == "existing"
        if state == "existing":
            return self._adopt(*_found_fields(found))
        connection = Connection(int(found[0]), last_seen=now, paths=(path,))
        self._track(connection, stored)
        return connection

    def associate_path(self, connection: Connection, path: FlowKey, now: float) -> bool:
        """Adds a 5-tuple to the connection; False when the path belongs to another one, the
        connection holds its maximum of paths, or it is no longer in the table."""
        if path not in connection.paths:
            field = path_field(path)
            args = [
                _number(now), connection.id, field, PATH, self.max_paths_per_connection,
                self._ttl_ms, retired_field(path),
            ]  # fmt: skip
            keys = [self.keys.index(field), self.keys.cid_lengths]
            if self._run(self._scripts.associate, keys, args) != 1:
                return False
            connection.paths += (path,)
            connection.retired_paths = _without(connection.retired_paths, path)
        connection.last_seen = now
        return True

    def associate_cid(self, connection: Connection, cid: bytes, now: float) -> bool:
        """Adds a server connection ID; False when another connection holds it, the
        connection holds its maximum of CIDs, or it is no longer in the table."""
        if cid not in connection.server_cids:
            field = cid_field(cid)
            args = [
                _number(now), connection.id, field, CID, self.max_cids_per_connection,
                self._ttl_ms, len(cid),
            ]  # fmt: skip
            keys = [self.keys.index(field), self.keys.cid_lengths]
            if self._run(self._scripts.associate, keys, args) != 1:
                return False
            connection.server_cids += (cid,)
            self.cid_lengths.add(len(cid))
        connection.last_seen = now
        return True

    def forget_path(self, connection: Connection, path: FlowKey) -> None:
        """Undoes `associate_path` (not a retirement: the path was never used)."""
        if path in connection.paths:
            field = path_field(path)
            self._run(self._scripts.forget, [self.keys.index(field)], [connection.id, field])
            connection.paths = _without(connection.paths, path)

    def forget_cid(self, connection: Connection, cid: bytes) -> None:
        """Undoes `associate_cid`."""
        if cid in connection.server_cids:
            field = cid_field(cid)
            self._run(self._scripts.forget, [self.keys.index(field)], [connection.id, field])
            connection.server_cids = _without(connection.server_cids, cid)

    def retire_path(self, connection: Connection, path: FlowKey) -> bool:
        if path not in connection.paths:
            return False
        keys = [self.keys.index(path_field(path)), self.keys.index(retired_field(path))]
        args = [connection.id, path_field(path), retired_field(path), self._ttl_ms]
        if self._run(self._scripts.retire, keys, args) != 1:
            return False  # retired (or ended) by another replica since it was read
        connection.paths = _without(connection.paths, path)
        connection.retired_paths += (path,)
        return True

    def save(self, connection: Connection, now: float) -> bool:
        """Writes back the fields changed since the connection was read or last saved (none
        changed: no round trip), and counts as seeing it at `now`. False when the connection
        ended meanwhile (nothing is written): whatever the caller allocated for it since it
        was read (a NAT port, a meter) is the caller's to give back."""
        tracked = self._tracked.get(connection.id)
        if tracked is not None and tracked.connection is not connection:
            tracked = None  # a stale object: all of it is written (it wins)
        stored = tracked.stored if tracked else {}
        fields = data_fields(connection)
        changed = {field: text for field, text in fields.items() if stored.get(field) != text}
        if not changed:
            return True
        args = [_number(now), connection.id, *_flatten(changed)]
        if self._run(self._scripts.save, [], args) != 1:
            self._tracked.pop(connection.id, None)
            return False
        if tracked:
            stored.update(changed)
        else:
            self._track(connection, fields)
        return True

    def expire(self, now: float) -> None:
        """Ends the connections idle for longer than the timeout (see `take_ended`), at most
        once per sweep interval of `now`."""
        if now - self._swept_at < self._sweep_interval_s:
            return
        cutoff = now - self.idle_timeout_s
        args = [
            _number(now), _number(self.idle_timeout_s), _number(cutoff), SWEEP_LIMIT,
            _number(self.half_open_timeout_s),
        ]  # fmt: skip
        ended, lengths, due = self._run(self._scripts.sweep, [self.keys.cid_lengths], args)
        for cause, found in ended:
            self._end(found, cause)
        self.cid_lengths = {int(length) for length in lengths}
        # A sweep cut at its limit leaves more due: the next call sweeps on.
        self._swept_at = now if due < SWEEP_LIMIT else -math.inf

    def take_ended(self) -> list[tuple[Connection, str]]:
        """Connections this instance ended since the last call (idle: `expired`, also found
        on a lookup; at the bound: `evicted`). Each ended connection is handed to exactly
        one replica, which gives back what it held (NAT ports, meters, rules)."""
        ended, self._ended = self._ended, []
        return ended

    def end_half_open(self, connection: Connection) -> bool:
        """Ends a connection a probe found half-open (see `take_ended`); False when it is no
        longer in the table or was established meanwhile (here or by another replica)."""
        if connection.flags & ESTABLISHED:
            return False
        found = self._run(self._scripts.end_half_open, [], [connection.id])
        if not found:
            return False
        self._end(found, HALF_OPEN)
        return True

    def remove(self, connection: Connection) -> None:
        """Forgets a connection at once (a policy refused it)."""
        self._run(self._scripts.remove, [], [connection.id])
        self._tracked.pop(connection.id, None)

    def is_live(self, connection: Connection) -> bool:
        self.round_trips += 1
        return self._client.exists(self.keys.connection(connection.id)) == 1

    # --- objects ------------------------------------------------------------------------

    def _end(self, found: list, cause: str) -> None:
        connection = self._adopt(*_found_fields(found))
        self._tracked.pop(connection.id, None)
        if cause == EXPIRED:
            self.expired += 1
        elif cause == HALF_OPEN:
            self.half_open_ended += 1
        else:
            self.evicted += 1
        self._ended.append((connection, cause))

    def _track(self, connection: Connection, stored: dict[str, str]) -> None:
        self._tracked[connection.id] = _Tracked(connection, stored)
        self._tracked.move_to_end(connection.id)
        while len(self._tracked) > self.max_connections:
            self._tracked.popitem(last=False)

    def _adopt(self, connection_id: str | int, last_seen: str | float, fields: dict) -> Connection:
        """The one object for this connection, up to date with its stored `fields`."""
        connection_id = int(connection_id)
        remote = {field: text for field, text in fields.items() if is_data_field(field)}
        tracked = self._tracked.get(connection_id)
        if tracked is None:
            connection = connection_from_fields(
                connection_id, float(last_seen), fields, self.state_types
            )
            self._track(connection, remote)
            return connection
        connection = tracked.connection
        local = None  # encoded only if another replica changed something
        for field, text in remote.items():
            if text == tracked.stored.get(field):
                continue
            local = local or data_fields(connection)
            if local.get(field) == tracked.stored.get(field):  # unchanged here since read
                apply_data_field(connection, field, text, self.state_types)
            tracked.stored[field] = text
        apply_index_fields(connection, fields)
        connection.last_seen = float(last_seen)
        self._tracked.move_to_end(connection_id)
        return connection


def _found_fields(found: list) -> tuple[str, str, dict[str, str]]:
    """A script's {id, last_seen, flat HGETALL} as (id, last_seen, fields)."""
    connection_id, last_seen, flat = found
    return connection_id, last_seen, dict(zip(flat[::2], flat[1::2], strict=True))


def _number(value: float) -> str:
    # repr: the shortest text that reads back as the same double, in Python and in Redis.
    return repr(float(value))


def _flatten(fields: dict[str, str]) -> list[str]:
    return [item for pair in fields.items() for item in pair]


def _without(items: tuple, item) -> tuple:
    return tuple(x for x in items if x != item)
