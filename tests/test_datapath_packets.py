"""Packet table (Katran style): a frame, what the program must do with it,
and which counter says so. Run through BPF_PROG_TEST_RUN on the test build."""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from xpro_mesh.datapath import libbpf
from xpro_mesh.datapath.backend import PairKey
from xpro_mesh.datapath.bpf_maps import BpfMaps
from xpro_mesh.datapath.config import Policy, Unparsed, XdpConfig
from xpro_mesh.datapath.frames import ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, ethernet, ipv4, ipv6

pytestmark = pytest.mark.kernel

XDP_DROP, XDP_PASS = 1, 2
NOW = 1_700_000_000 * 10**9
S = 10**9

_ARP = ethernet(ETH_P_ARP, bytes(28))
_V4 = ipv4("10.0.0.1", "10.0.0.2")


def _over_limit_pair(maps: BpfMaps, fd: int) -> None:
    """The agent's view of 10.9.0.1 -> 10.9.0.2: 10^6 packets in the last 10 s."""
    libbpf.prog_test_run(fd, ipv4("10.9.0.1", "10.9.0.2"))
    read = maps.read_pairs()
    maps.write_pair_views(read.slots, read.rows["gen"], [10**6], [NOW - 10 * S], [NOW - 1])


def _over_limit_destination(maps: BpfMaps, fd: int) -> None:
    """The agent's view of 10.9.0.4: 10^7 packets in 10 s from 5 clients."""
    libbpf.prog_test_run(fd, ipv4("10.9.0.9", "10.9.0.4"))
    read = maps.read_dests()
    maps.write_dest_views(read.slots, read.rows["gen"], [10**7], [4], [NOW - 10 * S], [NOW - 1])


@dataclass(frozen=True)
class Case:
    description: str
    frame: bytes
    action: int
    counter: str
    key: PairKey | None = None  # the pair the program must have keyed
    preset: Callable[[BpfMaps, int], None] | None = None  # map state first (agent views)


