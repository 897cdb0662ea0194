"""How a topology declares its parameters, so scenarios are validated against them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Parameter:
    kind: type  # int or float
    minimum: float  # inclusive for int, exclusive for float unless inclusive_minimum
    maximum: float  # inclusive
    description: str
    # Delay, jitter and loss of 0 mean "unimpaired": a sweep may start there.
    inclusive_minimum: bool = False
