"""MemoryMaps: the map backend in pure Python, with the kernel program's
semantics, so the agent, the lab and tests run without a kernel.

``feed(src, dst, now)`` is the XDP program's per-packet step: Algorithm 2
(:func:`xpro_mesh.core.algorithm.filter_packet` for policy ``paper``,
:func:`~xpro_mesh.core.algorithm.filter_packet_fair_share` for
``fair-share``) over incrementally kept destination aggregates, exactly as
``bpf/xpro.c`` keeps them, including the per-destination ts1 order and the
overload-warning limits. Tests prove the three agree: this against the core
model (pure, property-based), the kernel against the model (differential,
BPF_PROG_TEST_RUN), and the kernel against this under apply ops.

One CPU, no eviction, no lock contention: the cases where the kernel is
not exact (see xpro.c) do not arise here.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass

from xpro_mesh.core.algorithm import NS_PER_S, DestinationAggregate, LocalRecord, Verdict
from xpro_mesh.datapath.backend import (
    ApplyReport,
    DestOp,
    OverloadWarning,
    PairKey,
    PairOp,
    PairRecord,
    Stats,
)
from xpro_mesh.datapath.config import Policy, XdpConfig
from xpro_mesh.datapath.structs import STATS_FIELDS, to_addr

__all__ = ["MemoryMaps"]

EVENTS_CAPACITY = 4096  # about what the kernel's 256 KiB ring buffer holds


@dataclass(slots=True)
class _Pair:
    ts1: int
    ts2: int
    c: int
    dc: int
    mark: int = 0
    warn_ts: int = 0


@dataclass(slots=True)
class _Dest:
    ts1: int
    ts2: int
    c: int
    n: int


class MemoryMaps:
    """The :class:`~xpro_mesh.datapath.backend.MapBackend` in memory."""

    def __init__(self, config: XdpConfig | None = None) -> None:
        self._config = config or XdpConfig()
        self._pairs: dict[PairKey, _Pair] = {}
        self._dests: dict[bytes, _Dest] = {}
        # Per destination: its pairs' sources in ts1 order (the kernel's list).
        self._order: dict[bytes, dict[bytes, None]] = {}
        self._stats = dict.fromkeys(STATS_FIELDS, 0)
        self._events: list[OverloadWarning] = []
        self._warn_window = 0
        self._warn_in_window = 0
        self._lock = threading.RLock()

    # -- the packet path ---------------------------------------------------

    def feed(self, src: str | bytes, dst: str | bytes, now: int) -> Verdict:
        """One packet from ``src`` to ``dst`` at cluster time ``now``."""
        key = PairKey(to_addr(src), to_addr(dst))
        with self._lock:
            verdict = self._judge(key, now)
            self._stats[_STAT[verdict]] += 1
            return verdict

    def _judge(self, key: PairKey, now: int) -> Verdict:
        cfg = self._config
        event = "extend"
        dest_delta = 1
        old_ts1 = 0
        p = self._pairs.get(key)
        # Algorithm 2 lines 1-13.
        if p is None:
            p = _Pair(ts1=now, ts2=now, c=1, dc=1)
            self._pairs[key] = p
            self._stats["new_pairs"] += 1
            event = "new"
        elif now - p.ts2 > cfg.t_t1:
            event = "reset"
            old_ts1 = p.ts1
            dest_delta = 1 - p.c
            p.ts1, p.ts2, p.c, p.dc, p.mark = now, now, 1, 1, 1
            self._stats["resets"] += 1
        else:
            p.c += 1
            p.dc += 1
            p.ts2 = now
        c_now, ts1 = p.c, p.ts1

        # Lines 18-20, incrementally.
        order = self._order.setdefault(key.dst, {})
        d = self._dests.get(key.dst)
        if d is None:
            d = _Dest(ts1=ts1, ts2=now, c=c_now, n=1)
            self._dests[key.dst] = d
            order.clear()
            order[key.src] = None
        else:
            d.c += dest_delta
            d.ts2 = max(d.ts2, now)
            if event == "new":
                d.n += 1
                d.ts1 = min(d.ts1, now)
                order.pop(key.src, None)
                order[key.src] = None
            elif event == "reset":
                if not order or next(reversed(order)) != key.src:
                    order.pop(key.src, None)
                    order[key.src] = None
                if old_ts1 == d.ts1:
                    self._ts1_from_head(d, key.dst)

        # Lines 14-15.
        window = now - ts1
        if window > cfg.t_t2 and c_now * NS_PER_S > cfg.t_f1 * window:
            self._warn(p, key, now, ts1, c_now)
            return Verdict.DROP_PAIR
        # Lines 21-23.
        dest_window = d.ts2 - d.ts1
        if not (dest_window > cfg.t_t3 and d.c * NS_PER_S > cfg.t_f2 * dest_window):
            return Verdict.PASS
        if cfg.policy is Policy.PAPER:
            return Verdict.DROP_DEST
        n = max(1, d.n)
        if window > cfg.t_t2 and c_now * NS_PER_S * n > cfg.t_f2 * window:
            return Verdict.DROP_DEST
        return Verdict.PASS

    def _ts1_from_head(self, d: _Dest, dst: bytes) -> None:
        order = self._order.get(dst)
        if order:
            d.ts1 = self._pairs[PairKey(next(iter(order)), dst)].ts1

    def _warn(self, p: _Pair, key: PairKey, now: int, ts1: int, c: int) -> None:
        cfg = self._config
        if p.warn_ts != 0 and now - p.warn_ts < cfg.warn_interval:
            return
        p.warn_ts = now
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
            OverloadWarning(key.src, key.dst, ts1, now, c, self._stats["warnings_suppressed"])
        )
        self._stats["warnings"] += 1

    # -- the backend interface ----------------------------------------------

    def read_pairs(self) -> list[tuple[PairKey, PairRecord]]:
        with self._lock:
            return [
                (k, LocalRecord(ts1=p.ts1, ts2=p.ts2, c=p.c, dc=p.dc, mark=p.mark))
                for k, p in self._pairs.items()
            ]

    def read_active_pairs(self) -> tuple[list[tuple[PairKey, PairRecord]], int]:
        with self._lock:
            active = [
                (k, LocalRecord(ts1=p.ts1, ts2=p.ts2, c=p.c, dc=p.dc, mark=p.mark))
                for k, p in self._pairs.items()
                if p.dc or p.mark
            ]
            return active, len(self._pairs)

    def lookup_pairs(self, keys: Sequence[PairKey]) -> list[tuple[PairKey, PairRecord]]:
        out = []
        with self._lock:
            for k in keys:
                p = self._pairs.get(k)
                if p is not None:
                    out.append((k, LocalRecord(ts1=p.ts1, ts2=p.ts2, c=p.c, dc=p.dc, mark=p.mark)))
        return out

    def read_destinations(self) -> list[tuple[bytes, DestinationAggregate]]:
        with self._lock:
            return [
                (dst, DestinationAggregate(ts1=d.ts1, ts2=d.ts2, c=d.c, clients=d.n))
                for dst, d in self._dests.items()
            ]

    def count_pairs(self) -> int:
        with self._lock:
            return len(self._pairs)

    def apply(
        self, pair_ops: Sequence[PairOp] = (), dest_ops: Sequence[DestOp] = ()
    ) -> ApplyReport:
        applied = created = 0
        restarted: list[PairKey] = []
        missing: list[PairKey] = []
        with self._lock:
            for op in dest_ops:
                d = self._dests.get(op.dst)
                if d is None:
                    self._dests[op.dst] = _Dest(ts1=op.ts1, ts2=op.ts2, c=op.c_delta, n=op.n_delta)
                    self._order[op.dst] = {}
                    created += 1
                    continue
                d.c += op.c_delta
                d.n += op.n_delta
                d.ts2 = max(d.ts2, op.ts2)
                d.ts1 = op.ts1
                applied += 1
            for pop in pair_ops:
                p = self._pairs.get(pop.key)
                if p is None:
                    if pop.expect_ts1 is not None:
                        missing.append(pop.key)
                        continue
                    self._pairs[pop.key] = _Pair(
                        ts1=pop.ts1, ts2=pop.ts2, c=pop.c_delta, dc=-pop.acked_dc
                    )
                    if pop.key.dst in self._dests:
                        self._order.setdefault(pop.key.dst, {})[pop.key.src] = None
                    self._stats["apply_created"] += 1
                    created += 1
                    continue
                if pop.expect_ts1 is not None and p.ts1 != pop.expect_ts1:
                    restarted.append(pop.key)
                    continue
                p.ts1 = pop.ts1
                p.dc -= pop.acked_dc
                p.c += pop.c_delta
                p.ts2 = max(p.ts2, pop.ts2)
                p.mark = 0
                applied += 1
        return ApplyReport(applied, created, tuple(restarted), tuple(missing), 0)

    def delete_pairs(self, keys: Sequence[PairKey]) -> int:
        deleted = 0
        with self._lock:
            for key in keys:
                p = self._pairs.get(key)
                if p is None:
                    continue
                d = self._dests.get(key.dst)
                if d is not None:
                    self._order.get(key.dst, {}).pop(key.src, None)
                    d.c -= p.c
                    d.n -= 1
                    if p.ts1 == d.ts1:
                        self._ts1_from_head(d, key.dst)
                del self._pairs[key]
                self._stats["apply_deleted"] += 1
                deleted += 1
        return deleted

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


_STAT = {Verdict.PASS: "pass", Verdict.DROP_PAIR: "drop_pair", Verdict.DROP_DEST: "drop_dest"}
