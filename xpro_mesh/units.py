"""Durations and rates as operators write them, and the one configuration error.

One rule everywhere (the agent's TOML and flags, ``xdp attach --config``,
``xdp set``, ``PUT /v1/config``, the Ansible role):

* a **duration** needs a unit: ``"500ms"``, ``"1.5s"``, ``"1m30s"``, ``"250us"``,
  ``"100ns"``; a bare number (``500`` or ``"500"``) is refused, because a
  unit-less duration is the typo this check exists to catch (500 what?);
* a **rate** is packets per second: a bare number is packets/s (``1000``,
  ``"1000"``), units are optional (``"1000/s"``, ``"2k pps"``, ``"6000/min"``).

The kernel compares integers, so both come out whole and within its s64:
``"1.5ns"`` and ``"1.5/s"`` are refused rather than rounded. The parsers raise
``ValueError`` with the problem; callers add the key, as :class:`ConfigError`
(``<key>: <problem>``, one line). This module imports nothing of the package.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal

__all__ = [
    "DURATION_UNITS",
    "MAX_S64",
    "ConfigError",
    "format_duration",
    "parse_duration_ns",
    "parse_rate_pps",
    "show",
]

S = 1_000_000_000
MAX_S64 = 2**63 - 1
DURATION_UNITS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "ms": 1_000_000,
    "s": S,
    "m": 60 * S,
    "min": 60 * S,
    "h": 3600 * S,
}
_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ns|us|µs|ms|min|s|m|h)")
_WHOLE = re.compile(r"(?:\d+(?:\.\d+)?\s*(?:ns|us|µs|ms|min|s|m|h)\s*)+")
_BARE = re.compile(r"\d+(?:\.\d+)?")
_RATE = re.compile(r"(\d+(?:\.\d+)?)\s*([kKMG]?)\s*(pps|/s|/min|/m)?")
_RATE_MULT = {"": 1, "k": 1_000, "K": 1_000, "M": 1_000_000, "G": 1_000_000_000}
_RATE_PER = {None: 1, "pps": 1, "/s": 1, "/min": 60, "/m": 60}


class ConfigError(ValueError):
    """A configuration value that cannot be used. ``str()`` is the one line to
    print, ``<key>: <problem>``; ``key`` may be a file when the file itself
    is the problem."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


def show(value: object) -> str:
    """A value as the operator wrote it (TOML spelling) for an error message."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return repr(value)


def _in_range(number: int, value: object, unit: str) -> int:
    if number > MAX_S64:
        raise ValueError(f"must be at most 2^63-1 {unit}, got {show(value)}")
    return number


def parse_duration_ns(value: object) -> int:
    """Nanoseconds in ``value``, a string whose every number has a unit."""
    if (isinstance(value, int | float) and not isinstance(value, bool)) or (
        isinstance(value, str) and _BARE.fullmatch(value.strip())
    ):
        raise ValueError(
            f'expected a duration with a unit like "500ms" or "5s" '
            f"(a bare number is refused), got {show(value)}"
        )
    if not isinstance(value, str) or not _WHOLE.fullmatch(value.strip()):
        raise ValueError(f'expected a duration like "500ms" or "1m30s", got {show(value)}')
    total = sum(
        (Decimal(n) * DURATION_UNITS[u] for n, u in _PART.findall(value.strip())), Decimal(0)
    )
    if total != total.to_integral_value():
        raise ValueError(f"expected a whole number of nanoseconds, got {show(value)}")
    return _in_range(int(total), value, "ns")


def parse_rate_pps(value: object) -> int:
    """Whole packets per second in ``value``: an int, or a string like ``"2k pps"``."""
    expected = f'expected a rate like 1000, "1000/s" or "2k pps", got {show(value)}'
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(expected)
        return _in_range(value, value, "packets/s")
    m = _RATE.fullmatch(value.strip()) if isinstance(value, str) else None
    if m is None:
        raise ValueError(expected)
    number, mult, per = m.groups()
    pps = Decimal(number) * _RATE_MULT[mult] / _RATE_PER[per]
    if pps != pps.to_integral_value():
        raise ValueError(
            f"expected a whole number of packets per second, got {show(value)} = {pps}/s"
        )
    return _in_range(int(pps), value, "packets/s")


def format_duration(ns: int) -> str:
    """The shortest exact spelling of ``ns`` (``5_000_000_000`` → ``"5s"``)."""
    for unit, size in (("h", 3600 * S), ("m", 60 * S), ("s", S), ("ms", 10**6), ("us", 10**3)):
        if ns and ns % size == 0:
            return f"{ns // size}{unit}"
    return f"{ns}ns"
