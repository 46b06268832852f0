"""Spoofed bot sources (scenario ``botnet``): ``trafgen`` sends them, the
victim's nftables counts what arrives, one counter per proxy's block.

Bots here are addresses, not processes: trafgen (netsniff-ng) writes raw
Ethernet frames on a sender namespace's link, addressed to its proxy's
client-side MAC, with the IPv4 source counted up through the block
(``dinc``), so at N sources and r pps each it sends N·r frames/s and every
source recurs every 1/r s. trafgen's ``--rate`` sends each second's frames
in one burst; a block is sent by :data:`LANES` trafgen processes, each a
run of its sources, started 1/(LANES·r) s apart, so the bursts come ten
times a second (``--gap`` paces evenly but tops out near 12 000 pps per
process here, below the rates this scenario needs). The frames carry the traffic module's attack tag
and go to the victim's UDP port; the proxy's XDP filter judges them like
any client's. At the victim an nftables chain at the earliest hook
(prerouting, raw priority) counts each block's arrivals and drops them, so
nothing answers a spoofed source and nothing leaves the lab.

Measured per 100 ms bin (the traffic module's): what each sender's link
transmitted (its veth's tx counter: trafgen is the only sender there in
this scenario) and what the victim's counter saw, both read by one sampler
at the same instant, so each window's delivered share compares like with
like.

The pure halves (:func:`trafgen_config`, :func:`nft_ruleset`) are apart
from the adapters that apply them.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xpro_mesh.lab import metrics
from xpro_mesh.lab.plans import ScenarioError, SpoofedBlock, _number
from xpro_mesh.lab.supervise import in_ns
from xpro_mesh.lab.topology import VICTIM_NS, LabPlan

__all__ = [
    "LANES",
    "Counters",
    "FilterFigures",
    "install",
    "nft_ruleset",
    "remove",
    "trafgen_config",
    "trafgen_reported",
    "write_configs",
]

TABLE = "xl_botnet"
ATTACK_TAG = 0x41  # b"A": the traffic module's attack tag
SOURCE_PORT = 40000
BIN_S = 0.1
SAMPLE_S = 0.1
LANES = 10  # trafgen processes per block (see SpoofedBlock.lanes)


def trafgen_config(block: SpoofedBlock, dst_mac: str, src_mac: str, victim: str, port: int) -> str:
    """One UDP frame whose source address runs through the block (``dinc``
    over the 32-bit field), or for a forged block is drawn at random from
    its whole cidr but the network and broadcast addresses (``drnd``);
    trafgen recomputes both checksums."""
    if block.forged:
        net = _number(block.cidr.split("/")[0])
        size = 1 << (32 - int(block.cidr.split("/")[1]))
        saddr = f"drnd({net + 1:#010x}, {net + size - 2:#010x})"
    else:
        first = _number(block.first)
        saddr = f"dinc({first:#010x}, {first + block.count - 1:#010x})"
    return (
        "{\n"
        f"  eth(da={dst_mac}, sa={src_mac}, type=0x0800),\n"
        f"  ipv4(saddr={saddr}, daddr={victim}, ttl=64, df),\n"
        f"  udp(sport={SOURCE_PORT}, dport={port}),\n"
        f"  {ATTACK_TAG:#04x}, fill(0x00, 16)\n"
        "}\n"
    )


def nft_ruleset(blocks: tuple[SpoofedBlock, ...]) -> str:
    """The victim's table: per block a named counter, counted and dropped
    at prerouting before anything else looks at the packet."""
    counters = "".join(f"  counter b{b.block} {{}}\n" for b in blocks)
    rules = "".join(f"    ip saddr {b.cidr} counter name b{b.block} drop\n" for b in blocks)
    return (
        f"table ip {TABLE} {{\n{counters}"
        "  chain pre {\n    type filter hook prerouting priority -300; policy accept;\n"
        f"{rules}  }}\n}}\n"
    )


def _mac(ns: str, ifname: str) -> str:
    from pyroute2 import NetNS

    with NetNS(ns) as n:
        link = n.get_links(n.link_lookup(ifname=ifname)[0])[0]
        return str(link.get_attr("IFLA_ADDRESS"))


def _run(argv: list[str], what: str, stdin: str | None = None) -> str:
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ScenarioError(f"{what} failed: {(done.stderr or done.stdout).strip()[:200]}")
    return done.stdout


def install(lab: LabPlan, blocks: tuple[SpoofedBlock, ...]) -> None:
    """The victim's counters (replacing any left over), and reverse-path
    filtering off on every proxy's client link: the spoofed blocks are no
    route of theirs, so a strict check would drop them before XDP's verdict
    is carried out."""
    remove()
    _run(in_ns(VICTIM_NS, "nft", "-f", "-"), "nft (victim counters)", nft_ruleset(blocks))
    from xpro_mesh.lab.topology import sysctl

    for p in lab.proxies:
        sysctl(p.ns, "net.ipv4.conf.c0.rp_filter", "0")


def remove() -> None:
    """Drop the victim's table if it is there (idempotent)."""
    with contextlib.suppress(Exception):
        subprocess.run(
            in_ns(VICTIM_NS, "nft", "delete", "table", "ip", TABLE),
            capture_output=True,
            check=False,
        )


