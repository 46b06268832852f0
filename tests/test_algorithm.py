"""Specification of the algorithm core: X-Pro's Algorithm 1 and 2, line by line."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xpro_mesh.algorithm import (
    LocalRecord,
    MasterRecord,
    Params,
    Verdict,
    filter_packet,
    sync_master,
)
from xpro_mesh.core.algorithm import destination_aggregate, filter_packet_fair_share

S = 10**9
P = Params(t_t1=2 * S, t_t2=S, t_t3=S, t_t4=10 * S, t_f1=100, t_f2=1000, r=2)


# --- Algorithm 1 -------------------------------------------------------------


def test_pair_only_in_master_is_copied_to_local_with_zero_delta_lines_26_28() -> None:
    master = MasterRecord(ts1=5, ts2=9, c=7)
    local, new_master = sync_master(None, master, P)
    assert local == LocalRecord(ts1=5, ts2=9, c=7, dc=0, mark=0)
    assert new_master == master


def test_pair_only_in_local_is_copied_to_master_lines_31_33() -> None:
    local = LocalRecord(ts1=5, ts2=9, c=7, dc=3, mark=1)
    new_local, master = sync_master(local, None, P)
    assert master == MasterRecord(ts1=5, ts2=9, c=7)
    assert new_local == local  # the paper does not touch L_DB here


def test_pair_in_neither_database_stays_absent() -> None:
    assert sync_master(None, None, P) == (None, None)


def test_restarted_local_window_replaces_master_lines_5_8() -> None:
    local = LocalRecord(ts1=100 * S, ts2=101 * S, c=4, dc=4, mark=1)
    master = MasterRecord(ts1=10 * S, ts2=20 * S, c=500)
    new_local, new_master = sync_master(local, master, P)
    assert new_master == MasterRecord(ts1=100 * S, ts2=101 * S, c=4)
    assert new_local == LocalRecord(ts1=100 * S, ts2=101 * S, c=4, dc=0, mark=0)


def test_marked_window_within_t_t1_of_master_start_is_merged_not_replaced() -> None:
    # mark' = 1 but ts1' - ts1 == T_T1 (not greater): lines 9-25 apply.
    local = LocalRecord(ts1=3 * S, ts2=4 * S, c=2, dc=2, mark=1)
    master = MasterRecord(ts1=1 * S, ts2=2 * S, c=10)
    new_local, new_master = sync_master(local, master, P)
    assert new_master == MasterRecord(ts1=1 * S, ts2=4 * S, c=12)
    assert new_local == LocalRecord(ts1=1 * S, ts2=4 * S, c=12, dc=0, mark=0)


def test_local_end_before_master_end_takes_master_end_lines_11_12() -> None:
    local = LocalRecord(ts1=2 * S, ts2=3 * S, c=5, dc=2, mark=0)
    master = MasterRecord(ts1=1 * S, ts2=6 * S, c=20)
    new_local, new_master = sync_master(local, master, P)
    assert new_local == LocalRecord(ts1=1 * S, ts2=6 * S, c=22, dc=0, mark=0)
    assert new_master == MasterRecord(ts1=1 * S, ts2=6 * S, c=22)


def test_window_past_t_t4_is_divided_by_r_lines_13_17() -> None:
    # ts2' - ts1 = 13 s > T_T4 = 10 s: ts1' = ts2' - 13 s // 2, c = c // 2.
    local = LocalRecord(ts1=5 * S, ts2=14 * S, c=30, dc=7, mark=0)
    master = MasterRecord(ts1=1 * S, ts2=12 * S, c=41)
    new_local, new_master = sync_master(local, master, P)
    ts1 = 14 * S - (13 * S) // 2
    assert new_master == MasterRecord(ts1=ts1, ts2=14 * S, c=41 // 2 + 7)
    assert new_local == LocalRecord(ts1=ts1, ts2=14 * S, c=41 // 2 + 7, dc=0, mark=0)


def test_decay_uses_integer_division_on_odd_values() -> None:
    p = Params(t_t1=S, t_t2=S, t_t3=S, t_t4=10, t_f1=1, t_f2=1, r=3)
    local = LocalRecord(ts1=0, ts2=100, c=0, dc=1, mark=0)
    master = MasterRecord(ts1=0, ts2=50, c=8)
    new_local, new_master = sync_master(local, master, p)
    assert new_master == MasterRecord(ts1=100 - 100 // 3, ts2=100, c=8 // 3 + 1)
    assert new_local is not None and new_local.ts1 == 67


def test_master_takes_later_local_end_lines_18_19() -> None:
    local = LocalRecord(ts1=2 * S, ts2=5 * S, c=9, dc=3, mark=0)
    master = MasterRecord(ts1=1 * S, ts2=4 * S, c=6)
    new_local, new_master = sync_master(local, master, P)
    assert new_master == MasterRecord(ts1=1 * S, ts2=5 * S, c=9)
    assert new_local == LocalRecord(ts1=1 * S, ts2=5 * S, c=9, dc=0, mark=0)


def test_long_local_window_moves_master_start_lines_22_23() -> None:
    # ts1' <= ts1 and ts2' - ts1' > T_T4, while ts2' - ts1 <= T_T4.
    local = LocalRecord(ts1=0, ts2=11 * S, c=50, dc=5, mark=0)
    master = MasterRecord(ts1=2 * S, ts2=11 * S, c=45)
    new_local, new_master = sync_master(local, master, P)
    assert new_master == MasterRecord(ts1=0, ts2=11 * S, c=50)
    assert new_local == LocalRecord(ts1=0, ts2=11 * S, c=50, dc=0, mark=0)


def _literal_algorithm_1(
    local: LocalRecord, master: MasterRecord, p: Params
) -> tuple[LocalRecord, MasterRecord]:
    """An independent, statement-for-statement transcription of lines 5-25,
    written with mutable variables as the paper's pseudo-code reads."""
    ts1_, ts2_, c_, dc_, mark_ = local.ts1, local.ts2, local.c, local.dc, local.mark
    ts1, ts2, c = master.ts1, master.ts2, master.c
    if mark_ == 1 and ts1_ - ts1 > p.t_t1:
        mark_ = 0
        dc_ = 0
        ts1 = ts1_
        ts2 = ts2_
        c = c_
    else:
        mark_ = 0
        if ts2_ < ts2:
            ts2_ = ts2
        elif ts2_ - ts1 > p.t_t4:
            ts1_ = ts2_ - (ts2_ - ts1) // p.r
            c = c // p.r
            ts1 = ts1_
            ts2 = ts2_
        else:
            ts2 = ts2_
        if ts1_ > ts1:
            ts1_ = ts1
        elif ts2_ - ts1_ > p.t_t4:
            ts1 = ts1_
        c_ = c + dc_
        c = c_
        dc_ = 0
    return LocalRecord(ts1_, ts2_, c_, dc_, mark_), MasterRecord(ts1, ts2, c)


