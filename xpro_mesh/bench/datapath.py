"""Benchmarks of the data path, as ratios measured in one run
(``docs/benchmarking.md``): ``xpro-mesh bench datapath``; ``make bench`` runs
``scripts/bench.sh``.

Kernel cost per packet: BPF_PROG_TEST_RUN runs each program ``repeat``
times on one frame and reports the mean ns; each run measures, back to
back, a bare ``return XDP_DROP``, the *skeleton* (parse, one coarse clock
read, the pair and destination lookups: the floor of Algorithm 2) and the
filter, for each case:

* new pair      — every packet from a new source (``-DXPRO_BENCH_VARY_SRC``:
                  the source address changes per packet, in all three programs);
* known pair    — an existing pair that passes;
* drop pair     — a pair over T_F1 (line 15);
* drop dest     — a destination over T_F2, pair above its fair share (lines 21-23);

in IPv4 and IPv6. Targets: filter <= 3.5x bare drop and <= 1.25x skeleton
(ratios of medians); each is printed met or missed.

Control plane (``--pairs N``): one map-sync round trip at N pairs, batch
reads and the in-kernel apply against the key-by-key syscall loops they
replace.

    xpro-mesh bench datapath [--repeat 1000000] [--runs 5] [--pairs 100000] [--json]
"""

from __future__ import annotations

import argparse
import ctypes as ct
import dataclasses
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from xpro_mesh.bench.stats import Check, Spread, checks_json, dumps, print_checks, ratio
from xpro_mesh.datapath import clock, libbpf, loader, structs
from xpro_mesh.datapath.backend import DestOp, PairKey, PairOp
from xpro_mesh.datapath.bpf_maps import BpfMaps
from xpro_mesh.datapath.config import MapSizes, Policy, XdpConfig
from xpro_mesh.datapath.frames import ip_frame

TARGET_BARE = 3.5
TARGET_SKELETON = 1.25
S = 10**9
BENCH_PROGRAMS = ("bench_drop", "bench_skeleton")
FAMILIES = {"ipv4": ("10.0.{}.1", "10.1.{}.1"), "ipv6": ("2001:db8:{}::1", "2001:db8:1{}::1")}


@dataclass(frozen=True, slots=True)
class Figure:
    family: str
    case: str
    bare: Spread
    skeleton: Spread
    filter: Spread

    @property
    def over_bare(self) -> float:
        return ratio(self.filter, self.bare)

    @property
    def over_skeleton(self) -> float:
        return ratio(self.filter, self.skeleton)

    def checks(self) -> list[Check]:
        where = f"{self.family} {self.case}: filter"
        return [
            Check(f"{where} / bare drop", self.over_bare, TARGET_BARE, "x"),
            Check(f"{where} / skeleton", self.over_skeleton, TARGET_SKELETON, "x"),
        ]


def _load(vary_src: bool) -> loader.LoadedProgram:
    defines = ("XPRO_BENCH", "XPRO_BENCH_VARY_SRC") if vary_src else ("XPRO_BENCH",)
    return loader.load(
        loader.BuildOptions(sizes=MapSizes(), defines=defines),
        log_tag="xpro-bench",
        extra_programs=BENCH_PROGRAMS,
    )


def _measure(prog: loader.LoadedProgram, frame: bytes, repeat: int, runs: int) -> dict[str, Spread]:
    fds = {
        "bare": prog.prog_fds["bench_drop"],
        "skeleton": prog.prog_fds["bench_skeleton"],
        "filter": prog.filter_fd,
    }
    samples: dict[str, list[int]] = {name: [] for name in fds}
    for _ in range(runs):
        for name, fd in fds.items():  # interleaved: each run sees the same machine
            samples[name].append(libbpf.prog_test_run(fd, frame, repeat=repeat).duration_ns)
    return {name: Spread.of(values) for name, values in samples.items()}


