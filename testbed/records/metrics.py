"""Turns one run's artifacts into records (pure: reports and typed events in, dicts out).

Inputs per run: each client's JSON report, the server's event log and the controller's
decision log (typed events, qasm/controller/events.py: metrics read reason codes and fields,
never text). Both apps stamp events with `time.monotonic()`, which is one system-wide clock
for every network namespace on the machine, so client and server times are comparable.

Definitions (../shared/DESIGN.md):
- goodput: verified payload bytes / (first payload byte sent → the server's digest reply
  received). The reply arrives once every byte is acknowledged and answered, so this
  includes half an RTT more than "last byte acknowledged"; the same for every variant. The
  handshake is not in it.
- migration disruption: from the client switching sockets until the server first receives
  stream bytes from an address other than the pre-migration one; null when the connection
  did not survive.

Which events are a client's: on the first hop, those whose addresses are the client's; on
each later hop, those of the paths the hop before it handed on, i.e. the client's own
addresses again, or behind a NAT the public address and ports that NAT gave the client's
paths (a chain of NATs is followed hop by hop). Counters are per hop and summed. Replicas of
one hop (`positions`: the datapaths of each hop) all see the client as the hop before handed
it on; per-hop counters are then per replica.
"""

from __future__ import annotations

import contextlib
import json
import statistics
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from qasm.controller.events import (
    AgentReport,
    ConnectionsEnded,
    ConnectionState,
    HopStats,
    Locations,
    Logged,
    NatMapping,
    PacketIn,
    PathInstalled,
    PathRetired,
    Reason,
    Verdict,
    read_event,
)
from qasm.flow import FlowKey
from qasm.kernel.netfilter import ConntrackEntry, service_entries


def arm(variant: str, agent_mode: str | None) -> str:
    """The name results give a variant: `qasm` with its agent in push mode (the default),
    `qasm-pull` and `qasm-ahead` in the other modes; every other variant its own name."""
    if variant == "qasm" and agent_mode not in (None, "push"):
        return f"{variant}-{agent_mode}"
    return variant


def read_decisions(path: Path) -> list[Logged]:
    """The decision log's events in order; unreadable lines (a kill mid-write) are skipped."""
    events = []
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError, KeyError, TypeError):
                logged = read_event(json.loads(line))
                if logged is not None:
                    events.append(logged)
    return events


def goodput_mbps(payload_bytes: int, first_byte_sent_at: float, reply_received_at: float) -> float:
    """Verified payload over the time from its first byte to the server's reply (Mbit/s)."""
    elapsed = reply_received_at - first_byte_sent_at
    if elapsed <= 0:
        raise ValueError(f"transfer of {elapsed:g} s: the reply cannot precede the first byte")
    return payload_bytes * 8 / elapsed / 1e6


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


# --- which events are this client's, hop by hop ---------------------------------------------


@dataclass
class _Endpoints:
    """The client as one hop sees it: its own IPs (any port) or NAT (ip, port) pairs."""

    ips: set[str] = field(default_factory=set)
    sockets: set[tuple[str, int]] = field(default_factory=set)

    def has(self, ip: str, port: int | None = None) -> bool:
        return ip in self.ips or (port is not None and (ip, port) in self.sockets)

    def flow(self, flow: FlowKey | None) -> bool:
        return flow is not None and (
            self.has(flow.src_ip, flow.src_port) or self.has(flow.dst_ip, flow.dst_port)
        )

    def path(self, path: FlowKey) -> bool:
        return self.has(path.src_ip, path.src_port)


def _touches(event, endpoints: _Endpoints) -> bool:
    if isinstance(event, PacketIn):
        if event.flow is not None:
            return endpoints.flow(event.flow)
        return any(endpoints.has(a) for a in event.addrs)
    if isinstance(event, (PathInstalled, PathRetired)):
        return endpoints.path(event.path)
    if isinstance(event, ConnectionState):
        return any(endpoints.path(p) for p in (*event.paths, *event.retired_paths))
    if isinstance(event, ConnectionsEnded):
        return any(endpoints.path(m.path) for m in event.nat_released)
    return False


def _allocations(event) -> tuple[NatMapping, ...]:
    return getattr(event, "nat_allocated", ())


def _releases(event) -> tuple[NatMapping, ...]:
    return getattr(event, "nat_released", ())


