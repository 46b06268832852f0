"""Running a scenario: its plan carried out once per mode, in order.

Each mode starts from fresh filter state (every XDP program detached, and
attached anew where the mode filters), runs the agents the mode needs, the
victim and the traffic processes on one timeline (the epoch, written once
every process has its sockets open), injects the plan's faults on time,
and stops every process it started in a ``finally``, also on Ctrl-C. The
figures come from what the victim and the clients wrote
(:mod:`xpro_mesh.lab.metrics`), never from the filters' counters alone.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from xpro_mesh.core.params import Policy
from xpro_mesh.lab import agents, dispersion, metrics, spoofed
from xpro_mesh.lab.faults import READY_POLL_S, Network, inject
from xpro_mesh.lab.origins import OriginSampler, settle_figures
from xpro_mesh.lab.plans import (
    AGENT_SYNC,
    POLICY,
    SCENARIOS,
    Fault,
    ScenarioError,
    ScenarioPlan,
    gossip_interval,
)
from xpro_mesh.lab.progress import Reporter, RichReporter
from xpro_mesh.lab.results import ModeResult, ScenarioResult
from xpro_mesh.lab.supervise import (
    FilterStats,
    Processes,
    attach_all,
    detach_all,
    in_ns,
    last_line,
)
from xpro_mesh.lab.topology import REDIS_NS, VICTIM_NS, LabPlan

__all__ = ["run", "run_mode"]

VICTIM_PORT = 9000
START_SLACK_S = 0.5  # from "everyone is ready" to the epoch
READY_TIMEOUT_S = 60.0  # traffic processes open their sockets within this
SENDER_GRACE_S = 0.5  # a sender that lags its count is stopped this long after its end
OVERRUN_S = 8.0  # traffic still running this long after its end is stopped
TRAFFIC = [sys.executable, "-m", "xpro_mesh.lab.traffic"]


def _traffic_or_victim(name: str) -> bool:
    return name.startswith("traffic") or name == "victim"


@dataclass
class ModeRun:
    """One mode of one plan being carried out: what it started and noted."""

    lab: LabPlan
    plan: ScenarioPlan
    mode: str
    moddir: Path
    reporter: Reporter
    procs: Processes = field(default_factory=Processes)
    notes: list[str] = field(default_factory=list)
    outs: list[Path] = field(default_factory=list)
    stats: FilterStats | None = None
    epoch: float = 0.0
    wall_epoch: float = 0.0  # the epoch on the realtime clock (the agents' log times)
    wall_end: float = 0.0  # the end of the traffic, likewise
    usage: agents.Usage = field(default_factory=agents.Usage)
    counters: spoofed.Counters | None = None
    filters: spoofed.FilterFigures | None = None  # spoofed runs: drops by reason, map fill
    # planned time of a fault -> when the last fault planned then was done
    # (s since the epoch): a loaded host carries a fault out late, and the
    # phases are cut where the faults really happened
    fault_done: dict[float, float] = field(default_factory=dict)
    # ... and when the first of them began (a fault takes effect while it is
    # carried out: nftables in five namespaces take a few hundred ms)
    fault_started: dict[float, float] = field(default_factory=dict)
    # the agents' rows per origin, sampled every gossip round (gossip modes)
    origins: OriginSampler | None = None
    # restarted proxies' traffic moved back once their agents were ready
    failbacks: list[dict[str, object]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.network = Network(self.lab)

    @property
    def epoch_file(self) -> Path:
        return self.moddir / "epoch"

    def setup_filters(self) -> None:
        """Detach every filter; attach the plan's where the mode filters."""
        self.reporter.phase("resetting filters")
        detach_all(self.lab)
        if self.mode == "none":
            return
        config = self.moddir / "xdp.toml"
        config.write_text(
            self.plan.thresholds.as_toml(Policy(POLICY[self.mode]))
            + f"\npairs_max = {self.plan.pairs_max}\ndests_max = 4096\n"
        )
        self.reporter.phase("attaching XDP (bcc compiles)")
        attach_all(self.lab, config)

    def setup_spoofed(self) -> None:
        """The victim's counters for the spoofed blocks (every mode: the
        damage baseline too)."""
        if self.plan.spoofed:
            spoofed.install(self.lab, self.plan.spoofed)

    def start_mesh(self) -> None:
        if self.mode not in AGENT_SYNC:
            return
        if self.mode == "master":
            self.reporter.phase("starting redis-server (M_DB)")
            agents.start_redis(self.lab, self.procs, self.moddir)
        self.reporter.phase("starting agents")
        agents.start_agents(self.lab, self.plan, self.mode, self.procs, self.moddir)

    def start_traffic(self) -> list[Path]:
        """The victim and one process per flow; the files each writes
        ``--ready`` to once its sockets are open."""
        self.reporter.phase("starting traffic")
        timing = ["--epoch-file", str(self.epoch_file)]
        self.procs.start(
            "victim",
            in_ns(
                VICTIM_NS,
                *TRAFFIC,
                "victim",
                "--port",
                str(VICTIM_PORT),
                *timing,
                "--stop",
                repr(self.plan.duration + 1.0),
                "--out",
                str(self.moddir / "victim.json"),
                "--ready",
                str(self.moddir / "victim.ready"),
            ),
            self.moddir / "victim.log",
        )
        target = f"{self.lab.victim_addr}:{VICTIM_PORT}"
        for i, f in enumerate(self.plan.flows):
            out = self.moddir / f"{f.role}-{f.label}-{f.ns}-{i}.json"
            self.outs.append(out)
            argv = [
                *TRAFFIC,
                f.role,
                "--addrs",
                ",".join(f.addrs),
                "--target",
                target,
                "--rate",
                repr(f.rate),
                *timing,
                "--start",
                repr(f.start),
                "--stop",
                repr(f.stop),
                "--out",
                str(out),
                "--ready",
                str(out.with_suffix(".ready")),
            ]
            if f.role == "good":
                argv += ["--label", f.label, *self.client_args(f.ns, len(f.addrs))]
            self.procs.start(f"traffic-{i}", in_ns(f.ns, *argv), out.with_suffix(".log"))
        return [self.moddir / "victim.ready", *(o.with_suffix(".ready") for o in self.outs)]

    def client_args(self, ns: str, count: int) -> list[str]:
        """A good flow's options for ``xpro_mesh.client`` (none without
        ``plan.client``): its sources behind every proxy, every agent's API
        on the client side, the pin and when to follow."""
        c = self.plan.client
        if c is None:
            return []
        sender = next(s for s in self.lab.senders if s.ns == ns)
        via = []
        for p in self.lab.proxies:
            sources = sender.sources_via(p.index)
            if sources is None:
                raise ScenarioError(f"{ns} has no source behind proxy {p.index}")
            via.append(f"p{p.index}=" + ",".join(sources[:count]))
        apis = ";".join(f"p{p.index}={agents.api_address(p, True)}" for p in self.lab.proxies)
        argv = ["--via", ";".join(via), "--api", apis, "--refresh", repr(c.refresh_s)]
        argv += ["--timeout", repr(c.timeout_s)]
        if c.pin is not None:
            argv += ["--pin", f"p{c.pin}"]
            if c.follow and c.follow_at is not None:
                argv += ["--follow-at", repr(c.follow_at)]
        return argv

    def start_clock(self, readies: Sequence[Path]) -> None:
        """Everyone starts together once everyone has its sockets open."""
        give_up = time.monotonic() + READY_TIMEOUT_S
        while not all(r.exists() for r in readies):
            dead = [n for n, p in self.procs.procs if p.poll() is not None]
            if dead or time.monotonic() > give_up:
                what = f"{dead[0]} exited" if dead else "timed out"
                raise ScenarioError(f"traffic processes did not start ({what})")
            time.sleep(0.05)
        self.epoch = time.monotonic() + START_SLACK_S
        self.wall_epoch = time.time() + START_SLACK_S
        tmp = self.epoch_file.with_suffix(".tmp")
        tmp.write_text(repr(self.epoch))
        tmp.rename(self.epoch_file)
        self.usage.sample(self.procs)
        self.usage.mark_start()
        if self.plan.spoofed:
            self.counters = spoofed.Counters(self.lab, self.plan.spoofed, self.epoch)
            self.counters.start()
            if self.stats is not None:
                self.filters = spoofed.FilterFigures(self.stats.maps)
        if self.mode.startswith("gossip") and self.plan.faults:
            from xpro_mesh.lab.topology import NETNS_DIR

            self.origins = OriginSampler(
                {f"p{p.index}": str(NETNS_DIR / p.ns) for p in self.lab.proxies},
                agents.API_PORT,
                round_s(self.plan.agent_profile),
            )
            self.origins.start()

    def events(self) -> list[tuple[float, Callable[[], str | None]]]:
        """What happens at a time after the epoch: the plan's faults (each
        noted), and each spoofed block's sender started and stopped."""
        events: list[tuple[float, Callable[[], str | None]]] = []
        for f in self.plan.faults:

            def fault(f: Fault = f) -> str | None:
                begun = time.monotonic() - self.epoch
                self.fault_started.setdefault(f.at, begun)
                done = inject(f, self.lab, self.procs, self.network)
                now = time.monotonic() - self.epoch
                self.fault_done[f.at] = max(now, self.fault_done.get(f.at, 0.0))
                late = now - f.at
                when = f"{now:.1f} s" + (f" ({late:.1f} s late)" if late > 0.3 else "")
                return done and f"fault at {when}: {done}"

            events.append((f.at, fault))
        senders = spoofed.write_configs(self.plan.spoofed, self.lab, self.moddir, VICTIM_PORT)
        for lane in (lane for b in self.plan.spoofed for lane in b.lanes(spoofed.LANES)):
            name = spoofed.sender_name(lane)

            def start(name: str = name) -> None:
                self.procs.start(name, senders[name], self.moddir / f"{name}.log")

            def stop(name: str = name) -> None:
                self.procs.stop(lambda n: n == name)

            events += [(lane.start, start), (lane.stop + SENDER_GRACE_S, stop)]
        return sorted(events, key=lambda e: e[0])

    def drive(self) -> None:
        """Until the traffic ends: events on time, live rates on the bar,
        the agents' CPU and memory sampled."""
        self.reporter.phase("traffic")
        deadline = self.epoch + self.plan.duration + OVERRUN_S
        live = LiveRates(self.stats)
        pending = self.events()
        while self.procs.running("traffic") or self.procs.running("victim"):
            if time.monotonic() > deadline:
                break
            wake = self.epoch + pending[0][0] if pending else time.monotonic() + 0.5
            tick = READY_POLL_S if self.network.waiting else 0.5
            time.sleep(max(0.0, min(tick, wake - time.monotonic())))
            while pending and time.monotonic() >= self.epoch + pending[0][0]:
                note = pending.pop(0)[1]()
                if note:
                    self.notes.append(note)
            self.fail_back()
            self.usage.sample(self.procs)
            if self.filters is not None:
                self.filters.sample()
            self.reporter.tick(max(0.0, time.monotonic() - self.epoch), live.line())

    def fail_back(self) -> None:
        """Move back the traffic of restarted proxies whose agents are ready
        (or waited too long), noted and kept for the report."""
        for index, waited, ready in self.network.failbacks():
            at = time.monotonic() - self.epoch
            self.failbacks.append(
                {"proxy": index, "at_s": round(at, 2), "waited_s": round(waited, 2), "ready": ready}
            )
            why = (
                f"its agent ready {waited:.1f} s after the restart"
                if ready
                else f"its agent not ready after {waited:.1f} s, moved back anyway"
            )
            self.notes.append(f"at {at:.1f} s proxy {index}'s traffic back through it: {why}")

    def stop_traffic(self) -> dict[str, dict[str, int]]:
        """Stop what overran, note agents that died; the filters' counters."""
        self.wall_end = time.time()
        if self.origins is not None:
            self.origins.stop()
            self.notes.extend(self.origins.errors)
            self.origins.dump(str(self.moddir / "origins.jsonl"))
        for name, _proc in self.procs.running("traffic") + self.procs.running("victim"):
            self.notes.append(f"{name} overran its time and was stopped")
        self.procs.stop(_traffic_or_victim)
        self.procs.stop(lambda n: n.startswith("trafgen"))
        if self.counters is not None:
            self.counters.stop()
            self.notes.extend(self.counters.errors)
        if self.filters is not None:
            self.filters.finish()
        self.usage.sample(self.procs)
        for name, proc in self.procs.procs:
            if (
                name.startswith("agent")
                and proc.poll() is not None
                and name not in self.procs.killed
            ):
                self.notes.append(f"{name} died during the run (exit {proc.returncode})")
        return self.stats.read() if self.stats else {}

    def cleanup(self) -> None:
        if self.stats is not None:
            self.stats.close()
        self.reporter.phase("stopping")
        self.procs.stop()
        self.network.restore()
        detach_all(self.lab)
        if self.plan.spoofed:
            spoofed.remove()


