"""Scenarios: the same traffic through the lab once per mode, measured at the
victim and at the clients.

Two halves (STYLE: compute what to do apart from doing it): the scenario
builders are pure functions ``(lab, duration) -> ScenarioPlan`` saying which
process sends what from where, when, and with which thresholds; :func:`run`
carries a plan out once per mode — fresh filter state for each (every XDP
program detached, and attached anew where the mode filters), every process
it starts stopped again in a ``finally``, also on Ctrl-C.

Thresholds. The lab's victim has a capacity, ``T_F2``; a scenario's botnet
is sized against it the way the paper's case needs (DESIGN.md, "What the
system is"): ``T_F2`` is :data:`CAPACITY_SHARE` of the botnet's total rate
(the ``distributed`` botnet's, for every scenario of one lab), so it sits
above what any one proxy sees (1/P of the botnet, P ≥ 2) and below what the
mesh sees. ``T_F1`` sits above a bot's rate (each bot alone is innocent).
With n(D) the clients of the victim, the fair share ``T_F2 / n(D)`` falls
between a good client's rate and a bot's. Windows are short (``T_T4``
a few seconds, ``r`` = 2) so a window that began before the attack does not
dilute its rate for long. Nothing here looks at which address is a bot:
the filter sees only rates.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from xpro_mesh.lab import metrics
from xpro_mesh.lab.topology import NETNS_DIR, REDIS_NS, VICTIM_NS, LabPlan, Proxy

__all__ = [
    "MODES",
    "SCENARIOS",
    "Fault",
    "Flow",
    "ModeResult",
    "Phase",
    "ScenarioError",
    "ScenarioPlan",
    "ScenarioResult",
    "ScenarioSpec",
    "Thresholds",
    "parse_modes",
    "run",
]

MODES: dict[str, str] = {
    "none": "no filter: the damage baseline",
    "local": "the XDP filter on every proxy, each alone (X-Pro without sharing)",
    "master": "the paper: agents sync every interval through a central Redis (M_DB)",
    "gossip": "this project: agents share counts by gossip (policy fair-share)",
    "gossip-paper": "gossip with the paper's literal destination rule (policy paper)",
}
AGENT_SYNC = {"master": "master", "gossip": "gossip", "gossip-paper": "gossip"}
POLICY = {"local": "fair-share", "master": "fair-share", "gossip": "fair-share",
          "gossip-paper": "paper"}

GOOD_RATE = 2.0  # requests/s of one good client (a device polling its service)
BOT_RATE = 20.0  # packets/s of one bot in `distributed`: 10x a good client, below T_F1
T_F1 = 50  # packets/s per (client, destination): above any bot of `distributed`
CAPACITY_SHARE = 0.4  # T_F2 as a share of the distributed botnet's total rate (see module doc)
HEAVY_RATE = 200.0  # the heavy hitter: 4x T_F1
CROWD_RATE = 10.0  # a flash crowd's clients: together 1.25x T_F2
GOSSIP_INTERVAL = "100ms"  # the agents' round (the `local` profile's)
VICTIM_PORT = 9000
GOSSIP_PORT = 7946
API_PORT = 7947
REDIS_PORT = 6379
START_SLACK_S = 0.5  # from "everyone is ready" to the epoch
READY_TIMEOUT_S = 60.0  # traffic processes open their sockets within this
AGENT_SETTLE_S = 2.0  # agents join the mesh before traffic starts
STOP_GRACE_S = 5.0


class ScenarioError(Exception):
    """A scenario cannot run; the message is one line for the operator."""


@dataclass(frozen=True, slots=True)
class Thresholds:
    """The filter's thresholds for one scenario (the paper's names)."""

    t_f1: int
    t_f2: int
    t_t1: str = "3s"  # idle gap that restarts a pair's window
    t_t2: str = "500ms"  # shortest pair window judged
    t_t3: str = "1s"  # shortest destination window judged
    t_t4: str = "2s"  # window length past which the agents divide it by r
    r: int = 2

    def toml(self, policy: str) -> str:
        """The ``[thresholds]`` body (also a valid flat ``xdp attach`` config)."""
        return "\n".join(
            [
                f't_t1 = "{self.t_t1}"',
                f't_t2 = "{self.t_t2}"',
                f't_t3 = "{self.t_t3}"',
                f't_t4 = "{self.t_t4}"',
                f"t_f1 = {self.t_f1}",
                f"t_f2 = {self.t_f2}",
                f"r = {self.r}",
                f'policy = "{policy}"',
            ]
        )

    def as_dict(self) -> dict[str, object]:
        return {"t_f1": self.t_f1, "t_f2": self.t_f2, "t_t1": self.t_t1, "t_t2": self.t_t2,
                "t_t3": self.t_t3, "t_t4": self.t_t4, "r": self.r}


@dataclass(frozen=True, slots=True)
class Flow:
    """One traffic process: a role, from one namespace's addresses."""

    role: str  # "good" | "bots"
    label: str  # group name in the report ("regular", "crowd", "bots", ...)
    ns: str
    proxy: int
    addrs: tuple[str, ...]
    rate: float  # per address, packets (requests) per second
    start: float  # seconds after the epoch
    stop: float


