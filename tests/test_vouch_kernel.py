"""Vouches in the kernel (issue 13): a young pair the agent vouched for (a
client established at other proxies, under the fair share there) is judged
by the fair share at a destination over T_F2, like a known pair, instead of
queueing for the destination's admission budget with the bots; an
unvouched young pair is still capped by the budget. The real XDP program
(BPF_PROG_TEST_RUN with the test clock) and its twin, verdict by verdict."""

from __future__ import annotations

import pytest
from datapath_support import KernelDriver

from xpro_mesh.core.algorithm import Verdict
from xpro_mesh.datapath.backend import address
from xpro_mesh.datapath.bpf_maps import BpfMaps
from xpro_mesh.datapath.config import MapSizes, Policy, XdpConfig
from xpro_mesh.datapath.memory import MemoryMaps
from xpro_mesh.datapath.vouch_bloom import VouchMaps

S = 10**9
DST = "10.9.0.1"
CONFIG = XdpConfig(
    t_t1=30 * S,
    t_t2=S,
    t_t3=S,
    t_t4=60 * S,
    t_f1=1000,
    t_f2=100,
    admit_k=5,
    admit_rate=0,  # the budget never refills: one token, then nothing
    admit_burst=1,
    policy=Policy.FAIR_SHARE,
    src_prefix4=32,
)
BOTS = [f"10.1.{i // 250}.{i % 250 + 1}" for i in range(50)]
MOVED = "10.2.0.1"  # vouched: established elsewhere, 1 pps (the share is 100 / 50 = 2 pps)
STRANGER = "10.2.0.2"  # the same traffic, not vouched


def key(src: str, dst: str) -> bytes:
    return address(src) + address(dst)


@pytest.mark.kernel
def test_a_vouched_young_pair_passes_under_the_fair_share_an_unvouched_one_meets_the_budget(
    xdp_test_program: object, kernel_maps: BpfMaps
) -> None:
    kernel_maps.set_config(CONFIG)
    twin = MemoryMaps(CONFIG, MapSizes(pairs_max=1 << 16, dests_max=1 << 12))
    kernel = KernelDriver(xdp_test_program, kernel_maps)
    with VouchMaps(xdp_test_program.vouch_fds) as vouches:  # type: ignore[attr-defined]
        vouches.clear()
        vouches.write([key(MOVED, DST)])
        twin.vouches.write([key(MOVED, DST)])
        verdicts: dict[str, list[Verdict]] = {MOVED: [], STRANGER: []}
        t = 1 * S
        # 50 established bots at 20 pps each: D at 1000 pps, over T_F2 from T_T3 on.
        for step in range(60):
            now = t + step * S // 20
            for bot in BOTS:
                assert kernel.feed(bot, DST, now) is twin.feed(bot, DST, now)
        # Then the moved client and a stranger, 1 pps each, among the flood.
        for second in range(4, 8):  # 4 packets: under admit_k, young throughout
            for step in range(20):
                now = second * S + step * S // 20
                for bot in BOTS:
                    assert kernel.feed(bot, DST, now) is twin.feed(bot, DST, now)
                if step == 0:
                    for src in (MOVED, STRANGER):
                        got = kernel.feed(src, DST, now)
                        assert got is twin.feed(src, DST, now), (src, now)
                        verdicts[src].append(got)
        stats = kernel_maps.read_stats()
    assert verdicts[MOVED] == [Verdict.PASS] * 4, verdicts
    # The stranger got at most the budget's one token (a bot may have taken it).
    assert verdicts[STRANGER].count(Verdict.PASS) <= 1, verdicts
    assert stats.vouched == 4 and stats.drop_admit >= 3, stats
    assert stats.as_dict() == twin.read_stats().as_dict()


def test_the_agents_cycle_vouches_a_client_the_mesh_saw_established_at_another_proxy() -> None:
    """The adapter end to end on the twin: rows from origin "b" (the moved
    client's old proxy) make this proxy's filter pass it at once while D is
    over T_F2 and its budget empty; a bot's rows (over the share) do not."""
    from xpro_mesh.agent.vouching import Vouching
    from xpro_mesh.core.gossip_state import Delta, MergeLimits, OriginEntry, PairEntry
    from xpro_mesh.core.rows import from_delta
    from xpro_mesh.core.table import PairTable

    twin = MemoryMaps(CONFIG, MapSizes(pairs_max=1 << 12, dests_max=1 << 8))
    for step in range(60):  # D over T_F2, the budget spent
        for bot in BOTS:
            twin.feed(bot, DST, S + step * S // 20)
    now = 4 * S
    moved_bot = "10.3.0.1"
    table = PairTable("a", 1, CONFIG.params)
    rows = [
        PairEntry((address(MOVED), address(DST)), "b", OriginEntry(now - 3 * S, now, 10, (1, 1))),
        PairEntry(
            (address(moved_bot), address(DST)), "b", OriginEntry(now - 3 * S, now, 600, (1, 2))
        ),
    ]
    table.merge(from_delta(Delta(entries=tuple(rows))), now, MergeLimits(max_rate_pps=2**62))
    vouched, added, removed = Vouching(twin.vouches, vouched_max=10).cycle(table)
    assert (vouched, added, removed) == (1, 1, 0)
    assert [twin.feed(MOVED, DST, now + i) for i in range(2)] == [Verdict.PASS] * 2
    # The bot is not vouched: the budget's one token at most, then dropped.
    assert twin.feed(moved_bot, DST, now) is Verdict.PASS  # the token
    assert twin.feed(moved_bot, DST, now + 1) is Verdict.DROP_DEST
    assert twin.read_stats().vouched == 2
