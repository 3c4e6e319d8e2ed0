"""The accepted range of every numeric simulation setting, declared in its annotation.

A simulation annotates each number it takes with one of the types below (``num_pairs: Count``,
``norms: Sequence[Positive]``); :func:`check_settings` checks the given values against them before
the simulation starts, so a bad value fails at once with one line naming the option and its range
instead of deep inside the computation or the plot. A list setting needs at least one value.
The command line sees the plain ``int`` / ``float`` (``typing.get_type_hints`` drops the ranges).
"""

from __future__ import annotations

import math
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any


@dataclass(frozen=True)
class Range:
    """Finite numbers from ``low`` to ``high`` (an end marked open is excluded)."""

    low: float = -math.inf
    high: float = math.inf
    open_low: bool = False
    open_high: bool = False

    def __contains__(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        above = value > self.low if self.open_low else value >= self.low
        below = value < self.high if self.open_high else value <= self.high
        return above and below

    def __str__(self) -> str:
        low, high = _number(self.low), _number(self.high)
        if self.high == math.inf:
            return f"{'>' if self.open_low else '>='} {low}"
        return f"in {'(' if self.open_low else '['}{low}, {high}{')' if self.open_high else ']'}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


Count = Annotated[int, Range(1)]
Several = Annotated[int, Range(2)]  # sizes that need a second element: a positive in a batch, a neighbour
Dimension = Annotated[int, Range(2)]  # points on the sphere S^(dim-1) need dim >= 2
Seed = Annotated[int, Range(0, 2**32 - 1)]
Positive = Annotated[float, Range(0, open_low=True)]
NonNegative = Annotated[float, Range(0)]
Interpolation = Annotated[float, Range(-1, 1)]
Cosine = Annotated[float, Range(-1, 1, open_high=True)]  # a cosine threshold that can be exceeded
Momentum = Annotated[float, Range(0, 1, open_high=True)]


@dataclass(frozen=True)
class Declared:
    """A numeric setting: its number type, its range, and whether it is a list of such numbers."""

    number: type
    range: Range
    is_list: bool

    def check(self, simulation: str, name: str, value: Any) -> None:
        """Raise ``ValueError`` naming the option and its range unless ``value`` is within it."""
        values = list(value) if self.is_list and isinstance(value, (list, tuple)) else [value]
        if self.is_list and not values:
            raise ValueError(f"simulate {simulation}: --{name} needs at least one value")
        for number in values:
            right_type = isinstance(number, int) or (self.number is float and isinstance(number, float))
            if isinstance(number, bool) or not right_type or number not in self.range:
                kind = "an integer" if self.number is int else "a finite number"
                each = " (each value)" if self.is_list else ""
                raise ValueError(f"simulate {simulation}: --{name}{each} must be {kind} {self.range}, got {number!r}")


def declared_settings(function: Callable[..., Any]) -> dict[str, Declared]:
    """The numeric settings of a simulation function that declare a range, by name."""
    declared = {}
    for name, hint in typing.get_type_hints(function, include_extras=True).items():
        is_list = typing.get_origin(hint) in (list, tuple, Sequence)
        element = typing.get_args(hint)[0] if is_list else hint
        ranges = [meta for meta in getattr(element, "__metadata__", ()) if isinstance(meta, Range)]
        if ranges:
            declared[name] = Declared(typing.get_args(element)[0], ranges[0], is_list)
    return declared


def check_settings(simulation: str, function: Callable[..., Any], settings: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the first given setting outside its declared range."""
    for name, declared in declared_settings(function).items():
        if name in settings:
            declared.check(simulation, name, settings[name])