@dataclass
class LiveRates:
    """Packets/s passed and dropped by all filters since the last line."""

    stats: FilterStats | None
    last: dict[str, dict[str, int]] = field(default_factory=dict)
    last_t: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.last = self.stats.read(pairs=False) if self.stats else {}

    def line(self) -> str:
        if not self.stats:
            return "traffic"
        cur, now = self.stats.read(pairs=False), time.monotonic()
        dt = max(1e-3, now - self.last_t)

        def delta(key: str) -> int:
            return sum(c[key] - self.last.get(n, {}).get(key, 0) for n, c in cur.items())

        passed, dropped = delta("pass"), delta("drop_pair") + delta("drop_dest")
        self.last, self.last_t = cur, now
        return f"filters: pass {passed / dt:6.0f}/s  drop {dropped / dt:6.0f}/s"


def _agent_figures(run: ModeRun, proxy_stats: dict[str, dict[str, int]]) -> None:
    """Per proxy the overload warnings its agent logged; other complaints
    become notes."""
    for p in run.lab.proxies:
        log = run.moddir / f"agent-{p.ns}.log"
        if run.mode in AGENT_SYNC and log.exists():
            overloads, complaints = agents.agent_log(f"agent-{p.ns}", log)
            run.notes.extend(complaints)
            proxy_stats.setdefault(p.ns, {})["overload_warnings"] = overloads


