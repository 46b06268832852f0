"""The vectorised map-sync planner plans what the scalar reference plans.

Two proxies side by side, one planning with ``GossipState`` and
``mapsync.plan_cycle``, the other with the columnar ``PairTable`` and
``mapsync_columns.plan_cycle_steps`` (in small chunks, so the chunking is
exercised), get the same packets, the same rows from a peer, the same idle
gaps, restarts of the agent (a new incarnation over the same kernel, with
and without the peer handing back the earlier life's rows) and the same
cycles. After every cycle: the agent halves of both kernels are equal bit
for bit (every view and every destination view), so are the kernels' slot
usage (expiries), and this origin's rows are equal in window and count.
Versions are issued in a different order within a cycle (see the module),
so they are not compared.
"""

from __future__ import annotations

import dataclasses
import random

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from xpro_mesh.agent.gossip_sync import write_plan
from xpro_mesh.agent.mapsync import SlotMemory, plan_cycle, read_slots
from xpro_mesh.agent.mapsync_columns import plan_cycle_steps
from xpro_mesh.core.algorithm import Params
from xpro_mesh.core.gossip_state import GossipState, LocalCount
from xpro_mesh.core.rows import from_delta
from xpro_mesh.core.table import PairTable
from xpro_mesh.datapath.config import MapSizes, XdpConfig
from xpro_mesh.datapath.memory import MemoryMaps

S = 10**9
MS = 10**6
SIZES = MapSizes(pairs_max=1 << 9, dests_max=1 << 5)
AGENT_HALF = ["v_gen", "v_adj", "v_ts1", "v_ts2"]


