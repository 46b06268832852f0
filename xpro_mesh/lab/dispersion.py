"""The dispersion figures of a lab run (issue 14), from what the victim and
the good clients wrote and from the agents' logs, never from the agents'
own view of their load.

* **Load per proxy** is the good requests the victim received through each
  proxy: a good client behind proxy k sends from an address in k's block
  (:mod:`xpro_mesh.lab.topology`), and the victim counts arrivals per block,
  so ``victim.good[100 + k]`` is what went through proxy k. This is the
  load dispersion moves (``W``'s packets-in term; the lab's proxies share
  one host, so their loop lag, ``W``'s other term, is the host's).
* **Weight changes** are the agents' ``dispersion addition`` / ``removal``
  log lines between the epoch and the end of the traffic.
* **Failover** is each good client's time from the proxy's death (the
  moment its links went down: its agent is SIGKILLed just before, but its
  kernel forwards until then) to its first answer through another proxy,
  from the clients' own per-request records.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from xpro_mesh.lab import agents
from xpro_mesh.lab.metrics import VictimArrivals, percentile

__all__ = ["BALANCED", "FAILOVER_TARGET_S", "failover_figures", "overload_figures"]

BALANCED = 1.3  # the max/mean load after rebalancing
FAILOVER_TARGET_S = 2.0  # the issue's: a killed proxy's clients reach another within this
BEFORE_S = 3.0  # the load "before" is averaged over this long before the clients follow
AFTER_S = 5.0  # ... and "after" over the run's last this long
REBALANCE_WINDOW_S = 1.0  # rebalance_s: the first such window at max/mean <= BALANCED


def block_of(proxy: int) -> int:
    """The victim's key for a proxy's block (its third octet)."""
    return 100 + proxy


def load_pps(victim: VictimArrivals, proxy: int, t0: float, t1: float) -> float:
    """Good requests per second that reached the victim through ``proxy``
    in ``[t0, t1)`` (seconds since the epoch)."""
    series = victim.good.get(block_of(proxy))
    if series is None or t1 <= t0:
        return 0.0
    first, last = round(t0 / victim.bin_s), round(t1 / victim.bin_s)
    return series.total(first, last) / (t1 - t0)


def max_mean(loads: Sequence[float]) -> float | None:
    """max/mean over every proxy of the lab (an idle proxy counts as 0)."""
    mean = sum(loads) / len(loads) if loads else 0.0
    return None if mean <= 0 else max(loads) / mean


def _ratio(victim: VictimArrivals, proxies: Sequence[int], t0: float, t1: float) -> float | None:
    return max_mean([load_pps(victim, p, t0, t1) for p in proxies])


def weight_changes(log: Path, since: float, until: float) -> int:
    """The agent's weight changes (DeDoS additions and removals) logged
    between ``since`` and ``until`` (Unix seconds)."""
    count = 0
    for entry in agents.log_entries(log):
        msg = str(entry.get("msg", ""))
        if not msg.startswith(("dispersion addition", "dispersion removal")):
            continue
        at = agents._log_time(entry)
        if at is None or since - 1.0 <= at <= until + 1.0:  # the logs' ts has 1 s resolution
            count += 1
    return count


def _rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def overload_figures(
    victim: VictimArrivals,
    goods: Sequence[Mapping[str, Any]],
    proxies: Sequence[int],
    follow_at: float,
    duration: float,
    logs: Mapping[str, Path],
    wall: tuple[float, float],
    min_change_s: float,
    following: bool,
) -> dict[str, Any]:
    """The overload scenario's keys for one run (with or without the
    clients following): the load's max/mean before the clients may follow
    and over the run's last :data:`AFTER_S`, when it first fell to
    :data:`BALANCED`, the agents' weight changes (and the bound a
    non-oscillating mesh keeps: one per ``min_change``), and the good
    clients' success and latency once they may follow."""
    before0 = max(0.0, follow_at - BEFORE_S)
    rebalance = None
    t = follow_at + REBALANCE_WINDOW_S
    while t <= duration + 1e-9:
        r = _ratio(victim, proxies, t - REBALANCE_WINDOW_S, t)
        if r is not None and r <= BALANCED:
            rebalance = round(t - follow_at, 2)
            break
        t += victim.bin_s * 5
    changes = {node: weight_changes(log, *wall) for node, log in sorted(logs.items())}
    # once the clients may follow: the move itself and any oscillation after it
    settled = {
        node: weight_changes(log, wall[0] + follow_at + 1.0, wall[1])
        for node, log in sorted(logs.items())
    }
    after = [
        (r[1], r[2]) for g in goods for r in g["client"]["requests"] if float(r[1]) >= follow_at
    ]
    answered = sorted(float(lat) for _t, lat in after if lat is not None)
    clients_end: dict[str, int] = {}
    for g in goods:
        last: dict[int, str] = {}
        for j, _t, _lat, node in g["client"]["requests"]:
            if node is not None:
                last[int(j)] = str(node)
        for node in last.values():
            clients_end[node] = clients_end.get(node, 0) + 1
    bound = int(duration / min_change_s) + 1
    return {
        "following": following,
        "follow_at_s": follow_at,
        "max_mean_load_ratio_before": _rounded(_ratio(victim, proxies, before0, follow_at)),
        "max_mean_load_ratio_after": _rounded(
            _ratio(victim, proxies, max(follow_at, duration - AFTER_S), duration)
        ),
        "load_pps_after": {
            f"p{p}": round(load_pps(victim, p, duration - AFTER_S, duration), 1) for p in proxies
        },
        "rebalance_s": rebalance,
        "weight_changes": changes,
        "weight_changes_max_per_node": max(changes.values(), default=0),
        "weight_changes_after_follow": settled,
        "weight_changes_bound": bound,
        "clients_end": dict(sorted(clients_end.items())),
        "good_requests_after_follow": len(after),
        "good_success_after_follow": _rounded(len(answered) / len(after), 4) if after else None,
        "good_latency_ms_p50_after_follow": _rounded(
            None if not answered else 1000 * (percentile(answered, 50) or 0.0), 3
        ),
        "good_latency_ms_p99_after_follow": _rounded(
            None if not answered else 1000 * (percentile(answered, 99) or 0.0), 3
        ),
        "target": {
            "max_mean_load_ratio_after": BALANCED,
            "weight_changes_max_per_node": bound,
        },
    }