def actual_phases(run: ModeRun) -> list[tuple[str, float, float]]:
    """The plan's phases cut at the times the faults were really carried
    out (a fault's planned time where it was never reached)."""
    return [
        (
            ph.label,
            run.fault_done.get(ph.start, ph.start),
            min(run.fault_done.get(ph.stop, ph.stop), run.plan.duration),
        )
        for ph in run.plan.phases
    ]


MENDING = ("restart", "up", "heal", "clear")  # faults after which the mesh must converge again


def round_s(profile: str) -> float:
    """The agents' gossip round in seconds under ``profile``."""
    from xpro_mesh.units import parse_duration_ns

    return parse_duration_ns(gossip_interval(profile)) / 1e9


def phase_mesh(run: ModeRun) -> dict[str, dict[str, object]]:
    """Per phase of a gossip mode's faulted run: the rows' figures among the
    live agents (:func:`~xpro_mesh.lab.origins.settle_figures`: caught up
    after how many rounds, the largest count error among live origins once
    caught up); for a phase that starts with a mend (a restart, a proxy
    back, a heal, netem off) also the membership's convergence among the
    live agents, from their logs (:func:`agents.convergence`). Both are
    counted in gossip rounds from the mend, or, after a restart, from the
    restarted agents' ``agent pN up`` line (``agent_up_s`` after the
    restart command: Python's start-up and attaching to the pins, which no
    gossip can shorten)."""
    if not run.mode.startswith("gossip"):
        return {}  # membership is the gossip modes' (master's agents only talk to Redis)
    logs = {f"p{p.index}": run.moddir / f"agent-{p.ns}.log" for p in run.lab.proxies}
    rs = round_s(run.plan.agent_profile)
    wall = {f.at: run.wall_epoch + run.fault_done.get(f.at, f.at) for f in run.plan.faults}
    end = run.wall_epoch + run.plan.duration

    def live_at(t: float) -> set[str]:
        live = {f"p{p.index}" for p in run.lab.proxies}
        for f in run.plan.faults:
            if wall[f.at] > t:
                break
            node = "p" + f.target.partition(":")[2]
            if f.action in ("kill", "down") and f.target != "redis":
                live.discard(node)
            elif f.action in ("restart", "up"):
                live.add(node)
        return live

    def next_break(after: float) -> float:
        """When the next fault on everyone's gossip path began (a node
        killed meanwhile only leaves the live set)."""
        later = [f.at for f in run.plan.faults if f.at > after and f.action in BREAKING]
        if not later:
            return end
        return run.wall_epoch + run.fault_started.get(min(later), min(later))

    out: dict[str, dict[str, object]] = {}
    for ph in run.plan.phases:
        mends = [f for f in run.plan.faults if f.at == ph.start and f.action in MENDING]
        since = run.wall_epoch + run.fault_done.get(ph.start, ph.start)
        # the next fault acts from when it begins, not when it is done
        until = run.wall_epoch + run.fault_started.get(ph.stop, ph.stop)
        start = since
        entry: dict[str, object] = {}
        if mends:
            restarted = {
                "p" + f.target.partition(":")[2] for f in mends if f.action in ("restart", "up")
            }
            up = agents.first_up(logs, restarted, since) if restarted else since
            entry["after"] = [f.action + " " + f.target for f in mends]
            entry["agent_up_s"] = None if up is None else round(up - since, 3)
            start = since if up is None else up
            # A host slow to start the agents (seen: 5.3 s) may bring them up
            # after the phase's end: the mend is then judged over the rounds
            # after it all the same, among the nodes live then.
            # Not past the next fault that breaks something, though.
            until = max(until, min(start + SETTLE_SPAN_S, end, next_break(ph.start)))
            entry["judged_until_s"] = round(until - run.wall_epoch, 3)
            entry["judged"] = start < until  # False: the agents were up only after the next fault
            entry.update(agents.convergence(logs, live_at(until), start, until, rs))
        live = live_at(start) & live_at(until)
        if run.origins is not None:
            entry.update(settle_figures(run.origins.samples, start, until, rs, live))
        if entry:
            out[ph.label] = entry
    return out


