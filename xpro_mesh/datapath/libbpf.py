"""ctypes bindings to Debian's libbpf.so.1: the map, object and test-run calls
the data path makes on file descriptors.

bcc compiles and loads the program (:mod:`xpro_mesh.datapath.loader`); once
the maps and programs are pinned, everything else works on plain fds through
these calls, so the agent needs neither bcc nor clang to open a live data
path. Every function raises :class:`OSError` with the errno on failure
(libbpf 1.x returns ``-errno``).

Blocking: every call is a syscall; the async agent runs them in an executor.
"""

from __future__ import annotations

import ctypes as ct
import errno
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

__all__ = [
    "BPF_F_MMAPABLE",
    "XDP_FLAGS_DRV_MODE",
    "XDP_FLAGS_SKB_MODE",
    "XDP_FLAGS_UPDATE_IF_NOEXIST",
    "MapInfo",
    "RingBuffer",
    "TestRun",
    "lib",
    "map_delete_batch",
    "map_delete_elem",
    "map_get_next_key",
    "map_info",
    "map_lookup_batch",
    "map_lookup_elem",
    "map_update_batch",
    "map_update_elem",
    "num_possible_cpus",
    "obj_get",
    "obj_pin",
    "prog_id",
    "prog_test_run",
    "xdp_attach",
    "xdp_detach",
    "xdp_query",
]

BPF_ANY = 0
BPF_F_MMAPABLE = 1 << 10
BPF_NOEXIST = 1
BPF_EXIST = 2

XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2

# enum { XDP_ATTACHED_NONE, XDP_ATTACHED_DRV, XDP_ATTACHED_SKB, XDP_ATTACHED_HW, ..._MULTI }
XDP_ATTACHED_NONE = 0
XDP_ATTACHED_DRV = 1
XDP_ATTACHED_SKB = 2


class _BatchOpts(ct.Structure):
    """struct bpf_map_batch_opts { size_t sz; __u64 elem_flags; __u64 flags; };"""

    _fields_ = [("sz", ct.c_size_t), ("elem_flags", ct.c_uint64), ("flags", ct.c_uint64)]


class _TestRunOpts(ct.Structure):
    """struct bpf_test_run_opts (libbpf 1.1): sz, data_in, data_out,
    data_size_in, data_size_out, ctx_in, ctx_out, ctx_size_in, ctx_size_out,
    retval, repeat, duration, flags, cpu, batch_size."""

    _fields_ = [
        ("sz", ct.c_size_t),
        ("data_in", ct.c_void_p),
        ("data_out", ct.c_void_p),
        ("data_size_in", ct.c_uint32),
        ("data_size_out", ct.c_uint32),
        ("ctx_in", ct.c_void_p),
        ("ctx_out", ct.c_void_p),
        ("ctx_size_in", ct.c_uint32),
        ("ctx_size_out", ct.c_uint32),
        ("retval", ct.c_uint32),
        ("repeat", ct.c_int),
        ("duration", ct.c_uint32),
        ("flags", ct.c_uint32),
        ("cpu", ct.c_uint32),
        ("batch_size", ct.c_uint32),
    ]


class _XdpQueryOpts(ct.Structure):
    """struct bpf_xdp_query_opts (libbpf 1.1): sz, prog_id, drv_prog_id,
    hw_prog_id, skb_prog_id, attach_mode."""

    _fields_ = [
        ("sz", ct.c_size_t),
        ("prog_id", ct.c_uint32),
        ("drv_prog_id", ct.c_uint32),
        ("hw_prog_id", ct.c_uint32),
        ("skb_prog_id", ct.c_uint32),
        ("attach_mode", ct.c_uint8),
    ]


class _MapInfo(ct.Structure):
    """The head of struct bpf_map_info (the kernel copies what fits)."""

    _fields_ = [
        ("type", ct.c_uint32),
        ("id", ct.c_uint32),
        ("key_size", ct.c_uint32),
        ("value_size", ct.c_uint32),
        ("max_entries", ct.c_uint32),
        ("map_flags", ct.c_uint32),
        ("name", ct.c_char * 16),
    ]


