"""The firewall's SNI allow/deny decision: the pure policy, then in the pipeline."""

from __future__ import annotations

import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from qasm.controller.events import PacketIn, Reason, Verdict
from qasm.controller.messages import FlowRule, PacketOut
from qasm.controller.pipeline import Controller, Decision, MiddleboxConfig
from qasm.functions import firewall as firewall_module
from qasm.functions.firewall import FirewallState, SniPolicy
from tests.unit.conftest import (
    CLIENT_IP,
    CLIENT_MAC,
    SERVER_IP,
    SERVER_MAC,
    arp_frame,
    udp_frame,
)


@pytest.mark.parametrize(
    ("policy", "sni", "admitted"),
    [
        (SniPolicy(), "anything.example", True),
        (SniPolicy(), None, True),
        (SniPolicy(deny=("blocked.example",)), "blocked.example", False),
        (SniPolicy(deny=("blocked.example",)), "BLOCKED.example.", False),
        (SniPolicy(deny=("blocked.example",)), "sub.blocked.example", True),
        (SniPolicy(deny=("*.blocked.example",)), "sub.blocked.example", False),
        (SniPolicy(deny=("*.blocked.example",)), "blocked.example", True),
        (SniPolicy(deny=("*.blocked.example",)), "notblocked.example", True),
        (SniPolicy(allow=("*.example",)), "video.example", True),
        (SniPolicy(allow=("*.example",)), "video.other", False),
        (SniPolicy(allow=("*.example",)), None, False),
        (SniPolicy(allow=("*.example",), deny=("ads.example",)), "ads.example", False),
    ],
)
def test_sni_policy(policy, sni, admitted):
    assert (policy.problem(sni) is None) == admitted


def test_refusals_say_why():
    assert SniPolicy(deny=("*.b.example",)).problem("x.b.example") == (
        "SNI 'x.b.example' matches sni_deny '*.b.example'"
    )
    assert (
        SniPolicy(allow=("a.example",)).problem("c.example") == "SNI 'c.example' not in sni_allow"
    )
    assert SniPolicy(allow=("a.example",)).problem(None) == "no SNI, and sni_allow is set"


# --- in the controller's pipeline -------------------------------------------------------

CLIENT_PORT, SERVER_PORT = 2, 1


def client_datagrams(server_name: str, alpn_count: int = 1) -> list[bytes]:
    """A real aioquic client's first flight; many long ALPN names spread the ClientHello
    over several Initial datagrams."""
    alpn = [f"{i:02d}" + "x" * 200 for i in range(alpn_count)] if alpn_count > 1 else ["q/1"]
    connection = QuicConnection(
        configuration=QuicConfiguration(
            is_client=True, alpn_protocols=alpn, server_name=server_name
        )
    )
    connection.connect((SERVER_IP, 4433), now=0.0)
    return [datagram for datagram, _ in connection.datagrams_to_send(now=0.0)]


def firewall(variant: str, policy: SniPolicy | None) -> Controller:
    box = Controller(
        MiddleboxConfig(variant=variant, service_ip=SERVER_IP, service_port=4433, sni=policy)
    )
    box.switch_connected(dpid=1)
    box.packet_in(1, SERVER_PORT, arp_frame(SERVER_MAC, SERVER_IP, CLIENT_IP), now=0.0)
    box.packet_in(1, CLIENT_PORT, arp_frame(CLIENT_MAC, CLIENT_IP, SERVER_IP), now=0.0)
    return box


def one(decisions: list[Decision]) -> Decision:
    """The only decision of a packet-in (nothing ended meanwhile)."""
    (decision,) = decisions
    assert isinstance(decision.event, PacketIn)
    return decision


@pytest.mark.parametrize("variant", ["tuple", "cid"])  # qasm's firewall path is cid's
def test_a_denied_server_name_is_dropped_and_forgotten(variant):
    policy = SniPolicy(deny=("*.blocked.example",))
    box = firewall(variant, policy)
    (datagram,) = client_datagrams("video.blocked.example")
    decision = one(box.packet_in(1, CLIENT_PORT, udp_frame(datagram), now=1.0))
    assert (decision.event.verdict, decision.event.reason) == (Verdict.DROP, Reason.SNI_REFUSED)
    # The text is the policy's own account: which name matched which pattern.
    assert decision.event.text == policy.problem("video.blocked.example")
    assert not decision.messages and len(box.hops[0].table) == 0


def test_an_allowed_server_name_is_admitted_with_its_rules():
    box = firewall("tuple", SniPolicy(allow=("*.example",)))
    (datagram,) = client_datagrams("video.example")
    decision = one(box.packet_in(1, CLIENT_PORT, udp_frame(datagram), now=1.0))
    assert (decision.event.verdict, decision.event.reason) == (Verdict.ADMIT, Reason.SNI_ALLOWED)
    # Both directions, and the half-open probe (pipeline.py).
    assert len([m for m in decision.messages if isinstance(m, FlowRule)]) == 3
    (connection,) = box.hops[0].table.connections()
    # Decided: nothing of the ClientHello is kept.
    assert connection.firewall == FirewallState()


def test_a_clienthello_over_several_initials_is_decided_when_complete():
    policy = SniPolicy(deny=("blocked.example",))
    box = firewall("tuple", policy)
    datagrams = client_datagrams("blocked.example", alpn_count=8)
    assert len(datagrams) >= 2
    first = one(box.packet_in(1, CLIENT_PORT, udp_frame(datagrams[0]), now=1.0))
    assert (first.event.verdict, first.event.reason) == (Verdict.ADMIT, Reason.SNI_PENDING)
    # Forwarded, but no rules yet: the rest of the ClientHello must reach the controller.
    assert [type(m) for m in first.messages] == [PacketOut]
    (connection,) = box.hops[0].table.connections()
    state = connection.firewall
    assert state.sni_pending and state.hello_prefix and state.original_dcid
    decisions = [one(box.packet_in(1, CLIENT_PORT, udp_frame(d), now=1.0)) for d in datagrams[1:]]
    last = decisions[-1].event
    assert (last.verdict, last.reason) == (Verdict.DROP, Reason.SNI_REFUSED)
    assert last.text == policy.problem("blocked.example")
    assert len(box.hops[0].table) == 0


def test_without_a_policy_no_clienthello_is_decrypted(monkeypatch, client_initial):
    box = firewall("tuple", None)
    assert box.hops[0].firewall.sni is None

    def decrypt(*args, **kwargs):
        raise AssertionError("a ClientHello was decrypted without an SNI policy")

    monkeypatch.setattr(firewall_module.ClientHelloAssembler, "resume", decrypt)
    decision = one(box.packet_in(1, CLIENT_PORT, udp_frame(client_initial), now=1.0))
    assert (decision.event.verdict, decision.event.reason) == (
        Verdict.ADMIT,
        Reason.OPENED_BY_INITIAL,
    )
    (connection,) = box.hops[0].table.connections()
    assert not box.hops[0].firewall.pending(connection)


def test_the_policy_survives_the_controllers_json_config():
    config = MiddleboxConfig(
        variant="tuple", service_ip=SERVER_IP, service_port=4433,
        sni=SniPolicy(allow=("a.example",), deny=("*.b.example",)),
    )  # fmt: skip
    assert MiddleboxConfig.from_json(config.to_json()) == config