def failover_figures(
    goods: Sequence[Mapping[str, Any]], dead: int, down_at: float
) -> dict[str, Any]:
    """Each good client whose proxy (``p<dead>``) answered its last request
    before ``down_at``: its time from ``down_at`` to its first answer
    through another proxy (None: never), against the client's own bound
    (``ClientConfig.failover_bound_s`` of its send interval) and the
    issue's :data:`FAILOVER_TARGET_S`."""
    node = f"p{dead}"
    times: dict[str, float | None] = {}
    bound = None
    lag = 0.0
    for g in goods:
        doc = g["client"]
        bound = doc.get("failover_bound_s", bound)
        lag = max(lag, float(doc.get("loop_lag_max_s", 0.0)))
        addrs = doc["addrs"]
        by_client: dict[int, list[tuple[float, float | None, str | None]]] = {}
        for j, t, lat, via in doc["requests"]:
            by_client.setdefault(int(j), []).append((float(t), lat, via))
        for j, reqs in by_client.items():
            answered = [(t + float(lat), via) for t, lat, via in reqs if lat is not None]
            before = [a for a in answered if a[0] < down_at]
            if not before or max(before)[1] != node:
                continue
            elsewhere = sorted(a for a, via in answered if a >= down_at and via != node)
            times[addrs[j]] = round(elsewhere[0] - down_at, 3) if elsewhere else None
    done = sorted(v for v in times.values() if v is not None)
    worst = done[-1] if done and len(done) == len(times) else None
    return {
        "dead": node,
        "down_at_s": round(down_at, 3),
        "affected": len(times),
        "recovered": len(done),
        "failover_s": times,
        "failover_min_s": done[0] if done else None,
        "failover_median_s": done[len(done) // 2] if done else None,
        "failover_max_s": worst,
        "bound_s": bound,
        "client_loop_lag_max_s": lag,
        "target_s": FAILOVER_TARGET_S,
        "met": bool(times) and worst is not None and worst <= FAILOVER_TARGET_S,
    }
