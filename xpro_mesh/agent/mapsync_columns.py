"""The map-sync cycle over columns: :func:`xpro_mesh.agent.mapsync.plan_cycle`
for a million slots, with the columnar table (:mod:`xpro_mesh.core.table`)
in place of :class:`~xpro_mesh.core.gossip_state.GossipState`.

Same plan, step for step (``tests/test_mapsync_columns.py`` runs both on the
same reads and demands the same views, retirements and rows): this origin's
rows from the kernel's windows (Algorithm 1 with the catch-up), expiry, the
pair views of every read slot, the destination views of every read
destination, each written only when it moved. Every step is a handful of
numpy calls over the whole read; no Python runs per slot.

One difference the test allows for: versions. The scalar planner issues a
new version slot by slot; here the rows synced by Algorithm 1 get theirs
first, then the windows taken whole (``restart_own``). Both issue one
version per change, so digests and deltas agree in everything but the order
of sequence numbers within a cycle.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from xpro_mesh.agent.mapsync import CyclePlan, DestViews, PairViews, SlotMemory, SlotRead
from xpro_mesh.core.table import PairTable
from xpro_mesh.core.table import PairViews as TablePairViews
from xpro_mesh.datapath.backend import DestRead

__all__ = ["FULL_EVERY", "STEP", "plan_cycle_columns", "plan_cycle_steps"]

I64 = npt.NDArray[np.int64]
T_ = TypeVar("T_", bound=np.generic)


def _addresses(field: np.ndarray) -> npt.NDArray[np.bytes_]:
    """A ``V16`` column of slot rows as the table's ``S16`` keys."""
    return np.ascontiguousarray(field).view("S16").reshape(-1)


STEP = 65_536  # slots planned between two yields to the event loop (~10-30 ms)


def plan_cycle_columns(
    table: PairTable,
    pairs: SlotRead,
    dests: DestRead,
    memory: SlotMemory,
    now: int,
) -> CyclePlan:
    """:func:`~xpro_mesh.agent.mapsync.plan_cycle`, vectorised (mutates
    ``table`` and ``memory``): :func:`plan_cycle_steps` run to the end."""
    steps = plan_cycle_steps(table, pairs, dests, memory, now)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            plan: CyclePlan = done.value
            return plan


FULL_EVERY = 60  # an incremental cycle plans only what moved; every this many, all
INCREMENTAL_SHARE = 4  # a cycle where over 1/4 of the slots moved plans them all


