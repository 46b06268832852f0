"""Map sync: kernel counts → own rows → mesh view → re-based maps, nothing lost."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from xpro_mesh.agent.mapsync import plan_destinations, plan_sync
from xpro_mesh.core.algorithm import Params
from xpro_mesh.core.gossip_state import GossipState
from xpro_mesh.datapath.backend import PairKey
from xpro_mesh.datapath.config import XdpConfig
from xpro_mesh.datapath.memory import MemoryMaps

S = 10**9
P = Params(t_t1=5 * S, t_t2=S, t_t3=S, t_t4=60 * S, t_f1=10**6, t_f2=10**7, r=2)
VICTIM = "10.20.0.2"


class Node:
    """An agent's map-sync half: its state and its (in-memory) data path."""

    def __init__(self, name: str) -> None:
        self.state = GossipState(name, incarnation=1, params=P)
        self.maps = MemoryMaps(XdpConfig.from_params(P))

    def cycle(self, now: int) -> None:
        plan = plan_sync(self.state, self.maps.read_pairs(), now)
        self.maps.delete_pairs(plan.deletes)
        report = self.maps.apply(pair_ops=plan.pair_ops)
        skipped = {*report.restarted, *report.missing}
        self.maps.apply(dest_ops=plan_destinations(self.state, plan.pair_ops, skipped))


def exchange(a: Node, b: Node, now: int) -> None:
    b.state.merge(a.state.delta_for(b.state.digest()), now)
    a.state.merge(b.state.delta_for(a.state.digest()), now)


def kernel_count(node: Node, src: str) -> int:
    records = dict(node.maps.read_pairs())
    return records[PairKey.of(src, VICTIM)].c


def test_a_pair_counted_on_two_proxies_is_known_in_full_to_both_kernels() -> None:
    a, b = Node("a"), Node("b")
    now = 100 * S
    for i in range(30):
        a.maps.feed("10.10.100.5", VICTIM, now + i * 1000)
    for i in range(12):
        b.maps.feed("10.10.100.5", VICTIM, now + i * 1000)
    t = now + S // 2
    a.cycle(t)
    b.cycle(t)
    exchange(a, b, t)
    a.cycle(t + 1)
    b.cycle(t + 1)
    assert kernel_count(a, "10.10.100.5") == 42
    assert kernel_count(b, "10.10.100.5") == 42
    dest_a = dict(a.maps.read_destinations())[PairKey.of("::", VICTIM).dst]
    assert (dest_a.c, dest_a.clients) == (42, 1)


def test_a_client_seen_only_elsewhere_is_created_in_the_kernel() -> None:
    a, b = Node("a"), Node("b")
    now = 100 * S
    for i in range(7):
        a.maps.feed("10.10.100.9", VICTIM, now + i)
    a.cycle(now + 10)
    exchange(a, b, now + 10)
    b.cycle(now + 11)
    assert kernel_count(b, "10.10.100.9") == 7
    b.maps.feed("10.10.100.9", VICTIM, now + 12)
    assert kernel_count(b, "10.10.100.9") == 8


def test_packets_counted_between_read_and_apply_are_not_lost() -> None:
    a = Node("a")
    now = 100 * S
    for i in range(5):
        a.maps.feed("10.10.100.5", VICTIM, now + i)
    plan = plan_sync(a.state, a.maps.read_pairs(), now + 10)
    for i in range(3):  # the kernel keeps counting while the agent plans
        a.maps.feed("10.10.100.5", VICTIM, now + 20 + i)
    a.maps.apply(pair_ops=plan.pair_ops)
    rec = dict(a.maps.read_pairs())[PairKey.of("10.10.100.5", VICTIM)]
    assert (rec.c, rec.dc) == (8, 3)
    a.cycle(now + 30)
    rec = dict(a.maps.read_pairs())[PairKey.of("10.10.100.5", VICTIM)]
    assert (rec.c, rec.dc) == (8, 0)
    assert a.state.own_entry(rec_key(rec_src="10.10.100.5")).c == 8  # type: ignore[union-attr]


def rec_key(rec_src: str) -> tuple[bytes, bytes]:
    k = PairKey.of(rec_src, VICTIM)
    return (k.src, k.dst)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10**6), nodes=st.integers(2, 4))
def test_every_kernel_converges_to_the_exact_mesh_count(seed: int, nodes: int) -> None:
    rng = random.Random(seed)
    mesh = [Node(f"n{i}") for i in range(nodes)]
    clients = [f"10.10.100.{i}" for i in range(2, 8)]
    truth: dict[str, int] = dict.fromkeys(clients, 0)
    now = 100 * S
    for _round in range(6):
        for _ in range(rng.randint(0, 60)):
            src = rng.choice(clients)
            rng.choice(mesh).maps.feed(src, VICTIM, now)
            truth[src] += 1
            now += rng.randint(1, 2000)
        for n in mesh:
            n.cycle(now)
        for _ in range(nodes):
            x, y = rng.sample(mesh, 2)
            exchange(x, y, now)
    for _ in range(3):  # traffic has stopped: settle
        for x in mesh:
            for y in mesh:
                if x is not y:
                    exchange(x, y, now)
        for n in mesh:
            n.cycle(now)
    for n in mesh:
        seen = {src: rec.c for key, rec in n.maps.read_pairs() for src in [str(key.src_ip)]}
        assert {s: seen.get(s, 0) for s in clients} == truth
        dst = dict(n.maps.read_destinations())[PairKey.of("::", VICTIM).dst]
        assert dst.c == sum(truth.values())
        assert dst.clients == sum(1 for v in truth.values() if v)


