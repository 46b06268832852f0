"""The agent's write-back path: apply re-bases records in the kernel with
atomics, so packets counted between the agent's read and its write survive;
and the kernel backend behaves exactly as the memory backend under any mix
of packets, re-bases and deletions."""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence

import pytest
from datapath_support import BASE_TIME, MS, Packet, random_params
from test_datapath_differential import KernelDriver

from xpro_mesh.core.algorithm import DestinationAggregate, LocalRecord
from xpro_mesh.datapath import libbpf, structs
from xpro_mesh.datapath.backend import ApplyReport, DestOp, PairKey, PairOp
from xpro_mesh.datapath.config import Policy, XdpConfig
from xpro_mesh.datapath.frames import ip_frame
from xpro_mesh.datapath.memory import MemoryMaps

pytestmark = pytest.mark.kernel

SRC, DST = "10.7.0.1", "10.7.0.2"
KEY = PairKey.of(SRC, DST)


def test_rebase_during_concurrent_packets_loses_nothing(
    xdp_test_program: object, kernel_maps: object
) -> None:
    """Two threads push packets of one pair through the program (the clock
    stands still, so the window never restarts) while the agent re-bases it
    over and over: final c and dc account for every packet and every delta."""
    maps = kernel_maps
    maps.set_config(XdpConfig(t_f1=10**12, t_f2=10**12))  # type: ignore[attr-defined]
    maps.write_clock(offset=0, test_now=BASE_TIME)  # type: ignore[attr-defined]
    filter_fd = xdp_test_program.filter_fd  # type: ignore[attr-defined]
    frame = ip_frame(SRC, DST)
    libbpf.prog_test_run(filter_fd, frame)  # creates the pair and its destination
    runs, repeat = 40, 20_000
    stop = threading.Event()
    errors: list[BaseException] = []

    def blast() -> None:
        try:
            for _ in range(runs):
                libbpf.prog_test_run(filter_fd, frame, repeat=repeat)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=blast) for _ in range(2)]
    for t in threads:
        t.start()
    c_added = dest_added = acked = rebases = 0
    while any(t.is_alive() for t in threads) or rebases < 5:
        raw = maps.read_pair_struct(KEY)  # type: ignore[attr-defined]
        report = maps.apply(  # type: ignore[attr-defined]
            [PairOp(KEY, raw.ts1, raw.dc, 1000, raw.ts1, raw.ts2)],
            [DestOp(KEY.dst, 500, 0, raw.ts1, raw.ts2)],
        )
        assert report == ApplyReport(applied=2)
        c_added += 1000
        dest_added += 500
        acked += raw.dc
        rebases += 1
    stop.set()
    for t in threads:
        t.join()
    assert not errors
    packets = 1 + 2 * runs * repeat
    ((_key, rec),) = maps.read_pairs()  # type: ignore[attr-defined]
    assert rec.c == packets + c_added
    assert rec.dc == packets - acked
    ((_dst, agg),) = maps.read_destinations()  # type: ignore[attr-defined]
    assert agg.c == packets + dest_added
    assert rebases >= 5


