"""Every topology tells the harness its roles as data (topologies/roles.py)."""

from __future__ import annotations

import pytest

from topologies import TOPOLOGIES
from topologies.chain import Chain, hop_public_address
from topologies.dualhomed import DualHomed
from topologies.replicas import Replicas
from topologies.routed import Routed


def test_dualhomed_has_one_middlebox_switch_with_clients_server_and_backends():
    topo = DualHomed(prefix="q0000", clients=2, backends=3)
    roles = topo.roles
    assert [c.host for c in roles.clients] == ["q0000c1", "q0000c2"]
    assert [(m.switch, m.dpid) for m in roles.middleboxes] == [("q0000mb", 1)]
    assert roles.switches == ("q0000mb",)
    assert [b.ip for b in roles.servers(load_balanced=True)] == ["10.0.4.1", "10.0.4.2", "10.0.4.3"]
    assert roles.servers(load_balanced=False) == (roles.server,)
    assert roles.service_ip(load_balanced=True) == roles.vip != roles.server.ip
    client = roles.clients[1]
    assert client.ips == ("10.0.1.2", "10.0.3.2", "10.0.2.2")  # wifi (two), lte
    assert client.targets == {
        "nat-rebind": ("10.0.1.2",),
        "addr-rebind": ("10.0.3.2", "10.0.1.2"),
        "active": ("10.0.2.2", "10.0.1.2"),
    }
    ends = {interface.name: interface.link for _, interface in roles.link_ends()}
    assert ends["q0000c2-lte"] == "lte" and ends["q0000srv-eth0"] == "server"
    # Ports as the switch numbers them: wifi 2i, lte 2i+1, the server 1, backends from 201.
    links = {(a, b): info for a, b, info in topo.links(withInfo=True)}
    assert links[("q0000c2", "q0000mb")]["port2"] in (4, 5)
    assert roles.backends[0].switch_port == 201


@pytest.mark.parametrize("hops", [1, 3, 8])
def test_a_chain_is_hops_switches_in_series_each_with_its_own_public_address(hops):
    topo = Chain(prefix="q0000", clients=2, hops=hops)
    roles = topo.roles
    assert [m.dpid for m in roles.middleboxes] == list(range(1, hops + 1))
    assert len({m.nat_public_ip for m in roles.middleboxes}) == hops
    assert roles.middleboxes[-1].nat_public_ip == hop_public_address(hops)[0]
    switch_links = [(a, b) for a, b in topo.links() if a in roles.switches and b in roles.switches]
    assert len(switch_links) == hops - 1
    # Clients on the first hop, the server on the last.
    neighbours = {(a, b) for a, b in topo.links()} | {(b, a) for a, b in topo.links()}
    assert (roles.clients[0].host, roles.switches[0]) in neighbours
    assert (roles.server.host, roles.switches[-1]) in neighbours


def test_a_chain_of_no_hops_is_one_plain_switch():
    roles = Chain(prefix="q0000", clients=1, hops=0).roles
    assert roles.middleboxes == () and len(roles.switches) == 1


def test_every_topology_is_registered_by_its_scenario_name():
    assert {
        "dualhomed": DualHomed, "chain": Chain, "routed": Routed, "replicas": Replicas
    } == TOPOLOGIES  # fmt: skip