def client_events(
    decisions: Iterable[Logged],
    hops: tuple[int, ...],
    addresses: Iterable[str],
    sockets: Iterable[tuple[str, int]] | None = None,
    positions: tuple[tuple[int, ...], ...] | None = None,
) -> dict[int, list[Logged]]:
    """Per hop dpid (path order; a run without middlebox hops has one plain switch, keyed
    0), the events about this client's packets, paths and connections. The client is its
    host's `addresses`, or with `sockets` (a host with several connections) the (ip, port)
    pairs this one connection used. `positions` groups replicas of one hop (default: each
    hop alone)."""
    by_dpid: dict[int, list[Logged]] = {}
    for logged in decisions:
        by_dpid.setdefault(getattr(logged.event, "dpid", None), []).append(logged)
    if sockets is None:
        endpoints = _Endpoints(ips=set(addresses))
    else:
        endpoints = _Endpoints(sockets={(ip, int(port)) for ip, port in sockets})
    result: dict[int, list[Logged]] = {}
    if not hops:
        plain = [e for dpid, events in by_dpid.items() for e in events if dpid is not None]
        return {0: [e for e in plain if _touches(e.event, endpoints)]}
    for position in positions or tuple((dpid,) for dpid in hops):
        handed_on: set[tuple[str, int]] = set()
        translating = False
        for dpid in position:
            mine = [e for e in by_dpid.get(dpid, []) if _touches(e.event, endpoints)]
            result[dpid] = mine
            handed_on |= {
                (m.public_ip, m.public_port)
                for e in mine
                for m in _allocations(e.event)
                if endpoints.path(m.path)
            }
            translating |= any(_allocations(e.event) for e in by_dpid.get(dpid, []))
        if handed_on or translating:
            endpoints = _Endpoints(sockets=handed_on)  # behind a NAT: only its mappings
    return result


def agent_reports(decisions: Iterable[Logged], addresses: Iterable[str]) -> list[Logged]:
    mine = set(addresses)
    return [e for e in decisions if isinstance(e.event, AgentReport) and mine & set(e.event.addrs)]


def _packet_ins(events: Iterable[Logged]) -> list[Logged]:
    return [e for e in events if isinstance(e.event, PacketIn)]


def migration_packet_ins(events: Iterable[Logged], report: dict) -> int | None:
    """Packet-ins of this client's QUIC packets (not ARP, not agent reports, not handshake
    copies, not packets on a path the client retired: `retired_path_packet_ins`) from the
    migration instant on: what following the migration cost the controller."""
    migration = report.get("migration")
    if not migration:
        return None
    return sum(
        1
        for e in _packet_ins(events)
        if e.event.flow is not None
        and e.event.verdict is not Verdict.OBSERVE
        and e.event.reason is not Reason.RETIRED_PATH
        and e.t >= migration["at"]
    )


def retired_path_packet_ins(events: Iterable[Logged]) -> int:
    """Packets on a path this client retired. The server's are dropped: what a server that
    gave up validating the new path and went back to the old one (RFC 9000 §9.3.2) sent into
    the void, a symptom of loss on the new path. The client's were sent before it left the
    path and held in a queue until the retirement: delivered as on a path the connection
    holds. Neither is the middlebox following a migration."""
    return sum(1 for e in _packet_ins(events) if e.event.reason is Reason.RETIRED_PATH)


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


def nat_mappings_held(events: Iterable[Logged]) -> int | None:
    """Public ports the hop still had mapped to this client's paths when the controller
    stopped (its end-of-run table); None when the end state was not logged."""
    states = [e.event for e in events if isinstance(e.event, ConnectionState)]
    if not states:
        return None
    return sum(len(s.nat_mappings) for s in states)


def nat_mappings_peak(events: Iterable[Logged]) -> int:
    """The most public ports this client's paths held on one hop at any one time."""
    held: set[FlowKey] = set()
    peak = 0
    for logged in sorted(events, key=lambda e: e.t):
        held.difference_update(m.path for m in _releases(logged.event))
        held.update(m.path for m in _allocations(logged.event))
        peak = max(peak, len(held))
    return peak


def nat_pool_exhausted(events: Iterable[Logged]) -> int:
    """How often the NAT had no free port for this client: packets dropped for it, and
    announced paths left without a mapping."""
    return sum(
        1
        for e in events
        if (isinstance(e.event, PacketIn) and e.event.reason is Reason.NAT_POOL_EXHAUSTED)
        or (isinstance(e.event, PathInstalled) and e.event.nat_exhausted)
    )


