"""Ethernet/IPv4/UDP decoding of packet-in data (sans-I/O).

Only what the middlebox needs: addresses, ports and the UDP payload. Anything shorter than
its header declares raises FrameError naming the layer and field, so the controller can drop
and log it instead of crashing.
"""

from __future__ import annotations

import socket
import struct
import sys
from dataclasses import dataclass

from qasm.flow import PORT_NUMBERS, FlowKey

ETH_TYPE_IPV4 = 0x0800
ETH_TYPE_ARP = 0x0806
IP_PROTO_UDP = 17
_ETH_HEADER = 14
_UDP_HEADER = 8
_ETH_TYPE = struct.Struct("!H")
_IPV4_LENGTHS = struct.Struct("!HxxH")  # total length, then flags and fragment offset
_UDP_HEADER_FIELDS = struct.Struct("!HHH")


class FrameError(ValueError):
    """A packet-in frame is malformed; the message names the layer and field."""


# Not frozen, as it is parsed once per packet-in (see qasm/controller/messages.py).
@dataclass(slots=True)
class Frame:
    eth_src: str
    eth_dst: str
    eth_type: int
    arp_request: bool = False
    ip_src: str | None = None
    ip_dst: str | None = None
    ip_proto: int | None = None
    flow: FlowKey | None = None  # set for UDP (first fragment only)
    udp_payload: bytes = b""

    def addresses(self) -> tuple[str, ...]:
        if self.ip_src and self.ip_dst:
            return (self.ip_src, self.ip_dst)  # every IPv4 packet: no generator per packet-in
        return tuple(a for a in (self.ip_src, self.ip_dst) if a)


def parse_frame(data: bytes) -> Frame:
    # Offsets into `data` (no copies of the packet but the UDP payload), addresses through
    # inet_ntoa and interned: a controller keeps millions of 5-tuples naming the same hosts.
    if len(data) < _ETH_HEADER:
        raise FrameError(f"ethernet: {len(data)} bytes, expected at least {_ETH_HEADER}")
    eth_dst, eth_src = data[0:6].hex(":"), data[6:12].hex(":")
    (eth_type,) = _ETH_TYPE.unpack_from(data, 12)
    if eth_type == ETH_TYPE_ARP:
        # RFC 826 for IPv4 over Ethernet: sender protocol address at 14, target at 24.
        if len(data) < _ETH_HEADER + 28:
            raise FrameError(f"arp: {len(data) - _ETH_HEADER} bytes, expected 28")
        (operation,) = _ETH_TYPE.unpack_from(data, 20)
        return Frame(
            eth_src,
            eth_dst,
            eth_type,
            arp_request=operation == 1,
            ip_src=_address(data, 28),
            ip_dst=_address(data, 38),
        )
    if eth_type != ETH_TYPE_IPV4:
        return Frame(eth_src, eth_dst, eth_type)
    ip_length = len(data) - _ETH_HEADER
    if ip_length < 20:
        raise FrameError(f"ipv4: {ip_length} bytes, expected at least 20")
    first = data[_ETH_HEADER]
    version, header_len = first >> 4, (first & 0x0F) * 4
    if version != 4 or header_len < 20:
        raise FrameError(
            f"ipv4: version {version} header length {header_len}, expected 4 and >= 20"
        )
    total_len, fragment = _IPV4_LENGTHS.unpack_from(data, _ETH_HEADER + 2)
    if total_len < header_len or total_len > ip_length:
        raise FrameError(f"ipv4: total length {total_len} outside [{header_len}, {ip_length}]")
    proto = data[_ETH_HEADER + 9]
    src, dst = _address(data, _ETH_HEADER + 12), _address(data, _ETH_HEADER + 16)
    if proto != IP_PROTO_UDP or fragment & 0x1FFF:
        # Not UDP, or a later fragment that carries no UDP header.
        return Frame(eth_src, eth_dst, eth_type, ip_src=src, ip_dst=dst, ip_proto=proto)
    udp = _ETH_HEADER + header_len
    udp_available = total_len - header_len
    if udp_available < _UDP_HEADER:
        raise FrameError(f"udp: {udp_available} bytes, expected at least {_UDP_HEADER}")
    src_port, dst_port, udp_len = _UDP_HEADER_FIELDS.unpack_from(data, udp)
    if udp_len < _UDP_HEADER or udp_len > udp_available:
        raise FrameError(f"udp: length field {udp_len} outside [{_UDP_HEADER}, {udp_available}]")
    return Frame(
        eth_src,
        eth_dst,
        eth_type,
        ip_src=src,
        ip_dst=dst,
        ip_proto=proto,
        flow=FlowKey(src, PORT_NUMBERS[src_port], dst, PORT_NUMBERS[dst_port]),
        udp_payload=data[udp + _UDP_HEADER : udp + udp_len],
    )


def _address(data: bytes, offset: int) -> str:
    return sys.intern(socket.inet_ntoa(data[offset : offset + 4]))


def _ipv4_checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def _mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def build_arp_reply(sender_mac: str, sender_ip: str, target_mac: str, target_ip: str) -> bytes:
    """An ARP reply (RFC 826) saying `sender_ip` is at `sender_mac`."""
    return (
        _mac_bytes(target_mac)
        + _mac_bytes(sender_mac)
        + struct.pack("!HHHBBH", ETH_TYPE_ARP, 1, ETH_TYPE_IPV4, 6, 4, 2)
        + _mac_bytes(sender_mac)
        + socket.inet_aton(sender_ip)
        + _mac_bytes(target_mac)
        + socket.inet_aton(target_ip)
    )


def build_udp_frame(
    eth_src: str, eth_dst: str, flow: FlowKey, payload: bytes, ttl: int = 64
) -> bytes:
    """Ethernet/IPv4/UDP frame; the UDP checksum is 0 (optional over IPv4, RFC 768)."""
    udp = struct.pack("!HHHH", flow.src_port, flow.dst_port, _UDP_HEADER + len(payload), 0)
    total = 20 + len(udp) + len(payload)
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, total, 0, 0x4000, ttl, IP_PROTO_UDP, 0,
        socket.inet_aton(flow.src_ip), socket.inet_aton(flow.dst_ip),
    )  # fmt: skip
    header = header[:10] + struct.pack("!H", _ipv4_checksum(header)) + header[12:]
    ethernet = _mac_bytes(eth_dst) + _mac_bytes(eth_src) + struct.pack("!H", ETH_TYPE_IPV4)
    return ethernet + header + udp + payload
