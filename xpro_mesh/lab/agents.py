"""The mesh's side of a mode: the agents (and the paper's Redis) a mode
starts, their configuration, and what their logs say afterwards. The lab
talks to an agent only through its command line, its config file, its
HTTP API and its log."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from xpro_mesh.core.params import Policy
from xpro_mesh.lab.plans import AGENT_SYNC, GOSSIP_INTERVAL, POLICY, ScenarioError, ScenarioPlan
from xpro_mesh.lab.supervise import Processes, cli, in_ns, last_line, pin_root, tcp_ready
from xpro_mesh.lab.topology import REDIS_NS, LabPlan, Proxy

__all__ = [
    "API_PORT",
    "GOSSIP_PORT",
    "Usage",
    "agent_argv",
    "agent_available",
    "agent_log",
    "api_address",
    "member_transitions",
    "start_agents",
    "start_redis",
    "write_agent_config",
]

GOSSIP_PORT = 7946
API_PORT = 7947
REDIS_PORT = 6379
AGENT_SETTLE_S = 2.0  # agents join the mesh before traffic starts


def agent_available() -> bool:
    """Whether this build has the agent command (``xpro-mesh agent``)."""
    return importlib.util.find_spec("xpro_mesh.cli.agent") is not None


def redis_binary() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    return "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None


def write_agent_config(path: Path, plan: ScenarioPlan, policy: str) -> None:
    """The agents' TOML: the plan's thresholds, and the lab's gossip round
    unless the plan runs the agents on a named profile's own timers."""
    gossip = (
        "" if plan.agent_profile != "local" else (f'\n\n[gossip]\ninterval = "{GOSSIP_INTERVAL}"')
    )
    extra = f"\n{plan.agent_toml}" if plan.agent_toml else ""
    path.write_text(
        "# written by `xpro-mesh lab scenario`\n[thresholds]\n"
        + plan.thresholds.as_toml(Policy(policy))
        + gossip
        + "\n"
        + extra
    )


def api_address(proxy: Proxy, clients_reach: bool) -> str:
    """Where a proxy's agent serves its API: on loopback inside the proxy's
    namespace, or, for good clients on ``xpro_mesh.client``, on its
    client-side address (the clients' segment; ``GET /v1/proxies`` names
    the gossiped service-side hosts, the clients map node ids to these)."""
    return f"{proxy.client_addr if clients_reach else '127.0.0.1'}:{API_PORT}"


def agent_argv(
    lab: LabPlan,
    proxy: Proxy,
    mode: str,
    key: Path,
    config: Path,
    profile: str = "local",
    clients_reach: bool = False,
) -> list[str]:
    peers = ",".join(
        f"{p.service_addr}:{GOSSIP_PORT}" for p in lab.proxies if p.index != proxy.index
    )
    argv = [
        "agent",
        "--node-id",
        f"p{proxy.index}",
        "--backend",
        "xdp",
        "--iface",
        "c0",
        "--pin-root",
        pin_root(lab, proxy),
        "--bind",
        f"{proxy.service_addr}:{GOSSIP_PORT}",
        "--api",
        api_address(proxy, clients_reach),
        "--key-file",
        str(key),
        "--config",
        str(config),
        "--profile",
        profile,
        "--sync",
        AGENT_SYNC[mode],
    ]
    if peers:
        argv += ["--peers", peers]
    if AGENT_SYNC[mode] == "master":
        argv += ["--redis", f"{lab.redis_addr}:{REDIS_PORT}"]
    return cli(proxy.ns, *argv)


def start_redis(lab: LabPlan, procs: Processes, moddir: Path) -> None:
    """The paper's M_DB, reachable only inside the lab's service segment."""
    redis = redis_binary() or "redis-server"
    procs.start(
        "redis",
        in_ns(
            REDIS_NS,
            redis,
            "--bind",
            lab.redis_addr,
            "--port",
            str(REDIS_PORT),
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
        ),
        moddir / "redis.log",
    )
    if not tcp_ready(lab.proxies[0].ns, lab.redis_addr, REDIS_PORT, 10):
        raise ScenarioError(f"redis-server did not come up: {last_line(moddir / 'redis.log')}")


