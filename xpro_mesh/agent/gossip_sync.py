"""The ``gossip`` syncer: the kernel's counts into this origin's rows, the
mesh's view back into the kernel (see :mod:`xpro_mesh.agent.mapsync` for the
plan, :mod:`xpro_mesh.mesh.node` for how rows travel).

Incremental when it can be: the kernel is scanned for pairs with new packets
(without a Python object per quiet pair), the state names the pairs whose
views moved, and only those are planned. A full cycle (every pair read and
planned) runs first, every ``full_sync_every`` cycles, after new thresholds,
when the kernel holds a number of pairs the agent did not expect (an LRU
eviction, a pair deleted by hand), after an op that failed, or when a large
share of the pairs changed anyway. Both plan the same operations
(``tests/test_agent_sync.py``).

Blocking map calls run in the default executor; the state is only touched on
the event loop, and planning yields to it every ``plan_step`` pairs.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from xpro_mesh.agent.mapsync import PLAN_STEP, SyncPlan, plan_destinations, plan_sync_steps
from xpro_mesh.agent.syncer import SyncReport
from xpro_mesh.core.algorithm import Params
from xpro_mesh.core.gossip_state import GossipState, Pair
from xpro_mesh.datapath.backend import MapBackend, PairKey, PairOp, PairRecord

__all__ = ["FIRST_PULL_ROUNDS", "FULL_SYNC_EVERY", "FULL_SYNC_SHARE", "GossipSync"]

log = logging.getLogger("xpro_mesh.agent")
T = TypeVar("T")

FIRST_PULL_ROUNDS = 10  # gossip intervals the first map sync waits for a peer's answer
FULL_SYNC_EVERY = 60  # map syncs between two full ones (the others skip quiet pairs)
FULL_SYNC_SHARE = 4  # a full sync when over 1/4 of the kernel's pairs changed anyway


class GossipSync:
    """Owns the map sync between one data path and the mesh's rows."""

    def __init__(
        self,
        backend: MapBackend,
        state: GossipState,
        *,
        pulled: asyncio.Event | None = None,
        first_pull_timeout_s: float = 0.0,
        stop: asyncio.Event | None = None,
    ) -> None:
        self.backend = backend
        self.state = state
        self.full_sync_every = FULL_SYNC_EVERY  # 0: every map sync is a full one
        self.plan_step = PLAN_STEP  # pairs planned between two yields to the loop
        self._pulled = pulled
        self._first_pull_timeout_s = first_pull_timeout_s
        self._stop = stop
        self._waited = pulled is None
        self._written_last: dict[Pair, PairRecord] = {}  # pairs the last cycle wrote
        self._kernel_pairs = 0  # pairs the kernel should hold after the last cycle
        self._since_full = FULL_SYNC_EVERY

    def set_params(self, params: Params) -> None:
        """New thresholds: the rows' window rules change, so the next cycle is full."""
        self.state.set_params(params)
        self._since_full = self.full_sync_every

    def force_full(self) -> None:
        """Make the next cycle a full one."""
        self._since_full = self.full_sync_every

    async def cycle(self, report: SyncReport) -> None:
        if not self._waited:
            await self._await_first_pull()
            self._waited = True
        with _gc_paused():
            await self._cycle(report)

    async def _await_first_pull(self) -> None:
        """Hold the first map sync until a peer has answered our digest.

        A restarted node gets the rows of its earlier life back from its peers
        and adopts them, but only for pairs it has not counted since it started
        (:meth:`GossipState.merge`). Its kernel maps may have outlived it (pinned
        maps keep counting while the agent restarts), so a map sync before the
        first pull would start fresh rows for those pairs and the window counted
        before the restart would be refused as ``own_origin``, lost. Waiting
        loses nothing: the kernel keeps the packets in ``dc`` until the sync.
        A node alone (the first of a new mesh) waits the timeout once.
        """
        assert self._pulled is not None
        started = time.monotonic()
        waits = [asyncio.ensure_future(self._pulled.wait())]
        if self._stop is not None:
            waits.append(asyncio.ensure_future(self._stop.wait()))
        try:
            await asyncio.wait(
                waits, timeout=self._first_pull_timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for w in waits:
                w.cancel()
        if self._pulled.is_set():
            log.info(
                "first map sync after a peer's answer (%.0f ms)", (time.monotonic() - started) * 1e3
            )
        elif self._stop is None or not self._stop.is_set():
            log.info(
                "no peer answered within %.1f s: first map sync without the mesh's rows",
                self._first_pull_timeout_s,
            )

    async def _cycle(self, report: SyncReport) -> None:
        backend = self.backend
        state = self.state
        changed = state.take_changed()
        read = None
        if (
            changed is not None
            and self._since_full < self.full_sync_every
            and len(changed) * FULL_SYNC_SHARE <= self._kernel_pairs
        ):
            changed |= self._written_last.keys()
            read = await self._incremental_read(changed)
        if read is None:
            changed = None
            pairs = await _blocking(backend.read_pairs)
            total = len(pairs)
        else:
            pairs, total = read
        steps = plan_sync_steps(state, pairs, time.time_ns(), changed, self.plan_step)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                plan: SyncPlan = done.value
                break
            await asyncio.sleep(0)  # the mesh runs between two steps
        deleted = 0
        if plan.deletes:
            deleted = await _blocking(backend.delete_pairs, plan.deletes)
        applied = await _blocking(backend.apply, plan.pair_ops, ())
        skipped = {*applied.restarted, *applied.missing}
        touched = None if changed is None else {pair[1] for pair in changed}
        dest_ops = plan_destinations(state, plan.pair_ops, skipped, touched)
        if dest_ops:
            await _blocking(backend.apply, (), dest_ops)
        self._kernel_pairs = total + applied.created - deleted
        self._since_full = self._since_full + 1 if read is not None else 0
        if applied.failed or len(plan.pair_ops) * FULL_SYNC_SHARE > self._kernel_pairs:
            # Which ops failed is unknown, or most pairs were written: read all next.
            self._since_full = self.full_sync_every
            self._written_last = {}
        else:
            self._remember_writes(pairs, plan.pair_ops, skipped)
        report.full_cycles += 1 if read is None else 0
        report.last_full = read is None
        report.last_pairs_read = len(pairs)
        report.last_ops = len(plan.pair_ops) + len(dest_ops)
        report.last_deletes = len(plan.deletes)
        report.last_restarted = len(applied.restarted)

    async def _incremental_read(
        self, changed: set[Pair]
    ) -> tuple[list[tuple[PairKey, PairRecord]], int] | None:
        """The kernel records an incremental cycle plans: the pairs with new
        packets, and those of the changed pairs (what the last cycle wrote is
        known without asking). None: run a full cycle instead."""
        backend = self.backend
        active, total = await _blocking(backend.read_active_pairs)
        has_pair = self.state.has_pair
        fresh = sum(1 for key, _ in active if not has_pair((key.src, key.dst)))
        if total != self._kernel_pairs + fresh or len(changed) * FULL_SYNC_SHARE > total:
            return None
        seen = {(key.src, key.dst) for key, _ in active}
        pairs = list(active)
        wanted: list[PairKey] = []
        written = self._written_last
        for pair in changed:
            if pair in seen:
                continue
            expected = written.get(pair)
            src, dst = pair
            assert isinstance(src, bytes) and isinstance(dst, bytes)
            if expected is not None:
                pairs.append((PairKey(src, dst), expected))
            else:
                wanted.append(PairKey(src, dst))
        if len(wanted) * FULL_SYNC_SHARE > total:
            return None
        if wanted:
            pairs += await _blocking(backend.lookup_pairs, wanted)
        return pairs, total

    def _remember_writes(
        self,
        pairs: list[tuple[PairKey, PairRecord]],
        ops: tuple[PairOp, ...],
        skipped: set[PairKey],
    ) -> None:
        """What each applied pair op left in the kernel (the backend's apply
        rules with no packet since): the next incremental cycle re-checks those
        pairs (their new ts2 can trigger the T_T4 rule) without a lookup. A
        packet since sets dc, and the scan for new packets finds the pair."""
        read = dict(pairs) if ops else {}
        written: dict[Pair, PairRecord] = {}
        for op in ops:
            if op.key in skipped:
                continue
            rec = read.get(op.key)
            if op.expect_ts1 is None or rec is None:
                after = PairRecord(op.ts1, op.ts2, op.c_delta, 0, 0)
            else:
                after = PairRecord(op.ts1, max(rec.ts2, op.ts2), rec.c + op.c_delta, 0, 0)
            written[(op.key.src, op.key.dst)] = after
        self._written_last = written


async def _blocking(fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection during a map sync: it allocates an object
    or more per pair read and planned, which with a million pairs would
    trigger collections that walk the whole (long-lived) state again and
    again. Reference counting still frees everything; cycles wait for the
    next collection."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