def state_entries(events: Iterable[Logged]) -> int | None:
    """Index entries (5-tuples, retired 5-tuples, CIDs) the hop held for this client's
    connections when the controller stopped; None when the end state was not logged."""
    states = [e.event for e in events if isinstance(e.event, ConnectionState)]
    return sum(s.state_entries for s in states) if states else None


def flood_effect(decisions: Iterable[Logged]) -> dict:
    """What the controller made of a run's traffic it did not admit: agent reports it
    rejected and packets it dropped, counted by reason code."""
    rejections: Counter = Counter()
    drops: Counter = Counter()
    accepted = 0
    for logged in decisions:
        event = logged.event
        if isinstance(event, AgentReport):
            if event.verdict is Verdict.ACCEPT:
                accepted += 1
            else:
                rejections[str(event.reason)] += 1
        elif isinstance(event, PacketIn) and event.verdict is Verdict.DROP:
            drops[str(event.reason)] += 1
    return {
        "agent_reports_accepted": accepted,
        "agent_rejections": dict(rejections),
        "agent_rejected": sum(rejections.values()),
        "controller_drops": dict(drops),
        "controller_dropped": sum(drops.values()),
    }


def stacks(report: dict, server_events: list[dict]) -> dict:
    """Which QUIC stacks (and versions) the client and server ran, and the workload."""
    listening = next((e for e in server_events if e.get("event") == "listening"), {})
    return {
        "client_stack": report.get("client_stack", "aioquic"),
        "client_stack_version": report.get("client_stack_version"),
        "server_stack": listening.get("server_stack", "aioquic"),
        "server_stack_version": listening.get("server_stack_version"),
        "protocol": report.get("protocol", "raw"),
    }


def host_agent_summary(events: list[dict]) -> dict:
    """What a host Client Agent did (its events file, testbed/apps/host_agent.py): its
    reports as the builtin agent's (`messages`, `bytes`, `exchanges`), how long it held each
    new path's first datagram for the Tracking Agent's ack, and its counters and CPU."""
    exchanges = [e for e in events if e.get("what") in ("announce", "retire", "register")]
    exit_line = next((e for e in reversed(events) if e.get("what") == "exit"), {})
    holds = exit_line.get("hold_ms") or [e["hold_ms"] for e in exchanges if "hold_ms" in e]
    return {
        "messages": len(exchanges),
        "bytes": sum(e.get("bytes", 0) for e in exchanges),
        "exchanges": exchanges,
        "hold_ms": holds,
        "hold_ms_median": statistics.median(holds) if holds else None,
        "counters": exit_line.get("counters", {}),
        "cpu_s": exit_line.get("cpu_s"),
        "exited": bool(exit_line),
    }


def hijacked_locations(
    decisions: Iterable[Logged], bindings: dict[int, dict[int, frozenset[str]]]
) -> int:
    """Addresses a hop located, when the controller stopped, on a port they do not belong to
    (topologies/bindings.py): a location a spoofing host moved to itself."""
    return sum(
        1
        for logged in decisions
        if isinstance(logged.event, Locations) and logged.event.dpid in bindings
        for ip, port in logged.event.ports.items()
        if ip not in bindings[logged.event.dpid].get(port, frozenset())
    )


def controller_memory(start: dict | None, end: dict | None, decisions: Iterable[Logged]) -> dict:
    """The controller's resident memory (KiB) when the switch connected and when the
    clients finished, its peak, and the largest connection table a hop reported."""
    stats = [e.event for e in decisions if isinstance(e.event, HopStats)]
    return {
        "controller_rss_start_kib": start["rss"] if start else None,
        "controller_rss_end_kib": end["rss"] if end else None,
        "controller_rss_peak_kib": end["peak"] if end else None,
        "connections_peak": max((s.connections for s in stats), default=None),
        "connections_bound": stats[-1].max_connections if stats else None,
    }


