"""How a topology declares its parameters, so scenarios are validated against them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Parameter:
    kind: type  # int or float
    minimum: float  # inclusive for int, exclusive for float
    maximum: float  # inclusive
    description: str
