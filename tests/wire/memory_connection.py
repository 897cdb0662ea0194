"""A real aioquic client and server talking in memory, every datagram recorded as a capture
at the client's interfaces would show it: time, direction, 4-tuple, bytes.

The client writes an NSS key log (`QuicConfiguration.secrets_log_file`), so tests can open
the 1-RTT packets with `qasm.wire.onertt` and compare what they find with the endpoints'
own state. Migration is emulated as ../shared/AIOQUIC.md describes it: the client's address
changes (`move_client`), with `change_connection_id()` first for an active migration.
"""

from __future__ import annotations

import io
import ssl

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from qasm.wire.migration_checks import ConnectionDatagram
from testbed.apps.server import self_signed_certificate

ALPN = "qasm-wire/1"
SERVER_ADDR = ("10.0.0.250", 4433)
CLIENT_ADDR = ("10.0.1.1", 50000)


class MemoryConnection:
    def __init__(self, cipher_suites=None, client_cid_length: int = 8) -> None:
        server_config = QuicConfiguration(
            is_client=False, alpn_protocols=[ALPN], cipher_suites=cipher_suites
        )
        server_config.certificate, server_config.private_key = self_signed_certificate()
        self.keylog = io.StringIO()
        self.client = QuicConnection(
            configuration=QuicConfiguration(
                is_client=True,
                alpn_protocols=[ALPN],
                verify_mode=ssl.CERT_NONE,
                secrets_log_file=self.keylog,
                cipher_suites=cipher_suites,
                connection_id_length=client_cid_length,
            )
        )
        self.server = QuicConnection(
            configuration=server_config,
            original_destination_connection_id=self.client._peer_cid.cid,
        )
        self.client_addr = CLIENT_ADDR
        self.now = 0.0
        self.datagrams: list[ConnectionDatagram] = []
        self._stream_id: int | None = None

    # --- driving ---------------------------------------------------------------------------

    def handshake(self) -> None:
        self.client.connect(SERVER_ADDR, now=self.now)
        self.exchange()
        assert self.client._handshake_confirmed

    def exchange(self, rounds: int = 12) -> None:
        """Client and server take turns sending until both are quiet (bounded)."""
        for _ in range(rounds):
            sent = self.client_flight() + self.server_flight()
            if not sent:
                return

    def client_flight(self) -> int:
        self.now += 0.001
        sent = 0
        for data, _ in self.client.datagrams_to_send(now=self.now):
            self.datagrams.append(
                ConnectionDatagram(self.now, self.client_addr, SERVER_ADDR, True, data)
            )
            self.server.receive_datagram(data, self.client_addr, now=self.now)
            sent += 1
        return sent

    def server_flight(self) -> int:
        self.now += 0.001
        sent = 0
        for data, addr in self.server.datagrams_to_send(now=self.now):
            addr = (addr[0], addr[1])
            self.datagrams.append(ConnectionDatagram(self.now, SERVER_ADDR, addr, False, data))
            # The client hears on every address it used (it closes old sockets later).
            self.client.receive_datagram(data, SERVER_ADDR, now=self.now)
            sent += 1
        return sent

    def send_data(self, size: int = 3000) -> None:
        if self._stream_id is None:
            self._stream_id = self.client.get_next_available_stream_id()
        self.client.send_stream_data(self._stream_id, bytes(size))
        self.exchange()

    def move_client(self, addr: tuple[str, int], *, active: bool) -> None:
        """Migrate: an active migration switches to a spare server CID first (aioquic's
        `change_connection_id()`); a rebinding only changes the address."""
        if active:
            assert self.client._peer_cid_available, "no spare CID to migrate to"
            self.client.change_connection_id()
        self.client_addr = addr

    # --- what the endpoints know -----------------------------------------------------------

    def client_known_server_cids(self) -> list[bytes]:
        """Every CID the server issued that the client holds: in use, then spares."""
        return [self.client._peer_cid.cid] + [c.cid for c in self.client._peer_cid_available]

    def client_issued_cids(self) -> list[bytes]:
        return [c.cid for c in self.client._host_cids]

    # --- as captured -----------------------------------------------------------------------

    def write_client_pcaps(self, directory, interface_of: dict[str, str]) -> list:
        """One pcap per client interface (`interface_of`: client address → name), each with the
        datagrams of the paths from that address, as tcpdump on the client host writes them."""
        from scapy.layers.inet import IP, UDP
        from scapy.layers.l2 import Ether
        from scapy.packet import Raw
        from scapy.utils import wrpcap

        frames: dict[str, list] = {name: [] for name in interface_of.values()}
        for datagram in self.datagrams:
            client = datagram.src if datagram.from_client else datagram.dst
            frame = (
                Ether()
                / IP(src=datagram.src[0], dst=datagram.dst[0])
                / UDP(sport=datagram.src[1], dport=datagram.dst[1])
                / Raw(load=datagram.payload)
            )
            frame.time = 1_700_000_000 + datagram.time
            frames[interface_of[client[0]]].append(frame)
        paths = []
        for name, captured in frames.items():
            paths.append(directory / f"{name}.pcap")
            wrpcap(str(paths[-1]), captured)
        return paths
