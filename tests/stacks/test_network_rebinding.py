"""NAT rebinding done in the network (testbed/apps/rebinding.py), for real: in a private
namespace pair, a client socket that never changes reaches the server from a new port, then
from its second address, and the server's replies still reach it."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest

from testbed.apps.rebinding import forgotten_mapping_guard, rule_handles, snat_rule
from tests.stacks.netns import CLIENT_IPS, SERVER_IP, NamespacePair

pytestmark = pytest.mark.integration
PORT = 4433

ECHO = textwrap.dedent(f"""
    import socket
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("{SERVER_IP}", {PORT}))
    while True:
        data, source = s.recvfrom(100)
        s.sendto(f"{{source[0]}}:{{source[1]}}".encode(), source)
""")
CLIENT = textwrap.dedent(f"""
    import asyncio, json, socket
    from testbed.apps.rebinding import NetworkRebinder

    async def main():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("{CLIENT_IPS[0]}", 0))
        s.settimeout(2)
        rebinder = NetworkRebinder(s.getsockname(), ("{SERVER_IP}", {PORT}))
        seen, public = [], [list(s.getsockname())]
        for move in (None, "{CLIENT_IPS[0]}", "{CLIENT_IPS[1]}"):
            if move:
                public.append(list(await rebinder.rebind(move)))
            s.sendto(b"x", ("{SERVER_IP}", {PORT}))
            seen.append(s.recv(100).decode())
        rebinder.close()
        print(json.dumps({{"seen": seen, "public": public, "socket": list(s.getsockname())}}))

    asyncio.run(main())
""")


# The server keeps sending to whoever spoke last, as a download does: one datagram right away
# and one 0.3 s later (by then the client's NAT has forgotten that mapping).
PUSHING = textwrap.dedent(f"""
    import socket, time
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("{SERVER_IP}", {PORT}))
    while True:
        data, source = s.recvfrom(100)
        s.sendto(f"{{source[0]}}:{{source[1]}}".encode(), source)
        if data == b"x":
            time.sleep(0.3)
            s.sendto(b"late", source)
""")
PULLING = textwrap.dedent(f"""
    import asyncio, json, socket
    from testbed.apps.rebinding import NetworkRebinder

    async def main():
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("{CLIENT_IPS[0]}", 0))
        s.settimeout(2)
        rebinder = NetworkRebinder(s.getsockname(), ("{SERVER_IP}", {PORT}))
        s.sendto(b"x", ("{SERVER_IP}", {PORT}))
        first = s.recv(100).decode()
        public = list(await rebinder.rebind("{CLIENT_IPS[0]}"))
        await asyncio.sleep(0.6)  # the late datagram arrives meanwhile, at the old mapping
        s.sendto(b"y", ("{SERVER_IP}", {PORT}))
        second = s.recv(100).decode()
        late = second == "late"  # delivered: the old mapping's inbound side still worked
        if late:
            second = s.recv(100).decode()
        rebinder.close()
        print(json.dumps({{"first": first, "second": second, "public": public, "late": late}}))

    asyncio.run(main())
""")


def test_the_rule_names_the_connection_and_is_found_again_by_its_handle():
    rule = snat_rule(("10.0.1.1", 50000), ("10.0.0.250", 4433), ("10.0.3.1", 40001))
    assert "ip saddr 10.0.1.1 udp sport 50000 ip daddr 10.0.0.250 udp dport 4433" in rule
    assert 'snat to 10.0.3.1:40001 comment "qasm-10.0.1.1-50000"' in rule
    listing = (
        "  ip saddr 10.0.1.1 udp sport 50000 snat to 10.0.1.1:40001 comment "
        '"qasm-10.0.1.1-50000" # handle 7\n'
        "  ip saddr 10.0.1.2 udp sport 50000 snat to 10.0.1.2:40002 comment "
        '"qasm-10.0.1.2-50000" # handle 8\n'
    )
    assert rule_handles(listing, ("10.0.1.1", 50000)) == [7]
    guard = forgotten_mapping_guard(("10.0.1.1", 50000), ("10.0.0.250", 4433))
    assert "ip saddr 10.0.0.250 udp sport 4433 ip daddr 10.0.1.1 udp dport 50000" in guard
    assert 'notrack comment "qasm-10.0.1.1-50000"' in guard


def test_the_server_sees_new_mappings_while_the_socket_stays(tmp_path, namespaces_allowed):
    with NamespacePair() as pair:
        pair.start(pair.server, [sys.executable, "-c", ECHO], tmp_path / "echo.log")
        pair.run(pair.server, ["sleep", "0.3"], timeout=5)
        result = pair.run(pair.client, [sys.executable, "-c", CLIENT], timeout=30)
        assert result.returncode == 0, result.stderr
        outcome = json.loads(result.stdout)
        seen = [tuple(s.split(":")) for s in outcome["seen"]]
        public = [(ip, str(port)) for ip, port in outcome["public"]]
        assert seen == public  # the server saw exactly the mappings the NAT was given
        assert seen[0][0] == seen[1][0] == CLIENT_IPS[0] and seen[0][1] != seen[1][1]
        assert seen[2][0] == CLIENT_IPS[1]
        assert outcome["socket"] == list(outcome["public"][0])  # the socket never moved


def test_a_download_does_not_undo_the_rebinding(tmp_path, namespaces_allowed):
    """The server sends first after the NAT forgot the old mapping: its datagram still
    arrives, untracked (tracked, it would open an inbound entry and the client's next
    datagram would leave as its reply, not NATed), and the client's next datagram takes the
    new mapping."""
    with NamespacePair() as pair:
        pair.start(pair.server, [sys.executable, "-c", PUSHING], tmp_path / "push.log")
        pair.run(pair.server, ["sleep", "0.3"], timeout=5)
        result = pair.run(pair.client, [sys.executable, "-c", PULLING], timeout=30)
        assert result.returncode == 0, result.stderr
        outcome = json.loads(result.stdout)
        assert outcome["second"] == ":".join(map(str, outcome["public"])), outcome
        assert outcome["first"] != outcome["second"]
        assert outcome["late"]  # in flight to the old mapping, and not lost
