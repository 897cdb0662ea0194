"""Scenario files: YAML in, a validated `Scenario` out, or every problem with its line.

Each problem is reported as `FILE:LINE: KEY: expected ...` (../shared/DESIGN.md) and the
whole file is checked before anything starts, so one run of `qasm validate` lists them all.
What each key means, its range and its default: testbed/scenario/models.py.

Steps:
1. compose the YAML node tree and turn it into plain data plus a map from key path to line
   (("topology", "clients") -> 4; list items by index); a duplicate key is a problem;
2. expand `sweep:` into points: the cross product of its values, each written in place of
   its dotted key, where it keeps the line of its entry in the sweep block;
3. validate each point with the models (a problem outside the sweep block, the same at
   every point, is reported once);
4. turn each pydantic error into one line: KEY is its location as a dotted path (list
   indices dropped), LINE that of the deepest key on the path that the file has.
"""

from __future__ import annotations

import copy
import itertools
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, TypeAdapter, ValidationError

from testbed.scenario.models import Scenario, Section, SweepAxes

MAPPING_TAG, SEQUENCE_TAG = "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"
Location = tuple[str | int, ...]
Lines = dict[Location, int]
_SWEEP_AXES = TypeAdapter(SweepAxes)


class ScenarioError(ValueError):
    """The scenario is invalid; `problems` holds one `FILE:LINE: KEY: expected ...` each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def load_scenario(path: str | Path) -> Scenario:
    """Reads and validates a scenario file; raises ScenarioError listing every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScenarioError([f"{path}:1: (file): expected a readable UTF-8 file ({exc})"]) from exc
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        raise ScenarioError([f"{path}:{line}: (syntax): expected valid YAML ({exc})"]) from exc
    if root is None:
        raise ScenarioError([f"{path}:1: (top level): expected a mapping, the file is empty"])
    document = _Document(path, text)
    data = document.read(root)
    scenario = document.validate(data)
    if scenario is None or document.problems:
        # By line; a problem outside the sweep block repeats at every point: reported once.
        found = sorted(dict.fromkeys(document.problems), key=lambda problem: problem[0])
        raise ScenarioError([text for _, text in found])
    return scenario


