"""The signed batches a node holds to relay: rows of another origin travel
only inside that origin's own signed batch (:mod:`xpro_mesh.mesh.identity`).

Why a store beside the table: a relay cannot re-sign another origin's rows,
and a signature over a batch covers that batch's bytes, so a relay answers a
peer's digest with the batches as the origin sent them, not with rows cut
from its table. The table (:class:`~xpro_mesh.core.table.PairTable`) still
merges every row for the fold; this store only keeps the bytes to pass on.

Which batches answer a digest: those of an origin that hold a version above
the peer's watermark for it (rows, or the batch's claim ``(after, upto]``),
oldest first; for the peer's own origin, those of its earlier incarnations
(a restarted node adopts its rows back, as ``PairTable.delta_for`` does). A
batch whose claim range a newer batch's claim contains is dropped: every row
of it still current is in the newer one (the origin's encoder claims exactly
the rows it sends, :func:`xpro_mesh.mesh.wire.chunk_rows`).

Bounded, so a signer cannot fill a relay's memory: per origin
``max_bytes_per_origin`` and ``max_batches_per_origin``, in all
``max_bytes``, oldest batch first out, and batches older than ``max_age_ns``
(past it every row inside is past the table's horizon) expire. A batch
evicted early costs propagation speed only: a peer that still lacks its
rows gets them from the origin itself, which always answers from its table
with a fresh signature.

Sans-IO: ``now`` is passed in.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

import numpy as np

from xpro_mesh.core.gossip_state import ZERO_VERSION, Digest, Version
from xpro_mesh.core.rows import ColumnarDelta
from xpro_mesh.mesh.messages import SignedRows

__all__ = ["RelayLimits", "RelayStore", "StoredBatch"]


@dataclass(frozen=True, slots=True)
class RelayLimits:
    max_bytes_per_origin: int = 32 << 20  # ~3M changed rows at ~10 B
    max_batches_per_origin: int = 4096
    max_bytes: int = 256 << 20
    max_age_ns: int = 60 * 10**9


@dataclass(frozen=True, slots=True)
class StoredBatch:
    message: SignedRows
    low: Version  # the least row version inside (or the claim's upto if rowless)
    top: Version  # the greatest version the batch speaks for (rows or claim)
    claim: tuple[Version, Version] | None  # (after, upto]
    received_ns: int

    @property
    def size(self) -> int:
        return len(self.message.rows) + len(self.message.signature)


def _versions(delta: ColumnarDelta) -> tuple[Version, Version, tuple[Version, Version] | None]:
    low: Version | None = None
    top: Version = ZERO_VERSION
    for b in delta.batches:
        if len(b):
            order = np.lexsort((b.seq, b.inc))
            i, j = int(order[0]), int(order[-1])
            lo = (int(b.inc[i]), int(b.seq[i]))
            hi = (int(b.inc[j]), int(b.seq[j]))
            low = lo if low is None or lo < low else low
            top = max(top, hi)
    claim = None
    for c in delta.coverage:
        claim = (c.after, c.upto)
        top = max(top, c.upto)
    return (low if low is not None else top), top, claim


class RelayStore:
    """Signed batches by origin, oldest first (module docstring)."""

    def __init__(self, limits: RelayLimits | None = None) -> None:
        self.limits = limits or RelayLimits()
        self._by_origin: OrderedDict[str, deque[StoredBatch]] = OrderedDict()
        self._bytes: dict[str, int] = {}
        self._signatures: set[bytes] = set()
        self.total_bytes = 0
        self.evicted = 0

    def __len__(self) -> int:
        return sum(len(q) for q in self._by_origin.values())

    def __contains__(self, signature: object) -> bool:
        """Whether a batch with this signature is held."""
        return signature in self._signatures

    def origins(self) -> list[str]:
        return list(self._by_origin)

    def add(self, message: SignedRows, delta: ColumnarDelta, now: int) -> bool:
        """Keep ``message`` (verified, its rows ``delta`` merged); False if
        already held."""
        if message.signature in self._signatures:
            return False
        low, top, claim = _versions(delta)
        entry = StoredBatch(message, low, top, claim, now)
        queue = self._by_origin.setdefault(message.origin, deque())
        self._by_origin.move_to_end(message.origin)
        if claim is not None:
            after, upto = claim
            for old in [b for b in queue if b.claim and after <= b.claim[0] and b.claim[1] <= upto]:
                self._remove(message.origin, old)
        queue.append(entry)
        self._signatures.add(message.signature)
        self._bytes[message.origin] = self._bytes.get(message.origin, 0) + entry.size
        self.total_bytes += entry.size
        lim = self.limits
        while queue and (
            self._bytes[message.origin] > lim.max_bytes_per_origin
            or len(queue) > lim.max_batches_per_origin
        ):
            self._remove(message.origin, queue[0])
            self.evicted += 1
        while self.total_bytes > lim.max_bytes and self._by_origin:
            origin, oldest = next(iter(self._by_origin.items()))
            self._remove(origin, oldest[0])
            self.evicted += 1
        return True

    def _remove(self, origin: str, entry: StoredBatch) -> None:
        queue = self._by_origin[origin]
        queue.remove(entry)
        self._signatures.discard(entry.message.signature)
        self._bytes[origin] -= entry.size
        self.total_bytes -= entry.size
        if not queue:
            del self._by_origin[origin]
            del self._bytes[origin]

    def for_peer(self, peer: Digest, skip: str) -> list[SignedRows]:
        """The batches ``peer`` lacks by its digest, origin ``skip`` (ours:
        answered from the table) left out."""
        out: list[SignedRows] = []
        for origin, queue in self._by_origin.items():
            if origin == skip:
                continue
            after = peer.versions.get(origin, ZERO_VERSION)
            if origin == peer.sender and after != ZERO_VERSION:
                out.extend(b.message for b in queue if b.low[0] < after[0])
            else:
                out.extend(b.message for b in queue if b.top > after)
        return out

    def expire(self, now: int) -> int:
        """Drop batches older than ``max_age_ns``; how many went."""
        gone = 0
        cutoff = now - self.limits.max_age_ns
        for origin in list(self._by_origin):
            queue = self._by_origin[origin]
            while queue and queue[0].received_ns < cutoff:
                self._remove(origin, queue[0])
                gone += 1
                if origin not in self._by_origin:
                    break
        return gone

    def drop_origin(self, origin: str) -> int:
        """Forget every batch of ``origin``; how many went."""
        queue = self._by_origin.get(origin)
        if queue is None:
            return 0
        n = len(queue)
        for entry in list(queue):
            self._remove(origin, entry)
        return n
