"""What every sync mode is to the agent: a :class:`Syncer` it runs once per
interval, and the one loop that runs it (:func:`run_sync_loop`).

A syncer owns its sync: it reads the data path, merges with whatever it syncs
against (the mesh's rows, the master's M_DB, nothing) and writes the data path
back. The loop owns the schedule and the bookkeeping every mode shares: a failed
cycle is counted and retried at the next interval, and a cycle failing every
interval (M_DB gone) is logged once per :data:`SYNC_FAILURE_LOG_S`, not once per
cycle. New thresholds reach a syncer through :meth:`Syncer.set_params`, in every
mode, so the window rules it applies are always the kernel's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Protocol

from xpro_mesh.agent.histogram import DurationHistogram
from xpro_mesh.core.algorithm import Params

__all__ = [
    "SYNC_FAILURE_LOG_S",
    "LocalOnly",
    "SyncReport",
    "Syncer",
    "run_cycle",
    "run_sync_loop",
]

log = logging.getLogger("xpro_mesh.agent")

SYNC_FAILURE_LOG_S = 10.0  # a sync failing every cycle logs once per this


@dataclass(slots=True)
class SyncReport:
    """The sync loop's record, for /v1/status and /metrics. The loop fills the
    cycle, duration and failure fields; a syncer fills what it planned."""

    cycles: int = 0
    last_duration_s: float = 0.0
    last_pairs_read: int = 0
    last_ops: int = 0
    last_deletes: int = 0
    last_restarted: int = 0
    last_full: bool = False
    full_cycles: int = 0
    failures: int = 0
    last_error: str = ""
    # Every cycle's duration, and the pair slots expired over all cycles.
    durations: DurationHistogram = field(default_factory=DurationHistogram)
    deletes_total: int = 0


class Syncer(Protocol):
    """One sync mode. ``cycle`` may raise: the loop counts it and retries."""

    async def cycle(self, report: SyncReport) -> None: ...

    def set_params(self, params: Params) -> None: ...


class LocalOnly:
    """Mode ``none``: each proxy filters alone; a cycle syncs nothing."""

    def __init__(self, params: Params) -> None:
        self.params = params

    async def cycle(self, report: SyncReport) -> None:
        return None

    def set_params(self, params: Params) -> None:
        self.params = params


async def run_cycle(syncer: Syncer, report: SyncReport) -> None:
    """One cycle, counted when it completes (raises what the cycle raised)."""
    await syncer.cycle(report)
    report.cycles += 1
    report.deletes_total += report.last_deletes


async def run_sync_loop(
    syncer: Syncer, report: SyncReport, interval_s: float, stop: asyncio.Event
) -> None:
    """Run ``syncer`` once per ``interval_s`` until ``stop``; a cycle that runs
    longer than the interval is followed by the next one at once."""
    failing = 0
    logged_at = 0.0
    while not stop.is_set():
        started = time.monotonic()
        try:
            await run_cycle(syncer, report)
            report.last_error = ""
        except Exception as exc:  # counted; the next interval retries
            report.failures += 1
            error = f"{type(exc).__name__}: {exc}"
            failing += 1
            now = time.monotonic()
            if error != report.last_error or now - logged_at >= SYNC_FAILURE_LOG_S:
                log.warning("map sync failed: %s (%d cycles failing in a row)", error, failing)
                logged_at = now
            report.last_error = error
        else:
            if failing:
                log.info("map sync works again after %d failed cycles", failing)
            failing = 0
        report.last_duration_s = time.monotonic() - started
        report.durations.observe(report.last_duration_s)
        pause = max(0.0, interval_s - report.last_duration_s)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=pause)