def connections_ended(decisions: Iterable[Logged]) -> dict:
    """Connections the hops ended, by cause: idle past the timeout, evicted at the table's
    bound, and half-open (the server never answered: past the half-open timeout, or as a
    switch's probe reported)."""
    ended = Counter()
    for logged in decisions:
        event = logged.event
        if isinstance(event, ConnectionsEnded):
            ended["expired"] += len(event.expired)
            ended["evicted"] += len(event.evicted)
            ended["half_open"] += len(event.half_open)
            ended["evicted_established"] += len(event.evicted_established)
    return {
        "connections_expired": ended["expired"],
        "connections_evicted": ended["evicted"],
        # Of those evicted, the established ones (the rest were half-open, evicted first).
        "connections_evicted_established": ended["evicted_established"],
        "connections_half_open": ended["half_open"],
    }


def backend_changed(events: Iterable[Logged]) -> bool | None:
    """Whether the load balancer sent the client's paths to more than one backend (None
    without a load balancer)."""
    backends = {
        e.event.backend
        for e in events
        if (isinstance(e.event, PacketIn) and e.event.verdict is Verdict.ADMIT)
        or isinstance(e.event, PathInstalled)
        if getattr(e.event, "backend", None)
    }
    return len(backends) > 1 if backends else None


def drop_evidence(events: Iterable[Logged], since: float | None) -> str | None:
    """A one-line account of what the middlebox dropped (after `since`, if given)."""
    drops = Counter(
        (str(e.event.flow or ",".join(e.event.addrs)), e.event.reason, e.event.text)
        for e in _packet_ins(events)
        if e.event.verdict is Verdict.DROP and (since is None or e.t >= since)
    )
    if not drops:
        return None
    (flow, reason, text), count = drops.most_common(1)[0]
    more = f" (+{len(drops) - 1} other drop reasons)" if len(drops) > 1 else ""
    detail = f" ({text})" if text else ""
    return f"middlebox dropped {count} packets of {flow}: {reason}{detail}{more}"


def opening_ms(report: dict) -> float | None:
    """From when the connection was due to its handshake's end: the handshake, and the part
    of its admission (agent mode ahead) that came after the connection was due, which the
    handshake alone would hide. An admission done ahead of time adds nothing."""
    handshake = report.get("handshake_ms")
    if handshake is None:
        return None
    return handshake + (report.get("admission_wait_ms") or 0.0)


