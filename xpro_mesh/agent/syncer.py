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
import logging
import time
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from xpro_mesh.core.algorithm import Params

__all__ = [
    "REFRESH_GAP_S",
    "SYNC_FAILURE_LOG_S",
    "LocalOnly",
    "Refreshing",
    "SyncReport",
    "Syncer",
    "run_cycle",
    "run_sync_loop",
]

log = logging.getLogger("xpro_mesh.agent")

SYNC_FAILURE_LOG_S = 10.0  # a sync failing every cycle logs once per this
REFRESH_GAP_S = 0.02  # news gathers this long before a refresh (one for a burst of merges)


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
    refreshes: int = 0  # views written between two cycles (Refreshing)
    failures: int = 0
    last_error: str = ""


class Syncer(Protocol):
    """One sync mode. ``cycle`` may raise: the loop counts it and retries."""

    async def cycle(self, report: SyncReport) -> None: ...

    def set_params(self, params: Params) -> None: ...


@runtime_checkable
class Refreshing(Protocol):
    """A syncer that can write news between two cycles: ``news`` is set
    when what it syncs against changed (a peer's rows merged), and
    ``refresh`` writes the views that moved without reading the data path
    again. The loop runs it in the pause between two cycles, so a peer's
    rows reach the kernel in milliseconds, not up to an interval later."""

    news: asyncio.Event

    async def refresh(self, report: SyncReport) -> None: ...


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
        await _pause(syncer, report, started + interval_s, stop)


async def _pause(syncer: Syncer, report: SyncReport, until: float, stop: asyncio.Event) -> None:
    """Wait until ``until`` (monotonic) or ``stop``; a :class:`Refreshing`
    syncer's news meanwhile is written after :data:`REFRESH_GAP_S`, while at
    least that long is left before the next cycle (which writes it anyway)."""
    news = syncer.news if isinstance(syncer, Refreshing) else None
    while not stop.is_set():
        left = until - time.monotonic()
        if left <= 0:
            return
        waits = [stop.wait()] if news is None else [stop.wait(), news.wait()]
        tasks = [asyncio.ensure_future(w) for w in waits]
        try:
            await asyncio.wait(tasks, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
        if news is None or not news.is_set() or stop.is_set():
            continue
        if until - time.monotonic() < 2 * REFRESH_GAP_S:
            return  # the cycle is about to write it
        await asyncio.sleep(REFRESH_GAP_S)
        news.clear()
        assert isinstance(syncer, Refreshing)
        try:
            await syncer.refresh(report)
            report.refreshes += 1
        except Exception as exc:  # the next cycle writes what this one did not
            report.failures += 1
            report.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("view refresh failed: %s", report.last_error)
