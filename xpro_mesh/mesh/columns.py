"""The columnar encoding of a :class:`~xpro_mesh.core.rows.ColumnarDelta`: the
bytes inside a ``delta`` message of :mod:`xpro_mesh.mesh.wire`.

Why: a botnet of 10^5..10^6 sources changes every pair every interval, and
the design budget is about 16 bytes on the wire per changed row (DESIGN.md,
"Scale"); a msgpack row of two 16-byte addresses and five u64 is 50-86 bytes.
Rows of one origin are sent as columns instead, each column coded by what
its values have in common:

* rows sorted by (destination, source); destinations named once per group,
  sources delta-coded within a group, an address as two big-endian u64
  halves ``(hi, lo)``: an IPv4-mapped address has ``hi = 0``, so its ``hi``
  column costs nothing and its ``lo`` deltas are the IPv4 gaps;
* ``ts2``, the window length ``ts2 - ts1`` (zig-zag, so a malformed row with
  ``ts1 > ts2`` still travels exactly), ``c``, ``inc`` and ``seq`` as
  frame-of-reference columns: minus their minimum, divided by their greatest
  common divisor (the kernel's coarse clock ticks in jiffies, so times share
  one), then either fixed-width little-endian bytes or LEB128 varints,
  whichever is shorter for that column. A constant column costs 0 bytes a row.

Layout (``varint`` is unsigned LEB128; every count is bounded by the decoder)::

    message := varint n_origins, n_origins × (u8 len, len bytes UTF-8)
               varint n_claims,  n_claims × (varint origin, 4 × varint)  # after, upto
               varint n_batches, n_batches × batch
    batch   := varint origin, varint rows, varint groups,
               col dst_hi, col dst_lo, col group_rows,             # per group
               col src_hi, col src_lo, col ts2, col window, col c, col inc, col seq
    col     := u8 mode, varint base, varint gcd,
               mode 0: u8 width, rows × width bytes (little-endian)
               mode 1: varint length, length bytes of varints

Address columns hold differences from the previous row's address (the first
row's from 0): ``hi`` always, ``lo`` when ``hi`` did not change (absolute
otherwise). Within a destination group they are >= 0 (sorted); at a group's
first row they may be negative and are zig-zag coded, so a new group costs
a few bytes, not a whole address.

The decoder trusts nothing: every count is checked against the bytes left
and the limits, every value against its range (< 2^63 for the int64 columns,
< 2^64 for addresses, strictly increasing addresses, so no pair twice and no
wrap-around), every index against its table; it raises only
:class:`ColumnsInvalid`, which :func:`xpro_mesh.mesh.wire.decode` turns into a
``WireError``. Pure and vectorised (numpy): no per-row Python.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from xpro_mesh.core.gossip_state import Coverage
from xpro_mesh.core.rows import ADDRESS_DTYPE, INT_MAX, ColumnarDelta, RowBatch

__all__ = [
    "MAX_ORIGIN_BYTES",
    "MAX_VERSION",
    "ColumnsInvalid",
    "ColumnsLimits",
    "decode_rows",
    "encode_rows",
]

MAX_ORIGIN_BYTES = 255
MAX_VERSION = 2**62
"""The largest incarnation or sequence number a peer may send (rows, claims,
digests, member records). A receiver that takes a peer's version as its own
clock (a refused copy of its own row, a refuted suspicion) then counts on from
it; bounding what it can be told far below 2^63 keeps every later ``+ 1``
inside int64 and u64 for 2^61 more steps, so no datagram can make the next
version overflow (issue 12: a version of 2^64 - 1 crashed the encoder)."""
_U64 = np.uint64
U64s = npt.NDArray[np.uint64]
_MODE_FIXED = 0
_MODE_VARINT = 1


class ColumnsInvalid(Exception):
    """The bytes are not a columnar delta (the message says why)."""


@dataclass(frozen=True, slots=True)
class ColumnsLimits:
    """What a decoder accepts before allocating anything."""

    max_rows: int = 1 << 20  # rows in one message, all origins together
    max_origins: int = 4_096  # origins named in one message
    max_claims: int = 4_096  # coverage claims in one message


# --- varints ---------------------------------------------------------------------


def _varint_sizes(v: U64s) -> npt.NDArray[np.int64]:
    sizes = np.ones(len(v), dtype=np.int64)
    for k in range(1, 10):
        sizes += v >= _U64(1 << (7 * k))
    return sizes


def _varints(v: U64s) -> bytes:
    """LEB128 of every value, vectorised: one pass per byte position."""
    if len(v) == 0:
        return b""
    sizes = _varint_sizes(v)
    ends = np.cumsum(sizes)
    out = np.empty(int(ends[-1]), dtype=np.uint8)
    at = ends - sizes  # where each value's first byte goes
    rest = v.copy()
    live = np.arange(len(v))
    for k in range(int(sizes.max())):
        if k:
            keep = sizes[live] > k
            live, at, rest = live[keep], at[keep], rest[keep]
        byte = (rest & _U64(0x7F)).astype(np.uint8)
        rest >>= _U64(7)
        byte[sizes[live] > k + 1] |= 0x80
        out[at + k] = byte
    return out.tobytes()


def _read_varints(seg: npt.NDArray[np.uint8], n: int) -> U64s:
    """Exactly ``n`` varints filling ``seg``; each < 2^64."""
    if n == 0:
        if len(seg):
            raise ColumnsInvalid("varint column has bytes but no rows")
        return np.zeros(0, dtype=np.uint64)
    term = seg < 0x80
    ends = np.flatnonzero(term)
    if len(ends) != n or not term[-1]:
        raise ColumnsInvalid(f"varint column holds {len(ends)} values, expected {n}")
    starts = np.empty(n, dtype=np.int64)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts + 1
    longest = int(lengths.max())
    if longest > 10:
        raise ColumnsInvalid("varint longer than 10 bytes")
    values = (seg[starts] & 0x7F).astype(np.uint64)
    for k in range(1, longest):
        more = np.flatnonzero(lengths > k)
        part = (seg[starts[more] + k] & 0x7F).astype(np.uint64)
        if k == 9 and int(part.max()) > 1:
            raise ColumnsInvalid("varint over 64 bits")
        values[more] |= part << _U64(7 * k)
    return values


def _put_varint(out: bytearray, value: int) -> None:
    if value < 0 or value >= 1 << 64:
        raise ValueError(f"varint out of range: {value}")
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return


class _Reader:
    """A cursor over untrusted bytes; every read checks what is left."""

    __slots__ = ("buf", "data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.buf = np.frombuffer(data, dtype=np.uint8)
        self.pos = 0

    def varint(self, limit: int = (1 << 64) - 1, what: str = "value") -> int:
        value = 0
        for shift in range(0, 70, 7):
            if self.pos >= len(self.data):
                raise ColumnsInvalid("truncated varint")
            byte = self.data[self.pos]
            self.pos += 1
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                if value > limit:
                    raise ColumnsInvalid(f"{what} {value} over {limit}")
                return value
        raise ColumnsInvalid("varint longer than 10 bytes")

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise ColumnsInvalid("truncated")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def take(self, n: int) -> npt.NDArray[np.uint8]:
        if n < 0 or self.pos + n > len(self.data):
            raise ColumnsInvalid(f"truncated: {n} bytes wanted, {len(self.data) - self.pos} left")
        seg = self.buf[self.pos : self.pos + n]
        self.pos += n
        return seg

    def raw(self, n: int) -> bytes:
        seg = self.take(n)
        return seg.tobytes()


# --- columns ----------------------------------------------------------------------


def _gcd(q: U64s) -> int:
    """The greatest common divisor of ``q`` (1 when cheap to see it is 1)."""
    if len(q) == 0:
        return 1
    head = int(np.gcd.reduce(q[:64]))
    if head <= 1:
        return 1
    g = int(np.gcd.reduce(q))
    return g if g > 0 else 1


def _column(out: bytearray, v: U64s) -> None:
    """Append one frame-of-reference column (see the module docstring)."""
    if len(v) == 0:
        out += bytes((_MODE_FIXED, 0, 1, 0))
        return
    base = int(v.min())
    q = v - _U64(base)
    g = _gcd(q)
    if g > 1:
        q = q // _U64(g)
    top = int(q.max())
    width = (top.bit_length() + 7) // 8
    fixed = width * len(q)
    varint_bytes = int(_varint_sizes(q).sum()) if width > 1 else fixed + 1
    if varint_bytes < fixed:
        body = _varints(q)
        out.append(_MODE_VARINT)
        _put_varint(out, base)
        _put_varint(out, g)
        _put_varint(out, len(body))
        out += body
        return
    out.append(_MODE_FIXED)
    _put_varint(out, base)
    _put_varint(out, g)
    out.append(width)
    if width:
        out += q.astype("<u8").view(np.uint8).reshape(-1, 8)[:, :width].tobytes()


def _read_column(r: _Reader, n: int, limit: int) -> U64s:
    """``n`` values, each <= ``limit`` (2^63 - 1 or 2^64 - 1)."""
    mode = r.byte()
    base = r.varint()
    g = r.varint()
    if g == 0:
        raise ColumnsInvalid("column divisor 0")
    if mode == _MODE_FIXED:
        width = r.byte()
        if width > 8:
            raise ColumnsInvalid(f"column width {width} over 8 bytes")
        if width == 0:
            q = np.zeros(n, dtype=np.uint64)
        else:
            seg = r.take(n * width)
            wide = np.zeros((n, 8), dtype=np.uint8)
            wide[:, :width] = seg.reshape(n, width)
            q = wide.view("<u8").ravel().astype(np.uint64)
    elif mode == _MODE_VARINT:
        length = r.varint(len(r.data))
        q = _read_varints(r.take(length), n)
    else:
        raise ColumnsInvalid(f"column mode {mode}")
    if n:
        top = int(q.max())
        if base + top * g > limit:
            raise ColumnsInvalid(f"column value {base + top * g} over {limit}")
    if g != 1:
        q = q * _U64(g)
    if base:
        q = q + _U64(base)
    return q


# --- addresses --------------------------------------------------------------------


def _halves(addresses: npt.NDArray[np.bytes_]) -> tuple[U64s, U64s]:
    raw = np.ascontiguousarray(addresses, dtype=ADDRESS_DTYPE).view(np.uint8).reshape(-1, 16)
    hi = raw[:, :8].copy().view(">u8").ravel().astype(np.uint64)
    lo = raw[:, 8:].copy().view(">u8").ravel().astype(np.uint64)
    return hi, lo


def _addresses(hi: U64s, lo: U64s) -> npt.NDArray[np.bytes_]:
    raw = np.empty((len(hi), 2), dtype=">u8")
    raw[:, 0] = hi
    raw[:, 1] = lo
    return raw.view(ADDRESS_DTYPE).ravel()


def _zigzag(d: U64s) -> U64s:
    """Two's-complement differences to zig-zag (small magnitudes, small codes)."""
    signed = d.view(np.int64)
    out: U64s = ((signed << 1) ^ (signed >> 63)).view(np.uint64)
    return out


