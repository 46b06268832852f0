"""An in-process mesh: N gossip states, seeded botnet-like traffic, then
synchronous push-pull rounds with message loss, until every node's views
equal the ground truth.

What it measures is properties 2 and 3 of docs/design.md at a size no lab can
reach: how many rounds until all nodes agree (and agree with the truth, to
the packet), and what that costs in messages and bytes. Byte counts come from
a ``size_of`` function the caller passes (the CLI passes the wire encoder's),
so this module stays pure: no I/O, no clock, the randomness from one seeded
``random.Random``.

One round: every node picks ``fanout`` random peers and runs the Scuttlebutt
exchange with each: its digest goes to the peer (message 1); the peer answers
with its digest (message 2) and the delta the first node lacks, cut into
chunks (one message each); the first node then sends the delta the peer
lacks, in chunks. Every message is lost with probability ``loss``
independently; a node whose digest was lost gets no answer. Messages are
built from the states at the start of the round and delivered, in random
order, at its end (the synchronous-round model of gossip analyses).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from xpro_mesh.core.algorithm import NS_PER_S, Params
from xpro_mesh.core.gossip_state import (
    Delta,
    Digest,
    GossipState,
    LocalCount,
    MergeLimits,
    OriginEntry,
    Pair,
    PairView,
    chunk_delta,
    fold_pair,
)

__all__ = [
    "DEFAULT_SIM_PARAMS",
    "RoundStats",
    "Simulation",
    "SimulationConfig",
    "SimulationResult",
    "address",
]

DEFAULT_SIM_PARAMS = Params(
    t_t1=10 * NS_PER_S,
    t_t2=NS_PER_S,
    t_t3=NS_PER_S,
    t_t4=60 * NS_PER_S,
    t_f1=100,
    t_f2=1_000,
    r=2,
)
"""Thresholds for the simulated traffic: windows of a few seconds, T_T1 = 10 s
so a tenth of the rows (counted 20 s earlier) are from an older window."""

_EPOCH_NS = 1_700_000_000 * NS_PER_S  # cluster time of the first packet
_BOT_SHARE = 0.75  # clients that flood the first destination (the victim)
_OLD_SHARE = 0.10  # (pair, proxy) rows from a window that is no longer live


def address(kind: int, number: int) -> bytes:
    """A 16-byte IPv4-mapped address: 10.0.0.0/8 clients (kind 0) and
    198.51.100.0/24 destinations (kind 1, TEST-NET-2); never routed anywhere."""
    prefix = b"\x00" * 10 + b"\xff\xff"
    if kind == 0:
        return prefix + bytes((10, (number >> 16) & 0xFF, (number >> 8) & 0xFF, number & 0xFF))
    return prefix + bytes((198, 51, 100, number & 0xFF))


@dataclass(frozen=True, slots=True)
class SimulationConfig:
    """One run. ``clients`` defaults to half the nodes (at least 16), each
    client towards one of ``destinations`` and seen by 1..``spread`` proxies."""

    nodes: int
    fanout: int = 3
    loss: float = 0.0
    seed: int = 0
    max_rounds: int = 64
    clients: int | None = None
    destinations: int = 4
    spread: int = 3
    chunk_entries: int = 256
    round_ns: int = NS_PER_S // 5
    params: Params = DEFAULT_SIM_PARAMS

    def __post_init__(self) -> None:
        checks = (
            ("nodes", self.nodes >= 1, "must be >= 1"),
            ("fanout", self.fanout >= 1, "must be >= 1"),
            ("loss", 0.0 <= self.loss < 1.0, "must be in [0, 1)"),
            ("max_rounds", self.max_rounds >= 1, "must be >= 1"),
            ("clients", self.clients is None or self.clients >= 1, "must be >= 1"),
            ("destinations", 1 <= self.destinations <= 256, "must be in 1..256"),
            ("spread", self.spread >= 1, "must be >= 1"),
            ("chunk_entries", self.chunk_entries >= 1, "must be >= 1"),
            ("round_ns", self.round_ns >= 1, "must be >= 1"),
        )
        for name, ok, problem in checks:
            if not ok:
                raise ValueError(f"{name} {problem}, got {getattr(self, name)!r}")

    @property
    def client_count(self) -> int:
        return self.clients if self.clients is not None else max(16, self.nodes // 2)


@dataclass(frozen=True, slots=True)
class RoundStats:
    round: int
    messages: int
    lost: int
    bytes_sent: int
    rows_delivered: int
    converged_nodes: int


@dataclass(frozen=True, slots=True)
class SimulationResult:
    config: SimulationConfig
    converged: bool
    rounds_to_converge: int | None  # 0: nothing to gossip (one node)
    rounds_run: int
    max_count_error: int  # over every node and pair at the end; 0 once converged
    pairs: int
    entries: int  # (pair, origin) rows in the ground truth
    messages: int
    messages_lost: int
    bytes_sent: int
    bytes_per_node_per_round: float
    rows_delivered: int


class Simulation:
    """Build with a config, iterate :meth:`rounds`, then read :meth:`result`."""

    def __init__(
        self,
        config: SimulationConfig,
        size_of: Callable[[Digest | Delta], int] | None = None,
    ) -> None:
        self.config = config
        self._size_of = size_of if size_of is not None else (lambda _m: 0)
        self._rng = random.Random(config.seed)
        self._limits = MergeLimits(max_entries_per_message=max(config.chunk_entries, 4_096))
        horizon = 10 * config.params.t_t4 + config.max_rounds * config.round_ns
        self.states = [
            GossipState(f"proxy-{i}", 1, config.params, horizon_ns=horizon)
            for i in range(config.nodes)
        ]
        self._end_of_traffic = self._count_traffic()
        self.truth = self._ground_truth()
        self._wrong: list[set[Pair]] = [self._mismatches(s) for s in self.states]
        self._unconverged = sum(1 for w in self._wrong if w)
        self._round = 0
        self._converged_at: int | None = 0 if self._unconverged == 0 else None
        self._messages = self._lost = self._bytes = self._rows = 0

    # --- set-up ----------------------------------------------------------------

    def _count_traffic(self) -> int:
        """Each client sends to one destination through 1..spread proxies; each
        proxy syncs its count 1..3 times. Returns the time traffic ends."""
        cfg, rng = self.config, self._rng
        last = _EPOCH_NS
        for k in range(cfg.client_count):
            dst = 0 if rng.random() < _BOT_SHARE else rng.randrange(cfg.destinations)
            pair: Pair = (address(0, k), address(1, dst))
            for proxy in rng.sample(range(cfg.nodes), min(cfg.nodes, rng.randint(1, cfg.spread))):
                # Most rows are from the current window (20-25 s in); some
                # from a window 20 s earlier, idle for more than T_T1 since.
                recent = rng.random() >= _OLD_SHARE
                start = _EPOCH_NS + 20 * NS_PER_S * recent + rng.randrange(2 * NS_PER_S)
                ts2 = start
                for _sync in range(rng.randint(1, 3)):
                    ts2 += rng.randrange(NS_PER_S)
                    counted = LocalCount(ts1=start, ts2=ts2, dc=rng.randint(1, 40), mark=0)
                    self.states[proxy].record_local(pair, counted)
                last = max(last, ts2)
        return last

    def _ground_truth(self) -> dict[Pair, PairView]:
        """Every origin's own rows, folded: what each node must end up seeing."""
        own: dict[Pair, list[OriginEntry]] = {}
        for state in self.states:
            for pe in state.entries():
                own.setdefault(pe.pair, []).append(pe.entry)
        truth: dict[Pair, PairView] = {}
        for pair, entries in own.items():
            view = fold_pair(entries, self.config.params.t_t1)
            assert view is not None
            truth[pair] = view
        self._entries = sum(len(v) for v in own.values())
        return truth

    def _mismatches(self, state: GossipState) -> set[Pair]:
        return {pair for pair, view in self.truth.items() if state.pair_view(pair) != view}

    # --- rounds ----------------------------------------------------------------

    @property
    def converged(self) -> bool:
        return self._unconverged == 0

    def rounds(self) -> Iterator[RoundStats]:
        """Run rounds until every node agrees with the truth or max_rounds."""
        while not self.converged and self._round < self.config.max_rounds:
            yield self._one_round()

    def _one_round(self) -> RoundStats:
        cfg, rng = self.config, self._rng
        self._round += 1
        now = self._end_of_traffic + self._round * cfg.round_ns
        n = cfg.nodes
        fanout = min(cfg.fanout, n - 1)
        loss = cfg.loss
        digests = [s.digest() for s in self.states]
        digest_bytes = [self._size_of(d) for d in digests]
        messages = lost = sent = 0
        deliveries: list[tuple[int, Delta]] = []

        def send(size: int) -> bool:
            nonlocal messages, lost, sent
            messages += 1
            sent += size
            if loss and rng.random() < loss:
                lost += 1
                return False
            return True

        def ship(sender: int, receiver: int, peer_digest: Digest) -> None:
            delta = self.states[sender].delta_for(peer_digest)
            if not delta.entries and not delta.coverage:
                return
            for chunk in chunk_delta(delta, cfg.chunk_entries):
                if send(self._size_of(chunk)):
                    deliveries.append((receiver, chunk))

        for a in range(n):
            for pick in rng.sample(range(n - 1), fanout):
                b = pick + (pick >= a)
                if not send(digest_bytes[a]):
                    continue
                ship(b, a, digests[a])
                if send(digest_bytes[b]):
                    ship(a, b, digests[b])

        rng.shuffle(deliveries)
        rows = 0
        touched: dict[int, set[Pair]] = {}
        for receiver, chunk in deliveries:
            rows += len(chunk.entries)
            report = self.states[receiver].merge(chunk, now, self._limits)
            if report.changed_pairs:
                touched.setdefault(receiver, set()).update(report.changed_pairs)
        for receiver, pairs in touched.items():
            self._recheck(receiver, pairs)
        self._messages += messages
        self._lost += lost
        self._bytes += sent
        self._rows += rows
        if self._unconverged == 0 and self._converged_at is None:
            self._converged_at = self._round
        return RoundStats(
            round=self._round,
            messages=messages,
            lost=lost,
            bytes_sent=sent,
            rows_delivered=rows,
            converged_nodes=n - self._unconverged,
        )

    def _recheck(self, node: int, pairs: set[Pair]) -> None:
        wrong = self._wrong[node]
        was_wrong = bool(wrong)
        state = self.states[node]
        for pair in pairs:
            if state.pair_view(pair) == self.truth.get(pair):
                wrong.discard(pair)
            else:
                wrong.add(pair)
        if was_wrong and not wrong:
            self._unconverged -= 1
        elif wrong and not was_wrong:
            self._unconverged += 1

    # --- outcome ---------------------------------------------------------------

    def max_count_error(self) -> int:
        """The largest |view count - true count| over every node and pair."""
        worst = 0
        for state in self.states:
            for pair, truth in self.truth.items():
                view = state.pair_view(pair)
                worst = max(worst, abs((view.c if view is not None else 0) - truth.c))
            for pair in state.pairs():
                if pair not in self.truth:
                    view = state.pair_view(pair)
                    worst = max(worst, view.c if view is not None else 0)
        return worst

    def result(self) -> SimulationResult:
        rounds = max(self._round, 1)
        return SimulationResult(
            config=self.config,
            converged=self.converged,
            rounds_to_converge=self._converged_at,
            rounds_run=self._round,
            max_count_error=self.max_count_error(),
            pairs=len(self.truth),
            entries=self._entries,
            messages=self._messages,
            messages_lost=self._lost,
            bytes_sent=self._bytes,
            bytes_per_node_per_round=self._bytes / (self.config.nodes * rounds),
            rows_delivered=self._rows,
        )
