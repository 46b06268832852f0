"""In-process agents for tests: real :class:`Agent` objects (mesh on a real
UDP socket on 127.0.0.1, HTTP API, map-sync loop) over :class:`MemoryMaps`
that the test holds, so it can feed packets and keep the "kernel" state
across an agent restart as pinned BPF maps would."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from xpro_mesh.agent.config import load_config
from xpro_mesh.agent.daemon import Agent, xdp_config
from xpro_mesh.datapath.memory import MemoryMaps
from xpro_mesh.datapath.structs import from_addr

QUIET = {
    "thresholds.t_t1": "10m",
    "thresholds.t_t4": "1h",
    "thresholds.t_f1": "1000000/s",
    "thresholds.t_f2": "10000000/s",
}


async def start_agent(
    node_id: str,
    key_file: Path,
    peers: list[tuple[str, int]] | None = None,
    backend: MemoryMaps | None = None,
    bind_port: int = 0,
    api_token: str | None = None,
) -> Agent:
    config = load_config(
        None,
        {
            "backend": "memory",
            "profile": "local",
            "node_id": node_id,
            "bind": f"127.0.0.1:{bind_port}",
            "api": "127.0.0.1:0",
            "key_file": str(key_file),
            "peers": ",".join(f"{h}:{p}" for h, p in peers or []),
            **QUIET,
        },
    )
    maps = backend if backend is not None else MemoryMaps(xdp_config(config.thresholds))
    agent = Agent(config, backend=maps, api_token=api_token)
    await agent.start()
    return agent


async def stop_agent(agent: Agent) -> None:
    agent.stop.set()
    await agent.shutdown()


def gossip_addr(agent: Agent) -> tuple[str, int]:
    assert agent.node is not None
    return agent.node.membership.addr


def counts(agent: Agent) -> dict[tuple[str, str], int]:
    records, _total = agent.top_pairs(None, 10**6)
    return {(str(from_addr(r.src)), str(from_addr(r.dst))): r.c for r in records}


def feed(maps: MemoryMaps, src: str, dst: str, count: int) -> None:
    now = time.time_ns()
    for i in range(count):
        maps.feed(src, dst, now + i)


async def eventually(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.02)
