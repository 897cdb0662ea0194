"""NAT rebinding done in the network: a NAT on the client's own host changes a connection's
mapping mid-connection, and the client (any stack) never knows.

In the client host's network namespace, table `ip qasm_rebind` has a postrouting chain of
SNAT rules, one per rebound connection: its socket's address and port towards the server are
translated to the current public address and port. A rebinding replaces the connection's
rule, then deletes the flow's conntrack entry: NAT is decided on an entry's first packet, so
the next datagram opens a new entry with the new mapping, and the server's replies to it are
translated back to the unchanged socket. What the server sends to the socket's own port (the
first mapping) is not tracked (a rule in the raw hook): without it, in a download the
server's next datagram after the entry went would open an entry of its own, in the inbound
direction, and the client's datagrams would then leave as that entry's replies, never NATed;
dropping those datagrams instead deadlocks a download whose client had just sent its last
ACK (seen: ngtcp2 fetching from qh3). So the datagrams in flight to the old mapping still
arrive, as at a NAT that keeps an old mapping's inbound side until it times out, and the
client's next datagram takes the new mapping. Datagrams to an earlier public port find no
entry and no socket and are dropped. Each public port is reserved by a bound socket of our
own while in use, so no other socket on the host takes it.

The commands are pure (`snat_rule`, `delete_rule`, `forget_flow`); `NetworkRebinder` runs
them (asyncio subprocesses, so a transfer on the same loop is not blocked).
"""

from __future__ import annotations

import asyncio
import re
import socket

TABLE = "qasm_rebind"
CHAIN = "postrouting"
# Where the server's datagrams to the socket's own port are kept out of conntrack: the raw
# hook, before conntrack (-200).
GUARD_CHAIN = "raw"
SETUP = (
    f"add table ip {TABLE}\n"
    f"add chain ip {TABLE} {CHAIN} {{ type nat hook postrouting priority srcnat; }}\n"
    f"add chain ip {TABLE} {GUARD_CHAIN} {{ type filter hook prerouting priority raw; }}\n"
)


class RebindError(RuntimeError):
    """The host's NAT could not be changed; the message says which command and why."""


def _comment(socket_address: tuple[str, int]) -> str:
    return f"qasm-{socket_address[0]}-{socket_address[1]}"


def snat_rule(
    socket_address: tuple[str, int], server: tuple[str, int], public: tuple[str, int]
) -> str:
    """`nft -f -` input: the connection's datagrams leave from `public`."""
    (ip, port), (server_ip, server_port) = socket_address, server
    return (
        f"add rule ip {TABLE} {CHAIN} ip saddr {ip} udp sport {port} ip daddr {server_ip} "
        f"udp dport {server_port} snat to {public[0]}:{public[1]} "
        f'comment "{_comment(socket_address)}"\n'
    )


def forgotten_mapping_guard(socket_address: tuple[str, int], server: tuple[str, int]) -> str:
    """`nft -f -` input: the server's datagrams to the socket's own address and port (the
    mapping the first rebinding forgets) are delivered without conntrack, so they never open
    an entry the client's datagrams would then leave by."""
    (ip, port), (server_ip, server_port) = socket_address, server
    return (
        f"add rule ip {TABLE} {GUARD_CHAIN} ip saddr {server_ip} udp sport {server_port} "
        f"ip daddr {ip} udp dport {port} notrack "
        f'comment "{_comment(socket_address)}"\n'
    )


def rule_handles(listing: str, socket_address: tuple[str, int]) -> list[int]:
    """The handles of the connection's rules in `nft -a list chain` output."""
    comment = re.escape(f'comment "{_comment(socket_address)}"')
    return [int(h) for h in re.findall(rf"{comment} # handle (\d+)", listing)]


def delete_rule(handle: int) -> list[str]:
    return ["nft", "delete", "rule", "ip", TABLE, CHAIN, "handle", str(handle)]


def forget_flow(socket_address: tuple[str, int], server: tuple[str, int]) -> list[str]:
    return [
        "conntrack", "-D", "-p", "udp", "--orig-src", socket_address[0],
        "--sport", str(socket_address[1]), "--orig-dst", server[0],
        "--dport", str(server[1]),
    ]  # fmt: skip


async def _run(argv: list[str], stdin: str | None = None, check: bool = True) -> str:
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate(stdin.encode() if stdin else None)
    if check and process.returncode != 0:
        raise RebindError(f"{' '.join(argv)}: {err.decode(errors='replace').strip()[:200]}")
    return out.decode(errors="replace")


class NetworkRebinder:
    """Rebinds one connection (its socket towards the server) in the host's NAT."""

    def __init__(self, socket_address: tuple[str, int], server: tuple[str, int]) -> None:
        self.socket_address = socket_address
        self.server = server
        self._reserved: list[socket.socket] = []

    async def rebind(self, public_ip: str) -> tuple[str, int]:
        """Moves the connection's mapping to a fresh port on `public_ip`; returns it."""
        reservation = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        reservation.bind((public_ip, 0))
        public = reservation.getsockname()[:2]
        listing = await _run(["nft", "-a", "list", "chain", "ip", TABLE, CHAIN], check=False)
        if TABLE not in listing:
            await _run(["nft", "-f", "-"], SETUP)
        if not self._reserved:  # the first rebinding: the socket's own mapping is forgotten
            await _run(
                ["nft", "-f", "-"], forgotten_mapping_guard(self.socket_address, self.server)
            )
        await _run(["nft", "-f", "-"], snat_rule(self.socket_address, self.server, public))
        for handle in rule_handles(listing, self.socket_address):  # the previous mapping
            await _run(delete_rule(handle))
        # Absent if no datagram went since the last change: nothing to forget.
        await _run(forget_flow(self.socket_address, self.server), check=False)
        for earlier in self._reserved:
            earlier.close()
        self._reserved = [reservation]
        return public

    def close(self) -> None:
        for reservation in self._reserved:
            reservation.close()
        self._reserved = []
