"""GET /v1/records: the mesh-wide pair views, largest count first, filtered
by destination and bounded by ``limit``."""

from __future__ import annotations

import aiohttp

from xpro_mesh.agent.config import load_config
from xpro_mesh.agent.daemon import Agent
from xpro_mesh.core.gossip_state import LocalCount
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
    for i, (src, dst) in enumerate(
        [("10.1.0.1", "10.2.0.1"), ("10.1.0.2", "10.2.0.1"), ("10.1.0.3", "10.2.0.2")]
    ):
        key = PairKey.of(src, dst)
        agent.state.record_local((key.src, key.dst), LocalCount(now, now + S, 10 * (i + 1), 0))
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
                {"src": "10.1.0.2", "dst": "10.2.0.1", "ts1": now, "ts2": now + S, "c": 20,
                 "origins": 1}
            ]
            async with http.get(base, params={"limit": "0"}) as resp:
                assert resp.status == 400
            async with http.get(base, params={"dst": "not-an-ip"}) as resp:
                assert resp.status == 400
    finally:
        agent.stop.set()
        await agent.shutdown()
