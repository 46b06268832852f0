"""Benchmarks of the data path, as ratios measured in one run
(``docs/benchmarking.md``): ``xpro-mesh bench datapath``; ``make bench`` runs
``scripts/bench.sh``.

Kernel cost per packet: BPF_PROG_TEST_RUN runs each program ``repeat``
times on one frame and reports the mean ns; each run measures, back to
back, a bare ``return XDP_DROP``, the *skeleton* (parse, one coarse clock
read, the one hash lookup of ``pair_index`` and the two array lookups of
the pair's slot and the destination slot it names: the floor of Algorithm 2
in data path v2), the skeleton plus the two atomic adds of exact counting
(the pair's and the destination's ``c``: the floor without giving up
exact counts across CPUs; printed, not a target) and the filter, for each
case:

* new pair      — every packet from a new source (``-DXPRO_BENCH_VARY_SRC``:
                  the source address changes per packet, in all three programs);
* known pair    — an existing pair that passes;
* drop pair     — a pair over T_F1 (line 15);
* drop dest     — a destination over T_F2, pair above its fair share (lines 21-23);

in IPv4 and IPv6. Targets: filter <= 3.5x bare drop and <= 1.25x skeleton
(ratios of medians); each is printed met or missed.

With ``--v1 DIR`` (the v1 sources: ``git archive cb509d9 bpf | tar -x -C
DIR``), the v1 filter and its skeleton (two hash lookups) are timed on the
same frames in the same run (known and new pair).

Agent I/O (``--pairs N[,N...]``): the data path's share of one sync cycle
at N pair slots: a consistent read of every pair and destination slot
(mmap, seqlock-checked) and a write of every view, wall and CPU time,
against v1's batch lookup of the LRU hash and its in-kernel apply (with
``--v1``).

    xpro-mesh bench datapath [--repeat 1000000] [--runs 5] [--pairs 10000,100000,1000000]
                             [--v1 DIR] [--json]
"""

from __future__ import annotations

import argparse
import ctypes as ct
import dataclasses
import struct
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xpro_mesh.bench.stats import Check, Spread, checks_json, dumps, print_checks, ratio
from xpro_mesh.datapath import clock, libbpf, loader, structs
from xpro_mesh.datapath.config import MapSizes, Policy, XdpConfig
from xpro_mesh.datapath.frames import ip_frame

TARGET_BARE = 3.5
TARGET_SKELETON = 1.25
# The data path's share of the ~1 us per pair per cycle (DESIGN "Scale"): a
# quarter of it for reading every slot and writing every view; and the
# quiet cycle (<= 50 ms at 1M pairs) must at least read every slot.
TARGET_IO_NS_PER_SLOT = 250
TARGET_QUIET_MS = 50
S = 10**9
BENCH_PROGRAMS = ("bench_drop", "bench_skeleton")
V2_BENCH_PROGRAMS = (*BENCH_PROGRAMS, "bench_atomics")
FAMILIES = {"ipv4": ("10.0.{}.1", "10.1.{}.1"), "ipv6": ("2001:db8:{}::1", "2001:db8:1{}::1")}


@dataclass(frozen=True, slots=True)
class Figure:
    family: str
    case: str
    bare: Spread
    skeleton: Spread
    filter: Spread
    atomics: Spread  # the skeleton + the two atomic adds of exact counting

    @property
    def over_atomics(self) -> float:
        return ratio(self.filter, self.atomics)

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


def _load(vary_src: bool, sizes: MapSizes | None = None) -> loader.LoadedProgram:
    defines = ("XPRO_BENCH", "XPRO_BENCH_VARY_SRC") if vary_src else ("XPRO_BENCH",)
    return loader.load(
        loader.BuildOptions(sizes=sizes or MapSizes(), defines=defines),
        log_tag="xpro-bench",
        extra_programs=V2_BENCH_PROGRAMS,
    )


def _fds(prog: Any) -> dict[str, int]:
    return {
        "bare": prog.prog_fds["bench_drop"],
        "skeleton": prog.prog_fds["bench_skeleton"],
        "filter": prog.prog_fds["xpro_filter"],
    }


