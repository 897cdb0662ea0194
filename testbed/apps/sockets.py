"""Socket options the endpoints need: buffers large enough for emulated delay, classic BPF.

Classic BPF (`attach_classic_bpf`): a program of (code, jump if true, jump if false, k)
instructions, attached with SO_ATTACH_FILTER (a socket's filter, the flooder's capture) or
SO_ATTACH_REUSEPORT_CBPF (which socket of a SO_REUSEPORT group gets a datagram: the
servers' steering by CID).

Buffers:
A datagram held by an egress delay (netem, or the NFQUEUE delay line) still counts against
the sending socket's SO_SNDBUF until it leaves the veth; at 50 Mbit/s and 50 ms that is
~310 KB, above the 208 KiB default, and the sender then stalls on a full buffer that has
nothing to do with the link (measured: testbed/emulation/links.py, `blast`). The receive side needs
the same room for a burst released at once. SO_*BUFFORCE (root, as the apps run in Mininet)
passes net.core.[rw]mem_max; without CAP_NET_ADMIN we fall back to the capped option.
"""

from __future__ import annotations

import ctypes
import socket
import struct

# Linux <asm-generic/socket.h>; Python's socket module does not name them.
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
DEFAULT_BYTES = 4 * 1024 * 1024
SO_ATTACH_FILTER = 26
SO_ATTACH_REUSEPORT_CBPF = 51


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


def attach_classic_bpf(sock, option: int, program: list[tuple[int, int, int, int]]) -> None:
    """Attaches a classic BPF program (struct sock_fprog) with `option`."""
    raw = b"".join(struct.pack("HBBI", *instruction) for instruction in program)
    buffer = ctypes.create_string_buffer(raw)  # the kernel copies it during the call
    fprog = struct.pack("HL", len(program), ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, option, fprog)