class _Document:
    """One file: its data with the line of every key, and the problems found so far."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.text = text
        self.lines: Lines = {}
        self.problems: list[tuple[int, str]] = []  # (line, FILE:LINE: KEY: expected ...)
        self._constructor = yaml.constructor.SafeConstructor()
        self._open: set[int] = set()  # nodes being read: an alias to one of them recurses
        self._unreadable: list[Location] = []  # values read as None: no more problems there

    def unreadable(self, location: Location, line: int, expected: str) -> None:
        self.problem(location, line, expected)
        self._unreadable.append(location)

    def problem(self, location: Location, line: int, expected: str) -> None:
        key = ".".join(str(part) for part in location if isinstance(part, str)) or "(top level)"
        self.problems.append((line, f"{self.path}:{line}: {key}: {expected}"))

    # --- 1. YAML to data and lines ---------------------------------------------------------------

    def read(self, root: yaml.Node) -> Any:
        self.lines[()] = root.start_mark.line + 1
        return self._plain(root, ())

    def _plain(self, node: yaml.Node, location: Location) -> Any:
        if id(node) in self._open:
            line = node.start_mark.line + 1
            self.unreadable(location, line, "expected no alias to an enclosing node (recursion)")
            return None
        if isinstance(node, yaml.ScalarNode):
            try:
                return self._constructor.construct_object(node, deep=True)
            except yaml.YAMLError as exc:
                line = node.start_mark.line + 1
                why = getattr(exc, "problem", None) or exc
                self.unreadable(location, line, f"expected a plain YAML value ({why})")
                return None
        if node.tag not in (MAPPING_TAG, SEQUENCE_TAG):
            line = node.start_mark.line + 1
            self.unreadable(location, line, f"expected a plain YAML value (tag {node.tag})")
            return None
        self._open.add(id(node))
        try:
            if isinstance(node, yaml.SequenceNode):
                items = []
                for index, item in enumerate(node.value):
                    self.lines[(*location, index)] = item.start_mark.line + 1
                    items.append(self._plain(item, (*location, index)))
                return items
            mapping: dict[str, Any] = {}
            for key_node, value_node in node.value:
                line = key_node.start_mark.line + 1
                if not isinstance(key_node, yaml.ScalarNode):
                    self.problem(location, line, "expected a plain key, not a list or mapping")
                    continue
                key = str(key_node.value)
                if key in mapping:
                    self.problem((*location, key), line, "expected each key once (duplicate key)")
                    continue
                self.lines[(*location, key)] = line
                mapping[key] = self._plain(value_node, (*location, key))
            return mapping
        finally:
            self._open.discard(id(node))

    # --- 2. and 3. sweep points, validated -------------------------------------------------------

    def validate(self, data: Any) -> Scenario | None:
        block = data.get("sweep") if isinstance(data, dict) else None
        if block is None:
            return self._point(data, self.lines, data, {}, sweeping=False)
        try:
            axes = _SWEEP_AXES.validate_python(block)
        except ValidationError as exc:
            self._report(exc, data, self.lines, prefix=("sweep",))
            # The rest of the file still gets checked, without what the sweep would set.
            swept = [tuple(str(key).split(".")) for key in block] if isinstance(block, dict) else []
            rest = {key: value for key, value in data.items() if key != "sweep"}
            self._point(rest, self.lines, data, {}, sweeping=True, unless_under=swept)
            return None
        points = []
        for combination in itertools.product(*(range(len(values)) for values in axes.values())):
            point, lines, parameters = copy.deepcopy(data), dict(self.lines), {}
            for key, index in zip(axes, combination, strict=True):
                self._place(point, lines, key, index, axes[key][index])
                parameters[key] = copy.deepcopy(axes[key][index])
            points.append(self._point(point, lines, data, parameters, sweeping=True))
        if None in points:
            return None
        try:
            return points[0].with_points(points)
        except ValidationError as exc:
            self._report(exc, data, self.lines)
            return None

    def _place(self, point: dict, lines: Lines, key: str, index: int, value: Any) -> None:
        """Writes `value`, item `index` of sweep entry `key`, at its dotted path; the keys it
        writes or creates carry the lines of the sweep block."""
        *parents, last = key.split(".")
        entry = ("sweep", key)
        node = point
        for depth, name in enumerate(parents):
            if name not in node:
                node[name] = {}
                lines[tuple(parents[: depth + 1])] = self.lines[entry]
            node = node[name]
            if not isinstance(node, dict):
                expected = (
                    f"expected a path through mappings, {'.'.join(parents[: depth + 1])} is not one"
                )
                self.problem(entry, self.lines[entry], expected)
                return
        target = (*parents, last)
        for location in [loc for loc in lines if loc[: len(target)] == target]:
            del lines[location]
        source = (*entry, index)
        for location, line in self.lines.items():
            if location[: len(source)] == source:
                lines[(*target, *location[len(source) :])] = line
        node[last] = copy.deepcopy(value)

    def _point(
        self,
        data: Any,
        lines: Lines,
        raw: Any,
        parameters: dict,
        *,
        sweeping: bool,
        unless_under: Sequence[tuple[str, ...]] = (),
    ) -> Scenario | None:
        try:
            return Scenario.from_data(
                data,
                path=self.path,
                text=self.text,
                raw=raw,
                parameters=parameters,
                sweeping=sweeping,
            )
        except ValidationError as exc:
            self._report(exc, data, lines, unless_under=unless_under)
            return None

    # --- 4. pydantic errors to problems ----------------------------------------------------------

    def _report(
        self,
        exc: ValidationError,
        data: Any,
        lines: Lines,
        prefix: Location = (),
        unless_under: Sequence[tuple[str, ...]] = (),
    ) -> None:
        for error in exc.errors(include_url=False):
            where = (*prefix, *error["loc"])
            location = _in_data(where, data)
            location, expected = _expected(error, where, location, data)
            strings = tuple(part for part in location if isinstance(part, str))
            if any(_related(strings, swept) for swept in unless_under):
                continue  # set by a sweep entry that has problems of its own
            if any(location[: len(bad)] == bad for bad in self._unreadable):
                continue  # reported as unreadable
            self.problem(location, _line(location, lines), expected)


def _in_data(where: Location, data: Any) -> Location:
    """The part of pydantic's location that names keys and items of the file: without the
    tags of tagged unions; a missing key stays when it is the last part."""
    location: list[str | int] = []
    node, tagged = data, None
    for position, part in enumerate(where):
        if (
            isinstance(node, dict)
            and tagged is not node
            and node.get("name") == part
            and part in _tags(where[:position])
        ):
            tagged = node  # the tag, once, even when a key has its name (replicas: replicas)
            continue
        key = isinstance(node, dict) and part in node
        item = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if key or item:
            node = node[part]
        elif not (isinstance(node, dict) and position == len(where) - 1):
            continue
        location.append(part)
    return tuple(location)


def _line(location: Location, lines: Lines) -> int:
    """The line of the deepest key of `location` that the file has (else the top mapping's)."""
    for end in range(len(location), 0, -1):
        if location[:end] in lines:
            return lines[location[:end]]
    return lines[()]


def _related(location: tuple[str, ...], swept: tuple[str, ...]) -> bool:
    shorter = min(len(location), len(swept))
    return location[:shorter] == swept[:shorter]


# Messages for pydantic's own error types; the models' own problems ("scenario") already
# read `expected ...` (testbed/scenario/models.py).
MAPPING_ERRORS = ("model_type", "model_attributes_type", "dict_type")


def _expected(error: dict, where: Location, location: Location, data: Any):
    """(location, "expected ...") of one pydantic error."""
    kind = error["type"]
    if kind == "scenario":
        return location, error["msg"]
    if kind == "missing":
        return location, "expected this key (missing)"
    if kind == "extra_forbidden":
        return (
            location,
            f"unknown key, expected one of {', '.join(_section(where[:-1]).yaml_keys())}",
        )
    if kind in MAPPING_ERRORS:
        return location, "expected a mapping"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        # A tagged union (topology) whose `name` is missing or names no member.
        tag = error["ctx"]["discriminator"].strip("'")
        names = ", ".join(_tags(where))
        value = _value_at(location, data)
        if isinstance(value, dict) and tag in value:
            return (*location, tag), f"expected one of {names}, got {value[tag]!r}"
        return (*location, tag), f"expected this key (missing), one of {names}"
    return location, f"expected a valid value ({error['msg'][:1].lower()}{error['msg'][1:]})"


def _value_at(location: Location, data: Any) -> Any:
    for part in location:
        data = data[part]
    return data


def _models(annotation: Any) -> list[type[Section]]:
    """The section models a field's type holds (several for a tagged union)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in typing.get_args(annotation) for model in _models(arg)]


def _tag(model: type[Section]) -> str | None:
    field = model.model_fields.get("name")
    arguments = typing.get_args(field.annotation) if field else ()
    return arguments[0] if len(arguments) == 1 else None


def _candidates(where: Location) -> list[type[Section]]:
    """The models that can sit at pydantic's location `where` (tags select a member)."""
    candidates: list[type[Section]] = [Scenario]
    for part in where:
        tagged = [model for model in candidates if _tag(model) == part]
        if tagged:
            candidates = tagged
            continue
        fields = {
            field.alias or name: field
            for model in candidates
            for name, field in model.model_fields.items()
        }
        if part in fields:
            candidates = _models(fields[part].annotation) or candidates
    return candidates


def _section(where: Location) -> type[Section]:
    return _candidates(where)[0]


def _tags(where: Location) -> list[str]:
    return [tag for model in _candidates(where) if (tag := _tag(model)) is not None]
