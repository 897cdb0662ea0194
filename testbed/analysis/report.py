"""`qasm report RUN_DIR`: report.md, report.html (the same content) and PNG plots.

The report is built once as a list of blocks (headings, paragraphs, tables, images) and rendered
twice, to Markdown and to HTML with the standard library's `html.escape`, so the two cannot
drift apart. The summary is recomputed from records.jsonl (the stored summary.json may lag a
crash by one record), which is also why a partial run reports fine: it says so at the top.

Plots (matplotlib, Agg backend: no display) go to RUN_DIR/plots/:

- `goodput-around-migration.png`: per migration kind, goodput over time relative to the
  migration instant, one line per run coloured by variant. Goodput is the slope of the
  client's acknowledged-bytes samples (`progress`, every 20 ms) over 100 ms windows; the
  samples come from the record when it carries them, otherwise from the client's report in the
  run's artifacts directory. Runs without samples or without a migration are left out.
- `disruption.png`: disruption per run, per variant and kind; runs that lost the connection are
  counted under the axis instead of plotted (their disruption is undefined).
- `overhead.png`: every comparison with baseline (estimate and 95% interval) per variant; a
  comparison no variant has an estimate for (disruption when nothing migrated) gets no panel,
  and with none left there is no figure.
- `matrix.png`: the survival/policy matrix as a coloured table, when the summary has one.

Every output is written to a temporary name and renamed, so an interrupted report never leaves
a half-written file in place of a good one.

Failures are shown grouped by reason with counts (`summary.failure_reasons`), never one line per
connection: a run of 1,000 connections that fail alike is one row with `1000× reason`.

metadata.json's `link_emulation` (`EmulatedLinks.record`) becomes a table with a row per link,
links alike sharing one: the conditions asked, how each parameter is emulated, and the
fidelity measured for those conditions at start.

Controller CPU is what the runner records: the controller process's CPU time from the moment
every switch connected until the clients finished (/proc/PID/stat, in 10 ms clock ticks; its
start-up, 0.4-0.6 s of Python imports and OpenFlow handshakes, is recorded apart as
`controller_cpu_startup_s`), divided by the run's connections.
"""

from __future__ import annotations

import html
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from testbed.analysis.matrix import point_label, row_label
from testbed.analysis.summary import (
    COMPARISONS,
    COUNTERS,
    CURVE_METRICS,
    STATE_COMPARISONS,
    failure_text,
    parameters_label,
    summarize,
)
from testbed.records.rundir import RunDir

PLOTS_DIR = "plots"
GOODPUT_WINDOW_S = 0.1
GOODPUT_SPAN_S = (-1.0, 2.0)  # seconds around the migration instant
OUTCOME_COLOURS = {
    "refused": "#b3cde3",  # blue: the policy turned the connection away
    "survives": "#b7e1b0",  # green
    "breaks": "#f4a6a6",  # red
    "leaks": "#f8c98b",  # orange
    "survives-policy-lost": "#f8c98b",
    "moved": "#f8e38b",  # yellow: survived, but on another backend
}
UNKNOWN_COLOUR = "#dddddd"
VARIANT_ORDER = ("baseline", "tuple", "cid", "qasm", "qasm-ahead", "qasm-pull", "quic-lb")
# The runner's controller CPU (see the module docstring) and the comparison made of it.
CPU_LABEL = "controller CPU s/conn (after start-up)"
CPU_NOTE = (
    "Controller CPU is the controller process's CPU time from the switches' connection to the "
    "clients' end, divided by the run's connections (10 ms clock ticks: with one connection "
    "a run's figure is a few ticks); `controller_cpu_ratio` compares these values."
)
COMPARISON_LABELS: dict[str, str] = {}
REPORT_FAILURE_REASONS = 5  # most frequent reasons in a result row
REPORT_FAILURE_WIDTH = 300  # characters of reason text in a result row, shared among them


@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    # per row, per cell: a background colour (HTML) or None
    colours: tuple[tuple[str | None, ...], ...] | None = None


@dataclass(frozen=True)
class Image:
    path: str  # relative to RUN_DIR
    alt: str


def _fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _comparison_text(comparison: dict) -> str:
    if comparison.get("estimate") is None:
        return f"- ({comparison.get('note', '')})"
    text = f"{comparison['estimate']:.3f}"
    if comparison.get("ci95"):
        low, high = comparison["ci95"]
        text += f" [{low:.3f}, {high:.3f}]"
    note = comparison.get("note", "")
    return f"{text} {note}" if note == "no difference detectable" else text


def _variant_key(variant: str):
    return (VARIANT_ORDER.index(variant) if variant in VARIANT_ORDER else 99, variant)


