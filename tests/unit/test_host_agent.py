"""The host Client Agent's core (qasm/agents/host.py) against a real aioquic connection in
memory: it learns the server's CIDs from the 1-RTT packets it opens with the key log, holds
the first datagram of a new path, announces old path → new path with that datagram's DCID,
lets it go on the ack (or after its bound), and retires paths the client left."""

from __future__ import annotations

import socket
import struct

from qasm.agents.client import ClientAgent
from qasm.agents.host import HostAgent, Release, Send
from qasm.agents.messages import Ack, Announce, Retire, open_sealed, seal
from qasm.agents.tracking import TrackingAgent
from qasm.wire.migration_checks import ConnectionDatagram
from testbed.apps.host_agent import (
    capture_filter,
    copy_packet_params,
    parse_queued,
    udp_datagram,
)
from testbed.emulation.delayline import NFQA_PACKET_HDR, NFQNL_MSG_PACKET, queue_message
from tests.wire.memory_connection import SERVER_ADDR, MemoryConnection

KEY = b"k" * 32
NEW_ADDR = ("10.0.2.1", 50001)


class Observed(MemoryConnection):
    """The memory connection, every datagram also shown to a host agent's capture."""

    def __init__(self, agent: HostAgent, key_log: bool = True) -> None:
        super().__init__()
        self.agent = agent
        self.key_log = key_log
        self._shown = 0

    def show(self) -> None:
        if self.key_log:
            self.agent.add_key_log(self.keylog.getvalue()[self.agent_key_log_read :])
            self.agent_key_log_read = len(self.keylog.getvalue())
        for datagram in self.datagrams[self._shown :]:
            self.agent.observe(datagram.payload, datagram.src, datagram.dst, datagram.time)
        self._shown = len(self.datagrams)

    agent_key_log_read = 0
    _pings = 0

    def first_flight_on_new_path(self) -> list[bytes]:
        """What the client sends right after moving (not delivered: the agent holds it); a
        PING makes sure a rebinding, which has nothing else to say, sends something."""
        self._pings += 1
        self.client.send_ping(self._pings)
        self.now += 0.001
        return [data for data, _ in self.client.datagrams_to_send(now=self.now)]

    def deliver(self, datagrams: list[bytes]) -> None:
        """Released: on the wire (and in the capture) now."""
        for data in datagrams:
            self.datagrams.append(
                ConnectionDatagram(self.now, self.client_addr, SERVER_ADDR, True, data)
            )
            self.server.receive_datagram(data, self.client_addr, now=self.now)


def _agent(**kwargs) -> HostAgent:
    return HostAgent(ClientAgent("c1", KEY), SERVER_ADDR, **kwargs)


def _tracking() -> TrackingAgent:
    return TrackingAgent(SERVER_ADDR, {"c1": KEY}, {"c1": frozenset({"10.0.1.1", "10.0.2.1"})})


def _connected(agent: HostAgent, key_log: bool = True) -> Observed:
    connection = Observed(agent, key_log)
    connection.handshake()
    connection.send_data(5000)
    connection.show()
    return connection


def _hold_all(agent, datagrams, src, now) -> list:
    actions = []
    for number, data in enumerate(datagrams, start=1):
        actions += agent.hold(number, data, src, SERVER_ADDR, now)
    return actions


def test_an_active_migration_is_announced_with_the_new_dcid_and_held_until_the_ack():
    agent = _agent()
    connection = _connected(agent)
    old_dcid = connection.client._peer_cid.cid
    assert set(connection.client_known_server_cids()) <= set(agent.connections[0].server_cids)
    connection.move_client(NEW_ADDR, active=True)
    new_dcid = connection.client._peer_cid.cid
    flight = connection.first_flight_on_new_path()
    actions = _hold_all(agent, flight, NEW_ADDR, connection.now)
    (send,) = actions  # one announcement, nothing released yet
    assert isinstance(send, Send) and send.source_ip == NEW_ADDR[0]
    announce = open_sealed(send.datagram, KEY)
    assert isinstance(announce, Announce)
    assert announce.connection_cid == old_dcid and announce.next_cid == new_dcid != old_dcid
    assert announce.old == ("10.0.1.1", 50000) and announce.new == NEW_ADDR
    report = _tracking().receive(send.datagram, NEW_ADDR[0], 0.0, None, lambda m, c: None)
    assert report.accepted
    released = agent.reply(report.reply, connection.now + 0.002)
    assert released == [Release(tuple(range(1, len(flight) + 1)))]
    assert [round(ms, 6) for ms in agent.hold_ms] == [2.0]
    connection.deliver(flight)
    connection.exchange()
    connection.show()
    assert agent.connections[0].current == NEW_ADDR


