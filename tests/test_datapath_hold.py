"""Held destination views in the real XDP program (issue 13, through
BPF_PROG_TEST_RUN with the test clock): a destination view that no agent
renews keeps D over T_F2 on the mesh's rate at its last renewal (``v_c``
over ``v_ts1 .. v_ts2``) for ``view_hold`` past it while the agent's
heartbeat is fresh, up to ``view_hold_max`` while it is stale, and then
expires: D is judged on the live figure (``c + v_adj``) again.

The trace: one client sends 10 packets/s to D (T_F2 = 100/s, the pair rule
out of reach). After 2 s the agent writes D's view: the mesh counted 300
packets over those 2 s (150/s, over T_F2). With the view not renewed, the
live figure (300 + 10 t) / (2 + t) is under T_F2 from t = 1.12 s after the
renewal: the old program passes D's packets from then on."""

from __future__ import annotations

import ctypes as ct

import numpy as np
import pytest

from xpro_mesh.datapath import libbpf, structs
from xpro_mesh.datapath.bpf_maps import BpfMaps
from xpro_mesh.datapath.config import Policy, XdpConfig
from xpro_mesh.datapath.frames import ip_frame

pytestmark = pytest.mark.kernel

S = 10**9
MS = 10**6
NOW = 1_800_000_000 * S
SRC, DST = "10.7.0.1", "10.8.0.1"
HOLD, HOLD_MAX = 5 * S, 20 * S
CONFIG = XdpConfig(
    t_t1=60 * S,
    t_t2=S,
    t_t3=S,
    t_t4=120 * S,
    t_f1=10**6,
    t_f2=100,
    policy=Policy.PAPER,
    view_hold=HOLD,
    view_hold_max=HOLD_MAX,
)
RENEWED = NOW + 2 * S  # the view's last renewal (its v_ts2)


class Sender:
    """D's client at 10 packets/s of test clock, packet by packet."""

    def __init__(self, prog: object, maps: BpfMaps) -> None:
        self.prog, self.maps = prog, maps
        self.clock_fd, self.zero, self.clk = (
            maps.map_fd("clock"),
            ct.c_uint32(0),
            structs.XproClock(),
        )
        self.frame = ip_frame(SRC, DST)
        self.now = NOW

    def until(self, end: int) -> list[tuple[int, int]]:
        """(time after the renewal, verdict) of every packet up to ``end``."""
        out = []
        while self.now < end:
            self.clk.offset, self.clk.test_now, self.clk.test_verdict = 0, self.now, 99
            libbpf.map_update_elem(self.clock_fd, self.zero, self.clk)
            libbpf.prog_test_run(self.prog.filter_fd, self.frame)  # type: ignore[attr-defined]
            libbpf.map_lookup_elem(self.clock_fd, self.zero, self.clk)
            out.append((self.now - RENEWED, int(self.clk.test_verdict)))
            self.now += 100 * MS
        return out


def _renew(maps: BpfMaps) -> None:
    """The agent's one view of D: the mesh's 300 packets over NOW .. RENEWED."""
    dests = maps.read_dests()
    assert len(dests.slots) == 1
    row = dests.rows[0]
    c = int(row["c"])
    maps.write_dest_views(
        dests.slots,
        np.array([row["gen"]], np.uint64),
        np.array([300 - c], np.int64),
        np.array([0], np.int64),
        np.array([NOW], np.uint64),
        np.array([RENEWED], np.uint64),
        np.array([300], np.int64),
    )


def _drops(verdicts: list[tuple[int, int]], lo: int, hi: int) -> set[bool]:
    return {v == structs.XPRO_VERDICT_DROP_DEST for t, v in verdicts if lo < t < hi}


@pytest.fixture
def sender(xdp_test_program: object, kernel_maps: BpfMaps) -> Sender:
    kernel_maps.set_config(CONFIG)
    s = Sender(xdp_test_program, kernel_maps)
    before = s.until(RENEWED)
    assert _drops(before, -3 * S, 0) == {False}  # 10/s alone: under T_F2
    _renew(kernel_maps)
    return s


def test_a_view_not_renewed_holds_d_over_for_view_hold_then_expires(
    sender: Sender, kernel_maps: BpfMaps
) -> None:
    kernel_maps.write_heartbeat(RENEWED)
    held = sender.until(RENEWED + HOLD - 100 * MS)
    # Under T_F2 on the live figure from 1.12 s on, over on the held one.
    assert _drops(held, 0, HOLD) == {True}
    assert kernel_maps.read_stats().held_views > 0
    # The agent is alive (its heartbeat fresh) and did not renew D: expired.
    kernel_maps.write_heartbeat(RENEWED + HOLD)
    after = sender.until(RENEWED + HOLD + 2 * S)
    assert _drops(after, HOLD, HOLD + 2 * S) == {False}
    assert kernel_maps.read_stats().expired_views > 0


def test_a_dead_agents_views_are_held_up_to_view_hold_max(
    sender: Sender, kernel_maps: BpfMaps
) -> None:
    kernel_maps.write_heartbeat(RENEWED)  # its last beat: the agent dies here
    held = sender.until(RENEWED + HOLD_MAX - 100 * MS)
    assert _drops(held, 0, HOLD_MAX) == {True}
    after = sender.until(RENEWED + HOLD_MAX + 2 * S)
    assert _drops(after, HOLD_MAX, HOLD_MAX + 2 * S) == {False}
    stats = kernel_maps.read_stats()
    assert stats.held_views > 0 and stats.expired_views > 0


def test_a_view_without_a_count_is_not_held(sender: Sender, kernel_maps: BpfMaps) -> None:
    """An agent that writes no count (v_c = 0) keeps the live figure alone."""
    dests = kernel_maps.read_dests()
    row = dests.rows[0]
    kernel_maps.write_dest_views(
        dests.slots,
        np.array([row["gen"]], np.uint64),
        np.array([300 - int(row["c"])], np.int64),
        np.array([0], np.int64),
        np.array([NOW], np.uint64),
        np.array([RENEWED], np.uint64),
    )
    kernel_maps.write_heartbeat(RENEWED)
    live = sender.until(RENEWED + 3 * S)
    assert _drops(live, 1200 * MS, 3 * S) == {False}
