"""The incremental map sync plans what the full one plans.

Two agents (not started: only their map-sync cycle runs) over two in-memory
data paths get the same packets and the same rows from the mesh, step by
step; one syncs incrementally (quiet pairs skipped), the other reads and
plans every pair every cycle. After every cycle their kernels and their
views must be identical. Plus the cases where the incremental sync must fall
back to a full one: a pair gone from the kernel behind the agent's back (an
LRU eviction), and rows aged out of the state.
"""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from xpro_mesh.agent.config import load_config
from xpro_mesh.agent.daemon import Agent, xdp_config
from xpro_mesh.agent.gossip_sync import GossipSync
from xpro_mesh.agent.syncer import SyncReport
from xpro_mesh.core.gossip_state import ZERO_VERSION, Coverage, Delta, OriginEntry, PairEntry
from xpro_mesh.core.params import Params
from xpro_mesh.datapath.backend import PairKey
from xpro_mesh.datapath.memory import MemoryMaps

S = 10**9
MS = 10**6


def make_agent(full_every: int, **thresholds: str) -> tuple[Agent, MemoryMaps]:
    overrides: dict[str, object] = {
        "backend": "memory",
        "node_id": "me",
        "thresholds.t_f1": "1000000/s",
        "thresholds.t_f2": "10000000/s",
        **{f"thresholds.{k}": v for k, v in thresholds.items()},
    }
    config = load_config(None, overrides, require_key_file=False)
    maps = MemoryMaps(xdp_config(config.thresholds))
    agent = Agent(config, backend=maps)
    agent.ensure_syncer().full_sync_every = full_every  # type: ignore[attr-defined]
    return agent, maps


def kernel(maps: MemoryMaps) -> dict[PairKey, tuple[int, int, int, int, int]]:
    return {k: (r.ts1, r.ts2, r.c, r.dc, r.mark) for k, r in maps.read_pairs()}


def destinations(maps: MemoryMaps) -> dict[bytes, tuple[int, int, int, int]]:
    return {d: (a.ts1, a.ts2, a.c, a.clients) for d, a in maps.read_destinations()}


