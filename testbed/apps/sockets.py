"""Socket buffers large enough for emulated delay.

A datagram held by an egress delay (netem, or the NFQUEUE delay line) still counts against
the sending socket's SO_SNDBUF until it leaves the veth; at 50 Mbit/s and 50 ms that is
~310 KB, above the 208 KiB default, and the sender then stalls on a full buffer that has
nothing to do with the link (measured: topologies/links.py, `blast`). The receive side needs
the same room for a burst released at once. SO_*BUFFORCE (root, as the apps run in Mininet)
passes net.core.[rw]mem_max; without CAP_NET_ADMIN we fall back to the capped option.
"""

from __future__ import annotations

import socket

# Linux <asm-generic/socket.h>; Python's socket module does not name them.
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
DEFAULT_BYTES = 4 * 1024 * 1024


def enlarge_buffers(sock, size: int = DEFAULT_BYTES) -> dict[str, int]:
    """Sets send and receive buffers to `size`; returns what the kernel granted (it
    doubles the value for bookkeeping, see socket(7))."""
    for forced, plain in ((SO_SNDBUFFORCE, socket.SO_SNDBUF), (SO_RCVBUFFORCE, socket.SO_RCVBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, forced, size)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, plain, size)
    return {
        "sndbuf": sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF),
        "rcvbuf": sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF),
    }
