"""MemoryMaps, the kernel-free backend, is Algorithm 2 (the reference model)
packet by packet when no agent view is written (the long random traces are in
test_datapath_differential.py; the contract with views in
test_datapath_contract.py)."""

from __future__ import annotations

from collections.abc import MutableMapping

from datapath_support import BASE_TIME, MS, model_for
from hypothesis import given, settings
from hypothesis import strategies as st

from xpro_mesh.core.algorithm import (
    AdmissionBudget,
    DestinationAggregate,
    LocalRecord,
    Params,
    Verdict,
    admission_aggregate,
)
from xpro_mesh.datapath.backend import MapBackend, PairKey
from xpro_mesh.datapath.config import Policy, XdpConfig
from xpro_mesh.datapath.memory import XDP_DROP, XDP_PASS, MemoryMaps
from xpro_mesh.datapath.policy import Action, PolicyStats
from xpro_mesh.datapath.structs import from_addr, to_addr

SOURCES = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "2001:db8::1", "2001:db8::2"]
DESTS = {4: ["10.0.1.1", "10.0.1.2"], 6: ["2001:db8:1::1"]}


def _check_against_model(
    memory: MemoryMaps,
    table: MutableMapping[tuple[str, str], LocalRecord],
    p: Params,
    budgets: dict[str, AdmissionBudget],
) -> None:
    """Every pair slot holds the model's window (ts1', ts2', c'), every
    destination slot lines 18-20 over its pairs (n: the established ones)."""
    read = memory.read_pairs()
    keys = memory.pair_keys(read.slots)
    assert {
        PairKey(bytes(k["src"]), bytes(k["dst"])): (int(r["ts1"]), int(r["ts2"]), int(r["c"]))
        for k, r in zip(keys, read.rows, strict=True)
    } == {PairKey.of(s, d): (r.ts1, r.ts2, r.c) for (s, d), r in table.items()}
    assert {
        bytes(r["dst"]): DestinationAggregate(
            int(r["ts1"]), int(r["ts2"]), int(r["c"]), int(r["n"])
        )
        for r in memory.read_dests().rows
    } == {
        PairKey.of(d, d).dst: admission_aggregate(table, budgets, d, p)
        for d in {d for _s, d in table}
    }


@settings(max_examples=150, deadline=None)
@given(
    policy=st.sampled_from(list(Policy)),
    t_t1=st.integers(1, 30),
    t_t2=st.integers(0, 10),
    t_t3=st.integers(0, 10),
    t_f1=st.integers(1, 3000),
    t_f2=st.integers(1, 6000),
    admit=st.tuples(st.integers(1, 6), st.integers(0, 3000), st.integers(0, 5)),
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
    admit: tuple[int, int, int],
    steps: list[tuple[int, int, int]],
) -> None:
    k, rate, burst = admit  # the fair-share admission budget (issue 11)
    p = Params(
        t_t1=t_t1 * MS,
        t_t2=t_t2 * MS,
        t_t3=t_t3 * MS,
        t_t4=100 * MS,
        t_f1=t_f1,
        t_f2=t_f2,
        r=2,
        admit_k=k,
        admit_rate=rate,
        admit_burst=burst,
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
        # 2001:db8::1 and ::2 are one client: the /64 (src_prefix6).
        client = str(from_addr(memory.get_config().client_of(to_addr(src))))
        assert memory.feed(src, dst, now) is model(table, client, dst, now, p)
    _check_against_model(memory, table, p, getattr(model, "budgets", {}))


def test_memory_maps_is_a_map_backend() -> None:
    assert isinstance(MemoryMaps(), MapBackend)


def test_twin_monitor_passes_what_it_judges_drop_and_allowed_packets_are_never_counted() -> None:
    """xpro_policy.h in the twin: an allowed source (by prefix) is neither
    judged nor counted; monitor passes a drop verdict and counts it twice
    (as the drop it would be, and as monitored); enforce drops it again."""
    maps = MemoryMaps(XdpConfig(t_t1=60 * 10**9, t_t2=10**9, t_t3=10**9, t_f1=10, t_f2=10**6))
    maps.policy.set_allow_list(["10.9.0.0/16"])
    heavy = [maps.feed_action("10.8.0.1", "10.6.0.1", BASE_TIME + i * 20 * MS) for i in range(100)]
    allowed = [
        maps.feed_action("10.9.3.4", "10.6.0.1", BASE_TIME + i * 20 * MS) for i in range(100)
    ]
    assert allowed == [(Verdict.PASS, XDP_PASS)] * 100
    assert maps.lookup_pair("10.9.3.4", "10.6.0.1") is None
    assert sum(a == XDP_DROP for _v, a in heavy) > 40
    stats = maps.read_stats()
    assert stats.passed + stats.drop_pair == 100
    maps.policy.set_action(Action.MONITOR, version=3)
    later = BASE_TIME + 2 * 10**9
    monitored = [maps.feed_action("10.8.0.1", "10.6.0.1", later + i * MS) for i in range(10)]
    assert monitored == [(Verdict.DROP_PAIR, XDP_PASS)] * 10
    assert maps.policy.stats() == PolicyStats(allowed=100, monitored=10)
    assert maps.read_stats().drop_pair == stats.drop_pair + 10
    maps.policy.set_action(Action.ENFORCE)
    assert maps.feed_action("10.8.0.1", "10.6.0.1", later + 20 * MS) == (
        Verdict.DROP_PAIR,
        XDP_DROP,
    )
    maps.policy.set_allow_list([])
    assert maps.policy.allow_list() == []
    assert maps.feed("10.9.3.4", "10.6.0.1", later) is Verdict.PASS
    assert maps.lookup_pair("10.9.3.4", "10.6.0.1") is not None  # counted from now on
