"""Specification of what a hostile peer or client cannot do (issue 12): each
test is one finding of docs/threat-model.md, reproduced with the datagram or
request that exposed it, and fails on the code that had the hole."""

from __future__ import annotations

import random

import numpy as np

from xpro_mesh.core.rows import ADDRESS_DTYPE, ColumnarDelta, RowBatch
from xpro_mesh.mesh import wire
from xpro_mesh.mesh.columns import MAX_VERSION
from xpro_mesh.mesh.membership import MAX_INCARNATION, Membership, MemberState, MemberUpdate
from xpro_mesh.mesh.messages import Ping

U64_MAX = 2**64 - 1
A = ("10.0.0.1", 7946)
B = ("10.0.0.2", 7946)


def one_row(origin: str, inc: int, seq: int) -> ColumnarDelta:
    a = np.zeros(1, dtype=ADDRESS_DTYPE)
    t = np.array([1_800_000_000 * 10**9], dtype=np.int64)
    v = np.array([1], dtype=np.int64)
    batch = RowBatch(
        origin, a, a.copy(), t, t.copy(), v, np.array([inc], np.int64), np.array([seq], np.int64)
    )
    return ColumnarDelta(batches=(batch,))


# --- overflow -----------------------------------------------------------------------


def test_a_member_record_with_an_incarnation_past_the_bound_is_refused_at_decode() -> None:
    """One Ping carrying dead(x, 2^64 - 1) made x's refutation overflow the encoder."""
    dead = MemberUpdate("x", B, U64_MAX, MemberState.DEAD)
    ping = wire.encode(Ping(1, "x", MemberUpdate("a", A, 1, MemberState.ALIVE), (dead,)))
    assert isinstance(wire.decode(ping), wire.WireError)


def test_a_refutation_at_the_bound_saturates_and_still_encodes() -> None:
    x = Membership("x", B, incarnation=1, now_ns=0, rng=random.Random(0))
    x.on_update([MemberUpdate("x", B, MAX_INCARNATION, MemberState.DEAD)], 0)
    me = x.self_update()
    assert me.state is MemberState.ALIVE and me.incarnation == MAX_INCARNATION
    ping = wire.decode(wire.encode(Ping(1, "a", me, ())))
    assert isinstance(ping, Ping) and ping.sender.incarnation == MAX_INCARNATION


def test_a_row_version_past_the_bound_is_refused_at_decode() -> None:
    """A Delta holding a row of the receiver's own origin at a version near
    2^63 set its clock there, and its next sequence number overflowed."""
    for inc, seq in ((2**63 - 1, 2**63 - 1), (1, MAX_VERSION + 1), (MAX_VERSION + 1, 1)):
        assert isinstance(wire.decode(wire.encode(one_row("me", inc, seq))), wire.WireError)
    back = wire.decode(wire.encode(one_row("me", MAX_VERSION, MAX_VERSION)))
    assert isinstance(back, ColumnarDelta) and back.rows == 1
