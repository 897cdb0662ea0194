"""Tuples of one held as their item (qasm.compact), and the connection state held that way."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qasm.codec import CodecError, from_json_value, to_json_value
from qasm.compact import compact, expand
from qasm.flow import FlowKey
from qasm.functions.nat import NatState
from qasm.state.connections import Connection

A = FlowKey("10.0.1.1", 50000, "10.0.0.250", 4433)
B = FlowKey("10.0.1.1", 50001, "10.0.0.250", 4433)


@given(st.lists(st.binary(max_size=20) | st.integers() | st.just(A), max_size=4).map(tuple))
def test_expand_undoes_compact(items):
    assert expand(compact(items)) == items


def test_one_item_is_held_as_itself_and_none_or_several_as_the_tuple():
    assert compact((A,)) is A  # a FlowKey is a tuple, but not a plain one
    assert compact(()) == () and compact((A, B)) == (A, B)


def test_a_connection_reads_and_writes_its_index_fields_as_tuples():
    connection = Connection(1, 0.0, paths=(A,), server_cids=(b"\x01" * 8,))
    assert connection.paths == (A,) and connection.server_cids == (b"\x01" * 8,)
    assert connection.retired_paths == ()
    connection.paths += (B,)
    connection.retired_paths = (A,)
    connection.paths = (B,)
    assert (connection.paths, connection.retired_paths) == ((B,), (A,))
    assert connection._paths is B  # held without a tuple: the memory this saves


def test_a_nat_state_keeps_each_paths_port_through_adds_and_removes():
    state = NatState()
    state.add(A, 20000)
    assert (state.paths, state.ports) == (A, 20000)  # one pair: held without tuples
    state.add(B, 20001)
    assert state.pairs() == ((A, 20000), (B, 20001))
    assert (state.port(A), state.port(B)) == (20000, 20001)
    assert state.remove(A) == 20000
    assert (state.pairs(), state.port(A), state.remove(A)) == (((B, 20001),), None, None)
    assert state.remove(B) == 20001 and state.pairs() == ()


@given(st.lists(st.integers(1024, 65535), max_size=3))
def test_a_nat_states_json_is_its_list_of_path_port_pairs(ports):
    paths = tuple(FlowKey("10.0.1.1", 50000 + i, "10.0.0.250", 4433) for i in range(len(ports)))
    state = NatState(compact(paths), compact(tuple(ports)))
    value = json.loads(json.dumps(to_json_value(state)))
    assert value == {"ports": [[list(p), port] for p, port in zip(paths, ports, strict=True)]}
    back = from_json_value(NatState, value)
    assert back == state and back.pairs() == tuple(zip(paths, ports, strict=True))


def test_a_nat_state_in_json_of_another_shape_is_refused_naming_where():
    with pytest.raises(CodecError, match="connection.functions.nat"):
        from_json_value(NatState, {"paths": [], "ports": []}, "connection.functions.nat")
