"""Specifications of SWIM membership: unit rules, then whole simulated clusters.

The cluster harness wires :class:`Membership` state machines by a simulated
network (latency 1-5 ms, optional loss) and a simulated clock stepped every
10 ms; it plays the host protocol of the module docstring: ping/ack,
ping-req, push-pull, and an anti-entropy gossip round every ``G`` to ``f``
peers that piggybacks membership updates, as the agent does.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xpro_mesh.mesh.membership import (
    Action,
    Address,
    Announce,
    ForwardAck,
    ForwardNack,
    IndirectProbe,
    MemberChanged,
    Membership,
    MembershipParams,
    MemberState,
    MemberUpdate,
    Probe,
    SyncState,
    Workload,
    _Suspicion,
    detection_time_bound_ns,
    incarnation_from_wall_clock,
    remaining_suspicion_ns,
    suspicion_timeout_ns,
)

MS = 1_000_000
S = 1_000 * MS
LAN = MembershipParams()
GOSSIP_INTERVAL = 500 * MS
FANOUT = 3
ALIVE, SUSPECT, DEAD = MemberState.ALIVE, MemberState.SUSPECT, MemberState.DEAD


def addr(i: int) -> Address:
    return (f"10.0.0.{i}", 7946)


def node(
    node_id: str = "a", i: int = 1, *, inc: int = 1, params: MembershipParams = LAN, seed: int = 0
) -> Membership:
    return Membership(
        node_id, addr(i), incarnation=inc, now_ns=0, rng=random.Random(seed), params=params
    )


def alive(node_id: str, i: int, inc: int = 1, load: Workload | None = None) -> MemberUpdate:
    return MemberUpdate(node_id, addr(i), inc, ALIVE, load)


def changes(actions: list[Action]) -> list[tuple[str, MemberState | None, MemberState | None]]:
    return [(a.node_id, a.previous, a.current) for a in actions if isinstance(a, MemberChanged)]


def test_a_node_whose_own_suspicion_runs_out_tells_every_live_member_at_once() -> None:
    """Gossip carries a death only a few times; the node that declares it
    also sends it to each live member directly, so none waits out a
    suspicion of its own (up to suspicion_max_mult · S(N) unconfirmed)."""
    a = node("a", 1)
    a.on_update([alive("b", 2), alive("c", 3), alive("d", 4)], 0)
    a.on_update([MemberUpdate("b", addr(2), 1, SUSPECT)], 0)
    actions = a.tick(10**6 * S)  # long past any suspicion timeout
    assert ("b", SUSPECT, DEAD) in changes(actions)
    announced = [x for x in actions if isinstance(x, Announce)]
    assert len(announced) == 1
    assert announced[0].update.node_id == "b" and announced[0].update.state is DEAD
    assert sorted(announced[0].addrs) == [addr(3), addr(4)]
    # A death learnt from a peer is not announced again.
    c = node("c", 3)
    c.on_update([alive("b", 2), alive("d", 4)], 0)
    assert not [x for x in c.on_update([MemberUpdate("b", addr(2), 1, DEAD)], 1)
                if isinstance(x, Announce)]  # fmt: skip


# --- records ---------------------------------------------------------------------


def test_workload_refuses_negative_nan_and_ratios_above_one() -> None:
    Workload(1000.0, 0.5, 3.0)
    for bad in (
        (-1.0, 0.0, 0.0),
        (float("nan"), 0.0, 0.0),
        (1.0, 1.5, 0.0),
        (1.0, 0.0, float("inf")),
    ):
        with pytest.raises(ValueError):
            Workload(*bad)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"node_id": ""},
        {"node_id": "x" * 256},
        {"addr": ("h", 0)},
        {"addr": ("", 1)},
        {"incarnation": -1},
        {"incarnation": 2**64},
    ],
)
def test_member_update_refuses_fields_a_peer_cannot_mean(kwargs: dict[str, object]) -> None:
    fields: dict[str, object] = {"node_id": "n", "addr": ("h", 1), "incarnation": 1, "state": ALIVE}
    fields.update(kwargs)
    with pytest.raises(ValueError):
        MemberUpdate(**fields)  # type: ignore[arg-type]


def test_params_refuse_a_probe_timeout_not_shorter_than_the_interval() -> None:
    with pytest.raises(ValueError, match="probe_timeout"):
        MembershipParams(probe_interval_ns=S, probe_timeout_ns=S)


def test_suspicion_timeout_is_mult_log10_n_probe_intervals_with_a_floor_of_one() -> None:
    assert suspicion_timeout_ns(LAN, 1) == 4 * S
    assert suspicion_timeout_ns(LAN, 5) == 4 * S  # log10(5) < 1: the floor
    assert suspicion_timeout_ns(LAN, 100) == 8 * S
    assert suspicion_timeout_ns(LAN, 1000) == 12 * S


def test_detection_bound_for_five_nodes_is_the_documented_number() -> None:
    assert detection_time_bound_ns(LAN, 5, 500 * MS, 3) == 15_000 * MS
    local = MembershipParams(
        probe_interval_ns=200 * MS, probe_timeout_ns=100 * MS, suspicion_mult=3
    )
    assert detection_time_bound_ns(local, 5, 100 * MS, 3) == 2_800 * MS


def test_incarnation_from_a_later_wall_clock_is_higher() -> None:
    first = incarnation_from_wall_clock(1_700_000_000 * S)
    assert incarnation_from_wall_clock(1_700_000_000 * S + MS) == first + 1


# --- precedence rules (SWIM §4.2) ----------------------------------------------------


def test_unknown_alive_member_is_added_and_regossiped() -> None:
    a = node()
    assert changes(a.on_update([alive("b", 2, 5)], 0)) == [("b", None, ALIVE)]
    assert a.member("b") is not None and a.member("b").incarnation == 5  # type: ignore[union-attr]
    assert alive("b", 2, 5) in a.updates_to_piggyback(10)


def test_suspect_or_dead_about_an_unknown_member_is_ignored() -> None:
    a = node()
    a.on_update([MemberUpdate("b", addr(2), 5, SUSPECT), MemberUpdate("c", addr(3), 5, DEAD)], 0)
    assert a.member("b") is None and a.member("c") is None


def test_alive_needs_a_higher_incarnation_to_clear_suspicion() -> None:
    a = node()
    a.on_update([alive("b", 2, 5), MemberUpdate("b", addr(2), 5, SUSPECT)], 0)
    a.on_update([alive("b", 2, 5)], 1)
    assert a.member("b").state is SUSPECT  # type: ignore[union-attr]
    assert changes(a.on_update([alive("b", 2, 6)], 2)) == [("b", SUSPECT, ALIVE)]


def test_suspect_with_an_older_incarnation_is_ignored() -> None:
    a = node()
    a.on_update([alive("b", 2, 5)], 0)
    a.on_update([MemberUpdate("b", addr(2), 4, SUSPECT)], 1)
    assert a.member("b").state is ALIVE  # type: ignore[union-attr]


def test_stale_dead_rumour_about_a_live_member_with_lower_incarnation_is_ignored() -> None:
    a = node()
    a.on_update([alive("b", 2, 7)], 0)
    assert changes(a.on_update([MemberUpdate("b", addr(2), 6, DEAD)], 1)) == []
    assert a.member("b").state is ALIVE  # type: ignore[union-attr]


def test_dead_at_the_current_incarnation_kills_at_once() -> None:
    a = node()
    a.on_update([alive("b", 2, 7)], 0)
    assert changes(a.on_update([MemberUpdate("b", addr(2), 7, DEAD)], 1)) == [("b", ALIVE, DEAD)]


def test_stale_alive_rumour_about_a_remembered_dead_member_is_ignored_then_it_is_forgotten() -> (
    None
):
    a = node()
    a.on_update([alive("b", 2, 7), MemberUpdate("b", addr(2), 7, DEAD)], 0)
    a.on_update([alive("b", 2, 7)], 1)
    assert a.member("b").state is DEAD  # type: ignore[union-attr]
    assert changes(a.tick(LAN.dead_retention_ns)) == [("b", DEAD, None)]
    assert a.member("b") is None


def test_dead_member_comes_back_with_a_higher_incarnation_and_a_new_address() -> None:
    a = node()
    a.on_update([alive("b", 2, 7), MemberUpdate("b", addr(2), 7, DEAD)], 0)
    assert changes(a.on_update([alive("b", 9, 8)], 1)) == [("b", DEAD, ALIVE)]
    assert a.member("b").addr == addr(9)  # type: ignore[union-attr]


def test_suspicion_of_self_is_refuted_with_a_higher_incarnation() -> None:
    a = node(inc=10)
    a.updates_to_piggyback(100)  # drain the initial announcement
    a.on_update([MemberUpdate("a", addr(1), 10, SUSPECT)], 0)
    assert a.incarnation == 11
    assert a.updates_to_piggyback(10) == [alive("a", 1, 11)]


def test_dead_rumour_about_self_from_a_later_life_is_refuted_above_it() -> None:
    a = node(inc=10)
    a.on_update([MemberUpdate("a", addr(1), 40, DEAD)], 0)
    assert a.incarnation == 41


def test_old_suspicion_of_self_is_not_refuted_again() -> None:
    a = node(inc=10)
    a.on_update([MemberUpdate("a", addr(1), 9, SUSPECT)], 0)
    assert a.incarnation == 10


def test_push_pull_takes_a_peers_dead_as_suspect() -> None:
    a = node()
    a.on_update([alive("b", 2, 3)], 0)
    assert changes(a.merge_state([MemberUpdate("b", addr(2), 3, DEAD)], 1)) == [
        ("b", ALIVE, SUSPECT)
    ]


def test_member_table_is_bounded() -> None:
    a = node(params=replace(LAN, max_members=3))
    a.on_update([alive("b", 2), alive("c", 3), alive("d", 4)], 0)
    assert [m.node_id for m in a.members()] == ["a", "b", "c"]
    assert a.refused_members == 1


def test_workload_rides_on_an_alive_with_a_bumped_incarnation() -> None:
    a, b = node("a", 1, inc=3), node("b", 2)
    load = Workload(12_000.0, 0.25, 4.0)
    a.set_load(load, 5)
    assert a.incarnation == 4
    b.on_update(a.updates_to_piggyback(10), 6)
    assert b.member("a").load == load  # type: ignore[union-attr]


def test_leave_is_gossiped_as_dead_and_peers_accept_it_at_once() -> None:
    a, b = node("a", 1), node("b", 2)
    b.on_update([alive("a", 1)], 0)
    a.leave(1)
    assert changes(b.on_update(a.updates_to_piggyback(10), 2)) == [("a", ALIVE, DEAD)]
    a.on_update([MemberUpdate("a", addr(1), 1, DEAD)], 3)
    assert a.incarnation == 1  # a leaving node does not refute


# --- probing --------------------------------------------------------------------------


def three_peers() -> Membership:
    a = node(seed=3)
    a.on_update([alive("b", 2), alive("c", 3), alive("d", 4)], 0)
    return a


def test_probe_round_robin_visits_every_member_once_per_round() -> None:
    a = three_peers()
    targets = []
    for k in range(1, 7):
        probe = next(x for x in a.tick(k * S) if isinstance(x, Probe))
        targets.append(probe.node_id)
        a.on_ack(probe.seq, k * S + MS)
    assert sorted(targets[:3]) == ["b", "c", "d"] and sorted(targets[3:]) == ["b", "c", "d"]


def test_acked_probe_raises_no_suspicion() -> None:
    a = three_peers()
    probe = next(x for x in a.tick(S) if isinstance(x, Probe))
    assert a.on_ack(probe.seq, S + 10 * MS) == []
    assert changes(a.tick(2 * S - 1)) == []
    assert all(m.state is ALIVE for m in a.members())


def test_unanswered_probe_asks_helpers_then_suspects_then_declares_dead() -> None:
    a = three_peers()
    probe = next(x for x in a.tick(S) if isinstance(x, Probe))
    indirect = a.tick(S + LAN.probe_timeout_ns)
    helpers = {x.via_id for x in indirect if isinstance(x, IndirectProbe)}
    assert helpers == {"b", "c", "d"} - {probe.node_id}
    assert all(
        x.seq == probe.seq and x.node_id == probe.node_id
        for x in indirect
        if isinstance(x, IndirectProbe)
    )
    assert (probe.node_id, ALIVE, SUSPECT) in changes(a.tick(2 * S))
    # Lifeguard: with nobody confirming, the suspicion runs its longest.
    deadline = 2 * S + LAN.suspicion_max_mult * a.suspicion_timeout_ns()
    assert (probe.node_id, SUSPECT, DEAD) not in changes(a.tick(deadline - 1))
    assert (probe.node_id, SUSPECT, DEAD) in changes(a.tick(deadline))


def suspected_by_a(a: Membership) -> tuple[str, int]:
    """Let a's first probe fail (no acks, no nacks); its target and when."""
    probe = next(x for x in a.tick(S) if isinstance(x, Probe))
    a.tick(S + LAN.probe_timeout_ns)
    assert (probe.node_id, ALIVE, SUSPECT) in changes(a.tick(2 * S))
    return probe.node_id, 2 * S


