"""``xpro-mesh agent`` (the per-proxy daemon) and ``xpro-mesh keygen``."""

from __future__ import annotations

import argparse
import asyncio
import secrets
from pathlib import Path
from typing import Any

from xpro_mesh.cli.errors import CliError
from xpro_mesh.mesh import auth

AGENT_HELP = """\
Run one proxy's agent: it counts with the XDP filter on --iface, shares the
counts with its peers by authenticated gossip (or through a Redis master with
--sync master, the paper's architecture), and writes the mesh-wide view back
into the filter's maps every gossip interval. Values come from the profile's
defaults, then --config FILE (TOML), then these flags.

examples:
  xpro-mesh keygen > /etc/xpro-mesh/cluster.key
  xpro-mesh agent --iface eth1 --bind 10.0.0.1:7946 --peers 10.0.0.2:7946,10.0.0.3:7946 \\
      --key-file /etc/xpro-mesh/cluster.key --config /etc/xpro-mesh/agent.toml
  xpro-mesh agent --backend memory --bind 127.0.0.1:0 --api 127.0.0.1:0 \\
      --key-file k --profile local          # no kernel program: the in-memory data path
"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "agent",
        help="run the per-proxy agent (gossip, map sync, HTTP API)",
        description=AGENT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, help="TOML configuration file")
    p.add_argument("--iface", help="interface with the XDP filter (backend xdp)")
    p.add_argument("--peers", help="seed peers HOST:PORT,... (any live member will do)")
    p.add_argument("--bind", help="gossip UDP address HOST:PORT (default 0.0.0.0:7946)")
    p.add_argument("--advertise", help="address peers reach this node at, if not --bind")
    p.add_argument("--api", help="HTTP API address HOST:PORT (default 127.0.0.1:7947)")
    p.add_argument("--node-id", help="this proxy's unique, stable name (default: hostname)")
    p.add_argument("--key-file", help="cluster keys, 64 hex characters a line (see keygen)")
    p.add_argument("--api-token-file", help="bearer token for PUT /v1/config")
    p.add_argument("--node-key-file", help="this node's signing key (keygen --node)")
    p.add_argument("--trust-file", help="the mesh's public keys, NODE_ID PUBLIC_KEY a line")
    p.add_argument("--backend", choices=["xdp", "memory"], help="data path (default xdp)")
    p.add_argument("--sync", choices=["gossip", "master", "none"], help="how counts are shared")
    p.add_argument("--redis", help="the M_DB for --sync master, HOST:PORT")
    p.add_argument("--profile", choices=["lan", "local", "wan"], help="gossip timer defaults")
    p.add_argument("--pin-root", help="bpffs directory of the pinned maps")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.add_argument(
        "--replace",
        action="store_true",
        help="replace another XDP program already on --iface (refused without it)",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        help="where the mesh-wide configuration document is kept (e.g. /var/lib/xpro-mesh)",
    )
    p.add_argument(
        "--check-config",
        action="store_true",
        help="read and judge the configuration, print what the agent would do, start nothing",
    )
    p.set_defaults(func=run_agent)

    k = sub.add_parser(
        "keygen",
        help="print a new cluster key, or write a node's signing key (--node)",
        description=KEYGEN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    k.add_argument(
        "--node",
        type=Path,
        metavar="FILE",
        help="write a new Ed25519 node key to FILE (mode 0600, never overwritten) and print "
        "its trust-list line",
    )
    k.add_argument(
        "--public",
        type=Path,
        metavar="FILE",
        help="print the trust-list line of the node key in FILE",
    )
    k.add_argument("--node-id", help="the name on the trust-list line (default: hostname)")
    k.set_defaults(func=run_keygen)


KEYGEN_HELP = """Without options: print a new 32-byte cluster key as one line of 64 hex
characters. A key file holds one key a line: the first sends, all are accepted
(rotate by adding the new key on every node first, then moving it up).

