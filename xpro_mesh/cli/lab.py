"""``xpro-mesh lab``: the network-namespace lab and its scenarios.

    xpro-mesh lab up [--proxies N] [--clients N] [--bots N]
    xpro-mesh lab status [--json]
    xpro-mesh lab down
    xpro-mesh lab scenario NAME --modes none,local,master,gossip[,gossip-paper]
                           [--duration S] [--json-out FILE] [--html FILE] [--png FILE]
    xpro-mesh lab scenario botnet --bots N [--rate-per-bot PPS] [--proxies P] ...
    xpro-mesh lab scenario chaos --proxies 5 --modes gossip,master ...
    xpro-mesh lab scenario spoofed [--flood-pps PPS] [--proxies P] [--json-out FILE]

``up`` builds the namespaces, bridges, veths, addresses and routes of
:mod:`xpro_mesh.lab.topology`; ``down`` removes every ``xl-`` namespace and
everything running in it, also after a crash (a second ``down`` is a no-op).
``scenario`` runs the same traffic once per mode on the lab that is up and
reports, per mode, what reached the victim and what the good clients saw
(:mod:`xpro_mesh.lab.scenario`); ``botnet``'s bots are spoofed sources sent
by trafgen and counted at the victim by nftables (docs/lab.md).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from xpro_mesh.cli.errors import CliError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "lab",
        help="the namespace lab: up, down, status, scenarios",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="lab_command", metavar="ACTION")
    sub.required = True

    up = sub.add_parser("up", help="build the lab (namespaces, bridges, veths, routes)")
    up.add_argument("--proxies", type=int, default=3, help="proxy namespaces (default 3)")
    up.add_argument("--clients", type=int, default=12, help="good client addresses (default 12)")
    up.add_argument("--bots", type=int, default=180, help="bot addresses (default 180)")
    up.set_defaults(func=_up)

    down = sub.add_parser("down", help="remove every lab namespace and its processes")
    down.set_defaults(func=_down)

    status = sub.add_parser("status", help="what is up: namespaces, addresses, XDP, agents")
    status.add_argument("--json", action="store_true", help="one JSON object")
    status.set_defaults(func=_status)

    _add_scenario(sub)


def _add_scenario(sub: Any) -> None:
    from xpro_mesh.lab.scenario import MODES, SCENARIOS

    scen = sub.add_parser(
        "scenario",
        help="run one scenario's traffic once per mode and report",
        description=_scenario_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    scen.add_argument(
        "name",
        choices=sorted(SCENARIOS),
        metavar="NAME",
        help=f"one of {', '.join(sorted(SCENARIOS))}",
    )
    scen.add_argument(
        "--modes",
        default=None,
        help=f"comma-separated, from {','.join(MODES)} (default none,local,gossip; "
        "spoofed: none,gossip,gossip-paper; overload: gossip)",
    )
    scen.add_argument(
        "--duration",
        type=float,
        default=None,
        help="seconds of traffic per mode (default: the scenario's)",
    )
    scen.add_argument(
        "--bots", type=int, default=None, help="botnet: spoofed sources (default 2100)"
    )
    scen.add_argument(
        "--rate-per-bot",
        type=float,
        default=None,
        metavar="PPS",
        help="botnet: packets/s of each source (default 1)",
    )
    scen.add_argument(
        "--proxies",
        type=int,
        default=None,
        help="botnet, spoofed: proxies the sources spread over (default: all of the lab's); "
        "chaos: 5 for the 5-proxy faults (the lab must have them)",
    )
    scen.add_argument(
        "--flood-pps",
        type=float,
        default=None,
        metavar="PPS",
        help="spoofed: the forged flood's packets/s over all proxies "
        "(default 20000; 0: each sender at its full rate)",
    )
    scen.add_argument(
        "--client",
        action="store_true",
        default=None,
        help="failover: good clients on xpro_mesh.client fail over on their own "
        "(no route moved for them)",
    )
    scen.add_argument("--json-out", type=Path, help="write the results as JSON")
    scen.add_argument("--html", type=Path, help="write a self-contained HTML report")
    scen.add_argument("--png", type=Path, help="write the figure as PNG")
    scen.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep the raw per-process JSON here (default: a temporary dir)",
    )
    scen.add_argument("--quiet", action="store_true", help="no progress display")
    scen.set_defaults(func=_scenario)


def _scenario_help() -> str:
    from xpro_mesh.lab.scenario import MODES, SCENARIOS

    lines = [__doc__ or "", "Scenarios:"]
    lines += [f"  {name:<13} {spec.summary}" for name, spec in sorted(SCENARIOS.items())]
    lines += ["", "Modes:"]
    lines += [f"  {name:<13} {text}" for name, text in MODES.items()]
    return "\n".join(lines)


def _need_lab() -> None:
    """The lab's namespaces (pyroute2) and figures (matplotlib) are the
    ``lab`` extra: one clear line when it is not installed."""
    from xpro_mesh.extras import need

    need("pyroute2", "xpro-mesh lab")
    need("matplotlib", "xpro-mesh lab")


def _require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise CliError(f"{what} needs root (network namespaces, XDP)")


def _up(args: argparse.Namespace) -> int:
    _need_lab()
    from xpro_mesh.lab import topology

    _require_root("lab up")
    try:
        lab = topology.plan(args.proxies, args.clients, args.bots)
        if topology.lab_namespaces():
            if topology.current() is not None:
                raise CliError("the lab is already up; run `xpro-mesh lab down` first")
            # Left over from a killed run: nothing records it, so clear it.
            removed = topology.destroy()
            print(f"removed {len(removed)} namespaces left over from an earlier run")
        topology.build(lab)
    except topology.LabError as exc:
        raise CliError(str(exc)) from None
    print(
        f"lab up: {len(lab.proxies)} proxies, {len(lab.good_addrs())} good client addresses, "
        f"{len(lab.bot_addrs())} bot addresses, victim {lab.victim_addr}, "
        f"redis {lab.redis_addr} ({len(lab.namespaces())} namespaces)"
    )
    return 0


def _down(args: argparse.Namespace) -> int:
    _need_lab()
    from xpro_mesh.lab import topology

    _require_root("lab down")
    removed = topology.destroy()
    print(f"lab down: removed {len(removed)} namespaces" if removed else "lab down: nothing up")
    return 0


def _status(args: argparse.Namespace) -> int:
    _need_lab()
    from xpro_mesh.lab import topology

    _require_root("lab status")
    report = topology.status()
    if args.json:
        print(json.dumps(report, sort_keys=True))
        return 0
    if not report["namespaces"]:
        print("lab: down")
        return 0
    if not report["up"]:
        print(
            f"lab: {len(report['namespaces'])} namespaces left over (no state file); "
            "run `xpro-mesh lab down`"
        )
        return 1
    print(
        f"lab: up — {len(report['proxies'])} proxies, {report['good_addrs']} good client "
        f"addresses, {report['bot_addrs']} bot addresses, "
        f"{len(report['namespaces'])} namespaces"
    )
    for proxy in report["proxies"]:
        xdp = proxy["xdp"] or "no XDP program"
        print(
            f"  {proxy['ns']:<8} c0 {proxy['client_addr']:<12} s0 {proxy['service_addr']:<12} "
            f"{xdp}; processes {proxy['processes']}"
        )
    for name in ("xl-victim", "xl-redis"):
        print(f"  {name:<9} processes {report['processes'].get(name, 0)}")
    return 0


def _scenario(args: argparse.Namespace) -> int:
    _need_lab()
    from xpro_mesh.lab import report as lab_report
    from xpro_mesh.lab import scenario, topology

    _require_root("lab scenario")
    lab = topology.current()
    if lab is None:
        raise CliError("the lab is not up; run `xpro-mesh lab up` first")
    try:
        spec = scenario.SCENARIOS[args.name]
        modes = scenario.parse_modes(args.modes or spec.default_modes)
        result = scenario.run(
            lab,
            args.name,
            modes,
            duration=args.duration,
            workdir=args.workdir,
            progress=not args.quiet,
            options={
                "bots": args.bots,
                "rate": args.rate_per_bot,
                "proxies": args.proxies,
                "flood_pps": args.flood_pps,
                "client": args.client,
            },
        )
    except scenario.ScenarioError as exc:
        raise CliError(str(exc)) from None
    lab_report.print_table(result)
    if args.json_out is not None:
        lab_report.write_json(result, args.json_out)
        print(f"wrote {args.json_out}")
    if args.png is not None:
        lab_report.write_png(result, args.png)
        print(f"wrote {args.png}")
    if args.html is not None:
        lab_report.write_html(result, args.html)
        print(f"wrote {args.html}")
    return 0
