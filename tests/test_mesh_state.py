"""Specification of the node's view of the table: the adapter over the scalar
GossipState moves exactly the rows the scalar table would, in columns."""

from __future__ import annotations

from dataclasses import replace

from xpro_mesh.core.algorithm import Params
from xpro_mesh.core.gossip_state import Digest, GossipState, LocalCount, MergeLimits
from xpro_mesh.core.rows import from_delta, to_delta
from xpro_mesh.mesh.state import GossipStateAdapter, ReplicatedState

S = 10**9
P = Params(t_t1=5 * S, t_t2=S, t_t3=S, t_t4=60 * S, t_f1=100, t_f2=1000, r=2)
NOW = 1_800_000_000 * S
VICTIM = b"\x00" * 10 + b"\xff\xff" + bytes([10, 20, 0, 2])


def bot(i: int) -> bytes:
    return b"\x00" * 10 + b"\xff\xff" + bytes([44, 1]) + i.to_bytes(2, "big")


def origin(name: str, rows: int) -> GossipState:
    state = GossipState(name, incarnation=1, params=P)
    for i in range(rows):
        state.record_local((bot(i), VICTIM), LocalCount(NOW, NOW + i, dc=1 + i % 5, mark=0))
    return state


def test_the_adapter_hands_out_the_scalar_tables_rows_as_columns() -> None:
    scalar = origin("p1", 50)
    adapter: ReplicatedState = GossipStateAdapter(scalar)
    peer = Digest("p2", {})
    assert adapter.digest() == scalar.digest()
    assert to_delta(adapter.delta_for(peer)) == to_delta(from_delta(scalar.delta_for(peer)))
    assert adapter.full_state().rows == 50


def test_a_delta_larger_than_one_merge_is_merged_in_pieces_with_the_same_result() -> None:
    source = origin("p1", 300)
    whole, pieces = GossipState("p2", 1, P), GossipState("p2", 1, P)
    delta = GossipStateAdapter(source).delta_for(whole.digest())
    big = MergeLimits(max_entries_per_message=1_000)
    small = replace(big, max_entries_per_message=64)
    one = GossipStateAdapter(whole).merge(delta, NOW, big)
    many = GossipStateAdapter(pieces).merge(delta, NOW, small)
    assert one.accepted == many.accepted == 300
    assert one.changed_pairs == many.changed_pairs
    mark = source.digest().versions["p1"]
    assert whole.digest().versions["p1"] == pieces.digest().versions["p1"] == mark
    assert whole.pair_views() == pieces.pair_views()
