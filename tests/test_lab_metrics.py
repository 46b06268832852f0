"""The lab's measurements, from synthetic victim, bot and client documents:
what reached the victim, when the attack counts as mitigated, what the good
clients saw. Pure: no namespaces, no processes."""

from __future__ import annotations

from typing import Any

import pytest

from xpro_mesh.lab import metrics
from xpro_mesh.lab.metrics import BinSeries, BotStream, GoodRequests, VictimArrivals

BIN = 0.1


def victim_doc(
    attack: dict[int, dict[int, int]], good: dict[int, dict[int, int]] | None = None
) -> dict[str, Any]:
    return {
        "role": "victim",
        "bin_s": BIN,
        "bins": {
            "attack": {str(b): {str(k): v for k, v in s.items()} for b, s in attack.items()},
            "good": {str(b): {str(k): v for k, v in s.items()} for b, s in (good or {}).items()},
        },
    }


def bot_doc(block: int, start: float, stop: float, per_bin: int) -> dict[str, object]:
    first, last = round(start / BIN), round(stop / BIN)
    return {
        "role": "bot",
        "block": block,
        "start": start,
        "stop": stop,
        "sent_bins": {str(k): per_bin for k in range(first, last)},
    }


def delivered_until(
    start: float, stop: float, cut: float, per_bin: int, leak: int = 0
) -> dict[int, int]:
    """Every packet arrives before ``cut``, ``leak`` per bin after it."""
    return {
        k: (per_bin if k * BIN < cut - 1e-9 else leak)
        for k in range(round(start / BIN), round(stop / BIN))
    }


def test_unfiltered_attack_is_delivered_whole_and_never_mitigated() -> None:
    victim = VictimArrivals.from_json(
        victim_doc({100: delivered_until(5, 25, 99, 10), 101: delivered_until(5, 25, 99, 10)})
    )
    bots = [BotStream.from_json(bot_doc(b, 5, 25, 10)) for b in (100, 101)]
    sent, delivered, ratio, after, ttm, by_block = metrics.attack_metrics(victim, bots)
    assert (sent, delivered) == (4000, 4000)
    assert ratio == 1.0
    assert ttm is None
    assert after == 1.0  # no mitigation: the whole attack
    assert by_block == {"100": None, "101": None}


def test_time_to_mitigate_waits_for_the_slowest_proxy() -> None:
    victim = VictimArrivals.from_json(
        victim_doc({100: delivered_until(5, 25, 6.0, 10), 101: delivered_until(5, 25, 7.5, 10)})
    )
    bots = [BotStream.from_json(bot_doc(b, 5, 25, 10)) for b in (100, 101)]
    _sent, _delivered, ratio, after, ttm, by_block = metrics.attack_metrics(victim, bots)
    assert by_block == {"100": pytest.approx(1.0), "101": pytest.approx(2.5)}
    assert ttm == pytest.approx(2.5)
    assert after == 0.0
    assert ratio == pytest.approx((10 + 25) / 400)


def test_a_small_steady_leak_below_the_bar_still_counts_as_mitigated() -> None:
    # 1 packet of 20 per bin is 5 %: at the bar, not above it.
    victim = VictimArrivals.from_json(victim_doc({100: delivered_until(5, 25, 6.0, 20, leak=1)}))
    bots = [BotStream.from_json(bot_doc(100, 5, 25, 20))]
    *_, after, ttm, _by_block = metrics.attack_metrics(victim, bots)
    assert ttm == pytest.approx(1.0)
    assert after == pytest.approx(0.05)


def test_a_late_burst_moves_the_mitigation_time_past_it() -> None:
    series = delivered_until(5, 25, 6.0, 10)
    for k in range(150, 153):  # 15.0-15.3 s: everything gets through again
        series[k] = 10
    victim = VictimArrivals.from_json(victim_doc({100: series}))
    bots = [BotStream.from_json(bot_doc(100, 5, 25, 10))]
    *_, ttm, _ = metrics.attack_metrics(victim, bots)
    assert ttm == pytest.approx(10.3)


