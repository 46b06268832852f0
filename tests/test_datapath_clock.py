"""The kernel-clock to cluster-time conversion, in its one place."""

from __future__ import annotations

import time

from xpro_mesh.datapath import clock


def test_offset_turns_the_monotonic_clock_into_cluster_time() -> None:
    offset = clock.kernel_offset_ns()
    mono = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
    cluster = clock.cluster_now_ns()
    assert abs(clock.to_cluster(mono, offset) - cluster) < 5_000_000  # 5 ms on a busy VM


def test_conversion_round_trips() -> None:
    offset = clock.kernel_offset_ns()
    for kernel_ns in (0, 123_456_789, 10**15):
        assert clock.from_cluster(clock.to_cluster(kernel_ns, offset), offset) == kernel_ns


def test_offset_is_stable_between_reads() -> None:
    a, b = clock.kernel_offset_ns(), clock.kernel_offset_ns()
    assert abs(a - b) < 1_000_000  # NTP slews at most 0.5 ms/s


def test_cluster_time_is_unix_time_in_ns() -> None:
    assert abs(clock.cluster_now_ns() - time.time_ns()) < 10_000_000


def test_coarse_clock_resolution_is_a_jiffy() -> None:
    tick = clock.coarse_resolution_ns()
    assert 1_000_000 <= tick <= 10_000_000  # HZ between 100 and 1000


def test_skew_error_is_skew_over_window() -> None:
    assert clock.max_skew_error(10**9, 10**6) == 0.001
