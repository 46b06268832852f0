"""Specification of the HTTP API under hostile clients (issue 12): slow and
idle connections are closed, connections are limited, client errors are 4xx
with one info line and never a traceback, bad PUTs are 400, not 500."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from agent_support import QUIET, eventually, gossip_addr, start_agent, stop_agent

from xpro_mesh.agent.config import load_config
from xpro_mesh.agent.daemon import Agent, xdp_config
from xpro_mesh.datapath.memory import MemoryMaps
from xpro_mesh.mesh.auth import generate_key_line

TOKEN = "s3cret-token"


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "cluster.key"
    path.write_text(generate_key_line() + "\n")
    path.chmod(0o600)
    return path


async def request(agent: Agent, method: str, path: str, **kw: Any) -> tuple[int, str]:
    assert agent.api is not None
    host, port = agent.api.address
    url = f"http://{host}:{port}{path}"
    async with aiohttp.ClientSession() as http, http.request(method, url, **kw) as resp:
        return resp.status, await resp.text()


async def test_slow_and_idle_connections_are_closed_and_healthz_answers(key_file: Path) -> None:
    """1 000 slow connections held the API for 91 s and starved /healthz."""
    agent = await start_agent("h1", key_file)
    try:
        api = agent.api
        assert api is not None
        api.header_timeout_s = 0.3
        api.max_connections = 40
        host, port = api.address
        loop = asyncio.get_running_loop()
        slow = []
        for _ in range(60):
            s = socket.socket()
            s.setblocking(False)
            await loop.sock_connect(s, (host, port))
            await loop.sock_sendall(s, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finished
            slow.append(s)
        await eventually(lambda: api.refused_connections >= 20, 10, "the extra refused")
        await eventually(lambda: api.timed_out_connections >= 40, 10, "the slow closed")
        assert await request(agent, "GET", "/healthz") == (200, "ok\n")
        for s in slow:
            s.close()
    finally:
        await stop_agent(agent)


async def test_a_malformed_request_is_a_400_with_one_info_line_and_no_traceback(
    key_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    agent = await start_agent("h2", key_file)
    try:
        assert agent.api is not None
        host, port = agent.api.address
        caplog.set_level(logging.DEBUG)
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header\x00: y\r\n\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(4096), 5)
        writer.close()
        assert answer.split(b"\r\n")[0].endswith(b" 400 Bad Request")
        await asyncio.sleep(0.1)
        assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    finally:
        await stop_agent(agent)


@pytest.mark.parametrize(
    "body",
    [
        '{"thresholds": {"t_f1": 1e400}}',
        '{"thresholds": {"t_t1": "99999999999999999999999h"}}',
        '{"thresholds": {"t_f1": ' + "[" * 100_000 + "]" * 100_000 + "}}",
        "[" * 100_000,
        '{"thresholds": {"r": [1]}}',
    ],
)
async def test_an_authorised_put_with_bad_values_is_a_400_not_a_500(
    key_file: Path, body: str, caplog: pytest.LogCaptureFixture
) -> None:
    agent = await start_agent("h3", key_file, api_token=TOKEN)
    try:
        caplog.set_level(logging.DEBUG)
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        status, text = await request(agent, "PUT", "/v1/config", data=body, headers=headers)
        assert status == 400, text
        assert not [r for r in caplog.records if r.exc_info]
    finally:
        await stop_agent(agent)


async def test_sighup_reloads_the_key_file_and_status_shows_which_key_each_peer_seals_with(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The key file was read only at start, and which key a peer used was not shown."""
    old, new = generate_key_line(), generate_key_line()
    key_a, key_b = tmp_path / "a.key", tmp_path / "b.key"
    for path in (key_a, key_b):
        path.write_text(old + "\n")
        path.chmod(0o600)
    a = await start_agent("ka", key_a)
    b = await start_agent("kb", key_b, peers=[gossip_addr(a)])
    try:
        assert a.node is not None and b.node is not None
        node_a = a.node
        await eventually(lambda: node_a.counters.peer_keys.get("kb") == 0, 10, "kb heard")
        key_a.write_text(f"{old}\n{new}\n")  # step 1: accept the new key
        a.reload_keys()
        key_b.write_text(f"{new}\n{old}\n")  # step 2 on kb: send with it
        b.reload_keys()
        await eventually(lambda: node_a.counters.peer_keys.get("kb") == 1, 10, "kb on new key")
        status, text = await request(a, "GET", "/v1/status")
        assert status == 200 and json.loads(text)["peer_keys"]["kb"] == 1
        _, metrics = await request(a, "GET", "/metrics")
        assert 'xpro_peer_key_index{peer="kb"} 1.0' in metrics
        caplog.set_level(logging.INFO)
        key_b.write_text("not a key\n")
        b.reload_keys()  # refused: one line, the running keys stay
        refused = [r for r in caplog.records if "key reload refused" in r.getMessage()]
        assert len(refused) == 1 and not refused[0].exc_info
        assert b.node.keyring.primary == bytes.fromhex(new)
    finally:
        await stop_agent(b)
        await stop_agent(a)


async def test_the_agent_exits_non_zero_when_a_task_fails(key_file: Path) -> None:
    """A crash exited 0, so systemd's Restart=on-failure never restarted it."""
    config = load_config(
        None,
        {"backend": "memory", "profile": "local", "node_id": "x1", "bind": "127.0.0.1:0",
         "api": "127.0.0.1:0", "key_file": str(key_file), **QUIET},
    )  # fmt: skip
    agent = Agent(config, backend=MemoryMaps(xdp_config(config.thresholds)))
    run = asyncio.create_task(agent.run())
    await eventually(lambda: agent.api is not None and agent.node is not None, 10, "the agent up")

    async def overflow() -> None:
        raise OverflowError("int too big to convert")

    agent._spawn(overflow(), "boom")
    assert await asyncio.wait_for(run, 20) == 1
