"""Turns one run's artifacts into records (pure: dicts in, dicts out).

Inputs per run: each client's JSON report, the server's event log and the controller's
decision log. Both apps stamp events with `time.monotonic()`, which is one system-wide clock
for every network namespace on the machine, so client and server times are comparable.

Definitions (../shared/DESIGN.md):
- goodput: verified payload bytes / (first payload byte sent → the server's digest reply
  received). The reply arrives once every byte is acknowledged and answered, so this
  includes half an RTT more than "last byte acknowledged"; the same for every variant.
- migration disruption: from the client switching sockets until the server first receives
  stream bytes from an address other than the pre-migration one; null when the connection
  did not survive.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

from qasm.controller.pipeline import FROM_SERVICE_ON_RETIRED_PATH, NAT_POOL_EXHAUSTED

RECORD_FIELDS = (
    "variant",
    "functions",
    "migration",
    "repetition",
    "client",
    "completed",
    "verified",
    "handshake_ms",
    "goodput_mbps",
    "disruption_ms",
    "packet_ins",
    "flow_mods",
    "failure",
)


def disruption_ms(report: dict, server_events: Iterable[dict]) -> float | None:
    migration = report.get("migration")
    if not report.get("completed") or not migration:
        return None
    mine = [
        e for e in server_events
        if e.get("event") == "first_data" and e.get("client") == report["client"]
    ]  # fmt: skip
    if not mine:
        return None
    # The old path as the server saw it (behind a NAT it is not the client's own address).
    old_address = list(mine[0]["addr"])
    arrivals = [
        e["t"] for e in mine if list(e["addr"]) != old_address and e["t"] >= migration["at"]
    ]
    return (min(arrivals) - migration["at"]) * 1000 if arrivals else None


def client_decisions(decisions: Iterable[dict], addresses: Iterable[str]) -> list[dict]:
    """The controller decisions about packets to or from this client's addresses (agent
    reports are counted apart, as agent messages)."""
    mine = set(addresses)
    return [
        d for d in decisions if d.get("event") == "packet_in" and mine & set(d.get("addrs", ()))
    ]


def migration_packet_ins(decisions: Iterable[dict], report: dict) -> int | None:
    """Packet-ins of this client's QUIC packets (not ARP, not agent reports, not handshake
    copies, not the server's packets on a path the client retired) from the migration instant
    on: what the migration cost the controller."""
    migration = report.get("migration")
    if not migration:
        return None
    return sum(
        1
        for d in decisions
        if d.get("event") == "packet_in"
        and d.get("flow")
        and d.get("verdict") != "observe"
        and d.get("reason") != FROM_SERVICE_ON_RETIRED_PATH
        and d["t"] >= migration["at"]
    )


def retired_path_packet_ins(decisions: Iterable[dict]) -> int:
    """The server's packets on a path this client retired, dropped by the controller: what
    a server that gave up validating the new path and went back to the old one (RFC 9000
    §9.3.2) sent into the void; a symptom of loss on the new path, not of the middlebox."""
    return sum(1 for d in decisions if d.get("reason") == FROM_SERVICE_ON_RETIRED_PATH)


def leakage_bytes(report: dict, rate_kbps: int, burst_kbit: int) -> int:
    """Payload bytes the server acknowledged beyond what one token bucket of this rate and
    burst allows since the first byte: max over time of acked(t) - (burst + rate * t).

    The meter counts whole frames while acked bytes are payload (~94% of a full-size QUIC
    frame), so this is a lower bound on what escaped the limit; a connection that stays under
    one bucket shows none.
    """
    progress = report.get("progress") or []
    start = report.get("first_byte_sent_at")
    if not progress or start is None:
        return 0
    rate_bytes_per_s, burst_bytes = rate_kbps * 1000 / 8, burst_kbit * 1000 / 8
    excess = max(acked - (burst_bytes + rate_bytes_per_s * (t - start)) for t, acked in progress)
    return max(0, int(excess))


def nat_mappings_held(decisions: Iterable[dict], addresses: Iterable[str]) -> int:
    """Public ports still mapped to this client's paths when the run ended."""
    mine = set(addresses)
    allocated, released = set(), set()
    for decision in decisions:
        if decision.get("nat_allocated"):
            allocated.add(decision["nat_allocated"].split(" as ")[0])
        released.update(decision.get("nat_released", ()))
    return sum(1 for path in allocated - released if path.split(":")[0] in mine)


def nat_mappings_peak(decisions: Iterable[dict], addresses: Iterable[str]) -> int:
    """The most public ports this client's paths held at any one time."""
    mine, held, peak = set(addresses), set(), 0
    for decision in sorted(decisions, key=lambda d: d.get("t", 0)):
        held.difference_update(decision.get("nat_released", ()))
        if decision.get("nat_allocated"):
            path = decision["nat_allocated"].split(" as ")[0]
            if path.split(":")[0] in mine:
                held.add(path)
        peak = max(peak, len(held))
    return peak


def nat_pool_exhausted(decisions: Iterable[dict]) -> int:
    """How often the NAT had no free port for this client: packets dropped for it, and
    announced paths left without a mapping."""
    return sum(
        1
        for d in decisions
        if str(d.get("reason", "")).startswith(NAT_POOL_EXHAUSTED) or d.get("nat_exhausted")
    )


