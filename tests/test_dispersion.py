"""Dispersion: clients go to proxies with spare capacity, never to overloaded
ones while any other can take them, and overload does not flap."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from xpro_mesh.core.dispersion import plan_steering

loads = st.dictionaries(
    st.sampled_from([f"p{i}" for i in range(8)]),
    st.floats(min_value=0, max_value=1e6, allow_nan=False),
    min_size=1,
)


@given(loads=loads, t_w=st.floats(min_value=1, max_value=1e6))
def test_weights_are_a_distribution_over_the_known_proxies(
    loads: dict[str, float], t_w: float
) -> None:
    s = plan_steering(loads, t_w)
    assert set(s.weights) == set(loads)
    assert sum(s.weights.values()) == pytest.approx(1.0)
    assert all(w >= 0 for w in s.weights.values())


@given(loads=loads, t_w=st.floats(min_value=1, max_value=1e6))
def test_overloaded_proxies_get_no_clients_while_another_has_room(
    loads: dict[str, float], t_w: float
) -> None:
    s = plan_steering(loads, t_w)
    assert s.overloaded == {n for n, w in loads.items() if w > t_w}
    if len(s.overloaded) < len(loads):
        assert all(s.weights[n] == 0 for n in s.overloaded)


@given(loads=loads, t_w=st.floats(min_value=1, max_value=1e6))
def test_a_less_loaded_proxy_never_gets_less_than_a_busier_one(
    loads: dict[str, float], t_w: float
) -> None:
    s = plan_steering(loads, t_w)
    for a in loads:
        for b in loads:
            if a not in s.overloaded and b not in s.overloaded and loads[a] < loads[b]:
                assert s.weights[a] >= s.weights[b]


def test_an_overloaded_proxy_is_released_only_below_the_hysteresis_band() -> None:
    first = plan_steering({"a": 1200, "b": 100}, t_w=1000, hysteresis=0.2)
    assert first.overloaded == {"a"}
    # 900 is under T_W but inside the band (>= 800): still overloaded.
    held = plan_steering({"a": 900, "b": 100}, 1000, 0.2, first.overloaded)
    assert held.overloaded == {"a"} and held.weights["a"] == 0
    released = plan_steering({"a": 700, "b": 100}, 1000, 0.2, held.overloaded)
    assert released.overloaded == frozenset() and released.weights["a"] > 0
    # Without a previous overload, 900 is simply in service.
    assert plan_steering({"a": 900, "b": 100}, 1000, 0.2).overloaded == frozenset()


def test_when_every_proxy_is_overloaded_clients_spread_over_all() -> None:
    s = plan_steering({"a": 5000, "b": 3000}, t_w=1000)
    assert s.overloaded == {"a", "b"}
    assert s.weights["a"] == pytest.approx(0.5) and s.weights["b"] == pytest.approx(0.5)


def test_bad_thresholds_are_refused() -> None:
    with pytest.raises(ValueError, match="t_w"):
        plan_steering({"a": 1}, 0)
    with pytest.raises(ValueError, match="hysteresis"):
        plan_steering({"a": 1}, 10, hysteresis=1.0)
