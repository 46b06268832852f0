"""Dispersion (DeDoS): good clients go where the capacity is, the weights do
not oscillate under steady load, and the DeDoS timing rules hold."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xpro_mesh.core.dispersion import (
    Dispersion,
    DispersionParams,
    LoadState,
    ProxyLoad,
    load_state,
    occupancy,
    plan,
    target_weights,
)

S = 1_000_000_000
TICK = S // 10  # DeDoS: statistics every 100 ms
P = DispersionParams(capacity_pps=1000.0)
NAMES = [f"p{i}" for i in range(6)]

proxy_loads = st.builds(
    ProxyLoad,
    packets_in_per_s=st.floats(min_value=0, max_value=5000),
    drop_ratio=st.floats(min_value=0, max_value=1),
    loop_lag_ms=st.floats(min_value=0, max_value=500),
)
load_maps = st.dictionaries(st.sampled_from(NAMES), proxy_loads, min_size=1)


def idle(pps: float = 0.0, drop: float = 0.0, lag: float = 0.0) -> ProxyLoad:
    return ProxyLoad(pps, drop, lag)


@given(loads=load_maps)
def test_target_weights_are_a_distribution_over_the_live_proxies(
    loads: dict[str, ProxyLoad],
) -> None:
    w = target_weights(loads, P)
    assert set(w) == set(loads)
    assert sum(w.values()) == pytest.approx(1.0)
    assert all(x >= 0 for x in w.values())


@given(loads=load_maps, node=st.sampled_from(NAMES), extra=st.floats(0, 5000))
def test_more_cost_that_good_clients_do_not_bring_never_raises_a_weight(
    loads: dict[str, ProxyLoad], node: str, extra: float
) -> None:
    """Monotone in load: at the same good traffic, a proxy with more dropped
    packets or more loop lag never gets a larger share."""
    base = loads.setdefault(node, idle())
    good = base.packets_in_per_s * (1 - base.drop_ratio)
    pps = base.packets_in_per_s + extra
    # With no packets at all the drop ratio stays the base's: 0.0 there made
    # "busier" less dropping than a base at drop ratio 1 (hypothesis found it).
    busier = ProxyLoad(
        pps, 1 - good / pps if pps else base.drop_ratio, base.loop_lag_ms + extra / 10
    )
    before = target_weights(loads, P)[node]
    after = target_weights({**loads, node: busier}, P)[node]
    assert after <= before + 1e-9


@given(loads=load_maps, node=st.sampled_from(NAMES))
def test_dead_proxies_are_absent(loads: dict[str, ProxyLoad], node: str) -> None:
    d = plan(Dispersion(), loads, 0, P)
    alive = {n: x for n, x in loads.items() if n != node}
    after = plan(d, alive, TICK, P)
    assert set(after.weights) == set(alive)
    if alive:
        assert sum(after.weights.values()) == pytest.approx(1.0)
        # The survivors keep their proportions (where failed-over clients go).
        ratios = {n: after.weights[n] / d.weights[n] for n in alive if d.weights[n] > 0}
        assert max(ratios.values(), default=1) == pytest.approx(min(ratios.values(), default=1))


def test_an_overloaded_proxy_is_weighted_down_when_another_has_room() -> None:
    loads = {"a": idle(900), "b": idle(300), "c": idle(300)}
    w = target_weights(loads, P)
    assert load_state(occupancy(loads["a"], P), P) is LoadState.OVERLOADED
    # Its share of the good traffic is 60 %; it is offered less than a third.
    assert w["a"] < w["b"] == w["c"]


def test_a_proxy_carrying_only_dropped_attack_traffic_gets_almost_nothing() -> None:
    w = target_weights({"a": idle(900, drop=1.0), "b": idle(100)}, P)
    assert w["a"] == 0.0 and w["b"] == 1.0


def test_the_same_loads_and_clock_give_the_same_answer_on_any_node() -> None:
    rng = random.Random(7)
    seq = [
        {n: idle(rng.uniform(0, 1200), rng.uniform(0, 0.3)) for n in NAMES[:4]} for _ in range(300)
    ]
    # Two nodes see the members in a different order: same plans.
    a = b = Dispersion()
    for k, loads in enumerate(seq):
        a = plan(a, loads, k * TICK, P)
        b = plan(b, dict(reversed(list(loads.items()))), k * TICK, P)
        assert a == b


def simulate(
    good: float,
    n: int,
    ticks: int,
    follow_lag: int,
    noise: float,
    seed: int,
    params: DispersionParams = P,
) -> tuple[Dispersion, list[float]]:
    """Closed loop: good clients (``good`` × capacity in all) follow the weights
    ``follow_lag`` ticks late; they start all on p0; loads carry ``noise``."""
    rng = random.Random(seed)
    names = NAMES[:n]
    share = {nm: 1.0 if nm == "p0" else 0.0 for nm in names}
    d = Dispersion()
    history: list[dict[str, float]] = []
    for k in range(ticks):
        loads = {
            nm: idle(share[nm] * good * params.capacity_pps * (1 + rng.uniform(-noise, noise)))
            for nm in names
        }
        d = plan(d, loads, k * TICK, params)
        history.append(dict(d.weights))
        if k >= follow_lag:
            share = history[k - follow_lag]
    return d, [share[nm] * good for nm in names]


# min_change above the simulated clients' time to follow (at most 40 ticks)
FOLLOWED = DispersionParams(capacity_pps=1000.0, min_change_ns=5 * S)


@settings(max_examples=60, deadline=None)
@given(
    good=st.floats(0.05, 3.0),
    n=st.integers(2, 6),
    follow_lag=st.integers(0, 40),
    noise=st.floats(0, 0.3),
    seed=st.integers(0, 2**16),
)
def test_no_oscillation_under_steady_load(
    good: float, n: int, follow_lag: int, noise: float, seed: int
) -> None:
    """Five simulated minutes of steady load, clients up to 4 s late, loads
    up to 30 % noisy: at most two weight changes, and balanced. The rules are
    configured as docs/dispersion.md requires, ``min_change`` above the
    clients' time to follow; with less, a step acts on loads measured before
    the clients could follow the last one (a third change, seen with good =
    2.25 on 3 proxies, clients 3 s late, min_change 1 s)."""
    d, occ = simulate(
        good, n, ticks=3000, follow_lag=follow_lag, noise=noise, seed=seed, params=FOLLOWED
    )
    assert d.changes <= 2
    mean = sum(occ) / len(occ)
    assert max(occ) <= 1.3 * mean


def test_the_first_placement_starts_min_change() -> None:
    """Right after the first weights, every load still shows where the
    clients were before; a step on them chases clients that had no time to
    follow (with 30 % noise it moved p0 again 0.2 s after the placement)."""
    stale = {"p1": idle(0), "p2": idle(0)}
    d = plan(Dispersion(), {"p0": idle(1715), **stale}, 0, P)
    first = dict(d.weights)
    for k in range(1, 10):  # under min_change (1 s): a noisier reading of the same
        d = plan(d, {"p0": idle(3185), **stale}, k * TICK, P)
        assert d.weights == first and d.changes == 0
    d = plan(d, {"p0": idle(3185), **stale}, 10 * TICK, P)
    assert d.additions == 1 and d.weights["p0"] < first["p0"]  # then the rules act


def test_concentrated_load_is_spread_by_one_addition() -> None:
    d, occ = simulate(0.9, 3, ticks=50, follow_lag=10, noise=0.0, seed=1)
    assert d.additions <= 1
    assert max(occ) / (sum(occ) / 3) <= 1.3


def test_no_removal_within_20_s_of_an_addition_nor_5_s_of_a_removal() -> None:
    """Drive the rules with loads that ask for a shift back at every tick and
    check the timestamps of every change."""
    rng = random.Random(3)
    d = Dispersion()
    changes: list[tuple[int, str]] = []
    for k in range(20000):
        now = k * TICK
        hot = rng.choice(NAMES[:3]) if rng.random() < 0.003 else None
        loads = {n: idle(2500 if n == hot else rng.uniform(50, 350)) for n in NAMES[:3]}
        before = (d.additions, d.removals)
        d = plan(d, loads, now, P)
        if d.additions > before[0]:
            changes.append((now, "add"))
        if d.removals > before[1]:
            changes.append((now, "remove"))
    assert any(kind == "remove" for _, kind in changes)
    for (t0, _), (t1, k1) in itertools.pairwise(changes):
        assert t1 - t0 >= P.min_change_ns
        if k1 == "remove":
            last_add = max((t for t, k in changes if k == "add" and t < t1), default=None)
            last_rem = max((t for t, k in changes if k == "remove" and t < t1), default=None)
            assert last_add is None or t1 - last_add >= P.hold_after_addition_ns
            assert last_rem is None or t1 - last_rem >= P.removal_spacing_ns


def test_no_shift_back_until_the_proxy_was_calm_for_the_configured_time() -> None:
    params = DispersionParams(capacity_pps=1000.0, calm_ns=30 * S)
    d = plan(Dispersion(), {"a": idle(100), "b": idle(100)}, 0, params)
    t = params.min_change_ns  # the first placement's min_change passed
    d = plan(d, {"a": idle(1900), "b": idle(100)}, t, params)  # a is hot: shed
    assert d.additions == 1 and d.weights["a"] < 0.5
    shed = d.weights["a"]
    t += TICK
    # a stays over T_W for 40 s: never shifted back (its target stays low).
    while t < 40 * S:
        d = plan(d, {"a": idle(900), "b": idle(800)}, t, params)
        t += TICK
    calm_from = t
    # Then a is calm and b is busy: a takes no clients back before 30 s of calm.
    while d.weights["a"] <= shed + 1e-9:
        d = plan(d, {"a": idle(50), "b": idle(500)}, t, params)
        t += TICK
        assert t < 120 * S, "never shifted back"
    assert t - TICK - calm_from >= params.calm_ns


def test_nothing_moves_while_no_proxy_is_over_40_percent() -> None:
    d = plan(Dispersion(), {"a": idle(390), "b": idle(0)}, 0, P)
    first = dict(d.weights)
    for k in range(1, 300):
        d = plan(d, {"a": idle(390), "b": idle(10 + k)}, k * TICK, P)
    assert d.changes == 0 and d.weights == first


def test_a_joining_proxy_gets_its_target_share_and_counts_as_an_addition() -> None:
    d = plan(Dispersion(), {"a": idle(500), "b": idle(500)}, 0, P)
    d = plan(d, {"a": idle(500), "b": idle(500), "c": idle(0)}, TICK, P)
    assert d.weights["c"] == pytest.approx(1 / 3)
    assert d.weights["a"] == pytest.approx(d.weights["b"])
    assert d.additions == 1


def test_bad_parameters_are_refused_with_the_name() -> None:
    with pytest.raises(ValueError, match="t_w"):
        DispersionParams(t_w=0)
    with pytest.raises(ValueError, match="act_level"):
        DispersionParams(t_w=0.3, act_level=0.4)
    with pytest.raises(ValueError, match="deadband"):
        DispersionParams(deadband=1.0)
