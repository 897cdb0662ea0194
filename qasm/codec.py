"""Typed values ⇄ JSON values, for state that must leave the process and come back.

Connection state (and each function's part of it) is shared between middlebox replicas and
written to logs, so it is made of plain dataclasses whose fields are JSON-able through this
one codec: `to_json_value(value)` and `from_json_value(type, value)` are exact inverses for
the types used here (None, bool, int, float, str, bytes as hex, enums by value, `FlowKey` as
`[src_ip, src_port, dst_ip, dst_port]`, tuples (of one type, or fixed ones such as
`tuple[FlowKey, int]`), lists, sets, dicts, nested dataclasses (field by field, or by their
own `to_json_value()` and `from_json_value(value, where)` where they define them) and
`X | None`). Anything else is a programming error and raises TypeError naming the type.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import types
import typing
from typing import Any

from qasm.flow import FlowKey


class CodecError(ValueError):
    """A JSON value does not fit the type it is read as; the message names the field."""


# Types written as they are, checked first by exact type: the decision log encodes every
# packet-in's event through here (a chain of isinstance checks per field was a tenth of an
# os-ken packet-in, measured with py-spy).
_AS_IS = frozenset({type(None), bool, int, float, str})


def to_json_value(value: Any) -> Any:
    kind = type(value)
    if kind in _AS_IS:
        return value
    if kind is tuple:
        return [to_json_value(item) for item in value]
    if isinstance(value, FlowKey):
        return [value.src_ip, value.src_port, value.dst_ip, value.dst_port]
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, bytes):
        return value.hex()
    if dataclasses.is_dataclass(value):
        if _own_json(type(value)):
            return value.to_json_value()
        # Plain values kept without a call: most fields of a logged packet-in's event (its
        # record 7.0 -> 4.7 us, measured with timeit).
        return {
            name: item if type(item := getattr(value, name)) in _AS_IS else to_json_value(item)
            for name in _field_names(type(value))
        }
    if isinstance(value, dict):
        # JSON keys are strings: a dict is written as a list of [key, value] pairs, so keys of
        # any type (FlowKey, int) come back as they were.
        return [[to_json_value(k), to_json_value(v)] for k, v in value.items()]
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=repr) if isinstance(value, set | frozenset) else value
        return [to_json_value(item) for item in items]
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def from_json_value(kind: Any, value: Any, where: str = "value") -> Any:
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        real = [option for option in options if option is not type(None)]
        if len(real) != 1:
            raise TypeError(f"{where}: only `X | None` unions are supported, not {kind}")
        return from_json_value(real[0], value, where)
    if kind is Any:
        return value
    if origin in (list, tuple, set, frozenset):
        if not isinstance(value, list):
            raise CodecError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(kind)
        if origin is tuple and args and args[-1] is not Ellipsis:
            # tuple[X, Y]: one item of each type, in order (tuple[X, ...] is any number of X).
            if len(value) != len(args):
                raise CodecError(f"{where}: expected {len(args)} items, got {value!r}")
            pairs = enumerate(zip(args, value, strict=True))
            return tuple(from_json_value(a, v, f"{where}[{i}]") for i, (a, v) in pairs)
        item = args[0] if args else Any
        items = [from_json_value(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return origin(items)
    if origin is dict:
        key_kind, value_kind = typing.get_args(kind)
        if not isinstance(value, list) or not all(
            isinstance(p, list) and len(p) == 2 for p in value
        ):
            raise CodecError(f"{where}: expected a list of [key, value] pairs, got {value!r}")
        return {
            from_json_value(key_kind, k, f"{where} key"): from_json_value(value_kind, v, where)
            for k, v in value
        }
    if kind is FlowKey:
        if not (isinstance(value, list) and len(value) == 4):
            raise CodecError(f"{where}: expected [src_ip, src_port, dst_ip, dst_port]")
        return FlowKey(str(value[0]), int(value[1]), str(value[2]), int(value[3]))
    if kind is bytes:
        try:
            return bytes.fromhex(value)
        except (TypeError, ValueError) as exc:
            raise CodecError(f"{where}: expected hex, got {value!r}") from exc
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        try:
            return kind(value)
        except ValueError as exc:
            raise CodecError(f"{where}: {value!r} is not a {kind.__name__}") from exc
    if dataclasses.is_dataclass(kind):
        if _own_json(kind):
            return kind.from_json_value(value, where)
        if not isinstance(value, dict):
            raise CodecError(f"{where}: expected an object for {kind.__name__}, got {value!r}")
        hints = _hints(kind)
        known = {f.name for f in _fields(kind)}
        unknown = set(value) - known
        if unknown:
            raise CodecError(f"{where}: unknown fields {sorted(unknown)} for {kind.__name__}")
        return kind(
            **{
                name: from_json_value(hints[name], item, f"{where}.{name}")
                for name, item in value.items()
            }
        )
    if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if kind in (bool, int, str) and type(value) is kind:
        return value
    raise CodecError(f"{where}: expected {getattr(kind, '__name__', kind)}, got {value!r}")


@functools.cache
def _hints(kind: type) -> dict[str, Any]:
    return typing.get_type_hints(kind)


@functools.cache
def _field_names(kind: type) -> tuple[str, ...]:
    return tuple(f.name for f in _fields(kind))


@functools.cache
def _own_json(kind: type) -> bool:
    """Whether a dataclass writes and reads its JSON itself: when its fields are not what it
    means (qasm/functions/nat.py: NatState)."""
    return hasattr(kind, "to_json_value") and hasattr(kind, "from_json_value")


@functools.cache
def _fields(kind: type) -> tuple[dataclasses.Field, ...]:
    # Fields that are part of the value: ClassVars are not fields; init=False ones are derived.
    return tuple(f for f in dataclasses.fields(kind) if f.init)
