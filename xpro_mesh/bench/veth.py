"""``xpro-mesh bench spoofed-veth``: the filter's rate against XDP_DROP-all
at the same offered load, over a real veth (issue 11; root, trafgen).

Two namespaces of its own (``xbv-s<pid>``, ``xbv-r<pid>``; not the lab's)
joined by a veth; ``trafgen`` in the sender writes 64-byte UDP frames with
a random 32-bit source (``drnd()``) to one destination D; the receiver's
veth runs, in native XDP, either ``bench_drop`` (``return XDP_DROP``) or
the filter (fair-share, D over T_F2 with an empty admission budget: the
flood regime after T_T3, preset through the maps as ``bench spoofed``
does). The receiver's rate is its veth's ``rx_queue_*_xdp_packets`` over a
window (after a warm-up), the offered load the sender's ``tx_packets``.

Cases: 0 and 1 established pairs at D, each *paced* (``trafgen --rate``,
which sends each second's frames in bursts) and at the sender's *full*
rate (veth back-pressures the sender: what the receiver's program takes
is the rate). Every (case, load) is measured ``--runs`` times with both
programs back to back; the ratio is filter / drop-all of the medians.
Target: >= 0.95x in every case (printed met or missed).

    xpro-mesh bench spoofed-veth [--runs 3] [--seconds 2] [--paced-pps 100000] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from xpro_mesh.bench.datapath import V2_BENCH_PROGRAMS
from xpro_mesh.bench.spoofed import _over
from xpro_mesh.bench.stats import Check, Spread, checks_json, dumps, print_checks, ratio
from xpro_mesh.datapath import libbpf, loader
from xpro_mesh.datapath.config import MapSizes, Policy, XdpConfig

TARGET = 0.95
ESTABLISHED = (0, 1)
LEGIT = "10.76.0.1"
WARMUP_S = 0.3


def trafgen_config(dst_mac: str, src_mac: str, dst: str, src: str | None) -> str:
    """One 64-byte UDP frame to ``dst``; the source ``src``, or a random
    32-bit address per frame when None (trafgen recomputes the checksums)."""
    saddr = src if src is not None else "drnd()"
    return (
        "{\n"
        f"  eth(da={dst_mac}, sa={src_mac}, type=0x0800),\n"
        f"  ipv4(saddr={saddr}, daddr={dst}, ttl=64, df),\n"
        "  udp(sport=4000, dport=9),\n"
        "  fill(0x00, 18)\n"
        "}\n"
    )


def xdp_packets(ethtool_s: str) -> int:
    """The sum of a veth's ``rx_queue_N_xdp_packets`` in ``ethtool -S`` output."""
    return sum(int(m) for m in re.findall(r"rx_queue_\d+_xdp_packets:\s*(\d+)", ethtool_s))


@dataclass(frozen=True, slots=True)
class Sample:
    offered_pps: float
    taken_pps: float


@dataclass(frozen=True, slots=True)
class Figure:
    established: int
    load: str  # "paced" or "full"
    drop_all: Spread
    filter: Spread
    offered_drop_all: Spread
    offered_filter: Spread

    @property
    def over_drop_all(self) -> float:
        """Full rate: the rates' ratio (the sender runs as fast as the
        receiver takes). Paced: the ratio of the delivered shares (taken
        over offered), as trafgen's bursts make each window's offered
        load differ."""
        if self.load == "full":
            return ratio(self.filter, self.drop_all)
        share_f = self.filter.median / max(1.0, self.offered_filter.median)
        share_d = self.drop_all.median / max(1.0, self.offered_drop_all.median)
        return share_f / max(1e-9, share_d)


