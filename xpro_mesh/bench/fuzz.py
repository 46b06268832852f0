"""Fuzz the node's receive path: a million hostile inputs, no crash, and no
state change from any input it rejects (issue 12).

Two kinds of input go through :meth:`MeshNode.receive` of a real node (its
table holding rows of three origins, its membership three peers):

* **outsider**: a valid sealed datagram with bits flipped, bytes set,
  truncated, extended or spliced with another; almost all fail the MAC;
* **key holder**: a valid message's payload mutated the same ways and then
  sealed correctly for the node, so the decoder, the validation and the
  merge see the garbage (this is what a compromised proxy can send).

An input counts as a crash when ``receive`` raises. Rejected means the node
counted a rejection (``counters.rejected``, but not a withheld answer:
:data:`NOT_REFUSALS`) and accepted no row; for those
the table's digest (every origin's version: a merged row moves it) and the
membership must be what they were before (checked for every rejected input).

``python -m xpro_mesh.bench.fuzz [--inputs 1000000] [--seed 1] [--json]``
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from xpro_mesh.bench.stats import Check, checks_json, dumps, print_checks
from xpro_mesh.core.algorithm import Params
from xpro_mesh.core.gossip_state import Digest, GossipState, LocalCount, MergeLimits
from xpro_mesh.core.rows import ADDRESS_DTYPE, ColumnarDelta, RowBatch
from xpro_mesh.mesh import auth, wire
from xpro_mesh.mesh.membership import Membership, MemberState, MemberUpdate
from xpro_mesh.mesh.messages import Ack, Members, Ping, PingReq, Sync
from xpro_mesh.mesh.node import MeshNode, NodeTiming
from xpro_mesh.mesh.state import GossipStateAdapter

__all__ = ["FuzzResult", "fuzz", "main"]

S = 10**9
NOW = 1_800_000_000 * S
P = Params(t_t1=5 * S, t_t2=S, t_t3=S, t_t4=60 * S, t_f1=100, t_f2=1000, r=2)
RING = auth.Keyring([bytes(range(32))])
ME = "fz"
PEERS = ("p1", "p2", "p3")
TARGET_INPUTS = 1_000_000
NOT_REFUSALS = frozenset({"rate_limited", "reply_cut"})
"""Counted in ``rejected`` but not a refusal of the input: a valid Sync whose
answer was withheld or cut still had its member records taken."""


def _addr(i: int) -> tuple[str, int]:
    return (f"10.9.0.{i}", 7946)


def _pair(i: int) -> tuple[bytes, bytes]:
    src = b"\x00" * 10 + b"\xff\xff" + bytes([44, 1]) + i.to_bytes(2, "big")
    return src, b"\x00" * 10 + b"\xff\xff" + bytes([10, 20, 0, 2])


def _node() -> MeshNode:
    state = GossipState(ME, incarnation=1, params=P)
    for i in range(20):
        state.record_local(_pair(i), LocalCount(NOW, NOW + i, dc=1 + i % 5, mark=0))
    membership = Membership(ME, _addr(0), incarnation=1, now_ns=0, rng=random.Random(0))
    ups = [MemberUpdate(p, _addr(i + 1), 1, MemberState.ALIVE) for i, p in enumerate(PEERS)]
    membership.on_update(ups, 0)
    node = MeshNode(
        state=GossipStateAdapter(state),
        membership=membership,
        keyring=RING,
        timing=NodeTiming(),
        limits=MergeLimits(),
        rng=random.Random(1),
        wall_ns=lambda: NOW,
        mono_ns=lambda: 0,
    )
    node.attach(_Sink())  # type: ignore[arg-type]
    return node


class _Sink:
    local_addr = _addr(0)

    def send(self, datagram: bytes, addr: tuple[str, int]) -> bool:
        return True


def _delta(origin: str, n: int, version: int) -> ColumnarDelta:
    a = np.zeros(n, dtype=ADDRESS_DTYPE)
    for i in range(n):
        a[i] = _pair(i)[0]
    d = np.full(n, _pair(0)[1], dtype=ADDRESS_DTYPE)
    t = np.full(n, NOW, dtype=np.int64)
    batch = RowBatch(
        origin,
        a,
        d,
        t,
        t + 1,
        np.full(n, 3, np.int64),
        np.full(n, 1, np.int64),
        np.arange(version, version + n, dtype=np.int64),
    )
    return ColumnarDelta(batches=(batch,))


def _corpus() -> list[bytes]:
    """Valid payloads of every kind a peer sends."""
    me = MemberUpdate("p1", _addr(1), 1, MemberState.ALIVE)
    dead = MemberUpdate("p2", _addr(2), 5, MemberState.DEAD, source="p1")
    messages: list[wire.Message] = [
        Ping(1, ME, me, (dead,)),
        Ack(1, me, ()),
        PingReq(2, "p3", _addr(3), me, ()),
        Members(me, (dead, me), True),
        Sync(Digest("p1", {"p1": (1, 4), ME: (1, 2)}), True, me, ()),
        _delta("p1", 5, 1),
        _delta("p2", 30, 7),
    ]
    return [wire.encode(m) for m in messages]


def _mutate(data: bytes, rng: random.Random, corpus: Sequence[bytes]) -> bytes:
    b = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 3, 8))):
        op = rng.randrange(6)
        if op == 0 and b:  # flip a bit
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1 and b:  # an interesting byte
            b[rng.randrange(len(b))] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, 0xC1, 0xDC, 0xDD, 0xCF))
        elif op == 2 and b:  # truncate
            del b[rng.randrange(len(b)) :]
        elif op == 3:  # insert random bytes
            i = rng.randrange(len(b) + 1)
            b[i:i] = rng.randbytes(rng.randrange(1, 9))
        elif op == 4:  # splice with another input
            other = rng.choice(corpus)
            i, j = rng.randrange(len(b) + 1), rng.randrange(len(other) + 1)
            b = b[:i] + bytearray(other[j:])
        elif b:  # a run of one byte (msgpack lengths, varints)
            i = rng.randrange(len(b))
            b[i : i + 4] = bytes([rng.choice((0xFF, 0x00, 0x80))]) * 4
    return bytes(b)


def _refusals(node: MeshNode) -> int:
    return sum(n for r, n in node.counters.rejected.items() if r not in NOT_REFUSALS)


def _snapshot(node: MeshNode) -> tuple[Any, ...]:
    """What a rejected input must not change: every origin's version in the
    table's digest, and every member's (incarnation, state)."""
    members = node.membership._members  # read only; local_state() builds records
    digest = node.state.digest()
    return (
        tuple(sorted(digest.versions.items())),
        tuple((k, m.incarnation, m.state) for k, m in members.items()),
    )


@dataclass
class FuzzResult:
    inputs: int = 0
    crashes: int = 0
    rejected: int = 0
    state_changed_on_reject: int = 0
    accepted_rows: int = 0
    seconds: float = 0.0
    reasons: Counter[str] = field(default_factory=Counter)
    first_crash: str = ""
    first_change: str = ""  # hex of the first rejected input that changed state

    def as_json(self) -> dict[str, Any]:
        return {
            "inputs": self.inputs,
            "crashes": self.crashes,
            "rejected": self.rejected,
            "state_changed_on_reject": self.state_changed_on_reject,
            "accepted_rows": self.accepted_rows,
            "seconds": round(self.seconds, 2),
            "inputs_per_s": round(self.inputs / self.seconds) if self.seconds else 0,
            "reasons": dict(self.reasons.most_common()),
            "first_crash": self.first_crash,
            "first_change": self.first_change,
        }


def fuzz(inputs: int, seed: int = 1) -> FuzzResult:
    """Feed ``inputs`` hostile inputs to a fresh node (a new one every 50 000,
    so the replay guard and the table stay small) and count what happened."""
    rng = random.Random(seed)
    corpus = _corpus()
    sealer = auth.Sealer(RING, "p1", 1, max_bytes=1400)
    result = FuzzResult()
    node = _node()
    before = _snapshot(node)
    t0 = time.perf_counter()
    for n in range(inputs):
        if n and n % 50_000 == 0:
            node, sealer.counter = _node(), 0
            before = _snapshot(node)
        base = rng.choice(corpus)
        if rng.random() < 0.5:  # an outsider: mutate the sealed datagram
            datagram = _mutate(sealer.seal(NOW, base, ME), rng, corpus)
        else:  # a key holder: mutate the payload, then seal it properly
            payload = _mutate(base, rng, corpus)
            try:
                datagram = sealer.seal(NOW, payload, ME)
            except ValueError:
                datagram = payload  # over the size limit: send the raw bytes instead
        rejected = _refusals(node)
        rows = node.counters.rows_accepted
        try:
            node.receive(datagram, _addr(1))
        except Exception as exc:  # the finding: anything escaping receive
            result.crashes += 1
            if not result.first_crash:
                result.first_crash = f"{type(exc).__name__}: {exc}"[:300]
            node, sealer.counter = _node(), 0
            before = _snapshot(node)
            continue
        if _refusals(node) > rejected and node.counters.rows_accepted == rows:
            result.rejected += 1
            after = _snapshot(node)
            if after != before:
                result.state_changed_on_reject += 1
                if not result.first_change:
                    result.first_change = datagram.hex()[:600]
                before = after
        else:
            result.accepted_rows += node.counters.rows_accepted - rows
            before = _snapshot(node)
    result.inputs = inputs
    result.seconds = time.perf_counter() - t0
    for reason, count in node.counters.rejected.items():
        result.reasons[reason] += count
    return result


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--inputs", type=int, default=TARGET_INPUTS, help="hostile inputs")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = parser.parse_args(argv)
    if args.inputs < 1:
        parser.error("--inputs must be >= 1")
    out = sys.stderr if args.json else sys.stdout
    result = fuzz(args.inputs, args.seed)
    doc = result.as_json()
    print(
        f"{result.inputs} inputs in {result.seconds:.1f} s ({doc['inputs_per_s']}/s): "
        f"{result.crashes} crashes, {result.rejected} rejected, "
        f"{result.state_changed_on_reject} state changes from rejected input, "
        f"{result.accepted_rows} rows accepted from key-holder inputs",
        file=out,
    )
    print(f"last node's rejections by reason: {dict(result.reasons.most_common())}", file=out)
    checks = [
        Check("inputs", result.inputs, TARGET_INPUTS, bound="at_least"),
        Check("crashes", result.crashes, 0),
        Check("state changes from rejected input", result.state_changed_on_reject, 0),
    ]
    real = sys.stdout
    sys.stdout = out
    try:
        print_checks(checks)
    finally:
        sys.stdout = real
    doc.update(checks_json(checks))
    doc["note"] = "shared 2-core VM"
    if args.json:
        print(dumps(doc))
    return 0 if not doc["missed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