def test_independent_confirmations_shrink_the_suspicion_to_its_minimum() -> None:
    a = three_peers()  # a, b, c, d: k = suspicion_mult - 2 = 2 confirmations wanted
    target, since = suspected_by_a(a)
    low = a.suspicion_timeout_ns()
    high = LAN.suspicion_max_mult * low
    others = [m for m in ("b", "c", "d") if m != target]
    suspect = MemberUpdate(target, addr(9), 1, SUSPECT, source=others[0])
    a.on_update([suspect, suspect], since + 1)  # the same suspector counts once
    assert a.stats.confirmations == 1
    one = remaining_suspicion_ns(1, 2, low, high)
    assert low < one < high
    assert changes(a.tick(since + one - 1)) == []
    a.on_update([replace(suspect, source=others[1])], since + 2)
    assert a.stats.confirmations == 2
    assert (target, SUSPECT, DEAD) in changes(a.tick(since + low))


def test_suspicion_timeout_follows_lifeguards_formula() -> None:
    low, high = 4 * S, 24 * S
    assert remaining_suspicion_ns(0, 2, low, high) == high
    assert remaining_suspicion_ns(2, 2, low, high) == low
    assert remaining_suspicion_ns(5, 2, low, high) == low
    assert remaining_suspicion_ns(0, 0, low, high) == low  # none expected: the minimum
    series = [remaining_suspicion_ns(n, 4, low, high) for n in range(5)]
    assert series == sorted(series, reverse=True) and series[-1] == low