class _ProgInfo(ct.Structure):
    """The head of struct bpf_prog_info."""

    _fields_ = [("type", ct.c_uint32), ("id", ct.c_uint32), ("tag", ct.c_uint8 * 8)]


_SampleFn = ct.CFUNCTYPE(ct.c_int, ct.c_void_p, ct.c_void_p, ct.c_size_t)


@cache
def lib() -> ct.CDLL:
    """Load libbpf.so.1 and declare the signatures used here."""
    so = ct.CDLL("libbpf.so.1", use_errno=True)
    i, u32, vp, cp = ct.c_int, ct.c_uint32, ct.c_void_p, ct.c_char_p
    u32p = ct.POINTER(u32)
    sigs: dict[str, tuple[type | None, list[type]]] = {
        "bpf_obj_get": (i, [cp]),
        "bpf_obj_pin": (i, [i, cp]),
        "bpf_obj_get_info_by_fd": (i, [i, vp, u32p]),
        "bpf_map_lookup_elem": (i, [i, vp, vp]),
        "bpf_map_update_elem": (i, [i, vp, vp, ct.c_uint64]),
        "bpf_map_delete_elem": (i, [i, vp]),
        "bpf_map_get_next_key": (i, [i, vp, vp]),
        "bpf_map_lookup_batch": (i, [i, vp, vp, vp, vp, u32p, vp]),
        "bpf_map_update_batch": (i, [i, vp, vp, u32p, vp]),
        "bpf_map_delete_batch": (i, [i, vp, u32p, vp]),
        "bpf_prog_test_run_opts": (i, [i, vp]),
        "bpf_xdp_attach": (i, [i, i, u32, vp]),
        "bpf_xdp_detach": (i, [i, u32, vp]),
        "bpf_xdp_query": (i, [i, i, vp]),
        "libbpf_num_possible_cpus": (i, []),
        "ring_buffer__new": (vp, [i, _SampleFn, vp, vp]),
        "ring_buffer__poll": (i, [vp, i]),
        "ring_buffer__consume": (i, [vp]),
        "ring_buffer__free": (None, [vp]),
    }
    for name, (res, args) in sigs.items():
        fn = getattr(so, name)
        fn.restype = res
        fn.argtypes = args
    return so


def _check(rc: int, what: str) -> int:
    if rc < 0:
        err = -rc if rc != -1 else (ct.get_errno() or errno.EIO)
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return rc


def _buf(obj: ct._CData | ct.Array | bytearray | None) -> int | None:  # type: ignore[type-arg]
    if obj is None:
        return None
    if isinstance(obj, bytearray):
        return ct.addressof((ct.c_char * len(obj)).from_buffer(obj))
    return ct.addressof(obj)


def obj_get(path: str) -> int:
    """Open a pinned map or program; returns a new fd."""
    return _check(lib().bpf_obj_get(os.fsencode(path)), f"bpf_obj_get {path}")


def obj_pin(fd: int, path: str) -> None:
    _check(lib().bpf_obj_pin(fd, os.fsencode(path)), f"bpf_obj_pin {path}")


@dataclass(frozen=True, slots=True)
class MapInfo:
    type: int
    id: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int
    name: str


def map_info(fd: int) -> MapInfo:
    info = _MapInfo()
    size = ct.c_uint32(ct.sizeof(info))
    _check(lib().bpf_obj_get_info_by_fd(fd, ct.byref(info), ct.byref(size)), "map info")
    return MapInfo(
        info.type,
        info.id,
        info.key_size,
        info.value_size,
        info.max_entries,
        info.map_flags,
        info.name.decode(errors="replace"),
    )


def prog_id(fd: int) -> int:
    info = _ProgInfo()
    size = ct.c_uint32(ct.sizeof(info))
    _check(lib().bpf_obj_get_info_by_fd(fd, ct.byref(info), ct.byref(size)), "prog info")
    return int(info.id)


