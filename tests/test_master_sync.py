"""The paper's architecture against a real redis-server: Algorithm 1 through
M_DB, proxies syncing concurrently without losing each other's counts."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from slots_support import judged, judged_dest

from xpro_mesh.agent.master import MasterSync
from xpro_mesh.core.algorithm import Params
from xpro_mesh.datapath.backend import PairKey
from xpro_mesh.datapath.config import XdpConfig
from xpro_mesh.datapath.memory import MemoryMaps

S = 10**9
P = Params(t_t1=5 * S, t_t2=S, t_t3=S, t_t4=60 * S, t_f1=10**6, t_f2=10**7, r=2)
VICTIM = "10.20.0.2"
REDIS = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(port: int, workdir: Path) -> subprocess.Popen[bytes]:
    if not Path(REDIS).exists():
        pytest.fail("redis-server is not installed (scripts/setup.sh installs it)")
    proc = subprocess.Popen(
        [
            REDIS,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
        ],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.02)
    proc.kill()
    pytest.fail(f"redis-server did not listen on {port}")


@pytest.fixture
def redis_port(tmp_path: Path) -> Iterator[int]:
    port = free_port()
    proc = start_redis(port, tmp_path)
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait(5)


def proxy(port: int) -> tuple[MemoryMaps, MasterSync]:
    maps = MemoryMaps(XdpConfig.from_params(P))
    return maps, MasterSync(maps, "127.0.0.1", port, P)


def count(maps: MemoryMaps, src: str) -> int:
    record = judged(maps, src, VICTIM)
    assert record is not None
    return record[2]


def test_counts_from_two_proxies_meet_in_m_db_and_return_to_both(redis_port: int) -> None:
    (a, sa), (b, sb) = proxy(redis_port), proxy(redis_port)
    now = time.time_ns()
    for i in range(30):
        a.feed("10.10.100.5", VICTIM, now + i)
    for i in range(12):
        b.feed("10.10.100.5", VICTIM, now + 100 + i)
    sa.cycle_blocking()
    sb.cycle_blocking()
    sa.cycle_blocking()
    assert count(a, "10.10.100.5") == 42
    assert count(b, "10.10.100.5") == 42
    assert judged_dest(a, VICTIM) == (42, 1)


def test_concurrent_syncs_lose_no_proxy_counts(redis_port: int) -> None:
    proxies = [proxy(redis_port) for _ in range(3)]
    clients = [f"10.10.100.{i}" for i in range(2, 12)]
    fed = dict.fromkeys(clients, 0)
    lock = threading.Lock()
    start = time.time_ns()

    def run(i: int) -> None:
        maps, syncer = proxies[i]
        for r in range(15):
            for j, src in enumerate(clients):
                n = (i + j + r) % 4
                for k in range(n):
                    maps.feed(src, VICTIM, start + r * 1000 + k)
                with lock:
                    fed[src] += n
            syncer.cycle_blocking()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for _ in range(2):
        for _maps, syncer in proxies:
            syncer.cycle_blocking()
    for maps, _syncer in proxies:
        assert {src: count(maps, src) for src in clients} == fed


def test_copies_on_idle_proxies_do_not_shrink_a_pairs_rate(redis_port: int) -> None:
    """A pair sent through one proxy keeps its rate in M_DB however many other
    proxies hold a copy (the T_T4 division applies once, by the counting one).
    Each idle proxy saw the client once, so its kernel holds the pair and syncs
    it every cycle with nothing new."""
    p = Params(t_t1=5 * S, t_t2=S // 2, t_t3=S, t_t4=2 * S, t_f1=10**6, t_f2=10**7, r=2)
    mesh = []
    for _ in range(3):
        maps = MemoryMaps(XdpConfig.from_params(p))
        mesh.append((maps, MasterSync(maps, "127.0.0.1", redis_port, p)))
    sender = mesh[0][0]
    now = time.time_ns()
    for maps, _syncer in mesh[1:]:
        maps.feed("10.10.100.5", VICTIM, now)
    for step in range(60):  # 6 s at 200 pps, a sync of every proxy each 100 ms
        for k in range(20):
            sender.feed("10.10.100.5", VICTIM, now + step * S // 10 + k * S // 200)
        for _maps, syncer in mesh:
            syncer.cycle_blocking()
    for maps, _syncer in mesh:
        record = judged(maps, "10.10.100.5", VICTIM)
        assert record is not None
        ts1, ts2, c = record
        rate = c * S / (ts2 - ts1)
        assert 150 < rate < 260, rate


def test_m_db_crash_fails_each_cycle_and_loses_no_proxy_counts(tmp_path: Path) -> None:
    """The paper's single point of failure, killed: every cycle fails at once
    (one attempt; the next interval is the retry), the proxy's own counts
    stay in its maps (the packets of the failed cycles are read again, not
    lost), and a new, empty M_DB is re-seeded from them."""
    import redis

    port = free_port()
    server = start_redis(port, tmp_path)
    try:
        (a, sa), (b, sb) = proxy(port), proxy(port)
        now = time.time_ns()
        for i in range(30):
            a.feed("10.10.100.5", VICTIM, now + i)
        sa.cycle_blocking()
        server.kill()
        server.wait(5)
        for i in range(5):
            a.feed("10.10.100.5", VICTIM, now + 100 + i)
        for _ in range(3):
            with pytest.raises(redis.ConnectionError):
                sa.cycle_blocking()
        assert count(a, "10.10.100.5") == 35  # nothing lost while M_DB is gone
        assert sa.cycles == 1
        server = start_redis(port, tmp_path)  # a fresh, empty M_DB
        sa.cycle_blocking()
        b.feed("10.10.100.5", VICTIM, now + 200)  # the client reaches proxy b too
        sb.cycle_blocking()
        assert count(b, "10.10.100.5") == 36
        assert sa.cycles == 2
    finally:
        server.kill()
        server.wait(5)


def test_a_cycle_that_fails_after_its_read_loses_none_of_the_packets_it_read(
    redis_port: int,
) -> None:
    """M_DB's lock held by someone else: the cycle gives up after reading the
    kernel. The packets it read are not taken as synced: the next cycle adds
    them to M_DB."""
    import redis

    (a, sa), (_b, _sb) = proxy(redis_port), proxy(redis_port)
    now = time.time_ns()
    for i in range(30):
        a.feed("10.10.100.5", VICTIM, now + i)
    sa.cycle_blocking()
    for i in range(5):
        a.feed("10.10.100.5", VICTIM, now + 100 + i)
    other = redis.Redis(host="127.0.0.1", port=redis_port)
    other.set(b"xpro:lock", b"someone else", px=5_000)
    with pytest.raises(RuntimeError, match="lock busy"):
        sa.cycle_blocking()
    other.delete(b"xpro:lock")
    sa.cycle_blocking()
    key = PairKey.of("10.10.100.5", VICTIM)
    assert int(other.hget(b"xpro:pair:" + key.src + key.dst, "c")) == 35  # type: ignore[arg-type]
    assert count(a, "10.10.100.5") == 35
