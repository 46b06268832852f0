"""Specification of what a hostile peer or client cannot do (issue 12): each
test is one finding of docs/threat-model.md, reproduced with the datagram or
request that exposed it, and fails on the code that had the hole."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from xpro_mesh.core.algorithm import Params
from xpro_mesh.core.gossip_state import Digest, GossipState, LocalCount, MergeLimits, Rejection
from xpro_mesh.core.rows import ADDRESS_DTYPE, ColumnarDelta, RowBatch
from xpro_mesh.core.table import PairTable
from xpro_mesh.mesh import auth, wire
from xpro_mesh.mesh.columns import MAX_VERSION
from xpro_mesh.mesh.membership import MAX_INCARNATION, Membership, MemberState, MemberUpdate
from xpro_mesh.mesh.messages import Members, Ping, Sync
from xpro_mesh.mesh.node import MeshNode, NodeTiming
from xpro_mesh.mesh.state import GossipStateAdapter, TableAdapter

U64_MAX = 2**64 - 1
NOW = 1_800_000_000 * 10**9
S = 10**9
P = Params(t_t1=5 * S, t_t2=S, t_t3=S, t_t4=60 * S, t_f1=100, t_f2=1000, r=2)
RING = auth.Keyring([bytes(range(32))])
VICTIM = b"\x00" * 10 + b"\xff\xff" + bytes([10, 20, 0, 2])
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


# --- replay guard ---------------------------------------------------------------------


def test_one_datagram_with_the_highest_incarnation_does_not_lock_a_sender_out() -> None:
    """One MAC-valid datagram naming a0 with incarnation 2^64 - 1 made a peer
    refuse all of a0's traffic as replays until it restarted."""
    guard = auth.ReplayGuard()
    assert guard.accept("a0", 1_000, 0)
    assert guard.accept("a0", U64_MAX, 0)  # the forgery (or a corrupted sender)
    assert guard.accept("a0", 1_000, 1)  # a0 goes on being heard
    assert not guard.accept("a0", 1_000, 1)  # and its replays are still refused


def test_a_sender_whose_clock_stepped_back_across_a_restart_is_heard() -> None:
    guard = auth.ReplayGuard()
    assert guard.accept("a0", 2_000, 7)
    assert guard.accept("a0", 1_500, 0)  # its boot epoch is lower after the step


def test_the_guards_memory_is_bounded_per_sender_and_in_all() -> None:
    guard = auth.ReplayGuard(max_senders=8, lives_per_sender=2)
    for inc in range(100):
        guard.accept("a0", inc, 0)
    for i in range(100):
        guard.accept(f"n{i}", 1, 0)
    assert len(guard._windows) <= 8 and len(guard) <= 8


# --- recipients, reflection, amplification -----------------------------------------


def test_a_datagram_sealed_for_one_node_is_refused_by_every_other() -> None:
    """The envelope named no recipient: a capture was accepted once by every node."""
    ring = auth.Keyring([bytes(range(32))])
    datagram = auth.seal(ring, "a", 1, 0, NOW, b"x", recipient_id="b")
    assert isinstance(
        auth.open_(ring, datagram, NOW, auth.ReplayGuard(), recipient_id="b"), auth.Opened
    )
    refused = auth.open_(ring, datagram, NOW, auth.ReplayGuard(), recipient_id="c")
    assert refused == auth.Rejected(auth.Reason.WRONG_RECIPIENT)
    # The recipient is under the MAC: rewriting it breaks the seal.
    forged = datagram.replace(b"\x01b", b"\x01c", 1)
    assert auth.open_(ring, forged, NOW, auth.ReplayGuard(), recipient_id="c") == auth.Rejected(
        auth.Reason.BAD_MAC
    )


