"""Link emulation on a real namespace pair (what a Mininet link is), both methods.

Namespaces and veths are our own (`qlk` + random hex) and removed on teardown; no Mininet,
so these tests never touch another run's network.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from testbed.emulation import links
from testbed.emulation.links import (
    METHOD_NETEM,
    METHOD_NFQUEUE,
    LinkConditions,
    LinkEmulationError,
    NamespacePair,
)

pytestmark = pytest.mark.integration


def _skip_reason(method: str) -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if method == METHOD_NFQUEUE and shutil.which(links.IPTABLES) is None:
        return f"{links.IPTABLES} not installed (run `make setup`)"
    reason = links.probe_methods()[method]
    if reason and method == METHOD_NETEM and "sch_netem" in reason:
        return "kernel has no sch_netem"
    return reason


@pytest.fixture(params=[METHOD_NFQUEUE, METHOD_NETEM])
def method(request) -> str:
    reason = _skip_reason(request.param)
    if reason:
        pytest.skip(reason)
    return request.param


@pytest.fixture
def nfqueue() -> str:
    reason = _skip_reason(METHOD_NFQUEUE)
    if reason:
        pytest.skip(reason)
    return METHOD_NFQUEUE


@pytest.fixture
def pair():
    with NamespacePair() as created:
        yield created
    assert not any(name.startswith(created.prefix) for name in _namespaces())


def _namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _mangle_rules(pair: NamespacePair) -> str:
    return links.run_in(pair.popen(0), [links.IPTABLES, "-t", "mangle", "-S"])


def test_delay_is_honoured_per_direction(method):
    (result,) = links.measure_fidelity(
        [LinkConditions(delay_ms=20)], probes=300, interval_s=0.005, method=method
    )
    for direction in (result.forward, result.backward):
        assert direction.delay_ms == pytest.approx(20, abs=1.5)
        assert direction.jitter_ms < 1.5
        assert direction.loss_pct == 0


def test_jitter_is_uniform_within_the_asked_range(method):
    # Probes are spread 2 × jitter + 1 ms apart, so FIFO order never holds one back.
    (result,) = links.measure_fidelity(
        [LinkConditions(delay_ms=20, jitter_ms=5)], probes=250, interval_s=0.002, method=method
    )
    assert result.interval_s == pytest.approx(0.011)
    for direction in (result.forward, result.backward):
        assert direction.delay_ms == pytest.approx(20, abs=1.5)
        assert direction.jitter_ms == pytest.approx(5, abs=1.2)


def test_loss_is_within_its_binomial_range(method):
    asked = 5.0
    (result,) = links.measure_fidelity(
        [LinkConditions(loss_pct=asked)], probes=2000, interval_s=0.001, method=method
    )
    for direction in (result.forward, result.backward):
        # 99.9 % Wilson interval of the measured loss must contain the asked probability.
        low, high = links.wilson_interval(direction.lost, direction.sent, z=3.29)
        assert low <= asked / 100 <= high, direction


def test_remove_leaves_nothing_and_reports_counters(pair, nfqueue):
    emulation = links.apply_link_conditions(
        pair.interfaces[0], LinkConditions(delay_ms=5, loss_pct=1), pair.popen(0), method=nfqueue
    )
    assert _mangle_rules(pair).count(links.RULE_COMMENT) == 4
    assert emulation.failure() is None
    assert emulation.remove() == []
    assert links.RULE_COMMENT not in _mangle_rules(pair)
    assert emulation.delay_line.returncode == 0
    report = emulation.delay_line_report
    assert report["event"] == "exit" and report["reason"] == "signal"
    assert set(report["queues"]) == {str(q) for q in links.queue_numbers(_ifindex(pair))}
    record = emulation.record()
    assert record["method"] == nfqueue and record["delay_line"] == report
    assert emulation.remove() == []  # idempotent


def _ifindex(pair: NamespacePair) -> int:
    return links._ifindex(pair.popen(0), pair.interfaces[0])


def test_a_dead_delay_line_is_reported_and_blocks_the_link(pair, nfqueue):
    with links.apply_link_conditions(
        pair.interfaces[0], LinkConditions(delay_ms=5), pair.popen(0), method=nfqueue
    ) as emulation:
        emulation.delay_line.kill()
        emulation.delay_line.wait()
        assert "exited with code -9" in emulation.failure()
        # No --queue-bypass: without its delay line the link carries nothing, visibly.
        with pytest.raises(LinkEmulationError):
            links.run_in(
                pair.popen(0),
                ["python3", "-c", _ONE_UDP_EXCHANGE.format(pair.addresses[1])],
                timeout_s=5,
            )


_ONE_UDP_EXCHANGE = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1)
s.connect(("{}", 9))  # connected: the ICMP error is reported to us
s.send(b"x")
try:
    s.recvfrom(10)
except ConnectionRefusedError:
    sys.exit(0)  # ICMP port unreachable came back: the link carried both ways
sys.exit(1)
"""


def test_link_carries_traffic_while_emulated(pair, nfqueue):
    with links.apply_link_conditions(
        pair.interfaces[0], LinkConditions(delay_ms=5), pair.popen(0), method=nfqueue
    ):
        links.run_in(pair.popen(0), ["python3", "-c", _ONE_UDP_EXCHANGE.format(pair.addresses[1])])


def test_a_leaked_delay_line_ends_by_its_lifetime(pair, nfqueue):
    emulation = links.apply_link_conditions(
        pair.interfaces[0],
        LinkConditions(delay_ms=5),
        pair.popen(0),
        method=nfqueue,
        lifetime_s=1.0,
    )
    try:
        deadline = time.monotonic() + 10
        while emulation.delay_line.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert emulation.delay_line.returncode == 0
    finally:
        emulation.remove()
    assert emulation.delay_line_report["reason"] == "lifetime"


def test_busy_queue_fails_loudly_and_cleans_up(pair, nfqueue):
    with links.apply_link_conditions(
        pair.interfaces[0], LinkConditions(delay_ms=5), pair.popen(0), method=nfqueue
    ):
        # A second delay line on the same interface cannot bind its queues.
        with pytest.raises(LinkEmulationError, match="did not start"):
            links.apply_link_conditions(
                pair.interfaces[0], LinkConditions(delay_ms=7), pair.popen(0), method=nfqueue
            )
        assert _mangle_rules(pair).count(links.RULE_COMMENT) == 2  # only the first one's


def test_netem_is_refused_where_the_kernel_lacks_it(pair):
    if links.probe_methods()[METHOD_NETEM] is None:
        pytest.skip("kernel has sch_netem")
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    with pytest.raises(LinkEmulationError, match="sch_netem"):
        links.apply_link_conditions(
            pair.interfaces[0], LinkConditions(delay_ms=5), pair.popen(0), method=METHOD_NETEM
        )
    assert links.emulation_method() == METHOD_NFQUEUE or shutil.which(links.IPTABLES) is None
