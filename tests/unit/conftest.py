from __future__ import annotations

import ssl
import textwrap
from pathlib import Path

import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import ARP, Ether

from testbed.scenario import Scenario, ScenarioError, load_scenario

CLIENT_MAC, SERVER_MAC = "02:00:00:00:00:01", "02:00:00:00:00:fa"
CLIENT_IP, SERVER_IP = "10.0.0.1", "10.0.0.250"


def write_scenario(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scenario.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def load_scenario_text(tmp_path: Path, text: str) -> Scenario:
    return load_scenario(write_scenario(tmp_path, text))


def scenario_problems(tmp_path: Path, text: str) -> list[str]:
    """What validation reports about a scenario text (it must be refused)."""
    with pytest.raises(ScenarioError) as caught:
        load_scenario_text(tmp_path, text)
    return caught.value.problems


@pytest.fixture(scope="session")
def client_initial() -> bytes:
    """The first datagram of a real aioquic client (a padded v1 Initial)."""
    connection = QuicConnection(
        configuration=QuicConfiguration(is_client=True, alpn_protocols=["qasm-transfer/1"])
    )
    connection.connect((SERVER_IP, 4433), now=0.0)
    (datagram, _), *_ = connection.datagrams_to_send(now=0.0)
    return datagram


def udp_frame(
    payload: bytes,
    sport=50000,
    dport=4433,
    src=CLIENT_IP,
    dst=SERVER_IP,
    eth_src=CLIENT_MAC,
    eth_dst=SERVER_MAC,
) -> bytes:
    return bytes(
        Ether(src=eth_src, dst=eth_dst)
        / IP(src=src, dst=dst)
        / UDP(sport=sport, dport=dport)
        / payload
    )


def arp_frame(eth_src: str, spa: str, tpa: str) -> bytes:
    return bytes(
        Ether(src=eth_src, dst="ff:ff:ff:ff:ff:ff") / ARP(hwsrc=eth_src, psrc=spa, pdst=tpa)
    )


def icmp_frame(src=CLIENT_IP, dst=SERVER_IP) -> bytes:
    return bytes(Ether(src=CLIENT_MAC, dst=SERVER_MAC) / IP(src=src, dst=dst) / ICMP())


class FakeDatagramSocket:
    """What a client's Migrator uses of an asyncio datagram transport."""

    def __init__(self, local: tuple[str, int]) -> None:
        self.local, self.closed = local, False

    def get_extra_info(self, name):
        return self.local

    def close(self) -> None:
        self.closed = True


class QuicPair:
    """A real aioquic client and server talking in memory (aioquic's own test pattern), so
    middlebox tests see genuine Initials, server SCIDs, short headers and spare CIDs."""

    def __init__(self) -> None:
        from testbed.apps.server import self_signed_certificate

        server_config = QuicConfiguration(is_client=False, alpn_protocols=["qasm-transfer/1"])
        server_config.certificate, server_config.private_key = self_signed_certificate()
        self.client = QuicConnection(
            configuration=QuicConfiguration(
                is_client=True, alpn_protocols=["qasm-transfer/1"], verify_mode=ssl.CERT_NONE
            )
        )
        # The server is created from the client's original DCID, as a real server would be.
        self.server = QuicConnection(
            configuration=server_config,
            original_destination_connection_id=self.client._peer_cid.cid,
        )
        self.now = 0.0

    def handshake(self) -> tuple[list[bytes], list[bytes]]:
        """Runs the handshake to confirmation; returns the first client and server flights."""
        self.client.connect((SERVER_IP, 4433), now=self.now)
        first_client = self.client_datagrams()
        self.to_server(first_client)
        first_server = self.server_datagrams()
        self.to_client(first_server)
        for _ in range(4):
            self.to_server(self.client_datagrams())
            self.to_client(self.server_datagrams())
        assert self.client._handshake_confirmed
        return first_client, first_server

    def short_header_datagram(self) -> bytes:
        """One 1-RTT datagram from the client (a PING), with its current DCID."""
        self.client.send_ping(1)
        (datagram,) = self.client_datagrams()
        assert not datagram[0] & 0x80
        return datagram

    def client_datagrams(self) -> list[bytes]:
        self.now += 0.001
        return [d for d, _ in self.client.datagrams_to_send(now=self.now)]

    def server_datagrams(self) -> list[bytes]:
        self.now += 0.001
        return [d for d, _ in self.server.datagrams_to_send(now=self.now)]

    def to_server(self, datagrams: list[bytes], addr=(CLIENT_IP, 50000)) -> None:
        for datagram in datagrams:
            self.server.receive_datagram(datagram, addr, now=self.now)

    def to_client(self, datagrams: list[bytes]) -> None:
        for datagram in datagrams:
            self.client.receive_datagram(datagram, (SERVER_IP, 4433), now=self.now)


@pytest.fixture
def quic_pair() -> QuicPair:
    return QuicPair()
