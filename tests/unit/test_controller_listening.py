"""`_listening`: the runner points the switches at a controller only once its OpenFlow port
listens (OVS backs off for seconds after a refused attempt)."""

import socket

from testbed.emulation.network import _listening


def test_a_listening_port_is_seen_and_a_closed_or_merely_bound_one_is_not():
    with socket.socket() as bound, socket.socket() as listener:
        bound.bind(("127.0.0.1", 0))
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        assert not _listening(port)
        listener.listen()
        assert _listening(port)
        assert not _listening(bound.getsockname()[1])
    assert not _listening(port)