def test_quiet_only_at_the_very_end_is_not_mitigation() -> None:
    victim = VictimArrivals.from_json(victim_doc({100: delivered_until(5, 25, 24.0, 10)}))
    bots = [BotStream.from_json(bot_doc(100, 5, 25, 10))]
    *_, after, ttm, _ = metrics.attack_metrics(victim, bots)
    assert ttm is None
    assert after == pytest.approx(190 / 200)


def test_good_success_and_latency_percentiles() -> None:
    requests = [[t * 0.5, 0.001] for t in range(96)] + [
        [48.0, None],
        [48.5, None],
        [49, None],
        [49.5, None],
    ]
    goods = [GoodRequests.from_json({"label": "regular", "requests": requests})]
    victim = VictimArrivals.from_json(victim_doc({}))
    m = metrics.mode_metrics(victim, [], goods, horizon=50)
    assert m.good_requests == 100
    assert m.good_success_ratio == pytest.approx(0.96)
    assert m.good_latency_ms_p50 == pytest.approx(1.0)
    assert m.good_latency_ms_p99 == pytest.approx(1.0)
    assert m.attack_delivered_ratio is None and m.time_to_mitigate_s is None
    assert m.good_success_by_group == {"regular": pytest.approx(0.96)}


def test_good_success_under_attack_and_by_group() -> None:
    regular = GoodRequests.from_json(
        {"label": "regular", "requests": [[t, 0.001] for t in range(10)]}
    )
    crowd = GoodRequests.from_json(
        {"label": "crowd", "requests": [[t, None if 5 <= t < 8 else 0.002] for t in range(10)]}
    )
    bots = [BotStream.from_json(bot_doc(100, 5, 8, 1))]
    victim = VictimArrivals.from_json(victim_doc({100: {}}))
    m = metrics.mode_metrics(victim, bots, [regular, crowd], horizon=10)
    assert m.good_success_by_group == {"crowd": pytest.approx(0.7), "regular": 1.0}
    assert m.good_success_ratio_under_attack == pytest.approx(3 / 6)
    assert m.attack_delivered_ratio == 0.0


def test_series_give_packets_per_second_and_success_per_second() -> None:
    victim = VictimArrivals.from_json(victim_doc({100: {k: 10 for k in range(20, 40)}}))
    m = metrics.mode_metrics(
        victim,
        [BotStream.from_json(bot_doc(100, 2, 4, 10))],
        [GoodRequests.from_json({"requests": [[0.2, 0.001], [0.7, None], [3.1, 0.001]]})],
        horizon=5,
    )
    assert [p.t for p in m.attack_pps] == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5]
    assert [p.value for p in m.attack_pps][3:9] == [0.0, 100.0, 100.0, 100.0, 100.0, 0.0]
    assert [p.value for p in m.good_success] == [0.5, None, None, 1.0, None]


def test_percentile_interpolates_and_handles_empty() -> None:
    assert metrics.percentile([], 50) is None
    assert metrics.percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert metrics.percentile([5.0], 99) == 5.0


def test_bin_series_total_counts_half_open_ranges() -> None:
    s = BinSeries({1: 1, 2: 2, 3: 4})
    assert s.total() == 7
    assert s.total(2, 3) == 2
    assert s.total(None, 3) == 3


def test_phases_report_each_stretch_and_each_proxys_block_on_its_own() -> None:
    # Block 100 is cut throughout; block 101's proxy leaks everything
    # between 10 s and 15 s (its agent is down) and is cut again after.
    leak = {k: (10 if 100 <= k < 150 else 0) for k in range(50, 250)}
    victim = VictimArrivals.from_json(victim_doc({100: delivered_until(5, 25, 5.0, 10), 101: leak}))
    bots = [BotStream.from_json(bot_doc(b, 5, 25, 10)) for b in (100, 101)]
    goods = [GoodRequests("regular", ((9.0, 0.001), (12.0, None), (13.0, 0.001), (20.0, 0.001)))]
    m = metrics.mode_metrics(
        victim, bots, goods, 30, phases=[("before", 5, 10), ("down", 10, 15), ("after", 15, 25)]
    )
    before, down, after = (m.phases[k] for k in ("before", "down", "after"))
    assert (before.attack_sent, before.attack_delivered) == (1000, 0)
    assert (down.attack_sent, down.attack_delivered) == (1000, 500)
    assert down.attack_delivered_ratio == 0.5
    assert down.attack_delivered_ratio_by_block == {"100": 0.0, "101": 1.0}
    assert after.attack_delivered_ratio == 0.0
    assert (down.good_requests, down.good_success_ratio) == (2, 0.5)
    assert before.good_success_ratio == 1.0 and after.good_success_ratio == 1.0


