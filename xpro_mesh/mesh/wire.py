"""The wire format: the one place that turns mesh messages into msgpack bytes
and back, with a format version and validation of everything a peer sends.

Every message is a msgpack map ``{"v": FORMAT_VERSION, "kind": KIND, "body": ...}``.
A new message type is a new ``kind`` with one encoder and one decoder
registered below; a receiver answers an unknown kind or version with a
:class:`WireError`, never an exception. The authenticated envelope around the
bytes is :mod:`xpro_mesh.mesh.auth`'s.

Bodies (integers are unsigned 64-bit; addresses are 16 bytes, IPv6 or
IPv4-mapped; origin names are UTF-8, 1..255 bytes):

``digest``  ``{"sender": str, "versions": [[origin, incarnation, seq], ...]}``

``sync``    ``{"digest": <digest body>, "reply": bool, "sender": M, "updates": [M, ...]}``
            (anti-entropy push-pull: answer with a ``delta``, and with your own
            ``sync`` when ``reply``)

``ping`` / ``ack`` / ``ping_req``  ``{"seq": u32, "target": str, "sender": M,
            "updates": [M, ...]}`` (ack has no target; ping_req adds
            ``"host": str, "port": int`` of the target)

``members`` ``{"sender": M, "members": [M, ...], "reply": bool}``

where a member record M is ``[node_id, host, port, incarnation, state,
load, source]``, ``state`` one of ``alive|suspect|dead``, ``load`` nil or
``[packets_in_per_s, drop_ratio, loop_lag_ms]`` and ``source`` nil or the
node id that suspected the member (Lifeguard counts independent suspectors).

``nack``    ``{"seq": u32, "sender": M, "updates": [M, ...]}`` (a ping-req helper
            got no ack from the target in time: Lifeguard's nack, which tells
            the asker that the helper, at least, is reachable)

``signed``  ``{"origin": str, "rows": bin, "sig": bin}``: one origin's batch,
            ``rows`` as in ``delta`` but holding that origin's rows and claims
            only, ``sig`` its 64-byte Ed25519 signature
            (:mod:`xpro_mesh.mesh.identity`); relays forward it unchanged

``delta``   ``{"rows": bin}``: a :class:`~xpro_mesh.core.rows.ColumnarDelta` in
            the columnar encoding of :mod:`xpro_mesh.mesh.columns` (origins
            named once, addresses packed per destination, columns
            frame-of-reference coded: about 8-16 bytes a changed IPv4 row).

The decoder checks types, sizes, ranges and index bounds only; whether a row
is plausible (clock skew, rates, table size) is the merge's job
(:meth:`xpro_mesh.core.gossip_state.GossipState.merge`).

Format 2 (this one) replaced format 1's msgpack row lists (50-86 bytes a row)
with the columnar delta, and added ``nack`` and a member record's suspector;
nodes of the two formats do not understand each other (``unsupported format
version``), so a mesh is upgraded all at once.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np
import numpy.typing as npt

from xpro_mesh.core.gossip_state import Coverage, Digest, Version
from xpro_mesh.core.rows import ColumnarDelta, RowBatch
from xpro_mesh.mesh.columns import (
    MAX_ORIGIN_BYTES,
    MAX_VERSION,
    ColumnsInvalid,
    ColumnsLimits,
    decode_rows,
    encode_rows,
)
from xpro_mesh.mesh.membership import MemberState, MemberUpdate, Workload
from xpro_mesh.mesh.messages import Ack, Members, Nack, Ping, PingReq, SignedRows, Sync

__all__ = [
    "DEFAULT_LIMITS",
    "DELTA_FRAME_BYTES",
    "FORMAT_VERSION",
    "MAX_UPDATES",
    "SIGNED_FRAME_BYTES",
    "Kind",
    "Message",
    "WireError",
    "WireLimits",
    "chunk_rows",
    "decode",
    "decode_signed",
    "encode",
    "encoded_size",
    "kind_of",
]

FORMAT_VERSION = 2
_FRAME_BYTES = 32  # msgpack's frame around a delta's bytes: {"v", "kind", "body": {"rows"}}
DELTA_FRAME_BYTES = _FRAME_BYTES
_ESTIMATE_ABOVE_ROWS = 100_000
_TYPICAL_ROW_BYTES = 10  # a changed IPv4 row is 7-14 bytes (docs/mesh.md)


class Kind(enum.StrEnum):
    """The message types; the ``kind`` field on the wire."""

    DIGEST = "digest"
    DELTA = "delta"
    PING = "ping"
    ACK = "ack"
    NACK = "nack"
    PING_REQ = "ping_req"
    MEMBERS = "members"
    SYNC = "sync"
    CONFIG = "config"  # the mesh-wide configuration document (core/config_doc.py)
    SIGNED = "signed"  # one origin's rows under its own signature (mesh/identity.py)


@dataclass(frozen=True, slots=True)
class ConfigOffer:
    """A node's current mesh configuration document, opaque here (its own
    decoder, core/config_doc.py, judges it)."""

    sender: str
    document: bytes


Message = (
    Digest | ColumnarDelta | Ping | Ack | Nack | PingReq | Members | Sync | ConfigOffer | SignedRows
)

MAX_UPDATES = 64  # membership updates in one message (piggyback or push-pull part)


@dataclass(frozen=True, slots=True)
class WireLimits:
    """Sizes a decoder accepts before looking at content. The defaults suit
    datagrams; the stream passes larger ones (its frame size)."""

    max_message_bytes: int = 1 << 20
    max_entries: int = 65_536  # rows in one delta
    max_origins: int = 4_096  # origins named in one message


DEFAULT_LIMITS = WireLimits()


@dataclass(frozen=True, slots=True)
class WireError:
    """Why bytes from a peer were not a message; the agent counts these."""

    reason: str


# --- encoding ----------------------------------------------------------------


def encode(message: Message) -> bytes:
    """msgpack bytes for one message. Raises ``ValueError`` for a message this
    node should never build (e.g. a value outside 0..2^63-1 in a row)."""
    kind = kind_of(message)
    body = _ENCODERS[kind](message)
    packed: bytes = msgpack.packb({"v": FORMAT_VERSION, "kind": kind.value, "body": body})
    return packed


def kind_of(message: Message) -> Kind:
    """The ``kind`` a message travels as (what per-kind counters are keyed by)."""
    kind = _KINDS.get(type(message))
    if kind is None:
        raise ValueError(f"not a wire message: {type(message).__name__}")
    return kind


def _digest_body(digest: Digest) -> dict[str, Any]:
    return {
        "sender": _origin_name(digest.sender),
        "versions": [[_origin_name(o), v[0], v[1]] for o, v in digest.versions.items()],
    }


def _delta_body(delta: ColumnarDelta) -> dict[str, Any]:
    return {"rows": encode_rows(delta)}


def _origin_name(name: str) -> str:
    if not 1 <= len(name.encode()) <= MAX_ORIGIN_BYTES:
        raise ValueError(f"origin names are 1..{MAX_ORIGIN_BYTES} UTF-8 bytes, got {name!r}")
    return name


# --- chunking ------------------------------------------------------------------


def encoded_size(delta: ColumnarDelta) -> int:
    """Bytes of ``delta`` as one message (before the envelope)."""
    return _size(delta)


def chunk_rows(
    delta: ColumnarDelta, budget_bytes: int, *, whole_bytes: int | None = None
) -> list[ColumnarDelta]:
    """Cut ``delta`` into messages of at most ``budget_bytes`` encoded bytes
    each, every one filled close to the budget, safe to deliver independently.

    Rows go in version order per origin, so each message holds a contiguous
    run of an origin's versions and its claim covers exactly that run (the
    rule of :func:`xpro_mesh.core.gossip_state.chunk_delta`, by bytes instead
    of rows): ``(end of the run in the previous message, end of this run]``,
    the run holding the origin's last claimed row closing the claim at its
    ``upto``. Where a cut splits the rows of one version of an origin (rows
    sharing a version, which :class:`GossipState` never issues), that
    origin's claims stop there, so the receiver asks again rather than skip
    rows. Claims with no rows travel where there is room.

    ``whole_bytes`` is :func:`encoded_size` of ``delta`` when the caller has
    it already. Raises ``ValueError`` if a single row does not fit the budget.
    """
    if budget_bytes < 1:
        raise ValueError("budget_bytes must be >= 1")
    if whole_bytes is None and delta.rows > _ESTIMATE_ABOVE_ROWS:
        # Encoding a huge delta whole only to learn its size costs a full
        # encode; start from a typical row size instead, _fill corrects it.
        whole = delta.rows * _TYPICAL_ROW_BYTES
    else:
        whole = _size(delta) if whole_bytes is None else whole_bytes
        if whole <= budget_bytes:
            return [delta]
    runs = [_sorted_by_version(b) for b in delta.batches if len(b)]
    offsets = np.cumsum([0, *(len(b) for b in runs)])
    total = int(offsets[-1])
    claims = {c.origin: c for c in delta.coverage}
    state = _Claims(claims, runs)
    chunks: list[ColumnarDelta] = []
    guess = max(1, int(total * budget_bytes * 0.95 / whole))
    pos = 0
    while pos < total:
        take, chunk = _fill(runs, offsets, pos, guess, budget_bytes, state)
        chunks.append(chunk)
        pos += take
        guess = take
    rowless = [c for o, c in claims.items() if o not in state.closing]
    for cov in rowless:
        for i, chunk in enumerate(chunks):
            bigger = ColumnarDelta(chunk.batches, (*chunk.coverage, cov))
            if _size(bigger) <= budget_bytes:
                chunks[i] = bigger
                break
        else:
            chunks.append(ColumnarDelta((), (cov,)))
    return chunks


def _size(delta: ColumnarDelta) -> int:
    return len(encode_rows(delta)) + _FRAME_BYTES


def _sorted_by_version(b: RowBatch) -> RowBatch:
    order = np.lexsort((b.seq, b.inc))
    return _take(b, order)


def _take(b: RowBatch, index: npt.NDArray[np.int64] | slice) -> RowBatch:
    return RowBatch(
        b.origin,
        b.src[index],
        b.dst[index],
        b.ts1[index],
        b.ts2[index],
        b.c[index],
        b.inc[index],
        b.seq[index],
    )


class _Claims:
    """Where each origin's claim stands while its rows are cut into chunks."""

    def __init__(self, claims: dict[str, Coverage], runs: list[RowBatch]) -> None:
        self.claims = claims
        self.start: dict[str, Version] = {o: c.after for o, c in claims.items()}
        self.closing: dict[str, int] = {}  # origin -> index of its last claimed row
        self.first: dict[str, int] = {}  # origin -> index of its first claimed row
        self.broken: set[str] = set()
        for b in runs:
            cov = claims.get(b.origin)
            if cov is None:
                continue
            inside = np.flatnonzero(_above(b, cov.after) & ~_above(b, cov.upto))
            if len(inside):
                self.first[b.origin] = int(inside[0])
                self.closing[b.origin] = int(inside[-1])

    def claim(self, b: RowBatch, lo: int, hi: int) -> Coverage | None:
        """The claim for rows ``lo..hi`` of ``b`` in one chunk,
        or None; advances the origin's start when the claim is made."""
        origin = b.origin
        if origin not in self.closing or origin in self.broken:
            return None
        first, last = self.first[origin], self.closing[origin]
        if hi <= first or lo > last:
            return None
        if hi > last:
            cov = Coverage(origin, self.start[origin], self.claims[origin].upto)
        else:
            v = (int(b.inc[hi - 1]), int(b.seq[hi - 1]))
            nxt = (int(b.inc[hi]), int(b.seq[hi]))
            if nxt == v:
                self.broken.add(origin)  # one version split over two chunks
                return None
            cov = Coverage(origin, self.start[origin], v)
        self.start[origin] = cov.upto
        return cov

    def snapshot(self) -> tuple[dict[str, Version], set[str]]:
        return dict(self.start), set(self.broken)

    def restore(self, snap: tuple[dict[str, Version], set[str]]) -> None:
        self.start, self.broken = dict(snap[0]), set(snap[1])