times = st.integers(min_value=0, max_value=40 * S)
counts = st.integers(min_value=0, max_value=10**6)
params = st.builds(
    Params,
    t_t1=st.integers(0, 20 * S),
    t_t2=st.integers(0, 5 * S),
    t_t3=st.integers(0, 5 * S),
    t_t4=st.integers(0, 30 * S),
    t_f1=st.integers(0, 10**5),
    t_f2=st.integers(0, 10**6),
    r=st.integers(2, 16),
)


@st.composite
def local_records(draw: st.DrawFn) -> LocalRecord:
    ts1 = draw(times)
    return LocalRecord(
        ts1=ts1,
        ts2=ts1 + draw(st.integers(0, 20 * S)),
        c=draw(counts),
        dc=draw(counts),
        mark=draw(st.sampled_from([0, 1])),
    )


@st.composite
def master_records(draw: st.DrawFn) -> MasterRecord:
    ts1 = draw(times)
    return MasterRecord(ts1=ts1, ts2=ts1 + draw(st.integers(0, 20 * S)), c=draw(counts))


@settings(max_examples=2000)
@given(local=local_records(), master=master_records(), p=params)
def test_sync_master_equals_a_literal_transcription(
    local: LocalRecord, master: MasterRecord, p: Params
) -> None:
    assert sync_master(local, master, p) == _literal_algorithm_1(local, master, p)


@settings(max_examples=500)
@given(local=local_records(), master=master_records(), p=params)
def test_after_a_sync_both_hold_the_same_count_and_dc_is_zero(
    local: LocalRecord, master: MasterRecord, p: Params
) -> None:
    new_local, new_master = sync_master(local, master, p)
    assert new_local is not None and new_master is not None
    assert new_local.dc == 0 and new_local.mark == 0
    assert new_local.c == new_master.c


def test_params_reject_r_below_two_and_non_integers() -> None:
    with pytest.raises(ValueError, match="r must be"):
        Params(t_t1=1, t_t2=1, t_t3=1, t_t4=1, t_f1=1, t_f2=1, r=1)
    with pytest.raises(TypeError, match="t_f1"):
        Params(t_t1=1, t_t2=1, t_t3=1, t_t4=1, t_f1=1.5, t_f2=1, r=2)  # type: ignore[arg-type]


