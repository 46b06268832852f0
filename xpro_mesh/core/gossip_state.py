"""The replicated pair table without a master: per-origin entries, their merge,
and the deterministic fold that every node computes from them.

docs/design.md, "Records and merging without a master". The paper's master M_DB is
one copy that every proxy read-modify-writes; here every proxy (an *origin*)
owns its own row per (client, destination) pair and nobody else ever changes
it:

* **Fidelity by construction.** The origin updates its row by running
  Algorithm 1 (:func:`~xpro_mesh.core.algorithm.sync_master`) with its own row
  as the M_DB record and what its kernel counted since the last sync as the
  L_DB record. With one proxy the rows *are* the paper's M_DB.
* **A state-based CRDT per origin.** Every change of a row gets a higher
  version ``(incarnation, seq)``; merging keeps the highest version per
  (pair, origin). Merge is idempotent, commutative and associative, so loss,
  duplication and reordering of gossip do not change the result.
* **Exact counts.** The pair view sums the origins' rows, each counted once,
  over the rows *live* in the current window: a row idle for more than T_T1
  behind the pair's newest activity belongs to an older window (the gossip
  analogue of Alg. 1 line 5). Nodes holding the same rows compute the same view.

Anti-entropy is Scuttlebutt-style push-pull: a node sends its :class:`Digest`
(per origin, the version up to which it holds everything), the peer answers
with a :class:`Delta` holding what is newer. A delta can be cut into bounded
chunks that travel (and get lost) independently, so a digest is not "the
highest version held": that would jump over a lost chunk and the gap would
never be re-sent. Each chunk instead carries :class:`Coverage` claims
("all my rows of origin o with versions in (after, upto] are in this chunk,
and I hold everything of o up to upto"), and a receiver advances its
watermark only along a contiguous claim.

A node restarted under the same id (with a higher incarnation) gets the rows
of its earlier life back from peers and adopts them as its own, so the window
it counted before the crash is not lost (:meth:`GossipState.merge`).

Clock skew: rows of different origins are compared by ts2 (the live rule), so
a skew of s between two proxies moves the live boundary by s, harmless while
s is well below T_T1 (seconds, against NTP's milliseconds); a row more than
``max_skew_ns`` ahead of the receiver's clock is refused (and offered again
later, when it may fit).

Pure: no I/O, no clock; ``now`` is an argument, in cluster nanoseconds.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace

from xpro_mesh.core.algorithm import (
    NS_PER_S,
    DestinationAggregate,
    LocalRecord,
    MasterRecord,
    Params,
    destination_rate_floor,
    fold_destination,
    is_established_view,
    sync_master,
)

__all__ = [
    "ZERO_VERSION",
    "Coverage",
    "Delta",
    "DestinationAggregate",
    "Digest",
    "ExpiryReport",
    "GossipState",
    "LocalCount",
    "LocalSync",
    "MergeLimits",
    "MergeReport",
    "OriginEntry",
    "Pair",
    "PairEntry",
    "PairView",
    "Rejection",
    "Version",
    "chunk_delta",
    "fold_destination",
    "fold_pair",
]

Pair = tuple[Hashable, Hashable]
"""A (client, destination) key. Opaque to the core; the agent uses 16-byte
IPv6 / IPv4-mapped addresses, the wire module insists on them."""

Version = tuple[int, int]
"""``(incarnation, seq)`` of one origin's change, compared lexicographically."""

ZERO_VERSION: Version = (0, 0)
"""Below every real version: "nothing of this origin yet"."""


@dataclass(frozen=True, slots=True)
class OriginEntry:
    """One origin's row for one pair: its window (ts1, ts2), its count c of
    packets in that window, and the version of the change that wrote it."""

    ts1: int
    ts2: int
    c: int
    version: Version


@dataclass(frozen=True, slots=True)
class PairEntry:
    """One replicated row as it travels: which pair, whose row, the row."""

    pair: Pair
    origin: str
    entry: OriginEntry


@dataclass(frozen=True, slots=True)
class Coverage:
    """A sender's claim for ``origin``: it holds every row of the origin up to
    ``upto`` (or a newer version of it), and the chunk carrying this claim holds
    every such row it has with a version in ``(after, upto]``."""

    origin: str
    after: Version
    upto: Version