def _above(b: RowBatch, v: Version) -> npt.NDArray[np.bool_]:
    """Rows whose version ``(inc, seq)`` is above ``v``, lexicographically."""
    above: npt.NDArray[np.bool_] = (b.inc > v[0]) | ((b.inc == v[0]) & (b.seq > v[1]))
    return above


def _fill(
    runs: list[RowBatch],
    offsets: npt.NDArray[np.int64],
    pos: int,
    guess: int,
    budget: int,
    state: _Claims,
) -> tuple[int, ColumnarDelta]:
    """The longest run of rows from ``pos`` (searched from ``guess``) whose
    chunk fits ``budget``; a few encodes, each size steering the next guess."""
    remaining = int(offsets[-1]) - pos
    best: tuple[int, ColumnarDelta] | None = None
    kept = state.snapshot()
    lo_fail = remaining + 1  # smallest count known not to fit
    take = max(1, min(guess, remaining))
    for _ in range(8):
        before = state.snapshot()
        chunk = _build(runs, offsets, pos, take, state)
        size = _size(chunk)
        after = state.snapshot()
        state.restore(before)
        if size <= budget:
            if best is None or take > best[0]:
                best, kept = (take, chunk), after
            if take == remaining or size >= 0.92 * budget or take + 1 >= lo_fail:
                break
            take = min(remaining, lo_fail - 1, max(take + 1, int(take * budget * 0.97 / size)))
        else:
            lo_fail = min(lo_fail, take)
            if take == 1:
                raise ValueError(f"one row does not fit a {budget}-byte message")
            take = max(1, min(take - 1, int(take * budget * 0.97 / size)))
            if best is not None and take <= best[0]:
                break
    if best is None:
        raise ValueError(f"no rows fit a {budget}-byte message")
    state.restore(kept)
    return best


