"""``xpro-mesh xdp``: attach, detach, inspect and tune the XDP filter.

    xpro-mesh xdp attach --iface IF [--config FILE] [--pin-root DIR] [--mode native|generic|auto]
    xpro-mesh xdp detach --iface IF [--pin-root DIR]
    xpro-mesh xdp stats  --iface IF [--pin-root DIR] [--json]
    xpro-mesh xdp set    --iface IF [--pin-root DIR] KEY=VALUE...

Maps live pinned under ``<pin-root>/<iface>/`` (default pin root
``/sys/fs/bpf/xpro``; in the lab ``/run/xpro/bpf/<ns>``): attaching again
keeps their state, ``set`` changes thresholds live, ``detach`` leaves nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from xpro_mesh.cli.errors import CliError
from xpro_mesh.datapath.config import ConfigError, load_config_file
from xpro_mesh.datapath.errors import DatapathError

DEFAULT_PIN_ROOT = "/sys/fs/bpf/xpro"


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "xdp",
        help="attach, detach, inspect and tune the XDP filter",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="xdp_command", metavar="ACTION")
    sub.required = True

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--iface", required=True, help="network interface (in this namespace)")
        p.add_argument(
            "--pin-root",
            default=DEFAULT_PIN_ROOT,
            type=Path,
            help=f"bpffs directory holding <iface>/ (default {DEFAULT_PIN_ROOT})",
        )

    attach = sub.add_parser("attach", help="load the filter and attach it (maps pinned)")
    common(attach)
    attach.add_argument("--config", type=Path, help="TOML file with thresholds and policy")
    attach.add_argument(
        "--mode",
        choices=("native", "generic", "auto"),
        default="auto",
        help="XDP mode: native (driver), generic (skb), auto (native, else generic)",
    )
    attach.add_argument(
        "--replace",
        action="store_true",
        help="replace another XDP program already on the interface (refused without it)",
    )
    attach.set_defaults(func=_attach)

    detach = sub.add_parser("detach", help="remove the filter and its pinned maps")
    common(detach)
    detach.set_defaults(func=_detach)

    stats = sub.add_parser("stats", help="counters, pairs and the live config")
    common(stats)
    stats.add_argument("--json", action="store_true", help="one JSON object")
    stats.set_defaults(func=_stats)

    setp = sub.add_parser("set", help="change thresholds live, e.g. t_f1=200 t_t2=500ms")
    common(setp)
    setp.add_argument("assignments", nargs="+", metavar="KEY=VALUE")
    setp.set_defaults(func=_set)


def _attach(args: argparse.Namespace) -> int:
    from xpro_mesh.datapath import loader

    try:
        config = sizes = None
        if args.config is not None:
            config, sizes = load_config_file(args.config)
        result = loader.attach(
            args.iface,
            config=config,
            sizes=sizes,
            pin_root=args.pin_root,
            mode=args.mode,
            replace=args.replace,
        )
    except (DatapathError, ConfigError) as exc:
        raise CliError(str(exc)) from None
    state = "reused live maps" if result.reused_maps else "new maps"
    print(
        f"attached xpro_filter to {result.iface} in {result.mode} mode "
        f"(prog id {result.prog_id}); {state} pinned at {result.pin_dir}"
    )
    print(
        f"policy {result.config.policy}, t_f1 {result.config.t_f1} pps, "
        f"t_f2 {result.config.t_f2} pps, clock {result.config.clock}"
    )
    for note in result.notes:
        print(f"note: {note}")
    return 0


def _detach(args: argparse.Namespace) -> int:
    from xpro_mesh.datapath import loader

    try:
        result = loader.detach(args.iface, pin_root=args.pin_root)
    except DatapathError as exc:
        raise CliError(str(exc)) from None
    modes = " and ".join(result.detached) or "no"
    print(f"detached {modes} XDP program from {result.iface}; removed {result.pins_removed} pins")
    return 0


def _open(args: argparse.Namespace, what: str) -> Any:
    from xpro_mesh.datapath import loader
    from xpro_mesh.datapath.bpf_maps import BpfMaps

    try:
        loader.require_root(what)
        return BpfMaps.open(loader.pin_dir_for(args.pin_root, args.iface))
    except DatapathError as exc:
        raise CliError(str(exc)) from None


def stats_report(args: argparse.Namespace) -> dict[str, Any]:
    """What ``xdp stats`` prints: counters, slot usage and free rings, mode
    and config."""
    import numpy as np

    from xpro_mesh.datapath import loader, structs

    with _open(args, "xdp stats") as maps:
        counters = maps.read_stats().as_dict()
        ring = maps.ring_status()
        pairs = int(maps.read_pairs().slots.size)
        dests = maps.read_dests()
        config = maps.get_config().as_dict()
    out_of_order = int(np.count_nonzero(dests.rows["flags"] & structs.XPRO_DEST_DIRTY))
    policy = _policy_report(loader.pin_dir_for(args.pin_root, args.iface))
    try:
        st = loader.status(args.iface, pin_root=args.pin_root)
        mode, prog_id = st.mode, st.prog_id
    except DatapathError:
        mode, prog_id = None, 0
    return {
        "iface": args.iface,
        "mode": mode,
        "prog_id": prog_id,
        "pin_dir": str(loader.pin_dir_for(args.pin_root, args.iface)),
        **counters,
        "pairs": pairs,
        "pairs_max": ring.pairs_max,
        "pairs_free": ring.pairs_free,
        "pairs_high_water": ring.pairs_high_water,
        "destinations": int(dests.slots.size),
        "destinations_max": ring.dests_max,
        "destinations_free": ring.dests_free,
        "destinations_out_of_order": out_of_order,
        "config": config,
        **policy,
    }


def _policy_report(pin_dir: Path) -> dict[str, Any]:
    """The policy maps' state (bpf/xpro_policy.h): the action and the mesh
    document's version it came with, the allow-list, and the packets the
    allow-list passed uncounted and monitor passed although judged drop.
    Empty for a filter pinned before the policy maps existed."""
    from xpro_mesh.datapath.policy import PolicyMaps

    try:
        with PolicyMaps.open(pin_dir) as pm:
            (action, version), allow, stats = pm.action(), pm.allow_list(), pm.stats()
    except DatapathError:
        return {}
    return {
        "action": str(action),
        "action_version": version,
        "allow_list": [_prefix_text(plen, addr) for plen, addr in allow],
        "allowed": stats.allowed,
        "monitored": stats.monitored,
    }


def _prefix_text(plen: int, addr: bytes) -> str:
    import ipaddress

    from xpro_mesh.datapath.structs import from_addr

    ip = from_addr(addr)
    if ip.version == 4 and plen >= 96:
        return str(ipaddress.ip_network(f"{ip}/{plen - 96}", strict=False))
    return str(ipaddress.ip_network(f"{ipaddress.IPv6Address(addr)}/{plen}", strict=False))


def _stats(args: argparse.Namespace) -> int:
    report = stats_report(args)
    if args.json:
        print(json.dumps(report, sort_keys=True))
        return 0
    attached = (
        f"{report['mode']} mode, prog id {report['prog_id']}"
        if report["mode"]
        else ("not attached")
    )
    print(f"{report['iface']}: {attached}; maps at {report['pin_dir']}")
    print(
        f"  pass {report['pass']}  drop_pair {report['drop_pair']}  drop_dest {report['drop_dest']}"
    )
    print(
        f"  pairs {report['pairs']}/{report['pairs_max']} (free slots {report['pairs_free']}, "
        f"high water {report['pairs_high_water']})  destinations "
        f"{report['destinations']}/{report['destinations_max']} "
        f"(free {report['destinations_free']})"
    )
    print(
        f"  new pairs {report['new_pairs']}  resets {report['resets']}  "
        f"no free slot {report['pair_full']}  no free destination slot {report['dest_full']}  "
        f"insert races {report['insert_races']}"
    )
    print(
        f"  judged with the mesh's view: pairs {report['pair_views']}  "
        f"destinations {report['dest_views']}"
    )
    print(
        f"  warnings {report['warnings']}  suppressed {report['warnings_suppressed']}  "
        f"lost {report['events_lost']}  not_ip {report['not_ip']}  "
        f"malformed {report['malformed']}  lock_busy {report['lock_busy']}"
    )
    print("  config " + " ".join(f"{k}={v}" for k, v in report["config"].items()))
    if "action" in report:
        allow = ", ".join(report["allow_list"]) or "empty"
        print(
            f"  action {report['action']} (mesh configuration version "
            f"{report['action_version']})  monitored {report['monitored']} (judged drop, "
            f"passed)  allowed {report['allowed']} (passed uncounted; allow-list: {allow})"
        )
    return 0


def _set(args: argparse.Namespace) -> int:
    with _open(args, "xdp set") as maps:
        try:
            config = maps.get_config().with_assignments(args.assignments)
        except ConfigError as exc:
            raise CliError(str(exc)) from None
        maps.set_config(config)
    changed = ", ".join(a.partition("=")[0].strip() for a in args.assignments)
    print(f"{args.iface}: set {changed} (live)")
    return 0