def test_a_small_mesh_expects_no_confirmations_and_waits_the_minimum() -> None:
    a = node("a", 1)
    a.on_update([alive("b", 2), alive("c", 3)], 0)  # N = 3: N - 2 < k = 2
    target, since = suspected_by_a(a)
    low = a.suspicion_timeout_ns()
    assert changes(a.tick(since + low - 1)) == []
    assert (target, SUSPECT, DEAD) in changes(a.tick(since + low))


def test_failed_probes_without_nacks_raise_local_health_and_stretch_the_interval() -> None:
    a = three_peers()
    assert a.health == 0 and a.probe_interval_ns() == LAN.probe_interval_ns
    suspected_by_a(a)
    # Two helpers asked, neither nacked: two points, the interval triples.
    assert a.health == 2
    assert a.probe_interval_ns() == 3 * LAN.probe_interval_ns
    for _ in range(20):
        a._health(1)
    assert a.health == LAN.awareness_max - 1  # capped


def test_nacks_from_every_helper_leave_local_health_alone() -> None:
    a = three_peers()
    probe = next(x for x in a.tick(S) if isinstance(x, Probe))
    indirect = [x for x in a.tick(S + LAN.probe_timeout_ns) if isinstance(x, IndirectProbe)]
    for _ in indirect:
        a.on_nack(probe.seq, S + 600 * MS)
    assert a.stats.nacks_received == len(indirect)
    assert (probe.node_id, ALIVE, SUSPECT) in changes(a.tick(2 * S))
    assert a.health == 0  # the helpers answered: the target is the problem, not us