@dataclass(frozen=True, slots=True)
class Fault:
    """Something the scenario breaks, or mends, at a time: ``kill`` is
    SIGKILL (a crash: no leave message, no flush), ``restart`` starts the
    killed process again as it was started (an agent under the same node
    id). Targets: ``agent:<proxy index>`` and ``redis`` (the paper's M_DB);
    a fault whose target a mode does not run (no agents in ``local``, no
    Redis in ``gossip``) does nothing in that mode. ``down`` on
    ``proxy:<i>`` is the whole proxy dying: its agent SIGKILLed, its links
    down, and its clients' and bots' traffic moved to proxy ``via`` (the
    network's failover, done at once); ``up`` undoes all three."""

    at: float  # seconds after the epoch
    action: str  # "kill" | "restart" (agent, redis) | "down" | "up" (proxy)
    target: str  # "agent:<i>" | "redis" | "proxy:<i>"
    via: int | None = None  # "down": the proxy its clients and bots move to

    def describe(self) -> str:
        kind, _, index = self.target.partition(":")
        if kind == "redis":
            what = "Redis (M_DB)"
        elif kind == "agent":
            what = f"the agent of proxy {index}"
        else:
            what = f"proxy {index}"
            if self.via is not None:
                what += f" (its clients and bots move to proxy {self.via})"
        return f"{self.at:g} s: {self.action} {what}"


@dataclass(frozen=True, slots=True)
class Phase:
    """A stretch of the attack reported on its own (before, during and
    after the faults of a chaos run)."""

    label: str
    start: float
    stop: float


@dataclass(frozen=True, slots=True)
class ScenarioPlan:
    name: str
    summary: str
    duration: float
    attack_start: float | None
    attack_stop: float | None
    thresholds: Thresholds
    flows: tuple[Flow, ...]
    notes: str = ""
    faults: tuple[Fault, ...] = ()
    phases: tuple[Phase, ...] = ()

    def params(self) -> dict[str, object]:
        """What the JSON report records as the scenario's parameters."""
        groups: dict[str, dict[str, object]] = {}
        for f in self.flows:
            g = groups.setdefault(
                f.label,
                {"role": f.role, "addresses": 0, "rate_per_address": f.rate,
                 "start_s": f.start, "stop_s": f.stop, "proxies": []},
            )
            g["addresses"] = int(str(g["addresses"])) + len(f.addrs)
            proxies = g["proxies"]
            assert isinstance(proxies, list)
            if f.proxy not in proxies:
                proxies.append(f.proxy)
        return {
            "duration_s": self.duration,
            "attack_start_s": self.attack_start,
            "attack_stop_s": self.attack_stop,
            "thresholds": self.thresholds.as_dict(),
            "gossip_interval": GOSSIP_INTERVAL,
            "groups": groups,
            "notes": self.notes,
            "faults": [{"at_s": f.at, "action": f.action, "target": f.target, "via": f.via}
                       for f in self.faults],
            "phases": [{"label": p.label, "start_s": p.start, "stop_s": p.stop}
                       for p in self.phases],
        }


@dataclass(frozen=True, slots=True)
class ScenarioSpec:
    name: str
    summary: str
    default_duration: float
    build: Callable[[LabPlan, float], ScenarioPlan]


# --- the scenarios (pure) --------------------------------------------------------


def _timeline(duration: float) -> tuple[float, float]:
    """Attack from a fifth of the run to a tenth before its end: a calm start
    to see the baseline and a tail to see recovery."""
    return round(duration * 0.2, 1), round(duration * 0.9, 1)


def _flows(
    lab: LabPlan, source: str, role: str, label: str, rate: float, start: float, stop: float,
    limit: int | None = None,
) -> list[Flow]:
    flows: list[Flow] = []
    left = limit
    for s in lab.senders:
        if s.role != source:
            continue
        addrs = s.addrs if left is None else s.addrs[:left]
        if not addrs:
            continue
        if left is not None:
            left -= len(addrs)
        flows.append(Flow(role, label, s.ns, s.proxy, tuple(addrs), rate, start, stop))
    return flows


def capacity(lab: LabPlan) -> int:
    """The victim's T_F2 in this lab: CAPACITY_SHARE of the distributed botnet."""
    return max(1, round(CAPACITY_SHARE * len(lab.bot_addrs()) * BOT_RATE))


def _need(lab: LabPlan, bots: int = 1, clients: int = 1) -> None:
    if len(lab.bot_addrs()) < bots or len(lab.good_addrs()) < clients:
        raise ScenarioError(
            f"this scenario needs at least {clients} good client and {bots} bot addresses; "
            "run `xpro-mesh lab up` with more --clients/--bots"
        )


