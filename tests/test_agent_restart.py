"""An agent restarted under the same node id keeps the window it counted
before (GossipState restart adoption), also when its kernel maps outlived it
and counted packets while it was down, as pinned BPF maps do."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import slots_support
from agent_support import counts, eventually, feed, gossip_addr, start_agent, stop_agent

from xpro_mesh.datapath.memory import MemoryMaps
from xpro_mesh.mesh import auth

pytestmark = pytest.mark.timeout(60)

DST = "10.9.0.1"


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "cluster.key"
    path.write_text(auth.generate_key_line() + "\n")
    path.chmod(0o600)
    return path


async def test_restart_with_live_kernel_counts_keeps_the_window_counted_before(
    key_file: Path,
) -> None:
    seed = await start_agent("seed", key_file)
    kernel = MemoryMaps()
    proxy = await start_agent("proxy", key_file, [gossip_addr(seed)], backend=kernel)
    running = [seed, proxy]
    try:
        feed(kernel, "10.1.0.1", DST, 40)
        feed(seed.backend, "10.1.0.2", DST, 3)  # type: ignore[arg-type]
        want = {("10.1.0.1", DST): 40, ("10.1.0.2", DST): 3}
        await eventually(lambda: counts(seed) == want == counts(proxy), 10, "convergence")
        port = gossip_addr(proxy)[1]
        old_incarnation = proxy.incarnation
        await stop_agent(proxy)
        running.remove(proxy)

        # The maps outlive the agent and keep counting.
        feed(kernel, "10.1.0.1", DST, 5)
        await asyncio.sleep(0.01)
        proxy = await start_agent(
            "proxy", key_file, [gossip_addr(seed)], backend=kernel, bind_port=port
        )
        running.append(proxy)
        assert proxy.incarnation > old_incarnation
        want = {("10.1.0.1", DST): 45, ("10.1.0.2", DST): 3}
        await eventually(lambda: counts(seed) == want == counts(proxy), 10, f"{want} on both nodes")
        # And it stays so: no later round undoes the adoption.
        await asyncio.sleep(0.5)
        assert counts(seed) == want == counts(proxy)
        judged = [slots_support.judged(kernel, src, DST) for src in ("10.1.0.1", "10.1.0.2")]
        assert [r[2] if r else None for r in judged] == [45, None]  # 10.1.0.2: counted elsewhere
    finally:
        for agent in running:
            await stop_agent(agent)
