"""ctypes and numpy mirrors of ``bpf/xpro.h``: the one place Python knows
the layout of the maps the XDP program shares with userspace.

Each ctypes class quotes its C struct; ``tests/test_datapath_structs.py``
compiles a probe against the header and checks every size, offset and
constant here, and checks the numpy structured dtypes (what the agent uses
on the mmapped slot arrays, STYLE 13) field by field against the ctypes
classes. Also here: the 16-byte address form of the keys (IPv4 v4-mapped).
"""

from __future__ import annotations

import ctypes as ct
import functools
import ipaddress
from typing import Final

import numpy as np

__all__ = [
    "CONSTANTS",
    "DEST_SLOT_DTYPE",
    "DTYPE_MIRRORS",
    "MIRRORS",
    "PAIR_KEY_DTYPE",
    "PAIR_READ_DTYPE",
    "PAIR_SLOT_DTYPE",
    "RING_DTYPE",
    "STATS_FIELDS",
    "XproAddr",
    "XproClock",
    "XproConfig",
    "XproDslot",
    "XproEvent",
    "XproPairKey",
    "XproRing",
    "XproSlot",
    "XproSpare",
    "XproStats",
    "from_addr",
    "to_addr",
]

u8, u32, u64, s64 = ct.c_uint8, ct.c_uint32, ct.c_uint64, ct.c_int64

# Constants of xpro.h (checked against the header by the struct test).
XPRO_NO_SLOT: Final = 0xFFFFFFFF
XPRO_VGEN_NONE: Final = 0
XPRO_SLOT_LINKED: Final = 0x1
XPRO_DEST_DIRTY: Final = 0x2
XPRO_SLOT_ESTABLISHED: Final = 0x4
XPRO_SLOT_KNOWN: Final = 0x8
XPRO_ADMIT_UNIT: Final = 1_000_000
XPRO_RING_PAIRS: Final = 0
XPRO_RING_DESTS: Final = 1
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
XPRO_VERDICT_UNPARSED: Final = 6
XPRO_UNPARSED_PASS: Final = 0
XPRO_UNPARSED_DROP: Final = 1

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


class XproSlot(ct.Structure):
    """struct xpro_slot { __u64 gen; __u64 ts1; __u64 ts2; __s64 c;
    struct xpro_pair_key key; __u64 warn_ts; __u32 dslot; __u32 dgen;
    __u32 prev; __u32 next; __u32 flags; __u32 gap_us;
    __u64 v_gen; __s64 v_adj; __u64 v_ts1; __u64 v_ts2; };"""

    _fields_ = [
        ("gen", u64),
        ("ts1", u64),
        ("ts2", u64),
        ("c", s64),
        ("key", XproPairKey),
        ("warn_ts", u64),
        ("dslot", u32),
        ("dgen", u32),
        ("prev", u32),
        ("next", u32),
        ("flags", u32),
        ("gap_us", u32),
        ("v_gen", u64),
        ("v_adj", s64),
        ("v_ts1", u64),
        ("v_ts2", u64),
    ]


class XproDslot(ct.Structure):
    """struct xpro_dslot { __u64 gen; __u64 ts1; __u64 ts2; __s64 c; __s64 n;
    struct xpro_addr dst; __u64 lock; __u32 head; __u32 tail; __u32 flags;
    __u32 admit; __u64 v_gen; __s64 v_adj; __s64 v_nadj; __u64 v_ts1;
    __u64 v_ts2; __s64 v_c; };"""

    _fields_ = [
        ("gen", u64),
        ("ts1", u64),
        ("ts2", u64),
        ("c", s64),
        ("n", s64),
        ("dst", XproAddr),
        ("lock", u64),
        ("head", u32),
        ("tail", u32),
        ("flags", u32),
        ("admit", u32),
        ("v_gen", u64),
        ("v_adj", s64),
        ("v_nadj", s64),
        ("v_ts1", u64),
        ("v_ts2", u64),
        ("v_c", s64),
    ]


class XproRing(ct.Structure):
    """struct xpro_ring { __u64 head; __u64 size; __u64 pad1[6]; __u64 tail;
    __u64 agent_at; __u64 pad2[6]; };"""

    _fields_ = [
        ("head", u64),
        ("size", u64),
        ("pad1", u64 * 6),
        ("tail", u64),
        ("agent_at", u64),
        ("pad2", u64 * 6),
    ]


class XproSpare(ct.Structure):
    """struct xpro_spare { __u32 pair; __u32 dest; };  (per CPU)"""

    _fields_ = [("pair", u32), ("dest", u32)]


class XproConfig(ct.Structure):
    """struct xpro_config { __u64 t_t1, t_t2, t_t3, t_t4, t_f1, t_f2, r;
    __u64 warn_interval; __u64 warn_per_cpu; __u64 admit_k, admit_rate,
    admit_burst, view_hold,
    view_hold_max; __u32 policy; __u32 clock;
    __u32 version; __u32 unparsed; __u32 src_prefix4; __u32 src_prefix6; };"""

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
        ("admit_k", u64),
        ("admit_rate", u64),
        ("admit_burst", u64),
        ("view_hold", u64),
        ("view_hold_max", u64),
        ("policy", u32),
        ("clock", u32),
        ("version", u32),
        ("unparsed", u32),
        ("src_prefix4", u32),
        ("src_prefix6", u32),
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
    "new_dests",
    "insert_races",
    "pair_views",
    "dest_views",
    "relinks",
    "admitted",
    "drop_admit",
    "probation_drops",
    "unparsed",
    "held_views",
    "expired_views",
    "vouched",  # after warn_window, warn_in_window in the struct (issue 13)
)