def reason_category(reason: str) -> str:
    """A reason without its particulars (parenthesised detail, numbers as N, what follows
    the first colon of a `malformed:` reason), so reasons can be counted."""
    if reason.startswith("malformed"):
        return "malformed"
    reason = re.sub(r"0x[0-9a-fA-F]+", "0xN", reason.split("(")[0].rstrip(" :"))
    return re.sub(r"\d+(?!-tuple|x)", "N", reason)


def flood_effect(decisions: Iterable[dict]) -> dict:
    """What the controller made of a run's traffic it did not admit: agent reports it
    rejected and packets it dropped, counted by reason."""
    rejections: Counter = Counter()
    drops: Counter = Counter()
    accepted = 0
    for decision in decisions:
        if decision.get("event") == "agent_report":
            if decision.get("verdict") == "accept":
                accepted += 1
            else:
                rejections[reason_category(str(decision.get("reason")))] += 1
        elif decision.get("event") == "packet_in" and decision.get("verdict") == "drop":
            drops[reason_category(str(decision.get("reason")))] += 1
    return {
        "agent_reports_accepted": accepted,
        "agent_rejections": dict(rejections),
        "agent_rejected": sum(rejections.values()),
        "controller_drops": dict(drops),
        "controller_dropped": sum(drops.values()),
    }


def controller_memory(start: dict | None, end: dict | None, decisions: Iterable[dict]) -> dict:
    """The controller's resident memory (KiB) when the switch connected and when the
    clients finished, its peak, and the largest connection table its stats reported."""
    stats = [d for d in decisions if d.get("event") == "stats"]
    return {
        "controller_rss_start_kib": start["rss"] if start else None,
        "controller_rss_end_kib": end["rss"] if end else None,
        "controller_rss_peak_kib": end["peak"] if end else None,
        "connections_peak": max((d["connections"] for d in stats), default=None),
        "connections_bound": stats[-1]["max_connections"] if stats else None,
    }


def backend_changed(decisions: Iterable[dict]) -> bool | None:
    """Whether the load balancer sent the client's paths to more than one backend (None
    without a load balancer)."""
    backends = [
        d["backend"]
        for d in sorted(decisions, key=lambda d: d["t"])
        if d.get("backend") and d.get("verdict") in ("admit", "accept")
    ]
    return len(set(backends)) > 1 if backends else None


def drop_evidence(decisions: Iterable[dict], since: float | None) -> str | None:
    """A one-line account of what the middlebox dropped (after `since`, if given)."""
    drops = Counter(
        (d.get("flow") or ",".join(d.get("addrs", ())), d["reason"])
        for d in decisions
        if d.get("verdict") == "drop" and (since is None or d["t"] >= since)
    )
    if not drops:
        return None
    (flow, reason), count = drops.most_common(1)[0]
    more = f" (+{len(drops) - 1} other drop reasons)" if len(drops) > 1 else ""
    return f"middlebox dropped {count} packets of {flow}: {reason}{more}"


def build_record(
    *,
    variant: str,
    functions: Iterable[str],
    migration_kind: str | None,
    repetition: int,
    addresses: Iterable[str],
    report: dict,
    server_events: list[dict],
    decisions: list[dict],
    ratelimit=None,
    nat: bool = False,
) -> dict:
    mine = client_decisions(decisions, addresses)
    reports = [
        d
        for d in decisions
        if d.get("event") == "agent_report" and set(d.get("addrs", ())) & set(addresses)
    ]
    migration = report.get("migration")
    migrations = report.get("migrations") or ([migration] if migration else [])
    failure = report.get("failure")
    if not report.get("completed"):
        evidence = drop_evidence(mine, migration["at"] if migration else None)
        if failure and evidence:
            failure = f"{failure}; {evidence}"
        if migration is None and migration_kind is not None and failure:
            failure = f"{failure} (before the migration)"
    record = {
        "variant": variant,
        "functions": list(functions),
        "migration": migration_kind,
        "repetition": repetition,
        "client": report["client"],
        "completed": bool(report.get("completed")),
        "verified": bool(report.get("verified")),
        "handshake_ms": report.get("handshake_ms"),
        "goodput_mbps": report.get("goodput_mbps"),
        "disruption_ms": disruption_ms(report, server_events),
        "packet_ins": len(mine),
        "flow_mods": sum(d.get("flow_mods", 0) for d in mine),
        "failure": failure,
        "migration_packet_ins": migration_packet_ins(mine, report),
        "retired_path_packet_ins": retired_path_packet_ins(mine),
        "agent_messages": (report.get("agent") or {}).get("messages", 0),
        "agent_bytes": (report.get("agent") or {}).get("bytes", 0),
        "agent_exchanges": (report.get("agent") or {}).get("exchanges", []),
        "nat_mappings": nat_mappings_held(decisions, addresses) if nat else None,
        "nat_mappings_peak": nat_mappings_peak(decisions, addresses) if nat else None,
        "nat_pool_exhausted": nat_pool_exhausted(mine + reports) if nat else None,
        "migrations": len(migrations),
        # Seconds from the first payload byte, one per migration (the first is `migration`).
        "migration_instants_s": [
            round(m["at"] - report["first_byte_sent_at"], 4)
            for m in migrations
            if report.get("first_byte_sent_at") is not None
        ],
        "backend_changed": backend_changed(mine + reports),
        "leakage_bytes": (
            leakage_bytes(report, ratelimit.rate_kbps, ratelimit.burst_kbit) if ratelimit else None
        ),
        "migrated": migration is not None,
        "migration_detail": migration,
        "bytes_requested": report.get("bytes_requested"),
        "smoothed_rtt_ms": report.get("smoothed_rtt_ms"),
    }
    return record