def start_agents(
    lab: LabPlan, plan: ScenarioPlan, mode: str, procs: Processes, moddir: Path
) -> None:
    """One agent per proxy under a fresh cluster key; fails if any exits
    while the mesh settles."""
    key = moddir / "cluster.key"
    key.write_text(secrets.token_hex(32) + "\n")
    key.chmod(0o600)
    config = moddir / "agent.toml"
    write_agent_config(config, plan, POLICY[mode])
    for p in lab.proxies:
        procs.start(
            f"agent-{p.ns}",
            agent_argv(lab, p, mode, key, config, plan.agent_profile, plan.client is not None),
            moddir / f"agent-{p.ns}.log",
        )
    time.sleep(AGENT_SETTLE_S)
    for name, proc in procs.procs:
        if proc.poll() is not None:
            raise ScenarioError(
                f"{name} exited ({proc.returncode}): {last_line(moddir / (name + '.log'))}"
            )


def agent_log(name: str, log: Path) -> tuple[int, list[str]]:
    """(overload warnings, notes) from an agent's JSON log lines: the
    warnings of Algorithm 2 line 15 are counted; any other warning or error
    becomes one note (a mode whose agents could not sync must not pass for a
    result), but the agent's word at exit that its filter stays attached
    (the lab detaches every filter itself)."""
    overloads, count, first = 0, 0, ""
    for entry in log_entries(log):
        if entry.get("event") == "overload_warning":
            overloads += 1
        elif entry.get("event") == "left_in_kernel":
            continue
        elif entry.get("level") in ("warning", "error", "critical"):
            count += 1
            first = first or str(entry.get("msg", ""))[:160]
    notes = [f"{name}: {count} warnings/errors logged, first: {first}"] if count else []
    return overloads, notes


def log_entries(log: Path) -> list[dict[str, object]]:
    """The JSON objects of an agent's log, one a line (other lines skipped)."""
    entries: list[dict[str, object]] = []
    with contextlib.suppress(OSError):
        for line in log.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict):
                entries.append(entry)
    return entries


_TRANSITION = re.compile(r"^member (\S+): (\S+) -> (\S+)$")


def member_transitions(
    log: Path, since: float = float("-inf"), until: float = float("inf")
) -> dict[str, int]:
    """How often this agent saw a member change state, by ``"from->to"``,
    read from its log's ``member X: A -> B`` lines logged between ``since``
    and ``until`` (Unix seconds: the traffic, not the agents' leaving at
    the end). The agent exposes no transition counters yet; ``unknown ->
    alive`` is a member first heard of, not a change."""
    counts: dict[str, int] = {}
    for entry in log_entries(log):
        match = _TRANSITION.match(str(entry.get("msg", "")))
        if not match or match.group(2) == "unknown":
            continue
        at = _log_time(entry)
        if at is None or since <= at <= until:
            key = f"{match.group(2)}->{match.group(3)}"
            counts[key] = counts.get(key, 0) + 1
    return counts


def member_states(
    logs: dict[str, Path], since: float, until: float, about: set[str] | None = None
) -> tuple[dict[str, dict[str, str]], float | None]:
    """Each agent's view of its members at ``until`` (agent node ns ->
    member -> state, from every ``member X: A -> B`` line up to then) and
    the time of the last transition logged in ``[since, until]`` (None if
    there was none): a mesh has converged on its membership once every
    live agent holds every live member ``alive`` and nothing changes.
    ``about``: only changes about these members count for the time (a
    member killed meanwhile is another fault's, not the mend's)."""
    views: dict[str, dict[str, str]] = {}
    last: float | None = None
    for name, log in logs.items():
        view: dict[str, str] = {}
        for entry in log_entries(log):
            match = _TRANSITION.match(str(entry.get("msg", "")))
            at = _log_time(entry)
            if not match or at is None or at > until:
                continue
            view[match.group(1)] = match.group(3)
            if at >= since and (about is None or match.group(1) in about):
                last = at if last is None else max(last, at)
        views[name] = view
    return views, last