def _results_table(summary: dict) -> Table:
    rows = []
    for variant in sorted(summary["by_migration"], key=_variant_key):
        for kind, group in summary["by_migration"][variant].items():
            rows.append(
                (
                    variant,
                    kind,
                    str(group["runs"]),
                    str(group["completed"]),
                    str(group["verified"]),
                    _fmt(group["median_handshake_ms"], 1),
                    _fmt(group["median_goodput_mbps"], 1),
                    _fmt(group["median_disruption_ms"], 1),
                    _fmt(group.get("median_controller_cpu_s"), 3),
                    _failures_text(group),
                )
            )
    header = (
        "variant", "migration", "runs", "completed", "verified", "handshake ms",
        "goodput Mbit/s", "disruption ms", CPU_LABEL, "failures",
    )  # fmt: skip
    return Table(header, tuple(rows))


def _failures_text(group: dict) -> str:
    """Grouped reasons with counts; a summary from before `failure_reasons` lists its texts."""
    if "failure_reasons" not in group:
        return "; ".join(group.get("failures") or [])
    return failure_text(
        group["failure_reasons"], max_reasons=REPORT_FAILURE_REASONS, width=REPORT_FAILURE_WIDTH
    )


def _comparison_table(summary: dict) -> Table | None:
    rows = []
    for variant in sorted(summary["comparison_with_baseline"], key=_variant_key):
        per_kind = [("all kinds", summary["comparison_with_baseline"][variant])]
        per_kind += sorted(summary.get("comparison_by_migration", {}).get(variant, {}).items())
        for kind, comparison in per_kind:
            rows.append(
                (variant, kind)
                + tuple(_comparison_text(comparison[name]) for name in COMPARISONS)
                + (f"{comparison['completed_fraction']:.2f}",)
            )
    if not rows:
        return None
    labels = tuple(COMPARISON_LABELS.get(name, name) for name in COMPARISONS)
    header = ("variant", "migration") + labels + ("completed fraction",)
    return Table(header, tuple(rows))


def _counters_table(summary: dict) -> Table | None:
    rows = []
    for variant in sorted(summary["by_migration"], key=_variant_key):
        for kind, group in summary["by_migration"][variant].items():
            for name in COUNTERS:
                values = group.get("counters", {}).get(name)
                if values is None:
                    continue
                rows.append(
                    (variant, kind, name)
                    + tuple(
                        _fmt_exact(values[key])
                        for key in (
                            "total",
                            "per_connection",
                            "per_migration",
                            "surviving_per_connection",
                        )
                    )
                )
    if not rows:
        return None
    header = (
        "variant", "migration", "counter", "total", "per connection", "per migration",
        "per surviving connection",
    )  # fmt: skip
    return Table(header, tuple(rows))


def _matrix_table(matrix: list[dict]) -> Table:
    rows, colours = [], []
    for cell in matrix:
        rows.append(
            (
                row_label(cell["function"], cell.get("point", "")),
                cell["variant"],
                cell["migration"],
                f"{cell['verified']}/{cell['runs']}",
                cell["outcome"],
                cell.get("detail", ""),
            )
        )
        colour = OUTCOME_COLOURS.get(cell["outcome"], UNKNOWN_COLOUR)
        colours.append((None, None, None, None, colour, None))
    header = ("function (point)", "variant", "migration", "verified/runs", "outcome", "detail")
    return Table(header, tuple(rows), tuple(colours))


def _interval_text(cell: dict, digits: int = 1) -> str:
    if cell["median"] is None:
        return "-"
    text = f"{cell['median']:.{digits}f}"
    if cell["ci95"]:
        text += f" [{cell['ci95'][0]:.{digits}f}, {cell['ci95'][1]:.{digits}f}]"
    return text


def _curve_table(rows: list[dict], key: str) -> Table:
    header = (
        "point", "variant", "migration", key, "verified/runs", "goodput Mbit/s",
        "handshake ms", "disruption ms", "NAT mappings at end",
    )  # fmt: skip
    return Table(
        header,
        tuple(
            (
                row["point"] or "-",
                row["variant"],
                row["migration"],
                _fmt(row[key]),
                f"{row['verified']}/{row['runs']}",
                _interval_text(row["goodput_mbps"]),
                _interval_text(row["handshake_ms"]),
                _interval_text(row["disruption_ms"]),
                _fmt(row["nat_mappings"], 1),
            )  # fmt: skip
            for row in rows
        ),
    )


# --- link emulation (metadata.json's link_emulation, from EmulatedLinks.record) ---------------

