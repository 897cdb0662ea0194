"""Mininet topologies, one per module; scenario `topology.name` picks one from TOPOLOGIES."""

from topologies.dualhomed import DualHomed
from topologies.parameters import Parameter

TOPOLOGIES = {"dualhomed": DualHomed}

__all__ = ["TOPOLOGIES", "Parameter"]
