"""Specification of the masterless merge (docs/design.md, "Records and merging
without a master"): fidelity to Algorithm 1, exact counts under loss,
duplication and reordering, convergence in O(log N) rounds, safety against
peers; and the view, expiry and restart rules they rest on."""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from xpro_mesh.algorithm import (
    LocalRecord,
    MasterRecord,
    Params,
    filter_packet,
    sync_master,
)
from xpro_mesh.core.gossip_state import (
    ZERO_VERSION,
    Coverage,
    Delta,
    Digest,
    GossipState,
    LocalCount,
    MergeLimits,
    OriginEntry,
    Pair,
    PairEntry,
    PairView,
    Rejection,
    chunk_delta,
    fold_destination,
    fold_pair,
)
from xpro_mesh.core.params import Policy
from xpro_mesh.core.simulator import Simulation, SimulationConfig

S = 10**9
P = Params(t_t1=2 * S, t_t2=S, t_t3=S, t_t4=10 * S, t_f1=100, t_f2=1000, r=2)
T0 = 1_000 * S  # cluster time of the first packet in these tests
NOW = T0 + 100 * S
HORIZON = 200 * S  # long enough that nothing ages out unless a test wants it

CLIENTS = ("c0", "c1", "c2")
DESTS = ("d0", "d1")


def pair(i: int = 0, d: int = 0) -> Pair:
    return (CLIENTS[i], DESTS[d])


def node(name: str, incarnation: int = 1, horizon: int = HORIZON) -> GossipState:
    return GossipState(name, incarnation, P, horizon_ns=horizon)


def row(ts1: int, ts2: int, c: int, version: tuple[int, int]) -> OriginEntry:
    return OriginEntry(ts1=ts1, ts2=ts2, c=c, version=version)


def exchange(a: GossipState, b: GossipState, now: int = NOW, chunk: int = 1024) -> None:
    """One lossless push-pull between a and b."""
    for piece in chunk_delta(b.delta_for(a.digest()), chunk):
        a.merge(piece, now)
    for piece in chunk_delta(a.delta_for(b.digest()), chunk):
        b.merge(piece, now)


def count(state: GossipState, p: Pair, ts1: int, ts2: int, dc: int, mark: int = 0) -> OriginEntry:
    return state.record_local(p, LocalCount(ts1=ts1, ts2=ts2, dc=dc, mark=mark)).entry


# --- the paper's master, as a reference model ---------------------------------


@dataclass
class PaperProxy:
    """One proxy and the paper's master: L_DB driven by Algorithm 2, M_DB by
    Algorithm 1. After a sync the proxy writes back the L_DB record Algorithm 1
    returns; on lines 31-33 the paper leaves dc' (and mark') set, which would
    count the first window twice at the next sync, so the write-back clears
    them, as it does (as a no-op) on every other path."""

    table: dict[Pair, LocalRecord] = field(default_factory=dict)
    master: dict[Pair, MasterRecord] = field(default_factory=dict)

    def sync(self) -> None:
        for p, local in list(self.table.items()):
            was_in_master = p in self.master
            new_local, new_master = sync_master(local, self.master.get(p), P)
            assert new_local is not None and new_master is not None
            if was_in_master:
                assert (new_local.dc, new_local.mark) == (0, 0)  # lines 5-25 clear them
            self.table[p] = LocalRecord(new_local.ts1, new_local.ts2, new_local.c, 0, 0)
            self.master[p] = new_master


def true_view(masters: list[MasterRecord]) -> PairView:
    """The pair view computed from scratch: the origins whose window is still
    current (ts2 within T_T1 of the newest), their counts summed."""
    newest = max(m.ts2 for m in masters)
    live = [m for m in masters if newest - m.ts2 <= P.t_t1]
    return PairView(
        ts1=min(m.ts1 for m in live), ts2=newest, c=sum(m.c for m in live), origins=len(live)
    )


