"""Replicated rows as columns: the form in which rows travel between the
columnar state, the wire and the scalar reference.

A :class:`RowBatch` holds rows of one origin as parallel numpy arrays; row i
is the origin's entry for pair ``(src[i], dst[i])``: window ``ts1[i]..ts2[i]``
(cluster ns), count ``c[i]``, version ``(inc[i], seq[i])``. Every column is
``int64`` (addresses ``S16``): versions, times and counts all stay below 2^63,
and one dtype keeps numpy from mixing signed and unsigned (which silently
compares as float64). A :class:`ColumnarDelta` is
:class:`~xpro_mesh.core.gossip_state.Delta` with its rows grouped per origin;
:func:`to_delta` and :func:`from_delta` convert exactly, both ways, so the
scalar :class:`~xpro_mesh.core.gossip_state.GossipState` stays the reference
for every columnar piece.

Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from xpro_mesh.core.gossip_state import Coverage, Delta, OriginEntry, PairEntry

__all__ = ["ADDRESS_DTYPE", "INT_MAX", "ColumnarDelta", "RowBatch", "from_delta", "to_delta"]

ADDRESS_DTYPE = np.dtype("S16")
"""16-byte addresses, IPv6 or IPv4-mapped, as the kernel keys them."""

INT_MAX = 2**63 - 1
"""The largest time, count or version component a row may carry."""

Ints = npt.NDArray[np.int64]
Addresses = npt.NDArray[np.bytes_]


@dataclass(frozen=True, slots=True, eq=False)
class RowBatch:
    """Rows of one origin, column by column (all columns of one length)."""

    origin: str
    src: Addresses
    dst: Addresses
    ts1: Ints
    ts2: Ints
    c: Ints
    inc: Ints
    seq: Ints

    def __post_init__(self) -> None:
        n = len(self.src)
        for name in ("dst", "ts1", "ts2", "c", "inc", "seq"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"RowBatch.{name}: {len(getattr(self, name))} rows, src has {n}")

    def __len__(self) -> int:
        return len(self.src)

    @classmethod
    def empty(cls, origin: str) -> RowBatch:
        z = np.zeros(0, dtype=np.int64)
        a = np.zeros(0, dtype=ADDRESS_DTYPE)
        return cls(origin, a, a.copy(), z, z.copy(), z.copy(), z.copy(), z.copy())


@dataclass(frozen=True, slots=True, eq=False)
class ColumnarDelta:
    """:class:`Delta` with its rows as one :class:`RowBatch` per origin."""

    batches: tuple[RowBatch, ...] = ()
    coverage: tuple[Coverage, ...] = ()

    @property
    def rows(self) -> int:
        return sum(len(b) for b in self.batches)


def from_delta(delta: Delta) -> ColumnarDelta:
    """The rows of ``delta`` grouped per origin, in their order within each origin."""
    per_origin: dict[str, list[PairEntry]] = {}
    for pe in delta.entries:
        per_origin.setdefault(pe.origin, []).append(pe)
    return ColumnarDelta(
        batches=tuple(_batch(origin, rows) for origin, rows in per_origin.items()),
        coverage=delta.coverage,
    )


def _batch(origin: str, rows: list[PairEntry]) -> RowBatch:
    def ints(values: Iterable[int]) -> Ints:
        return np.fromiter(values, dtype=np.int64, count=len(rows))

    return RowBatch(
        origin=origin,
        src=np.array([_key(pe.pair[0]) for pe in rows], dtype=ADDRESS_DTYPE),
        dst=np.array([_key(pe.pair[1]) for pe in rows], dtype=ADDRESS_DTYPE),
        ts1=ints(pe.entry.ts1 for pe in rows),
        ts2=ints(pe.entry.ts2 for pe in rows),
        c=ints(pe.entry.c for pe in rows),
        inc=ints(pe.entry.version[0] for pe in rows),
        seq=ints(pe.entry.version[1] for pe in rows),
    )


def _key(value: object) -> bytes:
    if not isinstance(value, bytes) or len(value) != 16:
        raise ValueError(f"a pair's addresses are 16 bytes, got {value!r}")
    return value


def to_delta(delta: ColumnarDelta) -> Delta:
    """The scalar :class:`Delta` of ``delta`` (rows origin by origin)."""
    entries: list[PairEntry] = []
    for b in delta.batches:
        for i in range(len(b)):
            entries.append(
                PairEntry(
                    pair=(_addr(b.src[i]), _addr(b.dst[i])),
                    origin=b.origin,
                    entry=OriginEntry(
                        ts1=int(b.ts1[i]),
                        ts2=int(b.ts2[i]),
                        c=int(b.c[i]),
                        version=(int(b.inc[i]), int(b.seq[i])),
                    ),
                )
            )
    return Delta(entries=tuple(entries), coverage=delta.coverage)


def _addr(value: bytes) -> bytes:
    """numpy strips trailing NUL bytes from ``S16`` items; put them back."""
    return bytes(value).ljust(16, b"\0")