def plan_cycle_steps(
    table: PairTable,
    pairs: SlotRead,
    dests: DestRead,
    memory: SlotMemory,
    now: int,
    step: int = STEP,
    full: bool = True,
) -> Generator[None, None, CyclePlan]:
    """The plan as a generator that yields after every ``step`` slots, so the
    agent's event loop answers probes and merges rows between two chunks.

    ``full``: every read slot is planned, as the scalar reference does.
    Otherwise only what can have moved: slots with new packets or a new
    window, slots of the pairs whose rows changed (merges, this cycle's own
    rows and expiry: :meth:`PairTable.take_changed`), and the destinations
    of those; every other slot's view is the one written before, unchanged,
    so the plan is the same (``tests/test_mapsync_columns.py`` runs both).
    The table saying "everything changed" (new thresholds) makes it full.

    Rows merged between two chunks are safe: each chunk's rows and views are
    those of the table at that chunk; a merge after the views were taken is
    in the next cycle's ``take_changed``."""
    n = len(pairs)
    slots = pairs.slots.astype(np.int64)
    gen, kts1, kts2, kc = pairs.gen, pairs.ts1, pairs.ts2, pairs.c
    # Only the slots whose gen or count differ from the last read can be new
    # or busy (a million quiet slots: two compares, no copies).
    old_gen, old_c = pairs.of(memory.gen), pairs.of(memory.c)
    read_moved = np.flatnonzero((old_gen != gen) | (old_c != kc))
    memory.r_busy = len(read_moved) * INCREMENTAL_SHARE > n  # the next read copies all
    seen = np.ones(n, dtype=np.bool_)
    dc = np.zeros(n, dtype=np.int64)
    m_gen, m_c, m_slots = gen[read_moved], kc[read_moved], slots[read_moved]
    m_seen = memory.gen[m_slots] == m_gen
    seen[read_moved] = m_seen
    dc[read_moved] = np.where(m_seen, np.maximum(m_c - memory.c[m_slots], 0), m_c)
    memory.gen[m_slots] = m_gen
    memory.c[m_slots] = m_c
    merged = table.take_changed()
    full = full or merged is None or memory.plan_all
    memory.plan_all = False
    if not full:
        assert merged is not None
        busy = np.flatnonzero(~seen | (dc > 0))
        # Most slots moved anyway (an attack): planning all costs the same and
        # needs no bookkeeping of what moved.
        full = (len(busy) + len(merged.ids)) * INCREMENTAL_SHARE > n
        if not full:
            plan_at = np.union1d(busy, _positions(slots, memory.slots_of(merged.ids)))
    if full:
        plan_at = np.arange(n)

    own_changed = 0
    for lo in range(0, len(plan_at), step):
        at = _chunk(plan_at, lo, step, full)
        own_changed += _sync_own_rows(
            table,
            memory,
            slots[at],
            _ChunkKeys(pairs, at),
            seen[at],
            kts1[at],
            kts2[at],
            dc[at],
            kc[at],
        )
        yield
    expiry = table.expire(now)
    gone_slots = memory.slots_of(expiry.removed_ids)
    memory.forget_pids(expiry.removed_ids)
    touched: list[I64] = []  # destinations (ids) whose views may have moved
    if full:
        view_at = plan_at
    else:
        assert merged is not None
        moved = table.take_changed()
        assert moved is not None  # only set_params makes it None, and not mid-cycle
        view_at = np.union1d(
            np.union1d(plan_at, _positions(slots, memory.slots_of(moved.ids))),
            _positions(slots, gone_slots),
        )
        for changed in (merged, moved):  # pairs held here or not, kept or gone
            touched.append(table.destination_of(changed.ids))
            touched.append(table.destination_ids(changed.removed_dst))

    chunks: list[PairViews] = []
    known: list[TablePairViews] = []  # every planned slot's pair view, as folded now
    gone_parts: list[npt.NDArray[np.int64]] = []
    for lo in range(0, len(view_at), step):
        at = _chunk(view_at, lo, step, full)
        views, gone, held = _pair_views(
            table, _ChunkKeys(pairs, at), slots[at], gen[at], kc[at], memory
        )
        chunks.append(views)
        known.append(held)
        touched.append(table.destination_of(held.ids))
        gone_parts.append(_positions_of(at)[gone])
        yield
    gone_at = np.concatenate(gone_parts) if gone_parts else np.zeros(0, np.int64)

    # Destinations to plan: those of the planned slots, and those whose
    # retirement the backend put off (a pair slot still named them).
    wanted = None
    if not full:
        touched.append(table.destination_ids(memory.d_retry))
        wanted = np.unique(np.concatenate(touched))
    dv, d_gone_slots, d_gone_gens = _dest_views(table, dests, memory, wanted, _joined(known))
    return CyclePlan(
        pair_views=_concat(chunks),
        dest_views=dv,
        expire_slots=slots[gone_at].astype(np.uint32),
        expire_gens=gen[gone_at],
        expire_dslots=d_gone_slots,
        expire_dgens=d_gone_gens,
        own_changed=own_changed,
        expired_rows=expiry.dropped,
    )


Chunk = I64 | slice


