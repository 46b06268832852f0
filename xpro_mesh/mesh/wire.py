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
load]``, ``state`` one of ``alive|suspect|dead`` and ``load`` nil or
``[packets_in_per_s, drop_ratio, loop_lag_ms]``.

``delta``   ``{"origins": [str, ...],
              "entries": [[src, dst, origin_index, ts1, ts2, c, incarnation, seq], ...],
              "coverage": [[origin_index, after_inc, after_seq, upto_inc, upto_seq], ...]}``

A delta names each origin once and refers to it by index, which keeps a row at
about 50 bytes (at most :data:`MAX_ENTRY_BYTES`). The decoder checks types,
sizes and index ranges only; whether a row is plausible (clock skew, rates,
table size) is :meth:`xpro_mesh.core.gossip_state.GossipState.merge`'s job.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

import msgpack

from xpro_mesh.core.gossip_state import (
    Coverage,
    Delta,
    Digest,
    OriginEntry,
    PairEntry,
    Version,
)
from xpro_mesh.mesh.membership import MemberState, MemberUpdate, Workload
from xpro_mesh.mesh.messages import Ack, Members, Ping, PingReq, Sync

__all__ = [
    "ADDRESS_BYTES",
    "FORMAT_VERSION",
    "MAX_ENTRY_BYTES",
    "Kind",
    "Message",
    "WireError",
    "WireLimits",
    "decode",
    "encode",
    "entries_per_payload",
    "kind_of",
]

FORMAT_VERSION = 1
ADDRESS_BYTES = 16
MAX_ORIGIN_BYTES = 255
_U64 = 2**64

# Worst case of one delta row: an array header (1), two 16-byte bin fields
# (2 + 16 each), an origin index (up to 3) and five u64 (9 each).
MAX_ENTRY_BYTES = 1 + 2 * (2 + ADDRESS_BYTES) + 3 + 5 * 9
# Worst case of the envelope, the origin table entry and a claim per row.
_MAX_ORIGIN_OVERHEAD = 3 + MAX_ORIGIN_BYTES + 1 + 3 + 4 * 9
_MAX_FRAME_BYTES = 64


class Kind(enum.StrEnum):
    """The message types; the ``kind`` field on the wire."""

    DIGEST = "digest"
    DELTA = "delta"
    PING = "ping"
    ACK = "ack"
    PING_REQ = "ping_req"
    MEMBERS = "members"
    SYNC = "sync"


Message = Digest | Delta | Ping | Ack | PingReq | Members | Sync

MAX_UPDATES = 64  # membership updates in one message (piggyback or push-pull part)


@dataclass(frozen=True, slots=True)
class WireLimits:
    """Sizes a decoder accepts before looking at content."""

    max_message_bytes: int = 1 << 20  # push-pull may go over a stream, not one datagram
    max_entries: int = 65_536  # rows in one delta
    max_origins: int = 4_096  # origins named in one message


DEFAULT_LIMITS = WireLimits()


@dataclass(frozen=True, slots=True)
class WireError:
    """Why bytes from a peer were not a message; the agent counts these."""

    reason: str


