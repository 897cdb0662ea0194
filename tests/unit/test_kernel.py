"""The kernel variants' pure parts: netfilter rule text, kube-proxy's rules, conntrack
commands and output, the Tracking Agent's kernel anchoring (with a fake `conntrack`)."""

from __future__ import annotations

import subprocess

import pytest

from qasm.controller.events import AgentReport, KernelPath, Reason
from qasm.controller.kernel_anchor import ConntrackAnchor
from qasm.controller.messages import KernelPathChange
from qasm.flow import FlowKey
from qasm.kernel.netfilter import (
    MIN_INITIAL_UDP_LENGTH,
    KernelSettings,
    conntrack_insert,
    kernel_bucket_bytes,
    kube_chain,
    kube_proxy_rules,
    kube_proxy_teardown,
    nft_ruleset,
    parse_conntrack,
)
from testbed.records.metrics import kernel_record
from tests.unit.test_chain import LTE_IP, SERVER_IP, WIFI_IP, ChainBench

VIP = "10.2.0.100"
ENDPOINTS = ("10.2.4.1", "10.2.4.2", "10.2.4.3")


def settings(variant="netfilter", functions=("firewall",), **overrides) -> KernelSettings:
    values = {
        "variant": variant, "functions": functions, "service_ip": "10.2.0.250",
        "service_port": 4433, "clients": "10.1.0.0/16", "service_side": "rt-svc",
        "rate_bytes_per_s": 1_000_000, "burst_bytes": 500_000,
    }  # fmt: skip
    values.update(overrides)
    return KernelSettings(**values)


# --- kube-proxy ---------------------------------------------------------------------------------


def test_chain_names_are_kube_proxys():
    # pkg/proxy/iptables/proxier_test.go: Service ns1/svc1 port p80 over TCP, endpoint
    # 10.180.0.1:80.
    assert kube_chain("KUBE-SVC-", "ns1/svc1:p80", "tcp") == "KUBE-SVC-XPGD46QRK7WJZT7O"
    assert (
        kube_chain("KUBE-SEP-", "ns1/svc1:p80", "tcp", "10.180.0.1:80")
        == "KUBE-SEP-SXIVWICOYRO3J4NJ"
    )


def test_cluster_ip_rules_pick_each_endpoint_with_equal_probability_and_dnat_to_it():
    rules = kube_proxy_rules(
        settings(functions=("loadbalancer",), service_ip=VIP, endpoints=ENDPOINTS,
                 endpoints_cidr="10.2.4.0/24")
    ).splitlines()  # fmt: skip
    assert rules[0] == "*nat" and rules[-1] == "COMMIT"
    service = [r for r in rules if r.startswith("-A KUBE-SVC-")]
    # 1/3 of all, then 1/2 of the rest, then the rest: each endpoint a third.
    assert "--probability 0.3333333333" in service[0]
    assert "--probability 0.5000000000" in service[1]
    assert "statistic" not in service[2] and len(service) == 3
    dnat = [r.rpartition("--to-destination ")[2] for r in rules if "DNAT" in r]
    assert dnat == [f"{ip}:4433" for ip in ENDPOINTS]
    # Clients are outside the cluster CIDR: their traffic is marked for masquerade.
    masq = [r for r in rules if r.startswith("-A KUBE-SERVICES ! -s 10.2.4.0/24")]
    assert len(masq) == 1 and f"-d {VIP}/32 --dport 4433" in masq[0]
    assert masq[0].endswith("-j KUBE-MARK-MASQ")
    assert any("MASQUERADE --random-fully" in r for r in rules)


def test_kube_proxy_teardown_removes_every_chain_it_made():
    values = settings(functions=("loadbalancer",), service_ip=VIP, endpoints=ENDPOINTS)
    made = {r.split()[0][1:] for r in kube_proxy_rules(values).splitlines() if r.startswith(":")}
    removed = {r.split()[1] for r in kube_proxy_teardown(values).splitlines() if r[:2] == "-X"}
    assert made == removed and len(made) == 3 + 1 + len(ENDPOINTS)


# --- nftables ---------------------------------------------------------------------------------


def test_the_firewall_admits_only_initials_and_established_traffic():
    script = nft_ruleset(settings())
    assert "ct state established,related accept" in script
    # A new flow to the service needs the long-header bit and an Initial's size.
    initial = next(line for line in script.splitlines() if "ct state new udp length" in line)
    assert f">= {MIN_INITIAL_UDP_LENGTH}" in initial and "@th,64,1 1 accept" in initial
    assert MIN_INITIAL_UDP_LENGTH == 1208
    assert "ct original ip daddr 10.2.0.250 drop" in script
    assert "masquerade" not in script and "meter" not in script