# --- Algorithm 2 -------------------------------------------------------------


def test_first_packet_of_a_pair_opens_a_window_and_passes() -> None:
    table: dict[tuple[str, str], LocalRecord] = {}
    assert filter_packet(table, "a", "d", 7 * S, P) is Verdict.PASS
    assert table[("a", "d")] == LocalRecord(ts1=7 * S, ts2=7 * S, c=1, dc=1, mark=0)


def test_verdict_values_are_the_contract_strings() -> None:
    assert [v.value for v in Verdict] == ["pass", "drop_pair", "drop_dest"]
    assert isinstance(Verdict.DROP_PAIR, str) and Verdict("drop_pair") is Verdict.DROP_PAIR


def test_idle_pair_restarts_its_window_and_is_marked_and_known() -> None:
    table = {("a", "d"): LocalRecord(ts1=0, ts2=S, c=50, dc=3, mark=0)}
    filter_packet(table, "a", "d", S + P.t_t1 + 1, P)
    assert table[("a", "d")] == LocalRecord(
        ts1=S + P.t_t1 + 1,
        ts2=S + P.t_t1 + 1,
        c=1,
        dc=1,
        mark=1,
        known=True,
        gap_us=(P.t_t1 + 1) // 1000,
    )


def test_pair_idle_exactly_t_t1_is_not_restarted() -> None:
    table = {("a", "d"): LocalRecord(ts1=0, ts2=S, c=5, dc=0, mark=0)}
    filter_packet(table, "a", "d", S + P.t_t1, P)
    assert table[("a", "d")] == LocalRecord(ts1=0, ts2=S + P.t_t1, c=6, dc=1, mark=0)


