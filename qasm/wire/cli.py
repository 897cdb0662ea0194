"""`qasm wire ...` and `qasm lb ...`: inspection commands over the wire library.

Output is JSON (one object, or one object per line for `pcap`) so scripts and tests can
read it. Malformed input of any kind prints `qasm <command>: <what was wrong>` on stderr and
exits 2 (the testbed's exit code for invalid input, DESIGN.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable

from qasm.wire.capture import CaptureSummarizer, read_udp_datagrams
from qasm.wire.errors import WireError
from qasm.wire.quic_lb import (
    UNROUTABLE_CONFIG_ID,
    QuicLbConfig,
    config_id_of,
    decode_cid,
    encode_cid,
)
from qasm.wire.summary import DEFAULT_SHORT_DCID_LENGTH, describe_datagram

EXIT_OK, EXIT_INVALID = 0, 2


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds the `wire` and `lb` subcommands; each sets `handler(args) -> int`."""
    wire = subparsers.add_parser("wire", help="decode QUIC packets and captures")
    wire_commands = wire.add_subparsers(dest="wire_command", required=True, metavar="COMMAND")

    decode = wire_commands.add_parser(
        "decode", help="describe one UDP payload (hex) as JSON, decrypting Initials"
    )
    decode.add_argument("hex", metavar="HEX", help="the UDP payload in hexadecimal")
    decode.add_argument(
        "--odcid",
        metavar="HEX",
        help="the client's original DCID: needed for server Initials and Retry integrity",
    )
    _add_short_dcid_length(decode)
    decode.set_defaults(handler=_guarded("wire decode", wire_decode_command))

    pcap = wire_commands.add_parser(
        "pcap", help="describe every QUIC packet of a pcap/pcapng capture, one JSON per line"
    )
    pcap.add_argument("file", metavar="FILE")
    pcap.add_argument("--port", type=int, help="only UDP datagrams from or to this port")
    _add_short_dcid_length(pcap, learned=True)
    pcap.set_defaults(handler=_guarded("wire pcap", wire_pcap_command))

    lb = subparsers.add_parser("lb", help="QUIC-LB connection ID codecs")
    lb_commands = lb.add_subparsers(dest="lb_command", required=True, metavar="COMMAND")

    lb_encode = lb_commands.add_parser("encode", help="build a CID carrying a server ID")
    lb_encode.add_argument("--config-id", type=int, required=True, help="0..6")
    lb_encode.add_argument("--server-id", metavar="HEX", required=True)
    lb_encode.add_argument("--nonce", metavar="HEX", required=True)
    lb_encode.add_argument("--key", metavar="HEX", help="16-byte AES key; none: plaintext")
    lb_encode.add_argument(
        "--len-self-encode",
        action="store_true",
        help="put the CID length in the first octet (default: random bits)",
    )
    lb_encode.set_defaults(handler=_guarded("lb encode", lb_encode_command))

    lb_decode = lb_commands.add_parser("decode", help="recover server ID and nonce from a CID")
    lb_decode.add_argument("cid", metavar="CID_HEX")
    lb_decode.add_argument("--server-id-len", type=int, required=True)
    lb_decode.add_argument("--nonce-len", type=int, required=True)
    lb_decode.add_argument("--key", metavar="HEX", help="16-byte AES key; none: plaintext")
    lb_decode.set_defaults(handler=_guarded("lb decode", lb_decode_command))


def _add_short_dcid_length(parser: argparse.ArgumentParser, *, learned: bool = False) -> None:
    when = " when the handshake did not show it" if learned else ""
    parser.add_argument(
        "--short-dcid-len",
        type=int,
        default=DEFAULT_SHORT_DCID_LENGTH,
        metavar="N",
        help=f"DCID length of short-header packets{when} (default %(default)s)",
    )


def _guarded(command: str, handler: Callable[[argparse.Namespace], int]):
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except WireError as exc:
            print(f"qasm {command}: {exc}", file=sys.stderr)
            return EXIT_INVALID

    return run


def _hex_argument(text: str, what: str) -> bytes:
    cleaned = text.strip()
    if cleaned[:2].lower() == "0x":
        cleaned = cleaned[2:]
    try:
        return bytes.fromhex(cleaned)
    except ValueError:
        raise WireError(f"{text!r} is not hexadecimal", field=what) from None


def wire_decode_command(args: argparse.Namespace) -> int:
    datagram = _hex_argument(args.hex, "HEX")
    original_dcid = None if args.odcid is None else _hex_argument(args.odcid, "--odcid")
    first, *coalesced = describe_datagram(
        datagram, original_dcid=original_dcid, short_dcid_length=args.short_dcid_len
    )
    print(json.dumps({**first, "coalesced": coalesced}))
    return EXIT_OK


def wire_pcap_command(args: argparse.Namespace) -> int:
    summarizer = CaptureSummarizer(default_short_dcid_length=args.short_dcid_len)
    try:
        for datagram in read_udp_datagrams(args.file):
            if args.port is not None and args.port not in (datagram.src[1], datagram.dst[1]):
                continue
            for description in summarizer.summarize(
                datagram.payload, src=datagram.src, dst=datagram.dst, time=datagram.time
            ):
                print(json.dumps(description))
    except OSError as exc:
        if isinstance(exc, BrokenPipeError):  # e.g. `| head`: the reader has seen enough
            sys.stderr.close()
            return EXIT_OK
        raise WireError(f"cannot read {args.file}: {exc.strerror or exc}", field="FILE") from None
    return EXIT_OK


def _lb_key(args: argparse.Namespace) -> bytes | None:
    return None if args.key is None else _hex_argument(args.key, "--key")


def lb_encode_command(args: argparse.Namespace) -> int:
    server_id = _hex_argument(args.server_id, "--server-id")
    nonce = _hex_argument(args.nonce, "--nonce")
    config = QuicLbConfig(
        config_id=args.config_id,
        server_id_length=len(server_id),
        nonce_length=len(nonce),
        key=_lb_key(args),
        encode_length=args.len_self_encode,
    )
    # Without length self-encoding the five low bits must look random (draft §3.3).
    cid = encode_cid(config, server_id, nonce, random_bits=os.urandom(1)[0])
    print(cid.hex())
    return EXIT_OK


def lb_decode_command(args: argparse.Namespace) -> int:
    cid = _hex_argument(args.cid, "CID_HEX")
    # The lengths and key given apply to whichever configuration the CID names; the
    # reserved 0b111 has no configuration and decode_cid reports it as unroutable.
    config_id = config_id_of(cid)
    config = QuicLbConfig(
        config_id=0 if config_id == UNROUTABLE_CONFIG_ID else config_id,
        server_id_length=args.server_id_len,
        nonce_length=args.nonce_len,
        key=_lb_key(args),
    )
    decoded = decode_cid(config, cid)
    print(
        json.dumps(
            {
                "config_id": decoded.config_id,
                "server_id": decoded.server_id.hex(),
                "nonce": decoded.nonce.hex(),
            }
        )
    )
    return EXIT_OK
