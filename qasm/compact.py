"""Tuples of one item held as the item itself, for state kept per connection.

A middlebox keeps a few tuples per connection (its paths, its server CIDs, its NAT ports)
that almost always hold one item, and a tuple of one costs 48 bytes beside its item: two
of them were a seventh of a connection (make bench: bytes per connection). So such state
holds `compact(items)`: the item itself when there is one, the tuple otherwise (the empty
tuple is shared), and readers `expand` it. An item must never be a plain `tuple` itself
(a `FlowKey`, a named tuple, is fine: its type is not `tuple`).
"""

from __future__ import annotations

from typing import Any


def compact(items: tuple) -> Any:
    return items[0] if len(items) == 1 else items


def expand(held: Any) -> tuple:
    return held if type(held) is tuple else (held,)