def _unzigzag(z: U64s) -> U64s:
    out: U64s = (z >> _U64(1)) ^ (_U64(0) - (z & _U64(1)))
    return out


def _shifted(v: U64s) -> U64s:
    prev = np.zeros_like(v)
    prev[1:] = v[:-1]
    return prev


def _address_deltas(hi: U64s, lo: U64s, restart: npt.NDArray[np.bool_]) -> tuple[U64s, U64s]:
    """Addresses sorted within groups to difference columns: each address minus
    the one before it (the first minus 0), ``lo`` absolute where ``hi``
    changed. Inside a group the differences are >= 0; at a group's first row
    (``restart``) they may be negative and travel zig-zag coded."""
    hi_prev = _shifted(hi)
    dhi = hi - hi_prev
    moved = hi != hi_prev
    dlo = np.where(moved, lo, lo - _shifted(lo))
    dhi[restart] = _zigzag(dhi[restart])
    signed = restart & ~moved
    dlo[signed] = _zigzag(dlo[signed])
    return dhi, dlo


def _undo_address_deltas(dhi: U64s, dlo: U64s, restart: npt.NDArray[np.bool_]) -> tuple[U64s, U64s]:
    """Inverse of :func:`_address_deltas`, refusing anything not strictly
    increasing within a group (a pair twice, or a difference that wrapped).
    Sums are modulo 2^64, so every result is a 16-byte address."""
    n = len(dhi)
    dhi = dhi.copy()
    dhi[restart] = _unzigzag(dhi[restart])
    hi = np.cumsum(dhi, dtype=np.uint64)
    moved = hi != _shifted(hi)
    dlo = dlo.copy()
    signed = restart & ~moved
    dlo[signed] = _unzigzag(dlo[signed])
    starts = moved.copy()
    if n:
        starts[0] = True
    lo = _segment_cumsum(dlo, starts)
    if n > 1:
        inner = ~restart[1:]
        hi_up = hi[1:] > hi[:-1]
        same = hi[1:] == hi[:-1]
        lo_up = lo[1:] > lo[:-1]
        if not np.all(~inner | hi_up | (same & lo_up)):
            raise ColumnsInvalid("addresses of a group are not strictly increasing")
    return hi, lo