def _regulars_and(
    lab: LabPlan,
    duration: float,
    *,
    name: str,
    summary: str,
    t_f2: int,
    role: str,
    label: str,
    rate: float,
    notes: str,
    limit: int | None = None,
    attack: bool = True,
) -> ScenarioPlan:
    """The shape every scenario shares: the good clients at GOOD_RATE for
    the whole run, and the bot addresses as one group (``role``, ``label``
    at ``rate``) over the scenario's timeline; ``attack`` False when that
    group is innocent (no attack figures)."""
    _need(lab)
    a0, a1 = _timeline(duration)
    return ScenarioPlan(
        name=name,
        summary=summary,
        duration=duration,
        attack_start=a0 if attack else None,
        attack_stop=a1 if attack else None,
        thresholds=Thresholds(t_f1=T_F1, t_f2=t_f2),
        flows=tuple(
            _flows(lab, "good", "good", "regular", GOOD_RATE, 0.0, duration)
            + _flows(lab, "bot", role, label, rate, a0, a1, limit=limit)
        ),
        notes=notes,
    )


def distributed(lab: LabPlan, duration: float) -> ScenarioPlan:
    return _regulars_and(
        lab, duration,
        name="distributed",
        summary="hundreds of slow bots spread over every proxy (the paper's case)",
        t_f2=capacity(lab), role="bots", label="bots", rate=BOT_RATE,
        notes=(
            f"each bot sends {BOT_RATE:g} pps (< T_F1), a good client {GOOD_RATE:g} req/s; "
            f"T_F2 = {CAPACITY_SHARE:g} x the botnet's rate: above one proxy's share, "
            "below the mesh's"
        ),
    )


def low_and_slow(lab: LabPlan, duration: float) -> ScenarioPlan:
    return _regulars_and(
        lab, duration,
        name="low-and-slow",
        summary="bots no faster than good clients: rates cannot tell them apart",
        t_f2=max(1, round(CAPACITY_SHARE * len(lab.bot_addrs()) * GOOD_RATE)),
        role="bots", label="bots", rate=GOOD_RATE,
        notes=(
            f"bots send {GOOD_RATE:g} pps like the good clients; the victim's capacity is "
            f"sized as in distributed ({CAPACITY_SHARE:g} x this botnet's rate), so the mesh "
            "sees an overload whose every client is at the same rate"
        ),
    )


def heavy_hitter(lab: LabPlan, duration: float) -> ScenarioPlan:
    return _regulars_and(
        lab, duration,
        name="heavy-hitter",
        summary="one source above T_F1 (the pair rule, local to its proxy)",
        t_f2=capacity(lab), role="bots", label="heavy", rate=HEAVY_RATE, limit=1,
        notes=f"one address at {HEAVY_RATE:g} pps = {HEAVY_RATE / T_F1:g} x T_F1",
    )


def flash_crowd(lab: LabPlan, duration: float) -> ScenarioPlan:
    a0, a1 = _timeline(duration)
    return _regulars_and(
        lab, duration,
        name="flash-crowd",
        summary="many legitimate clients at once: what the rules do to innocent peaks",
        t_f2=capacity(lab), role="good", label="crowd", rate=CROWD_RATE, attack=False,
        notes=(
            f"the bot addresses act as legitimate clients (request/response) at "
            f"{CROWD_RATE:g} req/s from {a0:g} s to {a1:g} s; every failed request of the "
            "crowd is a false drop"
        ),
    )


def _with_faults(
    lab: LabPlan, duration: float, name: str
) -> tuple[ScenarioPlan, Callable[[float], float]]:
    """``distributed``'s plan for a scenario that breaks things during its
    attack, and the time at a share of that attack."""
    if len(lab.proxies) < 2:
        raise ScenarioError(f"scenario {name} needs at least 2 proxies (`lab up --proxies 3`)")
    base = distributed(lab, duration)
    assert base.attack_start is not None and base.attack_stop is not None
    a0, a1 = base.attack_start, base.attack_stop
    return base, lambda share: round(a0 + share * (a1 - a0), 1)


