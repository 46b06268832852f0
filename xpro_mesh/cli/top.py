"""``xpro-mesh top``: a live terminal view of the mesh (GET /v1/top, rich).

Members and their load, the mesh's packets in and drops per second, the
destinations over T_F2, the top talkers; refreshed every ``--interval``
seconds until Ctrl-C. ``--once`` prints one frame (scripts, captures).
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.error
import urllib.request
from typing import Any

from xpro_mesh.cli.errors import CliError

__all__ = ["fetch_top", "register", "render"]


def register(sub: Any) -> None:
    p = sub.add_parser(
        "top",
        help="live view of the mesh: members, load, destinations over T_F2, top talkers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--api", default="http://127.0.0.1:7947", help="any agent's API URL")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    p.add_argument("--limit", type=int, default=10, help="rows per table (1..1000)")
    p.add_argument("--once", action="store_true", help="print one frame and exit")
    p.add_argument("--json", action="store_true", help="print /v1/top once as JSON")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the agent")
    p.set_defaults(func=run_top)


def fetch_top(api: str, limit: int, timeout: float) -> dict[str, Any]:
    url = api.rstrip("/")
    if "://" not in url:
        url = "http://" + url
    try:
        with urllib.request.urlopen(f"{url}/v1/top?limit={limit}", timeout=timeout) as resp:
            doc: dict[str, Any] = json.loads(resp.read())
            return doc
    except urllib.error.HTTPError as exc:
        raise CliError(f"{url}: HTTP {exc.code}", status=1) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CliError(f"{url}: agent not reachable ({reason})", status=1) from None
    except ValueError:
        raise CliError(f"{url}: not an xpro-mesh agent (bad JSON)", status=1) from None


def render(doc: dict[str, Any]) -> Any:
    """One frame of the view (a rich renderable) from a /v1/top document."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    mesh, t = doc["mesh"], doc["thresholds"]
    head = Text.assemble(
        ("xpro-mesh top", "bold"),
        f"  as seen by {doc['node_id']}   members alive {mesh['members_alive']}   ",
        f"in {mesh['packets_in_per_s']:,.1f} pkt/s   ",
        (f"drops {mesh['drops_per_s']:,.1f}/s", "bold red" if mesh["drops_per_s"] else ""),
        f"   pairs {mesh['pairs']:,}   T_F1 {t['t_f1']} T_F2 {t['t_f2']} ({t['policy']})",
    )
    verdict_style = {"drop": "bold red", "over": "bold red", "pass": "green", "under": "green"}
    members = Table(title="members", expand=False)
    for col in ("node", "state", "pkt/s in", "drops/s", "drop ratio"):
        members.add_column(col, justify="left" if col in ("node", "state") else "right")
    state_style = {"alive": "green", "suspect": "yellow", "dead": "red"}
    for m in doc["members"]:
        members.add_row(
            m["node_id"],
            Text(m["state"], state_style.get(m["state"], "")),
            f"{m['packets_in_per_s']:,.1f}",
            f"{m['drops_per_s']:,.1f}",
            f"{m['drop_ratio']:.2%}",
        )
    over = [d for d in doc["destinations"] if d["verdict"] == "over"]
    dests = Table(title=f"destinations over T_F2 ({mesh['destinations_over_t_f2']})")
    for col in ("destination", "pps", "clients", "verdict"):
        dests.add_column(col, justify="left" if col == "destination" else "right")
    for d in over or doc["destinations"][:3]:
        dests.add_row(
            d["dst"],
            f"{d['pps']:,.1f}",
            str(d["clients"]),
            Text(d["verdict"], verdict_style[d["verdict"]]),
        )
    talkers = Table(title="top talkers (pairs, mesh-wide)")
    for col in ("source", "destination", "pps", "packets", "proxies", "verdict"):
        talkers.add_column(col, justify="left" if col in ("source", "destination") else "right")
    for p in doc["pairs"]:
        talkers.add_row(
            p["src"],
            p["dst"],
            f"{p['pps']:,.1f}",
            f"{p['packets']:,}",
            str(p["origins"]),
            Text(p["verdict"], verdict_style[p["verdict"]]),
        )
    return Group(head, members, dests, talkers)


def run_top(args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= 1000:
        raise CliError("--limit: expected an integer 1..1000")
    if args.interval <= 0:
        raise CliError("--interval: expected a positive number of seconds")
    if args.json:
        print(json.dumps(fetch_top(args.api, args.limit, args.timeout), indent=2))
        return 0
    from rich.console import Console

    console = Console()
    if args.once:
        console.print(render(fetch_top(args.api, args.limit, args.timeout)))
        return 0
    from rich.live import Live

    with Live(console=console, auto_refresh=False, screen=False) as live:
        while True:
            live.update(render(fetch_top(args.api, args.limit, args.timeout)), refresh=True)
            time.sleep(args.interval)
