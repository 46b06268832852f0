"""What one mode of a scenario did, measured where it matters: at the victim
and at the good clients (DeDoS's method), never from the filter's own
counters alone.

Pure: the inputs are the JSON documents that :mod:`xpro_mesh.lab.traffic`
writes (victim arrival bins, bots' send bins, good clients' requests), all
on one timeline (seconds since the scenario's epoch); no I/O, no clock.

Definitions (the README's "The lab" repeats them):

* ``attack_delivered_ratio``: attack packets counted at the victim over
  attack packets the bots sent, whole run.
* ``time_to_mitigate_s``: from attack start until *every* proxy's attack
  stream stays mitigated. A proxy's stream is its bots' source block (the
  third octet of the address). It is mitigated from time T when every
  window of :data:`WINDOW_BINS` bins between T and the end of the attack
  delivers at most :data:`MITIGATED_BELOW` of what its bots sent in that
  window; T is the earliest such bin boundary, and at least
  :data:`MIN_HOLD_S` of attack must remain after it (a stream that only
  looks quiet in its last second is not called mitigated). ``None`` when
  some proxy's stream never is.
* ``attack_delivered_ratio_after_mitigation``: the same ratio over the
  attack after ``attack start + time_to_mitigate_s``; without mitigation
  it is the whole attack's ratio.
* ``good_success_ratio``: good requests answered within the client's reply
  timeout over requests sent; ``good_latency_ms_p50/p99`` over the answered
  ones; the same per client group and for requests sent during the attack.
  Requests *lost in flight* are counted apart (``good_lost_in_flight``) and
  left out of the ratio: unanswered requests sent through a proxy that died
  (:class:`ProxyDeath`) from one reply timeout before its death until its
  traffic was routed elsewhere. A SIGKILLed proxy takes the packets it holds
  with it, whatever the filter does; what the ratio judges is the filtering
  of the requests that had a live path.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

WINDOW_BINS = 5  # 0.5 s at the traffic module's 100 ms bins
MITIGATED_BELOW = 0.05  # a stream is mitigated while at most 5 % of it arrives
MIN_HOLD_S = 2.0
SERIES_S = 0.5  # resolution of the attack series in the figure
GOOD_SERIES_S = 1.0  # resolution of the good-success series


@dataclass(frozen=True, slots=True)
class BinSeries:
    """Counts per bin index (bin k covers [k·bin_s, (k+1)·bin_s) since the epoch)."""

    counts: Mapping[int, int]

    def total(self, first: int | None = None, last: int | None = None) -> int:
        """Sum over bins ``first <= k < last`` (open ends when None)."""
        return sum(
            v
            for k, v in self.counts.items()
            if (first is None or k >= first) and (last is None or k < last)
        )


@dataclass(frozen=True, slots=True)
class VictimArrivals:
    """The victim's counts: per source block, attack and good arrivals."""

    bin_s: float
    attack: Mapping[int, BinSeries]
    good: Mapping[int, BinSeries]

    @classmethod
    def from_json(cls, doc: Mapping[str, object]) -> VictimArrivals:
        bins = doc["bins"]
        assert isinstance(bins, Mapping)

        def blocks(tag: str) -> dict[int, BinSeries]:
            raw = bins.get(tag, {})
            return {
                int(block): BinSeries({int(k): int(v) for k, v in series.items()})
                for block, series in raw.items()
            }

        return cls(bin_s=float(str(doc["bin_s"])), attack=blocks("attack"), good=blocks("good"))


@dataclass(frozen=True, slots=True)
class BotStream:
    """What the bots behind one proxy sent: their source block and send bins."""

    block: int
    start: float
    stop: float
    sent: BinSeries

    @classmethod
    def from_json(cls, doc: Mapping[str, object]) -> BotStream:
        raw = doc["sent_bins"]
        assert isinstance(raw, Mapping)
        return cls(
            block=int(str(doc["block"])),
            start=float(str(doc["start"])),
            stop=float(str(doc["stop"])),
            sent=BinSeries({int(k): int(v) for k, v in raw.items()}),
        )


@dataclass(frozen=True, slots=True)
class GoodRequests:
    """One good-client process's requests: (send time, latency s or None)."""

    label: str
    requests: tuple[tuple[float, float | None], ...]
    proxy: int | None = None  # the proxy the flow's packets take (None: the client picks)
    timeout: float = 0.0  # the client's reply timeout, s

    @classmethod
    def from_json(cls, doc: Mapping[str, object], proxy: int | None = None) -> GoodRequests:
        raw = doc["requests"]
        assert isinstance(raw, Sequence)
        timeout = doc.get("timeout", 0.0)
        assert isinstance(timeout, int | float)
        return cls(
            label=str(doc.get("label", "good")),
            requests=tuple((float(t), None if lat is None else float(lat)) for t, lat in raw),
            proxy=proxy,
            timeout=float(timeout),
        )


