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
aggregate is re-based to the mesh-wide destination view (lines 18-20 over all
proxies; ``n(D)`` feeds the fair-share policy). Pairs whose rows all aged out
are deleted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from xpro_mesh.core.algorithm import DestinationAggregate, Params
from xpro_mesh.core.gossip_state import GossipState, LocalCount, Pair, PairView
from xpro_mesh.datapath.backend import DestOp, PairKey, PairOp, PairRecord

__all__ = ["SyncPlan", "plan_destinations", "plan_sync"]


@dataclass(frozen=True, slots=True)
class SyncPlan:
    """The pair operations of one cycle and what they stand for. Deletes go
    first (the kernel takes deleted pairs out of their destinations), then
    the destinations are re-read and re-based by :func:`plan_destinations`."""

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


def plan_destinations(
    state: GossipState, destinations: Sequence[tuple[bytes, DestinationAggregate]]
) -> tuple[DestOp, ...]:
    """Re-base each destination aggregate to the mesh-wide view, as deltas
    against what was just read (after the cycle's deletes)."""
    read_dest = dict(destinations)
    dest_ops: list[DestOp] = []
    for dst, dview in state.destination_views().items():
        assert isinstance(dst, bytes)
        cur = read_dest.get(dst)
        c0, n0 = (0, 0) if cur is None else (cur.c, cur.clients)
        if cur is None or (cur.c, cur.clients, cur.ts1) != (dview.c, dview.pairs, dview.ts1) or (
            dview.ts2 > cur.ts2
        ):
            dest_ops.append(
                DestOp(
                    dst=dst,
                    c_delta=dview.c - c0,
                    n_delta=dview.pairs - n0,
                    ts1=dview.ts1,
                    ts2=dview.ts2,
                )
            )
    return tuple(dest_ops)


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
