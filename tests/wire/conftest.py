from __future__ import annotations

import pytest

from tests.wire.handshake_capture import HandshakeCapture, capture_handshake

# One-way delay the relay adds in each direction: the observers should measure an RTT of
# about twice this (plus endpoint delays) from the captured packets.
ONE_WAY_DELAY = 0.015


@pytest.fixture(scope="session")
def handshake() -> HandshakeCapture:
    """A real aioquic handshake plus a few PING round trips, recorded on loopback."""
    return capture_handshake(pings=8, one_way_delay=ONE_WAY_DELAY)


@pytest.fixture(scope="session")
def retry_handshake() -> HandshakeCapture:
    """A real aioquic handshake where the server first answers with a Retry."""
    return capture_handshake(retry=True)