class XproStats(ct.Structure):
    """struct xpro_stats { __u64 pass, drop_pair, drop_dest, new_pairs, resets,
    warnings, warnings_suppressed, events_lost, not_ip, malformed,
    unconfigured, pair_full, dest_full, lock_busy, new_dests, insert_races,
    pair_views, dest_views, relinks, admitted, drop_admit, probation_drops, unparsed,
    held_views, expired_views; __u64 warn_window, warn_in_window; __u64 vouched; };
    (per CPU)"""

    _fields_ = [(name, u64) for name in STATS_FIELDS if name != "vouched"] + [
        ("warn_window", u64),
        ("warn_in_window", u64),
        ("vouched", u64),
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


# C struct name -> mirror; the struct test walks this.
MIRRORS: Final[dict[str, type[ct.Structure] | type[ct.Union]]] = {
    "xpro_addr": XproAddr,
    "xpro_pair_key": XproPairKey,
    "xpro_slot": XproSlot,
    "xpro_dslot": XproDslot,
    "xpro_ring": XproRing,
    "xpro_spare": XproSpare,
    "xpro_config": XproConfig,
    "xpro_clock": XproClock,
    "xpro_stats": XproStats,
    "xpro_event": XproEvent,
}

# numpy mirrors of the slot structs: the agent reads and writes the mmapped
# arrays through these (STYLE 13). Same names (the key flattened to src and
# dst), offsets and widths as the ctypes classes above.
PAIR_SLOT_DTYPE: Final = np.dtype(
    [
        ("gen", "<u8"),
        ("ts1", "<u8"),
        ("ts2", "<u8"),
        ("c", "<i8"),
        ("src", "V16"),
        ("dst", "V16"),
        ("warn_ts", "<u8"),
        ("dslot", "<u4"),
        ("dgen", "<u4"),
        ("prev", "<u4"),
        ("next", "<u4"),
        ("flags", "<u4"),
        ("gap_us", "<u4"),
        ("v_gen", "<u8"),
        ("v_adj", "<i8"),
        ("v_ts1", "<u8"),
        ("v_ts2", "<u8"),
    ],
    align=True,
)
DEST_SLOT_DTYPE: Final = np.dtype(
    [
        ("gen", "<u8"),
        ("ts1", "<u8"),
        ("ts2", "<u8"),
        ("c", "<i8"),
        ("n", "<i8"),
        ("dst", "V16"),
        ("lock", "<u8"),
        ("head", "<u4"),
        ("tail", "<u4"),
        ("flags", "<u4"),
        ("admit", "<u4"),
        ("v_gen", "<u8"),
        ("v_adj", "<i8"),
        ("v_nadj", "<i8"),
        ("v_ts1", "<u8"),
        ("v_ts2", "<u8"),
        ("v_c", "<i8"),
    ],
    align=True,
)
# What read_pairs copies of each pair slot: its first 32 bytes (the hot
# fields every packet writes, one pass over memory), and what pair_keys
# gathers for the slots the agent has not seen yet (stable while live).
PAIR_READ_DTYPE: Final = np.dtype([("gen", "<u8"), ("ts1", "<u8"), ("ts2", "<u8"), ("c", "<i8")])
PAIR_KEY_DTYPE: Final = np.dtype(
    [("src", "V16"), ("dst", "V16"), ("dslot", "<u4"), ("dgen", "<u4")]
)
RING_DTYPE: Final = np.dtype(
    [
        ("head", "<u8"),
        ("size", "<u8"),
        ("pad1", "<u8", (6,)),
        ("tail", "<u8"),
        ("agent_at", "<u8"),
        ("pad2", "<u8", (6,)),
    ],
    align=True,
)
# C struct name -> (dtype, ctypes mirror, {numpy field: ctypes field path}).
DTYPE_MIRRORS: Final = {
    "xpro_slot": (PAIR_SLOT_DTYPE, XproSlot, {"src": "key.src", "dst": "key.dst"}),
    "xpro_dslot": (DEST_SLOT_DTYPE, XproDslot, {}),
    "xpro_ring": (RING_DTYPE, XproRing, {}),
}


def to_addr(ip: str | bytes | ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    """The 16-byte key form of an address (IPv4 as ``::ffff:a.b.c.d``)."""
    if isinstance(ip, bytes):
        if len(ip) == 16:
            return ip
        if len(ip) == 4:
            return b"\0" * 10 + b"\xff\xff" + ip
        raise ValueError(f"an address is 4 or 16 bytes, got {len(ip)}")
    if isinstance(ip, str):
        return _text_addr(ip)
    return _ip_addr(ip)


def _ip_addr(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    if isinstance(addr, ipaddress.IPv4Address):
        return b"\0" * 10 + b"\xff\xff" + addr.packed
    return addr.packed


@functools.lru_cache(maxsize=1 << 16)
def _text_addr(text: str) -> bytes:
    """Parsing dominates a packet of the memory twin: the lab and the
    tests name the same few thousand addresses again and again."""
    return _ip_addr(ipaddress.ip_address(text))


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
