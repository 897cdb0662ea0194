"""The client app's link to the Tracking Agent: reports leave in counter order."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from qasm.agents.client import ClientAgent
from qasm.agents.messages import Ack, Announce, Retire, open_sealed, seal
from testbed.apps import client as client_app

KEY = b"k" * 32


class _Transport:
    def __init__(self, sent: list[bytes], channel) -> None:
        self.sent, self.channel = sent, channel

    def sendto(self, datagram: bytes) -> None:
        self.sent.append(datagram)
        report = open_sealed(datagram, KEY)
        ack = seal(Ack(report.client, report.counter, True, "ok"), KEY)
        asyncio.get_running_loop().call_soon(self.channel.datagram_received, ack, None)

    def close(self) -> None:
        pass


def test_a_retirement_whose_socket_came_late_still_leaves_before_the_next_announcement(
    monkeypatch,
):
    """A retirement and the next announcement overlap at a high migration rate: whichever
    report leaves first must carry the lower counter, or the Tracking Agent rejects the other
    as a replay (seen: a retirement rejected, its path's NAT port held to the end)."""
    sent: list[bytes] = []

    async def scenario() -> None:
        retire_socket = asyncio.get_running_loop().create_future()

        async def create_datagram_endpoint(factory, local_addr, remote_addr):
            channel = factory()
            if local_addr[0] == "10.0.1.1" and not retire_socket.done():
                await retire_socket  # the retirement's socket is slow to come
            return _Transport(sent, channel), channel

        loop = asyncio.get_running_loop()
        monkeypatch.setattr(loop, "create_datagram_endpoint", create_datagram_endpoint)
        agent = ClientAgent("c1", KEY)
        link = client_app.AgentLink(agent, ("10.0.0.254", 7400))

        def report(kind: str):
            counter = agent._next_counter()
            return counter, agent._sealed(
                _retire(counter) if kind == "retire" else _announce(counter)
            )

        retirement = asyncio.create_task(
            link.exchange(lambda: report("retire"), "10.0.1.1", "x", "c1", 0.001)
        )
        await asyncio.sleep(0)
        announcement = asyncio.create_task(
            link.exchange(lambda: report("announce"), "10.0.2.1", "y", "c1", 0.001)
        )
        await asyncio.sleep(0.01)
        retire_socket.set_result(None)
        results = await asyncio.gather(retirement, announcement)
        assert all(r["accepted"] for r in results)

    asyncio.run(scenario())
    counters = [open_sealed(d, KEY).counter for d in sent]
    assert counters == sorted(counters) == [1, 2]


def _retire(counter):
    return Retire("c1", counter, b"\x01" * 8, ("10.0.1.1", 5000))


def _announce(counter):
    return Announce("c1", counter, b"\x01" * 8, b"\x02" * 8, ("10.0.1.1", 5000), ("10.0.2.1", 6000))


def test_old_paths_still_in_their_grace_period_are_retired_when_the_connection_ends():
    """A transfer that ends within the grace period of its last migration would leave the
    old path's NAT port held to the middlebox's idle timeout: the client retires it."""

    class _Socket:
        def __init__(self, port: int) -> None:
            self.port, self.closed = port, False

        def get_extra_info(self, name):
            return ("10.0.1.1", self.port)

        def close(self) -> None:
            self.closed = True

    class _Protocol:
        transport = _Socket(1000)
        _quic = object()
        stack = SimpleNamespace(smoothed_rtt_s=lambda quic: 0.001)

    class _Agent:
        def __init__(self) -> None:
            self.retired: list[tuple] = []
            self.pending: list = []
            self.agent = self

        def retire(self, quic, local):
            self.retired.append(local)

        async def exchange(self, report, local_ip, what, name, rtt_s):
            report()
            return {"accepted": True}

    async def scenario() -> tuple[_Agent, client_app.Migrator]:
        agent = _Agent()
        migrator = client_app.Migrator(
            _Protocol(), object(), agent, "c1", ("10.0.0.100", 4433)
        )  # fmt: skip
        for port in (1001, 1002):
            migrator.paths.append(client_app._Path(("10.0.1.1", port), _Socket(port)))
        migrator.paths[1].retired = True  # already retired by an announcement
        migrator.retire_old_paths()
        await asyncio.gather(*agent.pending)
        return agent, migrator

    agent, migrator = asyncio.run(scenario())
    assert agent.retired == [("10.0.1.1", 1000)]  # not the retired one, not the current one
    assert ("10.0.1.1", 1000) not in [p.local for p in migrator.paths]  # its socket closed


def test_an_exchange_waits_longer_on_a_slow_path_and_backs_off():
    """Reports share the path's queues: on a fast path the floor, on one whose RTT is a
    second (1,000 connections on 2 cores) several seconds, doubling as QUIC's PTO does."""
    fast = client_app.reply_timeouts(0.005)
    slow = client_app.reply_timeouts(1.0)
    assert fast[0] == client_app.AGENT_REPLY_TIMEOUT_S
    assert slow[0] == client_app.AGENT_RTT_FACTOR * 1.0
    assert len(slow) == client_app.AGENT_ATTEMPTS
    assert all(b == 2 * a for a, b in zip(slow, slow[1:], strict=False))
    assert client_app.reply_timeouts(None) == fast
