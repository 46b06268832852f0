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

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

from xpro_mesh.core.params import DEFAULTS, NS_PER_S, Params
from xpro_mesh.lab.topology import LabPlan
from xpro_mesh.units import format_duration

__all__ = [
    "LAB_WINDOWS",
    "MODES",
    "SCENARIOS",
    "Fault",
    "Flow",
    "GoodClient",
    "Phase",
    "ScenarioError",
    "ScenarioPlan",
    "ScenarioSpec",
    "SpoofedBlock",
    "botnet",
    "capacity",
    "lab_thresholds",
    "overload",
    "parse_modes",
    "spoofed",
]

MODES: dict[str, str] = {
    "none": "no filter: the damage baseline",
    "local": "the XDP filter on every proxy, each alone (X-Pro without sharing)",
    "master": "the paper: agents sync every interval through a central Redis (M_DB)",
    "gossip": "this project: agents share counts by gossip (policy fair-share)",
    "gossip-paper": "gossip with the paper's literal destination rule (policy paper)",
}
AGENT_SYNC = {"master": "master", "gossip": "gossip", "gossip-paper": "gossip"}
POLICY = {
    "local": "fair-share",
    "master": "fair-share",
    "gossip": "fair-share",
    "gossip-paper": "paper",
}

GOOD_RATE = 2.0  # requests/s of one good client (a device polling its service)
BOT_RATE = 20.0  # packets/s of one bot in `distributed`: 10x a good client, below T_F1
T_F1 = 50  # packets/s per (client, destination): above any bot of `distributed`
CAPACITY_SHARE = 0.4  # T_F2 as a share of the distributed botnet's total rate (see module doc)
HEAVY_RATE = 200.0  # the heavy hitter: 4x T_F1
CROWD_RATE = 10.0  # a flash crowd's clients: together 1.25x T_F2
GOSSIP_INTERVAL = "100ms"  # the agents' round (the `local` profile's)


class ScenarioError(Exception):
    """A scenario cannot run; the message is one line for the operator."""


LAB_WINDOWS = replace(
    DEFAULTS, t_t1=3 * NS_PER_S, t_t2=NS_PER_S // 2, t_t3=NS_PER_S, t_t4=2 * NS_PER_S
)
"""The core's thresholds with the lab's short windows (see the module doc);
each scenario sets T_F1 and T_F2 (:func:`lab_thresholds`)."""