def first_up(logs: dict[str, Path], nodes: set[str], since: float) -> float | None:
    """When the last of ``nodes`` (restarted at ``since``) logged its
    ``agent <id> up`` line (Unix seconds); None if one never did."""
    latest = since
    for node in nodes:
        at = next(
            (
                t
                for entry in log_entries(logs[node])
                if str(entry.get("msg", "")).startswith(f"agent {node} up")
                and (t := _log_time(entry)) is not None
                and t >= since
            ),
            None,
        )
        if at is None:
            return None
        latest = max(latest, at)
    return latest


def convergence(
    logs: dict[str, Path], live: set[str], since: float, until: float, round_s: float
) -> dict[str, object]:
    """After a heal or a restart at ``since``: whether, by ``until``, every
    live agent (``live``: node ids, ``p<i>``) holds every other live node
    alive, and in how many gossip rounds of ``round_s`` from ``since`` the
    last membership change before that came (0: nothing had to change)."""
    views, last = member_states({n: logs[n] for n in logs if n in live}, since, until, live)
    converged = all(views.get(n, {}).get(m) == "alive" for n in live for m in live if m != n)
    rounds = 0 if last is None else math.ceil(max(0.0, last - since) / round_s - 1e-9)
    return {
        "membership_converged": converged,
        "rounds_to_converge": rounds if converged else None,
        "seconds_to_converge": (
            (0.0 if last is None else round(max(0.0, last - since), 3)) if converged else None
        ),
    }


def _log_time(entry: dict[str, object]) -> float | None:
    """A log line's ``ts`` (ISO 8601, UTC) as Unix seconds."""
    from datetime import datetime

    try:
        return datetime.fromisoformat(str(entry["ts"]).replace("Z", "+00:00")).timestamp()
    except (KeyError, ValueError):
        return None


@dataclass
class Usage:
    """Agent CPU seconds and peak resident memory, read from /proc while
    the agents run (a process's figures vanish with it): per process name,
    per pid (a restarted agent is a second pid)."""

    cpu_s: dict[str, dict[int, float]] = field(default_factory=dict)
    peak_rss_kb: dict[str, int] = field(default_factory=dict)
    cpu_at_start: dict[str, float] = field(default_factory=dict)

    def sample(self, procs: Processes) -> None:
        for name, proc in procs.running("agent"):
            stat = _proc_stat(proc.pid)
            if stat is None:
                continue
            cpu, hwm = stat
            self.cpu_s.setdefault(name, {})[proc.pid] = cpu
            self.peak_rss_kb[name] = max(self.peak_rss_kb.get(name, 0), hwm)

    def mark_start(self) -> None:
        """The CPU spent so far is set-up, not traffic."""
        self.cpu_at_start = {n: sum(v.values()) for n, v in self.cpu_s.items()}

    def as_json(self) -> dict[str, dict[str, float]]:
        out = {}
        for name, lives in sorted(self.cpu_s.items()):
            total = sum(lives.values())
            out[name.removeprefix("agent-")] = {
                "cpu_s": round(total, 2),
                "cpu_s_during_traffic": round(total - self.cpu_at_start.get(name, 0.0), 2),
                "peak_rss_mb": round(self.peak_rss_kb.get(name, 0) / 1024, 1),
            }
        return out


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _proc_stat(pid: int) -> tuple[float, int] | None:
    """(user + system CPU seconds, VmHWM kB) of ``pid``; None once gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime (fields 14, 15)
    hwm = next(
        (int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), 0
    )
    return cpu, hwm
