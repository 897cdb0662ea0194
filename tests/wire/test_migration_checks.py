"""Migration judged on the wire (qasm.wire.migration_checks), against real aioquic
connections run in memory that migrate actively or rebind, recorded as if captured."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qasm.wire.frames import PathChallengeFrame
from qasm.wire.keylog import parse_key_log
from qasm.wire.migration_checks import (
    ConnectionDatagram,
    MigrationVerdicts,
    check_migration,
    datagrams_from_pcaps,
)
from qasm.wire.onertt import CipherSuite, OneRttObserver
from tests.wire.memory_connection import CLIENT_ADDR, SERVER_ADDR, MemoryConnection

LTE_ADDR = ("10.0.2.1", 40000)
WIFI_SECOND_ADDR = ("10.0.1.2", 50000)


def migrated(*moves: tuple[tuple[str, int], bool], **options) -> MemoryConnection:
    """A connection that transfers, then makes each (address, active) move with data after."""
    connection = MemoryConnection(**options)
    connection.handshake()
    connection.send_data()
    for addr, active in moves:
        connection.move_client(addr, active=active)
        connection.send_data()
        connection.send_data()
    return connection


def values(verdicts: MigrationVerdicts) -> tuple:
    return (
        verdicts.path_challenge_on_new_path.value,
        verdicts.new_dcid_after_active.value,
        verdicts.old_dcid_on_new_path.value,
        verdicts.server_switched_dcid.value,
    )


@pytest.fixture(scope="module")
def active() -> MemoryConnection:
    return migrated((LTE_ADDR, True))


@pytest.fixture(scope="module")
def port_rebind() -> MemoryConnection:
    return migrated(((CLIENT_ADDR[0], CLIENT_ADDR[1] + 1), False))


def test_active_migration(active):
    verdicts = check_migration(active.datagrams, active.keylog.getvalue(), None, active=True)
    assert values(verdicts) == (True, True, False, True)
    assert verdicts.cipher_suite is CipherSuite.AES_256_GCM_SHA384
    assert (verdicts.client_cid_length, verdicts.server_cid_length) == (8, 8)
    assert verdicts.undecryptable == 0 and verdicts.opened > 0
    first, new = verdicts.paths
    assert (first.client, new.client) == (CLIENT_ADDR, LTE_ADDR)
    assert new.path_challenges >= 1 and new.path_responses >= 1
    # The DCID the client moved to is the CID it switched to, one the server had issued.
    assert new.client_dcids == (active.client._peer_cid.cid,)
    assert not set(new.client_dcids) & set(first.client_dcids)
    assert set(new.server_dcids).isdisjoint(first.server_dcids)
    json.dumps(verdicts.as_dict())  # JSON-ready


def test_port_rebinding(port_rebind):
    verdicts = check_migration(
        port_rebind.datagrams, port_rebind.keylog.getvalue(), None, active=False
    )
    assert values(verdicts) == (True, None, None, False)
    # The reason still says what was seen: the rebinding kept the DCID.
    assert "reused" in verdicts.old_dcid_on_new_path.reason
    first, new = verdicts.paths
    assert new.client_dcids[0] in first.client_dcids
    assert new.server_dcids == (first.server_dcids[-1],)


def test_address_rebinding():
    connection = migrated((WIFI_SECOND_ADDR, False))
    verdicts = check_migration(
        connection.datagrams, connection.keylog.getvalue(), None, active=False
    )
    assert values(verdicts) == (True, None, None, False)


def test_repeated_active_migrations():
    back_to_wifi = (CLIENT_ADDR[0], CLIENT_ADDR[1] + 7)
    connection = migrated((LTE_ADDR, True), (back_to_wifi, True))
    verdicts = check_migration(
        connection.datagrams, connection.keylog.getvalue(), None, active=True
    )
    assert values(verdicts) == (True, True, False, True)
    assert len(verdicts.paths) == 3
    assert "2 move(s)" in verdicts.server_switched_dcid.reason


def test_moving_with_the_old_dcid_is_linkable():
    # The client moves address but keeps its DCID: judged as an active migration, that is
    # the RFC 9000 §9.5 violation, and no new DCID.
    connection = migrated((LTE_ADDR, False))
    verdicts = check_migration(
        connection.datagrams, connection.keylog.getvalue(), None, active=True
    )
    assert values(verdicts) == (True, False, True, False)
    assert "10.0.2.1:40000" in verdicts.old_dcid_on_new_path.reason


def test_a_new_path_without_path_challenge(active):
    (secrets,) = parse_key_log(active.keylog.getvalue()).with_one_rtt()
    observer = OneRttObserver.from_key_log(secrets, from_client=False, dcid_length=8)
    kept = []
    for datagram in active.datagrams:
        if not datagram.from_client:
            packet = observer.open(datagram.payload)
            if packet and any(isinstance(f, PathChallengeFrame) for f in packet.frames):
                continue  # the capture lost the server's PATH_CHALLENGE
        kept.append(datagram)
    verdicts = check_migration(kept, active.keylog.getvalue(), None, active=True)
    assert verdicts.path_challenge_on_new_path.value is False
    assert "10.0.2.1:40000" in verdicts.path_challenge_on_new_path.reason
    # A corrupted packet on that path makes the absence unjudgeable instead.
    corrupted = [
        d
        if d.from_client or d.dst != LTE_ADDR
        else ConnectionDatagram(
            d.time, d.src, d.dst, d.from_client, d.payload[:-1] + bytes([d.payload[-1] ^ 1])
        )
        for d in kept
    ]
    verdicts = check_migration(corrupted, active.keylog.getvalue(), None, active=True)
    assert verdicts.path_challenge_on_new_path.value is None
    assert verdicts.undecryptable > 0


def test_without_keys_only_the_dcid_verdicts_are_judged(active):
    verdicts = check_migration(active.datagrams, None, None, active=True)
    assert values(verdicts) == (None, True, False, True)
    assert "not decryptable" in verdicts.path_challenge_on_new_path.reason
    # A wrong suite opens nothing either.
    verdicts = check_migration(
        active.datagrams, active.keylog.getvalue(), CipherSuite.AES_128_GCM_SHA256, active=True
    )
    assert verdicts.path_challenge_on_new_path.value is None


def test_kind_unknown(active):
    verdicts = check_migration(active.datagrams, active.keylog.getvalue(), None)
    assert values(verdicts) == (True, None, None, True)
    assert "no reuse" in verdicts.old_dcid_on_new_path.reason


def test_no_migration():
    connection = migrated()
    verdicts = check_migration(
        connection.datagrams, connection.keylog.getvalue(), None, active=True
    )
    assert values(verdicts) == (None, None, None, None)
    assert "no migration" in verdicts.path_challenge_on_new_path.reason
    assert check_migration([], None).path_challenge_on_new_path.value is None


def test_keys_and_cid_lengths_found_by_trial_without_the_handshake():
    # Several connections in the key log, a capture that starts after the handshake, a
    # client CID length that is not aioquic's default: key entry, suite and both CID
    # lengths are found by trial decryption.
    other = migrated()
    connection = migrated((LTE_ADDR, True), client_cid_length=5)
    short_only = [d for d in connection.datagrams if not d.payload[0] & 0x80]
    key_log = other.keylog.getvalue() + connection.keylog.getvalue()
    assert len(parse_key_log(key_log)) == 2
    verdicts = check_migration(short_only, key_log, None, active=True)
    assert values(verdicts) == (True, True, False, True)
    assert (verdicts.client_cid_length, verdicts.server_cid_length) == (5, 8)
    assert verdicts.cipher_suite is CipherSuite.AES_256_GCM_SHA384
    # With the Initials, the ClientHello random picks the entry.
    verdicts = check_migration(connection.datagrams, key_log, None, active=True)
    assert any("ClientHello random" in note for note in verdicts.notes)


def test_from_pcaps_of_the_client_interfaces(active, tmp_path):
    paths = active.write_client_pcaps(tmp_path, {CLIENT_ADDR[0]: "wifi", LTE_ADDR[0]: "lte"})
    datagrams = datagrams_from_pcaps(paths, SERVER_ADDR)
    assert [d.payload for d in datagrams] == [d.payload for d in active.datagrams]
    assert [d.from_client for d in datagrams] == [d.from_client for d in active.datagrams]
    verdicts = check_migration(datagrams, active.keylog.getvalue(), None, active=True)
    assert values(verdicts) == (True, True, False, True)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.booleans(), st.sampled_from([CLIENT_ADDR, LTE_ADDR]), st.binary(max_size=200)),
        max_size=20,
    ),
    st.sampled_from([None, True, False]),
)
def test_garbage_captures_never_raise(entries, kind):
    datagrams = [
        ConnectionDatagram(
            float(i),
            client if from_client else SERVER_ADDR,
            SERVER_ADDR if from_client else client,
            from_client,
            payload,
        )
        for i, (from_client, client, payload) in enumerate(entries)
    ]
    key_log = (
        f"CLIENT_TRAFFIC_SECRET_0 {'aa' * 32} {'01' * 32}\n"
        f"SERVER_TRAFFIC_SECRET_0 {'aa' * 32} {'02' * 32}\n"
    )
    verdicts = check_migration(datagrams, key_log, None, active=kind)
    json.dumps(verdicts.as_dict())


def test_garbage_in_a_real_capture_is_counted_not_raised(active):
    noisy = list(active.datagrams)
    for index in range(len(noisy) - 1, 0, -3):
        d = noisy[index]
        noisy.insert(
            index,
            ConnectionDatagram(d.time, d.src, d.dst, d.from_client, bytes([0x40]) + bytes(60)),
        )
    verdicts = check_migration(noisy, active.keylog.getvalue(), None, active=True)
    assert values(verdicts) == (True, True, False, True)
    assert verdicts.undecryptable > 0


def test_with_one_direction_decryptable_a_missing_challenge_is_unknown(active):
    client_only = "\n".join(
        line
        for line in active.keylog.getvalue().splitlines()
        if not line.startswith("SERVER_TRAFFIC_SECRET_0")
    )
    verdicts = check_migration(active.datagrams, client_only, None, active=True)
    # The server's PATH_CHALLENGE is invisible; only the client's PATH_RESPONSE shows.
    assert verdicts.path_challenge_on_new_path.value is None
    assert verdicts.paths[1].path_responses >= 1 and verdicts.paths[1].path_challenges == 0
    assert values(verdicts)[1:] == (True, False, True)


def test_a_datagram_from_the_old_path_after_the_move_is_not_a_move_back(active):
    """Our client keeps its old socket for the server's late datagrams and may still answer
    from it (captured on the emulation): the move is judged once, to the new path."""
    datagrams = list(active.datagrams)
    moved = next(i for i, d in enumerate(datagrams) if d.from_client and d.src == LTE_ADDR)
    stray = next(d for d in datagrams[:moved] if d.from_client and not d.payload[0] & 0x80)
    later = datagrams[moved + 1]
    datagrams.insert(moved + 2, ConnectionDatagram(later.time, stray.src, stray.dst, True,
                                                   stray.payload))  # fmt: skip
    verdicts = check_migration(datagrams, active.keylog.getvalue(), None, active=True)
    assert values(verdicts) == (True, True, False, True), verdicts.server_switched_dcid.reason
    assert "1 move" in verdicts.server_switched_dcid.reason
