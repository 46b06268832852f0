"""Specification of the wire format: versioned msgpack around a columnar
delta, exact round trips, a decoder that refuses anything malformed with a
WireError and never raises, and a chunker that fills messages to a byte
budget with claims that only cover what each message holds."""

from __future__ import annotations

import itertools

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xpro_mesh.core.gossip_state import Coverage, Delta, Digest, OriginEntry, PairEntry
from xpro_mesh.core.rows import INT_MAX, ColumnarDelta, RowBatch, from_delta, to_delta
from xpro_mesh.mesh.columns import MAX_VERSION, decode_rows, encode_rows
from xpro_mesh.mesh.membership import MemberState, MemberUpdate, Workload
from xpro_mesh.mesh.messages import Ack, Members, Nack, Ping, PingReq, Sync
from xpro_mesh.mesh.wire import (
    FORMAT_VERSION,
    Kind,
    WireError,
    WireLimits,
    chunk_rows,
    decode,
    encode,
    encoded_size,
    kind_of,
)

i63 = st.integers(0, INT_MAX)
v62 = st.integers(0, MAX_VERSION)  # versions are bounded at decode (issue 12)
small = st.integers(0, 2**20)
names = st.text(min_size=1, max_size=20)
v4 = st.integers(0, 2**32 - 1).map(lambda x: b"\0" * 10 + b"\xff\xff" + x.to_bytes(4, "big"))
v6 = st.binary(min_size=16, max_size=16)
addresses = st.one_of(v4, v6)
entries = st.builds(
    OriginEntry,
    st.one_of(small, i63),
    st.one_of(small, i63),
    i63,
    st.tuples(st.one_of(small, v62), st.one_of(small, v62)),
)
versions = st.tuples(v62, v62)


@st.composite
def deltas(draw: st.DrawFn, max_rows: int = 40) -> Delta:
    origins = draw(st.lists(names, min_size=1, max_size=4, unique=True))
    rows = []
    for origin in origins:
        pairs = draw(st.lists(st.tuples(addresses, addresses), max_size=max_rows, unique=True))
        rows += [PairEntry(pair, origin, draw(entries)) for pair in pairs]
    claims = draw(
        st.lists(
            st.builds(Coverage, st.sampled_from(origins), versions, versions),
            max_size=3,
            unique_by=lambda c: c.origin,
        )
    )
    return Delta(entries=tuple(rows), coverage=tuple(claims))


def rows_of(delta: ColumnarDelta) -> list[PairEntry]:
    return sorted(to_delta(delta).entries, key=lambda pe: (pe.origin, pe.pair))


def key(pe: PairEntry) -> tuple[str, tuple[object, object], OriginEntry]:
    return (pe.origin, pe.pair, pe.entry)


def all_rows(chunks: list[ColumnarDelta]) -> list[PairEntry]:
    return sorted((pe for c in chunks for pe in rows_of(c)), key=lambda pe: (pe.origin, pe.pair))


def same(a: ColumnarDelta, b: ColumnarDelta) -> bool:
    return rows_of(a) == rows_of(b) and a.coverage == b.coverage


@settings(max_examples=200, deadline=None)
@given(deltas())
def test_every_delta_round_trips_exactly(delta: Delta) -> None:
    columnar = from_delta(delta)
    decoded = decode(encode(columnar))
    assert isinstance(decoded, ColumnarDelta) and same(decoded, columnar)


@settings(max_examples=100, deadline=None)
@given(st.builds(Digest, names, st.dictionaries(names, versions, max_size=8)))
def test_digests_round_trip(digest: Digest) -> None:
    assert decode(encode(digest)) == digest


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    assert not isinstance(decode(data), Exception)
    assert not isinstance(
        decode(msgpack.packb({"v": FORMAT_VERSION, "kind": "delta", "body": {"rows": data}})),
        Exception,
    )


def check_valid(delta: ColumnarDelta) -> None:
    """What the decoder promises about anything it returns."""
    for b in delta.batches:
        assert len(b) > 0 and len({(s, d) for s, d in zip(b.src, b.dst, strict=True)}) == len(b)
        for col in (b.ts1, b.ts2, b.c, b.inc, b.seq):
            assert col.dtype == np.int64 and (len(col) == 0 or int(col.min()) >= 0)
        assert b.src.dtype == np.dtype("S16") and b.dst.dtype == np.dtype("S16")
    assert len({b.origin for b in delta.batches}) == len(delta.batches)


@settings(max_examples=400, deadline=None)
@given(deltas(), st.data())
def test_bit_flipped_deltas_are_refused_or_still_valid(delta: Delta, data: st.DataObject) -> None:
    raw = bytearray(encode_rows(from_delta(delta)))
    if not raw:
        return
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw) - 1))
        if data.draw(st.booleans()):
            raw[at] ^= 1 << data.draw(st.integers(0, 7))
        else:
            raw[at] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        raw = raw[: data.draw(st.integers(0, len(raw)))]
    frame = msgpack.packb({"v": FORMAT_VERSION, "kind": "delta", "body": {"rows": bytes(raw)}})
    result = decode(frame)
    assert isinstance(result, ColumnarDelta | WireError)
    if isinstance(result, ColumnarDelta):
        check_valid(result)