def test_the_rate_limit_is_per_client_address_and_per_connection_with_qasm():
    assert (
        "meter rate_per_connection { ip saddr limit rate over 1000000 bytes/second burst "
        "500000 bytes } drop" in nft_ruleset(settings(functions=("ratelimit",)))
    )
    with_qasm = nft_ruleset(settings("netfilter-qasm", ("ratelimit",)))
    assert "{ ct mark limit rate over" in with_qasm
    # Every new connection is numbered, so the meter can follow its paths.
    assert "ct state new ct mark 0 ct mark set numgen inc" in with_qasm


def test_nat_masquerades_the_clients_on_the_service_side_only():
    script = nft_ruleset(settings(functions=("nat",), agent_ip="10.2.0.254"))
    # Not the Tracking Agent's reports: it checks they come from the client's addresses.
    assert 'ip saddr 10.1.0.0/16 ip daddr != 10.2.0.254 oifname "rt-svc" masquerade' in script
    assert "table inet" not in script  # no filter rules asked


def test_rules_match_the_original_destination_behind_kube_proxy():
    script = nft_ruleset(
        settings(functions=("firewall", "loadbalancer"), service_ip=VIP, endpoints=ENDPOINTS)
    )
    assert f"ct original ip daddr {VIP} udp dport 4433" in script
    assert "ip saddr { 10.2.4.1 , 10.2.4.2 , 10.2.4.3 } drop" in script
    assert nft_ruleset(settings(functions=("loadbalancer",))) == ""


# --- conntrack ------------------------------------------------------------------------------

LISTED = (
    "udp      17 118 src=10.1.1.1 dst=10.2.0.100 sport=50000 dport=4433 src=10.2.4.2 "
    "dst=10.2.0.1 sport=4433 dport=31245 [ASSURED] mark=7 use=1\n"
    "udp      17 25 src=10.1.2.1 dst=10.2.0.250 sport=6000 dport=4433 [UNREPLIED] "
    "src=10.2.0.250 dst=10.1.2.1 sport=4433 dport=6000 mark=0 use=1\n"
    "tcp      6 431999 ESTABLISHED src=10.1.1.1 dst=10.2.0.1 sport=1 dport=2 src=10.2.0.1 "
    "dst=10.1.1.1 sport=2 dport=1 [ASSURED] mark=0 use=1\n"
    "conntrack v1.4.7 (conntrack-tools): 3 flow entries have been shown.\n"
)


def test_conntrack_listing_is_parsed_with_its_translations():
    translated, plain = parse_conntrack(LISTED)
    assert (translated.original.src, translated.original.sport) == ("10.1.1.1", 50000)
    assert translated.mark == 7
    assert translated.dnat_target == ("10.2.4.2", 4433)
    assert translated.snat_source == ("10.2.0.1", 31245)
    assert plain.dnat_target is None and plain.snat_source is None and plain.mark == 0


def test_a_new_paths_entry_copies_the_connections_translations_and_mark():
    old, _ = parse_conntrack(LISTED)
    argv = conntrack_insert(old, "10.1.2.1", 6000, 120)
    options = dict(zip(argv[2::2], argv[3::2], strict=False))
    assert argv[:2] == ["conntrack", "-I"]
    assert (options["--orig-src"], options["--sport"]) == ("10.1.2.1", "6000")
    assert (options["--orig-dst"], options["--dport"]) == (VIP, "4433")
    # The reply tuple un-NATed (the inverse of the original); the kernel applies the NAT.
    assert (options["--reply-src"], options["--reply-port-src"]) == (VIP, "4433")
    assert (options["--reply-dst"], options["--reply-port-dst"]) == ("10.1.2.1", "6000")
    assert options["--dst-nat"] == "10.2.4.2:4433"  # the same endpoint
    assert options["--src-nat"] == "10.2.0.1"
    assert options["--mark"] == "7"  # the same rate budget
    assert options["--status"] == "SEEN_REPLY,ASSURED"  # past the firewall's admission


def test_an_untranslated_entry_gets_no_nat_options():
    _, plain = parse_conntrack(LISTED)
    argv = conntrack_insert(plain, "10.1.3.1", 7000, 120)
    assert not {"--dst-nat", "--src-nat", "--mark"} & set(argv)


class FakeConntrack:
    """`conntrack` in a namespace: answers -L from LISTED, records what it was asked."""

    def __init__(self, listed: str = LISTED, insert_fails: bool = False) -> None:
        self.listed, self.insert_fails = listed, insert_fails
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str]) -> subprocess.CompletedProcess:
        self.calls.append(argv)
        command = argv[2:]
        if command[1] == "-L":
            src = command[command.index("--orig-src") + 1]
            lines = [line for line in self.listed.splitlines() if f"src={src} " in line]
            return subprocess.CompletedProcess(argv, 0, "\n".join(lines), "0 flow entries")
        failed = command[1] == "-I" and self.insert_fails
        return subprocess.CompletedProcess(argv, int(failed), "", "File exists" if failed else "")


