"""Measuring W and running the dispersion rules (DeDoS) in the agent.

Every ``stats_interval`` (DeDoS: 100 ms) the load loop reads the data path's
counters and this process's CPU time, measures how late its own timer fired
(event-loop lag), and keeps a window of samples; every ``publish_interval``
it gossips the window's :class:`~xpro_mesh.mesh.membership.Workload`. At each
tick it applies :func:`xpro_mesh.core.dispersion.plan` to the loads of the
live members, so every node holds the weights ``GET /v1/proxies`` serves.

Which costs make W (see ``docs/dispersion.md``): packets/s in against the
configured capacity, and loop lag against its budget, because those two are
what the gossip carries, so that every node computes the same occupancy for
every proxy. Softirq CPU (``/proc/stat``) is where XDP's cost lands, but it is
per host, not per proxy (the lab's proxies share one kernel), and it follows
packets in at a constant cost per packet; agent CPU (``/proc/self/stat``)
shows in the loop's lag once it matters. Both are measured here and shown
for this node (``GET /v1/proxies``, ``here``), not gossiped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from xpro_mesh.agent.config import DispersionConfig
from xpro_mesh.core.dispersion import (
    Dispersion,
    DispersionParams,
    ProxyLoad,
    Steering,
    load_state,
    occupancy,
    plan,
    steering,
)
from xpro_mesh.datapath.backend import Stats
from xpro_mesh.mesh.membership import Member, Workload

log = logging.getLogger("xpro_mesh.agent")

__all__ = ["Dispersal", "LoadMeter", "LoadSample", "Measured", "ProxyEntry", "run_load_loop"]


def process_cpu_s() -> float:
    """This process's user + system CPU seconds (``/proc/self/stat``)."""
    times = os.times()
    return times.user + times.system


def softirq_jiffies() -> tuple[int, int]:
    """(softirq, total) jiffies of all CPUs since boot (``/proc/stat``); (0, 0)
    where there is no /proc."""
    try:
        with open("/proc/stat") as stream:
            fields = stream.readline().split()[1:]
    except OSError:
        return 0, 0
    values = [int(x) for x in fields[:8]]
    return (values[6] if len(values) > 6 else 0), sum(values)


@dataclass(frozen=True, slots=True)
class LoadSample:
    """One statistics tick: cumulative counters and the lag of this tick."""

    at_s: float  # monotonic
    seen: int  # packets judged since start (pass + drops)
    dropped: int
    lag_ms: float
    cpu_s: float  # this process
    softirq: int  # host jiffies
    jiffies: int


@dataclass(frozen=True, slots=True)
class Measured:
    """What the window says: the gossiped Workload plus the local-only figures."""

    workload: Workload
    agent_cpu: float  # share of one CPU used by this agent
    softirq_cpu: float  # share of the host's CPUs in softirq (XDP runs there)


