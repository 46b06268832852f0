"""Dispersion (DeDoS, Demoulin et al., ACSAC 2018): move clients to where the
capacity is, automatically and without oscillating.

Every proxy publishes its workload on the gossip (packets/s arriving at its
filter, the share of them dropped, its event loop's lag). From the loads of
the live members, any node computes the same answer: how much of the good
clients' traffic each proxy should receive. Pure: no I/O, no clock; time is
an argument, and the same gossiped loads and the same clock give the same
answer on every node.

Occupancy
---------
``W`` is an *occupancy*: 1 is a full proxy. It is the larger of

* ``traffic = packets_in_per_s / capacity_pps``: the filter's work is linear
  in the packets it judges (XDP costs a constant ~100 ns a packet, softirq
  CPU follows packets in), and it is the part that moving clients changes;
* ``agent = loop_lag_ms / lag_budget_ms``: when the agent's CPU runs short
  its timers run late; a proxy whose loop lags answers probes and syncs
  late even if few packets arrive.

Only what the gossip carries enters, so that every node computes the same
occupancy for every proxy (:func:`occupancy`).

Weights: inverse occupancy, per unit of good load
-------------------------------------------------
The literal rule, weight ∝ 1/W, oscillates: W is itself the result of the
weights (clients go where the weight is), so the busy proxy of one step is
the idle one of the next (``docs/dispersion.md`` shows it). The weights here
are the multiplicative form of the same rule: each proxy's weight is its
current share of the good (passed) traffic times its inverse occupancy,
``w_i ∝ s_i / W_i``, normalised. Its fixed point is equal occupancy wherever
good clients go; with homogeneous clients it is reached in one step, and
stale loads (clients still moving) give the same target again instead of an
over-reaction. ``s_i / W_i`` needs no memory: it is ``(1 - drop_ratio) ·
traffic / W`` up to a factor common to all proxies, so an idle proxy weighs
``1 - drop_ratio`` and a proxy carrying only attack traffic almost nothing.
Occupancies under ``act_level`` (40 %) count as 40 % in that ratio: below
DeDoS's level nothing tells proxies apart, and the few milliseconds of loop
lag an idle agent shows on a busy host do not halve its weight.
A proxy over ``T_W`` and over the mean is weighted down further by
``sqrt(max(T_W, mean) / W)``: its true demand is above what it can count,
and passed bots look like good clients. (A full ``1 / W`` penalty would be
the literal rule again and oscillate; the square root converges.)
Dead proxies are absent (the caller passes the live ones).

The DeDoS rules (when the weights change)
-----------------------------------------
DeDoS's controller reads statistics every 100 ms; it *adds* a clone of a
component when a resource is over 40 % used and that component's type
accounts for at least 50 % of the use; it removes no clone within 20 s of an
addition nor within 5 s of the previous removal. Here a proxy is the
resource and client traffic the type (moving clients relieves only the part
of W they bring), so:

* an **addition** is a step that lowers the weight of a *hot* proxy (``W >
  act_level`` and ``traffic >= act_share · W``): clients move off it. It is
  taken at once, at most every ``min_change`` (the first placement of the
  weights starts it too: until the clients could follow, the loads show
  where they were before, and a step on them chases them);
* a **removal** (shift back) is a step that only raises weights: it waits
  ``hold_after_addition`` after the last addition, ``removal_spacing`` after
  the last removal, ``min_change`` after any change, and until every proxy
  it raises has been calm (``W < T_W``) for ``calm``;
* a step is taken only when some weight moves by more than ``deadband``
  (relative): noise in the loads moves no client;
* a step sets the weights to the target (:func:`target_weights`); a proxy
  that joins gets its target share (an addition of capacity); a proxy that
  dies is dropped and the others keep their proportions, which is where a
  client's next choice sends its clients anyway (``xpro_mesh.client``).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

__all__ = [
    "Dispersion",
    "DispersionParams",
    "LoadState",
    "Occupancy",
    "ProxyLoad",
    "Steering",
    "load_state",
    "occupancy",
    "plan",
    "steering",
    "target_weights",
]

_S = 1_000_000_000


@dataclass(frozen=True, slots=True)
class ProxyLoad:
    """What the gossip says of one proxy's load (``mesh.membership.Workload``)."""

    packets_in_per_s: float
    drop_ratio: float
    loop_lag_ms: float


