"""Link conditions: validation and the commands built from them (no kernel needed)."""

from __future__ import annotations

import math

import pytest

from testbed.emulation import links
from testbed.emulation.links import (
    METHOD_NETEM,
    METHOD_NFQUEUE,
    LinkConditions,
    LinkConditionsError,
    Rule,
)


def test_defaults_are_an_unimpaired_link():
    conditions = LinkConditions()
    assert not conditions.impaired
    assert conditions.bw_mbit is None
    assert conditions.limit_packets == 1000  # netem's default limit


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"delay_ms": -1}, "delay_ms: -1, expected 0..5000"),
        ({"delay_ms": 5001}, "delay_ms: 5001, expected 0..5000"),
        ({"delay_ms": math.nan}, "delay_ms: nan"),
        ({"delay_ms": math.inf}, "delay_ms: inf"),
        ({"delay_ms": "10"}, "delay_ms: '10', expected a number"),
        ({"delay_ms": True}, "delay_ms: True, expected a number"),
        ({"loss_pct": 100.5}, "loss_pct: 100.5, expected 0..100"),
        ({"loss_pct": -0.1}, "loss_pct: -0.1"),
        ({"bw_mbit": 0}, "bw_mbit: 0, expected > 0"),
        ({"bw_mbit": 1001}, "bw_mbit: 1001, expected 0..1000"),
        ({"delay_ms": 5, "jitter_ms": 6}, "jitter_ms: 6, expected at most delay_ms (5)"),
        ({"jitter_ms": 1}, "jitter_ms: 1, expected at most delay_ms (0.0)"),
        ({"limit_packets": 0}, "limit_packets: 0, expected 1..100000"),
        ({"limit_packets": 10.0}, "limit_packets: 10.0, expected an integer"),
    ],
)
def test_invalid_conditions_name_the_parameter(values, message):
    with pytest.raises(LinkConditionsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        LinkConditions(**values)


def test_bandwidth_is_not_an_impairment():
    assert not LinkConditions(bw_mbit=50).impaired
    assert LinkConditions(loss_pct=0.5).impaired


def test_conditions_per_link_kind_hold_enough_packets_for_the_delay():
    conditions = links.link_conditions(
        {"wifi": 100, "lte": None, "server": None}, {"wifi_delay_ms": 50, "lte_loss_pct": 1}
    )
    assert (conditions["wifi"].bw_mbit, conditions["wifi"].delay_ms) == (100, 50)
    # 2 x 100 Mbit/s of 1200-byte datagrams held for 50 ms, at least netem's 1000.
    assert conditions["wifi"].limit_packets == 1042
    assert conditions["lte"].loss_pct == 1 and not conditions["server"].impaired
    with pytest.raises(TypeError, match="wifi_rate"):
        links.link_conditions({}, {"wifi_rate": 1})
    assert LinkConditions(delay_ms=1).impaired


def test_rules_drop_before_delay_in_each_direction():
    conditions = LinkConditions(delay_ms=10, jitter_ms=2, loss_pct=1)
    rules = links.nfqueue_rules("c1-wifi", conditions, (8, 9))
    assert [(r.chain, r.spec[-4:]) for r in rules] == [
        ("POSTROUTING", ("--probability", "0.01000000000", "-j", "DROP")),
        ("POSTROUTING", ("-j", "NFQUEUE", "--queue-num", "8")),
        ("PREROUTING", ("--probability", "0.01000000000", "-j", "DROP")),
        ("PREROUTING", ("-j", "NFQUEUE", "--queue-num", "9")),
    ]
    assert all(r.table == "mangle" for r in rules)
    assert rules[0].spec[:2] == ("-o", "c1-wifi")
    assert rules[2].spec[:2] == ("-i", "c1-wifi")
    assert all("--queue-bypass" not in r.spec for r in rules)  # a dead delay line is loud
    assert all(links.RULE_COMMENT in r.spec for r in rules)


def test_only_asked_parameters_make_rules():
    loss_only = links.nfqueue_rules("x", LinkConditions(loss_pct=5), (0, 1))
    assert [r.spec[-1] for r in loss_only] == ["DROP", "DROP"]
    delay_only = links.nfqueue_rules("x", LinkConditions(delay_ms=5), (0, 1))
    assert [r.spec[-3] for r in delay_only] == ["NFQUEUE", "NFQUEUE"]
    assert links.nfqueue_rules("x", LinkConditions(bw_mbit=10), (0, 1)) == []


def test_rule_add_and_delete_are_the_same_rule():
    rule = Rule("mangle", "PREROUTING", ("-i", "x", "-j", "DROP"))
    assert rule.add() == [
        "iptables-legacy",
        "-w",
        "5",
        "-t",
        "mangle",
        "-A",
        "PREROUTING",
        "-i",
        "x",
        "-j",
        "DROP",
    ]
    assert rule.delete() == [
        "iptables-legacy",
        "-w",
        "5",
        "-t",
        "mangle",
        "-D",
        "PREROUTING",
        "-i",
        "x",
        "-j",
        "DROP",
    ]


@pytest.mark.parametrize(
    ("loss_pct", "text"), [(1, "0.01000000000"), (0.001, "0.00001000000"), (100, "1.00000000000")]
)
def test_probability_keeps_precision(loss_pct, text):
    assert links.probability(loss_pct) == text


def test_queue_numbers_are_a_pair_per_interface():
    assert links.queue_numbers(7) == (14, 15)
    assert links.queue_numbers(32768 + 7) == (14, 15)
    assert max(links.queue_numbers(32767)) == 65535


def test_delay_line_argv():
    conditions = LinkConditions(delay_ms=12.5, jitter_ms=2, limit_packets=500)
    argv = links.delay_line_argv(conditions, (4, 5), 60.0, 123, 7, python="py")
    assert argv == [
        "py", "-m", "testbed.emulation.delayline",
        "--queue", "4:12.5:2", "--queue", "5:12.5:2",
        "--limit", "500", "--lifetime-s", "60", "--parent-pid", "123", "--seed", "7",
    ]  # fmt: skip


def test_netem_args_keep_fifo_order_and_every_parameter():
    args = links.netem_args(LinkConditions(delay_ms=10, jitter_ms=3, loss_pct=0.5))
    assert args == [
        "netem",
        "limit",
        "1000",
        "delay",
        "10ms",
        "3ms",
        "loss",
        "0.5%",
        "rate",
        "100gbit",
    ]
    assert "delay" not in links.netem_args(LinkConditions(loss_pct=1))


@pytest.mark.parametrize(("under_htb", "parent"), [(True, ["parent", "5:1"]), (False, ["root"])])
def test_netem_commands_cover_both_directions_and_undo(under_htb, parent):
    steps = links.netem_commands("c1-lte", LinkConditions(delay_ms=5), under_htb)
    applies = [argv for argv, _ in steps]
    egress = ["tc", "qdisc", "add", "dev", "c1-lte", *parent, "handle", "10:", "netem"]
    assert applies[0][: len(egress)] == egress
    assert ["ip", "link", "add", "ic1-lte", "type", "ifb"] in applies
    assert applies[-1][:5] == ["tc", "qdisc", "add", "dev", "ic1-lte"]
    undos = [undo for _, undo in steps if undo]
    assert ["ip", "link", "del", "ic1-lte"] in undos
    assert ["tc", "qdisc", "del", "dev", "c1-lte", "ingress"] in undos


def test_ifb_name_fits_an_interface_name():
    assert len(links.ifb_name("q1a2bc100-wifi")) <= 15


@pytest.mark.parametrize("method", [METHOD_NETEM, METHOD_NFQUEUE])
def test_every_asked_parameter_is_described(method):
    asked = links.describe(LinkConditions(bw_mbit=5, delay_ms=5, jitter_ms=1, loss_pct=1), method)
    assert set(asked) == {"bw_mbit", "delay_ms", "jitter_ms", "loss_pct"}
    assert "none" not in asked.values()
    assert set(links.describe(LinkConditions(), method).values()) == {"none"}


def test_unknown_method_is_refused():
    with pytest.raises(links.LinkEmulationError, match="method: 'tbf'"):
        links.apply_link_conditions("x", LinkConditions(), lambda *a, **k: None, method="tbf")


def test_wilson_interval():
    low, high = links.wilson_interval(50, 1000)
    assert low < 0.05 < high
    assert (round(low, 4), round(high, 4)) == (0.0381, 0.0653)
    assert links.wilson_interval(0, 0) == (0.0, 1.0)
    assert links.wilson_interval(0, 100)[0] == 0.0


def test_options():
    assert links._options(interval_s=0.002, count=5, bind="a:1") == [
        "--interval-s", "0.002", "--count", "5", "--bind", "a:1",
    ]  # fmt: skip
