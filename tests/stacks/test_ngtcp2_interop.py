"""ngtcp2's programs (Debian 0.12.1) through the adapters, on loopback: gtlsclient fetching
from our h3 server and our h3 clients fetching from gtlsserver, migrating mid-transfer, with
the same reports and events as the Python apps."""

from __future__ import annotations

import importlib.util

import pytest

from testbed.apps.transfer import payload_digest
from tests.loopback_pair import SEED, run_pair

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("ngtcp2_programs")]

# Large enough that a migration 20 ms after the handshake falls mid-transfer even between
# the two ngtcp2 programs (~90 Mbit/s on loopback: 4 MB take ~0.35 s).
BYTES = 4_000_000
NGTCP2_CLIENT = ["testbed.apps.ngtcp2", "client"]
NGTCP2_SERVER = ["testbed.apps.ngtcp2", "server", "--bytes", str(BYTES), "--seed", str(SEED)]
HAS_QH3 = importlib.util.find_spec("qh3") is not None


def run(tmp_path, server, client):
    return run_pair(tmp_path, server, client, size=BYTES)


def _checks(report, events, *, client_stack, server_stack, migrate_ip):
    assert report["completed"] and report["verified"], report["failure"]
    assert report["client_stack"] == client_stack and report["client_stack_version"]
    assert report["handshake_ms"] > 0 and report["goodput_mbps"] > 0
    assert report["progress"] and report["progress"][-1][1] == BYTES
    (moved,) = report["migrations"]
    assert moved["to"][0] == migrate_ip and moved["to"] != moved["from"]
    if client_stack != "qh3":  # qh3 does not say which DCIDs it used
        assert moved["new_dcid"] != moved["old_dcid"]  # active: a new CID
        assert moved["new_dcid"] and moved["old_dcid"]
    assert moved["client_disruption_ms"] is not None
    (listening,) = [e for e in events if e["event"] == "listening"]
    assert listening["server_stack"] == server_stack and listening["server_stack_version"]
    first_data = [e for e in events if e["event"] == "first_data" and e["client"] == "h1"]
    assert [tuple(e["addr"]) for e in first_data] == [tuple(moved["from"]), tuple(moved["to"])]
    assert first_data[1]["t"] >= moved["at"]
    (finished,) = [e for e in events if e["event"] == "finished"]
    assert finished["sha256"] == payload_digest(BYTES, SEED) and finished["bytes"] == BYTES


def test_gtlsclient_fetches_from_our_h3_server_and_migrates(tmp_path):
    report, events = run(
        tmp_path,
        ["testbed.apps.server", "--protocol", "h3"],
        [*NGTCP2_CLIENT, "--migrate", "active", "--at-seconds", "0.02"],
    )
    _checks(report, events, client_stack="ngtcp2", server_stack="aioquic", migrate_ip="127.0.0.1")


@pytest.mark.parametrize("stack", ["aioquic", pytest.param("qh3", marks=pytest.mark.skipif(
    not HAS_QH3, reason="no qh3"))])  # fmt: skip
def test_our_h3_client_fetches_from_gtlsserver_and_migrates(tmp_path, stack):
    report, events = run(
        tmp_path,
        NGTCP2_SERVER,
        ["testbed.apps.client", "--protocol", "h3", "--stack", stack, "--migrate", "active",
         "--migrate-ip", "127.0.0.2", "--at-bytes", "1000000"],
    )  # fmt: skip
    _checks(report, events, client_stack=stack, server_stack="ngtcp2", migrate_ip="127.0.0.2")


def test_ngtcp2_with_itself(tmp_path):
    report, events = run(
        tmp_path, NGTCP2_SERVER, [*NGTCP2_CLIENT, "--migrate", "active", "--at-seconds", "0.02"]
    )
    _checks(report, events, client_stack="ngtcp2", server_stack="ngtcp2", migrate_ip="127.0.0.1")


def test_a_payload_from_another_seed_is_not_verified(tmp_path):
    """gtlsserver serves the file the adapter wrote; a client expecting another seed's bytes
    finds the digest wrong (the verification is end to end, not the server's word)."""
    server = ["testbed.apps.ngtcp2", "server", "--bytes", str(BYTES), "--seed", str(SEED + 1)]
    report, _ = run(tmp_path, server, NGTCP2_CLIENT)
    assert report["completed"] and not report["verified"]
    assert report["failure"].startswith("payload mismatch")
