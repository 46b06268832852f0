"""One configuration for the whole mesh: a versioned document (thresholds,
action, allow-list) that ``PUT /v1/config`` on any node publishes, gossip
spreads (the newer version wins everywhere, also on a node that was away),
every node applies live and keeps on disk across a restart."""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp
import pytest
from agent_support import QUIET, eventually, gossip_addr, stop_agent

from xpro_mesh.agent.config import load_config
from xpro_mesh.agent.daemon import Agent, xdp_config
from xpro_mesh.agent.mesh_config import changed_outside_thresholds, static_part
from xpro_mesh.core.config_doc import ConfigDocError, MeshConfig, decode
from xpro_mesh.datapath.memory import MemoryMaps
from xpro_mesh.datapath.policy import Action, parse_prefix

TOKEN = "mesh-config-token"


def test_the_newer_version_wins_and_ties_go_to_the_larger_origin() -> None:
    base = MeshConfig(3, "a", {"t_f1": 100})
    assert MeshConfig(4, "a").newer_than(base)
    assert not MeshConfig(2, "z").newer_than(base)
    assert MeshConfig(3, "b").newer_than(base) and not MeshConfig(3, "a").newer_than(base)
    nxt = base.successor("c", thresholds={"t_f2": 900}, action="monitor", allow=["10.0.0.0/8"])
    assert nxt == MeshConfig(4, "c", {"t_f1": 100, "t_f2": 900}, "monitor", ("10.0.0.0/8",))
    assert decode(nxt.encode()) == nxt


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"[]", "not an object"),
        (b'{"version": -1, "origin": "a"}', "version"),
        (b'{"version": 1, "origin": "a", "action": "drop-all"}', "action"),
        (b'{"version": 1, "origin": "a", "allow": ["10.0.0.300/8"]}', "not a prefix"),
        (b'{"version": 1, "origin": "a", "thresholds": {"t_zz": 1}}', "unknown key"),
        (b"\xff", "undecodable"),
    ],
)
def test_a_peers_bad_document_is_refused_with_the_reason(raw: bytes, message: str) -> None:
    error = decode(raw)
    assert isinstance(error, ConfigDocError) and message in str(error)


