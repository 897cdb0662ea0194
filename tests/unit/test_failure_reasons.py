"""Failures grouped by reason: the progress line, the result table and summary.json at
1,000 connections (recorded failure texts, no emulation)."""

from __future__ import annotations

from testbed.analysis.summary import (
    TABLE_FAILURE_WIDTH,
    failure_key,
    failure_reasons,
    failure_text,
    format_table,
    shorten,
    summarize,
)
from testbed.emulation.runner import _outcome

# Recorded in /tmp/r-default/records.jsonl (scenarios/default.yaml, tuple): nat-rebind and
# active lost the connection for the same reason, with other counts, addresses and ports.
NAT_REBIND = (
    "connection closed by idle timeout (3 s without a packet from the server); middlebox "
    "dropped 82 packets of 10.0.1.1:54157>10.0.0.250:4433: not_an_initial (short header (not "
    "a connection's first packet)) (+1 other drop reasons)"
)
ACTIVE = (
    "connection closed by idle timeout (3 s without a packet from the server); middlebox "
    "dropped 59 packets of 10.0.2.1:38798>10.0.0.250:4433: not_an_initial (short header (not "
    "a connection's first packet)) (+1 other drop reasons)"
)
MISMATCH = "payload mismatch: SHA-256 of 4000000 bytes differs"


def connection(client: str, failure: str | None = None, *, completed=None, variant="tuple"):
    ok = failure is None
    return {
        "variant": variant, "functions": ["firewall"], "migration": "active", "repetition": 0,
        "client": client, "completed": ok if completed is None else completed, "verified": ok,
        "handshake_ms": 15.0, "goodput_mbps": 30.0 if ok else None,
        "disruption_ms": 7.0 if ok else None, "packet_ins": 5, "flow_mods": 3, "failure": failure,
    }  # fmt: skip


def thousand() -> list[dict]:
    """1,000 connections of one run: 15 lost by the middlebox (each its own 5-tuple and
    count), 5 completed with a wrong payload, the rest fine."""
    records = []
    for index in range(1, 1001):
        client = f"c{index}"
        if index in (3, 17, 40) or 100 <= index < 112:
            text = NAT_REBIND.replace("82", str(index)).replace("54157", str(30000 + index))
            records.append(connection(client, text))
        elif index in (9, 90, 900, 901, 902):
            records.append(connection(client, MISMATCH, completed=True))
        else:
            records.append(connection(client))
    return records


def test_reasons_differing_only_in_counts_addresses_and_ports_group_together():
    assert failure_key(NAT_REBIND) == failure_key(ACTIVE)
    assert failure_key(NAT_REBIND) == (
        "connection closed by idle timeout (<n> s without a packet from the server); middlebox "
        "dropped <n> packets of <addr>><addr>: not_an_initial (short header (not a "
        "connection's first packet)) (+<n> other drop reasons)"
    )
    assert failure_key("retired CID 2f3e62e3d240ddf4") == failure_key("retired CID b65d8cf13c29")
    assert failure_key(NAT_REBIND) != failure_key(MISMATCH)
    assert failure_key("handshake  failed\n(x)") == "handshake failed (x)"


def test_groups_count_records_most_frequent_first_with_a_real_text_and_the_clients():
    records = [
        connection("c1", MISMATCH),
        connection("c2", ACTIVE),
        connection("c3"),
        connection("c4", NAT_REBIND),
        connection("c4", NAT_REBIND),  # the same client in another repetition
        connection("c5", completed=True) | {"verified": False},  # no reason recorded
    ]
    assert failure_reasons(records) == [
        {"reason": ACTIVE, "count": 3, "clients": ["c2", "c4"]},
        {"reason": MISMATCH, "count": 1, "clients": ["c1"]},
        {"reason": "completed but not verified", "count": 1, "clients": ["c5"]},
    ]
    assert failure_reasons([connection("c1")]) == []


