"""Specification of the columnar pieces: the key index, the vectorised
Algorithm 1 and its catch-up, the folds with exact int64 sums, the merge
rules as columns, expiry and id reuse. (Equality with the scalar reference
as a whole: tests/test_table_differential.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from xpro_mesh.core.algorithm import NS_PER_S, Params
from xpro_mesh.core.gossip_state import (
    Coverage,
    Delta,
    Digest,
    GossipState,
    LocalCount,
    MergeLimits,
    OriginEntry,
    PairEntry,
    Rejection,
    chunk_delta,
)
from xpro_mesh.core.keys import KeyIndex, pair_words
from xpro_mesh.core.rows import INT_MAX, from_delta, to_delta
from xpro_mesh.core.table import LocalSyncs, PairTable, _absurd, chunk

S = NS_PER_S
P = Params(t_t1=2 * S, t_t2=S, t_t3=S, t_t4=10 * S, t_f1=100, t_f2=1000, r=2)
NOW = 10**6 * S
V4 = b"\0" * 10 + b"\xff\xff"


def client(i: int) -> bytes:
    return V4 + i.to_bytes(4, "big")


def dest(i: int) -> bytes:
    return V4 + bytes([198, 18, 0, i])


def cols(*values: object, dtype: str = "int64") -> np.ndarray:
    return np.array(values, dtype=dtype)


def count(
    table: PairTable, pairs: list[tuple[bytes, bytes]], ts1: int, ts2: int, dc: int, **kw: bool
) -> LocalSyncs:
    n = len(pairs)
    src = np.array([p[0] for p in pairs], dtype="S16")
    dst = np.array([p[1] for p in pairs], dtype="S16")
    z = np.zeros(n, dtype=np.int64)
    return table.record_local(src, dst, z + ts1, z + ts2, z + dc, z, **kw)


# --- the key index ---------------------------------------------------------------


def test_equal_keys_in_one_call_get_one_id() -> None:
    index = KeyIndex(2, capacity=4)
    keys = np.array([[1, 2], [3, 4], [1, 2], [1, 2]], dtype=np.uint64)
    ids, created = index.get_or_create(keys)
    assert ids[0] == ids[2] == ids[3] != ids[1]
    assert created.sum() == 2 and len(index) == 2


def test_removed_keys_miss_and_their_ids_are_handed_out_again() -> None:
    index = KeyIndex(2)
    ids, _ = index.get_or_create(np.arange(20, dtype=np.uint64).reshape(10, 2))
    index.remove(ids[:3])
    assert (index.lookup(np.arange(6, dtype=np.uint64).reshape(3, 2)) == -1).all()
    again, _ = index.get_or_create(np.array([[100, 101], [102, 103], [104, 105]], dtype=np.uint64))
    assert set(again.tolist()) == set(ids[:3].tolist())
    assert (index.lookup(np.arange(6, 20, dtype=np.uint64).reshape(7, 2)) == ids[3:]).all()


def test_index_grows_past_its_capacity_and_keeps_every_key() -> None:
    index = KeyIndex(4, capacity=16)
    rng = np.random.default_rng(3)
    keys = rng.integers(0, 2**63, (5_000, 4)).astype(np.uint64)
    ids, _ = index.get_or_create(keys)
    assert len(set(ids.tolist())) == 5_000 and index.capacity >= 5_000
    assert (index.lookup(keys) == ids).all()


def test_a_batch_of_new_keys_gets_a_run_of_ids_in_row_order() -> None:
    index = KeyIndex(4, capacity=16)
    rng = np.random.default_rng(5)
    keys = rng.integers(0, 2**63, (5_000, 4)).astype(np.uint64)
    ids, _ = index.get_or_create(np.concatenate([keys, keys[::7]]))  # repeats too
    assert ids[:5_000].tolist() == list(range(5_000))
    assert (ids[5_000:] == ids[:5_000:7]).all()


def test_a_lookup_over_a_run_of_ids_finds_the_keys_that_moved_out_of_it() -> None:
    """The run check is exact: keys whose ids left the run (removed, reused
    by other keys, or never in it) are found by probing, or missed."""
    index = KeyIndex(4, capacity=16)
    rng = np.random.default_rng(6)
    keys = rng.integers(0, 2**63, (1_000, 4)).astype(np.uint64)
    ids, _ = index.get_or_create(keys)
    index.remove(ids[10:20])
    other = rng.integers(0, 2**63, (5, 4)).astype(np.uint64)
    reused, _ = index.get_or_create(other)  # takes five of the freed ids
    wanted = keys.copy()
    wanted[500] = other[0]  # a key held under an id outside its place in the run
    found = index.lookup(wanted)
    expect = ids.copy()
    expect[10:20] = -1
    expect[500] = reused[0]
    assert found.tolist() == expect.tolist()


def test_addresses_ending_in_nul_bytes_are_keys_of_their_own() -> None:
    """numpy strips trailing NULs from S16 items; the index reads raw bytes."""
    a = np.array([V4 + b"\x0a\0\0\0", V4 + b"\x0a\0\0\x01", b"\0" * 16], dtype="S16")
    d = np.array([dest(0)] * 3, dtype="S16")
    index = KeyIndex(4)
    ids, _ = index.get_or_create(pair_words(a, d))
    assert len(set(ids.tolist())) == 3


# --- Algorithm 1 in columns --------------------------------------------------------


def test_record_local_issues_versions_in_input_order_and_only_for_changed_rows() -> None:
    table = PairTable("a", 1, P)
    pairs = [(client(i), dest(0)) for i in range(4)]
    first = count(table, pairs, NOW - S, NOW, 1)
    assert first.seq.tolist() == [1, 2, 3, 4] and first.changed.all()
    again = count(table, [*pairs[:2], (client(9), dest(1))], NOW - S, NOW, 0)
    assert again.changed.tolist() == [False, False, True]
    assert again.seq.tolist() == [1, 2, 5] and table.clock == (1, 5)


def test_record_local_refuses_the_same_pair_twice_and_changes_nothing() -> None:
    table = PairTable("a", 1, P)
    p = (client(1), dest(0))
    with pytest.raises(ValueError, match="same pair twice"):
        count(table, [p, p], NOW - S, NOW, 1)
    assert table.num_pairs == 0 and len(table) == 0 and table.clock == (1, 0)


def test_record_local_refuses_an_inconsistent_window_by_row() -> None:
    table = PairTable("a", 1, P)
    with pytest.raises(ValueError, match="row 0"):
        count(table, [(client(1), dest(0))], NOW, NOW - 1, 1)


def test_catch_up_shrinks_a_long_window_to_t_t4_as_the_map_sync_replays_it() -> None:
    """A window 40 x T_T4 long: each packet-less sync divides it by r (Alg. 1
    lines 13-17) until it is within T_T4; every step takes a version."""
    ref = GossipState("a", 1, P)
    table = PairTable("a", 1, P)
    p = (client(1), dest(0))
    ref.record_local(p, LocalCount(NOW - 40 * P.t_t4, NOW, 1000, 0))
    count(table, [p], NOW - 40 * P.t_t4, NOW, 1000)
    from xpro_mesh.agent.mapsync import _sync_own

    assert _sync_own(ref.record_local, p, LocalCount(NOW - S, NOW, 8, 0), P.t_t4)
    got = count(table, [p], NOW - S, NOW, 8, catch_up=True)
    row = ref.own_entry(p)
    assert row is not None and row.ts2 - row.ts1 <= P.t_t4
    assert (int(got.ts1[0]), int(got.c[0]), (int(got.inc[0]), int(got.seq[0]))) == (
        row.ts1,
        row.c,
        row.version,
    )
    assert row.version[1] > 2  # several halvings, one version each


# --- the folds -----------------------------------------------------------------------


def merged(rows: list[PairEntry], table: PairTable | None = None) -> PairTable:
    table = table or PairTable("me", 1, P)
    report = table.merge(
        from_delta(Delta(entries=tuple(rows))), NOW, MergeLimits(max_rate_pps=2**62)
    )
    assert report.rejected == {}, report.rejected
    return table


def test_pair_view_counts_rows_whose_ts2_is_within_t_t1_of_the_newest_boundary_included() -> None:
    p = (client(1), dest(0))
    table = merged(
        [
            PairEntry(p, "x", OriginEntry(NOW - 5 * S, NOW, 10, (1, 1))),
            PairEntry(p, "y", OriginEntry(NOW - 4 * S, NOW - P.t_t1, 20, (1, 1))),
            PairEntry(p, "z", OriginEntry(NOW - 9 * S, NOW - P.t_t1 - 1, 40, (1, 1))),
        ]
    )
    v = table.pair_views()
    assert (int(v.ts1[0]), int(v.ts2[0]), int(v.c[0]), int(v.origins[0])) == (
        NOW - 5 * S,
        NOW,
        30,
        2,
    )


def test_sums_past_2_63_are_exact_not_wrapped() -> None:
    rows = [
        PairEntry((client(i), dest(0)), o, OriginEntry(NOW - 3 * S, NOW, INT_MAX, (1, 1)))
        for i in range(3)
        for o in ("x", "y")
    ]
    table = merged(rows)
    views = table.pair_views()
    assert views.c.tolist() == [INT_MAX] * 3 and views.exact_c() == [2 * INT_MAX] * 3
    d = table.destination_views()
    assert d.exact_c() == [6 * INT_MAX] and d.clients.tolist() == [3]


def test_destination_views_of_chosen_destinations_fold_only_their_pairs() -> None:
    table = PairTable("me", 1, P)
    count(
        table, [(client(1), dest(0)), (client(2), dest(0)), (client(1), dest(1))], NOW - S, NOW, 4
    )
    ids = table.destination_ids(np.array([dest(1)], dtype="S16"))
    d = table.destination_views(ids)
    assert d.dst.tolist() == [dest(1)] and d.c.tolist() == [4]
    assert d.clients.tolist() == [0]  # n(D): established pairs; a window of T_T2 is not


# --- the merge rules in columns ---------------------------------------------------------


def test_rate_bound_is_exact_where_products_pass_2_64() -> None:
    c = cols(INT_MAX, INT_MAX, 2**40, 0)
    ts1 = cols(0, 0, 0, 0)
    ts2 = cols(INT_MAX, 9 * S, INT_MAX, 0)
    for rate, slack in ((2**62, S), (150_000_000, S), (1, 0), (2**63 + 5, 2**64)):
        want = [
            ci * S > rate * (b - a + slack)
            for ci, a, b in zip(c.tolist(), ts1.tolist(), ts2.tolist(), strict=True)
        ]
        assert _absurd(c, ts1, ts2, rate, slack).tolist() == want


def test_a_peer_row_is_kept_only_when_its_version_is_higher() -> None:
    p = (client(1), dest(0))
    table = merged([PairEntry(p, "x", OriginEntry(NOW - S, NOW, 5, (2, 7)))])
    for version, kept in (((2, 7), 5), ((2, 6), 5), ((1, 99), 5), ((2, 8), 6)):
        table.merge(
            from_delta(Delta(entries=(PairEntry(p, "x", OriginEntry(NOW - S, NOW, 6, version)),))),
            NOW,
        )
        assert [pe.entry.c for pe in table.entries()] == [kept]


def test_a_full_table_refuses_new_pairs_in_arrival_order_and_withholds_the_claim() -> None:
    table = PairTable("me", 1, P)
    rows = tuple(
        PairEntry((client(i), dest(0)), "x", OriginEntry(NOW - S, NOW, 1, (1, i + 1)))
        for i in range(5)
    )
    delta = from_delta(Delta(entries=rows, coverage=(Coverage("x", (0, 0), (1, 5)),)))
    report = table.merge(delta, NOW, MergeLimits(max_pairs=3))
    assert report.accepted == 3 and report.rejected == {Rejection.TABLE_FULL: 2}
    assert sorted(table.pairs_of(report.changed_ids)) == sorted(pe.pair for pe in rows[:3])
    assert report.watermarks_advanced == 0 and "x" not in table.digest().versions


def test_restart_adopts_rows_of_the_earlier_life_for_pairs_not_counted_since() -> None:
    before = PairTable("me", 1, P)
    a, b = (client(1), dest(0)), (client(2), dest(0))
    count(before, [a, b], NOW - S, NOW, 7)
    peer = GossipState("peer", 1, P)
    peer.merge(to_delta(before.full_state()), NOW)
    after = PairTable("me", 2, P)
    count(after, [b], NOW - S, NOW, 1)
    report = after.merge(from_delta(peer.delta_for(Digest("me", after.digest().versions))), NOW)
    assert report.adopted == 1 and report.rejected == {Rejection.OWN_ORIGIN: 1}
    rows = {pe.pair: pe.entry for pe in after.entries()}
    assert rows[a].c == 7 and rows[a].version == (2, 2) and rows[b].c == 1


def test_a_version_of_ours_we_never_issued_moves_our_clock_past_it() -> None:
    table = PairTable("me", 1, P)
    p = (client(1), dest(0))
    count(table, [p], NOW - S, NOW, 3)
    forged = PairEntry(p, "me", OriginEntry(NOW - S, NOW, 999, (1, 50)))
    report = table.merge(from_delta(Delta(entries=(forged,))), NOW)
    assert report.rejected == {Rejection.OWN_CONFLICT: 1}
    assert [(pe.entry.c, pe.entry.version) for pe in table.entries()] == [(3, (1, 51))]
    assert table.digest().versions["me"] == (1, 51)


# --- ageing, ids, changes ----------------------------------------------------------------


def test_expired_pairs_give_their_ids_back_and_take_changed_names_them() -> None:
    table = PairTable("me", 1, P, capacity=4)
    old = [(client(i), dest(0)) for i in range(3)]
    count(table, old, NOW - S, NOW, 1)
    assert table.take_changed() is None  # the first call: everything
    report = table.expire(NOW + table.horizon_ns + 1)
    assert report.dropped == 3 and table.num_pairs == 0
    changed = table.take_changed()
    assert changed is not None and len(changed.ids) == 0
    removed = zip(changed.removed_src.tolist(), changed.removed_dst.tolist(), strict=True)
    assert sorted((s.ljust(16, b"\0"), d.ljust(16, b"\0")) for s, d in removed) == sorted(old)
    later = NOW + 10 * table.horizon_ns
    new = count(table, [(client(7), dest(1))], later - S, later, 1)
    assert int(new.ids[0]) in range(3)  # a freed id, not a fresh one


def test_chunks_equal_the_scalar_chunking() -> None:
    table = PairTable("me", 1, P)
    count(table, [(client(i), dest(i % 3)) for i in range(10)], NOW - S, NOW, 2)
    peer = merged(
        [
            PairEntry((client(i), dest(0)), "x", OriginEntry(NOW - S, NOW, 1, (1, i + 1)))
            for i in range(6)
        ],
        table,
    )
    whole = peer.full_state()
    for size in (1, 3, 4, 16):
        assert [to_delta(c) for c in chunk(whole, size)] == list(chunk_delta(to_delta(whole), size))


def test_table_bench_prints_every_figure_with_its_target_as_json(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import json

    from xpro_mesh.bench.table import main

    assert main(["--pairs", "300", "--reps", "1", "--scalar-max", "300", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    (result,) = doc["results"]
    assert result["pairs"] == 300 and result["rows"] == 900
    assert result["busy_shape"]["own_changed"] == 300 and result["busy_shape"]["delta_rows"] == 300
    assert {c["what"].split(" at ")[0] for c in doc["checks"]} == {
        "busy cycle",
        "memory per (pair, origin) row",
    }
    assert len(doc["missed"]) == sum(not c["met"] for c in doc["checks"])
