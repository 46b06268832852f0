"""The columnar pair table (:class:`~xpro_mesh.core.table.PairTable`) at
10k / 100k / 1M active pairs per proxy, three origins (this proxy and two peers).

Workload: ~1 000 destinations with Zipf-distributed popularity (s = 1.1),
IPv4-mapped client addresses, each pair counted by all three proxies (the
heaviest reading of "three origins": 3 rows per pair).

* **busy cycle**: every own row got new packets since the last cycle:
  Algorithm 1 for every pair with the map sync's catch-up
  (:meth:`PairTable.record_local_ids`: the adapter keeps each kernel slot's
  pair id; also measured with every own pair looked up by key,
  :meth:`PairTable.record_local`), the merge of both peers' changed rows
  (each peer changed every row: 2N rows, one stream message each), expiry,
  :meth:`~PairTable.take_changed`, the view of every changed pair and of every
  destination, and the delta of every changed own row for a peer.
* **quiet cycle**: the same steps with nothing changed.
* **messages**: the peers' rows merged as 4096-row messages (the default
  ``MergeLimits.max_entries_per_message``) instead of one message each.
* **scalar**: :class:`~xpro_mesh.core.gossip_state.GossipState` doing the same
  busy cycle on the same input (10k and 100k; the ratio of medians).
* **memory** per (pair, origin) row: ``tracemalloc`` over building the table
  (numpy reports its buffers to it) divided by the rows held.
* **key index**: N lookups of pair keys in random order, the table's
  vectorised hash index against a Python dict of 32-byte keys.

CPU time is the process's (``time.process_time``); wall time too. Each
figure is min/median/max over ``--reps`` cycles; the peers' own work
(their Algorithm 1 and their deltas) is done outside the timing.

    python -m xpro_mesh.bench.table [--pairs 10000,100000,1000000] [--reps 3]
        [--scalar-max 100000] [--json]
"""

from __future__ import annotations

import argparse
import functools
import gc
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from xpro_mesh.bench.stats import Check, Spread, checks_json, dumps, print_checks, ratio
from xpro_mesh.core.algorithm import NS_PER_S, Params
from xpro_mesh.core.gossip_state import Digest, GossipState, LocalCount
from xpro_mesh.core.keys import KeyIndex, pair_words
from xpro_mesh.core.rows import ColumnarDelta
from xpro_mesh.core.table import PairTable, chunk

__all__ = ["main"]

S = NS_PER_S
PARAMS = Params(t_t1=2 * S, t_t2=S, t_t3=S, t_t4=10 * S, t_f1=100, t_f2=1000, r=2)
INTERVAL = S // 2  # one sync cycle
T0 = 1_800_000_000 * S
DESTINATIONS = 1_000
ORIGINS = ("proxy-a", "proxy-b", "proxy-c")  # this proxy first
BUSY_NS_PER_PAIR = 1_000  # DESIGN.md "Scale": ~1 us of agent CPU per active pair per cycle
QUIET_S_AT_1M = 0.050  # issue 9: a quiet cycle <= 50 ms at 1M pairs
BYTES_PER_ROW = 300
MESSAGE_ROWS = 4096  # MergeLimits.max_entries_per_message's default


