"""The statistics every benchmark reports, written once.

A benchmark repeats a measurement and reports the repetitions as a
:class:`Spread` (min/median/max): on a shared machine the median is the
figure, the extremes say how noisy the run was. Costs are compared as
:func:`ratio` of medians measured in the same run, never against a figure of
another run (``docs/benchmarking.md``). A :class:`Check` is one figure with
its target and whether it met it; every benchmark prints its checks and puts
them in its JSON document (:func:`dumps`), so a reader never has to know a
target to tell a miss.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["Check", "Spread", "checks_json", "dumps", "print_checks", "ratio"]


def _number(value: float, digits: int) -> str:
    """``value`` with ``digits`` decimals; whole numbers exactly when digits is 0."""
    if digits == 0 and float(value).is_integer():
        return str(int(value))
    return f"{value:.{digits}f}"


@dataclass(frozen=True, slots=True)
class Spread:
    """min <= median <= max of one figure's repetitions (at least one)."""

    min: float
    median: float
    max: float

    @classmethod
    def of(cls, samples: Iterable[float]) -> Spread:
        values = list(samples)
        if not values:
            raise ValueError("a spread needs at least one sample")
        return cls(min(values), statistics.median(values), max(values))

    def fmt(self, scale: float = 1.0, digits: int = 0) -> str:
        """``min/median/max`` times ``scale`` (1e3: seconds as ms)."""
        return "/".join(_number(v * scale, digits) for v in (self.min, self.median, self.max))

    def __str__(self) -> str:
        return "/".join(
            _number(v, 0) if float(v).is_integer() else f"{v:g}"
            for v in (self.min, self.median, self.max)
        )


def ratio(numerator: Spread, denominator: Spread) -> float:
    """The ratio of the medians: one cost against another measured in the same run."""
    return numerator.median / denominator.median


@dataclass(frozen=True, slots=True)
class Check:
    """One figure against its target: ``value <= target`` (``at_most``) or
    ``value >= target`` (``at_least``)."""

    what: str
    value: float
    target: float
    unit: str = ""
    bound: Literal["at_most", "at_least"] = "at_most"

    @property
    def met(self) -> bool:
        return self.value <= self.target if self.bound == "at_most" else self.value >= self.target

    def line(self) -> str:
        op = "<=" if self.bound == "at_most" else ">="
        unit = self.unit if self.unit in ("", "x", "%") else f" {self.unit}"
        verdict = "met" if self.met else "MISSED"
        value = f"{self.value:.0f}" if abs(self.value) >= 100 else f"{self.value:.3g}"
        return f"{self.what}: {value}{unit} (target {op} {self.target:g}{unit}) {verdict}"

    def as_json(self) -> dict[str, Any]:
        return {
            "what": self.what,
            "value": self.value,
            "target": self.target,
            "unit": self.unit,
            "bound": self.bound,
            "met": self.met,
        }


def print_checks(checks: Sequence[Check]) -> None:
    """Every check, one a line, then the missed ones counted."""
    print("targets:")
    for c in checks:
        print(f"  {c.line()}")
    missed = sum(not c.met for c in checks)
    print(f"missed: {missed} of {len(checks)}" if missed else f"missed: none of {len(checks)}")


def checks_json(checks: Sequence[Check]) -> dict[str, Any]:
    """The checks and the missed ones' lines, for a benchmark's JSON document."""
    return {
        "checks": [c.as_json() for c in checks],
        "missed": [c.line() for c in checks if not c.met],
    }


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.name.lower()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def dumps(document: dict[str, Any]) -> str:
    """One JSON line; dataclasses (figures, spreads) as objects, enums by name."""
    return json.dumps(_plain(document), default=str)
