"""Tuples of one held as their item (qasm.compact) and the connection state held that way."""

from hypothesis import given
from hypothesis import strategies as st

from qasm.compact import compact, expand
from qasm.flow import FlowKey
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
    connection = Connection(1, 0.0, 0.0, paths=(A,), server_cids=(b"\x01" * 8,))
    assert connection.paths == (A,) and connection.server_cids == (b"\x01" * 8,)
    assert connection.retired_paths == ()
    connection.paths += (B,)
    connection.retired_paths = (A,)
    connection.paths = (B,)
    assert (connection.paths, connection.retired_paths) == ((B,), (A,))
    assert connection._paths is B  # held without a tuple: the memory this saves
