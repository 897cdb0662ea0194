from __future__ import annotations

import pytest

from qasm.state.flows import FlowTable


def test_entries_expire_after_idle_timeout_without_sleeping():
    table = FlowTable(idle_timeout_s=120, max_entries=10)
    table.put("a", 1, now=0.0)
    table.put("b", 2, now=50.0)
    assert table.get("a", now=100.0) == 1  # refreshes a
    assert table.expire(now=171.0) == ["b"]
    assert table.get("a", now=221.0) is None
    assert len(table) == 0


def test_least_recently_used_entry_is_evicted_at_the_bound():
    table = FlowTable(idle_timeout_s=120, max_entries=2)
    table.put("a", 1, now=0.0)
    table.put("b", 2, now=1.0)
    table.get("a", now=2.0)
    table.put("c", 3, now=3.0)
    assert table.get("b", now=3.0) is None and table.get("a", now=3.0) == 1
    assert table.evicted == 1


def test_rejects_non_positive_bounds():
    with pytest.raises(ValueError):
        FlowTable(idle_timeout_s=0)
