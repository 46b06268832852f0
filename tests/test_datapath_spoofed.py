"""Spoofed-source floods (issue 11): under the default policy, a flood of
one-packet forged sources at a destination over T_F2 is capped at the
destination's admission budget, and a client that proved itself (an
established pair) keeps reaching the destination during the flood.

The same trace goes to the reference model, the Python twin and the XDP
program (BPF_PROG_TEST_RUN, test clock): the three must agree verdict by
verdict, and each must drop >= 95 % of the flood after T_T3 and pass >= 99 %
of the established client's packets.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Callable

import pytest
from conftest import SMALL_SIZES
from datapath_support import BASE_TIME, KernelDriver, Packet

from xpro_mesh.core.algorithm import (
    AdmissionBudget,
    LocalRecord,
    Params,
    Verdict,
    filter_packet_fair_share,
)
from xpro_mesh.core.keys import source_prefix
from xpro_mesh.core.params import NS_PER_S
from xpro_mesh.datapath.config import MapSizes, Policy, XdpConfig
from xpro_mesh.datapath.memory import MemoryMaps
from xpro_mesh.datapath.structs import from_addr, to_addr

MS = 10**6
VICTIM = "10.9.0.1"
GOOD = "10.8.0.1"
# T_T2 = T_T3 = 100 ms, T_F2 = 1000/s: the default rates, short windows so
# that a flood of 10 kpps over 400 ms is a few thousand packets.
P = Params(t_t1=5_000 * MS, t_t2=100 * MS, t_t3=100 * MS, t_t4=10_000 * MS, t_f1=100, t_f2=1000)


def spoofed_trace(seed: int) -> tuple[list[Packet], int]:
    """A good client at 50 pps from t=0; from t=300 ms a flood of forged
    one-packet IPv4 sources at 10 kpps for 400 ms. Returns the trace and the
    time the destination's window passes T_T3 with the flood in it."""
    rng = random.Random(seed)
    out: list[Packet] = []
    good_every, flood_every = 20 * MS, 100_000  # 50 pps, 10 kpps
    t_good, t_flood, end = BASE_TIME, BASE_TIME + 300 * MS, BASE_TIME + 700 * MS
    while t_good < end or t_flood < end:
        if t_good <= t_flood:
            out.append(Packet(GOOD, VICTIM, t_good))
            t_good += good_every
        else:
            forged = str(ipaddress.IPv4Address(rng.getrandbits(32) | 0x0100_0000))
            out.append(Packet(forged, VICTIM, t_flood))
            t_flood += flood_every
    out = [pk for pk in out if pk.now < end]
    return out, BASE_TIME + 300 * MS + P.t_t3


def shares(trace: list[Packet], verdicts: list[Verdict], after: int) -> tuple[float, float]:
    """(share of the flood dropped after ``after``, share of the good client's
    packets passed while the flood runs)."""
    flood = [v for pk, v in zip(trace, verdicts, strict=True) if pk.src != GOOD and pk.now > after]
    good = [
        v
        for pk, v in zip(trace, verdicts, strict=True)
        if pk.src == GOOD and pk.now >= BASE_TIME + 300 * MS
    ]
    dropped = sum(v is not Verdict.PASS for v in flood) / len(flood)
    passed = sum(v is Verdict.PASS for v in good) / len(good)
    return dropped, passed


def _model(trace: list[Packet]) -> list[Verdict]:
    table: dict[tuple[str, str], LocalRecord] = {}
    budgets: dict[str, AdmissionBudget] = {}
    return [
        filter_packet_fair_share(table, pk.src, pk.dst, pk.now, P, budgets=budgets) for pk in trace
    ]


def _twin(trace: list[Packet]) -> list[Verdict]:
    twin = MemoryMaps(XdpConfig.from_params(P, policy=Policy.FAIR_SHARE))
    return [twin.feed(pk.src, pk.dst, pk.now) for pk in trace]


@pytest.mark.parametrize("run", [_model, _twin], ids=["model", "twin"])
def test_a_forged_flood_is_capped_at_the_admission_budget(
    run: Callable[[list[Packet]], list[Verdict]],
) -> None:
    trace, after = spoofed_trace(1)
    dropped, good_passed = shares(trace, run(trace), after)
    assert dropped >= 0.95, f"only {dropped:.2%} of the forged flood dropped"
    assert good_passed >= 0.99, f"the established client got {good_passed:.2%} through"


