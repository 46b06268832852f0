"""Whole meshes in one process: MeshNodes over the in-memory network (real
asyncio timers, the `local` profile's fast intervals)."""

from __future__ import annotations

import asyncio
import random
import time

from xpro_mesh.agent.config import local_gossip
from xpro_mesh.core.algorithm import Params
from xpro_mesh.core.gossip_state import GossipState, LocalCount, MergeLimits
from xpro_mesh.mesh import auth
from xpro_mesh.mesh.membership import Membership, MemberState
from xpro_mesh.mesh.node import MeshNode, NodeTiming
from xpro_mesh.mesh.state import GossipStateAdapter
from xpro_mesh.mesh.stream import MemoryStreams
from xpro_mesh.mesh.transport import MemoryNetwork

S = 10**9
P = Params(t_t1=5 * S, t_t2=S, t_t3=S, t_t4=60 * S, t_f1=100, t_f2=1000, r=2)
KEYRING = auth.Keyring([bytes(range(32))])
VICTIM = b"\x00" * 10 + b"\xff\xff" + bytes([10, 20, 0, 2])


def client(i: int) -> bytes:
    return b"\x00" * 10 + b"\xff\xff" + bytes([10, 10, 100, i])


def table(node: MeshNode) -> GossipState:
    """The scalar table behind a node's adapter."""
    assert isinstance(node.state, GossipStateAdapter)
    return node.state.state


def make_node(
    net: MemoryNetwork,
    name: str,
    port: int,
    keyring: auth.Keyring = KEYRING,
    streams: MemoryStreams | None = None,
    max_message_bytes: int | None = None,
) -> MeshNode:
    cfg = local_gossip()
    addr = ("10.20.0.1", port)
    now = time.monotonic_ns()
    membership = Membership(
        name,
        addr,
        incarnation=int(time.time() * 1000),
        now_ns=now,
        rng=random.Random(port),
        params=cfg.membership_params(),
    )
    node = MeshNode(
        state=GossipStateAdapter(GossipState(name, incarnation=membership.incarnation, params=P)),
        membership=membership,
        keyring=keyring,
        timing=NodeTiming(
            interval_ns=cfg.interval_ns,
            fanout=cfg.fanout,
            max_message_bytes=max_message_bytes or cfg.max_message_bytes,
        ),
        limits=MergeLimits(),
        rng=random.Random(port + 1),
    )
    stream = streams.attach(addr, node.receive_frame) if streams is not None else None
    node.attach(net.attach(addr, node.receive), stream)
    return node


async def run_until(predicate: object, timeout_s: float) -> float:
    assert callable(predicate)
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if predicate():
            return time.monotonic() - start
        await asyncio.sleep(0.02)
    raise AssertionError(f"not reached within {timeout_s}s")


async def test_five_nodes_join_from_one_seed_and_agree_on_exact_counts() -> None:
    net = MemoryNetwork(rng=random.Random(1), loss=0.05)
    nodes = [make_node(net, f"n{i}", 7000 + i) for i in range(5)]
    stop = asyncio.Event()
    for n in nodes[1:]:
        n.join([("10.20.0.1", 7000)])
    tasks = [asyncio.create_task(n.run(stop)) for n in nodes]
    try:
        await run_until(lambda: all(n.membership.num_live() == 5 for n in nodes), 10)
        now = time.time_ns()
        for i, n in enumerate(nodes):
            table(n).record_local((client(7), VICTIM), LocalCount(now, now + i, dc=10 + i, mark=0))
        await run_until(
            lambda: all(
                (v := table(n).pair_view((client(7), VICTIM))) is not None and v.c == 60
                for n in nodes
            ),
            10,
        )
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def test_a_killed_node_is_declared_dead_by_every_survivor() -> None:
    net = MemoryNetwork(rng=random.Random(2))
    nodes = [make_node(net, f"k{i}", 7100 + i) for i in range(5)]
    stop, stop_victim = asyncio.Event(), asyncio.Event()
    for n in nodes[1:]:
        n.join([("10.20.0.1", 7100)])
    tasks = [asyncio.create_task(n.run(stop)) for n in nodes[:4]]
    victim_task = asyncio.create_task(nodes[4].run(stop_victim))
    try:
        await run_until(lambda: all(n.membership.num_live() == 5 for n in nodes), 10)
        stop_victim.set()
        await victim_task
        net.partition([("10.20.0.1", 7104)], [("10.20.0.1", 7100 + i) for i in range(4)])
        bound = local_gossip().detection_time_bound_ns(5) / 1e9
        took = await run_until(
            lambda: all(
                (m := n.membership.member("k4")) is not None and m.state is MemberState.DEAD
                for n in nodes[:4]
            ),
            bound + 2,
        )
        assert took <= bound + 1
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def test_messages_under_another_cluster_key_are_rejected_and_counted() -> None:
    net = MemoryNetwork(rng=random.Random(3))
    a = make_node(net, "a", 7200)
    intruder = make_node(net, "x", 7201, keyring=auth.Keyring([bytes(32)]))
    intruder.join([("10.20.0.1", 7200)])
    await asyncio.sleep(0.05)
    assert a.counters.rejected["unknown_key"] >= 1
    assert a.membership.member("x") is None