class Veth:
    """The two namespaces and their veth (s0 -> r0); removed on close."""

    def __init__(self) -> None:
        tag = os.getpid()
        self.snd, self.rcv = f"xbv-s{tag}", f"xbv-r{tag}"
        self.dir = Path(tempfile.mkdtemp(prefix="xpro-bench-veth-"))
        self._ip("netns", "add", self.snd)
        self._ip("netns", "add", self.rcv)
        self._ip("-n", self.snd, "link", "add", "s0", "type", "veth", "peer", "name", "r0")
        self._ip("-n", self.snd, "link", "set", "r0", "netns", self.rcv)
        self._ip("-n", self.snd, "link", "set", "s0", "up")
        self._ip("-n", self.rcv, "link", "set", "r0", "up")
        self.src_mac, self.dst_mac = self._mac(self.snd, "s0"), self._mac(self.rcv, "r0")

    @staticmethod
    def _ip(*args: str) -> str:
        done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def _mac(self, ns: str, ifname: str) -> str:
        return str(json.loads(self._ip("-n", ns, "-j", "link", "show", ifname))[0]["address"])

    def attach(self, fd: int) -> None:
        """``fd`` on r0 in native mode (replacing what is there)."""
        from pyroute2 import netns as pyroute2_netns

        pyroute2_netns.pushns(self.rcv)
        try:
            libbpf.xdp_attach(socket.if_nametoindex("r0"), fd, libbpf.XDP_FLAGS_DRV_MODE)
        finally:
            pyroute2_netns.popns()

    def _counts(self) -> tuple[float, int, int]:
        t = time.monotonic()
        rx = subprocess.run(
            ["ip", "netns", "exec", self.rcv, "ethtool", "-S", "r0"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        link = json.loads(self._ip("-n", self.snd, "-s", "-j", "link", "show", "s0"))[0]
        return t, xdp_packets(rx), int(link["stats64"]["tx"]["packets"])

    def send(self, conf: str, *, pps: int | None, seconds: float, num: int = 0) -> Sample:
        """trafgen with ``conf`` for ``seconds`` (or ``num`` frames), the
        receiver's XDP rate and the offered rate over the window."""
        path = self.dir / "trafgen.cfg"
        path.write_text(conf)
        argv = ["ip", "netns", "exec", self.snd, "trafgen", "--dev", "s0", "--conf", str(path)]
        argv += ["--cpus", "1", "--no-sock-mem", "--notouch-irq"]
        if pps is not None:
            argv += ["--rate", f"{pps}pps"]
        if num:
            argv += ["--num", str(num)]
        log = self.dir / "trafgen.log"
        with log.open("wb") as err:
            proc = subprocess.Popen(  # its own group: trafgen forks a worker per CPU
                argv, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True
            )
        try:
            if num:
                proc.wait(timeout=30)
                return Sample(0.0, 0.0)
            time.sleep(WARMUP_S)
            t0, x0, s0 = self._counts()
            time.sleep(seconds)
            t1, x1, s1 = self._counts()
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        if proc.returncode not in (0, -signal.SIGINT, 130):
            why = log.read_text(errors="replace").strip()[-300:]
            raise RuntimeError(f"trafgen exited {proc.returncode}: {why}")
        dt = t1 - t0
        return Sample((s1 - s0) / dt, (x1 - x0) / dt)

    def close(self) -> None:
        for ns in (self.snd, self.rcv):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
        shutil.rmtree(self.dir, ignore_errors=True)


@contextlib.contextmanager
def veth() -> Iterator[Veth]:
    v = Veth()
    try:
        yield v
    finally:
        v.close()


def figures(runs: int, seconds: float, paced_pps: int) -> list[Figure]:
    prog = loader.load(
        loader.BuildOptions(
            sizes=MapSizes(pairs_max=1 << 20, dests_max=1 << 8), defines=("XPRO_BENCH",)
        ),
        log_tag="xpro-bench-veth",
        extra_programs=V2_BENCH_PROGRAMS,
    )
    out: list[Figure] = []
    try:
        with prog.maps() as maps, veth() as v:
            maps.sync_clock()
            maps.set_config(XdpConfig(t_f1=10**12, policy=Policy.FAIR_SHARE))
            drop_fd = prog.prog_fds["bench_drop"]
            for i, n in enumerate(ESTABLISHED):
                dst = f"10.77.{i}.2"
                v.attach(prog.filter_fd)
                # D's slot, and with n = 1 its one client's pair, from real packets.
                v.send(trafgen_config(v.dst_mac, v.src_mac, dst, LEGIT), pps=None, seconds=0, num=3)
                flood = trafgen_config(v.dst_mac, v.src_mac, dst, None)
                for load, pps in (("paced", paced_pps), ("full", None)):
                    got: dict[str, list[Sample]] = {"drop": [], "filter": []}
                    for _ in range(runs):
                        for name, fd in (("drop", drop_fd), ("filter", prog.filter_fd)):
                            if name == "filter":
                                maps.sync_clock()
                                _over(maps, dst, n)  # the flood regime, the budget empty
                            v.attach(fd)
                            got[name].append(v.send(flood, pps=pps, seconds=seconds))
                    out.append(
                        Figure(
                            n,
                            load,
                            Spread.of([s.taken_pps for s in got["drop"]]),
                            Spread.of([s.taken_pps for s in got["filter"]]),
                            Spread.of([s.offered_pps for s in got["drop"]]),
                            Spread.of([s.offered_pps for s in got["filter"]]),
                        )
                    )
    finally:
        prog.close()
    return out


def checks(figs: Sequence[Figure]) -> list[Check]:
    return [
        Check(
            f"filter / XDP_DROP-all, {f.established} established, {f.load}",
            f.over_drop_all,
            TARGET,
            "x",
            "at_least",
        )
        for f in figs
    ]


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3, help="runs of every program and case")
    parser.add_argument("--seconds", type=float, default=2.0, help="measured window per run")
    parser.add_argument("--paced-pps", type=int, default=100_000, help="the paced offered load")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = parser.parse_args(argv)
    loader.require_root("the bench")
    if shutil.which("trafgen") is None:
        print("bench spoofed-veth: trafgen (netsniff-ng) is not installed", file=sys.stderr)
        return 2
    figs = figures(args.runs, args.seconds, args.paced_pps)
    cs = checks(figs)
    if args.json:
        rows = [
            {
                "established": f.established,
                "load": f.load,
                "drop_all_pps": f.drop_all,
                "filter_pps": f.filter,
                "offered_drop_all_pps": f.offered_drop_all,
                "offered_filter_pps": f.offered_filter,
                "over_drop_all": f.over_drop_all,
            }
            for f in figs
        ]
        print(dumps({"veth": rows, **checks_json(cs)}))
        return 0
    print(f"pps over {args.seconds:g} s windows, {args.runs} runs, min/median/max")
    print(
        f"{'established':>11} {'load':6} {'offered (drop-all)':>26} {'drop-all':>26} "
        f"{'offered (filter)':>26} {'filter':>26} ratio"
    )
    for f in figs:
        print(
            f"{f.established:>11} {f.load:6} {f.offered_drop_all!s:>26} {f.drop_all!s:>26} "
            f"{f.offered_filter!s:>26} {f.filter!s:>26} {f.over_drop_all:5.3f}"
        )
    print_checks(cs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
