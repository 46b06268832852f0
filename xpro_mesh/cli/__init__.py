"""The ``xpro-mesh`` command: one sub-command module per concern.

Each module in :data:`COMMANDS` exposes ``register(subparsers)`` which adds its
parser and sets ``func`` to a callable taking the parsed namespace and
returning the exit status. Errors meant for the operator are raised as
:class:`CliError` and printed as one line, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from xpro_mesh import __version__
from xpro_mesh.cli.errors import CliError
from xpro_mesh.extras import MissingExtra

COMMANDS = (
    "xpro_mesh.cli.lab",
    "xpro_mesh.cli.simulate",
    "xpro_mesh.cli.xdp",
    "xpro_mesh.cli.agent",
    "xpro_mesh.cli.status",
    "xpro_mesh.cli.top",
    "xpro_mesh.cli.bench",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xpro-mesh",
        description=(
            "A masterless mesh of XDP reverse-firewall proxies against IoT-botnet DDoS. "
            "Each proxy filters by the X-Pro rules in XDP; agents share what every "
            "proxy counts by gossip, so a botnet spread thin over many proxies is "
            "seen and dropped by all of them."
        ),
    )
    parser.add_argument("--version", action="version", version=f"xpro-mesh {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CliError as exc:
        print(f"xpro-mesh: error: {exc}", file=sys.stderr)
        return exc.status
    except MissingExtra as exc:
        print(f"xpro-mesh: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("xpro-mesh: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