def _segment_cumsum(d: U64s, starts: npt.NDArray[np.bool_]) -> U64s:
    """Running sums restarting where ``starts`` is set (uint64, modulo 2^64)."""
    if len(d) == 0:
        return d.copy()
    total = np.cumsum(d, dtype=np.uint64)
    idx = np.flatnonzero(starts)
    seg = np.cumsum(starts) - 1  # which segment each row is in
    before = total[idx] - d[idx]  # the running sum just before each segment
    out: U64s = total - before[seg]
    return out


# --- encode -----------------------------------------------------------------------


def encode_rows(delta: ColumnarDelta) -> bytes:
    """The columnar bytes of ``delta``. Raises ``ValueError`` for a delta this
    node should never build: a value outside 0..2^63-1, an origin name that
    is not 1..255 bytes, an origin with two batches, or a pair twice in one
    origin's batch."""
    names: list[str] = []
    index: dict[str, int] = {}
    for b in delta.batches:
        if b.origin in index:
            raise ValueError(f"origin {b.origin!r} has two batches in one delta")
        index[b.origin] = len(names)
        names.append(b.origin)
    for cov in delta.coverage:
        if cov.origin not in index:
            index[cov.origin] = len(names)
            names.append(cov.origin)
    out = bytearray()
    _put_varint(out, len(names))
    for name in names:
        raw = name.encode()
        if not 1 <= len(raw) <= MAX_ORIGIN_BYTES:
            raise ValueError(f"origin names are 1..{MAX_ORIGIN_BYTES} UTF-8 bytes, got {name!r}")
        out.append(len(raw))
        out += raw
    _put_varint(out, len(delta.coverage))
    for cov in delta.coverage:
        _put_varint(out, index[cov.origin])
        for part in (*cov.after, *cov.upto):
            if not 0 <= part <= INT_MAX:
                raise ValueError(f"a claim's version is 0..2^63-1, got {part}")
            _put_varint(out, part)
    batches = [b for b in delta.batches if len(b)]
    _put_varint(out, len(batches))
    for b in batches:
        _encode_batch(out, index[b.origin], b)
    return bytes(out)


