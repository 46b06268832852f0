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

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from xpro_mesh.core.algorithm import Params
from xpro_mesh.core.gossip_state import GossipState, LocalCount, Pair, PairView
from xpro_mesh.datapath.backend import DestOp, PairKey, PairOp, PairRecord

__all__ = ["SyncPlan", "dest_ops_for", "plan_destinations", "plan_sync"]


@dataclass(frozen=True, slots=True)
class SyncPlan:
    """The pair operations of one cycle and what they stand for. Deletes go
    first (the kernel takes deleted pairs out of their destinations), then the
    pair ops, then :func:`plan_destinations` for the ops that ran."""

    pair_ops: tuple[PairOp, ...]
    deletes: tuple[PairKey, ...]
    own_changed: int  # own rows that got a new version (have news to gossip)
    expired: int  # rows aged out of the state this cycle


def _needs_own_sync(rec: PairRecord, own_ts1: int | None, p: Params) -> bool:
    """Whether Algorithm 1 can change this origin's row for ``rec``.

    New packets or an idle restart always can; with neither, only the window
    rule of lines 13-17 can (the view's end moved past T_T4 from our start).
    Skipping the rest keeps a cycle over a million quiet pairs cheap.
    """
    if rec.dc > 0 or rec.mark:
        return True
    return own_ts1 is not None and rec.ts2 - own_ts1 > p.t_t4


def plan_sync(
    state: GossipState,
    pairs: Sequence[tuple[PairKey, PairRecord]],
    now: int,
) -> SyncPlan:
    """Fold the kernel's counts into ``state`` and plan the kernel's re-base.

    Mutates ``state`` (this origin's rows, expiry); pure otherwise.
    """
    p = state.params
    own_changed = 0
    for key, rec in pairs:
        pair = (key.src, key.dst)
        own = state.own_entry(pair)
        if (
            _needs_own_sync(rec, None if own is None else own.ts1, p)
            and state.record_local(pair, LocalCount.from_record(rec)).changed
        ):
            own_changed += 1
    expired = state.expire(now).dropped

    views = state.pair_views()
    in_kernel: set[Pair] = set()
    pair_ops: list[PairOp] = []
    deletes: list[PairKey] = []
    for key, rec in pairs:
        pair = (key.src, key.dst)
        in_kernel.add(pair)
        view = views.get(pair)
        if view is None:
            deletes.append(key)
        elif _differs(rec, view):
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
    for remote, view in views.items():
        if remote in in_kernel:
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
    state: GossipState, applied: Sequence[PairOp], skipped: Collection[PairKey]
) -> tuple[DestOp, ...]:
    """:func:`dest_ops_for` with the mesh-wide destination windows of ``state``."""
    windows: dict[bytes, tuple[int, int]] = {}
    for dst, view in state.destination_views().items():
        assert isinstance(dst, bytes)
        windows[dst] = (view.ts1, view.ts2)
    return dest_ops_for(applied, skipped, windows)


def _differs(rec: PairRecord, view: PairView) -> bool:
    """Whether the kernel's pair must be re-based to ``view``: unacked packets
    or a mark to clear, or a count or window the mesh sees differently."""
    return (
        rec.dc > 0
        or rec.mark != 0
        or rec.c != view.c
        or rec.ts1 != view.ts1
        or view.ts2 > rec.ts2
    )