@dataclass(frozen=True, slots=True)
class ProxyDeath:
    """A whole proxy died (agent SIGKILLed, links down) at ``start``; its
    traffic took another proxy from ``rerouted`` on (s since the epoch)."""

    proxy: int
    start: float
    rerouted: float


def split_lost_in_flight(
    goods: Iterable[GoodRequests], deaths: Sequence[ProxyDeath]
) -> tuple[list[GoodRequests], list[float]]:
    """``goods`` without the requests lost in flight, and those requests'
    send times: unanswered, sent by a flow through a dying proxy from one
    reply timeout before its death up to its rerouting."""
    kept: list[GoodRequests] = []
    lost: list[float] = []
    for g in goods:
        windows = [(d.start - g.timeout, d.rerouted) for d in deaths if d.proxy == g.proxy]
        if not windows:
            kept.append(g)
            continue
        rest = []
        for t, lat in g.requests:
            if lat is None and any(t0 <= t <= t1 for t0, t1 in windows):
                lost.append(t)
            else:
                rest.append((t, lat))
        kept.append(GoodRequests(g.label, tuple(rest), g.proxy, g.timeout))
    return kept, sorted(lost)


@dataclass(frozen=True, slots=True)
class SeriesPoint:
    t: float  # start of the interval, seconds since the epoch
    value: float | None


@dataclass(frozen=True, slots=True)
class PhaseMetrics:
    """The attack and the good clients over one stretch of a run (a chaos
    scenario's before, during and after its faults)."""

    start: float
    stop: float
    attack_sent: int
    attack_delivered: int
    attack_delivered_ratio: float | None
    attack_delivered_ratio_by_block: dict[str, float | None]
    good_requests: int
    good_success_ratio: float | None
    good_lost_in_flight: int = 0  # left out of good_requests (see the module docstring)
    # From the phase's start to the first bin from which every window up to
    # the phase's end delivers at most MITIGATED_BELOW of the attack (None:
    # never within the phase); "after" is the share delivered from then on.
    time_to_remitigate_s: float | None = None
    attack_delivered_ratio_after_remitigation: float | None = None
    good_latency_ms_p50: float | None = None
    good_latency_ms_p99: float | None = None


@dataclass(frozen=True, slots=True)
class ModeMetrics:
    """The figures of one mode (JSON keys are the field names)."""

    attack_sent: int
    attack_delivered: int
    attack_delivered_ratio: float | None
    attack_delivered_ratio_after_mitigation: float | None
    time_to_mitigate_s: float | None
    time_to_mitigate_by_block: dict[str, float | None]
    good_requests: int
    good_success_ratio: float | None
    good_success_ratio_under_attack: float | None
    good_lost_in_flight: int
    good_latency_ms_p50: float | None
    good_latency_ms_p99: float | None
    good_success_by_group: dict[str, float | None]
    attack_pps: tuple[SeriesPoint, ...] = field(default=())
    attack_sent_pps: tuple[SeriesPoint, ...] = field(default=())
    good_success: tuple[SeriesPoint, ...] = field(default=())
    good_pps: tuple[SeriesPoint, ...] = field(default=())  # good requests at the victim
    good_sent_pps: tuple[SeriesPoint, ...] = field(default=())  # good requests sent
    phases: dict[str, PhaseMetrics] = field(default_factory=dict)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) by linear interpolation; None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _ratio(num: int, den: int) -> float | None:
    return num / den if den > 0 else None


def stream_mitigated_at(
    sent: BinSeries,
    delivered: BinSeries,
    first_bin: int,
    end_bin: int,
    bin_s: float,
    *,
    window: int = WINDOW_BINS,
    below: float = MITIGATED_BELOW,
    min_hold_s: float = MIN_HOLD_S,
) -> float | None:
    """The earliest time (s since the epoch, a bin boundary ≥ the attack's
    first bin) from which every ``window``-bin window up to ``end_bin``
    delivers at most ``below`` of what was sent in it; None if that leaves
    less than ``min_hold_s`` of attack (or never happens)."""
    last_bad: int | None = None
    for k in range(first_bin, end_bin - window + 1):
        s = sent.total(k, k + window)
        if s and delivered.total(k, k + window) > below * s:
            last_bad = k
    start = first_bin if last_bad is None else last_bad + 1
    if (end_bin - start) * bin_s < min_hold_s:
        return None
    return start * bin_s


