"""Overload warnings (Algorithm 2 line 15) reach userspace through the ring
buffer, at most one per pair per warn_interval and at most warn_per_cpu per
second per CPU, so a flood of dropping pairs cannot flood the agent."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from datapath_support import BASE_TIME, MS, KernelDriver

from xpro_mesh.core.algorithm import Verdict
from xpro_mesh.datapath.backend import PairKey
from xpro_mesh.datapath.config import XdpConfig
from xpro_mesh.datapath.memory import MemoryMaps

pytestmark = pytest.mark.kernel
S = 10**9


@pytest.fixture
def one_cpu() -> Iterator[None]:
    """Keep the test on one CPU: the per-CPU budget is then one budget."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _heavy(
    driver: KernelDriver, memory: MemoryMaps, src: str, start: int, stop: int, step: int
) -> int:
    drops = 0
    for now in range(start, stop, step):
        verdict = driver.feed(src, "10.5.0.1", now)
        assert verdict is memory.feed(src, "10.5.0.1", now)
        drops += verdict is Verdict.DROP_PAIR
    return drops


def test_warnings_are_rate_limited_per_pair_and_per_cpu(
    one_cpu: None, xdp_test_program: Any, kernel_maps: Any
) -> None:
    config = XdpConfig(t_t1=10 * S, t_t2=MS, t_f1=100, t_f2=10**9, warn_interval=S, warn_per_cpu=3)
    kernel = kernel_maps
    kernel.set_config(config)
    memory = MemoryMaps(config)
    driver = KernelDriver(xdp_test_program, kernel)
    kernel.poll_events()

    # One pair dropping for 0.9 s: one warning (per-pair interval).
    drops = _heavy(driver, memory, "10.4.0.1", BASE_TIME, BASE_TIME + 900 * MS, MS)
    events = kernel.poll_events(timeout_ms=100)
    seen = list(events)
    assert drops > 800
    assert [e.key for e in events] == [PairKey.of("10.4.0.1", "10.5.0.1")]
    assert events[0].rate_pps > config.t_f1

    # Six more pairs start dropping within the same second: three more at most.
    for i in range(2, 8):
        _heavy(driver, memory, f"10.4.0.{i}", BASE_TIME + 900 * MS, BASE_TIME + 950 * MS, 10_000)
    events = kernel.poll_events(timeout_ms=100)
    seen += events
    assert len(events) == 2  # budget 3 per second, one spent above
    stats = kernel.read_stats()
    assert stats.warnings == 3
    assert stats.warnings_suppressed == 4
    assert events[-1].suppressed == 0

    # A new second: the first pair warns again (its interval has passed).
    _heavy(driver, memory, "10.4.0.1", BASE_TIME + 1100 * MS, BASE_TIME + 1110 * MS, MS)
    events = kernel.poll_events(timeout_ms=100)
    seen += events
    assert [e.key for e in events] == [PairKey.of("10.4.0.1", "10.5.0.1")]
    assert events[0].suppressed == 4
    # The memory backend tells the same story.
    assert memory.read_stats() == kernel.read_stats()
    assert memory.poll_events() == seen