def _preset(maps: BpfMaps, key: PairKey, pair_c: int, dest_c: int) -> None:
    now = clock.cluster_now_ns()
    maps.apply(
        [PairOp(key, None, 0, pair_c, now - 10 * S, now)],
        [DestOp(key.dst, dest_c, 1, now - 10 * S, now)],
    )


def packet_figures(repeat: int, runs: int, new_pair_repeat: int) -> list[Figure]:
    figures: list[Figure] = []
    prog = _load(vary_src=False)
    try:
        maps = prog.maps()
        maps.sync_clock()
        for family, (src_fmt, dst_fmt) in FAMILIES.items():
            cases: list[tuple[str, XdpConfig, int, int]] = [
                ("known pair", XdpConfig(t_f1=10**12, t_f2=10**12), 0, 0),
                ("drop pair", XdpConfig(t_f1=1, t_f2=10**12), 10**6, 10**6),
                (
                    "drop dest",
                    XdpConfig(t_f1=10**12, t_f2=100, policy=Policy.FAIR_SHARE),
                    10**6,
                    10**9,
                ),
            ]
            for i, (case, config, pair_c, dest_c) in enumerate(cases):
                src, dst = src_fmt.format(i + 1), dst_fmt.format(i + 1)
                maps.set_config(config)
                if pair_c:
                    _preset(maps, PairKey.of(src, dst), pair_c, dest_c)
                frame = ip_frame(src, dst)
                run = libbpf.prog_test_run(prog.filter_fd, frame)  # creates the pair
                expect = {"known pair": 2, "drop pair": 1, "drop dest": 1}[case]
                if run.retval != expect:
                    raise RuntimeError(f"{family} {case}: filter returned {run.retval}")
                m = _measure(prog, frame, repeat, runs)
                figures.append(Figure(family, case, m["bare"], m["skeleton"], m["filter"]))
    finally:
        prog.close()
    prog = _load(vary_src=True)
    try:
        maps = prog.maps()
        maps.sync_clock()
        maps.set_config(XdpConfig(t_f1=10**12, t_f2=10**12))
        for family, (src_fmt, dst_fmt) in FAMILIES.items():
            frame = ip_frame(src_fmt.format(9), dst_fmt.format(9))
            libbpf.prog_test_run(prog.filter_fd, frame)
            m = _measure(prog, frame, new_pair_repeat, runs)
            figures.append(Figure(family, "new pair", m["bare"], m["skeleton"], m["filter"]))
    finally:
        prog.close()
    order = ["new pair", "known pair", "drop pair", "drop dest"]
    return sorted(figures, key=lambda f: (list(FAMILIES).index(f.family), order.index(f.case)))


@dataclass(frozen=True, slots=True)
class ControlFigure:
    what: str
    pairs: int
    batch_s: float
    loop_s: float

    @property
    def speedup(self) -> float:
        return self.loop_s / self.batch_s


