"""Vouches in the kernel (issue 13, bpf/xpro_vouch.h): the bloom filter's
hash, twinned bit for bit with ``xpro_vouch_hash``, and :class:`VouchMaps`,
the agent's writer of the two maps ``vouch_bloom`` (2^20 bits, an mmapable
array of 64-bit words) and ``vouched`` (hash: pair key -> 1, the truth).

The bloom is rebuilt whole from the vouched set (128 KiB, a numpy
assignment into the mmap: each word is stored once, a bit kept in both
sets is never cleared); the hash map changes incrementally (batch updates
of the added keys, then batch deletes of the removed ones). A key is
added to the bloom before it enters the hash and leaves the hash before
the bloom drops its bits, so the kernel's bloom is a superset of the hash
at every instant and the verdict depends on the hash alone.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import mmap
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt

from xpro_mesh.datapath import libbpf
from xpro_mesh.datapath.errors import DatapathError

VOUCH_MAPS: Final = ("vouch_bloom", "vouched")
BLOOM_BITS_LOG2: Final = 20  # XPRO_BLOOM_BITS_LOG2
BLOOM_WORDS: Final = 1 << (BLOOM_BITS_LOG2 - 6)  # XPRO_BLOOM_WORDS
BLOOM_MASK: Final = (1 << BLOOM_BITS_LOG2) - 1
VOUCHED_MAX: Final = 131072  # XPRO_VOUCHED_MAX: the hash map's capacity
K1: Final = 0x9E3779B97F4A7C15
K2: Final = 0xC2B2AE3D27D4EB4F
M64: Final = (1 << 64) - 1
_ONE = (1).to_bytes(4, "little")


def vouch_hash(key: bytes) -> int:
    """``xpro_vouch_hash`` of a 32-byte pair key (src, dst; 16 bytes each)."""
    if len(key) != 32:
        raise ValueError(f"a pair key is 32 bytes, got {len(key)}")
    w = [int.from_bytes(key[i : i + 8], "little") for i in range(0, 32, 8)]
    h = (w[0] * K1) & M64
    h = ((h ^ w[1]) * K2) & M64
    h ^= h >> 31
    h = ((h ^ w[2]) * K1) & M64
    h = ((h ^ w[3]) * K2) & M64
    h ^= h >> 29
    return h


def bloom_bits(key: bytes) -> tuple[int, int]:
    """The two bit numbers a key sets (h's low 20 bits, bits 32..51)."""
    h = vouch_hash(key)
    return h & BLOOM_MASK, (h >> 32) & BLOOM_MASK


def hash_many(keys: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint64]:
    """:func:`vouch_hash` of an (n, 32) array of keys, vectorised (numpy's
    uint64 arithmetic wraps like C's)."""
    w = np.ascontiguousarray(keys, dtype=np.uint8).reshape(-1, 32).view("<u8")
    with np.errstate(over="ignore"):
        h = w[:, 0] * np.uint64(K1)
        h = (h ^ w[:, 1]) * np.uint64(K2)
        h ^= h >> np.uint64(31)
        h = (h ^ w[:, 2]) * np.uint64(K1)
        h = (h ^ w[:, 3]) * np.uint64(K2)
        h ^= h >> np.uint64(29)
    out: npt.NDArray[np.uint64] = h.astype(np.uint64)
    return out


def bloom_words(keys: Iterable[bytes]) -> npt.NDArray[np.uint64]:
    """The bloom's BLOOM_WORDS words with every key's two bits set."""
    raw = b"".join(keys)
    words = np.zeros(BLOOM_WORDS, dtype=np.uint64)
    if not raw:
        return words
    h = hash_many(np.frombuffer(raw, dtype=np.uint8))
    mask = np.uint64(BLOOM_MASK)
    for bits in (h & mask, (h >> np.uint64(32)) & mask):
        np.bitwise_or.at(
            words, (bits >> np.uint64(6)).astype(np.intp), np.uint64(1) << (bits & np.uint64(63))
        )
    return words


def bloom_test(words: npt.NDArray[np.uint64], key: bytes) -> bool:
    """The kernel's test: both of key's bits set."""
    return all(int(words[b >> 6]) >> (b & 63) & 1 for b in bloom_bits(key))


class VouchMaps:
    """The two vouch maps, by fd (a loaded program's or the pins'). The
    writer keeps the set it last wrote: :meth:`write` sends only the
    difference to the hash map."""

    def __init__(self, fds: Mapping[str, int], *, owns_fds: bool = False) -> None:
        self.fds = dict(fds)
        self.owns_fds = owns_fds
        info = libbpf.map_info(self.fds["vouch_bloom"])
        if info.max_entries != BLOOM_WORDS or not info.flags & libbpf.BPF_F_MMAPABLE:
            raise DatapathError("map vouch_bloom has another layout: detach and attach again")
        self.capacity = int(libbpf.map_info(self.fds["vouched"]).max_entries)
        pages = (BLOOM_WORDS * 8 + mmap.PAGESIZE - 1) // mmap.PAGESIZE * mmap.PAGESIZE
        self._mm: mmap.mmap | None = mmap.mmap(
            self.fds["vouch_bloom"], pages, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE
        )
        self.bloom = np.frombuffer(self._mm, dtype=np.uint64, count=BLOOM_WORDS)
        self.current: set[bytes] = set()

    @classmethod
    def open(cls, pin_dir: str | Path) -> VouchMaps:
        fds: dict[str, int] = {}
        try:
            for name in VOUCH_MAPS:
                fds[name] = libbpf.obj_get(str(Path(pin_dir) / name))
        except OSError as exc:
            for fd in fds.values():
                os.close(fd)
            raise DatapathError(
                f"no vouch maps pinned at {pin_dir} ({exc.strerror}): the filter predates "
                "vouches; attach it again (xpro-mesh xdp attach)"
            ) from None
        return cls(fds, owns_fds=True)

    def write(self, keys: Iterable[bytes]) -> tuple[int, int]:
        """Make the maps hold exactly ``keys`` (at most :attr:`capacity`):
        bloom bits added, hash adds, hash removes, bloom rebuilt. Returns
        (added, removed)."""
        wanted = set(keys)
        if len(wanted) > self.capacity:
            raise DatapathError(f"vouched: at most {self.capacity} pairs, got {len(wanted)}")
        added = sorted(wanted - self.current)
        removed = sorted(self.current - wanted)
        if added:
            self.bloom |= bloom_words(added)
            libbpf.map_update_batch(
                self.fds["vouched"], b"".join(added), _ONE * len(added), len(added)
            )
        if removed:
            raw = b"".join(removed)
            done = 0
            while done < len(removed):
                got = libbpf.map_delete_batch(
                    self.fds["vouched"], raw[done * 32 :], len(removed) - done
                )
                done += got + (1 if done + got < len(removed) else 0)  # a missing key: skip it
            self.bloom[:] = bloom_words(sorted(wanted))
        self.current = wanted
        return len(added), len(removed)

    def clear(self) -> None:
        """Empty both maps, whatever an earlier writer left (a fresh agent
        takes over the pins with :meth:`clear`, then writes)."""
        fd = self.fds["vouched"]
        stale: list[bytes] = []
        key, nxt = None, (ct.c_uint8 * 32)()
        while libbpf.map_get_next_key(fd, key, nxt):
            stale.append(bytes(nxt))
            key = (ct.c_uint8 * 32).from_buffer_copy(nxt)
        for k in stale:
            libbpf.map_delete_elem(fd, (ct.c_uint8 * 32).from_buffer_copy(k))
        self.bloom[:] = 0
        self.current = set()

    def close(self) -> None:
        self.bloom = np.zeros(0, dtype=np.uint64)
        if self._mm is not None:
            with contextlib.suppress(BufferError):
                self._mm.close()
            self._mm = None
        if self.owns_fds:
            for fd in self.fds.values():
                with contextlib.suppress(OSError):
                    os.close(fd)
            self.fds.clear()

    def __enter__(self) -> VouchMaps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
