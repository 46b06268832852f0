"""BpfMaps: the v2 map backend over the live BPF maps of an attached program.

Opened from the pins (``BpfMaps.open(pin_dir)``) or from a program loaded
in this process (``LoadedProgram.maps()``, tests). The slot arrays, the
free rings and their positions are ``BPF_F_MMAPABLE`` arrays: this backend
maps them once (``mmap``, shared, read-write) and works on them as numpy
structured arrays (:class:`~xpro_mesh.datapath.slots.SlotArrays`), so
reading a million slots or writing a million views is memory traffic, not
syscalls. The rest (index deletes, config, clock, stats, events) goes
through libbpf on file descriptors (:mod:`xpro_mesh.datapath.libbpf`), so
opening a live data path needs neither bcc nor clang.

Every method blocks; the async agent calls them in an executor. One writer
(the agent) per interface; calls from threads of one process are
serialized by the caller.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import mmap
import os
from pathlib import Path

import numpy as np
import numpy.typing as npt

from xpro_mesh.datapath import clock, libbpf, structs
from xpro_mesh.datapath.backend import OverloadWarning, Stats
from xpro_mesh.datapath.config import XdpConfig
from xpro_mesh.datapath.errors import DatapathError
from xpro_mesh.datapath.slots import SlotArrays

__all__ = ["MAP_LAYOUT", "MMAPPED", "PROG_PINS", "BpfMaps"]

# name -> (key size, value size) as the program defines them.
MAP_LAYOUT: dict[str, tuple[int, int]] = {
    "pair_index": (ct.sizeof(structs.XproPairKey), 4),
    "pair_slots": (4, ct.sizeof(structs.XproSlot)),
    "dest_index": (ct.sizeof(structs.XproAddr), 4),
    "dest_slots": (4, ct.sizeof(structs.XproDslot)),
    "pair_free": (4, 8),
    "dest_free": (4, 8),
    "ring_ctl": (4, ct.sizeof(structs.XproRing)),
    "spares": (4, ct.sizeof(structs.XproSpare)),
    "config": (4, ct.sizeof(structs.XproConfig)),
    "clock": (4, ct.sizeof(structs.XproClock)),
    "stats": (4, ct.sizeof(structs.XproStats)),
    "events": (0, 0),
}
MMAPPED: dict[str, np.dtype] = {
    "pair_slots": structs.PAIR_SLOT_DTYPE,
    "dest_slots": structs.DEST_SLOT_DTYPE,
    "pair_free": np.dtype("<u8"),
    "dest_free": np.dtype("<u8"),
    "ring_ctl": structs.RING_DTYPE,
}
PROG_PINS = ("prog_filter",)
_ZERO = ct.c_uint32(0)
_DELETE_CHUNK = 1 << 16


def _mmap_array(fd: int, name: str, dtype: np.dtype) -> tuple[mmap.mmap, np.ndarray]:
    info = libbpf.map_info(fd)
    if not info.flags & libbpf.BPF_F_MMAPABLE:
        raise DatapathError(f"map {name} is not mmapable (made by another version): detach first")
    length = info.max_entries * dtype.itemsize
    pages = (length + mmap.PAGESIZE - 1) // mmap.PAGESIZE * mmap.PAGESIZE
    mm = mmap.mmap(fd, pages, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    return mm, np.frombuffer(mm, dtype=dtype, count=info.max_entries)


class BpfMaps(SlotArrays):
    """The :class:`~xpro_mesh.datapath.backend.MapBackend` over BPF maps."""

    def __init__(
        self, map_fds: dict[str, int], *, owns_fds: bool = False, recover: bool = False
    ) -> None:
        missing = [name for name in MAP_LAYOUT if name not in map_fds]
        if missing:
            raise DatapathError(f"maps missing: {', '.join(missing)}")
        self._fds = dict(map_fds)
        self._owns = owns_fds
        self._events: list[OverloadWarning] = []
        self._ring: libbpf.RingBuffer | None = None
        self._ncpu = libbpf.num_possible_cpus()
        self._mmaps: list[mmap.mmap] = []
        self.check_layout()
        arrays = {}
        try:
            for name, dtype in MMAPPED.items():
                mm, arr = _mmap_array(self._fds[name], name, dtype)
                self._mmaps.append(mm)
                arrays[name] = arr
        except BaseException:
            arrays.clear()
            self._unmap()
            raise
        super().__init__(
            arrays["pair_slots"],
            arrays["dest_slots"],
            arrays["pair_free"],
            arrays["dest_free"],
            arrays["ring_ctl"],
        )
        if recover:
            self.recover()

    @classmethod
    def open(cls, pin_dir: str | Path, *, recover: bool = False) -> BpfMaps:
        """Open the maps pinned under ``pin_dir``. ``recover=True`` (the
        agent, the one writer, at its start): find the slots an earlier
        agent expired but did not recycle and put them back on the rings.
        Never from a second process while an agent runs (stats readers, the
        lab): its slots pending recycling would look leaked and be freed
        twice."""
        pin = Path(pin_dir)
        fds: dict[str, int] = {}
        try:
            for name in MAP_LAYOUT:
                fds[name] = libbpf.obj_get(str(pin / name))
        except OSError as exc:
            for fd in fds.values():
                os.close(fd)
            raise DatapathError(
                f"no live XDP data path pinned at {pin} ({exc.strerror}); "
                "run `xpro-mesh xdp attach`"
            ) from None
        try:
            return cls(fds, owns_fds=True, recover=recover)
        except BaseException:
            for fd in fds.values():
                with contextlib.suppress(OSError):
                    os.close(fd)
            raise

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

    # -- the indexes ------------------------------------------------------------

    def _delete_keys(self, name: str, keys: bytes, count: int, size: int) -> int:
        fd = self._fds[name]
        deleted = done = 0
        while done < count:
            n = min(count - done, _DELETE_CHUNK)
            got = libbpf.map_delete_batch(fd, keys[done * size : (done + n) * size], n)
            deleted += got
            done += got
            if got < n:  # a missing key stops the batch: skip it
                done += 1
        return deleted

    def _delete_pair_keys(self, keys: bytes, count: int) -> int:
        return self._delete_keys("pair_index", keys, count, 32)

    def _delete_dest_keys(self, keys: bytes, count: int) -> int:
        return self._delete_keys("dest_index", keys, count, 16)

    def _indexed_slots(self) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.uint32]]:
        out = []
        for name, key_size in (("pair_index", 32), ("dest_index", 16)):
            _keys, values, n = libbpf.map_lookup_batch(self._fds[name], key_size, 4)
            out.append(np.frombuffer(values, np.uint32, count=n).copy())
        return out[0], out[1]

    def lookup_pair(self, src: str | bytes, dst: str | bytes) -> int | None:
        """The slot ``pair_index`` names for the pair of ``src``'s client
        (its prefix, ``src_prefix4/6``) and ``dst`` (None: not indexed)."""
        client = self.get_config().client_of(structs.to_addr(src))
        key = structs.pair_key_struct(client, structs.to_addr(dst))
        value = ct.c_uint32()
        if libbpf.map_lookup_elem(self._fds["pair_index"], key, value):
            return int(value.value)
        return None

    def lookup_dest(self, dst: str | bytes) -> int | None:
        value = ct.c_uint32()
        if libbpf.map_lookup_elem(
            self._fds["dest_index"], structs.addr_struct(structs.to_addr(dst)), value
        ):
            return int(value.value)
        return None

    # -- config, clock, stats ----------------------------------------------------

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

    def set_config(self, config: XdpConfig) -> None:
        libbpf.map_update_elem(self._fds["config"], _ZERO, config.to_struct())

    def sync_clock(self) -> int:
        offset = clock.kernel_offset_ns()
        self.write_clock(offset=offset)
        return offset

    def write_clock(self, *, offset: int | None = None, test_now: int | None = None) -> None:
        """Set fields of the clock map (``test_now``: XPRO_TEST_CLOCK builds)."""
        raw = self.read_clock()
        if offset is not None:
            raw.offset = offset
        if test_now is not None:
            raw.test_now = test_now
        libbpf.map_update_elem(self._fds["clock"], _ZERO, raw)

    # -- events ------------------------------------------------------------------

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

    # -- lifecycle ---------------------------------------------------------------

    def _unmap(self) -> None:
        """Drop this object's arrays, then unmap. An array a caller still
        holds keeps its mapping alive until it is collected (numpy holds
        the buffer): unmapping under it would crash the process."""
        empty = np.zeros(0, structs.PAIR_SLOT_DTYPE)
        self._pairs = empty
        self._dests = np.zeros(0, structs.DEST_SLOT_DTYPE)
        self._rings = (np.zeros(0, np.uint64), np.zeros(0, np.uint64))
        self._ctl = np.zeros(2, structs.RING_DTYPE)
        self._pair_words = np.zeros((0, 16), np.uint64)
        self._dest_words = np.zeros((0, 16), np.uint64)
        for mm in self._mmaps:
            with contextlib.suppress(BufferError):
                mm.close()
        self._mmaps = []

    def close(self) -> None:
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        if self._mmaps:
            self._unmap()
        if self._owns:
            for fd in self._fds.values():
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._fds = {}
            self._owns = False

    def __enter__(self) -> BpfMaps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
