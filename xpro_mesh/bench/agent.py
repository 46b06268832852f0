"""Benchmarks of the agent (``docs/benchmarking.md`` section 3):
``xpro-mesh bench agent``; ``make bench-agent`` runs ``scripts/bench-agent.sh``.

1. **Map-sync cycle** at N pairs with 3 origins: wall and CPU time of one
   :meth:`Agent.sync_once` (read every slot, fold the kernel's windows into
   this origin's rows, plan the views, write the ones that moved) on the
   kernel's real maps (the filter loaded with the bench build, not attached,
   its mmapped slot arrays filled through ``BPF_PROG_TEST_RUN`` with one new
   spoofed source a packet, all to one victim) and on :class:`MemoryMaps`.
   Two peers' tables count the same N pairs. *fill*: every slot new; *quiet*:
   nothing changed; *busy*: every pair counted ``BUSY_PACKETS`` more here
   (written into the kernel half by the bench, as packets would; outside the
   timing) and at both peers, whose changed rows are merged first (timed
   apart as *merge*). Also memory per (pair, origin) row and wire bytes per
   changed row of a peer's delta.
2. **Convergence** of 5 real agents (``xpro-mesh agent`` processes, memory
   backend, ``local`` profile, loopback): after a burst of packets fed on
   every node, the seconds and gossip rounds until every node's
   ``/v1/records`` shows the exact global counts.
3. **Detection**: SIGKILL one agent; seconds until every survivor holds it
   dead, against the bound of :func:`detection_time_bound_ns`.
4. **Bytes per node per round** (``xpro_mesh_sent_bytes`` over
   ``xpro_gossip_rounds`` from ``/metrics``, every message kind): idle, and
   while N rows change every round.

CPU time is the whole process's (``time.process_time``: user and system,
every thread). Figures are min/median/max over the repetitions. Targets
(DESIGN's scale budget): busy cycle plus merge <= 1 us of CPU per active
pair, quiet cycle <= 50 ms of CPU, <= 300 B per (pair, origin) row, <= 16 B
per changed IPv4 row on the wire; the worst detection within its bound. Each
is printed met or missed.

    xpro-mesh bench agent [--pairs 10000,100000,1000000]
        [--backends memory,bpf] [--reps 3] [--mesh-reps 5] [--skip-mesh] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import gc
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xpro_mesh.agent.config import AgentConfig, load_config, local_gossip
from xpro_mesh.agent.daemon import Agent, xdp_config
from xpro_mesh.agent.gossip_sync import GossipSync
from xpro_mesh.agent.mapsync import read_slots
from xpro_mesh.bench.loopback import AgentProcess, LoopbackMesh, wait_until
from xpro_mesh.bench.stats import Check, Spread, checks_json, dumps, print_checks
from xpro_mesh.core.gossip_state import Digest, MergeLimits
from xpro_mesh.core.rows import ColumnarDelta
from xpro_mesh.core.table import PairTable
from xpro_mesh.datapath.backend import MapBackend
from xpro_mesh.mesh.columns import encode_rows

S = 10**9
BPF_RUN = Path("/run/xpro/bpf")  # a bpffs the lab uses too (ip netns exec remounts /sys)
BUSY_PACKETS = 5  # packets per pair between two busy cycles
MESH_NODES = 5
CHANGED_ROWS = (10, 100, 1000)
IDLE_S = 3.0
BUSY_S = 3.0


# --- 1. the map-sync cycle ------------------------------------------------------

ORIGINS = 3  # this proxy and two peers that count the same pairs
TARGET_BUSY_NS_PER_PAIR = 1_000  # DESIGN "Scale": ~1 us of agent CPU per active pair
TARGET_QUIET_S = 0.050
TARGET_ROW_BYTES = 300
TARGET_WIRE_BYTES = 16


@dataclass(frozen=True, slots=True)
class CycleFigure:
    backend: str
    pairs: int
    kind: str  # fill | quiet | busy
    wall_s: Spread
    cpu_s: Spread  # the sync cycle: read, Algorithm 1, fold, write
    ops: int  # views written by the (last) cycle
    merge_cpu_s: Spread | None = None  # busy: merging the peers' changed rows
    row_bytes: float = 0.0  # the table and the planner's memory, per (pair, origin) row
    wire_bytes_per_row: float = 0.0  # a peer's changed rows on the wire (columnar)

    @property
    def busy_ns_per_pair(self) -> float:
        merge = self.merge_cpu_s.median if self.merge_cpu_s else 0.0
        return (self.cpu_s.median + merge) * 1e9 / max(self.pairs, 1)


def _count_packets(backend: MapBackend, now: int) -> None:
    """BUSY_PACKETS new packets on every live pair, as the kernel counts them
    (``c`` up, ``ts2`` to now): a stand-in for a million packets, written into
    the kernel half by the bench (nothing else runs on these maps)."""
    slots = backend.read_pairs().slots
    live = backend.pair_slots
    live["c"][slots] += BUSY_PACKETS
    live["ts2"][slots] = now


def _peer_delta(peer: PairTable, keys: tuple[np.ndarray, np.ndarray], now: int) -> ColumnarDelta:
    """The peer counted BUSY_PACKETS on every pair since its last sync; its
    changed rows, as it would send them to us."""
    n = len(keys[0])
    rng = np.random.default_rng(now)
    last = now - rng.integers(0, S // 2, n)  # each pair's last packet within the interval
    peer.record_local(
        keys[0], keys[1], last - S, last, rng.integers(1, 2 * BUSY_PACKETS, n),
        np.zeros(n, np.int64), catch_up=True,
    )  # fmt: skip
    return peer.delta_for(Digest(sender="bench", versions={}))


def _timed(fn: Callable[[], object]) -> tuple[float, float]:
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


async def _cycles(backend_name: str, backend: MapBackend, n: int, reps: int) -> list[CycleFigure]:
    agent = _bench_agent(backend)
    syncer = agent.ensure_syncer()
    assert isinstance(syncer, GossipSync)
    table = agent.state
    limits = MergeLimits(max_pairs=4 * n, max_entries_per_message=ORIGINS * n + 1)
    read = read_slots(backend, syncer.memory)
    if len(read) != n:
        raise RuntimeError(f"bench: {len(read)} pairs in the kernel after the fill, not {n}")
    keys = (read.src.copy(), read.dst.copy())
    peers = [PairTable(f"peer-{i}", 1, table.params) for i in range(ORIGINS - 1)]
    now = time.time_ns()
    for peer in peers:
        table.merge(_peer_delta(peer, keys, now), now, limits)
    loop = asyncio.get_running_loop()

    async def cycle() -> tuple[float, float, int]:
        gc.collect()
        wall, cpu = time.perf_counter(), time.process_time()
        await agent.sync_once()
        return time.perf_counter() - wall, time.process_time() - cpu, agent.sync.last_ops

    samples: dict[str, list[tuple[float, float, int]]] = {"fill": [], "quiet": [], "busy": []}
    merges: list[float] = []
    samples["fill"].append(await cycle())
    await agent.sync_once()  # settles
    for _ in range(reps):
        samples["quiet"].append(await cycle())
    wire = 0.0
    for _ in range(reps):
        now = time.time_ns()
        _count_packets(backend, now)
        deltas = [_peer_delta(peer, keys, now) for peer in peers]
        wire = len(encode_rows(deltas[0])) / max(deltas[0].rows, 1)

        def merge_all(deltas: list[ColumnarDelta] = deltas, t: int = now) -> None:
            for d in deltas:
                table.merge(d, t, limits)

        await loop.run_in_executor(None, lambda: None)  # the executor thread exists
        merges.append(_timed(merge_all)[1])
        samples["busy"].append(await cycle())
    if agent.sync.failures:
        raise RuntimeError(f"bench: a sync cycle failed: {agent.sync.last_error}")
    rows = len(table)
    held = table.nbytes() + syncer.memory.nbytes()
    out = []
    for kind in ("fill", "quiet", "busy"):
        ss = samples[kind]
        out.append(
            CycleFigure(
                backend_name,
                n,
                kind,
                Spread.of([w for w, _, _ in ss]),
                Spread.of([c for _, c, _ in ss]),
                ss[-1][2],
                Spread.of(merges) if kind == "busy" else None,
                held / max(rows, 1),
                wire if kind == "busy" else 0.0,
            )
        )
    return out


# Windows that outlast the bench: nothing ages out or decays while it runs.
BENCH_THRESHOLDS = {
    "thresholds.t_t1": "10m",
    "thresholds.t_t4": "1h",
    "thresholds.t_f1": "1000000000/s",
    "thresholds.t_f2": "1000000000/s",
}


def _bench_agent(backend: MapBackend) -> Agent:
    config = load_config(
        None,
        {"backend": "memory", "node_id": "bench", **BENCH_THRESHOLDS},
        require_key_file=False,
    )
    return Agent(config, backend=backend)


@contextlib.contextmanager
def kernel_maps(pairs: int) -> Iterator[MapBackend]:
    """The filter's real kernel maps (mmapped slot arrays), loaded with the
    bench build and not attached, holding ``pairs`` pairs: one new source a
    packet (XPRO_BENCH_VARY_SRC) through BPF_PROG_TEST_RUN, to one victim, as
    a spoofed botnet would fill them."""
    from xpro_mesh.bench.datapath import _fill
    from xpro_mesh.datapath import loader
    from xpro_mesh.datapath.config import MapSizes

    loader.require_root("the agent bench (bpf backend)")
    prog = loader.load(
        loader.BuildOptions(
            sizes=MapSizes(pairs_max=max(pairs, 1024), dests_max=1 << 10),
            defines=("XPRO_BENCH", "XPRO_BENCH_VARY_SRC"),
        ),
        log_tag="xpro-bench-agent",
    )
    try:
        with prog.maps() as maps:
            maps.sync_clock()
            maps.set_config(xdp_config(_bench_agent_config().thresholds))
            _fill(prog.filter_fd, pairs)
            yield maps
    finally:
        prog.close()


def _bench_agent_config() -> AgentConfig:
    return load_config(None, {"backend": "memory", **BENCH_THRESHOLDS}, require_key_file=False)


@contextlib.contextmanager
def memory_maps(pairs: int) -> Iterator[MapBackend]:
    """The in-memory twin holding ``pairs`` pairs (fed through its packet rule)."""
    from xpro_mesh.datapath.config import MapSizes
    from xpro_mesh.datapath.memory import MemoryMaps

    maps = MemoryMaps(
        xdp_config(_bench_agent_config().thresholds),
        MapSizes(pairs_max=max(pairs, 1024), dests_max=1 << 10),
    )
    now = time.time_ns()
    dst = b"\0" * 10 + b"\xff\xff" + bytes((10, 30, 0, 1))
    for i in range(pairs):
        maps.feed(b"\0" * 10 + b"\xff\xff" + (0x0B000000 + i).to_bytes(4, "big"), dst, now + i)
    yield maps


def sync_cycle_figures(
    sizes: Sequence[int], backends: Sequence[str], reps: int
) -> list[CycleFigure]:
    figures: list[CycleFigure] = []
    for n in sizes:
        for name in backends:
            if name == "memory" and n > MEMORY_MAX_PAIRS:
                continue  # the twin's packet rule runs in Python: ~17 us a packet to fill
            maps_of = memory_maps if name == "memory" else kernel_maps
            with maps_of(n) as maps:
                figures += asyncio.run(_cycles(name, maps, n, reps))
            gc.collect()
    return figures


MEMORY_MAX_PAIRS = 100_000


# --- 2-4. five real agents on loopback --------------------------------------------


@dataclass(slots=True)
class MeshFigures:
    nodes: int
    interval_ms: float
    converge_s: Spread | None = None
    converge_rounds: Spread | None = None
    detection_s: Spread | None = None  # until every survivor holds the victim dead
    detection_first_s: Spread | None = None  # until the first one does
    detection_bound_s: float = 0.0
    bytes_per_round: dict[str, float] = field(default_factory=dict)  # "idle", "10 rows", ...
    bytes_by_kind: dict[str, dict[str, float]] = field(default_factory=dict)


def _metric_sums(agent: AgentProcess) -> tuple[float, dict[str, float]]:
    """(gossip rounds, bytes sent by kind) from one agent's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    rounds = 0.0
    sent: dict[str, float] = {}
    for family in text_string_to_metric_families(agent.metrics_text()):
        if family.name == "xpro_gossip_rounds":
            rounds = sum(s.value for s in family.samples if s.name.endswith("_total"))
        elif family.name == "xpro_mesh_sent_bytes":
            for s in family.samples:
                if s.name.endswith("_total"):
                    sent[s.labels["kind"]] = sent.get(s.labels["kind"], 0.0) + s.value
    return rounds, sent


