"""The hand-packed OpenFlow 1.3 encoder matches os-ken's serialiser byte for byte, and the
hand-unpacked packet-in os-ken's parser field for field."""

from __future__ import annotations

import struct
from types import SimpleNamespace

import pytest
from os_ken.ofproto import ofproto_v1_3, ofproto_v1_3_parser

from qasm.controller.messages import (
    PORT_CONTROLLER,
    PORT_FLOOD,
    ClearFlows,
    FlowRule,
    Match,
    MeterRule,
    PacketOut,
    RemoveFlow,
    RemoveMeter,
)
from qasm.controller.openflow import encode
from qasm.controller.packet_in import unpack_packet_in
from qasm.flow import FlowKey

DATAPATH = SimpleNamespace(ofproto=ofproto_v1_3, ofproto_parser=ofproto_v1_3_parser)
PATH = FlowKey("10.0.1.1", 50000, "10.0.0.250", 4433)
NAT = (("ipv4_src", "10.0.100.1"), ("udp_src", 20001), ("eth_src", "02:00:00:00:00:fd"))

MESSAGES = [
    ClearFlows(),
    FlowRule(0, Match(), PORT_CONTROLLER),
    FlowRule(100, Match(ipv4_dst="10.0.0.250"), PORT_CONTROLLER),
    FlowRule(100, Match(ipv4_src="10.0.0.250"), PORT_CONTROLLER),
    FlowRule(10, Match(eth_dst="02:00:00:00:04:00"), 3),
    FlowRule(150, Match(eth_dst="02:00:00:00:00:01", ipv4_src="10.0.4.1"), 2,
             set_fields=(("ipv4_src", "10.0.0.100"), ("eth_src", "02:00:00:00:00:fa"))),
    FlowRule(200, Match(flow=PATH), 1, 120, meter_id=7, set_fields=NAT),
    FlowRule(200, Match(flow=PATH.reversed()), 2, 120, copy_to_controller=True,
             set_fields=(("ipv4_dst", "10.0.1.1"), ("udp_dst", 50000), ("eth_dst", "02:00:00:00:00:01"))),
    FlowRule(200, Match(flow=PATH), None),
    # A half-open probe: hard timeout, reported when it goes, its connection as cookie.
    FlowRule(201, Match(flow=PATH.reversed()), 2, hard_timeout_s=2, notify_removed=True,
             tag=0x1234_5678_9ABC, set_fields=(("ipv4_dst", "10.0.1.1"),)),
    RemoveFlow(200, Match(flow=PATH)),
    MeterRule(7, 8000, 800),
    RemoveMeter(7),
    PacketOut(2, 1, b"\x01" * 64),
    PacketOut(PORT_CONTROLLER, 3, b"\x02" * 42, NAT),
    PacketOut(2, PORT_FLOOD, b"\x03" * 60),
]  # fmt: skip


@pytest.mark.parametrize("message", MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_is_packed_as_os_ken_packs_it(message):
    expected = b""
    for built in _to_openflow(DATAPATH, message):
        built.set_xid(9)
        built.serialize()
        expected += bytes(built.buf)
    assert encode(message, xid=9) == expected


# The oracle: the same messages built with os-ken's object model, as the controller did before.
def _to_openflow(datapath, message) -> list:
    ofp, parser = datapath.ofproto, datapath.ofproto_parser
    if isinstance(message, ClearFlows):
        return [
            parser.OFPFlowMod(
                datapath,
                command=ofp.OFPFC_DELETE,
                table_id=ofp.OFPTT_ALL,
                out_port=ofp.OFPP_ANY,
                out_group=ofp.OFPG_ANY,
                match=parser.OFPMatch(),
            ),
            parser.OFPMeterMod(datapath, command=ofp.OFPMC_DELETE, meter_id=ofp.OFPM_ALL),
        ]
    if isinstance(message, MeterRule):
        band = parser.OFPMeterBandDrop(rate=message.rate_kbps, burst_size=message.burst_kbit)
        return [
            parser.OFPMeterMod(
                datapath,
                command=ofp.OFPMC_ADD,
                flags=ofp.OFPMF_KBPS | ofp.OFPMF_BURST,
                meter_id=message.meter_id,
                bands=[band],
            )
        ]
    if isinstance(message, RemoveMeter):
        return [parser.OFPMeterMod(datapath, command=ofp.OFPMC_DELETE, meter_id=message.meter_id)]
    if isinstance(message, RemoveFlow):
        return [
            parser.OFPFlowMod(
                datapath,
                command=ofp.OFPFC_DELETE_STRICT,
                priority=message.priority,
                out_port=ofp.OFPP_ANY,
                out_group=ofp.OFPG_ANY,
                match=parser.OFPMatch(**_match_fields(message.match)),
            )
        ]
    if isinstance(message, PacketOut):
        return [
            parser.OFPPacketOut(
                datapath,
                buffer_id=ofp.OFP_NO_BUFFER,
                in_port=message.in_port,
                actions=[
                    *_set_field_actions(parser, message.set_fields),
                    parser.OFPActionOutput(message.out_port),
                ],
                data=message.data,
            )
        ]
    if isinstance(message, FlowRule):
        to_controller = parser.OFPActionOutput(ofp.OFPP_CONTROLLER, ofp.OFPCML_NO_BUFFER)
        actions = []
        if message.out_port == PORT_CONTROLLER:
            actions = [to_controller]
        elif message.out_port is not None:
            actions = [
                *_set_field_actions(parser, message.set_fields),
                parser.OFPActionOutput(message.out_port),
            ]
            if message.copy_to_controller:
                actions.append(to_controller)
        instructions = [parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, actions)]
        if message.meter_id is not None:
            instructions.insert(0, parser.OFPInstructionMeter(message.meter_id))
        return [
            parser.OFPFlowMod(
                datapath,
                cookie=message.cookie,
                priority=message.priority,
                match=parser.OFPMatch(**_match_fields(message.match)),
                idle_timeout=message.idle_timeout_s,
                hard_timeout=message.hard_timeout_s,
                flags=ofp.OFPFF_SEND_FLOW_REM if message.notify_removed else 0,
                instructions=instructions,
            )
        ]
    raise TypeError(f"no OpenFlow translation for {message!r}")


