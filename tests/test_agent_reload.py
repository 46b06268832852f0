"""New thresholds reach every part of the agent, in every sync mode: the
kernel's config, the gossip rows' window rules and the master syncer's
Algorithm 1 (T_T4 and r decide when and how M_DB's window is divided)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from test_master_sync import VICTIM, redis_port  # noqa: F401  (the fixture)

from xpro_mesh.agent.config import load_config
from xpro_mesh.agent.daemon import Agent, xdp_config
from xpro_mesh.agent.master import MasterSync
from xpro_mesh.datapath.backend import PairKey
from xpro_mesh.datapath.memory import MemoryMaps

S = 10**9
CLIENT = "10.10.100.7"


def master_agent(port: int, path: Path) -> tuple[Agent, MemoryMaps]:
    path.write_text('[thresholds]\nt_t4 = "60s"\nt_f1 = "1000000/s"\nt_f2 = "10000000/s"\n')
    config = load_config(
        path,
        {"backend": "memory", "node_id": "m", "sync": "master", "redis": f"127.0.0.1:{port}"},
        require_key_file=False,
    )
    maps = MemoryMaps(xdp_config(config.thresholds))
    return Agent(config, config_path=path, backend=maps), maps


def m_db(agent: Agent) -> dict[bytes, bytes]:
    syncer = agent.syncer
    assert isinstance(syncer, MasterSync)
    key = PairKey.of(CLIENT, VICTIM)
    return syncer.client.hgetall(b"xpro:pair:" + key.src + key.dst)  # type: ignore[return-value]


async def test_sighup_in_master_mode_reaches_algorithm_1(
    redis_port: int,  # noqa: F811
    tmp_path: Path,
) -> None:
    agent, maps = master_agent(redis_port, tmp_path / "agent.toml")
    now = 1_800_000_000 * S
    src, dst = PairKey.of(CLIENT, VICTIM).src, PairKey.of(CLIENT, VICTIM).dst
    for t in range(21):  # 1 pps for 20 s: a window shorter than the old T_T4
        maps.feed(src, dst, now - 20 * S + t * S)
    await agent.sync_once()
    assert int(m_db(agent)[b"c"]) == 21

    (tmp_path / "agent.toml").write_text(
        '[thresholds]\nt_t4 = "10s"\nt_f1 = "1000000/s"\nt_f2 = "10000000/s"\n'
    )
    agent.reload()  # what SIGHUP runs
    for _ in range(200):
        if agent.thresholds.t_t4 == 10 * S:
            break
        await asyncio.sleep(0.01)
    assert maps.get_config().t_t4 == 10 * S

    maps.feed(src, dst, now + S)
    await agent.sync_once()
    # Lines 13-17 with the new T_T4: the 21 s window passed 10 s, so it is
    # halved (ts1 = ts2 - 21 s // 2, c = 21 // 2) before the new packet adds 1.
    row = m_db(agent)
    assert int(row[b"c"]) == 21 // 2 + 1
    assert int(row[b"ts1"]) == now + S - (21 * S) // 2
