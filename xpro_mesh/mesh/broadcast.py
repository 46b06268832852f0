"""The broadcast queue: memberlist's ``TransmitLimitedQueue`` (``queue.go``).

Why: gossip spreads an update by piggybacking it on messages a node sends
anyway (probes, acks, anti-entropy rounds). Each update must be sent often
enough that it reaches everyone with high probability, and no more: SWIM's
infection-style dissemination (Das et al., DSN 2002, §4.1) needs about
``λ·log N`` transmissions per update, so memberlist retransmits each one
``retransmit_mult · ⌈log10(N + 1)⌉`` times and then drops it.

Two rules keep the queue small and useful:

* a newer update about the same subject (the same member) replaces the older
  one, which is then never sent again (memberlist's ``Invalidates``); the
  queue therefore holds at most one entry per subject;
* the entries sent least often go first, and among those the newest, so a
  fresh update overtakes old news.

Sans-IO and generic over the subject key and the update type.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["TransmitLimitedQueue", "retransmit_limit"]

K = TypeVar("K")
V = TypeVar("V")


def retransmit_limit(retransmit_mult: int, num_nodes: int) -> int:
    """How many times one update is sent: ``mult · ⌈log10(N + 1)⌉``
    (memberlist ``retransmitLimit``); at least 1 so a lone pair still talks."""
    scale = math.ceil(math.log10(max(0, num_nodes) + 1))
    return max(1, retransmit_mult * scale)


@dataclass(slots=True)
class _Entry(Generic[V]):
    item: V
    transmits: int
    order: int  # enqueue order: higher is newer


class TransmitLimitedQueue(Generic[K, V]):
    """Updates waiting to be piggybacked, one per subject key.

    ``max_entries`` bounds memory: when full, the entry sent most often (the
    oldest news) is dropped to make room.
    """

    __slots__ = ("_entries", "_order", "max_entries", "retransmit_mult")

    def __init__(self, retransmit_mult: int, *, max_entries: int = 65_536) -> None:
        if retransmit_mult < 1 or max_entries < 1:
            raise ValueError("retransmit_mult and max_entries must be >= 1")
        self.retransmit_mult = retransmit_mult
        self.max_entries = max_entries
        self._entries: dict[K, _Entry[V]] = {}
        self._order = 0

    def __len__(self) -> int:
        return len(self._entries)

    def enqueue(self, key: K, item: V) -> None:
        """Queue ``item`` for ``key``, replacing whatever was queued for it."""
        self._order += 1
        self._entries.pop(key, None)
        if len(self._entries) >= self.max_entries:
            stalest = max(self._entries, key=lambda k: self._rank(self._entries[k]))
            del self._entries[stalest]
        self._entries[key] = _Entry(item, 0, self._order)

    def take(self, max_items: int, num_nodes: int) -> list[V]:
        """Up to ``max_items`` updates to piggyback now; each returned update
        counts one transmission and leaves the queue at its limit."""
        if max_items <= 0 or not self._entries:
            return []
        limit = retransmit_limit(self.retransmit_mult, num_nodes)
        chosen = sorted(self._entries.items(), key=lambda kv: self._rank(kv[1]))[:max_items]
        taken: list[V] = []
        for key, entry in chosen:
            taken.append(entry.item)
            entry.transmits += 1
            if entry.transmits >= limit:
                del self._entries[key]
        return taken

    def pending(self) -> list[V]:
        """What is queued, without counting a transmission (for inspection)."""
        return [e.item for e in sorted(self._entries.values(), key=self._rank)]

    def clear(self) -> None:
        self._entries.clear()

    @staticmethod
    def _rank(entry: _Entry[V]) -> tuple[int, int]:
        return (entry.transmits, -entry.order)
