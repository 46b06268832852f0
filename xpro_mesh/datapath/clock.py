"""The one boundary between the kernel clock and the cluster time base.

Records gossiped between proxies hold **cluster time**: nanoseconds of
``CLOCK_REALTIME`` (Unix time, kept in step across hosts by NTP). The XDP
program cannot read that clock; it reads ``CLOCK_MONOTONIC`` (nanoseconds
since this host booted, via ``bpf_ktime_get_ns()``, or its jiffy-resolution
twin ``CLOCK_MONOTONIC_COARSE`` via ``bpf_ktime_get_coarse_ns()``) and adds
the offset kept in its clock map::

    cluster_ns = kernel_ns + offset,   offset = REALTIME - MONOTONIC

The loader writes the offset at attach and the agent rewrites it
periodically (NTP slews REALTIME against MONOTONIC by up to 500 ppm: 0.5 ms
per second, so once a second keeps the error under a millisecond; a step of
the wall clock is followed at the next write).

Skew the rules tolerate. Within one host all times share this conversion,
so the pair and destination rules see exact window lengths (up to one jiffy
with the coarse clock). Across hosts, a skew of d between two proxies'
clocks moves a merged window's ends by up to d: the rate over a window of
length W is off by at most d / W (1 ms of skew on T_T2 = 1 s: 0.1 %), and
Algorithm 1 line 5 (``ts1' - ts1 > T_T1``) needs d << T_T1. With NTP
(skew of a few ms) and thresholds of a second or more this is negligible;
``max_skew_error`` states it for a given configuration.
"""

from __future__ import annotations

import time

__all__ = [
    "CLOCK_MONOTONIC_COARSE",
    "cluster_now_ns",
    "coarse_resolution_ns",
    "from_cluster",
    "kernel_offset_ns",
    "max_skew_error",
    "to_cluster",
]

CLOCK_MONOTONIC_COARSE = 6  # <linux/time.h>; Python's time module lacks the name


def cluster_now_ns() -> int:
    """Now in the cluster time base."""
    return time.clock_gettime_ns(time.CLOCK_REALTIME)


def kernel_offset_ns(samples: int = 7) -> int:
    """``REALTIME - MONOTONIC`` in ns, the value for the clock map's offset.

    Reads MONOTONIC, REALTIME, MONOTONIC and keeps the tightest sandwich, so
    the error is half the shortest read interval (tens of ns).
    """
    best: tuple[int, int] | None = None
    for _ in range(max(1, samples)):
        m1 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        rt = time.clock_gettime_ns(time.CLOCK_REALTIME)
        m2 = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        width = m2 - m1
        if best is None or width < best[0]:
            best = (width, rt - (m1 + m2) // 2)
    assert best is not None
    return best[1]


def to_cluster(kernel_ns: int, offset_ns: int) -> int:
    """A kernel clock reading as cluster time (what the program computes)."""
    return kernel_ns + offset_ns


def from_cluster(cluster_ns: int, offset_ns: int) -> int:
    """A cluster time as a kernel clock reading (test traces, diagnostics)."""
    return cluster_ns - offset_ns


def coarse_resolution_ns() -> int:
    """The coarse clock's tick (one jiffy: 4 ms at HZ=250, 1 ms at HZ=1000)."""
    return round(time.clock_getres(CLOCK_MONOTONIC_COARSE) * 1e9)


def max_skew_error(window_ns: int, skew_ns: int) -> float:
    """Relative error of a rate judged over ``window_ns`` when the window's
    ends come from clocks ``skew_ns`` apart (or one jiffy of coarse clock)."""
    if window_ns <= 0:
        raise ValueError("window_ns must be > 0")
    return skew_ns / window_ns
