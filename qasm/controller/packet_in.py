"""OFPT_PACKET_IN unpacked by hand into os-ken's own OFPPacketIn, for the match switches send.

os-ken parses every packet-in's match through its generic OXM machinery, which builds an
OFPMatch from keyword arguments: 13-20 µs of the ~200 µs a packet-in costs the controller
(measured: os-ken benchmark, py-spy). A packet-in from OVS, as this controller's rules cause
them, matches on `in_port` alone; that shape is unpacked here with `struct` (OpenFlow 1.3.5
§7.4.1 ofp_packet_in, §7.2.3 OXM) into the same OFPPacketIn os-ken would build. Any other
match, or anything malformed, goes to os-ken's parser unchanged. The app installs it in
os-ken's table of message parsers; tests/unit/test_openflow.py compares both parsers.
"""

from __future__ import annotations

import struct

from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto.ofproto_v1_3_parser import OFPMatch, OFPPacketIn

# buffer_id, total_len, reason, table_id, cookie; then ofp_match at MATCH_OFFSET.
_FIXED = struct.Struct(ofp.OFP_PACKET_IN_PACK_STR)
MATCH_OFFSET = ofp.OFP_PACKET_IN_SIZE - ofp.OFP_MATCH_SIZE
# ofp_match type and length, then one OXM TLV: class, field and hasmask, length, in_port.
_IN_PORT_MATCH = struct.Struct("!HHHBBI")
_IN_PORT_MATCH_LENGTH = 4 + 4 + 4  # unpadded, as ofp_match.length counts it
# The match padded to 8 bytes, then two bytes of padding before the frame.
_DATA_OFFSET = MATCH_OFFSET + 16 + 2
_IN_PORT_OXM = (ofp.OFPXMC_OPENFLOW_BASIC, ofp.OFPXMT_OFB_IN_PORT << 1, 4)

osken_parser = OFPPacketIn.parser


def parse_packet_in(datapath, version, msg_type, msg_len, xid, buf) -> OFPPacketIn:
    if len(buf) < _DATA_OFFSET:
        return osken_parser(datapath, version, msg_type, msg_len, xid, buf)
    match_type, match_length, oxm_class, oxm_field, oxm_length, in_port = (
        _IN_PORT_MATCH.unpack_from(buf, MATCH_OFFSET)
    )
    if (
        match_type != ofp.OFPMT_OXM
        or match_length != _IN_PORT_MATCH_LENGTH
        or (oxm_class, oxm_field, oxm_length) != _IN_PORT_OXM
    ):
        return osken_parser(datapath, version, msg_type, msg_len, xid, buf)
    buffer_id, total_len, reason, table_id, cookie = _FIXED.unpack_from(buf, ofp.OFP_HEADER_SIZE)
    data = buf[_DATA_OFFSET:]
    if total_len < len(data):
        data = data[:total_len]  # as os-ken: padding after the frame
    match = OFPMatch(length=match_length, _ordered_fields=[("in_port", in_port)])
    msg = OFPPacketIn(datapath, buffer_id, total_len, reason, table_id, cookie, match, data)
    msg.set_headers(version, msg_type, msg_len, xid)
    msg.set_buf(buf)
    return msg
