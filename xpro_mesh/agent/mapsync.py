"""One map-sync cycle as a plan (data path v2, docs/kernel-agent-contract.md):
what the kernel counted → this origin's rows → the mesh-wide views → the
views written into the agent's half of each slot.

Katran's habit: compute *what to change* (here) apart from *changing it*
(the backend's ``write_*``/``expire_*``, run by the syncer). One writer per
field: the kernel owns the local window of each slot (``gen``, ``ts1``,
``ts2``, ``c``), the agent owns the view (``v_*``), so the plan never
touches a count the kernel keeps, and a packet counted between the read and
the write is judged with the view at once (``c + v_adj``) and folded into
this origin's row at the next cycle (``c - c read``).

This module is the scalar reference: a loop over slots with
:class:`~xpro_mesh.core.gossip_state.GossipState`, readable line by line.
The agent runs the vectorised planner, which a differential test holds to
this one.

What the planner remembers of a slot between cycles (:class:`SlotMemory`)
is the ``gen`` and ``c`` it last read. The same ``gen`` is the same window:
this origin counted ``c - c read`` more packets in it. A new ``gen`` is a new
window (a new pair in the slot, or Algorithm 2's idle restart: "mark", Alg. 1
line 5), and every packet in it is new to the rows. A process that starts
afresh remembers nothing. A kernel window that began by the last packet of
the row it holds from its earlier life (a pinned map that outlived the
agent) counted every packet of that row and the ones since: the window is
taken as the row (:meth:`GossipState.restart_own`), so it is neither lost
(with no peer to answer) nor counted twice (with peers that hand back the
earlier life's rows). A window that began later (a kernel that is new since)
holds none of them: it is synced into the row by Algorithm 1 like a
restarted window.

The memory is updated together with the rows, during planning, not after
the writes: a write that fails leaves stale views (the kernel judges by
them, or locally) that the next cycle rewrites, never a packet folded twice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from xpro_mesh.core.gossip_state import GossipState, LocalCount, LocalSync, Pair
from xpro_mesh.datapath.backend import DestRead, MapBackend

__all__ = [
    "MAX_CATCH_UP",
    "CyclePlan",
    "DestViews",
    "PairViews",
    "SlotMemory",
    "SlotRead",
    "plan_cycle",
    "read_slots",
]

MAX_CATCH_UP = 64  # halvings replayed at most for one pair in one cycle

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
T_ = TypeVar("T_", bound=np.generic)
U32 = npt.NDArray[np.uint32]


@dataclass(slots=True)
class SlotMemory:
    """Per pair slot, as columns indexed by slot number: the ``gen`` and ``c``
    the planner last read (``gen`` 0: never read by this process), and the
    view it last wrote (so a cycle writes only views that moved)."""

    gen: U64
    c: I64
    key_gen: U64  # the gen each slot's cached key was gathered for
    src: npt.NDArray[np.bytes_]  # the cached key of each slot (S16)
    dst: npt.NDArray[np.bytes_]
    w_gen: U64
    w_adj: I64
    w_ts1: U64
    w_ts2: U64
    d_gen: U64 = field(default_factory=lambda: np.zeros(0, np.uint64))
    d_adj: I64 = field(default_factory=lambda: np.zeros(0, np.int64))
    d_nadj: I64 = field(default_factory=lambda: np.zeros(0, np.int64))
    d_ts1: U64 = field(default_factory=lambda: np.zeros(0, np.uint64))
    d_ts2: U64 = field(default_factory=lambda: np.zeros(0, np.uint64))
    plan_all: bool = False  # the next cycle plans every slot (forget_views)
    d_retry: npt.NDArray[np.bytes_] = field(default_factory=lambda: np.zeros(0, "S16"))
    """Destinations whose retirement the last cycle planned (the backend may
    put it off while a pair slot names them): planned again next cycle."""
    slot_of_pid: I64 = field(default_factory=lambda: np.zeros(0, np.int64))
    """Per table pair id, the slot whose view was last planned for it (-1:
    none): lets a cycle find the slots of the pairs a merge changed."""

    pid_of_slot: I64 = field(default_factory=lambda: np.zeros(0, np.int64))
    """Per slot, the table's pair id last seen for it; valid while
    ``slot_of_pid`` names the slot back (an expiry that frees the id breaks it)."""

    r_gen: U64 = field(default_factory=lambda: np.zeros(0, np.uint64))
    """Per slot, the window :func:`read_slots` last copied (``r_gen`` 0:
    none): an incremental read copies again only the slots whose ``gen`` or
    ``c`` moved (:meth:`MapBackend.read_pairs_since`)."""
    r_ts1: U64 = field(default_factory=lambda: np.zeros(0, np.uint64))
    r_ts2: U64 = field(default_factory=lambda: np.zeros(0, np.uint64))
    r_c: I64 = field(default_factory=lambda: np.zeros(0, np.int64))
    r_busy: bool = False  # most slots moved at the last read: the next copies all

    def cached_ids(self, slots: I64) -> I64:
        """The table's pair id of each slot's pair, where known (-1: look it up)."""
        slots = np.asarray(slots, np.int64)
        if len(self.pid_of_slot) == 0:
            return np.full(len(slots), -1, np.int64)
        pid = self.pid_of_slot[slots]
        back = self.slots_of(np.maximum(pid, 0))
        back[pid < 0] = -1
        ok = np.equal(back, slots)
        pid[~ok] = -1
        return pid

    def slots_of(self, ids: I64) -> I64:
        """The slot of each pair id (-1: none known)."""
        ids = np.asarray(ids, np.int64)
        if len(ids) == 0 or int(ids.max()) < len(self.slot_of_pid):
            return self.slot_of_pid[ids]  # a gather: a new array
        known = ids < len(self.slot_of_pid)
        out = np.full(len(ids), -1, np.int64)
        out[known] = self.slot_of_pid[ids[known]]
        return out

    def place(self, ids: I64, slots: I64) -> None:
        """Pair ``ids[i]`` is in slot ``slots[i]`` (ids >= 0)."""
        if len(ids) and int(ids.max()) >= len(self.slot_of_pid):
            grown = np.full(max(int(ids.max()) + 1, 2 * len(self.slot_of_pid)), -1, np.int64)
            grown[: len(self.slot_of_pid)] = self.slot_of_pid
            self.slot_of_pid = grown
        self.slot_of_pid[ids] = slots
        if len(self.pid_of_slot) == 0:
            self.pid_of_slot = np.full(len(self.gen), -1, np.int64)
        self.pid_of_slot[slots] = ids

    def forget_pids(self, ids: I64) -> None:
        """The table no longer holds these pair ids (they may be reused)."""
        ids = np.asarray(ids, np.int64)
        self.slot_of_pid[ids[ids < len(self.slot_of_pid)]] = -1

    @classmethod
    def for_slots(cls, pairs_max: int, dests_max: int) -> SlotMemory:
        def u(n: int) -> U64:
            return np.zeros(n, np.uint64)

        def i(n: int) -> I64:
            return np.zeros(n, np.int64)

        def a(n: int) -> npt.NDArray[np.bytes_]:
            return np.zeros(n, "S16")

        memory = cls(
            u(pairs_max), i(pairs_max), u(pairs_max), a(pairs_max), a(pairs_max),
            u(pairs_max), i(pairs_max), u(pairs_max), u(pairs_max),
            u(dests_max), i(dests_max), i(dests_max), u(dests_max), u(dests_max),
        )  # fmt: skip
        memory.r_gen, memory.r_ts1, memory.r_ts2 = u(pairs_max), u(pairs_max), u(pairs_max)
        memory.r_c = i(pairs_max)
        return memory

    def nbytes(self) -> int:
        """Memory held by the columns."""
        return sum(
            v.nbytes
            for v in (getattr(self, f) for f in self.__dataclass_fields__)
            if isinstance(v, np.ndarray)
        )

    def forget_views(self) -> None:
        """Make the next cycle plan every slot and write every view (after new
        thresholds, or when a write may not have happened)."""
        self.w_gen[:] = 0
        self.d_gen[:] = 0
        self.plan_all = True


@dataclass(frozen=True, slots=True)
class SlotRead:
    """Every live pair slot as read for one cycle, column by column: the
    kernel's window (``gen``, ``ts1``, ``ts2``, ``c``) and the slot's pair.

    The pairs' keys are not copied per cycle: ``by_slot_src``/``by_slot_dst``
    are the key cache indexed by slot number (:class:`SlotMemory`'s, valid
    for this read's slots until the next read), and :meth:`src_at` /
    :meth:`dst_at` gather only the positions a plan needs: a million quiet
    slots cost no 32 MB gather."""

    slots: U32
    gen: U64
    ts1: I64
    ts2: I64
    c: I64
    by_slot_src: npt.NDArray[np.bytes_]
    by_slot_dst: npt.NDArray[np.bytes_]

    def __len__(self) -> int:
        return len(self.slots)

    def of(self, by_slot: npt.NDArray[T_]) -> npt.NDArray[T_]:
        """``by_slot[slots]``: a view when the read holds every slot from 0
        up (the common case: a fill hands out slots in order), else a copy.
        Read only: write with :meth:`put`."""
        n = len(self.slots)
        if n == 0 or int(self.slots[-1]) == n - 1:
            return by_slot[:n]
        return by_slot[self.slots]

    def put(self, by_slot: npt.NDArray[T_], values: npt.ArrayLike) -> None:
        """``by_slot[slots] = values``, as a slice when the slots are dense."""
        n = len(self.slots)
        if n == 0 or int(self.slots[-1]) == n - 1:
            by_slot[:n] = values
        else:
            by_slot[self.slots] = values

    def src_at(self, at: I64) -> npt.NDArray[np.bytes_]:
        """The sources of the read's positions ``at``."""
        return self.by_slot_src[self.slots[at]]

    def dst_at(self, at: I64) -> npt.NDArray[np.bytes_]:
        return self.by_slot_dst[self.slots[at]]

    @property
    def src(self) -> npt.NDArray[np.bytes_]:
        """Every read slot's source (a copy)."""
        return self.by_slot_src[self.slots]

    @property
    def dst(self) -> npt.NDArray[np.bytes_]:
        return self.by_slot_dst[self.slots]


def read_slots(backend: MapBackend, memory: SlotMemory, incremental: bool = False) -> SlotRead:
    """Read every live pair slot; keys are gathered only for slots whose gen
    is new since the keys were last gathered (a slot's key never changes
    while it lives; a recycled slot has a new gen), the rest come from
    ``memory``'s cache: a million quiet slots cost no gather.

    The rows go into ``memory.r_*`` (:meth:`MapBackend.read_pairs_since`)
    and the read's columns are those columns (sliced where the live slots
    are dense), valid, like the key cache, until the next read with this
    memory. ``incremental``: copy again only the slots whose ``gen`` or
    ``c`` moved since the last read (a million quiet slots cost one pass
    over ``gen`` and ``c``), unless most moved at the last one
    (``memory.r_busy``, set by the planner); otherwise every live slot is
    copied. A memory without the ``r_*`` columns reads with
    :meth:`MapBackend.read_pairs`."""
    if len(memory.r_gen) >= backend.pairs_max:
        changes = backend.read_pairs_since(
            memory.r_gen,
            memory.r_ts1,
            memory.r_ts2,
            memory.r_c,
            every=not incremental or memory.r_busy,
        )
        slots, at = changes.slots, changes.changed
        n = len(slots)
        dense = n == 0 or int(slots[-1]) == n - 1
        at_: slice | U32 = slice(0, n) if dense else slots
        gen, c = memory.r_gen[at_], memory.r_c[at_]
        ts1, ts2 = memory.r_ts1[at_].view(np.int64), memory.r_ts2[at_].view(np.int64)
        if at is slots:  # every slot copied
            keep = np.flatnonzero((memory.key_gen[:n] if dense else memory.key_gen[slots]) != gen)
            new, new_gen = slots[keep], gen[keep]
        else:
            fresh = memory.r_gen[at]
            keep = np.flatnonzero(memory.key_gen[at] != fresh)
            new, new_gen = at[keep], fresh[keep]
    else:
        read = backend.read_pairs()
        slots = read.slots
        rows = read.rows
        gen = rows["gen"].astype(np.uint64, copy=False)
        ts1 = rows["ts1"].view(np.int64)  # views of the read, no copies
        ts2 = rows["ts2"].view(np.int64)
        c = rows["c"].astype(np.int64, copy=False)
        dense = len(slots) == 0 or int(slots[-1]) == len(slots) - 1
        held_gen = memory.key_gen[: len(slots)] if dense else memory.key_gen[slots]
        idx = np.flatnonzero(held_gen != gen)
        new, new_gen = slots[idx], gen[idx]
    if len(new):
        keys = backend.pair_keys(new)
        memory.src[new] = np.ascontiguousarray(keys["src"]).view("S16").reshape(-1)
        memory.dst[new] = np.ascontiguousarray(keys["dst"]).view("S16").reshape(-1)
        memory.key_gen[new] = new_gen
    return SlotRead(
        slots=slots,
        gen=gen,
        ts1=ts1,
        ts2=ts2,
        c=c,
        by_slot_src=memory.src,
        by_slot_dst=memory.dst,
    )


@dataclass(frozen=True, slots=True)
class PairViews:
    """Arguments of :meth:`MapBackend.write_pair_views`."""

    slots: U32
    gen: U64
    adj: I64
    ts1: U64
    ts2: U64


@dataclass(frozen=True, slots=True)
class DestViews:
    """Arguments of :meth:`MapBackend.write_dest_views`."""

    dslots: U32
    gen: U64
    adj: I64
    nadj: I64
    ts1: U64
    ts2: U64
    count: I64 | None = None  # the mesh's count (v_c, the held view); None: 0, no hold


@dataclass(frozen=True, slots=True)
class CyclePlan:
    """What one cycle writes and retires, in the backend's order: pair views,
    destination views, expired pairs, then expired destinations."""

    pair_views: PairViews
    dest_views: DestViews
    expire_slots: U32
    expire_gens: U64
    expire_dslots: U32
    expire_dgens: U64
    own_changed: int  # own rows that got a new version (news to gossip)
    expired_rows: int  # rows aged out of the state this cycle

    def with_expiries_of(self, earlier: Sequence[CyclePlan]) -> CyclePlan:
        """This plan retiring the slots ``earlier`` plans retired too (a
        refresh between two cycles defers its retirements to the next
        cycle's write: the backend recycles a retired slot one call later,
        and calls once per cycle leave a cycle for any XDP program still
        holding it). A slot restarted since keeps its new gen and stays."""
        if not earlier:
            return self
        plans = [*earlier, self]
        return replace(
            self,
            expire_slots=np.concatenate([p.expire_slots for p in plans]),
            expire_gens=np.concatenate([p.expire_gens for p in plans]),
            expire_dslots=np.concatenate([p.expire_dslots for p in plans]),
            expire_dgens=np.concatenate([p.expire_dgens for p in plans]),
        )


def _sync_own(
    record_local: Callable[[Pair, LocalCount], LocalSync],
    pair: Pair,
    counted: LocalCount,
    t_t4: int,
) -> bool:
    """Algorithm 1 for this origin's row of ``pair``, then the syncs that were
    missed, replayed: whether the row changed.

    The paper syncs every interval, and each sync shrinks a window that grew
    past T_T4 once (lines 13-17), so a window never outgrows T_T4 by more than
    an interval. An agent that was down, or whose cycle ran long, finds
    windows many times T_T4 long: left to one halving a cycle, their rows
    would dilute the destination's rate for several cycles (Algorithm 2 line
    19 divides the summed counts by the widest window). Each replayed step is
    a sync without new packets, as Algorithm 1 defines it: the pair's rate is
    kept, only the window is brought back within T_T4.
    """
    synced = record_local(pair, counted)
    changed = synced.changed
    for _ in range(MAX_CATCH_UP):
        row = synced.entry
        if row.ts2 - row.ts1 <= t_t4:
            break
        local = synced.local
        synced = record_local(pair, LocalCount(ts1=local.ts1, ts2=local.ts2, dc=0, mark=0))
        if not synced.changed:
            break
        changed = True
    return changed


def _own_step(
    state: GossipState, pair: Pair, seen: bool, kts1: int, kts2: int, dc: int, kc: int
) -> LocalCount | tuple[int, int, int] | None:
    """What to do with this origin's row of ``pair`` given the kernel's window:
    a :class:`LocalCount` for Algorithm 1, a window ``(ts1, ts2, c)`` to take
    as the row (:meth:`GossipState.restart_own`), or None (nothing to do).

    ``seen``: the slot's window is the one read last cycle, and ``dc`` packets
    were counted in it since. Otherwise the window is new to this process.
    """
    own = state.own_entry(pair)
    if seen:
        if own is None:
            # Our row aged out while the slot stayed: the packets since are
            # a new row starting at the first of them we can place.
            return LocalCount(ts1=kts2, ts2=kts2, dc=dc, mark=0) if dc > 0 else None
        if dc > 0:
            return LocalCount(ts1=min(own.ts1, kts2), ts2=kts2, dc=dc, mark=0)
        if own.ts2 - own.ts1 > state.params.t_t4:
            return LocalCount(ts1=own.ts1, ts2=own.ts2, dc=0, mark=0)  # lines 13-17
        return None
    if own is not None and (state.wrote(pair) or kts1 > own.ts2):
        # Algorithm 2 restarted the window (lines 4-7), or the kernel is new
        # since the row was counted (its window starts after the row's last
        # packet): mark' = 1, and the kernel's c holds only packets the row
        # does not.
        return LocalCount(ts1=kts1, ts2=kts2, dc=kc, mark=1)
    if own is not None:
        # The earlier life's row, counted by this kernel's window (which began
        # by its last packet): the window holds all of it and more.
        return (kts1, kts2, kc)
    return LocalCount(ts1=kts1, ts2=kts2, dc=kc, mark=0)  # lines 31-33


def plan_cycle(
    state: GossipState,
    pairs: SlotRead,
    dests: DestRead,
    memory: SlotMemory,
    now: int,
) -> CyclePlan:
    """Fold what the kernel counted into this origin's rows, age rows out,
    and plan the views (scalar reference; mutates ``state`` and ``memory``).

    Every read slot is synced as the paper syncs every L_DB entry each
    interval: a slot without new packets can still have its row shrunk past
    T_T4 (lines 13-17). A slot whose pair has no row left anywhere is retired;
    so is a destination no row names.
    """
    t_t4 = state.params.t_t4
    record_local = state.record_local
    own_changed = 0
    keys: list[Pair] = []
    srcs, dsts = pairs.src, pairs.dst
    for i, slot in enumerate(pairs.slots.tolist()):
        pair = (bytes(srcs[i]).ljust(16, b"\0"), bytes(dsts[i]).ljust(16, b"\0"))
        keys.append(pair)
        gen, kts1, kts2, kc = (
            int(pairs.gen[i]),
            int(pairs.ts1[i]),
            int(pairs.ts2[i]),
            int(pairs.c[i]),
        )
        seen = int(memory.gen[slot]) == gen
        dc = max(0, kc - int(memory.c[slot])) if seen else kc
        step = _own_step(state, pair, seen, kts1, kts2, dc, kc)
        memory.gen[slot] = gen
        memory.c[slot] = kc
        if isinstance(step, LocalCount):
            if _sync_own(record_local, pair, step, t_t4):
                own_changed += 1
        elif step is not None:
            ts1, ts2, c = step
            state.restart_own(pair, ts1, ts2, c)
            _sync_own(record_local, pair, LocalCount(ts1, ts2, 0, 0), t_t4)
            own_changed += 1
    expired = state.expire(now).dropped

    pv: list[tuple[int, int, int, int, int]] = []
    gone: list[tuple[int, int]] = []
    for i, slot in enumerate(pairs.slots.tolist()):
        gen, kc = int(pairs.gen[i]), int(pairs.c[i])
        view = state.pair_view(keys[i])
        if view is None:
            gone.append((slot, gen))
            continue
        wanted = (gen, view.c - kc, view.ts1, view.ts2)
        held = (
            int(memory.w_gen[slot]),
            int(memory.w_adj[slot]),
            int(memory.w_ts1[slot]),
            int(memory.w_ts2[slot]),
        )
        if wanted != held:
            memory.w_gen[slot], memory.w_adj[slot], memory.w_ts1[slot], memory.w_ts2[slot] = wanted
            pv.append((slot, *wanted))

    dv: list[tuple[int, int, int, int, int, int, int]] = []
    dgone: list[tuple[int, int]] = []
    for i, dslot in enumerate(dests.slots.tolist()):
        drow = dests.rows[i]
        gen = int(drow["gen"])
        dview = state.destination_view(bytes(drow["dst"]))
        if dview is None:
            dgone.append((dslot, gen))
            continue
        wanted_d = (
            gen,
            dview.c - int(drow["c"]),
            dview.clients - int(drow["n"]),
            dview.ts1,
            dview.ts2,
        )
        held_d = (
            int(memory.d_gen[dslot]),
            int(memory.d_adj[dslot]),
            int(memory.d_nadj[dslot]),
            int(memory.d_ts1[dslot]),
            int(memory.d_ts2[dslot]),
        )
        if wanted_d != held_d or int(drow["v_c"]) != dview.c:
            (
                memory.d_gen[dslot],
                memory.d_adj[dslot],
                memory.d_nadj[dslot],
                memory.d_ts1[dslot],
                memory.d_ts2[dslot],
            ) = wanted_d
            dv.append((dslot, *wanted_d, dview.c))

    return CyclePlan(
        pair_views=PairViews(*_columns(pv, (np.uint32, np.uint64, np.int64, np.uint64, np.uint64))),
        dest_views=DestViews(
            *_columns(
                dv, (np.uint32, np.uint64, np.int64, np.int64, np.uint64, np.uint64, np.int64)
            )
        ),
        expire_slots=np.array([s for s, _ in gone], np.uint32),
        expire_gens=np.array([g for _, g in gone], np.uint64),
        expire_dslots=np.array([s for s, _ in dgone], np.uint32),
        expire_dgens=np.array([g for _, g in dgone], np.uint64),
        own_changed=own_changed,
        expired_rows=expired,
    )


def _columns(rows: Sequence[tuple[int, ...]], dtypes: tuple[type, ...]) -> list[np.ndarray]:
    if not rows:
        return [np.zeros(0, d) for d in dtypes]
    return [np.array(col, d) for col, d in zip(zip(*rows, strict=True), dtypes, strict=True)]
