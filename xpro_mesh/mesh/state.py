"""What the mesh node needs from the replicated pair table, and its two
implementations: over the columnar :class:`~xpro_mesh.core.table.PairTable`
(what the agent runs) and over the scalar
:class:`~xpro_mesh.core.gossip_state.GossipState` (the reference, in tests).

Why a seam: the node only moves rows (push-pull anti-entropy); what the rows
mean is the table's business. A node talks to :class:`ReplicatedState` with
columns (:class:`~xpro_mesh.core.rows.ColumnarDelta`), the form the wire
carries, so either table plugs in without the node changing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Protocol

from xpro_mesh.core.gossip_state import (
    Delta,
    Digest,
    GossipState,
    MergeLimits,
    MergeReport,
    Pair,
    Rejection,
    chunk_delta,
)
from xpro_mesh.core.rows import ColumnarDelta, from_delta, to_delta
from xpro_mesh.core.table import PairTable, TableMergeReport, chunk

__all__ = ["GossipStateAdapter", "ReplicatedState", "TableAdapter"]


class ReplicatedState(Protocol):
    """The replicated table as the mesh node sees it (all calls on the event
    loop; ``now`` in cluster nanoseconds)."""

    def digest(self) -> Digest:
        """Per origin, the version up to which this node holds everything."""
        ...

    def delta_for(self, peer: Digest, only: str | None = None) -> ColumnarDelta:
        """Every row ``peer`` lacks by its digest, with coverage claims (of
        origin ``only`` alone, if given). The arrays are the caller's from
        then on: the node may encode them in a worker thread while the table
        changes, so they must be copies."""
        ...

    def drop_uncovered(self, origin: str) -> int:
        """Forget an origin's rows above its watermark; how many went."""
        ...

    def merge(self, delta: ColumnarDelta, now: int, limits: MergeLimits) -> MergeReport:
        """Take a peer's rows; never raises on what a peer sends."""
        ...

    def full_state(self) -> ColumnarDelta:
        """Everything held, for a node joining the mesh."""
        ...


class GossipStateAdapter:
    """:class:`ReplicatedState` over :class:`GossipState` (rows converted
    exactly by :func:`~xpro_mesh.core.rows.from_delta` / ``to_delta``).

    ``GossipState.merge`` refuses a message of more than
    ``limits.max_entries_per_message`` rows as a whole; a stream frame holds
    far more, so a large delta is merged in pieces cut by
    :func:`~xpro_mesh.core.gossip_state.chunk_delta`, whose claims stay true
    piece by piece, and the reports are summed.
    """

    def __init__(self, state: GossipState) -> None:
        self.state = state

    def digest(self) -> Digest:
        return self.state.digest()

    def delta_for(self, peer: Digest, only: str | None = None) -> ColumnarDelta:
        delta = from_delta(self.state.delta_for(peer))
        if only is None:
            return delta
        return ColumnarDelta(
            tuple(b for b in delta.batches if b.origin == only),
            tuple(c for c in delta.coverage if c.origin == only),
        )

    def drop_uncovered(self, origin: str) -> int:
        return self.state.drop_uncovered(origin)

    def full_state(self) -> ColumnarDelta:
        return from_delta(self.state.full_state())

    def merge(self, delta: ColumnarDelta, now: int, limits: MergeLimits) -> MergeReport:
        scalar = to_delta(delta)
        size = max(1, limits.max_entries_per_message)
        if len(scalar.entries) <= size and len(scalar.coverage) <= size:
            return self.state.merge(scalar, now, limits)
        pieces: tuple[Delta, ...] = chunk_delta(scalar, size)
        return _sum(self.state.merge(piece, now, limits) for piece in pieces)


class TableAdapter:
    """:class:`ReplicatedState` over the columnar :class:`PairTable` (what the
    agent runs). A delta over ``limits.max_entries_per_message`` rows is
    merged in pieces cut by :func:`~xpro_mesh.core.table.chunk`, as the
    scalar adapter does; the report counts rows, not pairs (``changed_pairs``
    stays empty: the agent's planner compares views, it needs no list)."""

    def __init__(self, table: PairTable) -> None:
        self.table = table

    def digest(self) -> Digest:
        return self.table.digest()

    def delta_for(self, peer: Digest, only: str | None = None) -> ColumnarDelta:
        return self.table.delta_for(peer, only)

    def drop_uncovered(self, origin: str) -> int:
        return self.table.drop_uncovered(origin)

    def full_state(self) -> ColumnarDelta:
        return self.table.full_state()

    def merge(self, delta: ColumnarDelta, now: int, limits: MergeLimits) -> MergeReport:
        size = max(1, limits.max_entries_per_message)
        if delta.rows <= size and len(delta.coverage) <= size:
            return _report(self.table.merge(delta, now, limits))
        return _sum(_report(self.table.merge(p, now, limits)) for p in chunk(delta, size))


def _report(r: TableMergeReport) -> MergeReport:
    return MergeReport(
        accepted=r.accepted,
        adopted=r.adopted,
        stale=r.stale,
        rejected=dict(r.rejected),
        watermarks_advanced=r.watermarks_advanced,
    )


def _sum(reports: Iterable[MergeReport]) -> MergeReport:
    accepted = adopted = stale = advanced = 0
    rejected: Counter[Rejection] = Counter()
    changed: set[Pair] = set()
    for r in reports:
        accepted += r.accepted
        adopted += r.adopted
        stale += r.stale
        advanced += r.watermarks_advanced
        rejected.update(r.rejected)
        changed |= r.changed_pairs
    return MergeReport(
        accepted=accepted,
        adopted=adopted,
        stale=stale,
        rejected=dict(rejected),
        watermarks_advanced=advanced,
        changed_pairs=frozenset(changed),
    )
