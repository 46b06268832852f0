"""A fixed-bucket duration histogram (Prometheus semantics, no clock).

Durations are observed by their owner (the sync loop) and read at scrape
time; buckets are cumulative upper bounds in seconds and ``+Inf`` is the
total count. Invariant: ``counts`` is non-decreasing in the bucket index
and ``counts[-1] == count`` (every observation lands in ``+Inf``).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

__all__ = ["SYNC_BUCKETS_S", "DurationHistogram"]

#: Sync-cycle buckets: the scale budget is a quiet cycle under 50 ms at 1M
#: pairs (docs/design.md) and a cycle is due every gossip interval (500 ms
#: on a LAN); 1-5 s means cycles overrun the interval.
SYNC_BUCKETS_S: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip


@dataclass(slots=True)
class DurationHistogram:
    bounds: tuple[float, ...] = SYNC_BUCKETS_S
    counts: list[int] = field(default_factory=list)
    total_s: float = 0.0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, seconds: float) -> None:
        """Count one duration into every bucket whose bound it does not exceed."""
        first = bisect.bisect_left(self.bounds, seconds)
        for i in range(first, len(self.counts)):
            self.counts[i] += 1
        self.total_s += seconds

    @property
    def count(self) -> int:
        return self.counts[-1]

    def buckets(self) -> list[tuple[str, int]]:
        """``(le, cumulative count)`` pairs, ``+Inf`` last, as Prometheus wants."""
        labels = [repr(float(b)) for b in self.bounds] + ["+Inf"]
        return list(zip(labels, self.counts, strict=True))
