"""A real aioquic handshake on 127.0.0.1, recorded by a tiny UDP relay between the peers.

The relay sits where a middlebox would: it sees every datagram in both directions, with
real datagram boundaries and coalescing, and can add a one-way delay so the RTT observers
have something to measure. The server gets a fresh self-signed certificate each time.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass, field

from aioquic.asyncio import connect, serve
from aioquic.quic.configuration import QuicConfiguration

from testbed.apps.server import self_signed_certificate

SERVER_NAME = "wire-test.qasm.example"
ALPN = "qasm-wire/1"
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class RecordedDatagram:
    time: float
    from_client: bool
    src: tuple[str, int]
    dst: tuple[str, int]
    payload: bytes


@dataclass
class HandshakeCapture:
    datagrams: list[RecordedDatagram] = field(default_factory=list)
    one_way_delay: float = 0.0

    def from_client(self) -> list[RecordedDatagram]:
        return [d for d in self.datagrams if d.from_client]

    def from_server(self) -> list[RecordedDatagram]:
        return [d for d in self.datagrams if not d.from_client]


class _Relay(asyncio.DatagramProtocol):
    """Forwards client<->server, recording each datagram as it arrives (the tap point)."""

    def __init__(self, server: tuple[str, int], capture: HandshakeCapture) -> None:
        self.server = server
        self.capture = capture
        self.client: tuple[str, int] | None = None
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        addr = (addr[0], addr[1])
        from_client = addr != self.server
        if from_client:
            self.client = addr
        if self.client is None:
            return
        src, dst = (self.client, self.server) if from_client else (self.server, self.client)
        self.capture.datagrams.append(
            RecordedDatagram(time.monotonic(), from_client, src, dst, bytes(data))
        )
        target = self.server if from_client else self.client
        loop = asyncio.get_running_loop()
        loop.call_later(self.capture.one_way_delay, self._send, data, target)

    def _send(self, data: bytes, target) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(data, target)


async def _run(*, retry: bool, pings: int, one_way_delay: float) -> HandshakeCapture:
    capture = HandshakeCapture(one_way_delay=one_way_delay)
    server_config = QuicConfiguration(is_client=False, alpn_protocols=[ALPN])
    server_config.certificate, server_config.private_key = self_signed_certificate(SERVER_NAME)
    server = await serve(LOOPBACK, 0, configuration=server_config, retry=retry)
    server_address = server._transport.get_extra_info("sockname")[:2]
    loop = asyncio.get_running_loop()
    relay_transport, relay = await loop.create_datagram_endpoint(
        lambda: _Relay(server_address, capture), local_addr=(LOOPBACK, 0)
    )
    relay_port = relay_transport.get_extra_info("sockname")[1]
    client_config = QuicConfiguration(
        is_client=True,
        alpn_protocols=[ALPN],
        server_name=SERVER_NAME,
        verify_mode=ssl.CERT_NONE,
    )
    try:
        async with asyncio.timeout(20):
            async with connect(LOOPBACK, relay_port, configuration=client_config) as client:
                for _ in range(pings):
                    await client.ping()
    finally:
        relay_transport.close()
        server.close()
    return capture


def capture_handshake(
    *, retry: bool = False, pings: int = 0, one_way_delay: float = 0.0
) -> HandshakeCapture:
    """Run one client-server exchange through the relay and return what it saw."""
    return asyncio.run(_run(retry=retry, pings=pings, one_way_delay=one_way_delay))


def write_pcap(capture: HandshakeCapture, path) -> None:
    """Write the recorded datagrams as Ethernet/IPv4/UDP frames, with their times."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw
    from scapy.utils import wrpcap

    frames = []
    start = time.time()
    base = capture.datagrams[0].time if capture.datagrams else 0.0
    for datagram in capture.datagrams:
        frame = (
            Ether()
            / IP(src=datagram.src[0], dst=datagram.dst[0])
            / UDP(sport=datagram.src[1], dport=datagram.dst[1])
            / Raw(load=datagram.payload)
        )
        frame.time = start + (datagram.time - base)
        frames.append(frame)
    wrpcap(str(path), frames)