def addr(i: int) -> bytes:
    return b"\0" * 10 + b"\xff\xff" + bytes((11, 0, i // 256, i % 256))


DSTS = [b"\0" * 10 + b"\xff\xff" + bytes((10, 9, 0, d)) for d in range(1, 4)]


class Twin:
    """The same proxy twice: scalar and columnar, each with its kernel."""

    def __init__(self, params: Params, incarnation: int = 1, twin: Twin | None = None) -> None:
        self.params = params
        self.scalar = GossipState("me", incarnation, params)
        self.table = PairTable("me", incarnation, params)
        self.s_maps: MemoryMaps = (
            twin.s_maps if twin else MemoryMaps(XdpConfig.from_params(params), SIZES)
        )
        self.c_maps: MemoryMaps = (
            twin.c_maps if twin else MemoryMaps(XdpConfig.from_params(params), SIZES)
        )
        self.s_mem = SlotMemory.for_slots(SIZES.pairs_max, SIZES.dests_max)
        self.c_mem = SlotMemory.for_slots(SIZES.pairs_max, SIZES.dests_max)

    def feed(self, src: bytes, dst: bytes, now: int) -> None:
        self.s_maps.feed(src, dst, now)
        self.c_maps.feed(src, dst, now)

    def cycle(self, now: int, step: int, full: bool = False) -> None:
        s_plan = plan_cycle(
            self.scalar,
            read_slots(self.s_maps, self.s_mem),
            self.s_maps.read_dests(),
            self.s_mem,
            now,
        )
        write_plan(self.s_maps, s_plan, self.s_mem)
        steps = plan_cycle_steps(
            self.table,
            read_slots(self.c_maps, self.c_mem),
            self.c_maps.read_dests(),
            self.c_mem,
            now,
            step,
        )
        while True:
            try:
                next(steps)
            except StopIteration as done:
                c_plan = done.value
                break
        write_plan(self.c_maps, c_plan, self.c_mem)
        assert s_plan.own_changed == c_plan.own_changed
        assert s_plan.expired_rows == c_plan.expired_rows

    def assert_equal(self, what: str) -> None:
        assert np.array_equal(
            self.s_maps.pair_slots[AGENT_HALF], self.c_maps.pair_slots[AGENT_HALF]
        ), what
        assert np.array_equal(self.s_maps.dest_slots, self.c_maps.dest_slots), what
        assert self.s_maps.ring_status() == self.c_maps.ring_status(), what
        scalar = {
            pe.pair: (pe.entry.ts1, pe.entry.ts2, pe.entry.c)
            for pe in self.scalar.entries()
            if pe.origin == "me"
        }
        columns = {
            pe.pair: (pe.entry.ts1, pe.entry.ts2, pe.entry.c)
            for pe in self.table.entries()
            if pe.origin == "me"
        }
        assert scalar == columns, what


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10**9), step=st.integers(1, 7))
def test_the_columnar_planner_plans_what_the_scalar_planner_plans(seed: int, step: int) -> None:
    rng = random.Random(seed)
    params = Params(
        t_t1=rng.choice([200, 500, 2000]) * MS,
        t_t2=MS,
        t_t3=MS,
        t_t4=rng.choice([300, 1000, 5000]) * MS,
        t_f1=10**6,
        t_f2=10**7,
        r=rng.choice([2, 3]),
    )
    twin = Twin(params)
    peer = GossipState("peer", 1, params)
    now = 1_800_000_000 * S
    incarnation = 1
    for cycle in range(rng.randint(4, 14)):
        for _ in range(rng.randint(0, 12)):  # this proxy's packets
            src, dst = addr(rng.randrange(24)), rng.choice(DSTS)
            for _ in range(rng.randint(1, 6)):
                twin.feed(src, dst, now)
                now += rng.randint(1, 40) * MS
        if rng.random() < 0.5:  # the peer learns our rows
            peer.merge(twin.scalar.delta_for(peer.digest()), now)
        if rng.random() < 0.5:  # the peer counts too, and gossips its rows
            for _ in range(rng.randint(1, 5)):
                pair = (addr(rng.randrange(30)), rng.choice(DSTS))
                peer.record_local(pair, LocalCount(now - 100 * MS, now, rng.randint(1, 20), 0))
            delta = peer.delta_for(twin.scalar.digest())
            twin.scalar.merge(delta, now)
            twin.table.merge(from_delta(delta), now)
        if rng.random() < 0.1:  # the agent restarts, over the same kernels or new ones
            incarnation += 1
            twin = Twin(params, incarnation, twin if rng.random() < 0.6 else None)
            if rng.random() < 0.5:  # a peer hands back what it holds
                delta = peer.delta_for(twin.scalar.digest())
                twin.scalar.merge(delta, now)
                twin.table.merge(from_delta(delta), now)
        if rng.random() < 0.15:  # new thresholds: a shorter T_T4 shrinks quiet rows
            params = dataclasses.replace(params, t_t4=rng.choice([100, 300, 1000]) * MS)
            for state in (twin.scalar, twin.table):
                state.set_params(params)
            twin.params = params
            twin.s_mem.forget_views()
            twin.c_mem.forget_views()
        if rng.random() < 0.2:  # a long gap: idle restarts, decay, expiry
            now += rng.choice([1, 3, 10]) * params.t_t1
        now += rng.randint(1, 100) * MS
        twin.cycle(now, step)
        twin.assert_equal(f"cycle {cycle}")


def test_both_planners_agree_when_our_row_aged_out_under_a_peers_live_one() -> None:
    """Our row of a pair ages out while a peer keeps the pair busy, so the
    kernel's slot stays (its view is the peer's) and our next packets start a
    new row in the same window (the path the random programs reach rarely)."""
    params = Params(t_t1=200 * MS, t_t2=MS, t_t3=MS, t_t4=300 * MS, t_f1=10**6, t_f2=10**7, r=2)
    twin = Twin(params)
    peer = GossipState("peer", 1, params)
    pair = (addr(1), DSTS[0])
    now = 1_800_000_000 * S
    for i in range(5):
        twin.feed(*pair, now + i * MS)
    twin.cycle(now + 10 * MS, 2)
    now += 2 * S  # our row idles past the horizon (T_T1 + T_T4)
    peer.record_local(pair, LocalCount(now - 50 * MS, now, 7, 0))
    delta = peer.delta_for(twin.scalar.digest())
    twin.scalar.merge(delta, now)
    twin.table.merge(from_delta(delta), now)
    twin.cycle(now + MS, 2)
    twin.assert_equal("our row aged out, the peer's view written")
    for i in range(3):
        twin.feed(*pair, now + 2 * MS + i * MS)
    twin.cycle(now + 10 * MS, 2)
    twin.assert_equal("our packets since: a new row in the same window")
    row = twin.scalar.own_entry(pair)
    assert row is not None and row.c == 3
