"""The replicated pair table as columns: :class:`~xpro_mesh.core.gossip_state.GossipState`
for a million pairs.

Same semantics as the scalar reference, rule for rule (a differential property
test, ``tests/test_table_differential.py``, runs both side by side and demands
equal rows, digests, reports, views and deltas); only the representation
differs (DESIGN.md "Scale", STYLE.md item 13).

Layout
------
* Pairs get dense ids (:class:`~xpro_mesh.core.keys.KeyIndex` over the two
  16-byte addresses); destinations get ids too. Per pair id: its destination
  id, how many origins hold a row (``nrows``), whether this process counted it
  (``written``: the scalar ``_written``), the earlier-incarnation version it was
  adopted from, and whether it changed since :meth:`PairTable.take_changed`.
* Per origin *slot* (this node is slot 0) and pair id: ``ts1, ts2, c, inc,
  seq`` (int64) and ``present`` (bool), as 2-D arrays ``[slot, pair id]`` so
  that a fold over origins is one reduction along axis 0.
* Growth is amortised (capacity doubles); a pair whose last row goes is
  removed and its id reused; an origin whose last row goes frees its slot.

Invariants
----------
* ``present[o, p]`` iff origin ``o`` holds a row for pair ``p``; a live pair
  has ``nrows[p] >= 1`` rows; pairs with no row exist only inside one call
  (keys created for a batch whose rows were then refused), never between calls.
* Every value is int64 and exact: counts are summed in two 32-bit limbs, so a
  sum past 2^63 is reported (saturated in ``c``, exact in ``overflow``), never
  wrapped; the rate bound of a row is compared as exact 128-bit products.

API (what the agent calls; every array argument is a column of equal length)
-----------------------------------------------------------------------------
* :meth:`PairTable.own_count` / :meth:`PairTable.record_local` (optionally
  ``catch_up=True``: the replayed packet-less syncs of
  ``agent.mapsync._sync_own``): this origin's rows by Algorithm 1;
  :meth:`PairTable.record_local_ids` the same by pair id (no key lookups: the
  adapter keeps each kernel slot's id and forgets ``TableExpiry.removed_ids``);
  :meth:`PairTable.own_rows`, :meth:`PairTable.restart_own` for a restarted
  agent.
* :meth:`PairTable.merge` (a :class:`~xpro_mesh.core.rows.ColumnarDelta`),
  :meth:`PairTable.digest`, :meth:`PairTable.delta_for`,
  :meth:`PairTable.full_state`, :func:`chunk`: anti-entropy.
* :meth:`PairTable.pair_views`, :meth:`PairTable.destination_views`: the
  fold, for every pair or for given ids.
* :meth:`PairTable.expire`, :meth:`PairTable.take_changed`,
  :meth:`PairTable.set_params`.

Departures from the scalar reference, all on input no honest node produces:
``record_local`` refuses (ValueError, nothing changed) a call with the same
pair twice, counts past 2^63 - 1, and thresholds past 2^63 - 1 ns; a peer's
row of ours whose version would overflow our re-issued sequence (seq =
2^63 - 1) is refused as ``own_conflict`` without the re-issue.

Pure: no I/O, no clock; ``now`` is an argument, in cluster nanoseconds.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from xpro_mesh.core import vouch
from xpro_mesh.core.algorithm import (
    NS_PER_S,
    RATE_MAX,
    RATE_SCALE,
    Params,
    destination_rate_floor,
)
from xpro_mesh.core.gossip_state import (
    ZERO_VERSION,
    Coverage,
    Digest,
    MergeLimits,
    OriginEntry,
    Pair,
    PairEntry,
    Rejection,
    Version,
)
from xpro_mesh.core.keys import EMPTY, KeyIndex, pair_words
from xpro_mesh.core.rows import ADDRESS_DTYPE, INT_MAX, ColumnarDelta, RowBatch

__all__ = [
    "MAX_CATCH_UP",
    "ChangedPairs",
    "DestinationViews",
    "LocalSyncs",
    "OwnCounts",
    "PairTable",
    "PairViews",
    "TableExpiry",
    "TableMergeReport",
    "chunk",
]

Ints = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]
T = TypeVar("T", bound=np.generic)
Addresses = npt.NDArray[np.bytes_]

MAX_CATCH_UP = 64
"""Packet-less syncs replayed at most per pair in one call (as ``agent.mapsync``)."""

INT_MIN = -(2**63)
_LO = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)

# Rejection codes in the order _check tests them; 0 = accepted.
_OK, _MALFORMED, _FUTURE, _EXPIRED, _ABSURD, _LONG = 0, 1, 2, 3, 4, 5
_REASON = {
    _MALFORMED: Rejection.MALFORMED,
    _FUTURE: Rejection.FUTURE,
    _EXPIRED: Rejection.EXPIRED,
    _ABSURD: Rejection.ABSURD_COUNT,
    _LONG: Rejection.LONG_WINDOW,
}
_TRANSIENT = frozenset(
    {Rejection.FUTURE, Rejection.TABLE_FULL, Rejection.TOO_MANY_ORIGINS, Rejection.ORIGIN_FULL}
)


# --- results ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class OwnCounts:
    """This origin's part of the kernel's records (scalar ``own_count``), for
    the rows ``index`` of the input that need a sync; the others need none."""

    index: Ints
    ts1: Ints
    ts2: Ints
    dc: Ints
    mark: Ints


@dataclass(frozen=True, slots=True, eq=False)
class LocalSyncs:
    """Per input pair: its id, the origin's row afterwards (``ts1, ts2, c, inc,
    seq``), the L_DB record written back (``local_*``, with dc' = mark' = 0)
    and whether the row got a new version (scalar ``LocalSync``)."""

    ids: Ints
    ts1: Ints
    ts2: Ints
    c: Ints
    inc: Ints
    seq: Ints
    local_ts1: Ints
    local_ts2: Ints
    local_c: Ints
    changed: Bools


@dataclass(frozen=True, slots=True, eq=False)
class PairViews:
    """Pair views (scalar ``fold_pair``) of ``ids``. ``c`` saturates at
    2^63 - 1; ``overflow`` maps a position to its exact count when it does."""

    ids: Ints
    ts1: Ints
    ts2: Ints
    c: Ints
    origins: Ints
    overflow: Mapping[int, int] = field(default_factory=dict)

    def exact_c(self) -> list[int]:
        return [self.overflow.get(i, v) for i, v in enumerate(self.c.tolist())]


@dataclass(frozen=True, slots=True, eq=False)
class DestinationViews:
    """Destination views (scalar ``fold_destination``): per destination id
    ``ids`` with address ``dst``: min ts1, max ts2, sum c (saturating, exact
    in ``overflow``), n(D) = ``clients``: the established pairs
    (:func:`~xpro_mesh.core.algorithm.is_established`)."""

    ids: Ints
    dst: Addresses
    ts1: Ints
    ts2: Ints
    c: Ints
    clients: Ints
    overflow: Mapping[int, int] = field(default_factory=dict)

    def exact_c(self) -> list[int]:
        return [self.overflow.get(i, v) for i, v in enumerate(self.c.tolist())]


@dataclass(frozen=True, slots=True, eq=False)
class TableMergeReport:
    """Scalar ``MergeReport`` with the changed pairs as ids (all live)."""

    accepted: int
    adopted: int
    stale: int
    rejected: Mapping[Rejection, int]
    watermarks_advanced: int
    changed_ids: Ints

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


@dataclass(frozen=True, slots=True, eq=False)
class TableExpiry:
    """Rows dropped, the pairs that lost a row (some no longer held), and the
    ids of the pairs no longer held (free: other pairs may get them)."""

    dropped: int
    src: Addresses
    dst: Addresses
    removed_ids: Ints


@dataclass(frozen=True, slots=True, eq=False)
class ChangedPairs:
    """Since the last :meth:`PairTable.take_changed`: live pairs whose rows
    changed (``ids``), and pairs that changed and are no longer held."""

    ids: Ints
    removed_src: Addresses
    removed_dst: Addresses


@dataclass(slots=True)
class _Tally:
    accepted: int = 0
    adopted: int = 0
    stale: int = 0
    rejected: dict[Rejection, int] = field(default_factory=dict)
    hold_back: set[str] = field(default_factory=set)
    changed: list[Ints] = field(default_factory=list)

    def reject(self, reason: Rejection, count: int, origin: str) -> None:
        if count:
            self.rejected[reason] = self.rejected.get(reason, 0) + count
            if reason in _TRANSIENT:
                self.hold_back.add(origin)


# --- exact integer helpers -----------------------------------------------------------


def _gt(col: Ints, x: int) -> Bools:
    """``col > x`` for a Python int ``x`` of any size."""
    if x >= INT_MAX:
        return np.zeros(len(col), dtype=np.bool_)
    if x < INT_MIN:
        return np.ones(len(col), dtype=np.bool_)
    return col > x


def _lt(col: Ints, x: int) -> Bools:
    if x > INT_MAX:
        return np.ones(len(col), dtype=np.bool_)
    if x <= INT_MIN:
        return np.zeros(len(col), dtype=np.bool_)
    return col < x


def _rate_starts(
    views: PairViews, d: Ints, cap: int, out: Ints, ts1: Ints, ts2: Ints, c: Ints, floor: int
) -> Ints:
    """Scalar ``fold_destination(..., rate_floor=floor)``'s ts1 for the
    destinations ``out`` (``d``: each view's destination id; ``c`` the
    destinations' saturated counts): ``window_rate`` and ``rate_start`` in
    the same float64 operations, so the integers agree bit for bit."""
    length = np.maximum(views.ts2 - views.ts1, max(floor, 1))
    r = np.floor(views.c.astype(np.float64) * RATE_SCALE / length.astype(np.float64))
    per_pair = np.minimum(r, float(RATE_MAX)).astype(np.int64)
    rates = np.zeros(cap, dtype=np.int64)
    np.add.at(rates, d, per_pair)
    rate = rates[out]
    has = rate > 0
    span = np.floor(c.astype(np.float64) * RATE_SCALE / np.maximum(rate, 1).astype(np.float64))
    exact = span < float(1 << 62)  # integer-valued floats below 2^62 convert exactly
    whole = np.full(len(out), INT_MAX, dtype=np.int64)
    whole[exact] = span[exact].astype(np.int64)
    start: Ints = np.where(has, ts2 - np.minimum(whole, ts2), ts1)
    return start


def _eq(col: Ints, x: int) -> Bools:
    if not INT_MIN <= x <= INT_MAX:
        return np.zeros(len(col), dtype=np.bool_)
    same: Bools = col == x
    return same


def _version_gt(inc: Ints, seq: Ints, v: Version) -> Bools:
    """``(inc, seq) > v`` row by row, lexicographically."""
    return _gt(inc, v[0]) | (_eq(inc, v[0]) & _gt(seq, v[1]))


def _version_le_held(inc: Ints, seq: Ints, h_inc: Ints, h_seq: Ints) -> Bools:
    """``(inc, seq) <= (h_inc, h_seq)`` row by row."""
    le: Bools = (inc < h_inc) | ((inc == h_inc) & (seq <= h_seq))
    return le


def _mul128(
    a: npt.NDArray[np.uint64], b: npt.NDArray[np.uint64]
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
    """Exact 64 x 64 -> 128-bit products (high, low words)."""
    a0, a1 = a & _LO, a >> _S32
    b0, b1 = b & _LO, b >> _S32
    p00, p01, p10, p11 = a0 * b0, a0 * b1, a1 * b0, a1 * b1
    mid = (p00 >> _S32) + (p01 & _LO) + (p10 & _LO)
    lo = (mid << _S32) | (p00 & _LO)
    hi = p11 + (p01 >> _S32) + (p10 >> _S32) + (mid >> _S32)
    return hi, lo


def _absurd(c: Ints, ts1: Ints, ts2: Ints, rate_pps: int, slack: int) -> Bools:
    """``c * 10^9 > rate_pps * (ts2 - ts1 + slack)`` exactly (rows with
    0 <= ts1 <= ts2, c >= 0; other rows get an arbitrary answer)."""
    if rate_pps > INT_MAX or slack > INT_MAX:
        return np.array(
            [
                int(ci) * NS_PER_S > rate_pps * (int(b) - int(a) + slack)
                for ci, a, b in zip(c.tolist(), ts1.tolist(), ts2.tolist(), strict=True)
            ],
            dtype=np.bool_,
        )
    window = (ts2 - ts1).astype(np.uint64) + np.uint64(slack)
    if len(c) and int(c.min()) >= 0 and int(c.max()) <= INT_MAX // NS_PER_S:
        # Most rows: both products fit in int64 (counts below ~9e9, windows
        # below 2^63 / rate); only the others take the 128-bit path.
        small = window <= np.uint64(INT_MAX // max(rate_pps, 1))
        if small.all():
            fast: Bools = c * NS_PER_S > rate_pps * window.astype(np.int64)
            return fast
    lhs_hi, lhs_lo = _mul128(c.astype(np.uint64), np.full(len(c), NS_PER_S, np.uint64))
    rhs_hi, rhs_lo = _mul128(np.full(len(c), rate_pps, np.uint64), window)
    over: Bools = (lhs_hi > rhs_hi) | ((lhs_hi == rhs_hi) & (lhs_lo > rhs_lo))
    return over


def _limbs(c: Ints) -> tuple[Ints, Ints]:
    """Non-negative counts as (high 31 bits, low 32 bits) to sum without overflow."""
    return c >> 32, c & 0xFFFFFFFF


def _join(hi: Ints, lo: Ints) -> tuple[Ints, dict[int, int]]:
    """Summed limbs back to counts: saturated int64 and the exact overflowed ones."""
    high = hi + (lo >> 32)
    low = lo & 0xFFFFFFFF
    fits = high < 2**31
    c = np.where(fits, (np.minimum(high, 2**31 - 1) << 32) | low, INT_MAX)
    overflow = {int(i): int(high[i]) * 2**32 + int(low[i]) for i in np.flatnonzero(~fits)}
    return c, overflow


def _addresses(words: npt.NDArray[np.uint64]) -> Addresses:
    """``(n, 2)`` words back to ``S16`` addresses (byte for byte)."""
    return np.ascontiguousarray(words).view(ADDRESS_DTYPE).reshape(-1)


# --- the table -----------------------------------------------------------------------


class PairTable:
    """One node's copy of the replicated pair table, in columns.

    ``node_id``, ``incarnation``, ``params``, ``horizon_ns`` as for
    :class:`~xpro_mesh.core.gossip_state.GossipState`.
    """

    def __init__(
        self,
        node_id: str,
        incarnation: int,
        params: Params,
        horizon_ns: int | None = None,
        capacity: int = 1024,
    ) -> None:
        if not node_id:
            raise ValueError("node_id must not be empty")
        if not 1 <= incarnation <= INT_MAX:
            raise ValueError(f"incarnation must be 1..2^63-1, got {incarnation}")
        _check_params(params)
        minimum = params.t_t1 + params.t_t4
        horizon = minimum if horizon_ns is None else horizon_ns
        if horizon < minimum:
            raise ValueError(f"horizon_ns must be >= T_T1 + T_T4 = {minimum}, got {horizon}")
        self._node_id = node_id
        self._incarnation = incarnation
        self._params = params
        self._horizon = horizon
        self._clock: Version = (incarnation, 0)
        self._floor: int | None = None
        # per origin slot: at most the least ts2 of its rows (expire skips
        # a slot whose bound is not below the floor: a quiet cycle scans none)
        self._oldest: dict[int, int] = {}
        self._watermark: dict[str, Version] = {}

        self._pairs = KeyIndex(4, capacity)
        self._dests = KeyIndex(2, max(16, capacity // 16))
        self._num_pairs = 0  # pairs holding at least one row
        cap = self._pairs.capacity
        self._dest = np.zeros(cap, dtype=np.int64)
        self._nrows = np.zeros(cap, dtype=np.int32)
        # A pair is known once a row of it moved to a later packet: it sent in
        # two syncs at least, as a forged one-packet source never does; n(D)
        # counts it whatever its window (scalar GossipState._known).
        self._known = np.zeros(cap, dtype=np.bool_)
        self._written = np.zeros(cap, dtype=np.bool_)
        self._adopt_inc = np.full(cap, -1, dtype=np.int64)
        self._adopt_seq = np.full(cap, -1, dtype=np.int64)
        self._changed = np.zeros(cap, dtype=np.bool_)
        self._scratch = np.zeros(cap, dtype=np.int64)  # _has_duplicates' work space
        self._all_changed = True  # take_changed() returns None next
        self._removed: list[npt.NDArray[np.uint64]] = []  # keys of changed pairs gone
        self._dest_pairs = np.zeros(self._dests.capacity, dtype=np.int64)

        ocap = 4
        self._ts1 = np.zeros((ocap, cap), dtype=np.int64)
        self._ts2 = np.zeros((ocap, cap), dtype=np.int64)
        self._c = np.zeros((ocap, cap), dtype=np.int64)
        self._inc = np.zeros((ocap, cap), dtype=np.int64)
        self._seq = np.zeros((ocap, cap), dtype=np.int64)
        self._present = np.zeros((ocap, cap), dtype=np.bool_)
        self._slot: dict[str, int] = {node_id: 0}  # origins holding rows (and us)
        self._names: list[str | None] = [node_id, None, None, None]
        self._rows_of = [0] * ocap  # rows held per slot
        self._top: dict[str, Version] = {}  # highest version held, origins with rows

    # --- identity and inspection ---------------------------------------------------

    @property
    def node_id(self) -> str:
        return self._node_id

    @property
    def incarnation(self) -> int:
        return self._incarnation

    @property
    def params(self) -> Params:
        return self._params

    @property
    def horizon_ns(self) -> int:
        return self._horizon

    @property
    def clock(self) -> Version:
        return self._clock

    @property
    def num_pairs(self) -> int:
        return self._num_pairs

    @property
    def capacity(self) -> int:
        """Pair ids are below this."""
        return len(self._nrows)

    def __len__(self) -> int:
        return sum(self._rows_of)

    def origins(self) -> list[str]:
        """Origins holding at least one row."""
        return [name for name, o in self._slot.items() if self._rows_of[o]]

    def live_ids(self) -> Ints:
        return np.flatnonzero(self._nrows > 0)

    def pair_ids(self, src: Addresses, dst: Addresses) -> Ints:
        """The id of each pair held, -1 for pairs not held."""
        return self._pairs.lookup(pair_words(src, dst))

    def pair_keys(self, ids: Ints) -> tuple[Addresses, Addresses]:
        words = self._pairs.keys_of(ids)
        return _addresses(words[:, :2]), _addresses(words[:, 2:])

    def pairs_of(self, ids: Ints) -> list[Pair]:
        """Pairs as the scalar reference keys them (16-byte ``bytes``)."""
        src, dst = self.pair_keys(ids)
        return [
            (bytes(s).ljust(16, b"\0"), bytes(d).ljust(16, b"\0"))
            for s, d in zip(src, dst, strict=True)
        ]

    def entries(self) -> Iterator[PairEntry]:
        """Every row as the scalar reference holds it (slow; for tests and tools)."""
        for origin, o in self._slot.items():
            ids = np.flatnonzero(self._present[o])
            for pair, a, b, c, i, s in zip(
                self.pairs_of(ids),
                self._ts1[o][ids].tolist(),
                self._ts2[o][ids].tolist(),
                self._c[o][ids].tolist(),
                self._inc[o][ids].tolist(),
                self._seq[o][ids].tolist(),
                strict=True,
            ):
                yield PairEntry(pair, origin, OriginEntry(a, b, c, (i, s)))

    def vouched(self, max_pairs: int) -> list[bytes]:
        """The pairs this node's filter vouches for (issue 13,
        :func:`~xpro_mesh.core.vouch.select_vouched`): established at another
        origin and under the fair share in every origin's rows, as 32-byte
        keys (source, destination), at most ``max_pairs``."""
        ids = np.flatnonzero(self._nrows[: self._pairs.capacity] > 0)
        src, dst = self.pair_keys(ids)
        keys = np.concatenate(
            [
                np.ascontiguousarray(src).view(np.uint8).reshape(-1, 16),
                np.ascontiguousarray(dst).view(np.uint8).reshape(-1, 16),
            ],
            axis=1,
        )
        p = self._params
        return vouch.select_vouched_columns(
            keys,
            self._present[:, ids],
            self._ts1[:, ids],
            self._ts2[:, ids],
            self._c[:, ids],
            self._dest[ids],
            local_slot=0,
            t_f2=p.t_f2,
            t_t2=p.t_t2,
            admit_k=p.admit_k,
            max_pairs=max_pairs,
        )

    def nbytes(self) -> int:
        """Memory held by the columns and indices."""
        arrays = (
            self._dest, self._nrows, self._written, self._adopt_inc, self._adopt_seq,
            self._changed, self._dest_pairs, self._ts1, self._ts2, self._c, self._inc,
            self._seq, self._present, self._scratch,
        )  # fmt: skip
        return sum(a.nbytes for a in arrays) + self._pairs.nbytes() + self._dests.nbytes()

    # --- parameters ------------------------------------------------------------------

    def set_params(self, params: Params) -> None:
        """New thresholds; rows are kept, every view is taken as changed."""
        _check_params(params)
        self._params = params
        self._horizon = max(self._horizon, params.t_t1 + params.t_t4)
        self._all_changed = True

    def take_changed(self) -> ChangedPairs | None:
        """What changed since the last call (scalar ``take_changed``); None:
        assume everything (the first call, after :meth:`set_params`)."""
        changed = np.flatnonzero(self._changed)
        self._changed[changed] = False
        removed = self._removed
        self._removed = []
        if self._all_changed:
            self._all_changed = False
            return None
        if removed:
            words = np.concatenate(removed)
            words = words[self._pairs.lookup(words) == EMPTY]  # not created again since
            words = np.unique(words.view("V32").ravel()).view(np.uint64).reshape(-1, 4)
        else:
            words = np.zeros((0, 4), dtype=np.uint64)
        return ChangedPairs(changed, _addresses(words[:, :2]), _addresses(words[:, 2:]))

    # --- this origin's rows: Algorithm 1 ---------------------------------------------

    def own_count(
        self, src: Addresses, dst: Addresses, ts1: Ints, ts2: Ints, dc: Ints, mark: Ints
    ) -> OwnCounts:
        """This origin's part of the kernel's records (the v1 kernel holds the
        mesh view): scalar ``GossipState.own_count`` row by row. Rows needing
        no sync (no packets, own window within T_T4) are left out."""
        ts1, ts2, dc, mark = (np.asarray(x, dtype=np.int64) for x in (ts1, ts2, dc, mark))
        ids = self.pair_ids(src, dst)
        held = ids >= 0
        safe = np.maximum(ids, 0)
        own = held & self._present[0][safe]
        o_ts1 = self._ts1[0][safe]
        o_ts2 = self._ts2[0][safe]
        quiet = (dc == 0) & (mark == 0)
        shrink = quiet & own & (o_ts2 - o_ts1 > self._params.t_t4)
        newest = self._newest(safe)
        seen = np.where(held, newest, ts1)
        first = np.maximum(ts1, np.minimum(seen, ts2))
        out_ts1 = np.where(mark != 0, ts1, np.where(own, np.minimum(o_ts1, ts2), first))
        out_ts1 = np.where(shrink, o_ts1, out_ts1)
        out_ts2 = np.where(shrink, o_ts2, ts2)
        need = ~quiet | shrink
        index = np.flatnonzero(need)
        return OwnCounts(index, out_ts1[index], out_ts2[index], dc[index], mark[index])

    def record_local(
        self,
        src: Addresses,
        dst: Addresses,
        ts1: Ints,
        ts2: Ints,
        dc: Ints,
        mark: Ints,
        catch_up: bool = False,
    ) -> LocalSyncs:
        """Sync what the kernel counted into this origin's rows: Algorithm 1
        per pair (scalar ``record_local``), versions issued in input order.

        ``catch_up``: then, while a row's window exceeds T_T4, replay syncs
        without packets (lines 13-17), at most :data:`MAX_CATCH_UP`, stopping
        at the first that changes nothing: ``agent.mapsync._sync_own``.
        ``changed`` is then whether any step changed the row, ``local_*`` the
        L_DB record of the last step. Pairs must be distinct.
        """
        if len(src) != len(dst):
            raise ValueError("record_local: columns of different lengths")
        ts1, ts2, dc, mark = _counts(len(src), ts1, ts2, dc, mark)
        ids, created = self._ids_for(src, dst)
        try:
            if _has_duplicates(ids, self._scratch):
                raise ValueError("record_local: the same pair twice in one call")
            return self._record(ids, ts1, ts2, dc, mark, catch_up)
        finally:
            self._drop_empty(ids[created])

    def record_local_ids(
        self,
        ids: Ints,
        ts1: Ints,
        ts2: Ints,
        dc: Ints,
        mark: Ints,
        catch_up: bool = False,
    ) -> LocalSyncs:
        """:meth:`record_local` for pairs held, by id: no key lookups. The
        adapter keeps each kernel slot's pair id from an earlier result
        (``LocalSyncs.ids``) and forgets the ids an expiry frees
        (``TableExpiry.removed_ids``), which may be handed to other pairs."""
        ids = np.asarray(ids, dtype=np.int64)
        ts1, ts2, dc, mark = _counts(len(ids), ts1, ts2, dc, mark)
        if len(ids) and (
            ids.min() < 0 or ids.max() >= len(self._nrows) or (self._nrows[ids] == 0).any()
        ):
            raise ValueError("record_local_ids: an id that is not a pair held")
        if _has_duplicates(ids, self._scratch):
            raise ValueError("record_local: the same pair twice in one call")
        return self._record(ids, ts1, ts2, dc, mark, catch_up)

    def own_rows(self, ids: Ints) -> tuple[Bools, Ints, Ints, Bools]:
        """For pair ids (-1: not held): whether this origin holds a row, its
        ts1 and ts2 (0 without one), and whether this process wrote it
        (scalar ``own_entry`` and ``wrote``)."""
        ids = np.asarray(ids, dtype=np.int64)
        held = ids >= 0
        safe: Ints | slice = _run(ids) if held.all() else np.where(held, ids, 0)
        own = held & self._present[0][safe]
        ts1 = np.where(own, self._ts1[0][safe], 0)
        ts2 = np.where(own, self._ts2[0][safe], 0)
        written = own & self._written[safe]
        return own, ts1, ts2, written

    def restart_own(self, src: Addresses, dst: Addresses, ts1: Ints, ts2: Ints, c: Ints) -> Ints:
        """Make ``(ts1, ts2, c)`` this origin's row of each pair under a new
        version, whatever the row was (scalar ``GossipState.restart_own``:
        the data path's window is the truth about this origin's packets).
        Versions are issued in input order; pairs must be distinct. Returns
        the pair ids."""
        ts1, ts2, c = (np.asarray(x, dtype=np.int64) for x in (ts1, ts2, c))
        if not len(src) == len(dst) == len(ts1) == len(ts2) == len(c):
            raise ValueError("restart_own: columns of different lengths")
        bad = (ts1 < 0) | (ts1 > ts2) | (c < 0)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"inconsistent window at row {i}: {ts1[i]}..{ts2[i]}, c={c[i]}")
        ids, created = self._ids_for(src, dst)
        if _has_duplicates(ids, self._scratch):
            self._drop_empty(ids[created])
            raise ValueError("restart_own: the same pair twice in one call")
        n = len(ids)
        if not n:
            return ids
        inc, seq0 = self._clock
        if seq0 + n > INT_MAX:
            self._drop_empty(ids[created])
            raise ValueError("restart_own: version sequence exhausted")
        seq = seq0 + np.arange(1, n + 1, dtype=np.int64)
        self._clock = (inc, seq0 + n)
        self._watermark[self._node_id] = self._clock
        self._written[ids] = True
        self._store(0, ids, ts1, ts2, c, np.full(n, inc, dtype=np.int64), seq)
        return ids

    def _record(
        self, ids: Ints, ts1: Ints, ts2: Ints, dc: Ints, mark: Ints, catch_up: bool
    ) -> LocalSyncs:
        at = _run(ids)  # read only: slices where the ids are a run
        own = self._present[0][at]
        m_ts1 = self._ts1[0][at]
        m_ts2 = self._ts2[0][at]
        m_c = self._c[0][at]
        base = np.where(own & (mark == 0), m_c, 0)
        if (dc > INT_MAX - base).any():
            raise ValueError("record_local: a count past 2^63 - 1")
        local = (ts1, ts2, base + dc)
        row, out, changed = self._sync(own, (m_ts1, m_ts2, m_c), local, dc, mark)
        steps = changed.astype(np.int64)
        if catch_up:
            zero = np.zeros(len(ids), dtype=np.int64)
            active = row[1] - row[0] > self._params.t_t4
            for _ in range(MAX_CATCH_UP):
                if not active.any():
                    break
                a = np.flatnonzero(active)
                prev = (row[0][a], row[1][a], row[2][a])
                step_row, step_out, step_changed = self._sync(
                    np.ones(len(a), np.bool_),
                    prev,
                    (out[0][a], out[1][a], prev[2]),
                    zero[a],
                    zero[a],
                )
                for x, y in zip(row, step_row, strict=True):
                    x[a] = y
                for x, y in zip(out, step_out, strict=True):
                    x[a] = y
                steps[a] += step_changed
                active[a] = step_changed & (step_row[1] - step_row[0] > self._params.t_t4)
        any_changed = steps > 0
        total = int(steps.sum())
        inc, seq0 = self._clock
        if seq0 + total > INT_MAX:
            raise ValueError("record_local: version sequence exhausted")
        self._written[ids] = True
        seq = np.where(any_changed, seq0 + np.cumsum(steps), self._seq[0][at])
        inc_col = np.where(any_changed, inc, self._inc[0][at])
        if total:
            self._clock = (inc, seq0 + total)
            self._watermark[self._node_id] = self._clock
            if bool(any_changed.all()):  # a busy cycle: no gathers
                self._store(0, ids, row[0], row[1], row[2], inc_col, seq)
            else:
                w = np.flatnonzero(any_changed)
                self._store(0, ids[w], row[0][w], row[1][w], row[2][w], inc_col[w], seq[w])
        return LocalSyncs(
            ids, row[0], row[1], row[2], inc_col, seq, out[0], out[1], out[2], any_changed
        )

    def _sync(
        self,
        own: Bools,
        master: tuple[Ints, Ints, Ints],
        local: tuple[Ints, Ints, Ints],
        dc: Ints,
        mark: Ints,
    ) -> tuple[list[Ints], list[Ints], Bools]:
        """Algorithm 1 (``algorithm.sync_master``) row by row: the new M_DB row,
        the new L_DB window and count, and whether the row changed."""
        p = self._params
        ts1_m, ts2_m, c_m = master
        ts1_l, ts2_l, c_l = local
        # Line 5: a restarted local window replaces the master's (lines 6-8);
        # without a master row, lines 31-33 take the local window as it is.
        replace = ~own | ((mark == 1) & (ts1_l - ts1_m > p.t_t1))
        later = ts2_l < ts2_m  # lines 11-12
        shrink = ~later & (ts2_l - ts1_m > p.t_t4)  # lines 13-17
        n_ts2_l = np.where(later, ts2_m, ts2_l)
        n_ts1_l = np.where(shrink, ts2_l - (ts2_l - ts1_m) // p.r, ts1_l)
        n_c_m = np.where(shrink, c_m // p.r, c_m)
        n_ts1_m = np.where(shrink, n_ts1_l, ts1_m)
        n_ts2_m = np.where(later, ts2_m, ts2_l)  # lines 18-19 (and 14's ts2)
        start = n_ts1_l > n_ts1_m  # lines 20-21
        move = ~start & (n_ts2_l - n_ts1_l > p.t_t4)  # lines 22-23
        n_ts1_l = np.where(start, n_ts1_m, n_ts1_l)
        n_ts1_m = np.where(move, n_ts1_l, n_ts1_m)
        kept = ~replace
        if (kept & (dc > INT_MAX - n_c_m)).any():
            raise ValueError("record_local: a count past 2^63 - 1")
        summed = n_c_m + dc  # lines 24-25
        row = [
            np.where(replace, ts1_l, n_ts1_m),
            np.where(replace, ts2_l, n_ts2_m),
            np.where(replace, c_l, summed),
        ]
        out = [
            np.where(replace, ts1_l, n_ts1_l),
            np.where(replace, ts2_l, n_ts2_l),
            np.where(replace, c_l, summed),
        ]
        changed = ~own | (row[0] != ts1_m) | (row[1] != ts2_m) | (row[2] != c_m)
        return row, out, changed

    # --- views -------------------------------------------------------------------

    def _newest(self, ids: Ints) -> Ints:
        """Newest ts2 over the origins' rows of each pair (-1 when none)."""
        k = self._slots_used()
        present, ts2 = _columns(self._present, k, ids), _columns(self._ts2, k, ids)
        newest: Ints = np.where(present[0], ts2[0], -1)
        for o in range(1, k):  # k - 1 elementwise steps beat a reduce along axis 0
            np.maximum(newest, np.where(present[o], ts2[o], -1), out=newest)
        return newest

    def _slots_used(self) -> int:
        return max(self._slot.values()) + 1

    def pair_views(self, ids: Ints | None = None) -> PairViews:
        """The pair view (scalar ``fold_pair``) of every live pair, or of
        ``ids`` (live): rows with ts2 within T_T1 of the pair's newest are
        live; earliest live ts1, newest ts2, sum of live c, live origins."""
        if ids is None:
            ids = self.live_ids()
        k = self._slots_used()
        # Many ids: fold every column in place (slices, no gathers), pick after.
        whole = 4 * len(ids) > len(self._nrows)
        cols = slice(None) if whole else _run(ids)  # a run: slices, in the ids' order
        present = _columns(self._present, k, cols)
        ts2 = _columns(self._ts2, k, cols)
        # Origin by origin (k is small): numpy reduces a (k, n) array along
        # axis 0 several times slower than k - 1 elementwise steps.
        newest = np.where(present[0], ts2[0], -1)
        for o in range(1, k):
            np.maximum(newest, np.where(present[o], ts2[o], -1), out=newest)
        oldest_live = newest - self._params.t_t1
        ts1_all = _columns(self._ts1, k, cols)
        c_all = _columns(self._c, k, cols)
        ts1 = np.full(len(newest), INT_MAX, dtype=np.int64)
        origins = np.zeros(len(newest), dtype=np.int64)
        counts: list[Ints] = []
        for o in range(k):
            live = present[o] & (ts2[o] >= oldest_live)
            np.minimum(ts1, np.where(live, ts1_all[o], INT_MAX), out=ts1)
            origins += live
            counts.append(np.where(live, c_all[o], 0))
        overflow: dict[int, int]
        if k * max(int(x.max(initial=0)) for x in counts) <= INT_MAX:  # no sum passes 2^63
            c = counts[0].copy()
            for x in counts[1:]:
                c += x
            overflow = {}
            if whole:
                c = c[ids]
        else:
            stacked = np.stack(counts)
            hi, lo = _limbs(stacked[:, ids] if whole else stacked)
            c, overflow = _join(hi.sum(axis=0), lo.sum(axis=0))
        if whole:
            ts1, newest, origins = ts1[ids], newest[ids], origins[ids]
        return PairViews(ids, ts1, newest, c, origins, overflow)

    def destination_views(
        self,
        dest_ids: Ints | None = None,
        pair_views: PairViews | None = None,
        known: PairViews | None = None,
    ) -> DestinationViews:
        """Destination views (scalar ``fold_destination`` of the pair views)
        of every destination, or of ``dest_ids``: grouped by destination id
        with ``np.minimum.at`` / ``np.maximum.at`` / ``np.add.at``.
        ``pair_views``: :meth:`pair_views` of every live pair, already computed
        this cycle (with ``dest_ids`` None), so they are not folded twice.
        ``known``: views of some live pairs, as :meth:`pair_views` gives them
        now; only the other pairs of the destinations are folded here (the
        map sync has just computed the views of every pair its kernel holds,
        and a victim's million pairs are not folded twice)."""
        if pair_views is not None and dest_ids is None:
            views = pair_views
        elif dest_ids is not None and len(dest_ids) == 0:
            return self._no_destinations()
        else:
            live = self.live_ids()
            wanted = None
            if dest_ids is not None:
                wanted = np.zeros(self._dests.capacity, dtype=np.bool_)
                wanted[dest_ids] = True
                live = live[wanted[self._dest[live]]]
            if known is not None and not known.overflow and len(known.ids):
                views = self._with_known(live, known, wanted)
            else:
                views = self.pair_views(live)
        live = views.ids
        d = self._dest[live]
        cap = self._dests.capacity
        ts1 = np.full(cap, INT_MAX, dtype=np.int64)
        ts2 = np.full(cap, -1, dtype=np.int64)
        np.minimum.at(ts1, d, views.ts1)
        np.maximum.at(ts2, d, views.ts2)
        pairs = np.bincount(d, minlength=cap).astype(np.int64)
        # n(D) counts established pairs (algorithm.is_established_view, issue 11)
        # and known ones (a row moved to a later packet), never forged one-shots.
        established = (views.ts2 - views.ts1 > self._params.t_t2) | self._known[live]
        clients = np.bincount(d[established], minlength=cap).astype(np.int64)
        out = np.flatnonzero(pairs) if dest_ids is None else np.asarray(dest_ids, np.int64)
        out = out[pairs[out] > 0]
        if views.overflow:  # a pair's own sum past 2^63: sum exactly in Python
            sums: dict[int, int] = {}
            for i, di in enumerate(d.tolist()):
                sums[di] = sums.get(di, 0) + views.overflow.get(i, int(views.c[i]))
            c = np.array([min(sums[x], INT_MAX) for x in out.tolist()], dtype=np.int64)
            overflow = {j: sums[x] for j, x in enumerate(out.tolist()) if sums[x] > INT_MAX}
        else:
            if len(views.c) * int(views.c.max(initial=0)) <= INT_MAX:  # cannot pass 2^63
                total = np.zeros(cap, dtype=np.int64)
                np.add.at(total, d, views.c)
                c, overflow = total[out], {}
            else:
                hi, lo = _limbs(views.c)
                hs = np.zeros(cap, dtype=np.int64)
                ls = np.zeros(cap, dtype=np.int64)
                np.add.at(hs, d, hi)
                np.add.at(ls, d, lo)
                c, overflow = _join(hs[out], ls[out])
        dst = _addresses(self._dests.keys_of(out))
        start = ts1[out]
        floor = destination_rate_floor(self._params)
        if floor is not None:
            start = _rate_starts(views, d, cap, out, start, ts2[out], c, floor)
        return DestinationViews(out, dst, start, ts2[out], c, clients[out], overflow)

    def _with_known(self, live: Ints, known: PairViews, wanted: Bools | None) -> PairViews:
        """The views of ``live``: ``known``'s where it has them (those of
        wanted destinations), folded here for the rest. Order is not kept:
        a destination's fold does not depend on it."""
        keep = self._nrows[known.ids] > 0  # a merge between two chunks may drop one
        if wanted is not None:
            keep &= wanted[self._dest[known.ids]]
        every = bool(keep.all())
        have = np.zeros(len(self._nrows), dtype=np.bool_)
        have[known.ids if every else known.ids[keep]] = True
        rest = self.pair_views(live[~have[live]])
        if rest.overflow:
            return self.pair_views(live)
        if every and not len(rest.ids):
            return known
        return PairViews(
            np.concatenate([known.ids[keep], rest.ids]),
            np.concatenate([known.ts1[keep], rest.ts1]),
            np.concatenate([known.ts2[keep], rest.ts2]),
            np.concatenate([known.c[keep], rest.c]),
            np.concatenate([known.origins[keep], rest.origins]),
        )

    def _no_destinations(self) -> DestinationViews:
        z = np.zeros(0, dtype=np.int64)
        empty = np.zeros(0, dtype=ADDRESS_DTYPE)
        return DestinationViews(z, empty, z.copy(), z.copy(), z.copy(), z.copy())

    def destination_ids(self, dst: Addresses) -> Ints:
        """The id of each destination held, -1 otherwise."""
        from xpro_mesh.core.keys import address_words

        return self._dests.lookup(address_words(dst))

    def destination_of(self, ids: Ints) -> Ints:
        return self._dest[ids]

    # --- anti-entropy ----------------------------------------------------------------

    def origin_summary(
        self, active_since: int | None = None
    ) -> dict[str, tuple[Version, int, int]]:
        """Per origin whose rows are held: (watermark, rows, summed count),
        counting only rows with ``ts2 >= active_since`` when given. For this
        node the watermark is its clock. Two nodes at the same watermark of
        an origin hold the same versions of its rows (a watermark only moves
        along contiguous claims), except rows one of them has expired and the
        other not yet (each expires on its own cycle, without a version):
        ``active_since`` well above both expiry floors leaves those out, so
        the sums must be equal. What the lab compares as the count error
        among live origins."""
        out: dict[str, tuple[Version, int, int]] = {}
        for origin, o in self._slot.items():
            if not self._rows_of[o] and origin != self._node_id:
                continue
            held = self._present[o]
            if active_since is not None:
                held = held & ~_lt(self._ts2[o], active_since)
            rows = int(np.count_nonzero(held))
            count = int(self._c[o][held].sum())
            mark = self._clock if origin == self._node_id else self._watermark.get(origin)
            out[origin] = (mark if mark is not None else ZERO_VERSION, rows, count)
        return out

    def digest(self) -> Digest:
        return Digest(sender=self._node_id, versions=dict(self._watermark))

    def delta_for(self, peer: Digest, only: str | None = None) -> ColumnarDelta:
        """Every row the peer lacks by its digest, with claims for what we
        cover; rows of the peer's earlier incarnations go back to it. With
        ``only``, rows and claims of that origin alone (a signing node sends
        its own from the table, others' as their origins signed them)."""
        wanted = peer.versions
        batches: list[RowBatch] = []
        for origin, o in self._slot.items():
            if not self._rows_of[o] or (only is not None and origin != only):
                continue
            after = wanted.get(origin, ZERO_VERSION)
            inc, seq = self._inc[o], self._seq[o]
            if origin == peer.sender and after != ZERO_VERSION:
                mask = self._present[o] & (_version_gt(inc, seq, after) | _lt(inc, after[0]))
            elif self._top[origin] > after:
                mask = self._present[o] & _version_gt(inc, seq, after)
            else:
                continue
            ids = np.flatnonzero(mask)
            if len(ids):
                batches.append(self._batch(origin, o, ids))
        coverage = [
            Coverage(origin, wanted.get(origin, ZERO_VERSION), mark)
            for origin, mark in self._watermark.items()
            if mark > wanted.get(origin, ZERO_VERSION) and (only is None or origin == only)
        ]
        return ColumnarDelta(batches=tuple(batches), coverage=tuple(coverage))

    def rows_of_origin(self, origin: str) -> int:
        """Rows held of ``origin``."""
        o = self._slot.get(origin)
        return self._rows_of[o] if o is not None else 0

    def drop_uncovered(self, origin: str) -> int:
        """Forget the rows of ``origin`` (not ours) above its watermark, the
        rows no claim of it covers; how many went. The pairs show in
        :meth:`take_changed` as expiry's do."""
        o = self._slot.get(origin)
        if origin == self._node_id or o is None or not self._rows_of[o]:
            return 0
        mark = self._watermark.get(origin, ZERO_VERSION)
        ids = np.flatnonzero(self._present[o] & _version_gt(self._inc[o], self._seq[o], mark))
        if not len(ids):
            return 0
        self._unstore(origin, o, ids)
        self._drop_empty(ids, record=True)
        return len(ids)

    def full_state(self) -> ColumnarDelta:
        return self.delta_for(Digest(sender="", versions={}))

    def _batch(self, origin: str, o: int, ids: Ints) -> RowBatch:
        src, dst = self.pair_keys(ids)
        return RowBatch(
            origin, src, dst, self._ts1[o][ids], self._ts2[o][ids], self._c[o][ids],
            self._inc[o][ids], self._seq[o][ids],
        )  # fmt: skip

    def merge(
        self, delta: ColumnarDelta, now: int, limits: MergeLimits | None = None
    ) -> TableMergeReport:
        """Take a peer's rows (scalar ``GossipState.merge`` on ``to_delta(delta)``,
        rule for rule): keep the newest version per (pair, origin), refuse
        what breaks the bounds, adopt our earlier incarnation's rows, advance
        watermarks along contiguous claims. Never raises on what a peer sends."""
        lim = limits if limits is not None else MergeLimits()
        rows = delta.rows
        if rows > lim.max_entries_per_message or len(delta.coverage) > lim.max_entries_per_message:
            return TableMergeReport(0, 0, 0, {Rejection.OVERSIZED: rows}, 0, np.zeros(0, np.int64))
        floor = now - self._horizon
        if self._floor is not None and self._floor > floor:
            floor = self._floor
        tally = _Tally()
        for batch in delta.batches:
            if len(batch):
                self._merge_batch(batch, floor, now + lim.max_skew_ns, lim, tally)
        advanced = self._advance(delta.coverage, tally.hold_back, lim)
        changed = self._distinct(np.concatenate([np.zeros(0, np.int64), *tally.changed]))
        return TableMergeReport(
            tally.accepted, tally.adopted, tally.stale, tally.rejected, advanced, changed
        )

    def _advance(
        self, coverage: tuple[Coverage, ...], hold_back: set[str], lim: MergeLimits
    ) -> int:
        advanced = 0
        for cov in coverage:
            origin = cov.origin
            if (
                origin == self._node_id
                or origin in hold_back
                or not origin
                or not cov.after < cov.upto
            ):
                continue
            mark = self._watermark.get(origin, ZERO_VERSION)
            if not cov.after <= mark < cov.upto:
                continue
            held = origin in self._slot and self._rows_of[self._slot[origin]] > 0
            if mark == ZERO_VERSION and not held and len(self._watermark) >= lim.max_origins:
                continue
            self._watermark[origin] = cov.upto
            advanced += 1
        return advanced

    def _merge_batch(
        self, b: RowBatch, floor: int, future: int, lim: MergeLimits, tally: _Tally
    ) -> None:
        ids, created = self._ids_for(b.src, b.dst)
        try:
            cols = (b.ts1, b.ts2, b.c, b.inc, b.seq)
            reason = _check(b.origin, *cols, future, floor, lim, self._horizon)
            own = b.origin == self._node_id
            n = len(ids)
            if own and (reason == _OK).any():
                conflict = (reason == _OK) & _version_gt(b.inc, b.seq, self._clock)
                if conflict.any() and n > 1:
                    for i in range(n):  # the clock moves row by row: one at a time
                        self._merge_rows(b, ids, reason, np.arange(i, i + 1), lim, tally)
                    return
            for seg in _segments(ids, self._scratch):
                self._merge_rows(b, ids, reason, seg, lim, tally)
        finally:
            self._drop_empty(ids[created])

    def _merge_rows(
        self,
        b: RowBatch,
        all_ids: Ints,
        all_reason: npt.NDArray[np.int8],
        seg: Ints,
        lim: MergeLimits,
        tally: _Tally,
    ) -> None:
        """Rows ``seg`` of ``b``, no pair twice among them."""
        origin = b.origin
        ids = all_ids[seg]
        at = _run(ids)  # gathers by id as a slice where the ids are a run
        reason = all_reason[seg]
        inc, seq = b.inc[seg], b.seq[seg]
        cols = (b.ts1[seg], b.ts2[seg], b.c[seg])
        if origin == self._node_id:
            self._merge_own(ids, reason, cols, inc, seq, tally)
            return
        o = self._slot.get(origin)
        if o is not None and self._rows_of[o]:
            held = self._present[o][at]
            stale = held & _version_le_held(inc, seq, self._inc[o][at], self._seq[o][at])
        else:
            o = None
            held = np.zeros(len(ids), dtype=np.bool_)
            stale = held
        tally.stale += int(np.count_nonzero(stale))
        fresh = ~stale
        refused = reason != _OK
        if refused.any():  # most batches have no refused row: one pass, not one per reason
            for code, why in _REASON.items():
                tally.reject(why, int(np.count_nonzero(fresh & (reason == code))), origin)
            ok = fresh & ~refused
        else:
            ok = fresh
        if o is None and self._origins_with_rows() >= lim.max_origins:
            tally.reject(Rejection.TOO_MANY_ORIGINS, int(np.count_nonzero(ok)), origin)
            return
        new_pair = ok & ~held & (self._nrows[at] == 0)
        room = lim.max_pairs - self._num_pairs
        if np.count_nonzero(new_pair) > room:
            full = new_pair & (np.cumsum(new_pair) > room)
            tally.reject(Rejection.TABLE_FULL, int(np.count_nonzero(full)), origin)
            ok = ok & ~full
        new_row = ok & ~held
        quota = lim.max_rows_per_origin - (self._rows_of[o] if o is not None else 0)
        if np.count_nonzero(new_row) > quota:  # one origin's quota (scalar: ORIGIN_FULL)
            over = new_row & (np.cumsum(new_row) > quota)
            tally.reject(Rejection.ORIGIN_FULL, int(np.count_nonzero(over)), origin)
            ok = ok & ~over
        store = np.flatnonzero(ok)
        if not len(store):
            return
        if o is None:
            o = self._new_slot(origin)
        if len(store) == len(ids):  # the usual batch: every row taken, no gathers
            s = ids
            self._store(o, s, cols[0], cols[1], cols[2], inc, seq)
        else:
            s = ids[store]
            self._store(
                o, s, cols[0][store], cols[1][store], cols[2][store], inc[store], seq[store]
            )
        tally.accepted += len(store)
        tally.changed.append(s)

    def _merge_own(
        self,
        ids: Ints,
        reason: npt.NDArray[np.int8],
        cols: tuple[Ints, Ints, Ints],
        inc: Ints,
        seq: Ints,
        tally: _Tally,
    ) -> None:
        """A peer's copies of our rows: adopted, stale or refused (scalar
        ``_merge_own``); a conflict only ever comes alone (see the caller)."""
        me = self._node_id
        for code, why in _REASON.items():
            tally.reject(why, int(np.count_nonzero(reason == code)), me)
        ok = reason == _OK
        conflict = ok & _version_gt(inc, seq, self._clock)
        if conflict.any():
            assert len(ids) == 1
            pid = int(ids[0])
            version = (int(inc[0]), int(seq[0]))
            tally.reject(Rejection.OWN_CONFLICT, 1, me)
            held = bool(self._present[0, pid])
            if held and version[1] >= INT_MAX:
                return  # no room to re-issue above it (module docstring)
            self._clock = version
            if held:
                self._clock = (version[0], version[1] + 1)
                self._restamp(ids, self._clock[0], np.array([self._clock[1]]))
                tally.changed.append(ids)
            self._watermark[me] = self._clock
            return
        earlier = ok & (inc < self._incarnation)
        tally.stale += int(np.count_nonzero(ok & ~earlier))  # echoes of what we issued
        counted = earlier & self._written[ids]
        tally.reject(Rejection.OWN_ORIGIN, int(np.count_nonzero(counted)), me)
        maybe = earlier & ~counted
        seen = maybe & _version_le_held(inc, seq, self._adopt_inc[ids], self._adopt_seq[ids])
        tally.stale += int(np.count_nonzero(seen))
        take = np.flatnonzero(maybe & ~seen)
        if not len(take):
            return
        c_inc, c_seq = self._clock
        if c_seq + len(take) > INT_MAX:
            take = take[: INT_MAX - c_seq]
        t = ids[take]
        self._adopt_inc[t] = inc[take]
        self._adopt_seq[t] = seq[take]
        versions = c_seq + np.arange(1, len(take) + 1, dtype=np.int64)
        self._store(
            0, t, cols[0][take], cols[1][take], cols[2][take], np.full(len(t), c_inc), versions
        )
        self._clock = (c_inc, c_seq + len(take))
        self._watermark[me] = self._clock
        tally.adopted += len(take)
        tally.changed.append(t)

    def _restamp(self, ids: Ints, inc: int, seq: Ints) -> None:
        self._store(
            0,
            ids,
            self._ts1[0][ids],
            self._ts2[0][ids],
            self._c[0][ids],
            np.full(len(ids), inc),
            seq,
        )

    # --- ageing ----------------------------------------------------------------------

    def expire(self, now: int) -> TableExpiry:
        """Drop rows idle longer than the horizon; refuse such rows from now on."""
        floor = now - self._horizon
        if self._floor is None or floor > self._floor:
            self._floor = floor
        floor = self._floor
        dropped = 0
        touched: list[Ints] = []
        for origin, o in list(self._slot.items()):
            if not self._rows_of[o]:
                continue
            if self._oldest.get(o, INT_MIN) >= floor:
                continue  # no row of this origin is older than the floor
            ts2 = self._ts2[o]
            present = self._present[o]
            old = present & _lt(ts2, floor)
            ids = np.flatnonzero(old)
            if len(ids):
                dropped += len(ids)
                touched.append(ids)
                self._unstore(origin, o, ids)
            if self._rows_of[o]:
                self._oldest[o] = int(ts2[present].min())
        for origin in [o for o in self._watermark if o != self._node_id]:
            if origin not in self._slot or not self._rows_of[self._slot[origin]]:
                del self._watermark[origin]
        if not touched:
            empty = np.zeros(0, dtype=ADDRESS_DTYPE)
            return TableExpiry(0, empty, empty.copy(), np.zeros(0, dtype=np.int64))
        ids = self._distinct(np.concatenate(touched))
        src, dst = self.pair_keys(ids)
        removed = ids[self._nrows[ids] == 0]
        self._drop_empty(ids, record=True)
        return TableExpiry(dropped, src, dst, removed)

    # --- storage ---------------------------------------------------------------------

    def _distinct(self, ids: Ints) -> Ints:
        """``ids`` sorted, each once (many: a mask over the id space, no sort)."""
        if 16 * len(ids) < len(self._nrows):  # few: sort (np.unique hashes, slower)
            ordered = np.sort(ids)
            keep = np.ones(len(ordered), dtype=np.bool_)
            keep[1:] = ordered[1:] != ordered[:-1]
            return ordered[keep]
        seen = np.zeros(self._pairs.capacity, dtype=np.bool_)
        seen[ids] = True
        return np.flatnonzero(seen)

    def _origins_with_rows(self) -> int:
        return sum(1 for o in self._slot.values() if self._rows_of[o])

    def _new_slot(self, origin: str) -> int:
        try:
            o = self._names.index(None)
        except ValueError:
            o = len(self._names)
            grow = len(self._names)
            self._names.extend([None] * grow)
            self._rows_of.extend([0] * grow)
            for name in ("_ts1", "_ts2", "_c", "_inc", "_seq", "_present"):
                a = getattr(self, name)
                setattr(self, name, np.concatenate([a, np.zeros_like(a)]))
        self._names[o] = origin
        self._slot[origin] = o
        self._oldest.pop(o, None)
        return o

    def _ids_for(self, src: Addresses, dst: Addresses) -> tuple[Ints, Bools]:
        """Pair ids for keys, created (with no rows yet) where missing."""
        words = pair_words(src, dst)
        ids, created = self._pairs.get_or_create(words)
        self._fit()
        if created.any():
            new = ids[created]
            dwords = np.ascontiguousarray(words[created][:, 2:])
            dids = self._dests.lookup(dwords)
            unknown = dids == EMPTY
            if unknown.any():
                # Many new pairs share few destinations: create each once, so
                # the index reserves room for the destinations, not the pairs.
                fresh = np.unique(dwords[unknown].view("V16").ravel())
                self._dests.get_or_create(fresh.view(np.uint64).reshape(-1, 2))
                dids[unknown] = self._dests.lookup(dwords[unknown])
            if len(self._dest_pairs) < self._dests.capacity:
                grow = self._dests.capacity - len(self._dest_pairs)
                self._dest_pairs = np.concatenate([self._dest_pairs, np.zeros(grow, np.int64)])
            self._dest[new] = dids
            np.add.at(self._dest_pairs, dids, 1)
        return ids, created

    def _fit(self) -> None:
        """Per-pair columns as long as the key index's id space (doubling)."""
        cap = self._pairs.capacity
        have = len(self._dest)
        if cap <= have:
            return
        grow = cap - have

        def more(a: npt.NDArray[np.generic], fill: int = 0) -> npt.NDArray[np.generic]:
            pad = np.full((*a.shape[:-1], grow), fill, dtype=a.dtype)
            return np.concatenate([a, pad], axis=-1)

        self._dest = more(self._dest)  # type: ignore[assignment]
        self._nrows = more(self._nrows)  # type: ignore[assignment]
        self._known = more(self._known)  # type: ignore[assignment]
        self._written = more(self._written)  # type: ignore[assignment]
        self._adopt_inc = more(self._adopt_inc, -1)  # type: ignore[assignment]
        self._adopt_seq = more(self._adopt_seq, -1)  # type: ignore[assignment]
        self._changed = more(self._changed)  # type: ignore[assignment]
        self._scratch = more(self._scratch)  # type: ignore[assignment]
        for name in ("_ts1", "_ts2", "_c", "_inc", "_seq", "_present"):
            setattr(self, name, more(getattr(self, name)))

    def _store(
        self, o: int, ids: Ints, ts1: Ints, ts2: Ints, c: Ints, inc: Ints, seq: Ints
    ) -> None:
        """Write rows of slot ``o`` for distinct ``ids``."""
        if not len(ids):
            return
        at = _run(ids)  # stores by id as slices where the ids are a run
        new = ~self._present[o][at]
        if new.any():
            fresh = ids[new]
            self._num_pairs += int(np.count_nonzero(self._nrows[fresh] == 0))
            self._nrows[fresh] += 1
            self._rows_of[o] += len(fresh)
            self._present[o][fresh] = True
        moved = ~new & (ts2 > self._ts2[o][at])
        if moved.any():
            self._known[ids[moved]] = True
        self._ts1[o][at] = ts1
        self._ts2[o][at] = ts2
        self._c[o][at] = c
        self._inc[o][at] = inc
        self._seq[o][at] = seq
        self._changed[at] = True
        least = int(ts2.min())
        if least < self._oldest.get(o, INT_MAX):
            self._oldest[o] = least
        top_inc = int(inc.max())
        top = (top_inc, int(seq[inc == top_inc].max()))
        origin = self._names[o]
        assert origin is not None
        held = self._top.get(origin)
        if held is None or top > held:
            self._top[origin] = top

    def _unstore(self, origin: str, o: int, ids: Ints) -> None:
        """Remove rows of slot ``o`` (held) for distinct ``ids``."""
        self._present[o][ids] = False
        self._nrows[ids] -= 1
        gone = self._nrows[ids] == 0
        self._num_pairs -= int(np.count_nonzero(gone))
        self._known[ids[gone]] = False
        self._rows_of[o] -= len(ids)
        self._changed[ids] = True
        if o == 0:
            self._written[ids] = False
            self._adopt_inc[ids] = -1
            self._adopt_seq[ids] = -1
        if not self._rows_of[o]:
            del self._top[origin]
            if o != 0:
                del self._slot[origin]
                self._names[o] = None

    def _drop_empty(self, ids: Ints, record: bool = False) -> None:
        """Forget the keys of ``ids`` (distinct) that hold no row; ``record``:
        they had rows, so report them to :meth:`take_changed`."""
        gone = ids[self._nrows[ids] == 0]
        if not len(gone):
            return
        if record:
            self._removed.append(self._pairs.keys_of(gone))
        self._changed[gone] = False
        self._written[gone] = False
        self._adopt_inc[gone] = -1
        self._adopt_seq[gone] = -1
        d = self._dest[gone]
        np.subtract.at(self._dest_pairs, d, 1)
        d = np.flatnonzero(np.bincount(d, minlength=self._dests.capacity))
        empty = d[self._dest_pairs[d] == 0]
        if len(empty):
            self._dests.remove(empty)
        self._pairs.remove(gone)


