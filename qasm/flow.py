"""Flow keys: the UDP 5-tuple that classic middleboxes key their state on."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FlowKey:
    """A UDP 5-tuple (protocol implied), in the direction the packet travelled."""

    src_ip: str
    src_port: int
    dst_ip: str
    dst_port: int

    def reversed(self) -> FlowKey:
        return FlowKey(self.dst_ip, self.dst_port, self.src_ip, self.src_port)

    def __str__(self) -> str:
        return f"{self.src_ip}:{self.src_port}>{self.dst_ip}:{self.dst_port}"
