"""`qasm wire ...` and `qasm lb ...`: JSON output, exit codes, and the real capture."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from testbed.cli import main
from tests.wire import vectors
from tests.wire.handshake_capture import ALPN, SERVER_NAME, write_pcap


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_decode_rfc_client_initial(capsys):
    code, out, _ = run(capsys, "wire", "decode", vectors.CLIENT_INITIAL_V1.hex())
    assert code == 0
    described = json.loads(out)
    assert described == {
        "form": "long",
        "type": "initial",
        "version": 1,
        "dcid": "8394c8f03e515708",
        "scid": "",
        "token": "",
        "length": 1200,
        "decrypted": True,
        "sender": "client",
        "packet_number": 2,
        "frames": ["crypto", "padding"],
        "sni": "example.com",
        "alpn": ["alpn"],
        "client_hello": "complete",
        "coalesced": [],
    }


def test_decode_v2_server_initial_with_odcid(capsys):
    code, out, _ = run(
        capsys, "wire", "decode", vectors.SERVER_INITIAL_V2.hex(), "--odcid", "8394c8f03e515708"
    )
    described = json.loads(out)
    assert code == 0
    assert (described["version"], described["type"], described["sender"]) == (
        0x6B3343CF,
        "initial",
        "server",
    )
    assert described["frames"] == ["ack", "crypto"] and described["decrypted"] is True


@pytest.mark.parametrize(
    ("odcid", "verdict"), [("8394c8f03e515708", "valid"), ("0000000000000000", "invalid")]
)
def test_decode_retry_integrity(capsys, odcid, verdict):
    code, out, _ = run(capsys, "wire", "decode", vectors.RETRY_V1.hex(), "--odcid", odcid)
    described = json.loads(out)
    assert code == 0
    assert described["retry_integrity"] == verdict
    assert described["token"] == b"token".hex()


def test_decode_short_header_and_version_negotiation(capsys):
    _, out, _ = run(capsys, "wire", "decode", "41" + "b01fd24a586a9cf3" + "00" * 30)
    assert json.loads(out)["type"] == "1rtt" and json.loads(out)["dcid"] == "b01fd24a586a9cf3"
    _, out, _ = run(capsys, "wire", "decode", "c0" + "00000000" + "00" + "00" + "00000001")
    described = json.loads(out)
    assert described["type"] == "version_negotiation" and described["supported_versions"] == [1]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["wire", "decode", "c0000000"], "version: truncated at offset 1"),
        (["wire", "decode", "xyz"], "is not hexadecimal"),
        (["wire", "decode", vectors.SERVER_INITIAL_V1.hex()], "server Initial needs"),
        (
            ["wire", "decode", vectors.SERVER_INITIAL_V1.hex(), "--odcid", "00"],
            "does not authenticate",
        ),
        (["wire", "decode", ""], "empty datagram"),
        (["wire", "pcap", "/nonexistent/capture.pcap"], "cannot read"),
        (
            ["lb", "decode", "e0" + "00" * 7, "--server-id-len", "3", "--nonce-len", "4"],
            "unroutable",
        ),
        (["lb", "decode", "0011", "--server-id-len", "3", "--nonce-len", "4"], "at least 8"),
        (
            ["lb", "encode", "--config-id", "0", "--server-id", "01", "--nonce", "02"],
            "nonce length",
        ),
        (
            [
                "lb",
                "encode",
                "--config-id",
                "0",
                "--server-id",
                "01",
                "--nonce",
                "02030405",
                "--key",
                "00",
            ],
            "key",
        ),
    ],
)
def test_malformed_input_exits_2_with_a_message(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    assert message in err and err.startswith("qasm ")


def test_lb_encode_and_decode_the_worked_example(capsys):
    example = vectors.LB_WORKED_EXAMPLE
    code, out, _ = run(
        capsys,
        "lb", "encode", "--config-id", "0", "--server-id", example["server_id"],
        "--nonce", example["nonce"], "--key", example["key"], "--len-self-encode",
    )  # fmt: skip
    assert code == 0 and out.strip() == example["cid"]
    code, out, _ = run(
        capsys,
        "lb", "decode", example["cid"], "--server-id-len", "3", "--nonce-len", "4",
        "--key", example["key"],
    )  # fmt: skip
    assert code == 0
    assert json.loads(out) == {
        "config_id": 0,
        "server_id": example["server_id"],
        "nonce": example["nonce"],
    }


def test_lb_encode_without_self_encoding_keeps_the_config_bits(capsys):
    _, out, _ = run(
        capsys, "lb", "encode", "--config-id", "5", "--server-id", "aabb", "--nonce", "01020304"
    )
    cid = bytes.fromhex(out.strip())
    assert cid[0] >> 5 == 5 and cid[1:] == bytes.fromhex("aabb01020304")


def test_decode_of_a_captured_aioquic_client_initial_finds_sni_and_alpn(capsys, handshake):
    first = handshake.from_client()[0].payload
    code, out, _ = run(capsys, "wire", "decode", first.hex())
    described = json.loads(out)
    assert code == 0
    assert described["sni"] == SERVER_NAME and described["alpn"] == [ALPN]


def test_pcap_of_a_real_handshake(capsys, handshake, tmp_path):
    path = tmp_path / "handshake.pcap"
    write_pcap(handshake, path)
    code, out, err = run(capsys, "wire", "pcap", str(path))
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) >= len(handshake.datagrams)
    assert not [line for line in lines if "error" in line]
    client_initial = lines[0]
    assert (client_initial["type"], client_initial["sender"]) == ("initial", "client")
    assert client_initial["sni"] == SERVER_NAME and client_initial["alpn"] == [ALPN]
    server_initials = [x for x in lines if x["type"] == "initial" and x.get("sender") == "server"]
    assert server_initials and all(x["decrypted"] for x in server_initials)
    assert "crypto" in server_initials[0]["frames"]
    # Short headers use the CID lengths learnt from the long headers' SCIDs.
    short = [x for x in lines if x["form"] == "short"]
    long_scids = {x["scid"] for x in lines if x["form"] == "long"}
    assert short and all(x["dcid"] in long_scids for x in short)
    assert {"handshake", "1rtt"} <= {x["type"] for x in lines}


def test_pcap_of_a_retry_handshake_checks_the_retry(capsys, retry_handshake, tmp_path):
    path = tmp_path / "retry.pcap"
    write_pcap(retry_handshake, path)
    code, out, _ = run(capsys, "wire", "pcap", str(path))
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 0
    (retry,) = [x for x in lines if x["type"] == "retry"]
    assert retry["retry_integrity"] == "valid"
    client_initials = [x for x in lines if x.get("sender") == "client"]
    assert client_initials[1]["token"] == retry["token"]  # the Initial after the Retry
    assert all(x.get("decrypted") for x in lines if x["type"] == "initial")


def test_pcap_rejects_a_file_that_is_not_a_capture(capsys, tmp_path):
    path = tmp_path / "not-a.pcap"
    path.write_bytes(b"definitely not a capture")
    code, _, err = run(capsys, "wire", "pcap", str(path))
    assert code == 2 and "not a pcap" in err


def test_console_script_is_wired():
    script = Path(sys.executable).with_name("qasm")
    result = subprocess.run(
        [str(script), "wire", "decode", vectors.RETRY_V2.hex(), "--odcid", "8394c8f03e515708"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["retry_integrity"] == "valid"
    bad = subprocess.run(
        [str(script), "wire", "decode", "c0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == 2 and "qasm wire decode:" in bad.stderr
