"""The ngtcp2 adapters' reading of what gtlsclient / gtlsserver print (0.12.1's formats,
copied from real runs), the reports and events made from it, and the options they refuse."""

from __future__ import annotations

import pytest

from testbed.apps.client import ClientReport, connection_specs
from testbed.apps.ngtcp2 import (
    ClientLog,
    ServerLog,
    client_argv,
    client_report,
    parse_client_args,
    server_argv,
)
from testbed.apps.transfer import payload_digest

CID = "0x3ff3db534934b3883ddd71fa2b22a3309c"
OLD_DCID = "b8d969ed211e3d91697822fa6d3058b6903a"
NEW_DCID = "babc3c66c7bc95e180fad524ff1b464ee9ee"

CLIENT_LINES = [
    (1.000, f"I00000000 {CID} pkt tx pkn=0 dcid=0x1dee792978ea6f7c5a490df91d5b2a47d2ff "
            f"scid={CID} version=0x00000001 type=Initial len=0"),
    (1.001, "Sent packet: local=[10.0.1.1]:59627 remote=[10.0.0.250]:4433 ecn=0x2 1200 bytes"),
    (1.009, "Received packet: local=[10.0.1.1]:59627 remote=[10.0.0.250]:4433 ecn=0x2 1200 bytes"),
    (1.009, f"I00000009 {CID} rcv latest_rtt=8 min_rtt=8 smoothed_rtt=8 rttvar=4 ack_delay=0"),
    (1.010, "QUIC handshake has completed"),
    (1.011, "http: stream 0x0 submit request headers"),
    (1.011, f"I00000011 {CID} pkt tx pkn=1 dcid=0x{OLD_DCID} scid={CID} version=0x00000001 "
            "type=Initial len=0"),  # an ACK of the server's Initial: not the start
    (1.012, f"I00000012 {CID} pkt tx pkn=0 dcid=0x{OLD_DCID} type=1RTT k=0"),
    (1.020, f"I00000020 {CID} frm rx 2 1RTT NEW_CONNECTION_ID(0x18) seq=6 cid=0x{NEW_DCID} "
            "retire_prior_to=0 stateless_reset_token=0xa5a2d77a794c086f0dc5bb74647002f1"),
    (1.021, "Received packet: local=[10.0.1.1]:59627 remote=[10.0.0.250]:4433 ecn=0x2 1444 bytes"),
    (1.021, f"I00000021 {CID} frm rx 3 1RTT STREAM(0x0e) id=0x0 fin=0 offset=100 len=1401 uni=0"),
    (1.500, "Changing local address"),
    (1.501, "Local address is now [10.0.1.1]:34297"),
    (1.5015, f"I00000501 {CID} pkt tx pkn=39 dcid=0x{OLD_DCID} type=1RTT k=0"),  # not yet
    (1.502, f"I00000502 {CID} pkt tx pkn=40 dcid=0x{NEW_DCID} type=1RTT k=0"),
    (1.509, "Received packet: local=[10.0.1.1]:59627 remote=[10.0.0.250]:4433 ecn=0x2 1444 bytes"),
    (1.509, f"I00000509 {CID} frm rx 80 1RTT STREAM(0x0e) id=0x0 fin=0 offset=9000 len=1401 uni=0"),
    (1.512, "Received packet: local=[10.0.1.1]:34297 remote=[10.0.0.250]:4433 ecn=0x2 1444 bytes"),
    (1.512, f"I00000512 {CID} frm rx 81 1RTT STREAM(0x0e) id=0x0 fin=0 offset=10401 len=1401 uni=0"),
    (1.900, f"I00000900 {CID} rcv latest_rtt=2 min_rtt=1 smoothed_rtt=3 rttvar=0 ack_delay=0"),
    (1.950, "Received packet: local=[10.0.1.1]:34297 remote=[10.0.0.250]:4433 ecn=0x2 400 bytes"),
    (1.950, f"I00000950 {CID} frm rx 99 1RTT STREAM(0x0f) id=0x0 fin=1 offset=3999059 len=960 uni=0"),
    (1.951, "HTTP stream 0 closed with error code 256"),
]  # fmt: skip