def build_record(
    *,
    variant: str,
    functions: Iterable[str],
    migration_kind: str | None,
    repetition: int,
    addresses: Iterable[str],
    report: dict,
    server_events: list[dict],
    decisions: list[Logged],
    hops: tuple[int, ...] = (1,),
    agent_mode: str | None = None,
    ratelimit=None,
    nat: bool = False,
    shared_host: bool = False,
    positions: tuple[tuple[int, ...], ...] | None = None,
) -> dict:
    """One connection's record. With `shared_host` its host runs other connections too, so
    its events are told apart by the sockets it used, not by the host's addresses (the
    host's ARP and agent reports are then nobody's in particular). `positions`: the
    replicas of each hop, when hops have replicas (`hops` then counts positions)."""
    addresses = tuple(addresses)
    sockets = connection_sockets(report) if shared_host else None
    per_hop = client_events(decisions, hops, addresses, sockets, positions)
    mine = [e for events in per_hop.values() for e in events]
    reports = [] if shared_host else agent_reports(decisions, addresses)
    migration = report.get("migration")
    migrations = report.get("migrations") or ([migration] if migration else [])
    failure = report.get("failure")
    if not report.get("completed"):
        evidence = drop_evidence(mine, migration["at"] if migration else None)
        if failure and evidence:
            failure = f"{failure}; {evidence}"
        if migration is None and migration_kind is not None and failure:
            failure = f"{failure} (before the migration)"
    packet_ins = {dpid: _packet_ins(events) for dpid, events in per_hop.items()}
    flow_mods = {dpid: sum(e.event.flow_mods for e in p) for dpid, p in packet_ins.items()}
    held = {dpid: nat_mappings_held(events) for dpid, events in per_hop.items()}
    peaks = {dpid: nat_mappings_peak(events) for dpid, events in per_hop.items()}
    entries = [state_entries(events) for events in per_hop.values()]
    held_per_hop = list(held.values())
    if positions:
        # Replicas sharing a table log it once (under the first replica): a hop holds what
        # its replicas hold together; its peak is over their events together.
        held_per_hop = [_replicas_total([held[d] for d in p]) for p in positions]
        peaks = {p[0]: nat_mappings_peak([e for d in p for e in per_hop[d]]) for p in positions}
        entries = [_replicas_total([state_entries(per_hop[d]) for d in p]) for p in positions]
    agent = report.get("agent") or {}
    record = {
        "variant": arm(variant, agent_mode),
        **stacks(report, server_events),
        "agent_mode": agent_mode,
        "functions": list(functions),
        "migration": migration_kind,
        "repetition": repetition,
        "client": report["client"],
        "completed": bool(report.get("completed")),
        "verified": bool(report.get("verified")),
        "handshake_ms": report.get("handshake_ms"),
        "admission_ms": report.get("admission_ms"),
        "opening_ms": opening_ms(report),
        "goodput_mbps": report.get("goodput_mbps"),
        "disruption_ms": disruption_ms(report, server_events),
        "packet_ins": sum(len(p) for p in packet_ins.values()),
        "flow_mods": sum(flow_mods.values()),
        "failure": failure,
        "migration_packet_ins": migration_packet_ins(mine, report),
        "retired_path_packet_ins": retired_path_packet_ins(mine),
        "agent_messages": agent.get("messages", 0),
        "agent_bytes": agent.get("bytes", 0),
        "agent_exchanges": agent.get("exchanges", []),
        # The host Client Agent's own figures (hold times, counters, CPU); None: builtin.
        "host_agent": report.get("host_agent"),
        "nat_mappings": _total(held_per_hop) if nat else None,
        "nat_mappings_peak": max(peaks.values(), default=0) if nat else None,
        "nat_pool_exhausted": nat_pool_exhausted(mine) if nat else None,
        "state_entries": _total(entries) if variant != "baseline" else None,
        "hops": len(positions) if positions else len(hops),
        "per_hop": {
            "dpid": list(per_hop),
            "packet_ins": [len(p) for p in packet_ins.values()],
            "flow_mods": list(flow_mods.values()),
            "nat_mappings": list(held.values()) if nat else None,
        },
        "migrations": len(migrations),
        # Seconds from the first payload byte, one per migration (the first is `migration`).
        "migration_instants_s": [
            round(m["at"] - report["first_byte_sent_at"], 4)
            for m in migrations
            if report.get("first_byte_sent_at") is not None
        ],
        "migration_rate_hz": migration_rate_hz(report),
        "backend_changed": backend_changed(mine + reports),
        "leakage_bytes": (
            leakage_bytes(report, ratelimit.rate_kbps, ratelimit.burst_kbit) if ratelimit else None
        ),
        "migrated": migration is not None,
        "migration_detail": migration,
        **store_round_trips(mine, reports, report, len(migrations)),
        "bytes_requested": report.get("bytes_requested"),
        "smoothed_rtt_ms": report.get("smoothed_rtt_ms"),
    }
    return record


def store_round_trips(
    events: Iterable[Logged], reports: Iterable[Logged], report: dict, migrations: int
) -> dict:
    """Requests to the shared connection store (Redis) the client's decisions made: those
    before the (first) migration opened the connection; the Tracking Agent's reports and the
    packet-ins from the migration on are what migrating cost, per migration. 0 in memory."""
    migration = report.get("migration")
    since = migration["at"] if migration else None
    opening = migrating = 0
    for logged in events:
        if isinstance(logged.event, PacketIn):
            if since is not None and logged.t >= since:
                migrating += logged.event.store_round_trips
            else:
                opening += logged.event.store_round_trips
    migrating += sum(e.event.store_round_trips for e in reports)
    per_migration = round(migrating / migrations, 2) if migrations else None
    return {
        "store_round_trips_opening": opening,
        "store_round_trips_per_migration": per_migration,
    }