def addr(i: int) -> bytes:
    return b"\0" * 10 + b"\xff\xff" + bytes((11, 0, i // 256, i % 256))


DSTS = [b"\0" * 10 + b"\xff\xff" + bytes((10, 9, 0, d)) for d in range(1, 4)]


@pytest.mark.parametrize("seed", range(6))
async def test_incremental_sync_plans_what_the_full_sync_plans(seed: int) -> None:
    rng = random.Random(seed)
    inc, inc_maps = make_agent(full_every=10**9)
    full, full_maps = make_agent(full_every=0)
    versions: dict[str, int] = {"remote-a": 0, "remote-b": 0}
    base = time.time_ns() - 2 * S
    incremental_cycles = 0
    for step in range(60):
        t = base + step * 20 * MS
        # Packets counted by this proxy.
        for _ in range(rng.randint(0, 6)):
            src, dst = addr(rng.randrange(40)), rng.choice(DSTS)
            n = rng.randint(1, 5)
            for i in range(n):
                inc_maps.feed(src, dst, t + i)
                full_maps.feed(src, dst, t + i)
        # Rows from the mesh: new pairs and newer versions of known ones.
        if rng.random() < 0.6:
            origin = rng.choice(sorted(versions))
            rows = []
            for _ in range(rng.randint(1, 5)):
                versions[origin] += 1
                pair = (addr(rng.randrange(60)), rng.choice(DSTS))
                c = rng.randint(1, 50)
                rows.append(
                    PairEntry(pair, origin, OriginEntry(t - S, t, c, (1, versions[origin])))
                )
            after = (1, versions[origin] - len(rows))
            delta = Delta(tuple(rows), (Coverage(origin, after, (1, versions[origin])),))
            inc.state.merge(delta, t)
            full.state.merge(delta, t)
        await inc.sync_once()
        await full.sync_once()
        incremental_cycles += 0 if inc.sync.last_full else 1
        assert kernel(inc_maps) == kernel(full_maps), f"step {step}"
        assert destinations(inc_maps) == destinations(full_maps), f"step {step}"
        assert inc.state.pair_views() == full.state.pair_views()
    assert full.sync.full_cycles == 60
    assert incremental_cycles > 20  # the comparison exercised the incremental path


async def test_a_pair_evicted_behind_the_agents_back_is_recreated() -> None:
    agent, maps = make_agent(full_every=10**9)
    now = time.time_ns()
    for i in range(10):
        maps.feed(addr(i), DSTS[0], now + i)
    await agent.sync_once()
    await agent.sync_once()
    await agent.sync_once()
    assert not agent.sync.last_full
    before = kernel(maps)
    gone = next(iter(before))
    maps.delete_pairs([gone])  # as an LRU eviction would
    await agent.sync_once()
    assert agent.sync.last_full
    assert set(kernel(maps)) == set(before)


@pytest.mark.parametrize("full_every", [0, 10**9])
async def test_aged_out_rows_leave_the_kernel(full_every: int) -> None:
    agent, maps = make_agent(full_every, t_t1="200ms", t_t2="1ms", t_t3="1ms", t_t4="300ms")
    now = time.time_ns()
    pair = (addr(1), DSTS[0])
    delta = Delta(
        (PairEntry(pair, "remote", OriginEntry(now - 10 * MS, now, 3, (1, 1))),),
        (Coverage("remote", ZERO_VERSION, (1, 1)),),
    )
    assert agent.state.merge(delta, now).accepted == 1
    await agent.sync_once()
    await agent.sync_once()
    assert PairKey(*pair) in kernel(maps)
    await asyncio.sleep(0.6)  # past the horizon, T_T1 + T_T4
    await agent.sync_once()  # ages the row out
    await agent.sync_once()  # (incremental: plans it one cycle later)
    assert kernel(maps) == {}
    assert agent.state.num_pairs == 0


async def test_rows_merged_while_a_cycle_plans_reach_the_kernel_next_cycle() -> None:
    """The agent yields to the mesh while it plans; what the mesh merges
    meanwhile is planned by the next cycle, and the kernel ends as a full
    sync would leave it."""
    inc, inc_maps = make_agent(full_every=10**9)
    full, full_maps = make_agent(full_every=0)
    syncer = inc.ensure_syncer()
    assert isinstance(syncer, GossipSync)
    syncer.plan_step = 2  # yields between every two pairs planned
    now = time.time_ns()
    for i in range(12):
        for maps in (inc_maps, full_maps):
            maps.feed(addr(i), DSTS[i % 3], now + i)
    for agent in (inc, full):
        await agent.sync_once()
        await agent.sync_once()
    for i in range(0, 12, 2):  # new packets: the next cycle plans these pairs
        for maps in (inc_maps, full_maps):
            maps.feed(addr(i), DSTS[i % 3], now + 100 + i)
    rows = tuple(
        PairEntry((addr(i), DSTS[0]), "remote", OriginEntry(now - S, now, 9, (1, n + 1)))
        for n, i in enumerate((0, 30, 31))
    )
    delta = Delta(rows, (Coverage("remote", ZERO_VERSION, (1, len(rows))),))

    async def merge_midway() -> None:
        await asyncio.sleep(0)  # the cycle has started planning
        assert inc.state.merge(delta, now).accepted == len(rows)

    await asyncio.gather(inc.sync_once(), merge_midway())
    assert full.state.merge(delta, now).accepted == len(rows)
    await full.sync_once()
    await inc.sync_once()
    assert kernel(inc_maps) == kernel(full_maps)
    assert destinations(inc_maps) == destinations(full_maps)


async def test_a_sync_failing_every_cycle_is_counted_each_time_and_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """M_DB gone: every cycle fails and is counted, the log gets one line
    (not ten a second), and one more when syncs work again."""

    class FlakyMaster:
        def __init__(self) -> None:
            self.calls = 0
            self.ten = asyncio.Event()

        async def cycle(self, report: SyncReport) -> None:
            self.calls += 1
            if self.calls >= 10:
                self.ten.set()
            if self.calls <= 8:
                raise ConnectionError("Error 111 connecting to 10.20.0.3:6379")

        def set_params(self, params: Params) -> None:
            pass

    syncer = FlakyMaster()
    config = load_config(
        None,
        {"backend": "memory", "profile": "local", "node_id": "m", "sync": "master",
         "redis": "10.20.0.3:6379", "api": "127.0.0.1:0", "gossip.interval": "20ms"},
        require_key_file=False,
    )
    agent = Agent(config, backend=MemoryMaps(xdp_config(config.thresholds)),
                  syncer=syncer)
    caplog.set_level("INFO", logger="xpro_mesh.agent")
    await agent.start()
    try:
        await asyncio.wait_for(syncer.ten.wait(), 10)
    finally:
        agent.stop.set()
        await agent.shutdown()
    assert agent.sync.failures == 8
    failed = [r for r in caplog.records if "map sync failed" in r.getMessage()]
    assert len(failed) == 1 and "ConnectionError" in failed[0].getMessage()
    assert any("works again after 8 failed cycles" in r.getMessage() for r in caplog.records)
    assert agent.sync.last_error == ""