def bot(i: int) -> bytes:
    return b"\x00" * 10 + b"\xff\xff" + bytes([44, 1]) + i.to_bytes(2, "big")


async def test_a_large_delta_travels_on_the_stream_in_a_few_frames() -> None:
    net = MemoryNetwork(rng=random.Random(4))
    streams = MemoryStreams()
    a = make_node(net, "s0", 7300, streams=streams, max_message_bytes=1_400)
    b = make_node(net, "s1", 7301, streams=streams, max_message_bytes=1_400)
    now = time.time_ns()
    for i in range(3_000):
        table(a).record_local((bot(i), VICTIM), LocalCount(now, now + i, dc=1 + i % 3, mark=0))
    stop = asyncio.Event()
    b.join([("10.20.0.1", 7300)])
    tasks = [asyncio.create_task(n.run(stop)) for n in (a, b)]
    try:
        await run_until(lambda: len(table(b).pair_views()) == 3_000, 10)
        assert table(b).pair_view((bot(2_999), VICTIM)) == table(a).pair_view((bot(2_999), VICTIM))
        assert a.counters.streams_sent >= 1
        assert a.counters.sent["delta"] < 10  # frames, not hundreds of datagrams
        assert b.counters.rows_accepted == 3_000
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def test_stream_frames_under_another_key_or_replayed_are_refused() -> None:
    net = MemoryNetwork(rng=random.Random(5))
    streams = MemoryStreams()
    a = make_node(net, "r0", 7400, streams=streams)
    datagram = auth.seal(KEYRING, "x", 1, 0, time.time_ns(), b"payload")
    a.receive_frame(datagram, ("10.20.0.1", 9))  # a datagram's magic on the stream
    assert a.counters.rejected["bad_magic"] == 1
    frame = auth.seal(KEYRING, "x", 1, 0, time.time_ns(), b"\xc1", magic=auth.STREAM_MAGIC)
    a.receive_frame(frame, ("10.20.0.1", 9))
    a.receive_frame(frame, ("10.20.0.1", 9))
    assert a.counters.rejected["malformed"] == 1 and a.counters.rejected["replay"] == 1


async def test_new_own_rows_are_gossiped_at_once_not_at_the_next_round() -> None:
    """round_soon: a node with new rows of its own starts a round now (the
    map sync calls it after a cycle), so a peer holds them long before the
    next round of either (here 30 s away); the peer's merge is announced."""
    import dataclasses

    net = MemoryNetwork(rng=random.Random(3))
    a, b = make_node(net, "a", 7100), make_node(net, "b", 7101)
    for n in (a, b):
        n.timing = dataclasses.replace(n.timing, interval_ns=30 * S)
    merged = asyncio.Event()
    b.on_merged = merged.set
    stop = asyncio.Event()
    b.join([("10.20.0.1", 7100)])
    tasks = [asyncio.create_task(n.run(stop)) for n in (a, b)]
    try:
        await run_until(lambda: a.membership.num_live() == 2 == b.membership.num_live(), 10)
        await asyncio.sleep(0.3)  # past the eager gap (100 ms) after the first round
        a.counters.rounds = 0
        now = time.time_ns()
        table(a).record_local((client(9), VICTIM), LocalCount(now, now, dc=4, mark=0))
        a.round_soon()
        await run_until(lambda: table(b).pair_view((client(9), VICTIM)) is not None, 5)
        assert a.counters.rounds == 1
        assert merged.is_set()
    finally:
        stop.set()
        await asyncio.gather(*tasks)
