"""Dispersion (DeDoS, Demoulin et al., ACSAC 2018): steer clients away from
overloaded proxies towards peers with spare capacity.

Every proxy publishes its workload W on the gossip (packets per second
arriving at its filter). From the loads it knows, any node computes the same
steering: a proxy above ``T_W`` is *overloaded* and gets no new clients;
the others share them in proportion to their spare capacity ``T_W - W``
(inverse load, docs/design.md "Dispersion", bounded so an idle proxy is not a black
hole for everything). Hysteresis against oscillation: an overloaded proxy is
released only once W falls below ``(1 - hysteresis) * T_W``, so a proxy
that sheds clients does not flap back into service at the first dip.

Pure: no I/O, no clock; the agent feeds the loads of its live members.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["Steering", "plan_steering"]


@dataclass(frozen=True, slots=True)
class Steering:
    """Where new clients should go: a weight per live proxy (summing to 1)
    and which proxies are overloaded (weight 0 unless every one is)."""

    weights: Mapping[str, float]
    overloaded: frozenset[str]


def plan_steering(
    loads: Mapping[str, float],
    t_w: float,
    hysteresis: float = 0.2,
    previous: frozenset[str] = frozenset(),
) -> Steering:
    """The steering for ``loads`` (node id → packets/s in) under threshold ``t_w``.

    ``previous`` is the overloaded set of the last call (hysteresis).
    With no loads there is nothing to steer to: empty weights.
    """
    if t_w <= 0:
        raise ValueError(f"t_w must be > 0, got {t_w}")
    if not 0 <= hysteresis < 1:
        raise ValueError(f"hysteresis must be in [0, 1), got {hysteresis}")
    release = (1 - hysteresis) * t_w
    overloaded = frozenset(
        node
        for node, w in loads.items()
        if w > t_w or (node in previous and w >= release)
    )
    candidates = [n for n in loads if n not in overloaded] or list(loads)
    if not candidates:
        return Steering(weights={}, overloaded=overloaded)
    # Spare capacity, with a floor of 5 % of T_W so that proxies all near
    # the threshold still share by load instead of by rounding noise.
    floor = 0.05 * t_w
    spare = {n: max(t_w - loads[n], 0.0) + floor for n in candidates}
    total = sum(spare.values())
    weights = {n: (spare[n] / total if n in spare else 0.0) for n in sorted(loads)}
    return Steering(weights=weights, overloaded=overloaded)