@cache
def num_possible_cpus() -> int:
    return _check(lib().libbpf_num_possible_cpus(), "libbpf_num_possible_cpus")


def map_lookup_elem(fd: int, key: ct._CData, value: ct._CData | bytearray) -> bool:
    """Fill ``value``; False when the key is absent."""
    rc = lib().bpf_map_lookup_elem(fd, _buf(key), _buf(value))
    if rc == -errno.ENOENT:
        return False
    _check(rc, "map lookup")
    return True


def map_update_elem(
    fd: int, key: ct._CData, value: ct._CData | bytearray, flags: int = BPF_ANY
) -> None:
    _check(lib().bpf_map_update_elem(fd, _buf(key), _buf(value), flags), "map update")


def map_delete_elem(fd: int, key: ct._CData) -> bool:
    rc = lib().bpf_map_delete_elem(fd, _buf(key))
    if rc == -errno.ENOENT:
        return False
    _check(rc, "map delete")
    return True


def map_get_next_key(fd: int, key: ct._CData | None, next_key: ct._CData) -> bool:
    """One step of a key-by-key walk (the slow path batch ops replace)."""
    rc = lib().bpf_map_get_next_key(fd, _buf(key), _buf(next_key))
    if rc == -errno.ENOENT:
        return False
    _check(rc, "map get next key")
    return True


def map_lookup_batch(
    fd: int, key_size: int, value_size: int, chunk: int = 8192
) -> tuple[bytes, bytes, int]:
    """Every (key, value) of a hash or array map with BPF_MAP_LOOKUP_BATCH:
    returns the concatenated keys, the concatenated values and the count.

    ``value_size`` is the per-entry size userspace sees (for per-CPU maps:
    CPUs x value size rounded to 8). One syscall per ``chunk`` entries.
    """
    keys = bytearray()
    values = bytearray()
    total = 0
    token = ct.create_string_buffer(max(8, key_size))
    kbuf = ct.create_string_buffer(key_size * chunk)
    vbuf = ct.create_string_buffer(value_size * chunk)
    opts = _BatchOpts(ct.sizeof(_BatchOpts), 0, 0)
    first = True
    while True:
        count = ct.c_uint32(chunk)
        rc = lib().bpf_map_lookup_batch(
            fd,
            None if first else ct.addressof(token),
            ct.addressof(token),
            ct.addressof(kbuf),
            ct.addressof(vbuf),
            ct.byref(count),
            ct.byref(opts),
        )
        if rc == -errno.ENOSPC and count.value == 0:
            # One hash bucket holds more than `chunk` entries: grow and retry.
            chunk *= 2
            kbuf = ct.create_string_buffer(key_size * chunk)
            vbuf = ct.create_string_buffer(value_size * chunk)
            continue
        n = count.value
        if rc < 0 and rc != -errno.ENOENT:
            _check(rc, "map lookup batch")
        keys += kbuf.raw[: n * key_size]
        values += vbuf.raw[: n * value_size]
        total += n
        first = False
        if rc == -errno.ENOENT:
            return bytes(keys), bytes(values), total


def map_update_batch(fd: int, keys: bytes, values: bytes, count: int, flags: int = BPF_ANY) -> None:
    """BPF_MAP_UPDATE_BATCH of ``count`` concatenated keys and values."""
    if count == 0:
        return
    kb = ct.create_string_buffer(keys, len(keys))
    vb = ct.create_string_buffer(values, len(values))
    n = ct.c_uint32(count)
    opts = _BatchOpts(ct.sizeof(_BatchOpts), flags, 0)
    _check(
        lib().bpf_map_update_batch(
            fd, ct.addressof(kb), ct.addressof(vb), ct.byref(n), ct.byref(opts)
        ),
        f"map update batch ({n.value} of {count} done)",
    )


