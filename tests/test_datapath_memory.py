"""MemoryMaps, the kernel-free backend, is Algorithm 2 (the reference model)
packet by packet, and its apply keeps every packet counted after the read."""

from __future__ import annotations

import random
from collections.abc import MutableMapping

from datapath_support import BASE_TIME, MS, model_for, random_params, random_trace, replay_model
from hypothesis import given, settings
from hypothesis import strategies as st

from xpro_mesh.core.algorithm import LocalRecord, Params, destination_aggregate
from xpro_mesh.datapath.backend import ApplyReport, DestOp, MapBackend, PairKey, PairOp
from xpro_mesh.datapath.config import Policy, XdpConfig
from xpro_mesh.datapath.memory import MemoryMaps

SOURCES = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "2001:db8::1", "2001:db8::2"]
DESTS = {4: ["10.0.1.1", "10.0.1.2"], 6: ["2001:db8:1::1"]}


def _check_against_model(
    memory: MemoryMaps, table: MutableMapping[tuple[str, str], LocalRecord]
) -> None:
    assert dict(memory.read_pairs()) == {PairKey.of(s, d): r for (s, d), r in table.items()}
    assert dict(memory.read_destinations()) == {
        PairKey.of(d, d).dst: destination_aggregate(table, d) for d in {d for _s, d in table}
    }


@settings(max_examples=150, deadline=None)
@given(
    policy=st.sampled_from(list(Policy)),
    t_t1=st.integers(1, 30),
    t_t2=st.integers(0, 10),
    t_t3=st.integers(0, 10),
    t_f1=st.integers(1, 3000),
    t_f2=st.integers(1, 6000),
    steps=st.lists(
        st.tuples(
            st.integers(0, len(SOURCES) - 1),
            st.integers(0, 1),
            st.sampled_from([0, 1, 50_000, 500_000, 2_000_000, 40_000_000]),
        ),
        max_size=120,
    ),
)
def test_feed_is_the_reference_model(
    policy: Policy,
    t_t1: int,
    t_t2: int,
    t_t3: int,
    t_f1: int,
    t_f2: int,
    steps: list[tuple[int, int, int]],
) -> None:
    p = Params(
        t_t1=t_t1 * MS, t_t2=t_t2 * MS, t_t3=t_t3 * MS, t_t4=100 * MS, t_f1=t_f1, t_f2=t_f2, r=2
    )
    memory = MemoryMaps(XdpConfig.from_params(p, policy=policy))
    table: dict[tuple[str, str], LocalRecord] = {}
    model = model_for(policy)
    now = BASE_TIME
    for src_i, dst_i, gap in steps:
        src = SOURCES[src_i]
        dests = DESTS[4 if ":" not in src else 6]
        dst = dests[dst_i % len(dests)]
        now += gap
        assert memory.feed(src, dst, now) is model(table, src, dst, now, p)
    _check_against_model(memory, table)


def test_feed_is_the_reference_model_on_long_random_traces() -> None:
    for policy in Policy:
        for seed in range(1, 6):
            rng = random.Random(seed)
            p = random_params(rng)
            trace = random_trace(rng, p, policy, 3000)
            expected, table = replay_model(trace, p, policy)
            memory = MemoryMaps(XdpConfig.from_params(p, policy=policy))
            assert [memory.feed(pk.src, pk.dst, pk.now) for pk in trace] == expected
            _check_against_model(memory, table)


def test_memory_maps_is_a_map_backend() -> None:
    assert isinstance(MemoryMaps(), MapBackend)


def test_rebase_keeps_the_packets_counted_after_the_read() -> None:
    memory = MemoryMaps(XdpConfig(t_f1=10**9, t_f2=10**9))
    for i in range(5):
        memory.feed("10.0.0.1", "10.0.1.1", BASE_TIME + i)
    ((key, read),) = memory.read_pairs()
    for i in range(3):  # arrive while the agent merges
        memory.feed("10.0.0.1", "10.0.1.1", BASE_TIME + 10 + i)
    merged_c = 42  # the mesh-wide count of the read window
    report = memory.apply([PairOp(key, read.ts1, read.dc, merged_c - read.c, read.ts1, read.ts2)])
    assert report == ApplyReport(applied=1)
    ((_k, rec),) = memory.read_pairs()
    assert (rec.c, rec.dc, rec.mark) == (merged_c + 3, 3, 0)


def test_rebase_creates_pairs_and_destinations_known_only_to_the_mesh() -> None:
    memory = MemoryMaps()
    key = PairKey.of("10.0.0.9", "10.0.1.9")
    report = memory.apply(
        [PairOp(key, None, 0, 70, BASE_TIME, BASE_TIME + MS)],
        [DestOp(key.dst, 700, 4, BASE_TIME - MS, BASE_TIME + MS)],
    )
    assert report == ApplyReport(created=2)
    assert dict(memory.read_pairs())[key] == LocalRecord(BASE_TIME, BASE_TIME + MS, 70, 0, 0)
    ((_d, agg),) = memory.read_destinations()
    assert (agg.c, agg.clients, agg.ts1) == (700, 4, BASE_TIME - MS)
