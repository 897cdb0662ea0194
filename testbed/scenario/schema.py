"""The JSON Schema of a scenario file, from the models (testbed/scenario/models.py).

scenarios/schema.json is generated, never edited: `python -m testbed.scenario.schema`
rewrites it and `--check` fails when it is out of date (as tests/unit/test_scenario.py does).
Editors complete and check scenario files against it, e.g. with the YAML language server:
`# yaml-language-server: $schema=schema.json` as the first line of a file in scenarios/.
It says what a key may hold; rules between keys (jitter at most the delay, a migration before
the end of the transfer, ...) are checked by `qasm validate` only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from testbed.scenario.models import Scenario

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "scenarios" / "schema.json"
REGENERATE = "python -m testbed.scenario.schema"


def scenario_schema() -> dict:
    schema = _tidy(Scenario.model_json_schema(by_alias=True, mode="validation"))
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "QASM testbed scenario",
        **{key: value for key, value in schema.items() if key != "title"},
    }


def _tidy(schema):
    """Drops the titles pydantic makes from field names ("Cpu Pinning": the key says it) and
    writes what pydantic versions write differently (allOf around a lone $ref, a const
    without its type) one way, so that the file does not depend on the version."""
    if isinstance(schema, list):
        return [_tidy(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    tidy = {key: _tidy(value) for key, value in schema.items()}
    for key_schema in tidy.get("properties", {}).values():
        key_schema.pop("title", None)
    lone = tidy.get("allOf")
    if isinstance(lone, list) and len(lone) == 1 and set(lone[0]) == {"$ref"}:
        del tidy["allOf"]
        tidy = {"$ref": lone[0]["$ref"], **tidy}
    if isinstance(tidy.get("const"), str):
        tidy.setdefault("type", "string")
    return tidy


def schema_text() -> str:
    return json.dumps(scenario_schema(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {__spec__.name if __spec__ else __name__}")
    parser.add_argument("--out", type=Path, default=SCHEMA_PATH)
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if the file differs, write nothing"
    )
    args = parser.parse_args(argv)
    text = schema_text()
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else None
        if current != text:
            print(f"{args.out}: out of date, regenerate it with `{REGENERATE}`", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text, encoding="utf-8")
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
