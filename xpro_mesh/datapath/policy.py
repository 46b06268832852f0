"""The filter's action (enforce | monitor) and allow-list, in their own maps.

Mirrors ``bpf/xpro_policy.h``: ``policy`` (one ``struct xpro_policy``),
``policy_stats`` (per-CPU ``struct xpro_policy_stats``) and ``allow`` (an
LPM trie of ``struct xpro_allow_key``). The agent is the one writer; it
applies the mesh-wide configuration document's ``action`` and ``allow``
here live (no reload of the program). What stays when the agent stops:
the last action and allow-list, until ``xpro-mesh xdp detach`` removes the
program and every pin.
"""

from __future__ import annotations

import contextlib
import ctypes as ct
import enum
import ipaddress
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from xpro_mesh.datapath import libbpf
from xpro_mesh.datapath.errors import DatapathError
from xpro_mesh.datapath.structs import to_addr

__all__ = [
    "POLICY_MAPS",
    "Action",
    "PolicyMaps",
    "PolicyStats",
    "XproAllowKey",
    "parse_prefix",
]

POLICY_MAPS = ("xp_action", "xp_action_stats", "xp_allow")
ALLOW_MAX = 1024  # XPRO_ALLOW_MAX


class Action(enum.StrEnum):
    ENFORCE = "enforce"
    MONITOR = "monitor"


_ACTION_CODE = {Action.ENFORCE: 0, Action.MONITOR: 1}


class XproPolicy(ct.Structure):
    _fields_ = [("action", ct.c_uint32), ("version", ct.c_uint32), ("pad", ct.c_uint64)]


class XproPolicyStats(ct.Structure):
    _fields_ = [("allowed", ct.c_uint64), ("monitored", ct.c_uint64)]


class XproAllowKey(ct.Structure):
    """struct xpro_allow_key: 20 bytes, no padding (bpf_lpm_trie_key layout)."""

    _fields_ = [("prefixlen", ct.c_uint32), ("addr", ct.c_uint8 * 16)]


@dataclass(frozen=True, slots=True)
class PolicyStats:
    allowed: int
    monitored: int


def parse_prefix(text: str) -> tuple[int, bytes]:
    """``"10.0.0.0/8"`` or ``"2001:db8::/32"`` (or a bare address) as the
    trie's (prefix length over 128 bits, 16-byte address); ValueError with
    the reason for anything else."""
    try:
        net = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError as exc:
        raise ValueError(f"not a prefix: {text!r} ({exc})") from None
    plen = net.prefixlen + (96 if net.version == 4 else 0)
    return plen, to_addr(net.network_address)


class PolicyMaps:
    """The three policy maps, by fd (from a loaded program or from the pins)."""

    def __init__(self, fds: Mapping[str, int], *, owns_fds: bool = False) -> None:
        self.fds = dict(fds)
        self.owns_fds = owns_fds

    @classmethod
    def open(cls, pin_dir: str | Path) -> PolicyMaps:
        fds: dict[str, int] = {}
        try:
            for name in POLICY_MAPS:
                fds[name] = libbpf.obj_get(str(Path(pin_dir) / name))
        except OSError as exc:
            for fd in fds.values():
                os.close(fd)
            raise DatapathError(
                f"no policy maps pinned at {pin_dir} ({exc.strerror}): the filter predates "
                "the monitor action; attach it again (xpro-mesh xdp attach)"
            ) from None
        return cls(fds, owns_fds=True)

    def close(self) -> None:
        if self.owns_fds:
            for fd in self.fds.values():
                with contextlib.suppress(OSError):
                    os.close(fd)
            self.fds.clear()

    def __enter__(self) -> PolicyMaps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def set_action(self, action: Action, version: int = 0) -> None:
        value = XproPolicy(_ACTION_CODE[action], version & 0xFFFFFFFF, 0)
        libbpf.map_update_elem(self.fds["xp_action"], ct.c_uint32(0), value)

    def action(self) -> tuple[Action, int]:
        value = XproPolicy()
        libbpf.map_lookup_elem(self.fds["xp_action"], ct.c_uint32(0), value)
        return (Action.MONITOR if value.action == 1 else Action.ENFORCE), int(value.version)

    def stats(self) -> PolicyStats:
        n = libbpf.num_possible_cpus()
        values = (XproPolicyStats * n)()
        libbpf.map_lookup_elem(self.fds["xp_action_stats"], ct.c_uint32(0), values)
        return PolicyStats(sum(v.allowed for v in values), sum(v.monitored for v in values))

    def allow_list(self) -> list[tuple[int, bytes]]:
        out = []
        key, nxt = None, XproAllowKey()
        while libbpf.map_get_next_key(self.fds["xp_allow"], key, nxt):
            out.append((int(nxt.prefixlen), bytes(nxt.addr)))
            key = XproAllowKey.from_buffer_copy(nxt)
        return sorted(out)

    def set_allow_list(self, prefixes: Iterable[str]) -> None:
        """Make the trie hold exactly ``prefixes`` (adds first, then removes,
        so an entry kept in both lists is never absent)."""
        wanted = {parse_prefix(p) for p in prefixes}
        if len(wanted) > ALLOW_MAX:
            raise DatapathError(f"allow-list: at most {ALLOW_MAX} prefixes, got {len(wanted)}")
        fd = self.fds["xp_allow"]
        for plen, addr in sorted(wanted):
            libbpf.map_update_elem(fd, _key(plen, addr), ct.c_uint32(1))
        for plen, addr in self.allow_list():
            if (plen, addr) not in wanted:
                libbpf.map_delete_elem(fd, _key(plen, addr))


def _key(plen: int, addr: bytes) -> XproAllowKey:
    k = XproAllowKey()
    k.prefixlen = plen
    ct.memmove(ct.addressof(k.addr), addr, 16)
    return k
