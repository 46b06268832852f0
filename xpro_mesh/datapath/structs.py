"""ctypes mirrors of ``bpf/xpro.h``: the one place Python knows the layout of
the maps the XDP program shares with userspace.

Each class quotes its C struct. ``tests/test_datapath_structs.py`` compiles a
probe against the header and checks every size, offset and constant here.
Also here: the 16-byte address form of the keys (IPv4 v4-mapped) and fast
bulk decoders for map dumps.
"""

from __future__ import annotations

import ctypes as ct
import ipaddress
import struct
from typing import Final

__all__ = [
    "CONSTANTS",
    "MIRRORS",
    "PAIR_RECORD",
    "XproAddr",
    "XproClock",
    "XproConfig",
    "XproDest",
    "XproEvent",
    "XproOp",
    "XproPair",
    "XproPairKey",
    "XproStats",
    "from_addr",
    "to_addr",
]

u8, u32, u64, s64 = ct.c_uint8, ct.c_uint32, ct.c_uint64, ct.c_int64

# Constants of xpro.h (checked against the header by the struct test).
XPRO_PAIR_HAS_PREV: Final = 0x1
XPRO_PAIR_HAS_NEXT: Final = 0x2
XPRO_DEST_HAS_LIST: Final = 0x1
XPRO_DEST_DIRTY: Final = 0x2
XPRO_CONFIG_VERSION: Final = 1
XPRO_POLICY_PAPER: Final = 0
XPRO_POLICY_FAIR_SHARE: Final = 1
XPRO_CLOCK_COARSE: Final = 0
XPRO_CLOCK_PRECISE: Final = 1
XPRO_VERDICT_PASS: Final = 0
XPRO_VERDICT_DROP_PAIR: Final = 1
XPRO_VERDICT_DROP_DEST: Final = 2
XPRO_VERDICT_NOT_IP: Final = 3
XPRO_VERDICT_MALFORMED: Final = 4
XPRO_VERDICT_UNCONFIGURED: Final = 5
XPRO_APPLY_BATCH: Final = 128
XPRO_OP_NONE: Final = 0
XPRO_OP_DEST: Final = 1
XPRO_OP_PAIR: Final = 2
XPRO_OP_DELETE: Final = 3
XPRO_OP_EXPECT: Final = 0x1
XPRO_OP_CREATE: Final = 0x2
XPRO_STATUS_PENDING: Final = 0
XPRO_STATUS_APPLIED: Final = 1
XPRO_STATUS_CREATED: Final = 2
XPRO_STATUS_RESTARTED: Final = 3
XPRO_STATUS_MISSING: Final = 4
XPRO_STATUS_FAILED: Final = 5

CONSTANTS: Final[dict[str, int]] = {
    name: value for name, value in globals().items() if name.startswith("XPRO_")
}


class XproAddr(ct.Union):
    """struct xpro_addr { union { __u8 b[16]; __u32 w[4]; __u64 q[2]; }; };

    16 bytes in network order; IPv4 v4-mapped (``::ffff:a.b.c.d``)."""

    _fields_ = [("b", u8 * 16), ("w", u32 * 4), ("q", u64 * 2)]


class XproPairKey(ct.Structure):
    """struct xpro_pair_key { struct xpro_addr src; struct xpro_addr dst; };"""

    _fields_ = [("src", XproAddr), ("dst", XproAddr)]


class XproPair(ct.Structure):
    """struct xpro_pair { __u64 ts1; __u64 ts2; __s64 c; __s64 dc;
    __u64 warn_ts; __u32 mark; __u32 flags; struct xpro_addr prev;
    struct xpro_addr next; };"""

    _fields_ = [
        ("ts1", u64),
        ("ts2", u64),
        ("c", s64),
        ("dc", s64),
        ("warn_ts", u64),
        ("mark", u32),
        ("flags", u32),
        ("prev", XproAddr),
        ("next", XproAddr),
    ]


class XproDest(ct.Structure):
    """struct xpro_dest { __u64 ts1; __u64 ts2; __s64 c; __s64 n; __u64 lock;
    __u32 flags; __u32 pad; struct xpro_addr head; struct xpro_addr tail; };"""

    _fields_ = [
        ("ts1", u64),
        ("ts2", u64),
        ("c", s64),
        ("n", s64),
        ("lock", u64),
        ("flags", u32),
        ("pad", u32),
        ("head", XproAddr),
        ("tail", XproAddr),
    ]