@pytest.mark.kernel
def test_the_kernel_drops_a_forged_flood_and_keeps_the_established_client(
    xdp_test_program: object, kernel_maps: object
) -> None:
    trace, after = spoofed_trace(2)
    kernel_maps.set_config(XdpConfig.from_params(P, policy=Policy.FAIR_SHARE))  # type: ignore[attr-defined]
    driver = KernelDriver(xdp_test_program, kernel_maps)  # type: ignore[arg-type]
    got = [driver.feed(pk.src, pk.dst, pk.now) for pk in trace]
    _check_flood(trace, got, after)
    assert got == _model(trace)


def _check_flood(trace: list[Packet], got: list[Verdict], after: int) -> None:
    dropped, good_passed = shares(trace, got, after)
    assert dropped >= 0.95, f"only {dropped:.2%} of the forged flood dropped"
    assert good_passed >= 0.99, f"the established client got {good_passed:.2%} through"


def test_a_flood_that_takes_every_pair_slot_still_meets_the_budget() -> None:
    """12 pair slots: the forged sources take the 11 left over, the rest get
    none (probation while the budget is empty, pair_full when a token let
    one through). They are young all the same: counted into D and admitted
    only through its budget; the established client keeps its slot."""
    trace, after = spoofed_trace(3)
    twin = MemoryMaps(XdpConfig.from_params(P, policy=Policy.FAIR_SHARE), MapSizes(*SMALL_SIZES))
    got = [twin.feed(pk.src, pk.dst, pk.now) for pk in trace]
    _check_flood(trace, got, after)
    stats = twin.read_stats()
    # Every slot was taken; the flood after that met probation or pair_full.
    assert stats.new_pairs == SMALL_SIZES[0] and stats.pair_full and stats.probation_drops, stats
    assert twin.lookup_pair(GOOD, VICTIM) is not None


@pytest.mark.kernel
def test_the_kernel_meets_the_budget_when_the_flood_takes_every_pair_slot(
    xdp_small_program: object, small_kernel_maps: object
) -> None:
    trace, after = spoofed_trace(4)
    config = XdpConfig.from_params(P, policy=Policy.FAIR_SHARE)
    small_kernel_maps.set_config(config)  # type: ignore[attr-defined]
    driver = KernelDriver(xdp_small_program, small_kernel_maps)  # type: ignore[arg-type]
    got = [driver.feed(pk.src, pk.dst, pk.now) for pk in trace]
    _check_flood(trace, got, after)
    twin = MemoryMaps(config, MapSizes(*SMALL_SIZES))
    assert got == [twin.feed(pk.src, pk.dst, pk.now) for pk in trace]
    assert small_kernel_maps.read_stats() == twin.read_stats()  # type: ignore[attr-defined]


# Known clients: T_T1 = 150 ms, so a client polling every 300 ms opens a new
# window with every request and is never established.
P_KNOWN = Params(t_t1=150 * MS, t_t2=100 * MS, t_t3=100 * MS, t_t4=10_000 * MS, t_f1=100, t_f2=1000)
SLOW, BURSTY = "10.8.0.2", "10.8.0.3"
STEADY = [f"10.8.1.{i}" for i in range(1, 21)]


def known_clients_trace(seed: int) -> list[Packet]:
    """20 steady clients at 40 pps (established: n(D) = 20, a fair share of
    50 pps); SLOW, one request every 300 ms; BURSTY, 40 packets 1 ms apart
    every 300 ms (each burst a new window shorter than T_T2: no rate of its
    own); from 300 ms a forged flood at 10 kpps puts D over T_F2."""
    rng = random.Random(seed)
    end = BASE_TIME + 1800 * MS
    out = [
        Packet(s, VICTIM, t)
        for s in STEADY
        for t in range(BASE_TIME + rng.randrange(MS), end, 25 * MS)
    ]
    out += [Packet(SLOW, VICTIM, t) for t in range(BASE_TIME, end, 300 * MS)]
    out += [
        Packet(BURSTY, VICTIM, start + k * MS)
        for start in range(BASE_TIME + 7 * MS, end, 300 * MS)
        for k in range(40)
    ]
    out += [
        Packet(str(ipaddress.IPv4Address(rng.getrandbits(32) | 0x0100_0000)), VICTIM, t)
        for t in range(BASE_TIME + 300 * MS, end, 100_000)
    ]
    return sorted(out, key=lambda pk: pk.now)


