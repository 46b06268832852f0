"""Durations and rates as operators write them, in one place.

``"500ms"``, ``"1.5s"``, ``"1m30s"`` are nanoseconds; ``1000``, ``"2k"``,
``"2k pps"``, ``"6000/min"`` are packets per second. The kernel compares
integers, so both must come out whole: ``"1.5ns"`` and ``"1.5/s"`` are
refused rather than rounded. Callers add the key to the message.
"""

from __future__ import annotations

import re
from decimal import Decimal

__all__ = ["DURATION_UNITS", "format_duration", "parse_duration_ns", "parse_rate_pps"]

S = 1_000_000_000
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
_RATE = re.compile(r"(\d+(?:\.\d+)?)\s*([kKMG]?)\s*(pps|/s|/min|/m)?")
_RATE_MULT = {"": 1, "k": 1_000, "K": 1_000, "M": 1_000_000, "G": 1_000_000_000}
_RATE_PER = {None: 1, "pps": 1, "/s": 1, "/min": 60, "/m": 60}


def parse_duration_ns(text: str) -> int:
    """Nanoseconds in ``text`` (every number needs a unit); ValueError if not."""
    t = text.strip()
    if not _WHOLE.fullmatch(t):
        raise ValueError(f'expected a duration like "500ms" or "1m30s", got {text!r}')
    total = sum((Decimal(n) * DURATION_UNITS[u] for n, u in _PART.findall(t)), Decimal(0))
    if total != total.to_integral_value():
        raise ValueError(f"{text!r} is not a whole number of nanoseconds")
    return int(total)


def parse_rate_pps(text: str) -> int:
    """Whole packets per second in ``text``; ValueError if not."""
    m = _RATE.fullmatch(text.strip())
    if m is None:
        raise ValueError(f'expected a rate like 1000, "1000/s" or "2k pps", got {text!r}')
    number, mult, per = m.groups()
    pps = Decimal(number) * _RATE_MULT[mult] / _RATE_PER[per]
    if pps != pps.to_integral_value():
        raise ValueError(f"expected a whole number of packets per second, got {text!r} = {pps}/s")
    return int(pps)


def format_duration(ns: int) -> str:
    """The shortest exact spelling of ``ns`` (``5_000_000_000`` → ``"5s"``)."""
    for unit, size in (("h", 3600 * S), ("m", 60 * S), ("s", S), ("ms", 10**6), ("us", 10**3)):
        if ns and ns % size == 0:
            return f"{ns // size}{unit}"
    return f"{ns}ns"
