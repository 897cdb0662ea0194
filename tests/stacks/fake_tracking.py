"""A Tracking Agent for tests without a middlebox: verifies and acks with qasm's own code.

    python tests/stacks/fake_tracking.py --listen IP:PORT --service IP:PORT --client ID
        --key HEX --addresses IP [IP ...] --log FILE [--lifetime-s S] [--ack-delay-s S]

Every report is checked by qasm.agents.tracking.TrackingAgent (no connection table: a valid
report is acknowledged, as with no middlebox hop) and logged as one JSON line with what it
said, where it came from and when (time.monotonic()). `--ack-delay-s` answers that much
later (a slow Tracking Agent: what a held datagram then waits is visible on the wire).
"""

from __future__ import annotations

import argparse
import json
import socket
import time

from qasm.agents.messages import Announce, Retire
from qasm.agents.tracking import TrackingAgent


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--listen", required=True)
    parser.add_argument("--service", required=True)
    parser.add_argument("--client", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--addresses", nargs="+", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--lifetime-s", type=float, default=120)
    parser.add_argument("--ack-delay-s", type=float, default=0.0)
    args = parser.parse_args()
    agent = TrackingAgent(
        _address(args.service),
        {args.client: bytes.fromhex(args.key)},
        {args.client: frozenset(args.addresses)},
    )
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(_address(args.listen))
    sock.settimeout(0.5)
    end = time.monotonic() + args.lifetime_s
    with open(args.log, "a", encoding="utf-8") as log:
        log.write(json.dumps({"what": "listening", "t": time.monotonic()}) + "\n")
        log.flush()
        while time.monotonic() < end:
            try:
                datagram, source = sock.recvfrom(4096)
            except TimeoutError:
                continue
            now = time.monotonic()
            report = agent.receive(datagram, source[0], now, None, lambda message, c: None)
            if report.reply is not None:
                if args.ack_delay_s:
                    time.sleep(args.ack_delay_s)  # one report at a time: fine for tests
                sock.sendto(report.reply, source)
            entry = {
                "what": "report", "t": now, "source": list(source),
                "accepted": report.accepted, "reason": str(report.reason),
            }  # fmt: skip
            message = report.message
            if isinstance(message, Announce):
                entry.update(
                    type="announce", counter=message.counter,
                    connection_cid=message.connection_cid.hex(),
                    next_cid=message.next_cid.hex(), old=list(message.old),
                    new=list(message.new),
                    retire=list(message.retire) if message.retire else None,
                )  # fmt: skip
            elif isinstance(message, Retire):
                entry.update(
                    type="retire", counter=message.counter,
                    connection_cid=message.connection_cid.hex(), path=list(message.path),
                )  # fmt: skip
            log.write(json.dumps(entry) + "\n")
            log.flush()


if __name__ == "__main__":
    main()
