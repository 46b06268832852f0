"""Specification of readiness (``GET /readyz``): a proxy is ready for traffic
once its agent has written the mesh's view into its data path. A restarted
proxy that takes traffic before then judges it by its own counts alone (the
5-proxy chaos lab: its bots' block passed 53-100 % until the agent was up),
so whatever sends it traffic (a load balancer, a route announcer, the lab's
failback) waits for 200 here; ``/healthz`` only says the process answers."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from agent_support import eventually, gossip_addr, start_agent, stop_agent
from test_hardening_api import request

from xpro_mesh.api.view import NOT_READY
from xpro_mesh.mesh.auth import generate_key_line


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "cluster.key"
    path.write_text(generate_key_line() + "\n")
    path.chmod(0o600)
    return path


async def test_a_node_is_ready_once_a_peer_has_answered_and_the_view_is_written(
    key_file: Path,
) -> None:
    first = await start_agent("r1", key_file)
    try:
        await eventually(lambda: first.sync.cycles > 0, 10, "the first node's first sync")
        second = await start_agent("r2", key_file, peers=[gossip_addr(first)])
        try:
            await eventually(lambda: second.sync.cycles > 0, 10, "the second node's first sync")
            assert second.node is not None and second.node.pulled.is_set()
            assert await request(second, "GET", "/readyz") == (200, "ready\n")
            status, body = await request(second, "GET", "/v1/status")
            assert status == 200 and '"ready": true' in body
            status, metrics = await request(second, "GET", "/metrics")
            assert "xpro_ready 1.0" in metrics
        finally:
            await stop_agent(second)
    finally:
        await stop_agent(first)


async def test_a_node_whose_peers_do_not_answer_is_not_ready_until_the_first_pull_times_out(
    key_file: Path,
) -> None:
    # A peer address that takes datagrams and never answers (a dead peer's
    # port with a socket still bound): the first map sync waits for an
    # answer, FIRST_PULL_ROUNDS gossip intervals, and the node is not ready.
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        agent = await start_agent("r3", key_file, peers=[silent.getsockname()])
        try:
            status, body = await request(agent, "GET", "/readyz")
            assert (status, body) == (503, NOT_READY + "\n")
            assert (await request(agent, "GET", "/healthz"))[0] == 200
            status, metrics = await request(agent, "GET", "/metrics")
            assert "xpro_ready 0.0" in metrics
            await eventually(lambda: agent.sync.cycles > 0, 20, "the first sync after the timeout")
            assert agent.node is not None and not agent.node.pulled.is_set()
            assert await request(agent, "GET", "/readyz") == (200, "ready\n")
        finally:
            await stop_agent(agent)
    finally:
        silent.close()