def test_answered_probes_lower_local_health() -> None:
    a = three_peers()
    a._health(3)
    probe = next(x for x in a.tick(S) if isinstance(x, Probe))
    a.on_ack(probe.seq, S + MS)
    assert a.health == 2


def test_refuting_a_suspicion_of_ourselves_raises_local_health() -> None:
    a = three_peers()
    a.on_update([MemberUpdate("a", addr(1), a.incarnation, SUSPECT, source="b")], S)
    assert a.stats.refutations == 1 and a.health == 1


def test_a_helper_whose_target_stays_silent_sends_a_nack() -> None:
    h = node("h", 5)
    h.on_update([alive("a", 1), alive("t", 6)], 0)
    probes = h.on_ping_request("a", addr(1), 77, "t", addr(6), S)
    assert len(probes) == 1 and isinstance(probes[0], Probe)
    nacks = [x for x in h.tick(S + LAN.probe_timeout_ns) if isinstance(x, ForwardNack)]
    assert nacks == [ForwardNack(77, "a", addr(1))]
    assert h.stats.nacks_sent == 1


def test_ack_forwarded_by_a_helper_saves_the_target() -> None:
    a = three_peers()
    probe = next(x for x in a.tick(S) if isinstance(x, Probe))
    a.tick(S + LAN.probe_timeout_ns)
    a.on_ack(probe.seq, S + 700 * MS)
    assert changes(a.tick(2 * S)) == []


def test_late_tick_still_gives_the_helpers_a_probe_timeout() -> None:
    a = three_peers()
    next(x for x in a.tick(S) if isinstance(x, Probe))
    stalled = 5 * S
    assert any(isinstance(x, IndirectProbe) for x in a.tick(stalled))
    assert changes(a.tick(stalled + LAN.probe_timeout_ns - 1)) == []
    assert SUSPECT in {c[2] for c in changes(a.tick(stalled + LAN.probe_timeout_ns))}


