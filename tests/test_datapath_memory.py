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
    admission_aggregate,
)
from xpro_mesh.datapath.backend import MapBackend, PairKey
from xpro_mesh.datapath.config import Policy, XdpConfig
from xpro_mesh.datapath.memory import MemoryMaps
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