def _build(
    runs: list[RowBatch], offsets: npt.NDArray[np.int64], pos: int, take: int, state: _Claims
) -> ColumnarDelta:
    batches: list[RowBatch] = []
    claims: list[Coverage] = []
    end = pos + take
    for i, b in enumerate(runs):
        lo = max(pos, int(offsets[i])) - int(offsets[i])
        hi = min(end, int(offsets[i + 1])) - int(offsets[i])
        if hi <= lo:
            continue
        batches.append(_take(b, slice(lo, hi)))
        cov = state.claim(b, lo, hi)
        if cov is not None:
            claims.append(cov)
    return ColumnarDelta(tuple(batches), tuple(claims))


# --- decoding ----------------------------------------------------------------


class _Invalid(Exception):
    """Raised inside the decoder only; :func:`decode` turns it into WireError."""


def decode(data: bytes, limits: WireLimits = DEFAULT_LIMITS) -> Message | WireError:
    """The message in ``data``, or a :class:`WireError` saying why not.

    Never raises: a peer's bytes are hostile until proven otherwise.
    """
    if len(data) > limits.max_message_bytes:
        return WireError(f"message of {len(data)} bytes is over {limits.max_message_bytes}")
    try:
        frame = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            use_list=True,
            max_str_len=MAX_ORIGIN_BYTES,
            max_bin_len=limits.max_message_bytes,
            max_array_len=max(limits.max_origins, MAX_UPDATES) + 8,
            max_map_len=16,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises many types; all mean "not a message"
        return WireError(f"undecodable: {type(exc).__name__}")
    try:
        if not isinstance(frame, dict):
            raise _Invalid("not a map")
        version = frame.get("v")
        if version != FORMAT_VERSION or isinstance(version, bool):
            raise _Invalid(f"unsupported format version {version!r}")
        kind = frame.get("kind")
        decoder = _DECODERS.get(kind) if isinstance(kind, str) else None
        if decoder is None:
            raise _Invalid(f"unknown kind {kind!r}")
        body = frame.get("body")
        if not isinstance(body, dict):
            raise _Invalid("body is not a map")
        return decoder(body, limits)
    except (_Invalid, ColumnsInvalid) as exc:
        return WireError(str(exc))
    except Exception as exc:  # a decoder bug must not take the agent down either
        return WireError(f"invalid: {type(exc).__name__}")


