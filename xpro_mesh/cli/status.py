"""``xpro-mesh status``: the mesh as one agent sees it."""

from __future__ import annotations

import argparse
import json
import urllib.error
import urllib.request
from typing import Any

from xpro_mesh.cli.errors import CliError


def register(sub: Any) -> None:
    p = sub.add_parser(
        "status",
        help="show the mesh as one agent sees it (peers, states, load, drops)",
        description="Ask an agent's HTTP API for /v1/status and show its members, "
        "their state (alive/suspect/dead) and published load, and its counters.",
    )
    p.add_argument("--api", default="http://127.0.0.1:7947", help="the agent's API URL")
    p.add_argument("--json", action="store_true", help="print the raw JSON document")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the agent")
    p.set_defaults(func=run_status)


def fetch_status(api: str, timeout: float) -> dict[str, Any]:
    url = api.rstrip("/")
    if "://" not in url:
        url = "http://" + url
    try:
        with urllib.request.urlopen(url + "/v1/status", timeout=timeout) as resp:
            doc: dict[str, Any] = json.loads(resp.read())
            return doc
    except urllib.error.HTTPError as exc:
        raise CliError(f"{url}: HTTP {exc.code}", status=1) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CliError(f"{url}: agent not reachable ({reason})", status=1) from None
    except ValueError:
        raise CliError(f"{url}: not an xpro-mesh agent (bad JSON)", status=1) from None


def run_status(args: argparse.Namespace) -> int:
    doc = fetch_status(args.api, args.timeout)
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"mesh as seen by {doc['node_id']} ({doc['sync']}, {doc['backend']})")
    for col in ("node", "address", "state", "pkts/s in", "drop ratio", "loop lag ms"):
        table.add_column(col, justify="right" if col[0] in "pdl" else "left")
    style = {"alive": "green", "suspect": "yellow", "dead": "red"}
    for peer in doc["peers"]:
        load = peer.get("load") or {}
        name = peer["node_id"] + (" (self)" if peer.get("self") else "")
        table.add_row(
            name,
            peer["addr"],
            f"[{style.get(peer['state'], '')}]{peer['state']}[/]",
            f"{load.get('packets_in_per_s', 0):.0f}" if load else "-",
            f"{load.get('drop_ratio', 0):.1%}" if load else "-",
            f"{load.get('loop_lag_ms', 0):.1f}" if load else "-",
        )
    console.print(table)
    drops = doc.get("drops", {})
    console.print(
        f"rounds {doc['rounds']}  pairs {doc['keys']}  rows {doc['rows']}  "
        f"sync cycles {doc['sync_cycles']} (last {doc['last_sync_ms']} ms)  "
        f"passed {doc.get('passed', 0)}  drop_pair {drops.get('drop_pair', 0)}  "
        f"drop_dest {drops.get('drop_dest', 0)}  warnings {doc.get('warnings', 0)}  "
        f"policy {doc.get('policy')}"
    )
    rejected = {**doc.get("rejected", {}), **doc.get("rows_rejected", {})}
    if rejected:
        console.print("rejected: " + ", ".join(f"{k} {v}" for k, v in sorted(rejected.items())))
    return 0