def _ints(values: npt.NDArray[np.int64], what: str) -> U64s:
    v = np.asarray(values, dtype=np.int64)
    if len(v) and int(v.min()) < 0:
        raise ValueError(f"{what} must be 0..2^63-1")
    return v.astype(np.uint64)


def _encode_batch(out: bytearray, origin: int, b: RowBatch) -> None:
    n = len(b)
    s_hi, s_lo = _halves(b.src)
    d_hi, d_lo = _halves(b.dst)
    order = np.lexsort((s_lo, s_hi, d_lo, d_hi))
    s_hi, s_lo, d_hi, d_lo = s_hi[order], s_lo[order], d_hi[order], d_lo[order]
    new_group = np.ones(n, dtype=bool)
    if n > 1:
        new_group[1:] = (d_hi[1:] != d_hi[:-1]) | (d_lo[1:] != d_lo[:-1])
        dup = ~new_group[1:] & (s_hi[1:] == s_hi[:-1]) & (s_lo[1:] == s_lo[:-1])
        if dup.any():
            raise ValueError(f"origin {b.origin!r}: a pair appears twice in one batch")
    starts = np.flatnonzero(new_group)
    group_rows = np.diff(np.append(starts, n)).astype(np.uint64)
    g_hi, g_lo = d_hi[starts], d_lo[starts]
    first = np.zeros(len(starts), dtype=bool)
    first[0] = True
    gd_hi, gd_lo = _address_deltas(g_hi, g_lo, first)
    sd_hi, sd_lo = _address_deltas(s_hi, s_lo, new_group)
    ts1 = np.asarray(b.ts1, dtype=np.int64)[order]
    ts2 = np.asarray(b.ts2, dtype=np.int64)[order]
    _ints(ts1, "ts1")
    window = ts2 - ts1  # both in 0..2^63-1, so the difference fits int64
    zigzag = ((window << 1) ^ (window >> 63)).astype(np.uint64)
    _put_varint(out, origin)
    _put_varint(out, n)
    _put_varint(out, len(starts))
    for col in (gd_hi, gd_lo, group_rows, sd_hi, sd_lo):
        _column(out, col)
    _column(out, _ints(ts2, "ts2"))
    _column(out, zigzag)
    for name in ("c", "inc", "seq"):
        _column(out, _ints(np.asarray(getattr(b, name), dtype=np.int64)[order], name))