def frame(kind: object, body: object, version: object = FORMAT_VERSION) -> bytes:
    packed: bytes = msgpack.packb({"v": version, "kind": kind, "body": body})
    return packed


def one_row(**overrides: int) -> ColumnarDelta:
    fields = {"ts1": 1, "ts2": 2, "c": 3, "inc": 1, "seq": 1} | overrides
    col = {k: np.array([v], dtype=np.int64) for k, v in fields.items()}
    addr = np.array([b"a" * 16], dtype="S16")
    return ColumnarDelta((RowBatch("o", addr, addr.copy(), **col),))


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (frame("delta", {"rows": b""}, version=1), "unsupported format version"),
        (frame("delta", {"rows": b""}, version=True), "version"),
        (frame("gossip", {}), "unknown kind"),
        (frame("delta", []), "body is not a map"),
        (msgpack.packb([1, 2, 3]), "not a map"),
        (frame("delta", {"rows": "text"}), "not bytes"),
        (frame("delta", {"rows": b""}), "truncated"),
        (frame("delta", {"rows": b"\x01\x00"}), "empty"),  # an origin with no name
        (frame("delta", {"rows": b"\x01\x01o\x00\x01\x01"}), "origin"),  # batch of origin 1
        (frame("delta", {"rows": encode_rows(one_row()) + b"\x00"}), "after the last batch"),
        (frame("digest", {"sender": "a", "versions": [["o", 1]]}), "version"),
        (b"\xc1", "undecodable"),
        (b"", "undecodable"),
    ],
)
def test_malformed_messages_are_refused_with_a_reason(data: bytes, reason: str) -> None:
    result = decode(data)
    assert isinstance(result, WireError) and reason in result.reason


def test_values_of_2_to_the_63_or_more_are_refused() -> None:
    good = encode_rows(one_row(c=7))
    bad = bytearray(good)
    # the c column: mode 0, base varint 7 -> a 9-byte varint of 2^63
    at = bytes(bad).rindex(b"\x00\x07\x01\x00")  # mode, base 7, gcd 1, width 0
    huge = bytes([0x80] * 8 + [0x80, 0x01])  # 2^63 as LEB128
    bad[at + 1 : at + 2] = huge
    result = decode(frame("delta", {"rows": bytes(bad)}))
    assert isinstance(result, WireError) and "over" in result.reason


def test_oversized_messages_are_refused_before_decoding() -> None:
    data = encode(one_row())
    result = decode(data, WireLimits(max_message_bytes=len(data) - 1))
    assert isinstance(result, WireError) and "over" in result.reason
    many = from_delta(
        Delta(
            tuple(
                PairEntry((bytes([i]) * 16, b"b" * 16), "o", OriginEntry(1, 2, 3, (1, i + 1)))
                for i in range(5)
            )
        )
    )
    result = decode(encode(many), WireLimits(max_entries=4))
    assert isinstance(result, WireError) and "over 4" in result.reason


def test_encoder_refuses_rows_it_should_never_build() -> None:
    with pytest.raises(ValueError, match=r"0\.\.2"):
        encode(one_row(c=-1))
    twice = one_row()
    b = twice.batches[0]
    with pytest.raises(ValueError, match="twice"):
        encode(
            ColumnarDelta(
                (
                    RowBatch(
                        "o",
                        *(
                            np.concatenate([getattr(b, f)] * 2)
                            for f in ("src", "dst", "ts1", "ts2", "c", "inc", "seq")
                        ),
                    ),
                )
            )
        )


# --- size on realistic rows -------------------------------------------------------


