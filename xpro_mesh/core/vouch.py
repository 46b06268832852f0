"""Vouches (issue 13), pure: which (client, destination) pairs this proxy's
filter should judge by the fair share while they are young here, because
the mesh's rows show them established at another proxy and under the fair
share there. A client moved from a dead proxy is then not made to queue for
the destination's admission budget with the moved bots.

A row is (pair key, origin, c, window_ns): the count and window an origin
gossiped for the pair. A pair is vouched when a row from an origin other
than ``local`` is established (c >= admit_k over a window > T_T2) and the
pair's rate in it is at most the fair share T_F2 / n(D), n(D) the pairs of
D established in any origin's rows. Never a pair over the share (a bot),
at most ``max_pairs``, lowest rate first (ties by key): deterministic.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

NS_PER_S = 1_000_000_000


class Row(NamedTuple):
    key: bytes  # 32 bytes: source (masked), destination
    origin: str
    c: int
    window_ns: int


def select_vouched(
    rows: Iterable[Row],
    *,
    local: str,
    t_f2: int,
    t_t2: int,
    admit_k: int,
    max_pairs: int,
) -> list[bytes]:
    """The vouched pair keys, sorted by key, at most ``max_pairs``."""
    established = [r for r in rows if r.c >= admit_k and r.window_ns > t_t2]
    n_dest: dict[bytes, set[bytes]] = {}
    for r in established:
        n_dest.setdefault(r.key[16:], set()).add(r.key)
    # A pair's worst (highest) rate in any remote origin's rows, as a fraction
    # c / window compared exactly: c * 10^9 * n <= t_f2 * window.
    worst: dict[bytes, tuple[int, int]] = {}
    over: set[bytes] = set()
    for r in established:
        n = len(n_dest[r.key[16:]])
        if r.c * NS_PER_S * n > t_f2 * r.window_ns:
            over.add(r.key)  # over the share somewhere: never vouched
            continue
        if r.origin == local:
            continue
        w = worst.get(r.key)
        if w is None or r.c * w[1] > w[0] * r.window_ns:
            worst[r.key] = (r.c, r.window_ns)
    ranked = sorted(
        (k for k in worst if k not in over),
        key=lambda k: (worst[k][0] / worst[k][1], k),
    )
    return sorted(ranked[: max(0, max_pairs)])


def select_vouched_columns(
    keys: npt.NDArray[np.uint8],
    present: npt.NDArray[np.bool_],
    ts1: npt.NDArray[np.int64],
    ts2: npt.NDArray[np.int64],
    c: npt.NDArray[np.int64],
    dest: npt.NDArray[np.int64],
    *,
    local_slot: int,
    t_f2: int,
    t_t2: int,
    admit_k: int,
    max_pairs: int,
) -> list[bytes]:
    """:func:`select_vouched` over columns (the mesh's table,
    :meth:`~xpro_mesh.core.table.PairTable.vouched`): ``keys`` (n, 32) the
    pairs' keys, ``present``/``ts1``/``ts2``/``c`` (origins, n) their rows,
    ``dest`` (n) a destination id per pair, ``local_slot`` this origin's row.
    The same result, exact (the share test in Python integers)."""
    window = ts2 - ts1
    est = present & (c >= admit_k) & (window > t_t2)
    pair_est = est.any(axis=0)
    n_dest = np.bincount(dest[pair_est], minlength=int(dest.max(initial=0)) + 1)
    o_idx, p_idx = np.nonzero(est)
    if not len(p_idx):
        return []
    n = n_dest[dest[p_idx]]
    cs, ws = c[o_idx, p_idx], window[o_idx, p_idx]
    # The share test c * 10^9 * n > t_f2 * window in floats, and exactly (in
    # Python integers) where the floats are too close to tell.
    lhs_f = cs.astype(np.float64) * float(NS_PER_S) * n.astype(np.float64)
    rhs_f = ws.astype(np.float64) * float(t_f2)
    over_row = lhs_f > rhs_f
    close = np.flatnonzero(np.abs(lhs_f - rhs_f) <= 1e-9 * np.maximum(lhs_f, rhs_f))
    for k in close.tolist():
        over_row[k] = int(cs[k]) * NS_PER_S * int(n[k]) > int(ws[k]) * t_f2
    over = np.zeros(keys.shape[0], dtype=np.bool_)
    over[p_idx[over_row]] = True
    remote = ~over_row & (o_idx != local_slot)
    rate = np.full(keys.shape[0], -1.0)
    np.maximum.at(rate, p_idx[remote], cs[remote] / ws[remote])
    cand = np.flatnonzero((rate >= 0) & ~over)
    # Lowest rate first, ties by key (bytewise: the key's big-endian words).
    words = np.ascontiguousarray(keys[cand]).view(">u8").reshape(-1, 4)
    order = np.lexsort((words[:, 3], words[:, 2], words[:, 1], words[:, 0], rate[cand]))
    chosen = order[: max(0, max_pairs)]
    chosen = chosen[np.lexsort(tuple(words[chosen, i] for i in (3, 2, 1, 0)))]
    raw = np.ascontiguousarray(keys[cand[chosen]]).tobytes()
    return [raw[i : i + 32] for i in range(0, len(raw), 32)]
