"""Mininet topologies, one per module; scenario `topology.name` picks one from TOPOLOGIES.

Each is a `Topo` whose `build()` keyword arguments are the scenario's `topology:` block
(checked by testbed/scenario/models.py) and which exposes `roles` (topologies/roles.py)
and `configure(net)` for the per-host set-up a Topo cannot declare; optionally
`reset(net, middlebox_config)` (the network's own state before each run) and
`kill_replica(net, k)` (a fault).
"""

from topologies.chain import Chain
from topologies.dualhomed import DualHomed
from topologies.replicas import Replicas
from topologies.routed import Routed

TOPOLOGIES = {"dualhomed": DualHomed, "chain": Chain, "routed": Routed, "replicas": Replicas}

__all__ = ["TOPOLOGIES"]