LINK_PARAMETERS = {
    "bw_mbit": "bandwidth",
    "delay_ms": "delay",
    "jitter_ms": "jitter",
    "loss_pct": "loss",
}
IMPAIRMENTS = ("delay_ms", "jitter_ms", "loss_pct")
DIRECTIONS = (("egress", "forward"), ("ingress", "backward"))  # from / towards the link's host
LINKS_NAMED = 3  # links alike beyond this many are counted, not listed


def _emulations(link_emulation) -> list[dict]:
    """Every emulation of the run: the first, then those a sweep over topology added."""
    if not isinstance(link_emulation, dict) or not link_emulation:
        return []
    first = {key: value for key, value in link_emulation.items() if key != "emulations"}
    others = link_emulation.get("emulations") or []
    return [first] + [entry for entry in others if isinstance(entry, dict)]


def _impaired(conditions: dict) -> bool:
    return any(conditions.get(name) for name in IMPAIRMENTS)


def _datapath_fact(metadata: dict) -> str:
    idle_ms = metadata.get("ovs_datapath_max_idle_ms")
    idle = f", idle flows cached {idle_ms} ms" if idle_ms is not None else ""
    return f"{metadata.get('ovs_datapath')}{idle}"


def link_emulation_fact(link_emulation) -> str:
    """One line for the facts table: the method, bandwidth shaping, whether fidelity was
    measured; the per-link detail is `link_emulation_table`."""
    if link_emulation is None:
        return "- (not recorded: no emulation was started)"
    if not isinstance(link_emulation, dict):
        return str(link_emulation)
    entries = _emulations(link_emulation)
    if not any(entry.get("links") for entry in entries):
        return "none recorded"
    methods = sorted({str(entry["method"]) for entry in entries if entry.get("method")})
    parts = [f"delay/loss method {', '.join(methods)}" if methods else "no delay/loss method"]
    if link_emulation.get("bandwidth"):
        parts.append(f"bandwidth by {link_emulation['bandwidth']}")
    impaired = any(
        _impaired(link.get("conditions") or {})
        for entry in entries
        for link in (entry.get("links") or {}).values()
    )
    cases = sum(len(entry.get("fidelity") or []) for entry in entries)
    if cases:
        seconds = sum(entry.get("fidelity_seconds") or 0 for entry in entries)
        parts.append(f"fidelity measured for {cases} condition(s) in {seconds:g} s")
    elif impaired:
        parts.append("fidelity not measured")
    else:
        parts.append("no link asks for delay, jitter or loss")
    links = sum(len(entry.get("links") or {}) for entry in entries)
    parts.append(f"{links} link(s), per link below")
    return "; ".join(parts)


def _asked_text(conditions: dict) -> str:
    bandwidth = conditions.get("bw_mbit")
    parts = [f"{bandwidth:g} Mbit/s" if bandwidth else "unshaped"]
    if conditions.get("delay_ms"):
        jitter = conditions.get("jitter_ms")
        parts.append(
            f"delay {conditions['delay_ms']:g}" + (f" ± {jitter:g}" if jitter else "") + " ms"
        )
    if conditions.get("loss_pct"):
        parts.append(f"loss {conditions['loss_pct']:g} %")
    if not _impaired(conditions):
        parts.append("no delay or loss")
    elif conditions.get("limit_packets"):
        parts.append(f"at most {conditions['limit_packets']} packets held")
    return ", ".join(parts)


def _emulated_by_text(emulated_by: dict) -> str:
    """`delay: NFQUEUE delay line ...; jitter: as delay, uniform ±, FIFO; loss: ...`: a
    parameter emulated like an earlier one (jitter by the delay's mechanism) says so."""
    parts, seen = [], {}
    for name, label in LINK_PARAMETERS.items():
        how = emulated_by.get(name)
        if how in (None, "none"):
            continue
        for earlier, text in seen.items():
            if how == text or how.startswith(text + ", "):
                how = f"as {earlier}{how[len(text) :]}"
                break
        else:
            seen[label] = how
        parts.append(f"{label}: {how}")
    return "; ".join(parts) or "nothing to emulate"


def _fidelity_of(conditions: dict, fidelity: list[dict]) -> dict | None:
    """The measurement of these conditions: measured once per distinct delay, jitter, loss
    and limit (bandwidth aside), so links asking the same share one."""
    keys = (*IMPAIRMENTS, "limit_packets")
    wanted = tuple(conditions.get(key) for key in keys)
    for case in fidelity:
        asked = case.get("asked") or {}
        if tuple(asked.get(key) for key in keys) == wanted:
            return case
    return None