def read_counters() -> dict[int, int]:
    """Packets counted so far per block at the victim."""
    out = _run(
        in_ns(VICTIM_NS, "nft", "-j", "list", "counters", "table", "ip", TABLE), "nft list counters"
    )
    counts: dict[int, int] = {}
    for item in json.loads(out).get("nftables", []):
        counter = item.get("counter")
        if counter and str(counter.get("name", "")).startswith("b"):
            counts[int(counter["name"][1:])] = int(counter.get("packets", 0))
    return counts


def sender_name(lane: SpoofedBlock) -> str:
    return f"trafgen-{lane.block}-{lane.first}"


def write_configs(
    blocks: tuple[SpoofedBlock, ...], lab: LabPlan, moddir: Path, port: int
) -> dict[str, list[str]]:
    """Each lane's trafgen config written, and its command line, by sender
    name (before the epoch: reading the MACs takes a namespace switch each,
    too slow to do at a lane's start)."""
    macs: dict[tuple[str, str], str] = {}

    def mac(ns: str, ifname: str) -> str:
        if (ns, ifname) not in macs:
            macs[ns, ifname] = _mac(ns, ifname)
        return macs[ns, ifname]

    argvs = {}
    for block in blocks:
        proxy = next(p for p in lab.proxies if p.index == block.proxy)
        for lane in block.lanes(LANES):
            name = sender_name(lane)
            config = moddir / f"{name}.cfg"
            config.write_text(
                trafgen_config(lane, mac(proxy.ns, "c0"), mac(lane.ns, "e0"), lab.victim_addr, port)
            )
            count = max(1, round(lane.pps * (lane.stop - lane.start)))
            # A forged block at 0 pps: the sender's full rate until stopped.
            pace = (
                ["--rate", f"{max(1, round(lane.pps))}pps", "--num", str(count)]
                if lane.pps > 0 or not lane.forged
                else []
            )
            argvs[name] = in_ns(
                lane.ns,
                "trafgen",
                "--dev",
                "e0",
                "--conf",
                str(config),
                *pace,
                "--cpus",
                "1",
                "--no-sock-mem",
                "--notouch-irq",
            )
    return argvs


def trafgen_reported(moddir: Path, block: SpoofedBlock) -> int | None:
    """The packets trafgen says its lanes of ``block`` sent (their exit
    summaries), if every lane wrote one."""
    total = 0
    for log in sorted(moddir.glob(f"trafgen-{block.block}-*.log")):
        match = re.search(r"(\d+) packets outgoing", log.read_text(errors="replace"))
        if match is None:
            return None
        total += int(match.group(1))
    return total


