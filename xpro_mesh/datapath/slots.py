"""The agent's side of the slot arrays, shared by both backends.

:class:`SlotArrays` implements every :class:`~xpro_mesh.datapath.backend.MapBackend`
call that is plain memory work on the slot arrays and the free rings —
consistent reads (the seqlock re-read, vectorised), view writes in the
contract's order, expiry and recycling, slot recovery — over numpy arrays
that either mirror the kernel's maps through ``mmap``
(:class:`~xpro_mesh.datapath.bpf_maps.BpfMaps`) or live in plain memory
(:class:`~xpro_mesh.datapath.memory.MemoryMaps`). A subclass supplies the
two index operations that are not memory: deleting keys from
``pair_index``/``dest_index`` and listing the slots they hold.

Stores are plain numpy stores, one vectorised pass per field, in program
order; on x86-64 (TSO) the kernel sees them in that order. The kernel reads
a view as ``v_gen``, fields, ``v_gen`` again, so a view is used only when
both reads saw the gen being written last.
"""

from __future__ import annotations

import ctypes as ct
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from xpro_mesh.datapath.backend import DestRead, PairChanges, PairRead, RingStatus
from xpro_mesh.datapath.structs import (
    DEST_SLOT_DTYPE,
    PAIR_KEY_DTYPE,
    PAIR_READ_DTYPE,
    PAIR_SLOT_DTYPE,
    RING_DTYPE,
    XPRO_RING_DESTS,
    XPRO_RING_PAIRS,
    XproDslot,
    XproSlot,
)

__all__ = ["SlotArrays", "live_gen32", "ring_size_for"]

READ_ROUNDS = 4
READ_CHUNK = 2048  # slots per step of a read: 256 KiB, stays in L2
SINCE_CHUNK = 8192  # slots per step of read_pairs_since's gen and c pass
SINCE_SHARE = 4  # over 1/4 of the slots moved: read_pairs_since copies every slot
WRITE_CHUNK = 4096  # slots per step of a view write
_KEY_DTYPE = np.dtype([("src", "V16"), ("dst", "V16")])


def ring_size_for(slots: int) -> int:
    """The free ring's size for ``slots`` slots: the power of two >= it."""
    return 1 << max(0, (slots - 1).bit_length())


def live_gen32(gen: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint32]:
    """The low 32 bits of the even gen a slot has (or will have) in this
    life, as pairs record their destination's (``dgen``)."""
    return ((gen + np.uint64(1)) & ~np.uint64(1)).astype(np.uint32)


@dataclass(slots=True)
class _Pending:
    slots: npt.NDArray[np.uint32]
    gens: npt.NDArray[np.uint64]
    counts: npt.NDArray[np.int64]


def _u32(values: npt.ArrayLike, limit: int, what: str) -> npt.NDArray[np.uint32]:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{what}: a one-dimensional array of slot numbers")
    if arr.size and (arr.min() < 0 or arr.max() >= limit):
        raise ValueError(f"{what}: slot numbers must be in 0..{limit - 1}")
    return arr.astype(np.uint32, copy=False)


def _col(values: npt.ArrayLike, n: int, dtype: type, what: str) -> npt.NDArray[np.generic]:
    """``values`` as a column of ``dtype`` (np.int64 or np.uint64), refused
    (ValueError, nothing written) when a value does not fit: a silent wrap
    would turn an absurd view into a wrong one."""
    arr = np.asarray(values)
    if arr.shape != (n,):
        got = arr.shape[0] if arr.ndim else "a scalar"
        raise ValueError(f"{what}: {got} values for {n} slots")
    if arr.size == 0:
        return np.zeros(0, dtype)
    if not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == object):
        raise ValueError(f"{what}: integers expected, got {arr.dtype}")
    info = np.iinfo(dtype)
    lo, hi = arr.min(), arr.max()
    if int(lo) < int(info.min) or int(hi) > int(info.max):
        raise ValueError(f"{what}: values must be in {info.min}..{info.max}")
    return arr.astype(dtype, copy=False)