def _counts(n: int, *columns: Ints) -> tuple[Ints, Ints, Ints, Ints]:
    """The kernel's counts as int64 columns of length ``n``, checked row by row."""
    ts1, ts2, dc, mark = (np.asarray(x, dtype=np.int64) for x in columns)
    if not n == len(ts1) == len(ts2) == len(dc) == len(mark):
        raise ValueError("record_local: columns of different lengths")
    bad = (ts1 < 0) | (ts1 > ts2) | (dc < 0)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(
            f"inconsistent local count at row {i}: ts1={ts1[i]} ts2={ts2[i]} dc={dc[i]}"
        )
    if ((mark != 0) & (mark != 1)).any():
        i = int(np.argmax((mark != 0) & (mark != 1)))
        raise ValueError(f"mark must be 0 or 1, got {mark[i]} at row {i}")
    return ts1, ts2, dc, mark


def _check_params(p: Params) -> None:
    for name in ("t_t1", "t_t2", "t_t3", "t_t4", "t_f1", "t_f2", "r"):
        if getattr(p, name) > INT_MAX:
            raise ValueError(f"{name} must be below 2^63, got {getattr(p, name)}")


def _check(
    origin: str, ts1: Ints, ts2: Ints, c: Ints, inc: Ints, seq: Ints, future: int, floor: int,
    lim: MergeLimits, horizon: int,
) -> npt.NDArray[np.int8]:  # fmt: skip
    """Scalar ``_check`` row by row: the first bound each row breaks, or 0."""
    n = len(ts1)
    if not origin:
        return np.full(n, _MALFORMED, dtype=np.int8)
    malformed = (
        (ts1 < 0) | (ts1 > ts2) | (c < 0) | (inc < 0) | (seq < 0) | ((inc == 0) & (seq == 0))
    )
    code = np.zeros(n, dtype=np.int8)
    absurd = _absurd(c, ts1, ts2, lim.max_rate_pps, lim.rate_slack_ns)
    code[absurd] = _ABSURD
    code[(ts2 - ts1) > horizon + lim.rate_slack_ns] = _LONG  # gossip_state._check says why
    code[_lt(ts2, floor)] = _EXPIRED
    code[_gt(ts2, future)] = _FUTURE
    code[malformed] = _MALFORMED
    return code