def test_a_change_outside_thresholds_is_named(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('api = "127.0.0.1:1"\n[thresholds]\nt_f1 = 100\n')
    start = static_part(path)
    path.write_text('api = "127.0.0.1:1"\n[thresholds]\nt_f1 = 200\n')
    assert changed_outside_thresholds(path, start) == ""
    path.write_text('api = "127.0.0.1:2"\n[thresholds]\nt_f1 = 200\n')
    assert changed_outside_thresholds(path, start) == "api"


async def _agent(name: str, key: Path, state: Path, peers: list[Agent]) -> Agent:
    config = load_config(
        None,
        {
            "backend": "memory",
            "profile": "local",
            "node_id": name,
            "bind": "127.0.0.1:0",
            "api": "127.0.0.1:0",
            "key_file": str(key),
            "peers": ",".join("{}:{}".format(*gossip_addr(p)) for p in peers),
            **QUIET,
        },
    )
    agent = Agent(config, backend=MemoryMaps(xdp_config(config.thresholds)), api_token=TOKEN)
    agent.state_dir = state / name
    await agent.start()
    return agent


def _url(agent: Agent) -> str:
    assert agent.api is not None
    return "http://{}:{}".format(*agent.api.address)


async def test_put_on_one_node_changes_the_mesh_and_survives_a_restart(tmp_path: Path) -> None:
    key = tmp_path / "cluster.key"
    key.write_text("ef" * 32 + "\n")
    key.chmod(0o600)  # the agent refuses a key others can read
    a = await _agent("cfg-a", key, tmp_path, [])
    b = await _agent("cfg-b", key, tmp_path, [a])
    agents = [a, b]
    late: Agent | None = None
    try:
        body = {"thresholds": {"t_f1": "321/s"}, "action": "monitor", "allow": ["10.9.0.0/16"]}
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with aiohttp.ClientSession() as http:
            async with http.put(_url(b) + "/v1/config", json=body, headers=headers) as resp:
                assert resp.status == 200, await resp.text()
                answer = await resp.json()
            bad = {"action": "drop-everything"}
            async with http.put(_url(b) + "/v1/config", json=bad, headers=headers) as resp:
                assert resp.status == 400
                assert "action: expected enforce or monitor" in (await resp.json())["error"]
        assert answer["mesh"]["version"] == 1 and answer["mesh"]["origin"] == "cfg-b"

        def everywhere(version: int, t_f1: int, nodes: list[Agent]) -> bool:
            return all(
                n.mesh_config is not None
                and n.mesh_config.current.version == version
                and n.thresholds.t_f1 == t_f1
                for n in nodes
            )

        await eventually(lambda: everywhere(1, 321, agents), 20, "version 1 on both nodes")
        assert a.mesh_config is not None
        assert a.mesh_config.current.action == "monitor"
        assert a.mesh_config.current.allow == ("10.9.0.0/16",)

        def policy_applied(n: Agent) -> bool:
            assert isinstance(n.backend, MemoryMaps)
            return n.backend.policy.action() == (Action.MONITOR, 1)

        # Applied live to each node's filter (the twin's policy maps): the
        # thresholds first, then the policy maps in a worker thread, so the
        # policy may follow the version by that hop (seen: a run read
        # enforce right after the version).
        await eventually(lambda: all(map(policy_applied, agents)), 20, "the policy on both")
        for n in agents:
            assert isinstance(n.backend, MemoryMaps)
            assert n.backend.policy.allow_list() == [parse_prefix("10.9.0.0/16")]
        # A node that joins later catches up at its first exchange.
        late = await _agent("cfg-c", key, tmp_path, [a])
        agents.append(late)
        await eventually(lambda: everywhere(1, 321, agents), 20, "version 1 on the late node")
        # /v1/status: the version each peer runs.
        async with aiohttp.ClientSession() as http, http.get(_url(a) + "/v1/status") as resp:
            status = await resp.json()
        assert status["config_version"] == 1
        await eventually(
            lambda: a.mesh_config is not None and len(a.mesh_config.peer_versions) >= 1,
            20,
            "a peer's offer",
        )
        # Persisted: a restarted node runs the mesh's thresholds, not its file's.
        stored = tmp_path / "cfg-a" / "mesh-config.json"
        assert decode(stored.read_bytes()) == a.mesh_config.current
        await stop_agent(a)
        agents.remove(a)
        a = await _agent("cfg-a", key, tmp_path, [b])
        agents.append(a)
        assert a.mesh_config is not None and a.mesh_config.current.version == 1
        await eventually(lambda: a.thresholds.t_f1 == 321, 10, "the stored thresholds applied")
    finally:
        for agent in agents:
            await stop_agent(agent)


async def test_metrics_show_the_action_and_what_monitor_and_the_allow_list_passed(
    tmp_path: Path,
) -> None:
    key = tmp_path / "cluster.key"
    key.write_text("ef" * 32 + "\n")
    key.chmod(0o600)
    agent = await _agent("cfg-m", key, tmp_path, [])
    try:
        body = {"thresholds": {"t_f1": "10/s"}, "action": "monitor", "allow": ["10.9.0.0/16"]}
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with aiohttp.ClientSession() as http:
            async with http.put(_url(agent) + "/v1/config", json=body, headers=headers) as resp:
                assert resp.status == 200, await resp.text()
            maps = agent.backend
            assert isinstance(maps, MemoryMaps)
            await eventually(
                lambda: maps.get_config().t_f1 == 10 and maps.policy.action()[0] is Action.MONITOR,
                10,
                "the document applied to the twin",
            )
            now = time.time_ns()
            for i in range(100):  # 50 pps for 2 s: 5x T_F1
                maps.feed_action("10.8.0.1", "10.6.0.1", now + i * 20_000_000)
                maps.feed_action("10.9.0.7", "10.6.0.1", now + i * 20_000_000)
            monitored = maps.policy.stats().monitored
            assert monitored > 40
            async with http.get(_url(agent) + "/metrics") as resp:
                text = await resp.text()
        assert 'xpro_action_info{action="monitor"} 1.0' in text
        assert f'xpro_policy_packets_total{{outcome="monitored"}} {float(monitored)}' in text
        assert 'xpro_policy_packets_total{outcome="allowed"} 100.0' in text
    finally:
        await stop_agent(agent)
