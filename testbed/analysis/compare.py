"""`qasm compare RUN_A RUN_B`: what changed between two runs, metric by metric (pure).

Both summaries are recomputed from records and flattened into the metric names of
testbed/regression.py, absolute medians included (they are fine to look at side by side, just
not to gate on). Counters and survival fractions print exactly with their difference;
comparisons print estimate [95% interval] and their change; a metric only one run has prints
`absent`. Runs of different scenarios are refused (pyperformance's rule: no comparison across
mismatched setups); a different scenario hash (the same file, edited) only warns.
"""

from __future__ import annotations

from testbed.analysis.regression import flatten, format_value, metric_type, value_of


def change(old: dict | None, new: dict | None, name: str) -> str:
    a = value_of(old) if old is not None else None
    b = value_of(new) if new is not None else None
    if old is None or new is None:
        return "only in " + ("B" if old is None else "A")
    if a is None or b is None:
        return "" if a == b else "changed"
    if a == b:
        return "="
    delta = b - a
    text = f"{delta:+.4g}"
    if metric_type(name) not in ("counter", "survival") and a != 0:
        text += f" ({delta / abs(a):+.1%})"
    return text


def compare_rows(summary_a: dict, summary_b: dict) -> list[tuple[str, str, str, str]]:
    """(metric, old, new, change) for every metric of either summary, sorted by name."""
    a, b = flatten(summary_a), flatten(summary_b)
    return [
        (
            name,
            format_value(a.get(name)),
            format_value(b.get(name)),
            change(a.get(name), b.get(name), name),
        )
        for name in sorted(set(a) | set(b))
    ]


def format_rows(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    table = [header, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in table
    )
