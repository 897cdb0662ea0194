"""The agent protocol: sealing, every field checked, and garbage never escapes as a crash."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qasm.agents.messages import (
    MAX_DATAGRAM,
    Ack,
    AgentMessageError,
    Announce,
    Retire,
    derive_client_key,
    open_sealed,
    seal,
)
from qasm.agents.tracking import TrackingAgent
from qasm.controller.events import Reason
from qasm.state.connections import ConnectionTable

KEY = derive_client_key(b"secret", "c1")


def test_messages_round_trip():
    for message in (
        Announce("c1", 1, b"\x01" * 8, b"\x02" * 8, ("10.0.1.1", 5000), ("10.0.2.1", 6000)),
        Retire("c1", 2, b"\x01" * 8, ("10.0.1.1", 5000)),
        Ack("c1", 2, False, "unknown connection"),
    ):
        assert open_sealed(seal(message, KEY), KEY) == message


def test_keys_differ_per_client():
    assert derive_client_key(b"secret", "c1") != derive_client_key(b"secret", "c2")


def _sealed_body(body: dict) -> bytes:
    import hashlib
    import hmac

    raw = json.dumps(body).encode()
    return hmac.new(KEY, raw, hashlib.sha256).digest() + raw


GOOD = {
    "v": 1,
    "client": "c1",
    "counter": 1,
    "type": "retire",
    "conn": "0102",
    "path": ["10.0.1.1", 5],
}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"v": 2}, "v:"),
        ({"counter": -1}, "counter:"),
        ({"counter": "1"}, "counter:"),
        ({"conn": "zz"}, "conn:"),
        ({"conn": "00" * 21}, "conn:"),
        ({"path": ["10.0.1.300", 5]}, "path:"),
        ({"path": ["10.0.1.1", 70000]}, "path:"),
        ({"type": "teleport"}, "type:"),
    ],
)
def test_each_bad_field_is_named(change, field):
    with pytest.raises(AgentMessageError, match=field):
        open_sealed(_sealed_body({**GOOD, **change}), KEY)


def test_oversized_and_tampered_datagrams_are_refused():
    with pytest.raises(AgentMessageError, match="bytes, expected <="):
        open_sealed(bytes(MAX_DATAGRAM + 1), KEY)
    datagram = bytearray(seal(Retire("c1", 1, b"\x01", ("10.0.1.1", 5)), KEY))
    datagram[-3] ^= 1
    with pytest.raises(AgentMessageError):
        open_sealed(bytes(datagram), KEY)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=700))
def test_garbage_raises_only_the_declared_error(data):
    with pytest.raises(AgentMessageError):
        open_sealed(data, KEY)


def never_applied(message, connection):
    raise AssertionError(f"a report was applied: {message}")


def tracking_agent(**kwargs) -> TrackingAgent:
    return TrackingAgent(
        ("10.0.0.250", 4433), {"c1": KEY}, {"c1": frozenset({"10.0.1.1"})}, **kwargs
    )


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=700), st.floats(0, 1e6))
def test_tracking_agent_rejects_garbage_and_changes_nothing(data, now):
    table = ConnectionTable()
    agent = tracking_agent()
    report = agent.receive(data, "10.0.1.1", now, table, never_applied)
    assert not report.accepted and isinstance(report.reason, Reason)
    assert report.reply is None and report.message is None  # no answer to the unverified
    assert len(table) == 0 and "accepted" not in agent.counters


def test_tracking_agent_rate_limits_each_client():
    agent = tracking_agent(rate_per_s=1, burst=3)
    table = ConnectionTable()
    reasons = [
        agent.receive(
            seal(Retire("c1", n, b"\x01", ("10.0.1.1", 5)), KEY), "10.0.1.1", 0.0, table,
            never_applied,
        ).reason
        for n in range(5)
    ]  # fmt: skip
    assert reasons == [Reason.UNKNOWN_CONNECTION] * 3 + [Reason.RATE_LIMITED] * 2
