"""``xpro-mesh bench NAME [ARGS]``: run one benchmark of :mod:`xpro_mesh.bench`."""

from __future__ import annotations

import argparse
import importlib
from typing import Any

from xpro_mesh.bench import BENCHES
from xpro_mesh.cli.errors import CliError
from xpro_mesh.datapath.errors import DatapathError


def register(sub: Any) -> None:
    listing = "\n".join(f"  {name:10} {summary}" for name, (_, summary) in BENCHES.items())
    p = sub.add_parser(
        "bench",
        help="measure: " + ", ".join(BENCHES),
        description="Run one benchmark: it prints min/median/max over its repetitions and "
        "each target met or missed (--json: one JSON document). "
        f"NAME --help shows its options.\n\nbenchmarks:\n{listing}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", choices=sorted(BENCHES), metavar="NAME", help="the benchmark")
    p.add_argument("args", nargs=argparse.REMAINDER, help="its options (NAME --help)")
    p.set_defaults(func=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    module = importlib.import_module(BENCHES[args.name][0])
    try:
        return int(module.main(args.args, prog=f"xpro-mesh bench {args.name}"))
    except DatapathError as exc:
        raise CliError(str(exc), status=1) from None