def _number(value, digits: int) -> str:
    if not isinstance(value, int | float) or not math.isfinite(value):
        return "-"  # null or NaN: nothing arrived to measure
    return f"{value:.{digits}f}"


def _measured_text(case: dict | None) -> str:
    if case is None:
        return "not measured"
    parts = []
    for label, key in DIRECTIONS:
        direction = case.get(key) or {}
        loss = f"loss {_number(direction.get('loss_pct'), 1)} %"
        interval = direction.get("loss_ci_pct")
        if interval:
            loss += f" [{_number(interval[0], 1)}, {_number(interval[1], 1)}]"
        parts.append(
            f"{label} delay {_number(direction.get('delay_ms'), 2)}"
            f" ± {_number(direction.get('jitter_ms'), 2)} ms, {loss}"
        )
    probes = case.get("probes")
    return "; ".join(parts) + (f" ({probes} probes)" if probes else "")


def _links_text(names: list[str]) -> str:
    if len(names) <= LINKS_NAMED:
        return ", ".join(names)
    return f"{len(names)} links: {', '.join(names[:LINKS_NAMED])}, …"


def link_emulation_table(link_emulation) -> Table | None:
    """One row per link (per emulation, in a sweep over topology): asked conditions, how
    each parameter is emulated, and the fidelity measured for them; links alike in all three
    share a row (a hundred clients' wifi links are one), so the table stays short. None
    without links."""
    entries = _emulations(link_emulation)
    several = len(entries) > 1
    rows = []
    for entry in entries:
        point = parameters_label(entry.get("parameters") or {}) or "-"
        alike: dict[tuple[str, str, str], list[str]] = {}
        for name, link in (entry.get("links") or {}).items():
            conditions = link.get("conditions") or {}
            measured = (
                _measured_text(_fidelity_of(conditions, entry.get("fidelity") or []))
                if _impaired(conditions)
                else "-"
            )
            key = (
                _asked_text(conditions),
                _emulated_by_text(link.get("emulated_by") or {}),
                measured,
            )
            alike.setdefault(key, []).append(str(link.get("interface") or name))
        for key, names in alike.items():
            rows.append(((point,) if several else ()) + (_links_text(names),) + key)
    if not rows:
        return None
    header = ("link", "asked", "emulated by", "measured at start")
    return Table((("emulation",) if several else ()) + header, tuple(rows))


def _rate_table(rows: list[dict]) -> Table:
    header = (
        "point", "variant", "migration", "verified/runs", "achieved Hz", "goodput ratio",
        "migration packet-ins", "NAT mappings peak", "NAT mappings at end",
        "agent messages/migration",
    )  # fmt: skip
    return Table(
        header,
        tuple(
            (
                row["point"] or "-",
                row["variant"],
                row["migration"],
                f"{row['verified']}/{row['runs']}",
                _fmt(row["achieved_hz"], 1),
                _comparison_text(row["goodput_ratio"]) if row["goodput_ratio"] else "-",
                _fmt(row["migration_packet_ins"], 1),
                _fmt(row["nat_mappings_peak"]),
                _fmt(row["nat_mappings_end"], 1),
                _fmt(row["agent_messages_per_migration"], 2),
            )  # fmt: skip
            for row in rows
        ),
    )


def _state_table(rows: list[dict]) -> Table:
    header = (
        "point", "variant", "migration", "goodput ratio", "handshake ratio",
        "disruption ms difference", "completed: redis / memory",
    )  # fmt: skip
    return Table(
        header,
        tuple(
            (
                row["point"] or "-",
                row["variant"],
                row["migration"],
                *(_comparison_text(row[name]) for name in STATE_COMPARISONS),
                f"{row['redis_completed_fraction']:.2f} / {row['memory_completed_fraction']:.2f}",
            )
            for row in rows
        ),
    )


def _summary_blocks(summary: dict, level: int) -> list:
    blocks: list = [
        Heading(level, "Results per variant and migration kind"),
        _results_table(summary),
        Paragraph(CPU_NOTE),
    ]
    comparison = _comparison_table(summary)
    blocks.append(Heading(level, "Against baseline"))
    if comparison is None:
        blocks.append(Paragraph("No baseline runs in this run directory: nothing to compare."))
    else:
        blocks.append(
            Paragraph(
                "Median ratio or difference with its seeded 95% bootstrap interval; "
                '"no difference detectable" when the interval contains 1 (ratios) or 0 '
                "(differences). No interval below 2 samples per side."
            )
        )
        blocks.append(comparison)
    counters = _counters_table(summary)
    if counters is not None:
        blocks += [
            Heading(level, "Deterministic counters (exact)"),
            Paragraph(
                "Counts, not estimates. Per surviving connection is what `qasm check` gates: a "
                "lost connection retransmits until its idle timeout, so its counts are timing."
            ),
            counters,
        ]
    return blocks