def test_a_long_reason_loses_its_asides_before_its_evidence():
    assert shorten(NAT_REBIND, 300) == NAT_REBIND
    assert shorten(NAT_REBIND, 160) == (
        "connection closed by idle timeout (3 s without a packet from the server); middlebox "
        "dropped 82 packets of 10.0.1.1:54157>10.0.0.250:4433: not_an_initial (…)"
    )
    assert shorten(NAT_REBIND, TABLE_FAILURE_WIDTH) == (
        "connection closed by idle timeout (…); middlebox dropped 82 packets of "
        "10.0.1.1:54157>10.0.0.250:4433: not_an_initial (…)"
    )
    assert shorten(NAT_REBIND, 60) == "connection closed by idle timeout (…); middlebox dropped…"
    for limit in (40, 60, 100, 130, 200):
        assert len(shorten(NAT_REBIND, limit)) <= limit
    assert shorten("(startup) could not bind 10.0.0.250:4433", 36) == (
        "(…) could not bind 10.0.0.250:4433"
    )
    assert shorten("x" * 100, 40) == "x" * 39 + "…"  # no word boundary: cut anyway


def test_failure_text_shows_the_most_frequent_reasons_and_counts_the_rest():
    reasons = [
        {"reason": f"reason {chr(97 + i)}", "count": 10 - i, "clients": []} for i in range(5)
    ]
    assert failure_text(reasons) == (
        "10× reason a; 9× reason b; 8× reason c; +2 other reasons (13 failed)"
    )
    # a short reason leaves its room to a long one
    reasons = failure_reasons([connection("c1", NAT_REBIND), connection("c2", "lost")])
    text = failure_text(reasons, width=TABLE_FAILURE_WIDTH)
    assert text == f"1× {shorten(NAT_REBIND, TABLE_FAILURE_WIDTH - 4)}; 1× lost"
    assert text.endswith("not_an_initial (…); 1× lost")
    assert failure_text([]) == ""


def test_a_progress_line_of_one_client_is_unchanged():
    assert _outcome([connection("c1")]) == "ok"
    assert _outcome([connection("c1", ACTIVE)]) == f"FAILED ({ACTIVE})"
    assert _outcome([connection("c1", completed=True) | {"verified": False}]) == (
        "FAILED (completed but not verified)"
    )
    assert _outcome([connection("c1"), connection("c2")]) == "2/2 ok"


def test_a_progress_line_of_a_thousand_clients_groups_failures_by_reason():
    line = _outcome(thousand())
    assert line == (
        "980/1000 ok; 15 × connection closed by idle timeout (…); middlebox dropped 3 packets "
        "of 10.0.1.1:30003>10.0.0.250:4433: not_an_initial (…) (c3, c17, c40, …); "
        f"5 × {MISMATCH} (c9, c90, c900, …)"
    )
    assert "\n" not in line


def test_a_progress_line_with_many_distinct_reasons_stays_one_bounded_line():
    records = [connection(f"c{i}", f"reason {'x' * i} with {i} words") for i in range(1, 51)]
    line = _outcome(records)
    assert line.startswith("0/50 ok; 1 × reason x with 1 words (c1); 1 × reason xx with")
    assert line.endswith("; +46 other reasons (46 failed)")
    assert len(line) < 400


def test_the_table_has_one_row_per_point_variant_and_kind_with_grouped_failures():
    records = thousand() + [connection(f"c{i}", variant="baseline") for i in range(1, 1001)]
    records += [{**r, "migration": "nat-rebind"} for r in thousand()]
    lines = format_table(records).splitlines()
    assert [line.split()[:4] for line in lines] == [
        ["variant", "migration", "runs", "completed"],
        ["baseline", "active", "1000", "1000"],
        ["tuple", "active", "1000", "985"],
        ["tuple", "nat-rebind", "1000", "985"],
    ]
    assert lines[0].endswith("failures")
    assert lines[2].endswith(
        f"15× connection closed by idle timeout (…); middlebox dropped 3 packets of…; 5× {MISMATCH}"
    )
    assert lines[1].endswith(" 3.0")  # no failures: nothing after the last number
    # a sweep point is its own row
    swept = [{**r, "parameters": {"topology.clients": 1000}} for r in thousand()]
    lines = format_table(thousand() + swept).splitlines()
    assert [line.split()[:2] for line in lines[1:]] == [
        ["firewall", "tuple"],
        ["firewall", "topology.clients=1000"],
    ]


def test_summary_keeps_every_failure_text_and_adds_the_grouped_reasons():
    group = summarize(thousand())["by_migration"]["tuple"]["active"]
    assert len(group["failures"]) == 16  # every distinct text, as other code reads it
    idle, mismatch = group["failure_reasons"]
    assert (idle["count"], mismatch["count"]) == (15, 5)
    assert idle["reason"] == thousand()[2]["failure"]  # c3's: the first of its group
    assert idle["clients"][:3] == ["c3", "c17", "c40"] and len(idle["clients"]) == 15
