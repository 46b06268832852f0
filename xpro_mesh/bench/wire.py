"""The mesh's wire cost: bytes per changed row, codec CPU per row, and a
million rows over the stream on loopback.

Rows are what a proxy sends in a botnet: one origin, thousands of bot
sources per destination (one /16 block for IPv4; random /64s of one /32 and
random interface ids for IPv6), windows within one sync interval and a few
seconds long, counts of a few packets, versions issued in no order of the
pairs. Timestamps either on the data path's default coarse clock (one jiffy,
4 ms) or in plain nanoseconds (``bpf_ktime_get_ns``).

Bytes are counted as they leave: sealed envelopes included, deltas of up to
``stream_after`` datagrams (``lan``: 1 400-byte datagrams) as datagrams,
larger ones as 4 MiB stream frames with their 4-byte length. Format 1
(msgpack rows, three per datagram) is measured in the same run as the
baseline, up to 100 000 rows (its per-row Python makes 1M a minute).

``python -m xpro_mesh.bench.wire [--sizes 10,1000,100000,1000000] [--json]``
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np
import numpy.typing as npt

from xpro_mesh.bench.stats import Check, Spread, checks_json, dumps, print_checks
from xpro_mesh.core.gossip_state import Coverage
from xpro_mesh.core.rows import ColumnarDelta, RowBatch, to_delta
from xpro_mesh.mesh import auth, identity, wire
from xpro_mesh.mesh.columns import decode_rows, encode_rows
from xpro_mesh.mesh.node import sign_chunks, signed_budget
from xpro_mesh.mesh.stream import StreamLimits, TcpStreamTransport

__all__ = ["botnet_rows", "main"]

ORIGIN = "proxy-1"
PEER = "proxy-2"  # the recipient: its id is in the envelope (issue 12)
DATAGRAM = 1_400  # the lan profile's gossip.max_message_bytes
STREAM_AFTER = 4  # the lan profile's gossip.stream_after
FRAME = 4 * 1024 * 1024  # the lan profile's gossip.stream_frame_bytes
KEYRING = auth.Keyring([bytes(range(32))])
INCARNATION = 1_764_600_000_000
TARGET_IPV4 = 16.0  # DESIGN.md "Scale": about 16 bytes on the wire per changed row
TARGET_IPV6 = 32.0  # two raw IPv6 addresses; the columns must at least pay for themselves
TARGET_ENCODE_NS = 1_000.0  # a share of the ~1 us per active pair of one cycle
TARGET_DECODE_NS = 500.0
TARGET_TRANSFER_S = 0.5  # a million rows within one lan gossip interval...
TARGET_END_TO_END_S = 3.0  # ...and cut, encoded, sealed, opened, decoded in 3 s of CPU
TARGET_WRITES = 8  # "a few large writes", not thousands of datagrams
# Per-node signatures (issue 12), one a batch: what they may add per row. At
# scale rows go in 4 MiB frames, where sign + verify must stay a small share
# (2.5 %) of the ~1 us a pair of one cycle; on a full datagram they may not
# take more than that whole budget (datagrams carry small deltas only: at
# most stream_after of them answer a Sync, larger ones stream).
TARGET_SIGN_VERIFY_FRAME_NS = 25.0
TARGET_SIGN_VERIFY_DATAGRAM_NS = 1_000.0
NODE_KEY = identity.NodeKey(bytes(range(32, 64)))
TRUST = identity.TrustList.of({ORIGIN: NODE_KEY.public})


def _mapped(x: npt.NDArray[np.int64]) -> npt.NDArray[np.bytes_]:
    a = np.zeros((len(x), 16), np.uint8)
    a[:, 10:12] = 0xFF
    a[:, 12:] = x.astype(">u4").view(np.uint8).reshape(-1, 4)
    return a.view("S16").ravel()


def _v6(hi: npt.NDArray[np.uint64], lo: npt.NDArray[np.uint64]) -> npt.NDArray[np.bytes_]:
    raw = np.empty((len(hi), 2), dtype=">u8")
    raw[:, 0] = hi
    raw[:, 1] = lo
    return raw.view("S16").ravel()


def botnet_rows(n: int, *, ipv6: bool = False, coarse: bool = True, seed: int = 1) -> ColumnarDelta:
    """``n`` changed rows of one origin (see the module docstring)."""
    rng = np.random.default_rng(seed)
    per_destination = 5_000
    groups = np.arange(n) // per_destination
    if ipv6:
        prefix = np.uint64(0x2001_0DB8 << 32)
        src = _v6(
            prefix | rng.integers(0, 2**32, n, dtype=np.uint64),
            rng.integers(0, 2**63, n, dtype=np.uint64) * np.uint64(2),
        )
        dst = _v6(np.full(n, np.uint64(0x2001_0DB8_FFFF_0000)), groups.astype(np.uint64) + 1)
    else:
        src = _mapped((44 << 24) + (np.arange(n) % 60_000))
        dst = _mapped((10 << 24) + (20 << 16) + groups)
    tick = 4_000_000 if coarse else 1
    t0 = 1_800_000_000_000_000_000
    ts2 = t0 + rng.integers(0, 500_000_000 // tick, n) * tick
    ts1 = ts2 - rng.integers(0, 5_000_000_000 // tick, n) * tick
    batch = RowBatch(
        ORIGIN,
        src,
        dst,
        ts1,
        ts2,
        rng.integers(1, 5, n),
        np.full(n, INCARNATION),
        rng.permutation(n).astype(np.int64) + 1,
    )
    return ColumnarDelta((batch,), (Coverage(ORIGIN, (0, 0), (INCARNATION, n)),))


# --- bytes --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Size:
    rows: int
    family: str
    clock: str
    channel: str  # "datagrams" or "stream"
    messages: int
    wire_bytes: int
    fill: float  # mean message size over its limit

    @property
    def per_row(self) -> float:
        return self.wire_bytes / self.rows


def wire_size(delta: ColumnarDelta, family: str, clock: str) -> Size:
    """What the node puts on the wire for ``delta`` (node.py's ``_answer``)."""
    overhead = auth.envelope_overhead(ORIGIN, PEER)
    budget = auth.payload_budget(DATAGRAM, ORIGIN, PEER)
    size = wire.encoded_size(delta)
    if size <= STREAM_AFTER * budget:
        chunks = wire.chunk_rows(delta, budget, whole_bytes=size)
        total = sum(len(wire.encode(c)) + overhead for c in chunks)
        return Size(
            delta.rows,
            family,
            clock,
            "datagrams",
            len(chunks),
            total,
            total / len(chunks) / DATAGRAM,
        )
    frame_budget = auth.payload_budget(FRAME, ORIGIN, PEER)
    chunks = wire.chunk_rows(delta, frame_budget, whole_bytes=size)
    total = sum(len(wire.encode(c)) + overhead + 4 for c in chunks)
    full = chunks[:-1] or chunks
    fill = sum(len(wire.encode(c)) + overhead for c in full) / len(full) / FRAME
    return Size(delta.rows, family, clock, "stream", len(chunks), total, fill)


def format1_size(delta: ColumnarDelta) -> float:
    """Bytes per row of format 1: msgpack rows, three a 1 400-byte datagram."""
    entries = to_delta(delta).entries
    overhead = auth.envelope_overhead(ORIGIN, PEER)
    total = 0
    for i in range(0, len(entries), 3):
        part = entries[i : i + 3]
        body = {
            "origins": [ORIGIN],
            "entries": [
                [
                    pe.pair[0],
                    pe.pair[1],
                    0,
                    pe.entry.ts1,
                    pe.entry.ts2,
                    pe.entry.c,
                    *pe.entry.version,
                ]
                for pe in part
            ],
            "coverage": [[0, 0, 0, INCARNATION, len(entries)]],
        }
        total += len(msgpack.packb({"v": 1, "kind": "delta", "body": body})) + overhead
    return total / len(entries)


# --- CPU ----------------------------------------------------------------------------


def codec_cpu(delta: ColumnarDelta, repeat: int) -> tuple[Spread, Spread]:
    """CPU ns per row of one encode and one decode of the whole delta."""
    enc: list[float] = []
    dec: list[float] = []
    data = b""
    for _ in range(repeat):
        t = time.process_time()
        data = encode_rows(delta)
        enc.append((time.process_time() - t) * 1e9 / delta.rows)
        t = time.process_time()
        decode_rows(data)
        dec.append((time.process_time() - t) * 1e9 / delta.rows)
    return Spread.of(enc), Spread.of(dec)


# --- signatures -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Signed:
    channel: str
    rows_per_batch: float
    batches: int
    bytes_per_row: float  # signed and sealed, as sent
    unsigned_bytes_per_row: float  # the same rows unsigned, the same run
    sign_us: Spread  # per batch
    verify_us: Spread  # per batch
    sign_verify_ns_per_row: Spread


def signed_cost(delta: ColumnarDelta, channel: str, repeat: int) -> Signed:
    """Rows cut, signed and sealed as a signing node sends them
    (``MeshNode._answer``), then verified as the receiver does."""
    limit = DATAGRAM if channel == "datagrams" else FRAME
    budget = auth.payload_budget(limit, ORIGIN, PEER)
    extra = 0 if channel == "datagrams" else 4  # a frame's length prefix
    overhead = auth.envelope_overhead(ORIGIN, PEER) + extra
    batches = sign_chunks(delta, signed_budget(budget, ORIGIN), NODE_KEY, ORIGIN)
    signed_bytes = sum(len(wire.encode(m)) + overhead for m in batches)
    plain = wire.chunk_rows(delta, budget)
    plain_bytes = sum(len(wire.encode(c)) + overhead for c in plain)
    sign: list[float] = []
    verify: list[float] = []
    per_row: list[float] = []
    for _ in range(repeat):
        t = time.process_time()
        sigs = [NODE_KEY.sign(ORIGIN, m.rows) for m in batches]
        t_sign = time.process_time() - t
        t = time.process_time()
        ok = all(TRUST.verify(ORIGIN, m.rows, sig) for m, sig in zip(batches, sigs, strict=True))
        t_verify = time.process_time() - t
        assert ok
        sign.append(t_sign * 1e6 / len(batches))
        verify.append(t_verify * 1e6 / len(batches))
        per_row.append((t_sign + t_verify) * 1e9 / delta.rows)
    return Signed(
        channel,
        delta.rows / len(batches),
        len(batches),
        signed_bytes / delta.rows,
        plain_bytes / delta.rows,
        Spread.of(sign),
        Spread.of(verify),
        Spread.of(per_row),
    )


def _signed_report(repeat: int, checks: list[Check]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    print("\nper-node signatures, one a batch (Ed25519, cryptography/OpenSSL)")
    print(
        f"{'channel':9} {'rows':>8} {'batches':>7} {'rows/batch':>10} {'B/row':>6} "
        f"{'unsigned':>8}  sign us/batch          verify us/batch        sign+verify ns/row"
    )
    for channel, n in (("datagrams", 20_000), ("stream", 1_000_000)):
        r = signed_cost(botnet_rows(n), channel, repeat)
        print(
            f"{channel:9} {n:>8} {r.batches:>7} {r.rows_per_batch:>10.0f} "
            f"{r.bytes_per_row:6.2f} {r.unsigned_bytes_per_row:8.2f}  {r.sign_us.fmt()}  "
            f"{r.verify_us.fmt()}  {r.sign_verify_ns_per_row.fmt()}"
        )
        out.append({"channel": channel, "rows": n, **{k: getattr(r, k) for k in r.__slots__}})
        datagrams = channel == "datagrams"
        target = TARGET_SIGN_VERIFY_DATAGRAM_NS if datagrams else TARGET_SIGN_VERIFY_FRAME_NS
        checks.append(
            Check(
                f"signed {channel}: sign+verify ns/row ({r.rows_per_batch:.0f} rows a batch)",
                r.sign_verify_ns_per_row.median,
                target,
                "ns",
            )
        )
        checks.append(
            Check(f"signed {channel}: ipv4 B/row, filled", r.bytes_per_row, TARGET_IPV4, "B")
        )
    return out


# --- the stream ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Transfer:
    rows: int
    frames: int
    bytes: int
    prepare_s: float  # chunk, encode, seal (wall)
    transfer_s: float  # first byte written .. last frame received (wall)
    end_to_end_s: float  # prepare + transfer + open and decode every frame (wall)
    codec_cpu_s: float  # CPU of cutting, encoding, sealing, opening, decoding


async def stream_transfer(delta: ColumnarDelta) -> Transfer:
    """A million rows from one node to another over loopback TCP, sealed and
    decoded as the node does it."""
    limits = StreamLimits(max_frame_bytes=FRAME, max_stream_bytes=256 * 1024 * 1024)
    received: list[bytes] = []
    done = asyncio.Event()
    frames_expected = 0

    def on_frame(frame: bytes, _peer: tuple[str, int]) -> None:
        received.append(frame)
        if len(received) == frames_expected:
            done.set()

    rx = await TcpStreamTransport.open(("127.0.0.1", 0), on_frame, limits)
    tx = await TcpStreamTransport.open(("127.0.0.1", 0), lambda f, p: None, limits)
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        sealer = auth.Sealer(KEYRING, ORIGIN, 1, max_bytes=FRAME, magic=auth.STREAM_MAGIC)
        chunks = wire.chunk_rows(delta, auth.payload_budget(FRAME, ORIGIN, PEER))
        frames = [sealer.seal(time.time_ns(), wire.encode(c), PEER) for c in chunks]
        frames_expected = len(frames)
        t1, c1 = time.perf_counter(), time.process_time()
        if not tx.send(rx.local_addr, frames):
            raise RuntimeError("the stream refused the frames")
        await asyncio.wait_for(done.wait(), 60)
        t2, c2 = time.perf_counter(), time.process_time()
        guard = auth.ReplayGuard()
        rows = 0
        for frame in received:
            opened = auth.open_(
                KEYRING, frame, time.time_ns(), guard, max_bytes=FRAME, magic=auth.STREAM_MAGIC
            )
            assert isinstance(opened, auth.Opened), opened
            message = wire.decode(
                opened.payload, wire.WireLimits(max_message_bytes=FRAME, max_entries=1 << 20)
            )
            assert isinstance(message, ColumnarDelta), message
            rows += message.rows
        t3, c3 = time.perf_counter(), time.process_time()
        assert rows == delta.rows, (rows, delta.rows)
        size = sum(map(len, frames))
        cpu = (c1 - c0) + (c3 - c2)
        return Transfer(delta.rows, len(frames), size, t1 - t0, t2 - t1, t3 - t0, cpu)
    finally:
        await tx.close()
        await rx.close()


# --- report -------------------------------------------------------------------------


def run(sizes: Sequence[int], repeat: int, transfer_rows: int) -> dict[str, Any]:
    checks: list[Check] = []
    sizes_out: list[dict[str, Any]] = []
    cpu_out: list[dict[str, Any]] = []
    print("bytes on the wire per changed row (envelopes included)")
    print(
        f"{'rows':>9} {'family':6} {'clock':7} {'channel':9} {'msgs':>6} {'fill':>5} "
        f"{'B/row':>7} {'format 1':>8} {'ratio':>6}"
    )
    for n in sizes:
        for family in ("ipv4", "ipv6"):
            for clock in ("coarse", "ns"):
                delta = botnet_rows(n, ipv6=family == "ipv6", coarse=clock == "coarse")
                size = wire_size(delta, family, clock)
                before = format1_size(delta) if n <= 100_000 and clock == "coarse" else None
                shown = (
                    f"{before:8.1f} {before / size.per_row:5.1f}x"
                    if before is not None
                    else f"{'-':>8} {'-':>6}"
                )
                print(
                    f"{n:>9} {family:6} {clock:7} {size.channel:9} {size.messages:>6} "
                    f"{size.fill:5.2f} {size.per_row:7.2f} {shown}"
                )
                sizes_out.append(
                    {
                        "rows": n,
                        "family": family,
                        "clock": clock,
                        "channel": size.channel,
                        "messages": size.messages,
                        "fill": size.fill,
                        "bytes_per_row": size.per_row,
                        "format1_bytes_per_row": before,
                    }
                )
                target = TARGET_IPV4 if family == "ipv4" else TARGET_IPV6
                if size.wire_bytes < DATAGRAM:
                    # Too few rows to fill a message: the envelope dominates; the
                    # target is that they travel as one datagram.
                    checks.append(
                        Check(f"{family} {clock}: datagrams for {n} rows", size.messages, 1)
                    )
                else:
                    checks.append(
                        Check(f"{family} {clock} B/row at {n} rows", size.per_row, target, "B")
                    )
    budget = auth.payload_budget(DATAGRAM, ORIGIN, PEER)
    chunks = wire.chunk_rows(botnet_rows(20_000, coarse=False), budget)
    full = [wire.encoded_size(c) for c in chunks[:-1]]
    fill = sum(full) / len(full) / budget
    per_datagram = sum(c.rows for c in chunks) / len(chunks)
    print(
        f"\n20000 rows cut for {DATAGRAM}-byte datagrams: {len(chunks)} datagrams, "
        f"{per_datagram:.0f} rows each (format 1: 3), payload fill {fill:.3f}"
    )
    checks.append(Check("datagram payload fill", fill, 0.9, "", "at_least"))
    sizes_out.append({"datagram_fill": fill, "rows_per_datagram": per_datagram})
    print("\ncodec CPU per row, ns (min/median/max)")
    for n in sizes:
        if n < 1_000:
            continue
        delta = botnet_rows(n, coarse=False)
        enc, dec = codec_cpu(delta, repeat)
        print(f"{n:>9}  encode {enc.fmt()}  decode {dec.fmt()}")
        cpu_out.append({"rows": n, "encode_ns": enc, "decode_ns": dec})
        checks.append(Check(f"encode ns/row at {n} rows", enc.median, TARGET_ENCODE_NS, "ns"))
        checks.append(Check(f"decode ns/row at {n} rows", dec.median, TARGET_DECODE_NS, "ns"))
    signed = _signed_report(repeat, checks)
    transfers: list[Transfer] = []
    if transfer_rows:
        delta = botnet_rows(transfer_rows, coarse=False)
        for _ in range(repeat):
            transfers.append(asyncio.run(stream_transfer(delta)))
        t = transfers[0]
        prep = Spread.of(x.prepare_s for x in transfers)
        xfer = Spread.of(x.transfer_s for x in transfers)
        e2e = Spread.of(x.end_to_end_s for x in transfers)
        cpu = Spread.of(x.codec_cpu_s for x in transfers)
        print(
            f"\n{transfer_rows} rows over the stream (loopback): {t.frames} frames, "
            f"{t.bytes / 1e6:.1f} MB; prepare {prep.fmt(1e3)} ms, transfer {xfer.fmt(1e3)} ms, "
            f"end to end {e2e.fmt(1e3)} ms (wall); codec CPU {cpu.fmt(1e3)} ms"
        )
        checks.append(
            Check(f"stream transfer of {transfer_rows} rows", xfer.median, TARGET_TRANSFER_S, "s")
        )
        checks.append(
            Check(
                f"stream codec CPU of {transfer_rows} rows (cut, encode, seal, open, decode)",
                cpu.median,
                TARGET_END_TO_END_S,
                "s",
            )
        )
        checks.append(Check(f"stream writes for {transfer_rows} rows", t.frames, TARGET_WRITES))
    print()
    print_checks(checks)
    return {
        "note": "shared 2-core VM: figures are noisy; compare ratios within one run",
        "sizes": sizes_out,
        "cpu": cpu_out,
        "signed": signed,
        "transfers": transfers,
        **checks_json(checks),
    }


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes", default="10,1000,100000,1000000", help="changed rows to measure, comma separated"
    )
    parser.add_argument("--repeat", type=int, default=3, help="repetitions of every timing")
    parser.add_argument(
        "--transfer-rows",
        type=int,
        default=1_000_000,
        help="rows sent over the stream on loopback (0: skip)",
    )
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = parser.parse_args(argv)
    try:
        sizes = [int(x) for x in args.sizes.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--sizes: expected numbers like 10,1000, got {args.sizes!r}")
    if not sizes or min(sizes) < 1 or args.repeat < 1 or args.transfer_rows < 0:
        parser.error("--sizes must be >= 1, --repeat >= 1, --transfer-rows >= 0")
    if args.json:
        real = sys.stdout
        sys.stdout = sys.stderr  # the tables go to stderr, the document alone to stdout
        try:
            document = run(sizes, args.repeat, args.transfer_rows)
        finally:
            sys.stdout = real
        print(dumps(document))
    else:
        document = run(sizes, args.repeat, args.transfer_rows)
    return 0 if not document["missed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
