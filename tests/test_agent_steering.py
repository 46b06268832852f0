"""GET /v1/steering and GET /v1/proxies of one agent: the weights the
dispersion rules hold, from the load the agent measures (DeDoS)."""

from __future__ import annotations

import asyncio

import aiohttp

from xpro_mesh.agent.config import load_config
from xpro_mesh.agent.daemon import Agent


async def test_one_agent_serves_itself_with_its_measured_occupancy() -> None:
    config = load_config(
        None,
        {
            "backend": "memory",
            "sync": "none",
            "profile": "local",
            "api": "127.0.0.1:0",
            "dispersion.capacity": 1000,
        },
        require_key_file=False,
    )
    agent = Agent(config)
    await agent.start()
    try:
        feeder = agent.feeder()
        assert feeder is not None
        assert agent.api is not None
        host, port = agent.api.address
        async with aiohttp.ClientSession() as http:
            # ~2000 packets/s for a little over a window: twice the capacity.
            for _ in range(12):
                for i in range(100):
                    feeder.feed(bytes(15) + bytes([i]), bytes(15) + b"\x01", 0)
                await asyncio.sleep(0.05)
            async with http.get(f"http://{host}:{port}/v1/proxies") as resp:
                assert resp.status == 200
                doc = await resp.json()
            async with http.get(f"http://{host}:{port}/v1/steering") as resp:
                steer = await resp.json()
        (me,) = doc["proxies"]
        assert me["node_id"] == config.node_id and me["weight"] == 1.0
        # The rates depend on this host's timing; what they must say does not.
        occ = me["occupancy"]
        assert occ > 0 and doc["here"]["packets_in_per_s"] > 0
        assert me["load"] == ("overloaded" if occ > 0.8 else "hot" if occ > 0.4 else "ok")
        assert doc["here"]["agent_cpu"] >= 0 and 0 <= doc["here"]["softirq_cpu"] <= 1
        assert steer["threshold_pps"] == 800
        assert steer["targets"][0]["node_id"] == config.node_id
    finally:
        agent.stop.set()
        await agent.shutdown()