def _measure_fds(fds: dict[str, int], frame: bytes, repeat: int, runs: int) -> dict[str, Spread]:
    samples: dict[str, list[int]] = {name: [] for name in fds}
    for _ in range(runs):
        for name, fd in fds.items():  # interleaved: each run sees the same machine
            samples[name].append(libbpf.prog_test_run(fd, frame, repeat=repeat).duration_ns)
    return {name: Spread.of(values) for name, values in samples.items()}


def _measure(prog: loader.LoadedProgram, frame: bytes, repeat: int, runs: int) -> dict[str, Spread]:
    return _measure_fds(
        _fds(prog) | {"atomics": prog.prog_fds["bench_atomics"]}, frame, repeat, runs
    )


def _preset(maps: Any, fd: int, frame: bytes, pair_c: int, dest_c: int) -> None:
    """The mesh's view of the frame's pair and destination: pair_c and dest_c
    packets over the last 10 s (the agent's view writes)."""
    now = clock.cluster_now_ns()
    libbpf.prog_test_run(fd, frame)  # creates the pair and its destination
    pairs, dests = maps.read_pairs(), maps.read_dests()
    i = len(pairs.slots) - 1
    maps.write_pair_views(pairs.slots[i:], pairs.rows["gen"][i:], [pair_c], [now - 10 * S], [now])
    j = len(dests.slots) - 1
    maps.write_dest_views(
        dests.slots[j:], dests.rows["gen"][j:], [dest_c], [0], [now - 10 * S], [now]
    )


def packet_figures(repeat: int, runs: int, new_pair_repeat: int) -> list[Figure]:
    figures: list[Figure] = []
    prog = _load(vary_src=False)
    try:
        with prog.maps() as maps:
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
                    frame = ip_frame(src, dst)
                    if pair_c:
                        _preset(maps, prog.filter_fd, frame, pair_c, dest_c)
                    run = libbpf.prog_test_run(prog.filter_fd, frame)  # creates the pair
                    expect = {"known pair": 2, "drop pair": 1, "drop dest": 1}[case]
                    if run.retval != expect:
                        raise RuntimeError(f"{family} {case}: filter returned {run.retval}")
                    m = _measure(prog, frame, repeat, runs)
                    figures.append(
                        Figure(family, case, m["bare"], m["skeleton"], m["filter"], m["atomics"])
                    )
    finally:
        prog.close()
    prog = _load(vary_src=True)
    try:
        with prog.maps() as maps:
            maps.sync_clock()
            maps.set_config(XdpConfig(t_f1=10**12, t_f2=10**12))
            for family, (src_fmt, dst_fmt) in FAMILIES.items():
                frame = ip_frame(src_fmt.format(9), dst_fmt.format(9))
                libbpf.prog_test_run(prog.filter_fd, frame)
                m = _measure(prog, frame, new_pair_repeat, runs)
                figures.append(
                    Figure(family, "new pair", m["bare"], m["skeleton"], m["filter"], m["atomics"])
                )
    finally:
        prog.close()
    order = ["new pair", "known pair", "drop pair", "drop dest"]
    return sorted(figures, key=lambda f: (list(FAMILIES).index(f.family), order.index(f.case)))


# ---- data path v1, from its sources, for the same-run comparison ------------------

_V1_PAIR_VALUE = 80  # struct xpro_pair of v1
_V1_OP = struct.Struct("<IIII16s16sQqqqQQ")  # struct xpro_op of v1
_V1_BATCH = 128
_V1_PAIR_DTYPE = np.dtype(
    [("ts1", "<u8"), ("ts2", "<u8"), ("c", "<i8"), ("dc", "<i8"), ("rest", "V48")]
)


def _v1_op(key: bytes, pair: Any) -> bytes:
    """A v1 pair re-base op (kind PAIR, flags EXPECT): c += 3, dc -= dc read."""
    ts1, ts2, dc = int(pair["ts1"]), int(pair["ts2"]), int(pair["dc"])
    return _V1_OP.pack(2, 1, 0, 0, key[:16], key[16:], ts1, dc, 3, 0, ts1, ts2)


