"""``GET /v1/proxies``: where an IoT device or its gateway should send its
traffic (DeDoS dispersion, docs/dispersion.md).

``proxies`` lists the live proxies by weight: ``node_id``, ``addr`` (the
gossip address; its host is the proxy's), ``host``, ``weight`` (summing to 1),
``occupancy`` (W, 1 = full), ``state`` (alive | suspect) and ``load`` (ok |
hot | overloaded). It is computed from the gossiped loads by the same rules
on every node, so once the gossip has converged any live proxy gives the same
list. ``here`` is this node's own measurement, which is not gossiped (agent
CPU, host softirq CPU), and ``changes`` counts this node's weight changes
(additions, removals, departures of dead proxies); both differ by node.
``xpro_mesh.client`` reads only ``proxies``.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from xpro_mesh.api.view import AgentView

__all__ = ["proxies_document", "routes"]


def proxies_document(agent: AgentView) -> dict[str, Any]:
    info = agent.info
    measured = agent.measured_here()
    state = agent.dispersion()
    here = None
    if measured is not None:
        here = {
            "packets_in_per_s": round(measured.workload.packets_in_per_s, 1),
            "drop_ratio": round(measured.workload.drop_ratio, 4),
            "loop_lag_ms": round(measured.workload.loop_lag_ms, 2),
            "agent_cpu": round(measured.agent_cpu, 4),
            "softirq_cpu": round(measured.softirq_cpu, 4),
        }
    return {
        "node_id": info.node_id,
        "proxies": [
            {
                "node_id": p.node_id,
                "addr": f"{p.addr[0]}:{p.addr[1]}",
                "host": p.addr[0],
                "weight": round(p.weight, 6),
                "occupancy": round(p.occupancy, 4),
                "state": p.state,
                "load": p.load,
            }
            for p in agent.proxies()
        ],
        "here": here,
        "changes": {
            "additions": state.additions,
            "removals": state.removals,
            "departures": state.departures,
        },
    }


def routes(agent: AgentView) -> list[web.RouteDef]:
    async def proxies(request: web.Request) -> web.Response:
        return web.json_response(proxies_document(agent))

    return [web.get("/v1/proxies", proxies)]