With --node FILE: write this node's own Ed25519 signing key to FILE (0600)
and print the line the mesh's trust list needs for it, NODE_ID PUBLIC_KEY.
Collect every node's line into one trust file (the same on every node, mode
0644), and set node_key_file and trust_file in agent.toml: rows are then taken
only in batches signed by their origin (docs/threat-model.md).

examples:
  xpro-mesh keygen > /etc/xpro-mesh/cluster.key
  xpro-mesh keygen --node /etc/xpro-mesh/node.key --node-id proxy-1 >> trust.txt
  xpro-mesh keygen --public /etc/xpro-mesh/node.key --node-id proxy-1
"""


def run_keygen(args: argparse.Namespace) -> int:
    import os
    import socket

    from xpro_mesh.mesh import identity

    if args.node is None and args.public is None:
        print(secrets.token_hex(32))
        return 0
    if args.node is not None and args.public is not None:
        raise CliError("keygen: --node and --public do not go together")
    node_id = args.node_id or socket.gethostname()
    if args.public is not None:
        try:
            key = identity.load_node_key(args.public)
        except auth.KeyFileError as exc:
            raise CliError(f"keygen: {exc}") from None
        print(f"{node_id} {key.public.hex()}")
        return 0
    seed, public = identity.generate_node_key()
    try:
        fd = os.open(args.node, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise CliError(f"keygen: {args.node} exists; a node key is never overwritten") from None
    except OSError as exc:
        raise CliError(f"keygen: {args.node}: {exc.strerror}") from None
    with os.fdopen(fd, "w") as out:
        out.write(f"# xpro-mesh node key of {node_id}; public {public}\n{seed}\n")
    print(f"{node_id} {public}")
    return 0


def run_agent(args: argparse.Namespace) -> int:
    from xpro_mesh.agent.config import ConfigError, load_config
    from xpro_mesh.agent.daemon import Agent, AgentError
    from xpro_mesh.agent.logs import configure

    overrides: dict[str, object | None] = {
        "iface": args.iface,
        "peers": args.peers,
        "bind": args.bind,
        "advertise": args.advertise,
        "api": args.api,
        "node_id": args.node_id,
        "key_file": args.key_file,
        "api_token_file": args.api_token_file,
        "node_key_file": args.node_key_file,
        "trust_file": args.trust_file,
        "backend": args.backend,
        "sync": args.sync,
        "redis": args.redis,
        "profile": args.profile,
        "pin_root": args.pin_root,
        "log_level": args.log_level,
    }
    if args.config is not None and not args.config.is_file():
        raise CliError(f"--config: no such file: {args.config}")
    try:
        config = load_config(args.config, overrides)
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    token = None
    if config.api_token_file is not None:
        problem = auth.check_private(config.api_token_file)
        if problem is not None:
            raise CliError(f"api_token_file: {config.api_token_file}: {problem}")
        try:
            token = config.api_token_file.read_text().strip()
        except OSError as exc:
            raise CliError(f"api_token_file: {exc.strerror}: {config.api_token_file}") from None
        if not token:
            raise CliError(f"api_token_file: {config.api_token_file} is empty")
    if args.check_config:
        return _check_config(config, token)
    configure(str(config.log_level))
    agent = Agent(config, config_path=args.config, api_token=token)
    agent.replace_foreign = bool(args.replace)
    agent.state_dir = args.state_dir
    try:
        import uvloop

        return int(uvloop.run(agent.run()))
    except AgentError as exc:
        raise CliError(str(exc), status=1) from None
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return asyncio.run(agent.run())


def _check_config(config: Any, token: str | None) -> int:
    """``--check-config``: 0 when the agent would start, 1 with the problems."""
    from xpro_mesh.agent import preflight

    report = preflight.check(config, token)
    for line in report.summary:
        print(line)
    for line in report.warnings:
        print(f"warning: {line}")
    for line in report.problems:
        print(f"problem: {line}")
    print("config OK" if not report.problems else f"{len(report.problems)} problem(s)")
    return 0 if not report.problems else 1