def _set_field_actions(parser, set_fields) -> list:
    return [parser.OFPActionSetField(**{name: value}) for name, value in set_fields]


def _match_fields(match: Match) -> dict:
    fields: dict = {}
    if match.eth_dst:
        fields["eth_dst"] = match.eth_dst
    if match.flow:
        flow = match.flow
        fields.update(
            eth_type=0x0800,
            ip_proto=17,
            ipv4_src=flow.src_ip,
            ipv4_dst=flow.dst_ip,
            udp_src=flow.src_port,
            udp_dst=flow.dst_port,
        )
    elif match.ipv4_src or match.ipv4_dst:
        fields["eth_type"] = 0x0800
        if match.ipv4_src:
            fields["ipv4_src"] = match.ipv4_src
        if match.ipv4_dst:
            fields["ipv4_dst"] = match.ipv4_dst
    return fields


# --- packet-in, unpacked ------------------------------------------------------------------


def _packet_in(oxms: bytes, frame: bytes, cookie: int = 0, total_len: int | None = None) -> bytes:
    """OFPT_PACKET_IN (OpenFlow 1.3.5 §7.4.1) with these OXM TLVs as its match."""
    match = struct.pack("!HH", ofproto_v1_3.OFPMT_OXM, 4 + len(oxms)) + oxms
    match += bytes(-len(match) % 8)
    total_len = len(frame) if total_len is None else total_len
    body = struct.pack("!IHBBQ", ofproto_v1_3.OFP_NO_BUFFER, total_len, 1, 0, cookie)
    body += match + bytes(2) + frame
    return struct.pack("!BBHI", 4, ofproto_v1_3.OFPT_PACKET_IN, 8 + len(body), 77) + body


IN_PORT = struct.pack("!II", ofproto_v1_3.OXM_OF_IN_PORT, 7)
METADATA = struct.pack("!IQ", ofproto_v1_3.OXM_OF_METADATA, 0x1234)
TUNNEL_ID = struct.pack("!IQ", ofproto_v1_3.OXM_OF_TUNNEL_ID, 99)
FRAME = bytes(range(60))

PACKET_INS = {
    "in_port": _packet_in(IN_PORT, FRAME),
    "cookie": _packet_in(IN_PORT, FRAME, cookie=0x0B5E),
    "padded frame": _packet_in(IN_PORT, FRAME + bytes(4), total_len=len(FRAME)),
    "in_port, metadata": _packet_in(IN_PORT + METADATA, FRAME),
    "in_port, tunnel id": _packet_in(IN_PORT + TUNNEL_ID, FRAME),
    "metadata only": _packet_in(METADATA, FRAME),
    "empty frame": _packet_in(IN_PORT, b""),
}


# The shapes the controller unpacks itself; the others are os-ken's to parse.
UNPACKED = {"in_port", "cookie", "padded frame", "empty frame"}


@pytest.mark.parametrize("name", list(PACKET_INS))
def test_a_packet_in_is_unpacked_as_os_ken_unpacks_it(name):
    buf = bytearray(PACKET_INS[name])
    theirs = ofproto_v1_3_parser.OFPPacketIn.parser(
        DATAPATH, 4, ofproto_v1_3.OFPT_PACKET_IN, len(buf), 77, buf
    )
    ours = unpack_packet_in(buf)
    if name in UNPACKED:
        assert ours == (theirs.match["in_port"], theirs.cookie, bytes(theirs.data))
        assert type(ours[2]) is bytes  # the frame outlives the receive buffer
    else:
        assert ours is None


@pytest.mark.parametrize(
    "change",
    [
        (0, b"\x05"),  # another OpenFlow version
        (1, bytes([ofproto_v1_3.OFPT_FLOW_REMOVED])),  # another message
        (2, b"\xff\xff"),  # a length that is not the message's
    ],
    ids=["version", "type", "length"],
)
def test_a_message_that_is_not_a_whole_1_3_packet_in_is_left_to_os_ken(change):
    offset, replacement = change
    buf = bytearray(PACKET_INS["in_port"])
    buf[offset : offset + len(replacement)] = replacement
    assert unpack_packet_in(buf) is None
