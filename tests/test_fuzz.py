"""Specification of the receive path under hostile input: a short run of the
fuzz bench (xpro_mesh.bench.fuzz) and a hypothesis search, both through a
real node. No input escapes ``receive``; none it rejects changes its state."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xpro_mesh.bench.fuzz import ME, NOW, RING, _addr, _corpus, _node, _snapshot, fuzz
from xpro_mesh.mesh import auth


def test_twenty_thousand_mutated_datagrams_crash_nothing_and_rejected_ones_change_nothing() -> None:
    result = fuzz(20_000, seed=7)
    assert result.crashes == 0, result.first_crash
    assert result.state_changed_on_reject == 0
    assert result.rejected > 10_000  # most mutations are refused (by the MAC, the decoder)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    base=st.sampled_from(_corpus()),
    cut=st.integers(0, 2000),
    junk=st.binary(max_size=64),
    at=st.integers(0, 2000),
)
def test_any_payload_a_key_holder_seals_is_refused_or_taken_without_raising(
    base: bytes, cut: int, junk: bytes, at: int
) -> None:
    node = _node()
    payload = base[: max(cut, 0)] + junk + base[at:]
    try:
        datagram = auth.seal(RING, "p1", 1, 0, NOW, payload, recipient_id=ME, max_bytes=1400)
    except ValueError:
        return  # over the datagram limit: the receiver refuses it unread
    before = _snapshot(node)
    rejected = sum(node.counters.rejected.values())
    node.receive(datagram, _addr(1))
    if sum(node.counters.rejected.values()) > rejected and node.counters.rows_accepted == 0:
        assert _snapshot(node) == before