class XproConfig(ct.Structure):
    """struct xpro_config { __u64 t_t1, t_t2, t_t3, t_t4, t_f1, t_f2, r;
    __u64 warn_interval; __u64 warn_per_cpu; __u32 policy; __u32 clock;
    __u32 version; __u32 pad; };"""

    _fields_ = [
        ("t_t1", u64),
        ("t_t2", u64),
        ("t_t3", u64),
        ("t_t4", u64),
        ("t_f1", u64),
        ("t_f2", u64),
        ("r", u64),
        ("warn_interval", u64),
        ("warn_per_cpu", u64),
        ("policy", u32),
        ("clock", u32),
        ("version", u32),
        ("pad", u32),
    ]


class XproClock(ct.Structure):
    """struct xpro_clock { __s64 offset; __u64 test_now; __u64 test_verdict; __u64 pad; };"""

    _fields_ = [("offset", s64), ("test_now", u64), ("test_verdict", u64), ("pad", u64)]


STATS_FIELDS: Final = (
    "pass",
    "drop_pair",
    "drop_dest",
    "new_pairs",
    "resets",
    "warnings",
    "warnings_suppressed",
    "events_lost",
    "not_ip",
    "malformed",
    "unconfigured",
    "pair_full",
    "dest_full",
    "lock_busy",
    "apply_created",
    "apply_deleted",
)


class XproStats(ct.Structure):
    """struct xpro_stats { __u64 pass, drop_pair, drop_dest, new_pairs, resets,
    warnings, warnings_suppressed, events_lost, not_ip, malformed,
    unconfigured, pair_full, dest_full, lock_busy, apply_created,
    apply_deleted; __u64 warn_window, warn_in_window; };  (per CPU)"""

    _fields_ = [(name, u64) for name in STATS_FIELDS] + [
        ("warn_window", u64),
        ("warn_in_window", u64),
    ]


class XproEvent(ct.Structure):
    """struct xpro_event { struct xpro_addr src; struct xpro_addr dst;
    __u64 ts1; __u64 ts2; __s64 c; __u64 suppressed; };"""

    _fields_ = [
        ("src", XproAddr),
        ("dst", XproAddr),
        ("ts1", u64),
        ("ts2", u64),
        ("c", s64),
        ("suppressed", u64),
    ]


class XproOp(ct.Structure):
    """struct xpro_op { __u32 kind; __u32 flags; __u32 status; __u32 pad;
    struct xpro_pair_key key; __u64 expect_ts1; __s64 acked_dc;
    __s64 c_delta; __s64 n_delta; __u64 ts1; __u64 ts2; };"""

    _fields_ = [
        ("kind", u32),
        ("flags", u32),
        ("status", u32),
        ("pad", u32),
        ("key", XproPairKey),
        ("expect_ts1", u64),
        ("acked_dc", s64),
        ("c_delta", s64),
        ("n_delta", s64),
        ("ts1", u64),
        ("ts2", u64),
    ]


# C struct name -> mirror; the struct test walks this.
MIRRORS: Final[dict[str, type[ct.Structure] | type[ct.Union]]] = {
    "xpro_addr": XproAddr,
    "xpro_pair_key": XproPairKey,
    "xpro_pair": XproPair,
    "xpro_dest": XproDest,
    "xpro_config": XproConfig,
    "xpro_clock": XproClock,
    "xpro_stats": XproStats,
    "xpro_event": XproEvent,
    "xpro_op": XproOp,
}

# Bulk decoders for map dumps (struct.iter_unpack is ~10x faster than ctypes
# attribute access over a million entries). Same layout as the classes above.
PAIR_RECORD: Final = struct.Struct("<QQqqQII32x")  # ts1 ts2 c dc warn_ts mark flags
DEST_RECORD: Final = struct.Struct("<QQqqQI4x32x")  # ts1 ts2 c n lock flags (pad)
OP_STATUS: Final = struct.Struct("<III")  # kind flags status (head of xpro_op)


def to_addr(ip: str | bytes | ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    """The 16-byte key form of an address (IPv4 as ``::ffff:a.b.c.d``)."""
    if isinstance(ip, bytes):
        if len(ip) == 16:
            return ip
        if len(ip) == 4:
            return b"\0" * 10 + b"\xff\xff" + ip
        raise ValueError(f"an address is 4 or 16 bytes, got {len(ip)}")
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv4Address):
        return b"\0" * 10 + b"\xff\xff" + addr.packed
    return addr.packed


def from_addr(raw: bytes) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """The address a 16-byte key form names (v4-mapped back to IPv4)."""
    addr = ipaddress.IPv6Address(bytes(raw))
    return addr.ipv4_mapped or addr


def addr_struct(raw: bytes) -> XproAddr:
    a = XproAddr()
    ct.memmove(a.b, raw, 16)
    return a


def pair_key_struct(src: bytes, dst: bytes) -> XproPairKey:
    k = XproPairKey()
    ct.memmove(ct.addressof(k), src, 16)
    ct.memmove(ct.addressof(k) + 16, dst, 16)
    return k