def workload(n: int, seed: int = 9) -> tuple[npt.NDArray[np.bytes_], npt.NDArray[np.bytes_]]:
    """``n`` distinct (client, destination) pairs: IPv4-mapped addresses,
    destinations drawn with Zipf popularity, clients uniformly from 10/8 and up."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, DESTINATIONS + 1) ** 1.1
    weights /= weights.sum()
    got = np.zeros((0, 4), dtype=np.uint64)
    while len(got) < n:
        m = n - len(got)
        words = np.zeros((m, 4), dtype=np.uint64)
        clients = rng.integers(0x0A000000, 0xDF000000, m, dtype=np.uint64)
        dests = rng.choice(DESTINATIONS, m, p=weights).astype(np.uint64) + np.uint64(0xC6120000)
        words[:, 1] = _mapped(clients)
        words[:, 3] = _mapped(dests)
        got = np.unique(np.concatenate([got, words]).view("V32").ravel())
        got = got.view(np.uint64).reshape(-1, 4)
    got = got[rng.permutation(len(got))[:n]]
    src = np.ascontiguousarray(got[:, :2]).view("S16").reshape(-1)
    dst = np.ascontiguousarray(got[:, 2:]).view("S16").reshape(-1)
    return src, dst


def _mapped(v4: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """The second word of ``::ffff:a.b.c.d`` as stored little-endian: bytes
    00 00 ff ff a b c d."""
    be = v4.astype(">u4").view(np.uint8).reshape(-1, 4).astype(np.uint64)
    word: npt.NDArray[np.uint64] = np.full(len(v4), 0xFFFF0000, dtype=np.uint64)
    for k in range(4):
        word |= be[:, k] << np.uint64(32 + 8 * k)
    return word


@dataclass
class Counts:
    """One cycle's kernel counts for the N pairs (v2: the kernel's own window)."""

    ts1: npt.NDArray[np.int64]
    ts2: npt.NDArray[np.int64]
    dc: npt.NDArray[np.int64]
    mark: npt.NDArray[np.int64]


def counts_at(n: int, start: int, now: int, dc: int) -> Counts:
    z = np.zeros(n, dtype=np.int64)
    return Counts(z + start, z + now, z + dc, z.copy())


@dataclass
class Mesh:
    """This proxy's table and the two peers' (columnar) tables."""

    me: PairTable
    peers: list[PairTable]
    src: npt.NDArray[np.bytes_]
    dst: npt.NDArray[np.bytes_]
    now: int
    own_ids: npt.NDArray[np.int64] | None = None  # the adapter's slot -> pair id cache
    by_keys: bool = False  # look the own pairs up by key every cycle instead

    def peer_deltas(self, counts: Counts) -> list[ColumnarDelta]:
        """Each peer counts every pair, then sends us its changed rows."""
        out = []
        asked = self.me.digest()
        for peer in self.peers:
            peer.record_local(self.src, self.dst, counts.ts1, counts.ts2, counts.dc, counts.mark)
            out.append(peer.delta_for(Digest(self.me.node_id, asked.versions)))
        return out


def build(n: int) -> Mesh:
    src, dst = workload(n)
    peers = [PairTable(o, 1, PARAMS, capacity=n) for o in ORIGINS[1:]]
    me = PairTable(ORIGINS[0], 1, PARAMS, capacity=n)
    return Mesh(me, peers, src, dst, T0)


def fill(mesh: Mesh) -> None:
    """The first cycle: every pair counted by every proxy, rows exchanged."""
    n = len(mesh.src)
    counts = counts_at(n, mesh.now - S, mesh.now, 3)
    deltas = mesh.peer_deltas(counts)
    busy_cycle(mesh, counts, deltas)


def busy_cycle(mesh: Mesh, counts: Counts, deltas: Sequence[ColumnarDelta]) -> dict[str, int]:
    """One busy cycle of this proxy (what is timed)."""
    me = mesh.me
    mine = me.digest().versions.get(me.node_id)
    if mesh.own_ids is None or mesh.by_keys:
        synced = me.record_local(
            mesh.src, mesh.dst, counts.ts1, counts.ts2, counts.dc, counts.mark, catch_up=True
        )
        mesh.own_ids = synced.ids
    else:
        synced = me.record_local_ids(
            mesh.own_ids, counts.ts1, counts.ts2, counts.dc, counts.mark, catch_up=True
        )
    for delta in deltas:
        me.merge(delta, mesh.now, LIMITS)
    expired = me.expire(mesh.now)
    if len(expired.removed_ids):  # the adapter forgets freed ids (none here)
        gone = np.zeros(me.capacity, dtype=np.bool_)
        gone[expired.removed_ids] = True
        mesh.own_ids = None if gone[mesh.own_ids].any() else mesh.own_ids
    # A peer that has every row but this cycle's own changes asks for them.
    asked = dict(me.digest().versions)
    if mine is not None:
        asked[me.node_id] = mine
    peer_digest = Digest(mesh.peers[0].node_id, asked)
    changed = me.take_changed()
    ids = None if changed is None else changed.ids
    views = me.pair_views(ids)
    every = views if ids is None or len(ids) == me.num_pairs else None
    dests = me.destination_views(pair_views=every)
    delta = me.delta_for(peer_digest)
    return {
        "own_changed": int(np.count_nonzero(synced.changed)),
        "views": len(views.ids),
        "destinations": len(dests.ids),
        "delta_rows": delta.rows,
    }


def _busy_into(
    shape: dict[str, int], mesh: Mesh, counts: Counts, deltas: Sequence[ColumnarDelta]
) -> None:
    shape.update(busy_cycle(mesh, counts, deltas))


def quiet_cycle(mesh: Mesh) -> dict[str, int]:
    me = mesh.me
    empty = np.zeros(0, dtype=np.int64)
    no_keys = np.zeros(0, dtype="S16")
    me.record_local(no_keys, no_keys, empty, empty, empty, empty, catch_up=True)
    me.merge(ColumnarDelta(), mesh.now, LIMITS)
    me.expire(mesh.now)
    changed = me.take_changed()
    ids = None if changed is None else changed.ids
    views = me.pair_views(ids)
    dests = me.destination_views(np.unique(me.destination_of(views.ids)))
    delta = me.delta_for(me.digest())
    return {"views": len(views.ids), "destinations": len(dests.ids), "delta_rows": delta.rows}


def _limits() -> Any:
    from xpro_mesh.core.gossip_state import MergeLimits

    return MergeLimits(max_pairs=10_000_000, max_entries_per_message=10_000_000)


LIMITS = _limits()


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def measure_table(n: int, reps: int) -> dict[str, Any]:
    mesh = build(n)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    mesh.me = PairTable(ORIGINS[0], 1, PARAMS, capacity=n)  # its arrays traced too
    fill(mesh)
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    rows = len(mesh.me)
    busy_wall, busy_cpu, quiet_wall, quiet_cpu, keys_cpu = [], [], [], [], []
    shape: dict[str, int] = {}
    for k in range(reps):
        for by_keys in (False, True):
            mesh.by_keys = by_keys
            mesh.now += INTERVAL
            counts = counts_at(n, T0 - S, mesh.now, 5 + k)
            deltas = mesh.peer_deltas(counts)
            wall, cpu = timed(functools.partial(_busy_into, shape, mesh, counts, deltas))
            if by_keys:
                keys_cpu.append(cpu)
            else:
                busy_wall.append(wall)
                busy_cpu.append(cpu)
        wall, cpu = timed(lambda: quiet_cycle(mesh))
        quiet_wall.append(wall)
        quiet_cpu.append(cpu)
    # The peers' rows as 4096-row messages (MergeLimits' default bound).
    mesh.now += INTERVAL
    deltas = mesh.peer_deltas(counts_at(n, T0 - S, mesh.now, 99))
    messages = [piece for d in deltas for piece in chunk(d, MESSAGE_ROWS)]
    merge_messages = timed(lambda: [mesh.me.merge(m, mesh.now) for m in messages])[1]
    return {
        "pairs": n,
        "rows": rows,
        "merge_cpu_in_messages": merge_messages,
        "messages": len(messages),
        "busy_wall": Spread.of(busy_wall),
        "busy_cpu": Spread.of(busy_cpu),
        "busy_cpu_own_by_keys": Spread.of(keys_cpu),
        "quiet_wall": Spread.of(quiet_wall),
        "quiet_cpu": Spread.of(quiet_cpu),
        "bytes_per_row_traced": held / rows,
        "bytes_per_row_arrays": mesh.me.nbytes() / rows,
        "busy_shape": shape,
    }


def measure_scalar(n: int, reps: int) -> dict[str, Any]:
    """GossipState on the same input: the reference's cost of a busy cycle."""
    src, dst = workload(n)
    pairs = [
        (bytes(s).ljust(16, b"\0"), bytes(d).ljust(16, b"\0"))
        for s, d in zip(src, dst, strict=True)
    ]
    peers = [GossipState(o, 1, PARAMS) for o in ORIGINS[1:]]
    me = GossipState(ORIGINS[0], 1, PARAMS)
    now = T0

    def peer_deltas(c: int) -> list[Any]:
        asked = me.digest()
        out = []
        for peer in peers:
            for p in pairs:
                peer.record_local(p, LocalCount(T0 - S, now, c, 0))
            out.append(peer.delta_for(Digest(me.node_id, asked.versions)))
        return out

    def cycle(c: int, deltas: list[Any]) -> None:
        from xpro_mesh.agent.mapsync import _sync_own

        peer_digest = peers[0].digest()
        for p in pairs:
            _sync_own(me.record_local, p, LocalCount(T0 - S, now, c, 0), PARAMS.t_t4)
        for delta in deltas:
            me.merge(delta, now, LIMITS)
        me.expire(now)
        changed = me.take_changed()
        for pair in changed if changed is not None else pairs:
            me.pair_view(pair)
        me.destination_views()
        me.delta_for(peer_digest)

    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    cycle(3, peer_deltas(3))
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    rows = len(me)
    walls, cpus = [], []
    for k in range(reps):
        now += INTERVAL
        deltas = peer_deltas(5 + k)
        wall, cpu = timed(functools.partial(cycle, 5 + k, deltas))
        walls.append(wall)
        cpus.append(cpu)
    return {
        "busy_wall": Spread.of(walls),
        "busy_cpu": Spread.of(cpus),
        "bytes_per_row_traced": held / rows,
    }