def test_whole_value_writes_from_userspace_would_lose_packets(
    xdp_test_program: object, kernel_maps: object
) -> None:
    """Why apply exists: the same re-base done as read-modify-write of the
    whole value from userspace erases the packets counted in between."""
    maps = kernel_maps
    maps.set_config(XdpConfig(t_f1=10**12, t_f2=10**12))  # type: ignore[attr-defined]
    maps.write_clock(offset=0, test_now=BASE_TIME)  # type: ignore[attr-defined]
    filter_fd = xdp_test_program.filter_fd  # type: ignore[attr-defined]
    frame = ip_frame(SRC, DST)
    libbpf.prog_test_run(filter_fd, frame)
    runs, repeat = 40, 20_000
    threads = [
        threading.Thread(
            target=lambda: [
                libbpf.prog_test_run(filter_fd, frame, repeat=repeat) for _ in range(runs)
            ]
        )
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    key = structs.pair_key_struct(KEY.src, KEY.dst)
    added = 0
    while any(t.is_alive() for t in threads):
        raw = maps.read_pair_struct(KEY)  # type: ignore[attr-defined]
        raw.c += 1000
        raw.dc = 0
        libbpf.map_update_elem(maps.map_fd("pairs"), key, raw)  # type: ignore[attr-defined]
        added += 1000
    for t in threads:
        t.join()
    ((_key, rec),) = maps.read_pairs()  # type: ignore[attr-defined]
    assert rec.c < 1 + 2 * runs * repeat + added


def test_a_pair_restarted_since_the_read_is_skipped_and_reported(
    kernel_maps: object, xdp_test_program: object
) -> None:
    maps = kernel_maps
    maps.set_config(XdpConfig(t_t1=50 * MS))  # type: ignore[attr-defined]
    driver = KernelDriver(xdp_test_program, maps)
    driver.feed(Packet(SRC, DST, BASE_TIME))
    ((_k, read),) = maps.read_pairs()  # type: ignore[attr-defined]
    driver.feed(Packet(SRC, DST, BASE_TIME + 100 * MS))  # idle > T_T1: window restarts
    op = PairOp(KEY, read.ts1, read.dc, 41, read.ts1, read.ts2)
    missing = PairOp(PairKey.of("10.7.0.9", DST), BASE_TIME, 0, 1, BASE_TIME, BASE_TIME)
    report = maps.apply([op, missing])  # type: ignore[attr-defined]
    assert report.restarted == (KEY,)
    assert report.missing == (missing.key,)
    assert dict(maps.read_pairs())[KEY] == LocalRecord(  # type: ignore[attr-defined]
        ts1=BASE_TIME + 100 * MS, ts2=BASE_TIME + 100 * MS, c=1, dc=1, mark=1
    )


def test_deleting_a_pair_takes_it_out_of_its_destination(
    kernel_maps: object, xdp_test_program: object
) -> None:
    maps = kernel_maps
    maps.set_config(XdpConfig())  # type: ignore[attr-defined]
    driver = KernelDriver(xdp_test_program, maps)
    for i, src in enumerate(["10.7.0.1", "10.7.0.3", "10.7.0.1", "10.7.0.4"]):
        driver.feed(Packet(src, DST, BASE_TIME + i * MS))
    assert maps.delete_pairs([KEY, PairKey.of("10.7.0.99", DST)]) == 1  # type: ignore[attr-defined]
    assert {k.src_ip.exploded for k, _ in maps.read_pairs()} == {"10.7.0.3", "10.7.0.4"}  # type: ignore[attr-defined]
    ((_dst, agg),) = maps.read_destinations()  # type: ignore[attr-defined]
    assert agg == DestinationAggregate(ts1=BASE_TIME + MS, ts2=BASE_TIME + 3 * MS, c=2, clients=2)
    assert maps.read_stats().apply_deleted == 1  # type: ignore[attr-defined]


def _sorted(items: Sequence[tuple[object, object]]) -> list[tuple[object, object]]:
    return sorted(items, key=lambda kv: repr(kv[0]))


@pytest.mark.parametrize("policy", [Policy.PAPER, Policy.FAIR_SHARE], ids=str)
@pytest.mark.parametrize("seed", [11, 12, 13])
def test_kernel_and_memory_backends_agree_under_packets_rebases_and_deletions(
    seed: int, policy: Policy, kernel_maps: object, xdp_test_program: object
) -> None:
    rng = random.Random(seed)
    p = random_params(rng)
    config = XdpConfig.from_params(p, policy=policy, warn_interval=MS, warn_per_cpu=10**6)
    kernel = kernel_maps
    kernel.set_config(config)  # type: ignore[attr-defined]
    memory = MemoryMaps(config)
    driver = KernelDriver(xdp_test_program, kernel)
    srcs = [f"10.8.0.{i}" for i in range(1, 9)] + [f"fd00::8:{i}" for i in range(1, 5)]
    dsts4, dsts6 = ["10.8.1.1", "10.8.1.2"], ["fd00::9:1"]
    now = BASE_TIME
    for step in range(1500):
        roll = rng.random()
        if roll < 0.9:
            src = rng.choice(srcs)
            dst = rng.choice(dsts4 if ":" not in src else dsts6)
            now += rng.choice([0, int(rng.expovariate(1 / (0.3 * MS))), rng.randint(0, p.t_t1 * 2)])
            pk = Packet(src, dst, now)
            assert driver.feed(pk) is memory.feed(src, dst, now), f"step {step} {pk}"
            continue
        pairs = dict(memory.read_pairs())
        dests = dict(memory.read_destinations())
        if roll < 0.97:
            ops = []
            for key, rec in rng.sample(sorted(pairs.items()), min(3, len(pairs))):
                expect = rec.ts1 if rng.random() < 0.85 else rec.ts1 - 1  # sometimes stale
                ts1 = rec.ts1 - rng.choice([0, 0, MS, 5 * MS])
                ops.append(
                    PairOp(
                        key,
                        expect,
                        rec.dc,
                        rng.randint(-rec.c // 2, 300),
                        ts1,
                        rec.ts2 + rng.choice([0, MS]),
                    )
                )
            if rng.random() < 0.5:
                new = PairKey.of(f"10.8.2.{rng.randint(1, 9)}", rng.choice(dsts4))
                ops.append(PairOp(new, None, 0, rng.randint(1, 500), now - 5 * MS, now))
            dest_ops = [
                DestOp(
                    dst,
                    rng.randint(-agg.c // 2, 2000),
                    rng.randint(0, 3),
                    agg.ts1 - rng.choice([0, MS]),
                    agg.ts2,
                )
                for dst, agg in rng.sample(sorted(dests.items()), min(2, len(dests)))
            ]
            if rng.random() < 0.2:
                dest_ops.append(
                    DestOp(PairKey.of("10.8.3.1", "10.8.3.1").dst, 3000, 2, now - MS, now)
                )
            assert kernel.apply(ops, dest_ops) == memory.apply(ops, dest_ops)  # type: ignore[attr-defined]
        else:
            keys = [k for k, _ in rng.sample(sorted(pairs.items()), min(2, len(pairs)))]
            keys.append(PairKey.of("10.8.9.9", dsts4[0]))
            assert kernel.delete_pairs(keys) == memory.delete_pairs(keys)  # type: ignore[attr-defined]
        assert _sorted(kernel.read_pairs()) == _sorted(memory.read_pairs())  # type: ignore[attr-defined]
        assert _sorted(kernel.read_destinations()) == _sorted(memory.read_destinations())  # type: ignore[attr-defined]
    assert _sorted(kernel.read_pairs()) == _sorted(memory.read_pairs())  # type: ignore[attr-defined]
    assert _sorted(kernel.read_destinations()) == _sorted(memory.read_destinations())  # type: ignore[attr-defined]
    assert kernel.read_stats() == memory.read_stats()  # type: ignore[attr-defined]


def test_incremental_reads_find_the_pairs_with_packets_and_look_up_by_key(
    xdp_test_program: object, kernel_maps: object
) -> None:
    """read_active_pairs (the numpy scan) and lookup_pairs agree with
    read_pairs: pairs the agent wrote are quiet, pairs with packets are not."""
    maps = kernel_maps
    maps.set_config(XdpConfig(t_f1=10**12, t_f2=10**12))  # type: ignore[attr-defined]
    maps.write_clock(offset=0, test_now=BASE_TIME)  # type: ignore[attr-defined]
    quiet = [PairKey.of(f"10.8.0.{i}", DST) for i in range(1, 40)]
    maps.apply(  # type: ignore[attr-defined]
        [PairOp(k, None, 0, 7, BASE_TIME - MS, BASE_TIME) for k in quiet]
    )
    filter_fd = xdp_test_program.filter_fd  # type: ignore[attr-defined]
    for src in ("10.8.1.1", "10.8.1.2"):
        libbpf.prog_test_run(filter_fd, ip_frame(src, DST), repeat=3)
    libbpf.prog_test_run(filter_fd, ip_frame("10.8.0.5", DST))  # one written pair gets a packet
    everything = dict(maps.read_pairs())  # type: ignore[attr-defined]
    active, total = maps.read_active_pairs()  # type: ignore[attr-defined]
    assert total == len(everything) == len(quiet) + 2
    assert dict(active) == {k: r for k, r in everything.items() if r.dc != 0 or r.mark != 0}
    assert set(dict(active)) == {
        PairKey.of("10.8.1.1", DST),
        PairKey.of("10.8.1.2", DST),
        PairKey.of("10.8.0.5", DST),
    }
    absent = PairKey.of("10.8.9.9", DST)
    wanted = [quiet[0], absent, quiet[4]]
    assert maps.lookup_pairs(wanted) == [  # type: ignore[attr-defined]
        (quiet[0], everything[quiet[0]]),
        (quiet[4], everything[quiet[4]]),
    ]
