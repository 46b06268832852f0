"""One map-sync cycle, as a pure plan: what the kernel counted → this origin's
rows → the mesh-wide view → the operations that re-base the kernel's maps.

Katran's habit: compute *what to change* (here) apart from *changing it*
(:meth:`~xpro_mesh.datapath.backend.MapBackend.apply`, the one writer). The
plan never writes records: it sends deltas computed from what it read, so
packets the kernel counts between the read and the write are kept
(``dc -= acked_dc``, ``c += merged - c_read``; see the backend docstring).

Per pair read from the kernel (the paper's L_DB record ts1', ts2', c', dc',
mark') the origin runs Algorithm 1 against its own row
(:meth:`GossipState.record_local`); the kernel's pair then gets the mesh-wide
view of the pair (the sum over origins) so Algorithm 2's pair rule sees every
proxy's packets, and pairs counted only elsewhere are created (Alg. 1 lines
26-28) so a client that moves to this proxy keeps its rate. Each destination's
aggregate follows its pairs (lines 18-20 over all proxies; ``n(D)`` feeds
the fair-share policy). Pairs whose rows all aged out
are deleted.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Generator, Hashable, Mapping, Sequence
from dataclasses import dataclass

from xpro_mesh.core.gossip_state import GossipState, LocalCount, LocalSync, Pair
from xpro_mesh.datapath.backend import DestOp, PairKey, PairOp, PairRecord

__all__ = [
    "PLAN_STEP",
    "SyncPlan",
    "dest_ops_for",
    "plan_destinations",
    "plan_sync",
    "plan_sync_steps",
]

PLAN_STEP = 2_000  # pairs planned between two yields to the event loop (~10-30 ms)


@dataclass(frozen=True, slots=True)
class SyncPlan:
    """The pair operations of one cycle and what they stand for. Deletes go
    first (the kernel takes deleted pairs out of their destinations), then the
    pair ops, then :func:`plan_destinations` for the ops that ran."""

    pair_ops: tuple[PairOp, ...]
    deletes: tuple[PairKey, ...]
    own_changed: int  # own rows that got a new version (have news to gossip)
    expired: int  # rows aged out of the state this cycle


MAX_CATCH_UP = 64  # halvings replayed at most for one pair in one cycle


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
    an interval. An agent that was down (a crash, a restart) or whose cycle
    ran long finds windows many times T_T4 long: left to one halving a cycle,
    their rows would dilute the destination's rate for several cycles
    (Algorithm 2 line 19 divides the summed counts by the widest window), and
    the filter could pass an attack it was dropping. Each replayed step is a
    sync without new packets, as Algorithm 1 defines it: the pair's rate is
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

def plan_sync(
    state: GossipState,
    pairs: Sequence[tuple[PairKey, PairRecord]],
    now: int,
    changed: Collection[Pair] | None = None,
) -> SyncPlan:
    """Fold the kernel's counts into ``state`` and plan the kernel's re-base
    (:func:`plan_sync_steps` run to the end)."""
    steps = plan_sync_steps(state, pairs, now, changed)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            plan: SyncPlan = done.value
            return plan


def plan_sync_steps(
    state: GossipState,
    pairs: Sequence[tuple[PairKey, PairRecord]],
    now: int,
    changed: Collection[Pair] | None = None,
    step: int = PLAN_STEP,
) -> Generator[None, None, SyncPlan]:
    """Fold the kernel's counts into ``state`` and plan the kernel's re-base;
    a generator that yields after every ``step`` pairs and returns the plan.

    The agent runs it on its event loop and lets the mesh run at each yield,
    so a cycle over a million pairs never stalls probes and gossip for
    seconds. Rows the mesh merges meanwhile are marked changed in ``state``
    (:meth:`GossipState.take_changed`): the next cycle plans them again, so
    an op planned from a view that moved before it was applied is repaired
    one cycle later, as if the rows had arrived after this cycle.

    ``changed`` None: ``pairs`` is every pair in the kernel, and every pair
    of the state is planned. Otherwise the cycle is incremental: ``changed``
    holds the pairs whose views may differ from what the kernel was given
    (:meth:`GossipState.take_changed`, plus the pairs written last cycle), and
    ``pairs`` the kernel's records of the pairs with new packets (dc or mark
    set) and of the changed pairs it holds; a changed pair absent from
    ``pairs`` is absent from the kernel. Every other kernel pair holds what
    the agent last wrote and its view has not moved since: the full plan
    would leave it alone too. Rows aged out by this cycle's expiry are
    planned in the next one.

    Mutates ``state`` (this origin's rows, expiry); pure otherwise.
    """
    p = state.params
    t_t4 = p.t_t4
    own_changed = 0
    record_local = state.record_local
    own_count = state.own_count
    for n, (key, rec) in enumerate(pairs, 1):
        if n % step == 0:
            yield
        # This origin's own window, not the view the kernel holds
        # (GossipState.own_count); None: nothing here can change our row.
        # Skipping those keeps a cycle over a million quiet pairs cheap.
        counted = own_count((key.src, key.dst), rec)
        if counted is not None and _sync_own(record_local, (key.src, key.dst), counted, t_t4):
            own_changed += 1
    expired = state.expire(now).dropped

    pair_view = state.pair_view
    in_kernel: set[Pair] = set()
    pair_ops: list[PairOp] = []
    deletes: list[PairKey] = []
    for n, (key, rec) in enumerate(pairs, 1):
        if n % step == 0:
            yield
        pair = (key.src, key.dst)
        in_kernel.add(pair)
        view = pair_view(pair)
        if view is None:
            deletes.append(key)
        elif (
            rec.dc > 0
            or rec.mark != 0
            or rec.c != view.c
            or rec.ts1 != view.ts1
            or view.ts2 > rec.ts2
        ):
            pair_ops.append(
                PairOp(
                    key=key,
                    expect_ts1=rec.ts1,
                    acked_dc=rec.dc,
                    c_delta=view.c - rec.c,
                    ts1=view.ts1,
                    ts2=view.ts2,
                )
            )
    candidates = list(state.pairs()) if changed is None else list(changed)
    for n, remote in enumerate(candidates, 1):
        if n % step == 0:
            yield
        if remote in in_kernel:
            continue
        view = pair_view(remote)
        if view is None:
            continue
        src, dst = remote
        assert isinstance(src, bytes) and isinstance(dst, bytes)
        pair_ops.append(
            PairOp(
                key=PairKey(src, dst),
                expect_ts1=None,
                acked_dc=0,
                c_delta=view.c,
                ts1=view.ts1,
                ts2=view.ts2,
            )
        )

    return SyncPlan(
        pair_ops=tuple(pair_ops),
        deletes=tuple(deletes),
        own_changed=own_changed,
        expired=expired,
    )


def dest_ops_for(
    applied: Sequence[PairOp],
    skipped: Collection[PairKey],
    windows: Mapping[bytes, tuple[int, int]],
) -> tuple[DestOp, ...]:
    """Re-base the destination aggregates by the pair operations that ran.

    The kernel keeps each destination's c equal to the sum of its pairs' c
    (every packet adds to both; restarts and deletes subtract), so moving a
    destination by the sum of its applied pair deltas lands it exactly on the
    mesh view plus whatever arrived since the read: nothing counted between
    the read and the write is lost. Pairs created by the agent are added to
    n(D). ``windows`` gives each destination's mesh-wide (ts1, ts2). An LRU
    eviction breaks the kernel's invariant; that drift is not repaired here.
    """
    c_delta: dict[bytes, int] = {}
    n_delta: dict[bytes, int] = {}
    for op in applied:
        if op.key in skipped:
            continue
        dst = op.key.dst
        c_delta[dst] = c_delta.get(dst, 0) + op.c_delta
        if op.expect_ts1 is None:
            n_delta[dst] = n_delta.get(dst, 0) + 1
    ops: list[DestOp] = []
    for dst, (ts1, ts2) in windows.items():
        ops.append(DestOp(dst, c_delta.get(dst, 0), n_delta.get(dst, 0), ts1, ts2))
    return tuple(ops)


def plan_destinations(
    state: GossipState,
    applied: Sequence[PairOp],
    skipped: Collection[PairKey],
    only: Collection[Hashable] | None = None,
) -> tuple[DestOp, ...]:
    """:func:`dest_ops_for` with the mesh-wide destination windows of ``state``:
    of every destination, or (incremental cycles) of those in ``only`` and
    those of the applied ops."""
    windows: dict[bytes, tuple[int, int]] = {}
    if only is None:
        views = state.destination_views()
    else:
        wanted = {*only, *(op.key.dst for op in applied)}
        views = {}
        for dst in wanted:
            view = state.destination_view(dst)
            if view is not None:
                views[dst] = view
    for dst, view in views.items():
        assert isinstance(dst, bytes)
        windows[dst] = (view.ts1, view.ts2)
    return dest_ops_for(applied, skipped, windows)