def _chunk(positions: I64, lo: int, step: int, every: bool) -> Chunk:
    """Positions ``lo .. lo + step`` of a plan: a slice when the plan covers
    every position in order (``positions`` is ``arange(n)``), so the chunk's
    columns are views, not gathers."""
    if every:
        return slice(lo, min(lo + step, len(positions)))
    return positions[lo : lo + step]


def _positions_of(at: Chunk) -> I64:
    if isinstance(at, slice):
        return np.arange(at.start, at.stop, dtype=np.int64)
    return at


class _ChunkKeys:
    """The pairs of one chunk of the read (positions ``at``), gathered only
    where asked: most slots' pair ids come from the cache, and their keys
    are never needed."""

    __slots__ = ("_at", "_pairs")

    def __init__(self, pairs: SlotRead, at: Chunk) -> None:
        self._pairs = pairs
        self._at = _positions_of(at)

    def src(self, sub: I64) -> npt.NDArray[np.bytes_]:
        """The sources of the chunk's positions ``sub``."""
        return self._pairs.src_at(self._at[sub])

    def dst(self, sub: I64) -> npt.NDArray[np.bytes_]:
        return self._pairs.dst_at(self._at[sub])


def _ids(table: PairTable, memory: SlotMemory, slots: I64, keys: _ChunkKeys) -> I64:
    """The table's pair id of each slot's pair (-1: not held): from the
    memory's cache, looked up by key where the cache does not know it."""
    ids = memory.cached_ids(slots)
    missing = np.flatnonzero(ids < 0)
    if len(missing):
        ids[missing] = table.pair_ids(keys.src(missing), keys.dst(missing))
    return ids


def _positions(slots: I64, wanted: I64) -> I64:
    """Positions in the read (sorted by slot) of the ``wanted`` slots it holds."""
    wanted = np.unique(wanted[wanted >= 0])
    at = np.searchsorted(slots, wanted)
    ok = at < len(slots)
    at, wanted = at[ok], wanted[ok]
    found: I64 = at[slots[at] == wanted]
    return found


def _pair_views(
    table: PairTable,
    keys: _ChunkKeys,
    slots: I64,
    gen: npt.NDArray[np.uint64],
    kc: I64,
    memory: SlotMemory,
) -> tuple[PairViews, npt.NDArray[np.bool_], TablePairViews]:
    """The views of read slots that moved since written (recorded in
    ``memory``), which slots' pairs are held nowhere any more, and the table's
    views of the pairs held."""
    ids = _ids(table, memory, slots, keys)
    held = ids >= 0
    every = bool(held.all())
    if every:  # the usual chunk: no masks, no gathers
        w_ids, w_slots, w_gen, w_kc = ids, slots, gen, kc
    else:
        h = np.flatnonzero(held)
        w_ids, w_slots, w_gen, w_kc = ids[h], slots[h], gen[h], kc[h]
    memory.place(w_ids, w_slots)
    views = table.pair_views(w_ids)
    w_adj = views.c - w_kc  # the table holds counts past 2^63 - 1 at it
    w_ts1 = views.ts1.view(np.uint64)  # windows are never negative
    w_ts2 = views.ts2.view(np.uint64)
    at = _run(w_slots)  # slots ascend: a run of slots is a slice
    moved = memory.w_gen[at] != w_gen
    moved |= memory.w_adj[at] != w_adj
    moved |= memory.w_ts1[at] != w_ts1
    moved |= memory.w_ts2[at] != w_ts2
    m = np.flatnonzero(moved)
    if len(m) == len(moved):  # every view moved (a busy cycle): no gathers
        pv = PairViews(w_slots.astype(np.uint32), w_gen, w_adj, w_ts1, w_ts2)
        put: slice | npt.NDArray[np.uint32] | I64 = at
    else:
        pv = PairViews(
            slots=w_slots[m].astype(np.uint32),
            gen=w_gen[m],
            adj=w_adj[m],
            ts1=w_ts1[m],
            ts2=w_ts2[m],
        )
        put = pv.slots
    memory.w_gen[put] = pv.gen
    memory.w_adj[put] = pv.adj
    memory.w_ts1[put] = pv.ts1
    memory.w_ts2[put] = pv.ts2
    return pv, ~held, views


