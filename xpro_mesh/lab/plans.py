"""Scenario plans: pure functions ``(lab, duration) -> ScenarioPlan`` saying
which process sends what from where, when, and with which thresholds
(STYLE: compute what to do apart from doing it; :mod:`xpro_mesh.lab.runner`
carries a plan out).

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

from collections.abc import Callable
from dataclasses import dataclass, replace

from xpro_mesh.lab.topology import LabPlan

__all__ = [
    "MODES",
    "SCENARIOS",
    "Fault",
    "Flow",
    "Phase",
    "ScenarioError",
    "ScenarioPlan",
    "ScenarioSpec",
    "Thresholds",
    "capacity",
    "parse_modes",
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
    agent_profile: str = "local"  # the agents' named timers (`--profile`)
    pairs_max: int = 65536  # the XDP pair map's size on every proxy

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
        doc: dict[str, object] = {
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
        return doc

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