def test_ping_request_probes_the_target_and_forwards_its_ack() -> None:
    b = node("b", 2)
    (probe,) = b.on_ping_request("a", addr(1), 77, "c", addr(3), 0)
    assert isinstance(probe, Probe) and probe.node_id == "c" and probe.addr == addr(3)
    assert b.on_ack(probe.seq, MS) == [ForwardAck(77, "a", addr(1))]
    assert b.on_ack(probe.seq, 2 * MS) == []


def test_probe_timeout_for_another_seq_leaves_the_probe_in_flight() -> None:
    a = three_peers()
    probe = next(x for x in a.tick(S) if isinstance(x, Probe))
    assert a.on_probe_timeout(probe.seq + 1, S + 1) == []
    indirect = a.on_probe_timeout(probe.seq, S + 2)
    assert indirect and all(isinstance(x, IndirectProbe) for x in indirect)


def test_join_retries_the_seeds_while_alone_and_stops_once_it_has_a_peer() -> None:
    a = node()
    assert a.join([addr(1), addr(2), addr(2)], 0) == [
        SyncState(addr(2), None)
    ]  # self and duplicates dropped
    assert SyncState(addr(2), None) in a.tick(LAN.probe_interval_ns)
    a.merge_state([alive("b", 2)], LAN.probe_interval_ns + 1)
    assert not any(isinstance(x, SyncState) for x in a.tick(2 * LAN.probe_interval_ns))


def test_push_pull_runs_every_interval_with_a_random_live_peer() -> None:
    a = three_peers()
    syncs = [x for x in a.tick(LAN.push_pull_interval_ns) if isinstance(x, SyncState)]
    assert len(syncs) == 1 and syncs[0].node_id in {"b", "c", "d"}


def test_next_deadline_is_the_earliest_timer() -> None:
    a = three_peers()
    assert a.next_deadline_ns() == LAN.probe_interval_ns
    a.tick(S)
    assert a.next_deadline_ns() == S + LAN.probe_timeout_ns


# --- simulated clusters ----------------------------------------------------------------


@dataclass(order=True)
class _Packet:
    at: int
    order: int
    dst: Address = field(compare=False)
    kind: str = field(compare=False)
    body: dict[str, object] = field(compare=False)


