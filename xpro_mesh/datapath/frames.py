"""Ethernet frames for BPF_PROG_TEST_RUN (tests, bench): IPv4/IPv6 with any
transport, optional VLAN tags, and deliberately broken ones. Pure."""

from __future__ import annotations

import ipaddress
import struct

__all__ = ["ETH_P_ARP", "ETH_P_IP", "ETH_P_IPV6", "ethernet", "ip_frame", "ipv4", "ipv6"]

ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_ARP = 0x0806
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8

_DST_MAC = bytes.fromhex("020000000002")
_SRC_MAC = bytes.fromhex("020000000001")


def ethernet(ethertype: int, payload: bytes, vlans: tuple[int, ...] = ()) -> bytes:
    """An Ethernet frame; ``vlans`` are VLAN ids, outermost first (802.1ad
    for the outer of two, 802.1Q otherwise)."""
    tags = b""
    for i, vid in enumerate(vlans):
        tpid = ETH_P_8021AD if len(vlans) > 1 and i == 0 else ETH_P_8021Q
        tags += struct.pack("!HH", tpid, vid & 0x0FFF)
    return _DST_MAC + _SRC_MAC + tags + struct.pack("!H", ethertype) + payload


def ipv4(
    src: str, dst: str, proto: int = 17, payload: bytes = bytes(8), vlans: tuple[int, ...] = ()
) -> bytes:
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        20 + len(payload),
        0,
        0,
        64,
        proto,
        0,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
    )
    return ethernet(ETH_P_IP, header + payload, vlans)


def ipv6(
    src: str, dst: str, nexthdr: int = 17, payload: bytes = bytes(8), vlans: tuple[int, ...] = ()
) -> bytes:
    header = struct.pack(
        "!IHBB16s16s",
        6 << 28,
        len(payload),
        nexthdr,
        64,
        ipaddress.IPv6Address(src).packed,
        ipaddress.IPv6Address(dst).packed,
    )
    return ethernet(ETH_P_IPV6, header + payload, vlans)


def ip_frame(src: str, dst: str, proto: int = 17) -> bytes:
    """An IPv4 or IPv6 frame by the addresses' family (padded to 64 bytes)."""
    if ipaddress.ip_address(src).version == 4:
        frame = ipv4(src, dst, proto)
    else:
        frame = ipv6(src, dst, proto)
    return frame.ljust(64, b"\0")
