"""`qasm run --resume RUN_DIR`: what an interrupted run finished, and whether it may go on.

A run may be resumed only when going on cannot mix results: the scenario file hashes as it
did when the run started, the code that makes results (qasm/, testbed/, topologies/) hashes
the same (a content hash, so an uncommitted edit counts as a change and a commit that changes
nothing does not), and the options (variants, repetitions, seed, CPU pinning) are those
recorded. Runs are planned again from the same scenario and options, so run N is the same
(point, variant, kind, repetition, seed) as before. A run counts as finished when
records.jsonl holds all its records (one per connection); the records of a run cut short
while they were written, and a torn last line, are dropped and the run is done again.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

SOURCE_ROOTS = ("qasm", "testbed", "topologies")


class ResumeError(Exception):
    """This run directory cannot be resumed; the message says why."""


def code_fingerprint(repository: Path) -> str:
    """sha256 over the path and content of every Python file that makes results."""
    digest = hashlib.sha256()
    for root in SOURCE_ROOTS:
        for path in sorted((repository / root).rglob("*.py")):
            digest.update(str(path.relative_to(repository)).encode() + b"\0")
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


@dataclass(frozen=True)
class Resumption:
    metadata: dict
    records: list[dict]  # the finished runs' records, in file order
    finished: frozenset[str]  # their run names (artifacts/NAME)


def read_run_dir(run_dir: Path) -> tuple[dict, list[dict]]:
    """metadata.json and the complete lines of records.jsonl (a torn last line is left out)."""
    try:
        metadata = json.loads((run_dir / "metadata.json").read_text())
    except (OSError, ValueError) as exc:
        raise ResumeError(f"{run_dir / 'metadata.json'}: cannot read it ({exc})") from exc
    records = []
    path = run_dir / "records.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except ValueError as exc:
            if number < len(lines):  # only the last line can be torn by a kill
                raise ResumeError(f"{path}:{number}: not a JSON record ({exc})") from exc
    return metadata, records


def check_resumable(
    metadata: dict, scenario_sha256: str, code_sha256: str, options: dict
) -> list[str]:
    """Why going on would mix results (empty: it would not)."""
    problems = []
    if metadata.get("status") == "finished":
        problems.append("the run finished: nothing to resume")
    if metadata.get("scenario_sha256") != scenario_sha256:
        problems.append(
            f"scenario {metadata.get('scenario')} changed since the run started "
            f"(sha256 {str(metadata.get('scenario_sha256'))[:12]} then, {scenario_sha256[:12]} now)"
        )
    recorded_code = metadata.get("code_sha256")
    if recorded_code != code_sha256:
        problems.append(
            "the code (qasm/, testbed/, topologies/) changed since the run started "
            f"(sha256 {str(recorded_code)[:12]} then, {code_sha256[:12]} now)"
        )
    recorded_options = metadata.get("options") or {}
    for name, value in options.items():
        if recorded_options.get(name) != value:
            problems.append(f"{name}: {value!r} now, {recorded_options.get(name)!r} in the run")
    return problems


def finished_runs(metadata: dict, records: list[dict], expected: dict[str, int]) -> Resumption:
    """Which runs (by name) have all `expected[name]` records, and those records."""

    def name(record: dict) -> str:
        return Path(record.get("artifacts", "")).name

    counts = Counter(name(r) for r in records)
    finished = frozenset(n for n, count in counts.items() if count == expected.get(n))
    return Resumption(metadata, [r for r in records if name(r) in finished], finished)