OLD = FlowKey("10.1.1.1", 50000, VIP, 4433)
NEW = FlowKey("10.1.2.1", 6000, VIP, 4433)
GONE = FlowKey("10.1.1.1", 49000, VIP, 4433)


def test_the_anchor_creates_the_new_paths_entry_in_the_routers_namespace():
    conntrack = FakeConntrack()
    ok, text = ConntrackAnchor(4242, conntrack).apply(KernelPathChange("c1", OLD, NEW, GONE))
    assert ok and text == f"created {NEW}; deleted {GONE}"
    assert all(c[:2] == ["nsenter", "--net=/proc/4242/ns/net"] for c in conntrack.calls)
    listed, inserted, deleted = (c[2:] for c in conntrack.calls)
    assert listed[:2] == ["conntrack", "-L"] and "50000" in listed
    assert inserted == conntrack_insert(parse_conntrack(LISTED)[0], "10.1.2.1", 6000, 120)
    assert deleted[:2] == ["conntrack", "-D"] and "49000" in deleted


@pytest.mark.parametrize(
    ("conntrack", "expected"),
    [
        (FakeConntrack(listed=""), "no conntrack entry for"),
        (FakeConntrack(insert_fails=True), "File exists"),
    ],
)
def test_the_anchor_says_why_a_path_could_not_be_anchored(conntrack, expected):
    ok, text = ConntrackAnchor(1, conntrack).apply(KernelPathChange("c1", OLD, NEW))
    assert not ok and expected in text


def test_with_a_kernel_middlebox_the_agent_anchors_in_conntrack_before_it_acknowledges():
    bench = ChainBench("qasm", 0, functions=(), kernel_netns_pid=4242)
    bench.handshake()
    _, datagram = bench.agent.announce(
        bench.pair.client, (WIFI_IP, 50000), (LTE_IP, 6000), True, retire=(WIFI_IP, 49000)
    )
    bench.net.events.clear()
    bench.report(datagram, "lte")
    kernel, report = bench.net.events
    assert isinstance(kernel, KernelPath) and isinstance(report, AgentReport)
    assert report.reason is Reason.ANNOUNCED
    assert (kernel.client, kernel.old_path, kernel.new_path, kernel.retired_path) == (
        "c1", FlowKey(WIFI_IP, 50000, SERVER_IP, 4433), FlowKey(LTE_IP, 6000, SERVER_IP, 4433),
        FlowKey(WIFI_IP, 49000, SERVER_IP, 4433),
    )  # fmt: skip
    bench.net.events.clear()
    _, datagram = bench.agent.retire(bench.pair.client, (WIFI_IP, 50000))
    bench.report(datagram, "lte")
    kernel, report = bench.net.events
    assert report.reason is Reason.RETIRED
    assert (kernel.old_path, kernel.new_path, kernel.retired_path) == (
        None, None, FlowKey(WIFI_IP, 50000, SERVER_IP, 4433),
    )  # fmt: skip


def test_kernel_record_counts_a_clients_entries_nat_mappings_and_endpoints():
    entries = parse_conntrack(
        LISTED + LISTED.replace("10.2.4.2", "10.2.4.3").replace("50000", "50001")
    )
    service = (VIP, 4433)
    report_to_agent = parse_conntrack(LISTED.replace("10.2.0.100", "10.2.0.254"))
    record = kernel_record(
        entries + report_to_agent, ["10.1.1.1", "10.1.3.1"], service, ("nat", "loadbalancer"),
        False,
    )  # fmt: skip
    assert record == {
        "conntrack_entries": 2, "conntrack_shared_by_host": False, "nat_mappings": 2,
        "backend_changed": True,
    }  # fmt: skip
    firewall_only = kernel_record(entries[:1], ["10.1.1.1"], service, ("firewall",), True)
    assert firewall_only["nat_mappings"] is None and firewall_only["backend_changed"] is None


def test_leakage_is_judged_against_the_bucket_the_kernel_really_has(tmp_path):
    """nftables' byte bucket holds a second of the rate on top of the burst (measured: a
    fresh one let ~1.1 MB through at once at 1 MB/s with a 100 kB burst)."""
    from testbed.emulation.runner import _enforced_limit
    from tests.unit.conftest import load_scenario_text

    scenario = load_scenario_text(
        tmp_path,
        "variants: [netfilter, tuple]\nfunctions: [ratelimit]\n"
        "ratelimit: {rate_mbit: 8, burst_kbit: 800}\n"
        "topology: {name: routed}\nworkload: {bytes: 4000}\n",
    )
    assert kernel_bucket_bytes(1_000_000, 100_000) == 1_100_000
    assert _enforced_limit(scenario, "tuple").burst_kbit == 800
    assert _enforced_limit(scenario, "netfilter").burst_kbit == 8800
    assert _enforced_limit(scenario, "baseline") is None
