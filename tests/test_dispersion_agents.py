"""Dispersion with real agents on loopback: ``GET /v1/proxies`` agrees across
nodes, concentrated good load spreads, and ``xpro_mesh.client`` fails over
when its proxy stops answering.

Three ``xpro-mesh agent`` processes (memory backend, ``local`` profile), each
on its own loopback address (127.x.y.1-3) with one common API port, because a
client learns the proxies' hosts from the list and reaches their APIs on the
configured port. The clients are :class:`~xpro_mesh.client.ProxyClient`s in
this process; their "traffic" is ``POST /v1/feed`` on the chosen proxy, which
the memory data path counts as packets in. Every process is killed at the
end, also on failure.
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
import signal
import socket
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from xpro_mesh.bench.loopback import AgentProcess, LoopbackMesh, wait_until
from xpro_mesh.client import ClientConfig, NoProxyAnswered, Proxy, ProxyClient

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

N = 3
DST = "10.9.0.1"
CAPACITY = 500  # packets/s at occupancy 1 (dispersion.capacity)
MIN_CHANGE_S = 8  # dispersion.min_change: > refresh (5 s) + interval (2 s) + window (1 s)
QUIET = {"t_t1": "10m", "t_t4": "1h", "t_f1": "1000000/s", "t_f2": "10000000/s"}


def free_port(hosts: list[str]) -> int:
    for _ in range(50):
        port = random.randint(20_000, 40_000)
        socks = []
        try:
            for host in hosts:
                s = socket.socket()
                socks.append(s)
                s.bind((host, port))
            return port
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port")


@dataclass
class Cluster:
    mesh: LoopbackMesh
    agents: list[AgentProcess]
    api_port: int
    hosts: list[str] = field(default_factory=list)


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    net = f"127.{random.randint(10, 250)}.{random.randint(10, 250)}"
    hosts = [f"{net}.{i + 1}" for i in range(N)]
    port = free_port(hosts)
    mesh = LoopbackMesh(
        tmp_path / "mesh",
        thresholds=dict(QUIET),
        extra_config={},
    )
    mesh.write_config(dict(QUIET))
    text = mesh.config_file.read_text()
    # min_change above the clients' time to follow (refresh + send interval +
    # window): the rules do not act on a half-finished move.
    dispersion = f'capacity = {CAPACITY}\nwindow = "1s"\nmin_change = "{MIN_CHANGE_S}s"\n'
    mesh.config_file.write_text(text + "[dispersion]\n" + dispersion)
    failed_before = request.session.testsfailed
    try:
        args = [["--bind", f"{h}:0", "--api", f"{h}:{port}"] for h in hosts]
        seed = mesh.wait_up(mesh.spawn("proxy-0", extra_args=args[0]))
        rest = [mesh.spawn(f"proxy-{i}", [seed.gossip], extra_args=args[i]) for i in range(1, N)]
        agents = [seed, *(mesh.wait_up(a) for a in rest)]
        wait_until(lambda: all(len(proxies(a)) == N for a in agents), 20, "every proxy listed")
        yield Cluster(mesh, agents, port, hosts)
    finally:
        for a in mesh.agents.values():
            a.send_signal(signal.SIGCONT)
        mesh.close()
        if request.session.testsfailed > failed_before:
            print(mesh.logs())


def proxies(agent: AgentProcess) -> list[dict[str, object]]:
    doc = agent.get("/v1/proxies")
    return list(doc["proxies"])


def max_mean(occ: dict[str, float]) -> float:
    return max(occ.values()) / (sum(occ.values()) / len(occ))


def weights(agent: AgentProcess) -> dict[str, float]:
    return {str(p["node_id"]): float(str(p["weight"])) for p in proxies(agent)}


async def feed(
    session: aiohttp.ClientSession, token: str, proxy: Proxy, *, src: str, n: int
) -> None:
    body = {"src": src, "dst": DST, "count": n}
    headers = {"Authorization": f"Bearer {token}"}
    async with session.post(f"{proxy.url}/v1/feed", json=body, headers=headers) as resp:
        resp.raise_for_status()
        await resp.read()


def test_every_node_gives_the_same_proxies_once_converged(cluster: Cluster) -> None:
    """Load one proxy over T_W; every node lists the same proxies with the
    same load states and weights within the deadband (10 %)."""
    hot = cluster.agents[0]
    deadline = time.monotonic() + 4
    while time.monotonic() < deadline:
        hot.feed_many([(f"10.1.0.{i}", DST, 40) for i in range(1, 11)])  # ~4000/s in bursts
        time.sleep(0.1)
    docs = [proxies(a) for a in cluster.agents]
    names = [[p["node_id"] for p in d] for d in docs]
    print(json.dumps({a.node_id: weights(a) for a in cluster.agents}))
    assert all(set(n) == {a.node_id for a in cluster.agents} for n in names)
    w = [weights(a) for a in cluster.agents]
    for node in w[0]:
        values = [x[node] for x in w]
        assert max(values) <= 1.1 * min(values) + 1e-6, (node, values)
    # The loaded proxy is offered the least, on every node.
    assert all(min(x, key=lambda k: x[k]) == hot.node_id for x in w)


def test_a_stopped_proxys_clients_reach_another_within_the_protocol_bound(
    cluster: Cluster,
) -> None:
    """SIGSTOP one proxy (it stops answering; its sockets stay open, so every
    request to it times out): each of its clients is served by another proxy
    within ``failover_bound_s`` of the stop, plus the measured lateness of
    the event loop that runs the clients."""
    interval_s = 0.2
    n_clients = 24
    result = asyncio.run(_failover_run(cluster, interval_s, n_clients))
    bound = result["bound_s"]
    print(json.dumps(result))
    assert bound <= 2.0  # the target, from the configuration alone
    assert result["affected"] >= 1
    assert result["recovered"] == result["affected"]
    assert result["failover_max_s"] <= bound + result["loop_lag_max_s"]
    # Every client moved to the next proxy of its own order, nowhere else.
    assert result["moved_to_next"] == result["affected"]


async def _failover_run(cluster: Cluster, interval_s: float, n_clients: int) -> dict[str, float]:
    token = cluster.mesh.token
    seeds = tuple((h, cluster.api_port) for h in cluster.hosts)
    configs = [
        ClientConfig(
            seeds=seeds,
            client_id=f"dev-{i}",
            api_port=cluster.api_port,
            refresh_s=1.0,
            timeout_s=0.5,
        )
        for i in range(n_clients)
    ]
    clients = [ProxyClient(c) for c in configs]
    for c in clients:
        await c.start()
    served: dict[int, list[tuple[float, str]]] = {i: [] for i in range(n_clients)}
    stop = asyncio.Event()
    lag = [0.0]

    async def device(i: int) -> None:
        c = clients[i]
        while not stop.is_set():
            t = time.monotonic()
            try:
                _, proxy = await c.request(
                    functools.partial(feed, c.session, token, src=f"10.2.0.{i + 1}", n=1)
                )
                served[i].append((time.monotonic(), proxy.node_id))
            except NoProxyAnswered:
                pass  # not served: counted by its absence
            await asyncio.sleep(max(0.0, interval_s - (time.monotonic() - t)))

    async def ticker() -> None:
        while not stop.is_set():
            t = time.monotonic()
            await asyncio.sleep(0.05)
            lag[0] = max(lag[0], time.monotonic() - t - 0.05)

    tasks = [asyncio.create_task(device(i)) for i in range(n_clients)]
    tasks.append(asyncio.create_task(ticker()))
    try:
        await asyncio.sleep(3.0)
        victim = cluster.agents[1]
        orders = {i: [p.node_id for p in clients[i].order()] for i in range(n_clients)}
        affected = [i for i in range(n_clients) if served[i] and served[i][-1][1] == victim.node_id]
        lag[0] = 0.0
        victim.send_signal(signal.SIGSTOP)
        t_stop = time.monotonic()
        await asyncio.sleep(4.0)
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in clients:
            await c.close()
    failover = []
    moved_to_next = 0
    for i in affected:
        after = [(t, n) for t, n in served[i] if t > t_stop]
        if after:
            failover.append(after[0][0] - t_stop)
            nxt = next(n for n in orders[i] if n != victim.node_id)
            moved_to_next += after[0][1] == nxt
    return {
        "clients": n_clients,
        "affected": len(affected),
        "recovered": len(failover),
        "moved_to_next": moved_to_next,
        "failover_min_s": round(min(failover, default=0), 3),
        "failover_median_s": round(sorted(failover)[len(failover) // 2] if failover else 0, 3),
        "failover_max_s": round(max(failover, default=0), 3),
        "bound_s": configs[0].failover_bound_s(interval_s),
        "loop_lag_max_s": round(lag[0], 3),
    }


@pytest.mark.timeout(300)
def test_good_load_concentrated_on_one_proxy_spreads_without_oscillating(
    cluster: Cluster,
) -> None:
    """The overload scenario on loopback: good clients all on proxy-0 (over
    T_W), then either left there or following ``xpro_mesh.client``.

    Asserted: the load was concentrated; every node had moved weight off the
    loaded proxy before the clients followed; the clients then sit where the
    weights say (each proxy's share of clients within 0.15 of its weight); no
    node changed its weights more often than ``min_change`` allows; the good
    clients fared no worse. The measured occupancies (the issue's figures) are printed with
    their target, not asserted: on one shared host the proxies' loop lag is
    the host's, and their occupancies move with it."""
    without = asyncio.run(_overload_run(cluster, dispersion=False, after_s=10.0))
    with_ = asyncio.run(_overload_run(cluster, dispersion=True, after_s=25.0))
    ratio = with_["max_mean_load_ratio_after"]
    with_["target"] = {"max_mean_load_ratio_after": 1.3, "met": ratio is not None and ratio <= 1.3}
    print(json.dumps({"without": without, "with": with_}))
    assert without["max_mean_load_ratio_before"] > 1.3  # the load was concentrated
    loaded = cluster.agents[0].node_id
    assert all(w[loaded] < 1 / 3 for w in with_["weights_at_switch"].values())
    # The clients are where the weights say (3.5 sigma of 120 draws: 0.15).
    counts, w_end = with_["clients_end"], with_["weights_end"]
    for node, weight in w_end.items():
        assert abs(counts.get(node, 0) / sum(counts.values()) - weight) <= 0.15
    for run in (without, with_):
        assert run["weight_changes_max_per_node"] <= run["duration_s"] / MIN_CHANGE_S + 1
    assert with_["good_success"] >= without["good_success"] - 0.01


async def _overload_run(cluster: Cluster, dispersion: bool, after_s: float) -> dict[str, Any]:
    token = cluster.mesh.token
    seeds = tuple((h, cluster.api_port) for h in cluster.hosts)
    # 600 packets/s in all, 1.2 × one proxy's capacity; many clients, so that
    # their count per proxy follows the weights (120 clients over 3 equal
    # weights land 33 / 40 / 47 here: max/mean 1.175).
    n_clients, interval_s, packets = 120, 2.0, 10
    clients = [
        ProxyClient(
            ClientConfig(
                seeds=seeds,
                client_id=f"dev-{i}",
                api_port=cluster.api_port,
                # Failover is the other test's subject: a timeout long enough
                # that a stall of this shared host does not move clients.
                refresh_s=5.0,
                timeout_s=3.0,
            )
        )
        for i in range(n_clients)
    ]
    await asyncio.gather(*(c.start() for c in clients))
    home = next(p for p in clients[0].proxies if p.node_id == cluster.agents[0].node_id)
    following = asyncio.Event()
    stop = asyncio.Event()
    phase = [0]  # 0: before the switch, 1: after
    sent = [0, 0]
    ok = [0, 0]
    latencies: list[float] = []

    async def device(i: int) -> None:
        c = clients[i]
        await asyncio.sleep(interval_s * i / n_clients)  # spread the clients over the interval
        while not stop.is_set():
            t = time.monotonic()
            ph = phase[0]
            sent[ph] += 1
            src = f"10.3.{i // 250}.{i % 250 + 1}"
            try:
                if following.is_set():
                    await c.request(functools.partial(feed, c.session, token, src=src, n=packets))
                else:
                    await asyncio.wait_for(feed(c.session, token, home, src=src, n=packets), 3.0)
                ok[ph] += 1
                if ph:
                    latencies.append(time.monotonic() - t)
            except (NoProxyAnswered, TimeoutError, OSError, aiohttp.ClientError):
                pass
            await asyncio.sleep(max(0.0, interval_s - (time.monotonic() - t)))

    async def occupancies(session: aiohttp.ClientSession) -> dict[str, float] | None:
        async with session.get(f"http://{seeds[2][0]}:{seeds[2][1]}/v1/proxies") as resp:
            doc = await resp.json()
        occ = {str(p["node_id"]): float(p["occupancy"]) for p in doc["proxies"]}
        return occ if len(occ) == N and sum(occ.values()) > 0 else None

    async def changes(session: aiohttp.ClientSession) -> list[int]:
        out = []
        for h, port in seeds:
            async with session.get(f"http://{h}:{port}/v1/proxies") as resp:
                doc = await resp.json()
            out.append(int(doc["changes"]["additions"]) + int(doc["changes"]["removals"]))
        return out

    t_start = time.monotonic()
    tasks = [asyncio.create_task(device(i)) for i in range(n_clients)]
    samples: list[tuple[float, dict[str, float]]] = []
    try:
        async with aiohttp.ClientSession() as session:
            changes_start = await changes(session)
            await asyncio.sleep(4.0)
            before = await occupancies(session)
            phase[0] = 1
            weights_at_switch = {}
            for h, port in seeds:
                async with session.get(f"http://{h}:{port}/v1/proxies") as resp:
                    doc = await resp.json()
                weights_at_switch[doc["node_id"]] = {
                    p["node_id"]: p["weight"] for p in doc["proxies"]
                }
            if dispersion:
                following.set()
            t_switch = time.monotonic()
            while time.monotonic() - t_switch < after_s:
                await asyncio.sleep(0.5)
                occ = await occupancies(session)
                if occ is not None:
                    samples.append((time.monotonic() - t_switch, occ))
            changes_end = await changes(session)
            async with session.get(f"http://{seeds[0][0]}:{seeds[0][1]}/v1/proxies") as resp:
                doc_end = await resp.json()
    finally:
        stop.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        for c in clients:
            await c.close()
    rebalance = next((t for t, occ in samples if max_mean(occ) <= 1.3), None)
    tail = [occ for t, occ in samples if t >= after_s - 5.0]
    # Each proxy's occupancy averaged over the last 5 s (one window is noisy).
    settled = {n: sum(o[n] for o in tail) / len(tail) for n in tail[0]} if tail else None
    lat = sorted(latencies)
    per_node = [b - a for a, b in zip(changes_start, changes_end, strict=True)]
    return {
        "dispersion": dispersion,
        "max_mean_load_ratio_before": round(max_mean(before), 3) if before else None,
        "max_mean_load_ratio_after": round(max_mean(settled), 3) if settled else None,
        "occupancy_after": settled,
        "weights_at_switch": weights_at_switch,
        "weights_end": {p["node_id"]: p["weight"] for p in doc_end["proxies"]},
        "duration_s": round(time.monotonic() - t_start, 1),
        "clients_end": dict(Counter(c.current.node_id for c in clients if c.current)),
        "failovers": sum(c.failovers for c in clients),
        "rebalance_s": None if rebalance is None else round(rebalance, 2),
        "weight_changes": per_node,
        "weight_changes_max_per_node": max(per_node),
        "good_success_before": round(ok[0] / sent[0], 4) if sent[0] else None,
        "good_success": round(ok[1] / sent[1], 4) if sent[1] else None,
        "good_latency_ms_median": round(1000 * lat[len(lat) // 2], 1) if lat else None,
        "good_latency_ms_p95": round(1000 * lat[int(len(lat) * 0.95)], 1) if lat else None,
    }
