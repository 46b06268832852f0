"""``xpro-mesh bench spoofed``: the filter under a spoofed-source flood
(issue 11), in the kernel through ``BPF_PROG_TEST_RUN`` (root).

* **new-pair path under a flood**: every packet from a new source
  (``-DXPRO_BENCH_VARY_SRC``) towards a destination D over T_F2 whose
  admission budget is empty: the probation drop (no slot taken, no insert).
  Timed against the skeleton (parse, clock, the pair lookup, which misses)
  and a bare drop, with 0, 1, 1 000 and 100 000 established pairs at D.
  Targets: <= 1.5x the skeleton, and no slowdown from the established pairs
  (100 000 against 0: <= 1.1x).
* **new-pair path, admitted**: the same with D under T_F2 (a slot taken, the
  key inserted): what a new real client pays, for comparison (no target).
* **a flood at D**: 1M one-packet sources at full speed, D over T_F2 after
  its first T_T3 (a real clock), then the share of the flood dropped and the
  pair slots the flood took (target >= 95 %, and the established pairs kept).

The trafgen measurement between two namespaces (the filter's rate against
XDP_DROP-all at the same offered load) is ``bench spoofed-veth``
(:mod:`xpro_mesh.bench.veth`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from xpro_mesh.bench.datapath import V2_BENCH_PROGRAMS
from xpro_mesh.bench.stats import Check, Spread, checks_json, dumps, print_checks, ratio
from xpro_mesh.datapath import clock, libbpf, loader, structs
from xpro_mesh.datapath.config import MapSizes, Policy, XdpConfig
from xpro_mesh.datapath.frames import ip_frame

S = 10**9
TARGET_SKELETON = 1.5
TARGET_NO_SLOWDOWN = 1.1
TARGET_FLOOD_DROPPED = 95.0
ESTABLISHED = (0, 1, 1000, 100_000)


@dataclass(frozen=True, slots=True)
class Figure:
    case: str
    established: int
    bare: Spread
    skeleton: Spread
    filter: Spread

    @property
    def over_skeleton(self) -> float:
        return ratio(self.filter, self.skeleton)

    @property
    def over_bare(self) -> float:
        return ratio(self.filter, self.bare)


def _measure(fds: dict[str, int], frame: bytes, repeat: int, runs: int) -> dict[str, Spread]:
    samples: dict[str, list[int]] = {name: [] for name in fds}
    for _ in range(runs):
        for name, fd in fds.items():
            samples[name].append(libbpf.prog_test_run(fd, frame, repeat=repeat).duration_ns)
    return {name: Spread.of(values) for name, values in samples.items()}


def _over(maps: object, dst: str, established: int) -> None:
    """Make D (already in dest_slots) over T_F2 with an empty budget, and
    mark its first ``established`` pairs established (as packets would)."""
    dslot = maps.lookup_dest(dst)  # type: ignore[attr-defined]
    assert dslot is not None
    d = maps.dest_slots  # type: ignore[attr-defined]
    now = clock.cluster_now_ns()
    d["ts1"][dslot] = now - 2 * S
    d["c"][dslot] = 10**7
    d["admit"][dslot] = 0
    d["n"][dslot] = established
    if established:
        p = maps.pair_slots  # type: ignore[attr-defined]
        mine = (p["dslot"] == dslot) & (p["gen"] % 2 == 0) & (p["gen"] > 0)
        idx = mine.nonzero()[0][:established]
        p["flags"][idx] |= structs.XPRO_SLOT_ESTABLISHED


def figures(repeat: int, runs: int) -> tuple[list[Figure], dict[str, int]]:
    out: list[Figure] = []
    prog = loader.load(
        loader.BuildOptions(
            sizes=MapSizes(pairs_max=1 << 20, dests_max=1 << 8),
            defines=("XPRO_BENCH", "XPRO_BENCH_VARY_SRC"),
        ),
        log_tag="xpro-bench-spoofed",
        extra_programs=V2_BENCH_PROGRAMS,
    )
    flood: dict[str, int] = {}
    try:
        with prog.maps() as maps:
            maps.sync_clock()
            fds = {
                "bare": prog.prog_fds["bench_drop"],
                "skeleton": prog.prog_fds["bench_skeleton"],
                "filter": prog.filter_fd,
            }
            maps.set_config(XdpConfig(t_f1=10**12, t_f2=10**12, policy=Policy.FAIR_SHARE))
            frame = ip_frame("10.40.0.1", "10.41.0.1")
            m = _measure(fds, frame, repeat // 4, runs)  # D under T_F2: slots taken
            out.append(Figure("new pair, admitted", 0, m["bare"], m["skeleton"], m["filter"]))
            maps.set_config(XdpConfig(t_f1=10**12, policy=Policy.FAIR_SHARE))  # T_F2 1000/s
            for i, n in enumerate(ESTABLISHED):
                dst = f"10.42.{i}.1"
                frame = ip_frame("10.43.0.1", dst)
                _fill_to(prog.filter_fd, frame, max(n, 1))  # D's slot and its n pairs
                _over(maps, dst, n)
                before = maps.read_stats()
                m = _measure(fds, frame, repeat, runs)
                after = maps.read_stats()
                flood[f"probation_drops_{n}"] = after.probation_drops - before.probation_drops
                flood[f"new_pairs_{n}"] = after.new_pairs - before.new_pairs
                out.append(Figure("new pair, flood", n, m["bare"], m["skeleton"], m["filter"]))
            sent = runs * repeat * len(ESTABLISHED)
            dropped = sum(flood[f"probation_drops_{n}"] for n in ESTABLISHED)
            flood["flood_packets"] = sent
            flood["flood_dropped"] = dropped
            flood["pairs_free"] = maps.ring_status().pairs_free
    finally:
        prog.close()
    return out, flood


def _fill_to(fd: int, frame: bytes, n: int) -> None:
    done = 0
    while done < n:
        step = min(n - done, 1 << 20)
        libbpf.prog_test_run(fd, frame, repeat=step)
        done += step


def checks(figs: Sequence[Figure], flood: dict[str, int]) -> list[Check]:
    out = [
        Check(
            f"new pair under a flood, {f.established} established / skeleton",
            f.over_skeleton,
            TARGET_SKELETON,
            "x",
        )
        for f in figs
        if f.case == "new pair, flood"
    ]
    by_n = {f.established: f for f in figs if f.case == "new pair, flood"}
    out.append(
        Check(
            "new pair under a flood, 100 000 established / 0 established",
            ratio(by_n[ESTABLISHED[-1]].filter, by_n[0].filter),
            TARGET_NO_SLOWDOWN,
            "x",
        )
    )
    share = 100.0 * flood["flood_dropped"] / max(1, flood["flood_packets"])
    out.append(Check("flood dropped (D over T_F2)", share, TARGET_FLOOD_DROPPED, "%", "at_least"))
    return out


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=200_000, help="packets per test run")
    parser.add_argument("--runs", type=int, default=5, help="runs of every program and case")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = parser.parse_args(argv)
    loader.require_root("the bench")
    figs, flood = figures(args.repeat, args.runs)
    cs = checks(figs, flood)
    if args.json:
        print(
            dumps(
                {
                    "packet": [
                        f | {"over_skeleton": x.over_skeleton, "over_bare": x.over_bare}
                        for f, x in ((_as_dict(x), x) for x in figs)
                    ],
                    "flood": flood,
                    **checks_json(cs),
                }
            )
        )
        return 0
    print(f"ns per {args.repeat} packets, {args.runs} runs, min/median/max")
    print(f"{'case':20} {'established':>11} {'bare':>24} {'skeleton':>24} {'filter':>24} ÷skel")
    for f in figs:
        print(
            f"{f.case:20} {f.established:>11} {f.bare!s:>24} {f.skeleton!s:>24} "
            f"{f.filter!s:>24} {f.over_skeleton:5.2f}"
        )
    print(f"flood: {flood}")
    print_checks(cs)
    return 0


def _as_dict(f: Figure) -> dict[str, object]:
    return {
        "case": f.case,
        "established": f.established,
        "bare": f.bare,
        "skeleton": f.skeleton,
        "filter": f.filter,
    }


if __name__ == "__main__":
    sys.exit(main())
