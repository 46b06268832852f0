"""The map backend: what the agent reads from and writes to the data path.

One interface, :class:`MapBackend`, two implementations:

* :class:`xpro_mesh.datapath.bpf_maps.BpfMaps` — the live BPF maps of an
  attached program (pinned, opened by fd; bcc is only needed to build them);
* :class:`xpro_mesh.datapath.memory.MemoryMaps` — pure Python with the same
  semantics, plus ``feed(src, dst, now)`` to push packets through the
  reference model, so the agent and the lab run without a kernel.

Every method may block (syscalls over up to a million entries): the async
agent calls them in an executor. One writer per backend (one agent per
interface); reads may run concurrently with packets.

Write-back without losing packets. Between the agent's ``read_pairs()`` and
its write-back the kernel keeps counting. Whole-value writes would erase
those packets, so the agent never writes records: it sends *operations*
computed from what it read (a pure ``plan(read, merged) -> ops``), and
``apply`` executes each one atomically in the kernel:

=============  ==========================================================
``PairOp``     skip if the window restarted since the read (``ts1`` is no
               longer ``expect_ts1``); else ``dc -= acked_dc``,
               ``c += c_delta``, ``ts1 = ts1``, ``ts2 = max(ts2, ts2)``,
               ``mark = 0``. ``expect_ts1=None``: the pair was absent when
               read; it is created as ``(ts1, ts2, c_delta, 0, 0)``, or, if a
               packet created it since, the deltas are added to it.
``DestOp``     ``c += c_delta``, ``n += n_delta``, ``ts1 = ts1``,
               ``ts2 = max(ts2, ts2)``; created when absent.
=============  ==========================================================

With ``acked_dc`` = the dc read and ``c_delta`` = merged c − c read, the
pair ends with ``c = merged + k`` and ``dc = k`` where k is what arrived
after the read: nothing lost, nothing counted twice (Algorithm 1 lines
24-25 with the in-flight packets kept). Pair ops do not touch destination
aggregates; send a ``DestOp`` for each destination the merge changed
(deltas against what ``read_destinations()`` returned).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from xpro_mesh.core.algorithm import DestinationAggregate, LocalRecord
from xpro_mesh.datapath.config import XdpConfig
from xpro_mesh.datapath.structs import STATS_FIELDS, from_addr, to_addr

__all__ = [
    "ApplyReport",
    "DestOp",
    "MapBackend",
    "OverloadWarning",
    "PairKey",
    "PairOp",
    "PairRecord",
    "Stats",
    "address",
]

PairRecord = LocalRecord
"""A pair map entry as the agent sees it: ts1, ts2, c, dc, mark (L_DB)."""


def address(ip: str | bytes | ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    """The 16-byte form the maps are keyed by (IPv4 v4-mapped)."""
    return to_addr(ip)


@dataclass(frozen=True, slots=True, order=True)
class PairKey:
    """(client i, destination D), each 16 bytes (IPv4 v4-mapped)."""

    src: bytes
    dst: bytes

    def __post_init__(self) -> None:
        if len(self.src) != 16 or len(self.dst) != 16:
            raise ValueError("PairKey addresses are 16 bytes; use PairKey.of() for IP strings")

    @classmethod
    def of(
        cls,
        src: str | bytes | ipaddress.IPv4Address | ipaddress.IPv6Address,
        dst: str | bytes | ipaddress.IPv4Address | ipaddress.IPv6Address,
    ) -> PairKey:
        return cls(to_addr(src), to_addr(dst))

    def __repr__(self) -> str:
        return f"PairKey.of({str(self.src_ip)!r}, {str(self.dst_ip)!r})"

    @property
    def src_ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return from_addr(self.src)

    @property
    def dst_ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return from_addr(self.dst)

    def __str__(self) -> str:
        return f"{self.src_ip} -> {self.dst_ip}"


@dataclass(frozen=True, slots=True)
class PairOp:
    """Re-base one pair (see the module docstring for the kernel's steps)."""

    key: PairKey
    expect_ts1: int | None  # ts1 as read; None: the pair was absent when read
    acked_dc: int  # the dc read, now accounted for by the merge
    c_delta: int  # merged c - c read
    ts1: int  # merged window start
    ts2: int  # merged window end (the kernel keeps the later of the two)


@dataclass(frozen=True, slots=True)
class DestOp:
    """Re-base one destination aggregate (created when absent)."""

    dst: bytes
    c_delta: int  # merged sum of c - c read
    n_delta: int  # merged n(D) - n read
    ts1: int  # merged earliest start
    ts2: int  # merged latest end (the kernel keeps the later of the two)


@dataclass(frozen=True, slots=True)
class ApplyReport:
    """What ``apply`` did. Skipped pairs keep their kernel state; re-read them
    and plan again next round."""

    applied: int = 0
    created: int = 0
    restarted: tuple[PairKey, ...] = ()
    missing: tuple[PairKey, ...] = ()
    failed: int = 0


@dataclass(frozen=True, slots=True)
class Stats:
    """The program's counters, summed over CPUs (``xpro_stats`` in xpro.h)."""

    passed: int = 0
    drop_pair: int = 0
    drop_dest: int = 0
    new_pairs: int = 0
    resets: int = 0
    warnings: int = 0
    warnings_suppressed: int = 0
    events_lost: int = 0
    not_ip: int = 0
    malformed: int = 0
    unconfigured: int = 0
    pair_full: int = 0
    dest_full: int = 0
    lock_busy: int = 0
    apply_created: int = 0
    apply_deleted: int = 0

    @classmethod
    def from_counters(cls, counters: dict[str, int]) -> Stats:
        return cls(**{("passed" if k == "pass" else k): v for k, v in counters.items()})

    def as_dict(self) -> dict[str, int]:
        """Keys as in the C struct (``pass``, ``drop_pair``, ...)."""
        return {name: getattr(self, "passed" if name == "pass" else name) for name in STATS_FIELDS}


@dataclass(frozen=True, slots=True)
class OverloadWarning:
    """Algorithm 2 line 15: a pair went over T_F1 (rate-limited at source)."""

    src: bytes
    dst: bytes
    ts1: int  # the pair's window start
    ts2: int  # the packet that tripped the rule
    c: int  # the pair's count then
    suppressed: int  # warnings the emitting CPU suppressed so far (budget)

    @property
    def key(self) -> PairKey:
        return PairKey(self.src, self.dst)

    @property
    def rate_pps(self) -> float:
        window = self.ts2 - self.ts1
        return self.c * 1e9 / window if window > 0 else float("inf")


@runtime_checkable
class MapBackend(Protocol):
    """The data path as the agent sees it. All calls may block."""

    def read_pairs(self) -> list[tuple[PairKey, PairRecord]]:
        """Every pair record (a consistent copy per entry, not of the map)."""
        ...

    def read_active_pairs(self) -> tuple[list[tuple[PairKey, PairRecord]], int]:
        """The pairs with packets since the last sync (dc or mark set), and how
        many pairs the map holds: every other pair holds what the agent last
        wrote, so an incremental sync need not look at it."""
        ...

    def lookup_pairs(self, keys: Sequence[PairKey]) -> list[tuple[PairKey, PairRecord]]:
        """The records of those of ``keys`` that the map holds."""
        ...

    def read_destinations(self) -> list[tuple[bytes, DestinationAggregate]]:
        """Every destination aggregate: min ts1, max ts2, sum c, n(D)."""
        ...

    def count_pairs(self) -> int: ...

    def apply(
        self, pair_ops: Sequence[PairOp] = (), dest_ops: Sequence[DestOp] = ()
    ) -> ApplyReport:
        """Execute the ops atomically per entry, destinations first."""
        ...

    def delete_pairs(self, keys: Sequence[PairKey]) -> int:
        """Remove pairs (aged out) and take them out of their destination
        (c -= pair c, n -= 1, ts1 from the next oldest pair). Returns how
        many existed."""
        ...

    def get_config(self) -> XdpConfig: ...

    def set_config(self, config: XdpConfig) -> None:
        """Live: the next packet on every CPU uses it."""
        ...

    def sync_clock(self) -> int:
        """Rewrite the kernel-to-cluster clock offset; returns it (ns). Call
        it about once a second: NTP slews the wall clock against the kernel's
        (see :mod:`xpro_mesh.datapath.clock`)."""
        ...

    def read_stats(self) -> Stats: ...

    def poll_events(self, timeout_ms: int = 0) -> list[OverloadWarning]:
        """Overload warnings since the last poll (waits up to ``timeout_ms``)."""
        ...

    def close(self) -> None: ...
