"""The ``gossip`` syncer: the kernel's counts into this origin's rows, the
mesh's view back into the agent's half of the kernel's slots (the plan:
:mod:`xpro_mesh.agent.mapsync_columns`, its scalar reference
:mod:`xpro_mesh.agent.mapsync`; how rows travel: :mod:`xpro_mesh.mesh.node`;
the data path: docs/kernel-agent-contract.md).

Every cycle reads every live slot (in the default executor: one pass over
each slot's ``gen`` and ``c`` in the mmapped arrays, the slots that moved
copied whole; a full cycle, or one in an attack, copies every slot), plans
on the event loop in chunks that yield to it
(so probes and merges are served between two chunks, and only the loop
ever touches the table), and writes only the views that moved (executor).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from xpro_mesh.agent.mapsync import CyclePlan, DestViews, SlotMemory, SlotRead, read_slots
from xpro_mesh.agent.mapsync_columns import FULL_EVERY, STEP, plan_cycle_steps
from xpro_mesh.agent.syncer import SyncReport
from xpro_mesh.agent.vouching import Vouching
from xpro_mesh.core.algorithm import Params
from xpro_mesh.core.table import PairTable
from xpro_mesh.datapath.backend import DestRead, MapBackend

__all__ = ["FIRST_PULL_ROUNDS", "GossipSync", "write_plan", "write_views"]

log = logging.getLogger("xpro_mesh.agent")
T = TypeVar("T")

# how often the vouches are selected again: a moved client waits at most this
# (its budget token aside) before it is judged as known
VOUCH_INTERVAL_S = 1.0
FIRST_PULL_ROUNDS = 10  # gossip intervals the first map sync waits for a peer's answer


class GossipSync:
    """Owns the map sync between one data path and the mesh's rows."""

    def __init__(
        self,
        backend: MapBackend,
        table: PairTable,
        *,
        pulled: asyncio.Event | None = None,
        first_pull_timeout_s: float = 0.0,
        stop: asyncio.Event | None = None,
    ) -> None:
        self.backend = backend
        self.table = table
        self.memory = SlotMemory.for_slots(backend.pairs_max, backend.dests_max)
        self.step = STEP  # slots planned between two yields to the loop
        self.full_every = FULL_EVERY  # cycles between two that plan every slot
        self.clock: Callable[[], int] = time.time_ns  # cluster time of a cycle
        self._cycles = 0
        # Set by the mesh when a merge accepted rows; the sync loop then
        # writes the views that moved (refresh) before the next cycle.
        self.news = asyncio.Event()
        # Called after a cycle that changed this origin's rows: the mesh
        # gossips them now rather than at its next round.
        self.on_own_rows: Callable[[], None] = _nothing
        self._last_read: tuple[SlotRead, DestRead] | None = None
        self._deferred: list[CyclePlan] = []  # refreshes' plans, retired next cycle
        self._pulled = pulled
        self._first_pull_timeout_s = first_pull_timeout_s
        self._stop = stop
        self._waited = pulled is None
        # Vouches (issue 13): the pairs established elsewhere, written at
        # most every VOUCH_INTERVAL_S (a selection reads every row: ~55 ms
        # at 10^5 rows, too much for every 100 ms cycle).
        self.vouching: Vouching | None = None
        self._vouched_at = -math.inf
        # Held views (issue 13): until view_hold after the first cycle (the
        # mesh's rows pulled and synced once), a destination view the kernel
        # holds from an earlier life is not lowered, and no heartbeat is
        # written (so the kernel keeps holding those views).
        self._gate_until: int | None = None
        self._gated = False  # a view was skipped at the gate

    def set_params(self, params: Params) -> None:
        """New thresholds: the rows' window rules change, so every view is rewritten."""
        self.table.set_params(params)
        self.memory.forget_views()

    async def cycle(self, report: SyncReport) -> None:
        if not self._waited:
            await self._await_first_pull()
            self._waited = True
        await self._cycle(report)

    async def _await_first_pull(self) -> None:
        """Hold the first map sync until a peer has answered our digest, so a
        restarted node holds the rows of its earlier life for pairs its kernel
        no longer has (those it has are taken from the kernel's windows, see
        :mod:`xpro_mesh.agent.mapsync`). A node alone waits the timeout once;
        waiting loses nothing, the kernel keeps counting."""
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
        self.news.clear()  # this cycle writes whatever was merged before it
        full = self._cycles % max(1, self.full_every) == 0
        # An incremental cycle copies only the slots whose gen or c moved; a
        # full one copies every slot, as it plans every slot.
        pairs = await _blocking(read_slots, backend, self.memory, not full)
        dests = await _blocking(backend.read_dests)
        self._cycles += 1
        now = self.clock()
        if self._gate_until is None:
            self._gate_until = now + int(backend.get_config().view_hold)
            self._gated = False
        gating = now < self._gate_until
        if not gating and self._gated:
            self.memory.forget_views()  # the views skipped at the gate, written now
            self._gated = False
        plan = await self._plan(pairs, dests, full)
        deferred, self._deferred = self._deferred, []
        if gating:
            skipped = keep_held_views(plan, dests, self.memory)
            self._gated |= skipped is not plan
            plan = skipped
        await _blocking(write_plan, backend, plan.with_expiries_of(deferred), self.memory)
        if not gating:
            backend.write_heartbeat(now)
        self._last_read = (pairs, dests)
        if self.vouching is not None and time.monotonic() - self._vouched_at >= VOUCH_INTERVAL_S:
            self._vouched_at = time.monotonic()
            await _blocking(self.vouching.cycle, self.table)
        if plan.own_changed:
            self.on_own_rows()
        report.full_cycles += 1 if full else 0
        report.last_full = full
        report.last_pairs_read = len(pairs)
        report.last_ops = len(plan.pair_views.slots) + len(plan.dest_views.dslots)
        report.last_deletes = len(plan.expire_slots)
        report.last_restarted = 0

    async def refresh(self, report: SyncReport) -> None:
        """The views moved by rows merged since the last cycle, from that
        cycle's read (no new read: the pair views' ``adj`` is relative to
        the count read, which this origin's rows hold, so it stays right;
        a slot that restarted since has a new gen and ignores its view).
        An incremental plan with nothing new from the kernel: it costs what
        the merged pairs and their destinations cost."""
        if self._last_read is None:
            return
        pairs, dests = self._last_read
        plan = await self._plan(pairs, dests, full=False)
        if self._gate_until is not None and self.clock() < self._gate_until:
            # against the views the kernel holds now (this agent wrote since the read)
            current = await _blocking(self.backend.read_dests)
            skipped = keep_held_views(plan, current, self.memory)
            self._gated |= skipped is not plan
            plan = skipped
        await _blocking(write_views, self.backend, plan, self.memory)
        self._deferred.append(plan)  # its retirements go with the next cycle's

    async def _plan(self, pairs: SlotRead, dests: DestRead, full: bool) -> CyclePlan:
        steps = plan_cycle_steps(
            self.table, pairs, dests, self.memory, self.clock(), self.step, full=full
        )
        while True:
            try:
                next(steps)
            except StopIteration as done:
                plan: CyclePlan = done.value
                return plan
            await asyncio.sleep(0)  # the mesh runs between two chunks