def test_pair_over_t_f1_is_dropped_after_t_t2_and_still_counted() -> None:
    # 300 packets over 1.5 s = 200 pps > T_F1 = 100, window > T_T2 = 1 s.
    table = {("a", "d"): LocalRecord(ts1=0, ts2=S, c=299, dc=0, mark=0)}
    assert filter_packet(table, "a", "d", 3 * S // 2, P) is Verdict.DROP_PAIR
    assert table[("a", "d")].c == 300


def test_fast_pair_within_t_t2_is_not_judged_yet() -> None:
    table = {("a", "d"): LocalRecord(ts1=0, ts2=0, c=10**6, dc=0, mark=0)}
    assert filter_packet(table, "a", "d", P.t_t2, P) is Verdict.PASS


def test_rate_exactly_at_t_f1_passes() -> None:
    # c = 200 over 2 s is exactly 100 pps: not over the threshold.
    table = {("a", "d"): LocalRecord(ts1=0, ts2=S, c=199, dc=0, mark=0)}
    assert filter_packet(table, "a", "d", 2 * S, P) is Verdict.PASS


def test_destination_over_t_f2_drops_every_client_paper_policy() -> None:
    # 20 slow clients (75 pps each) sum to 1500 pps towards d > T_F2 = 1000.
    table = {
        (f"bot{i}", "d"): LocalRecord(ts1=0, ts2=2 * S, c=150, dc=0, mark=0) for i in range(20)
    }
    table[("good", "d")] = LocalRecord(ts1=0, ts2=2 * S, c=2, dc=0, mark=0)
    assert filter_packet(table, "good", "d", 2 * S, P) is Verdict.DROP_DEST
    assert filter_packet(table, "new", "d", 2 * S, P) is Verdict.DROP_DEST
    # Another destination is untouched.
    assert filter_packet(table, "good", "e", 2 * S, P) is Verdict.PASS


def test_destination_aggregate_sums_local_counts_over_all_clients() -> None:
    table = {
        ("a", "d"): LocalRecord(ts1=5, ts2=9, c=3, dc=1, mark=0),
        ("b", "d"): LocalRecord(ts1=2, ts2=7, c=4, dc=4, mark=1),
        ("a", "e"): LocalRecord(ts1=0, ts2=99, c=100, dc=0, mark=0),
    }
    agg = destination_aggregate(table, "d")
    assert agg is not None
    assert (agg.ts1, agg.ts2, agg.c, agg.clients) == (2, 9, 7, 2)
    assert destination_aggregate(table, "zzz") is None


def test_fair_share_keeps_slow_clients_and_drops_the_flooders() -> None:
    table = {
        (f"bot{i}", "d"): LocalRecord(ts1=0, ts2=2 * S, c=150, dc=0, mark=0) for i in range(20)
    }
    table[("good", "d")] = LocalRecord(ts1=0, ts2=2 * S, c=2, dc=0, mark=0)
    # n(D) = 21 clients, fair share ~47.6 pps: the good client (1.5 pps) passes.
    assert filter_packet_fair_share(table, "good", "d", 2 * S, P) is Verdict.PASS
    assert filter_packet_fair_share(table, "bot3", "d", 2 * S, P) is Verdict.DROP_DEST


def test_fair_share_uses_the_mesh_wide_client_count_when_given() -> None:
    table = {("a", "d"): LocalRecord(ts1=0, ts2=2 * S, c=2999, dc=0, mark=0)}
    # Alone, a is the only client: its rate (1500 pps) is D's rate -> dropped.
    p = Params(t_t1=2 * S, t_t2=S, t_t3=S, t_t4=10 * S, t_f1=10**6, t_f2=1000, r=2)
    assert filter_packet_fair_share(dict(table), "a", "d", 2 * S, p) is Verdict.DROP_DEST
    # Told that 1000 clients are active mesh-wide, the share is 1 pps.
    table2 = {("a", "d"): LocalRecord(ts1=0, ts2=2 * S, c=2, dc=0, mark=0)}
    table2[("b", "d")] = LocalRecord(ts1=0, ts2=2 * S, c=2997, dc=0, mark=0)
    assert filter_packet_fair_share(table2, "a", "d", 2 * S, p, clients=2) is Verdict.PASS
    assert filter_packet_fair_share(table2, "a", "d", 2 * S, p, clients=10_000) is Verdict.DROP_DEST


def _literal_algorithm_2(
    table: dict[tuple[int, int], list[int]], src: int, dst: int, t: int, p: Params
) -> str:
    """An independent transcription of Algorithm 2 over a dict of lists."""
    if (src, dst) in table:
        ts1_, ts2_, c_, dc_, mark_ = table[(src, dst)]
        if t - ts2_ > p.t_t1:
            ts1_, c_, dc_, mark_ = t, 0, 0, 1
    else:
        ts1_, ts2_, c_, dc_, mark_ = t, t, 0, 0, 0
    c_ += 1
    dc_ += 1
    ts2_ = t
    table[(src, dst)] = [ts1_, ts2_, c_, dc_, mark_]
    if ts2_ - ts1_ > p.t_t2 and c_ * 10**9 > p.t_f1 * (ts2_ - ts1_):
        return "drop_pair"
    recs = [v for (_s, d), v in table.items() if d == dst]
    ts1_d = min(v[0] for v in recs)
    ts2_d = max(v[1] for v in recs)
    c_d = sum(v[2] for v in recs)
    if ts2_d - ts1_d > p.t_t3 and c_d * 10**9 > p.t_f2 * (ts2_d - ts1_d):
        return "drop_dest"
    return "pass"


@settings(max_examples=300)
@given(
    p=params,
    trace=st.lists(
        st.tuples(st.integers(0, 5), st.integers(0, 2), st.integers(0, 3 * S)),
        min_size=1,
        max_size=80,
    ),
)
def test_filter_packet_equals_a_literal_transcription(
    p: Params, trace: list[tuple[int, int, int]]
) -> None:
    model: dict[tuple[int, int], LocalRecord] = {}
    literal: dict[tuple[int, int], list[int]] = {}
    now = 0
    for src, dst, gap in trace:
        now += gap
        got = filter_packet(model, src, dst, now, p)
        assert got.value == _literal_algorithm_2(literal, src, dst, now, p)
    assert {k: [v.ts1, v.ts2, v.c, v.dc, v.mark] for k, v in model.items()} == literal


def test_one_fold_of_a_destination_for_the_table_the_mesh_and_the_master() -> None:
    from xpro_mesh.core.algorithm import fold_destination, fold_destinations

    table = {
        ("a", "d"): LocalRecord(ts1=4, ts2=9, c=5, dc=0, mark=0),
        ("b", "d"): LocalRecord(ts1=2, ts2=6, c=2, dc=1, mark=0),
        ("a", "e"): LocalRecord(ts1=1, ts2=3, c=8, dc=0, mark=0),
    }
    folds = fold_destinations((dst, rec) for (_src, dst), rec in table.items())
    assert folds == {d: destination_aggregate(table, d) for d in ("d", "e")}
    assert folds["d"] == fold_destination([table[("a", "d")], table[("b", "d")]])
    assert (folds["d"].clients, folds["e"].clients) == (2, 1)  # n(D)
    assert fold_destination([]) is None and fold_destinations([]) == {}
