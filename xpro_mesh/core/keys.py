"""Dense integer ids for fixed-width keys, looked up and created in bulk.

The columnar table (:mod:`xpro_mesh.core.table`) keeps every pair's fields in
arrays indexed by a *pair id*; this module maps keys to those ids for whole
arrays of keys at once. A key is ``words`` unsigned 64-bit words: a pair
(two 16-byte addresses) is 4 words, a destination 2. IPv4-mapped addresses
need no special case: every key is hashed and compared as its words.

Layout: an open-addressing hash table with linear probing (``_slots``: slot ->
id, ``EMPTY`` or ``TOMBSTONE``), its size a power of two at most a quarter
full (linear probing then stays near one probe per key),
the home slot the top bits of a multiplicative hash; the keys themselves live
once, per id, in ``_keys`` (id -> words), where the table's rows read them.
Every operation runs *probe rounds*: each round handles all keys still
unresolved with a few vectorised gathers and compares, so a million keys cost
a few dozen numpy calls, not a million Python steps.

Invariants:

* a live id's key is in exactly one slot, reachable from its home slot
  without crossing an ``EMPTY`` slot (tombstones keep chains intact);
* ids are dense: a removed id goes on a free stack and is handed out again
  (last freed, first reused) before any fresh id;
* :meth:`KeyIndex.get_or_create` is idempotent within one call: equal keys
  in one call get one id (two keys claiming one empty slot in a round: one
  wins, the other sees the winner next round and matches it if equal).

Pure: no I/O, no clock.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = [
    "EMPTY",
    "TOMBSTONE",
    "V4_MAPPED",
    "KeyIndex",
    "address_words",
    "pair_words",
    "source_prefix",
]

V4_MAPPED = bytes(10) + b"\xff\xff"  # the first 12 bytes of an IPv4 address in 16


def source_prefix(addr: bytes, prefix4: int, prefix6: int) -> bytes:
    """The client a source address counts as: its leading ``prefix4`` bits
    for an IPv4 (v4-mapped) address, ``prefix6`` for IPv6, the rest zero;
    0 keeps the whole address. One pair per client prefix, so a host that
    rotates addresses inside its IPv6 /64 is one client (as the kernel's
    ``xpro_mask_src``)."""
    if len(addr) != 16:
        raise ValueError(f"an address is 16 bytes, got {len(addr)}")
    v4 = addr[:12] == V4_MAPPED
    bits = (96 + prefix4 if prefix4 else 128) if v4 else (prefix6 or 128)
    if bits >= 128:
        return addr
    value = int.from_bytes(addr, "big") >> (128 - bits) << (128 - bits)
    return value.to_bytes(16, "big")


Ints = npt.NDArray[np.int64]
Words = npt.NDArray[np.uint64]
Bools = npt.NDArray[np.bool_]

EMPTY = -1
TOMBSTONE = -2

_MIX = np.array(
    [0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93],
    dtype=np.uint64,
)
_FINAL = np.uint64(0xFF51AFD7ED558CCD)
_PAIR_RECORD = np.dtype([("src", "V16"), ("dst", "V16")])
RUN_MIN = 64  # keys in a lookup before it tries them as a run of ids
# Per key width: the integer dtype as wide as a row of bool flags, and its
# value when every flag is True.
_ROW_EQUAL = {1: (np.uint8, 0x01), 2: (np.uint16, 0x0101), 4: (np.uint32, 0x01010101)}


def address_words(addresses: npt.NDArray[np.bytes_]) -> Words:
    """16-byte addresses (``S16``) as an ``(n, 2)`` array of their two words."""
    a = np.ascontiguousarray(addresses, dtype="S16")
    return a.view(np.uint64).reshape(-1, 2)


def pair_words(src: npt.NDArray[np.bytes_], dst: npt.NDArray[np.bytes_]) -> Words:
    """(client, destination) pairs as an ``(n, 4)`` array: client words, then
    destination words."""
    # Two 16-byte fields of one record per pair: a copy of 16 bytes per
    # address (column stores of words cost twice as much at 1M pairs).
    out = np.empty(len(src), dtype=_PAIR_RECORD)
    out["src"] = np.ascontiguousarray(src, dtype="S16").view("V16")
    out["dst"] = np.ascontiguousarray(dst, dtype="S16").view("V16")
    return out.view(np.uint64).reshape(-1, 4)


class KeyIndex:
    """Keys of ``words`` u64 words to dense ids ``0 .. capacity-1``."""

    def __init__(self, words: int, capacity: int = 1024) -> None:
        if not 1 <= words <= len(_MIX):
            raise ValueError(f"words must be 1..{len(_MIX)}, got {words}")
        self._words = words
        self._keys: Words = np.zeros((max(capacity, 16), words), dtype=np.uint64)
        self._slot_of: Ints = np.full(len(self._keys), EMPTY, dtype=np.int64)
        self._live: Bools = np.zeros(len(self._keys), dtype=np.bool_)
        self._fresh = 0  # ids below this have been handed out at least once
        self._free: list[Ints] = []  # stacks of freed ids, reused first
        self._free_count = 0
        self._count = 0
        self._tombstones = 0
        self._bits = 0
        self._slots: Ints = np.zeros(0, dtype=np.int64)
        self._claim: Ints = np.zeros(0, dtype=np.int64)
        self._resize_slots(4 * max(capacity, 16))

    # --- inspection ------------------------------------------------------------

    def __len__(self) -> int:
        return self._count

    @property
    def capacity(self) -> int:
        """Ids are below this; the caller's per-id columns must be this long."""
        return len(self._keys)

    @property
    def live(self) -> Bools:
        """Read-only mask over ids: True where the id holds a key."""
        view = self._live.view()
        view.flags.writeable = False
        return view

    def keys_of(self, ids: Ints) -> Words:
        """The keys of live ``ids`` (``(n, words)``)."""
        return self._keys[ids]

    def nbytes(self) -> int:
        arrays = (self._keys, self._slot_of, self._live, self._slots, self._claim)
        return sum(a.nbytes for a in arrays)

    # --- bulk operations -------------------------------------------------------

    def lookup(self, keys: Words) -> Ints:
        """The id of each key, ``EMPTY`` (-1) for keys not held.

        Keys whose ids are a run (held under ids ``a, a+1, ...`` in order:
        pairs created together, as a botnet's are, and sent back in that
        order) are checked against the run in place of probing: the first
        and last key are looked up, and if they span exactly the batch, each
        row whose id in the run holds that very key (ids are unique per key)
        has it; only the others are probed."""
        keys = self._check(keys)
        n = len(keys)
        if n >= RUN_MIN:
            a, b = (int(x) for x in self._probe(keys[[0, n - 1]]))
            if a >= 0 and b - a == n - 1:
                run = np.arange(a, b + 1, dtype=np.int64)
                same = self._rows_equal(self._keys[a : b + 1], keys) & self._live[a : b + 1]
                if same.all():
                    return run
                found: Ints = np.where(same, run, EMPTY)
                miss = np.flatnonzero(~same)
                found[miss] = self._probe(keys[miss])
                return found
        return self._probe(keys)

    def _rows_equal(self, stored: Words, want: Words) -> Bools:
        """Row by row: whether ``stored`` and ``want`` hold the same key."""
        row_eq = _ROW_EQUAL.get(self._words)
        if row_eq is not None:
            # One contiguous compare of every word, each row's flags read
            # as one integer (all equal: every byte 1): no strided passes.
            flags = np.equal(stored, want).view(row_eq[0]).reshape(-1)
            same: Bools = flags == row_eq[1]
            return same
        same = np.ones(len(want), dtype=np.bool_)
        for w in range(self._words):
            same &= stored[:, w] == want[:, w]
        return same

    def _probe(self, keys: Words) -> Ints:
        """:meth:`lookup` by probing from each key's home slot."""
        slot = self._home(keys)
        mask = np.int64(len(self._slots) - 1)
        # The first round over every row (most keys end there: the table is
        # at most a quarter full), then only the rows still probing.
        held = self._slots[slot]
        match = self._equal(held, keys)
        found: Ints = np.where(match, held, EMPTY)
        pending = np.flatnonzero(~match & (held != EMPTY))
        while len(pending):
            slot[pending] = (slot[pending] + 1) & mask
            held = self._slots[slot[pending]]
            match = self._equal(held, keys[pending])
            found[pending[match]] = held[match]
            pending = pending[~match & (held != EMPTY)]
        return found

    def _equal(self, held: Ints, want: Words) -> Bools:
        """Row by row: whether slot content ``held`` is an id whose key is ``want``."""
        rows = self._keys.view(f"V{8 * self._words}").ravel()
        stored = np.take(rows, np.maximum(held, 0)).view(np.uint64).reshape(-1, self._words)
        match = held >= 0
        match &= self._rows_equal(stored, want)
        return match

    def get_or_create(self, keys: Words) -> tuple[Ints, Bools]:
        """The id of each key, creating ids for keys not held; and which rows
        of ``keys`` created their id (one row of each group of equal keys)."""
        keys = self._check(keys)
        n = len(keys)
        ids = self.lookup(keys)
        created = np.zeros(n, dtype=np.bool_)
        missing = np.flatnonzero(ids == EMPTY)
        if not len(missing):
            return ids, created
        self._reserve(len(missing))
        want = keys[missing]
        new_ids, first = self._insert(want)
        ids[missing] = new_ids
        created[missing[first]] = True
        return ids, created

    def remove(self, ids: Ints) -> None:
        """Forget the keys of live ``ids`` (distinct); their ids are reused."""
        ids = np.asarray(ids, dtype=np.int64)
        if not len(ids):
            return
        if not self._live[ids].all():
            raise ValueError("remove: an id is not live")
        self._slots[self._slot_of[ids]] = TOMBSTONE
        self._slot_of[ids] = EMPTY
        self._live[ids] = False
        self._keys[ids] = 0
        self._free.append(ids[::-1].copy())
        self._free_count += len(ids)
        self._count -= len(ids)
        self._tombstones += len(ids)

    # --- internals -------------------------------------------------------------

    def _check(self, keys: Words) -> Words:
        keys = np.ascontiguousarray(keys, dtype=np.uint64)
        if keys.ndim != 2 or keys.shape[1] != self._words:
            raise ValueError(f"keys must have shape (n, {self._words}), got {keys.shape}")
        return keys

    def _home(self, keys: Words) -> Ints:
        h = keys[:, 0] * _MIX[0]
        for w in range(1, self._words):
            h ^= keys[:, w] * _MIX[w]
        h ^= h >> np.uint64(29)
        h *= _FINAL
        h ^= h >> np.uint64(32)
        home: Ints = (h >> np.uint64(64 - self._bits)).astype(np.int64)
        return home

    def _reserve(self, extra: int) -> None:
        """Room for ``extra`` more ids and slots, growing amortised (x2)."""
        need = self._count + extra
        fresh_needed = max(0, extra - self._free_count)
        if self._fresh + fresh_needed > len(self._keys):
            cap = len(self._keys)
            while cap < self._fresh + fresh_needed:
                cap *= 2
            grow = cap - len(self._keys)
            self._keys = np.concatenate([self._keys, np.zeros((grow, self._words), np.uint64)])
            self._slot_of = np.concatenate([self._slot_of, np.full(grow, EMPTY, np.int64)])
            self._live = np.concatenate([self._live, np.zeros(grow, np.bool_)])
        if 4 * (need + self._tombstones) > len(self._slots):
            size = len(self._slots)
            while 4 * need > size:
                size *= 2
            self._resize_slots(size)

    def _resize_slots(self, size: int) -> None:
        self._bits = max(4, (size - 1).bit_length())
        self._slots = np.full(1 << self._bits, EMPTY, dtype=np.int64)
        # Claims of one probe round, by slot; EMPTY again after every round.
        self._claim = np.full(1 << self._bits, EMPTY, dtype=np.int64)
        self._tombstones = 0
        ids = np.flatnonzero(self._live)
        if len(ids):
            self._place(self._keys[ids], ids)

    def _take_ids(self, n: int) -> Ints:
        out: list[Ints] = []
        while n and self._free:
            top = self._free[-1]
            k = min(n, len(top))
            out.append(top[len(top) - k :])
            if k == len(top):
                self._free.pop()
            else:
                self._free[-1] = top[: len(top) - k]
            self._free_count -= k
            n -= k
        if n:
            out.append(np.arange(self._fresh, self._fresh + n, dtype=np.int64))
            self._fresh += n
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    def _insert(self, keys: Words) -> tuple[Ints, Bools]:
        """Place keys none of which is held; equal keys share one id.
        Returns each row's id and which rows made theirs."""
        n = len(keys)
        ids = np.full(n, EMPTY, dtype=np.int64)
        first = np.zeros(n, dtype=np.bool_)
        slot = self._home(keys)
        pending = np.arange(n, dtype=np.int64)
        mask = np.int64(len(self._slots) - 1)
        claim = self._claim
        while len(pending):
            s = slot[pending]
            held = self._slots[s]
            # A key placed by an earlier round of this call (an equal key won).
            occupied = held >= 0
            match = self._equal(held, keys[pending])
            ids[pending[match]] = held[match]
            free = ~occupied
            claimers = pending[free]
            cs = s[free]
            claim[cs] = claimers  # one claimer per slot wins, whichever numpy keeps
            won = claim[cs] == claimers
            winners = claimers[won]
            ws = cs[won]
            new = self._take_ids(len(winners))
            self._tombstones -= int(np.count_nonzero(self._slots[ws] == TOMBSTONE))
            self._slots[ws] = new
            self._keys[new] = keys[winners]
            self._slot_of[new] = ws
            self._live[new] = True
            self._count += len(new)
            ids[winners] = new
            first[winners] = True
            claim[cs] = EMPTY
            # Losers retry the same slot (the winner may be their equal);
            # keys that met a different key move on.
            lost = claimers[~won]
            moved = pending[occupied & ~match]
            slot[moved] = (slot[moved] + 1) & mask
            pending = np.concatenate([lost, moved])
        self._in_row_order(keys, ids, first)
        return ids, first

    def _in_row_order(self, keys: Words, ids: Ints, first: Bools) -> None:
        """Renumber the ids one ``_insert`` handed out (in probe-round order)
        so that they ascend in the batch's row order: a batch of fresh keys
        gets a run of ids, which later batches in the same order find as a
        run (:meth:`lookup`; the table gathers runs through slices). The set
        of ids is the same; ``ids`` is updated in place."""
        made = np.flatnonzero(first)
        got = ids[made]  # group j (one per new key) holds id got[j]
        if len(got) < 2:
            return
        perm = np.argsort(got)
        group = perm[np.searchsorted(got[perm], ids)]  # each row's group
        earliest = np.full(len(got), len(ids), dtype=np.int64)
        np.minimum.at(earliest, group, np.arange(len(ids), dtype=np.int64))
        rank = np.empty(len(got), dtype=np.int64)
        rank[np.argsort(earliest)] = np.arange(len(got), dtype=np.int64)
        new = np.sort(got)[rank]  # group j's id: ascending in first-row order
        if bool((new == got).all()):
            return
        where = self._slot_of[got]
        self._keys[new] = keys[made]
        self._slot_of[new] = where
        self._slots[where] = new
        ids[:] = new[group]

    def _place(self, keys: Words, ids: Ints) -> None:
        """Rebuild: put distinct live keys back under their ids."""
        slot = self._home(keys)
        pending = np.arange(len(keys), dtype=np.int64)
        mask = np.int64(len(self._slots) - 1)
        claim = self._claim
        while len(pending):
            s = slot[pending]
            free = self._slots[s] == EMPTY
            claimers = pending[free]
            cs = s[free]
            claim[cs] = claimers
            won = claim[cs] == claimers
            self._slots[cs[won]] = ids[claimers[won]]
            self._slot_of[ids[claimers[won]]] = cs[won]
            claim[cs] = EMPTY
            lost = claimers[~won]
            moved = pending[~free]
            slot[moved] = (slot[moved] + 1) & mask
            pending = np.concatenate([lost, moved])