def _known_model(trace: list[Packet]) -> list[Verdict]:
    table: dict[tuple[str, str], LocalRecord] = {}
    budgets: dict[str, AdmissionBudget] = {}
    return [
        filter_packet_fair_share(table, pk.src, pk.dst, pk.now, P_KNOWN, budgets=budgets)
        for pk in trace
    ]


def _known_twin(trace: list[Packet]) -> list[Verdict]:
    twin = MemoryMaps(XdpConfig.from_params(P_KNOWN, policy=Policy.FAIR_SHARE))
    return [twin.feed(pk.src, pk.dst, pk.now) for pk in trace]


def _check_known(trace: list[Packet], got: list[Verdict]) -> None:
    """During the flood (after T_T3 of it): SLOW passes every time, without
    the budget (the flood has emptied it); BURSTY is held to the fair share
    (each burst's first packets pass, most of the rest are dropped); the
    forged flood is still capped."""
    after = BASE_TIME + 300 * MS + P_KNOWN.t_t3

    def verdicts(src: str | None) -> list[Verdict]:
        return [
            v
            for pk, v in zip(trace, got, strict=True)
            if pk.now > after and (pk.src == src if src else pk.src.startswith("10.8.") is False)
        ]

    slow, bursty, flood = verdicts(SLOW), verdicts(BURSTY), verdicts(None)
    assert slow and all(v is Verdict.PASS for v in slow), slow
    dropped = sum(v is not Verdict.PASS for v in bursty) / len(bursty)
    assert 0.5 <= dropped < 1, f"{dropped:.0%} of the bursty known client dropped"
    flood_dropped = sum(v is not Verdict.PASS for v in flood) / len(flood)
    assert flood_dropped >= 0.95, f"only {flood_dropped:.2%} of the forged flood dropped"


@pytest.mark.parametrize("run", [_known_model, _known_twin], ids=["model", "twin"])
def test_a_slow_known_client_passes_a_forged_flood_and_a_bursty_one_gets_its_share(
    run: Callable[[list[Packet]], list[Verdict]],
) -> None:
    trace = known_clients_trace(5)
    _check_known(trace, run(trace))


@pytest.mark.kernel
def test_the_kernel_judges_known_clients_as_the_model_does(
    xdp_test_program: object, kernel_maps: object
) -> None:
    trace = known_clients_trace(6)
    kernel_maps.set_config(XdpConfig.from_params(P_KNOWN, policy=Policy.FAIR_SHARE))  # type: ignore[attr-defined]
    driver = KernelDriver(xdp_test_program, kernel_maps)  # type: ignore[arg-type]
    got = [driver.feed(pk.src, pk.dst, pk.now) for pk in trace]
    _check_known(trace, got)
    assert got == _known_model(trace)