def _words(arr: np.ndarray) -> npt.NDArray[np.uint64]:
    """A slot array as (slots, 16) 64-bit words (both slot structs are 128 bytes)."""
    return arr.view(np.uint64).reshape(len(arr), arr.dtype.itemsize // 8)


def _consistent(
    words: npt.NDArray[np.uint64], hwm: int, ncols: int
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.bool_], int]:
    """Copy the first ``ncols`` words of slots ``[0, hwm)`` with the seqlock
    check (word 0 is ``gen``): per chunk, the gens, then the words, then the
    gens again, so memory is crossed once and the second gen read hits the
    cache. x86-64 does not reorder loads with loads: a row whose gens agree
    and are even was not being written while its words were copied.
    Returns (words copied, consistent mask, rows re-read)."""
    out = np.empty((hwm, ncols), np.uint64)
    g1 = np.empty(hwm, np.uint64)
    g2 = np.empty(hwm, np.uint64)
    for lo in range(0, hwm, READ_CHUNK):
        hi = min(hwm, lo + READ_CHUNK)
        g1[lo:hi] = words[lo:hi, 0]
        out[lo:hi] = words[lo:hi, :ncols]
        g2[lo:hi] = words[lo:hi, 0]
    ok = (g1 == g2) & (g1 & np.uint64(1) == 0)
    moved = np.flatnonzero(g1 != g2)
    retried = 0
    for _ in range(READ_ROUNDS):
        if moved.size == 0:
            break
        retried += int(moved.size)
        a = words[moved, 0]
        again = words[moved, :ncols]
        b = words[moved, 0]
        good = (a == b) & (a & np.uint64(1) == 0)
        out[moved[good]] = again[good]
        ok[moved[good]] = True
        moved = moved[a != b]
    return out, ok, retried


def _live(
    words: npt.NDArray[np.uint64], ok: npt.NDArray[np.bool_]
) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.uint64]]:
    """The slot numbers and rows ``ok`` keeps (no copy when it keeps all)."""
    if ok.all():
        return np.arange(len(ok), dtype=np.uint32), words
    return np.flatnonzero(ok).astype(np.uint32), words[ok]


# The word of v_gen in each slot struct; the view's words follow it.
_PAIR_V_GEN = ct.sizeof(XproSlot) // 8 - 4
_DEST_V_GEN = ct.sizeof(XproDslot) // 8 - 6


def _write_views(
    words: npt.NDArray[np.uint64],
    v_gen: int,
    slots: npt.NDArray[np.uint32],
    gen: npt.NDArray[np.generic],
    fields: list[npt.NDArray[np.generic]],
) -> None:
    """The contract's write order for each slot: ``v_gen = 0``, the view's
    words (those after ``v_gen``, in struct order), ``v_gen = gen``; a chunk
    of slots at a time, so each slot's line is written while it is cached."""
    n = slots.size
    block = np.empty((n, len(fields)), np.uint64)
    for i, f in enumerate(fields):
        block[:, i] = f.view(np.uint64) if f.dtype.itemsize == 8 else f.astype(np.uint64)
    gen64 = gen.view(np.uint64)
    idx = slots.astype(np.intp)
    end = v_gen + 1 + len(fields)
    for lo in range(0, n, WRITE_CHUNK):
        hi = min(n, lo + WRITE_CHUNK)
        s: npt.NDArray[np.intp] | slice = idx[lo:hi]
        first, last = int(idx[lo]), int(idx[hi - 1])
        if last - first == hi - lo - 1 and bool(np.all(np.diff(idx[lo:hi]) == 1)):
            s = slice(first, last + 1)  # a run of slots: strided stores, no gather
        words[s, v_gen] = 0
        words[s, v_gen + 1 : end] = block[lo:hi]
        words[s, v_gen] = gen64[lo:hi]


