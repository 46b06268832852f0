"""Overload warnings (Algorithm 2 line 15) leave the agent as structured log
lines and webhook POSTs, bounded so that a flood cannot flood the operator."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time

import pytest
from aiohttp import web

from xpro_mesh.agent.config import load_config
from xpro_mesh.agent.daemon import Agent
from xpro_mesh.agent.logs import JsonFormatter
from xpro_mesh.datapath.memory import MemoryMaps

S = 10**9


arrived = asyncio.Event()


async def start_webhook() -> tuple[web.AppRunner, str, list[dict[str, object]]]:
    received: list[dict[str, object]] = []

    async def hook(request: web.Request) -> web.Response:
        received.append(await request.json())
        arrived.set()
        return web.Response(status=204)

    app = web.Application()
    app.add_routes([web.post("/hook", hook)])
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}/hook", received


@pytest.fixture
def json_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="xpro_mesh.agent")
    return caplog


async def test_a_heavy_hitter_is_warned_in_the_log_and_on_the_webhook(
    json_logs: pytest.LogCaptureFixture,
) -> None:
    runner, url, received = await start_webhook()
    config = load_config(
        None,
        {
            "backend": "memory",
            "sync": "none",
            "api": "127.0.0.1:0",
            "webhook_url": url,
            "thresholds.t_f1": 100,
            "thresholds.t_t2": "1s",
        },
        require_key_file=False,
    )
    agent = Agent(config)
    await agent.start()
    try:
        maps = agent.backend
        assert isinstance(maps, MemoryMaps)
        now = time.time_ns()
        for i in range(400):  # 400 packets over 2 s: 200 pps > T_F1
            maps.feed("10.10.100.66", "10.20.0.2", now + i * (2 * S // 400))
        arrived.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(arrived.wait(), timeout=5)
        assert received, "no webhook POST for an overload warning"
        assert received[0]["src"] == "10.10.100.66"
        assert received[0]["dst"] == "10.20.0.2"
        assert float(str(received[0]["rate_pps"])) > 100
        # One warning per pair per warn_interval, not one per dropped packet.
        assert agent.counters.warnings < 10
        lines = [
            json.loads(JsonFormatter().format(r))
            for r in json_logs.records
            if r.getMessage() == "overload warning"
        ]
        assert lines and lines[0]["src"] == "10.10.100.66"
        assert lines[0]["event"] == "overload_warning"
    finally:
        agent.stop.set()
        await agent.shutdown()
        await runner.cleanup()