def rotating_trace(seed: int, network: str, pps: int = 1000) -> list[Packet]:
    """One host sending ``pps`` to VICTIM6 (or VICTIM) for 600 ms, every
    packet from a fresh random address inside ``network``."""
    rng = random.Random(seed)
    net = ipaddress.ip_network(network)
    dst = VICTIM6 if net.version == 6 else VICTIM
    host_bits = net.max_prefixlen - net.prefixlen
    return [
        Packet(str(net.network_address + rng.getrandbits(host_bits)), dst, t)
        for t in range(BASE_TIME, BASE_TIME + 600 * MS, NS_PER_S // pps)
    ]


VICTIM6 = "2001:db8:9::1"


def _model_clients(trace: list[Packet], config: XdpConfig) -> list[Verdict]:
    """The reference model fed each packet's client (its source prefix)."""
    table: dict[tuple[str, str], LocalRecord] = {}
    budgets: dict[str, AdmissionBudget] = {}
    p = config.params
    out = []
    for pk in trace:
        client = str(
            from_addr(source_prefix(to_addr(pk.src), config.src_prefix4, config.src_prefix6))
        )
        out.append(filter_packet_fair_share(table, client, pk.dst, pk.now, p, budgets=budgets))
    return out


def _dropped_after_t_t2(trace: list[Packet], got: list[Verdict]) -> float:
    late = [v for pk, v in zip(trace, got, strict=True) if pk.now > BASE_TIME + P.t_t2]
    return sum(v is Verdict.DROP_PAIR for v in late) / len(late)


@pytest.mark.parametrize(
    ("network", "prefixes", "one_pair"),
    [
        ("2001:db8:5:6::/64", {}, True),  # the default: a host's /64 is one client
        ("2001:db8:5:6::/64", {"src_prefix6": 128}, False),  # per address: evaded
        ("10.7.7.0/24", {"src_prefix4": 24}, True),
        ("10.7.7.0/24", {}, False),  # IPv4 per address by default
    ],
    ids=["v6-default-64", "v6-per-address", "v4-24", "v4-default-32"],
)
def test_a_host_rotating_inside_its_prefix_is_one_client_and_meets_the_pair_rule(
    network: str, prefixes: dict[str, int], one_pair: bool
) -> None:
    config = XdpConfig.from_params(P, policy=Policy.FAIR_SHARE, **prefixes)
    trace = rotating_trace(7, network)
    twin = MemoryMaps(config)
    got = [twin.feed(pk.src, pk.dst, pk.now) for pk in trace]
    assert got == _model_clients(trace, config)
    dropped = _dropped_after_t_t2(trace, got)
    if one_pair:
        assert dropped == 1.0 and len(twin.read_pairs().slots) == 1
    else:  # a pair per address: none has a rate over T_F1 (the destination rule may act)
        assert dropped == 0.0 and len(twin.read_pairs().slots) > 50


@pytest.mark.kernel
@pytest.mark.parametrize(
    ("network", "prefixes"),
    [
        ("2001:db8:5:6::/64", {}),
        ("2001:db8:5::/48", {"src_prefix6": 52}),
        ("10.7.0.0/16", {"src_prefix4": 21}),
    ],
    ids=["v6-64", "v6-52", "v4-21"],
)
def test_the_kernel_keys_pairs_by_the_source_prefix_as_the_twin(
    network: str, prefixes: dict[str, int], xdp_test_program: object, kernel_maps: object
) -> None:
    """Prefixes that cut inside a 32-bit word (52, 21) as well as on one."""
    config = XdpConfig.from_params(P, policy=Policy.FAIR_SHARE, **prefixes)
    kernel_maps.set_config(config)  # type: ignore[attr-defined]
    driver = KernelDriver(xdp_test_program, kernel_maps)  # type: ignore[arg-type]
    trace = rotating_trace(8, network, pps=300)
    got = [driver.feed(pk.src, pk.dst, pk.now) for pk in trace]
    twin = MemoryMaps(config)
    assert got == [twin.feed(pk.src, pk.dst, pk.now) for pk in trace]
    k_read, t_read = kernel_maps.read_pairs(), twin.read_pairs()  # type: ignore[attr-defined]
    k_keys = {bytes(k["src"]) for k in kernel_maps.pair_keys(k_read.slots)}  # type: ignore[attr-defined]
    t_keys = {bytes(k["src"]) for k in twin.pair_keys(t_read.slots)}
    assert k_keys == t_keys and len(k_keys) < len(trace) // 4


def _flood_dropped(trace: list[Packet], got: list[Verdict], after: int) -> float:
    flood = [v for pk, v in zip(trace, got, strict=True) if pk.src != GOOD and pk.now > after]
    return sum(v is not Verdict.PASS for v in flood) / len(flood)


def test_under_paper_a_full_pair_map_does_not_open_the_destination() -> None:
    """12 pair slots, the forged flood takes them and the rest find none:
    those packets are counted into D and dropped while D is over T_F2, as
    lines 21-23 drop every packet to D (they passed uncounted before: 92.7 %
    of a full-rate flood reached the lab's victim)."""
    trace, after = spoofed_trace(3)
    twin = MemoryMaps(XdpConfig.from_params(P, policy=Policy.PAPER), MapSizes(*SMALL_SIZES))
    got = [twin.feed(pk.src, pk.dst, pk.now) for pk in trace]
    assert twin.read_stats().pair_full > 1000
    assert _flood_dropped(trace, got, after) >= 0.95


@pytest.mark.kernel
def test_the_kernel_under_paper_drops_what_finds_no_pair_slot(
    xdp_small_program: object, small_kernel_maps: object
) -> None:
    trace, after = spoofed_trace(4)
    config = XdpConfig.from_params(P, policy=Policy.PAPER)
    small_kernel_maps.set_config(config)  # type: ignore[attr-defined]
    driver = KernelDriver(xdp_small_program, small_kernel_maps)  # type: ignore[arg-type]
    got = [driver.feed(pk.src, pk.dst, pk.now) for pk in trace]
    assert _flood_dropped(trace, got, after) >= 0.95
    twin = MemoryMaps(config, MapSizes(*SMALL_SIZES))
    assert got == [twin.feed(pk.src, pk.dst, pk.now) for pk in trace]