# --- decode -----------------------------------------------------------------------


def decode_rows(data: bytes, limits: ColumnsLimits = ColumnsLimits()) -> ColumnarDelta:
    """The delta in ``data``; raises :class:`ColumnsInvalid` and nothing else
    (numpy's own errors included, should a check above them be missing)."""
    try:
        return _decode(data, limits)
    except ColumnsInvalid:
        raise
    except (ValueError, TypeError, IndexError, OverflowError, MemoryError) as exc:
        raise ColumnsInvalid(f"invalid: {type(exc).__name__}") from None


def _decode(data: bytes, limits: ColumnsLimits) -> ColumnarDelta:
    r = _Reader(data)
    names: list[str] = []
    for _ in range(r.varint(limits.max_origins, "origins")):
        raw = r.raw(r.byte())
        try:
            name = raw.decode()
        except UnicodeDecodeError:
            raise ColumnsInvalid("origin name is not UTF-8") from None
        if not raw:
            raise ColumnsInvalid("origin name is empty")
        names.append(name)
    if len(set(names)) != len(names):
        raise ColumnsInvalid("an origin is named twice")
    claims: list[Coverage] = []
    for _ in range(r.varint(limits.max_claims, "claims")):
        oi = r.varint(len(names) - 1, "origin index") if names else _no_origin()
        a_inc, a_seq, u_inc, u_seq = (r.varint(MAX_VERSION) for _ in range(4))
        claims.append(Coverage(names[oi], after=(a_inc, a_seq), upto=(u_inc, u_seq)))
    batches: list[RowBatch] = []
    seen: set[int] = set()
    rows_left = limits.max_rows
    for _ in range(r.varint(len(names), "batches")):
        oi = r.varint(len(names) - 1, "origin index") if names else _no_origin()
        if oi in seen:
            raise ColumnsInvalid("an origin has two batches")
        seen.add(oi)
        n = r.varint(rows_left, "rows")
        if n == 0:
            raise ColumnsInvalid("an empty batch")
        rows_left -= n
        batches.append(_decode_batch(r, names[oi], n))
    if r.pos != len(data):
        raise ColumnsInvalid(f"{len(data) - r.pos} bytes after the last batch")
    return ColumnarDelta(batches=tuple(batches), coverage=tuple(claims))


def _no_origin() -> int:
    raise ColumnsInvalid("an origin index but no origin named")


def _decode_batch(r: _Reader, origin: str, n: int) -> RowBatch:
    u64_max = (1 << 64) - 1
    groups = r.varint(n)
    if groups == 0:
        raise ColumnsInvalid("rows without a destination")
    gd_hi = _read_column(r, groups, u64_max)
    gd_lo = _read_column(r, groups, u64_max)
    group_rows = _read_column(r, groups, n)
    if int(group_rows.min()) < 1 or int(group_rows.sum()) != n:
        raise ColumnsInvalid("group sizes do not add up to the rows")
    first = np.zeros(groups, dtype=bool)
    first[0] = True
    g_hi, g_lo = _undo_address_deltas(gd_hi, gd_lo, first)  # one segment: all increasing
    starts = np.zeros(groups, dtype=np.int64)
    starts[1:] = np.cumsum(group_rows[:-1].astype(np.int64))
    new_group = np.zeros(n, dtype=bool)
    new_group[starts] = True
    sd_hi = _read_column(r, n, u64_max)
    sd_lo = _read_column(r, n, u64_max)
    s_hi, s_lo = _undo_address_deltas(sd_hi, sd_lo, new_group)
    reps = group_rows.astype(np.int64)
    ts2 = _read_column(r, n, INT_MAX).astype(np.int64)
    zigzag = _read_column(r, n, u64_max)
    window = (zigzag >> _U64(1)).astype(np.int64) ^ -(zigzag & _U64(1)).astype(np.int64)
    ts1 = ts2 - window
    if n and int(ts1.min()) < 0:  # an int64 wrap shows as negative too
        raise ColumnsInvalid("ts1 out of range")
    c = _read_column(r, n, INT_MAX).astype(np.int64)
    inc = _read_column(r, n, MAX_VERSION).astype(np.int64)
    seq = _read_column(r, n, MAX_VERSION).astype(np.int64)
    return RowBatch(
        origin=origin,
        src=_addresses(s_hi, s_lo),
        dst=np.repeat(_addresses(g_hi, g_lo), reps),
        ts1=ts1,
        ts2=ts2,
        c=c,
        inc=inc,
        seq=seq,
    )