def _log(lines=CLIENT_LINES) -> ClientLog:
    log = ClientLog()
    for now, line in lines:
        log.feed(line, now)
    return log


def test_the_client_log_gives_times_addresses_rtt_and_the_migration():
    log = _log()
    assert (log.started_at, log.handshake_at, log.request_at, log.fin_at) == (
        1.000, 1.010, 1.011, 1.950,
    )  # fmt: skip
    assert log.local_address == ("10.0.1.1", 59627)
    assert log.smoothed_rtt_ms == 3.0 and log.last_received_at == 1.950
    (moved,) = log.migrations
    assert moved["at"] == 1.500 and moved["kind"] == "active"
    assert moved["from"] == ["10.0.1.1", 59627] and moved["to"] == ["10.0.1.1", 34297]
    assert (moved["old_dcid"], moved["new_dcid"]) == (OLD_DCID, NEW_DCID)
    assert moved["spare_cids"] == 1
    assert moved["first_data_at"] == 1.512  # not 1.509: that came in on the old socket


def _report(log, received=4_000_000, digest=None, exit_code=0) -> ClientReport:
    expected = "e" * 64
    return client_report(
        log,
        ClientReport(client="h1", bytes_requested=4_000_000),
        total=4_000_000,
        received=received,
        digest=expected if digest is None else digest,
        expected=expected,
        exit_code=exit_code,
        idle_timeout=3,
    )


def test_a_report_from_the_log_has_what_metrics_read():
    report = _report(_log())
    assert report.completed and report.verified and report.failure is None
    assert report.handshake_ms == pytest.approx(10.0)
    assert report.goodput_mbps == pytest.approx(4_000_000 * 8 / 0.939 / 1e6)
    assert report.first_byte_sent_at == 1.011 and report.last_byte_acknowledged_at == 1.950
    assert report.migration["client_disruption_ms"] == pytest.approx(12.0)
    assert report.local_address == ["10.0.1.1", 59627]


def test_a_wrong_payload_or_a_stalled_transfer_is_a_failure_with_its_reason():
    mismatch = _report(_log(), digest="0" * 64)
    assert mismatch.completed and not mismatch.verified
    assert mismatch.failure.startswith("payload mismatch")
    stalled = _log([*CLIENT_LINES[:13], (9.0, "ngtcp2_conn_handle_expiry: ERR_IDLE_CLOSE")])
    report = _report(stalled, received=312_278)  # gtlsclient exits 0 after an idle close
    assert not report.completed and "idle timeout (3 s" in report.failure
    refused = _report(_log(CLIENT_LINES[:3]), received=0, exit_code=1)
    assert refused.failure == "no handshake (gtlsclient exited with code 1)"


SERVER_CID = "0xea850ff5423f1e34bb8bbf6660a46750109f"


def test_the_server_log_becomes_first_data_per_address_and_finished_with_the_digest():
    digest = payload_digest(1000, 7)
    log = ServerLog({1000: digest})
    lines = [
        f"I00000021 {SERVER_CID} frm rx 0 1RTT STREAM(0x0b) id=0x0 fin=1 offset=0 len=32 uni=0",
        "http: stream 0x0 [:path: /bytes/1000?seed=7&client=h1%2F2]",
        f"I00000022 {SERVER_CID} frm tx 2 1RTT STREAM(0x0b) id=0x0 fin=0 offset=0 len=900 uni=0",
        f"I00000022 {SERVER_CID} frm tx 2 1RTT STREAM(0x0a) id=0x3 fin=0 offset=0 len=9 uni=1",
        "Sent packet: local=[10.0.0.250]:4433 remote=[10.0.1.1]:5000 ecn=0x2 1200 bytes",
        f"I00000023 {SERVER_CID} frm tx 3 1RTT STREAM(0x0e) id=0x0 fin=0 offset=900 len=50 uni=0",
        "Sent packet: local=[10.0.0.250]:4433 remote=[10.0.1.1]:5000 ecn=0x2 1200 bytes",
        f"I00000024 {SERVER_CID} frm tx 4 1RTT PATH_CHALLENGE(0x1a) data=0x0c5a9c3e67ee1903",
        "Sent packet: local=[10.0.0.250]:4433 remote=[10.0.2.1]:6000 ecn=0x2 1200 bytes",
        f"I00000025 {SERVER_CID} frm tx 5 1RTT STREAM(0x0f) id=0x0 fin=1 offset=950 len=90 uni=0",
        "Sent packet: local=[10.0.0.250]:4433 remote=[10.0.2.1]:6000 ecn=0x2 1200 bytes",
    ]
    events = [event for line in lines for event in log.feed(line, 0.0)]
    assert events == [
        ("first_data", {"client": "h1/2", "addr": ["10.0.1.1", 5000], "offset": 900}),
        ("first_data", {"client": "h1/2", "addr": ["10.0.2.1", 6000], "offset": 1040}),
        ("finished", {"client": "h1/2", "bytes": 1000, "sha256": digest}),
    ]