def chaos(lab: LabPlan, duration: float) -> ScenarioPlan:
    """``distributed``'s traffic, and crashes in the middle of the attack.
    First the agent of one proxy is SIGKILLed (its XDP filter stays
    attached and keeps the view last written into it) and later started
    again under the same node id: a node lost and back, in every mode with
    agents. Then the paper's Redis is SIGKILLed for good: the master's
    single point of failure, which the mesh does not have (in the gossip
    modes that last phase is the control: nothing fails)."""
    base, at = _with_faults(lab, duration, "chaos")
    kill, restart, redis = at(0.2), at(0.45), at(0.7)
    victim = lab.proxies[len(lab.proxies) // 2].index
    return replace(
        base,
        name="chaos",
        summary="the distributed attack; mid-attack a proxy's agent crashes and comes back, "
        "then the master dies",
        notes=(
            f"{base.notes}; at {kill:g} s the agent of proxy {victim} is SIGKILLed (its filter "
            f"stays attached), at {restart:g} s it is started again under the same node id, "
            f"at {redis:g} s redis-server (mode master) is SIGKILLed for good"
        ),
        faults=(
            Fault(kill, "kill", f"agent:{victim}"),
            Fault(restart, "restart", f"agent:{victim}"),
            Fault(redis, "kill", "redis"),
        ),
        phases=(
            Phase("before the crash", at(0.0), kill),
            Phase(f"agent of proxy {victim} down", kill, restart),
            Phase("agent back", restart, redis),
            Phase("Redis down", redis, at(1.0)),
        ),
    )


def failover(lab: LabPlan, duration: float) -> ScenarioPlan:
    """``distributed``'s traffic, and in the middle of the attack a whole
    proxy dies: its agent SIGKILLed, its links down, and its clients and
    bots moved to the next proxy, as the network's failover would (the lab
    does it at once); later it comes back (links up, routes back, the agent
    restarted under the same node id). The proxy taking over meets the
    moved bots as new pairs: the question is whether the mesh keeps the
    attack cut while its traffic moves."""
    base, at = _with_faults(lab, duration, "failover")
    down, up = at(0.3), at(0.65)
    dead = lab.proxies[len(lab.proxies) // 2].index
    via = lab.proxies[(len(lab.proxies) // 2 + 1) % len(lab.proxies)].index
    return replace(
        base,
        name="failover",
        summary="the distributed attack; mid-attack a whole proxy dies and its clients move on",
        notes=(
            f"{base.notes}; at {down:g} s proxy {dead} dies (agent SIGKILLed, links down) and "
            f"its clients and bots are routed through proxy {via}; at {up:g} s it is back"
        ),
        faults=(
            Fault(down, "down", f"proxy:{dead}", via=via),
            Fault(up, "up", f"proxy:{dead}"),
        ),
        phases=(
            Phase("before", at(0.0), down),
            Phase(f"proxy {dead} dead, its traffic via proxy {via}", down, up),
            Phase(f"proxy {dead} back", up, at(1.0)),
        ),
    )


SCENARIOS: dict[str, ScenarioSpec] = {
    s.name: s
    for s in (
        ScenarioSpec("distributed", "hundreds of slow bots spread over every proxy "
                     "(the paper's case)", 30.0, distributed),
        ScenarioSpec("low-and-slow", "bots no faster than good clients", 30.0, low_and_slow),
        ScenarioSpec("heavy-hitter", "one source above T_F1", 20.0, heavy_hitter),
        ScenarioSpec("flash-crowd", "many legitimate clients at once (false drops)", 30.0,
                     flash_crowd),
        ScenarioSpec("failover", "distributed; mid-attack a whole proxy dies and its "
                     "clients move to the next one, then it comes back", 40.0, failover),
        ScenarioSpec("chaos", "distributed; mid-attack a proxy's agent crashes and comes "
                     "back, then the master dies", 50.0, chaos),
    )
}


def parse_modes(text: str) -> tuple[str, ...]:
    modes = tuple(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    if not modes:
        raise ScenarioError("--modes: name at least one mode")
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ScenarioError(
            f"--modes: unknown mode {unknown[0]!r}; choose from {', '.join(MODES)}"
        )
    return modes


# --- results ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModeResult:
    mode: str
    metrics: metrics.ModeMetrics
    proxies: dict[str, dict[str, int]]  # per proxy namespace: pass, drop_pair, drop_dest
    wall_s: float
    notes: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ScenarioResult:
    plan: ScenarioPlan
    lab: LabPlan
    modes: dict[str, ModeResult]
    wall_s: float
    workdir: str | None = None


# --- running --------------------------------------------------------------------


def _netns(ns: str) -> str:
    return f"--net={NETNS_DIR / ns}"


def _in_ns(ns: str, *argv: str) -> list[str]:
    return ["nsenter", _netns(ns), *argv]


def _cli(ns: str, *argv: str) -> list[str]:
    return _in_ns(ns, sys.executable, "-m", "xpro_mesh", *argv)


def _pin_root(lab: LabPlan, proxy: Proxy) -> str:
    return f"{lab.pin_root}/{proxy.ns}"


def agent_available() -> bool:
    """Whether this build has the agent command (``xpro-mesh agent``)."""
    import importlib.util

    return importlib.util.find_spec("xpro_mesh.cli.agent") is not None


@dataclass
class _Processes:
    """Every process a mode starts; one owner stops them all."""

    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    argv: dict[str, tuple[list[str], Path]] = field(default_factory=dict)
    killed: set[str] = field(default_factory=set)  # by a fault: not a death to report

    def start(self, name: str, argv: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
        # A restarted process's log follows its first life's.
        with open(log, "ab" if name in self.argv else "wb") as out:
            proc = subprocess.Popen(
                list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        self.procs.append((name, proc))
        self.argv[name] = (list(argv), log)
        return proc

    def kill(self, name: str) -> bool:
        """SIGKILL ``name`` (a crash); False when it is not running."""
        for n, p in self.procs:
            if n == name and p.poll() is None:
                p.kill()
                p.wait()
                self.killed.add(name)
                return True
        return False

    def restart(self, name: str) -> bool:
        """Start ``name`` again as it was first started; False if it never was
        or still runs."""
        if name not in self.argv or any(n == name and p.poll() is None for n, p in self.procs):
            return False
        argv, log = self.argv[name]
        self.procs = [(n, p) for n, p in self.procs if n != name]
        self.start(name, argv, log)
        self.killed.discard(name)
        return True

    def stop(self, names: Callable[[str], bool] = lambda _n: True) -> None:
        chosen = [(n, p) for n, p in self.procs if names(n)]
        for _, p in chosen:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for _, p in chosen:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=max(0.05, deadline - time.monotonic()))
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                p.wait()
        self.procs = [(n, p) for n, p in self.procs if (n, p) not in chosen]


def _run_all(commands: Sequence[Sequence[str]], what: str, timeout: float = 120) -> None:
    """Run commands in parallel; a failure is a ScenarioError with its output."""
    procs = [
        subprocess.Popen(list(c), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for c in commands
    ]
    failures: list[str] = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
            failures.append(f"timed out: {out.decode(errors='replace').strip()}")
            continue
        if p.returncode != 0:
            failures.append(out.decode(errors="replace").strip().splitlines()[-1:][0]
                            if out.strip() else f"exit {p.returncode}")
    if failures:
        raise ScenarioError(f"{what} failed: {failures[0]}")


def _detach_all(lab: LabPlan) -> None:
    with contextlib.suppress(ScenarioError):
        _run_all(
            [_cli(p.ns, "xdp", "detach", "--iface", "c0", "--pin-root", _pin_root(lab, p))
             for p in lab.proxies],
            "xdp detach",
        )


def _attach_all(lab: LabPlan, config: Path) -> None:
    _run_all(
        [_cli(p.ns, "xdp", "attach", "--iface", "c0", "--pin-root", _pin_root(lab, p),
              "--config", str(config)) for p in lab.proxies],
        "xdp attach",
    )


@contextlib.contextmanager
def _inside(ns: str) -> Iterator[None]:
    from pyroute2 import netns

    netns.pushns(ns)
    try:
        yield
    finally:
        netns.popns()


def _tcp_ready(ns: str, addr: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with _inside(ns):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.settimeout(0.5)
            sock.connect((addr, port))
            return True
        except OSError:
            time.sleep(0.1)
        finally:
            sock.close()
    return False


class _Stats:
    """Live counters of every proxy's filter, read from the pinned maps."""

    def __init__(self, lab: LabPlan) -> None:
        from xpro_mesh.datapath.bpf_maps import BpfMaps

        self.maps: dict[str, Any] = {}
        for p in lab.proxies:
            pin_dir = Path(_pin_root(lab, p)) / "c0"
            if (pin_dir / "stats").exists():
                with contextlib.suppress(Exception):
                    self.maps[p.ns] = BpfMaps.open(pin_dir)

    def read(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for ns, maps in self.maps.items():
            with contextlib.suppress(Exception):
                counters = maps.read_stats().as_dict()
                out[ns] = {
                    "pass": counters["pass"],
                    "drop_pair": counters["drop_pair"],
                    "drop_dest": counters["drop_dest"],
                    "pairs": maps.ring_status().pairs_in_use,
                }
        return out

    def close(self) -> None:
        for maps in self.maps.values():
            with contextlib.suppress(Exception):
                maps.close()
        self.maps.clear()


class Reporter:
    """What :func:`run` tells the operator while it works (rich, or nothing)."""

    def mode_started(self, mode: str, index: int, total: int, duration: float) -> None: ...
    def phase(self, text: str) -> None: ...
    def tick(self, elapsed: float, live: str) -> None: ...
    def mode_done(self, result: ModeResult) -> None: ...
    def close(self) -> None: ...


class RichReporter(Reporter):
    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = Console(stderr=True)
        if not self.console.is_terminal:
            self.console = Console(stderr=True, width=140)
        self.progress = Progress(
            TextColumn("[bold]{task.fields[mode]:<13}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        self.progress.start()
        self.task: Any = None
        self.total = 0

    def mode_started(self, mode: str, index: int, total: int, duration: float) -> None:
        self.total = round(duration)
        self.task = self.progress.add_task("setting up", total=self.total, mode=mode)

    def phase(self, text: str) -> None:
        if self.task is not None:
            self.progress.update(self.task, description=text)

    def tick(self, elapsed: float, live: str) -> None:
        if self.task is not None:
            self.progress.update(
                self.task, completed=min(self.total, int(elapsed)), description=live
            )

    def mode_done(self, result: ModeResult) -> None:
        m = result.metrics
        parts = []
        if m.attack_delivered_ratio is not None:
            parts.append(f"attack delivered {m.attack_delivered_ratio:.1%}")
            after = m.attack_delivered_ratio_after_mitigation
            if after is not None and m.time_to_mitigate_s is not None:
                parts.append(f"after mitigation {after:.1%} (at {m.time_to_mitigate_s:.1f} s)")
        if m.good_success_ratio is not None:
            parts.append(f"good success {m.good_success_ratio:.1%}")
        if self.task is not None:
            self.progress.update(
                self.task, completed=self.total, description="[green]done[/] " + ", ".join(parts)
            )
        self.task = None

    def close(self) -> None:
        self.progress.stop()


def _write_agent_config(path: Path, plan: ScenarioPlan, policy: str) -> None:
    path.write_text(
        "# written by `xpro-mesh lab scenario`\n[thresholds]\n"
        + plan.thresholds.toml(policy)
        + f'\n\n[gossip]\ninterval = "{GOSSIP_INTERVAL}"\n'
    )


def _agent_argv(lab: LabPlan, proxy: Proxy, mode: str, key: Path, config: Path) -> list[str]:
    peers = ",".join(
        f"{p.service_addr}:{GOSSIP_PORT}" for p in lab.proxies if p.index != proxy.index
    )
    argv = [
        "agent",
        "--node-id", f"p{proxy.index}",
        "--backend", "xdp",
        "--iface", "c0",
        "--pin-root", _pin_root(lab, proxy),
        "--bind", f"{proxy.service_addr}:{GOSSIP_PORT}",
        "--api", f"127.0.0.1:{API_PORT}",
        "--key-file", str(key),
        "--config", str(config),
        "--profile", "local",
        "--sync", AGENT_SYNC[mode],
    ]
    if peers:
        argv += ["--peers", peers]
    if AGENT_SYNC[mode] == "master":
        argv += ["--redis", f"{lab.redis_addr}:{REDIS_PORT}"]
    return _cli(proxy.ns, *argv)


def _last_line(path: Path) -> str:
    with contextlib.suppress(OSError):
        lines = path.read_text(errors="replace").strip().splitlines()
        if lines:
            return lines[-1][:300]
    return "(no output)"


def _agent_log(name: str, log: Path) -> tuple[int, list[str]]:
    """(overload warnings, notes) from an agent's JSON log lines: the
    warnings of Algorithm 2 line 15 are counted; any other warning or error
    becomes one note (a mode whose agents could not sync must not pass for a
    result)."""
    overloads, count, first = 0, 0, ""
    with contextlib.suppress(OSError):
        for line in log.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if not isinstance(entry, dict):
                continue
            if entry.get("event") == "overload_warning":
                overloads += 1
            elif entry.get("level") in ("warning", "error", "critical"):
                count += 1
                first = first or str(entry.get("msg", ""))[:160]
    notes = [f"{name}: {count} warnings/errors logged, first: {first}"] if count else []
    return overloads, notes


def _fault_process(target: str, lab: LabPlan) -> str:
    """The process name a fault's target means in :class:`_Processes` (a
    proxy's: its agent)."""
    if target == "redis":
        return "redis"
    index = int(target.partition(":")[2])
    return next(f"agent-{p.ns}" for p in lab.proxies if p.index == index)


def _inject(
    fault: Fault, lab: LabPlan, procs: _Processes, network: _Network | None = None
) -> str | None:
    """Carry ``fault`` out; what was done, or None where the mode does not
    run the target."""
    name = _fault_process(fault.target, lab)
    if fault.action == "kill":
        return f"SIGKILL {name}" if procs.kill(name) else None
    if fault.action == "restart":
        return f"restarted {name}" if procs.restart(name) else None
    if fault.action in ("down", "up") and network is not None:
        index = int(fault.target.partition(":")[2])
        if fault.action == "down":
            killed = procs.kill(name)
            network.down(index, fault.via if fault.via is not None else index)
            return f"proxy {index} down{' (SIGKILL ' + name + ')' if killed else ''}" + (
                f", its traffic through proxy {fault.via}" if fault.via is not None else ""
            )
        network.up(index)
        restarted = procs.restart(name)
        return f"proxy {index} up{' (restarted ' + name + ')' if restarted else ''}"
    raise ScenarioError(f"unknown fault action {fault.action!r}")


@dataclass
class _Network:
    """The lab's links and routes as faults change them; :meth:`restore`
    puts back whatever is still changed (the lab outlives the run)."""

    lab: LabPlan
    downed: set[int] = field(default_factory=set)

    def down(self, index: int, via: int) -> None:
        from xpro_mesh.lab import topology

        self.downed.add(index)
        topology.set_proxy_links(self.lab, index, up=False)
        topology.route_block_through(self.lab, index, via)

    def up(self, index: int) -> None:
        from xpro_mesh.lab import topology

        topology.set_proxy_links(self.lab, index, up=True)
        topology.route_block_through(self.lab, index, index)
        self.downed.discard(index)

    def restore(self) -> None:
        for index in sorted(self.downed):
            with contextlib.suppress(Exception):
                self.up(index)


def _run_mode(
    lab: LabPlan, plan: ScenarioPlan, mode: str, workdir: Path, reporter: Reporter
) -> ModeResult:
    started = time.monotonic()
    moddir = workdir / mode
    moddir.mkdir(parents=True, exist_ok=True)
    procs = _Processes()
    network = _Network(lab)
    stats: _Stats | None = None
    notes: list[str] = []
    try:
        reporter.phase("resetting filters")
        _detach_all(lab)
        if mode != "none":
            policy = POLICY[mode]
            xdp_cfg = moddir / "xdp.toml"
            xdp_cfg.write_text(
                plan.thresholds.toml(policy) + "\npairs_max = 65536\ndests_max = 4096\n"
            )
            reporter.phase("attaching XDP (bcc compiles)")
            _attach_all(lab, xdp_cfg)
        if mode in AGENT_SYNC:
            if mode == "master":
                reporter.phase("starting redis-server (M_DB)")
                redis = shutil.which("redis-server") or "/usr/bin/redis-server"
                procs.start(
                    "redis",
                    _in_ns(REDIS_NS, redis, "--bind", lab.redis_addr, "--port",
                           str(REDIS_PORT), "--save", "", "--appendonly", "no",
                           # reachable only inside the lab's service segment
                           "--protected-mode", "no"),
                    moddir / "redis.log",
                )
                if not _tcp_ready(lab.proxies[0].ns, lab.redis_addr, REDIS_PORT, 10):
                    raise ScenarioError(
                        f"redis-server did not come up: {_last_line(moddir / 'redis.log')}"
                    )
            reporter.phase("starting agents")
            key = moddir / "cluster.key"
            key.write_text(secrets.token_hex(32) + "\n")
            key.chmod(0o600)
            agent_cfg = moddir / "agent.toml"
            _write_agent_config(agent_cfg, plan, POLICY[mode])
            for p in lab.proxies:
                procs.start(f"agent-{p.ns}", _agent_argv(lab, p, mode, key, agent_cfg),
                            moddir / f"agent-{p.ns}.log")
            time.sleep(AGENT_SETTLE_S)
            for name, proc in procs.procs:
                if proc.poll() is not None:
                    raise ScenarioError(
                        f"{name} exited ({proc.returncode}): "
                        f"{_last_line(moddir / (name + '.log'))}"
                    )
        stats = _Stats(lab) if mode != "none" else None

        reporter.phase("starting traffic")
        py = [sys.executable, "-m", "xpro_mesh.lab.traffic"]
        target = f"{lab.victim_addr}:{VICTIM_PORT}"
        epoch_file = moddir / "epoch"
        timing = ["--epoch-file", str(epoch_file)]
        procs.start(
            "victim",
            _in_ns(VICTIM_NS, *py, "victim", "--port", str(VICTIM_PORT), *timing,
                   "--stop", repr(plan.duration + 1.0),
                   "--out", str(moddir / "victim.json"), "--ready", str(moddir / "victim.ready")),
            moddir / "victim.log",
        )
        outs: list[Path] = []
        for i, f in enumerate(plan.flows):
            out = moddir / f"{f.role}-{f.label}-{f.ns}-{i}.json"
            outs.append(out)
            argv = [*py, f.role, "--addrs", ",".join(f.addrs), "--target", target,
                    "--rate", repr(f.rate), *timing, "--start", repr(f.start),
                    "--stop", repr(f.stop), "--out", str(out),
                    "--ready", str(out.with_suffix(".ready"))]
            if f.role == "good":
                argv += ["--label", f.label]
            procs.start(f"traffic-{i}", _in_ns(f.ns, *argv), out.with_suffix(".log"))
        # Everyone starts together once everyone has its sockets open.
        readies = [moddir / "victim.ready", *(o.with_suffix(".ready") for o in outs)]
        give_up = time.monotonic() + READY_TIMEOUT_S
        while not all(r.exists() for r in readies):
            dead = [n for n, p in procs.procs if p.poll() is not None]
            if dead or time.monotonic() > give_up:
                what = f"{dead[0]} exited" if dead else "timed out"
                raise ScenarioError(f"traffic processes did not start ({what})")
            time.sleep(0.05)
        epoch = time.monotonic() + START_SLACK_S
        tmp = epoch_file.with_suffix(".tmp")
        tmp.write_text(repr(epoch))
        tmp.rename(epoch_file)
        reporter.phase("traffic")
        deadline = epoch + plan.duration + 8.0
        last = stats.read() if stats else {}
        last_t = time.monotonic()
        pending = sorted(plan.faults, key=lambda f: f.at)
        while True:
            running = [p for n, p in procs.procs
                       if (n.startswith("traffic") or n == "victim") and p.poll() is None]
            if not running or time.monotonic() > deadline:
                break
            wake = epoch + pending[0].at if pending else time.monotonic() + 0.5
            time.sleep(max(0.0, min(0.5, wake - time.monotonic())))
            while pending and time.monotonic() >= epoch + pending[0].at:
                fault = pending.pop(0)
                done = _inject(fault, lab, procs, network)
                if done:
                    notes.append(f"fault at {time.monotonic() - epoch:.1f} s: {done}")
            now = time.monotonic()
            live = ""
            if stats:
                cur = stats.read()
                dt = max(1e-3, now - last_t)
                passed = sum(c["pass"] - last.get(n, {}).get("pass", 0) for n, c in cur.items())
                dropped = sum(
                    c["drop_pair"] + c["drop_dest"]
                    - last.get(n, {}).get("drop_pair", 0) - last.get(n, {}).get("drop_dest", 0)
                    for n, c in cur.items()
                )
                live = f"filters: pass {passed / dt:6.0f}/s  drop {dropped / dt:6.0f}/s"
                last, last_t = cur, now
            reporter.tick(max(0.0, now - epoch), live or "traffic")
        for name, proc in procs.procs:
            if (name.startswith("traffic") or name == "victim") and proc.poll() is None:
                notes.append(f"{name} overran its time and was stopped")
        procs.stop(lambda n: n.startswith("traffic") or n == "victim")
        for name, proc in procs.procs:
            if name.startswith("agent") and proc.poll() is not None and name not in procs.killed:
                notes.append(f"{name} died during the run (exit {proc.returncode})")
        proxy_stats = stats.read() if stats else {}
    finally:
        if stats is not None:
            stats.close()
        reporter.phase("stopping")
        procs.stop()
        network.restore()
        _detach_all(lab)

    for p in lab.proxies:
        log = moddir / f"agent-{p.ns}.log"
        if mode in AGENT_SYNC and log.exists():
            overloads, complaints = _agent_log(f"agent-{p.ns}", log)
            notes.extend(complaints)
            proxy_stats.setdefault(p.ns, {})["overload_warnings"] = overloads
    victim_path = moddir / "victim.json"
    if not victim_path.exists():
        raise ScenarioError(f"the victim wrote no results ({_last_line(moddir / 'victim.log')})")
    victim = metrics.VictimArrivals.from_json(json.loads(victim_path.read_text()))
    bots: list[metrics.BotStream] = []
    goods: list[metrics.GoodRequests] = []
    for f, out in zip(plan.flows, outs, strict=True):
        if not out.exists():
            raise ScenarioError(f"{f.role} in {f.ns} wrote no results "
                                f"({_last_line(out.with_suffix('.log'))})")
        doc = json.loads(out.read_text())
        if f.role == "bots":
            bots.append(metrics.BotStream.from_json(doc))
        else:
            goods.append(metrics.GoodRequests.from_json(doc))
    m = metrics.mode_metrics(
        victim, bots, goods, plan.duration,
        phases=[(ph.label, ph.start, ph.stop) for ph in plan.phases],
    )
    return ModeResult(
        mode=mode,
        metrics=m,
        proxies=proxy_stats,
        wall_s=round(time.monotonic() - started, 1),
        notes=tuple(notes),
    )


def run(
    lab: LabPlan,
    name: str,
    modes: Sequence[str],
    *,
    duration: float | None = None,
    workdir: Path | None = None,
    progress: bool = True,
) -> ScenarioResult:
    """Run scenario ``name`` on ``lab`` once per mode, in order."""
    if os.geteuid() != 0:
        raise ScenarioError("lab scenarios need root (network namespaces, XDP)")
    spec = SCENARIOS.get(name)
    if spec is None:
        raise ScenarioError(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")
    d = spec.default_duration if duration is None else duration
    if d < 5:
        raise ScenarioError(f"--duration: at least 5 s, got {d:g}")
    plan = spec.build(lab, d)
    if any(m in AGENT_SYNC for m in modes) and not agent_available():
        raise ScenarioError(
            "modes master/gossip/gossip-paper need the agent (`xpro-mesh agent`), "
            "which this build does not have yet"
        )
    if "master" in modes and not (shutil.which("redis-server") or
                                  Path("/usr/bin/redis-server").exists()):
        raise ScenarioError("mode master needs redis-server (apt install redis-server)")
    from xpro_mesh.lab import topology

    leftovers = topology.stop_processes([p.ns for p in lab.proxies]
                                        + [VICTIM_NS, REDIS_NS]
                                        + [s.ns for s in lab.senders])
    keep = workdir is not None
    base = workdir if workdir is not None else Path(tempfile.mkdtemp(prefix="xpro-lab-"))
    base.mkdir(parents=True, exist_ok=True)
    (base / "plan.json").write_text(json.dumps({"scenario": name, **plan.params()}, indent=2))
    reporter: Reporter = RichReporter() if progress else Reporter()
    if leftovers:
        print(f"stopped {leftovers} processes left in the lab by an earlier run", file=sys.stderr)
    started = time.monotonic()
    results: dict[str, ModeResult] = {}
    try:
        for i, mode in enumerate(modes):
            reporter.mode_started(mode, i, len(modes), d)
            result = _run_mode(lab, plan, mode, base, reporter)
            results[mode] = result
            reporter.mode_done(result)
    finally:
        reporter.close()
        if not keep:
            shutil.rmtree(base, ignore_errors=True)
    return ScenarioResult(
        plan=plan,
        lab=lab,
        modes=results,
        wall_s=round(time.monotonic() - started, 1),
        workdir=str(base) if keep else None,
    )
