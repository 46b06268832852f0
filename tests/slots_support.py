"""What the kernel judges a pair and a destination by, read from a data path's
slot arrays (docs/kernel-agent-contract.md): the local window combined with
the agent's view while the view is the window's (``v_gen == gen``)."""

from __future__ import annotations

from xpro_mesh.datapath.backend import MapBackend
from xpro_mesh.datapath.memory import MemoryMaps


def judged(maps: MemoryMaps, src: str, dst: str) -> tuple[int, int, int] | None:
    """(ts1, ts2, c) of ``src -> dst`` as Algorithm 2 sees it; None: no slot."""
    slot = maps.lookup_pair(src, dst)
    if slot is None:
        return None
    return judged_slot(maps, slot)


def judged_slot(maps: MapBackend, slot: int) -> tuple[int, int, int]:
    s = maps.pair_slots[slot]
    if int(s["v_gen"]) == int(s["gen"]):
        return int(s["v_ts1"]), max(int(s["ts2"]), int(s["v_ts2"])), int(s["c"]) + int(s["v_adj"])
    return int(s["ts1"]), int(s["ts2"]), int(s["c"])


def judged_dest(maps: MemoryMaps, dst: str) -> tuple[int, int]:
    """(count, n(D)) of destination ``dst`` as Algorithm 2 sees it."""
    slot = maps.lookup_dest(dst)
    assert slot is not None, f"{dst} has no destination slot"
    d = maps.dest_slots[slot]
    if int(d["v_gen"]) == int(d["gen"]):
        return int(d["c"]) + int(d["v_adj"]), int(d["n"]) + int(d["v_nadj"])
    return int(d["c"]), int(d["n"])
