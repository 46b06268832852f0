"""Benchmarks, apart from the product: ``xpro-mesh bench NAME``.

Each benchmark is a module with ``main(argv, prog) -> int`` that measures,
prints min/median/max and its targets met or missed (``--json``: one JSON
document), and leaves nothing behind. :data:`BENCHES` names them for the CLI,
which imports a module only when it runs (a benchmark may need root, the
kernel or real agents; ``xpro-mesh --help`` needs none of it).

* :mod:`.stats` — repetitions as min/median/max, ratios, targets, JSON;
* :mod:`.agent` — the agent's sync cycle and five real agents on loopback;
* :mod:`.datapath` — the filter's ns/packet against baselines, map-sync syscalls;
* :mod:`.fuzz` — a million hostile datagrams through a node's receive path;
* :mod:`.spoofed` — the filter under a spoofed-source flood (issue 11);
* :mod:`.veth` — the filter's rate against XDP_DROP-all over a real veth (trafgen);
* :mod:`.table` — the columnar pair table's cycles against the scalar GossipState;
* :mod:`.wire` — the mesh's bytes and codec CPU per changed row, the stream;
* :mod:`.loopback` — real ``xpro-mesh agent`` processes (the bench and the tests).
"""

from __future__ import annotations

__all__ = ["BENCHES"]

# name -> (module, one line for --help). A new benchmark adds one line here.
BENCHES: dict[str, tuple[str, str]] = {
    "agent": (
        "xpro_mesh.bench.agent",
        "the agent: sync cycle at 10k/100k/1M pairs, five real agents on loopback",
    ),
    "datapath": (
        "xpro_mesh.bench.datapath",
        "the XDP filter: ns per packet against a bare drop and a skeleton (root)",
    ),
    "fuzz": (
        "xpro_mesh.bench.fuzz",
        "the node's receive path: 1M hostile datagrams, 0 crashes, no state change",
    ),
    "spoofed": (
        "xpro_mesh.bench.spoofed",
        "the XDP filter under a spoofed-source flood: the probation path, the flood dropped (root)",
    ),
    "spoofed-veth": (
        "xpro_mesh.bench.veth",
        "the XDP filter's rate against XDP_DROP-all over a real veth, trafgen flood (root)",
    ),
    "table": (
        "xpro_mesh.bench.table",
        "the columnar pair table: busy and quiet cycles at 10k/100k/1M pairs, 3 origins",
    ),
    "wire": (
        "xpro_mesh.bench.wire",
        "the mesh wire: bytes and codec CPU per changed row, 1M rows over the stream",
    ),
}