class V1Program:
    """The v1 program (LRU hash maps, the apply program) built from ``src``."""

    def __init__(self, src: Path, pairs_max: int, vary_src: bool) -> None:
        defines = ["XPRO_BENCH"] + (["XPRO_BENCH_VARY_SRC"] if vary_src else [])
        cflags = [
            f"-I{src}",
            f"-DXPRO_PAIRS_MAX={pairs_max}",
            "-DXPRO_DESTS_MAX=65536",
            "-Wno-unused-function",
            *[f"-D{d}" for d in defines],
        ]
        self._bpf, self.prog_fds = loader.compile_programs(
            src / "xpro.c",
            cflags,
            ("xpro_filter", "xpro_apply", *BENCH_PROGRAMS),
            log_tag="xpro-bench-v1",
        )
        self.map_fds = {
            name: int(self._bpf[name.encode()].map_fd)
            for name in ("pairs", "config", "clock", "apply_ops")
        }
        zero = ct.c_uint32(0)  # v1's config and clock have v2's layout
        config = XdpConfig(t_f1=10**12, t_f2=10**12).to_struct()
        libbpf.map_update_elem(self.map_fds["config"], zero, config)
        clk = structs.XproClock(offset=clock.kernel_offset_ns())
        libbpf.map_update_elem(self.map_fds["clock"], zero, clk)

    def read_pairs(self) -> tuple[bytes, bytes, int]:
        """v1's read: one batch lookup of the whole LRU hash."""
        return libbpf.map_lookup_batch(self.map_fds["pairs"], 32, _V1_PAIR_VALUE)

    def apply_all(self, keys: bytes, values: bytes, n: int) -> int:
        """v1's write: a re-base op per pair through xpro_apply (BPF_PROG_TEST_RUN,
        128 ops a run), as v1's BpfMaps.apply did; returns ops applied."""
        fd, apply_fd = self.map_fds["apply_ops"], self.prog_fds["xpro_apply"]
        table = np.frombuffer(values, _V1_PAIR_DTYPE, count=n)
        applied = 0
        index = struct.pack(f"<{_V1_BATCH}I", *range(_V1_BATCH))
        for start in range(0, n, _V1_BATCH):
            m = min(_V1_BATCH, n - start)
            ops = b"".join(
                _v1_op(keys[i * 32 : i * 32 + 32], table[i]) for i in range(start, start + m)
            )
            libbpf.map_update_batch(fd, index[: 4 * m], ops, m)
            libbpf.prog_test_run(apply_fd, struct.pack("<I", m).ljust(64, b"\0"))
            _k, out, _c = libbpf.map_lookup_batch(fd, 4, _V1_OP.size, chunk=_V1_BATCH)
            applied += sum(
                1 for i in range(m) if struct.unpack_from("<III", out, i * _V1_OP.size)[2] == 1
            )
        return applied

    def close(self) -> None:
        self._bpf.cleanup()


@dataclass(frozen=True, slots=True)
class V1Figure:
    family: str
    case: str
    v1_skeleton: Spread  # parse, clock, two hash lookups
    v1_filter: Spread
    v2_skeleton: Spread  # parse, clock, one hash lookup, two array lookups
    v2_filter: Spread

    @property
    def speedup(self) -> float:
        return ratio(self.v1_filter, self.v2_filter)


def v1_figures(src: Path, repeat: int, runs: int, new_pair_repeat: int) -> list[V1Figure]:
    """The v1 and v2 filters on the same frames, interleaved run by run."""
    out: list[V1Figure] = []
    for vary in (False, True):
        v1 = V1Program(src, 1 << 20, vary)
        v2 = _load(vary_src=vary)
        try:
            with v2.maps() as maps:
                maps.sync_clock()
                maps.set_config(XdpConfig(t_f1=10**12, t_f2=10**12))
            for family, (src_fmt, dst_fmt) in FAMILIES.items():
                frame = ip_frame(src_fmt.format(7), dst_fmt.format(7))
                for fd in (v1.prog_fds["xpro_filter"], v2.filter_fd):
                    libbpf.prog_test_run(fd, frame)
                fds = {
                    "v1_skeleton": v1.prog_fds["bench_skeleton"],
                    "v1_filter": v1.prog_fds["xpro_filter"],
                    "v2_skeleton": v2.prog_fds["bench_skeleton"],
                    "v2_filter": v2.filter_fd,
                }
                m = _measure_fds(fds, frame, new_pair_repeat if vary else repeat, runs)
                case = "new pair" if vary else "known pair"
                out.append(V1Figure(family, case, **m))
        finally:
            v1.close()
            v2.close()
    return out