@dataclass(frozen=True, slots=True)
class DispersionParams:
    """The rules' knobs; defaults are DeDoS's figures where it has one."""

    capacity_pps: float = 100_000.0  # packets/s a proxy judges at occupancy 1
    lag_budget_ms: float = 200.0  # event-loop lag at occupancy 1
    t_w: float = 0.8  # T_W: occupancy above which a proxy is overloaded
    act_level: float = 0.4  # DeDoS: act when a resource is over 40 % ...
    act_share: float = 0.5  # ... and the type accounts for >= 50 % of it
    hold_after_addition_ns: int = 20 * _S  # DeDoS: no removal within 20 s of an addition
    removal_spacing_ns: int = 5 * _S  # DeDoS: nor within 5 s of the previous removal
    calm_ns: int = 10 * _S  # no shift back until the proxy was under T_W this long
    min_change_ns: int = 1 * _S  # minimum spacing between two weight changes
    deadband: float = 0.1  # relative weight change below which nothing moves

    def __post_init__(self) -> None:
        for name in ("capacity_pps", "lag_budget_ms", "t_w"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be > 0, got {value!r}")
        if not 0 < self.act_level < self.t_w:
            raise ValueError(f"act_level must be in (0, t_w = {self.t_w}), got {self.act_level}")
        if not 0 < self.act_share <= 1:
            raise ValueError(f"act_share must be in (0, 1], got {self.act_share}")
        if not 0 <= self.deadband < 1:
            raise ValueError(f"deadband must be in [0, 1), got {self.deadband}")
        for name in ("hold_after_addition_ns", "removal_spacing_ns", "calm_ns", "min_change_ns"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True, slots=True)
class Occupancy:
    """A proxy's occupancy and its parts (1 = full)."""

    traffic: float  # packets in / capacity
    agent: float  # loop lag / lag budget

    @property
    def total(self) -> float:
        return max(self.traffic, self.agent)


def occupancy(load: ProxyLoad, params: DispersionParams) -> Occupancy:
    """W of one proxy from its gossiped load (see the module docstring)."""
    return Occupancy(
        traffic=max(0.0, load.packets_in_per_s) / params.capacity_pps,
        agent=max(0.0, load.loop_lag_ms) / params.lag_budget_ms,
    )


class LoadState(enum.StrEnum):
    """How a proxy's occupancy reads against the rules."""

    OK = "ok"  # nothing to do
    HOT = "hot"  # over act_level, mostly client traffic: clients may be moved off
    OVERLOADED = "overloaded"  # over T_W: weighted down


def load_state(occ: Occupancy, params: DispersionParams) -> LoadState:
    if occ.total > params.t_w:
        return LoadState.OVERLOADED
    if _hot(occ, params):
        return LoadState.HOT
    return LoadState.OK


def _hot(occ: Occupancy, params: DispersionParams) -> bool:
    """DeDoS: the resource is over 40 % and the type (client traffic) makes >= 50 % of it."""
    return occ.total > params.act_level and occ.traffic >= params.act_share * occ.total


def target_weights(loads: Mapping[str, ProxyLoad], params: DispersionParams) -> dict[str, float]:
    """Where the good traffic should go now: ``w_i ∝ s_i / W_i`` (share of
    passed traffic over occupancy), weighted down by ``T_W / W`` above T_W.
    Sums to 1 over ``loads`` (empty for no loads). Pure and order-free."""
    occ = {n: occupancy(load, params) for n, load in loads.items()}
    if not occ:
        return {}
    bar = max(params.t_w, math.fsum(o.total for o in occ.values()) / len(occ))
    raw: dict[str, float] = {}
    for node in sorted(loads):
        o = occ[node]
        good = 1.0 - min(1.0, max(0.0, loads[node].drop_ratio))
        w = good * max(o.traffic, params.act_level) / max(o.total, params.act_level)
        if o.total > bar:
            w *= math.sqrt(bar / o.total)
        raw[node] = w
    total = math.fsum(raw.values())
    if total <= 0:  # every proxy drops everything: nothing to prefer
        return {n: 1.0 / len(raw) for n in raw}
    return {n: w / total for n, w in raw.items()}


@dataclass(frozen=True, slots=True)
class Dispersion:
    """The published weights and what the rules remember (timestamps in the
    caller's clock, ns). ``weights`` sums to 1 over the live proxies (or is
    empty); :func:`plan` is the only function that makes a new one."""

    weights: Mapping[str, float] = field(default_factory=dict)
    calm_since_ns: Mapping[str, int] = field(default_factory=dict)  # under T_W since
    shed: frozenset[str] = frozenset()  # lowered by an addition, not yet shifted back
    last_change_ns: int | None = None
    last_addition_ns: int | None = None
    last_removal_ns: int | None = None
    additions: int = 0  # steps that moved clients off a hot proxy (or added a proxy)
    removals: int = 0  # steps that shifted clients back
    departures: int = 0  # proxies dropped because they died

    @property
    def changes(self) -> int:
        """Weight changes the rules made (joins and deaths not counted)."""
        return self.additions + self.removals


def _since(t: int | None, now_ns: int, span_ns: int) -> bool:
    return t is None or now_ns - t >= span_ns


def _moved(a: float, b: float, deadband: float) -> bool:
    return abs(a - b) > deadband * max(a, b)


def plan(
    previous: Dispersion,
    loads: Mapping[str, ProxyLoad],
    now_ns: int,
    params: DispersionParams,
) -> Dispersion:
    """One statistics tick: the dispersion after ``previous`` given the loads of
    the live proxies at ``now_ns``. Deterministic; see the module docstring
    for the rules. Invariants: the weights are a distribution over ``loads``;
    a removal never follows an addition within ``hold_after_addition`` nor a
    removal within ``removal_spacing``; two changes, and the first placement
    and the first change, are ``min_change`` apart."""
    occ = {n: occupancy(load, params) for n, load in loads.items()}
    calm = {
        n: previous.calm_since_ns.get(n, now_ns) for n in sorted(loads) if occ[n].total < params.t_w
    }
    state = replace(previous, calm_since_ns=calm)
    target = target_weights(loads, params)
    if not target:
        return replace(state, weights={})

    kept = {n: w for n, w in previous.weights.items() if n in target}
    gone = len(previous.weights) - len(kept)
    joined = sorted(n for n in target if n not in kept)
    if gone:
        state = replace(
            state, departures=state.departures + gone, shed=state.shed & frozenset(target)
        )
    if joined or gone:
        kept_sum = math.fsum(kept.values())
        if not kept:
            weights = dict(target)
        else:
            new_share = math.fsum(target[n] for n in joined)
            weights = {n: w / kept_sum * (1.0 - new_share) for n, w in kept.items()}
            weights.update({n: target[n] for n in joined})
        state = replace(state, weights=dict(sorted(weights.items())))
        if joined and previous.weights:
            # Capacity added: no shift back for a while, but an overload
            # elsewhere may still be acted on at once (no min_change).
            state = replace(state, last_addition_ns=now_ns, additions=state.additions + 1)
        elif not previous.weights:
            # The first placement: clients start following it now, so no
            # step acts on loads measured before they could (min_change).
            state = replace(state, last_change_ns=now_ns)
        return state

    current = state.weights
    moved = {n for n in target if _moved(current[n], target[n], params.deadband)}
    if not moved or not _since(state.last_change_ns, now_ns, params.min_change_ns):
        return state
    settled = {n for n in state.shed if n in calm and now_ns - calm[n] >= params.calm_ns}
    mean = math.fsum(o.total for o in occ.values()) / len(occ)
    shedding = {
        n
        for n in moved
        if target[n] < current[n]
        and _hot(occ[n], params)
        and occ[n].total > (1.0 + params.deadband) * mean
    }
    if shedding:
        weights = _held_back(current, target, state.shed - settled)
        lowered = {n for n in weights if _moved(current[n], weights[n], params.deadband)}
        lowered = {n for n in lowered if weights[n] < current[n]}
        if not lowered:
            return state
        return replace(
            state,
            weights=weights,
            shed=frozenset(n for n in state.shed | lowered if n in weights),
            last_change_ns=now_ns,
            last_addition_ns=now_ns,
            additions=state.additions + 1,
        )
    back = {n for n in moved if target[n] > current[n]}
    if (
        back
        and all(n in calm and now_ns - calm[n] >= params.calm_ns for n in back)
        and _since(state.last_addition_ns, now_ns, params.hold_after_addition_ns)
        and _since(state.last_removal_ns, now_ns, params.removal_spacing_ns)
    ):
        return replace(
            state,
            weights=target,
            shed=frozenset(),
            last_change_ns=now_ns,
            last_removal_ns=now_ns,
            removals=state.removals + 1,
        )
    return state


def _held_back(
    current: Mapping[str, float], target: Mapping[str, float], held: frozenset[str]
) -> dict[str, float]:
    """The target of an addition, except that a proxy shed earlier and not
    yet calm for ``calm`` (``held``) is not raised (no shift back before it is
    calm): it keeps its weight, and the proxies the target raises that are
    free to rise take what it would have had."""
    weights = {
        n: current[n] if n in held and target[n] > current[n] else target[n] for n in sorted(target)
    }
    takers = [n for n in sorted(target) if n not in held and target[n] > current[n]]
    share = math.fsum(target[n] for n in takers)
    if not takers or share <= 0:
        return dict(current)  # nowhere the clients may go yet
    free = 1.0 - math.fsum(weights.values())
    for n in takers:
        weights[n] += free * target[n] / share
    return weights


@dataclass(frozen=True, slots=True)
class Steering:
    """Where new clients should go (``GET /v1/steering``): a weight per live
    proxy (summing to 1) and which proxies are over T_W."""

    weights: Mapping[str, float]
    overloaded: frozenset[str]


def steering(
    dispersion: Dispersion, loads: Mapping[str, ProxyLoad], params: DispersionParams
) -> Steering:
    """The published weights with the proxies currently over T_W."""
    over = frozenset(
        n
        for n, load in loads.items()
        if load_state(occupancy(load, params), params) is LoadState.OVERLOADED
    )
    return Steering(weights=dict(dispersion.weights), overloaded=over)
