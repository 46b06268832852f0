"""Benchmarks of the agent (``docs/benchmarking.md`` section 3):
``xpro-mesh bench agent``; ``make bench-agent`` runs ``scripts/bench-agent.sh``.

1. **Map-sync cycle** at N pairs: wall and CPU time of one
   :meth:`Agent.sync_once` (read every pair, fold the kernel's counts into
   this origin's rows, plan, apply, re-base the destinations), with the real
   kernel maps (:class:`BpfMaps` on the filter attached to ``lo`` of a
   throwaway network namespace, pins under ``/run/xpro/bpf``) and with
   :class:`MemoryMaps`. The pair map is filled through the apply path: the
   state holds N rows of a remote origin and the first cycle creates the
   pairs (*fill*). Then *quiet* cycles (nothing changed) and *busy* cycles
   (every pair counted 5 new packets since the last sync: an apply op adds
   them to ``c`` and ``dc`` as the kernel would, outside the timing).
2. **Convergence** of 5 real agents (``xpro-mesh agent`` processes, memory
   backend, ``local`` profile, loopback): after a burst of packets fed on
   every node, the seconds and gossip rounds until every node's
   ``/v1/records`` shows the exact global counts.
3. **Detection**: SIGKILL one agent; seconds until every survivor holds it
   dead, against the bound of :func:`detection_time_bound_ns`.
4. **Bytes per node per round** (``xpro_bytes_sent`` over
   ``xpro_gossip_rounds`` from ``/metrics``, every message kind): idle, and
   while N rows change every round.

CPU time is the whole process's (``time.process_time``: user and system,
every thread; the kernel's apply program runs in our syscalls). Figures are
min/median/max over the repetitions. Targets: a sync cycle's median within
the ``local`` gossip interval (and, if not, within the ``lan`` one: the cycle
must end before the next round), the worst detection within its bound; each
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
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from xpro_mesh.agent.config import lan_gossip, load_config, local_gossip
from xpro_mesh.agent.daemon import Agent, xdp_config
from xpro_mesh.bench.loopback import AgentProcess, LoopbackMesh, wait_until
from xpro_mesh.bench.stats import Check, Spread, checks_json, dumps, print_checks
from xpro_mesh.core.gossip_state import (
    ZERO_VERSION,
    Coverage,
    Delta,
    MergeLimits,
    OriginEntry,
    PairEntry,
)
from xpro_mesh.datapath.backend import MapBackend, PairKey, PairOp

S = 10**9
BPF_RUN = Path("/run/xpro/bpf")  # a bpffs the lab uses too (ip netns exec remounts /sys)
DESTINATIONS = 100  # the pairs are spread over this many destinations
BUSY_PACKETS = 5  # packets per pair between two busy cycles
MESH_NODES = 5
CHANGED_ROWS = (10, 100, 1000)
IDLE_S = 3.0
BUSY_S = 3.0


# --- 1. the map-sync cycle ------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CycleFigure:
    backend: str
    pairs: int
    kind: str  # fill | quiet | busy
    wall_s: Spread
    cpu_s: Spread
    ops: int  # pair and destination operations of the (last) cycle


def _pair_key(i: int) -> PairKey:
    src = b"\0" * 10 + b"\xff\xff" + (0x0B000000 + i).to_bytes(4, "big")  # 11.x.y.z
    dst = b"\0" * 10 + b"\xff\xff" + bytes((10, 200, 0, i % DESTINATIONS))
    return PairKey(src, dst)


def _remote_rows(agent: Agent, n: int, now: int) -> None:
    """N rows of another origin, as the mesh would have delivered them."""
    entries = tuple(
        PairEntry(
            (k.src, k.dst),
            "remote",
            OriginEntry(ts1=now - S, ts2=now, c=3, version=(1, i + 1)),
        )
        for i, k in enumerate(_pair_key(i) for i in range(n))
    )
    report = agent.state.merge(
        Delta(entries, (Coverage("remote", ZERO_VERSION, (1, n)),)),
        now,
        MergeLimits(max_pairs=2 * n, max_entries_per_message=n + 1),
    )
    if report.accepted != n:
        raise RuntimeError(f"bench: only {report.accepted} of {n} remote rows merged: {report}")


def _count_packets(backend: MapBackend, now: int) -> None:
    """BUSY_PACKETS new packets on every pair, as the kernel counts them
    (``c`` and ``dc`` up, ``ts2`` to now), through the apply path."""
    ops = [
        PairOp(key, rec.ts1, -BUSY_PACKETS, BUSY_PACKETS, rec.ts1, now)
        for key, rec in backend.read_pairs()
    ]
    backend.apply(ops)


async def _timed_cycle(agent: Agent) -> tuple[float, float, int]:
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    await agent.sync_once()
    return time.perf_counter() - wall, time.process_time() - cpu, agent.sync.last_ops


# Windows that outlast the bench: nothing ages out or decays while it runs.
BENCH_THRESHOLDS = {"thresholds.t_t1": "10m", "thresholds.t_t4": "1h"}


def _bench_agent(backend: MapBackend) -> Agent:
    config = load_config(
        None,
        {"backend": "memory", "node_id": "bench", **BENCH_THRESHOLDS},
        require_key_file=False,
    )
    return Agent(config, backend=backend)


async def _cycles(backend_name: str, backend: MapBackend, n: int, reps: int) -> list[CycleFigure]:
    agent = _bench_agent(backend)
    now = time.time_ns()
    _remote_rows(agent, n, now)
    kinds = ("fill", "full", "quiet", "busy")
    samples: dict[str, list[tuple[float, float, int]]] = {kind: [] for kind in kinds}
    samples["fill"].append(await _timed_cycle(agent))
    if backend.count_pairs() != n:
        raise RuntimeError(
            f"bench: {backend.count_pairs()} pairs in the map after the fill, not {n}"
        )
    await agent.sync_once()  # settles: the cycle after writes re-checks them
    for _ in range(reps):
        # A full cycle over quiet pairs (the agent runs one every so often).
        agent.ensure_syncer().force_full()  # type: ignore[attr-defined]
        samples["full"].append(await _timed_cycle(agent))
    for _ in range(reps):
        samples["quiet"].append(await _timed_cycle(agent))
    for _ in range(reps):
        _count_packets(backend, time.time_ns())
        samples["busy"].append(await _timed_cycle(agent))
    if agent.sync.failures:
        raise RuntimeError(f"bench: a sync cycle failed: {agent.sync.last_error}")
    if backend.count_pairs() != n:
        raise RuntimeError(f"bench: {backend.count_pairs()} pairs in the map at the end, not {n}")
    return [
        CycleFigure(
            backend_name,
            n,
            kind,
            Spread.of([w for w, _, _ in runs]),
            Spread.of([c for _, c, _ in runs]),
            runs[-1][2],
        )
        for kind, runs in samples.items()
    ]


@contextlib.contextmanager
def kernel_maps(pairs_max: int) -> Iterator[MapBackend]:
    """The filter attached (generic XDP) to ``lo`` of a throwaway network
    namespace, its maps pinned under /run/xpro/bpf/<ns>; all removed after."""
    from pyroute2 import IPRoute
    from pyroute2 import netns as pyroute2_netns

    from xpro_mesh.datapath import loader
    from xpro_mesh.datapath.bpf_maps import BpfMaps
    from xpro_mesh.datapath.config import MapSizes

    loader.require_root("the agent bench (bpf backend)")
    ns = f"xpro-bench-{uuid.uuid4().hex[:8]}"
    pin_root = BPF_RUN / ns
    pyroute2_netns.create(ns)
    try:
        pyroute2_netns.pushns(ns)
        try:
            with IPRoute() as ipr:
                ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            loader.attach(
                "lo",
                config=xdp_config(
                    load_config(
                        None, {"backend": "memory", **BENCH_THRESHOLDS}, require_key_file=False
                    ).thresholds
                ),
                sizes=MapSizes(pairs_max=max(2 * pairs_max, 1024)),
                pin_root=pin_root,
                mode="generic",
            )
            try:
                maps = BpfMaps.open(loader.pin_dir_for(pin_root, "lo"))
                try:
                    yield maps
                finally:
                    maps.close()
            finally:
                loader.detach("lo", pin_root=pin_root)
        finally:
            pyroute2_netns.popns()
    finally:
        with contextlib.suppress(OSError):
            pyroute2_netns.remove(ns)


def sync_cycle_figures(
    sizes: Sequence[int], backends: Sequence[str], reps: int
) -> list[CycleFigure]:
    from xpro_mesh.datapath.memory import MemoryMaps

    figures: list[CycleFigure] = []
    for n in sizes:
        for name in backends:
            if name == "memory":
                figures += asyncio.run(_cycles(name, MemoryMaps(), n, reps))
            else:
                with kernel_maps(n) as maps:
                    figures += asyncio.run(_cycles(name, maps, n, reps))
            gc.collect()
    return figures


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
        elif family.name == "xpro_bytes_sent":
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
    """Each cycle's median within the local gossip interval (if missed, also
    against the LAN one); the worst detection within its bound."""
    out: list[Check] = []
    local_ms = local_gossip().interval_ns / 1e6
    lan_ms = lan_gossip().interval_ns / 1e6
    for c in cycles:
        what = f"sync cycle {c.backend} {c.kind} at {c.pairs} pairs, median"
        local = Check(f"{what} (local interval)", c.wall_s.median * 1e3, local_ms, "ms")
        out.append(local)
        if not local.met:
            out.append(Check(f"{what} (lan interval)", c.wall_s.median * 1e3, lan_ms, "ms"))
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
        print("map-sync cycle (Agent.sync_once), min/median/max over the repetitions")
        print(f"{'backend':7} {'pairs':>8} {'cycle':6} {'wall ms':>22} {'cpu ms':>22} {'ops':>8}")
        for c in cycles:
            print(
                f"{c.backend:7} {c.pairs:>8} {c.kind:6} {c.wall_s.fmt(1e3):>22} "
                f"{c.cpu_s.fmt(1e3):>22} {c.ops:>8}"
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
