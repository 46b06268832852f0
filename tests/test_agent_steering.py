"""GET /v1/steering: an agent tells where new clients should go (DeDoS)."""

from __future__ import annotations

import aiohttp

from xpro_mesh.agent.config import load_config
from xpro_mesh.agent.daemon import Agent
from xpro_mesh.mesh.membership import Workload


async def test_an_agent_over_its_threshold_steers_clients_elsewhere() -> None:
    config = load_config(
        None,
        {"backend": "memory", "sync": "none", "api": "127.0.0.1:0", "steer_threshold": 1000},
        require_key_file=False,
    )
    agent = Agent(config)
    await agent.start()
    try:
        agent.counters.load = Workload(packets_in_per_s=5000, drop_ratio=0.5, loop_lag_ms=0)
        agent.counters.steering = agent.plan_steering()
        assert agent.api is not None
        host, port = agent.api.address
        url = f"http://{host}:{port}/v1/steering"
        async with aiohttp.ClientSession() as http, http.get(url) as resp:
            assert resp.status == 200
            doc = await resp.json()
        assert doc["threshold_pps"] == 1000
        assert doc["overloaded"] == [config.node_id]
        assert doc["targets"] == [{"node_id": config.node_id, "addr": None, "weight": 1.0}]
        # Back under the threshold but inside the hysteresis band: still out.
        agent.counters.load = Workload(packets_in_per_s=900, drop_ratio=0, loop_lag_ms=0)
        assert agent.plan_steering().overloaded == {config.node_id}
        agent.counters.load = Workload(packets_in_per_s=100, drop_ratio=0, loop_lag_ms=0)
        agent.counters.steering = agent.plan_steering()
        assert agent.counters.steering.overloaded == frozenset()
    finally:
        agent.stop.set()
        await agent.shutdown()
