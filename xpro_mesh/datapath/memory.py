"""MemoryMaps: the v2 map backend in plain memory, with the kernel program's
packet rule in Python, so the agent, the lab and tests run without a kernel.

The slot arrays, free rings and ring positions are the same numpy arrays
(same dtypes) the BPF backend maps from the kernel; the agent-side calls
are literally the same code (:class:`~xpro_mesh.datapath.slots.SlotArrays`).
``feed(src, dst, now)`` is ``bpf/xpro.c``'s ``xpro_judge`` line for line on
one CPU: the pair's window combined with a valid agent view, slot
allocation from the ring, the destination's ts1 order by slot numbers, the
old slot unlinked when reused, relinking when a destination slot was
recycled, warnings and their limits, the fair-share policy's admission
budget (issue 11), and ``bpf/xpro_policy.h``'s two hooks around it
(:class:`MemoryPolicy`: the allow-list before the rule, the monitor action
after it). Without views it is Algorithm 2
exactly (:func:`xpro_mesh.core.algorithm.filter_packet` for ``paper``,
:func:`~xpro_mesh.core.algorithm.filter_packet_fair_share` for
``fair-share``): a property test demands it; the differential test demands
the kernel equal this, slot by slot, with views and expiries interleaved.

One CPU: the insert race and the spare it leaves happen only when the index
is full; the lock is never busy.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

from xpro_mesh.core.algorithm import NS_PER_S, Verdict
from xpro_mesh.datapath.backend import OverloadWarning, Stats
from xpro_mesh.datapath.config import MapSizes, Policy, XdpConfig
from xpro_mesh.datapath.errors import DatapathError
from xpro_mesh.datapath.policy import ALLOW_MAX, Action, PolicyStats, parse_prefix
from xpro_mesh.datapath.slots import SlotArrays, ring_size_for
from xpro_mesh.datapath.structs import (
    DEST_SLOT_DTYPE,
    PAIR_SLOT_DTYPE,
    RING_DTYPE,
    STATS_FIELDS,
    XPRO_ADMIT_UNIT,
    XPRO_DEST_DIRTY,
    XPRO_NO_SLOT,
    XPRO_RING_DESTS,
    XPRO_RING_PAIRS,
    XPRO_SLOT_ESTABLISHED,
    XPRO_SLOT_KNOWN,
    XPRO_SLOT_LINKED,
    to_addr,
)
from xpro_mesh.datapath.vouch_bloom import VOUCHED_MAX

__all__ = ["XDP_DROP", "XDP_PASS", "MemoryMaps", "MemoryPolicy"]

EVENTS_CAPACITY = 4096  # about what the kernel's 256 KiB ring buffer holds
S64_MAX = 2**63 - 1
NO = XPRO_NO_SLOT
_NOT_LINKED = np.uint32(~XPRO_SLOT_LINKED & 0xFFFFFFFF)
_NOT_ESTABLISHED = np.uint32(~XPRO_SLOT_ESTABLISHED & 0xFFFFFFFF)


def add_sat(a: int, b: int) -> int:
    """``xpro_add_sat``: a + b saturating at 2^63 - 1 (a >= 0)."""
    return S64_MAX if b > 0 and a > S64_MAX - b else a + b


def rate_over(c: int, n: int, limit: int, window: int) -> bool:
    """``xpro_rate_over``: c * 10^9 * n > limit * window, n clamped to 2^32 - 1."""
    if c <= 0:
        return False
    return c * NS_PER_S * min(max(n, 1), 0xFFFFFFFF) > limit * window


def admit_cap(cfg: XdpConfig) -> int:
    """``xpro_admit_cap``: the bucket's depth in micro-packets."""
    return min(cfg.admit_burst, 4000) * XPRO_ADMIT_UNIT


