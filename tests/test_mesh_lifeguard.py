"""A node made slow by its own load must not fool the failure detector: real
UDP and TCP sockets on loopback, each node on its own event loop (its own
thread), one node's loop blocked for 300 ms every second.

The bound on suspicions comes from the protocol, not from timings: a probe
of the slow node X fails only if X cannot answer any ping (direct or
forwarded) within one probe interval P, i.e. only if it starts inside a
stall and the stall outlasts it by P; with stalls shorter than 2P, at most
one probe per prober per stall can fail. So the suspicions the probers
raise number at most (N - 1) per stall, plus at most one per stall by X
itself (a probe of its own whose ack waits behind a stall), and every
suspicion is refuted by X (a higher incarnation) long before Lifeguard's
suspicion timeout (``suspicion_max_mult · S(N)`` while unconfirmed) runs out.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from dataclasses import replace

import pytest

from xpro_mesh.agent.config import local_gossip
from xpro_mesh.core.algorithm import Params
from xpro_mesh.core.gossip_state import GossipState, MergeLimits
from xpro_mesh.mesh import auth
from xpro_mesh.mesh.membership import Membership
from xpro_mesh.mesh.node import MeshNode, NodeTiming
from xpro_mesh.mesh.state import GossipStateAdapter
from xpro_mesh.mesh.stream import TcpStreamTransport
from xpro_mesh.mesh.transport import UdpTransport

S = 10**9
P = Params(t_t1=5 * S, t_t2=S, t_t3=S, t_t4=60 * S, t_f1=100, t_f2=1000, r=2)
KEYRING = auth.Keyring([bytes(range(32))])
N = 4
STALL_S = 0.3
RUN_S = 8.0


class NodeThread(threading.Thread):
    """One MeshNode on its own loop, real sockets, stopped by ``stop``."""

    def __init__(self, name: str, port: int, seed_port: int | None, stall: bool) -> None:
        super().__init__(name=name, daemon=True)
        self.node_name, self.port, self.seed_port, self.stall = name, port, seed_port, stall
        self.ready = threading.Event()
        self.stop_flag = threading.Event()
        self.node: MeshNode | None = None
        self.stalls = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # reported by the test
            self.error = exc

    async def _main(self) -> None:
        cfg = local_gossip()
        addr = ("127.0.0.1", self.port)
        membership = Membership(
            self.node_name,
            addr,
            incarnation=int(time.time() * 1000),
            now_ns=time.monotonic_ns(),
            rng=random.Random(self.port),
            params=cfg.membership_params(),
        )
        node = MeshNode(
            state=GossipStateAdapter(GossipState(self.node_name, membership.incarnation, P)),
            membership=membership,
            keyring=KEYRING,
            timing=NodeTiming(
                interval_ns=cfg.interval_ns, fanout=cfg.fanout, max_message_bytes=1_400
            ),
            limits=MergeLimits(),
            rng=random.Random(self.port + 1),
        )
        udp = await UdpTransport.open(addr, node.receive)
        tcp = await TcpStreamTransport.open(addr, node.receive_frame)
        node.attach(udp, tcp)
        self.node = node
        if self.seed_port is not None:
            node.join([("127.0.0.1", self.seed_port)])
        stop = asyncio.Event()
        tasks = [asyncio.create_task(node.run(stop))]
        if self.stall:
            tasks.append(asyncio.create_task(self._stall_loop()))
        self.ready.set()
        await asyncio.get_running_loop().run_in_executor(None, self.stop_flag.wait)
        stop.set()
        for t in tasks[1:]:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        udp.close()
        await tcp.close()

    async def _stall_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0 - STALL_S)
            time.sleep(STALL_S)  # noqa: ASYNC251 - the point: the loop blocked, as by a long merge
            self.stalls += 1


def free_ports(n: int) -> list[int]:
    import socket

    ports: list[int] = []
    socks = []
    while len(ports) < n:
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind(("127.0.0.1", 0))
        port = u.getsockname()[1]
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            t.bind(("127.0.0.1", port))
        except OSError:
            u.close()
            t.close()
            continue
        socks += [u, t]
        ports.append(port)
    for s in socks:
        s.close()
    return ports


@pytest.mark.slow
def test_a_node_stalled_by_its_own_load_is_never_declared_dead() -> None:
    ports = free_ports(N)
    threads = [
        NodeThread(f"lg{i}", ports[i], None if i == 0 else ports[0], stall=(i == N - 1))
        for i in range(N)
    ]
    for t in threads:
        t.start()
    try:
        for t in threads:
            assert t.ready.wait(5)
        deadline = time.monotonic() + 30  # a patient wait on a busy host, not a speed check
        while time.monotonic() < deadline:
            if all(t.node is not None and t.node.membership.num_live() == N for t in threads):
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the mesh did not form")
        before = {t.node_name: replace(t.node.membership.stats) for t in threads if t.node}
        stalls_before = threads[-1].stalls
        time.sleep(RUN_S)
    finally:
        for t in threads:
            t.stop_flag.set()
        for t in threads:
            t.join(10)
    assert all(t.error is None for t in threads), [t.error for t in threads]
    stalls = threads[-1].stalls - stalls_before + 1  # a stall may straddle the window's start
    assert stalls >= RUN_S // 1 - 1
    transitions: Counter[str] = Counter()
    raised = 0
    for t in threads:
        assert t.node is not None
        transitions.update(t.node.counters.transitions)
        raised += t.node.membership.stats.suspicions_raised - before[t.node_name].suspicions_raised
    dead = {k: v for k, v in transitions.items() if k.endswith("->dead")}
    assert dead == {}, dead
    assert raised <= N * stalls, (raised, stalls)
    # Every suspicion of ours reaches each other node at most once.
    assert transitions["alive->suspect"] <= (N - 1) * (raised + N)
    assert all(t.node is not None and t.node.membership.num_live() == N for t in threads)