# Gaps between packets: bursts, steady streams whose windows grow past T_T4,
# idle periods around T_T1 (restarts), long silences.
steady = st.integers(S // 10, S // 2)
gaps = st.one_of(
    st.integers(0, S // 10),
    steady,
    steady,
    steady,
    st.integers(S // 2, 3 * S),
    st.integers(P.t_t1 - 5, P.t_t1 + 5),
    st.integers(P.t_t4 // 2, P.t_t4 + 2 * S),
)
# Mostly one busy pair, so that its window can grow past T_T4 between idle restarts.
packet_steps = st.tuples(
    st.just("packet"), st.sampled_from([0, 0, 0, 1, 2]), st.sampled_from([0, 0, 1]), gaps
)
sync_steps = st.tuples(st.just("sync"), st.just(0), st.just(0), st.just(0))
# A steady train of n packets 0.5 s apart: a window that outgrows T_T4.
train_steps = st.tuples(st.just("train"), st.integers(0, 1), st.just(0), st.integers(1, 40))


# --- 1. fidelity ----------------------------------------------------------------


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.one_of(*[packet_steps] * 4, train_steps, sync_steps, sync_steps), max_size=80))
def test_single_origin_through_gossip_state_reproduces_algorithm_1_step_by_step(
    steps: list[tuple[str, int, int, int]],
) -> None:
    paper = PaperProxy()
    kernel: dict[Pair, LocalRecord] = {}
    state = node("solo")
    now = T0
    for kind, client, dest, gap in [*steps, ("sync", 0, 0, 0)]:
        if kind != "sync":
            for _ in range(gap if kind == "train" else 1):
                now += S // 2 if kind == "train" else gap
                verdict = filter_packet(paper.table, CLIENTS[client], DESTS[dest], now, P)
                assert filter_packet(kernel, CLIENTS[client], DESTS[dest], now, P) == verdict
            continue
        paper.sync()
        for p, local in list(kernel.items()):
            if local.dc or local.mark:
                # One origin: its own window is the kernel's record.
                assert state.own_count(p, local) == LocalCount.from_record(local)
            synced = state.record_local(p, LocalCount.from_record(local))
            kernel[p] = synced.local
            m = paper.master[p]
            assert (synced.entry.ts1, synced.entry.ts2, synced.entry.c) == (m.ts1, m.ts2, m.c)
        assert kernel == paper.table


def test_first_sync_of_a_pair_takes_the_local_window_lines_31_33() -> None:
    state = node("a")
    synced = state.record_local(pair(), LocalCount(ts1=T0, ts2=T0 + S, dc=5, mark=0))
    assert synced.entry == row(T0, T0 + S, 5, (1, 1))
    assert synced.local == LocalRecord(T0, T0 + S, 5, 0, 0)  # dc', mark' cleared
    assert synced.changed


def test_sync_without_new_packets_keeps_the_version() -> None:
    state = node("a")
    first = count(state, pair(), T0, T0 + S, 5)
    again = state.record_local(pair(), LocalCount(ts1=T0, ts2=T0 + S, dc=0, mark=0))
    assert not again.changed and again.entry == first


def test_sync_without_new_packets_still_shrinks_a_window_past_t_t4_lines_13_17() -> None:
    state = node("a")
    count(state, pair(), T0, T0 + 12 * S, 40)
    shrunk = state.record_local(pair(), LocalCount(ts1=T0, ts2=T0 + 12 * S, dc=0, mark=0))
    assert shrunk.changed
    assert shrunk.entry == row(T0 + 6 * S, T0 + 12 * S, 20, (1, 2))


def test_idle_restart_counts_only_the_new_window_lines_5_8() -> None:
    state = node("a")
    count(state, pair(), T0, T0 + S, 50)
    # Alg. 2 restarted the window (mark' = 1) and counted 3 packets since.
    entry = count(state, pair(), T0 + 10 * S, T0 + 11 * S, 3, mark=1)
    assert entry == row(T0 + 10 * S, T0 + 11 * S, 3, (1, 2))


def test_inconsistent_local_count_is_a_bug_not_input() -> None:
    with pytest.raises(ValueError):
        node("a").record_local(pair(), LocalCount(ts1=T0 + 1, ts2=T0, dc=1, mark=0))


# --- views ------------------------------------------------------------------------


def test_pair_view_sums_live_origins_and_leaves_out_rows_idle_past_t_t1() -> None:
    rows = [
        row(T0, T0 + 5 * S, 10, (1, 1)),
        row(T0 + S, T0 + 4 * S, 7, (1, 1)),
        row(T0 - 9 * S, T0, 1000, (1, 1)),  # 5 s behind the newest: an older window
    ]
    assert fold_pair(rows, P.t_t1) == PairView(ts1=T0, ts2=T0 + 5 * S, c=17, origins=2)


def test_row_exactly_t_t1_behind_the_newest_is_still_live() -> None:
    rows = [row(T0, T0 + 5 * S, 10, (1, 1)), row(T0, T0 + 3 * S, 4, (1, 1))]
    assert fold_pair(rows, P.t_t1) == PairView(ts1=T0, ts2=T0 + 5 * S, c=14, origins=2)
    rows[1] = row(T0, T0 + 3 * S - 1, 4, (1, 1))
    assert fold_pair(rows, P.t_t1) == PairView(ts1=T0, ts2=T0 + 5 * S, c=10, origins=1)


def test_nodes_holding_the_same_rows_compute_the_same_view() -> None:
    a, b, c = node("a"), node("b"), node("c")
    count(a, pair(), T0, T0 + S, 3)
    count(b, pair(), T0 + S // 2, T0 + 2 * S, 4)
    for x, y in ((a, b), (b, c), (a, c)):
        exchange(x, y)
    views = {s.node_id: s.pair_view(pair()) for s in (a, b, c)}
    assert set(views.values()) == {PairView(ts1=T0, ts2=T0 + 2 * S, c=7, origins=2)}


def test_destination_view_folds_its_pairs_and_counts_them_for_fair_share() -> None:
    a, b = node("a"), node("b")
    count(a, pair(0, 0), T0, T0 + S, 3)
    count(b, pair(0, 0), T0, T0 + 2 * S, 4)
    count(b, pair(1, 0), T0 + S, T0 + 3 * S, 5)
    count(b, pair(2, 1), T0, T0 + S, 100)  # another destination
    exchange(a, b)
    for s in (a, b):
        view = s.destination_view(DESTS[0])
        assert view is not None
        # fair-share: the window starts where 12 packets read the sum of the
        # pairs' rates: 7 in 2 s and 5 in 2 s, 6/s, so 2 s before the end
        assert (view.ts1, view.ts2, view.c, view.clients) == (T0 + S, T0 + 3 * S, 12, 2)
        assert s.destination_views()[DESTS[1]].c == 100
        s.set_params(replace(P, policy=Policy.PAPER))  # lines 18-20 as written: min ts1
        view = s.destination_view(DESTS[0])
        assert view is not None
        assert (view.ts1, view.ts2, view.c, view.clients) == (T0, T0 + 3 * S, 12, 2)
    assert a.destination_view("nobody") is None
    assert fold_destination([]) is None


def test_a_destination_of_staggered_steady_clients_reads_their_whole_rate() -> None:
    """Each client's window restarts on its own, so their starts spread over
    T_T4: the earliest start (lines 18-20) reads 100 steady clients at
    about 3/4 of their rate, the sum of their rates (fair-share's view) at it."""
    s = node("a")
    for i in range(100):
        length = S + i * S // 100  # windows from 1 s to 2 s long, all ending now
        src = bytes([10, 1, 0, i]).rjust(16, b"\0")
        count(s, (src, DESTS[0]), T0 + 2 * S - length, T0 + 2 * S, 2 * (1 + i % 2))
    fair = s.destination_view(DESTS[0])
    s.set_params(replace(P, policy=Policy.PAPER))
    literal = s.destination_view(DESTS[0])
    assert fair is not None and literal is not None
    fair_rate = fair.c * S / (fair.ts2 - fair.ts1)
    literal_rate = literal.c * S / (literal.ts2 - literal.ts1)
    true_rate = sum(2 * (1 + i % 2) / (1 + i / 100) for i in range(100))
    assert abs(fair_rate - true_rate) / true_rate < 0.001
    assert literal_rate < 0.8 * true_rate


def test_a_destination_window_follows_the_rows_that_still_count() -> None:
    """A busy client (100/s) moved from proxy x, which died, to proxy y; a
    slow one (10/s) has talked through y all along. Once x's row of the busy
    client no longer counts (T_T1 older than y's), the destination reads
    both rates, 110/s; the earliest start would spread the busy client's new
    window over the slow client's long one and read 48/s: the dip through
    which the attack came back after every proxy failure."""
    x, y = node("x"), node("y")
    count(x, pair(1, 0), T0 + S, T0 + 4 * S, 300)  # the busy client at x, 100/s
    count(y, pair(1, 0), T0 + 4 * S, T0 + 6 * S + S // 2, 250)  # moved to y, 100/s
    count(y, pair(0, 0), T0, T0 + 6 * S + S // 2, 65)  # the slow client, 10/s
    exchange(x, y)
    busy = y.pair_view(pair(1, 0))
    assert busy is not None and busy.c == 250  # x's row left the pair's view
    fair = y.destination_view(DESTS[0])
    assert fair is not None
    assert fair.c * S // (fair.ts2 - fair.ts1) == 110
    y.set_params(replace(P, policy=Policy.PAPER))
    literal = y.destination_view(DESTS[0])
    assert literal is not None
    assert literal.c * S // (literal.ts2 - literal.ts1) == 48


# --- anti-entropy: merge algebra, chunks, claims ----------------------------------------

ORIGINS = ("o1", "o2", "o3")


@st.composite
def row_universe(draw: st.DrawFn) -> list[PairEntry]:
    """Rows as origins issue them: per origin increasing versions, one
    content per version."""
    universe: list[PairEntry] = []
    for origin in ORIGINS:
        seq = 0
        for _ in range(draw(st.integers(0, 6))):
            seq += draw(st.integers(1, 3))
            ts1 = T0 + draw(st.integers(0, 4 * S))
            ts2 = ts1 + draw(st.integers(0, 3 * S))
            p = (CLIENTS[draw(st.integers(0, 2))], DESTS[draw(st.integers(0, 1))])
            universe.append(
                PairEntry(p, origin, row(ts1, ts2, draw(st.integers(0, 500)), (1, seq)))
            )
    return universe


def rows_and_views(state: GossipState) -> tuple[set[PairEntry], dict[Pair, PairView]]:
    return set(state.entries()), state.pair_views()


@settings(max_examples=500, deadline=None)
@given(row_universe(), st.data())
def test_merge_is_commutative_associative_idempotent(
    universe: list[PairEntry], data: st.DataObject
) -> None:
    picks = st.lists(st.sampled_from(universe), max_size=len(universe)) if universe else st.just([])
    deltas = [Delta(entries=tuple(data.draw(picks))) for _ in range(3)]
    one, two, three = node("x"), node("y"), node("z")
    for d in deltas:
        one.merge(d, NOW)
    for d in [deltas[2], deltas[0], deltas[1], deltas[0], deltas[2]]:  # reordered, duplicated
        two.merge(d, NOW)
    three.merge(Delta(entries=deltas[1].entries + deltas[2].entries), NOW)  # grouped differently
    three.merge(deltas[0], NOW)
    three.merge(Delta(entries=tuple(reversed(deltas[0].entries))), NOW)
    assert rows_and_views(one) == rows_and_views(two) == rows_and_views(three)
    # ...and the result is the newest version of each (pair, origin) delivered.
    newest: dict[tuple[Pair, str], PairEntry] = {}
    for d in deltas:
        for pe in d.entries:
            held = newest.get((pe.pair, pe.origin))
            if held is None or pe.entry.version > held.entry.version:
                newest[(pe.pair, pe.origin)] = pe
    assert set(one.entries()) == set(newest.values())


@settings(max_examples=300, deadline=None)
@given(row_universe(), st.integers(1, 4), st.randoms(use_true_random=False))
def test_chunks_are_bounded_and_deliver_the_whole_delta_in_any_order(
    universe: list[PairEntry], size: int, rnd: random.Random
) -> None:
    hub = node("hub")  # has heard every row the origins issued, and says so
    tops = {
        pe.origin: max(q.entry.version for q in universe if q.origin == pe.origin)
        for pe in universe
    }
    claims = tuple(Coverage(origin, ZERO_VERSION, top) for origin, top in tops.items())
    hub.merge(Delta(entries=tuple(universe), coverage=claims), NOW)
    fresh = node("fresh")
    delta = hub.delta_for(fresh.digest())
    chunks = list(chunk_delta(delta, size))
    assert all(len(c.entries) <= size and len(c.coverage) <= size for c in chunks)
    assert Counter(pe for c in chunks for pe in c.entries) == Counter(delta.entries)
    rnd.shuffle(chunks)
    for c in chunks:
        fresh.merge(c, NOW)
    assert rows_and_views(fresh) == rows_and_views(hub)
    exchange(fresh, hub)  # a claim that arrived before its predecessor is repaired
    assert fresh.digest().versions == hub.digest().versions == tops


def test_lost_chunk_stops_the_digest_at_the_gap_and_is_sent_again() -> None:
    origin = node("o")
    for i in range(6):
        count(origin, (f"c{i}", "d0"), T0, T0 + S, i + 1)
    receiver = node("r")
    chunks = chunk_delta(origin.delta_for(receiver.digest()), 2)
    assert len(chunks) == 3
    receiver.merge(chunks[0], NOW)
    receiver.merge(chunks[2], NOW)  # chunks[1] is lost
    assert receiver.digest().versions["o"] == (1, 2)  # not (1, 6): the gap stays open
    resend = origin.delta_for(receiver.digest())
    assert {pe.entry.version for pe in resend.entries} == {(1, 3), (1, 4), (1, 5), (1, 6)}
    receiver.merge(resend, NOW)
    assert receiver.digest().versions["o"] == (1, 6)
    assert len(receiver) == 6
    assert origin.delta_for(receiver.digest()) == Delta()


def test_full_state_brings_a_joining_node_to_the_same_views() -> None:
    a, b = node("a"), node("b")
    count(a, pair(0, 0), T0, T0 + S, 3)
    count(b, pair(1, 1), T0, T0 + S, 4)
    exchange(a, b)
    joiner = node("j")
    joiner.merge(a.full_state(), NOW)
    assert rows_and_views(joiner) == rows_and_views(a)
    assert joiner.digest().versions == {"a": (1, 1), "b": (1, 1)}


# --- 2. exactness ------------------------------------------------------------------


@dataclass
class MeshNode:
    state: GossipState
    kernel: dict[Pair, LocalRecord] = field(default_factory=dict)
    paper: PaperProxy = field(default_factory=PaperProxy)  # the independent truth
    now: int = T0

    def packet(self, p: Pair, gap: int) -> None:
        self.now += gap
        filter_packet(self.kernel, p[0], p[1], self.now, P)
        filter_packet(self.paper.table, p[0], p[1], self.now, P)

    def sync(self) -> None:
        for p, local in list(self.kernel.items()):
            self.kernel[p] = self.state.record_local(p, LocalCount.from_record(local)).local
        self.paper.sync()


packet_action = st.tuples(st.just("packet"), st.integers(0, 3), st.integers(0, 5), gaps)
sync_action = st.tuples(st.just("sync"), st.integers(0, 3), st.just(0), st.just(0))
send_action = st.tuples(st.just("send"), st.integers(0, 3), st.integers(0, 3), st.integers(1, 3))
deliver_action = st.tuples(st.just("deliver"), st.integers(0, 10**6), st.booleans(), st.just(0))
drop_action = st.tuples(st.just("drop"), st.integers(0, 10**6), st.just(0), st.just(0))
actions = st.lists(
    st.one_of(
        packet_action,
        packet_action,
        packet_action,
        sync_action,
        sync_action,
        send_action,
        send_action,
        deliver_action,
        deliver_action,
        drop_action,
    ),
    min_size=10,
    max_size=80,
)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(2, 4), actions, st.lists(st.booleans(), max_size=40), st.randoms())
@example(  # a chunk arrives after its predecessor was lost: the digest must not jump the gap
    n=3,
    steps=[
        ("packet", 2, 1, 0),
        ("sync", 2, 0, 0),
        ("packet", 2, 0, 0),
        ("sync", 2, 0, 0),
        ("send", 0, 2, 1),
        ("deliver", 1, False, 0),
    ],
    fates=[],
    rnd=random.Random(0),
)
def test_counts_are_exact_after_loss_duplication_and_reordering(
    n: int, steps: list[tuple[str, int, int, int]], fates: list[bool], rnd: random.Random
) -> None:
    mesh = [MeshNode(node(f"p{i}")) for i in range(n)]
    in_flight: list[tuple[int, Delta]] = []
    sent: list[tuple[int, Delta]] = []
    for kind, x, y, z in steps:
        if kind == "packet":
            mesh[x % n].packet((CLIENTS[y % 3], DESTS[y // 3]), z)
        elif kind == "sync":
            mesh[x % n].sync()
        elif kind == "send":  # x asks y: y's delta for x's digest, in small chunks
            asker, giver = mesh[x % n].state, mesh[y % n].state
            in_flight += [(x % n, c) for c in chunk_delta(giver.delta_for(asker.digest()), z)]
            sent += in_flight
        elif in_flight and kind == "deliver":
            receiver, chunk = in_flight[x % len(in_flight)]
            mesh[receiver].state.merge(chunk, NOW)
            if not y:  # delivered once; otherwise it stays in flight (duplicate)
                in_flight.remove((receiver, chunk))
        elif in_flight and kind == "drop":
            in_flight.pop(x % len(in_flight))
    for m in mesh:  # traffic stops; every proxy syncs what it counted
        m.sync()
    rnd.shuffle(in_flight)  # what is still in flight arrives late, out of order, or never
    for i, (receiver, chunk) in enumerate(in_flight):
        if i < len(fates) and fates[i]:
            mesh[receiver].state.merge(chunk, NOW)
    for _ in range(2):  # lossless rounds, every pair of nodes
        for a in mesh:
            for b in mesh:
                if a is not b:
                    exchange(a.state, b.state, chunk=2)

    pairs = {p for m in mesh for p in m.paper.master}
    truth = {p: true_view([m.paper.master[p] for m in mesh if p in m.paper.master]) for p in pairs}
    for m in mesh:
        assert m.state.pair_views() == truth
    for receiver, chunk in sent:  # old copies of every message change nothing
        mesh[receiver].state.merge(chunk, NOW)
    for m in mesh:
        assert m.state.pair_views() == truth


# --- 3. convergence ----------------------------------------------------------------


@pytest.mark.parametrize("nodes", [1, 2, 3, 8, 50, 200, 300])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_push_pull_converges_within_log2_n_plus_2_rounds(nodes: int, seed: int) -> None:
    sim = Simulation(SimulationConfig(nodes=nodes, fanout=3, loss=0.0, seed=seed, clients=nodes))
    for _ in sim.rounds():
        pass
    result = sim.result()
    assert result.converged
    assert result.rounds_to_converge is not None
    assert result.rounds_to_converge <= math.ceil(math.log2(nodes)) + 2
    assert result.max_count_error == 0


def test_push_pull_converges_under_message_loss() -> None:
    sim = Simulation(SimulationConfig(nodes=100, fanout=3, loss=0.3, seed=7, chunk_entries=8))
    for _ in sim.rounds():
        pass
    result = sim.result()
    assert result.converged and result.max_count_error == 0 and result.messages_lost > 0


# --- 4. safety against peers ------------------------------------------------------------

hostile_ints = st.one_of(
    st.integers(-(2**64), 2**64), st.sampled_from([0, -1, T0, NOW, NOW + 10 * S, 2**63])
)


@st.composite
def hostile_rows(draw: st.DrawFn) -> PairEntry:
    ts1 = draw(st.one_of(hostile_ints, st.integers(T0, NOW)))
    ts2 = draw(st.one_of(hostile_ints, st.integers(T0, NOW), st.just(ts1)))
    version = (draw(st.integers(-2, 3)), draw(st.one_of(st.integers(-2, 10), hostile_ints)))
    return PairEntry(
        (CLIENTS[draw(st.integers(0, 2))], DESTS[0]),
        draw(st.sampled_from(["me", "peer", ""])),
        row(ts1, ts2, draw(st.one_of(hostile_ints, st.integers(0, 50))), version),
    )


@settings(max_examples=600, deadline=None)
@given(
    st.lists(hostile_rows(), max_size=12),
    st.lists(
        st.builds(
            Coverage,
            st.sampled_from(["me", "peer", ""]),
            st.tuples(st.integers(-1, 3), st.integers(-1, 10)),
            st.tuples(st.integers(-1, 3), st.integers(-1, 10)),
        ),
        max_size=4,
    ),
)
def test_hostile_peer_cannot_overwrite_own_rows_roll_back_or_plant_implausible_rows(
    rows: list[PairEntry], claims: list[Coverage]
) -> None:
    me = node("me")
    count(me, pair(0), T0, T0 + S, 5)
    count(me, pair(1), T0, T0 + 2 * S, 9)
    me.merge(Delta(entries=(PairEntry(pair(2), "peer", row(T0, T0 + S, 4, (1, 5))),)), NOW)
    before = {(pe.pair, pe.origin): pe.entry for pe in me.entries()}
    limits = MergeLimits()

    report = me.merge(Delta(entries=tuple(rows), coverage=tuple(claims)), NOW, limits)

    assert report.accepted + report.adopted + report.stale + report.rejected_total == len(rows)
    after = {(pe.pair, pe.origin): pe.entry for pe in me.entries()}
    for key, old in before.items():
        new = after[key]
        assert new.version >= old.version  # nothing rolled back
        if key[1] == "me":  # our counts stay ours (a conflict may only re-issue them)
            assert (new.ts1, new.ts2, new.c) == (old.ts1, old.ts2, old.c)
    for key, e in after.items():
        if key in before:
            continue
        # Anything new (a peer's row, or an adopted row of an "earlier life" of
        # ours) is within the bounds.
        assert key[1] and 0 <= e.ts1 <= e.ts2 <= NOW + limits.max_skew_ns
        assert e.ts2 >= NOW - HORIZON
        assert e.c * S <= limits.max_rate_pps * (e.ts2 - e.ts1 + limits.rate_slack_ns)
        assert e.version > ZERO_VERSION
    assert me.digest().versions["me"] == me.clock  # claims do not move our own watermark


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        (row(T0, NOW + 3 * S, 1, (1, 1)), Rejection.FUTURE),
        (row(T0, T0 + S, 10**12, (1, 1)), Rejection.ABSURD_COUNT),
        (row(T0 + S, T0, 1, (1, 1)), Rejection.MALFORMED),
        (row(-1, T0, 1, (1, 1)), Rejection.MALFORMED),
        (row(T0, T0 + S, -3, (1, 1)), Rejection.MALFORMED),
        (row(T0, T0 + S, 1, (0, 0)), Rejection.MALFORMED),
        (row(T0, T0 + S, 1, (-1, 5)), Rejection.MALFORMED),
        (row(0, NOW - HORIZON - 1, 1, (1, 1)), Rejection.EXPIRED),
    ],
)
def test_implausible_rows_are_refused_and_counted_by_reason(
    entry: OriginEntry, reason: Rejection
) -> None:
    me = node("me")
    report = me.merge(Delta(entries=(PairEntry(pair(), "peer", entry),)), NOW)
    assert report.rejected == {reason: 1} and report.accepted == 0
    assert len(me) == 0 and me.pair_view(pair()) is None


def test_oversized_message_and_table_limits_are_refused_not_raised() -> None:
    me = node("me")
    rows = tuple(
        PairEntry((f"c{i}", "d0"), "peer", row(T0, T0 + S, 1, (1, i + 1))) for i in range(5)
    )
    report = me.merge(Delta(entries=rows), NOW, MergeLimits(max_entries_per_message=4))
    assert report.rejected == {Rejection.OVERSIZED: 5} and len(me) == 0
    report = me.merge(Delta(entries=rows), NOW, MergeLimits(max_pairs=3))
    assert report.accepted == 3 and report.rejected == {Rejection.TABLE_FULL: 2}
    other = PairEntry(("c0", "d0"), "stranger", row(T0, T0 + S, 1, (1, 1)))
    report = me.merge(Delta(entries=(other,)), NOW, MergeLimits(max_origins=1))
    assert report.rejected == {Rejection.TOO_MANY_ORIGINS: 1}


def test_transient_refusal_holds_the_digest_back_so_the_row_comes_again() -> None:
    peer = node("peer")
    count(peer, pair(0), T0, T0 + S, 1)
    count(peer, pair(1), T0, NOW + 5 * S, 1)  # peer's clock runs 5 s ahead of ours
    me = node("me")
    report = me.merge(peer.delta_for(me.digest()), NOW)
    assert report.rejected == {Rejection.FUTURE: 1} and report.accepted == 1
    assert "peer" not in me.digest().versions
    later = NOW + 4 * S  # within the tolerated skew now
    me.merge(peer.delta_for(me.digest()), later)
    assert me.digest().versions["peer"] == (1, 2) and len(me) == 2


def test_older_version_never_rolls_a_row_back() -> None:
    me = node("me")
    new = PairEntry(pair(), "peer", row(T0, T0 + 2 * S, 20, (1, 7)))
    old = PairEntry(pair(), "peer", row(T0, T0 + S, 10, (1, 3)))
    me.merge(Delta(entries=(new,)), NOW)
    report = me.merge(Delta(entries=(old, new)), NOW)
    assert report.stale == 2 and me.entry(pair(), "peer") == new.entry


def test_peer_copy_of_own_row_is_never_taken() -> None:
    me = node("me")
    count(me, pair(), T0, T0 + S, 5)
    mine = count(me, pair(), T0, T0 + 2 * S, 1)
    forged = PairEntry(pair(), "me", row(T0, T0 + S, 5000, mine.version))  # same version
    older = PairEntry(pair(), "me", row(T0, T0 + S, 1, (1, 1)))
    report = me.merge(Delta(entries=(forged, older)), NOW)
    assert report.stale == 2 and me.own_entry(pair()) == mine


def test_own_row_with_a_version_never_issued_is_refused_and_our_count_wins() -> None:
    me, peer = node("me"), node("peer")
    mine = count(me, pair(), T0, T0 + S, 5)
    phantom = PairEntry(pair(), "me", row(T0, T0 + S, 999, (7, 1)))  # another process as "me"?
    peer.merge(Delta(entries=(phantom,)), NOW)
    report = me.merge(Delta(entries=(phantom,)), NOW)
    assert report.rejected == {Rejection.OWN_CONFLICT: 1}
    reissued = me.own_entry(pair())
    assert reissued is not None and (reissued.ts1, reissued.ts2, reissued.c) == (
        mine.ts1,
        mine.ts2,
        mine.c,
    )
    assert reissued.version > (7, 1) and me.clock == reissued.version
    exchange(me, peer)
    assert peer.entry(pair(), "me") == reissued  # the mesh converges back to our count
    assert count(me, pair(), T0, T0 + 2 * S, 1).version > reissued.version


# --- restart with the same id ------------------------------------------------------------


def test_restarted_node_adopts_its_earlier_rows_and_continues_above_them() -> None:
    before, peer = node("x", incarnation=1), node("peer")
    count(before, pair(0), T0, T0 + S, 30)
    count(before, pair(1), T0, T0 + S, 12)
    exchange(before, peer)

    after = node("x", incarnation=2)  # crashed and restarted: same id, nothing in memory
    report = after.merge(peer.delta_for(after.digest()), NOW)
    assert report.adopted == 2
    adopted = after.own_entry(pair(0))
    assert adopted is not None and adopted.c == 30 and adopted.version[0] == 2
    # The kernel counts on; the window counted before the crash is not lost.
    assert count(after, pair(0), T0, T0 + 2 * S, 5).c == 35
    exchange(after, peer)
    view = peer.pair_view(pair(0))
    assert view is not None and view.c == 35
    assert peer.entry(pair(1), "x") == after.own_entry(pair(1))


def test_restarted_node_keeps_its_new_counts_over_rows_of_its_earlier_life() -> None:
    before, peer = node("x", incarnation=1), node("peer")
    count(before, pair(0), T0, T0 + S, 30)
    count(before, pair(1), T0, T0 + S, 12)
    exchange(before, peer)
    after = node("x", incarnation=2)
    mine = count(after, pair(0), T0 + 5 * S, T0 + 6 * S, 2)  # counted before hearing peers
    report = after.merge(peer.delta_for(after.digest()), NOW)
    # pair 0 was counted in this life: the old row is refused; pair 1 is adopted
    # (the peer sends rows of our earlier life although our digest is past them).
    assert report.rejected == {Rejection.OWN_ORIGIN: 1} and report.adopted == 1
    assert after.own_entry(pair(0)) == mine
    exchange(after, peer)
    assert peer.entry(pair(0), "x") == mine  # and the peers follow
    assert peer.delta_for(after.digest()) == Delta()  # no orphans left to offer


# --- ageing ----------------------------------------------------------------------------


def test_expired_rows_are_dropped_and_not_resurrected_by_gossip() -> None:
    short = P.t_t1 + P.t_t4
    me, peer = node("me", horizon=short), node("peer", horizon=HORIZON)
    count(peer, pair(), T0, T0 + S, 8)
    me.merge(peer.delta_for(me.digest()), T0 + 2 * S)
    assert me.pair_view(pair()) is not None
    gone = me.expire(T0 + S + short + 1)
    assert gone.dropped == 1 and gone.changed_pairs == {pair()}
    assert me.pair_view(pair()) is None and len(me) == 0
    report = me.merge(peer.delta_for(me.digest()), T0 + S + short + 1)
    assert report.rejected == {Rejection.EXPIRED: 1} and len(me) == 0
    # Even a merge that claims an earlier "now" does not bring it back.
    report = me.merge(peer.full_state(), T0 + 2 * S)
    assert report.rejected == {Rejection.EXPIRED: 1} and len(me) == 0


def test_dead_origin_rows_age_out_by_the_idle_rule_then_the_horizon() -> None:
    me, dead, alive = node("me"), node("dead"), node("alive")
    count(dead, pair(), T0, T0 + S, 100)
    count(alive, pair(), T0, T0 + S, 10)
    exchange(me, dead)
    exchange(me, alive)
    view = me.pair_view(pair())
    assert view is not None and view.c == 110  # "dead" has just died: its rows still count
    count(alive, pair(), T0, T0 + 4 * S, 1)  # the live origin moves on past T_T1
    exchange(me, alive)
    view = me.pair_view(pair())
    assert view is not None and view.c == 11 and view.origins == 1
    me.expire(T0 + S + HORIZON + 1)
    assert me.entry(pair(), "dead") is None and "dead" not in me.digest().versions


def test_horizon_shorter_than_t_t1_plus_t_t4_is_refused() -> None:
    with pytest.raises(ValueError):
        GossipState("a", 1, P, horizon_ns=P.t_t1 + P.t_t4 - 1)


def test_digest_names_the_sender_and_the_version_it_is_complete_to() -> None:
    me = node("me")
    count(me, pair(0), T0, T0 + S, 1)
    count(me, pair(1), T0, T0 + S, 1)
    assert me.digest() == Digest(sender="me", versions={"me": (1, 2)})


def test_a_steady_client_divided_below_admit_k_still_counts_in_n_of_d() -> None:
    """Past T_T4 Algorithm 1 divides a view's count by r: a client of a few
    packets per T_T4 falls under admit_k after every division. It still
    counts in n(D) (its window is past T_T2), or the fair share of every
    other client would jump with each division; a one-packet source never
    counts."""
    s = node("a")
    count(s, pair(0, 0), T0, T0 + 2 * S, 2)  # steady, divided: 2 packets over 2 s
    count(s, pair(1, 0), T0 + 2 * S, T0 + 2 * S, 1)  # one packet, one instant
    view = s.destination_view(DESTS[0])
    assert view is not None
    assert P.admit_k > 2
    assert view.clients == 1


def test_a_client_whose_row_moves_to_a_later_packet_counts_in_n_of_d_everywhere() -> None:
    """A slow device opens a new window with every request (its gap is past
    T_T1), so its view is never past T_T2; once one of its rows moves to a
    later packet it is *known* and counts in n(D) on every node that saw the
    row move, while a one-packet source never does (issue 11: n(D) is what
    forged sources cannot dilute; a botnet of slow real sources must not
    hide from it either)."""
    a, b = node("a"), node("b")
    count(a, pair(0, 0), T0, T0, 1)
    count(a, pair(1, 0), T0, T0, 1)
    exchange(a, b)
    for s in (a, b):
        view = s.destination_view(DESTS[0])
        assert view is not None and view.clients == 0
    count(a, pair(0, 0), T0 + 3 * S, T0 + 3 * S, 1, mark=1)  # its next request
    exchange(a, b)
    for s in (a, b):
        view = s.destination_view(DESTS[0])
        assert view is not None and view.clients == 1, s.node_id