def test_without_the_key_log_a_new_dcid_names_no_connection_and_goes_at_once():
    """The server's spare CIDs travel only inside 1-RTT packets: without the key log the
    agent cannot tell the migrated datagram's connection, and must not hold it."""
    agent = _agent()
    connection = _connected(agent, key_log=False)
    connection.move_client(NEW_ADDR, active=True)
    flight = connection.first_flight_on_new_path()
    actions = agent.hold(1, flight[0], NEW_ADDR, SERVER_ADDR, connection.now)
    assert actions == [Release((1,))]
    assert agent.counters["released_unknown"] == 1


def test_a_rebinding_keeps_its_dcid_and_is_announced_even_without_the_key_log():
    agent = _agent()
    connection = _connected(agent, key_log=False)
    dcid = connection.client._peer_cid.cid
    rebound = ("10.0.1.1", 50002)
    connection.move_client(rebound, active=False)
    (send,) = _hold_all(agent, connection.first_flight_on_new_path(), rebound, connection.now)
    announce = open_sealed(send.datagram, KEY)
    assert announce.connection_cid == announce.next_cid == dcid
    assert announce.old == ("10.0.1.1", 50000) and announce.new == rebound


def test_without_an_ack_the_held_datagrams_go_after_the_bound_and_are_counted():
    agent = _agent(reply_timeout_s=0.2, attempts=3, hold_timeout_s=0.6)
    connection = _connected(agent)
    connection.move_client(NEW_ADDR, active=True)
    start = connection.now
    (send,) = _hold_all(agent, connection.first_flight_on_new_path()[:1], NEW_ADDR, start)
    assert agent.tick(start + 0.1) == []
    assert agent.tick(start + 0.2) == [send]  # the identical datagram again
    assert agent.tick(start + 0.4) == [send]
    assert agent.tick(start + 0.6) == [Release((1,))]
    assert agent.counters["released_unacked"] == 1


def test_queued_datagrams_of_known_paths_and_handshakes_go_at_once():
    agent = _agent()
    fresh = Observed(agent)
    fresh.client.connect(SERVER_ADDR, now=0.0)
    (initial, *_) = [d for d, _ in fresh.client.datagrams_to_send(now=0.0)]
    assert agent.hold(1, initial, fresh.client_addr, SERVER_ADDR, 0.0) == [Release((1,))]
    connection = _connected(agent)
    datagram = connection.first_flight_on_new_path()[0]
    assert agent.hold(2, datagram, connection.client_addr, SERVER_ADDR, 1.0) == [Release((2,))]


def test_the_old_path_is_retired_after_the_client_retires_its_cid_and_a_rebinding_once_quiet():
    agent = _agent(quiet_after_s=1.0, retired_grace_s=0.2)
    tracking = _tracking()
    connection = _connected(agent)
    connection.move_client(NEW_ADDR, active=True)
    flight = connection.first_flight_on_new_path()
    (send,) = _hold_all(agent, flight, NEW_ADDR, connection.now)
    agent.reply(tracking.receive(send.datagram, "10.0.2.1", 0, None, lambda m, c: None).reply, 0)
    connection.deliver(flight)
    connection.exchange()
    connection.show()  # the client's RETIRE_CONNECTION_ID for the old CID is in there
    moved_at = connection.now
    (retire,) = [a for a in agent.tick(moved_at + 0.25) if isinstance(a, Send)]
    message = open_sealed(retire.datagram, KEY)
    assert isinstance(message, Retire) and message.path == ("10.0.1.1", 50000)
    assert agent.log[-1]["why"] == "client retired its CID"
    assert agent.reply(seal(Ack("c1", message.counter, True, "ok"), KEY), moved_at + 0.3) == []
    assert list(agent.connections[0].paths) == [NEW_ADDR]

    quiet = _agent(quiet_after_s=1.0)
    rebinding = _connected(quiet, key_log=False)
    rebound = ("10.0.1.1", 50002)
    rebinding.move_client(rebound, active=False)
    flight = rebinding.first_flight_on_new_path()
    (send,) = _hold_all(quiet, flight, rebound, rebinding.now)
    quiet.reply(seal(Ack("c1", open_sealed(send.datagram, KEY).counter, True, "ok"), KEY), 0)
    last_old = rebinding.now
    assert not [a for a in quiet.tick(last_old + 0.5) if isinstance(a, Send)]
    (retire,) = [a for a in quiet.tick(last_old + 1.0) if isinstance(a, Send)]
    assert open_sealed(retire.datagram, KEY).path == ("10.0.1.1", 50000)


