"""Scenario files: typed models, loading with line numbers, sweeps, the JSON Schema."""

from testbed.scenario.loading import ScenarioError, load_scenario
from testbed.scenario.models import Artifacts, Migration, Scenario

__all__ = ["Artifacts", "Migration", "Scenario", "ScenarioError", "load_scenario"]
