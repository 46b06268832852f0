"""The vouch selection and write per agent cycle at 100 000 mesh rows (issue 13):
PYTHONPATH=. python scripts/bench-vouch.py"""

import random
import time

from xpro_mesh.agent.vouching import Vouching
from xpro_mesh.core.gossip_state import Delta, MergeLimits, OriginEntry, PairEntry
from xpro_mesh.core.params import Params
from xpro_mesh.core.rows import from_delta
from xpro_mesh.core.table import PairTable
from xpro_mesh.datapath.memory import MemoryVouches

S = 10**9
rng = random.Random(1)
now = 10**6 * S
V4 = b"\0" * 10 + b"\xff\xff"
entries = []
for i in range(100_000):
    src = V4 + i.to_bytes(4, "big")
    dst = V4 + bytes([10, 9, 0, i % 50])
    entries.append(
        PairEntry(
            (src, dst),
            rng.choice(["b", "c", "d", "e"]),
            OriginEntry(now - rng.randint(0, 5 * S), now, rng.randint(1, 200), (1, i + 1)),
        )
    )
p = Params(t_t1=2 * S, t_t2=S, t_t3=S, t_t4=10 * S, t_f1=1000, t_f2=200_000, r=2, admit_k=5)
table = PairTable("a", 1, p)
table.merge(
    from_delta(Delta(entries=tuple(entries))),
    now,
    MergeLimits(max_rate_pps=2**62, max_entries_per_message=10**6),
)
print("rows", len(table), "pairs", table.num_pairs)
v = Vouching(MemoryVouches(), vouched_max=131072)
for i in range(3):
    t = time.perf_counter()
    sel = table.vouched(131072)
    t1 = time.perf_counter()
    r = v.maps.write(sel)
    t2 = time.perf_counter()
    print(
        f"cycle {i}: vouched {len(sel)} added/removed {r} select {t1 - t:.3f}s write {t2 - t1:.3f}s"
    )
