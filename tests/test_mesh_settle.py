"""After a restart or a heal, the mesh settles within ceil(log2 N) + 2
gossip rounds: membership back to all-alive, and every live node holding
every live origin's rows exactly as the origin does (count error 0). Five
real MeshNodes with PairTables on a virtual clock (tests/settle_support.py),
seeded: every figure replays exactly; the bound is issue 13's."""

from __future__ import annotations

import math

import pytest
from settle_support import VirtualMesh

from xpro_mesh.mesh.membership import MemberState

N = 5
BOUND = math.ceil(math.log2(N)) + 2  # 5 rounds
SEEDS = range(1, 5)


def dead_everywhere(mesh: VirtualMesh, name: str) -> bool:
    return all(
        (m := mesh.peers[h].node.membership.member(name)) is not None
        and m.state is MemberState.DEAD
        for h in mesh.live()
    )


def settled(mesh: VirtualMesh) -> bool:
    return mesh.membership_settled() and mesh.rows_equal()


def steady_mesh(seed: int) -> VirtualMesh:
    mesh = VirtualMesh(n=N, seed=seed)
    assert mesh.rounds_until(mesh.membership_settled, 100) is not None
    mesh.run(3.0)  # every origin counting its clients, rows everywhere
    return mesh


@pytest.mark.parametrize("seed", SEEDS)
def test_a_restarted_node_and_its_rows_settle_within_log2_n_plus_2_rounds(seed: int) -> None:
    """SIGKILL p2, wait until every survivor holds it dead, start it again
    under the same id: from its start, membership and rows (the survivors'
    rows at p2, p2's adopted rows of its earlier life at the survivors)
    agree everywhere within the bound. The counts freeze at the restart, so
    "agree" is exact: every count equal to the origin's own."""
    mesh = steady_mesh(seed)
    mesh.kill("p2")
    assert mesh.rounds_until(lambda: dead_everywhere(mesh, "p2"), 100) is not None
    mesh.run(1.0)
    mesh.start("p2")
    mesh.counting = False
    rounds = mesh.rounds_until(lambda: settled(mesh), 100)
    assert rounds is not None and rounds <= BOUND, rounds
    assert mesh.count_error() == 0
    assert mesh.rows_of("p0", "p2")  # the restarted origin's rows are back, not just gone


@pytest.mark.parametrize("seed", SEEDS)
def test_the_two_sides_of_a_healed_partition_settle_within_log2_n_plus_2_rounds(
    seed: int,
) -> None:
    """A 2 | 3 partition long enough for each side to declare the other
    dead, then healed: every node alive again everywhere and every row
    exact within the bound. (Before Membership.on_sender, a node held dead
    had no way to learn it, and the sides stayed apart for 33-88 rounds,
    until dead_retention forgot them.)"""
    mesh = steady_mesh(seed)
    mesh.partition(["p0", "p1"], ["p2", "p3", "p4"])
    mesh.run(3.0)
    seen = mesh.peers["p0"].node.membership.member("p3")
    assert seen is not None and seen.state is MemberState.DEAD
    mesh.heal()
    mesh.counting = False
    rounds = mesh.rounds_until(lambda: settled(mesh), 100)
    assert rounds is not None and rounds <= BOUND, rounds
    assert mesh.count_error() == 0


def test_a_member_held_dead_that_talks_to_us_is_told_once_per_probe_interval() -> None:
    """Membership.on_sender: our verdict goes to the member itself (so it
    refutes), not to everyone, and not once per message it sends."""
    import random

    from xpro_mesh.mesh.membership import Announce, Membership, MembershipParams, MemberUpdate

    params = MembershipParams(probe_interval_ns=10**9, probe_timeout_ns=10**8)
    m = Membership("a", ("h", 1), incarnation=5, now_ns=0, rng=random.Random(1), params=params)
    m.on_update([MemberUpdate("b", ("h", 2), 7, MemberState.ALIVE)], 0)
    m.on_update([MemberUpdate("b", ("h", 2), 7, MemberState.DEAD, source="c")], 1)
    hello = MemberUpdate("b", ("h", 2), 7, MemberState.ALIVE)
    told = m.on_sender(hello, 2)
    assert told == [
        Announce(MemberUpdate("b", ("h", 2), 7, MemberState.DEAD, source="a"), (("h", 2),), ("b",))
    ]
    assert m.on_sender(hello, 3) == []  # within the probe interval
    assert len(m.on_sender(hello, 2 + 10**9)) == 1
    # a member that already refuted (higher incarnation) is taken back, nothing to tell
    m.on_update([MemberUpdate("b", ("h", 2), 8, MemberState.ALIVE)], 5 * 10**9)
    assert m.on_sender(MemberUpdate("b", ("h", 2), 8, MemberState.ALIVE), 6 * 10**9) == []