def _timed(fn: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


def control_figures(pairs: int) -> list[ControlFigure]:
    """Read all pairs and re-base all pairs at ``pairs`` entries: the batch
    read and in-kernel apply against key-by-key syscall loops."""
    prog = loader.load(
        loader.BuildOptions(sizes=MapSizes(pairs_max=max(pairs * 2, 1024))), log_tag="xpro-bench"
    )
    try:
        maps = prog.maps()
        maps.set_config(XdpConfig())
        now = clock.cluster_now_ns()
        keys = [
            PairKey(bytes(12) + i.to_bytes(4, "big"), bytes(15) + b"\x01") for i in range(pairs)
        ]
        create_s, _ = _timed(
            lambda: maps.apply([PairOp(k, None, 0, 5, now - S, now) for k in keys])
        )

        key_size, value_size = ct.sizeof(structs.XproPairKey), ct.sizeof(structs.XproPair)
        raw_s, _raw = _timed(
            lambda: libbpf.map_lookup_batch(maps.map_fd("pairs"), key_size, value_size)
        )
        read_s, records = _timed(maps.read_pairs)
        assert len(records) == pairs

        def read_loop() -> int:
            fd = maps.map_fd("pairs")
            key, nxt, value = structs.XproPairKey(), structs.XproPairKey(), structs.XproPair()
            n, first = 0, True
            while libbpf.map_get_next_key(fd, None if first else key, nxt):
                libbpf.map_lookup_elem(fd, nxt, value)
                ct.memmove(ct.addressof(key), ct.addressof(nxt), ct.sizeof(key))
                n, first = n + 1, False
            return n

        loop_read_s, n = _timed(read_loop)
        assert n == pairs

        ops = [PairOp(k, r.ts1, r.dc, 3, r.ts1, r.ts2) for k, r in records]
        apply_s, report = _timed(lambda: maps.apply(ops))
        assert report.applied == pairs, report

        def write_loop() -> None:
            fd = maps.map_fd("pairs")
            value = structs.XproPair()
            for k, r in records:
                key = structs.pair_key_struct(k.src, k.dst)
                libbpf.map_lookup_elem(fd, key, value)
                value.c, value.dc = r.c + 3, 0
                libbpf.map_update_elem(fd, key, value)

        loop_write_s, _ = _timed(write_loop)
    finally:
        prog.close()
    return [
        ControlFigure(
            "read all pairs, syscalls only (batch lookup vs get_next_key+lookup)",
            pairs,
            raw_s,
            loop_read_s,
        ),
        ControlFigure(
            "read all pairs into records (read_pairs vs the same loop)", pairs, read_s, loop_read_s
        ),
        ControlFigure(
            "re-base all pairs (in-kernel apply vs lookup+update per key)",
            pairs,
            apply_s,
            loop_write_s,
        ),
        ControlFigure("create pairs (apply, for scale)", pairs, create_s, create_s),
    ]


def _print(figures: list[Figure], control: list[ControlFigure], repeat: int, runs: int) -> None:
    print(
        f"XDP cost per packet: BPF_PROG_TEST_RUN, repeat {repeat} (new pair: fewer), "
        f"{runs} runs, ns min/median/max"
    )
    head = f"{'family':6} {'case':11} {'bare drop':>14} {'skeleton':>14} {'filter':>14}"
    print(head + f" {'÷bare':>6} {'÷skel':>6}")
    for f in figures:
        print(
            f"{f.family:6} {f.case:11} {f.bare!s:>14} {f.skeleton!s:>14} {f.filter!s:>14} "
            f"{f.over_bare:6.2f} {f.over_skeleton:6.2f}"
        )
    print_checks([c for f in figures for c in f.checks()])
    for c in control:
        if c.batch_s == c.loop_s:
            print(f"{c.what}: {c.pairs} pairs in {c.batch_s:.2f} s")
        else:
            print(
                f"{c.what}: {c.pairs} pairs {c.batch_s:.3f} s vs {c.loop_s:.3f} s "
                f"({c.speedup:.1f}x faster)"
            )


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--repeat", type=int, default=1_000_000, help="packets per BPF_PROG_TEST_RUN"
    )
    parser.add_argument("--runs", type=int, default=5, help="runs of every program and case")
    parser.add_argument(
        "--new-pair-repeat",
        type=int,
        default=100_000,
        help="repeat for the new-pair case (each packet adds a pair; "
        "runs x this must stay under the 1M pair map)",
    )
    parser.add_argument(
        "--pairs", type=int, default=0, help="also measure a map-sync round trip at this many pairs"
    )
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = parser.parse_args(argv)
    loader.require_root("the bench")
    figures = packet_figures(args.repeat, args.runs, args.new_pair_repeat)
    control = control_figures(args.pairs) if args.pairs else []
    if args.json:
        document = {
            "packet": [
                dataclasses.asdict(fig)
                | {"over_bare": fig.over_bare, "over_skeleton": fig.over_skeleton}
                for fig in figures
            ],
            "control": [dataclasses.asdict(c) | {"speedup": c.speedup} for c in control],
            **checks_json([c for fig in figures for c in fig.checks()]),
        }
        print(dumps(document))
    else:
        _print(figures, control, args.repeat, args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
