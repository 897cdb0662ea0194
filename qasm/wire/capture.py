"""Summaries of every QUIC packet in a capture, with the state an observer accumulates.

`CaptureSummarizer` is sans-I/O: feed it datagrams with their addresses and times, it returns
one description per packet (the keys of `qasm.wire.summary`, plus `time`, `src`, `dst`). It
remembers what a real on-path observer learns from the handshake:
- the DCID that keys each connection's Initials, to decrypt the server's Initials and check
  Retries (RFC 9312 §3.4.1: "the Initial secret [must be] retained by the observer");
- the CID length each endpoint chose (the SCID of its long headers), to read the DCID of
  short headers sent to it (RFC 9312 §2.1);
- partial ClientHellos spread over several Initials.
A packet that fails to parse or decrypt yields a description with an `error` key instead of
ending the summary: a capture holds whatever was on the wire.

`read_udp_datagrams` is the I/O half: scapy reads pcap/pcapng and yields UDP payloads.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from qasm.wire.clienthello import ClientHelloAssembler
from qasm.wire.errors import WireError
from qasm.wire.header import HeaderForm, PacketType, parse_datagram
from qasm.wire.initial import Sender, open_initial
from qasm.wire.summary import (
    DEFAULT_SHORT_DCID_LENGTH,
    describe_header,
    describe_initial,
    describe_retry,
)

Endpoint = tuple[str, int]
# Bounds on what a summary of a hostile capture may remember (oldest entries go first).
MAX_TRACKED_CONNECTIONS = 10_000


@dataclass(frozen=True, slots=True)
class UdpDatagram:
    time: float
    src: Endpoint
    dst: Endpoint
    payload: bytes


def _endpoint_text(endpoint: Endpoint) -> str:
    host, port = endpoint
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class CaptureSummarizer:
    def __init__(self, default_short_dcid_length: int = DEFAULT_SHORT_DCID_LENGTH) -> None:
        self.default_short_dcid_length = default_short_dcid_length
        self._cid_length_towards: dict[Endpoint, int] = {}
        self._initial_key_dcid: dict[tuple[Endpoint, Endpoint], bytes] = {}
        self._assemblers: dict[tuple[Endpoint, Endpoint, bytes], ClientHelloAssembler] = {}

    def summarize(
        self, payload: bytes, *, src: Endpoint, dst: Endpoint, time: float
    ) -> list[dict[str, Any]]:
        where = {"time": time, "src": _endpoint_text(src), "dst": _endpoint_text(dst)}
        dcid_length = self._cid_length_towards.get(dst, self.default_short_dcid_length)
        try:
            headers = parse_datagram(payload, dcid_length)
        except WireError as exc:
            return [{**where, "error": str(exc)}]
        described = []
        for header in headers:
            description = {**where, **describe_header(header)}
            if header.form is HeaderForm.LONG and header.packet_type not in (
                None,
                PacketType.VERSION_NEGOTIATION,
            ):
                _remember(self._cid_length_towards, src, len(header.scid))
            try:
                if header.packet_type is PacketType.INITIAL:
                    description.update(self._initial(payload, header, src, dst))
                elif header.packet_type is PacketType.RETRY:
                    # The Retry answers the client Initial on the reverse path.
                    original = self._initial_key_dcid.get((dst, src))
                    description.update(describe_retry(payload, header, original))
            except WireError as exc:
                description["decrypted"] = False
                description["error"] = str(exc)
            described.append(description)
        return described

    def _initial(self, payload, header, src: Endpoint, dst: Endpoint) -> dict[str, Any]:
        # Both directions' Initials use keys from the client's first DCID (RFC 9001 §5.2),
        # recorded under (client, server) when a client Initial carried it.
        known = self._initial_key_dcid.get((src, dst)) or self._initial_key_dcid.get((dst, src))
        decrypted = open_initial(payload, header, original_dcid=known)
        assembler = None
        if decrypted.sender is Sender.CLIENT:
            if decrypted.key_dcid == header.dcid:  # a first Initial, or the one after Retry
                _remember(self._initial_key_dcid, (src, dst), header.dcid)
            key = (src, dst, decrypted.key_dcid)
            assembler = self._assemblers.get(key)
            if assembler is None:
                assembler = _remember(self._assemblers, key, ClientHelloAssembler())
        return describe_initial(decrypted, assembler)


def _remember(table: dict, key, value):
    table.pop(key, None)
    table[key] = value
    while len(table) > MAX_TRACKED_CONNECTIONS:
        del table[next(iter(table))]
    return value


def read_udp_datagrams(path: str) -> Iterator[UdpDatagram]:
    """UDP payloads of a pcap or pcapng file, in capture order (IPv4 and IPv6).

    Raises OSError for an unreadable file and WireError for one that is not a capture.
    """
    # scapy is imported here: it takes about a second to load and only this command needs it.
    from scapy.error import Scapy_Exception
    from scapy.layers.inet import IP, UDP
    from scapy.layers.inet6 import IPv6
    from scapy.utils import PcapReader

    try:
        reader = PcapReader(path)
    except Scapy_Exception as exc:
        raise WireError(
            f"{path} is not a pcap or pcapng capture ({exc})", field="capture"
        ) from None
    with reader:
        for packet in reader:
            if UDP not in packet:
                continue
            if IP in packet:
                network = packet[IP]
            elif IPv6 in packet:
                network = packet[IPv6]
            else:
                continue
            if network.name == "IP" and (network.frag or network.flags.MF):
                continue  # a fragment: its UDP payload is incomplete (no reassembly here)
            udp = packet[UDP]
            yield UdpDatagram(
                time=float(packet.time),
                src=(str(network.src), int(udp.sport)),
                dst=(str(network.dst), int(udp.dport)),
                payload=bytes(udp.payload),
            )