class Recorder:
    """A transport that keeps what the node sends (the node under test is real)."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    @property
    def local_addr(self) -> tuple[str, int]:
        return B

    def send(self, datagram: bytes, addr: tuple[str, int]) -> bool:
        self.sent.append((datagram, addr))
        return True


def node_b_with_rows(rows: int) -> tuple[MeshNode, Recorder]:
    state = GossipState("b", incarnation=1, params=P)
    for i in range(rows):
        src = b"\x00" * 10 + b"\xff\xff" + bytes([44, 1]) + i.to_bytes(2, "big")
        state.record_local((src, VICTIM), LocalCount(NOW, NOW + i, dc=1 + i % 5, mark=0))
    membership = Membership("b", B, incarnation=1, now_ns=0, rng=random.Random(0))
    node = MeshNode(
        state=GossipStateAdapter(state),
        membership=membership,
        keyring=RING,
        timing=NodeTiming(),
        limits=MergeLimits(),
        wall_ns=lambda: NOW,
        mono_ns=lambda: 0,  # no token comes back during the test
    )
    recorder = Recorder()
    node.attach(recorder)  # type: ignore[arg-type]
    return node, recorder


def sync_from_a(counter: int) -> bytes:
    sync = Sync(Digest("a", {}), True, MemberUpdate("a", A, 1, MemberState.ALIVE), ())
    return auth.seal(
        RING, "a", 1, counter, NOW, wire.encode(sync), recipient_id="b", max_bytes=1400
    )


def test_a_sync_from_a_forged_source_is_answered_at_the_senders_own_address_only() -> None:
    """Replies went to the UDP source: a capture replayed with a victim's
    source address reflected the answer onto the victim."""
    node, recorder = node_b_with_rows(50)
    node.receive(sync_from_a(0), ("192.0.2.66", 53))
    assert recorder.sent and {addr for _, addr in recorder.sent} == {A}


def test_the_answer_to_one_sync_is_bounded_and_syncs_beyond_the_peers_rate_go_unanswered() -> None:
    """A 165-byte Sync with an empty digest drew 521 KB of answer (~3 000x)."""
    node, recorder = node_b_with_rows(20_000)
    request = sync_from_a(0)
    node.receive(request, A)
    answer = sum(len(d) for d, _ in recorder.sent)
    assert len(recorder.sent) <= node.timing.max_reply_datagrams + 1
    assert answer <= (node.timing.max_reply_datagrams + 1) * node.timing.max_message_bytes
    assert node.counters.rejected["reply_cut"] == 1
    for counter in range(1, 20):
        node.receive(sync_from_a(counter), A)
    answered = 1 + 19 - node.counters.rejected["rate_limited"]
    assert answered <= node.timing.sync_answers_burst + 1


def test_an_unaddressed_datagram_may_carry_a_join_only() -> None:
    node, recorder = node_b_with_rows(1)
    sync = Sync(Digest("a", {}), True, MemberUpdate("a", A, 1, MemberState.ALIVE), ())
    unaddressed = auth.seal(RING, "a", 1, 0, NOW, wire.encode(sync), max_bytes=1400)
    node.receive(unaddressed, A)
    assert node.counters.rejected["no_recipient"] == 1 and not recorder.sent
    join = Members(MemberUpdate("a", A, 1, MemberState.ALIVE), (), True)
    node.receive(auth.seal(RING, "a", 1, 1, NOW, wire.encode(join), max_bytes=1400), A)
    assert recorder.sent and {addr for _, addr in recorder.sent} == {A}


# --- operators' files -----------------------------------------------------------------


def test_a_key_file_readable_by_group_or_others_is_refused_with_one_clear_line(
    tmp_path: Path,
) -> None:
    path = tmp_path / "cluster.key"
    path.write_text(auth.generate_key_line() + "\n")
    for mode in (0o640, 0o604, 0o660):
        path.chmod(mode)
        with pytest.raises(auth.KeyFileError) as err:
            auth.load_keyring(path)
        assert (
            str(err.value)
            == f"{path}: mode {mode:04o} lets group or others at it: chmod 600 {path}"
        )
    path.chmod(0o600)
    assert len(auth.load_keyring(path)) == 1


def test_a_token_file_readable_by_others_is_refused_by_the_agent_command(tmp_path: Path) -> None:
    key = tmp_path / "cluster.key"
    key.write_text(auth.generate_key_line() + "\n")
    key.chmod(0o600)
    token = tmp_path / "api.token"
    token.write_text("t0ken\n")
    token.chmod(0o644)
    run = subprocess.run(
        [sys.executable, "-m", "xpro_mesh", "agent", "--backend", "memory", "--key-file", str(key),
         "--api-token-file", str(token), "--bind", "127.0.0.1:0", "--api", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert run.returncode != 0
    assert "api_token_file" in run.stderr and "chmod 600" in run.stderr
    assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1


# --- what a key holder can claim --------------------------------------------------------


def forged_rows(ts1: int, ts2: int, c: int) -> ColumnarDelta:
    a = np.array([b"\x00" * 10 + b"\xff\xff" + bytes([6, 6, 6, 6])], dtype=ADDRESS_DTYPE)
    d = np.array([VICTIM], dtype=ADDRESS_DTYPE)
    batch = RowBatch(
        "p9",
        a,
        d,
        np.array([ts1], np.int64),
        np.array([ts2], np.int64),
        np.array([c], np.int64),
        np.array([1], np.int64),
        np.array([1], np.int64),
    )
    return ColumnarDelta(batches=(batch,))


@pytest.mark.parametrize("table", ["scalar", "columnar"])
def test_a_row_whose_window_reaches_back_past_the_horizon_is_refused(table: str) -> None:
    """One row with ts1 = 0 made its pair's rate vanish: the pair rule was off
    for an attacker (300/300 passed against 300/300 dropped)."""
    state = (
        GossipStateAdapter(GossipState("b", incarnation=1, params=P))
        if table == "scalar"
        else TableAdapter(PairTable("b", 1, P))
    )
    report = state.merge(forged_rows(0, NOW, 300), NOW, MergeLimits())
    assert report.rejected == {Rejection.LONG_WINDOW: 1} and report.accepted == 0
    horizon = P.t_t1 + P.t_t4
    ok = state.merge(forged_rows(NOW - horizon, NOW, 300), NOW, MergeLimits())
    assert ok.accepted == 1
