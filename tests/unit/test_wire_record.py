"""A record's `wire` checks from a run's artifacts (testbed/records/wire_checks.py), on
captures of a real aioquic connection run in memory."""

from __future__ import annotations

import pytest

from testbed.records.wire_checks import CHECKS, wire_record
from tests.wire.memory_connection import CLIENT_ADDR, SERVER_ADDR, MemoryConnection

LTE_ADDR = ("10.0.2.1", 40000)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """The client's pcaps (wifi, lte) and key log of one active migration."""
    directory = tmp_path_factory.mktemp("artifacts")
    connection = MemoryConnection()
    connection.handshake()
    connection.send_data()
    connection.move_client(LTE_ADDR, active=True)
    connection.send_data()
    pcaps = connection.write_client_pcaps(
        directory, {CLIENT_ADDR[0]: "c1-wifi", LTE_ADDR[0]: "c1-lte"}
    )
    keylog = directory / "client-c1.keylog"
    keylog.write_text(connection.keylog.getvalue())
    return pcaps, keylog


def test_an_active_migration_passes_interop_runners_checks(artifacts):
    pcaps, keylog = artifacts
    wire = wire_record(pcaps, keylog, SERVER_ADDR, "active", shared=False)
    assert tuple(wire[c] for c in CHECKS) == (True, True, False, True), wire["reasons"]
    assert [p["client"] for p in wire["detail"]["paths"]] == ["10.0.1.1:50000", "10.0.2.1:40000"]


def test_judged_as_a_rebinding_the_dcid_checks_do_not_apply(artifacts):
    pcaps, keylog = artifacts
    wire = wire_record(pcaps, keylog, SERVER_ADDR, "nat-rebind", shared=False)
    assert wire["path_challenge_on_new_path"] is True
    assert wire["new_dcid_after_active"] is None and wire["old_dcid_on_new_path"] is None


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"shared": True}, "several connections share the host's captures"),
        ({"keylog": "absent.keylog"}, "missing "),
    ],
)
def test_unjudged_checks_say_why(artifacts, tmp_path, change, reason):
    pcaps, keylog = artifacts
    if "keylog" in change:
        keylog = tmp_path / change["keylog"]
    wire = wire_record(pcaps, keylog, SERVER_ADDR, "active", shared=change.get("shared", False))
    assert all(wire[c] is None for c in CHECKS)
    assert all(reason in wire["reasons"][c] for c in CHECKS) and wire["detail"] is None


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (lambda pcap: pcap[:30], "no datagram from the client"),  # cut before any packet
        (lambda pcap: b"not a capture at all", "unreadable capture or key log: capture: "),
    ],
)
def test_a_damaged_capture_is_reported_not_raised(artifacts, tmp_path, content, reason):
    pcaps, keylog = artifacts
    damaged = tmp_path / "c1-wifi.pcap"
    damaged.write_bytes(content(pcaps[0].read_bytes()))
    wire = wire_record([damaged], keylog, SERVER_ADDR, "active", shared=False)
    assert all(wire[c] is None for c in CHECKS), wire
    assert reason in wire["reasons"]["path_challenge_on_new_path"]
