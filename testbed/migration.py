"""The three ways a testbed client moves its connection (names fixed in DESIGN.md).

Everything that depends on the kind reads it from here: whether the client switches to a new
connection ID, and which of its addresses it moves to (`topologies.roles.ClientRole` says
where each is on a given topology).
"""

from __future__ import annotations

import enum
import random


class MigrationKind(enum.StrEnum):
    # A new source port on the same interface and address; the same CID (a NAT rebinding).
    NAT_REBIND = "nat-rebind"
    # The wifi interface's second address; the same CID (a NAT rebinding to a new address).
    ADDR_REBIND = "addr-rebind"
    # Another interface and address, and a fresh CID the observer cannot link (RFC 9000 §9.5).
    ACTIVE = "active"

    @property
    def new_cid(self) -> bool:
        return self is MigrationKind.ACTIVE


MIGRATION_KINDS = tuple(kind.value for kind in MigrationKind)


def trigger(
    at_bytes: int | None, at_seconds: float | None, spread: float, index: int, seed: int
) -> tuple[str, float]:
    """("at_bytes" | "at_seconds", value) of connection `index` (1-based over the run): the
    scenario's trigger plus a seeded uniform draw from [0, spread], its own reproducible
    schedule. The runner (for records) and the client (to act on it) both call this."""
    offset = random.Random(f"{seed}:{index}").uniform(0, spread) if spread else 0
    if at_bytes is not None:
        return "at_bytes", at_bytes + int(offset)
    return "at_seconds", at_seconds + offset