def replica_record(
    decisions: list[Logged],
    positions: tuple[tuple[int, ...], ...],
    addresses: Iterable[str],
    report: dict,
    carried: dict[int, dict[tuple[str, int], int]] | None = None,
    shared_host: bool = False,
) -> dict:
    """Which replica (datapath id) of the client-facing hop carried the client's first path
    (`replica_before`: where its first packet-in was) and its migrated path
    (`replica_after`: the first packet-in of the new path, else, when the path was pushed
    to every replica before its first packet, the replica whose rule for it counted the most
    packets: `carried`, dpid → {(ip, port): packets} from the flow tables at the end); and
    the client's packet-ins per replica from the migration on
    (`migration_packet_ins_per_replica`, keyed by dpid)."""
    sockets = connection_sockets(report) if shared_host else None
    hops = tuple(dpid for position in positions for dpid in position)
    per_hop = client_events(decisions, hops, tuple(addresses), sockets, positions)
    replicas = positions[0]
    migration = report.get("migration")

    def first_packet_in(source: tuple, since: float | None = None) -> int | None:
        found = [
            logged
            for dpid in replicas
            for logged in per_hop.get(dpid, [])
            if isinstance(logged.event, PacketIn)
            and logged.event.flow is not None
            and (logged.event.flow.src_ip, logged.event.flow.src_port) == source
            and (since is None or logged.t >= since)
        ]
        return min(found, key=lambda logged: logged.t).event.dpid if found else None

    first = report.get("local_address")
    before = first_packet_in(tuple(first)) if first else None
    after = per_replica = None
    if migration:
        moved = tuple(migration["to"])
        after = first_packet_in(moved, migration["at"])
        if after is None and carried:
            counts = {dpid: carried.get(dpid, {}).get(moved, 0) for dpid in replicas}
            busiest = max(counts, key=counts.get)
            after = busiest if counts[busiest] else None
        per_replica = {
            str(dpid): sum(
                1
                for logged in per_hop.get(dpid, [])
                if isinstance(logged.event, PacketIn)
                and logged.event.flow is not None
                and logged.event.verdict is not Verdict.OBSERVE
                and logged.event.reason is not Reason.RETIRED_PATH
                and logged.t >= migration["at"]
            )
            for dpid in replicas
        }
    return {
        "replica_before": before,
        "replica_after": after,
        "migration_packet_ins_per_replica": per_replica,
    }


def flow_packets(flows_text: str, bridges: dict[str, int]) -> dict[int, dict[tuple, int]]:
    """From a run's flows.txt (a `# bridge` line before each switch's table): per datapath
    of `bridges`, the packets each client source (ip, port) sent through its path rules."""
    counts: dict[int, dict[tuple, int]] = {}
    dpid = None
    for line in flows_text.splitlines():
        if line.startswith("# "):
            dpid = bridges.get(line[2:].strip())
            continue
        if dpid is None or "tp_src=" not in line or "n_packets=" not in line:
            continue
        fields = dict(
            part.split("=", 1) for part in line.replace(" ", ",").split(",") if "=" in part
        )
        try:
            source = (fields["nw_src"], int(fields["tp_src"]))
            packets = int(fields["n_packets"])
        except (KeyError, ValueError):
            continue
        per_source = counts.setdefault(dpid, {})
        per_source[source] = per_source.get(source, 0) + packets
    return counts


def _replicas_total(values: list[int | None]) -> int | None:
    """A hop's figure over its replicas: None only when no replica logged one."""
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def connection_sockets(report: dict) -> list[tuple[str, int]]:
    """Every (ip, port) a connection sent from: its first socket and each migration's."""
    first = [tuple(report["local_address"])] if report.get("local_address") else []
    return first + [tuple(m["to"]) for m in report.get("migrations") or []]


def kernel_record(
    entries: list[ConntrackEntry],
    addresses: Iterable[str],
    service: tuple[str, int],
    functions: Iterable[str],
    shared_host: bool,
) -> dict:
    """What the router's conntrack held for this client's paths to the service when its run
    ended (the kernel variants): its entries, those source-NATed (the NAT mappings held), and
    whether they were DNATed to more than one endpoint (kube-proxy moved it). A host with
    several connections shares these counts among them (conntrack cannot tell connections
    apart)."""
    mine = service_entries(entries, addresses, service)
    targets = {e.dnat_target for e in mine if e.dnat_target is not None}
    return {
        "conntrack_entries": len(mine),
        "conntrack_shared_by_host": shared_host,
        "nat_mappings": sum(1 for e in mine if e.snat_source) if "nat" in functions else None,
        "backend_changed": len(targets) > 1 if "loadbalancer" in functions and targets else None,
    }


def migration_rate_hz(report: dict) -> float | None:
    """Migrations per second achieved between the first and the end of sending (None with
    fewer than two migrations: one migration has no rate)."""
    migrations = report.get("migrations") or []
    end = report.get("last_byte_acknowledged_at")
    if len(migrations) < 2 or end is None:
        return None
    span = end - migrations[0]["at"]
    return round((len(migrations) - 1) / span, 3) if span > 0 else None


def _total(values: Iterable[int | None]) -> int | None:
    values = list(values)
    return None if not values or any(v is None for v in values) else sum(values)
