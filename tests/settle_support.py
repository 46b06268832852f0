"""A five-node mesh on a virtual clock: real MeshNodes, Membership and
PairTables (what the agent runs) over the in-memory network, driven step by
step by a :class:`~xpro_mesh.mesh.transport.ManualScheduler`, so a restart or
a heal and the rounds it takes the rows to settle replay exactly from a seed.

Each live node counts its own clients every sync cycle (Algorithm 1 into its
own rows, as the map sync does), gossips every round as ``MeshNode.run``
would (``round_soon`` after its own new rows included), and ticks its
membership; datagrams arrive after ``latency_s``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np

from xpro_mesh.agent.config import local_gossip
from xpro_mesh.core.algorithm import Params
from xpro_mesh.core.gossip_state import MergeLimits
from xpro_mesh.core.table import PairTable
from xpro_mesh.mesh import auth
from xpro_mesh.mesh.membership import Membership, MemberState
from xpro_mesh.mesh.node import MeshNode, NodeTiming
from xpro_mesh.mesh.state import TableAdapter
from xpro_mesh.mesh.transport import ManualScheduler, MemoryNetwork

S = 10**9
MS = 10**6
P = Params(t_t1=3 * S, t_t2=S // 2, t_t3=S, t_t4=2 * S, t_f1=50, t_f2=1200, r=2)
KEYRING = auth.Keyring([bytes(range(32))])
VICTIM = b"\x00" * 10 + b"\xff\xff" + bytes([10, 20, 0, 2])
WALL0 = 1_800_000_000 * S  # the cluster clock at virtual time 0
HOST = "10.20.0.1"
SYNC_NS = 100 * MS  # the lab's sync cycle


def addresses(block: int, n: int) -> np.ndarray:
    """``n`` IPv4-mapped client addresses in 10.10.<block>.0/24."""
    return np.array(
        [b"\x00" * 10 + b"\xff\xff" + bytes([10, 10, block, i]) for i in range(n)], dtype="S16"
    )


@dataclass
class Peer:
    node: MeshNode
    table: PairTable
    clients: np.ndarray
    alive: bool = True
    next_round_ns: int = 0
    next_sync_ns: int = 0
    last_round_ns: int = 0


@dataclass
class VirtualMesh:
    """``n`` nodes ``p0..p<n-1>`` on one virtual clock (see module docstring)."""

    n: int = 5
    seed: int = 1
    loss: float = 0.0
    latency_s: float = 0.001
    clients_per_node: int = 30
    pps_per_client: int = 20
    sched: ManualScheduler = field(default_factory=ManualScheduler)
    peers: dict[str, Peer] = field(default_factory=dict)
    counting: bool = True  # the nodes' own clients keep sending

    def __post_init__(self) -> None:
        self.cfg = local_gossip()
        self.net = MemoryNetwork(
            rng=random.Random(self.seed), loss=self.loss, latency_s=self.latency_s
        )
        self.net.scheduler = self.sched
        self._generation = 0
        for i in range(self.n):
            self.start(f"p{i}")

    # --- clocks --------------------------------------------------------------------

    def mono(self) -> int:
        return self.sched.now_ns + S  # never 0: the nodes' "never" is far below

    def wall(self) -> int:
        return WALL0 + self.sched.now_ns

    # --- life and death ----------------------------------------------------------------

    def addr(self, name: str) -> tuple[str, int]:
        return (HOST, 7000 + int(name[1:]))

    def start(self, name: str) -> None:
        """Start (or restart, under the same id with a higher incarnation)
        node ``name``, joining through p0 (through p1 for p0 itself)."""
        old = self.peers.get(name)
        if old is not None:
            assert not old.alive, f"{name} is running"
        self._generation += 1
        incarnation = self.wall() // MS + self._generation
        rng = random.Random(self.seed * 1000 + int(name[1:]) * 10 + self._generation)
        membership = Membership(
            name,
            self.addr(name),
            incarnation=incarnation,
            now_ns=self.mono(),
            rng=rng,
            params=self.cfg.membership_params(),
        )
        table = PairTable(name, incarnation, P)
        node = MeshNode(
            state=TableAdapter(table),
            membership=membership,
            keyring=KEYRING,
            timing=NodeTiming(
                interval_ns=self.cfg.interval_ns,
                fanout=self.cfg.fanout,
                max_message_bytes=self.cfg.max_message_bytes,
            ),
            limits=MergeLimits(),
            rng=random.Random(rng.random()),
            wall_ns=self.wall,
            mono_ns=self.mono,
        )
        node.attach(self.net.attach(self.addr(name), node.receive))
        clients = addresses(100 + int(name[1:]), self.clients_per_node)
        peer = Peer(node, table, clients, True, self.mono(), self.mono())
        self.peers[name] = peer
        seed = "p1" if name == "p0" else "p0"
        node.join([self.addr(seed)])

    def kill(self, name: str) -> None:
        """SIGKILL: the node stops at once, its socket closes, nothing is said."""
        peer = self.peers[name]
        peer.alive = False
        transport = peer.node._transport
        assert transport is not None
        transport.close()

    def partition(self, side_a: list[str], side_b: list[str]) -> None:
        self.net.partition([self.addr(a) for a in side_a], [self.addr(b) for b in side_b])

    def heal(self) -> None:
        self.net.heal()

    def live(self) -> list[str]:
        return [n for n, p in self.peers.items() if p.alive]

    # --- time ----------------------------------------------------------------------------

    def step(self, dt_ns: int = 10 * MS) -> None:
        """Run every live node's due timers, then deliver ``dt_ns`` worth of datagrams."""
        now = self.mono()
        for peer in self.peers.values():
            if not peer.alive:
                continue
            node = peer.node
            if now >= peer.next_sync_ns:
                peer.next_sync_ns = now + SYNC_NS
                if self.counting and self._count(peer):
                    # the map sync's on_own_rows: a round now (never within
                    # eager_gap of the last one)
                    soon = max(now, peer.last_round_ns + node.timing.eager_gap_ns)
                    peer.next_round_ns = min(peer.next_round_ns, soon)
                peer.table.expire(self.wall())
            node._perform(node.membership.tick(now))
            if now >= peer.next_round_ns:
                node.gossip_round()
                peer.last_round_ns = now
                peer.next_round_ns = now + node.timing.interval_ns
        self.sched.advance(dt_ns / 1e9)

    def run(self, seconds: float) -> None:
        for _ in range(round(seconds * 100)):
            self.step()

    def _count(self, peer: Peer) -> bool:
        """What the node's kernel counted in the last sync cycle, into its rows."""
        k = len(peer.clients)
        now = self.wall()
        dc = self.pps_per_client * SYNC_NS // S
        own = peer.table.own_rows(peer.table.pair_ids(peer.clients, np.array([VICTIM] * k, "S16")))
        ts1 = np.where(own[0], own[1], now - SYNC_NS)
        result = peer.table.record_local(
            peer.clients,
            np.array([VICTIM] * k, "S16"),
            ts1,
            np.full(k, now),
            np.full(k, dc),
            np.zeros(k, dtype=np.int64),
            catch_up=True,
        )
        return bool(result.changed.any())

    # --- what the views say --------------------------------------------------------------

    def rows_of(self, holder: str, origin: str) -> dict[bytes, tuple[int, int, int]]:
        """``holder``'s rows of ``origin``: client -> (ts1, ts2, c)."""
        out: dict[bytes, tuple[int, int, int]] = {}
        for e in self.peers[holder].table.entries():
            if e.origin == origin:
                out[repr(e.pair[0]).encode()] = (e.entry.ts1, e.entry.ts2, e.entry.c)
        return out

    def count_error(self) -> int:
        """The largest difference, over live holders, live origins and
        pairs, between a holder's count of an origin's row and the origin's
        own (a row missing on one side counts as 0 there)."""
        live = self.live()
        own = {o: self.rows_of(o, o) for o in live}
        worst = 0
        for holder in live:
            for origin in live:
                if origin == holder:
                    continue
                held = self.rows_of(holder, origin)
                for key in own[origin].keys() | held.keys():
                    a = own[origin].get(key, (0, 0, 0))[2]
                    b = held.get(key, (0, 0, 0))[2]
                    worst = max(worst, abs(a - b))
        return worst

    def rows_equal(self) -> bool:
        """Every live holder holds every live origin's rows exactly as the origin does."""
        live = self.live()
        own = {o: self.rows_of(o, o) for o in live}
        return all(self.rows_of(h, o) == own[o] for h in live for o in live if o != h)

    def membership_settled(self) -> bool:
        live = self.live()
        return all(
            (m := self.peers[h].node.membership.member(o)) is not None
            and m.state is MemberState.ALIVE
            for h in live
            for o in live
        )

    def rounds_until(self, predicate: object, limit_rounds: int = 200) -> int | None:
        """Gossip rounds (of the profile's interval) from now until
        ``predicate()`` holds, checked every 10 ms; None past ``limit_rounds``."""
        assert callable(predicate)
        interval = self.cfg.interval_ns
        start = self.sched.now_ns
        while self.sched.now_ns - start <= limit_rounds * interval:
            if predicate():
                return -(-(self.sched.now_ns - start) // interval)
            self.step()
        return None