def attack_metrics(
    victim: VictimArrivals, bots: Iterable[BotStream]
) -> tuple[int, int, float | None, float | None, float | None, dict[str, float | None]]:
    """(sent, delivered, ratio, ratio after mitigation, time to mitigate,
    time to mitigate per block) over the bots' streams."""
    streams: dict[int, list[BotStream]] = {}
    for b in bots:
        streams.setdefault(b.block, []).append(b)
    if not streams:
        return 0, 0, None, None, None, {}
    bin_s = victim.bin_s
    start = min(b.start for bs in streams.values() for b in bs)
    stop = max(b.stop for bs in streams.values() for b in bs)
    first_bin = math.floor(start / bin_s + 1e-9)
    end_bin = math.ceil(stop / bin_s - 1e-9)
    empty = BinSeries({})
    sent_by_block: dict[int, BinSeries] = {}
    for block, bs in streams.items():
        merged: dict[int, int] = {}
        for b in bs:
            for k, v in b.sent.counts.items():
                merged[k] = merged.get(k, 0) + v
        sent_by_block[block] = BinSeries(merged)
    sent = sum(s.total() for s in sent_by_block.values())
    delivered = sum(victim.attack.get(block, empty).total() for block in streams)
    by_block: dict[str, float | None] = {}
    mitigated: list[float | None] = []
    for block, s in sorted(sent_by_block.items()):
        if s.total() == 0:
            continue
        at = stream_mitigated_at(s, victim.attack.get(block, empty), first_bin, end_bin, bin_s)
        by_block[str(block)] = None if at is None else round(max(0.0, at - start), 3)
        mitigated.append(at)
    if not mitigated or any(m is None for m in mitigated):
        ttm = None
        after = _ratio(delivered, sent)
    else:
        at = max(m for m in mitigated if m is not None)
        ttm = round(max(0.0, at - start), 3)
        k = round(at / bin_s)
        # Arrivals trail sends by well under a bin; one bin past the end
        # catches packets still in flight when the bots stopped.
        after = _ratio(
            sum(victim.attack.get(b, empty).total(k, end_bin + 1) for b in streams),
            sum(s.total(k, end_bin + 1) for s in sent_by_block.values()),
        )
    return sent, delivered, _ratio(delivered, sent), after, ttm, by_block


