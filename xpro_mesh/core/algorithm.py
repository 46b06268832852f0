"""The X-Pro rules, line by line: Algorithm 1 (sync of L_DB with M_DB) and
Algorithm 2 (per-packet filtering), as a pure userspace reference model.

Al Atiiq & Gehrmann, "X-Pro: Distributed XDP Proxies against DDoS" (NordSec
2021). This module is the contract the kernel program and the gossip merge are
checked against, so it does integer arithmetic, exactly as the kernel (the
one exception, the mesh's destination rate estimate, is :func:`window_rate`):

* timestamps and T_T1..T_T4 are nanoseconds, T_F1/T_F2 packets per second;
* a rate test ``c / (ts2 - ts1) > T_F`` is ``c * 10**9 > T_F * (ts2 - ts1)``;
* the "frequency division factor" r divides: line 14 ``(ts2' - ts1) // r``,
  line 15 ``c // r``.

Primed names (``ts1'``...) are the proxy's local database L_DB
(:class:`LocalRecord`), unprimed ones the master's M_DB (:class:`MasterRecord`).
No I/O, no clock: time is an argument.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Hashable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, replace
from typing import Protocol, TypeVar

from xpro_mesh.core.params import DEFAULTS, NS_PER_S, Params, Policy

__all__ = [
    "ADMIT_UNIT",
    "DEFAULTS",
    "NS_PER_S",
    "AdmissionBudget",
    "DestinationAggregate",
    "LocalRecord",
    "MasterRecord",
    "Params",
    "Policy",
    "Verdict",
    "Window",
    "admission_aggregate",
    "destination_aggregate",
    "destination_rate_floor",
    "filter_packet",
    "filter_packet_fair_share",
    "fold_destination",
    "fold_destinations",
    "is_established",
    "is_established_view",
    "rate_exceeds",
    "rate_start",
    "sync_master",
    "window_rate",
]


class Verdict(enum.StrEnum):
    """What Algorithm 2 decides for one packet (compares equal to its string)."""

    PASS = "pass"
    DROP_PAIR = "drop_pair"  # line 15: the (i, D) pair is over T_F1
    DROP_DEST = "drop_dest"  # lines 21-23: destination D is over T_F2


@dataclass(frozen=True, slots=True)
class LocalRecord:
    """One (i, D_addr) entry of a proxy's L_DB: ts1', ts2', c', dc', mark'.

    ``c`` counts the packets of the current window as the proxy knows it (the
    master's count at the last sync plus what arrived since), ``dc`` only what
    arrived since the last sync; every packet increments both (Alg. 2).
    ``mark`` is 1 when the window was restarted by the idle rule since the
    last sync. ``known`` is True once the pair's window has restarted (lines
    4-7) at least once: the source came back after idling past T_T1, which a
    forged one-packet source never does. It is the pair's, not the window's:
    no sync clears it (the kernel: ``XPRO_SLOT_KNOWN``, set for the slot's
    life). ``gap_us`` is the idle gap before the current window began, in
    whole microseconds (the kernel's slot keeps it in 32 bits, saturating);
    0 for a pair's first window.
    """

    ts1: int
    ts2: int
    c: int
    dc: int
    mark: int
    known: bool = False
    gap_us: int = 0


@dataclass(frozen=True, slots=True)
class MasterRecord:
    """One (i, D_addr) entry of the master's M_DB: ts1, ts2, c."""

    ts1: int
    ts2: int
    c: int


def rate_exceeds(count: int, ts1: int, ts2: int, limit_pps: int) -> bool:
    """``count / (ts2 - ts1) > limit`` in packets per second, in integers."""
    return count * NS_PER_S > limit_pps * (ts2 - ts1)


def sync_master(
    local: LocalRecord | None, master: MasterRecord | None, p: Params
) -> tuple[LocalRecord | None, MasterRecord | None]:
    """Algorithm 1 for one (i, D_addr): returns the new (L_DB, M_DB) entries.

    Three cases, as in the paper: the pair is in both databases (lines 5-25),
    only in M_DB (lines 26-28), only in L_DB (lines 31-33). A pair in neither
    stays absent.
    """
    if local is None and master is None:
        return None, None
    if local is None:
        assert master is not None
        # Lines 26-28: a pair counted elsewhere; adopt the master's window.
        return LocalRecord(ts1=master.ts1, ts2=master.ts2, c=master.c, dc=0, mark=0), master
    if master is None:
        # Lines 31-33: ts1 = ts1', ts2 = ts2', c = c'. The paper leaves L_DB
        # untouched here (dc' is not reset); we follow it literally. The
        # gossip merge does not use this path and counts exactly instead.
        return local, MasterRecord(ts1=local.ts1, ts2=local.ts2, c=local.c)
    return _sync_both(local, master, p)


def _sync_both(
    local: LocalRecord, master: MasterRecord, p: Params
) -> tuple[LocalRecord, MasterRecord]:
    """Lines 5-25: reconcile one pair present in both L_DB and M_DB."""
    ts1_l, ts2_l, c_l, dc_l = local.ts1, local.ts2, local.c, local.dc
    ts1_m, ts2_m, c_m = master.ts1, master.ts2, master.c

    # Line 5: a window restarted locally by the idle rule, starting more than
    # T_T1 after the master's window, replaces the master's (lines 6-8).
    if local.mark == 1 and ts1_l - ts1_m > p.t_t1:
        return (
            LocalRecord(
                ts1=ts1_l, ts2=ts2_l, c=c_l, dc=0, mark=0, known=local.known, gap_us=local.gap_us
            ),
            MasterRecord(ts1=ts1_l, ts2=ts2_l, c=c_l),
        )

    # Lines 9-10: otherwise clear the mark and merge the windows.
    if ts2_l < ts2_m:
        # Lines 11-12: the local window ends earlier; take the later end.
        ts2_l = ts2_m
    elif ts2_l - ts1_m > p.t_t4:
        # Lines 13-17: the window grew past T_T4; shrink it by the factor r
        # and divide the master's count by the same factor.
        ts1_l = ts2_l - (ts2_l - ts1_m) // p.r  # line 14
        c_m = c_m // p.r  # line 15
        ts1_m = ts1_l
        ts2_m = ts2_l
    else:
        # Lines 18-19: the master takes the later local end.
        ts2_m = ts2_l

    if ts1_l > ts1_m:
        # Lines 20-21: the local window starts later; take the earlier start.
        ts1_l = ts1_m
    elif ts2_l - ts1_l > p.t_t4:
        # Lines 22-23: a local window longer than T_T4 moves the master's
        # start (the decayed start of line 14 lands here as a no-op).
        ts1_m = ts1_l

    # Lines 24-25: the master adds what this proxy counted since the last
    # sync; both then hold the same count and dc' restarts at 0.
    c_l = c_m + dc_l
    c_m = c_l
    return (
        LocalRecord(
            ts1=ts1_l, ts2=ts2_l, c=c_l, dc=0, mark=0, known=local.known, gap_us=local.gap_us
        ),
        MasterRecord(ts1=ts1_m, ts2=ts2_m, c=c_m),
    )


GAP_US_MAX = 0xFFFFFFFF  # the kernel's gap_us is 32 bits (~71 minutes), saturating


def _count_packet(record: LocalRecord | None, now: int, p: Params) -> LocalRecord:
    """Algorithm 2, lines 1-13: open, restart or extend the pair's window and
    count the packet (counted even if it is then dropped, as in the paper)."""
    if record is None:
        # A pair never seen: a fresh window at this packet, mark' = 0.
        record = LocalRecord(ts1=now, ts2=now, c=0, dc=0, mark=0)
    elif now - record.ts2 > p.t_t1:
        # Idle longer than T_T1: restart the window and mark the restart so
        # that the next sync lets it replace the master's (Alg. 1 line 5).
        gap_us = min((now - record.ts2) // 1000, GAP_US_MAX)
        record = LocalRecord(ts1=now, ts2=record.ts2, c=0, dc=0, mark=1, known=True, gap_us=gap_us)
    return replace(record, ts2=now, c=record.c + 1, dc=record.dc + 1)


class Window(Protocol):
    """A counted window: a pair's L_DB record, or its mesh-wide view."""

    @property
    def ts1(self) -> int: ...
    @property
    def ts2(self) -> int: ...
    @property
    def c(self) -> int: ...


@dataclass(frozen=True, slots=True)
class DestinationAggregate:
    """Lines 18-20 for one destination D: the earliest start, the latest end
    and the summed count of every client's window towards D, and ``clients``,
    how many windows that is: n(D) of the fair-share policy. The same record
    for one proxy's table (:func:`destination_aggregate`), the mesh's view
    (``GossipState.destination_view``) and the kernel's aggregate.

    In the mesh's view under ``fair-share``, ``ts1`` is the start that makes
    ``c / (ts2 - ts1)`` the sum of the clients' own rates
    (:func:`fold_destination` with ``rate_floor``)."""

    ts1: int
    ts2: int
    c: int
    clients: int


def is_established(w: Window, p: Params) -> bool:
    """A pair that proved itself (issue 11): at least ``admit_k`` packets and
    a window longer than T_T2, so it has a rate the pair rule (line 14) and
    the fair share can judge. A forged source sends one packet and never
    is; a restarted window (lines 4-7) is young again."""
    return w.c >= p.admit_k and w.ts2 - w.ts1 > p.t_t2


def is_established_view(w: Window, p: Params) -> bool:
    """A mesh-wide pair view that proved itself: a window longer than T_T2,
    so at least two packets that far apart (a forged source's window is one
    instant). Not :func:`is_established`'s ``admit_k``: Algorithm 1 divides
    a view's count by r past T_T4 (lines 13-17), so a steady client of a few
    packets per T_T4 falls under ``admit_k`` after every division and would
    leave n(D) for a moment, inflating the fair share of every other."""
    return w.ts2 - w.ts1 > p.t_t2


RATE_SCALE = 1e12  # window rates in milli-packets per second: c * 1e12 / ns
RATE_MAX = 1 << 40  # one window's rate is clamped here (~1.1e9 packets/s)
_INT_MAX = (1 << 63) - 1


def window_rate(c: int, ts1: int, ts2: int, floor: int) -> int:
    """One window's rate in milli-packets per second, over at least
    ``floor`` ns (a window of one packet has no rate of its own: over T_T3
    it reads what a client sending that often would).

    The one float computation of the core: ``floor(float(c) * 1e12 /
    float(length))`` in IEEE float64, correctly rounded at each step, so the
    vectorised fold (numpy float64, the same two operations) gives the same
    integer bit for bit; sums of these integers are exact in any order."""
    length = max(ts2 - ts1, floor, 1)
    return min(math.floor(float(min(c, _INT_MAX)) * RATE_SCALE / float(length)), RATE_MAX)


def rate_start(ts1: int, ts2: int, c: int, rate: int) -> int:
    """The window start that makes ``c / (ts2 - start)`` read ``rate``
    (milli-packets per second): ``ts2 - floor(c * 1e12 / rate)``, at least 0;
    ``ts1`` when there is no rate."""
    if rate <= 0:
        return ts1
    length = math.floor(float(min(c, _INT_MAX)) * RATE_SCALE / float(rate))
    return ts2 - min(length, ts2)


def fold_destination(
    windows: Iterable[Window],
    rate_floor: int | None = None,
    established_under: Params | None = None,
    views_established_under: Params | None = None,
) -> DestinationAggregate | None:
    """Lines 18-20 over ``windows``, the clients' windows towards one D: min
    ts1, max ts2, sum c and n(D); None when there are none.

    ``c_i + dc_i`` of the paper is the local ``c'_i``: after a sync c' = c and
    dc' = 0, and every packet increments both, so summing c is the rule.

    ``rate_floor`` (the mesh's view under ``fair-share``: T_T3): the window
    starts where ``sum c / (ts2 - ts1)`` is the sum of the windows' own rates
    (:func:`window_rate`, each over at least ``rate_floor``), not at the
    earliest start. The clients' windows start at different times (each
    restarts, and is divided by r past T_T4, on its own), so the literal
    min ts1 spans older windows than most counts cover: a botnet of steady
    bots reads about 3/4 of its rate, and when a dead proxy's rows leave,
    their counts leave the sum while the window still starts at the oldest
    start, a dip that lets the attack through for a moment. The sum of
    rates follows the windows that still count.

    n(D) counts every window, or with ``established_under`` only the
    established ones (:func:`is_established`): the fair-share policy's n(D),
    which forged one-packet sources cannot dilute; the mesh's views use
    ``views_established_under`` (:func:`is_established_view`). ts1, ts2 and
    c always take every window."""
    ts1: int | None = None
    ts2 = 0
    total = 0
    clients = 0
    rate = 0
    for w in windows:
        ts1 = w.ts1 if ts1 is None else min(ts1, w.ts1)
        ts2 = max(ts2, w.ts2)
        total += w.c
        if established_under is not None:
            clients += is_established(w, established_under)
        elif views_established_under is not None:
            clients += is_established_view(w, views_established_under)
        else:
            clients += 1
        if rate_floor is not None:
            rate += window_rate(w.c, w.ts1, w.ts2, rate_floor)
    if ts1 is None:
        return None
    if rate_floor is not None:
        ts1 = rate_start(ts1, ts2, total, rate)
    return DestinationAggregate(ts1=ts1, ts2=ts2, c=total, clients=clients)


def destination_rate_floor(p: Params) -> int | None:
    """The ``rate_floor`` of the mesh's destination views: T_T3 under
    ``fair-share``; None (lines 18-20 as written) under ``paper``."""
    return p.t_t3 if p.policy is Policy.FAIR_SHARE else None


S = TypeVar("S", bound=Hashable)  # a client's key, opaque to the model
D = TypeVar("D", bound=Hashable)  # a destination's key


def fold_destinations(
    windows: Iterable[tuple[D, Window]],
) -> dict[D, DestinationAggregate]:
    """:func:`fold_destination` of every destination, from ``(D, window)`` pairs."""
    by_destination: dict[D, list[Window]] = {}
    for dst, w in windows:
        by_destination.setdefault(dst, []).append(w)
    out: dict[D, DestinationAggregate] = {}
    for dst, ws in by_destination.items():
        agg = fold_destination(ws)
        assert agg is not None
        out[dst] = agg
    return out


def destination_aggregate(
    table: Mapping[tuple[S, D], LocalRecord], dst: D, established_under: Params | None = None
) -> DestinationAggregate | None:
    """:func:`fold_destination` of the clients of ``dst`` in one L_DB. The
    kernel keeps this aggregate incrementally; the model recomputes it."""
    return fold_destination(
        (rec for (_src, d), rec in table.items() if d == dst),
        established_under=established_under,
    )


ADMIT_UNIT = 10**6
"""Tokens of the admission budget are micro-packets (one young packet costs
ADMIT_UNIT), so that a refill over a few ns at a few packets/s is not lost
to rounding; the kernel keeps them in 32 bits (admit_burst <= 4000)."""

_REFILL_FULL_NS = 1 << 40  # an idle gap this long refills any bucket (and bounds the product)


@dataclass(frozen=True, slots=True)
class AdmissionBudget:
    """One destination's admission budget: a token bucket of ``tokens``
    micro-packets, refilled at admit_rate/s up to admit_burst packets, as of
    ``last``, the latest packet towards D (the kernel's destination ts2);
    ``c``: the packets of pairs dropped on probation (never entered in the
    table), which D's count includes all the same."""

    tokens: int
    last: int
    c: int = 0


def _refill(budget: AdmissionBudget | None, now: int, p: Params) -> AdmissionBudget:
    """The bucket at ``now``: full when D is new; else refilled for the time
    since D's last packet, exactly as the kernel (integer micro-packets,
    elapsed * rate // 1000, a gap of 2^40 ns or more refills fully)."""
    cap = p.admit_burst * ADMIT_UNIT
    if budget is None:
        return AdmissionBudget(cap, now)
    if now <= budget.last:
        return budget
    elapsed = now - budget.last
    if elapsed >= _REFILL_FULL_NS:
        return replace(budget, tokens=cap, last=now)
    tokens = min(cap, budget.tokens + elapsed * p.admit_rate // 1000)
    return replace(budget, tokens=tokens, last=now)


def admission_aggregate(
    table: Mapping[tuple[S, D], LocalRecord],
    budgets: Mapping[D, AdmissionBudget],
    dst: D,
    p: Params,
) -> DestinationAggregate | None:
    """D's aggregate under fair-share: lines 18-20 over its pairs in
    ``table`` (n: the established ones), plus the packets dropped on
    probation (their count, and D's latest packet as ts2): what the kernel's
    destination slot holds."""
    agg = destination_aggregate(table, dst, p)
    budget = budgets.get(dst)
    if agg is None or budget is None:
        return agg
    return replace(agg, ts2=max(agg.ts2, budget.last), c=agg.c + budget.c)


def _pair_over_limit(rec: LocalRecord, p: Params) -> bool:
    """Line 14: the pair's window is longer than T_T2 and its rate over T_F1."""
    return rec.ts2 - rec.ts1 > p.t_t2 and rate_exceeds(rec.c, rec.ts1, rec.ts2, p.t_f1)


def _destination_over_limit(agg: DestinationAggregate, p: Params) -> bool:
    """Line 21: D's window is longer than T_T3 and its rate over T_F2."""
    return agg.ts2 - agg.ts1 > p.t_t3 and rate_exceeds(agg.c, agg.ts1, agg.ts2, p.t_f2)


def filter_packet(
    table: MutableMapping[tuple[S, D], LocalRecord],
    src: S,
    dst: D,
    now: int,
    p: Params,
) -> Verdict:
    """Algorithm 2 for one packet from ``src`` to ``dst`` at time ``now``.

    Updates ``table`` (the L_DB) in place and returns the verdict. The
    destination rule is the paper's literal one (lines 21-23): while D is
    over T_F2, every packet to D is dropped, whoever sends it.
    """
    rec = _count_packet(table.get((src, dst)), now, p)
    table[(src, dst)] = rec
    if _pair_over_limit(rec, p):
        return Verdict.DROP_PAIR  # line 15, with an overload warning
    agg = destination_aggregate(table, dst)
    assert agg is not None  # the pair itself was just written
    if _destination_over_limit(agg, p):
        return Verdict.DROP_DEST  # lines 21-23
    return Verdict.PASS


def filter_packet_fair_share(
    table: MutableMapping[tuple[S, D], LocalRecord],
    src: S,
    dst: D,
    now: int,
    p: Params,
    clients: int | None = None,
    budgets: MutableMapping[D, AdmissionBudget] | None = None,
) -> Verdict:
    """Algorithm 2 with the ``fair-share`` destination policy (docs/design.md).

    Identical to :func:`filter_packet` up to line 21. While D is over T_F2,
    an established pair (:func:`is_established`) is dropped only when its
    own rate exceeds D's fair share ``T_F2 / n(D)``, so slow, long-lived
    clients keep reaching D; a young pair (too few packets or too short a
    window to have a rate: a forged source is one) takes a token from D's
    admission budget (``budgets[dst]``, :class:`AdmissionBudget`) and is
    dropped when there is none, so a forged flood is capped at admit_rate
    while new real clients still get in. A young window of a *known* pair
    (``LocalRecord.known``: its window restarted before, so it is a source
    that came back, as a slow device does between requests) is judged by the
    share test over its window plus the idle gap before it (``gap_us``: its
    c packets came after that gap), so slow clients that open a new window with
    every request neither spend nor wait for the budget, while one above the
    share is dropped. The mesh counts known pairs in n(D) (a pair whose row
    moved to a later packet, ``GossipState._known``), so a flood of real
    sources each slower than one packet per T_T1 cannot keep the share
    high; one table alone counts its established pairs. ``n(D)`` is the number of
    established clients towards D across the mesh; the agents know it and
    pass it as ``clients``; by default the established clients in ``table``
    are counted. The share test is ``c * 10**9 * n > T_F2 * (ts2 - ts1)``.

    Probation: a pair not yet in ``table`` whose packet finds D (with the
    packet counted) over T_F2 and D's budget empty is dropped without being
    entered, its packet counted into D only (``budget.c``); so a forged
    flood neither fills L_DB nor evicts anyone (the kernel: no pair slot).

    ``budgets`` must be the same mapping for every packet of ``table`` (the
    bucket refills with every packet to D, whatever its verdict); None
    keeps no bucket, so every young packet sees a full one.
    """
    old = table.get((src, dst))
    had_dest = budgets is not None and dst in budgets
    budget = _refill(budgets.get(dst) if budgets is not None else None, now, p)
    if budgets is not None:
        budgets[dst] = budget
        if old is None and had_dest and budget.tokens < ADMIT_UNIT:
            agg = destination_aggregate(table, dst, p)
            if agg is not None:
                with_it = replace(
                    agg, ts1=min(agg.ts1, now), ts2=budget.last, c=agg.c + budget.c + 1
                )
                if _destination_over_limit(with_it, p):
                    budgets[dst] = replace(budget, c=budget.c + 1)
                    return Verdict.DROP_DEST
    rec = _count_packet(old, now, p)
    table[(src, dst)] = rec
    if _pair_over_limit(rec, p):
        return Verdict.DROP_PAIR
    if budgets is not None:
        agg = admission_aggregate(table, budgets, dst, p)
    else:
        agg = destination_aggregate(table, dst, p)
    assert agg is not None
    if not _destination_over_limit(agg, p):
        return Verdict.PASS
    n = max(1, clients if clients is not None else agg.clients)
    window = rec.ts2 - rec.ts1
    if not is_established(rec, p):
        if not rec.known:
            if budget.tokens < ADMIT_UNIT:
                return Verdict.DROP_DEST
            if budgets is not None:
                budgets[dst] = replace(budget, tokens=budget.tokens - ADMIT_UNIT)
            return Verdict.PASS
        # A known pair's c packets came after an idle gap (longer than
        # T_T1) before this window began: over the window plus that gap it
        # has a rate the fair share can judge without the budget.
        window += rec.gap_us * 1000
    if rec.c * NS_PER_S * n > p.t_f2 * window:
        return Verdict.DROP_DEST
    return Verdict.PASS
