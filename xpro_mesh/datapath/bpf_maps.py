"""BpfMaps: the map backend over the live BPF maps of an attached program.

Opened from the pins (``BpfMaps.open(pin_dir)``) or from a program loaded
in this process (``LoadedProgram.maps()``, tests). It works on file
descriptors through libbpf (:mod:`xpro_mesh.datapath.libbpf`): batch lookups
read a million pairs in ~120 syscalls, and writes go through the in-kernel
apply program (see :mod:`xpro_mesh.datapath.backend` for the semantics), so
opening a live data path needs neither bcc nor clang.

Every method blocks; the async agent calls them in an executor. One writer
(``apply``/``delete_pairs``/``set_config``/``sync_clock``) per interface:
calls from threads of one process are serialized here.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import os
import struct
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from xpro_mesh.core.algorithm import DestinationAggregate, LocalRecord
from xpro_mesh.datapath import clock, libbpf, structs
from xpro_mesh.datapath.backend import (
    ApplyReport,
    DestOp,
    OverloadWarning,
    PairKey,
    PairOp,
    PairRecord,
    Stats,
)
from xpro_mesh.datapath.config import XdpConfig
from xpro_mesh.datapath.errors import DatapathError

__all__ = ["MAP_LAYOUT", "PROG_PINS", "BpfMaps"]

# name -> (key size, value size) as the program defines them.
MAP_LAYOUT: dict[str, tuple[int, int]] = {
    "pairs": (ct.sizeof(structs.XproPairKey), ct.sizeof(structs.XproPair)),
    "dests": (ct.sizeof(structs.XproAddr), ct.sizeof(structs.XproDest)),
    "config": (4, ct.sizeof(structs.XproConfig)),
    "clock": (4, ct.sizeof(structs.XproClock)),
    "stats": (4, ct.sizeof(structs.XproStats)),
    "apply_ops": (4, ct.sizeof(structs.XproOp)),
    "events": (0, 0),
}
PROG_PINS = ("prog_filter", "prog_apply")

_OP = struct.Struct("<IIII16s16sQqqqQQ")  # struct xpro_op, field by field
_PAIR_KEY = struct.Struct("<16s16s")  # struct xpro_pair_key
_APPLY_RETRIES = 16
# struct xpro_pair as numpy sees it: lets a sync find the pairs with new
# packets among a million without a Python object per pair.
_PAIR_DTYPE = np.dtype(
    [
        ("ts1", "<u8"),
        ("ts2", "<u8"),
        ("c", "<i8"),
        ("dc", "<i8"),
        ("warn_ts", "<u8"),
        ("mark", "<u4"),
        ("flags", "<u4"),
        ("links", "V32"),
    ]
)
_ZERO = ct.c_uint32(0)


def _op_bytes(
    kind: int,
    flags: int,
    src: bytes,
    dst: bytes,
    expect_ts1: int,
    acked_dc: int,
    c_delta: int,
    n_delta: int,
    ts1: int,
    ts2: int,
) -> bytes:
    try:
        return _OP.pack(
            kind,
            flags,
            structs.XPRO_STATUS_PENDING,
            0,
            src,
            dst,
            expect_ts1,
            acked_dc,
            c_delta,
            n_delta,
            ts1,
            ts2,
        )
    except struct.error as exc:
        raise ValueError(f"op out of range for the kernel's 64-bit fields: {exc}") from None


class BpfMaps:
    """The :class:`~xpro_mesh.datapath.backend.MapBackend` over BPF maps."""

    def __init__(self, map_fds: dict[str, int], apply_fd: int, *, owns_fds: bool = False) -> None:
        missing = [name for name in MAP_LAYOUT if name not in map_fds]
        if missing:
            raise DatapathError(f"maps missing: {', '.join(missing)}")
        self._fds = dict(map_fds)
        self._apply_fd = apply_fd
        self._owns = owns_fds
        self._write_lock = threading.Lock()
        self._events: list[OverloadWarning] = []
        self._ring: libbpf.RingBuffer | None = None
        self._ncpu = libbpf.num_possible_cpus()
        self.check_layout()

    @classmethod
    def open(cls, pin_dir: str | Path) -> BpfMaps:
        """Open the maps and the apply program pinned under ``pin_dir``."""
        pin = Path(pin_dir)
        fds: dict[str, int] = {}
        try:
            for name in MAP_LAYOUT:
                fds[name] = libbpf.obj_get(str(pin / name))
            apply_fd = libbpf.obj_get(str(pin / "prog_apply"))
        except OSError as exc:
            for fd in fds.values():
                os.close(fd)
            raise DatapathError(
                f"no live XDP data path pinned at {pin} ({exc.strerror}); "
                "run `xpro-mesh xdp attach`"
            ) from None
        return cls(fds, apply_fd, owns_fds=True)

    def check_layout(self) -> None:
        """Refuse maps whose key/value sizes differ from this version's structs."""
        for name, (key_size, value_size) in MAP_LAYOUT.items():
            if name == "events":
                continue
            info = libbpf.map_info(self._fds[name])
            if (info.key_size, info.value_size) != (key_size, value_size):
                raise DatapathError(
                    f"map {name} has key/value size {info.key_size}/{info.value_size}, this "
                    f"version expects {key_size}/{value_size}: detach and attach again"
                )

    def map_fd(self, name: str) -> int:
        return self._fds[name]

    @property
    def pairs_max(self) -> int:
        return libbpf.map_info(self._fds["pairs"]).max_entries

    # -- reads ---------------------------------------------------------------

    def read_pairs(self) -> list[tuple[PairKey, PairRecord]]:
        key_size, value_size = MAP_LAYOUT["pairs"]
        keys, values, _n = libbpf.map_lookup_batch(self._fds["pairs"], key_size, value_size)
        return [
            (PairKey(src, dst), LocalRecord(ts1, ts2, c, dc, mark))
            for (src, dst), (ts1, ts2, c, dc, _warn, mark, _flags) in zip(
                _PAIR_KEY.iter_unpack(keys), structs.PAIR_RECORD.iter_unpack(values), strict=True
            )
        ]

    def read_active_pairs(self) -> tuple[list[tuple[PairKey, PairRecord]], int]:
        key_size, value_size = MAP_LAYOUT["pairs"]
        keys, values, n = libbpf.map_lookup_batch(self._fds["pairs"], key_size, value_size)
        table = np.frombuffer(values, dtype=_PAIR_DTYPE, count=n)
        active = np.flatnonzero((table["dc"] != 0) | (table["mark"] != 0))
        unpack = structs.PAIR_RECORD.unpack_from
        out = []
        for i in active.tolist():
            ts1, ts2, c, dc, _warn, mark, _flags = unpack(values, i * value_size)
            at = i * key_size
            out.append(
                (
                    PairKey(keys[at : at + 16], keys[at + 16 : at + 32]),
                    LocalRecord(ts1, ts2, c, dc, mark),
                )
            )
        return out, n

    def lookup_pairs(self, keys: Sequence[PairKey]) -> list[tuple[PairKey, PairRecord]]:
        fd = self._fds["pairs"]
        value = structs.XproPair()
        out = []
        for key in keys:
            if libbpf.map_lookup_elem(fd, structs.pair_key_struct(key.src, key.dst), value):
                out.append((key, LocalRecord(value.ts1, value.ts2, value.c, value.dc, value.mark)))
        return out

    def read_destinations(self) -> list[tuple[bytes, DestinationAggregate]]:
        key_size, value_size = MAP_LAYOUT["dests"]
        keys, values, _n = libbpf.map_lookup_batch(self._fds["dests"], key_size, value_size)
        return [
            (keys[i * 16 : (i + 1) * 16], DestinationAggregate(ts1=ts1, ts2=ts2, c=c, clients=n))
            for i, (ts1, ts2, c, n, _lock, _flags) in enumerate(
                structs.DEST_RECORD.iter_unpack(values)
            )
        ]

    def read_dest_flags(self) -> dict[bytes, int]:
        """XPRO_DEST_* flags per destination (diagnostics: DIRTY order)."""
        key_size, value_size = MAP_LAYOUT["dests"]
        keys, values, _n = libbpf.map_lookup_batch(self._fds["dests"], key_size, value_size)
        return {
            keys[i * 16 : (i + 1) * 16]: flags
            for i, (_a, _b, _c, _d, _lock, flags) in enumerate(
                structs.DEST_RECORD.iter_unpack(values)
            )
        }

    def read_pair_struct(self, key: PairKey) -> structs.XproPair | None:
        """One raw pair value (diagnostics and tests)."""
        value = structs.XproPair()
        ok = libbpf.map_lookup_elem(
            self._fds["pairs"], structs.pair_key_struct(key.src, key.dst), value
        )
        return value if ok else None

    def count_pairs(self) -> int:
        key_size, value_size = MAP_LAYOUT["pairs"]
        return libbpf.map_lookup_batch(self._fds["pairs"], key_size, value_size)[2]

    def read_stats(self) -> Stats:
        size = ct.sizeof(structs.XproStats)
        stride = (size + 7) // 8 * 8
        buf = bytearray(stride * self._ncpu)
        libbpf.map_lookup_elem(self._fds["stats"], _ZERO, buf)
        totals = dict.fromkeys(structs.STATS_FIELDS, 0)
        for cpu in range(self._ncpu):
            per_cpu = structs.XproStats.from_buffer_copy(buf, cpu * stride)
            for name in structs.STATS_FIELDS:
                totals[name] += getattr(per_cpu, name)
        return Stats.from_counters(totals)

    def get_config(self) -> XdpConfig:
        raw = structs.XproConfig()
        libbpf.map_lookup_elem(self._fds["config"], _ZERO, raw)
        return XdpConfig.from_struct(raw)

    def config_written(self) -> bool:
        raw = structs.XproConfig()
        libbpf.map_lookup_elem(self._fds["config"], _ZERO, raw)
        return bool(raw.version != 0)

    def read_clock(self) -> structs.XproClock:
        raw = structs.XproClock()
        libbpf.map_lookup_elem(self._fds["clock"], _ZERO, raw)
        return raw

    # -- writes --------------------------------------------------------------

    def set_config(self, config: XdpConfig) -> None:
        with self._write_lock:
            libbpf.map_update_elem(self._fds["config"], _ZERO, config.to_struct())

    def sync_clock(self) -> int:
        offset = clock.kernel_offset_ns()
        self.write_clock(offset=offset)
        return offset

    def write_clock(self, *, offset: int | None = None, test_now: int | None = None) -> None:
        """Set fields of the clock map (``test_now``: XPRO_TEST_CLOCK builds)."""
        with self._write_lock:
            raw = self.read_clock()
            if offset is not None:
                raw.offset = offset
            if test_now is not None:
                raw.test_now = test_now
            libbpf.map_update_elem(self._fds["clock"], _ZERO, raw)

    def apply(
        self, pair_ops: Sequence[PairOp] = (), dest_ops: Sequence[DestOp] = ()
    ) -> ApplyReport:
        ops: list[tuple[bytes, PairKey | None]] = []
        for d in dest_ops:
            ops.append(
                (
                    _op_bytes(
                        structs.XPRO_OP_DEST,
                        0,
                        bytes(16),
                        d.dst,
                        0,
                        0,
                        d.c_delta,
                        d.n_delta,
                        d.ts1,
                        d.ts2,
                    ),
                    None,
                )
            )
        for p in pair_ops:
            if p.expect_ts1 is None:
                flags, expect = structs.XPRO_OP_CREATE, 0
            else:
                flags, expect = structs.XPRO_OP_EXPECT, p.expect_ts1
            ops.append(
                (
                    _op_bytes(
                        structs.XPRO_OP_PAIR,
                        flags,
                        p.key.src,
                        p.key.dst,
                        expect,
                        p.acked_dc,
                        p.c_delta,
                        0,
                        p.ts1,
                        p.ts2,
                    ),
                    p.key,
                )
            )
        statuses = self._run_ops([raw for raw, _ in ops])
        applied = created = failed = 0
        restarted: list[PairKey] = []
        missing: list[PairKey] = []
        for (_raw, key), status in zip(ops, statuses, strict=True):
            if status == structs.XPRO_STATUS_APPLIED:
                applied += 1
            elif status == structs.XPRO_STATUS_CREATED:
                created += 1
            elif status == structs.XPRO_STATUS_RESTARTED and key is not None:
                restarted.append(key)
            elif status == structs.XPRO_STATUS_MISSING and key is not None:
                missing.append(key)
            else:
                failed += 1
        return ApplyReport(applied, created, tuple(restarted), tuple(missing), failed)

    def delete_pairs(self, keys: Sequence[PairKey]) -> int:
        ops = [_op_bytes(structs.XPRO_OP_DELETE, 0, k.src, k.dst, 0, 0, 0, 0, 0, 0) for k in keys]
        return sum(1 for s in self._run_ops(ops) if s == structs.XPRO_STATUS_APPLIED)

    def _run_ops(self, ops: Sequence[bytes]) -> list[int]:
        """Fill apply_ops a batch at a time and run the apply program until no
        op is pending (a busy destination lock leaves an op pending)."""
        statuses: list[int] = []
        batch = structs.XPRO_APPLY_BATCH
        op_size = _OP.size
        with self._write_lock:
            for start in range(0, len(ops), batch):
                chunk = ops[start : start + batch]
                n = len(chunk)
                libbpf.map_update_batch(
                    self._fds["apply_ops"], struct.pack(f"<{n}I", *range(n)), b"".join(chunk), n
                )
                frame = struct.pack("<I", n).ljust(64, b"\0")
                got: list[int] = []
                for _ in range(_APPLY_RETRIES):
                    libbpf.prog_test_run(self._apply_fd, frame)
                    _keys, values, _count = libbpf.map_lookup_batch(
                        self._fds["apply_ops"], 4, op_size, chunk=batch
                    )
                    got = [structs.OP_STATUS.unpack_from(values, i * op_size)[2] for i in range(n)]
                    if structs.XPRO_STATUS_PENDING not in got:
                        break
                statuses.extend(
                    structs.XPRO_STATUS_FAILED if s == structs.XPRO_STATUS_PENDING else s
                    for s in got
                )
        return statuses

    # -- events --------------------------------------------------------------

    def poll_events(self, timeout_ms: int = 0) -> list[OverloadWarning]:
        if self._ring is None:
            self._ring = libbpf.RingBuffer(self._fds["events"], self._on_event)
        self._ring.poll(timeout_ms)
        events, self._events = self._events, []
        return events

    def _on_event(self, raw: bytes) -> None:
        if len(raw) < ct.sizeof(structs.XproEvent):
            return
        ev = structs.XproEvent.from_buffer_copy(raw)
        self._events.append(
            OverloadWarning(bytes(ev.src.b), bytes(ev.dst.b), ev.ts1, ev.ts2, ev.c, ev.suppressed)
        )

    # -- lifecycle -----------------------------------------------------------

    def close(self) -> None:
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        if self._owns:
            for fd in [*self._fds.values(), self._apply_fd]:
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._fds = {}
            self._owns = False

    def __enter__(self) -> BpfMaps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
