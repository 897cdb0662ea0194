"""The one exception type of the wire library.

Every malformed input (truncated packets, lying length fields, bad varints, wrong keys,
unparseable TLS) ends in `WireError`, so a caller on the packet-in path needs exactly one
`except` clause. It subclasses `ValueError` because a malformed packet is a bad value.
"""

from __future__ import annotations


class WireError(ValueError):
    """Malformed or undecodable wire input.

    `field` names what was being read (e.g. "token length"), `offset` is the byte offset
    in the input where reading failed (None when it does not apply, e.g. a wrong key).
    """

    def __init__(self, message: str, *, field: str | None = None, offset: int | None = None):
        location = f" at offset {offset}" if offset is not None else ""
        subject = f"{field}: " if field else ""
        super().__init__(f"{subject}{message}{location}")
        self.field = field
        self.offset = offset
