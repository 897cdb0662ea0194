"""Ethernet/IPv4/UDP decoding of packet-in data (sans-I/O).

Only what the middlebox needs: addresses, ports and the UDP payload. Anything shorter than
its header declares raises FrameError naming the layer and field, so the controller can drop
and log it instead of crashing.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from qasm.flow import FlowKey

ETH_TYPE_IPV4 = 0x0800
ETH_TYPE_ARP = 0x0806
IP_PROTO_UDP = 17
_ETH_HEADER = 14
_UDP_HEADER = 8


class FrameError(ValueError):
    """A packet-in frame is malformed; the message names the layer and field."""


@dataclass(frozen=True, slots=True)
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
        return tuple(a for a in (self.ip_src, self.ip_dst) if a)


def _mac(raw: bytes) -> str:
    return raw.hex(":")


def parse_frame(data: bytes) -> Frame:
    if len(data) < _ETH_HEADER:
        raise FrameError(f"ethernet: {len(data)} bytes, expected at least {_ETH_HEADER}")
    eth_dst, eth_src = _mac(data[0:6]), _mac(data[6:12])
    (eth_type,) = struct.unpack_from("!H", data, 12)
    if eth_type == ETH_TYPE_ARP:
        # RFC 826 for IPv4 over Ethernet: sender protocol address at 14, target at 24.
        if len(data) < _ETH_HEADER + 28:
            raise FrameError(f"arp: {len(data) - _ETH_HEADER} bytes, expected 28")
        (operation,) = struct.unpack_from("!H", data, 20)
        return Frame(
            eth_src,
            eth_dst,
            eth_type,
            arp_request=operation == 1,
            ip_src=str(ipaddress.IPv4Address(data[28:32])),
            ip_dst=str(ipaddress.IPv4Address(data[38:42])),
        )
    if eth_type != ETH_TYPE_IPV4:
        return Frame(eth_src, eth_dst, eth_type)
    ip = data[_ETH_HEADER:]
    if len(ip) < 20:
        raise FrameError(f"ipv4: {len(ip)} bytes, expected at least 20")
    version, header_len = ip[0] >> 4, (ip[0] & 0x0F) * 4
    if version != 4 or header_len < 20:
        raise FrameError(
            f"ipv4: version {version} header length {header_len}, expected 4 and >= 20"
        )
    (total_len,) = struct.unpack_from("!H", ip, 2)
    if total_len < header_len or total_len > len(ip):
        raise FrameError(f"ipv4: total length {total_len} outside [{header_len}, {len(ip)}]")
    (fragment,) = struct.unpack_from("!H", ip, 6)
    proto = ip[9]
    src, dst = str(ipaddress.IPv4Address(ip[12:16])), str(ipaddress.IPv4Address(ip[16:20]))
    frame = Frame(eth_src, eth_dst, eth_type, ip_src=src, ip_dst=dst, ip_proto=proto)
    if proto != IP_PROTO_UDP or fragment & 0x1FFF:
        return frame  # not UDP, or a later fragment that carries no UDP header
    udp = ip[header_len:total_len]
    if len(udp) < _UDP_HEADER:
        raise FrameError(f"udp: {len(udp)} bytes, expected at least {_UDP_HEADER}")
    src_port, dst_port, udp_len = struct.unpack_from("!HHH", udp, 0)
    if udp_len < _UDP_HEADER or udp_len > len(udp):
        raise FrameError(f"udp: length field {udp_len} outside [{_UDP_HEADER}, {len(udp)}]")
    return Frame(
        eth_src,
        eth_dst,
        eth_type,
        ip_src=src,
        ip_dst=dst,
        ip_proto=proto,
        flow=FlowKey(src, src_port, dst, dst_port),
        udp_payload=bytes(udp[_UDP_HEADER:udp_len]),
    )


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
        + ipaddress.IPv4Address(sender_ip).packed
        + _mac_bytes(target_mac)
        + ipaddress.IPv4Address(target_ip).packed
    )


def build_udp_frame(
    eth_src: str, eth_dst: str, flow: FlowKey, payload: bytes, ttl: int = 64
) -> bytes:
    """Ethernet/IPv4/UDP frame; the UDP checksum is 0 (optional over IPv4, RFC 768)."""
    udp = struct.pack("!HHHH", flow.src_port, flow.dst_port, _UDP_HEADER + len(payload), 0)
    total = 20 + len(udp) + len(payload)
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, total, 0, 0x4000, ttl, IP_PROTO_UDP, 0,
        ipaddress.IPv4Address(flow.src_ip).packed, ipaddress.IPv4Address(flow.dst_ip).packed,
    )  # fmt: skip
    header = header[:10] + struct.pack("!H", _ipv4_checksum(header)) + header[12:]
    ethernet = _mac_bytes(eth_dst) + _mac_bytes(eth_src) + struct.pack("!H", ETH_TYPE_IPV4)
    return ethernet + header + udp + payload