def test_an_agent_back_from_a_gap_replays_the_halvings_it_missed() -> None:
    """A kernel that counted for 16 x T_T4 without its agent (a crash): the
    first cycle brings the window back within T_T4 at once, rate kept, as
    the missed syncs would have (Alg. 1 lines 13-17, once per sync), so the
    destination's rate is not diluted by a window 16 times too wide."""
    short = Params(t_t1=5 * S, t_t2=S, t_t3=S, t_t4=2 * S, t_f1=10**6, t_f2=10**7, r=2)
    node = Node("a")
    node.state = GossipState("a", incarnation=2, params=short)
    now = 100 * S
    for i in range(3200):  # 100 pps for 32 s
        node.maps.feed("10.10.100.5", VICTIM, now + i * (S // 100))
    end = now + 3199 * (S // 100)
    node.cycle(end + 1)
    rec = dict(node.maps.read_pairs())[PairKey.of("10.10.100.5", VICTIM)]
    assert rec.ts2 - rec.ts1 <= short.t_t4
    assert rec.dc == 0
    rate = rec.c / ((rec.ts2 - rec.ts1) / S)
    assert 95 <= rate <= 105  # the pair's rate survives the halvings
    key = PairKey.of("10.10.100.5", VICTIM)
    own = node.state.own_entry((key.src, key.dst))
    assert own is not None and own.ts2 - own.ts1 <= short.t_t4
    dest = dict(node.maps.read_destinations())[PairKey.of("::", VICTIM).dst]
    assert dest.ts2 - dest.ts1 <= short.t_t4


def test_a_new_window_just_past_t_t4_is_halved_once_not_more() -> None:
    """The paper's first sync of a pair stores it as counted (lines 31-33) and
    the next one halves it; the catch-up does that second sync at once, and
    stops there: within T_T4, no further halving."""
    short = Params(t_t1=5 * S, t_t2=S, t_t3=S, t_t4=2 * S, t_f1=10**6, t_f2=10**7, r=2)
    node = Node("a")
    node.state = GossipState("a", incarnation=1, params=short)
    now = 100 * S
    for i in range(30):  # 10 pps for 3 s: past T_T4, within 2 T_T4
        node.maps.feed("10.10.100.5", VICTIM, now + i * (S // 10))
    node.cycle(now + 3 * S)
    rec = dict(node.maps.read_pairs())[PairKey.of("10.10.100.5", VICTIM)]
    assert rec.c == 15  # one halving, c // r
    assert rec.ts2 - rec.ts1 == (29 * (S // 10)) // 2  # the window halved once, not more


LAB = Params(t_t1=3 * S, t_t2=S // 2, t_t3=S, t_t4=2 * S, t_f1=50, t_f2=1440, r=2)


def test_a_client_moving_between_proxies_keeps_its_rate_on_every_node() -> None:
    """A bot at 20 pps counted at proxy a; a dies and the bot's traffic moves
    to b (a failover); later a is back (a new incarnation, same kernel) and
    the bot moves back. Every node's view of the bot's rate stays near the
    truth. Before each origin synced its own window only, the proxy that
    took over imported the dead one's start into its row and halved its own
    count each T_T4, and the proxy left behind kept its row alive on the
    view's end: the bot read at a tenth of its rate, and passed."""
    nodes = {name: Node(name) for name in "abc"}
    for node in nodes.values():
        node.state = GossipState(node.state.node_id, incarnation=1, params=LAB)
        node.maps = MemoryMaps(XdpConfig.from_params(LAB))
    bot = "10.10.101.100"
    key = PairKey.of(bot, VICTIM)
    t0 = 1000 * S
    alive, at = {"a", "b", "c"}, "a"
    readings: list[tuple[float, str, float]] = []
    for tick in range(26 * 20):  # 50 ms ticks, 26 s
        now = t0 + tick * (S // 20)
        second = tick / 20
        if second == 8:
            alive.discard("a")
            at = "b"
        if second == 16:
            old = nodes["a"]
            nodes["a"] = Node("a")
            nodes["a"].state = GossipState("a", incarnation=2, params=LAB)
            nodes["a"].maps = old.maps
            for other in ("b", "c"):
                exchange(nodes[other], nodes["a"], now)
            alive.add("a")
            at = "a"
        nodes[at].maps.feed(bot, VICTIM, now)
        if tick % 2 == 0:  # 100 ms rounds
            for name in sorted(alive):
                nodes[name].cycle(now)
            for x in sorted(alive):
                for y in sorted(alive):
                    if x < y:
                        exchange(nodes[x], nodes[y], now)
        if tick % 20 == 0 and second >= 2:
            for name in sorted(alive):
                view = nodes[name].state.pair_view((key.src, key.dst))
                assert view is not None
                readings.append((second, name, view.c / ((view.ts2 - view.ts1) / S)))
    for second, name, rate in readings:
        if second in (8, 9, 16, 17):  # the second of the move and the one after
            continue
        assert 10 <= rate <= 30, f"{name} reads {rate:.1f} pps at {second:g} s (truth: 20)"