def with_failbacks(
    per_phase: dict[str, dict[str, object]], run: ModeRun
) -> dict[str, dict[str, object]]:
    """``per_phase`` with, in each phase, the restarted proxies whose
    traffic moved back during it (when, after how long a wait for their
    agent's readiness, ready or not), in every mode."""
    out = {label: dict(entry) for label, entry in per_phase.items()}
    for ph in run.plan.phases:
        moved = [
            fb
            for fb in run.failbacks
            if ph.start <= float(fb["at_s"]) < ph.stop  # type: ignore[arg-type]
        ]
        if moved:
            out.setdefault(ph.label, {})["failbacks"] = moved
    return out


SETTLE_SPAN_S = 2.0  # a mend is judged over at least this after the agents are up
BREAKING = ("partition", "netem")  # faults on every node's gossip path


def botnet_figures(run: ModeRun, bots: Sequence[metrics.BotStream]) -> dict[str, object]:
    """The botnet scenario's own figures: the sender's offered and achieved
    rate per block, the agents' member-state transitions (from their logs)
    and their CPU and peak memory (from /proc)."""
    blocks: dict[str, dict[str, float | int | None]] = {}
    for b, stream in zip(run.plan.spoofed, bots, strict=True):
        sent = stream.sent.total()
        blocks[str(b.block)] = {
            "sources": b.count,
            "offered_pps": b.pps,
            "achieved_pps": round(sent / max(1e-9, b.stop - b.start), 1),
            "sent": sent,
            "trafgen_reported": spoofed.trafgen_reported(run.moddir, b),
        }
    transitions = {}
    for p in run.lab.proxies:
        log = run.moddir / f"agent-{p.ns}.log"
        if log.exists():
            transitions[p.ns] = agents.member_transitions(log, run.wall_epoch, run.wall_end)
    offered = sum(b.pps for b in run.plan.spoofed)
    achieved = sum(
        s.sent.total() / max(1e-9, b.stop - b.start)
        for b, s in zip(run.plan.spoofed, bots, strict=True)
    )
    return {
        "offered_pps": round(offered, 1),
        "achieved_pps": round(achieved, 1),
        "achieved_ratio": round(achieved / offered, 4) if offered else None,
        **({"filters": run.filters.as_json()} if run.filters is not None else {}),
        "blocks": blocks,
        "member_transitions": transitions,
        "suspicions": sum(
            n for t in transitions.values() for k, n in t.items() if k.endswith("->suspect")
        ),
        "agents": run.usage.as_json(),
    }