@dataclass(frozen=True, slots=True)
class Digest:
    """What a node asks for: per origin, the version up to which it holds
    everything. ``sender`` lets a peer hand a restarted node its rows from
    earlier incarnations (restart adoption)."""

    sender: str
    versions: Mapping[str, Version]


@dataclass(frozen=True, slots=True)
class Delta:
    """Rows a peer lacks, and the coverage claims that let it advance its digest."""

    entries: tuple[PairEntry, ...] = ()
    coverage: tuple[Coverage, ...] = ()


@dataclass(frozen=True, slots=True)
class LocalCount:
    """What the kernel counted for a pair since the last sync (the L_DB fields
    that are the origin's own): the window ts1', ts2', the packets dc' counted
    since the last sync, and mark' = 1 when the idle rule restarted the window
    since then. The kernel's c' is not taken: after the mesh re-bases it to the
    pair view it is no longer this origin's count."""

    ts1: int
    ts2: int
    dc: int
    mark: int

    @classmethod
    def from_record(cls, record: LocalRecord) -> LocalCount:
        return cls(ts1=record.ts1, ts2=record.ts2, dc=record.dc, mark=record.mark)


@dataclass(frozen=True, slots=True)
class LocalSync:
    """The outcome of one Algorithm 1 step by the origin for one pair.

    ``entry`` is the origin's row afterwards (the paper's M_DB record),
    ``local`` the L_DB record Algorithm 1 returns, with dc' = 0 and mark' = 0:
    the row now includes them. With one proxy that is what its kernel gets
    back; in a mesh the agent writes the pair view's window and count instead,
    still with dc' = 0 and mark' = 0. ``changed`` says whether the row got a
    new version (and so has something to gossip)."""

    pair: Pair
    entry: OriginEntry
    local: LocalRecord
    changed: bool


@dataclass(frozen=True, slots=True)
class PairView:
    """The mesh-wide window of a pair: earliest start and latest end and the
    summed count over the origins' live rows, and how many origins that is."""

    ts1: int
    ts2: int
    c: int
    origins: int


class Rejection(enum.StrEnum):
    """Why a row offered by a peer was refused; the agent counts them."""

    OWN_ORIGIN = "own_origin"  # a peer's copy of a row only this node may write
    OWN_CONFLICT = "own_conflict"  # a version of ours we never issued (shared id?)
    MALFORMED = "malformed"  # negative value, ts1 > ts2, empty origin, bad version
    FUTURE = "future"  # ts2 more than max_skew_ns ahead of our clock
    ABSURD_COUNT = "absurd_count"  # more packets than max_rate_pps allows
    LONG_WINDOW = "long_window"  # ts2 - ts1 over the horizon (T_T1 + T_T4) + rate_slack_ns
    EXPIRED = "expired"  # older than the horizon: already aged out here
    TABLE_FULL = "table_full"  # would exceed max_pairs
    TOO_MANY_ORIGINS = "too_many_origins"  # would exceed max_origins
    ORIGIN_FULL = "origin_full"  # would exceed max_rows_per_origin (one origin's quota)
    OVERSIZED = "oversized"  # the message had more rows or claims than allowed


class _Own(enum.Enum):
    ADOPTED = "adopted"
    STALE = "stale"


_TRANSIENT = frozenset(
    {Rejection.FUTURE, Rejection.TABLE_FULL, Rejection.TOO_MANY_ORIGINS, Rejection.ORIGIN_FULL}
)
"""Refusals that may not hold later: a chunk with such a row does not advance
the digest, so the row is offered again."""


