"""Link conditions from scenario to emulation: validation, method choice, what is applied
and recorded. The kernel is faked: the capability probe is patched and `popen` records the
commands a host's namespace would run."""

from __future__ import annotations

import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from testbed.emulation import links
from testbed.emulation.link_emulation import EmulatedLinks, LinkEnd, LinkSetupError, select_method
from testbed.emulation.links import METHOD_NETEM, METHOD_NFQUEUE, LinkConditions
from testbed.scenario import load_scenario
from tests.unit.conftest import load_scenario_text, scenario_problems
from topologies.dualhomed import DualHomed

SCENARIO = """\
variants: [baseline]
topology:
  name: dualhomed
  clients: 1
{extra}
workload: {{bytes: 4000}}
"""


def with_links(extra: str) -> str:
    return SCENARIO.format(extra=textwrap.indent(textwrap.dedent(extra), "  "))


def load(tmp_path: Path, extra: str):
    return load_scenario_text(tmp_path, with_links(extra))


def problems(tmp_path: Path, extra: str) -> list[str]:
    return scenario_problems(tmp_path, with_links(extra))


# --- scenario parameters -------------------------------------------------------------------


def test_every_link_takes_delay_jitter_and_loss(tmp_path):
    extra = """\
        wifi_delay_ms: 20
        wifi_jitter_ms: 5
        wifi_loss_pct: 1
        lte_delay_ms: 60
        server_loss_pct: 0.5
    """
    scenario = load(tmp_path, extra)
    assert scenario.topology.wifi_delay_ms == 20.0
    roles = DualHomed(prefix="q0000", **scenario.topology.topo_kwargs()).roles
    conditions = scenario.topology.link_conditions()
    by_intf = {i.name: conditions[i.link] for _, i in roles.link_ends()}
    wifi = by_intf["q0000c1-wifi"]
    assert (wifi.delay_ms, wifi.jitter_ms, wifi.loss_pct, wifi.bw_mbit) == (20, 5, 1, None)
    assert by_intf["q0000c1-lte"].delay_ms == 60 and by_intf["q0000c1-lte"].loss_pct == 0
    assert by_intf["q0000srv-eth0"].loss_pct == 0.5


def test_zero_means_unimpaired_and_a_sweep_may_start_there(tmp_path):
    scenario = load(tmp_path, "wifi_delay_ms: 0\nwifi_loss_pct: 0\n")
    assert not any(c.impaired for c in scenario.topology.link_conditions().values())
    assert (scenario.topology.wifi_delay_ms, scenario.topology.wifi_loss_pct) == (0.0, 0.0)
    path = tmp_path / "sweep.yaml"
    path.write_text(
        SCENARIO.format(extra="")
        + "sweep:\n  topology.wifi_delay_ms: [0, 10, 50]\n  topology.wifi_loss_pct: [0, 2]\n"
    )
    points = load_scenario(path).points
    assert [p.parameters for p in points][:2] == [
        {"topology.wifi_delay_ms": 0, "topology.wifi_loss_pct": 0},
        {"topology.wifi_delay_ms": 0, "topology.wifi_loss_pct": 2},
    ]
    assert len(points) == 6


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("wifi_delay_ms: -1", "5: topology.wifi_delay_ms: expected a number in [0, 5000], got -1"),
        ("lte_delay_ms: 5001", "5: topology.lte_delay_ms: expected a number in [0, 5000]"),
        ("server_loss_pct: 101", "5: topology.server_loss_pct: expected a number in [0, 100]"),
        ("wifi_loss_pct: lots", "5: topology.wifi_loss_pct: expected a number in [0, 100], got"),
        ("wifi_rate_mbit: 5", "5: topology.wifi_rate_mbit: unknown key, expected one of"),
        (
            "wifi_delay_ms: 5\nwifi_jitter_ms: 6",
            "6: topology.wifi_jitter_ms: expected at most wifi_delay_ms (5)",
        ),
        ("lte_jitter_ms: 2", "5: topology.lte_jitter_ms: expected at most lte_delay_ms (0)"),
    ],
)
def test_bad_link_parameters_name_their_line_and_key(tmp_path, extra, expected):
    found = problems(tmp_path, extra)
    assert any(p.endswith(expected) or expected in p for p in found), found


