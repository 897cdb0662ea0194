"""QUIC wire image, sans-I/O: bytes in, frozen dataclasses out, one error type (WireError).

Entry points by cost, cheapest first:
- `short_header_dcid(datagram, dcid_length)` / `datagram_dcid(...)`: the connection key of a
  packet-in, no parsing beyond the DCID.
- `parse_datagram(datagram, short_dcid_length)`: every coalesced packet's cleartext header.
- `decrypt_initial(...)` / `open_initial(...)` and a caller-owned `ClientHelloAssembler` per
  connection attempt: SNI and ALPN from the client's Initials.
- `verify_retry_integrity(...)`; `HandshakeRttObserver`, `SpinBitRttEstimator` (RFC 9312 §3.8);
  `encode_cid` / `decode_cid` with a `QuicLbConfig` (QUIC-LB).
- With an endpoint's key log (`parse_key_log`): a `OneRttObserver` per connection and
  direction opens 1-RTT packets (frames with fields: `parse_frame_list`);
  `check_migration` judges a captured migration as quic-interop-runner does.
No module here opens a socket, reads a clock or imports the controller.
"""

from qasm.wire.clienthello import (
    ClientHelloAssembler,
    ClientHelloInfo,
    CryptoStreamReassembly,
    parse_client_hello,
)
from qasm.wire.errors import WireError
from qasm.wire.frames import CryptoFrame, PayloadFrames, parse_frame_list, parse_frames
from qasm.wire.header import (
    QUIC_V1,
    QUIC_V2,
    HeaderForm,
    PacketHeader,
    PacketType,
    datagram_dcid,
    parse_datagram,
    short_header_dcid,
)
from qasm.wire.initial import DecryptedInitial, Sender, decrypt_initial, open_initial
from qasm.wire.keylog import ConnectionSecrets, KeyLog, parse_key_log
from qasm.wire.migration_checks import (
    ConnectionDatagram,
    MigrationVerdicts,
    Verdict,
    check_migration,
    datagrams_from_pcaps,
)
from qasm.wire.onertt import (
    CipherSuite,
    HelloObserver,
    OneRttObserver,
    OneRttPacket,
    PacketProtection,
)
from qasm.wire.quic_lb import DecodedCid, QuicLbConfig, decode_cid, encode_cid
from qasm.wire.retry import verify_retry_integrity
from qasm.wire.rtt import HandshakeRttObserver, SpinBitRttEstimator, SpinSample

__all__ = [
    "QUIC_V1",
    "QUIC_V2",
    "CipherSuite",
    "ClientHelloAssembler",
    "ClientHelloInfo",
    "ConnectionDatagram",
    "ConnectionSecrets",
    "CryptoFrame",
    "CryptoStreamReassembly",
    "DecodedCid",
    "DecryptedInitial",
    "HandshakeRttObserver",
    "HeaderForm",
    "HelloObserver",
    "KeyLog",
    "MigrationVerdicts",
    "OneRttObserver",
    "OneRttPacket",
    "PacketHeader",
    "PacketProtection",
    "PacketType",
    "PayloadFrames",
    "QuicLbConfig",
    "Sender",
    "SpinBitRttEstimator",
    "SpinSample",
    "Verdict",
    "WireError",
    "check_migration",
    "datagram_dcid",
    "datagrams_from_pcaps",
    "decode_cid",
    "decrypt_initial",
    "encode_cid",
    "open_initial",
    "parse_client_hello",
    "parse_datagram",
    "parse_frame_list",
    "parse_frames",
    "parse_key_log",
    "short_header_dcid",
    "verify_retry_integrity",
]
