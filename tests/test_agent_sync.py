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
from agent_support import eventually

from xpro_mesh.agent.config import load_config
from xpro_mesh.agent.daemon import Agent, xdp_config
from xpro_mesh.agent.gossip_sync import GossipSync
from xpro_mesh.agent.syncer import SyncReport, run_sync_loop
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
    lazy, lazy_maps, lazy_sync = make_agent()
    eager, eager_maps, eager_sync = make_agent()
    versions: dict[str, int] = {"remote-a": 0, "remote-b": 0}
    base = time.time_ns() - 2 * S
    clock = [base]  # both agents cycle at the same cluster time, however slow the machine
    lazy_sync.clock = eager_sync.clock = lambda: clock[0]
    skipped = 0
    for step in range(60):
        t = base + step * 20 * MS
        clock[0] = t + 10 * MS
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


def peer_rows(origin: str, version: int, pairs: list[tuple[bytes, bytes]], t: int) -> Delta:
    rows = tuple(
        PairEntry(pair, origin, OriginEntry(t - S, t, 7 + i, (1, version + i)))
        for i, pair in enumerate(pairs)
    )
    return Delta(rows, (Coverage(origin, (1, version - 1), (1, version + len(rows) - 1)),))


@pytest.mark.parametrize("seed", range(4))
async def test_a_refresh_writes_merged_rows_as_the_next_cycle_would(seed: int) -> None:
    """Between two cycles a refresh writes the views a peer's rows moved,
    from the last read: the kernel then holds what a cycle would have
    written (one agent refreshes, the other cycles with no new packets)."""
    rng = random.Random(seed)
    refreshing, r_maps, r_sync = make_agent()
    cycling, c_maps, c_sync = make_agent()
    base = time.time_ns() - 2 * S
    clock = [base]
    r_sync.clock = c_sync.clock = lambda: clock[0]
    version = 1
    wrote = 0
    for step in range(20):
        t = base + step * 20 * MS
        clock[0] = t + 10 * MS
        for _ in range(rng.randint(1, 4)):
            src, dst = addr(rng.randrange(30)), rng.choice(DSTS)
            r_maps.feed(src, dst, t)
            c_maps.feed(src, dst, t)
        await refreshing.sync_once()
        await cycling.sync_once()
        pairs = [(addr(rng.randrange(40)), rng.choice(DSTS)) for _ in range(rng.randint(1, 4))]
        delta = from_delta(peer_rows("peer", version, list(dict.fromkeys(pairs)), t))
        version += len(set(pairs))
        refreshing.state.merge(delta, t)
        cycling.state.merge(delta, t)
        before = r_maps.pair_slots[AGENT_HALF].copy()
        await r_sync.refresh(SyncReport())
        wrote += int(not np.array_equal(before, r_maps.pair_slots[AGENT_HALF]))
        await cycling.sync_once()
        assert np.array_equal(r_maps.pair_slots[AGENT_HALF], c_maps.pair_slots[AGENT_HALF]), (
            f"step {step}"
        )
        assert np.array_equal(
            r_maps.dest_slots[["v_gen", "v_adj", "v_nadj", "v_ts1", "v_ts2"]],
            c_maps.dest_slots[["v_gen", "v_adj", "v_nadj", "v_ts1", "v_ts2"]],
        ), f"step {step}"
    assert wrote


async def test_a_refresh_retires_nothing_before_the_next_cycle() -> None:
    """Slots whose rows aged out are retired by cycles only (once per cycle,
    so a retired slot waits a cycle before it is handed out again); a
    refresh that finds them leaves them to the next cycle."""
    agent, maps, syncer = make_agent(t_t1="200ms", t_t2="1ms", t_t3="1ms", t_t4="300ms")
    now = time.time_ns()
    maps.feed(addr(1), DSTS[0], now)
    await agent.sync_once()
    await asyncio.sleep(0.6)  # past the horizon: the next plan ages the row out
    await syncer.refresh(SyncReport())
    assert agent.state.num_pairs == 0  # the refresh's plan aged it out of the rows
    assert maps.lookup_pair(addr(1), DSTS[0]) is not None  # and left the slot alone
    await agent.sync_once()
    assert maps.lookup_pair(addr(1), DSTS[0]) is None


async def test_the_sync_loop_writes_a_peers_rows_between_two_cycles() -> None:
    """Rows merged in the pause between two cycles (news) reach the kernel's
    views then, not at the next cycle: here the interval is a minute."""
    agent, maps, syncer = make_agent()
    now = time.time_ns()
    pair = (addr(5), DSTS[0])
    maps.feed(*pair, now)
    stop = asyncio.Event()
    loop = asyncio.create_task(run_sync_loop(syncer, agent.sync, 60.0, stop))
    try:
        await eventually(lambda: agent.sync.cycles == 1, 10, "the first cycle")
        slot = maps.lookup_pair(*pair)
        assert slot is not None and int(maps.pair_slots["v_adj"][slot]) == 0
        agent.state.merge(from_delta(peer_rows("peer", 1, [pair], now)), now)
        syncer.news.set()
        await eventually(lambda: agent.sync.refreshes == 1, 10, "a refresh")
        assert int(maps.pair_slots["v_adj"][slot]) == 7  # the peer's count, judged here
        assert agent.sync.cycles == 1
    finally:
        stop.set()
        await loop


async def test_a_restarted_agent_lowers_no_held_view_and_beats_only_after_the_gate() -> None:
    """Issue 13: the kernel holds D's view from the agent's earlier life (the
    mesh's 5 000 packets). The restarted agent's first views re-base on its
    own rows (20 packets): for view_hold after its first cycle it leaves the
    held view and writes no heartbeat (the kernel keeps holding); then it
    writes its view and beats every cycle."""
    agent, maps, syncer = make_agent()
    base = time.time_ns() - 10 * S
    clock = [base]
    syncer.clock = lambda: clock[0]
    src, dst = addr(1), DSTS[0]
    for i in range(20):
        maps.feed(src, dst, base + i * 50 * MS)
    dests = maps.read_dests()
    slot, row = dests.slots[:1], dests.rows[0]
    maps.write_dest_views(
        slot,
        np.array([row["gen"]], np.uint64),
        np.array([5000 - int(row["c"])], np.int64),
        np.array([0], np.int64),
        np.array([base], np.uint64),
        np.array([base + S], np.uint64),
        np.array([5000], np.int64),
    )
    maps.write_heartbeat(base + S)  # the earlier life's last beat
    hold = maps.get_config().view_hold
    for step in range(3):  # cycles inside the gate
        clock[0] = base + S + step * hold // 4
        await agent.sync_once()
        assert int(maps.dest_slots["v_c"][slot[0]]) == 5000, step
        assert int(maps._ctl[0]["agent_at"]) == base + S, step
    clock[0] = base + S + hold
    await agent.sync_once()
    assert 0 < int(maps.dest_slots["v_c"][slot[0]]) < 5000  # its own view now
    assert int(maps._ctl[0]["agent_at"]) == clock[0]
