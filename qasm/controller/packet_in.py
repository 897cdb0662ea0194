"""OFPT_PACKET_IN of the usual shape unpacked by hand: in-port, cookie and frame, no objects.

os-ken turns every packet-in into an OFPPacketIn, its match into an OFPMatch, both into an
event, and passes the event through its observers to the handler: together with its
receive loop, ~40 µs of the ~170 µs a packet-in cost the controller (measured: os-ken
benchmark, py-spy and per-section CPU time). A packet-in from OVS, as this controller's rules
cause them, matches on `in_port` alone; that shape is unpacked here with `struct`
(OpenFlow 1.3.5 §7.4.1 ofp_packet_in, §7.2.3 OXM) into the three values the middlebox reads.
Any other match, or anything malformed, is None: the app hands it to os-ken's parser and
handlers unchanged. tests/unit/test_openflow.py compares the values with os-ken's parser's.
"""

from __future__ import annotations

import struct

from os_ken.ofproto import ofproto_v1_3 as ofp

# ofp_header, then buffer_id, total_len, reason, table_id, cookie.
_FIXED = struct.Struct("!" + ofp.OFP_HEADER_PACK_STR[1:] + ofp.OFP_PACKET_IN_PACK_STR[1:])
MATCH_OFFSET = ofp.OFP_PACKET_IN_SIZE - ofp.OFP_MATCH_SIZE
# ofp_match type and length, then one OXM TLV: class, field and hasmask, length, in_port.
_IN_PORT_MATCH = struct.Struct("!HHHBBI")
_IN_PORT_MATCH_LENGTH = 4 + 4 + 4  # unpadded, as ofp_match.length counts it
# The match padded to 8 bytes, then two bytes of padding before the frame.
_DATA_OFFSET = MATCH_OFFSET + 16 + 2
_IN_PORT_OXM = (ofp.OFPXMC_OPENFLOW_BASIC, ofp.OFPXMT_OFB_IN_PORT << 1, 4)


def unpack_packet_in(buf: bytes | bytearray) -> tuple[int, int, bytes] | None:
    """(in_port, cookie, frame) of one whole OpenFlow 1.3 packet-in message matching on
    in_port alone; None for any other message, which os-ken's parser reads."""
    if len(buf) < _DATA_OFFSET:
        return None
    version, msg_type, msg_len, _xid, _buffer_id, total_len, _reason, _table, cookie = (
        _FIXED.unpack_from(buf)
    )
    match_type, match_length, oxm_class, oxm_field, oxm_length, in_port = (
        _IN_PORT_MATCH.unpack_from(buf, MATCH_OFFSET)
    )
    if (
        version != ofp.OFP_VERSION
        or msg_type != ofp.OFPT_PACKET_IN
        or msg_len != len(buf)
        or match_type != ofp.OFPMT_OXM
        or match_length != _IN_PORT_MATCH_LENGTH
        or (oxm_class, oxm_field, oxm_length) != _IN_PORT_OXM
    ):
        return None
    # As os-ken: the frame is what follows the match, cut to total_len (padding after it).
    return in_port, cookie, bytes(buf[_DATA_OFFSET : min(msg_len, _DATA_OFFSET + total_len)])