def _run(ids: Ints) -> Ints | slice:
    """Ascending ids with none left out (a batch of pairs created together)
    as a slice, so gathers are views and stores are strided writes; other
    ids as they are. Callers only read what a slice gathers."""
    n = len(ids)
    if n < 2 or int(ids[-1]) - int(ids[0]) != n - 1:
        return ids
    if n > 2 and not bool(np.all(ids[1:] > ids[:-1])):
        return ids
    return slice(int(ids[0]), int(ids[-1]) + 1)


def _columns(arr: npt.NDArray[T], k: int, cols: Ints | slice) -> npt.NDArray[T]:
    """``arr[:k, cols]``: for an id array, one gather per origin row
    (``np.take`` along axis 1: numpy's two-axis fancy index is ~3x slower)."""
    if isinstance(cols, slice):
        return arr[:k, cols]
    return np.take(arr[:k], cols, axis=1)


def _has_duplicates(ids: Ints, scratch: Ints) -> bool:
    """Whether an id occurs twice (``scratch``: any int64 array over the id
    space, overwritten; kept by the table so no call faults in fresh pages)."""
    if len(ids) < 2:
        return False
    if bool(np.all(ids[1:] > ids[:-1])):  # ascending (the usual batch): distinct
        return False
    last = scratch
    order = np.arange(len(ids), dtype=np.int64)
    last[ids] = order
    return bool((last[ids] != order).any())


