"""GET /v1/records: the mesh-wide pair views, largest count first, filtered
by destination and bounded by ``limit``."""

from __future__ import annotations

import aiohttp
import numpy as np

from xpro_mesh.agent.config import load_config
from xpro_mesh.agent.daemon import Agent
from xpro_mesh.datapath.backend import PairKey

S = 10**9


async def test_records_are_the_largest_views_first_per_destination() -> None:
    config = load_config(
        None,
        {"backend": "memory", "sync": "none", "api": "127.0.0.1:0"},
        require_key_file=False,
    )
    agent = Agent(config)
    now = 1_800_000_000 * S
    keys = [
        PairKey.of(s, d)
        for s, d in [("10.1.0.1", "10.2.0.1"), ("10.1.0.2", "10.2.0.1"), ("10.1.0.3", "10.2.0.2")]
    ]
    n = len(keys)
    agent.state.record_local(
        np.array([k.src for k in keys], "S16"),
        np.array([k.dst for k in keys], "S16"),
        np.full(n, now),
        np.full(n, now + S),
        np.array([10, 20, 30]),
        np.zeros(n, np.int64),
    )
    await agent.start()
    try:
        assert agent.api is not None
        host, port = agent.api.address
        base = f"http://{host}:{port}/v1/records"
        async with aiohttp.ClientSession() as http:
            async with http.get(base) as resp:
                doc = await resp.json()
            assert doc["total"] == 3
            assert [(r["src"], r["c"]) for r in doc["records"]] == [
                ("10.1.0.3", 30),
                ("10.1.0.2", 20),
                ("10.1.0.1", 10),
            ]
            async with http.get(base, params={"dst": "10.2.0.1", "limit": "1"}) as resp:
                doc = await resp.json()
            assert doc["total"] == 2
            assert doc["records"] == [
                {
                    "src": "10.1.0.2",
                    "dst": "10.2.0.1",
                    "ts1": now,
                    "ts2": now + S,
                    "c": 20,
                    "origins": 1,
                }
            ]
            async with http.get(base, params={"limit": "0"}) as resp:
                assert resp.status == 400
            async with http.get(base, params={"dst": "not-an-ip"}) as resp:
                assert resp.status == 400
    finally:
        agent.stop.set()
        await agent.shutdown()