def map_delete_batch(fd: int, keys: bytes, count: int) -> int:
    """BPF_MAP_DELETE_BATCH; returns how many were deleted (stops at a missing key)."""
    if count == 0:
        return 0
    kb = ct.create_string_buffer(keys, len(keys))
    n = ct.c_uint32(count)
    opts = _BatchOpts(ct.sizeof(_BatchOpts), 0, 0)
    rc = lib().bpf_map_delete_batch(fd, ct.addressof(kb), ct.byref(n), ct.byref(opts))
    if rc < 0 and rc != -errno.ENOENT:
        _check(rc, "map delete batch")
    return int(n.value)


@dataclass(frozen=True, slots=True)
class TestRun:
    """What BPF_PROG_TEST_RUN reports: the program's return value, the mean
    duration per repetition in ns, and the frame as the program left it."""

    retval: int
    duration_ns: int
    data_out: bytes

    __test__ = False  # not a pytest class


def prog_test_run(
    prog_fd: int, data: bytes, repeat: int = 1, out_size: int | None = None
) -> TestRun:
    """Run an XDP program on ``data`` ``repeat`` times in the kernel."""
    din = ct.create_string_buffer(data, len(data))
    size = out_size if out_size is not None else len(data) + 256
    dout = ct.create_string_buffer(size)
    opts = _TestRunOpts()
    opts.sz = ct.sizeof(_TestRunOpts)
    opts.data_in = ct.addressof(din)
    opts.data_size_in = len(data)
    opts.data_out = ct.addressof(dout)
    opts.data_size_out = size
    opts.repeat = repeat
    _check(lib().bpf_prog_test_run_opts(prog_fd, ct.byref(opts)), "BPF_PROG_TEST_RUN")
    return TestRun(int(opts.retval), int(opts.duration), dout.raw[: opts.data_size_out])


def xdp_attach(ifindex: int, prog_fd: int, flags: int) -> None:
    _check(lib().bpf_xdp_attach(ifindex, prog_fd, flags, None), "XDP attach")


def xdp_detach(ifindex: int, flags: int) -> None:
    _check(lib().bpf_xdp_detach(ifindex, flags, None), "XDP detach")


def xdp_query(ifindex: int) -> tuple[int, int]:
    """(native program id, generic program id) on the interface; 0 = none."""
    opts = _XdpQueryOpts()
    opts.sz = ct.sizeof(_XdpQueryOpts)
    _check(lib().bpf_xdp_query(ifindex, 0, ct.byref(opts)), "XDP query")
    return int(opts.drv_prog_id), int(opts.skb_prog_id)


class RingBuffer:
    """A BPF ring buffer map read through libbpf's ring_buffer__*; each
    sample is handed to ``on_sample`` as bytes."""

    def __init__(self, map_fd: int, on_sample: Callable[[bytes], None]) -> None:
        def sample(_ctx: int | None, data: int | None, size: int) -> int:
            on_sample(ct.string_at(data, size) if data else b"")
            return 0

        self._callback = _SampleFn(sample)  # keep a reference: C holds the pointer
        rb = lib().ring_buffer__new(map_fd, self._callback, None, None)
        if not rb:
            err = ct.get_errno() or errno.EINVAL
            raise OSError(err, f"ring_buffer__new: {os.strerror(err)}")
        self._rb: int | None = rb

    def poll(self, timeout_ms: int) -> int:
        """Wait up to ``timeout_ms`` (0: do not wait) and consume what is there."""
        if self._rb is None:
            raise ValueError("ring buffer closed")
        if timeout_ms <= 0:
            return _check(lib().ring_buffer__consume(self._rb), "ring buffer consume")
        rc = lib().ring_buffer__poll(self._rb, timeout_ms)
        if rc == -errno.EINTR:
            return 0
        return _check(rc, "ring buffer poll")

    def close(self) -> None:
        if self._rb is not None:
            lib().ring_buffer__free(self._rb)
            self._rb = None