@dataclass
class Counters:
    """Samples, every :data:`SAMPLE_S` from the epoch until stopped, each
    sender link's tx counter and the victim's per-block counter, as bins."""

    lab: LabPlan
    blocks: tuple[SpoofedBlock, ...]
    epoch: float
    sent: dict[int, dict[int, int]] = field(default_factory=dict)
    delivered: dict[int, dict[int, int]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="spoofed-counters", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _tx(self, links: dict[int, tuple[Any, int]]) -> dict[int, int]:
        out = {}
        for block, (ipr, index) in links.items():
            stats = ipr.get_links(index)[0].get_attr("IFLA_STATS64")
            out[block] = int(stats["tx_packets"])
        return out

    def _loop(self) -> None:
        from pyroute2 import NetNS

        opened = {b.block: NetNS(b.ns) for b in self.blocks}
        try:
            links = {k: (n, n.link_lookup(ifname="e0")[0]) for k, n in opened.items()}
            self._sample(links)
        except Exception as exc:  # reported in the mode's notes, not lost
            self.errors.append(f"spoofed counters: {exc}")
        finally:
            for n in opened.values():
                with contextlib.suppress(Exception):
                    n.close()

    def _sample(self, links: dict[int, tuple[Any, int]]) -> None:
        base_tx, base_rx = self._tx(links), read_counters()
        last_tx, last_rx = dict(base_tx), dict(base_rx)
        while not self._stop.wait(max(0.0, SAMPLE_S - (time.monotonic() - self.epoch) % SAMPLE_S)):
            tx, rx = self._tx(links), read_counters()
            k = int((time.monotonic() - self.epoch - 1e-3) // BIN_S)
            for b in self.blocks:
                n = b.block
                self._add(self.sent, n, k, tx.get(n, 0) - last_tx.get(n, 0))
                self._add(self.delivered, n, k, rx.get(n, 0) - last_rx.get(n, 0))
            last_tx, last_rx = tx, rx

    @staticmethod
    def _add(series: dict[int, dict[int, int]], block: int, k: int, n: int) -> None:
        if n > 0:
            bins = series.setdefault(block, {})
            bins[k] = bins.get(k, 0) + n

    def bot_streams(self) -> list[metrics.BotStream]:
        return [
            metrics.BotStream(
                b.block, b.start, b.stop, metrics.BinSeries(dict(self.sent.get(b.block, {})))
            )
            for b in self.blocks
        ]

    def arrivals(self) -> dict[int, metrics.BinSeries]:
        return {
            b.block: metrics.BinSeries(dict(self.delivered.get(b.block, {}))) for b in self.blocks
        }


# The filters' counters a flood is judged by: its drops by reason, what the
# admission budget let through, and the pair map's pressure.
REASONS = ("drop_pair", "drop_dest", "drop_admit", "probation_drops", "admitted")
PRESSURE = ("new_pairs", "pair_full", "dest_full", "insert_races")


@dataclass
class FilterFigures:
    """Every proxy's filter during a spoofed run: the pair map's peak fill
    (sampled while the traffic runs: the agent expires idle pairs, so the
    end state understates it), and at the end the counters by reason (see
    :data:`REASONS`, :data:`PRESSURE`). ``stats`` is the runner's open
    :class:`~xpro_mesh.lab.supervise.FilterStats` (its ``maps``)."""

    maps: dict[str, Any]
    peak: dict[str, int] = field(default_factory=dict)
    pairs_max: dict[str, int] = field(default_factory=dict)
    final: dict[str, dict[str, int]] = field(default_factory=dict)

    def sample(self) -> None:
        for ns, maps in self.maps.items():
            with contextlib.suppress(Exception):
                ring = maps.ring_status()
                self.peak[ns] = max(self.peak.get(ns, 0), ring.pairs_in_use)
                self.pairs_max[ns] = ring.pairs_max

    def finish(self) -> None:
        self.sample()
        for ns, maps in self.maps.items():
            with contextlib.suppress(Exception):
                counters = maps.read_stats().as_dict()
                self.final[ns] = {k: int(counters[k]) for k in (*REASONS, *PRESSURE)}

    def as_json(self) -> dict[str, object]:
        total = {k: sum(c.get(k, 0) for c in self.final.values()) for k in (*REASONS, *PRESSURE)}
        return {
            "total": total,
            "pairs_peak": dict(self.peak),
            "pairs_max": dict(self.pairs_max),
            "pairs_peak_fill": {
                ns: round(self.peak[ns] / self.pairs_max[ns], 4)
                for ns in self.peak
                if self.pairs_max.get(ns)
            },
            "per_proxy": dict(self.final),
        }