class Cluster:
    """Membership state machines on a simulated network and clock."""

    def __init__(
        self,
        *,
        seed: int,
        params: MembershipParams = LAN,
        gossip_interval_ns: int = GOSSIP_INTERVAL,
        fanout: int = FANOUT,
        loss: float = 0.0,
    ) -> None:
        self.params = params
        self.gossip_interval_ns = gossip_interval_ns
        self.fanout = fanout
        self.loss = loss
        self.rng = random.Random(seed)
        self.now = 0
        self.nodes: dict[str, Membership] = {}
        self.index: dict[str, int] = {}
        self.up: set[str] = set()
        self.net: list[_Packet] = []
        self.order = itertools.count()
        self.events: list[tuple[int, str, MemberChanged]] = []
        self.next_gossip = 0
        self.lag: dict[Address, int] = {}  # an overloaded node reads its socket this late

    def addr_of(self, node_id: str) -> Address:
        return addr(self.index.setdefault(node_id, len(self.index) + 1))

    def start(self, node_id: str, *, seeds: list[str], wall_ms: int | None = None) -> Membership:
        incarnation = wall_ms if wall_ms is not None else 1_000_000 + self.now // MS
        m = Membership(
            node_id,
            self.addr_of(node_id),
            incarnation=incarnation,
            now_ns=self.now,
            rng=random.Random(self.rng.random()),
            params=self.params,
        )
        self.nodes[node_id] = m
        self.up.add(node_id)
        self.perform(m, m.join([self.addr_of(s) for s in seeds], self.now))
        return m

    def kill(self, node_id: str) -> None:
        self.up.discard(node_id)

    def send(self, dst: Address, kind: str, **body: object) -> None:
        if self.rng.random() < self.loss:
            return
        delay = self.rng.randint(1, 5) * MS + self.lag.get(dst, 0)
        heapq.heappush(self.net, _Packet(self.now + delay, next(self.order), dst, kind, body))

    def perform(self, m: Membership, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, MemberChanged):
                self.events.append((self.now, m.node_id, action))
                continue
            if isinstance(action, SyncState):
                self.send(action.addr, "sync", src=m.addr, state=m.local_state(), reply=False)
                continue
            if isinstance(action, Announce):
                for addr in action.addrs:
                    self.send(addr, "announce", updates=[m.self_update(), action.update])
                continue
            piggyback = [m.self_update(), *m.updates_to_piggyback(8)]
            if isinstance(action, Probe) and (buddy := m.buddy(action.node_id)) is not None:
                piggyback.append(buddy)
            if isinstance(action, Probe):
                self.send(
                    action.addr,
                    "ping",
                    src=m.addr,
                    seq=action.seq,
                    target=action.node_id,
                    updates=piggyback,
                )
            elif isinstance(action, IndirectProbe):
                self.send(
                    action.via_addr,
                    "ping_req",
                    src_id=m.node_id,
                    src=m.addr,
                    seq=action.seq,
                    target=action.node_id,
                    target_addr=action.addr,
                    updates=piggyback,
                )
            elif isinstance(action, ForwardAck):
                self.send(action.addr, "ack", seq=action.seq, updates=piggyback)
            elif isinstance(action, ForwardNack):
                self.send(action.addr, "nack", seq=action.seq, updates=piggyback)

    def deliver(self, packet: _Packet) -> None:
        receivers = [n for n in self.up if self.nodes[n].addr == packet.dst]
        if not receivers:
            return
        m = self.nodes[receivers[0]]
        body = packet.body
        actions: list[Action] = []
        if packet.kind == "sync":
            actions += m.merge_state(body["state"], self.now)  # type: ignore[arg-type]
            if not body["reply"]:
                self.send(body["src"], "sync", src=m.addr, state=m.local_state(), reply=True)  # type: ignore[arg-type]
        else:
            actions += m.on_update(body["updates"], self.now)  # type: ignore[arg-type]
        if packet.kind == "ping" and body["target"] == m.node_id:
            piggyback = [m.self_update(), *m.updates_to_piggyback(8)]
            self.send(body["src"], "ack", seq=body["seq"], updates=piggyback)  # type: ignore[arg-type]
        elif packet.kind == "ack":
            actions += m.on_ack(body["seq"], self.now)  # type: ignore[arg-type]
        elif packet.kind == "nack":
            actions += m.on_nack(body["seq"], self.now)  # type: ignore[arg-type]
        elif packet.kind == "ping_req":
            actions += m.on_ping_request(
                body["src_id"],  # type: ignore[arg-type]
                body["src"],  # type: ignore[arg-type]
                body["seq"],  # type: ignore[arg-type]
                body["target"],  # type: ignore[arg-type]
                body["target_addr"],  # type: ignore[arg-type]
                self.now,
            )
        self.perform(m, actions)

    def step(self, step_ns: int = 10 * MS) -> None:
        self.now += step_ns
        while self.net and self.net[0].at <= self.now:
            self.deliver(heapq.heappop(self.net))
        for node_id in sorted(self.up):
            m = self.nodes[node_id]
            self.perform(m, m.tick(self.now))
        if self.now >= self.next_gossip:
            self.next_gossip = self.now + self.gossip_interval_ns
            for node_id in sorted(self.up):
                m = self.nodes[node_id]
                for peer in m.gossip_targets(self.fanout, self.rng):
                    updates = m.updates_to_piggyback(8)
                    if updates:
                        self.send(peer.addr, "gossip", updates=updates)

    def run_until(self, done: Callable[[], bool], within_ns: int) -> int | None:
        """Step until ``done()``; the time it took, or None if it never did."""
        start = self.now
        while self.now - start <= within_ns:
            if done():
                return self.now - start
            self.step()
        return None

    def run(self, duration_ns: int) -> None:
        self.run_until(lambda: False, duration_ns)

    def live_view_is(self, expected: set[str]) -> bool:
        return all(
            {x.node_id for x in self.nodes[n].live_members()} == expected
            and all(x.state is ALIVE for x in self.nodes[n].live_members())
            for n in self.up
        )

    def state_everywhere(self, subject: str) -> set[MemberState | None]:
        out: set[MemberState | None] = set()
        for n in self.up:
            member = self.nodes[n].member(subject)
            out.add(member.state if member else None)
        return out


def started(n: int, seed: int, **kwargs: object) -> Cluster:
    cluster = Cluster(seed=seed, **kwargs)  # type: ignore[arg-type]
    cluster.start("n00", seeds=[])
    for i in range(1, n):
        cluster.start(f"n{i:02}", seeds=["n00"])
    return cluster


def converged(n: int, seed: int, **kwargs: object) -> Cluster:
    cluster = started(n, seed, **kwargs)
    assert cluster.run_until(lambda: cluster.live_view_is(set(cluster.nodes)), 20 * S) is not None
    return cluster


@pytest.mark.parametrize("n", [5, 20])
def test_membership_converges_from_one_seed_and_nodes_learn_peers_they_were_not_told(
    n: int,
) -> None:
    cluster = started(n, seed=n)
    took = cluster.run_until(lambda: cluster.live_view_is(set(cluster.nodes)), 20 * S)
    assert took is not None and took <= 5 * S, took
    assert not [e for e in cluster.events if e[2].current is not ALIVE]


