"""The agent's map sync over the v2 data path, as a whole: views written
only when they move equal views written every cycle; pairs and destinations
whose rows aged out leave the kernel; a failing sync is counted and logged
once. (The plan itself: ``tests/test_mapsync.py``.)

Two agents (not started: only their map-sync cycle runs) over two in-memory
data paths get the same packets and the same rows from the mesh, step by
step; one writes only the views that moved, the other every view, every
cycle. After every cycle the agent halves of their kernels must be equal.
"""

from __future__ import annotations

import asyncio
import random
import time

import numpy as np
import pytest

from xpro_mesh.agent.config import load_config
from xpro_mesh.agent.daemon import Agent, xdp_config
from xpro_mesh.agent.gossip_sync import GossipSync
from xpro_mesh.agent.syncer import SyncReport
from xpro_mesh.core.algorithm import Params
from xpro_mesh.core.gossip_state import Coverage, Delta, OriginEntry, PairEntry
from xpro_mesh.core.rows import from_delta
from xpro_mesh.datapath.memory import MemoryMaps

S = 10**9
MS = 10**6
AGENT_HALF = ["v_gen", "v_adj", "v_ts1", "v_ts2"]


def make_agent(**thresholds: str) -> tuple[Agent, MemoryMaps, GossipSync]:
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
    syncer = agent.ensure_syncer()
    assert isinstance(syncer, GossipSync)
    return agent, maps, syncer


def held_rows(agent: Agent) -> set[tuple[object, str, int, int, int]]:
    """Every row without its version (the two agents' incarnations differ)."""
    return {
        (pe.pair, pe.origin, pe.entry.ts1, pe.entry.ts2, pe.entry.c) for pe in agent.state.entries()
    }


def addr(i: int) -> bytes:
    return b"\0" * 10 + b"\xff\xff" + bytes((11, 0, i // 256, i % 256))


DSTS = [b"\0" * 10 + b"\xff\xff" + bytes((10, 9, 0, d)) for d in range(1, 4)]


@pytest.mark.parametrize("seed", range(6))
async def test_views_written_when_they_move_equal_views_written_every_cycle(seed: int) -> None:
    rng = random.Random(seed)
    lazy, lazy_maps, _ = make_agent()
    eager, eager_maps, eager_sync = make_agent()
    versions: dict[str, int] = {"remote-a": 0, "remote-b": 0}
    base = time.time_ns() - 2 * S
    skipped = 0
    for step in range(60):
        t = base + step * 20 * MS
        for _ in range(rng.randint(0, 6)):  # packets counted by this proxy
            src, dst = addr(rng.randrange(40)), rng.choice(DSTS)
            for i in range(rng.randint(1, 5)):
                lazy_maps.feed(src, dst, t + i)
                eager_maps.feed(src, dst, t + i)
        if rng.random() < 0.6:  # rows from the mesh: new pairs, newer versions
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
            lazy.state.merge(from_delta(delta), t)
            eager.state.merge(from_delta(delta), t)
        await lazy.sync_once()
        eager_sync.memory.forget_views()
        await eager.sync_once()
        skipped += lazy.sync.last_pairs_read - lazy.sync.last_ops
        assert np.array_equal(
            lazy_maps.pair_slots[AGENT_HALF], eager_maps.pair_slots[AGENT_HALF]
        ), f"step {step}"
        assert np.array_equal(lazy_maps.dest_slots, eager_maps.dest_slots), f"step {step}"
        assert held_rows(lazy) == held_rows(eager)
    assert skipped > 20  # the comparison exercised views left alone


async def test_pairs_and_destinations_whose_rows_aged_out_leave_the_kernel() -> None:
    agent, maps, _ = make_agent(t_t1="200ms", t_t2="1ms", t_t3="1ms", t_t4="300ms")
    now = time.time_ns()
    maps.feed(addr(1), DSTS[0], now)
    await agent.sync_once()
    assert maps.lookup_pair(addr(1), DSTS[0]) is not None
    await asyncio.sleep(0.6)  # past the horizon, T_T1 + T_T4
    await agent.sync_once()  # ages the row out: the key leaves the index
    await agent.sync_once()  # the destination no pair names goes too
    assert maps.lookup_pair(addr(1), DSTS[0]) is None
    assert maps.lookup_dest(DSTS[0]) is None
    assert agent.state.num_pairs == 0
    assert maps.ring_status().pairs_in_use == 0


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
        {
            "backend": "memory",
            "profile": "local",
            "node_id": "m",
            "sync": "master",
            "redis": "10.20.0.3:6379",
            "api": "127.0.0.1:0",
            "gossip.interval": "20ms",
        },
        require_key_file=False,
    )
    agent = Agent(config, backend=MemoryMaps(xdp_config(config.thresholds)), syncer=syncer)
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