def test_a_second_migration_retires_the_path_before_the_old_one_in_its_announcement():
    agent = _agent(quiet_after_s=60, retired_grace_s=60)
    connection = _connected(agent)
    for address in (NEW_ADDR, ("10.0.1.1", 50003)):
        connection.move_client(address, active=True)
        flight = connection.first_flight_on_new_path()
        (send,) = _hold_all(agent, flight, address, connection.now)
        announce = open_sealed(send.datagram, KEY)
        agent.reply(seal(Ack("c1", announce.counter, True, "ok"), KEY), connection.now)
        connection.deliver(flight)
        connection.exchange()
        connection.show()
    assert announce.old == NEW_ADDR and announce.retire == ("10.0.1.1", 50000)
    assert set(agent.connections[0].paths) == {NEW_ADDR, ("10.0.1.1", 50003)}


def test_key_log_lines_may_arrive_in_pieces():
    agent = _agent()
    connection = Observed(agent, key_log=False)
    connection.handshake()
    connection.show()
    text = connection.keylog.getvalue()
    for piece in (text[:50], text[50:51], text[51:]):
        agent.add_key_log(piece)
    connection.send_data(100)
    connection.show()
    assert agent.connections[0].opened > 0 and agent.connections[0].undecryptable == 0


# --- the I/O's pure parts ------------------------------------------------------------------


def _ip_udp(src, dst, payload: bytes) -> bytes:
    udp = struct.pack("!HHHH", src[1], dst[1], 8 + len(payload), 0) + payload
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
        socket.inet_aton(src[0]), socket.inet_aton(dst[0]),
    )  # fmt: skip
    return header + udp


def _attribute(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def test_a_queued_packet_message_yields_its_id_and_datagram():
    packet = _ip_udp(("10.0.2.1", 50001), SERVER_ADDR, b"\x40quic")
    attributes = _attribute(NFQA_PACKET_HDR, struct.pack("!IHB", 77, 0x0800, 3) + b"\0")
    attributes += _attribute(10, packet)  # NFQA_PAYLOAD (linux/netfilter/nfnetlink_queue.h)
    message = queue_message(NFQNL_MSG_PACKET, 7, attributes, 0)
    assert parse_queued(message, len(message)) == (7, 77, packet)
    assert udp_datagram(packet) == (("10.0.2.1", 50001), SERVER_ADDR, b"\x40quic")
    fragment = bytearray(packet)
    fragment[6] = 0x20  # more fragments
    assert udp_datagram(bytes(fragment)) is None
    assert parse_queued(b"\0" * 8, 8) is None


def test_the_queue_asks_for_payload_copies_and_the_filter_jumps_stay_inside():
    params = copy_packet_params(7, 1024, 1)
    assert struct.pack("!IB", 0xFFFF, 2) in params  # copy range, NFQNL_COPY_PACKET
    program = capture_filter(4433)
    for index, (code, jt, jf, _) in enumerate(program):
        if code & 0x07 == 0x05:  # a jump: both targets are instructions after it
            assert index + 1 + max(jt, jf) < len(program)
    assert program[-2][0] == program[-1][0] == 0x06  # accept, drop


def test_a_capture_lagging_behind_a_migration_does_not_move_the_connection_back():
    agent = _agent()
    connection = _connected(agent)
    connection.move_client(NEW_ADDR, active=True)
    flight = connection.first_flight_on_new_path()
    (send,) = _hold_all(agent, flight, NEW_ADDR, connection.now)
    old_path_datagram = connection.datagrams[-2]  # sent before the move, captured only now
    agent.observe(old_path_datagram.payload, ("10.0.1.1", 50000), SERVER_ADDR, connection.now)
    assert agent.connections[0].current == NEW_ADDR


def test_with_register_each_connection_tells_its_path_and_dcid_once_in_1rtt():
    """For rebinding done in the network, which nobody can announce: the middlebox then
    follows the unchanged DCID of the rebound path."""
    agent = _agent(register=True)
    connection = _connected(agent, key_log=False)  # the DCID is in every short header
    (send,) = agent.tick(connection.now)
    registered = open_sealed(send.datagram, KEY)
    dcid = connection.client._peer_cid.cid
    assert isinstance(registered, Announce) and send.source_ip == "10.0.1.1"
    assert registered.connection_cid == registered.next_cid == dcid
    assert registered.old == registered.new == ("10.0.1.1", 50000)
    report = _tracking().receive(send.datagram, "10.0.1.1", 0.0, None, lambda m, c: None)
    assert agent.reply(report.reply, connection.now) == []  # nothing was held for it
    assert agent.tick(connection.now + 0.01) == []  # once
    assert agent.counters["registered"] == 1
    assert _agent().tick(connection.now) == []  # not without `register`