def _run(slots: I64) -> slice | I64:
    """Ascending slot numbers as a slice when they are a run (first to last,
    none left out), else themselves."""
    if len(slots) and int(slots[-1]) - int(slots[0]) == len(slots) - 1:
        return slice(int(slots[0]), int(slots[-1]) + 1)
    return slots


def _joined(parts: list[TablePairViews]) -> TablePairViews | None:
    """The chunks' pair views as one (None when there are none, or a count
    past 2^63 makes one exact only in its overflow map)."""
    if not parts or any(p.overflow for p in parts):
        return None
    return TablePairViews(
        np.concatenate([p.ids for p in parts]),
        np.concatenate([p.ts1 for p in parts]),
        np.concatenate([p.ts2 for p in parts]),
        np.concatenate([p.c for p in parts]),
        np.concatenate([p.origins for p in parts]),
    )


def _concat(chunks: list[PairViews]) -> PairViews:
    if not chunks:
        z = np.zeros(0, np.uint64)
        return PairViews(np.zeros(0, np.uint32), z, np.zeros(0, np.int64), z.copy(), z.copy())
    return PairViews(
        slots=np.concatenate([v.slots for v in chunks]),
        gen=np.concatenate([v.gen for v in chunks]),
        adj=np.concatenate([v.adj for v in chunks]),
        ts1=np.concatenate([v.ts1 for v in chunks]),
        ts2=np.concatenate([v.ts2 for v in chunks]),
    )


def _sync_own_rows(
    table: PairTable,
    memory: SlotMemory,
    slots: I64,
    keys: _ChunkKeys,
    seen: npt.NDArray[np.bool_],
    kts1: I64,
    kts2: I64,
    dc: I64,
    kc: I64,
) -> int:
    """The scalar ``_own_step`` and ``_sync_own`` over every read slot: how
    many own rows changed. Pair ids come from ``memory`` where it knows
    them (a key lookup per slot per cycle would cost as much as the rest)."""
    ids = _ids(table, memory, slots, keys)
    own, o_ts1, o_ts2, written = table.own_rows(ids)
    t_t4 = table.params.t_t4
    busy = dc > 0
    # seen, no own row: the packets since are a new row at the latest of them
    fresh_seen = seen & ~own & busy
    # seen, own row: Algorithm 1 with the row's start; or the T_T4 shrink alone
    more = seen & own & busy
    shrink = seen & own & ~busy & (o_ts2 - o_ts1 > t_t4)
    # a new window: Algorithm 2 restarted it (mark), or a first row
    restarted = ~seen & own & (written | (kts1 > o_ts2))
    first = ~seen & ~own
    taken = ~seen & own & ~written & (kts1 <= o_ts2)  # counted by this window: take it

    sync = fresh_seen | more | shrink | restarted | first
    i = np.flatnonzero(sync)
    every = len(i) == len(sync)  # a busy chunk: every slot syncs, no gathers

    def of(col: npt.NDArray[T_]) -> npt.NDArray[T_]:
        return col if every else col[i]

    fs, mo, sh, rs, fi = of(fresh_seen), of(more), of(shrink), of(restarted), of(first)
    k_ts1, k_ts2, m_ts1 = of(kts1), of(kts2), of(o_ts1)
    # The three cases are exclusive (no own row; own row with or without packets).
    ts1 = np.where(fs, k_ts2, np.where(mo, np.minimum(m_ts1, k_ts2), np.where(sh, m_ts1, k_ts1)))
    ts2 = np.where(sh, of(o_ts2), k_ts2)
    count = np.where(rs | fi, of(kc), of(dc))
    mark = rs.astype(np.int64)
    changed = 0
    s_ids = of(ids)
    known = s_ids >= 0
    if known.all():
        if len(s_ids):
            synced = table.record_local_ids(s_ids, ts1, ts2, count, mark, catch_up=True)
            changed += int(synced.changed.sum())
    else:
        k, u = np.flatnonzero(known), np.flatnonzero(~known)
        if len(k):
            synced = table.record_local_ids(
                s_ids[k], ts1[k], ts2[k], count[k], mark[k], catch_up=True
            )
            changed += int(synced.changed.sum())
        at = i[u]
        synced = table.record_local(
            keys.src(at), keys.dst(at), ts1[u], ts2[u], count[u], mark[u], catch_up=True
        )
        changed += int(synced.changed.sum())
        memory.place(synced.ids, slots[at])
    t = np.flatnonzero(taken)
    if len(t):
        t_src, t_dst = keys.src(t), keys.dst(t)
        table.restart_own(t_src, t_dst, kts1[t], kts2[t], kc[t])
        zero = np.zeros(len(t), np.int64)
        table.record_local(t_src, t_dst, kts1[t], kts2[t], zero, zero, catch_up=True)
        changed += len(t)
    return changed


