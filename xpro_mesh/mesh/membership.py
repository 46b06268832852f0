"""Membership and failure detection: SWIM as memberlist runs it, sans-IO.

Why: the mesh has no master, so every agent must know by itself which peers
are alive (to gossip records with, and to steer clients to under dispersion)
and must notice a dead proxy without any one node being in charge. This is
SWIM (Das, Gupta, Motivala, "SWIM: Scalable Weakly-consistent Infection-style
Process Group Membership Protocol", DSN 2002) with the adaptations of
HashiCorp memberlist (``state.go``):

* **Probing** (SWIM §3): every ``probe_interval`` a node pings the next member
  of a randomly shuffled round-robin list (§4.3: a failed member is found
  within a bounded time by every prober). No ack within ``probe_timeout``:
  ask ``indirect_checks`` other members to ping it (``ping-req``), so that one
  lossy link does not condemn a healthy node. No ack by the end of the
  interval: the target becomes *suspect*.
* **Suspicion** (SWIM §4.2): a suspect member is declared *dead* only after
  ``suspicion_timeout = suspicion_mult · max(1, log10(N)) · probe_interval``
  (memberlist ``suspicionTimeout``; the ``max(1, ·)`` is the floor that keeps
  small clusters from flapping). A node that hears it is suspected refutes by
  gossiping *alive* with a higher incarnation.
* **Lifeguard** (Dadgar, Phillips, Currey, "Lifeguard: Local Health Awareness
  for More Accurate Failure Detection", DSN 2018; memberlist ``awareness.go``
  and ``suspicion.go``), so that a node made slow by its own load (a busy
  event loop, a flood of datagrams) does not condemn healthy peers, and
  healthy peers give it time:

  - *local health* (:attr:`Membership.health`, 0..``awareness_max - 1``):
    raised by one for every probe of ours that fails with no nack from its
    helpers (by one per missing nack when helpers were asked), and for every
    refutation of a rumour about ourselves; lowered by one for every probe
    answered. The probe interval (so the wait for indirect acks) is scaled
    by ``health + 1``; the direct ack timeout is not (waiting longer does
    not get a datagram through; memberlist reasons the same);
  - *nacks*: a ping-req helper that gets no ack from the target within the
    probe timeout answers the asker ``nack`` (:class:`ForwardNack`), so a
    prober that hears neither ack nor nack knows the problem is likely its own;
  - *buddy system*: a ping to a suspect member carries the suspicion
    (:meth:`Membership.buddy`), so a live member refutes at its next probe;
  - *suspicion confirmations*: a suspicion starts at ``suspicion_max_mult ·
    S(N)`` when ``k = suspicion_mult - 2`` independent confirmations are
    possible (``N - 2 >= k``), and shrinks towards ``S(N)`` as other
    suspectors confirm it: ``max - log(n+1)/log(k+1) · (max - min)`` after n
    confirmations (memberlist ``remainingSuspicionTime``). A member record
    carries the suspector (``source``) so confirmations are counted once each.
* **Dissemination** (SWIM §4.1): updates ride on messages sent anyway, each
  retransmitted ``retransmit_mult · ⌈log10(N + 1)⌉`` times
  (:class:`~xpro_mesh.mesh.broadcast.TransmitLimitedQueue`); a periodic
  full-state push-pull (``push_pull_interval``) heals what gossip missed.
* **Precedence** (SWIM §4.2, memberlist ``aliveNode``/``suspectNode``/
  ``deadNode``), for an update about member M with incarnation i, where M is
  known with incarnation j:

  ====================  ===================================================
  alive(i)              accepted iff i > j (an unknown M is added)
  suspect(i)            accepted iff i >= j and M is alive; ignored for an
                        unknown M, or one already suspect or dead
  dead(i)               accepted iff i >= j and M is not already dead;
                        ignored for an unknown M
  suspect/dead of self  refuted: incarnation := max(own, i) + 1, gossip alive
  ====================  ===================================================

  A full-state merge (push-pull) takes a peer's *dead* as *suspect*, as
  memberlist's ``mergeState`` does: a node never kills a member on one
  peer's word alone without the member getting a chance to refute.
* **Restarts**: a node starts with incarnation
  :func:`incarnation_from_wall_clock` (milliseconds of the realtime clock), so
  a restarted node outranks every rumour about its previous life, and the
  other nodes take it as alive again; if the wall clock went backwards, the
  first rumour about the old life that reaches it is refuted the usual way.
  Dead members are remembered for ``dead_retention`` (memberlist's
  ``GossipToTheDeadTime``), long enough to ignore stale *alive* rumours about
  them and to keep gossiping to them so that a falsely condemned node learns
  it and refutes, then forgotten.
* **Workload** (DeDoS dispersion, DESIGN.md): a node's :class:`Workload`
  rides on its *alive* record; :meth:`Membership.set_load` bumps the
  incarnation, as memberlist's ``UpdateNode`` does for node metadata.

Detection time
--------------
From the crash of a member until *every* live node holds it as dead (no
message loss):

  T = T_first_probe + P + S(N) + D

with P the probe interval, S(N) the suspicion timeout and D the spread of
the suspicion by gossip (every node that hears it starts its own timer, and
the first to expire gossips *dead*). T_first_probe averages
``e/(e-1)·P ≈ 1.6·P`` (SWIM §3.1) and never exceeds ``(2N-3)·P``: each
prober visits the dead member once in every round of its shuffled list, so
two visits are at most ``2(N-1)-1`` probes apart. :func:`detection_time_bound_ns`
is the figure the tests hold the simulation to:
``(2N-2)·P + S(N) + 2·(⌈log_f N⌉ + 1)·G`` with gossip interval G and fan-out
f. Its first two terms are worst cases of the probe schedule; the last is
the usual spread of infection-style gossip, twice: with Lifeguard a
suspicion lasts ``suspicion_max_mult·S(N)`` until ``k`` other probers
confirm it, each of whom has probed the dead member within ``(2N-2)·P`` and
gossiped its suspicion, after which the timer is back at S(N) from its start
(or fires at once). Not a guarantee: a lost message or a late event loop
adds to all of them.

For N = 5 (``S = mult·P`` since ``log10 5 < 1``):

* ``lan``   (P = 1 s, mult 4, G = 500 ms, f = 3): typically ≈ 6 s;
  bound 8 + 4 + 3 = 15 s;
* ``local`` (P = 200 ms, mult 3, G = 100 ms, f = 3): typically ≈ 1 s;
  bound 1.6 + 0.6 + 0.6 = 2.8 s.

(In 100 simulated 5-node clusters, ``tests/test_membership.py`` harness,
no loss: ``lan`` mean 5.9 s, worst 7.6 s; ``local`` mean 1.0 s, worst 1.4 s.
Real agents add their event-loop lag.)

The host protocol
-----------------
This module never touches a socket or a clock: every input carries
``now_ns`` (any clock that does not go backwards; the agent uses
``time.monotonic_ns``) and returns :data:`Action` values for the host to
perform:

* :class:`Probe` → send ``ping(seq, target node id)`` to ``addr``, with
  :meth:`Membership.buddy` among its updates when there is one. A node that
  receives a ping naming *itself* answers ``ack(seq)``; the answer to an ack
  is :meth:`Membership.on_ack`.
* :class:`IndirectProbe` → send ``ping-req(seq, target id, target addr)`` to
  ``via``; the receiver calls :meth:`Membership.on_ping_request`.
* :class:`ForwardAck` → send ``ack(seq)`` to the node that asked.
* :class:`ForwardNack` → send ``nack(seq)`` to the node that asked: the
  target did not answer us in time; the asker passes it to
  :meth:`Membership.on_nack`.
* :class:`SyncState` → push-pull: send :meth:`Membership.local_state` to
  ``addr`` and ask for the peer's; both sides feed what they receive to
  :meth:`Membership.merge_state`.
* :class:`MemberChanged` → informational (logs, metrics, the API).

Every message may piggyback :meth:`Membership.updates_to_piggyback`; pings,
ping-reqs and acks also carry :meth:`Membership.self_update`. The receiver
passes them to :meth:`Membership.on_update`. Infection-style gossip alone
misses a node now and then (each update is sent only ``λ·log N`` times);
the sender's own record on every probe means that, without loss, membership
converges within a round or two of the probe lists (of two nodes that joined
together, the later one got the earlier one from the seed and probes it),
and push-pull repairs the rest. Call :meth:`Membership.tick` at
:meth:`Membership.next_deadline_ns` at the latest.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, replace

from xpro_mesh.mesh.broadcast import TransmitLimitedQueue

__all__ = [
    "Action",
    "Address",
    "Announce",
    "DetectorStats",
    "ForwardAck",
    "ForwardNack",
    "IndirectProbe",
    "Member",
    "MemberChanged",
    "MemberState",
    "MemberUpdate",
    "Membership",
    "MembershipParams",
    "Probe",
    "SyncState",
    "Workload",
    "detection_time_bound_ns",
    "incarnation_from_wall_clock",
    "remaining_suspicion_ns",
    "suspicion_timeout_ns",
]

Address = tuple[str, int]

MAX_NODE_ID_BYTES = 255
_U64_MAX = 2**64 - 1
_MS = 1_000_000
_S = 1_000_000_000
_SEQ_MOD = 2**32


class MemberState(enum.StrEnum):
    """What a node believes about a member (compares equal to its string)."""

    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"


@dataclass(frozen=True, slots=True)
class Workload:
    """A proxy's load, published for DeDoS-style dispersion (DESIGN.md).

    packets_in_per_s: packets per second arriving at the XDP program;
    drop_ratio:       share of them dropped, 0..1;
    loop_lag_ms:      how late the agent's event loop runs its timers.
    """

    packets_in_per_s: float
    drop_ratio: float
    loop_lag_ms: float

    def __post_init__(self) -> None:
        for name in ("packets_in_per_s", "drop_ratio", "loop_lag_ms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
        if self.drop_ratio > 1:
            raise ValueError(f"drop_ratio must be <= 1, got {self.drop_ratio!r}")


def _check_identity(node_id: str, addr: Address, incarnation: int) -> None:
    if not isinstance(node_id, str) or not 1 <= len(node_id.encode()) <= MAX_NODE_ID_BYTES:
        raise ValueError(f"node id must be 1..{MAX_NODE_ID_BYTES} UTF-8 bytes, got {node_id!r}")
    host, port = addr
    if not isinstance(host, str) or not host:
        raise ValueError(f"address host must be a non-empty string, got {host!r}")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"address port must be 1..65535, got {port!r}")
    if isinstance(incarnation, bool) or not isinstance(incarnation, int):
        raise ValueError(f"incarnation must be an integer, got {incarnation!r}")
    if not 0 <= incarnation <= _U64_MAX:
        raise ValueError(f"incarnation must fit in u64, got {incarnation}")


@dataclass(frozen=True, slots=True)
class MemberUpdate:
    """One gossiped statement about a member: memberlist's alive / suspect /
    dead messages in one record. Invalid fields raise ``ValueError``, so the
    wire decoder can turn them into a rejected message."""

    node_id: str
    addr: Address
    incarnation: int
    state: MemberState
    load: Workload | None = None
    source: str | None = None  # who suspected / declared dead (Lifeguard confirmations)

    def __post_init__(self) -> None:
        _check_identity(self.node_id, self.addr, self.incarnation)
        if not isinstance(self.state, MemberState):
            raise ValueError(f"state must be a MemberState, got {self.state!r}")
        if self.source is not None and (
            not isinstance(self.source, str)
            or not 1 <= len(self.source.encode()) <= MAX_NODE_ID_BYTES
        ):
            raise ValueError(f"source must be a node id, got {self.source!r}")


@dataclass(frozen=True, slots=True)
class Member:
    """A member as this node sees it."""

    node_id: str
    addr: Address
    incarnation: int
    state: MemberState
    state_since_ns: int
    load: Workload | None = None

    def as_update(self) -> MemberUpdate:
        return MemberUpdate(self.node_id, self.addr, self.incarnation, self.state, self.load)


@dataclass(frozen=True, slots=True)
class MembershipParams:
    """Protocol timing; defaults are the ``lan`` profile of
    :mod:`xpro_mesh.agent.config`, which is where operators set them."""

    probe_interval_ns: int = 1 * _S
    probe_timeout_ns: int = 500 * _MS
    suspicion_mult: int = 4
    indirect_checks: int = 3
    retransmit_mult: int = 4
    push_pull_interval_ns: int = 30 * _S
    dead_retention_ns: int = 30 * _S
    max_members: int = 4096
    max_relays: int = 1024
    awareness_max: int = 8  # local health multiplier cap (memberlist AwarenessMaxMultiplier)
    suspicion_max_mult: int = 6  # longest suspicion, times S(N) (SuspicionMaxTimeoutMult)

    def __post_init__(self) -> None:
        for name in (
            "probe_interval_ns",
            "probe_timeout_ns",
            "suspicion_mult",
            "retransmit_mult",
            "push_pull_interval_ns",
            "dead_retention_ns",
            "max_members",
            "max_relays",
            "awareness_max",
            "suspicion_max_mult",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.indirect_checks < 0:
            raise ValueError(f"indirect_checks must be >= 0, got {self.indirect_checks}")
        if self.probe_timeout_ns >= self.probe_interval_ns:
            raise ValueError("probe_timeout must be shorter than probe_interval")


MAX_INCARNATION = 2**62
"""What the wire accepts (:data:`xpro_mesh.mesh.columns.MAX_VERSION`); our own
incarnation saturates here instead of overflowing the encoder."""


def _bump(incarnation: int) -> int:
    """The next incarnation, saturating at MAX_INCARNATION: a rumour at the
    bound is then tied, not out-ranked, but the node keeps running and keeps
    answering probes (a crash would serve the rumour better)."""
    return min(incarnation + 1, MAX_INCARNATION)


def incarnation_from_wall_clock(wall_ns: int) -> int:
    """The starting incarnation of a node: realtime milliseconds, so a restart
    (at least 1 ms later) outranks everything the previous life gossiped as
    long as that life bumped its incarnation less than once per millisecond."""
    return max(0, wall_ns) // _MS


def suspicion_timeout_ns(params: MembershipParams, num_nodes: int) -> int:
    """``suspicion_mult · max(1, log10(max(1, N))) · probe_interval``
    (memberlist ``suspicionTimeout``)."""
    scale = max(1.0, math.log10(max(1, num_nodes)))
    return int(params.suspicion_mult * scale * params.probe_interval_ns)


def detection_time_bound_ns(
    params: MembershipParams, num_nodes: int, gossip_interval_ns: int, fanout: int
) -> int:
    """Upper bound, without message loss, from a member's crash until every
    live node holds it dead (module docstring): ``(2N-2)·P + S(N) +
    2·(⌈log_f N⌉ + 1)·G``."""
    n = max(2, num_nodes)
    rounds = math.ceil(math.log(n, max(2, fanout))) + 1
    return (
        (2 * n - 2) * params.probe_interval_ns
        + suspicion_timeout_ns(params, n)
        + 2 * rounds * gossip_interval_ns
    )


# --- actions: what the host must do -------------------------------------------


@dataclass(frozen=True, slots=True)
class Probe:
    """Send ``ping(seq, node_id)`` to ``addr``."""

    seq: int
    node_id: str
    addr: Address


@dataclass(frozen=True, slots=True)
class IndirectProbe:
    """Send ``ping-req(seq, node_id, addr)`` to ``via_addr``: ask ``via_id`` to
    probe ``node_id`` for us and forward its ack."""

    seq: int
    via_id: str
    via_addr: Address
    node_id: str
    addr: Address


@dataclass(frozen=True, slots=True)
class ForwardAck:
    """Send ``ack(seq)`` to ``addr``: the target of a ping-req answered us."""

    seq: int
    node_id: str
    addr: Address


@dataclass(frozen=True, slots=True)
class ForwardNack:
    """Send ``nack(seq)`` to ``addr``: the target of a ping-req did not answer
    us within the probe timeout (Lifeguard)."""

    seq: int
    node_id: str
    addr: Address


@dataclass(frozen=True, slots=True)
class SyncState:
    """Push-pull: exchange full member lists with ``addr`` (``node_id`` is
    None for a seed known only by address)."""

    addr: Address
    node_id: str | None


@dataclass(frozen=True, slots=True)
class MemberChanged:
    """``node_id`` went from ``previous`` to ``current`` (None: unknown /
    forgotten)."""

    node_id: str
    previous: MemberState | None
    current: MemberState | None
    incarnation: int


@dataclass(frozen=True, slots=True)
class Announce:
    """Send ``update`` to every member at ``addrs`` at once: this node's own
    suspicion of a member ran out and it declared the member dead. Gossip
    spreads the news too, but only a few times per update (retransmit limit),
    and a member that misses every copy would otherwise wait out a suspicion
    of its own, up to ``suspicion_max_mult · S(N)`` without confirmations,
    well past the detection bound. One message per member per declaration.
    Also the answer of :meth:`Membership.on_sender` to a member that talks
    to us while we hold it suspect or dead: our verdict, to that member
    alone, so that it refutes."""

    update: MemberUpdate
    addrs: tuple[Address, ...]
    ids: tuple[str, ...] = ()  # the members at ``addrs``, in order (the envelope's recipients)


Action = Probe | IndirectProbe | ForwardAck | ForwardNack | SyncState | MemberChanged | Announce


@dataclass(slots=True)
class DetectorStats:
    """What the failure detector did (the node exports them)."""

    probes: int = 0
    probes_failed: int = 0  # no ack, direct or indirect, within the (scaled) interval
    nacks_received: int = 0
    nacks_sent: int = 0
    suspicions_raised: int = 0  # by our own failed probes
    confirmations: int = 0  # independent suspectors counted for a suspicion we hold
    refutations: int = 0  # rumours about ourselves out-ranked
    deaths_declared: int = 0  # suspicions of ours that ran out


@dataclass(slots=True)
class _ProbeInFlight:
    seq: int
    node_id: str
    started_ns: int
    deadline_ns: int  # end of the current phase
    indirect: bool  # False: waiting for the direct ack; True: for any ack
    interval_ns: int  # the probe interval scaled by local health when it started
    expected_nacks: int = 0
    nacks: int = 0


@dataclass(slots=True)
class _Suspicion:
    """A suspicion timer that shrinks with confirmations (memberlist
    ``suspicion.go``); ``confirmations`` holds the suspectors counted."""

    start_ns: int
    k: int
    min_ns: int
    max_ns: int
    confirmations: set[str]
    deadline_ns: int

    def confirm(self, source: str) -> bool:
        """Count ``source``; True if it was a new confirmation (re-gossip it)."""
        if len(self.confirmations) - 1 >= self.k or source in self.confirmations:
            return False
        self.confirmations.add(source)
        self.deadline_ns = self.start_ns + remaining_suspicion_ns(
            len(self.confirmations) - 1, self.k, self.min_ns, self.max_ns
        )
        return True


def remaining_suspicion_ns(n: int, k: int, min_ns: int, max_ns: int) -> int:
    """The suspicion timeout after ``n`` of ``k`` wanted confirmations:
    ``max - log(n+1)/log(k+1) · (max - min)``, never below ``min``, whole ms
    (memberlist ``remainingSuspicionTime``)."""
    if k < 1:
        return min_ns
    frac = math.log(n + 1) / math.log(k + 1)
    raw = max_ns - frac * (max_ns - min_ns)
    return max(min_ns, math.floor(raw / _MS) * _MS)


@dataclass(frozen=True, slots=True)
class _Relay:
    requester_id: str
    requester_addr: Address
    requester_seq: int
    expires_ns: int


class Membership:
    """One node's membership list and failure detector (see module docstring).

    ``rng`` drives every random choice (probe order, ping-req helpers), so a
    seeded rng makes a whole simulated cluster reproducible.
    """

    def __init__(
        self,
        node_id: str,
        addr: Address,
        *,
        incarnation: int,
        now_ns: int,
        rng: random.Random,
        params: MembershipParams | None = None,
    ) -> None:
        _check_identity(node_id, addr, incarnation)
        self.node_id = node_id
        self.addr = addr
        self.params = params or MembershipParams()
        self._rng = rng
        self._members: dict[str, Member] = {
            node_id: Member(node_id, addr, incarnation, MemberState.ALIVE, now_ns)
        }
        self._queue: TransmitLimitedQueue[str, MemberUpdate] = TransmitLimitedQueue(
            self.params.retransmit_mult, max_entries=self.params.max_members
        )
        self._queue.enqueue(node_id, self._members[node_id].as_update())
        self._probe_order: list[str] = []
        self._probe_index = 0
        self._probe: _ProbeInFlight | None = None
        self._next_probe_ns = now_ns + self.params.probe_interval_ns
        self._next_push_pull_ns = now_ns + self.params.push_pull_interval_ns
        self._next_join_ns: int | None = None
        self._seeds: tuple[Address, ...] = ()
        self._suspicions: dict[str, _Suspicion] = {}
        self._relays: dict[int, _Relay] = {}
        self._told_dead: dict[str, int] = {}  # member -> when we last told it (on_sender)
        self.health = 0  # Lifeguard's local health score: 0 is healthy
        self.stats = DetectorStats()
        self._seq = rng.randrange(_SEQ_MOD)
        self._left = False
        self.refused_members = 0  # alive rumours dropped because max_members was reached

    # --- queries ------------------------------------------------------------

    @property
    def incarnation(self) -> int:
        return self._members[self.node_id].incarnation

    def member(self, node_id: str) -> Member | None:
        return self._members.get(node_id)

    def members(self) -> list[Member]:
        """Every member known, this node and remembered dead ones included."""
        return sorted(self._members.values(), key=lambda m: m.node_id)

    def live_members(self) -> list[Member]:
        """Members not declared dead (alive or suspect), this node included."""
        return [m for m in self.members() if m.state is not MemberState.DEAD]

    def num_live(self) -> int:
        return sum(1 for m in self._members.values() if m.state is not MemberState.DEAD)

    def random_peers(self, k: int, rng: random.Random) -> list[Member]:
        """Up to ``k`` distinct live members other than this node, uniformly."""
        peers = [m for m in self.live_members() if m.node_id != self.node_id]
        return rng.sample(peers, min(k, len(peers)))

    def gossip_targets(self, k: int, rng: random.Random) -> list[Member]:
        """Like :meth:`random_peers`, but remembered dead members are eligible
        too, as memberlist gossips to the dead for ``GossipToTheDeadTime``: a
        node condemned by mistake hears it and refutes."""
        peers = [m for m in self.members() if m.node_id != self.node_id]
        return rng.sample(peers, min(k, len(peers)))

    def suspicion_timeout_ns(self) -> int:
        return suspicion_timeout_ns(self.params, self.num_live())

    def self_update(self) -> MemberUpdate:
        """This node's own current statement, to put in every ping and ack:
        a peer that a broadcast missed still learns this node within one probe
        round, since probe targets learn the prober and probers the target."""
        return self._members[self.node_id].as_update()

    def local_state(self) -> list[MemberUpdate]:
        """The full member list for a push-pull exchange."""
        return [m.as_update() for m in self.members()]

    def updates_to_piggyback(self, max_updates: int) -> list[MemberUpdate]:
        """Up to ``max_updates`` queued updates to add to an outgoing message;
        each one counts a transmission (see :mod:`xpro_mesh.mesh.broadcast`)."""
        return self._queue.take(max_updates, self.num_live())

    def next_deadline_ns(self) -> int:
        """The latest time at which :meth:`tick` must run next."""
        deadlines = [self._next_probe_ns, self._next_push_pull_ns]
        if self._probe is not None:
            deadlines.append(self._probe.deadline_ns)
        if self._next_join_ns is not None:
            deadlines.append(self._next_join_ns)
        deadlines.extend(s.deadline_ns for s in self._suspicions.values())
        deadlines.extend(r.expires_ns for r in self._relays.values())
        deadlines.extend(
            m.state_since_ns + self.params.dead_retention_ns
            for m in self._members.values()
            if m.state is MemberState.DEAD and m.node_id != self.node_id
        )
        return min(deadlines)

    # --- inputs -------------------------------------------------------------

    def join(self, seeds: Iterable[Address], now_ns: int) -> list[Action]:
        """Start a push-pull with every seed; repeated each probe interval
        while this node knows no live peer (seeds may start later)."""
        self._seeds = tuple(dict.fromkeys(a for a in seeds if a != self.addr))
        if not self._seeds:
            return []
        self._next_join_ns = now_ns + self.params.probe_interval_ns
        return [SyncState(addr, None) for addr in self._seeds]

    def tick(self, now_ns: int) -> list[Action]:
        """Advance every timer to ``now_ns``."""
        actions: list[Action] = []
        if self._left:
            return actions
        probe = self._probe
        if probe is not None and now_ns >= probe.deadline_ns:
            actions += self.on_probe_timeout(probe.seq, now_ns)
        if self._probe is None and now_ns >= self._next_probe_ns:
            actions += self._start_probe(now_ns)
            self._next_probe_ns += self.probe_interval_ns()
            if self._next_probe_ns <= now_ns:
                self._next_probe_ns = now_ns + self.probe_interval_ns()
        for seq in [s for s, r in self._relays.items() if now_ns >= r.expires_ns]:
            relay = self._relays.pop(seq)
            self.stats.nacks_sent += 1
            actions.append(
                ForwardNack(relay.requester_seq, relay.requester_id, relay.requester_addr)
            )
        actions += self._expire_suspicions(now_ns)
        actions += self._forget_dead(now_ns)
        actions += self._sync_if_due(now_ns)
        return actions

    def on_ack(self, seq: int, now_ns: int) -> list[Action]:
        """An ack arrived (direct, or forwarded by a ping-req helper)."""
        if self._probe is not None and self._probe.seq == seq:
            self._probe = None
            self._health(-1)
            return []
        relay = self._relays.pop(seq, None)
        if relay is not None:
            return [ForwardAck(relay.requester_seq, relay.requester_id, relay.requester_addr)]
        return []

    def on_nack(self, seq: int, now_ns: int) -> list[Action]:
        """A ping-req helper reports that the target did not answer it."""
        probe = self._probe
        if probe is not None and probe.seq == seq and probe.indirect:
            probe.nacks = min(probe.expected_nacks, probe.nacks + 1)
            self.stats.nacks_received += 1
        return []

    def buddy(self, node_id: str) -> MemberUpdate | None:
        """Lifeguard's buddy system (memberlist ``probeNode``): a ping to a
        member we hold as suspect carries that suspicion, so the member hears
        it from the prober itself and refutes at once, instead of waiting for
        gossip to reach it (which may take a push-pull interval)."""
        member = self._members.get(node_id)
        if member is None or member.state is not MemberState.SUSPECT:
            return None
        return replace(member.as_update(), source=self.node_id)

    def probe_interval_ns(self) -> int:
        """The probe interval scaled by local health (Lifeguard)."""
        return self.params.probe_interval_ns * (self.health + 1)

    def _health(self, delta: int) -> None:
        self.health = max(0, min(self.params.awareness_max - 1, self.health + delta))

    def on_probe_timeout(self, seq: int, now_ns: int) -> list[Action]:
        """The current phase of probe ``seq`` timed out: after the direct
        ping, ask helpers; after the helpers, suspect the target. :meth:`tick`
        calls this at the deadlines; a host with its own timers may too."""
        probe = self._probe
        if probe is None or probe.seq != seq:
            return []
        target = self._members.get(probe.node_id)
        if target is None or target.state is MemberState.DEAD:
            self._probe = None
            return []
        if not probe.indirect:
            # The helpers get the rest of the interval, and never less than one
            # probe timeout even if this tick came late (a stalled host must
            # not condemn its peers for its own delay).
            probe.indirect = True
            probe.deadline_ns = max(
                probe.started_ns + probe.interval_ns,
                now_ns + self.params.probe_timeout_ns,
            )
            helpers = [
                m
                for m in self.live_members()
                if m.node_id not in (self.node_id, target.node_id) and m.state is MemberState.ALIVE
            ]
            chosen = self._rng.sample(helpers, min(self.params.indirect_checks, len(helpers)))
            probe.expected_nacks = len(chosen)
            return [
                IndirectProbe(seq, m.node_id, m.addr, target.node_id, target.addr) for m in chosen
            ]
        self._probe = None
        self.stats.probes_failed += 1
        # Lifeguard: helpers that did not even nack point at our own health.
        missing = probe.expected_nacks - probe.nacks
        self._health(missing if probe.expected_nacks else 1)
        actions = self._apply(
            MemberUpdate(
                target.node_id,
                target.addr,
                target.incarnation,
                MemberState.SUSPECT,
                source=self.node_id,
            ),
            now_ns,
        )
        if actions:
            self.stats.suspicions_raised += 1
        return actions

    def on_ping_request(
        self,
        requester_id: str,
        requester_addr: Address,
        seq: int,
        target_id: str,
        target_addr: Address,
        now_ns: int,
    ) -> list[Action]:
        """Probe ``target`` on behalf of ``requester`` (SWIM ping-req); its ack
        is forwarded by :meth:`on_ack`."""
        if self._left or len(self._relays) >= self.params.max_relays:
            return []
        relay_seq = self._next_seq()
        self._relays[relay_seq] = _Relay(
            requester_id, requester_addr, seq, now_ns + self.params.probe_timeout_ns
        )
        return [Probe(relay_seq, target_id, target_addr)]

    def on_update(self, updates: Iterable[MemberUpdate], now_ns: int) -> list[Action]:
        """Apply gossiped updates by the precedence rules (module docstring)."""
        actions: list[Action] = []
        for update in updates:
            actions += self._apply(update, now_ns)
        return actions

    def on_sender(self, sender: MemberUpdate, now_ns: int) -> list[Action]:
        """A message came from ``sender`` itself (its own record, under the
        MAC). If we hold it dead or suspect at that incarnation or a later
        one, it may not know: nothing it says out-ranks our verdict, and the
        rumour has left our retransmit queue (or was lost with the partition
        that caused it). So tell it, directly and at most once a probe
        interval: it refutes with a higher incarnation, and every node takes
        it back within a round or two. Without this, the two sides of a
        healed partition hold each other dead until ``dead_retention``
        forgets them (a push-pull only picks live peers) unless something
        else bumps their incarnations (:meth:`set_load`), and a suspicion
        waits for our probe to come round to the member (the buddy system's
        one chance, up to N probe intervals)."""
        if self._left or sender.node_id == self.node_id:
            return []
        known = self._members.get(sender.node_id)
        if (
            known is None
            or known.state is MemberState.ALIVE
            or sender.incarnation > known.incarnation
        ):
            return []
        last = self._told_dead.get(sender.node_id)
        if last is not None and now_ns - last < self.params.probe_interval_ns:
            return []
        self._told_dead.pop(sender.node_id, None)
        self._told_dead[sender.node_id] = now_ns
        if len(self._told_dead) > self.params.max_members:
            self._told_dead.pop(next(iter(self._told_dead)))  # bounded: oldest out
        verdict = MemberUpdate(
            known.node_id, known.addr, known.incarnation, known.state, source=self.node_id
        )
        return [Announce(verdict, (sender.addr,), (sender.node_id,))]

    def merge_state(self, updates: Iterable[MemberUpdate], now_ns: int) -> list[Action]:
        """Apply a peer's full state from a push-pull, taking its *dead* as
        *suspect* for members other than this node (memberlist ``mergeState``)."""
        actions: list[Action] = []
        for update in updates:
            if update.state is MemberState.DEAD and update.node_id != self.node_id:
                update = replace(update, state=MemberState.SUSPECT)
            actions += self._apply(update, now_ns)
        return actions

    def set_load(self, load: Workload, now_ns: int) -> None:
        """Publish this node's workload. Like memberlist's ``UpdateNode`` it
        bumps the incarnation, since only a higher incarnation makes peers
        take a new *alive*; call it every few gossip intervals, not per packet."""
        me = self._members[self.node_id]
        self._set_self(replace(me, incarnation=_bump(me.incarnation), load=load))

    def leave(self, now_ns: int) -> list[Action]:
        """Announce a graceful exit (SIGTERM): gossip *dead* about this node at
        its own incarnation, which peers accept at once instead of waiting out
        a suspicion. Keep sending piggybacks for a round or two, then stop."""
        me = self._members[self.node_id]
        self._left = True
        self._probe = None
        self._members[self.node_id] = replace(me, state=MemberState.DEAD, state_since_ns=now_ns)
        self._queue.enqueue(self.node_id, self._members[self.node_id].as_update())
        return [MemberChanged(self.node_id, MemberState.ALIVE, MemberState.DEAD, me.incarnation)]

    # --- internals ------------------------------------------------------------

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) % _SEQ_MOD
        return self._seq

    def _start_probe(self, now_ns: int) -> list[Action]:
        target = self._next_probe_target()
        if target is None:
            return []
        seq = self._next_seq()
        self._probe = _ProbeInFlight(
            seq,
            target.node_id,
            now_ns,
            now_ns + self.params.probe_timeout_ns,
            indirect=False,
            interval_ns=self.probe_interval_ns(),
        )
        self.stats.probes += 1
        return [Probe(seq, target.node_id, target.addr)]

    def _next_probe_target(self) -> Member | None:
        """Randomized round-robin (SWIM §4.3): walk a shuffled list of the
        other members, reshuffling at the end of each round."""
        for _ in range(len(self._probe_order) + 2):
            if self._probe_index >= len(self._probe_order):
                self._probe_order = [
                    m.node_id
                    for m in self._members.values()
                    if m.node_id != self.node_id and m.state is not MemberState.DEAD
                ]
                self._rng.shuffle(self._probe_order)
                self._probe_index = 0
                if not self._probe_order:
                    return None
            node_id = self._probe_order[self._probe_index]
            self._probe_index += 1
            member = self._members.get(node_id)
            if member is not None and member.state is not MemberState.DEAD:
                return member
        return None

    def _expire_suspicions(self, now_ns: int) -> list[Action]:
        actions: list[Action] = []
        for node_id, suspicion in list(self._suspicions.items()):
            if now_ns < suspicion.deadline_ns:
                continue
            member = self._members[node_id]
            self.stats.deaths_declared += 1
            dead = MemberUpdate(
                member.node_id,
                member.addr,
                member.incarnation,
                MemberState.DEAD,
                source=self.node_id,
            )
            changed = self._apply(dead, now_ns)
            actions += changed
            if changed:
                live = [
                    m
                    for m in self._members.values()
                    if m.state is not MemberState.DEAD and m.node_id != self.node_id
                ]
                if live:
                    actions.append(
                        Announce(dead, tuple(m.addr for m in live), tuple(m.node_id for m in live))
                    )
        return actions

    def _forget_dead(self, now_ns: int) -> list[Action]:
        expired = [
            m
            for m in self._members.values()
            if m.state is MemberState.DEAD
            and m.node_id != self.node_id
            and now_ns >= m.state_since_ns + self.params.dead_retention_ns
        ]
        for member in expired:
            del self._members[member.node_id]
        return [MemberChanged(m.node_id, MemberState.DEAD, None, m.incarnation) for m in expired]

    def _sync_if_due(self, now_ns: int) -> list[Action]:
        alone = self.num_live() <= 1
        if self._next_join_ns is not None and alone and now_ns >= self._next_join_ns:
            self._next_join_ns = now_ns + self.params.probe_interval_ns
            return [SyncState(addr, None) for addr in self._seeds]
        if now_ns < self._next_push_pull_ns:
            return []
        self._next_push_pull_ns = now_ns + self.params.push_pull_interval_ns
        peers = self.random_peers(1, self._rng)
        if peers:
            return [SyncState(peers[0].addr, peers[0].node_id)]
        return [SyncState(addr, None) for addr in self._seeds]

    def _set_self(self, me: Member) -> None:
        self._members[self.node_id] = me
        self._queue.enqueue(self.node_id, me.as_update())

    def _refute(self, heard_incarnation: int, now_ns: int) -> None:
        """SWIM §4.2: out-rank the rumour about us with a higher incarnation."""
        me = self._members[self.node_id]
        self.stats.refutations += 1
        self._health(1)  # Lifeguard: being suspected says we may be the slow one
        self._set_self(
            replace(
                me,
                incarnation=_bump(max(me.incarnation, heard_incarnation)),
                state=MemberState.ALIVE,
            )
        )

    def _apply(self, update: MemberUpdate, now_ns: int) -> list[Action]:
        if update.node_id == self.node_id:
            self._apply_about_self(update, now_ns)
            return []
        known = self._members.get(update.node_id)
        if update.state is MemberState.ALIVE:
            if known is None:
                if len(self._members) >= self.params.max_members:
                    self.refused_members += 1
                    return []
                self._add_to_probe_order(update.node_id)
            elif update.incarnation <= known.incarnation:
                return []
            elif known.state is MemberState.DEAD:
                self._add_to_probe_order(update.node_id)
        elif known is None or update.incarnation < known.incarnation:
            return []
        elif update.state is MemberState.SUSPECT:
            if known.state is not MemberState.ALIVE:
                return self._confirm(update)
        elif known.state is MemberState.DEAD:
            return []
        return self._set(known, update, now_ns)

    def _set(self, known: Member | None, update: MemberUpdate, now_ns: int) -> list[Action]:
        previous = known.state if known is not None else None
        changed = previous is not update.state
        since = now_ns if changed or known is None else known.state_since_ns
        load = update.load if update.load is not None or known is None else known.load
        addr = update.addr if update.state is MemberState.ALIVE or known is None else known.addr
        member = Member(update.node_id, addr, update.incarnation, update.state, since, load)
        self._members[update.node_id] = member
        if update.state is MemberState.SUSPECT:
            if changed:
                self._suspicions[update.node_id] = self._new_suspicion(update, now_ns)
        else:
            self._suspicions.pop(update.node_id, None)
        gossip = member.as_update()
        if update.state is not MemberState.ALIVE:
            gossip = replace(gossip, source=update.source)
        self._queue.enqueue(update.node_id, gossip)
        if not changed:
            return []
        return [MemberChanged(update.node_id, previous, update.state, update.incarnation)]

    def _new_suspicion(self, update: MemberUpdate, now_ns: int) -> _Suspicion:
        """memberlist ``suspectNode``: wait for ``k = suspicion_mult - 2``
        confirmations when the mesh has that many other members, else none."""
        n = self.num_live()
        k = self.params.suspicion_mult - 2
        if n - 2 < k:
            k = 0
        low = suspicion_timeout_ns(self.params, n)
        high = self.params.suspicion_max_mult * low
        suspectors = {update.source or self.node_id}
        deadline = now_ns + (high if k >= 1 else low)
        return _Suspicion(now_ns, k, low, high, suspectors, deadline)

    def _confirm(self, update: MemberUpdate) -> list[Action]:
        """Another suspector of a member already suspect: shrink the timer
        and pass the confirmation on (memberlist re-broadcasts it)."""
        suspicion = self._suspicions.get(update.node_id)
        if suspicion is None or update.source is None or update.state is not MemberState.SUSPECT:
            return []
        if suspicion.confirm(update.source):
            self.stats.confirmations += 1
            self._queue.enqueue(update.node_id, update)
        return []

    def _apply_about_self(self, update: MemberUpdate, now_ns: int) -> None:
        if self._left:
            return
        me = self._members[self.node_id]
        if update.state is MemberState.ALIVE:
            if update.incarnation > me.incarnation or (
                update.incarnation == me.incarnation and update.addr != me.addr
            ):
                self._refute(update.incarnation, now_ns)
        elif update.incarnation >= me.incarnation:
            self._refute(update.incarnation, now_ns)

    def _add_to_probe_order(self, node_id: str) -> None:
        """New members join the current round at a random place not yet
        passed, as memberlist inserts them at a random offset."""
        if node_id in self._probe_order[self._probe_index :]:
            return
        position = self._rng.randint(self._probe_index, len(self._probe_order))
        self._probe_order.insert(position, node_id)