class SlotArrays:
    """The memory side of the v2 backend (see the module docstring)."""

    def __init__(
        self,
        pair_slots: np.ndarray,
        dest_slots: np.ndarray,
        pair_ring: npt.NDArray[np.uint64],
        dest_ring: npt.NDArray[np.uint64],
        ring_ctl: np.ndarray,
    ) -> None:
        if pair_slots.dtype != PAIR_SLOT_DTYPE or dest_slots.dtype != DEST_SLOT_DTYPE:
            raise ValueError("slot arrays must have the slot dtypes of structs.py")
        if ring_ctl.dtype != RING_DTYPE or ring_ctl.shape != (2,):
            raise ValueError("ring_ctl must be two xpro_ring records")
        self._pairs = pair_slots
        self._dests = dest_slots
        self._pair_words = _words(pair_slots)
        self._dest_words = _words(dest_slots)
        self._rings = (pair_ring, dest_ring)
        self._ctl = ring_ctl
        self._dead_pair_gen = np.zeros(len(pair_slots), np.uint64)
        self._dead_dest_gen = np.zeros(len(dest_slots), np.uint64)
        self._pending_pairs: _Pending | None = None
        self._pending_dests: _Pending | None = None
        self._late_packets = 0
        self._recovered = 0

    # -- what subclasses provide ------------------------------------------

    def _delete_pair_keys(self, keys: bytes, count: int) -> int:
        """Delete ``count`` 32-byte pair keys from pair_index; how many existed."""
        raise NotImplementedError

    def _delete_dest_keys(self, keys: bytes, count: int) -> int:
        raise NotImplementedError

    def _indexed_slots(self) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.uint32]]:
        """The slot numbers pair_index and dest_index hold now."""
        raise NotImplementedError

    # -- the arrays ---------------------------------------------------------

    @property
    def pairs_max(self) -> int:
        return len(self._pairs)

    @property
    def dests_max(self) -> int:
        return len(self._dests)

    @property
    def pair_slots(self) -> np.ndarray:
        return self._pairs

    @property
    def dest_slots(self) -> np.ndarray:
        return self._dests

    def pairs_high_water(self) -> int:
        return min(int(self._ctl[XPRO_RING_PAIRS]["head"]), len(self._pairs))

    def dests_high_water(self) -> int:
        return min(int(self._ctl[XPRO_RING_DESTS]["head"]), len(self._dests))

    # -- reads --------------------------------------------------------------

    def read_pairs(self) -> PairRead:
        hwm = self.pairs_high_water()
        words, ok, retried = _consistent(self._pair_words, hwm, PAIR_READ_DTYPE.itemsize // 8)
        gen = words[:, 0]
        ok &= (gen != 0) & (gen != self._dead_pair_gen[:hwm])
        slots, rows = _live(words, ok)
        return PairRead(slots, rows.view(PAIR_READ_DTYPE).reshape(-1), hwm, retried)

    def read_pairs_since(
        self,
        gen: npt.NDArray[np.uint64],
        ts1: npt.NDArray[np.uint64],
        ts2: npt.NDArray[np.uint64],
        c: npt.NDArray[np.int64],
        every: bool = False,
    ) -> PairChanges:
        # One pass over the slots copies only gen and c (the words every
        # packet moves) with the seqlock check, in chunks that stay in L2;
        # the rows whose gen or c differ from the caller's columns are copied
        # whole (seqlock again) into them.
        hwm = self.pairs_high_water()
        if any(len(col) < hwm for col in (gen, ts1, ts2, c)):
            raise ValueError("read_pairs_since: the columns must hold every slot")
        words = self._pair_words
        if every:
            return self._copy_every(gen, ts1, ts2, c, hwm)
        g1 = np.empty(hwm, np.uint64)
        now_c = np.empty(hwm, np.uint64)
        g2 = np.empty(hwm, np.uint64)
        held_gen, held_c = gen[:hwm], c[:hwm].view(np.uint64)
        for lo in range(0, hwm, SINCE_CHUNK):
            hi = min(hwm, lo + SINCE_CHUNK)
            g1[lo:hi] = words[lo:hi, 0]
            now_c[lo:hi] = words[lo:hi, 3]
            g2[lo:hi] = words[lo:hi, 0]
            if lo == 0 and hwm > 2 * SINCE_CHUNK:
                # The first chunk tells an attack (most slots moved) apart:
                # then copy every slot at once.
                moved = (g1[:hi] != held_gen[:hi]) | (now_c[:hi] != held_c[:hi])
                if np.count_nonzero(moved) * SINCE_SHARE > hi:
                    return self._copy_every(gen, ts1, ts2, c, hwm)
        # Equal to the caller's (even) gen, unchanged across the copy: quiet.
        ok = np.equal(g1, g2)
        same = np.equal(g1, held_gen)
        ok &= same
        np.equal(now_c, held_c, out=same)
        ok &= same
        moved = np.flatnonzero(~ok)
        if moved.size * SINCE_SHARE > hwm:
            # Most slots moved (an attack): one chunked copy of every slot
            # costs less than gathering them.
            return self._copy_every(gen, ts1, ts2, c, hwm)
        retried = 0
        copied: list[npt.NDArray[np.intp]] = []
        for rounds in range(READ_ROUNDS + 1):
            if moved.size == 0:
                break
            if rounds:
                retried += int(moved.size)
            a = words[moved, 0]
            again = words[moved, :4]
            b = words[moved, 0]
            good = (a == b) & (a & np.uint64(1) == 0)
            done = moved[good]
            rows = again[good]
            gen[done] = rows[:, 0]
            ts1[done] = rows[:, 1]
            ts2[done] = rows[:, 2]
            c[done] = rows[:, 3].view(np.int64)
            ok[done] = True
            copied.append(done)
            moved = moved[~good & (a != b)]  # odd and unchanged: being set up, skip it
        np.not_equal(held_gen, self._dead_pair_gen[:hwm], out=same)
        ok &= same
        np.not_equal(held_gen, 0, out=same)
        ok &= same
        changed = np.concatenate(copied) if copied else np.zeros(0, np.intp)
        changed = changed[ok[changed]]
        if len(copied) > 1:
            changed = np.sort(changed)
        return PairChanges(self._live_slots(ok), changed.astype(np.uint32), hwm, retried)

    def _live_slots(self, ok: npt.NDArray[np.bool_]) -> npt.NDArray[np.uint32]:
        if ok.all():
            return np.arange(len(ok), dtype=np.uint32)
        return np.flatnonzero(ok).astype(np.uint32)

    def _copy_every(
        self,
        gen: npt.NDArray[np.uint64],
        ts1: npt.NDArray[np.uint64],
        ts2: npt.NDArray[np.uint64],
        c: npt.NDArray[np.int64],
        hwm: int,
    ) -> PairChanges:
        """read_pairs_since copying every slot (read_pairs into the columns)."""
        out, ok, retried = _consistent(self._pair_words, hwm, 4)
        every = bool(ok.all())
        keep: slice | npt.NDArray[np.intp] = slice(0, hwm) if every else np.flatnonzero(ok)
        for col, k in ((gen, 0), (ts1, 1), (ts2, 2), (c, 3)):
            col[keep] = out[keep, k].view(col.dtype)
        g = gen[:hwm]
        ok &= (g != 0) & (g != self._dead_pair_gen[:hwm])
        slots = self._live_slots(ok)
        return PairChanges(slots, slots, hwm, retried)

    def pair_keys(self, slots: npt.ArrayLike) -> np.ndarray:
        s = _u32(slots, len(self._pairs), "slots")
        out = np.empty(s.size, PAIR_KEY_DTYPE)
        for name in PAIR_KEY_DTYPE.names or ():
            out[name] = self._pairs[name][s]
        return out

    def read_dests(self) -> DestRead:
        hwm = self.dests_high_water()
        words, ok, retried = _consistent(self._dest_words, hwm, DEST_SLOT_DTYPE.itemsize // 8)
        gen = words[:, 0]
        ok &= (gen != 0) & (gen != self._dead_dest_gen[:hwm])
        slots, rows = _live(words, ok)
        return DestRead(slots, rows.view(DEST_SLOT_DTYPE).reshape(-1), hwm, retried)

    # -- view writes ----------------------------------------------------------

    def write_pair_views(
        self,
        slots: npt.ArrayLike,
        gen: npt.ArrayLike,
        adj: npt.ArrayLike,
        ts1: npt.ArrayLike,
        ts2: npt.ArrayLike,
    ) -> None:
        s = _u32(slots, len(self._pairs), "slots")
        n = s.size
        g = _col(gen, n, np.uint64, "gen")
        a = _col(adj, n, np.int64, "adj")
        t1 = _col(ts1, n, np.uint64, "ts1")
        t2 = _col(ts2, n, np.uint64, "ts2")
        _write_views(self._pair_words, _PAIR_V_GEN, s, g, [a, t1, t2])

    def clear_pair_views(self, slots: npt.ArrayLike) -> None:
        self._pairs["v_gen"][_u32(slots, len(self._pairs), "slots")] = 0

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
        s = _u32(dslots, len(self._dests), "dslots")
        n = s.size
        g = _col(gen, n, np.uint64, "gen")
        a = _col(adj, n, np.int64, "adj")
        na = _col(nadj, n, np.int64, "nadj")
        t1 = _col(ts1, n, np.uint64, "ts1")
        t2 = _col(ts2, n, np.uint64, "ts2")
        vc = np.zeros(n, np.int64) if count is None else _col(count, n, np.int64, "count")
        _write_views(self._dest_words, _DEST_V_GEN, s, g, [a, na, t1, t2, vc])

    def write_heartbeat(self, now: int) -> None:
        """The agent's heartbeat (ring_ctl[0].agent_at, cluster ns): while
        it is recent, views not renewed expire view_hold after their last
        renewal; while it is stale they are held up to view_hold_max."""
        self._ctl[XPRO_RING_PAIRS : XPRO_RING_PAIRS + 1]["agent_at"] = np.uint64(now)

    def clear_dest_views(self, dslots: npt.ArrayLike) -> None:
        self._dests["v_gen"][_u32(dslots, len(self._dests), "dslots")] = 0

    # -- expiry and the free rings ---------------------------------------------

    def _push(self, which: int, slots: npt.NDArray[np.uint32]) -> None:
        """Append slots to a free ring: entries first, then tail."""
        if slots.size == 0:
            return
        ring = self._rings[which]
        ctl = self._ctl[which : which + 1]
        tail = int(ctl["tail"][0])
        head = int(ctl["head"][0])
        size = len(ring)
        if tail - head + slots.size > size:
            raise RuntimeError("free ring overflow: a slot was freed twice")
        pos = (np.arange(tail, tail + slots.size, dtype=np.uint64) & np.uint64(size - 1)).astype(
            np.intp
        )
        ring[pos] = slots.astype(np.uint64)
        ctl["tail"] = tail + slots.size

    def _recycle(self, which: int) -> None:
        pending = self._pending_pairs if which == XPRO_RING_PAIRS else self._pending_dests
        if pending is None:
            return
        arr = self._pairs if which == XPRO_RING_PAIRS else self._dests
        gen = arr["gen"][pending.slots]
        c = arr["c"][pending.slots].astype(np.int64)
        same = gen == pending.gens
        if which == XPRO_RING_PAIRS:
            # Packets that looked the key up before the delete and counted here.
            late = np.where(same, c - pending.counts, c)
            self._late_packets += int(late.clip(min=0).sum())
        self._push(which, pending.slots)
        if which == XPRO_RING_PAIRS:
            self._pending_pairs = None
        else:
            self._pending_dests = None

    def _expire(self, which: int, slots: npt.ArrayLike, gens: npt.ArrayLike) -> int:
        arr = self._pairs if which == XPRO_RING_PAIRS else self._dests
        dead = self._dead_pair_gen if which == XPRO_RING_PAIRS else self._dead_dest_gen
        self._recycle(which)
        s = _u32(slots, len(arr), "slots")
        g: npt.NDArray[np.uint64] = _col(gens, s.size, np.uint64, "gens").view(np.uint64)
        s, first = np.unique(s, return_index=True)
        g = g[first]
        keep = (arr["gen"][s] == g) & (g & np.uint64(1) == 0) & (g != 0) & (dead[s] != g)
        if which == XPRO_RING_DESTS and keep.any():
            keep &= ~self._named_by_live_pairs(s, g)
        s, g = s[keep], g[keep]
        if s.size == 0:
            return 0
        rows = arr[s]
        if which == XPRO_RING_PAIRS:
            keys = np.empty(s.size, _KEY_DTYPE)
            keys["src"] = rows["src"]
            keys["dst"] = rows["dst"]
            self._delete_pair_keys(keys.tobytes(), s.size)
        else:
            self._delete_dest_keys(np.ascontiguousarray(rows["dst"]).tobytes(), s.size)
        arr["v_gen"][s] = 0
        dead[s] = g
        pending = _Pending(s, g, rows["c"].astype(np.int64))
        if which == XPRO_RING_PAIRS:
            self._pending_pairs = pending
        else:
            self._pending_dests = pending
        return int(s.size)

    def _named_by_live_pairs(
        self, dslots: npt.NDArray[np.uint32], gens: npt.NDArray[np.uint64]
    ) -> npt.NDArray[np.bool_]:
        hwm = self.pairs_high_water()
        pairs = self._pairs[:hwm]
        gen = pairs["gen"]
        live = (gen & np.uint64(1) == 0) & (gen != 0) & (gen != self._dead_pair_gen[:hwm])
        named = pairs["dslot"][live].astype(np.uint64) << np.uint64(32) | pairs["dgen"][live]
        wanted = dslots.astype(np.uint64) << np.uint64(32) | live_gen32(gens)
        return np.isin(wanted, named)

    def expire_pairs(self, slots: npt.ArrayLike, gens: npt.ArrayLike) -> int:
        return self._expire(XPRO_RING_PAIRS, slots, gens)

    def expire_dests(self, dslots: npt.ArrayLike, gens: npt.ArrayLike) -> int:
        return self._expire(XPRO_RING_DESTS, dslots, gens)

    def _free(self, which: int) -> int:
        ctl = self._ctl[which]
        return int(ctl["tail"]) - int(ctl["head"])

    def ring_status(self) -> RingStatus:
        pp = self._pending_pairs
        pd = self._pending_dests
        return RingStatus(
            pairs_max=len(self._pairs),
            pairs_free=self._free(XPRO_RING_PAIRS),
            pairs_high_water=self.pairs_high_water(),
            pairs_pending=0 if pp is None else int(pp.slots.size),
            dests_max=len(self._dests),
            dests_free=self._free(XPRO_RING_DESTS),
            dests_high_water=self.dests_high_water(),
            dests_pending=0 if pd is None else int(pd.slots.size),
            late_packets=self._late_packets,
            recovered=self._recovered,
        )

    # -- setup ----------------------------------------------------------------

    def ring_ctl_size(self) -> int:
        """The pair ring's size as recorded; 0 until the rings were filled."""
        return int(self._ctl[XPRO_RING_PAIRS]["size"])

    def fill_rings(self) -> None:
        """A fresh data path: every slot on its ring, in slot order (so that
        ``min(head, max)`` is the high-water mark)."""
        for which, arr in ((XPRO_RING_PAIRS, self._pairs), (XPRO_RING_DESTS, self._dests)):
            ring = self._rings[which]
            ctl = self._ctl[which : which + 1]
            ring[: len(arr)] = np.arange(len(arr), dtype=np.uint64)
            ctl["size"] = len(ring)
            ctl["head"] = 0
            ctl["tail"] = len(arr)

    def recover(self) -> int:
        """Find the slots no one holds (expired by an agent that stopped
        before recycling them) and put them back on the rings; mark every
        slot not in an index as dead for reads. Safe while packets flow:
        the ring head is read before the index, and a slot being set up (or
        a CPU's spare) has an odd gen."""
        heads = [int(self._ctl[w]["head"]) for w in (XPRO_RING_PAIRS, XPRO_RING_DESTS)]
        tails = [int(self._ctl[w]["tail"]) for w in (XPRO_RING_PAIRS, XPRO_RING_DESTS)]
        before = [
            self._pairs["gen"][: min(heads[0], len(self._pairs))].copy(),
            self._dests["gen"][: min(heads[1], len(self._dests))].copy(),
        ]
        indexed = self._indexed_slots()
        recovered = 0
        for which, arr, dead in (
            (XPRO_RING_PAIRS, self._pairs, self._dead_pair_gen),
            (XPRO_RING_DESTS, self._dests, self._dead_dest_gen),
        ):
            hwm = min(heads[which], len(arr))
            ring = self._rings[which]
            pos = np.arange(heads[which], tails[which], dtype=np.uint64) & np.uint64(len(ring) - 1)
            free = ring[pos.astype(np.intp)].astype(np.intp)
            held = np.zeros(hwm, bool)
            held[indexed[which][indexed[which] < hwm]] = True
            gen = before[which]
            # A slot set up meanwhile was odd before the index read, or changed.
            unheld = ~held & (gen & np.uint64(1) == 0) & (gen != 0) & (arr["gen"][:hwm] == gen)
            dead[:hwm][unheld] = gen[unheld]
            is_free = np.zeros(hwm, bool)
            is_free[free[free < hwm]] = True
            pending = self._pending_pairs if which == XPRO_RING_PAIRS else self._pending_dests
            if pending is not None:  # this backend's own, recycled at its next expire call
                is_free[pending.slots[pending.slots < hwm]] = True
            leaked = np.flatnonzero(unheld & ~is_free).astype(np.uint32)
            self._push(which, leaked)
            recovered += int(leaked.size)
        self._recovered += recovered
        return recovered