def _all_metrics(agents: Sequence[AgentProcess]) -> tuple[float, dict[str, float]]:
    rounds = 0.0
    sent: dict[str, float] = {}
    for a in agents:
        r, s = _metric_sums(a)
        rounds += r
        for kind, v in s.items():
            sent[kind] = sent.get(kind, 0.0) + v
    return rounds, sent


def _bytes_per_round(
    agents: Sequence[AgentProcess], seconds: float, during: Callable[[], None] | None = None
) -> tuple[float, dict[str, float]]:
    """Bytes sent per node per round (all kinds) over ``seconds``."""
    r0, s0 = _all_metrics(agents)
    stop = threading.Event()
    worker = None
    if during is not None:
        worker = threading.Thread(target=lambda: _repeat(during, stop), daemon=True)
        worker.start()
    time.sleep(seconds)
    stop.set()
    if worker is not None:
        worker.join()
    r1, s1 = _all_metrics(agents)
    rounds = max(1.0, r1 - r0)
    by_kind = {k: (s1.get(k, 0.0) - s0.get(k, 0.0)) / rounds for k in s1}
    return sum(by_kind.values()), by_kind


def _repeat(step: Callable[[], None], stop: threading.Event) -> None:
    interval = local_gossip().interval_ns / 1e9
    while not stop.is_set():
        started = time.monotonic()
        step()
        stop.wait(max(0.0, interval - (time.monotonic() - started)))