def admit_refill(cfg: XdpConfig, tokens: int, elapsed: int) -> int:
    """``xpro_admit_refill`` (and the model's ``_refill``)."""
    cap = admit_cap(cfg)
    if elapsed >= 1 << 40:
        return cap
    return min(cap, tokens + elapsed * min(cfg.admit_rate, 1 << 23) // 1000)


def live_gen32(gen: int) -> int:
    return ((gen + 1) & ~1) & 0xFFFFFFFF


XDP_DROP, XDP_PASS = 1, 2  # the XDP actions xpro_filter returns


class MemoryPolicy:
    """``bpf/xpro_policy.h``'s maps in memory, with
    :class:`~xpro_mesh.datapath.policy.PolicyMaps`' interface (the agent
    writes both the same way): the action (enforce | monitor, and the mesh
    document's version) and the allow-list of prefixes.

    ``allows`` is ``xpro_allowed``: a packet whose source or destination
    lies in a listed prefix (16-byte addresses, IPv4 as ::ffff:a.b.c.d with
    its prefix length + 96, as the LPM trie's keys) is never judged nor
    counted, only ``allowed``. ``xdp_action`` is ``xpro_action``: a drop
    verdict is XDP_DROP under enforce and XDP_PASS under monitor, where it
    is still counted as a drop (stats.drop_*) and also in ``monitored``.
    """

    def __init__(self) -> None:
        self._action = Action.ENFORCE
        self._version = 0
        self._entries: set[tuple[int, bytes]] = set()
        # prefix length -> the listed prefixes' top bits, for the match
        self._by_len: dict[int, set[int]] = {}
        self._allowed = 0
        self._monitored = 0

    def set_action(self, action: Action, version: int = 0) -> None:
        self._action, self._version = Action(action), version & 0xFFFFFFFF

    def action(self) -> tuple[Action, int]:
        return self._action, self._version

    def stats(self) -> PolicyStats:
        return PolicyStats(self._allowed, self._monitored)

    def allow_list(self) -> list[tuple[int, bytes]]:
        return sorted(self._entries)

    def set_allow_list(self, prefixes: Iterable[str]) -> None:
        """Make the list hold exactly ``prefixes`` (ValueError for one that is
        not a prefix, DatapathError past the trie's size, as PolicyMaps)."""
        wanted = {parse_prefix(p) for p in prefixes}
        if len(wanted) > ALLOW_MAX:
            raise DatapathError(f"allow-list: at most {ALLOW_MAX} prefixes, got {len(wanted)}")
        by_len: dict[int, set[int]] = {}
        for plen, addr in wanted:
            by_len.setdefault(plen, set()).add(int.from_bytes(addr) >> (128 - plen))
        self._entries, self._by_len = wanted, by_len

    def allows(self, key: bytes) -> bool:
        """``xpro_allowed`` for a 32-byte pair key (source, destination)."""
        if not self._by_len:
            return False
        src, dst = int.from_bytes(key[:16]), int.from_bytes(key[16:32])
        for plen, nets in self._by_len.items():
            if src >> (128 - plen) in nets or dst >> (128 - plen) in nets:
                self._allowed += 1
                return True
        return False

    def xdp_action(self, verdict: Verdict) -> int:
        """``xpro_action``: what the kernel returns for a judged packet."""
        if verdict is Verdict.PASS:
            return XDP_PASS
        if self._action is Action.MONITOR:
            self._monitored += 1
            return XDP_PASS
        return XDP_DROP


class MemoryVouches:
    """``bpf/xpro_vouch.h``'s maps in memory, with
    :class:`~xpro_mesh.datapath.vouch_bloom.VouchMaps`' :meth:`write` (the
    agent writes both the same way). The kernel's bloom is a superset of its
    hash map at every instant, so ``xpro_vouched`` is membership of the set."""

    def __init__(self) -> None:
        self.current: set[bytes] = set()
        self.capacity = VOUCHED_MAX

    def write(self, keys: Iterable[bytes]) -> tuple[int, int]:
        wanted = set(keys)
        if len(wanted) > self.capacity:
            raise DatapathError(f"vouched: at most {self.capacity} pairs, got {len(wanted)}")
        added, removed = len(wanted - self.current), len(self.current - wanted)
        self.current = wanted
        return added, removed


class MemoryMaps(SlotArrays):
    """The :class:`~xpro_mesh.datapath.backend.MapBackend` in memory."""

    def __init__(self, config: XdpConfig | None = None, sizes: MapSizes | None = None) -> None:
        sizes = sizes or MapSizes()  # as the kernel's defaults; pages are touched lazily
        super().__init__(
            np.zeros(sizes.pairs_max, PAIR_SLOT_DTYPE),
            np.zeros(sizes.dests_max, DEST_SLOT_DTYPE),
            np.zeros(ring_size_for(sizes.pairs_max), np.uint64),
            np.zeros(ring_size_for(sizes.dests_max), np.uint64),
            np.zeros(2, RING_DTYPE),
        )
        self.fill_rings()
        # Field views, made once: the packet rule reads and writes through them.
        self._pf = {name: self._pairs[name] for name in PAIR_SLOT_DTYPE.names or ()}
        self._df = {name: self._dests[name] for name in DEST_SLOT_DTYPE.names or ()}
        self._config = config or XdpConfig()
        self._pair_index: dict[bytes, int] = {}
        self._dest_index: dict[bytes, int] = {}
        self._spare_pair: int | None = None
        self._spare_dest: int | None = None
        self._stats = dict.fromkeys(STATS_FIELDS, 0)
        self._events: list[OverloadWarning] = []
        self._warn_window = 0
        self._warn_in_window = 0
        self._lock = threading.RLock()
        self.policy = MemoryPolicy()  # xpro_policy.h's maps
        self.vouches = MemoryVouches()  # xpro_vouch.h's maps

    # -- the index (what is not memory in the kernel) -------------------------

    def _delete_pair_keys(self, keys: bytes, count: int) -> int:
        with self._lock:
            return sum(
                self._pair_index.pop(keys[i * 32 : i * 32 + 32], None) is not None
                for i in range(count)
            )

    def _delete_dest_keys(self, keys: bytes, count: int) -> int:
        with self._lock:
            return sum(
                self._dest_index.pop(keys[i * 16 : i * 16 + 16], None) is not None
                for i in range(count)
            )

    def _indexed_slots(self) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.uint32]]:
        with self._lock:
            return (
                np.fromiter(self._pair_index.values(), np.uint32, len(self._pair_index)),
                np.fromiter(self._dest_index.values(), np.uint32, len(self._dest_index)),
            )

    def reopen(self) -> MemoryMaps:
        """A new backend on the same maps, as ``BpfMaps.open`` gives an agent
        that restarted: the kernel's side (arrays, index, counters) shared,
        the agent's side (expired slots, pending recycles) lost and then
        recovered. Use the returned object from then on, not this one."""
        new = copy.copy(self)
        SlotArrays.__init__(new, self._pairs, self._dests, *self._rings, self._ctl)
        new.recover()
        return new

    def lookup_pair(self, src: str | bytes, dst: str | bytes) -> int | None:
        """The slot ``pair_index`` names for the pair of ``src``'s client
        (its prefix, ``src_prefix4/6``) and ``dst`` (None: not indexed)."""
        with self._lock:
            return self._pair_index.get(self._config.client_of(to_addr(src)) + to_addr(dst))

    def lookup_dest(self, dst: str | bytes) -> int | None:
        with self._lock:
            return self._dest_index.get(to_addr(dst))

    # -- the packet path ------------------------------------------------------

    def feed(self, src: str | bytes, dst: str | bytes, now: int) -> Verdict:
        """One packet from ``src`` to ``dst`` at cluster time ``now``: its
        verdict (an allowed packet's is PASS; in monitor mode a drop verdict
        is still returned, see :meth:`feed_action`)."""
        return self.feed_action(src, dst, now)[0]

    def feed_action(self, src: str | bytes, dst: str | bytes, now: int) -> tuple[Verdict, int]:
        """``xpro_filter`` on one parsed packet: the verdict and the XDP
        action (XDP_PASS or XDP_DROP) the kernel would return. The allow-list
        sees the whole source; the pair is its client's (its prefix)."""
        source = to_addr(src)
        key = source + to_addr(dst)
        with self._lock:
            if self.policy.allows(key):  # never judged, never counted
                return Verdict.PASS, XDP_PASS
            verdict = self._judge(self._config.client_of(source) + key[16:], now)
            self._stats[_STAT[verdict]] += 1
            return verdict, self.policy.xdp_action(verdict)

    def _take(self, which: int) -> int | None:
        ctl = self._ctl[which : which + 1]
        head, tail = int(ctl["head"][0]), int(ctl["tail"][0])
        if tail - head <= 0:
            return None
        ring = self._rings[which]
        slot = int(ring[head & (len(ring) - 1)])
        ctl["head"] = head + 1
        limit = len(self._pairs) if which == XPRO_RING_PAIRS else len(self._dests)
        return slot if slot < limit else None

    # The ts1 order, as xpro_list_append / _unlink / xpro_ts1_from_head.
    def _append(self, ds: int, s: int) -> None:
        P, D = self._pf, self._df
        tail = int(D["tail"][ds])
        P["prev"][s] = NO
        P["next"][s] = NO
        P["flags"][s] |= XPRO_SLOT_LINKED
        if tail == NO:
            D["head"][ds] = s
            D["tail"][ds] = s
            return
        P["next"][tail] = s
        P["prev"][s] = tail
        D["tail"][ds] = s

    def _unlink(self, ds: int, s: int) -> None:
        P, D = self._pf, self._df
        prev, nxt = int(P["prev"][s]), int(P["next"][s])
        if int(D["head"][ds]) == s:
            D["head"][ds] = nxt
        elif prev != NO:
            if int(P["next"][prev]) == s:
                P["next"][prev] = nxt
            else:
                D["flags"][ds] |= XPRO_DEST_DIRTY
        if int(D["tail"][ds]) == s:
            D["tail"][ds] = prev
        elif nxt != NO:
            if int(P["prev"][nxt]) == s:
                P["prev"][nxt] = prev
            else:
                D["flags"][ds] |= XPRO_DEST_DIRTY
        P["prev"][s] = NO
        P["next"][s] = NO
        P["flags"][s] &= _NOT_LINKED

    def _ts1_from_head(self, ds: int) -> None:
        head = int(self._df["head"][ds])
        if head != NO:
            self._df["ts1"][ds] = self._pf["ts1"][head]

    def _unlink_old(self, s: int) -> None:
        P, D = self._pf, self._df
        if not int(P["flags"][s]) & XPRO_SLOT_LINKED:
            return
        ods = int(P["dslot"][s])
        if ods >= len(self._dests) or live_gen32(int(D["gen"][ods])) != int(P["dgen"][s]):
            P["flags"][s] &= _NOT_LINKED
            return
        old_ts1 = int(P["ts1"][s])
        self._unlink(ods, s)
        if old_ts1 == int(D["ts1"][ods]):
            self._ts1_from_head(ods)

    def _resolve_dest(self, dst: bytes, now: int) -> int | None:
        found = self._dest_index.get(dst)
        if found is not None:
            return found
        if self._spare_dest is not None:
            ds: int | None = self._spare_dest
            self._spare_dest = None
        else:
            ds = self._take(XPRO_RING_DESTS)
        if ds is None:
            self._stats["dest_full"] += 1
            return None
        D = self._df
        godd = int(D["gen"][ds]) | 1
        D["gen"][ds] = godd
        D["ts1"][ds] = now
        D["ts2"][ds] = now
        D["c"][ds] = 0
        D["n"][ds] = 0
        D["dst"][ds] = np.void(dst)
        D["lock"][ds] = 0
        D["head"][ds] = NO
        D["tail"][ds] = NO
        D["flags"][ds] = 0
        D["admit"][ds] = admit_cap(self._config)
        if len(self._dest_index) >= len(self._dests):
            self._spare_dest = ds
            self._stats["insert_races"] += 1
            self._stats["dest_full"] += 1
            return None
        self._dest_index[dst] = ds
        self._stats["new_dests"] += 1
        D["gen"][ds] = godd + 1
        return ds

    def _judge(self, key: bytes, now: int) -> Verdict:
        cfg = self._config
        st = self._stats
        P, D = self._pf, self._df
        dst = key[16:]
        created = False
        d: int | None = None
        godd = 0
        s = self._pair_index.get(key)
        if s is None and cfg.policy is Policy.FAIR_SHARE and self._probation(key, now):
            return Verdict.DROP_DEST
        if s is None:
            spare = self._spare_pair is not None
            if spare:
                s = self._spare_pair
                self._spare_pair = None
            else:
                s = self._take(XPRO_RING_PAIRS)
            if s is None:
                return self._unrecorded(dst, now)
            if not spare:
                self._unlink_old(s)
            godd = int(P["gen"][s]) | 1
            P["gen"][s] = godd
            P["ts1"][s] = now
            P["ts2"][s] = now
            P["c"][s] = 1
            P["src"][s] = np.void(key[:16])
            P["dst"][s] = np.void(dst)
            P["warn_ts"][s] = 0
            P["prev"][s] = NO
            P["next"][s] = NO
            P["flags"][s] = 0
            P["gap_us"][s] = 0
            d = self._resolve_dest(dst, now)
            P["dslot"][s] = NO if d is None else d
            P["dgen"][s] = 0 if d is None else live_gen32(int(D["gen"][d]))
            if len(self._pair_index) >= len(self._pairs):
                self._spare_pair = s
                st["insert_races"] += 1
                return self._unrecorded(dst, now)
            self._pair_index[key] = s
            created = True
            st["new_pairs"] += 1

        # Lines 1-13 on the combined record.
        g = int(P["gen"][s])
        view = reset = was_established = relinked = False
        vadj = vts1 = vts2 = 0
        dest_delta = 1
        old_ts1 = 0
        if created:
            c_now, ts1 = 1, now
        else:
            if not g & 1:
                view = int(P["v_gen"][s]) == g
                vadj, vts1, vts2 = int(P["v_adj"][s]), int(P["v_ts1"][s]), int(P["v_ts2"][s])
            last = int(P["ts2"][s])
            if view and vts2 > last:
                last = vts2
            if not g & 1 and now - last > cfg.t_t1:
                reset, view = True, False
                old_ts1 = int(P["ts1"][s])
                P["gen"][s] = g + 1
                P["ts1"][s] = now
                P["ts2"][s] = now
                dest_delta = 1 - int(P["c"][s])
                P["c"][s] = 1
                was_established = bool(int(P["flags"][s]) & XPRO_SLOT_ESTABLISHED)
                P["flags"][s] &= _NOT_ESTABLISHED
                P["flags"][s] |= XPRO_SLOT_KNOWN
                P["gap_us"][s] = min((now - last) // 1000, 0xFFFFFFFF)
                P["gen"][s] = g + 2
                c_now, ts1 = 1, now
                st["resets"] += 1
            else:
                c_now = int(P["c"][s]) + 1
                P["c"][s] = c_now
                P["ts2"][s] = now
                ts1 = int(P["ts1"][s])

        # Lines 18-20, incrementally.
        ds = int(P["dslot"][s])
        if d is None and ds != NO:
            d = ds if live_gen32(int(D["gen"][ds])) == int(P["dgen"][s]) else None
        if d is None and not created:
            d = self._resolve_dest(dst, now)
            if d is not None:
                P["dslot"][s] = d
                P["dgen"][s] = live_gen32(int(D["gen"][d]))
                self._append(d, s)
                if int(D["ts1"][d]) > int(P["ts1"][s]):
                    D["ts1"][d] = P["ts1"][s]
                D["flags"][d] |= XPRO_DEST_DIRTY
                if int(P["flags"][s]) & XPRO_SLOT_ESTABLISHED:
                    D["n"][d] += 1
                dest_delta = c_now
                relinked = True
                st["relinks"] += 1
        dest_c = 0
        if d is not None:
            dest_c = int(D["c"][d]) + dest_delta
            D["c"][d] = dest_c
            prev_ts2 = int(D["ts2"][d])
            if now > prev_ts2:
                D["ts2"][d] = now
                D["admit"][d] = admit_refill(cfg, int(D["admit"][d]), now - prev_ts2)
            if was_established and not relinked:
                D["n"][d] -= 1
            if created:
                if int(D["ts1"][d]) > now:
                    D["ts1"][d] = now
                self._append(d, s)
            elif reset:
                if int(D["tail"][d]) != s:
                    if int(P["flags"][s]) & XPRO_SLOT_LINKED:
                        self._unlink(d, s)
                    self._append(d, s)
                if old_ts1 == int(D["ts1"][d]):
                    self._ts1_from_head(d)
        if created:
            P["gen"][s] = godd + 1

        # The judged records.
        jc, jts1, jts2 = c_now, ts1, now
        if view:
            jc = add_sat(c_now, vadj)
            jts1 = vts1
            jts2 = max(now, vts2)
            st["pair_views"] += 1
        # Established: counted into n(D) by the first packet that finds it so.
        window = jts2 - jts1
        # ... and stays so until its window restarts (the view's count is
        # divided by r past T_T4, below admit_k for a slow steady pair).
        flagged = bool(int(P["flags"][s]) & XPRO_SLOT_ESTABLISHED)
        established = flagged or (jc >= cfg.admit_k and window > cfg.t_t2)
        if established and d is not None and not int(P["flags"][s]) & XPRO_SLOT_ESTABLISHED:
            P["flags"][s] |= XPRO_SLOT_ESTABLISHED
            D["n"][d] += 1
        jdc, jn, jdts1, jdts2 = dest_c, 0, 0, 0
        viewed = False
        if d is not None:
            dg = int(D["gen"][d])
            jn, jdts1, jdts2 = int(D["n"][d]), int(D["ts1"][d]), int(D["ts2"][d])
            if not dg & 1 and int(D["v_gen"][d]) == dg:
                jdc = add_sat(dest_c, int(D["v_adj"][d]))
                jn = add_sat(jn, int(D["v_nadj"][d]))
                jdts1 = int(D["v_ts1"][d])
                jdts2 = max(jdts2, int(D["v_ts2"][d]))
                st["dest_views"] += 1
                viewed = True

        # Lines 14-15.
        if window > cfg.t_t2 and rate_over(jc, 1, cfg.t_f1, window):
            self._warn(s, key, now, jts1, jc)
            return Verdict.DROP_PAIR
        if d is None:
            return Verdict.PASS
        # Lines 21-23.
        dest_window = jdts2 - jdts1
        if not (dest_window > cfg.t_t3 and rate_over(jdc, 1, cfg.t_f2, dest_window)) and not (
            viewed and self._view_held(d, now)
        ):
            return Verdict.PASS
        if cfg.policy is Policy.PAPER:
            return Verdict.DROP_DEST
        share_window = window
        vouch = False
        if not established:  # a young pair: only through D's admission budget
            if not int(P["flags"][s]) & XPRO_SLOT_KNOWN and key in self.vouches.current:
                vouch = True  # ... unless vouched (issue 13): the share over >= T_T2
                share_window = max(share_window, cfg.t_t2)
            elif not int(P["flags"][s]) & XPRO_SLOT_KNOWN:
                if int(D["admit"][d]) >= XPRO_ADMIT_UNIT:
                    D["admit"][d] -= XPRO_ADMIT_UNIT
                    st["admitted"] += 1
                    return Verdict.PASS
                st["drop_admit"] += 1
                return Verdict.DROP_DEST
            else:
                share_window += int(P["gap_us"][s]) * 1000  # known: the idle gap before it
        if rate_over(jc, max(1, jn), cfg.t_f2, share_window):
            return Verdict.DROP_DEST
        if vouch:
            st["vouched"] += 1
        return Verdict.PASS

    def _probation(self, key: bytes, now: int) -> bool:
        """``xpro_probation``: True when a new pair's packet is dropped before
        it takes a slot (D over T_F2 with it counted, D's budget empty, the
        pair not vouched)."""
        cfg, st, D = self._config, self._stats, self._df
        dst = key[16:]
        d = self._dest_index.get(dst)
        if d is None or int(D["gen"][d]) & 1:
            return False
        prev_ts2 = int(D["ts2"][d])
        if now > prev_ts2:
            D["ts2"][d] = now
            D["admit"][d] = admit_refill(cfg, int(D["admit"][d]), now - prev_ts2)
        if int(D["admit"][d]) >= XPRO_ADMIT_UNIT:
            return False
        jdc = add_sat(int(D["c"][d]), 1)
        jdts1, jdts2 = int(D["ts1"][d]), int(D["ts2"][d])
        viewed = int(D["v_gen"][d]) == int(D["gen"][d])
        if viewed:
            jdc = add_sat(jdc, int(D["v_adj"][d]))
            jdts1 = int(D["v_ts1"][d])
            jdts2 = max(jdts2, int(D["v_ts2"][d]))
        window = jdts2 - jdts1
        if not (window > cfg.t_t3 and rate_over(jdc, 1, cfg.t_f2, window)) and not (
            viewed and self._view_held(d, now)
        ):
            return False
        if key in self.vouches.current:
            return False  # vouched: judged by the fair share once created
        D["c"][d] += 1
        st["drop_admit"] += 1
        st["probation_drops"] += 1
        return True

    def _unrecorded(self, dst: bytes, now: int) -> Verdict:
        """``xpro_unrecorded``: a new pair without a slot is young; under
        fair-share, while D is over T_F2, only through D's admission budget;
        under paper, dropped while D is over (lines 21-23: a full map does not
        open D); counted into D either way."""
        cfg, st, D = self._config, self._stats, self._df
        st["pair_full"] += 1
        d = self._dest_index.get(dst)
        if d is None or int(D["gen"][d]) & 1:
            return Verdict.PASS
        prev_ts2 = int(D["ts2"][d])
        if now > prev_ts2:
            D["ts2"][d] = now
            D["admit"][d] = admit_refill(cfg, int(D["admit"][d]), now - prev_ts2)
        D["c"][d] += 1  # counted into D (its pairs' sum plus these), until re-based
        jdc, jdts1, jdts2 = int(D["c"][d]), int(D["ts1"][d]), int(D["ts2"][d])
        viewed = int(D["v_gen"][d]) == int(D["gen"][d])
        if viewed:
            jdc = add_sat(jdc, int(D["v_adj"][d]))
            jdts1 = int(D["v_ts1"][d])
            jdts2 = max(jdts2, int(D["v_ts2"][d]))
            st["dest_views"] += 1
        window = jdts2 - jdts1
        if not (window > cfg.t_t3 and rate_over(jdc, 1, cfg.t_f2, window)) and not (
            viewed and self._view_held(d, now)
        ):
            return Verdict.PASS
        if cfg.policy is Policy.PAPER:
            return Verdict.DROP_DEST
        if int(D["admit"][d]) >= XPRO_ADMIT_UNIT:
            D["admit"][d] -= XPRO_ADMIT_UNIT
            st["admitted"] += 1
            return Verdict.PASS
        st["drop_admit"] += 1
        return Verdict.DROP_DEST

    def _view_held(self, d: int, now: int) -> bool:
        """``xpro_view_held`` (issue 13): D's valid view, not over T_F2 on
        the live figure, is still over on the mesh's rate at its renewal
        (v_c over v_ts1 .. v_ts2) for view_hold past v_ts2, and up to
        view_hold_max while the agent's heartbeat is older than view_hold."""
        cfg, st, D = self._config, self._stats, self._df
        vc, t1, t2 = int(D["v_c"][d]), int(D["v_ts1"][d]), int(D["v_ts2"][d])
        w = t2 - t1
        if vc <= 0 or cfg.view_hold == 0 or not (w > cfg.t_t3 and rate_over(vc, 1, cfg.t_f2, w)):
            return False
        age = now - t2
        if age > cfg.view_hold:
            heartbeat = int(self._ctl[XPRO_RING_PAIRS]["agent_at"])
            if age > cfg.view_hold_max or now - heartbeat <= cfg.view_hold:
                st["expired_views"] += 1
                return False
        st["held_views"] += 1
        return True

    def _warn(self, s: int, key: bytes, now: int, ts1: int, c: int) -> None:
        cfg = self._config
        P = self._pf
        last = int(P["warn_ts"][s])
        if last != 0 and now - last < cfg.warn_interval:
            return
        P["warn_ts"][s] = now
        second = now // NS_PER_S
        if self._warn_window != second:
            self._warn_window, self._warn_in_window = second, 0
        if self._warn_in_window >= cfg.warn_per_cpu:
            self._stats["warnings_suppressed"] += 1
            return
        self._warn_in_window += 1
        if len(self._events) >= EVENTS_CAPACITY:
            self._stats["events_lost"] += 1
            return
        self._events.append(
            OverloadWarning(key[:16], key[16:], ts1, now, c, self._stats["warnings_suppressed"])
        )
        self._stats["warnings"] += 1

    # -- the rest of the backend interface ------------------------------------

    def get_config(self) -> XdpConfig:
        return self._config

    def set_config(self, config: XdpConfig) -> None:
        with self._lock:
            self._config = config

    def sync_clock(self) -> int:
        """Nothing to convert: ``feed`` takes cluster time already."""
        return 0

    def read_stats(self) -> Stats:
        with self._lock:
            return Stats.from_counters(dict(self._stats))

    def poll_events(self, timeout_ms: int = 0) -> list[OverloadWarning]:
        with self._lock:
            events, self._events = self._events, []
        return events

    def close(self) -> None:
        pass

    def __enter__(self) -> MemoryMaps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_STAT = {Verdict.PASS: "pass", Verdict.DROP_PAIR: "drop_pair", Verdict.DROP_DEST: "drop_dest"}