class LoadMeter:
    """A window of :class:`LoadSample`; rates are taken between its ends."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._samples: deque[LoadSample] = deque()

    def add(self, sample: LoadSample) -> None:
        self._samples.append(sample)
        while len(self._samples) > 2 and sample.at_s - self._samples[1].at_s >= self.window_s:
            self._samples.popleft()

    def measured(self) -> Measured | None:
        if len(self._samples) < 2:
            return None
        first, last = self._samples[0], self._samples[-1]
        span = max(last.at_s - first.at_s, 1e-3)
        seen = max(0, last.seen - first.seen)
        dropped = max(0, last.dropped - first.dropped)
        # The median: one stall of the host (a second, once) is not a saturated
        # agent, and it made one proxy's W ten times the others' for a window.
        lags = sorted(s.lag_ms for s in list(self._samples)[1:])
        jiffies = last.jiffies - first.jiffies
        return Measured(
            workload=Workload(
                packets_in_per_s=seen / span,
                drop_ratio=min(1.0, dropped / seen) if seen else 0.0,
                loop_lag_ms=lags[len(lags) // 2],
            ),
            agent_cpu=max(0.0, last.cpu_s - first.cpu_s) / span,
            softirq_cpu=(last.softirq - first.softirq) / jiffies if jiffies > 0 else 0.0,
        )


def sample(at_s: float, stats: Stats, lag_ms: float) -> LoadSample:
    softirq, jiffies = softirq_jiffies()
    dropped = stats.drop_pair + stats.drop_dest
    return LoadSample(
        at_s=at_s,
        seen=stats.passed + dropped,
        dropped=dropped,
        lag_ms=lag_ms,
        cpu_s=process_cpu_s(),
        softirq=softirq,
        jiffies=jiffies,
    )


@dataclass(frozen=True, slots=True)
class ProxyEntry:
    """One live proxy as ``GET /v1/proxies`` shows it."""

    node_id: str
    addr: tuple[str, int]  # gossip address; its host is the proxy's
    state: str  # alive | suspect
    weight: float
    occupancy: float
    load: str  # ok | hot | overloaded


class Dispersal:
    """The dispersion state of one node: the core's :class:`Dispersion`
    stepped with the live members' gossiped loads on the shared wall clock."""

    def __init__(self, config: DispersionConfig) -> None:
        self.config = config
        self.params: DispersionParams = config.params()
        self.state = Dispersion()
        self.loads: dict[str, ProxyLoad] = {}
        self.members: dict[str, Member] = {}
        self.measured: Measured | None = None

    def step(self, members: list[Member], now_ns: int) -> None:
        self.members = {m.node_id: m for m in members if m.load is not None}
        self.loads = {
            n: ProxyLoad(m.load.packets_in_per_s, m.load.drop_ratio, m.load.loop_lag_ms)
            for n, m in self.members.items()
            if m.load is not None
        }
        before = self.state
        self.state = plan(before, self.loads, now_ns, self.params)
        if self.state.changes != before.changes:
            kind = "addition" if self.state.additions != before.additions else "removal"
            log.info(
                "dispersion %s: weights %s, occupancy %s",
                kind,
                {n: round(w, 3) for n, w in self.state.weights.items()},
                {n: round(occupancy(x, self.params).total, 3) for n, x in self.loads.items()},
            )

    def steering(self) -> Steering:
        return steering(self.state, self.loads, self.params)

    def proxies(self) -> list[ProxyEntry]:
        out = []
        for node_id, weight in sorted(self.state.weights.items(), key=lambda kv: (-kv[1], kv[0])):
            m = self.members[node_id]
            occ = occupancy(self.loads[node_id], self.params)
            out.append(
                ProxyEntry(
                    node_id=node_id,
                    addr=m.addr,
                    state=str(m.state),
                    weight=weight,
                    occupancy=occ.total,
                    load=str(load_state(occ, self.params)),
                )
            )
        return out


async def run_load_loop(
    dispersal: Dispersal,
    read_stats: Callable[[], Awaitable[Stats]],
    publish: Callable[[Workload], None],
    live_members: Callable[[], list[Member]],
    stop: asyncio.Event,
) -> None:
    """Tick every ``stats_interval``: sample, publish W when due, step the rules."""
    cfg = dispersal.config
    tick_s = cfg.stats_interval_ns / 1e9
    meter = LoadMeter(cfg.window_ns / 1e9)
    meter.add(sample(time.monotonic(), await read_stats(), 0.0))
    next_publish = time.monotonic() + cfg.publish_interval_ns / 1e9
    while not stop.is_set():
        expected = time.monotonic() + tick_s
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=tick_s)
        now = time.monotonic()
        lag_ms = max(0.0, (now - expected) * 1000)
        meter.add(sample(now, await read_stats(), lag_ms))
        measured = meter.measured()
        if measured is not None:
            dispersal.measured = measured
            if now >= next_publish:
                publish(measured.workload)
                next_publish = now + cfg.publish_interval_ns / 1e9
        dispersal.step(live_members(), time.time_ns())