def test_membership_converges_under_ten_percent_loss_without_killing_anyone() -> None:
    cluster = started(10, seed=7, loss=0.10)
    assert cluster.run_until(lambda: cluster.live_view_is(set(cluster.nodes)), 30 * S) is not None
    cluster.run(30 * S)
    assert not [e for e in cluster.events if e[2].current is DEAD]


@pytest.mark.parametrize("seed", range(6))
def test_killed_node_is_suspected_then_dead_on_every_live_node_within_the_bound(seed: int) -> None:
    n = 8
    cluster = converged(n, seed)
    cluster.run(cluster.rng.randint(0, 999) * MS)  # crash at a random phase of the probe rounds
    victim = f"n{1 + seed:02}"
    crashed_at = cluster.now
    cluster.kill(victim)
    bound = detection_time_bound_ns(LAN, n, GOSSIP_INTERVAL, FANOUT)
    took = cluster.run_until(lambda: cluster.state_everywhere(victim) == {DEAD}, bound)
    assert took is not None, f"not dead everywhere within {bound / S} s"
    about = [
        (t, e.current) for t, _, e in cluster.events if e.node_id == victim and t >= crashed_at
    ]
    first_suspect = min(t for t, s in about if s is SUSPECT)
    first_dead = min(t for t, s in about if s is DEAD)
    assert first_suspect < first_dead
    assert first_dead - first_suspect >= suspicion_timeout_ns(LAN, n)
    others = [e for _, _, e in cluster.events if e.node_id != victim and e.current is not ALIVE]
    assert others == []  # nobody else was ever suspected


def test_falsely_suspected_live_node_refutes_and_is_never_declared_dead() -> None:
    cluster = converged(6, seed=11)
    x = cluster.nodes["n03"]
    before = x.incarnation
    rumour = MemberUpdate("n03", x.addr, before, SUSPECT)
    for observer in ("n01", "n05"):
        cluster.perform(
            cluster.nodes[observer], cluster.nodes[observer].on_update([rumour], cluster.now)
        )
    assert SUSPECT in cluster.state_everywhere("n03")
    took = cluster.run_until(
        lambda: (
            cluster.state_everywhere("n03") == {ALIVE}
            and all(cluster.nodes[n].member("n03").incarnation > before for n in cluster.up)  # type: ignore[union-attr]
        ),
        suspicion_timeout_ns(LAN, 6),
    )
    assert took is not None
    cluster.run(2 * suspicion_timeout_ns(LAN, 6))
    assert not [e for e in cluster.events if e[2].node_id == "n03" and e[2].current is DEAD]


def test_restarted_node_with_a_higher_incarnation_is_alive_again_everywhere() -> None:
    cluster = converged(6, seed=21)
    old = cluster.nodes["n04"].incarnation
    cluster.kill("n04")
    assert cluster.run_until(lambda: cluster.state_everywhere("n04") == {DEAD}, 20 * S) is not None
    reborn = cluster.start("n04", seeds=["n00"])
    assert reborn.incarnation > old
    took = cluster.run_until(
        lambda: (
            cluster.live_view_is(set(cluster.nodes))
            and all(
                cluster.nodes[n].member("n04").incarnation  # type: ignore[union-attr]
                == reborn.incarnation
                for n in cluster.up
            )
        ),
        10 * S,
    )
    assert took is not None
    assert ("n04", DEAD, ALIVE) in [
        (e.node_id, e.previous, e.current) for _, _, e in cluster.events
    ]


def test_quick_restart_before_detection_confuses_nobody() -> None:
    cluster = converged(6, seed=23)
    cluster.kill("n02")
    cluster.run(100 * MS)
    reborn = cluster.start("n02", seeds=["n00"])
    took = cluster.run_until(
        lambda: all(
            cluster.nodes[n].member("n02").incarnation  # type: ignore[union-attr]
            == reborn.incarnation
            for n in cluster.up
        ),
        5 * S,
    )
    assert took is not None
    cluster.run(10 * S)
    assert cluster.live_view_is(set(cluster.nodes))


def test_restart_with_a_clock_that_went_backwards_refutes_its_old_life() -> None:
    cluster = converged(5, seed=29)
    old = cluster.nodes["n01"].incarnation
    cluster.kill("n01")
    cluster.run(200 * MS)
    reborn = cluster.start("n01", seeds=["n00"], wall_ms=old - 5_000)
    assert (
        cluster.run_until(
            lambda: (
                cluster.live_view_is(set(cluster.nodes))
                and all(cluster.nodes[n].member("n01").incarnation > old for n in cluster.up)  # type: ignore[union-attr]
            ),
            10 * S,
        )
        is not None
    )
    assert reborn.incarnation > old