def _segments(ids: Ints, scratch: Ints) -> Iterator[Ints]:
    """Cut rows into runs, in order, with no id twice in a run (greedy), so
    a run merged at once equals its rows merged one by one."""
    n = len(ids)
    if not _has_duplicates(ids, scratch):
        yield np.arange(n, dtype=np.int64)
        return
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    prev = np.full(n, -1, dtype=np.int64)
    same = sorted_ids[1:] == sorted_ids[:-1]
    prev[order[1:][same]] = order[:-1][same]
    start = 0
    for i in np.flatnonzero(prev >= 0).tolist():
        if prev[i] >= start:
            yield np.arange(start, i, dtype=np.int64)
            start = i
    yield np.arange(start, n, dtype=np.int64)


def chunk(delta: ColumnarDelta, max_items: int) -> tuple[ColumnarDelta, ...]:
    """Scalar ``chunk_delta`` on columns: at most ``max_items`` rows and claims
    per chunk, rows in (origin, version) order, each chunk claiming exactly
    the run of versions it carries."""
    if max_items < 1:
        raise ValueError("max_items must be >= 1")
    if delta.rows <= max_items and len(delta.coverage) <= max_items:
        return (delta,)
    claims = {cov.origin: cov for cov in delta.coverage}
    per_origin: dict[str, list[RowBatch]] = {}
    for b in delta.batches:
        per_origin.setdefault(b.origin, []).append(b)
    ordered: list[RowBatch] = []
    for origin in sorted(per_origin):
        bs = per_origin[origin]
        joined = RowBatch(origin, *(np.concatenate([getattr(b, f) for b in bs]) for f in _FIELDS))
        order = np.lexsort((joined.seq, joined.inc))
        ordered.append(RowBatch(origin, *(getattr(joined, f)[order] for f in _FIELDS)))
    # Where each origin's claim closes: the last of its rows inside the claim.
    closing: dict[str, Version] = {}
    in_claim: dict[str, Bools] = {}
    for b in ordered:
        cov = claims.get(b.origin)
        if cov is None:
            continue
        inside = _version_gt(b.inc, b.seq, cov.after) & ~_version_gt(b.inc, b.seq, cov.upto)
        in_claim[b.origin] = inside
        if inside.any():
            last = int(np.flatnonzero(inside)[-1])
            closing[b.origin] = (int(b.inc[last]), int(b.seq[last]))
    start = {origin: cov.after for origin, cov in claims.items()}
    total = sum(len(b) for b in ordered)
    bounds = list(range(0, total, max_items)) or [0]
    offsets = np.cumsum([0] + [len(b) for b in ordered])
    chunks: list[tuple[list[RowBatch], list[Coverage]]] = []
    for lo in bounds:
        hi = min(lo + max_items, total)
        rows: list[RowBatch] = []
        covs: list[Coverage] = []
        for k, b in enumerate(ordered):
            a, z = max(lo, int(offsets[k])), min(hi, int(offsets[k + 1]))
            if a >= z:
                continue
            first = a - int(offsets[k])
            part = slice(first, z - int(offsets[k]))
            rows.append(RowBatch(b.origin, *(getattr(b, f)[part] for f in _FIELDS)))
            if b.origin in closing:
                hits = np.flatnonzero(in_claim[b.origin][part])
                if len(hits):
                    j = int(hits[-1]) + first
                    end = (int(b.inc[j]), int(b.seq[j]))
                    upto = claims[b.origin].upto if end == closing[b.origin] else end
                    covs.append(Coverage(b.origin, start[b.origin], upto))
                    start[b.origin] = upto
        chunks.append((rows, covs))
    for origin in sorted(claims):
        if origin in closing:
            continue
        for _rows, covs in chunks:
            if len(covs) < max_items:
                covs.append(claims[origin])
                break
        else:
            chunks.append(([], [claims[origin]]))
    return tuple(ColumnarDelta(tuple(rows), tuple(covs)) for rows, covs in chunks)


_FIELDS = ("src", "dst", "ts1", "ts2", "c", "inc", "seq")