def _read_results(
    run: ModeRun,
) -> tuple[metrics.VictimArrivals, list[metrics.BotStream], list[metrics.GoodRequests]]:
    victim_path = run.moddir / "victim.json"
    if not victim_path.exists():
        raise ScenarioError(f"the victim wrote no results ({last_line(run.moddir / 'victim.log')})")
    victim = metrics.VictimArrivals.from_json(json.loads(victim_path.read_text()))
    bots: list[metrics.BotStream] = []
    goods: list[metrics.GoodRequests] = []
    for f, out in zip(run.plan.flows, run.outs, strict=True):
        if not out.exists():
            raise ScenarioError(
                f"{f.role} in {f.ns} wrote no results ({last_line(out.with_suffix('.log'))})"
            )
        doc = json.loads(out.read_text())
        if f.role == "bots":
            bots.append(metrics.BotStream.from_json(doc))
        else:
            pinned = f.proxy if run.plan.client is None else None  # a client picks its own
            goods.append(metrics.GoodRequests.from_json(doc, pinned))
    return victim, bots, goods


def proxy_deaths(run: ModeRun) -> list[metrics.ProxyDeath]:
    """Every whole proxy killed during the run: from when its fault began
    to when the lab had routed its traffic elsewhere (s since the epoch)."""
    return [
        metrics.ProxyDeath(
            int(f.target.partition(":")[2]),
            run.fault_started[f.at],
            run.fault_done.get(f.at, run.fault_started[f.at]),
        )
        for f in run.plan.faults
        if f.action == "down" and f.target.startswith("proxy:") and f.at in run.fault_started
    ]