def botnet(
    n: int,
    *,
    per_destination: int = 5_000,
    seed: int = 1,
    coarse: bool = True,
    origin: str = "proxy-1",
) -> ColumnarDelta:
    """n changed rows of one origin: bots in one /16 block, thousands per
    destination, windows within one sync interval, counts of a few packets,
    versions issued in no particular order of the pairs."""
    rng = np.random.default_rng(seed)
    src = (44 << 24) + (np.arange(n) % 60_000) * 1 + rng.integers(0, 1, n)
    dst = (10 << 24) + (20 << 16) + np.arange(n) // per_destination

    def mapped(x: np.ndarray) -> np.ndarray:
        a = np.zeros((len(x), 16), np.uint8)
        a[:, 10:12] = 0xFF
        a[:, 12:] = x.astype(">u4").view(np.uint8).reshape(-1, 4)
        return a.view("S16").ravel()

    tick = 4_000_000 if coarse else 1
    t0 = 1_800_000_000_000_000_000
    ts2 = t0 + rng.integers(0, 500_000_000 // tick, n) * tick
    ts1 = ts2 - rng.integers(0, 5_000_000_000 // tick, n) * tick
    inc = 1_764_600_000_000
    return ColumnarDelta(
        (
            RowBatch(
                origin,
                mapped(src),
                mapped(dst),
                ts1,
                ts2,
                rng.integers(1, 5, n),
                np.full(n, inc),
                rng.permutation(n) + 1,
            ),
        ),
        (Coverage(origin, (0, 0), (inc, n)),),
    )


def test_a_changed_ipv4_row_costs_at_most_16_bytes() -> None:
    for n in (1_000, 20_000):
        for coarse in (True, False):
            assert encoded_size(botnet(n, coarse=coarse)) <= 16 * n


def test_chunks_fill_their_budget_and_lose_no_row() -> None:
    delta = botnet(20_000)
    chunks = chunk_rows(delta, 1_340)
    sizes = [encoded_size(c) for c in chunks]
    assert max(sizes) <= 1_340
    assert min(sizes[:-1]) >= 0.8 * 1_340
    assert all_rows(chunks) == rows_of(delta)
    # many rows a datagram: the budget, not a row count, sets the chunk
    assert sum(c.rows for c in chunks) / len(chunks) > 100


@settings(max_examples=150, deadline=None)
@given(deltas(max_rows=30), st.integers(300, 3_000))
def test_chunk_claims_cover_only_the_rows_their_chunk_holds(delta: Delta, budget: int) -> None:
    columnar = from_delta(delta)
    chunks = chunk_rows(columnar, budget)
    assert all(encoded_size(c) <= budget for c in chunks)
    assert all_rows(chunks) == rows_of(columnar)
    claimed: dict[str, list[Coverage]] = {}
    for c in chunks:
        held = {(pe.origin, pe.pair, pe.entry) for pe in rows_of(c)}
        for cov in c.coverage:
            claimed.setdefault(cov.origin, []).append(cov)
            for pe in delta.entries:
                if pe.origin == cov.origin and cov.after < pe.entry.version <= cov.upto:
                    assert (pe.origin, pe.pair, pe.entry) in held
    for origin, covs in claimed.items():
        original = next(c for c in delta.coverage if c.origin == origin)
        assert covs[0].after == original.after
        for a, b in itertools.pairwise(covs):
            assert a.upto == b.after  # a chain, never a gap
        assert covs[-1].upto in (original.upto, *(c.upto for c in covs))


def test_kind_names_the_message_type_on_the_wire() -> None:
    digest = Digest("a", {"a": (1, 2)})
    assert kind_of(digest) is Kind.DIGEST and kind_of(ColumnarDelta()) is Kind.DELTA
    assert msgpack.unpackb(encode(digest))["kind"] == "digest"
    with pytest.raises(ValueError):
        kind_of(object())  # type: ignore[arg-type]


def test_decoded_rows_of_the_columnar_codec_equal_the_encoded_ones() -> None:
    delta = botnet(3_000, per_destination=700)
    assert same(decode_rows(encode_rows(delta)), delta)


# --- membership and push-pull messages ------------------------------------------


_ME = MemberUpdate("p0", ("10.20.0.10", 7946), 17, MemberState.ALIVE, Workload(1200.5, 0.25, 3.0))
_PEER = MemberUpdate("p1", ("10.20.0.11", 7946), 4, MemberState.SUSPECT, source="p2")


@pytest.mark.parametrize(
    "message",
    [
        Ping(7, "p1", _ME, (_PEER,)),
        Ack(7, _ME),
        Nack(7, _ME, (_PEER,)),
        PingReq(9, "p2", ("10.20.0.12", 7946), _ME, (_PEER, _ME)),
        Members(_ME, (_ME, _PEER), True),
        Sync(Digest("p0", {"p0": (17, 3), "p1": (4, 99)}), True, _ME, (_PEER,)),
    ],
)
def test_membership_messages_round_trip(message: object) -> None:
    assert decode(encode(message)) == message  # type: ignore[arg-type]


def test_a_member_record_with_a_bad_state_or_port_is_a_wire_error() -> None:
    good = msgpack.unpackb(encode(Ack(1, _ME)), raw=False)
    for bad_sender in (
        ["p0", "10.20.0.10", 7946, 1, "zombie", None, None],
        ["p0", "10.20.0.10", 70000, 1, "alive", None, None],
        ["p0", "10.20.0.10", 7946, 1, "alive", [1.0, 2.0, 0.0], None],  # drop ratio > 1
        ["p0", "", 7946, 1, "alive", None, None],
        ["p0", "10.20.0.10", 7946, 1, "suspect", None, ""],  # an empty suspector
        ["p0", "10.20.0.10", 7946, 1, "alive", None],  # format 1's six fields
    ):
        frame = dict(good, body=dict(good["body"], sender=bad_sender))
        assert isinstance(decode(msgpack.packb(frame)), WireError)


def test_a_huge_delta_is_cut_without_encoding_it_whole_first() -> None:
    delta = botnet(150_000)
    chunks = chunk_rows(delta, 400_000)
    sizes = [encoded_size(c) for c in chunks]
    assert max(sizes) <= 400_000 and min(sizes[:-1]) >= 0.8 * 400_000
    assert sum(c.rows for c in chunks) == 150_000
    claims = [cov for c in chunks for cov in c.coverage]
    assert claims[0].after == (0, 0) and claims[-1].upto == delta.coverage[0].upto
    assert all(a.upto == b.after for a, b in itertools.pairwise(claims))
