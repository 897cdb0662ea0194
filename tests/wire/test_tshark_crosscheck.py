"""Our migration verdicts (qasm.wire.migration_checks) cross-checked against Wireshark's QUIC
dissector: a second, independent implementation of header protection, 1-RTT decryption and
frame parsing.

Each case is a real aioquic connection run in memory that migrates (tests/wire/
memory_connection.py), written as one pcap at the client's interfaces plus the client's key
log. tshark decodes it once (`-T fields`, one row per datagram); from its rows this module
derives the facts behind the four verdicts on its own (which client 4-tuples carried a
PATH_CHALLENGE, which DCIDs the client used on each path, whether the server switched DCID
after each move) and the test asserts they equal what our library reads from the same pcap.
Skipped where tshark is not installed (`make setup` installs it).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass

import pytest

from qasm.wire.migration_checks import MigrationVerdicts, check_migration, datagrams_from_pcaps
from tests.wire.memory_connection import CLIENT_ADDR, SERVER_ADDR, MemoryConnection
from tests.wire.test_migration_checks import LTE_ADDR, migrated, values

pytestmark = pytest.mark.skipif(
    shutil.which("tshark") is None, reason="tshark is not installed (`make setup` installs it)"
)

# RFC 9000 §19.17-18 frame types, as tshark prints quic.frame_type (decimal).
PATH_CHALLENGE = 0x1A
PATH_RESPONSE = 0x1B
# One row per datagram, in capture order; a field with several values (coalesced packets,
# several frames) is comma-separated.
FIELDS = (
    "ip.src",
    "udp.srcport",
    "ip.dst",
    "udp.dstport",
    "quic.dcid",
    "quic.header_form",
    "quic.frame_type",
    # Set where a packet did not decrypt (its ciphertext is then shown as remaining payload).
    "quic.decryption_failed",
    "quic.remaining_payload",
)
# tshark reads a few thousand frames in well under a second; this bounds a hung process.
TSHARK_TIMEOUT_S = 60

Endpoint = tuple[str, int]
Path = tuple[Endpoint, Endpoint]  # (client endpoint, server endpoint), as in our library


@dataclass(frozen=True)
class TsharkDatagram:
    src: Endpoint
    dst: Endpoint
    packets: int
    dcids: tuple[bytes, ...]  # one per QUIC packet tshark could attribute to a connection
    frame_types: tuple[int, ...]
    undecrypted: bool  # some packet in it did not decrypt


def tshark_datagrams(pcap, key_log) -> list[TsharkDatagram]:
    """The QUIC datagrams of `pcap` as tshark decodes them with the TLS key log `key_log`."""
    command = ["tshark", "-n", "-r", str(pcap), "-o", f"tls.keylog_file:{key_log}"]
    # 4433 is not QUIC's port: name the dissector rather than rely on its heuristics.
    command += ["-d", f"udp.port=={SERVER_ADDR[1]},quic", "-Y", "quic", "-T", "fields"]
    command += ["-E", "separator=\t", "-E", "aggregator=,"]
    for name in FIELDS:
        command += ["-e", name]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=TSHARK_TIMEOUT_S, check=True
    )
    datagrams = []
    for line in done.stdout.splitlines():
        src, sport, dst, dport, dcids, forms, frame_types, failed, remaining = line.split("\t")
        datagrams.append(
            TsharkDatagram(
                src=(src, int(sport)),
                dst=(dst, int(dport)),
                packets=len(forms.split(",")),
                dcids=tuple(bytes.fromhex(d) for d in dcids.split(",") if d),
                frame_types=tuple(int(t) for t in frame_types.split(",") if t),
                undecrypted=bool(failed or remaining),
            )
        )
    return datagrams


@dataclass(frozen=True)
class TsharkFacts:
    """The facts behind the four verdicts, derived from tshark's rows alone."""

    paths: tuple[Path, ...]  # client 4-tuples in order of the client's first datagram
    challenged_by_server: frozenset[Path]
    challenged_by_client: frozenset[Path]
    responded_on: frozenset[Path]  # carried a PATH_RESPONSE, either direction
    client_dcids: dict[Path, tuple[bytes, ...]]  # in order of first use
    fresh_first_dcid: bool  # each new path started with a DCID the client had not sent
    old_dcid_on_new_path: bool  # some new path carried a DCID sent on another path before
    server_switched: bool  # after each move the server sent a DCID not used before it

    def verdicts(self, *, active: bool) -> tuple:
        """In our library's terms: (path_challenge_on_new_path, new_dcid_after_active,
        old_dcid_on_new_path, server_switched_dcid); the DCID pair judged only when active."""
        challenged = self.challenged_by_server | self.challenged_by_client
        return (
            all(path in challenged for path in self.paths[1:]),
            self.fresh_first_dcid if active else None,
            self.old_dcid_on_new_path if active else None,
            self.server_switched,
        )