@dataclass(frozen=True, slots=True)
class MergeLimits:
    """Bounds on what a peer can make this node store. Defaults suit a LAN mesh
    with NTP-kept clocks; each trades safety against tolerance."""

    max_skew_ns: int = 2 * NS_PER_S  # clock skew tolerated for a row's ts2
    max_rate_pps: int = 150_000_000  # above line rate of 100 GbE: no real row gets here
    rate_slack_ns: int = NS_PER_S  # added to a window so 1 packet at ts1 == ts2 is fine
    max_pairs: int = 1_000_000  # pairs held in total (the kernel's LRU is the real cap)
    max_origins: int = 4_096  # distinct origins held (a mesh is far smaller)
    max_entries_per_message: int = 4_096  # rows (and claims) in one delta chunk
    # Rows one origin other than us may hold here: its quota, so a compromised
    # signer cannot fill max_pairs for everyone (issue 12). An origin holds one
    # row a pair it counted, so the default is the kernel's pair capacity.
    max_rows_per_origin: int = 1_000_000

    def __post_init__(self) -> None:
        for name in (
            "max_skew_ns",
            "max_rate_pps",
            "rate_slack_ns",
            "max_pairs",
            "max_origins",
            "max_entries_per_message",
            "max_rows_per_origin",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")


@dataclass(frozen=True, slots=True)
class MergeReport:
    """What one merge did. ``stale`` rows were older than (or equal to) what is
    held, which is normal under duplication; ``rejected`` counts refusals by
    reason; ``changed_pairs`` are the pairs whose rows (so views) changed."""

    accepted: int = 0
    adopted: int = 0
    stale: int = 0
    rejected: Mapping[Rejection, int] = field(default_factory=dict)
    watermarks_advanced: int = 0
    changed_pairs: frozenset[Pair] = frozenset()

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


@dataclass(frozen=True, slots=True)
class ExpiryReport:
    dropped: int
    changed_pairs: frozenset[Pair]


def fold_pair(entries: Iterable[OriginEntry], t_t1: int) -> PairView | None:
    """The pair view from the origins' rows alone, the same on every node.

    A row is live when its ts2 is within T_T1 of the newest ts2 of the pair:
    a row idle longer than that belongs to a window that Algorithm 2 would
    have restarted (Alg. 1 line 5 replaces such a window instead of adding it).
    """
    rows = entries if isinstance(entries, (list, tuple)) else list(entries)
    if not rows:
        return None
    newest = max([e.ts2 for e in rows])
    cutoff = newest - t_t1
    ts1 = newest
    total = 0
    live = 0
    for e in rows:
        if e.ts2 >= cutoff:
            if e.ts1 < ts1:
                ts1 = e.ts1
            total += e.c
            live += 1
    return PairView(ts1=ts1, ts2=newest, c=total, origins=live)


def chunk_delta(delta: Delta, max_items: int) -> tuple[Delta, ...]:
    """Cut a delta into chunks of at most ``max_items`` rows and at most
    ``max_items`` claims each, safe to deliver independently.

    Rows go in version order per origin, so each chunk holds a contiguous run
    of an origin's versions and claims exactly that run: ``(end of the run in
    the previous chunk, end of this run]``, the last run closing the claim at
    its ``upto``. A receiver that misses a chunk stops advancing at the gap and
    asks again from there.
    """
    if max_items < 1:
        raise ValueError("max_items must be >= 1")
    if len(delta.entries) <= max_items and len(delta.coverage) <= max_items:
        return (delta,)
    claims = {cov.origin: cov for cov in delta.coverage}
    ordered = sorted(delta.entries, key=lambda pe: (pe.origin, pe.entry.version))
    row_chunks = [ordered[i : i + max_items] for i in range(0, len(ordered), max_items)] or [[]]

    # The last claimed row of each origin: where its claim can close.
    closing: dict[str, Version] = {}
    for pe in ordered:
        cov = claims.get(pe.origin)
        if cov is not None and cov.after < pe.entry.version <= cov.upto:
            closing[pe.origin] = pe.entry.version
    start = {origin: cov.after for origin, cov in claims.items()}
    chunks: list[tuple[list[PairEntry], list[Coverage]]] = []
    for rows in row_chunks:
        run_end: dict[str, Version] = {}
        for pe in rows:
            if pe.origin in closing:
                cov = claims[pe.origin]
                if cov.after < pe.entry.version <= cov.upto:
                    run_end[pe.origin] = pe.entry.version
        covs: list[Coverage] = []
        for origin, end in run_end.items():
            upto = claims[origin].upto if end == closing[origin] else end
            covs.append(Coverage(origin, start[origin], upto))
            start[origin] = upto
        chunks.append((rows, covs))
    # Claims with no rows in their range travel in any chunk with room.
    for origin in sorted(claims):
        if origin in closing:
            continue
        for _rows, covs in chunks:
            if len(covs) < max_items:
                covs.append(claims[origin])
                break
        else:
            chunks.append(([], [claims[origin]]))
    return tuple(Delta(entries=tuple(rows), coverage=tuple(covs)) for rows, covs in chunks)


class GossipState:
    """One node's copy of the replicated pair table.

    ``node_id`` is this node's origin name; ``incarnation`` must grow across
    restarts of the same id (e.g. the boot epoch): versions are
    ``(incarnation, seq)``. ``horizon_ns`` (default T_T1 + T_T4, never less)
    is how long a row is kept after its last activity.
    """

    def __init__(
        self,
        node_id: str,
        incarnation: int,
        params: Params,
        horizon_ns: int | None = None,
    ) -> None:
        if not node_id:
            raise ValueError("node_id must not be empty")
        if incarnation < 1:
            raise ValueError("incarnation must be >= 1")
        minimum = params.t_t1 + params.t_t4
        horizon = minimum if horizon_ns is None else horizon_ns
        if horizon < minimum:
            raise ValueError(f"horizon_ns must be >= T_T1 + T_T4 = {minimum}, got {horizon}")
        self._node_id = node_id
        self._incarnation = incarnation
        self._params = params
        self._horizon = horizon
        self._clock: Version = (incarnation, 0)
        self._floor: int | None = None  # rows with ts2 below this were expired here
        self._rows: dict[Pair, dict[str, OriginEntry]] = {}
        self._by_origin: dict[str, dict[Pair, PairEntry]] = {}  # the rows as they travel
        self._top: dict[str, Version] = {}  # highest version held per origin
        self._watermark: dict[str, Version] = {}  # digest: complete up to, per origin
        self._by_destination: dict[Hashable, set[Pair]] = {}
        # Pairs a row of which moved to a later packet: they sent in two syncs
        # at least (a forged one-packet source never does); n(D) counts them.
        self._known: set[Pair] = set()
        self._written: set[Pair] = set()  # own pairs counted by this process
        self._adopted_from: dict[Pair, Version] = {}  # earlier-incarnation source
        self._views: dict[Pair, PairView] = {}
        self._dest_views: dict[Hashable, DestinationAggregate] = {}
        # Pairs whose rows changed since the last take_changed(); None: all.
        self._changed: set[Pair] | None = None
        # No row has a ts2 below this (a lower bound): expire() skips its scan
        # while the floor is under it.
        self._oldest_ts2: int | None = None

    # --- identity and inspection -------------------------------------------

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
        """The latest version this node issued (or had to jump to)."""
        return self._clock

    def __len__(self) -> int:
        """Rows held, over all pairs and origins."""
        return sum(len(rows) for rows in self._by_origin.values())

    def entry(self, pair: Pair, origin: str) -> OriginEntry | None:
        rows = self._rows.get(pair)
        return None if rows is None else rows.get(origin)

    def own_entry(self, pair: Pair) -> OriginEntry | None:
        return self.entry(pair, self._node_id)

    def entries(self) -> Iterator[PairEntry]:
        for rows in self._by_origin.values():
            yield from rows.values()

    def pairs(self) -> Iterator[Pair]:
        return iter(self._rows)

    @property
    def num_pairs(self) -> int:
        return len(self._rows)

    def has_pair(self, pair: Pair) -> bool:
        return pair in self._rows

    def take_changed(self) -> set[Pair] | None:
        """The pairs whose rows (so views) changed since the last call, and
        start collecting afresh; None means "assume every pair changed" (the
        first call, and after :meth:`set_params`). Lets the map sync skip the
        pairs that nothing touched."""
        changed, self._changed = self._changed, set()
        return changed

    # --- the origin's own rows: Algorithm 1 ------------------------------------

    def own_count(self, pair: Pair, record: LocalRecord) -> LocalCount | None:
        """This origin's part of the kernel's record of ``pair``, as
        :meth:`record_local` takes it; None when a sync cannot change the
        origin's row (no new packets, its own window within T_T4).

        The kernel holds the mesh view, not this origin's row: the agent
        re-bases its ``c'`` to the view's count, its ``ts1'`` to the view's
        start (the earliest of every origin's rows) and its ``ts2'`` to the
        view's end (moved on by other proxies' packets). Taken as this
        origin's own, they would import other origins' windows into its row:
        a proxy taking over a client would inherit the other proxy's start
        and halve what it counted at each sync (lines 22-23, then 13-17), and
        a proxy that stopped seeing a client would keep its row alive on the
        view's end, its count halved towards 0 and its start dragging the
        view's window back. So the window is the origin's own: its row's
        start (the kernel's after a restart, mark' = 1); for a first row, the
        view's end, the last packet seen anywhere before this proxy's first;
        ``ts2'`` the kernel's only when the kernel counted packets here. With
        one origin this is exactly the kernel's record (view = row).
        """
        p = self._params
        own = self.own_entry(pair)
        if record.dc == 0 and not record.mark:
            if own is not None and own.ts2 - own.ts1 > p.t_t4:
                return LocalCount(ts1=own.ts1, ts2=own.ts2, dc=0, mark=0)
            return None
        if record.mark:
            ts1 = record.ts1
        elif own is not None:
            ts1 = min(own.ts1, record.ts2)
        else:
            # A first row here: its window starts after the last packet seen
            # anywhere before (the view's end), not at the view's start.
            view = self.pair_view(pair)
            seen = record.ts1 if view is None else view.ts2
            ts1 = max(record.ts1, min(seen, record.ts2))
        return LocalCount(ts1=ts1, ts2=record.ts2, dc=record.dc, mark=record.mark)

    def record_local(self, pair: Pair, counted: LocalCount) -> LocalSync:
        """Sync what the kernel counted for ``pair`` into this origin's row.

        Algorithm 1 with the origin's row as M_DB and, as L_DB,
        ``(ts1', ts2', c', dc', mark')`` where c' is the row's count plus dc'
        (or dc' alone after an idle restart, since Alg. 2 zeroes c' and dc'
        together when it restarts a window). Call it for every pair the kernel
        holds on every sync, as the paper does: a sync without new packets can
        still shrink a window past T_T4 (lines 13-17).
        """
        if counted.ts1 < 0 or counted.ts1 > counted.ts2 or counted.dc < 0:
            raise ValueError(f"inconsistent local count for {pair!r}: {counted}")
        if counted.mark not in (0, 1):
            raise ValueError(f"mark must be 0 or 1, got {counted.mark}")
        own = self.own_entry(pair)
        master = None if own is None else MasterRecord(ts1=own.ts1, ts2=own.ts2, c=own.c)
        base = 0 if own is None or counted.mark else own.c
        local = LocalRecord(
            ts1=counted.ts1, ts2=counted.ts2, c=base + counted.dc, dc=counted.dc, mark=counted.mark
        )
        new_local, new_master = sync_master(local, master, self._params)
        assert new_local is not None and new_master is not None  # local was given
        self._written.add(pair)
        # Lines 31-33 leave dc' and mark' set; the row now includes them, so
        # the agent clears both (otherwise the next sync counts them twice).
        written_back = LocalRecord(
            ts1=new_local.ts1, ts2=new_local.ts2, c=new_local.c, dc=0, mark=0
        )
        if own is not None and (own.ts1, own.ts2, own.c) == (
            new_master.ts1,
            new_master.ts2,
            new_master.c,
        ):
            return LocalSync(pair, own, written_back, changed=False)
        row = OriginEntry(new_master.ts1, new_master.ts2, new_master.c, self._next_version())
        self._store(PairEntry(pair, self._node_id, row))
        return LocalSync(pair, row, written_back, changed=True)

    def wrote(self, pair: Pair) -> bool:
        """Whether this process has written its own row of ``pair`` (a row it
        holds otherwise came from an earlier life of this node)."""
        return pair in self._written

    def restart_own(self, pair: Pair, ts1: int, ts2: int, c: int) -> LocalSync:
        """Make ``(ts1, ts2, c)`` this origin's row of ``pair`` under a new
        version, whatever the row was: the window the data path counted is
        the truth about this origin's packets (a restarted agent finds the
        kernel's window, which already holds every packet the row of its
        earlier life counted; folding it into that row would count them
        twice)."""
        if ts1 < 0 or ts1 > ts2 or c < 0:
            raise ValueError(f"inconsistent window for {pair!r}: {ts1}..{ts2}, c={c}")
        self._written.add(pair)
        row = OriginEntry(ts1, ts2, c, self._next_version())
        self._store(PairEntry(pair, self._node_id, row))
        return LocalSync(pair, row, LocalRecord(ts1=ts1, ts2=ts2, c=c, dc=0, mark=0), True)

    def _next_version(self) -> Version:
        self._clock = (self._clock[0], self._clock[1] + 1)
        self._watermark[self._node_id] = self._clock
        return self._clock

    # --- views ---------------------------------------------------------------

    def pair_view(self, pair: Pair) -> PairView | None:
        view = self._views.get(pair)
        if view is None:
            rows = self._rows.get(pair)
            if not rows:
                return None
            view = fold_pair(list(rows.values()), self._params.t_t1)
            assert view is not None
            self._views[pair] = view
        return view

    def pair_views(self) -> dict[Pair, PairView]:
        views: dict[Pair, PairView] = {}
        for pair in self._rows:
            view = self.pair_view(pair)
            assert view is not None
            views[pair] = view
        return views

    def destination_view(self, destination: Hashable) -> DestinationAggregate | None:
        view = self._dest_views.get(destination)
        if view is None:
            pairs = self._by_destination.get(destination)
            if not pairs:
                return None
            views = [(p, v) for p in pairs if (v := self.pair_view(p)) is not None]
            view = fold_destination(
                (v for _p, v in views),
                destination_rate_floor(self._params),
                views_established_under=self._params,  # n(D): established pairs (issue 11)
            )
            assert view is not None
            # ... and known ones: a row that moved to a later packet (_known).
            known = sum(
                1 for p, v in views if p in self._known and not is_established_view(v, self._params)
            )
            if known:
                view = replace(view, clients=view.clients + known)
            self._dest_views[destination] = view
        return view

    def destination_views(self) -> dict[Hashable, DestinationAggregate]:
        views: dict[Hashable, DestinationAggregate] = {}
        for destination in self._by_destination:
            view = self.destination_view(destination)
            assert view is not None
            views[destination] = view
        return views

    def set_params(self, params: Params) -> None:
        """New thresholds (SIGHUP, PUT /v1/config): the window rules of the
        fold and of Algorithm 1 use them from now on; rows are kept."""
        self._params = params
        self._horizon = max(self._horizon, params.t_t1 + params.t_t4)
        self._views.clear()
        self._dest_views.clear()
        self._changed = None

    # --- anti-entropy --------------------------------------------------------

    def digest(self) -> Digest:
        return Digest(sender=self._node_id, versions=dict(self._watermark))

    def delta_for(self, peer: Digest) -> Delta:
        """Every row the peer lacks by its digest, with claims for what we cover.

        When the peer is an origin whose rows we hold from an earlier
        incarnation of it, they are sent too (it adopts them, see :meth:`merge`).
        """
        wanted = peer.versions
        # Set differences of the items views run in C: only origins where we
        # hold something the peer's digest does not already name are looked at.
        ahead = {origin for origin, _ in self._top.items() - wanted.items()}
        if peer.sender in self._top:
            ahead.add(peer.sender)
        rows: list[PairEntry] = []
        for origin in ahead:
            after = wanted.get(origin, ZERO_VERSION)
            if origin == peer.sender and after != ZERO_VERSION:
                older = after[0]
                rows.extend(
                    pe
                    for pe in self._by_origin[origin].values()
                    if pe.entry.version > after or pe.entry.version[0] < older
                )
            elif self._top[origin] > after:
                rows.extend(
                    pe for pe in self._by_origin[origin].values() if pe.entry.version > after
                )
        coverage: list[Coverage] = []
        for origin, mark in self._watermark.items() - wanted.items():
            after = wanted.get(origin, ZERO_VERSION)
            if mark > after:
                coverage.append(Coverage(origin, after, mark))
        return Delta(entries=tuple(rows), coverage=tuple(coverage))

    def full_state(self) -> Delta:
        """Everything, for a node joining the mesh."""
        return self.delta_for(Digest(sender="", versions={}))

    def merge(self, delta: Delta, now: int, limits: MergeLimits | None = None) -> MergeReport:
        """Take a peer's rows: keep the newest version per (pair, origin).

        Never raises on what a peer sends; refusals are counted by reason.
        Rows of this node's own origin are never taken from a peer, except
        rows from an *earlier incarnation* of this node for pairs it has not
        counted since it started (restart adoption): those are adopted as
        its own and re-issued under a new version, so the window counted
        before the crash is not lost. A row of ours with a version we never
        issued (a later incarnation, or another process with our id) is
        refused as ``own_conflict``; our clock jumps past it and our own row
        for that pair, if any, is re-issued above it so the mesh converges
        back to this node's counts.
        """
        lim = limits if limits is not None else MergeLimits()
        if (
            len(delta.entries) > lim.max_entries_per_message
            or len(delta.coverage) > lim.max_entries_per_message
        ):
            return MergeReport(rejected={Rejection.OVERSIZED: len(delta.entries)})
        floor = now - self._horizon
        if self._floor is not None and self._floor > floor:
            floor = self._floor
        future = now + lim.max_skew_ns
        rate_pps = lim.max_rate_pps
        slack = lim.rate_slack_ns
        me = self._node_id
        accepted = adopted = stale = 0
        rejected: dict[Rejection, int] = {}
        changed: set[Pair] = set()
        hold_back: set[str] = set()  # origins with a transient refusal in this chunk
        by_origin = self._by_origin
        held: PairEntry | None = None

        for pe in delta.entries:
            e = pe.entry
            origin = pe.origin
            if origin != me:
                # Not newer than what we hold: nothing to check or store.
                rows = by_origin.get(origin)
                held = None if rows is None else rows.get(pe.pair)
                if held is not None and held.entry.version >= e.version:
                    stale += 1
                    continue
            reason = _check(e, origin, future, floor, rate_pps, slack, self._horizon + slack)
            if reason is None and origin == me:
                outcome = self._merge_own(pe.pair, e)
                if outcome is _Own.ADOPTED:
                    adopted += 1
                    changed.add(pe.pair)
                    continue
                if outcome is _Own.STALE:
                    stale += 1
                    continue
                reason = outcome
                if reason is Rejection.OWN_CONFLICT and self.own_entry(pe.pair) is not None:
                    changed.add(pe.pair)
            elif reason is None and held is None:
                if rows is None and len(by_origin) >= lim.max_origins:
                    reason = Rejection.TOO_MANY_ORIGINS
                elif pe.pair not in self._rows and len(self._rows) >= lim.max_pairs:
                    reason = Rejection.TABLE_FULL
                elif rows is not None and len(rows) >= lim.max_rows_per_origin:
                    reason = Rejection.ORIGIN_FULL
            if reason is not None:
                rejected[reason] = rejected.get(reason, 0) + 1
                if reason in _TRANSIENT:
                    hold_back.add(origin)
                continue
            self._store(pe)
            accepted += 1
            changed.add(pe.pair)

        advanced = 0
        for cov in delta.coverage:
            origin = cov.origin
            if origin == me or origin in hold_back or not origin or not cov.after < cov.upto:
                continue
            mark = self._watermark.get(origin, ZERO_VERSION)
            if not cov.after <= mark < cov.upto:
                continue
            if (
                mark == ZERO_VERSION
                and origin not in by_origin
                and len(self._watermark) >= lim.max_origins
            ):
                continue
            self._watermark[origin] = cov.upto
            advanced += 1
        return MergeReport(
            accepted=accepted,
            adopted=adopted,
            stale=stale,
            rejected=rejected,
            watermarks_advanced=advanced,
            changed_pairs=frozenset(changed),
        )

    def _merge_own(self, pair: Pair, e: OriginEntry) -> Rejection | _Own:
        """A peer's copy of one of our rows: adopted, stale or refused."""
        if e.version > self._clock:
            # Never issued by us: refuse, and make sure our own count wins.
            self._clock = e.version
            held = self.own_entry(pair)
            if held is not None:
                self._store(PairEntry(pair, self._node_id, _restamp(held, self._next_version())))
            self._watermark[self._node_id] = self._clock
            return Rejection.OWN_CONFLICT
        if e.version[0] < self._incarnation:
            if pair in self._written:
                return Rejection.OWN_ORIGIN
            source = self._adopted_from.get(pair)
            if source is not None and source >= e.version:
                return _Own.STALE
            self._adopted_from[pair] = e.version
            self._store(PairEntry(pair, self._node_id, _restamp(e, self._next_version())))
            return _Own.ADOPTED
        return _Own.STALE  # an echo of a version we issued

    # --- ageing --------------------------------------------------------------

    def expire(self, now: int) -> ExpiryReport:
        """Drop rows idle for longer than the horizon, and refuse from then on
        to take rows that old, so a dropped row gossiped back stays dropped.
        A dead origin's rows go by this rule too, not when it dies."""
        floor = now - self._horizon
        if self._floor is None or floor > self._floor:
            self._floor = floor
        floor = self._floor
        dropped = 0
        changed: set[Pair] = set()
        if self._oldest_ts2 is None or self._oldest_ts2 < floor:
            oldest: int | None = None
            for origin in list(self._by_origin):
                rows = self._by_origin[origin]
                for pair in [p for p, pe in rows.items() if pe.entry.ts2 < floor]:
                    self._remove(pair, origin)
                    dropped += 1
                    changed.add(pair)
                if rows:
                    low = min([pe.entry.ts2 for pe in rows.values()])
                    oldest = low if oldest is None or low < oldest else oldest
            self._oldest_ts2 = oldest
        for origin in [o for o in self._watermark if o not in self._by_origin]:
            if origin != self._node_id:
                del self._watermark[origin]
        return ExpiryReport(dropped=dropped, changed_pairs=frozenset(changed))

    def drop_uncovered(self, origin: str) -> int:
        """Forget the rows of ``origin`` (not ours) above its watermark; how
        many went (``PairTable.drop_uncovered``)."""
        rows = self._by_origin.get(origin)
        if origin == self._node_id or rows is None:
            return 0
        mark = self._watermark.get(origin, ZERO_VERSION)
        pairs = [p for p, pe in rows.items() if pe.entry.version > mark]
        for pair in pairs:
            self._remove(pair, origin)
        return len(pairs)

    # --- storage -------------------------------------------------------------

    def _store(self, pe: PairEntry) -> None:
        pair = pe.pair
        origin = pe.origin
        rows = self._rows.get(pair)
        if rows is None:
            rows = self._rows[pair] = {}
            towards = self._by_destination.get(pair[1])
            if towards is None:
                self._by_destination[pair[1]] = {pair}
            else:
                towards.add(pair)
        old = rows.get(origin)
        if old is not None and pe.entry.ts2 > old.ts2:
            self._known.add(pair)  # it sent again: never a forged one-shot
        rows[origin] = pe.entry
        mine = self._by_origin.get(origin)
        if mine is None:
            mine = self._by_origin[origin] = {}
        mine[pair] = pe
        version = pe.entry.version
        top = self._top.get(origin)
        if top is None or version > top:
            self._top[origin] = version
        ts2 = pe.entry.ts2
        if self._oldest_ts2 is not None and ts2 < self._oldest_ts2:
            self._oldest_ts2 = ts2
        self._views.pop(pair, None)
        self._dest_views.pop(pair[1], None)
        if self._changed is not None:
            self._changed.add(pair)

    def _remove(self, pair: Pair, origin: str) -> None:
        rows = self._rows[pair]
        del rows[origin]
        if not rows:
            del self._rows[pair]
            self._known.discard(pair)
            dests = self._by_destination[pair[1]]
            dests.discard(pair)
            if not dests:
                del self._by_destination[pair[1]]
        mine = self._by_origin[origin]
        del mine[pair]
        if not mine:
            # _top may stay above what is left: it only lets delta_for skip.
            del self._by_origin[origin]
            del self._top[origin]
        if origin == self._node_id:
            self._written.discard(pair)
            self._adopted_from.pop(pair, None)
        self._views.pop(pair, None)
        self._dest_views.pop(pair[1], None)
        if self._changed is not None:
            self._changed.add(pair)


def _check(
    e: OriginEntry, origin: str, future: int, floor: int, rate_pps: int, slack: int, window: int
) -> Rejection | None:
    """The bounds every peer's row must meet before it is looked at further.

    ``window`` bounds ts2 - ts1: the rules shrink a window past T_T4 at its
    next packet, so no row of a correct peer is much longer than the
    horizon; a row with ts1 = 0 made its pair's rate vanish and turned the
    pair rule off for an attacker (issue 12)."""
    version = e.version
    if (
        not origin
        or e.ts1 < 0
        or e.ts1 > e.ts2
        or e.c < 0
        or version[0] < 0
        or version[1] < 0
        or version <= ZERO_VERSION
    ):
        return Rejection.MALFORMED
    if e.ts2 > future:
        return Rejection.FUTURE
    if e.ts2 < floor:
        return Rejection.EXPIRED
    if e.ts2 - e.ts1 > window:
        return Rejection.LONG_WINDOW
    if e.c * NS_PER_S > rate_pps * (e.ts2 - e.ts1 + slack):
        return Rejection.ABSURD_COUNT
    return None


def _restamp(e: OriginEntry, version: Version) -> OriginEntry:
    return OriginEntry(ts1=e.ts1, ts2=e.ts2, c=e.c, version=version)