CASES = [
    Case(
        "IPv4 UDP from a new client passes",
        _V4,
        XDP_PASS,
        "passed",
        PairKey.of("10.0.0.1", "10.0.0.2"),
    ),
    Case(
        "IPv4 TCP passes (any transport)",
        ipv4("10.0.0.3", "10.0.0.2", proto=6),
        XDP_PASS,
        "passed",
        PairKey.of("10.0.0.3", "10.0.0.2"),
    ),
    Case("IPv4 ICMP passes", ipv4("10.0.0.5", "10.0.0.2", proto=1), XDP_PASS, "passed"),
    Case(
        "IPv6 UDP passes",
        ipv6("2001:db8::1", "2001:db8::2"),
        XDP_PASS,
        "passed",
        PairKey.of("2001:db8::1", "2001:db8::2"),
    ),
    Case(
        "IPv6 with an extension header passes",
        ipv6("2001:db8::3", "2001:db8::2", nexthdr=0),
        XDP_PASS,
        "passed",
    ),
    Case(
        "802.1Q-tagged IPv4 is judged on its inner header",
        ipv4("10.0.1.1", "10.0.1.2", vlans=(100,)),
        XDP_PASS,
        "passed",
        PairKey.of("10.0.1.1", "10.0.1.2"),
    ),
    Case(
        "QinQ-tagged IPv6 is judged on its inner header",
        ipv6("2001:db8::a", "2001:db8::b", vlans=(10, 20)),
        XDP_PASS,
        "passed",
        PairKey.of("2001:db8::a", "2001:db8::b"),
    ),
    Case(
        "three VLAN tags: the stack is parsed, judged on the inner header",
        ipv4("10.0.2.1", "10.0.2.2", vlans=(1, 2, 3)),
        XDP_PASS,
        "passed",
        PairKey.of("10.0.2.1", "10.0.2.2"),
    ),
    Case(
        "eight VLAN tags: the deepest stack parsed",
        ipv6("2001:db8::c", "2001:db8::d", vlans=tuple(range(1, 9))),
        XDP_PASS,
        "passed",
        PairKey.of("2001:db8::c", "2001:db8::d"),
    ),
    Case(
        "nine VLAN tags: not parsed, counted (passes by default)",
        ipv4("10.0.2.3", "10.0.2.4", vlans=tuple(range(1, 10))),
        XDP_PASS,
        "unparsed",
    ),
    Case("MPLS: not parsed, counted", ethernet(0x8847, bytes(46)), XDP_PASS, "unparsed"),
    Case("PPPoE session: not parsed, counted", ethernet(0x8864, bytes(46)), XDP_PASS, "unparsed"),
    Case("ARP passes untouched", _ARP, XDP_PASS, "not_ip"),
    Case("unknown ethertype passes untouched", ethernet(0x88CC, bytes(46)), XDP_PASS, "not_ip"),
    Case("IPv4 header cut short passes", ethernet(ETH_P_IP, _V4[14:30]), XDP_PASS, "malformed"),
    Case(
        "IPv6 header cut short passes",
        ethernet(ETH_P_IPV6, bytes([0x60]) + bytes(30)),
        XDP_PASS,
        "malformed",
    ),
    Case(
        "VLAN tag cut short passes",
        _V4[:12] + struct.pack("!H", 0x8100) + b"\x00",
        XDP_PASS,
        "malformed",
    ),
    Case(
        "IPv4 ethertype with a version-6 header passes",
        ethernet(ETH_P_IP, bytes([0x65]) + _V4[15:]),
        XDP_PASS,
        "malformed",
    ),
    Case(
        "IPv4 header length below 20 bytes passes",
        ethernet(ETH_P_IP, bytes([0x44]) + _V4[15:]),
        XDP_PASS,
        "malformed",
    ),
    Case(
        "IPv6 ethertype with a version-4 header passes",
        ethernet(ETH_P_IPV6, bytes([0x40]) + bytes(47)),
        XDP_PASS,
        "malformed",
    ),
    Case(
        "a pair over T_F1 is dropped (line 15)",
        ipv4("10.9.0.1", "10.9.0.2"),
        XDP_DROP,
        "drop_pair",
        PairKey.of("10.9.0.1", "10.9.0.2"),
        _over_limit_pair,
    ),
    Case(
        "a new client of a destination over T_F2 passes under fair-share",
        ipv4("10.9.0.3", "10.9.0.4"),
        XDP_PASS,
        "passed",
        None,
        _over_limit_destination,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.description)
def test_packet_table(case: Case, xdp_test_program: Any, kernel_maps: Any) -> None:
    maps = kernel_maps
    maps.set_config(
        XdpConfig(
            t_t2=S,
            t_t3=S,
            t_f1=100,
            t_f2=10_000,
            policy=Policy.FAIR_SHARE,
        )
    )
    maps.write_clock(offset=0, test_now=NOW)
    if case.preset is not None:
        case.preset(maps, xdp_test_program.filter_fd)
    before = maps.read_stats().as_dict()
    run = libbpf.prog_test_run(xdp_test_program.filter_fd, case.frame)
    after = maps.read_stats()
    assert run.retval == case.action
    changed = {k: v - before[k] for k, v in after.as_dict().items() if v != before[k]}
    counter = "pass" if case.counter == "passed" else case.counter
    assert changed.get(counter) == 1, changed
    assert run.data_out[: len(case.frame)] == case.frame  # the filter never rewrites
    if case.key is not None:
        assert maps.lookup_pair(case.key.src, case.key.dst) is not None


def test_a_destination_over_t_f2_drops_every_client_under_the_paper_policy(
    xdp_test_program: object, kernel_maps: object
) -> None:
    maps = kernel_maps
    maps.set_config(XdpConfig(t_f1=100, t_f2=10_000, policy=Policy.PAPER))  # type: ignore[attr-defined]
    maps.write_clock(offset=0, test_now=NOW)  # type: ignore[attr-defined]
    _over_limit_destination(maps, xdp_test_program.filter_fd)  # type: ignore[arg-type, attr-defined]
    run = libbpf.prog_test_run(xdp_test_program.filter_fd, ipv4("10.9.0.3", "10.9.0.4"))  # type: ignore[attr-defined]
    assert run.retval == XDP_DROP
    assert maps.read_stats().drop_dest == 1  # type: ignore[attr-defined]


def test_nothing_is_judged_before_a_config_is_written(
    xdp_test_program: object, kernel_maps: object
) -> None:
    run = libbpf.prog_test_run(xdp_test_program.filter_fd, _V4)  # type: ignore[attr-defined]
    assert run.retval == XDP_PASS
    assert kernel_maps.read_stats().unconfigured == 1  # type: ignore[attr-defined]
    assert kernel_maps.read_pairs().slots.size == 0  # type: ignore[attr-defined]
    assert kernel_maps.ring_status().pairs_high_water == 0  # type: ignore[attr-defined]


def test_unparsed_carriers_are_dropped_when_configured(
    xdp_test_program: object, kernel_maps: Any
) -> None:
    kernel_maps.set_config(XdpConfig(unparsed=Unparsed.DROP))
    kernel_maps.write_clock(offset=0, test_now=NOW)
    deep = ipv4("10.0.2.5", "10.0.2.6", vlans=tuple(range(1, 10)))
    for frame in (deep, ethernet(0x8848, bytes(46))):
        assert libbpf.prog_test_run(xdp_test_program.filter_fd, frame).retval == XDP_DROP  # type: ignore[attr-defined]
    assert libbpf.prog_test_run(xdp_test_program.filter_fd, _V4).retval == XDP_PASS  # type: ignore[attr-defined]
    stats = kernel_maps.read_stats()
    assert stats.unparsed == 2 and stats.passed == 1, stats
