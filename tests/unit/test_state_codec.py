"""State and logs leave the process as JSON and come back unchanged: a connection with every
function's share of it (what a replica sharing the table reads), and every logged event (what
the metrics read)."""

from __future__ import annotations

import dataclasses
import json

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from hypothesis import given, settings
from hypothesis import strategies as st

from qasm.compact import compact
from qasm.controller.events import (
    EVENTS,
    AgentReport,
    ConnectionsEnded,
    ConnectionState,
    HopStats,
    KernelPath,
    Locations,
    Logged,
    NatMapping,
    PacketIn,
    PathInstalled,
    PathRetired,
    ProbeEnded,
    Reason,
    SwitchConnected,
    Verdict,
    read_event,
)
from qasm.flow import FlowKey
from qasm.functions.firewall import Firewall, FirewallState, SniPolicy
from qasm.functions.loadbalancer import LoadBalancerState
from qasm.functions.nat import NatState
from qasm.state.connections import ESTABLISHED, OBSERVING, PROBING, Connection

SERVER_IP = "10.0.0.250"
STATE_TYPES = {
    "firewall": FirewallState,
    "nat": NatState,
    "loadbalancer": LoadBalancerState,
}


def through_json(connection: Connection) -> Connection:
    text = json.dumps(connection.to_json_value())
    return Connection.from_json_value(json.loads(text), STATE_TYPES)


def fields(connection: Connection) -> dict:
    """Everything a connection holds (Connection compares by identity)."""
    return {name: getattr(connection, name) for name in Connection.__dataclass_fields__}


# --- connections ----------------------------------------------------------------------------

ips = st.ip_addresses(v=4).map(str)
ports = st.integers(1, 65535)
paths = st.builds(FlowKey, ips, ports, st.just(SERVER_IP), st.just(4433))
cids = st.binary(min_size=1, max_size=20)
times = st.floats(0, 1e9, allow_nan=False, allow_infinity=False)
firewall_states = st.builds(
    FirewallState,
    sni_pending=st.booleans(),
    original_dcid=st.none() | cids,
    hello_prefix=st.binary(max_size=64),
    hello_pending=st.dictionaries(st.integers(1, 2**20), st.binary(min_size=1, max_size=32)),
)


@st.composite
def connections(draw) -> Connection:
    live = draw(st.sets(paths, max_size=6))
    retired = draw(st.sets(paths, max_size=6)) - live
    known = sorted(live | retired, key=str)
    functions = {}
    if draw(st.booleans()):
        functions["firewall"] = draw(firewall_states)
    if draw(st.booleans()):
        ports = tuple(draw(st.integers(1024, 65535)) for _ in known)
        functions["nat"] = NatState(compact(tuple(known)), compact(ports))
    if draw(st.booleans()):
        functions["loadbalancer"] = LoadBalancerState(draw(st.none() | ips))
    return Connection(
        id=draw(st.integers(1, 2**40)),
        last_seen=draw(times),
        paths=tuple(live),
        retired_paths=tuple(retired),
        server_cids=tuple(draw(st.sets(cids, max_size=8))),
        owner=draw(st.none() | st.text(min_size=1, max_size=32)),
        flags=draw(st.integers(0, OBSERVING | ESTABLISHED | PROBING)),
        **functions,
    )


@settings(max_examples=300, deadline=None)
@given(connections())
def test_a_connection_round_trips_through_json(connection):
    back = through_json(connection)
    assert fields(back) == fields(connection)
    assert back.to_json_value() == connection.to_json_value()
    # Typed again, not left as JSON values: keys are FlowKeys and ints, CIDs bytes.
    assert all(isinstance(p, FlowKey) for p in (*back.paths, *back.retired_paths))
    assert all(isinstance(cid, bytes) for cid in back.server_cids)
    for name, state in back.function_states().items():
        assert type(state) is STATE_TYPES[name]
    if back.firewall is not None:
        assert all(isinstance(k, int) for k in back.firewall.hello_pending)


def client_hello_datagrams(server_name: str) -> list[bytes]:
    """A real aioquic client's ClientHello, spread over 3 Initial datagrams by long ALPNs."""
    alpn = [f"{i:02d}" + "x" * 200 for i in range(12)]
    client = QuicConnection(
        configuration=QuicConfiguration(
            is_client=True, alpn_protocols=alpn, server_name=server_name
        )
    )
    client.connect((SERVER_IP, 4433), now=0.0)
    datagrams = [datagram for datagram, _ in client.datagrams_to_send(now=0.0)]
    assert len(datagrams) == 3
    return datagrams