def _dest_views(
    table: PairTable,
    dests: DestRead,
    memory: SlotMemory,
    wanted: I64 | None = None,
    known: TablePairViews | None = None,
) -> tuple[DestViews, npt.NDArray[np.uint32], npt.NDArray[np.uint64]]:
    """The views of the read destinations (of the destination ids in
    ``wanted`` only, and those the table no longer holds, when given) that
    moved since written, and which destinations no pair names any more.
    ``known``: pair views folded this cycle, not folded again."""
    drows = dests.rows
    dslots = dests.slots.astype(np.int64)
    dids = table.destination_ids(_addresses(drows["dst"]))
    if wanted is not None:
        keep = (dids < 0) | np.isin(dids, wanted)
        drows, dslots, dids = drows[keep], dslots[keep], dids[keep]
    dgen = drows["gen"].astype(np.uint64)
    views = table.destination_views(dids[dids >= 0], known=known)
    # destination_views leaves out destinations without pairs: match by id
    position = np.full(max(int(dids.max(initial=-1)) + 1, 1), -1, np.int64)
    position[views.ids] = np.arange(len(views.ids))
    at = np.where(dids >= 0, position[np.maximum(dids, 0)], -1)
    held = at >= 0
    h = np.flatnonzero(held)
    a = at[h]
    c = views.c
    s = dslots[h]
    g = dgen[h]
    adj = c[a] - drows["c"].astype(np.int64)[h]
    nadj = views.clients[a] - drows["n"].astype(np.int64)[h]
    ts1 = views.ts1[a].astype(np.uint64)
    ts2 = views.ts2[a].astype(np.uint64)
    moved = (
        (memory.d_gen[s] != g)
        | (memory.d_adj[s] != adj)
        | (memory.d_nadj[s] != nadj)
        | (memory.d_ts1[s] != ts1)
        | (memory.d_ts2[s] != ts2)
        | (drows["v_c"][h] != c[a])  # the held view's count, as the kernel has it
    )
    m = np.flatnonzero(moved)
    dv = DestViews(
        dslots=s[m].astype(np.uint32),
        gen=g[m],
        adj=adj[m],
        nadj=nadj[m],
        ts1=ts1[m],
        ts2=ts2[m],
        count=c[a][m].astype(np.int64),
    )
    memory.d_gen[dv.dslots] = dv.gen
    memory.d_adj[dv.dslots] = dv.adj
    memory.d_nadj[dv.dslots] = dv.nadj
    memory.d_ts1[dv.dslots] = dv.ts1
    memory.d_ts2[dv.dslots] = dv.ts2
    gone = ~held
    memory.d_retry = _addresses(drows["dst"])[gone]
    return dv, dslots[gone].astype(np.uint32), dgen[gone]