def build_blocks(run: RunDir, summary: dict, images: list[Image]) -> list:
    metadata = run.metadata
    blocks: list = [Heading(1, f"QASM run report: {run.scenario_name}")]
    if run.warnings:
        blocks.append(Paragraph("**Partial or damaged run:** " + " ".join(run.warnings)))
    versions = metadata.get("versions") or {}
    sha = str(metadata.get("scenario_sha256"))[:12]
    dirty = " (dirty)" if metadata.get("git_dirty") else ""
    facts = (
        ("run directory", str(run.path)),
        ("scenario", f"{metadata.get('scenario')} (sha256 {sha})"),
        ("status", run.status),
        ("records", str(len(run.records))),
        ("seed", _fmt(metadata.get("seed"))),
        ("git commit", f"{metadata.get('git_commit')}{dirty}"),
        ("started / ended", f"{metadata.get('started_at')} / {metadata.get('ended_at')}"),
        ("versions", ", ".join(f"{k} {v}" for k, v in versions.items())),
        ("datapath", _datapath_fact(metadata)),
        ("link emulation", link_emulation_fact(metadata.get("link_emulation"))),
    )
    blocks.append(Table(("", ""), facts))
    links = link_emulation_table(metadata.get("link_emulation"))
    if links is not None:
        blocks += [
            Heading(2, "Link emulation"),
            Paragraph(
                "Per link: the conditions asked, how each is emulated, and what was measured "
                "on a twin veth pair at start (mean one-way delay over the unimpaired pair's, "
                "jitter as √3·σ, loss with its 95% interval; egress = from the link's host). "
                "Bandwidth is shaped, not measured."
            ),
            links,
        ]
    if not run.records:
        blocks.append(Paragraph("No finished records yet: nothing to summarise."))
        return blocks
    if summary.get("points"):
        for point in summary["points"]:
            blocks.append(Heading(2, f"Sweep point {point['label']}"))
            blocks += _summary_blocks(point["summary"], 3)
    else:
        blocks += _summary_blocks(summary, 2)
    for key, rows in (summary.get("curves") or {}).items():
        blocks += [
            Heading(2, f"Against {key}"),
            Paragraph(
                "Medians over the runs of each cell with their seeded 95% bootstrap interval; "
                "goodput and disruption of the connections that survived."
            ),
            _curve_table(rows, key),
        ]
    if summary.get("rates"):
        blocks += [
            Heading(2, "Against the achieved migration rate"),
            Paragraph(
                "Per sweep point, variant and kind: the median migration rate the clients "
                "achieved, the goodput ratio to baseline at the same point with its 95% "
                "interval, the median migration packet-ins, the most NAT mappings a hop held "
                "at once and at the end, and the agent's messages per migration."
            ),
            _rate_table(summary["rates"]),
        ]
    if summary.get("state_comparison"):
        blocks += [
            Heading(2, "Redis against memory"),
            Paragraph(
                "What keeping connection state in Redis costs: per variant, kind and the other "
                "sweep values, the redis runs against the memory runs (median ratio or "
                "difference with its seeded 95% bootstrap interval; goodput and disruption of "
                "the connections that survived), and the fraction that completed in each."
            ),
            _state_table(summary["state_comparison"]),
        ]
    if summary.get("matrix"):
        blocks += [
            Heading(2, "Survival/policy matrix"),
            Paragraph("Green survives, red breaks, orange leaks or lost its policy, yellow moved."),
            _matrix_table(summary["matrix"]),
        ]
    if images:
        blocks.append(Heading(2, "Plots"))
        blocks += images
    return blocks


# --- rendering -----------------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: list) -> str:
    out: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"{'#' * block.level} {block.text}\n")
        elif isinstance(block, Paragraph):
            out.append(f"{block.text}\n")
        elif isinstance(block, Table):
            out.append("| " + " | ".join(_md_cell(h) for h in block.header) + " |")
            out.append("|" + "|".join(" --- " for _ in block.header) + "|")
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in block.rows]
            out.append("")
        elif isinstance(block, Image):
            out.append(f"![{block.alt}]({block.path})\n")
    return "\n".join(out).rstrip() + "\n"


def _html_inline(text: str) -> str:
    """Escapes, then turns the Markdown **bold** the blocks use into <strong>."""
    escaped = html.escape(text)
    parts = escaped.split("**")
    return "".join(f"<strong>{p}</strong>" if i % 2 else p for i, p in enumerate(parts))