# ---- agent I/O ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IoFigure:
    """The data path's share of one sync cycle at ``slots`` pairs (seconds)."""

    version: str  # "v2" (mmap) or "v1" (batch lookup + apply program)
    slots: int
    read_wall: Spread
    read_cpu: Spread
    write_wall: Spread
    write_cpu: Spread

    @property
    def cycle_cpu_ns_per_slot(self) -> float:
        return (self.read_cpu.median + self.write_cpu.median) * 1e9 / self.slots


def _fill(prog_fd: int, n: int) -> None:
    """n new pairs: one new source per packet (XPRO_BENCH_VARY_SRC)."""
    frame = ip_frame("10.20.0.1", "10.30.0.1")
    done = 0
    while done < n:
        step = min(n - done, 1 << 20)
        libbpf.prog_test_run(prog_fd, frame, repeat=step)
        done += step


def _timed2(fn: Any) -> tuple[float, float, Any]:
    w0, c0 = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - w0, time.process_time() - c0, result


def io_figures(sizes: Sequence[int], runs: int, v1_src: Path | None) -> list[IoFigure]:
    out: list[IoFigure] = []
    for n in sizes:
        prog = _load(vary_src=True, sizes=MapSizes(pairs_max=n, dests_max=1 << 16))
        try:
            with prog.maps() as maps:
                maps.sync_clock()
                maps.set_config(XdpConfig(t_f1=10**12, t_f2=10**12))
                _fill(prog.filter_fd, n)
                got = maps.read_pairs().slots.size
                if got != n:
                    raise RuntimeError(f"bench: {got} pair slots live after the fill, not {n}")
                rw, rc, ww, wc = [], [], [], []
                now = clock.cluster_now_ns()
                for _ in range(runs):
                    w, c, (pairs, dests) = _timed2(lambda: (maps.read_pairs(), maps.read_dests()))
                    rw.append(w)
                    rc.append(c)
                    adj = np.full(pairs.slots.size, 7, np.int64)
                    t1 = pairs.rows["ts1"]
                    t2 = np.full(pairs.slots.size, now, np.uint64)
                    dz = np.zeros(dests.slots.size, np.int64)
                    dt = np.full(dests.slots.size, now, np.uint64)

                    def write() -> None:
                        maps.write_pair_views(pairs.slots, pairs.rows["gen"], adj, t1, t2)  # noqa: B023
                        maps.write_dest_views(dests.slots, dests.rows["gen"], dz, dz, dt, dt)  # noqa: B023

                    w, c, _ = _timed2(write)
                    ww.append(w)
                    wc.append(c)
                out.append(IoFigure("v2", n, *map(Spread.of, (rw, rc, ww, wc))))
        finally:
            prog.close()
        if v1_src is None:
            continue
        v1 = V1Program(v1_src, 2 * n, vary_src=True)
        try:
            _fill(v1.prog_fds["xpro_filter"], n)
            rw, rc, ww, wc = [], [], [], []
            for _ in range(runs if n <= 100_000 else 1):
                w, c, (keys, values, count) = _timed2(v1.read_pairs)
                rw.append(w)
                rc.append(c)
                w, c, applied = _timed2(lambda: v1.apply_all(keys, values, count))  # noqa: B023
                if applied != count:
                    raise RuntimeError(f"bench: v1 applied {applied} of {count} ops")
                ww.append(w)
                wc.append(c)
            out.append(IoFigure("v1", count, *map(Spread.of, (rw, rc, ww, wc))))
        finally:
            v1.close()
    return out


def io_checks(figures: Sequence[IoFigure]) -> list[Check]:
    checks = []
    for f in figures:
        if f.version != "v2":
            continue
        checks.append(
            Check(
                f"v2 agent I/O at {f.slots} slots: CPU per slot (read all + write all views)",
                f.cycle_cpu_ns_per_slot,
                TARGET_IO_NS_PER_SLOT,
                "ns",
            )
        )
        if f.slots >= 1_000_000:
            checks.append(
                Check(
                    f"v2 read of every slot at {f.slots} slots, CPU (the quiet cycle's floor)",
                    f.read_cpu.median * 1e3,
                    TARGET_QUIET_MS,
                    "ms",
                )
            )
    return checks