def _decode_digest(body: dict[str, Any], limits: WireLimits) -> Digest:
    sender = _name(body.get("sender"))
    rows = _list(body.get("versions"), limits.max_origins, "versions")
    versions: dict[str, Version] = {}
    for row in rows:
        origin, inc, seq = _fields(row, 3, "version")
        versions[_name(origin)] = (_version(inc), _version(seq))
    return Digest(sender=sender, versions=versions)


def _decode_delta(body: dict[str, Any], limits: WireLimits) -> ColumnarDelta:
    rows = body.get("rows")
    if not isinstance(rows, bytes):
        raise _Invalid("delta rows are not bytes")
    return decode_rows(
        rows,
        ColumnsLimits(
            max_rows=limits.max_entries,
            max_origins=limits.max_origins,
            max_claims=limits.max_origins,
        ),
    )


SIGNED_FRAME_BYTES = 112
"""Bytes a ``signed`` message adds around its rows, origin name aside: the
msgpack frame and keys, two bin headers, the 64-byte signature (a test pins
it against the encoder)."""


def _signed_body(m: SignedRows) -> dict[str, Any]:
    if len(m.signature) != 64:
        raise ValueError("a row signature is 64 bytes")
    return {"origin": _origin_name(m.origin), "rows": m.rows, "sig": m.signature}


