"""The ``gossip`` syncer: the kernel's counts into this origin's rows, the
mesh's view back into the agent's half of the kernel's slots (see
:mod:`xpro_mesh.agent.mapsync` for the plan, :mod:`xpro_mesh.mesh.node` for how
rows travel, docs/kernel-agent-contract.md for the data path).

Every cycle reads every live slot (a memory copy of the mmapped arrays), plans,
and writes only the views that moved. Blocking calls run in the default
executor; the state is touched on the event loop only.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from xpro_mesh.agent.mapsync import CyclePlan, SlotMemory, plan_cycle
from xpro_mesh.agent.syncer import SyncReport
from xpro_mesh.core.algorithm import Params
from xpro_mesh.core.gossip_state import GossipState
from xpro_mesh.datapath.backend import DestRead, MapBackend, PairRead

__all__ = ["FIRST_PULL_ROUNDS", "GossipSync", "Planner", "write_plan"]

log = logging.getLogger("xpro_mesh.agent")
T = TypeVar("T")

FIRST_PULL_ROUNDS = 10  # gossip intervals the first map sync waits for a peer's answer

Planner = Callable[[GossipState, PairRead, DestRead, SlotMemory, int], CyclePlan]


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
        planner: Planner = plan_cycle,
    ) -> None:
        self.backend = backend
        self.state = state
        self.memory = SlotMemory.for_slots(backend.pairs_max, backend.dests_max)
        self._planner = planner
        self._pulled = pulled
        self._first_pull_timeout_s = first_pull_timeout_s
        self._stop = stop
        self._waited = pulled is None

    def set_params(self, params: Params) -> None:
        """New thresholds: the rows' window rules change, so every view is rewritten."""
        self.state.set_params(params)
        self.memory.forget_views()

    async def cycle(self, report: SyncReport) -> None:
        if not self._waited:
            await self._await_first_pull()
            self._waited = True
        with _gc_paused():
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
        pairs = await _blocking(backend.read_pairs)
        dests = await _blocking(backend.read_dests)
        plan = self._planner(self.state, pairs, dests, self.memory, time.time_ns())
        await _blocking(self._write, plan)
        report.full_cycles += 1
        report.last_full = True
        report.last_pairs_read = len(pairs.slots)
        report.last_ops = len(plan.pair_views.slots) + len(plan.dest_views.dslots)
        report.last_deletes = len(plan.expire_slots)
        report.last_restarted = 0

    def _write(self, plan: CyclePlan) -> None:
        write_plan(self.backend, plan, self.memory)


def write_plan(backend: MapBackend, plan: CyclePlan, memory: SlotMemory) -> None:
    """A cycle's plan into the data path, in the backend's order (pair views,
    destination views, expired pairs, expired destinations). A failure part
    way leaves views that the next cycle rewrites (``memory`` is told to);
    the rows already hold what was read, so nothing is folded twice."""
    try:
        pv, dv = plan.pair_views, plan.dest_views
        if len(pv.slots):
            backend.write_pair_views(pv.slots, pv.gen, pv.adj, pv.ts1, pv.ts2)
        if len(dv.dslots):
            backend.write_dest_views(dv.dslots, dv.gen, dv.adj, dv.nadj, dv.ts1, dv.ts2)
        backend.expire_pairs(plan.expire_slots, plan.expire_gens)
        backend.expire_dests(plan.expire_dslots, plan.expire_dgens)
    except BaseException:
        memory.forget_views()
        raise


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
