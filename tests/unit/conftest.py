from __future__ import annotations

import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from scapy.layers.inet import ICMP, IP, UDP
from scapy.layers.l2 import ARP, Ether

CLIENT_MAC, SERVER_MAC = "02:00:00:00:00:01", "02:00:00:00:00:fa"
CLIENT_IP, SERVER_IP = "10.0.0.1", "10.0.0.250"


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