def dispersion_figures(run: ModeRun, victim: metrics.VictimArrivals) -> dict[str, object] | None:
    """A run whose good clients were on ``xpro_mesh.client``: the overload
    figures where they were pinned, the failover figures where a proxy
    died under them (:mod:`xpro_mesh.lab.dispersion`)."""
    c = run.plan.client
    if c is None:
        return None
    goods = [
        json.loads(out.read_text())
        for f, out in zip(run.plan.flows, run.outs, strict=True)
        if f.role == "good"
    ]
    goods = [g for g in goods if "client" in g]
    doc: dict[str, object] = {"client": c.record()}
    if c.pin is not None:
        logs = {f"p{p.index}": run.moddir / f"agent-{p.ns}.log" for p in run.lab.proxies}
        doc["overload"] = dispersion.overload_figures(
            victim,
            goods,
            [p.index for p in run.lab.proxies],
            c.follow_at if c.follow_at is not None else run.plan.duration,
            run.plan.duration,
            logs,
            (run.wall_epoch, run.wall_end),
            _min_change_s(run.plan.agent_toml),
            following=c.follow and c.follow_at is not None,
        )
    for f in run.plan.faults:
        if f.action == "down" and "good" not in f.moves:
            dead = int(f.target.partition(":")[2])
            went = run.network.went_down.get(dead)
            down_at = went - run.epoch if went is not None else run.fault_started.get(f.at, f.at)
            figures = dispersion.failover_figures(goods, dead, down_at)
            figures["fault_started_s"] = _rounded(run.fault_started.get(f.at))
            doc["failover"] = figures
    return doc


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _min_change_s(agent_toml: str) -> float:
    """``dispersion.min_change`` of the agents' extra TOML (the profile's
    3 s where it is not set)."""
    import tomllib

    from xpro_mesh.units import parse_duration_ns

    value = tomllib.loads(agent_toml or "").get("dispersion", {}).get("min_change", "3s")
    return parse_duration_ns(str(value)) / 1e9