def tshark_facts(datagrams: list[TsharkDatagram], server: Endpoint) -> TsharkFacts:
    rows = []  # (from_client, path, datagram)
    for datagram in datagrams:
        from_client = datagram.dst == server
        path = (datagram.src, server) if from_client else (datagram.dst, server)
        rows.append((from_client, path, datagram))
    paths = tuple(dict.fromkeys(path for from_client, path, _ in rows if from_client))
    client_dcids = {
        path: tuple(
            dict.fromkeys(
                dcid for from_client, p, d in rows if from_client and p == path for dcid in d.dcids
            )
        )
        for path in paths
    }
    challenged = {True: set(), False: set()}
    responded = set()
    for from_client, path, datagram in rows:
        if PATH_CHALLENGE in datagram.frame_types:
            challenged[from_client].add(path)
        if PATH_RESPONSE in datagram.frame_types:
            responded.add(path)

    # Walk the client's datagrams in capture order: where each path starts, what came before.
    fresh_first = True
    old_on_new = False
    sent_on: dict[bytes, set[Path]] = {}
    used: set[Path] = {paths[0]} if paths else set()
    move_rows = []  # row index of the client's first datagram on each new path
    for index, (from_client, path, datagram) in enumerate(rows):
        if not from_client:
            continue
        if path not in used:
            used.add(path)
            move_rows.append(index)
            if datagram.dcids and datagram.dcids[0] in sent_on:
                fresh_first = False
        for dcid in datagram.dcids:
            if path != paths[0] and sent_on.get(dcid, set()) - {path}:
                old_on_new = True
            sent_on.setdefault(dcid, set()).add(path)

    server_dcids = [(i, dcid) for i, (c, _, d) in enumerate(rows) if not c for dcid in d.dcids]
    server_switched = bool(move_rows)
    for moved, until in zip(move_rows, move_rows[1:] + [len(rows)], strict=True):
        before = {dcid for i, dcid in server_dcids if i < moved}
        after = {dcid for i, dcid in server_dcids if moved <= i < until}
        server_switched &= bool(after - before)
    return TsharkFacts(
        paths=paths,
        challenged_by_server=frozenset(challenged[False]),
        challenged_by_client=frozenset(challenged[True]),
        responded_on=frozenset(responded),
        client_dcids=client_dcids,
        fresh_first_dcid=fresh_first,
        old_dcid_on_new_path=old_on_new,
        server_switched=server_switched,
    )


@dataclass(frozen=True)
class Case:
    moves: list  # (client address, active) per move, as `migrated` takes them
    active: bool  # judged as an active migration
    expected: tuple  # the verdicts both must reach, in `values` order


CASES = {
    "active-migration": Case([(LTE_ADDR, True)], True, (True, True, False, True)),
    "port-rebinding": Case(
        [((CLIENT_ADDR[0], CLIENT_ADDR[1] + 1), False)], False, (True, None, None, False)
    ),
    # The client changes address without a new DCID, judged as an active migration: the
    # RFC 9000 §9.5 linkability.
    "moves-with-old-dcid": Case([(LTE_ADDR, False)], True, (True, False, True, False)),
}


@dataclass
class Judged:
    case: Case
    ours: MigrationVerdicts
    theirs: TsharkFacts
    tshark_rows: list[TsharkDatagram]


@pytest.fixture(scope="module", params=list(CASES))
def judged(request, tmp_path_factory) -> Judged:
    """One case written as the client host's capture, read by our library and by tshark."""
    case = CASES[request.param]
    connection: MemoryConnection = migrated(*case.moves)
    directory = tmp_path_factory.mktemp(request.param)
    # Both client addresses into one pcap, so tshark sees the handshake and the new path.
    (pcap,) = connection.write_client_pcaps(
        directory, {CLIENT_ADDR[0]: "client", LTE_ADDR[0]: "client"}
    )
    key_log = directory / "keys.log"
    key_log.write_text(connection.keylog.getvalue())
    ours = check_migration(
        datagrams_from_pcaps([pcap], SERVER_ADDR), key_log.read_text(), None, active=case.active
    )
    rows = tshark_datagrams(pcap, key_log)
    return Judged(case, ours, tshark_facts(rows, SERVER_ADDR), rows)


def test_tshark_decrypts_every_datagram(judged):
    # Without this the cross-check would compare against tshark's blind spots.
    assert judged.tshark_rows
    assert not [d for d in judged.tshark_rows if d.undecrypted]
    assert all(d.frame_types and len(d.dcids) == d.packets for d in judged.tshark_rows)


def test_the_same_paths_and_path_challenges(judged):
    ours, theirs = judged.ours, judged.theirs
    assert tuple((p.client, p.server) for p in ours.paths) == theirs.paths
    challenged = theirs.challenged_by_server | theirs.challenged_by_client
    assert {(p.client, p.server) for p in ours.paths if p.path_challenges} == challenged
    assert {(p.client, p.server) for p in ours.paths if p.path_responses} == theirs.responded_on
    # aioquic's server validates every new path; the client challenges none.
    assert theirs.challenged_by_server == frozenset(theirs.paths[1:])
    assert not theirs.challenged_by_client


def test_the_same_client_dcids_on_each_path(judged):
    ours = {(p.client, p.server): p.client_dcids for p in judged.ours.paths}
    assert ours == judged.theirs.client_dcids


def test_the_same_verdicts(judged):
    theirs = judged.theirs.verdicts(active=judged.case.active)
    assert theirs == values(judged.ours) == judged.case.expected
    if not judged.case.active:
        # A rebinding's DCID verdicts are not judged, but the reason still says what our
        # library saw: the reuse tshark sees too.
        assert judged.theirs.old_dcid_on_new_path
        assert "reused" in judged.ours.old_dcid_on_new_path.reason
