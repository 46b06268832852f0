"""Helpers for the data path tests: random packet traces that exercise every
line of Algorithm 2, a driver feeding them to the kernel through
BPF_PROG_TEST_RUN, and map resets for the shared test program."""

from __future__ import annotations

import ctypes as ct
import random
from collections import Counter
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass

import numpy as np

from xpro_mesh.core.algorithm import (
    AdmissionBudget,
    DestinationAggregate,
    LocalRecord,
    Params,
    Verdict,
    admission_aggregate,
    destination_aggregate,
    filter_packet,
    filter_packet_fair_share,
)
from xpro_mesh.datapath import libbpf, structs
from xpro_mesh.datapath.bpf_maps import BpfMaps
from xpro_mesh.datapath.config import Policy

MS = 10**6
BASE_TIME = 1_700_000_000 * 10**9  # cluster time of the first packet (2023, ns)

Table = MutableMapping[tuple[str, str], LocalRecord]  # addresses as text


@dataclass(frozen=True, slots=True)
class Packet:
    src: str
    dst: str
    now: int


def model_for(policy: Policy) -> Callable[[Table, str, str, int, Params], Verdict]:
    """The reference model of ``policy`` for ONE table (fair-share keeps its
    destinations' admission budgets in the returned function)."""
    if policy is Policy.PAPER:
        return filter_packet
    return FairShareModel()


class FairShareModel:
    """filter_packet_fair_share for one table, with its admission budgets."""

    def __init__(self) -> None:
        self.budgets: dict[str, AdmissionBudget] = {}

    def __call__(self, table: Table, src: str, dst: str, now: int, p: Params) -> Verdict:
        return filter_packet_fair_share(table, src, dst, now, p, budgets=self.budgets)


def random_params(rng: random.Random) -> Params:
    t_t1 = rng.randint(40, 90) * MS
    return Params(
        t_t1=t_t1,
        t_t2=rng.randint(4, 12) * MS,
        t_t3=rng.randint(8, 25) * MS,
        t_t4=10 * t_t1,
        t_f1=rng.choice([400, 600, 900]),
        t_f2=rng.choice([700, 1000, 1500]),
        r=2,
        admit_k=rng.choice([1, 3, 6]),
        admit_rate=rng.choice([50, 200, 1000]),
        admit_burst=rng.choice([1, 3, 10]),
    )


def _pairs(rng: random.Random) -> list[tuple[str, str, float]]:
    """(src, dst, weight): heavy pairs, light ones and rare ones (idle longer
    than T_T1 between packets), both families, some clients of two
    destinations. IPv6 clients are /64s (the default ``src_prefix6``): each
    source is its prefix, so model, twin and kernel name it alike."""
    dst4 = [f"10.2.0.{i}" for i in range(1, 4)]
    dst6 = [f"fd00::2:{i}" for i in range(1, 3)]
    kinds = [8.0, 1.0, 1.0, 1.0, 2.0, 0.05, 0.05]
    out: list[tuple[str, str, float]] = []
    for i in range(1, 13):
        out.append((f"10.1.0.{i}", rng.choice(dst4), rng.choice(kinds)))
        out.append((f"fd00:1:0:{i:x}::", rng.choice(dst6), rng.choice(kinds)))
    for i in range(1, 4):  # clients of two destinations
        out.append((f"10.1.0.{i}", dst4[(i + 1) % 3], 1.0))
    seen: set[tuple[str, str]] = set()
    unique = []
    for src, dst, w in out:
        if (src, dst) not in seen:
            seen.add((src, dst))
            unique.append((src, dst, w))
    return unique


