"""``GET /v1/top``: who is heaviest in the mesh, at what rate, with what verdict.

Built from the mesh-wide pair views the agent holds (every proxy's counts,
merged by gossip), so any agent answers for the whole mesh. A pair's rate
is its count over its window, the window taken as at least T_T2 (Algorithm
2 judges no shorter window: a burst of 3 packets in 1 ms is not 3000/s);
its verdict is ``drop`` when that rate is over T_F1, else ``pass``. A
destination sums its pairs (window: earliest ts1 to latest ts2, at least
T_T3); ``over`` when the sum is over T_F2 (lines 21-23: its clients are then
judged by the destination policy). Members carry their own published load;
drops per second are each member's packets in times its drop ratio.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from aiohttp import web

from xpro_mesh.api.view import AgentView
from xpro_mesh.core.params import NS_PER_S
from xpro_mesh.datapath.structs import from_addr

__all__ = ["routes", "top_document"]

MAX_LIMIT = 1000
SCAN = 100_000  # pairs read per request at most (the heaviest first)


def _ip(raw: bytes) -> str:
    return str(from_addr(raw)) if len(raw) == 16 else str(raw)


def _rate(c: int, ts1: int, ts2: int, floor_ns: int) -> float:
    return c * NS_PER_S / max(ts2 - ts1, floor_ns, 1)


def top_document(agent: AgentView, limit: int = 20) -> dict[str, Any]:
    t = agent.thresholds
    records, total = agent.top_pairs(None, SCAN)
    pairs = []
    dests: dict[bytes, list[int]] = defaultdict(lambda: [0, 2**63, 0, 0])  # c, ts1, ts2, n
    sources: dict[bytes, list[float]] = defaultdict(lambda: [0.0, 0.0])  # pps, dropping pairs
    for r in records:
        rate = _rate(r.c, r.ts1, r.ts2, t.t_t2)
        verdict = "drop" if rate > t.t_f1 else "pass"
        pairs.append((rate, r, verdict))
        d = dests[r.dst]
        d[0] += r.c
        d[1] = min(d[1], r.ts1)
        d[2] = max(d[2], r.ts2)
        d[3] += 1
        s = sources[r.src]
        s[0] += rate
        s[1] += verdict == "drop"
    pairs.sort(key=lambda x: -x[0])
    dest_rows: list[dict[str, Any]] = []
    for dst, (c, ts1, ts2, n) in dests.items():
        rate = _rate(c, ts1, ts2, t.t_t3)
        dest_rows.append(
            {
                "dst": _ip(dst),
                "pps": round(rate, 1),
                "clients": n,
                "packets": c,
                "verdict": "over" if rate > t.t_f2 else "under",
            }
        )
    dest_rows.sort(key=lambda d: -float(d["pps"]))
    src_rows: list[dict[str, Any]] = [
        {"src": _ip(src), "pps": round(pps, 1), "dropping_pairs": int(dropping)}
        for src, (pps, dropping) in sources.items()
    ]
    src_rows.sort(key=lambda s: -float(s["pps"]))
    members = []
    drops_per_s = 0.0
    packets_per_s = 0.0
    for m in sorted(agent.members(), key=lambda m: m.node_id):
        load = m.load
        if m.node_id == agent.info.node_id and agent.load() is not None:
            load = agent.load()
        pps = load.packets_in_per_s if load else 0.0
        dps = pps * load.drop_ratio if load else 0.0
        if str(m.state) == "alive":
            drops_per_s += dps
            packets_per_s += pps
        members.append(
            {
                "node_id": m.node_id,
                "state": str(m.state),
                "packets_in_per_s": round(pps, 1),
                "drops_per_s": round(dps, 1),
                "drop_ratio": round(load.drop_ratio, 4) if load else 0.0,
            }
        )
    if not members:  # no mesh (sync none or master): this proxy alone
        load = agent.load()
        if load is not None:
            packets_per_s = load.packets_in_per_s
            drops_per_s = load.packets_in_per_s * load.drop_ratio
    return {
        "node_id": agent.info.node_id,
        "time": round(time.time(), 3),
        "thresholds": {"t_f1": t.t_f1, "t_f2": t.t_f2, "policy": str(t.policy)},
        "mesh": {
            "members_alive": sum(1 for m in members if m["state"] == "alive"),
            "packets_in_per_s": round(packets_per_s, 1),
            "drops_per_s": round(drops_per_s, 1),
            "pairs": total,
            "destinations_over_t_f2": sum(1 for d in dest_rows if d["verdict"] == "over"),
        },
        "members": members,
        "destinations": dest_rows[:limit],
        "sources": src_rows[:limit],
        "pairs": [
            {
                "src": _ip(r.src),
                "dst": _ip(r.dst),
                "pps": round(rate, 1),
                "packets": r.c,
                "origins": r.origins,
                "verdict": verdict,
            }
            for rate, r, verdict in pairs[:limit]
        ],
    }


def routes(agent: AgentView) -> list[web.RouteDef]:
    async def top(request: web.Request) -> web.Response:
        try:
            limit = int(request.query.get("limit", "20"))
            if not 1 <= limit <= MAX_LIMIT:
                raise ValueError
        except ValueError:
            return web.json_response(
                {"error": f"limit: expected an integer 1..{MAX_LIMIT}"}, status=400
            )
        return web.json_response(top_document(agent, limit))

    return [web.get("/v1/top", top)]