def render_html(blocks: list, title: str) -> str:
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:80em;margin:1em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:0.5em 0}"
        "td,th{border:1px solid #999;padding:0.2em 0.5em;text-align:left;vertical-align:top}"
        "img{max-width:100%}</style>",
        "</head><body>",
    ]
    for block in blocks:
        if isinstance(block, Heading):
            out.append(f"<h{block.level}>{html.escape(block.text)}</h{block.level}>")
        elif isinstance(block, Paragraph):
            out.append(f"<p>{_html_inline(block.text)}</p>")
        elif isinstance(block, Table):
            out.append("<table>")
            if any(block.header):
                out.append(
                    "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in block.header) + "</tr>"
                )
            for index, row in enumerate(block.rows):
                colours = block.colours[index] if block.colours else (None,) * len(row)
                cells = [
                    f'<td style="background:{colour}">' if colour else "<td>" for colour in colours
                ]
                out.append(
                    "<tr>"
                    + "".join(f"{c}{html.escape(t)}</td>" for c, t in zip(cells, row, strict=True))
                    + "</tr>"
                )
            out.append("</table>")
        elif isinstance(block, Image):
            out.append(
                f'<p><img src="{html.escape(block.path)}" alt="{html.escape(block.alt)}"></p>'
            )
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _write_atomically(path: Path, data: str | bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    mode = "wb" if isinstance(data, bytes) else "w"
    with open(temporary, mode, **({} if isinstance(data, bytes) else {"encoding": "utf-8"})) as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    temporary.replace(path)


# --- plots ---------------------------------------------------------------------------------------


def progress_of(run: RunDir, record: dict) -> list | None:
    """The record's progress samples, else those of the client's report in its artifacts."""
    if record.get("progress"):
        return record["progress"]
    if not record.get("artifacts"):
        return None
    report_path = run.path / record["artifacts"] / f"client-{record['client']}.json"
    try:
        return json.loads(report_path.read_text(encoding="utf-8")).get("progress") or None
    except (OSError, ValueError, AttributeError):
        return None


def goodput_series(progress: list, at: float) -> tuple[list[float], list[float]]:
    """(seconds since the migration, Mbit/s) from [time, acknowledged bytes] samples."""
    times, rates = [], []
    start = 0
    for end in range(1, len(progress)):
        while progress[end][0] - progress[start][0] > GOODPUT_WINDOW_S and start < end - 1:
            start += 1
        span = progress[end][0] - progress[start][0]
        if span <= 0:
            continue
        offset = progress[end][0] - at
        if GOODPUT_SPAN_S[0] <= offset <= GOODPUT_SPAN_S[1]:
            times.append(offset)
            rates.append((progress[end][1] - progress[start][1]) * 8 / span / 1e6)
    return times, rates


def _colours(variants) -> dict[str, str]:
    palette = ("#1f77b4", "#d62728", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b")
    return {v: palette[i % len(palette)] for i, v in enumerate(sorted(variants, key=_variant_key))}


def plot_all(run: RunDir, summary: dict, plots_dir: Path) -> list[Image]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots_dir.mkdir(exist_ok=True)
    images: list[Image] = []
    records = run.records
    colours = _colours({r["variant"] for r in records})

    def save(figure, name: str, alt: str) -> None:
        temporary = plots_dir / f".{name}.tmp.png"
        figure.savefig(temporary, dpi=100, bbox_inches="tight")
        plt.close(figure)
        temporary.replace(plots_dir / name)
        images.append(Image(f"{PLOTS_DIR}/{name}", alt))

    kinds = sorted({str(r["migration"]) for r in records if r.get("migration")})
    series = []
    for record in records:
        detail = record.get("migration_detail")
        progress = progress_of(run, record)
        if detail and progress and detail.get("at") is not None:
            times, rates = goodput_series(progress, detail["at"])
            if times:
                series.append((record, times, rates))
    if series and kinds:
        # One row per point (functions and sweep values), so curves of different
        # experiments are never drawn over each other.
        points = sorted({point_label(record) for record, _, _ in series})
        figure, axes = plt.subplots(
            len(points), len(kinds), figsize=(6 * len(kinds), 3.5 * len(points)), squeeze=False
        )
        for row, point in zip(axes, points, strict=True):
            for axis, kind in zip(row, kinds, strict=True):
                seen = set()
                for record, times, rates in series:
                    if str(record["migration"]) != kind or point_label(record) != point:
                        continue
                    label = None if record["variant"] in seen else record["variant"]
                    seen.add(record["variant"])
                    colour = colours[record["variant"]]
                    axis.plot(times, rates, color=colour, alpha=0.7, label=label)
                axis.axvline(0, color="black", linestyle="--", linewidth=1)
                title = f"{point}: {kind}" if len(points) > 1 else kind
                axis.set(title=title, xlabel="seconds since migration", ylabel="goodput Mbit/s")
                if seen:
                    axis.legend()
        figure.tight_layout()
        save(figure, "goodput-around-migration.png", "goodput over time around the migration")

    cells = [
        (variant, kind, group)
        for variant in sorted(summary["by_migration"], key=_variant_key)
        for kind, group in summary["by_migration"][variant].items()
        if kind != "None"
    ]
    if cells:
        figure, axis = plt.subplots(figsize=(max(6, 1.2 * len(cells)), 4))
        labels = []
        for position, (variant, kind, group) in enumerate(cells):
            values = [
                r["disruption_ms"]
                for r in records
                if r["variant"] == variant
                and str(r["migration"]) == kind
                and r["disruption_ms"] is not None
            ]
            axis.scatter([position] * len(values), values, color=colours[variant], zorder=3)
            if values:
                axis.hlines(sorted(values)[len(values) // 2], position - 0.3, position + 0.3,
                            color=colours[variant])  # fmt: skip
            lost = group["runs"] - group["completed"]
            labels.append(f"{variant}\n{kind}" + (f"\n{lost} lost" if lost else ""))
        axis.set_xticks(range(len(cells)), labels)
        axis.set(ylabel="disruption ms", title="disruption per run (bar: median)")
        axis.grid(axis="y", alpha=0.3)
        save(figure, "disruption.png", "disruption per variant and migration kind")

    compared = summary.get("comparison_with_baseline", {})
    names = overhead_metrics(compared)
    if names:
        figure, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 4), squeeze=False)
        variants = sorted(compared, key=_variant_key)
        for axis, name in zip(axes[0], names, strict=True):
            neutral = 1.0 if COMPARISONS[name][1] == "ratio" else 0.0
            for position, variant in enumerate(variants):
                comparison = compared[variant][name]
                if comparison["estimate"] is None:
                    axis.text(position, neutral, "n/a", ha="center")
                    continue
                error = None
                if comparison["ci95"]:
                    low, high = comparison["ci95"]
                    error = [[comparison["estimate"] - low], [high - comparison["estimate"]]]
                axis.bar(position, comparison["estimate"] - neutral, bottom=neutral,
                         color=colours[variant], yerr=error, capsize=6)  # fmt: skip
            axis.axhline(neutral, color="black", linewidth=1)
            axis.set_xticks(range(len(variants)), variants)
            axis.set_title(COMPARISON_LABELS.get(name, name).replace("_", " "))
        figure.suptitle("against baseline (95% bootstrap interval)")
        save(figure, "overhead.png", "overhead against baseline with confidence intervals")

    for key, rows in (summary.get("curves") or {}).items():
        panels = sorted({(row["point"], row["migration"]) for row in rows})
        figure, axes = plt.subplots(
            len(panels), len(CURVE_METRICS), figsize=(5 * len(CURVE_METRICS), 3.4 * len(panels)),
            squeeze=False,
        )  # fmt: skip
        for axes_row, (point, kind) in zip(axes, panels, strict=True):
            for axis, metric in zip(axes_row, CURVE_METRICS, strict=True):
                for variant in sorted({r["variant"] for r in rows}, key=_variant_key):
                    line = [
                        r for r in rows
                        if (r["point"], r["migration"], r["variant"]) == (point, kind, variant)
                        and r[metric]["median"] is not None
                    ]  # fmt: skip
                    if not line:
                        continue
                    xs = [r[key] for r in line]
                    ys = [r[metric]["median"] for r in line]
                    errors = [
                        [
                            y - (r[metric]["ci95"] or [y, y])[0]
                            for r, y in zip(line, ys, strict=True)
                        ],
                        [
                            (r[metric]["ci95"] or [y, y])[1] - y
                            for r, y in zip(line, ys, strict=True)
                        ],
                    ]
                    axis.errorbar(xs, ys, yerr=errors, label=variant, color=colours[variant],
                                  marker="o", capsize=3)  # fmt: skip
                axis.set(xlabel=key, ylabel=metric.replace("_", " "),
                         title=f"{point + ': ' if point else ''}{kind}")  # fmt: skip
                axis.grid(alpha=0.3)
                if axis.get_legend_handles_labels()[0]:
                    axis.legend(fontsize=8)
        figure.tight_layout()
        save(figure, f"against-{key}.png", f"goodput, handshake and disruption against {key}")

    rates = summary.get("rates") or []
    if rates:
        panels = (
            ("goodput_ratio", "goodput ratio to baseline"),
            ("migration_packet_ins", "migration packet-ins"),
            ("nat_mappings_peak", "NAT mappings held at once (peak)"),
        )
        figure, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
        lines = sorted(
            {(r["variant"], r["migration"]) for r in rates},
            key=lambda k: (_variant_key(k[0]), k[1]),
        )
        for axis, (field, label) in zip(axes[0], panels, strict=True):
            for variant, kind in lines:
                line = sorted(
                    (r for r in rates if (r["variant"], r["migration"]) == (variant, kind)),
                    key=lambda r: r["achieved_hz"],
                )
                xs, ys = [], []
                for row in line:
                    value = row[field]
                    if isinstance(value, dict):
                        value = value.get("estimate")
                    if value is not None:
                        xs.append(row["achieved_hz"])
                        ys.append(value)
                if xs:
                    style = "-" if kind == "nat-rebind" else "--"
                    axis.plot(xs, ys, style, marker="o", color=colours[variant],
                              label=f"{variant} {kind}")  # fmt: skip
            if field == "goodput_ratio":
                axis.axhline(0.95, color="grey", linestyle=":", linewidth=1)
            axis.set_xscale("log")
            axis.set(xlabel="achieved migrations per second", ylabel=label)
            axis.grid(alpha=0.3)
            if axis.get_legend_handles_labels()[0]:
                axis.legend(fontsize=7)
        figure.tight_layout()
        alt = "goodput ratio, migration packet-ins and NAT mappings against the achieved rate"
        save(figure, "against-migration-rate.png", alt)

    matrix = summary.get("matrix")
    if matrix:
        # Laid out like the printed matrix: a row per (function, variant), a column per kind.
        matrix_kinds = sorted({cell["migration"] for cell in matrix})
        grid: dict[tuple[str, str], dict[str, dict]] = {}
        for cell in matrix:
            function = row_label(cell["function"], cell.get("point", ""))
            grid.setdefault((function, cell["variant"]), {})[cell["migration"]] = cell
        shown, cell_colours = [], []
        for (function, variant), by_kind in grid.items():
            cells_of_row = [by_kind.get(kind) for kind in matrix_kinds]
            shown.append([function, variant] + [_matrix_entry(c) for c in cells_of_row])
            cell_colours.append(["white", "white"] + [_outcome_colour(c) for c in cells_of_row])
        figure, axis = plt.subplots(figsize=(3 + 2.2 * len(matrix_kinds), 0.32 * len(grid) + 0.8))
        axis.axis("off")
        drawn = axis.table(
            cellText=shown, colLabels=["function", "variant", *matrix_kinds],
            cellColours=cell_colours, bbox=[0, 0, 1, 1],
        )  # fmt: skip
        drawn.auto_set_font_size(False)
        drawn.set_fontsize(9)
        axis.set_title("survival/policy matrix (verified/runs)")
        save(figure, "matrix.png", "survival/policy matrix")
    return images


def overhead_metrics(compared: dict) -> list[str]:
    """The comparisons `overhead.png` draws: those with an estimate for some variant (no
    disruption is estimated when nothing migrated, and a panel of "n/a" says nothing)."""
    return [
        name
        for name in COMPARISONS
        if any(comparison[name]["estimate"] is not None for comparison in compared.values())
    ]


def _matrix_entry(cell: dict | None) -> str:
    return f"{cell['outcome']} ({cell['verified']}/{cell['runs']})" if cell else "-"


def _outcome_colour(cell: dict | None) -> str:
    return OUTCOME_COLOURS.get(cell["outcome"], UNKNOWN_COLOUR) if cell else "white"


def write_report(run: RunDir, plots: bool = True) -> tuple[Path, Path]:
    """Writes report.md, report.html and the plots into the run directory."""
    summary = summarize(run.records, seed=run.seed) if run.records else {}
    images = plot_all(run, summary, run.path / PLOTS_DIR) if plots and run.records else []
    blocks = build_blocks(run, summary, images)
    markdown_path, html_path = run.path / "report.md", run.path / "report.html"
    _write_atomically(markdown_path, render_markdown(blocks))
    _write_atomically(html_path, render_html(blocks, f"QASM run report: {run.scenario_name}"))
    return markdown_path, html_path


def _fmt_exact(value) -> str:
    """Counters: integers as they are, means to 6 significant digits (never rounded to 2)."""
    if value is None:
        return "-"
    return f"{value:.6g}" if isinstance(value, float) else str(value)
