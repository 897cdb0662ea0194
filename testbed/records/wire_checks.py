"""A record's `wire` checks: the migration as the client's own captures show it, judged the way
quic-interop-runner judges it (qasm/wire/migration_checks.py), from a run's artifacts.

Needs `artifacts: {pcap: true, keylog: true}`: the pcaps of the client host's interfaces
(captured before any middlebox, so the addresses are the client's own) and the client's key
log (the PATH_CHALLENGE verdict reads encrypted frames). With several connections on one
host the captures mix them, so the checks are left out (None with the reason).
"""

from __future__ import annotations

from pathlib import Path

from qasm.wire.errors import WireError
from qasm.wire.migration_checks import check_migration, datagrams_from_pcaps

CHECKS = (
    "path_challenge_on_new_path",
    "new_dcid_after_active",
    "old_dcid_on_new_path",
    "server_switched_dcid",
)


def wire_record(
    pcaps: list[Path], keylog: Path, service: tuple[str, int], kind: str | None, shared: bool
) -> dict:
    """{check: True/False/None, ..., "reasons": {check: why}, "detail": the full verdicts}."""
    if shared:
        return _unjudged("several connections share the host's captures")
    missing = [str(p) for p in (*pcaps, keylog) if not p.exists()]
    if missing:
        return _unjudged(f"missing {', '.join(missing)}")
    try:
        datagrams = datagrams_from_pcaps([str(p) for p in pcaps], service)
        verdicts = check_migration(
            datagrams,
            keylog.read_bytes(),
            active=None if kind is None else kind == "active",
        ).as_dict()
    except WireError as exc:
        return _unjudged(f"unreadable capture or key log: {exc}")
    return {
        **{check: verdicts[check]["value"] for check in CHECKS},
        "reasons": {check: verdicts[check]["reason"] for check in CHECKS},
        "detail": {k: v for k, v in verdicts.items() if k not in CHECKS},
    }


def _unjudged(reason: str) -> dict:
    return {
        **dict.fromkeys(CHECKS),
        "reasons": dict.fromkeys(CHECKS, reason),
        "detail": None,
    }