def test_delay_limit_grows_with_bandwidth_times_delay():
    kinds = {"wifi": None, "lte": None, "server": None}
    slow = links.link_conditions({**kinds, "wifi": 10}, {"wifi_delay_ms": 20})["wifi"]
    assert slow.limit_packets == 1000  # netem's default is room enough
    fast = links.link_conditions(kinds, {"wifi_delay_ms": 200, "wifi_jitter_ms": 50})["wifi"]
    # Unshaped: 1000 Mbit/s of 1200-byte datagrams for 250 ms, twice over.
    assert fast.limit_packets == int(2 * 1000e6 / 8 / 1200 * 0.25) + 1


# --- method selection (the capability probe is faked) ---------------------------------------


def _probe(monkeypatch, netem: str | None, nfqueue: str | None) -> None:
    monkeypatch.setattr(
        links, "probe_methods", lambda: {METHOD_NETEM: netem, METHOD_NFQUEUE: nfqueue}
    )


IMPAIRED = [LinkEnd("h", "h-wifi", LinkConditions(delay_ms=10, loss_pct=1))]
PLAIN = [LinkEnd("h", "h-wifi", LinkConditions(bw_mbit=10))]


def test_netem_is_chosen_where_the_kernel_has_it(monkeypatch):
    _probe(monkeypatch, None, None)
    assert select_method(IMPAIRED) == METHOD_NETEM


def test_the_fallback_is_chosen_without_sch_netem(monkeypatch):
    _probe(monkeypatch, "kernel has no sch_netem (Error: Specified qdisc kind is unknown.)", None)
    assert select_method(IMPAIRED) == METHOD_NFQUEUE


def test_no_method_fails_loudly_only_when_a_link_asks_for_delay_or_loss(monkeypatch):
    _probe(monkeypatch, "kernel has no sch_netem", "iptables-legacy not installed")
    with pytest.raises(LinkSetupError) as caught:
        select_method(IMPAIRED)
    message = str(caught.value)
    assert "h-wifi asks for delay_ms=10, loss_pct=1" in message
    assert "no sch_netem" in message and "iptables-legacy not installed" in message
    assert select_method(PLAIN) is None  # bandwidth alone is TCLink's: nothing to refuse


# --- applying (commands recorded by a fake namespace) ---------------------------------------