def test_requests_lost_with_a_dead_proxy_are_counted_apart_from_the_filtering() -> None:
    """Proxy 1 dies at 10.0 s and its traffic takes proxy 0 from 10.3 s: its
    flow's unanswered requests sent from one reply timeout before (9.5 s) to
    the rerouting are lost in flight, counted apart and not in the ratio;
    the same flow's loss before that window, a loss through a live proxy,
    and an answered request in the window stay as they were."""
    victim = VictimArrivals.from_json(victim_doc({}))
    dying = GoodRequests(
        "regular",
        ((9.0, None), (9.6, None), (9.9, 0.001), (10.2, None), (10.5, 0.001)),
        proxy=1,
        timeout=0.5,
    )
    alive = GoodRequests("regular", ((9.6, None), (10.2, 0.001)), proxy=0, timeout=0.5)
    death = metrics.ProxyDeath(proxy=1, start=10.0, rerouted=10.3)
    m = metrics.mode_metrics(
        victim, [], [dying, alive], 30, phases=[("before", 0, 10), ("dead", 10, 20)], deaths=[death]
    )
    assert m.good_lost_in_flight == 2
    assert (m.good_requests, m.good_success_ratio) == (5, 0.6)
    before, dead = m.phases["before"], m.phases["dead"]
    assert (before.good_lost_in_flight, before.good_requests) == (1, 3)  # 9.6 via p1
    assert before.good_success_ratio == pytest.approx(1 / 3)  # 9.0 (p1) and 9.6 (p0) lost
    assert (dead.good_lost_in_flight, dead.good_requests, dead.good_success_ratio) == (1, 2, 1.0)
    # Without the death, every loss counts.
    plain = metrics.mode_metrics(victim, [], [dying, alive], 30)
    assert (plain.good_lost_in_flight, plain.good_requests) == (0, 7)


def test_a_phase_without_traffic_has_no_ratios() -> None:
    victim = VictimArrivals.from_json(victim_doc({}))
    ph = metrics.phase_metrics(victim, [], [], 0.0, 5.0)
    assert ph.attack_delivered_ratio is None and ph.good_success_ratio is None
    assert ph.attack_delivered_ratio_by_block == {}


def test_a_phase_reports_when_the_attack_is_cut_again_and_what_leaked_after() -> None:
    # The phase runs 10-20 s; the attack leaks fully for its first 1.5 s (a
    # burst after a fault) and 1 in 100 from then on.
    sent = 100
    arrivals = {k: (sent if k < 115 else 1) for k in range(100, 200)}
    victim = VictimArrivals.from_json(victim_doc({100: arrivals}))
    bots = [BotStream.from_json(bot_doc(100, 10, 20, sent))]
    goods = [GoodRequests("regular", tuple((10.0 + i / 10, 0.001 * (i + 1)) for i in range(100)))]
    ph = metrics.phase_metrics(victim, bots, goods, 10.0, 20.0)
    assert ph.time_to_remitigate_s == pytest.approx(1.5)
    assert ph.attack_delivered_ratio_after_remitigation == pytest.approx(0.01)
    assert ph.attack_delivered_ratio == pytest.approx((15 * 100 + 85) / 10_000)
    assert ph.good_latency_ms_p50 == pytest.approx(50.5)
    assert ph.good_latency_ms_p99 is not None and 99 < ph.good_latency_ms_p99 <= 100


def test_a_phase_never_cut_again_has_no_remitigation_time() -> None:
    victim = VictimArrivals.from_json(victim_doc({100: {k: 100 for k in range(100, 200)}}))
    bots = [BotStream.from_json(bot_doc(100, 10, 20, 100))]
    ph = metrics.phase_metrics(victim, bots, [], 10.0, 20.0)
    assert ph.time_to_remitigate_s is None
    assert ph.attack_delivered_ratio_after_remitigation is None
    assert ph.attack_delivered_ratio == 1.0
