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
from xpro_mesh.datapath.config import MapSizes, Policy, XdpConfig
from xpro_mesh.datapath.memory import MemoryMaps

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