class FakeNamespace:
    """popen for a host's namespace: records argv; `tc qdisc show` answers with Mininet's
    HTB root; the delay line prints its ready line on a real pipe."""

    def __init__(self) -> None:
        self.commands: list[list[str]] = []
        self.delay_lines: list[subprocess.Popen] = []

    def __call__(self, argv, **kwargs):
        argv = list(argv)
        self.commands.append(argv)
        if "testbed.emulation.delayline" in argv:
            line = subprocess.Popen(
                ["sh", "-c", 'echo \'{"event": "ready"}\'; exec sleep 30'],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
            self.delay_lines.append(line)
            return line
        output = b""
        if argv[:3] == ["tc", "qdisc", "show"]:
            output = b"qdisc htb 5: root refcnt 2 r2q 10 default 0x1\n"
        elif argv[:3] == ["ip", "-o", "link"]:
            output = b"7: h-wifi@if8: <BROADCAST,MULTICAST,UP,LOWER_UP> mtu 1500\n"
        return subprocess.Popen(["sh", "-c", 'printf "%s" "$0"', output.decode()], stdout=-1)


def _apply(monkeypatch, netem: str | None, ends):
    _probe(monkeypatch, netem, None)
    namespace = FakeNamespace()
    owned = []
    emulated = EmulatedLinks.apply(ends, lambda host: namespace, lambda *a: owned.append(a))
    return emulated, namespace, owned


def test_netem_path_shapes_both_directions_under_mininets_htb(monkeypatch):
    ends = [*IMPAIRED, LinkEnd("h", "h-lte", LinkConditions())]
    emulated, namespace, owned = _apply(monkeypatch, None, ends)
    assert emulated.method == METHOD_NETEM and owned == []
    qdiscs = [c for c in namespace.commands if c[:3] == ["tc", "qdisc", "add"]]
    egress = qdiscs[0]
    assert egress[4:8] == ["h-wifi", "parent", "5:1", "handle"]
    assert egress[egress.index("delay") + 1] == "10ms" and egress[egress.index("loss") + 1] == "1%"
    assert any("ih-wifi" in c for c in qdiscs)  # the ingress, through the IFB device
    assert all("h-lte" not in c for c in namespace.commands)  # unimpaired: untouched
    record = emulated.record()
    assert record["method"] == METHOD_NETEM
    assert record["links"]["h-wifi"]["method"] == METHOD_NETEM
    assert record["links"]["h-wifi"]["emulated_by"]["loss_pct"].startswith("netem")
    assert record["links"]["h-lte"]["method"] is None
    emulated.remove()
    assert ["tc", "qdisc", "del", "dev", "h-wifi", "parent", "5:1", "handle", "10:"] in (
        namespace.commands
    )


def test_fallback_path_starts_an_owned_delay_line_and_drops_by_statistic(monkeypatch):
    emulated, namespace, owned = _apply(monkeypatch, "no sch_netem", IMPAIRED)
    try:
        assert emulated.method == METHOD_NFQUEUE
        (delay_line,) = namespace.delay_lines
        assert owned == [(delay_line.pid, "delay line on h-wifi")]
        assert emulated.delay_line_pids == [delay_line.pid]
        rules = [c for c in namespace.commands if c[0] == links.IPTABLES]
        assert sum("DROP" in c for c in rules) == 2 and sum("NFQUEUE" in c for c in rules) == 2
        assert emulated.failure() is None
        delay_line.kill()
        delay_line.wait()
        assert emulated.failure() == "link h-wifi: delay line on h-wifi exited with code -9"
    finally:
        emulated.remove()
    deleted = [c for c in namespace.commands if c[0] == links.IPTABLES and "-D" in c]
    assert len(deleted) == 4


def test_a_failing_link_is_named_and_earlier_links_are_removed(monkeypatch):
    _probe(monkeypatch, None, None)
    namespace = FakeNamespace()

    def failing(argv, **kwargs):
        if "ifb" in argv and "h-lte" in " ".join(argv):
            return subprocess.Popen(["sh", "-c", "echo 'RTNETLINK: File exists' >&2; exit 2"],
                                    stdout=-1, stderr=-1)  # fmt: skip
        return namespace(argv, **kwargs)

    ends = [*IMPAIRED, LinkEnd("h", "h-lte", LinkConditions(loss_pct=2))]
    with pytest.raises(LinkSetupError, match=r"^link h-lte \(loss_pct=2\): .*File exists"):
        EmulatedLinks.apply(ends, lambda host: failing, lambda *a: None)
    assert any(c[:3] == ["tc", "qdisc", "del"] and "h-wifi" in c for c in namespace.commands)


@pytest.mark.skipif(os.geteuid() != 0, reason="SO_*BUFFORCE needs CAP_NET_ADMIN")
def test_apps_get_socket_buffers_for_a_delayed_link():
    import socket

    from testbed.apps.sockets import enlarge_buffers

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        granted = enlarge_buffers(sock, 4 << 20)
    assert granted["sndbuf"] >= 4 << 20 and granted["rcvbuf"] >= 4 << 20
