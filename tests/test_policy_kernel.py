"""The monitor action and the allow-list in the real XDP program
(bpf/xpro_policy.h through BPF_PROG_TEST_RUN): monitor counts and reports
what enforce would drop and drops nothing; an allowed source or destination
is never counted and never dropped; the maps are changed live."""

from __future__ import annotations

import ctypes as ct
from collections import Counter
from collections.abc import Iterator

import pytest

from xpro_mesh.datapath import libbpf, structs
from xpro_mesh.datapath.bpf_maps import BpfMaps
from xpro_mesh.datapath.config import XdpConfig
from xpro_mesh.datapath.frames import ip_frame
from xpro_mesh.datapath.policy import Action, PolicyMaps, XproAllowKey, parse_prefix

pytestmark = pytest.mark.kernel

S = 10**9
NOW = 1_800_000_000 * S
XDP_DROP, XDP_PASS = 1, 2
# T_F1 10 packets/s over windows of at least 1 s: 100 packets in 2 s is 5x over.
STRICT = XdpConfig(t_t1=60 * S, t_t2=S, t_t3=S, t_f1=10, t_f2=10**6)


@pytest.fixture
def policy(xdp_test_program: object, kernel_maps: BpfMaps) -> Iterator[PolicyMaps]:
    maps = PolicyMaps(xdp_test_program.policy_fds)  # type: ignore[attr-defined]
    maps.set_action(Action.ENFORCE)
    maps.set_allow_list([])
    kernel_maps.set_config(STRICT)
    try:
        yield maps
    finally:  # the session's program is shared: leave it as every other test expects
        maps.set_action(Action.ENFORCE)
        maps.set_allow_list([])


def _send(
    prog: object, maps: BpfMaps, src: str, dst: str, n: int, start: int = NOW
) -> tuple[Counter[int], Counter[int]]:
    """n packets over 2 s of test clock from ``start``: (XDP actions, judged verdicts)."""
    clock_fd, zero, clk = maps.map_fd("clock"), ct.c_uint32(0), structs.XproClock()
    frame = ip_frame(src, dst)
    actions: Counter[int] = Counter()
    verdicts: Counter[int] = Counter()
    for i in range(n):
        clk.offset, clk.test_now, clk.test_verdict = 0, start + i * (2 * S // n), 99
        libbpf.map_update_elem(clock_fd, zero, clk)
        run = libbpf.prog_test_run(prog.filter_fd, frame)  # type: ignore[attr-defined]
        libbpf.map_lookup_elem(clock_fd, zero, clk)
        actions[run.retval] += 1
        verdicts[int(clk.test_verdict)] += 1
    return actions, verdicts


def test_enforce_drops_a_pair_over_t_f1(
    xdp_test_program: object, kernel_maps: BpfMaps, policy: PolicyMaps
) -> None:
    actions, verdicts = _send(xdp_test_program, kernel_maps, "10.5.0.1", "10.6.0.1", 100)
    assert actions[XDP_DROP] > 40
    assert actions[XDP_DROP] == verdicts[structs.XPRO_VERDICT_DROP_PAIR]
    assert policy.stats().monitored == 0


def test_monitor_counts_what_enforce_would_drop_and_drops_nothing(
    xdp_test_program: object, kernel_maps: BpfMaps, policy: PolicyMaps
) -> None:
    policy.set_action(Action.MONITOR, version=7)
    assert policy.action() == (Action.MONITOR, 7)
    actions, verdicts = _send(xdp_test_program, kernel_maps, "10.5.0.2", "10.6.0.1", 100)
    would_drop = verdicts[structs.XPRO_VERDICT_DROP_PAIR]
    assert would_drop > 40
    assert actions == Counter({XDP_PASS: 100})
    assert policy.stats().monitored == would_drop
    assert kernel_maps.read_stats().drop_pair == would_drop  # reported as drops
    # Back to enforce, live: the same pair is dropped at once.
    policy.set_action(Action.ENFORCE)
    actions, _ = _send(xdp_test_program, kernel_maps, "10.5.0.2", "10.6.0.1", 10, NOW + 2 * S)
    assert actions[XDP_DROP] == 10


@pytest.mark.parametrize(
    ("prefix", "src", "dst"),
    [
        pytest.param("10.77.0.0/16", "10.77.3.4", "10.6.0.1", id="source-v4"),
        pytest.param("10.6.0.1/32", "10.5.0.3", "10.6.0.1", id="destination-v4"),
        pytest.param("2001:db8:77::/48", "2001:db8:77::9", "2001:db8:6::1", id="source-v6"),
    ],
)
def test_an_allowed_address_is_never_counted_nor_dropped(
    xdp_test_program: object,
    kernel_maps: BpfMaps,
    policy: PolicyMaps,
    prefix: str,
    src: str,
    dst: str,
) -> None:
    policy.set_allow_list([prefix, "192.0.2.0/24"])
    assert parse_prefix(prefix) in policy.allow_list()
    actions, verdicts = _send(xdp_test_program, kernel_maps, src, dst, 100)
    assert actions == Counter({XDP_PASS: 100})
    assert verdicts == Counter({structs.XPRO_VERDICT_PASS: 100})
    assert kernel_maps.lookup_pair(src, dst) is None  # never counted
    assert policy.stats().allowed >= 100
    # Taken off the list, live: the pair is counted and dropped again.
    policy.set_allow_list(["192.0.2.0/24"])
    assert len(policy.allow_list()) == 1
    actions, verdicts = _send(xdp_test_program, kernel_maps, src, dst, 100, NOW + 2 * S)
    assert actions[XDP_DROP] > 40, (verdicts, policy.stats(), policy.allow_list())


def test_the_allow_key_mirrors_bpf_lpm_trie_key() -> None:
    assert ct.sizeof(XproAllowKey) == 20  # no padding inside the compared bytes


def test_a_prefix_that_is_not_one_is_refused_with_its_text() -> None:
    with pytest.raises(ValueError, match=r"not a prefix: '10\.0\.0\.300/8'"):
        parse_prefix("10.0.0.300/8")
    assert parse_prefix("10.0.0.0/8") == (104, b"\0" * 10 + b"\xff\xff\x0a\0\0\0")