def lab_thresholds(
    t_f1: int, t_f2: int, t_t1: int | None = None, admit_rate: int | None = None
) -> Params:
    """A scenario's thresholds: the lab's windows (T_T1 ``t_t1`` ns when
    given), its T_F1 and T_F2, and the admission budget (``admit_rate`` per
    proxy when given, else a fortieth of T_F2)."""
    # The admission budget is per proxy and per destination: the default
    # (100/s) is a tenth of the default T_F2, but the lab's T_F2 is 0.4 of
    # its botnet, so 3 proxies' budgets would admit over a third of T_F2 of
    # the flood's young pairs. A fortieth of T_F2 each keeps what the
    # budgets let through under 3 % of the attack. admit_k 2: the lab's
    # windows are short (T_T4 2 s, divided by r), so a 1 pps bot's window
    # holds 1-4 packets and with the default 4 it turns young again after
    # every division and spends the budget (measured: 9-16 % delivered).
    admit = max(1, t_f2 // 40) if admit_rate is None else admit_rate
    t = replace(LAB_WINDOWS, t_f1=t_f1, t_f2=t_f2, admit_rate=admit, admit_k=2)
    return t if t_t1 is None else replace(t, t_t1=t_t1)


def thresholds_record(t: Params) -> dict[str, object]:
    """The thresholds as a plan records them (durations as written)."""
    return {
        "t_f1": t.t_f1,
        "t_f2": t.t_f2,
        "t_t1": format_duration(t.t_t1),
        "t_t2": format_duration(t.t_t2),
        "t_t3": format_duration(t.t_t3),
        "t_t4": format_duration(t.t_t4),
        "r": t.r,
    }


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
    network's failover, done at once); ``up`` undoes all three. On the
    target ``gossip`` (the proxies' service side, where the agents talk):
    ``partition`` drops, with nftables inside each proxy's namespace, every
    packet between proxies of different ``groups`` (the data path to the
    victim and Redis untouched), ``heal`` removes it; ``netem`` puts tc
    netem (:data:`NETEM`) on every packet from one proxy to another,
    ``clear`` removes it."""

    at: float  # seconds after the epoch
    action: (
        str  # kill | restart (agent, redis) | down | up (proxy) | partition | heal | netem | clear
    )
    target: str  # "agent:<i>" | "redis" | "proxy:<i>" | "gossip"
    via: int | None = None  # "down": the proxy its clients and bots move to
    groups: tuple[tuple[int, ...], ...] = ()  # "partition": the sides, by proxy index
    # "down": whose routes the network moves to ``via``; ("bot",) when the
    # good clients fail over on their own (xpro_mesh.client)
    moves: tuple[str, ...] = ("good", "bot")

    def describe(self) -> str:
        kind, _, index = self.target.partition(":")
        if kind == "gossip":
            sides = " | ".join(",".join(str(i) for i in g) for g in self.groups)
            what = {
                "partition": f"the gossip path split {sides}",
                "heal": "the gossip path healed",
                "netem": f"netem on the gossip path ({NETEM})",
                "clear": "netem off the gossip path",
            }.get(self.action, self.action)
            return f"{self.at:g} s: {what}"
        if kind == "redis":
            what = "Redis (M_DB)"
        elif kind == "agent":
            what = f"the agent of proxy {index}"
        else:
            what = f"proxy {index}"
            if self.via is not None and "good" in self.moves:
                what += f" (its clients and bots move to proxy {self.via})"
            elif self.via is not None:
                what += f" (its bots move to proxy {self.via}; its clients fail over on their own)"
        return f"{self.at:g} s: {self.action} {what}"


@dataclass(frozen=True, slots=True)
class Phase:
    """A stretch of the attack reported on its own (before, during and
    after the faults of a chaos run)."""

    label: str
    start: float
    stop: float


@dataclass(frozen=True, slots=True)
class SpoofedBlock:
    """One proxy's spoofed bot sources (scenario ``botnet``): ``count``
    addresses counted up from ``first`` inside ``cidr``, each sending
    ``rate`` packets/s, generated by ``trafgen`` from namespace ``ns`` as
    frames addressed to proxy ``proxy``. ``block`` is the number the
    reports know the block by (the address's second octet)."""

    proxy: int
    ns: str
    cidr: str
    first: str
    count: int
    rate: float
    start: float
    stop: float
    # Scenario ``spoofed``: every frame's source drawn at random from
    # ``cidr`` (a /8, so nearly every source is new), ``count`` * ``rate``
    # the block's packets/s (0: the sender's full rate); the block is known
    # by the address's first octet.
    forged: bool = False

    @property
    def block(self) -> int:
        return int(self.cidr.split(".")[0 if self.forged else 1])

    @property
    def pps(self) -> float:
        """What trafgen is asked to send: every address once per 1/rate s."""
        return self.count * self.rate

    def last(self) -> str:
        """The last address (``first`` + ``count`` - 1)."""
        return _address(_number(self.first) + self.count - 1)

    def lanes(self, most: int) -> tuple[SpoofedBlock, ...]:
        """The block cut into up to ``most`` contiguous runs of sources, run
        i starting i/n s later: trafgen's ``--rate`` sends a second's
        packets in one burst, so n staggered senders spread a block's
        bursts n times finer, each source still at its rate."""
        n = max(1, min(most, self.count))
        runs = []
        for i in range(n):
            lo, hi = self.count * i // n, self.count * (i + 1) // n
            offset = round(i / n, 4)
            runs.append(
                replace(
                    self,
                    first=_address(_number(self.first) + lo),
                    count=hi - lo,
                    start=self.start + offset,
                    stop=self.stop + offset,
                )
            )
        return tuple(runs)


def _number(addr: str) -> int:
    a, b, c, d = (int(x) for x in addr.split("."))
    return (a << 24) | (b << 16) | (c << 8) | d


def _address(n: int) -> str:
    return ".".join(str((n >> s) & 0xFF) for s in (24, 16, 8, 0))


@dataclass(frozen=True, slots=True)
class GoodClient:
    """The good clients on :class:`xpro_mesh.client.ProxyClient` instead of
    their home proxy's route (dispersion): each request through the proxy
    its client picks, failing over on its own. With ``pin`` all hold a
    fixed list (that proxy weight 1) until ``follow_at`` s, then follow
    ``GET /v1/proxies``; with ``follow`` False never (the run without
    dispersion, its figures cut at the same time)."""

    pin: int | None = None
    follow_at: float | None = None
    follow: bool = True
    refresh_s: float = 2.0
    timeout_s: float = 0.5  # per attempt; then the next proxy of the client's order

    def record(self) -> dict[str, object]:
        return {
            "pin": self.pin,
            "follow_at_s": self.follow_at,
            "follow": self.follow,
            "refresh_s": self.refresh_s,
            "timeout_s": self.timeout_s,
        }


@dataclass(frozen=True, slots=True)
class ScenarioPlan:
    name: str
    summary: str
    duration: float
    attack_start: float | None
    attack_stop: float | None
    thresholds: Params
    flows: tuple[Flow, ...]
    notes: str = ""
    faults: tuple[Fault, ...] = ()
    phases: tuple[Phase, ...] = ()
    agent_profile: str = "local"  # the agents' named timers (`--profile`)
    pairs_max: int = 65536  # the XDP pair map's size on every proxy
    spoofed: tuple[SpoofedBlock, ...] = ()  # trafgen's sources (scenario botnet)
    client: GoodClient | None = None  # good clients on xpro_mesh.client (dispersion)
    agent_toml: str = ""  # more of the agents' TOML (overload: [dispersion])
    compare: bool = False  # each mode run twice: clients pinned, then following

    def variants(self, mode: str) -> list[tuple[str, ScenarioPlan]]:
        """The runs of one mode: (result key, plan). With ``compare`` first
        the clients left where they were pinned (key ``mode``), then the
        same plan following the weights (``mode+dispersion``)."""
        if not self.compare or self.client is None:
            return [(mode, self)]
        pinned = replace(self, client=replace(self.client, follow=False))
        return [(mode, pinned), (f"{mode}+dispersion", self)]

    def params(self) -> dict[str, object]:
        """What the JSON report records as the scenario's parameters."""
        groups: dict[str, dict[str, object]] = {}
        for f in self.flows:
            g = groups.setdefault(
                f.label,
                {
                    "role": f.role,
                    "addresses": 0,
                    "rate_per_address": f.rate,
                    "start_s": f.start,
                    "stop_s": f.stop,
                    "proxies": [],
                },
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
            "thresholds": thresholds_record(self.thresholds),
            "gossip_interval": gossip_interval(self.agent_profile),
            "groups": groups,
            "notes": self.notes,
            "faults": [
                {"at_s": f.at, "action": f.action, "target": f.target, "via": f.via}
                | ({"groups": [list(g) for g in f.groups]} if f.groups else {})
                for f in self.faults
            ],
            "phases": [
                {"label": p.label, "start_s": p.start, "stop_s": p.stop} for p in self.phases
            ],
        }
        if self.spoofed:
            doc["spoofed"] = self._spoofed_params()
        if self.client is not None:
            doc["client"] = self.client.record()
        if self.agent_toml:
            doc["agent_toml"] = self.agent_toml
        return doc

    def _spoofed_params(self) -> dict[str, object]:
        if self.spoofed[0].forged:  # random sources: a rate, no source count
            return {
                "forged": True,
                "offered_pps": round(sum(b.pps for b in self.spoofed), 3) or "full rate",
                "pairs_max": self.pairs_max,
                "blocks": [
                    {
                        "proxy": b.proxy,
                        "block": b.block,
                        "cidr": b.cidr,
                        "offered_pps": b.pps or "full rate",
                        "sender_ns": b.ns,
                        "start_s": b.start,
                        "stop_s": b.stop,
                    }
                    for b in self.spoofed
                ],
            }
        return {
            "sources": sum(b.count for b in self.spoofed),
            "rate_per_source": self.spoofed[0].rate,
            "offered_pps": round(sum(b.pps for b in self.spoofed), 3),
            "agent_profile": self.agent_profile,
            "pairs_max": self.pairs_max,
            "blocks": [
                {
                    "proxy": b.proxy,
                    "block": b.block,
                    "cidr": b.cidr,
                    "first": b.first,
                    "last": b.last(),
                    "sources": b.count,
                    "offered_pps": b.pps,
                    "sender_ns": b.ns,
                    "start_s": b.start,
                    "stop_s": b.stop,
                }
                for b in self.spoofed
            ],
        }


@dataclass(frozen=True, slots=True)
class ScenarioSpec:
    name: str
    summary: str
    default_duration: float
    build: Callable[..., ScenarioPlan]  # (lab, duration, **options)
    options: tuple[str, ...] = ()  # the keyword options ``build`` takes
    default_modes: str = "none,local,gossip"  # what `--modes` is when not given


# --- the scenarios (pure) --------------------------------------------------------


def _timeline(duration: float) -> tuple[float, float]:
    """Attack from a fifth of the run to a tenth before its end: a calm start
    to see the baseline and a tail to see recovery."""
    return round(duration * 0.2, 1), round(duration * 0.9, 1)


def _flows(
    lab: LabPlan,
    source: str,
    role: str,
    label: str,
    rate: float,
    start: float,
    stop: float,
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
        thresholds=lab_thresholds(T_F1, t_f2),
        flows=tuple(
            _flows(lab, "good", "good", "regular", GOOD_RATE, 0.0, duration)
            + _flows(lab, "bot", role, label, rate, a0, a1, limit=limit)
        ),
        notes=notes,
    )


def distributed(lab: LabPlan, duration: float) -> ScenarioPlan:
    return _regulars_and(
        lab,
        duration,
        name="distributed",
        summary="hundreds of slow bots spread over every proxy (the paper's case)",
        t_f2=capacity(lab),
        role="bots",
        label="bots",
        rate=BOT_RATE,
        notes=(
            f"each bot sends {BOT_RATE:g} pps (< T_F1), a good client {GOOD_RATE:g} req/s; "
            f"T_F2 = {CAPACITY_SHARE:g} x the botnet's rate: above one proxy's share, "
            "below the mesh's"
        ),
    )


def low_and_slow(lab: LabPlan, duration: float) -> ScenarioPlan:
    return _regulars_and(
        lab,
        duration,
        name="low-and-slow",
        summary="bots no faster than good clients: rates cannot tell them apart",
        t_f2=max(1, round(CAPACITY_SHARE * len(lab.bot_addrs()) * GOOD_RATE)),
        role="bots",
        label="bots",
        rate=GOOD_RATE,
        notes=(
            f"bots send {GOOD_RATE:g} pps like the good clients; the victim's capacity is "
            f"sized as in distributed ({CAPACITY_SHARE:g} x this botnet's rate), so the mesh "
            "sees an overload whose every client is at the same rate"
        ),
    )


def heavy_hitter(lab: LabPlan, duration: float) -> ScenarioPlan:
    return _regulars_and(
        lab,
        duration,
        name="heavy-hitter",
        summary="one source above T_F1 (the pair rule, local to its proxy)",
        t_f2=capacity(lab),
        role="bots",
        label="heavy",
        rate=HEAVY_RATE,
        limit=1,
        notes=f"one address at {HEAVY_RATE:g} pps = {HEAVY_RATE / T_F1:g} x T_F1",
    )


def flash_crowd(lab: LabPlan, duration: float) -> ScenarioPlan:
    a0, a1 = _timeline(duration)
    return _regulars_and(
        lab,
        duration,
        name="flash-crowd",
        summary="many legitimate clients at once: what the rules do to innocent peaks",
        t_f2=capacity(lab),
        role="good",
        label="crowd",
        rate=CROWD_RATE,
        attack=False,
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


def chaos(lab: LabPlan, duration: float, proxies: int | None = None) -> ScenarioPlan:
    """``distributed``'s traffic, and crashes in the middle of the attack:
    on a lab of 5 or more proxies (or ``--proxies 5``) :func:`chaos_five`,
    else the 3-proxy run below.
    First the agent of one proxy is SIGKILLed (its XDP filter stays
    attached and keeps the view last written into it) and later started
    again under the same node id: a node lost and back, in every mode with
    agents. Then the paper's Redis is SIGKILLed for good: the master's
    single point of failure, which the mesh does not have (in the gossip
    modes that last phase is the control: nothing fails)."""
    p = len(lab.proxies) if proxies is None else proxies
    if proxies is not None and not 5 <= proxies <= len(lab.proxies):
        raise ScenarioError(
            f"--proxies: chaos runs on 5 proxies or more (the lab has {len(lab.proxies)}; "
            f"`lab up --proxies 5`), got {proxies}"
        )
    if p >= 5:
        return chaos_five(lab, duration)
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


NETEM = "loss 20% delay 50ms 20ms duplicate 5%"  # issue 13's lossy, slow gossip path
# Where each of chaos_five's faults falls, as a share of the attack (the
# phases between them are each 8-12 % of it: at the CI's 60 s, 3.4-5 s,
# enough for T_T1-scale bursts to show and pass within the phase).
CHAOS_FIVE_AT = {
    "down": 0.08,
    "up": 0.2,
    "kill": 0.32,
    "restart": 0.42,
    "partition": 0.52,
    "heal": 0.64,
    "netem": 0.74,
    "clear": 0.88,
}


def chaos_five(lab: LabPlan, duration: float) -> ScenarioPlan:
    """Issue 13's chaos on 5 proxies, each fault its own phase while the
    ``distributed`` attack runs: two of five whole proxies die at once
    (SIGKILL, links down; their clients and bots move to live neighbours)
    and come back; one agent alone is SIGKILLed (its filter keeps the last
    view) and restarted; the gossip path splits 2 | 3 and heals; netem makes
    it lossy and slow; last, netem off, Redis is SIGKILLed (master mode's
    single point of failure; in gossip the control phase: nothing broken)."""
    if len(lab.proxies) < 5:
        raise ScenarioError(
            f"chaos on 5 proxies needs a lab of 5 (`lab up --proxies 5`), "
            f"this one has {len(lab.proxies)}"
        )
    base, at = _with_faults(lab, duration, "chaos")
    idx = [p.index for p in lab.proxies]
    dead = (idx[1], idx[3])
    via = {idx[1]: idx[0], idx[3]: idx[4]}
    agent = idx[2]
    left, right = tuple(idx[:2]), tuple(idx[2:])
    t = {k: at(v) for k, v in CHAOS_FIVE_AT.items()}
    faults = (
        *(Fault(t["down"], "down", f"proxy:{d}", via=via[d]) for d in dead),
        *(Fault(t["up"], "up", f"proxy:{d}") for d in dead),
        Fault(t["kill"], "kill", f"agent:{agent}"),
        Fault(t["restart"], "restart", f"agent:{agent}"),
        Fault(t["partition"], "partition", "gossip", groups=(left, right)),
        Fault(t["heal"], "heal", "gossip"),
        Fault(t["netem"], "netem", "gossip"),
        Fault(t["clear"], "clear", "gossip"),
        Fault(t["clear"], "kill", "redis"),
    )
    sides = f"{','.join(map(str, left))} | {','.join(map(str, right))}"
    return replace(
        base,
        name="chaos",
        summary="the distributed attack on 5 proxies; two proxies die and come back, an "
        "agent crashes and restarts, the gossip path splits and heals, then turns lossy; "
        "last the master dies",
        notes=(
            f"{base.notes}; faults: "
            + "; ".join(f.describe() for f in faults)
            + f" (netem: {NETEM}, on proxy-to-proxy packets only)"
        ),
        faults=faults,
        phases=(
            Phase("before", at(0.0), t["down"]),
            Phase(f"proxies {dead[0]} and {dead[1]} dead", t["down"], t["up"]),
            Phase(f"proxies {dead[0]} and {dead[1]} back", t["up"], t["kill"]),
            Phase(f"agent of proxy {agent} down", t["kill"], t["restart"]),
            Phase(f"agent of proxy {agent} back", t["restart"], t["partition"]),
            Phase(f"partition {sides}", t["partition"], t["heal"]),
            Phase("healed", t["heal"], t["netem"]),
            Phase("lossy gossip path", t["netem"], t["clear"]),
            Phase("Redis down", t["clear"], at(1.0)),
        ),
    )


def failover(lab: LabPlan, duration: float, client: bool = False) -> ScenarioPlan:
    """``distributed``'s traffic, and in the middle of the attack a whole
    proxy dies: its agent SIGKILLed, its links down, and its clients and
    bots moved to the next proxy, as the network's failover would (the lab
    does it at once); later it comes back (links up, routes back, the agent
    restarted under the same node id). The proxy taking over meets the
    moved bots as new pairs: the question is whether the mesh keeps the
    attack cut while its traffic moves.

    With ``client`` the good clients pick their proxies with
    :mod:`xpro_mesh.client` (following ``GET /v1/proxies``) and nothing
    moves their routes: each one whose proxy dies times out and goes to the
    next of its own order; the report gives each one's time to its first
    answer elsewhere against ``ClientConfig.failover_bound_s``. The bots
    still move with the network."""
    base, at = _with_faults(lab, duration, "failover")
    if client and not lab.clients_can_choose():
        raise ScenarioError(
            "--client needs every good client to have a source behind every proxy: "
            "`lab up` with at most 98 --clients and 2 or more proxies"
        )
    down, up = at(0.3), at(0.65)
    dead = lab.proxies[len(lab.proxies) // 2].index
    via = lab.proxies[(len(lab.proxies) // 2 + 1) % len(lab.proxies)].index
    moves = ("bot",) if client else ("good", "bot")
    who = "its bots are routed through" if client else "its clients and bots are routed through"
    plan = replace(
        base,
        name="failover",
        summary="the distributed attack; mid-attack a whole proxy dies and its clients move on",
        notes=(
            f"{base.notes}; at {down:g} s proxy {dead} dies (agent SIGKILLed, links down) and "
            f"{who} proxy {via}; at {up:g} s it is back"
            + ("; the good clients fail over on their own (xpro_mesh.client)" if client else "")
        ),
        faults=(
            Fault(down, "down", f"proxy:{dead}", via=via, moves=moves),
            Fault(up, "up", f"proxy:{dead}"),
        ),
        phases=(
            Phase("before", at(0.0), down),
            Phase(f"proxy {dead} dead, its traffic via proxy {via}", down, up),
            Phase(f"proxy {dead} back", up, at(1.0)),
        ),
    )
    return replace(plan, client=GoodClient(refresh_s=1.0)) if client else plan


OVERLOAD_CLIENT_RATE = 5.0  # requests/s of one good client in `overload`
# All the good load as a multiple of one proxy's capacity: proxy 0 alone at
# W = 1.0 is over T_W (0.8); spread over 3 proxies the mean is 0.33, so
# the granularity of 96 clients by rendezvous (max/mean ~1.2) stays under
# DeDoS's 40 %, where nothing moves. At 1.2 (the mean at 40 %) the fullest
# proxy after the move read 0.47: "hot" again, and the rules moved weight
# every min_change (3 changes per node after the move, measured).
OVERLOAD_FACTOR = 1.0
OVERLOAD_MIN_CHANGE = "5s"  # above the clients' time to follow: refresh 2 s + window 0.5 s
# The lab's proxies share one host, so their loop lag is the host's, not a
# proxy's, and moving clients cannot relieve it: under the local profile's
# 100 ms, 60 ms of host lag made a proxy at 0.36 of its packets look hot
# (0.59) and moved weight off it; under 500 ms a 280 ms stall still did
# (0.56 at 0.33). A budget of 10 s leaves W the packets in this lab.
OVERLOAD_LAG_BUDGET = "10s"


def overload(lab: LabPlan, duration: float) -> ScenarioPlan:
    """Legitimate load only, all of it on proxy 0 (every good client's list
    pinned there) at :data:`OVERLOAD_FACTOR` × one proxy's capacity, so its
    occupancy W runs over T_W; from 30 % of the run the clients follow
    ``GET /v1/proxies`` (the run ``+dispersion``) or stay (the run
    without). No bots; T_F2 far above the good load (no fair-share drop
    can blur the figures). The agents' ``dispersion.capacity`` is set so
    that the whole good load is :data:`OVERLOAD_FACTOR` capacities: spread
    evenly, each proxy sits at that over P."""
    if len(lab.proxies) < 2:
        raise ScenarioError("scenario overload needs at least 2 proxies (`lab up --proxies 3`)")
    if not lab.clients_can_choose():
        raise ScenarioError(
            "scenario overload needs every good client to have a source behind every proxy: "
            "`lab up` with between 2 and 98 --clients"
        )
    n = len(lab.good_addrs())
    total = n * OVERLOAD_CLIENT_RATE
    cap = max(1, round(total / OVERLOAD_FACTOR))
    follow_at = round(0.3 * duration, 1)
    agent_toml = (
        f'[dispersion]\ncapacity = {cap}\nmin_change = "{OVERLOAD_MIN_CHANGE}"\n'
        f'lag_budget = "{OVERLOAD_LAG_BUDGET}"\n'
    )
    return ScenarioPlan(
        name="overload",
        summary="good load concentrated on one proxy over T_W; with and without dispersion",
        duration=duration,
        attack_start=None,
        attack_stop=None,
        thresholds=lab_thresholds(T_F1, max(1, round(10 * total))),
        flows=tuple(_flows(lab, "good", "good", "regular", OVERLOAD_CLIENT_RATE, 0.0, duration)),
        notes=(
            f"{n} good clients at {OVERLOAD_CLIENT_RATE:g} req/s ({total:g} req/s in all = "
            f"{OVERLOAD_FACTOR:g} x dispersion.capacity {cap}/s), all pinned on proxy 0 "
            f"until {follow_at:g} s; then following GET /v1/proxies (run +dispersion) or "
            "left there; T_F2 = 10 x the good load"
        ),
        client=GoodClient(pin=lab.proxies[0].index, follow_at=follow_at, refresh_s=2.0),
        agent_toml=agent_toml,
        compare=True,
    )


def gossip_interval(profile: str) -> str:
    """The agents' round under ``profile``: the lab's own on ``local``
    (written into their config), else the profile's."""
    if profile == "local":
        return GOSSIP_INTERVAL
    from xpro_mesh.agent.config import defaults

    return f"{defaults(profile).gossip.interval_ns // 1_000_000}ms"


BOTNET_BOTS = 2100  # the smallest botnet
BOTNET_RATE = 1.0  # packets/s of one spoofed source (a slow bot)
BOTNET_BLOCK_BITS = 14  # a /14 per proxy: 262 142 sources each
BOTNET_MAX_PROXIES = 32  # 10.128.0.0/14 ... 10.252.0.0/14
# A good client's rate as a share of a bot's: one request per 3 s, past T_T1
# (each request a new window) and inside the expiry horizon T_T1 + T_T4 =
# 3.5 s, so its slot (and the kernel's known flag) lives from one request to
# the next; at 4 s the agent retired it between requests and some requests
# met the budget young (97 % good in one of three test runs).
BOTNET_GOOD_SHARE = 1 / 3
BOTNET_IDLE = 1.5  # T_T1 in bot intervals: above a bot's gap, below a good client's


def botnet_t_f2(total_pps: float) -> int:
    """T_F2 at :data:`CAPACITY_SHARE` of the botnet's rate, as in every
    scenario: above
    what one of P >= 3 proxies sees (1/P), below what the mesh sees (the sum
    of its clients' rates), and a fair share T_F2/n(D) between a good
    client's rate and a bot's. A good client here opens a new window with
    every request (its gap is above T_T1), so it is a *known* pair in a
    young window, judged over its window plus the idle gap before it: its
    own rate, a third of a bot's (:data:`BOTNET_GOOD_SHARE`), so the share
    (0.4 of a bot's rate) is 1.2x a good client's. Measured with half the
    botnet's rate instead (a share 1.5x a good client polling every 3 s):
    the mesh took 2.2 s to cut 60 000 sources instead of about 1 s, as it
    reads a botnet's rate low in its first seconds."""
    return max(1, round(total_pps * CAPACITY_SHARE))


def _botnet_blocks(
    lab: LabPlan, bots: int, proxies: int, rate: float, start: float, stop: float
) -> tuple[SpoofedBlock, ...]:
    """``bots`` sources spread evenly over the first ``proxies`` proxies,
    proxy i's from 10.(128+4i).0.1 in 10.(128+4i).0.0/14, sent from the
    proxy's bot namespace (or, without one, its clients' namespace)."""
    blocks = []
    for i, proxy in enumerate(lab.proxies[:proxies]):
        count = bots // proxies + (1 if i < bots % proxies else 0)
        senders = [s for s in lab.senders if s.proxy == proxy.index]
        ns = next((s.ns for s in senders if s.role == "bot"), senders[0].ns if senders else "")
        if not ns:
            raise ScenarioError(
                f"scenario botnet needs a client or bot namespace behind "
                f"proxy {proxy.index} (`lab up` with --bots)"
            )
        base = 128 + 4 * i
        blocks.append(
            SpoofedBlock(
                proxy.index,
                ns,
                f"10.{base}.0.0/{BOTNET_BLOCK_BITS}",
                f"10.{base}.0.1",
                count,
                rate,
                start,
                stop,
            )
        )
    return tuple(blocks)


def _pairs_max(per_proxy: int) -> int:
    """The pair map holds every pair of a proxy twice over (an LRU hash
    evicts live pairs when full), at least the lab's usual 65 536."""
    size = 65536
    while size < 2 * per_proxy:
        size *= 2
    return size


def botnet(
    lab: LabPlan,
    duration: float,
    bots: int = BOTNET_BOTS,
    rate: float = BOTNET_RATE,
    proxies: int | None = None,
) -> ScenarioPlan:
    """Spoofed sources from ``trafgen``, a block of them behind each proxy,
    each at ``rate``; the good clients as in every scenario, slower (see
    the notes). The victim counts the spoofed arrivals per block with an
    nftables counter."""
    p = len(lab.proxies) if proxies is None else proxies
    _check_botnet(lab, bots, rate, p)
    good_rate = min(GOOD_RATE, BOTNET_GOOD_SHARE * rate)
    a0, a1 = _timeline(duration)
    # The attack begins once every good client has polled (clients the
    # service knows): a client first seen in the flood's first second meets
    # an admission budget the bots' first packets have emptied, and loses
    # its first requests until the bots are established (measured: 93.9 %
    # good in a 15 s run whose attack began at 3 s, clients polling every 4 s).
    a0 = max(a0, round(math.ceil(1 / good_rate) + 1.0, 1))
    if a0 >= a1:
        raise ScenarioError(
            f"--duration: at least {math.ceil((a0 + 2) / 0.9)} s for this botnet "
            f"(its good clients poll every {1 / good_rate:g} s before the attack), got {duration:g}"
        )
    blocks = _botnet_blocks(lab, bots, p, rate, a0, a1)
    t_f2 = botnet_t_f2(bots * rate)
    good = max(1, len(lab.good_addrs()))
    share = t_f2 / (bots + good)
    return ScenarioPlan(
        name="botnet",
        summary=f"{bots} spoofed sources from trafgen at {rate:g} pps each, over {p} proxies",
        duration=duration,
        attack_start=a0,
        attack_stop=a1,
        thresholds=lab_thresholds(
            max(T_F1, math.ceil(5 * rate)),
            t_f2,
            t_t1=round(1000 * BOTNET_IDLE / rate) * 10**6,
            # The budgets of the p proxies admit at most 3 % of the attack
            # together (young bots spend them only in their first second).
            admit_rate=max(1, math.floor(0.03 * bots * rate / p)),
        ),
        flows=tuple(_flows(lab, "good", "good", "regular", good_rate, 0.0, duration)),
        notes=(
            f"each source sends {rate:g} pps (< T_F1); T_F2 = {CAPACITY_SHARE:g} x "
            f"the botnet's {bots * rate:g} pps (one proxy sees 1/{p}); a good client sends "
            f"{good_rate:.2f} req/s, and T_T1 = {BOTNET_IDLE:g} bot intervals lies between a "
            "bot's gap and a good client's: each good request opens a new window of a known "
            f"pair, judged at {good_rate:.2f} pps (one packet over the idle gap before it), "
            f"while every bot's window runs on at {rate:g} pps; the fair share T_F2/n(D) = "
            f"{share:.2f} pps lies between"
        ),
        agent_profile="lan",
        pairs_max=_pairs_max(max(b.count for b in blocks) + good),
        spoofed=blocks,
    )


def _check_botnet(lab: LabPlan, bots: int, rate: float, proxies: int) -> None:
    _need(lab, bots=0)
    if not 3 <= proxies <= min(len(lab.proxies), BOTNET_MAX_PROXIES):
        raise ScenarioError(
            f"--proxies: between 3 and {min(len(lab.proxies), 32)} "
            f"(the lab has {len(lab.proxies)}), got {proxies}"
        )
    most = proxies * ((1 << (32 - BOTNET_BLOCK_BITS)) - 2)
    if not proxies <= bots <= most:
        raise ScenarioError(f"--bots: between {proxies} and {most}, got {bots}")
    if not 0 < rate <= 1000:
        raise ScenarioError(f"--rate-per-bot: above 0 and at most 1000 pps, got {rate:g}")


SPOOFED_PPS = 20_000  # the forged flood's default rate, over all its proxies
SPOOFED_MAX_PPS = 1_000_000
FORGED_FIRST_OCTET = 11  # proxy i's forged sources: random in (11 + i).0.0.0/8


def spoofed(
    lab: LabPlan, duration: float, flood_pps: float = SPOOFED_PPS, proxies: int | None = None
) -> ScenarioPlan:
    """Issue 11's forged-source flood: from the bot namespace behind each of
    ``proxies`` proxies, trafgen sends UDP at the victim whose every source
    is drawn at random from that proxy's /8 (11.0.0.0/8, 12.0.0.0/8, ...:
    public space, no martian the proxies' kernels would drop, so what the
    victim misses is the filter's doing), ``flood_pps`` in all (0: each
    sender at its full rate), while the good clients talk as in every
    scenario. A forged source sends one packet, or a few: it never has a
    rate, so only the destination rule can stop it; under ``fair-share``
    such young pairs share D's admission budget once D is over T_F2, under
    ``paper`` everything to D is dropped then (the good clients with it).
    The phases split the flood at T_T3 after its start: the issue's bound
    (>= 95 % of the flood dropped) is for the part after."""
    p = len(lab.proxies) if proxies is None else proxies
    _need(lab, bots=0)
    if not 1 <= p <= min(len(lab.proxies), 127 - FORGED_FIRST_OCTET):
        raise ScenarioError(
            f"--proxies: between 1 and {len(lab.proxies)} (the lab's proxies), got {p}"
        )
    if not 0 <= flood_pps <= SPOOFED_MAX_PPS:
        raise ScenarioError(
            f"--flood-pps: 0 (full rate) or up to {SPOOFED_MAX_PPS}, got {flood_pps:g}"
        )
    a0, a1 = _timeline(duration)
    t = lab_thresholds(T_F1, capacity(lab))
    t3 = round(a0 + t.t_t3 / NS_PER_S, 3)
    blocks = []
    for i, proxy in enumerate(lab.proxies[:p]):
        senders = [s for s in lab.senders if s.proxy == proxy.index]
        ns = next((s.ns for s in senders if s.role == "bot"), senders[0].ns if senders else "")
        if not ns:
            raise ScenarioError(
                f"scenario spoofed needs a client or bot namespace behind proxy {proxy.index}"
            )
        octet = FORGED_FIRST_OCTET + i
        share = round(flood_pps / p) if flood_pps else 0
        blocks.append(
            SpoofedBlock(
                proxy.index,
                ns,
                f"{octet}.0.0.0/8",
                f"{octet}.0.0.1",
                share,
                1.0 if share else 0.0,
                a0,
                a1,
                forged=True,
            )
        )
    rate = f"{flood_pps:g} pps in all" if flood_pps else "each sender at its full rate"
    return ScenarioPlan(
        name="spoofed",
        summary=f"a forged-source flood ({rate}, random sources) over {p} proxies",
        duration=duration,
        attack_start=a0,
        attack_stop=a1,
        thresholds=t,
        flows=tuple(_flows(lab, "good", "good", "regular", GOOD_RATE, 0.0, duration)),
        notes=(
            f"trafgen behind each proxy sends UDP to the victim from random sources in its "
            f"own /8 ({rate}); a good client sends {GOOD_RATE:g} req/s; T_F2 = "
            f"{t.t_f2} pps, each proxy's admission budget for young pairs {t.admit_rate}/s "
            f"(k = {t.admit_k}); flood phases split at T_T3 after its start"
        ),
        phases=(
            Phase("before the flood", 0.0, a0),
            Phase("flood, first T_T3", a0, t3),
            Phase("flood after T_T3", t3, a1),
            Phase("after the flood", a1, duration),
        ),
        spoofed=tuple(blocks),
    )


SCENARIOS: dict[str, ScenarioSpec] = {
    s.name: s
    for s in (
        ScenarioSpec(
            "distributed",
            "hundreds of slow bots spread over every proxy (the paper's case)",
            30.0,
            distributed,
        ),
        ScenarioSpec("low-and-slow", "bots no faster than good clients", 30.0, low_and_slow),
        ScenarioSpec("heavy-hitter", "one source above T_F1", 20.0, heavy_hitter),
        ScenarioSpec(
            "flash-crowd", "many legitimate clients at once (false drops)", 30.0, flash_crowd
        ),
        ScenarioSpec(
            "failover",
            "distributed; mid-attack a whole proxy dies and its "
            "clients move to the next one, then it comes back",
            40.0,
            failover,
            options=("client",),
        ),
        ScenarioSpec(
            "overload",
            "good load concentrated on one proxy over T_W, then with and without "
            "dispersion (xpro_mesh.client)",
            40.0,
            overload,
            default_modes="gossip",
        ),
        ScenarioSpec(
            "chaos",
            "distributed; mid-attack a proxy's agent crashes and comes back, then the master "
            "dies (on 5 proxies: two proxies die, a partition, a lossy gossip path too)",
            50.0,
            chaos,
            options=("proxies",),
        ),
        ScenarioSpec(
            "botnet",
            "spoofed sources from trafgen, a large block behind each proxy "
            "(--bots, --rate-per-bot, --proxies)",
            30.0,
            botnet,
            options=("bots", "rate", "proxies"),
        ),
        ScenarioSpec(
            "spoofed",
            "a forged-source flood from trafgen (random sources) at the victim beside the "
            "good clients, per policy (--flood-pps, --proxies)",
            20.0,
            spoofed,
            options=("flood_pps", "proxies"),
            default_modes="none,gossip,gossip-paper",
        ),
    )
}


def parse_modes(text: str) -> tuple[str, ...]:
    modes = tuple(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
    if not modes:
        raise ScenarioError("--modes: name at least one mode")
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise ScenarioError(f"--modes: unknown mode {unknown[0]!r}; choose from {', '.join(MODES)}")
    return modes