def random_trace(rng: random.Random, p: Params, policy: Policy, n: int) -> list[Packet]:
    """``n`` packets in time order. The gaps mix line rate, same-instant
    packets, times exactly at and one ns past T_T2 after a pair's start and
    T_T3 after its destination's start, just below/at/above T_T1 after a
    pair's last packet, and long silences, so every branch and boundary of
    Algorithm 2 is hit. One packet in 30 comes from a source never seen
    before or after (a forged one: young, never known) towards a destination
    only such sources use, so the admission budget and probation meet a
    flood whose pairs cannot become known while the steady pairs restart
    and do."""
    pairs = _pairs(rng)
    weights = [w for _, _, w in pairs]
    base_gap = rng.uniform(0.08, 0.2) * MS
    table: dict[tuple[str, str], LocalRecord] = {}
    model = model_for(policy)
    now = BASE_TIME
    trace: list[Packet] = []
    for k in range(n):
        src, dst, _w = rng.choices(pairs, weights)[0]
        forged = rng.random() < 1 / 30
        if forged:  # towards a destination of its own, so the others' windows stay theirs
            dst = "fd00::2:9" if ":" in dst else "10.2.0.9"
            src = f"fd00:3:0:{k:x}::" if ":" in dst else f"10.3.{k >> 8 & 255}.{k & 255}"
        roll = rng.random()
        rec = table.get((src, dst))
        if roll < 0.75 or forged:
            now += int(rng.expovariate(1 / base_gap))
        elif roll < 0.85:
            pass  # same instant
        elif roll < 0.95 and rec is not None:
            agg = destination_aggregate(table, dst)
            assert agg is not None
            target = rng.choice(
                [rec.ts1 + p.t_t2 + rng.choice([0, 1]), agg.ts1 + p.t_t3 + rng.choice([0, 1])]
            )
            now = max(now, target)
        elif roll < 0.96 and rec is not None:
            now = max(now, rec.ts2 + p.t_t1 + rng.choice([-1, 0, 1]))
        elif roll < 0.963:
            now += p.t_t1 + rng.randint(0, p.t_t1)
        else:
            now += rng.randint(0, p.t_t2 // 4)
        model(table, src, dst, now, p)
        trace.append(Packet(src, dst, now))
    return trace


def replay_model(
    trace: list[Packet], p: Params, policy: Policy
) -> tuple[list[Verdict], Table, Callable[[str], DestinationAggregate | None]]:
    """The model's verdicts, its table, and each destination's aggregate as
    the kernel's slot holds it (under fair-share: with the probation drops)."""
    table: dict[tuple[str, str], LocalRecord] = {}
    model = model_for(policy)
    verdicts = [model(table, pk.src, pk.dst, pk.now, p) for pk in trace]

    def aggregate(dst: str) -> DestinationAggregate | None:
        if isinstance(model, FairShareModel):
            return admission_aggregate(table, model.budgets, dst, p)
        return destination_aggregate(table, dst, p)

    return verdicts, table, aggregate


def coverage(verdicts: list[Verdict], table: Table) -> Counter[str]:
    c: Counter[str] = Counter(str(v) for v in verdicts)
    c["marked"] = sum(1 for r in table.values() if r.mark)
    c["known"] = sum(1 for r in table.values() if r.known)
    return c


def clear_maps(maps: BpfMaps) -> None:
    """Return a loaded program's maps to a fresh data path (empty indexes,
    zeroed slots, full free rings, no spares, zero stats, no config, clock
    at 0) so each test starts from nothing."""
    for name, key_size in (("pair_index", 32), ("dest_index", 16)):
        keys, _values, n = libbpf.map_lookup_batch(maps.map_fd(name), key_size, 4)
        libbpf.map_delete_batch(maps.map_fd(name), keys, n)
    maps.pair_slots[:] = np.zeros(1, maps.pair_slots.dtype)
    maps.dest_slots[:] = np.zeros(1, maps.dest_slots.dtype)
    for ring in maps._rings:
        ring[:] = 0
    maps.fill_rings()
    maps.write_heartbeat(0)  # no agent yet (issue 13)
    zero = ct.c_uint32(0)
    ncpu = libbpf.num_possible_cpus()
    stride = (ct.sizeof(structs.XproStats) + 7) // 8 * 8
    libbpf.map_update_elem(maps.map_fd("stats"), zero, bytearray(stride * ncpu))
    libbpf.map_update_elem(maps.map_fd("spares"), zero, bytearray(8 * ncpu))
    libbpf.map_update_elem(maps.map_fd("config"), zero, structs.XproConfig())
    libbpf.map_update_elem(maps.map_fd("clock"), zero, structs.XproClock())
    while maps.poll_events(0):  # drain warnings earlier tests left
        pass


def run_cli(argv: list[str]) -> tuple[int, str]:
    """Run ``xpro-mesh <argv>`` in-process with only the xdp commands
    registered (as the real entry point does: CliError -> one line, status 2).
    Returns (status, error line or "")."""
    import argparse

    from xpro_mesh.cli import xdp
    from xpro_mesh.cli.errors import CliError

    parser = argparse.ArgumentParser(prog="xpro-mesh")
    sub = parser.add_subparsers(dest="command")
    xdp.register(sub)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0), ""
    except CliError as exc:
        return exc.status, f"xpro-mesh: error: {exc}"


_VERDICT = {
    structs.XPRO_VERDICT_PASS: Verdict.PASS,
    structs.XPRO_VERDICT_DROP_PAIR: Verdict.DROP_PAIR,
    structs.XPRO_VERDICT_DROP_DEST: Verdict.DROP_DEST,
}


class KernelDriver:
    """Feeds packets to the loaded test program (-DXPRO_TEST_CLOCK) at given
    cluster times, as MemoryMaps.feed does to the twin."""

    def __init__(self, prog: object, maps: BpfMaps) -> None:
        from xpro_mesh.datapath.frames import ip_frame

        self._ip_frame = ip_frame
        self.filter_fd = prog.filter_fd  # type: ignore[attr-defined]
        self.clock_fd = maps.map_fd("clock")
        self._zero = ct.c_uint32(0)
        self._clock = structs.XproClock()
        self._frames: dict[tuple[str, str], bytes] = {}

    def feed(self, src: str, dst: str, now: int) -> Verdict:
        """The verdict; the XDP action must be enforce's (drop what is judged drop)."""
        verdict, action = self.feed_action(src, dst, now)
        dropped = verdict is Verdict.DROP_PAIR or verdict is Verdict.DROP_DEST
        assert action == (1 if dropped else 2)  # XDP_DROP / XDP_PASS
        return verdict

    def feed_action(self, src: str, dst: str, now: int) -> tuple[Verdict, int]:
        """The verdict and the XDP action the program returned (1 drop, 2 pass)."""
        self._clock.offset = 0
        self._clock.test_now = now
        self._clock.test_verdict = 99
        libbpf.map_update_elem(self.clock_fd, self._zero, self._clock)
        frame = self._frames.get((src, dst))
        if frame is None:
            frame = self._frames[(src, dst)] = self._ip_frame(src, dst)
        run = libbpf.prog_test_run(self.filter_fd, frame)
        libbpf.map_lookup_elem(self.clock_fd, self._zero, self._clock)
        return _VERDICT[self._clock.test_verdict], int(run.retval)
