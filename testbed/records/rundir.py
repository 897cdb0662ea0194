"""Reading a RUN_DIR back (report, compare, check): validated, or one error naming file and field.

`qasm run` writes `metadata.json` first (status `running`), appends one fsynced line per finished
run to `records.jsonl` and rewrites `metadata.json` at the end (`finished`, `interrupted` or
`infrastructure failure: ...`). So a crash or Ctrl-C at any point leaves:

- a run whose status is not `finished`: usable, with a warning (`RunDir.partial`);
- at worst one unterminated last line in records.jsonl (killed mid-write): dropped with a
  warning, since every line before it was complete when it was fsynced.

Anything else is corrupt and raises `RunDirError` with `FILE:LINE: FIELD: expected ...`, the
same shape as scenario problems: a corrupt line in the middle, a record missing a field or with a
field of the wrong type, a missing or unreadable metadata.json or records.jsonl. Summaries are
always recomputed from the records (summary.json may lag a crash by one record), never read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

# Fields every record must carry, with the JSON types allowed (DESIGN.md "Result files").
REQUIRED_FIELDS: dict[str, tuple[type, ...]] = {
    "variant": (str,),
    "functions": (list,),
    "migration": (str, type(None)),
    "repetition": (int,),
    "client": (str,),
    "completed": (bool,),
    "verified": (bool,),
    "handshake_ms": (int, float, type(None)),
    "goodput_mbps": (int, float, type(None)),
    "disruption_ms": (int, float, type(None)),
    "packet_ins": (int,),
    "flow_mods": (int,),
    "failure": (str, type(None)),
}
# Optional fields with a checked type when present (counters must be exact integers).
OPTIONAL_FIELDS: dict[str, tuple[type, ...]] = {
    "migration_packet_ins": (int, type(None)),
    "retired_path_packet_ins": (int, type(None)),
    "agent_messages": (int, type(None)),
    "agent_bytes": (int, type(None)),
    "state_entries": (int, type(None)),
    "controller_cpu_s": (int, float, type(None)),
    "parameters": (dict, type(None)),
    "progress": (list, type(None)),
    "topology": (str, type(None)),
    "hops": (int, type(None)),
    "agent_mode": (str, type(None)),
    "per_hop": (dict, type(None)),
    "migration_rate_hz": (int, float, type(None)),
    "admission_ms": (int, float, type(None)),
    "opening_ms": (int, float, type(None)),
}
TYPE_NAMES = {
    str: "a string",
    list: "a list",
    dict: "a mapping",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    type(None): "null",
}


class RunDirError(ValueError):
    """The run directory cannot be used; the message is `FILE:LINE: FIELD: expected ...`."""


@dataclass
class RunDir:
    path: Path
    metadata: dict
    records: list[dict]
    warnings: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        return str(self.metadata.get("status", "unknown"))

    @property
    def partial(self) -> bool:
        return self.status != "finished"

    @property
    def scenario_name(self) -> str:
        return str(self.metadata.get("scenario_name") or Path(self.metadata["scenario"]).stem)

    @property
    def seed(self) -> int:
        return int(self.metadata.get("seed") or 0)


def _type_ok(value, allowed: tuple[type, ...]) -> bool:
    # bool is an int in Python; a counter of `true` is still a corrupt record.
    if isinstance(value, bool) and bool not in allowed:
        return False
    if isinstance(value, int) and not isinstance(value, bool) and float in allowed:
        return True
    return isinstance(value, allowed)


def _expected(allowed: tuple[type, ...]) -> str:
    return " or ".join(TYPE_NAMES[t] for t in allowed)


def check_record(record, where: str) -> None:
    """Raises RunDirError naming `where` (FILE:LINE) and the first bad field."""
    if not isinstance(record, dict):
        raise RunDirError(f"{where}: (record): expected a JSON object, got {type(record).__name__}")
    for name, allowed in REQUIRED_FIELDS.items():
        if name not in record:
            raise RunDirError(f"{where}: {name}: expected this field (missing)")
        if not _type_ok(record[name], allowed):
            raise RunDirError(
                f"{where}: {name}: expected {_expected(allowed)}, got {record[name]!r}"
            )
    for name, allowed in OPTIONAL_FIELDS.items():
        if name in record and not _type_ok(record[name], allowed):
            raise RunDirError(
                f"{where}: {name}: expected {_expected(allowed)}, got {record[name]!r}"
            )


def read_text_file(path: Path, error: type[ValueError], expected: str) -> str:
    """The file's text, or `error` naming the file: what was `expected` when it is missing."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise error(f"{path}:1: (file): expected {expected}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{path}:1: (file): expected a readable file ({exc})") from exc


def read_json_object(path: Path, error: type[ValueError], expected: str) -> dict:
    """A JSON object from a file, or `error` naming the file and the line of a syntax error."""
    text = read_text_file(path, error, expected)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{path}:{exc.lineno}: (syntax): expected JSON ({exc.msg})") from exc
    if not isinstance(value, dict):
        raise error(f"{path}:1: (top level): expected a JSON object")
    return value


def _read_metadata(path: Path) -> dict:
    metadata_path = path / "metadata.json"
    metadata = read_json_object(
        metadata_path, RunDirError, "a run directory written by `qasm run` (missing)"
    )
    for name in ("scenario", "status"):
        if not isinstance(metadata.get(name), str):
            raise RunDirError(f"{metadata_path}:1: {name}: expected a string (missing)")
    return metadata


def load_run(path: str | Path) -> RunDir:
    """Reads and validates RUN_DIR; raises RunDirError, or returns it with its warnings."""
    path = Path(path)
    if not path.is_dir():
        raise RunDirError(f"{path}:1: (directory): expected a run directory (not found)")
    metadata = _read_metadata(path)
    records_path = path / "records.jsonl"
    text = read_text_file(records_path, RunDirError, "the records of the run (missing)")
    run = RunDir(path, metadata, [])
    lines = text.split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{records_path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines):  # no newline after it: the writer died mid-line
                run.warnings.append(
                    f"{where}: ignored an unfinished last record (the run was killed mid-write)"
                )
                continue
            raise RunDirError(
                f"{where}: (syntax): expected one JSON object per line ({exc.msg})"
            ) from exc
        check_record(record, where)
        run.records.append(record)
    if run.partial:
        run.warnings.append(
            f"{path / 'metadata.json'}: status is {run.status!r}, not 'finished': "
            f"a partial run of {len(run.records)} records"
        )
    return run