def entries_per_payload(payload_bytes: int) -> int:
    """How many delta rows always fit a payload of this size, whatever their
    origins (what the sender passes to :func:`chunk_delta` as ``max_items``)."""
    per_row = MAX_ENTRY_BYTES + _MAX_ORIGIN_OVERHEAD
    return max(1, (payload_bytes - _MAX_FRAME_BYTES) // per_row)


# --- encoding ----------------------------------------------------------------


def encode(message: Message) -> bytes:
    """msgpack bytes for one message. Raises ``ValueError`` for a message this
    node should never build (e.g. a pair that is not two 16-byte addresses)."""
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


def _delta_body(delta: Delta) -> dict[str, Any]:
    # Origins are indexed in sorted order so that equal deltas encode to equal
    # bytes whatever order their rows come in.
    names = sorted({pe.origin for pe in delta.entries} | {c.origin for c in delta.coverage})
    for name in names:
        if not name or len(name) > MAX_ORIGIN_BYTES // 4:
            _origin_name(name)
    index = {name: i for i, name in enumerate(names)}
    entries = []
    for pe in delta.entries:
        pair = pe.pair
        if len(pair) != 2:
            _bad_pair(pair)
        src, dst = pair
        if type(src) is not bytes or type(dst) is not bytes:
            _bad_pair(pair)
        if len(src) != ADDRESS_BYTES or len(dst) != ADDRESS_BYTES:
            _bad_pair(pair)
        e = pe.entry
        entries.append([src, dst, index[pe.origin], e.ts1, e.ts2, e.c, e.version[0], e.version[1]])
    coverage = [
        [index[c.origin], c.after[0], c.after[1], c.upto[0], c.upto[1]] for c in delta.coverage
    ]
    return {"origins": names, "entries": entries, "coverage": coverage}


def _bad_pair(pair: object) -> NoReturn:
    raise ValueError(f"a pair on the wire is two {ADDRESS_BYTES}-byte addresses, got {pair!r}")


def _origin_name(name: str) -> str:
    if not 1 <= len(name.encode()) <= MAX_ORIGIN_BYTES:
        raise ValueError(f"origin names are 1..{MAX_ORIGIN_BYTES} UTF-8 bytes, got {name!r}")
    return name


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
            max_bin_len=ADDRESS_BYTES,
            max_array_len=max(limits.max_entries, limits.max_origins) + 8,
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
    except _Invalid as exc:
        return WireError(str(exc))
    except Exception as exc:  # a decoder bug must not take the agent down either
        return WireError(f"invalid: {type(exc).__name__}")


def _decode_digest(body: dict[str, Any], limits: WireLimits) -> Digest:
    sender = _name(body.get("sender"))
    rows = _list(body.get("versions"), limits.max_origins, "versions")
    versions: dict[str, Version] = {}
    for row in rows:
        origin, inc, seq = _fields(row, 3, "version")
        versions[_name(origin)] = (_u64(inc), _u64(seq))
    return Digest(sender=sender, versions=versions)


def _decode_delta(body: dict[str, Any], limits: WireLimits) -> Delta:
    origins = [_name(o) for o in _list(body.get("origins"), limits.max_origins, "origins")]
    entries: list[PairEntry] = []
    for row in _list(body.get("entries"), limits.max_entries, "entries"):
        src, dst, oi, ts1, ts2, c, inc, seq = _fields(row, 8, "entry")
        entry = OriginEntry(ts1=_u64(ts1), ts2=_u64(ts2), c=_u64(c), version=(_u64(inc), _u64(seq)))
        entries.append(PairEntry((_address(src), _address(dst)), _index(origins, oi), entry))
    coverage: list[Coverage] = []
    for row in _list(body.get("coverage"), limits.max_origins, "coverage"):
        oi, a_inc, a_seq, u_inc, u_seq = _fields(row, 5, "coverage")
        coverage.append(
            Coverage(
                _index(origins, oi),
                after=(_u64(a_inc), _u64(a_seq)),
                upto=(_u64(u_inc), _u64(u_seq)),
            )
        )
    return Delta(entries=tuple(entries), coverage=tuple(coverage))


def _member(u: MemberUpdate) -> list[Any]:
    load = None if u.load is None else [
        float(u.load.packets_in_per_s), float(u.load.drop_ratio), float(u.load.loop_lag_ms)
    ]
    return [u.node_id, u.addr[0], u.addr[1], u.incarnation, u.state.value, load]


def _members(updates: tuple[MemberUpdate, ...]) -> list[list[Any]]:
    return [_member(u) for u in updates]


def _ping_body(m: Ping) -> dict[str, Any]:
    return {"seq": m.seq, "target": m.target_id, "sender": _member(m.sender),
            "updates": _members(m.updates)}


def _ack_body(m: Ack) -> dict[str, Any]:
    return {"seq": m.seq, "sender": _member(m.sender), "updates": _members(m.updates)}


def _ping_req_body(m: PingReq) -> dict[str, Any]:
    return {"seq": m.seq, "target": m.target_id, "host": m.target_addr[0],
            "port": m.target_addr[1], "sender": _member(m.sender), "updates": _members(m.updates)}


def _members_body(m: Members) -> dict[str, Any]:
    return {"sender": _member(m.sender), "members": _members(m.members), "reply": m.reply}


def _sync_body(m: Sync) -> dict[str, Any]:
    return {"digest": _digest_body(m.digest), "reply": m.reply, "sender": _member(m.sender),
            "updates": _members(m.updates)}


def _decode_member(row: object) -> MemberUpdate:
    node_id, host, port, inc, state, load = _fields(row, 6, "member")
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
    try:
        return MemberUpdate(_name(node_id), (host, port), _u64(inc), MemberState(state), workload)
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
    return Ping(_seq(body.get("seq")), _name(body.get("target")),
                _decode_member(body.get("sender")), _decode_members(body.get("updates")))


def _decode_ack(body: dict[str, Any], limits: WireLimits) -> Ack:
    return Ack(_seq(body.get("seq")), _decode_member(body.get("sender")),
               _decode_members(body.get("updates")))


def _decode_ping_req(body: dict[str, Any], limits: WireLimits) -> PingReq:
    host, port = body.get("host"), body.get("port")
    if not isinstance(host, str) or not host or type(port) is not int or not 0 < port < 65536:
        raise _Invalid("ping_req target address")
    return PingReq(_seq(body.get("seq")), _name(body.get("target")), (host, port),
                   _decode_member(body.get("sender")), _decode_members(body.get("updates")))


def _decode_members_msg(body: dict[str, Any], limits: WireLimits) -> Members:
    return Members(_decode_member(body.get("sender")), _decode_members(body.get("members")),
                   _bool(body.get("reply")))


def _decode_sync(body: dict[str, Any], limits: WireLimits) -> Sync:
    digest = body.get("digest")
    if not isinstance(digest, dict):
        raise _Invalid("sync digest is not a map")
    return Sync(_decode_digest(digest, limits), _bool(body.get("reply")),
                _decode_member(body.get("sender")), _decode_members(body.get("updates")))


# A new message type: a Kind, a dataclass in Message, and one entry in each table.
_KINDS: dict[type, Kind] = {
    Digest: Kind.DIGEST,
    Delta: Kind.DELTA,
    Ping: Kind.PING,
    Ack: Kind.ACK,
    PingReq: Kind.PING_REQ,
    Members: Kind.MEMBERS,
    Sync: Kind.SYNC,
}
_ENCODERS: dict[Kind, Callable[[Any], dict[str, Any]]] = {
    Kind.DIGEST: _digest_body,
    Kind.DELTA: _delta_body,
    Kind.PING: _ping_body,
    Kind.ACK: _ack_body,
    Kind.PING_REQ: _ping_req_body,
    Kind.MEMBERS: _members_body,
    Kind.SYNC: _sync_body,
}
_DECODERS: dict[str, Callable[[dict[str, Any], WireLimits], Message]] = {
    Kind.DIGEST.value: _decode_digest,
    Kind.DELTA.value: _decode_delta,
    Kind.PING.value: _decode_ping,
    Kind.ACK.value: _decode_ack,
    Kind.PING_REQ.value: _decode_ping_req,
    Kind.MEMBERS.value: _decode_members_msg,
    Kind.SYNC.value: _decode_sync,
}


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


def _u64(value: object) -> int:
    if type(value) is not int or not 0 <= value < _U64:
        raise _Invalid(f"expected an unsigned 64-bit integer, got {value!r}")
    return value


def _name(value: object) -> str:
    if not isinstance(value, str) or not 1 <= len(value.encode()) <= MAX_ORIGIN_BYTES:
        raise _Invalid("origin name is not 1..255 bytes of UTF-8")
    return value


def _address(value: object) -> bytes:
    if not isinstance(value, bytes) or len(value) != ADDRESS_BYTES:
        raise _Invalid(f"address is not {ADDRESS_BYTES} bytes")
    return value


def _index(origins: list[str], value: object) -> str:
    if type(value) is not int or not 0 <= value < len(origins):
        raise _Invalid(f"origin index {value!r} out of range")
    return origins[value]