def _decode_signed_msg(body: dict[str, Any], limits: WireLimits) -> SignedRows:
    origin = _name(body.get("origin"))
    rows, sig = body.get("rows"), body.get("sig")
    if not isinstance(rows, bytes) or not isinstance(sig, bytes) or len(sig) != 64:
        raise _Invalid("signed rows: rows and a 64-byte sig expected")
    return SignedRows(origin, rows, sig)


def decode_signed(m: SignedRows, limits: WireLimits = DEFAULT_LIMITS) -> ColumnarDelta | WireError:
    """The rows inside a verified ``signed`` message; a row or claim of any
    other origin than the signer's makes the whole batch a :class:`WireError`
    (a signer writes its own origin only)."""
    try:
        delta = _decode_delta({"rows": m.rows}, limits)
    except ColumnsInvalid as exc:
        return WireError(str(exc))
    except Exception as exc:  # a decoder bug must not take the agent down either
        return WireError(f"invalid: {type(exc).__name__}")
    if any(b.origin != m.origin for b in delta.batches) or any(
        c.origin != m.origin for c in delta.coverage
    ):
        return WireError("foreign_rows")
    return delta


def _member(u: MemberUpdate) -> list[Any]:
    load = (
        None
        if u.load is None
        else [float(u.load.packets_in_per_s), float(u.load.drop_ratio), float(u.load.loop_lag_ms)]
    )
    return [u.node_id, u.addr[0], u.addr[1], u.incarnation, u.state.value, load, u.source]


def _members(updates: tuple[MemberUpdate, ...]) -> list[list[Any]]:
    return [_member(u) for u in updates]


def _ping_body(m: Ping) -> dict[str, Any]:
    return {
        "seq": m.seq,
        "target": m.target_id,
        "sender": _member(m.sender),
        "updates": _members(m.updates),
    }


def _ack_body(m: Ack | Nack) -> dict[str, Any]:
    return {"seq": m.seq, "sender": _member(m.sender), "updates": _members(m.updates)}


def _ping_req_body(m: PingReq) -> dict[str, Any]:
    return {
        "seq": m.seq,
        "target": m.target_id,
        "host": m.target_addr[0],
        "port": m.target_addr[1],
        "sender": _member(m.sender),
        "updates": _members(m.updates),
    }


def _members_body(m: Members) -> dict[str, Any]:
    return {"sender": _member(m.sender), "members": _members(m.members), "reply": m.reply}


def _sync_body(m: Sync) -> dict[str, Any]:
    return {
        "digest": _digest_body(m.digest),
        "reply": m.reply,
        "sender": _member(m.sender),
        "updates": _members(m.updates),
    }


def _decode_member(row: object) -> MemberUpdate:
    node_id, host, port, inc, state, load, source = _fields(row, 7, "member")
    if not isinstance(state, str) or state not in {s.value for s in MemberState}:
        raise _Invalid(f"member state {state!r}")
    if not isinstance(host, str) or type(port) is not int:
        raise _Invalid("member address")
    workload = None
    if load is not None:
        figures = _fields(load, 3, "load")
        if not all(isinstance(x, float | int) and not isinstance(x, bool) for x in figures):
            raise _Invalid("load is not three numbers")
        try:
            workload = Workload(float(figures[0]), float(figures[1]), float(figures[2]))
        except ValueError as exc:
            raise _Invalid(f"load: {exc}") from None
    suspector = None if source is None else _name(source)
    try:
        return MemberUpdate(
            _name(node_id), (host, port), _version(inc), MemberState(state), workload, suspector
        )
    except ValueError as exc:
        raise _Invalid(f"member: {exc}") from None


def _decode_members(value: object) -> tuple[MemberUpdate, ...]:
    return tuple(_decode_member(r) for r in _list(value, MAX_UPDATES, "updates"))


def _seq(value: object) -> int:
    if type(value) is not int or not 0 <= value < 2**32:
        raise _Invalid(f"seq {value!r}")
    return value


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"expected a boolean, got {value!r}")
    return value


def _decode_ping(body: dict[str, Any], limits: WireLimits) -> Ping:
    return Ping(
        _seq(body.get("seq")),
        _name(body.get("target")),
        _decode_member(body.get("sender")),
        _decode_members(body.get("updates")),
    )