def measure_index(n: int, reps: int) -> dict[str, Any]:
    src, dst = workload(n)
    words = pair_words(src, dst)
    index = KeyIndex(4, n)
    ids, _ = index.get_or_create(words)
    table = {bytes(k): i for i, k in enumerate(words.view("V32").ravel().tolist())}
    order = np.random.default_rng(1).permutation(n)
    queries = words[order]
    vec, dic = [], []
    for _ in range(reps):
        vec.append(timed(lambda: index.lookup(queries))[1])
        dic.append(
            timed(lambda: [table.get(k, -1) for k in queries.view("S32").ravel().tolist()])[1]
        )
    assert (index.lookup(queries) == ids[order]).all()
    return {"vectorised": Spread.of(vec), "dict": Spread.of(dic)}


def _counts(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a comma-separated list of counts: {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("counts must be >= 1")
    return values


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=_counts, default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--reps", type=int, default=3, help="busy and quiet cycles per size")
    parser.add_argument(
        "--scalar-max", type=int, default=100_000, help="largest size the scalar reference runs"
    )
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = parser.parse_args(argv)
    if args.reps < 1:
        parser.error("--reps must be >= 1")
    say: Callable[[str], None] = (lambda s: print(s, file=sys.stderr)) if args.json else print
    say("columnar pair table, 3 origins, each pair counted by all three (shared 2-core VM)")
    results: list[dict[str, Any]] = []
    checks: list[Check] = []
    for n in args.pairs:
        r = measure_table(n, args.reps)
        r["index"] = measure_index(n, args.reps)
        if n <= args.scalar_max:
            r["scalar"] = measure_scalar(n, args.reps)
            r["scalar_over_table_cpu"] = ratio(r["scalar"]["busy_cpu"], r["busy_cpu"])
        results.append(r)
        per_pair = r["busy_cpu"].median / n * 1e9
        say(
            f"{n:>9} pairs, {r['rows']} rows: busy cpu {r['busy_cpu'].fmt(1e3)} ms "
            f"(wall {r['busy_wall'].fmt(1e3)}), {per_pair:.0f} ns/pair; quiet cpu "
            f"{r['quiet_cpu'].fmt(1e3, 1)} ms; {r['bytes_per_row_traced']:.0f} B/row traced, "
            f"{r['bytes_per_row_arrays']:.0f} B/row in arrays"
        )
        say(
            f"{'':>9} merge of both peers' {2 * n} rows as {r['messages']} messages of "
            f"<= {MESSAGE_ROWS} rows: {r['merge_cpu_in_messages'] * 1e3:.0f} ms cpu"
        )
        say(
            f"{'':>9} busy cpu with own pairs looked up by key (no id cache): "
            f"{r['busy_cpu_own_by_keys'].fmt(1e3)} ms; cycle shape {r['busy_shape']}"
        )
        ix = r["index"]
        say(
            f"{'':>9} key lookups in random order: vectorised index {ix['vectorised'].fmt(1e3)} ms,"
            f" dict {ix['dict'].fmt(1e3)} ms"
        )
        if "scalar" in r:
            sc = r["scalar"]
            say(
                f"{'':>9} scalar GossipState busy cpu {sc['busy_cpu'].fmt(1e3)} ms, "
                f"{sc['bytes_per_row_traced']:.0f} B/row: "
                f"{r['scalar_over_table_cpu']:.1f}x the table"
            )
        checks.append(
            Check(f"busy cycle at {n} pairs, CPU per active pair", per_pair, BUSY_NS_PER_PAIR, "ns")
        )
        checks.append(
            Check(
                f"memory per (pair, origin) row at {n} pairs",
                r["bytes_per_row_traced"],
                BYTES_PER_ROW,
                "B",
            )
        )
        if n >= 1_000_000:
            checks.append(
                Check(
                    f"quiet cycle at {n} pairs, CPU",
                    r["quiet_cpu"].median * 1e3,
                    QUIET_S_AT_1M * 1e3,
                    "ms",
                )
            )
    if not args.json:
        print_checks(checks)
    else:
        print(dumps({"bench": "table", "results": results, **checks_json(checks)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
