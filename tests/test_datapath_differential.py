"""The kernel program equals the reference model, packet by packet.

bpf/xpro.c is built with the test clock seam (-DXPRO_TEST_CLOCK: the clock
reading comes from the clock map; nothing else differs) and driven through
BPF_PROG_TEST_RUN on random traces: many sources and destinations, IPv4 and
IPv6, gaps at and around T_T1, T_T2 and T_T3, both rules firing, both
policies. Every verdict and every final pair and destination record must
equal :func:`filter_packet` (policy paper) or
:func:`filter_packet_fair_share` (fair-share) on the same trace. The maps
are sized so that nothing is evicted (the model has no eviction).
"""

from __future__ import annotations

import ctypes as ct
import random

import pytest
from datapath_support import (
    Packet,
    coverage,
    random_params,
    random_trace,
    replay_model,
)

from xpro_mesh.core.algorithm import (
    DestinationAggregate,
    LocalRecord,
    Params,
    Verdict,
    destination_aggregate,
)
from xpro_mesh.datapath import libbpf, structs
from xpro_mesh.datapath.backend import PairKey
from xpro_mesh.datapath.config import Policy, XdpConfig
from xpro_mesh.datapath.frames import ip_frame

pytestmark = pytest.mark.kernel

PACKETS = 2500
SEEDS = (1, 2, 4, 5)
_VERDICT = {
    structs.XPRO_VERDICT_PASS: Verdict.PASS,
    structs.XPRO_VERDICT_DROP_PAIR: Verdict.DROP_PAIR,
    structs.XPRO_VERDICT_DROP_DEST: Verdict.DROP_DEST,
}


class KernelDriver:
    """Feeds packets to the loaded test program at given cluster times."""

    def __init__(self, prog: object, maps: object) -> None:
        self.filter_fd = prog.filter_fd  # type: ignore[attr-defined]
        self.clock_fd = maps.map_fd("clock")  # type: ignore[attr-defined]
        self._zero = ct.c_uint32(0)
        self._clock = structs.XproClock()
        self._frames: dict[tuple[str, str], bytes] = {}

    def feed(self, pk: Packet) -> Verdict:
        self._clock.offset = 0
        self._clock.test_now = pk.now
        self._clock.test_verdict = 99
        libbpf.map_update_elem(self.clock_fd, self._zero, self._clock)
        frame = self._frames.get((pk.src, pk.dst))
        if frame is None:
            frame = self._frames[(pk.src, pk.dst)] = ip_frame(pk.src, pk.dst)
        run = libbpf.prog_test_run(self.filter_fd, frame)
        libbpf.map_lookup_elem(self.clock_fd, self._zero, self._clock)
        verdict = _VERDICT[self._clock.test_verdict]
        assert run.retval == (
            1 if verdict is Verdict.DROP_PAIR or verdict is Verdict.DROP_DEST else 2
        )  # XDP_DROP / XDP_PASS
        return verdict


def _configure(maps: object, p: Params, policy: Policy) -> None:
    maps.set_config(  # type: ignore[attr-defined]
        XdpConfig.from_params(p, policy=policy, warn_interval=10**6, warn_per_cpu=1000)
    )


@pytest.mark.parametrize("policy", [Policy.PAPER, Policy.FAIR_SHARE], ids=str)
@pytest.mark.parametrize("seed", SEEDS)
def test_kernel_verdicts_and_records_equal_the_model(
    seed: int, policy: Policy, xdp_test_program: object, kernel_maps: object
) -> None:
    rng = random.Random(seed)
    p = random_params(rng)
    trace = random_trace(rng, p, policy, PACKETS)
    expected, table = replay_model(trace, p, policy)
    _configure(kernel_maps, p, policy)
    kernel = KernelDriver(xdp_test_program, kernel_maps)

    for i, (pk, want) in enumerate(zip(trace, expected, strict=True)):
        got = kernel.feed(pk)
        assert got is want, f"packet {i} {pk}: kernel {got}, model {want} (params {p})"

    pairs = dict(kernel_maps.read_pairs())  # type: ignore[attr-defined]
    model_pairs = {PairKey.of(s, d): rec for (s, d), rec in table.items()}
    assert pairs == model_pairs

    dests = dict(kernel_maps.read_destinations())  # type: ignore[attr-defined]
    model_dests = {
        PairKey.of(d, d).dst: destination_aggregate(table, d) for d in {d for _s, d in table}
    }
    assert dests == model_dests

    # The run was worth it: every rule and the idle restart happened.
    cov = coverage(expected, table)
    assert cov["drop_pair"] and cov["drop_dest"] and cov["pass"] and cov["marked"], cov
    stats = kernel_maps.read_stats()  # type: ignore[attr-defined]
    assert (stats.passed, stats.drop_pair, stats.drop_dest) == (
        cov["pass"],
        cov["drop_pair"],
        cov["drop_dest"],
    )
    assert stats.new_pairs == len(table)


def test_min_ts1_follows_the_next_oldest_pair_when_its_holder_restarts(
    xdp_test_program: object, kernel_maps: object
) -> None:
    """The case the ts1 order exists for: three clients of D started at
    t0 < t1 < t2; the oldest goes idle past T_T1 and restarts, so D's
    window must start at t1 (not t0, not the restart time)."""
    p = Params(t_t1=50_000_000, t_t2=10**6, t_t3=10**6, t_t4=10**9, t_f1=10**9, t_f2=10**9, r=2)
    _configure(kernel_maps, p, Policy.PAPER)
    kernel = KernelDriver(xdp_test_program, kernel_maps)
    t0 = 1_700_000_000 * 10**9
    d = "192.0.2.1"
    trace = [
        Packet("198.51.100.1", d, t0),
        Packet("198.51.100.2", d, t0 + 10_000_000),
        Packet("198.51.100.3", d, t0 + 20_000_000),
        Packet("198.51.100.2", d, t0 + 40_000_000),
        Packet("198.51.100.3", d, t0 + 60_000_000),
        Packet("198.51.100.1", d, t0 + 60_000_001),  # idle 60 ms > T_T1: restarts
    ]
    for pk in trace:
        kernel.feed(pk)
    ((_dst, agg),) = kernel_maps.read_destinations()  # type: ignore[attr-defined]
    assert agg == DestinationAggregate(ts1=t0 + 10_000_000, ts2=t0 + 60_000_001, c=5, clients=3)
    records = dict(kernel_maps.read_pairs())  # type: ignore[attr-defined]
    assert records[PairKey.of("198.51.100.1", d)] == LocalRecord(
        ts1=t0 + 60_000_001, ts2=t0 + 60_000_001, c=1, dc=1, mark=1
    )