def test_dead_node_is_forgotten_after_the_retention_time() -> None:
    cluster = converged(5, seed=31)
    cluster.kill("n02")
    assert cluster.run_until(lambda: cluster.state_everywhere("n02") == {DEAD}, 20 * S) is not None
    assert (
        cluster.run_until(
            lambda: cluster.state_everywhere("n02") == {None}, LAN.dead_retention_ns + S
        )
        is not None
    )


# --- Lifeguard: a node slowed by its own load ---------------------------------------

LOCAL = MembershipParams(
    probe_interval_ns=200 * MS, probe_timeout_ns=100 * MS, suspicion_mult=3, indirect_checks=2
)
NO_LIFEGUARD = replace(LOCAL, awareness_max=1, suspicion_max_mult=1)


def overloaded_run(params: MembershipParams, seed: int) -> tuple[int, int, int]:
    """Five nodes; "slow" reads its socket 400 ms late (a flood of datagrams in
    front of the acks) while its timers run on time, for 30 s. Returns
    (suspicions raised by slow, deaths of healthy members anywhere, deaths of
    slow anywhere)."""
    cluster = Cluster(seed=seed, params=params, gossip_interval_ns=100 * MS)
    names = ["slow", "b", "c", "d", "e"]
    for name in names:
        cluster.start(name, seeds=["b"] if name != "b" else [])
    assert cluster.run_until(lambda: cluster.live_view_is(set(names)), 20 * S) is not None
    start = len(cluster.events)
    before = cluster.nodes["slow"].stats.suspicions_raised
    cluster.lag[cluster.nodes["slow"].addr] = 400 * MS
    cluster.run(30 * S)
    raised = cluster.nodes["slow"].stats.suspicions_raised - before
    dead = [e.node_id for _, _, e in cluster.events[start:] if e.current is DEAD]
    return raised, sum(1 for n in dead if n != "slow"), dead.count("slow")


def test_an_overloaded_node_stops_accusing_its_healthy_peers() -> None:
    with_lifeguard = [overloaded_run(LOCAL, seed) for seed in range(5)]
    without = [overloaded_run(NO_LIFEGUARD, seed) for seed in range(5)]
    # Local health stretches the slow node's probe interval past its own lag,
    # and its lone suspicions (nobody confirms them) last long enough to be
    # refuted: no healthy member dies, and the slow node hardly accuses anyone.
    assert all(healthy == 0 for _, healthy, _ in with_lifeguard), with_lifeguard
    assert all(raised <= 8 for raised, _, _ in with_lifeguard), with_lifeguard
    # The same load without local health and confirmations: the slow node
    # accuses its peers all along, and some healthy members die of it.
    assert sum(r for r, _, _ in without) >= 10 * sum(r for r, _, _ in with_lifeguard)
    assert sum(healthy for _, healthy, _ in without) > 0
    # (The slow node itself, answering two probe intervals late, is found
    # unresponsive by every prober independently: their confirmations make
    # its suspicion short, Lifeguard or not. Keeping the loop responsive is
    # the stream's and the worker thread's job, not the detector's.)


def test_a_ping_to_a_suspect_carries_the_suspicion_buddy_system() -> None:
    a = three_peers()
    target, _since = suspected_by_a(a)
    buddy = a.buddy(target)
    assert buddy is not None and buddy.state is SUSPECT and buddy.source == "a"
    assert a.buddy("c" if target != "c" else "b") is None  # alive: nothing to carry


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 5),
    st.lists(st.sampled_from(["b", "c", "d", "e", "f", "g", "a"]), max_size=12),
)
def test_confirmations_only_ever_shorten_a_suspicion_within_its_bounds(
    k: int, sources: list[str]
) -> None:
    low, high = 4 * S, 24 * S
    suspicion = _Suspicion(0, k, low, high, {"a"}, high if k >= 1 else low)
    deadlines = [suspicion.deadline_ns]
    for source in sources:
        suspicion.confirm(source)
        deadlines.append(suspicion.deadline_ns)
    assert all(later <= earlier for earlier, later in itertools.pairwise(deadlines))
    assert all(low <= d <= high for d in deadlines)
    assert len(suspicion.confirmations) - 1 <= k  # the first suspector is not a confirmation
    if len(set(sources) - {"a"}) >= k:
        assert suspicion.deadline_ns == low  # k independent confirmations: the minimum