def _decode_ack(body: dict[str, Any], limits: WireLimits) -> Ack:
    return Ack(
        _seq(body.get("seq")),
        _decode_member(body.get("sender")),
        _decode_members(body.get("updates")),
    )


def _decode_nack(body: dict[str, Any], limits: WireLimits) -> Nack:
    return Nack(
        _seq(body.get("seq")),
        _decode_member(body.get("sender")),
        _decode_members(body.get("updates")),
    )


def _decode_ping_req(body: dict[str, Any], limits: WireLimits) -> PingReq:
    host, port = body.get("host"), body.get("port")
    if not isinstance(host, str) or not host or type(port) is not int or not 0 < port < 65536:
        raise _Invalid("ping_req target address")
    return PingReq(
        _seq(body.get("seq")),
        _name(body.get("target")),
        (host, port),
        _decode_member(body.get("sender")),
        _decode_members(body.get("updates")),
    )


def _decode_members_msg(body: dict[str, Any], limits: WireLimits) -> Members:
    return Members(
        _decode_member(body.get("sender")),
        _decode_members(body.get("members")),
        _bool(body.get("reply")),
    )


def _decode_sync(body: dict[str, Any], limits: WireLimits) -> Sync:
    digest = body.get("digest")
    if not isinstance(digest, dict):
        raise _Invalid("sync digest is not a map")
    return Sync(
        _decode_digest(digest, limits),
        _bool(body.get("reply")),
        _decode_member(body.get("sender")),
        _decode_members(body.get("updates")),
    )


# A new message type: a Kind, a dataclass in Message, and one entry in each table.
_KINDS: dict[type, Kind] = {
    Digest: Kind.DIGEST,
    ColumnarDelta: Kind.DELTA,
    Ping: Kind.PING,
    Ack: Kind.ACK,
    Nack: Kind.NACK,
    PingReq: Kind.PING_REQ,
    Members: Kind.MEMBERS,
    Sync: Kind.SYNC,
    ConfigOffer: Kind.CONFIG,
    SignedRows: Kind.SIGNED,
}
_ENCODERS: dict[Kind, Callable[[Any], dict[str, Any]]] = {
    Kind.DIGEST: _digest_body,
    Kind.DELTA: _delta_body,
    Kind.PING: _ping_body,
    Kind.ACK: _ack_body,
    Kind.NACK: _ack_body,
    Kind.PING_REQ: _ping_req_body,
    Kind.MEMBERS: _members_body,
    Kind.SYNC: _sync_body,
    Kind.CONFIG: lambda m: {"sender": _origin_name(m.sender), "doc": m.document},
    Kind.SIGNED: _signed_body,
}
_DECODERS: dict[str, Callable[[dict[str, Any], WireLimits], Message]] = {
    Kind.DIGEST.value: _decode_digest,
    Kind.DELTA.value: _decode_delta,
    Kind.PING.value: _decode_ping,
    Kind.ACK.value: _decode_ack,
    Kind.NACK.value: _decode_nack,
    Kind.PING_REQ.value: _decode_ping_req,
    Kind.MEMBERS.value: _decode_members_msg,
    Kind.SYNC.value: _decode_sync,
    Kind.CONFIG.value: lambda body, limits: ConfigOffer(_name(body.get("sender")), _bin(body)),
    Kind.SIGNED.value: _decode_signed_msg,
}


def _bin(body: dict[str, Any]) -> bytes:
    doc = body.get("doc")
    if not isinstance(doc, bytes):
        raise _Invalid("config doc is not bytes")
    return doc


def _list(value: object, limit: int, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise _Invalid(f"{what} is not a list")
    if len(value) > limit:
        raise _Invalid(f"{what} has {len(value)} items, over {limit}")
    return value


def _fields(row: object, n: int, what: str) -> list[Any]:
    if not isinstance(row, list) or len(row) != n:
        raise _Invalid(f"{what} is not a list of {n}")
    return row


def _version(value: object) -> int:
    """An incarnation or sequence number: at most MAX_VERSION (see there)."""
    if type(value) is not int or not 0 <= value <= MAX_VERSION:
        raise _Invalid(f"version {value!r} outside 0..{MAX_VERSION}")
    return value


def _name(value: object) -> str:
    if not isinstance(value, str) or not 1 <= len(value.encode()) <= MAX_ORIGIN_BYTES:
        raise _Invalid("origin name is not 1..255 bytes of UTF-8")
    return value
