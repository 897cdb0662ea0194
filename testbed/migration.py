"""The three ways a testbed client moves its connection (names fixed in DESIGN.md).

Everything that depends on the kind reads it from here: whether the client switches to a new
connection ID, and which of its addresses it moves to (`topologies.roles.ClientRole` says
where each is on a given topology).
"""

from __future__ import annotations

import enum


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
