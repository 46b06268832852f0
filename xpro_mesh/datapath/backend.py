"""The map backend (data path v2): what the agent reads from and writes to
the data path. ``docs/kernel-agent-contract.md`` is the contract; this is
its Python face.

One interface, :class:`MapBackend`, two implementations with the same
numpy arrays underneath:

* :class:`xpro_mesh.datapath.bpf_maps.BpfMaps` — the live maps of an
  attached program; the two slot arrays are mmapped
  (``BPF_F_MMAPABLE``), so a read or a write of a million slots is a
  memory operation, not a syscall;
* :class:`xpro_mesh.datapath.memory.MemoryMaps` — the same arrays in plain
  memory, plus ``feed(src, dst, now)`` running the kernel's packet rule in
  Python, so the agent, the lab and tests run without a kernel.

One writer per field. Every slot has a kernel half (the local window the
XDP program counts: ``gen``, ``ts1``, ``ts2``, ``c`` ...) and an agent half
(the mesh's view: ``v_gen``, ``v_adj``, ``v_ts1``, ``v_ts2``; for
destinations also ``v_nadj``). The agent only ever writes its half, through
:meth:`MapBackend.write_pair_views` / :meth:`MapBackend.write_dest_views`,
so no packet counted between its read and its write is lost, and it never
has to tell its own count apart from a view it wrote.

The agent's cycle, in this order (why: "Reading consistently" in the
contract)::

    pairs = backend.read_pairs()          # 1. pair slots (seqlock-checked copy)
    dests = backend.read_dests()          # 2. then destination slots
    ...                                   # Algorithm 1, merge, fold (agent)
    backend.write_pair_views(...)         # 3. the pairs' views
    backend.write_dest_views(...)         # 4. the destinations', absolutely
    backend.expire_pairs(idle, gens)      # 5. once per cycle, also when empty
    backend.expire_dests(idle, gens)

Identity. A slot's ``gen`` is even and >= 2 while the slot holds a live
window; it changes whenever the window changes identity (a new pair in the
slot, an idle restart), so ``(slot, gen)`` names one window. A pair the
agent read with ``gen`` g that reads again with g is the same window: its
own-origin count grew by ``c - c_read``. A new gen is "mark" (Algorithm 1
line 5): a new window. Destinations likewise (their gen changes only when
the slot is given to a new destination).

Blocking: the reads copy up to ~128 MB and the writes scatter into it; the
async agent calls them in an executor. One writer per backend (one agent
per interface); the XDP program runs concurrently on every CPU.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from xpro_mesh.datapath.config import XdpConfig
from xpro_mesh.datapath.structs import (
    DEST_SLOT_DTYPE,
    PAIR_KEY_DTYPE,
    PAIR_READ_DTYPE,
    PAIR_SLOT_DTYPE,
    STATS_FIELDS,
    from_addr,
    to_addr,
)

__all__ = [
    "DEST_SLOT_DTYPE",
    "PAIR_KEY_DTYPE",
    "PAIR_READ_DTYPE",
    "PAIR_SLOT_DTYPE",
    "DestRead",
    "MapBackend",
    "OverloadWarning",
    "PairChanges",
    "PairDeltas",
    "PairKey",
    "PairRead",
    "RingStatus",
    "Stats",
    "address",
    "pair_deltas",
]

Slots = npt.NDArray[np.uint32]
"""Slot numbers (``np.uint32``), one per row."""


def address(ip: str | bytes | ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    """The 16-byte form the maps are keyed by (IPv4 v4-mapped)."""
    return to_addr(ip)


@dataclass(frozen=True, slots=True, order=True)
class PairKey:
    """(client i, destination D), each 16 bytes (IPv4 v4-mapped)."""

    src: bytes
    dst: bytes

    def __post_init__(self) -> None:
        if len(self.src) != 16 or len(self.dst) != 16:
            raise ValueError("PairKey addresses are 16 bytes; use PairKey.of() for IP strings")

    @classmethod
    def of(
        cls,
        src: str | bytes | ipaddress.IPv4Address | ipaddress.IPv6Address,
        dst: str | bytes | ipaddress.IPv4Address | ipaddress.IPv6Address,
    ) -> PairKey:
        return cls(to_addr(src), to_addr(dst))

    def __repr__(self) -> str:
        return f"PairKey.of({str(self.src_ip)!r}, {str(self.dst_ip)!r})"

    @property
    def src_ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return from_addr(self.src)

    @property
    def dst_ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return from_addr(self.dst)

    def __str__(self) -> str:
        return f"{self.src_ip} -> {self.dst_ip}"


@dataclass(frozen=True, slots=True)
class PairRead:
    """A consistent copy of every live pair slot's window, taken by
    :meth:`MapBackend.read_pairs`.

    ``slots[i]`` is the slot number of ``rows[i]``, in slot order; ``rows``
    has dtype :data:`PAIR_READ_DTYPE`: ``gen``, ``ts1``, ``ts2``, ``c`` (the
    first 32 bytes of ``struct xpro_slot``: what packets write; copying only
    them is one pass over memory, ~30 ms at 1M slots here). Each row is
    consistent: ``gen`` was even and unchanged across the copy. ``c`` may be
    a few packets behind ``ts2`` (packets land between the field copies); the
    next read sees them, once. Keys and destination slots of slots not seen
    before: :meth:`MapBackend.pair_keys`.
    """

    slots: Slots
    rows: np.ndarray
    high_water: int  # slots [0, high_water) were looked at
    retried: int = 0  # rows copied again because a packet was (re)initialising them


@dataclass(frozen=True, slots=True)
class PairChanges:
    """What :meth:`MapBackend.read_pairs_since` found: every live slot
    (``slots``, in slot order, as :attr:`PairRead.slots`) and the live slots
    whose row it copied again because ``gen`` or ``c`` moved (``changed``,
    in slot order). The caller's columns now hold a consistent read of
    every live slot: copied now for ``changed``, equal in ``gen`` and ``c``
    to what the slot holds now for the others."""

    slots: Slots
    changed: Slots
    high_water: int
    retried: int = 0


@dataclass(frozen=True, slots=True)
class PairDeltas:
    """What changed between two reads, per slot of the later one (in its
    order): ``new_window`` when the slot's window is not the one read
    before (a new pair, or a restart: Algorithm 1's "mark"), and ``delta``,
    the packets this proxy counted since the earlier read (the whole ``c``
    of a new window). Summing ``delta`` over reads counts every packet once,
    provided reads come faster than T_T1 (a restart needs T_T1 of silence,
    so no packet of the old window falls between the last read and it)."""

    slots: Slots
    new_window: npt.NDArray[np.bool_]
    delta: npt.NDArray[np.int64]

    def changed(self) -> npt.NDArray[np.bool_]:
        """The rows with something to sync: a new window or new packets."""
        grew: npt.NDArray[np.bool_] = self.delta != 0
        return self.new_window | grew


def pair_deltas(before: PairRead | None, now: PairRead) -> PairDeltas:
    """Vectorised over the reads (both in slot order): one gather of the
    earlier gens and counts by slot number, one comparison."""
    c_now: npt.NDArray[np.int64] = now.rows["c"]
    if before is None:
        return PairDeltas(now.slots, np.ones(now.slots.size, np.bool_), c_now.copy())
    if np.array_equal(before.slots, now.slots):  # the usual cycle: the same live slots
        gen_before = before.rows["gen"]
        c_before = before.rows["c"]
    else:
        size = max(before.high_water, now.high_water)
        gen_dense = np.zeros(size, np.uint64)
        c_dense = np.zeros(size, np.int64)
        gen_dense[before.slots] = before.rows["gen"]
        c_dense[before.slots] = before.rows["c"]
        gen_before = gen_dense[now.slots]
        c_before = c_dense[now.slots]
    same: npt.NDArray[np.bool_] = gen_before == now.rows["gen"]
    new_window = ~same
    delta: npt.NDArray[np.int64] = c_now - c_before
    np.copyto(delta, c_now, where=new_window)
    return PairDeltas(now.slots, new_window, delta)


@dataclass(frozen=True, slots=True)
class DestRead:
    """A consistent copy of every live destination slot (dtype
    :data:`DEST_SLOT_DTYPE`), as :class:`PairRead`. ``c`` and ``n`` are the
    local aggregate over the pairs linked to the slot; they include pairs
    the agent has expired (the kernel never subtracts them), which is why
    destination views are re-based absolutely: ``v_adj = mesh c - c read``.
    """

    slots: Slots
    rows: np.ndarray
    high_water: int
    retried: int = 0


@dataclass(frozen=True, slots=True)
class RingStatus:
    """Slot usage and the free rings (``xpro-mesh xdp stats``)."""

    pairs_max: int
    pairs_free: int  # on the free ring (kernel can take them)
    pairs_high_water: int  # slots ever handed out: reads scan [0, high_water)
    pairs_pending: int  # expired, back on the ring at the next expire_pairs call
    dests_max: int
    dests_free: int
    dests_high_water: int
    dests_pending: int
    late_packets: int = 0  # counted into a slot after it was expired (see expire_pairs)
    recovered: int = 0  # leaked slots put back on the ring when this backend opened

    @property
    def pairs_in_use(self) -> int:
        return self.pairs_max - self.pairs_free - self.pairs_pending

    @property
    def dests_in_use(self) -> int:
        return self.dests_max - self.dests_free - self.dests_pending


@dataclass(frozen=True, slots=True)
class Stats:
    """The program's counters, summed over CPUs (``xpro_stats`` in xpro.h)."""

    passed: int = 0
    drop_pair: int = 0
    drop_dest: int = 0
    new_pairs: int = 0
    resets: int = 0
    warnings: int = 0
    warnings_suppressed: int = 0
    events_lost: int = 0
    not_ip: int = 0
    malformed: int = 0
    unconfigured: int = 0
    pair_full: int = 0
    dest_full: int = 0
    lock_busy: int = 0
    new_dests: int = 0
    insert_races: int = 0
    pair_views: int = 0
    dest_views: int = 0
    relinks: int = 0
    admitted: int = 0  # young pairs' packets through a destination's admission budget
    drop_admit: int = 0  # young pairs' packets dropped, budget empty (in drop_dest too)
    probation_drops: int = 0  # of which new pairs dropped before taking a slot
    unparsed: int = 0  # carriers not parsed (> 8 VLAN tags, MPLS, PPPoE): config unparsed
    vouched: int = 0  # young vouched pairs' packets passed by the fair share (issue 13)
    held_views: int = 0  # packets of D over T_F2 by its held view alone (issue 13)
    expired_views: int = 0  # packets of D whose over-T_F2 view was past its hold

    @classmethod
    def from_counters(cls, counters: dict[str, int]) -> Stats:
        return cls(**{("passed" if k == "pass" else k): v for k, v in counters.items()})

    def as_dict(self) -> dict[str, int]:
        """Keys as in the C struct (``pass``, ``drop_pair``, ...)."""
        return {name: getattr(self, "passed" if name == "pass" else name) for name in STATS_FIELDS}


@dataclass(frozen=True, slots=True)
class OverloadWarning:
    """Algorithm 2 line 15: a pair went over T_F1 (rate-limited at source)."""

    src: bytes
    dst: bytes
    ts1: int  # the judged window start
    ts2: int  # the packet that tripped the rule
    c: int  # the judged count then
    suppressed: int  # warnings the emitting CPU suppressed so far (budget)

    @property
    def key(self) -> PairKey:
        return PairKey(self.src, self.dst)

    @property
    def rate_pps(self) -> float:
        window = self.ts2 - self.ts1
        return self.c * 1e9 / window if window > 0 else float("inf")


@runtime_checkable
class MapBackend(Protocol):
    """The data path as the agent sees it (v2). All calls may block.

    Array arguments are numpy arrays of equal length (any integer dtype that
    converts exactly; times and gens as ``np.uint64`` or non-negative
    ``np.int64``, ``adj`` as ``np.int64``); a length mismatch or a slot out
    of range raises :class:`ValueError` before anything is written.
    """

    @property
    def pairs_max(self) -> int:
        """Pair slots in the array (fixed when the maps were created)."""
        ...

    @property
    def dests_max(self) -> int: ...

    @property
    def pair_slots(self) -> np.ndarray:
        """The live pair slot array (dtype :data:`PAIR_SLOT_DTYPE`, length
        ``pairs_max``), shared with the kernel: fields change under the
        reader. For diagnostics and vectorised peeks; take rows through
        :meth:`read_pairs` and write only through the ``write_*`` methods.
        Valid until :meth:`close`."""
        ...

    @property
    def dest_slots(self) -> np.ndarray:
        """The live destination slot array (:data:`DEST_SLOT_DTYPE`)."""
        ...

    def pairs_high_water(self) -> int:
        """Slots ``[0, n)`` have ever been handed out; no live pair lies
        beyond (the loader fills the ring in slot order)."""
        ...

    def dests_high_water(self) -> int: ...

    def read_pairs(self) -> PairRead:
        """Every live pair slot's window, consistently (the seqlock re-read is
        done vectorised, a chunk of slots at a time: copy gens, copy the
        words, copy gens again; the rows whose gen moved are copied again, a
        few rounds; a slot a CPU keeps re-initialising for all rounds, or
        odd, is left out and shows next cycle).
        Slots the agent expired are left out. Read pairs before
        destinations (:meth:`read_dests`)."""
        ...

    def read_pairs_since(
        self,
        gen: npt.NDArray[np.uint64],
        ts1: npt.NDArray[np.uint64],
        ts2: npt.NDArray[np.uint64],
        c: npt.NDArray[np.int64],
        every: bool = False,
    ) -> PairChanges:
        """:meth:`read_pairs` into the caller's columns (indexed by slot,
        ``pairs_max`` long, zeros at first: the rows of the previous call,
        updated in place), copying whole only the slots
        whose ``gen`` or ``c`` moved. One pass reads ``gen``, ``c``, ``gen``
        of every slot (what every packet moves: a packet's ``c`` add comes
        before its ``ts2`` store, so a slot whose ``c`` did not move kept its
        window, up to the ``ts2`` of a packet in flight at the last copy,
        which the next packet or full read brings); a quiet slot costs that
        pass alone; when most slots moved, or ``every``, every slot is copied
        (one pass, as :meth:`read_pairs`). Slots the agent expired are left
        out."""
        ...

    def pair_keys(self, slots: npt.ArrayLike) -> np.ndarray:
        """``src``, ``dst``, ``dslot``, ``dgen`` of those slots (dtype
        :data:`PAIR_KEY_DTYPE`). They are written before a slot goes live
        and never change while it lives (a restart keeps them), so a gather
        for the slots whose gen is new since the last read needs no seqlock.
        ``dslot`` is ``XPRO_NO_SLOT`` when no destination slot was free."""
        ...

    def read_dests(self) -> DestRead:
        """Every live destination slot, consistently (as :meth:`read_pairs`).
        Call it after :meth:`read_pairs`: a packet counted between the two
        reads is then missing from the destination view for one cycle,
        never counted twice."""
        ...

    def write_pair_views(
        self,
        slots: npt.ArrayLike,
        gen: npt.ArrayLike,
        adj: npt.ArrayLike,
        ts1: npt.ArrayLike,
        ts2: npt.ArrayLike,
    ) -> None:
        """Write the mesh's view of the windows read as ``(slots, gen)``.

        ``adj = mesh count - c read`` (what the other origins add, after
        the Algorithm 1 window rules), ``ts1``/``ts2`` the mesh window. The
        kernel then judges the pair with count ``c + adj`` (every packet
        since the read included), window ``ts1 .. max(ts2 local, ts2)``,
        for as long as the slot's gen is ``gen``; a restart or a new pair
        in the slot makes the view invalid at once (judged locally until
        the next write). Write order, one vectorised store each over the
        batch: ``v_gen = 0``, then ``v_adj``, ``v_ts1``, ``v_ts2``, then
        ``v_gen = gen``; a stop in between leaves views invalid (judged
        locally), never wrong. Slots must be ones :meth:`read_pairs`
        returned (their ``gen`` as read)."""
        ...

    def clear_pair_views(self, slots: npt.ArrayLike) -> None:
        """``v_gen = 0``: judge those pairs on the local window alone."""
        ...

    def write_dest_views(
        self,
        dslots: npt.ArrayLike,
        gen: npt.ArrayLike,
        adj: npt.ArrayLike,
        nadj: npt.ArrayLike,
        ts1: npt.ArrayLike,
        ts2: npt.ArrayLike,
        count: npt.ArrayLike | None = None,
    ) -> None:
        """Write destination views, absolutely: ``adj = mesh sum c - c read``,
        ``nadj = mesh n(D) - n read`` (from :meth:`read_dests`), ``ts1`` /
        ``ts2`` the mesh's min start and max end. Judged: count ``c + adj``,
        clients ``n + nadj``, window ``ts1 .. max(ts2 local, ts2)`` while
        the slot's gen is ``gen``. Same write order as pair views. Because
        each write replaces the last (no deltas are added), an eviction, an
        expiry or a missed cycle cannot leave a drift. ``count``: the mesh's
        count (``v_c``, window ``ts1 .. ts2``), the held view (issue 13):
        while the live figure is under T_F2 but that rate was over, D stays
        over for ``view_hold`` past ``ts2``, and up to ``view_hold_max``
        while the agent's heartbeat is stale; None writes 0 (no hold)."""
        ...

    def write_heartbeat(self, now: int) -> None:
        """The agent's heartbeat, cluster ns (``ring_ctl[0].agent_at``)."""
        ...

    def clear_dest_views(self, dslots: npt.ArrayLike) -> None: ...

    def expire_pairs(self, slots: npt.ArrayLike, gens: npt.ArrayLike) -> int:
        """Retire idle pairs; call once per cycle, also with nothing to expire.

        First the slots expired by the previous call go back on the free
        ring (a full cycle has passed: no XDP program still holds them).
        Then, of ``slots``, those whose gen is still ``gens`` (no packet
        restarted them since the agent read them) have their keys deleted
        from ``pair_index`` in one batch, ``v_gen`` cleared, and are queued
        for the next call. Returns how many were expired. A packet of the
        same pair after the delete takes a new slot (a new window). A packet
        that looked the key up just before the delete and counts into the
        old slot is counted in ``RingStatus.late_packets`` when the slot is
        recycled (a race of microseconds on a pair idle for a whole
        cycle)."""
        ...

    def expire_dests(self, dslots: npt.ArrayLike, gens: npt.ArrayLike) -> int:
        """As :meth:`expire_pairs` for destinations (``dest_index``). A
        destination is kept when a live pair slot still names it (expire
        its pairs first, in this or an earlier cycle)."""
        ...

    def ring_status(self) -> RingStatus: ...

    def get_config(self) -> XdpConfig: ...

    def set_config(self, config: XdpConfig) -> None:
        """Live: the next packet on every CPU uses it."""
        ...

    def sync_clock(self) -> int:
        """Rewrite the kernel-to-cluster clock offset; returns it (ns). Call
        it about once a second: NTP slews the wall clock against the kernel's
        (see :mod:`xpro_mesh.datapath.clock`)."""
        ...

    def read_stats(self) -> Stats: ...

    def poll_events(self, timeout_ms: int = 0) -> list[OverloadWarning]:
        """Overload warnings since the last poll (waits up to ``timeout_ms``)."""
        ...

    def close(self) -> None:
        """Unmap the arrays and close the maps. Slots expired but not yet
        recycled stay off the ring; the next agent's backend, opened with
        ``BpfMaps.open(pin_dir, recover=True)``, finds them (not in the
        index, not free) and recycles them."""
        ...