def test_a_pending_sni_assembly_with_fragments_out_of_order_round_trips_and_resumes():
    firewall = Firewall(SniPolicy(deny=("blocked.example",)))
    first, second, third = client_hello_datagrams("blocked.example")
    path = FlowKey("10.0.1.1", 50000, SERVER_IP, 4433)
    connection = Connection(
        id=7, last_seen=2.5, paths=(path, FlowKey("10.0.2.1", 6000, SERVER_IP, 4433)),
        retired_paths=(FlowKey("10.0.1.1", 49999, SERVER_IP, 4433),),
        server_cids=(b"\x01" * 8, b"\x02" * 8), owner="c1", flags=OBSERVING,
        nat=NatState(path, 20000),
        loadbalancer=LoadBalancerState("10.0.4.2"),
    )  # fmt: skip
    firewall.opened(connection, first)
    # The first and the third Initial: a contiguous prefix and a fragment beyond a gap.
    assert firewall.inspect(connection, first) is Reason.SNI_PENDING
    assert firewall.inspect(connection, third) is Reason.SNI_PENDING
    state = connection.firewall
    assert state.sni_pending and state.original_dcid and state.hello_prefix
    assert state.hello_pending and min(state.hello_pending) > len(state.hello_prefix)
    back = through_json(connection)
    assert fields(back) == fields(connection)
    # Either copy finishes the ClientHello with the missing middle and decides alike.
    for copy in (back, connection):
        refusal = firewall.inspect(copy, second)
        assert refusal.reason is Reason.SNI_REFUSED, refusal
        assert copy.firewall == FirewallState()  # the buffered bytes are gone


# --- events ---------------------------------------------------------------------------------

PATH = FlowKey("10.0.1.1", 50000, SERVER_IP, 4433)
NEW = FlowKey("10.0.2.1", 6000, SERVER_IP, 4433)
MAPPING = NatMapping(PATH, "10.0.100.1", 20000)
OTHER = NatMapping(NEW, "10.0.100.1", 20001)

# One of each event, every field away from its default, so each field's codec is exercised.
EXAMPLES = [
    SwitchConnected(dpid=3, flow_mods=4),
    PacketIn(
        dpid=1, in_port=2, verdict=Verdict.ADMIT, reason=Reason.DCID_MATCH, text="matched",
        addrs=("10.0.1.1", SERVER_IP), flow=PATH, connection=5, backend="10.0.4.1",
        nat_allocated=(MAPPING, OTHER), nat_released=(OTHER,), flow_mods=2,
        store_round_trips=3,
    ),
    AgentReport(
        dpid=1, in_port=3, verdict=Verdict.REJECT, reason=Reason.NEW_ADDRESS_NOT_CLIENTS,
        text="new address 10.0.9.9", addrs=("10.0.2.1", "10.0.0.254"), bytes=230, client="c1",
        new_path=NEW, retired_path=PATH, flow_mods=1, store_round_trips=4,
    ),
    PathInstalled(
        dpid=2, client="c1", connection=5, path=NEW, nat_allocated=(OTHER,), nat_exhausted=True,
        backend="10.0.4.2", flow_mods=2, opened=True,
    ),
    PathRetired(dpid=2, client="c1", connection=5, path=PATH, nat_released=(MAPPING,), flow_mods=2),
    KernelPath(
        dpid=1, client="c1", old_path=PATH, new_path=NEW, retired_path=PATH, ok=False,
        text="no conntrack entry",
    ),
    ConnectionsEnded(
        dpid=1, expired=(1, 2), evicted=(3,), half_open=(7,), evicted_established=(3,),
        nat_released=(MAPPING,),
        flow_mods=6,
    ),
    ProbeEnded(dpid=1, connection=7, packets=3, reason=Reason.SERVER_ANSWERED, flow=PATH),
    HopStats(
        dpid=1, connections=3, max_connections=100, evicted=4, expired=5, locations=6,
        half_open_ended=8,
        nat_in_use=2, nat_exhausted=1, agent={"accepted": 3, "rejected: forged": 9}, rss_kib=51200,
        store_round_trips=17,
    ),
    Locations(dpid=1, ports={"10.0.1.1": 2, "10.0.0.250": 1}),
    ConnectionState(
        dpid=1, connection=5, owner="c1", paths=(NEW,), retired_paths=(PATH,),
        server_cids=(b"\x01" * 8, b"\xff" * 20), nat_mappings=(OTHER,),
    ),
]  # fmt: skip


def test_every_event_type_has_an_example_with_no_field_at_its_default():
    assert {type(e) for e in EXAMPLES} == set(EVENTS.values())
    for event in EXAMPLES:
        for field in dataclasses.fields(event):
            if field.default is not dataclasses.MISSING:
                assert getattr(event, field.name) != field.default, (type(event), field.name)


def test_every_event_round_trips_through_a_json_log_line():
    for t, event in enumerate(EXAMPLES):
        line = json.dumps(event.to_record(100.0 + t, "qasm"))
        record = json.loads(line)
        assert (record["event"], record["t"], record["variant"]) == (event.name, 100.0 + t, "qasm")
        assert read_event(record) == Logged(100.0 + t, "qasm", event)
    # Codes, not text, on the line: what metrics count by.
    record = EXAMPLES[1].to_record(1.0, "cid")
    assert (record["verdict"], record["reason"]) == ("admit", "dcid_match")


def test_read_event_skips_lines_of_unknown_events():
    assert read_event({"event": "from_the_future", "t": 1.0, "variant": "qasm", "x": 1}) is None
    assert read_event({"t": 1.0}) is None