def _series(
    counts: Iterable[BinSeries], bin_s: float, horizon: float, step: float
) -> tuple[SeriesPoint, ...]:
    per = max(1, round(step / bin_s))
    total: dict[int, int] = {}
    for series in counts:
        for k, v in series.counts.items():
            total[k // per] = total.get(k // per, 0) + v
    n = math.ceil(horizon / (per * bin_s))
    return tuple(
        SeriesPoint(t=round(i * per * bin_s, 3), value=total.get(i, 0) / (per * bin_s))
        for i in range(n)
    )


def _send_bins(goods: Iterable[GoodRequests], bin_s: float) -> BinSeries:
    counts: dict[int, int] = {}
    for g in goods:
        for t, _lat in g.requests:
            k = math.floor(t / bin_s)
            counts[k] = counts.get(k, 0) + 1
    return BinSeries(counts)


def good_series(
    goods: Iterable[GoodRequests], horizon: float, step: float = GOOD_SERIES_S
) -> tuple[SeriesPoint, ...]:
    """Share of requests answered, per ``step`` of send time (None: no requests)."""
    sent: dict[int, int] = {}
    ok: dict[int, int] = {}
    for g in goods:
        for t, lat in g.requests:
            i = math.floor(t / step)
            sent[i] = sent.get(i, 0) + 1
            ok[i] = ok.get(i, 0) + (lat is not None)
    n = math.ceil(horizon / step)
    return tuple(
        SeriesPoint(t=round(i * step, 3), value=_ratio(ok.get(i, 0), sent.get(i, 0)))
        for i in range(n)
    )


def phase_metrics(
    victim: VictimArrivals,
    bots: Iterable[BotStream],
    goods: Iterable[GoodRequests],
    start: float,
    stop: float,
    lost: Sequence[float] = (),
) -> PhaseMetrics:
    """The attack delivered (in all and per source block) and the good
    requests answered over ``[start, stop)`` s since the epoch: bins whose
    start lies in it, requests sent in it; ``goods`` without the requests
    lost in flight, whose send times are ``lost``."""
    first = math.floor(start / victim.bin_s + 1e-9)
    last = math.floor(stop / victim.bin_s + 1e-9)
    empty = BinSeries({})
    sent_by: dict[int, int] = {}
    for b in bots:
        sent_by[b.block] = sent_by.get(b.block, 0) + b.sent.total(first, last)
    got_by = {block: victim.attack.get(block, empty).total(first, last) for block in sent_by}
    requests = [lat for g in goods for t, lat in g.requests if start <= t < stop]
    answered = [lat * 1000.0 for lat in requests if lat is not None]
    ttr, after = _remitigation(victim, bots, first, last)
    return PhaseMetrics(
        start=start,
        stop=stop,
        attack_sent=sum(sent_by.values()),
        attack_delivered=sum(got_by.values()),
        attack_delivered_ratio=_ratio(sum(got_by.values()), sum(sent_by.values())),
        attack_delivered_ratio_by_block={
            str(block): _ratio(got_by[block], sent) for block, sent in sorted(sent_by.items())
        },
        good_requests=len(requests),
        good_success_ratio=_ratio(sum(1 for lat in requests if lat is not None), len(requests)),
        good_lost_in_flight=sum(1 for t in lost if start <= t < stop),
        time_to_remitigate_s=None if ttr is None else round(max(0.0, ttr - start), 3),
        attack_delivered_ratio_after_remitigation=after,
        good_latency_ms_p50=percentile(answered, 50),
        good_latency_ms_p99=percentile(answered, 99),
    )


def _remitigation(
    victim: VictimArrivals, bots: Iterable[BotStream], first: int, last: int
) -> tuple[float | None, float | None]:
    """(time the attack is cut again, share delivered from then to ``last``)
    inside bins [first, last): the whole botnet as one stream, judged as
    :func:`stream_mitigated_at` judges a block, holding at least one window
    (a phase is shorter than a run: MIN_HOLD_S would leave none)."""
    sent: dict[int, int] = {}
    got: dict[int, int] = {}
    empty = BinSeries({})
    blocks = set()
    for b in bots:
        blocks.add(b.block)
        for k, v in b.sent.counts.items():
            if first <= k < last:
                sent[k] = sent.get(k, 0) + v
    for block in blocks:
        for k, v in victim.attack.get(block, empty).counts.items():
            if first <= k < last:
                got[k] = got.get(k, 0) + v
    s, g = BinSeries(sent), BinSeries(got)
    if s.total() == 0:
        return None, None
    at = stream_mitigated_at(s, g, first, last, victim.bin_s, min_hold_s=WINDOW_BINS * victim.bin_s)
    if at is None:
        return None, None
    k = round(at / victim.bin_s)
    return at, _ratio(g.total(k, last), s.total(k, last))


def mode_metrics(
    victim: VictimArrivals,
    bots: Sequence[BotStream],
    goods: Sequence[GoodRequests],
    horizon: float,
    phases: Iterable[tuple[str, float, float]] = (),
    deaths: Sequence[ProxyDeath] = (),
) -> ModeMetrics:
    """Every figure of one mode from its raw documents; ``horizon`` is the
    end of the traffic (s since the epoch), for the series; ``phases``
    (label, start, stop) are reported on their own as well; the good
    requests lost in flight with the proxies of ``deaths`` are counted apart."""
    sent, delivered, ratio, after, ttm, by_block = attack_metrics(victim, bots)
    goods, lost = split_lost_in_flight(goods, deaths)
    requests = [r for g in goods for r in g.requests]
    latencies = [lat * 1000.0 for _, lat in requests if lat is not None]
    if bots:
        a0, a1 = min(b.start for b in bots), max(b.stop for b in bots)
        during = [lat for t, lat in requests if a0 <= t < a1]
        under_attack = _ratio(sum(1 for lat in during if lat is not None), len(during))
    else:
        under_attack = None
    groups: dict[str, list[tuple[float, float | None]]] = {}
    for g in goods:
        groups.setdefault(g.label, []).extend(g.requests)
    by_group = {
        label: _ratio(sum(1 for _, lat in rs if lat is not None), len(rs))
        for label, rs in sorted(groups.items())
    }
    p50 = percentile(latencies, 50)
    p99 = percentile(latencies, 99)
    return ModeMetrics(
        attack_sent=sent,
        attack_delivered=delivered,
        attack_delivered_ratio=ratio,
        attack_delivered_ratio_after_mitigation=after,
        time_to_mitigate_s=ttm,
        time_to_mitigate_by_block=by_block,
        good_requests=len(requests),
        good_success_ratio=_ratio(len(latencies), len(requests)),
        good_success_ratio_under_attack=under_attack,
        good_lost_in_flight=len(lost),
        good_latency_ms_p50=None if p50 is None else round(p50, 3),
        good_latency_ms_p99=None if p99 is None else round(p99, 3),
        good_success_by_group=by_group,
        attack_pps=_series(victim.attack.values(), victim.bin_s, horizon, SERIES_S),
        attack_sent_pps=_series([b.sent for b in bots], victim.bin_s, horizon, SERIES_S),
        good_success=good_series(goods, horizon),
        good_pps=_series(victim.good.values(), victim.bin_s, horizon, SERIES_S),
        good_sent_pps=_series([_send_bins(goods, victim.bin_s)], victim.bin_s, horizon, SERIES_S),
        phases={
            label: phase_metrics(victim, bots, goods, t0, t1, lost) for label, t0, t1 in phases
        },
    )
