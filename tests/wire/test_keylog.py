"""NSS key log parsing (qasm.wire.keylog)."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qasm.wire import WireError
from qasm.wire.keylog import ConnectionSecrets, parse_key_log

RANDOM_A = "aa" * 32
RANDOM_B = "bb" * 32

LOG = f"""# a comment, then a blank line

SERVER_HANDSHAKE_TRAFFIC_SECRET {RANDOM_A} {"01" * 32}
CLIENT_HANDSHAKE_TRAFFIC_SECRET {RANDOM_A} {"02" * 32}
SERVER_TRAFFIC_SECRET_0 {RANDOM_A} {"03" * 32}
CLIENT_TRAFFIC_SECRET_0 {RANDOM_A} {"04" * 32}
EXPORTER_SECRET {RANDOM_A} {"05" * 32}
CLIENT_RANDOM {RANDOM_B} {"06" * 48}
CLIENT_TRAFFIC_SECRET_0 {RANDOM_B} {"07" * 48}
"""


def test_secrets_are_grouped_by_client_random():
    log = parse_key_log(LOG)
    assert len(log) == 2
    a = log.get(bytes.fromhex(RANDOM_A))
    assert a == ConnectionSecrets(
        client_random=bytes.fromhex(RANDOM_A),
        client_handshake=bytes([2]) * 32,
        server_handshake=bytes([1]) * 32,
        client_1rtt=bytes([4]) * 32,
        server_1rtt=bytes([3]) * 32,
    )
    b = log.get(bytes.fromhex(RANDOM_B))
    assert b.client_1rtt == bytes([7]) * 48 and b.server_1rtt is None
    # Only complete entries can open both directions.
    assert log.with_one_rtt() == [a]
    assert a.one_rtt(from_client=True) == bytes([4]) * 32


def test_bytes_and_line_iterables_are_accepted():
    assert parse_key_log(LOG.encode()) == parse_key_log(LOG)
    assert parse_key_log(LOG.splitlines(keepends=True)) == parse_key_log(LOG)


def test_a_missing_direction_names_the_label():
    b = parse_key_log(LOG).get(bytes.fromhex(RANDOM_B))
    with pytest.raises(WireError, match="SERVER_TRAFFIC_SECRET_0") as caught:
        b.one_rtt(from_client=False)
    assert caught.value.field == "key log"


def test_a_repeated_label_keeps_the_last_secret():
    log = parse_key_log(
        f"CLIENT_TRAFFIC_SECRET_0 {RANDOM_A} {'01' * 32}\n"
        f"CLIENT_TRAFFIC_SECRET_0 {RANDOM_A} {'02' * 32}\n"
    )
    assert log.get(bytes.fromhex(RANDOM_A)).client_1rtt == bytes([2]) * 32


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (f"CLIENT_TRAFFIC_SECRET_0 {RANDOM_A}", "3 fields|got 2"),
        (f"CLIENT_TRAFFIC_SECRET_0 {RANDOM_A} zz", "secret is not hex"),
        (f"CLIENT_TRAFFIC_SECRET_0 abcd {'01' * 32}", "client random is 2 bytes"),
        (f"CLIENT_TRAFFIC_SECRET_0 {RANDOM_A} {'01' * 20}", "20 bytes"),
    ],
)
def test_malformed_lines_name_the_line(line, message):
    with pytest.raises(WireError, match=message) as caught:
        parse_key_log("# header\n" + line + "\n")
    assert caught.value.field == "key log line 2"


def test_non_ascii_bytes_are_a_wire_error():
    with pytest.raises(WireError) as caught:
        parse_key_log(b"CLIENT_TRAFFIC_SECRET_0 \xff")
    assert caught.value.field == "key log"


@given(st.text(max_size=400) | st.binary(max_size=400))
def test_arbitrary_text_parses_or_raises_wire_error(text):
    with contextlib.suppress(WireError):
        parse_key_log(text)
