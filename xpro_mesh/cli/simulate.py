"""``xpro-mesh simulate``: how fast, how exactly and at what cost the gossip
mesh agrees, for N nodes in one process (see :mod:`xpro_mesh.core.simulator`).

Byte counts are real: every digest and delta chunk is encoded by the wire
module (:mod:`xpro_mesh.mesh.wire`), as an agent would send it (without the
authentication envelope of :mod:`xpro_mesh.mesh.auth`, a fixed overhead per
datagram).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from xpro_mesh.cli.errors import CliError
from xpro_mesh.core.gossip_state import Delta, Digest
from xpro_mesh.core.rows import from_delta
from xpro_mesh.core.simulator import Simulation, SimulationConfig, SimulationResult
from xpro_mesh.mesh.wire import encode

DESCRIPTION = """\
Simulate the gossip mesh in one process: N proxies count botnet-like traffic
(many clients towards a few destinations, each client seen by 1-3 random
proxies, a tenth of the rows from an older window), then gossip by
push-pull anti-entropy. Each round every proxy exchanges digests and deltas
with F random peers; every message is lost with probability P. The run stops
when every proxy's view of every pair equals the ground truth (the origins'
own counts, folded), or after --max-rounds.

Reports the rounds to converge (the design bound is about log2(N) + 2 with
fan-out 3), the largest count error at the end (0 once converged), messages,
and bytes per node per round as encoded by the wire format.

Exit status: 0 when the mesh converged with no count error, 1 when it did not
within --max-rounds, 2 for bad arguments.
"""


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "simulate",
        help="simulate N gossiping proxies: rounds to agree, count error, bytes",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--nodes", "-n", type=int, default=64, help="proxies (>= 1; default 64)")
    parser.add_argument(
        "--fanout",
        "-f",
        type=int,
        default=3,
        help="peers per proxy per round (>= 1, at most nodes - 1 used; default 3)",
    )
    parser.add_argument(
        "--loss", type=float, default=0.0, help="probability a message is lost, in [0, 1)"
    )
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument(
        "--max-rounds", type=int, default=64, help="give up after this many rounds (default 64)"
    )
    parser.add_argument(
        "--clients",
        type=int,
        default=None,
        help="clients (pairs) in the traffic (default: half the proxies, at least 16)",
    )
    parser.add_argument(
        "--destinations", type=int, default=4, help="destinations the clients target (1..256)"
    )
    parser.add_argument(
        "--chunk", type=int, default=256, help="delta rows per message (default 256)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = _config(args)
    console = Console(stderr=True)
    started = time.perf_counter()
    gc_was_enabled = gc.isenabled()
    gc.disable()  # millions of short-lived acyclic records: the cyclic GC only costs time
    try:
        sim = Simulation(config, size_of=_wire_size)
        with Progress(
            TextColumn("gossip round {task.fields[round]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("proxies agree"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
            disable=not console.is_terminal,
        ) as progress:
            task = progress.add_task("simulate", total=config.nodes, round=0)
            for stats in sim.rounds():
                progress.update(task, completed=stats.converged_nodes, round=stats.round)
        result = sim.result()
    finally:
        if gc_was_enabled:
            gc.enable()
    elapsed = time.perf_counter() - started
    if args.json:
        print(json.dumps(_as_json(result, elapsed)))
    else:
        _print_summary(result, elapsed)
    return 0 if result.converged and result.max_count_error == 0 else 1


def _config(args: argparse.Namespace) -> SimulationConfig:
    if args.nodes < 1:
        raise CliError(f"--nodes must be >= 1, got {args.nodes}")
    if args.fanout < 1:
        raise CliError(f"--fanout must be >= 1, got {args.fanout}")
    if not 0.0 <= args.loss < 1.0:  # also refuses nan
        raise CliError(f"--loss must be in [0, 1), got {args.loss}")
    if args.max_rounds < 1:
        raise CliError(f"--max-rounds must be >= 1, got {args.max_rounds}")
    if args.clients is not None and args.clients < 1:
        raise CliError(f"--clients must be >= 1, got {args.clients}")
    if not 1 <= args.destinations <= 256:
        raise CliError(f"--destinations must be in 1..256, got {args.destinations}")
    if args.chunk < 1:
        raise CliError(f"--chunk must be >= 1, got {args.chunk}")
    try:
        return SimulationConfig(
            nodes=args.nodes,
            fanout=args.fanout,
            loss=args.loss,
            seed=args.seed,
            max_rounds=args.max_rounds,
            clients=args.clients,
            destinations=args.destinations,
            chunk_entries=args.chunk,
        )
    except ValueError as exc:  # anything the checks above missed
        raise CliError(str(exc)) from exc


def _wire_size(message: Digest | Delta) -> int:
    return len(encode(from_delta(message) if isinstance(message, Delta) else message))


def _as_json(result: SimulationResult, elapsed: float) -> dict[str, Any]:
    cfg = result.config
    return {
        "nodes": cfg.nodes,
        "fanout": cfg.fanout,
        "loss": cfg.loss,
        "seed": cfg.seed,
        "max_rounds": cfg.max_rounds,
        "clients": cfg.client_count,
        "destinations": cfg.destinations,
        "pairs": result.pairs,
        "entries": result.entries,
        "converged": result.converged,
        "rounds_to_converge": result.rounds_to_converge,
        "rounds_run": result.rounds_run,
        "log2_bound": math.ceil(math.log2(cfg.nodes)) + 2 if cfg.nodes > 1 else 2,
        "max_count_error": result.max_count_error,
        "messages": result.messages,
        "messages_lost": result.messages_lost,
        "bytes": result.bytes_sent,
        "bytes_per_node_per_round": round(result.bytes_per_node_per_round, 1),
        "rows_delivered": result.rows_delivered,
        "wall_seconds": round(elapsed, 3),
    }


def _print_summary(result: SimulationResult, elapsed: float) -> None:
    cfg = result.config
    table = Table(title="gossip simulation", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    rounds = (
        "not within --max-rounds"
        if result.rounds_to_converge is None
        else (str(result.rounds_to_converge))
    )
    rows = [
        ("proxies / fan-out / loss", f"{cfg.nodes} / {cfg.fanout} / {cfg.loss:g}"),
        (
            "clients / destinations / rows",
            f"{result.pairs} / {cfg.destinations} / {result.entries}",
        ),
        ("converged", "yes" if result.converged else "no"),
        ("rounds to converge", rounds),
        ("largest count error", str(result.max_count_error)),
        ("messages (lost)", f"{result.messages} ({result.messages_lost})"),
        ("bytes per node per round", f"{result.bytes_per_node_per_round:,.0f}"),
        ("wall time", f"{elapsed:.2f} s"),
    ]
    for what, value in rows:
        table.add_row(what, value)
    Console(file=sys.stdout).print(table)
