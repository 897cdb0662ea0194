"""Server processes sharing a port: every short-header packet reaches the process whose
server ID its DCID carries, whatever 4-tuple it comes from (tested on loopback)."""

from __future__ import annotations

import os
import select
import socket

import pytest

from testbed.apps.server import reuse_port_socket


@pytest.fixture
def group():
    first = reuse_port_socket("127.0.0.1", 0)
    port = first.getsockname()[1]
    sockets = [first, reuse_port_socket("127.0.0.1", port), reuse_port_socket("127.0.0.1", port)]
    for sock in sockets:
        sock.settimeout(1.0)
    yield port, sockets
    for sock in sockets:
        sock.close()


def _receiver(sockets, payload: bytes) -> int:
    readable, _, _ = select.select(sockets, [], [], 1.0)
    assert len(readable) == 1, "exactly one process gets each datagram"
    assert readable[0].recv(2048) == payload
    return sockets.index(readable[0])


def test_a_short_header_goes_to_the_process_its_dcid_names_from_any_4_tuple(group):
    port, sockets = group
    for server_id in (0, 1, 2, 1, 0, 2):
        # A new source port per datagram: a migrating client's new 4-tuples.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            dcid = bytes([0x07, server_id]) + os.urandom(6)  # QUIC-LB: first octet, server ID
            payload = bytes([0x40]) + dcid + os.urandom(30)
            client.sendto(payload, ("127.0.0.1", port))
            assert _receiver(sockets, payload) == server_id


def test_a_long_header_goes_by_its_4_tuple(group):
    """A client Initial's DCID is the client's choice: the handshake stays on the process
    the 4-tuple hashes to (one per 4-tuple, spread over the processes)."""
    port, sockets = group
    spread = set()
    for _ in range(30):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            seen = set()
            for _ in range(3):
                payload = bytes([0xC0]) + b"\x00\x00\x00\x01\x08" + bytes([7, 2]) + os.urandom(40)
                client.sendto(payload, ("127.0.0.1", port))
                seen.add(_receiver(sockets, payload))
            assert len(seen) == 1
            spread |= seen
    assert len(spread) > 1