def _converged(
    agents: Sequence[AgentProcess], dst: str, expected: dict[tuple[str, str], int]
) -> bool:
    return all(a.counts(dst) == expected for a in agents)


def _all_alive(agents: Sequence[AgentProcess], names: set[str]) -> bool:
    return all({n for n, s in a.peer_states().items() if s == "alive"} == names for a in agents)


def mesh_figures(workdir: Path, reps: int, changed_rows: Sequence[int]) -> MeshFigures:
    gossip = local_gossip()
    fig = MeshFigures(
        nodes=MESH_NODES,
        interval_ms=gossip.interval_ns / 1e6,
        detection_bound_s=gossip.detection_time_bound_ns(MESH_NODES) / 1e9,
    )
    thresholds: dict[str, object] = {
        "t_t1": "10m",
        "t_t4": "1h",
        "t_f1": "1000000/s",
        "t_f2": "100000000/s",
    }
    with LoopbackMesh(workdir, thresholds=thresholds) as mesh:
        agents = mesh.start_cluster(MESH_NODES)
        names = {a.node_id for a in agents}
        wait_until(lambda: _all_alive(agents, names), 20, "membership")

        # 2. convergence after a burst
        seconds: list[float] = []
        rounds: list[float] = []
        for rep in range(reps):
            dst = f"10.50.{rep}.1"
            expected: dict[tuple[str, str], int] = {}
            before = [_metric_sums(a)[0] for a in agents]
            for i, a in enumerate(agents):
                burst = [(f"11.{rep}.{i}.{j}", dst, 1 + j) for j in range(20)]
                burst.append((f"11.{rep}.99.1", dst, 3))  # one client on every proxy
                a.feed_many(burst)
                for src, d, c in burst:
                    expected[(src, d)] = expected.get((src, d), 0) + c
            fed = time.monotonic()
            wait_until(
                functools.partial(_converged, agents, dst, expected),
                30,
                "convergence",
                interval_s=0.01,
            )
            seconds.append(time.monotonic() - fed)
            after = [_metric_sums(a)[0] for a in agents]
            rounds.append(statistics.median(b - a for a, b in zip(before, after, strict=True)))
        fig.converge_s = Spread.of(seconds)
        fig.converge_rounds = Spread.of(rounds)

        # 4. bytes per node per round
        time.sleep(1.0)
        total, by_kind = _bytes_per_round(agents, IDLE_S)
        fig.bytes_per_round["idle"] = total
        fig.bytes_by_kind["idle"] = by_kind
        for n in changed_rows:
            per_node = max(1, n // len(agents))
            batches = [
                [(f"12.{i}.{j // 250}.{j % 250}", "10.60.0.1", 1) for j in range(per_node)]
                for i in range(len(agents))
            ]

            def feed_all(batches: list[list[tuple[str, str, int]]] = batches) -> None:
                for a, batch in zip(agents, batches, strict=True):
                    a.feed_many(batch)

            feed_all()  # the pairs exist: from now on their rows change, none is new
            time.sleep(0.5)
            total, by_kind = _bytes_per_round(agents, BUSY_S, feed_all)
            fig.bytes_per_round[f"{per_node * len(agents)} rows"] = total
            fig.bytes_by_kind[f"{per_node * len(agents)} rows"] = by_kind
            time.sleep(0.5)

        # 3. detection: SIGKILL a node, wait for every survivor; restart it
        first: list[float] = []
        every: list[float] = []
        for rep in range(reps):
            victim = agents[1 + rep % (len(agents) - 1)]
            survivors = [a for a in agents if a is not victim]
            victim.send_signal(signal.SIGKILL)
            killed = time.monotonic()
            victim.proc.wait(timeout=5)
            seen: dict[str, float] = {}

            def all_dead(
                victim: AgentProcess = victim,
                survivors: list[AgentProcess] = survivors,
                seen: dict[str, float] = seen,
                killed: float = killed,
            ) -> bool:
                for a in survivors:
                    if a.node_id not in seen and a.peer_states().get(victim.node_id) == "dead":
                        seen[a.node_id] = time.monotonic() - killed
                return len(seen) == len(survivors)

            wait_until(all_dead, 30, "detection", interval_s=0.01)
            first.append(min(seen.values()))
            every.append(max(seen.values()))
            back = mesh.restart(victim, [agents[0].gossip])
            agents[agents.index(victim)] = back
            wait_until(lambda: _all_alive(agents, names), 20, "the restarted node alive")
        fig.detection_s = Spread.of(every)
        fig.detection_first_s = Spread.of(first)
    return fig


# --- output -------------------------------------------------------------------------


def checks(cycles: Sequence[CycleFigure], mesh: MeshFigures | None) -> list[Check]:
    """The scale budget (DESIGN "Scale"): a busy cycle (every pair counted on
    every origin) at <= 1 us of agent CPU per active pair, merge included; a
    quiet cycle <= 50 ms CPU; <= 300 B of agent memory per (pair, origin) row;
    <= 16 B on the wire per changed IPv4 row. The worst detection within its
    bound."""
    out: list[Check] = []
    for c in cycles:
        where = f"{c.backend} at {c.pairs} pairs"
        if c.kind == "busy":
            out.append(
                Check(
                    f"busy cycle + merge of {ORIGINS - 1} peers' rows, CPU per pair, {where}",
                    c.busy_ns_per_pair,
                    TARGET_BUSY_NS_PER_PAIR,
                    "ns",
                )
            )
            out.append(Check(f"agent memory per (pair, origin) row, {where}", c.row_bytes,
                             TARGET_ROW_BYTES, "B"))  # fmt: skip
            out.append(Check(f"wire bytes per changed IPv4 row, {where}", c.wire_bytes_per_row,
                             TARGET_WIRE_BYTES, "B"))  # fmt: skip
        elif c.kind == "quiet":
            out.append(Check(f"quiet cycle CPU, {where}", c.cpu_s.median, TARGET_QUIET_S, "s"))
    if mesh is not None and mesh.detection_s is not None:
        out.append(
            Check(
                "detection on every survivor, worst",
                mesh.detection_s.max,
                mesh.detection_bound_s,
                "s",
            )
        )
    return out


def _print(cycles: Sequence[CycleFigure], mesh: MeshFigures | None) -> None:
    if cycles:
        print(
            f"map-sync cycle (Agent.sync_once, {ORIGINS} origins), min/median/max over the"
            " repetitions; merge: the peers' changed rows into the table"
        )
        print(
            f"{'backend':7} {'pairs':>8} {'cycle':6} {'wall ms':>22} {'cpu ms':>22} "
            f"{'merge cpu ms':>22} {'views':>8} {'B/row':>6} {'wire B':>6}"
        )
        for c in cycles:
            merge = c.merge_cpu_s.fmt(1e3) if c.merge_cpu_s else "-"
            print(
                f"{c.backend:7} {c.pairs:>8} {c.kind:6} {c.wall_s.fmt(1e3):>22} "
                f"{c.cpu_s.fmt(1e3):>22} {merge:>22} {c.ops:>8} {c.row_bytes:>6.0f} "
                f"{c.wire_bytes_per_row:>6.1f}"
            )
    if mesh is not None:
        print(
            f"\n{mesh.nodes} real agents on loopback (memory backend, local profile, "
            f"round {mesh.interval_ms:g} ms), min/median/max"
        )
        if mesh.converge_s and mesh.converge_rounds:
            print(
                f"converge after a burst: {mesh.converge_s.fmt(1e3)} ms, "
                f"{mesh.converge_rounds.fmt(1, 1)} rounds"
            )
        if mesh.detection_s and mesh.detection_first_s:
            print(
                f"detection (SIGKILL -> dead on every survivor): {mesh.detection_s.fmt(1e3)} ms; "
                f"first survivor {mesh.detection_first_s.fmt(1e3)} ms; "
                f"bound {mesh.detection_bound_s * 1e3:.0f} ms"
            )
        for what, total in mesh.bytes_per_round.items():
            kinds = ", ".join(
                f"{k} {v:.0f}" for k, v in sorted(mesh.bytes_by_kind[what].items()) if v >= 1
            )
            print(f"bytes per node per round, {what:>10}: {total:8.0f}  ({kinds})")
    print()
    print_checks(checks(cycles, mesh))


def _counts(text: str) -> list[int]:
    try:
        counts = [int(n) for n in text.split(",") if n.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected counts like 1000,10000, got {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"expected positive counts, got {text!r}")
    return counts


def _backends(text: str) -> list[str]:
    names = [b.strip() for b in text.split(",") if b.strip()]
    unknown = sorted(set(names) - {"memory", "bpf"})
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"expected memory and/or bpf, got {text!r}")
    return names


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--pairs",
        type=_counts,
        default=[10_000, 100_000, 1_000_000],
        help="pair-map sizes of the sync-cycle figures, comma-separated",
    )
    parser.add_argument(
        "--backends",
        type=_backends,
        default=["memory", "bpf"],
        help="memory and/or bpf (the kernel's maps, root only), comma-separated",
    )
    parser.add_argument("--reps", type=int, default=3, help="quiet and busy cycles per size")
    parser.add_argument("--mesh-reps", type=int, default=5, help="bursts and kills")
    parser.add_argument(
        "--changed-rows",
        type=_counts,
        default=list(CHANGED_ROWS),
        help="rows changing per round for the bytes-per-round figures, comma-separated",
    )
    parser.add_argument("--skip-sync", action="store_true", help="no sync-cycle figures")
    parser.add_argument("--skip-mesh", action="store_true", help="no figures of real agents")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = parser.parse_args(argv)
    backends: list[str] = args.backends
    if "bpf" in backends and os.geteuid() != 0:
        print("bench: the bpf backend needs root; measuring memory only", file=sys.stderr)
        backends = [b for b in backends if b != "bpf"]
    cycles: list[CycleFigure] = []
    if not args.skip_sync:
        cycles = sync_cycle_figures(args.pairs, backends, args.reps)
    mesh = None
    if not args.skip_mesh:
        with tempfile.TemporaryDirectory(prefix="xpro-bench-") as tmp:
            mesh = mesh_figures(Path(tmp), args.mesh_reps, args.changed_rows)
    if args.json:
        print(dumps({"sync_cycles": cycles, "mesh": mesh, **checks_json(checks(cycles, mesh))}))
    else:
        _print(cycles, mesh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