def _nothing() -> None:
    return None


def write_plan(backend: MapBackend, plan: CyclePlan, memory: SlotMemory) -> None:
    """A cycle's plan into the data path, in the backend's order (pair views,
    destination views, expired pairs, expired destinations). A failure part
    way leaves views that the next cycle rewrites (``memory`` is told to);
    the rows already hold what was read, so nothing is folded twice."""
    try:
        _write_views(backend, plan)
        backend.expire_pairs(plan.expire_slots, plan.expire_gens)
        backend.expire_dests(plan.expire_dslots, plan.expire_dgens)
    except BaseException:
        memory.forget_views()
        raise


def keep_held_views(plan: CyclePlan, dests: DestRead, memory: SlotMemory) -> CyclePlan:
    """``plan`` without the destination views that would lower a view the
    kernel holds (issue 13: ``v_c`` over ``v_ts1 .. v_ts2``, rate compared):
    a restarted agent's first views re-base on a fresh local read and may
    miss the mesh's count. Skipped views are forgotten, so the first cycle
    after the gate writes them."""
    dv = plan.dest_views
    if dv.count is None or not len(dv.dslots):
        return plan
    rows = dests.rows
    old = np.zeros(max(int(dests.high_water), int(dv.dslots.max()) + 1), np.float64)
    live = rows["v_gen"] == rows["gen"]
    w = (rows["v_ts2"].astype(np.float64) - rows["v_ts1"].astype(np.float64)).clip(1.0)
    old[dests.slots[live].astype(np.intp)] = rows["v_c"][live].astype(np.float64) / w[live]
    nw = (dv.ts2.astype(np.float64) - dv.ts1.astype(np.float64)).clip(1.0)
    lower = dv.count.astype(np.float64) / nw < old[dv.dslots.astype(np.intp)]
    if not lower.any():
        return plan
    keep = ~lower
    memory.d_gen[dv.dslots[lower]] = 0  # rewritten once the gate is past
    kept = DestViews(
        dslots=dv.dslots[keep],
        gen=dv.gen[keep],
        adj=dv.adj[keep],
        nadj=dv.nadj[keep],
        ts1=dv.ts1[keep],
        ts2=dv.ts2[keep],
        count=dv.count[keep],
    )
    return dataclasses.replace(plan, dest_views=kept)


def write_views(backend: MapBackend, plan: CyclePlan, memory: SlotMemory) -> None:
    """A refresh's plan: its views only (its retirements wait for the next
    cycle, :meth:`CyclePlan.with_expiries_of`)."""
    try:
        _write_views(backend, plan)
    except BaseException:
        memory.forget_views()
        raise


def _write_views(backend: MapBackend, plan: CyclePlan) -> None:
    pv, dv = plan.pair_views, plan.dest_views
    if len(pv.slots):
        backend.write_pair_views(pv.slots, pv.gen, pv.adj, pv.ts1, pv.ts2)
    if len(dv.dslots):
        backend.write_dest_views(dv.dslots, dv.gen, dv.adj, dv.nadj, dv.ts1, dv.ts2, dv.count)


async def _blocking(fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)