def _client_args(*extra: str):
    return parse_client_args(
        [
            "--server", "10.0.0.250:4433", "--local-ip", "10.0.1.1", "--client", "h1",
            "--bytes", "4000000", "--seed", "7", "--idle-timeout", "3", "--timeout", "30",
            "--server-name", "server.qasm.test", "--out", "r.json", *extra,
        ]
    )  # fmt: skip


def test_the_client_command_line():
    args = _client_args("--migrate", "active", "--at-seconds", "0.5", "--spread", "0")
    (spec,) = connection_specs(args)
    argv = client_argv(args, spec, "/tmp/d", "gtlsclient")
    assert argv == [
        "gtlsclient", "--exit-on-all-streams-close", "--no-quic-dump", "--no-http-dump",
        "--download=/tmp/d", "--sni=server.qasm.test", "--timeout=3000ms",
        "--change-local-addr=500ms", "10.0.0.250", "4433",
        "https://server.qasm.test:4433/bytes/4000000?seed=7&client=h1",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--migrate", "nat-rebind", "--at-seconds", "1"], "Rebind in the network instead"),
        (["--migrate", "active", "--at-bytes", "1000"], "needs --at-seconds"),
        (["--migrate", "active", "--migrate-ip", "10.0.2.1", "--at-seconds", "1"], "cannot choose"),
        (["--migrate", "active", "--at-seconds", "1", "--repeat-every", "1"], "migrates once"),
        (["--agent", "10.0.0.254:7400"], "needs aioquic"),
    ],
)
def test_the_client_refuses_what_gtlsclient_cannot_do(capsys, extra, message):
    with pytest.raises(SystemExit):
        _client_args(*extra)
    assert message in capsys.readouterr().err


def test_the_server_command_line(tmp_path):
    from testbed.apps.ngtcp2 import parse_server_args

    args = parse_server_args(
        ["--listen", "10.0.0.250:4433", "--events", "e", "--idle-timeout", "3",
         "--max-lifetime", "60", "--bytes", "1000", "--seed", "7", "--qlog-dir", "q"]
    )  # fmt: skip
    argv = server_argv(args, tmp_path / "h", tmp_path / "k.pem", tmp_path / "c.pem", "gtlsserver")
    assert argv == [
        "gtlsserver", "--no-quic-dump", "--no-http-dump", f"--htdocs={tmp_path / 'h'}",
        "--timeout=3000ms", "--qlog-dir=q", "10.0.0.250", "4433",
        str(tmp_path / "k.pem"), str(tmp_path / "c.pem"),
    ]  # fmt: skip


def test_a_migration_line_read_late_takes_the_connection_clock_instead():
    """The "Changing local address" line may be read after a burst (here 1.5 ms late): the
    first stamped line after it bounds the instant (stamp 501 ms after a start at 1.000)."""
    moved = next(i for i, (_, text) in enumerate(CLIENT_LINES) if text.startswith("Changing"))
    # Lines keep their order in the pipe: everything from there on arrives 2.5 ms late.
    late = CLIENT_LINES[:moved] + [(now + 0.0025, text) for now, text in CLIENT_LINES[moved:]]
    report = _report(_log(late))
    assert report.migration["at"] == pytest.approx(1.501)