def _print(
    figures: list[Figure],
    v1: list[V1Figure],
    io: list[IoFigure],
    checks: list[Check],
    repeat: int,
    runs: int,
) -> None:
    print(
        f"XDP cost per packet: BPF_PROG_TEST_RUN, repeat {repeat} (new pair: fewer), "
        f"{runs} runs, ns min/median/max"
    )
    head = f"{'family':6} {'case':11} {'bare drop':>14} {'skeleton':>14} {'+atomics':>14}"
    print(head + f" {'filter':>14} {'÷bare':>6} {'÷skel':>6} {'÷atom':>6}")
    for f in figures:
        print(
            f"{f.family:6} {f.case:11} {f.bare!s:>14} {f.skeleton!s:>14} {f.atomics!s:>14} "
            f"{f.filter!s:>14} {f.over_bare:6.2f} {f.over_skeleton:6.2f} {f.over_atomics:6.2f}"
        )
    if v1:
        print("v1 against v2, same frames, same run (ns min/median/max):")
        print(
            f"{'family':6} {'case':11} {'v1 skeleton':>14} {'v1 filter':>14} "
            f"{'v2 skeleton':>14} {'v2 filter':>14} {'v1÷v2':>6}"
        )
        for g in v1:
            print(
                f"{g.family:6} {g.case:11} {g.v1_skeleton!s:>14} {g.v1_filter!s:>14} "
                f"{g.v2_skeleton!s:>14} {g.v2_filter!s:>14} {g.speedup:6.2f}"
            )
    if io:
        print("agent I/O per cycle (read every pair and destination slot; write every view),")
        print("ms min/median/max, wall and CPU:")
        for x in io:
            print(
                f"  {x.version} {x.slots:>8} slots: read {x.read_wall.fmt(1e3, 1)} "
                f"(cpu {x.read_cpu.fmt(1e3, 1)})  write {x.write_wall.fmt(1e3, 1)} "
                f"(cpu {x.write_cpu.fmt(1e3, 1)})  = {x.cycle_cpu_ns_per_slot:.0f} ns cpu/slot"
            )
    print_checks(checks)


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
        help="repeat for the new-pair case (each packet takes a pair slot; "
        "runs x this must stay under the 1M slots)",
    )
    parser.add_argument(
        "--pairs",
        default="",
        help="also measure the agent's I/O at these numbers of pair slots (comma separated)",
    )
    parser.add_argument(
        "--v1", type=Path, default=None, help="directory with the v1 bpf/ sources to compare with"
    )
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = parser.parse_args(argv)
    try:
        sizes = [int(x) for x in args.pairs.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--pairs: a comma-separated list of integers, got {args.pairs!r}")
    if args.v1 is not None and not (args.v1 / "xpro.c").is_file():
        parser.error(f"--v1: no xpro.c in {args.v1}")
    loader.require_root("the bench")
    figures = packet_figures(args.repeat, args.runs, args.new_pair_repeat)
    v1 = v1_figures(args.v1, args.repeat, args.runs, args.new_pair_repeat) if args.v1 else []
    io = io_figures(sizes, args.runs, args.v1) if sizes else []
    checks = [c for fig in figures for c in fig.checks()] + io_checks(io)
    if args.json:
        document = {
            "packet": [
                dataclasses.asdict(fig)
                | {
                    "over_bare": fig.over_bare,
                    "over_skeleton": fig.over_skeleton,
                    "over_atomics": fig.over_atomics,
                }
                for fig in figures
            ],
            "v1": [dataclasses.asdict(g) | {"speedup": g.speedup} for g in v1],
            "io": [
                dataclasses.asdict(f) | {"cycle_cpu_ns_per_slot": f.cycle_cpu_ns_per_slot}
                for f in io
            ],
            **checks_json(checks),
        }
        print(dumps(document))
    else:
        _print(figures, v1, io, checks, args.repeat, args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