def run_mode(
    lab: LabPlan,
    plan: ScenarioPlan,
    mode: str,
    workdir: Path,
    reporter: Reporter,
    key: str | None = None,
) -> ModeResult:
    """Carry ``plan`` out once in ``mode`` (its results under ``key``, the
    mode by default); everything started is stopped."""
    started = time.monotonic()
    moddir = workdir / (key or mode)
    moddir.mkdir(parents=True, exist_ok=True)
    run = ModeRun(lab, plan, mode, moddir, reporter)
    try:
        run.setup_filters()
        run.setup_spoofed()
        run.start_mesh()
        run.stats = FilterStats(lab) if mode != "none" else None
        run.start_clock(run.start_traffic())
        run.drive()
        proxy_stats = run.stop_traffic()
    finally:
        run.cleanup()
    _agent_figures(run, proxy_stats)
    victim, bots, goods = _read_results(run)
    if run.counters is not None:
        victim = metrics.VictimArrivals(victim.bin_s, run.counters.arrivals(), victim.good)
        bots = run.counters.bot_streams()
    m = metrics.mode_metrics(
        victim,
        bots,
        goods,
        plan.duration,
        phases=actual_phases(run),
        deaths=proxy_deaths(run),
    )
    return ModeResult(
        mode=key or mode,
        metrics=m,
        proxies=proxy_stats,
        wall_s=round(time.monotonic() - started, 1),
        notes=tuple(run.notes),
        extra=botnet_figures(run, bots) if plan.spoofed else None,
        phase_mesh=with_failbacks(phase_mesh(run), run),
        dispersion=dispersion_figures(run, victim),
    )


def prepare(
    lab: LabPlan,
    name: str,
    modes: Sequence[str],
    duration: float | None,
    options: Mapping[str, object] | None = None,
) -> ScenarioPlan:
    """The plan of scenario ``name`` (with its ``options``, e.g. botnet's
    ``bots``), or a one-line ScenarioError saying why it cannot run here."""
    if os.geteuid() != 0:
        raise ScenarioError("lab scenarios need root (network namespaces, XDP)")
    spec = SCENARIOS.get(name)
    if spec is None:
        raise ScenarioError(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")
    d = spec.default_duration if duration is None else duration
    if d < 5:
        raise ScenarioError(f"--duration: at least 5 s, got {d:g}")
    given = {k: v for k, v in (options or {}).items() if v is not None}
    unknown = sorted(set(given) - set(spec.options))
    if unknown:
        flag = "--" + unknown[0].replace("_", "-").replace("rate", "rate-per-bot")
        owners = [n for n, sp in SCENARIOS.items() if unknown[0] in sp.options]
        raise ScenarioError(f"{flag} is an option of scenario {' and '.join(owners)} only")
    plan = spec.build(lab, d, **given)
    _check_tools(plan)
    if plan.compare and not all(m in AGENT_SYNC for m in modes):
        raise ScenarioError(
            f"scenario {name} needs the agents' weights: --modes gossip (or master, gossip-paper)"
        )
    if any(m in AGENT_SYNC for m in modes) and not agents.agent_available():
        raise ScenarioError(
            "modes master/gossip/gossip-paper need the agent (`xpro-mesh agent`), "
            "which this build does not have yet"
        )
    if "master" in modes and agents.redis_binary() is None:
        raise ScenarioError("mode master needs redis-server (apt install redis-server)")
    return plan


def _check_tools(plan: ScenarioPlan) -> None:
    if plan.spoofed:
        for tool, package in (("trafgen", "netsniff-ng"), ("nft", "nftables")):
            if shutil.which(tool) is None:
                raise ScenarioError(
                    f"scenario {plan.name} needs {tool} (apt install {package}; scripts/setup.sh)"
                )


def run(
    lab: LabPlan,
    name: str,
    modes: Sequence[str],
    *,
    duration: float | None = None,
    workdir: Path | None = None,
    progress: bool = True,
    options: Mapping[str, object] | None = None,
) -> ScenarioResult:
    """Run scenario ``name`` on ``lab`` once per mode, in order."""
    plan = prepare(lab, name, modes, duration, options)
    from xpro_mesh.lab import topology

    leftovers = topology.stop_processes(
        [p.ns for p in lab.proxies] + [VICTIM_NS, REDIS_NS] + [s.ns for s in lab.senders]
    )
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
        runs = [(mode, key, p) for mode in modes for key, p in plan.variants(mode)]
        for i, (mode, key, p) in enumerate(runs):
            reporter.mode_started(key, i, len(runs), plan.duration)
            results[key] = run_mode(lab, p, mode, base, reporter, key)
            reporter.mode_done(results[key])
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
