"""Specification of the wire format for gossip state: versioned msgpack,
round trips, and a decoder that refuses anything malformed without raising."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xpro_mesh.core.gossip_state import Coverage, Delta, Digest, OriginEntry, PairEntry
from xpro_mesh.mesh.membership import MemberState, MemberUpdate, Workload
from xpro_mesh.mesh.messages import Ack, Members, Ping, PingReq, Sync
from xpro_mesh.mesh.wire import (
    ADDRESS_BYTES,
    FORMAT_VERSION,
    MAX_ENTRY_BYTES,
    Kind,
    WireError,
    WireLimits,
    decode,
    encode,
    entries_per_payload,
    kind_of,
)

u64 = st.integers(0, 2**64 - 1)
names = st.text(min_size=1, max_size=20)
addresses = st.binary(min_size=ADDRESS_BYTES, max_size=ADDRESS_BYTES)
versions = st.tuples(u64, u64)
rows = st.builds(
    PairEntry,
    st.tuples(addresses, addresses),
    names,
    st.builds(OriginEntry, u64, u64, u64, versions),
)
digests = st.builds(Digest, names, st.dictionaries(names, versions, max_size=8))
deltas = st.builds(
    Delta,
    st.lists(rows, max_size=10).map(tuple),
    st.lists(st.builds(Coverage, names, versions, versions), max_size=5).map(tuple),
)


@settings(max_examples=200, deadline=None)
@given(st.one_of(digests, deltas))
def test_every_message_round_trips(message: Digest | Delta) -> None:
    assert decode(encode(message)) == message


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    result = decode(data)
    assert isinstance(result, (Digest, Delta, WireError))


@settings(max_examples=300, deadline=None)
@given(deltas, st.data())
def test_corrupted_messages_are_refused_or_still_well_typed(
    message: Delta, data: st.DataObject
) -> None:
    raw = bytearray(encode(message))
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    result = decode(bytes(raw))
    if isinstance(result, Delta):
        for pe in result.entries:
            assert all(isinstance(a, bytes) and len(a) == ADDRESS_BYTES for a in pe.pair)
            assert all(0 <= x < 2**64 for x in (pe.entry.ts1, pe.entry.ts2, pe.entry.c))


def frame(kind: object, body: object, version: object = FORMAT_VERSION) -> bytes:
    packed: bytes = msgpack.packb({"v": version, "kind": kind, "body": body})
    return packed


GOOD_ROW = [b"a" * 16, b"b" * 16, 0, 1, 2, 3, 1, 1]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (frame("delta", {"origins": [], "entries": []}, version=2), "unsupported format version"),
        (frame("delta", {"origins": [], "entries": []}, version=True), "version"),
        (frame("gossip", {}), "unknown kind"),
        (frame("delta", []), "body is not a map"),
        (msgpack.packb([1, 2, 3]), "not a map"),
        (frame("delta", {"origins": ["o"], "entries": [GOOD_ROW[:7]]}), "entry"),
        (frame("delta", {"origins": ["o"], "entries": [[b"a" * 4, *GOOD_ROW[1:]]]}), "address"),
        (
            frame("delta", {"origins": ["o"], "entries": [[*GOOD_ROW[:2], 1, *GOOD_ROW[3:]]]}),
            "index",
        ),
        (
            frame("delta", {"origins": ["o"], "entries": [[*GOOD_ROW[:3], -1, *GOOD_ROW[4:]]]}),
            "unsigned",
        ),
        (
            frame("delta", {"origins": ["o"], "entries": [[*GOOD_ROW[:3], True, *GOOD_ROW[4:]]]}),
            "unsigned",
        ),
        (frame("delta", {"origins": [""], "entries": []}), "origin name"),
        (frame("digest", {"sender": "a", "versions": [["o", 1]]}), "version"),
        (b"\xc1", "undecodable"),
        (b"", "undecodable"),
    ],
)
def test_malformed_messages_are_refused_with_a_reason(data: bytes, reason: str) -> None:
    result = decode(data)
    assert isinstance(result, WireError) and reason in result.reason


def test_oversized_messages_are_refused_before_decoding() -> None:
    data = encode(
        Delta(entries=(PairEntry((b"a" * 16, b"b" * 16), "o", OriginEntry(1, 2, 3, (1, 1))),))
    )
    result = decode(data, WireLimits(max_message_bytes=len(data) - 1))
    assert isinstance(result, WireError) and "over" in result.reason
    rows = tuple(
        PairEntry((bytes([i]) * 16, b"b" * 16), "o", OriginEntry(1, 2, 3, (1, i + 1)))
        for i in range(5)
    )
    result = decode(encode(Delta(entries=rows)), WireLimits(max_entries=4))
    assert isinstance(result, WireError) and "entries" in result.reason


def test_encoder_refuses_pairs_that_are_not_two_addresses() -> None:
    bad = PairEntry(("client", "dest"), "o", OriginEntry(1, 2, 3, (1, 1)))
    with pytest.raises(ValueError, match="16-byte"):
        encode(Delta(entries=(bad,)))


def test_a_chunk_of_entries_per_payload_rows_fits_the_payload_in_the_worst_case() -> None:
    budget = 60_000 - 100
    n = entries_per_payload(budget)
    top = 2**64 - 1
    rows = tuple(
        PairEntry(
            (i.to_bytes(16, "big"), b"\xff" * 16),
            f"{i:0>255}",  # every row from its own longest-named origin
            OriginEntry(top, top, top, (top, top)),
        )
        for i in range(n)
    )
    claims = tuple(Coverage(f"{i:0>255}", (top, top - 1), (top, top)) for i in range(n))
    assert len(encode(Delta(entries=rows, coverage=claims))) <= budget
    assert (
        len(msgpack.packb([b"\x00" * 16, b"\x00" * 16, 4095, top, top, top, top, top]))
        <= MAX_ENTRY_BYTES
    )


def test_kind_names_the_message_type_on_the_wire() -> None:
    digest = Digest("a", {"a": (1, 2)})
    assert kind_of(digest) is Kind.DIGEST and kind_of(Delta()) is Kind.DELTA
    assert msgpack.unpackb(encode(digest))["kind"] == "digest"
    with pytest.raises(ValueError):
        kind_of(object())  # type: ignore[arg-type]


# --- membership and push-pull messages ------------------------------------------


_ME = MemberUpdate("p0", ("10.20.0.10", 7946), 17, MemberState.ALIVE, Workload(1200.5, 0.25, 3.0))
_PEER = MemberUpdate("p1", ("10.20.0.11", 7946), 4, MemberState.SUSPECT)


@pytest.mark.parametrize(
    "message",
    [
        Ping(7, "p1", _ME, (_PEER,)),
        Ack(7, _ME),
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
        ["p0", "10.20.0.10", 7946, 1, "zombie", None],
        ["p0", "10.20.0.10", 70000, 1, "alive", None],
        ["p0", "10.20.0.10", 7946, 1, "alive", [1.0, 2.0, 0.0]],  # drop ratio > 1
        ["p0", "", 7946, 1, "alive", None],
    ):
        frame = dict(good, body=dict(good["body"], sender=bad_sender))
        assert isinstance(decode(msgpack.packb(frame)), WireError)
