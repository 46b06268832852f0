"""select_vouched (issue 13), as properties: it never vouches a pair over the
fair share in any origin's rows, nor one seen only at this proxy, returns at
most max_pairs, and is deterministic (the rows' order does not matter). The
bloom's hash is the kernel's, bit for bit (a vector computed from the C
definition in bpf/xpro_vouch.h)."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from xpro_mesh.core.gossip_state import Delta, MergeLimits, OriginEntry, PairEntry
from xpro_mesh.core.params import Params
from xpro_mesh.core.rows import from_delta
from xpro_mesh.core.table import PairTable
from xpro_mesh.core.vouch import NS_PER_S, Row, select_vouched
from xpro_mesh.datapath.vouch_bloom import bloom_test, bloom_words, hash_many, vouch_hash

KEYS = [bytes([i]) * 16 + bytes([200 + i % 3]) * 16 for i in range(12)]


def rows_from(origins: list[str], min_count: int) -> st.SearchStrategy[list[Row]]:
    """Up to 40 rows of the pairs of KEYS from ``origins``."""
    return st.lists(
        st.builds(
            Row,
            st.sampled_from(KEYS),
            st.sampled_from(origins),
            st.integers(min_count, 400),
            st.integers(0, 5 * NS_PER_S),
        ),
        max_size=40,
    )


rows_st = rows_from(["a", "b", "c"], 0)
ARGS = {"local": "a", "t_f2": 100, "t_t2": NS_PER_S, "admit_k": 5}


@settings(max_examples=300, deadline=None)
@given(rows_st, st.integers(0, 15), st.randoms())
def test_never_over_the_share_bounded_deterministic(
    rows: list[Row], max_pairs: int, rnd: random.Random
) -> None:
    got = select_vouched(rows, max_pairs=max_pairs, **ARGS)  # type: ignore[arg-type]
    assert len(got) <= max_pairs and got == sorted(set(got))
    shuffled = list(rows)
    rnd.shuffle(shuffled)
    assert select_vouched(shuffled, max_pairs=max_pairs, **ARGS) == got  # type: ignore[arg-type]
    est = [r for r in rows if r.c >= 5 and r.window_ns > NS_PER_S]
    for k in got:
        n = len({r.key for r in est if r.key[16:] == k[16:]})
        mine = [r for r in est if r.key == k]
        assert all(r.c * NS_PER_S * n <= 100 * r.window_ns for r in mine)  # under the share
        assert any(r.origin != "a" for r in mine)  # established elsewhere


def test_a_pair_established_elsewhere_under_the_share_is_vouched_a_bot_is_not() -> None:
    good, bot = KEYS[0], KEYS[3]  # same destination
    rows = [Row(good, "b", 10, 2 * NS_PER_S), Row(bot, "b", 1000, 2 * NS_PER_S)]
    assert select_vouched(rows, max_pairs=10, **ARGS) == [good]  # type: ignore[arg-type]
    assert select_vouched(rows, max_pairs=0, **ARGS) == []  # type: ignore[arg-type]


def test_the_hash_is_the_kernels() -> None:
    # xpro_vouch_hash of 32 zero bytes and of bytes 0..31, by the C steps.
    assert vouch_hash(bytes(32)) == 0
    k = bytes(range(32))
    m = (1 << 64) - 1
    w = [int.from_bytes(k[i : i + 8], "little") for i in range(0, 32, 8)]
    h = (w[0] * 0x9E3779B97F4A7C15) & m
    h = ((h ^ w[1]) * 0xC2B2AE3D27D4EB4F) & m
    h ^= h >> 31
    h = ((h ^ w[2]) * 0x9E3779B97F4A7C15) & m
    h = ((h ^ w[3]) * 0xC2B2AE3D27D4EB4F) & m
    h ^= h >> 29
    assert vouch_hash(k) == h
    import numpy as np

    keys = [bytes(random.Random(i).randbytes(32)) for i in range(200)]
    vec = hash_many(np.frombuffer(b"".join(keys), dtype=np.uint8))
    assert [int(x) for x in vec] == [vouch_hash(x) for x in keys]
    words = bloom_words(keys)
    assert all(bloom_test(words, x) for x in keys)


remote_rows_st = rows_from(["b", "c", "d"], 1)


@settings(max_examples=100, deadline=None)
@given(remote_rows_st, st.integers(0, 15))
def test_the_mesh_tables_selection_equals_the_reference(rows: list[Row], max_pairs: int) -> None:
    latest = {(r.key, r.origin): r for r in rows}  # one row per (pair, origin), as a table holds
    now = 10**6 * NS_PER_S
    entries = tuple(
        PairEntry(
            (r.key[:16], r.key[16:]), r.origin, OriginEntry(now - r.window_ns, now, r.c, (1, i + 1))
        )
        for i, r in enumerate(latest.values())
    )
    table = PairTable(
        "a",
        1,
        Params(
            t_t1=2 * NS_PER_S,
            t_t2=NS_PER_S,
            t_t3=NS_PER_S,
            t_t4=10 * NS_PER_S,
            t_f1=1000,
            t_f2=100,
            r=2,
            admit_k=5,
        ),
    )
    report = table.merge(from_delta(Delta(entries=entries)), now, MergeLimits(max_rate_pps=2**62))
    assert report.rejected == {}, report.rejected
    want = select_vouched(list(latest.values()), max_pairs=max_pairs, **ARGS)  # type: ignore[arg-type]
    assert table.vouched(max_pairs) == want
