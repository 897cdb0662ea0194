"""How the shared connection table is laid out in Redis: key names and hash fields (sans-I/O).

Every key of one table starts with its prefix, so runs and hop sets sharing a Redis server
never see each other's keys:

    {prefix}:conn:{id}         hash: one connection (fields below)
    {prefix}:path:{path}       string: id of the connection holding this client→service 5-tuple
    {prefix}:retired:{path}    string: id of the connection whose client retired it
    {prefix}:cid:{hex}         string: id of the connection holding this server CID
    {prefix}:lru               sorted set: connection ids scored by last_seen (caller's `now`)
    {prefix}:half_open         sorted set: the half-open ones not probed, scored alike
    {prefix}:probed            sorted set: the half-open ones a switch probes, scored alike
                               (both left lazily by those established or probed since)
    {prefix}:ids               counter: connection ids (so meter ids, which are connection
                               ids, are unique across replicas too)
    {prefix}:cid_lengths       set: lengths of the server CIDs seen (short-header parsing)

A `{path}` is `str(FlowKey)` (`10.0.1.1:5000>10.0.0.250:4433`). A connection's hash holds
one field per index entry it owns, named as the index key without the prefix (`path:...`,
`retired:...`, `cid:...`), so a Lua script can delete or refresh every key of a connection
from its hash alone, and the connection's paths and CIDs change in the same atomic step as
the index. Those fields' values are a per-connection sequence number (`_seq`) that keeps the
order the memory table keeps. The rest of a connection is its `owner`, one field per bit of
its `flags` (`established`, ...), and one per function state (`fn:nat`, ...), each the compact
JSON of `qasm.codec.to_json_value`: a replica writes back only the fields it changed, so two
replicas changing different parts of one connection do not undo each other. `last_seen` is
the score in `{prefix}:lru`, not a field; `_touched` is when the keys' TTLs were last
refreshed (caller's `now`).
"""

from __future__ import annotations

import functools
import json
import typing

from qasm.codec import from_json_value, to_json_value
from qasm.flow import FlowKey
from qasm.state.connections import ESTABLISHED, OBSERVING, PROBING, Connection

# Index entries a connection owns; a hash field `{kind}:{token}` is the index key
# `{prefix}:{kind}:{token}`.
PATH, RETIRED, CID = "path", "retired", "cid"
FUNCTION = "fn"
# Connection fields stored one per hash field (id is in the key; last_seen is the LRU score;
# the index-owned ones are `path:`/`retired:`/`cid:` fields).
PLAIN_FIELDS = ("owner",)
# And each bit of `flags` a bool field of its own: two replicas setting different flags of
# one connection do not undo each other, and the scripts read `established` and `probing`.
FLAG_FIELDS = {"observing": OBSERVING, "established": ESTABLISHED, "probing": PROBING}
DATA_FIELDS = (*PLAIN_FIELDS, *FLAG_FIELDS)
SEQUENCE = "_seq"
TOUCHED = "_touched"


class StoreKeys:
    """Key names of one table (one prefix)."""

    def __init__(self, prefix: str) -> None:
        if not prefix or any(c.isspace() for c in prefix):
            raise ValueError(f"Redis key prefix {prefix!r}: expected a non-empty word")
        self.prefix = prefix
        self.lru = f"{prefix}:lru"
        self.ids = f"{prefix}:ids"
        self.cid_lengths = f"{prefix}:cid_lengths"

    def connection(self, connection_id: int | str) -> str:
        return f"{self.prefix}:conn:{connection_id}"

    def index(self, field: str) -> str:
        """The index key a connection's `path:`/`retired:`/`cid:` field stands for."""
        return f"{self.prefix}:{field}"


def path_field(path: FlowKey) -> str:
    return f"{PATH}:{path}"


def retired_field(path: FlowKey) -> str:
    return f"{RETIRED}:{path}"


def cid_field(cid: bytes) -> str:
    return f"{CID}:{cid.hex()}"


def function_field(name: str) -> str:
    return f"{FUNCTION}:{name}"


def parse_path(token: str) -> FlowKey:
    """The inverse of `str(FlowKey)`; the port follows the last colon (so IPv6 works)."""
    source, _, destination = token.partition(">")
    src_ip, _, src_port = source.rpartition(":")
    dst_ip, _, dst_port = destination.rpartition(":")
    return FlowKey(src_ip, int(src_port), dst_ip, int(dst_port))


def encode_json(value: object) -> str:
    return json.dumps(to_json_value(value), separators=(",", ":"))


def data_fields(connection: Connection) -> dict[str, str]:
    """Everything of a connection a caller may change in place, one JSON text per field."""
    fields = {name: encode_json(getattr(connection, name)) for name in PLAIN_FIELDS}
    for name, bit in FLAG_FIELDS.items():
        fields[name] = encode_json(connection.flags & bit != 0)
    for name, state in connection.function_states().items():
        fields[function_field(name)] = encode_json(state)
    return fields


def is_data_field(field: str) -> bool:
    return field in DATA_FIELDS or field.startswith(FUNCTION + ":")


def apply_data_field(
    connection: Connection, field: str, text: str, state_types: dict[str, type]
) -> None:
    """Sets the connection's part that `field` stores to its JSON `text`."""
    value = json.loads(text)
    if field in FLAG_FIELDS:
        bit = FLAG_FIELDS[field]
        if from_json_value(bool, value, f"connection.{field}"):
            connection.flags |= bit
        else:
            connection.flags &= ~bit
        return
    if field in PLAIN_FIELDS:
        hint = _connection_hints()[field]
        setattr(connection, field, from_json_value(hint, value, f"connection.{field}"))
        return
    name = field.partition(":")[2]
    if name not in state_types:
        raise KeyError(f"connection {connection.id}: no state type for function {name!r}")
    where = f"connection.functions.{name}"
    setattr(connection, name, from_json_value(state_types[name], value, where))


def apply_index_fields(connection: Connection, fields: dict[str, str]) -> None:
    """Sets the connection's paths, retired paths and server CIDs from its hash fields, in
    the order they joined."""
    owned: dict[str, list[tuple[int, str]]] = {PATH: [], RETIRED: [], CID: []}
    for field, sequence in fields.items():
        kind, _, token = field.partition(":")
        if kind in owned:
            owned[kind].append((int(sequence), token))
    connection.paths = tuple(parse_path(token) for _, token in sorted(owned[PATH]))
    connection.retired_paths = tuple(parse_path(token) for _, token in sorted(owned[RETIRED]))
    connection.server_cids = tuple(bytes.fromhex(token) for _, token in sorted(owned[CID]))


def connection_from_fields(
    connection_id: int, last_seen: float, fields: dict[str, str], state_types: dict[str, type]
) -> Connection:
    connection = Connection(connection_id, last_seen=last_seen)
    for field, text in fields.items():
        if is_data_field(field):
            apply_data_field(connection, field, text, state_types)
    apply_index_fields(connection, fields)
    return connection


@functools.cache
def _connection_hints() -> dict[str, typing.Any]:
    return typing.get_type_hints(Connection)
