"""Fault injection: carrying out a plan's :class:`~xpro_mesh.lab.plans.Fault`
(a process SIGKILLed or restarted, a whole proxy down and its traffic moved
to another, then back, the gossip path partitioned or made lossy), and
putting the lab's links, routes, nftables and qdiscs back whatever happens
(the lab outlives the run).

The gossip path is the proxies' service side (``s0``, 10.20.0.0/16), which
also carries the data path to the victim and the master mode's Redis: a
partition and netem match only packets between two proxies' service
addresses, so the attack and the good clients' traffic are not touched and
the figures measure the mesh, not a broken data path."""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

from xpro_mesh.lab.delayer import DELAY_MS, JITTER_MS, DelayPath
from xpro_mesh.lab.plans import NETEM, Fault, ScenarioError
from xpro_mesh.lab.supervise import Processes
from xpro_mesh.lab.topology import LabPlan

__all__ = ["Network", "fault_process", "inject"]


NFT_TABLE = "xl_chaos"  # the partition's table in each proxy's namespace
NETEM_BAND = "1:4"  # the prio qdisc's extra band that netem hangs from


# A restarted proxy's traffic moves back once its agent is ready (GET
# /readyz: the mesh's view written into its filter), as a load balancer or a
# route announcer that health-checks it would; by this long after the
# restart it moves back ready or not (a start-up of 10.3 s was seen on a
# host at load 12).
READY_TIMEOUT_S = 15.0
READY_POLL_S = 0.05


class Links(Protocol):
    def down(self, index: int, via: int, moves: tuple[str, ...] = ("good", "bot")) -> None: ...
    def up(self, index: int) -> None: ...
    def failback(self, index: int, wait_ready: bool) -> None: ...
    def partition(self, groups: tuple[tuple[int, ...], ...]) -> None: ...
    def heal(self) -> None: ...
    def netem(self) -> str: ...
    def clear(self) -> None: ...


def _run(ns: str, *argv: str, stdin: str | None = None, check: bool = True) -> None:
    from xpro_mesh.lab.topology import NETNS_DIR

    done = subprocess.run(
        ["nsenter", f"--net={NETNS_DIR / ns}", *argv],
        input=stdin,
        capture_output=True,
        text=True,
    )
    if check and done.returncode != 0:
        raise ScenarioError(f"{argv[0]} in {ns} failed: {done.stderr.strip()[:200]}")


def partition_ruleset(own: str, others: list[str]) -> str:
    """The nftables script that cuts ``own`` (a proxy's service address)
    off from ``others`` both ways, and nothing else."""
    peers = ", ".join(others)
    return (
        f"table ip {NFT_TABLE} {{\n"
        f"  chain in {{ type filter hook input priority 0; policy accept;\n"
        f"    ip daddr {own} ip saddr {{ {peers} }} drop\n  }}\n"
        f"  chain out {{ type filter hook output priority 0; policy accept;\n"
        f"    ip saddr {own} ip daddr {{ {peers} }} drop\n  }}\n"
        f"}}\n"
    )


LOSSY_TABLE = "xl_lossy"  # the stand-in for netem where the kernel has no sch_netem
LOSS_PCT, DUP_PCT = 20, 5  # NETEM's loss and duplication, for the stand-in


def lossy_ruleset(peers: list[str], loss_pct: int = LOSS_PCT, dup_pct: int = DUP_PCT) -> str:
    """nftables' stand-in for :data:`~xpro_mesh.lab.plans.NETEM` on a
    kernel built without sch_netem (this VM's): on every packet from here to
    a peer, ``dup_pct`` % sent twice and ``loss_pct`` % dropped, each an
    independent draw. nftables cannot delay: the delay is
    :mod:`xpro_mesh.lab.delayer`'s, before these rules (mangle, priority -150)."""
    rules = "".join(
        f"    ip daddr {peer} numgen random mod 100 < {dup_pct} dup to {peer} device s0\n"
        f"    ip daddr {peer} numgen random mod 100 < {loss_pct} drop\n"
        for peer in peers
    )
    return (
        f"table ip {LOSSY_TABLE} {{\n"
        f"  chain out {{ type filter hook output priority 0; policy accept;\n{rules}  }}\n}}\n"
    )


def netem_commands(peers: list[str]) -> list[list[str]]:
    """tc commands that put :data:`~xpro_mesh.lab.plans.NETEM` on packets
    from s0 to the ``peers`` only: a prio qdisc keeping the default
    priomap over bands 1-3 and one more band, fed by u32 filters on the
    peers' addresses, with netem under it."""
    cmds = [
        [
            "tc",
            "qdisc",
            "add",
            "dev",
            "s0",
            "root",
            "handle",
            "1:",
            "prio",
            "bands",
            "4",
            "priomap",
            *["1", "2", "2", "2", "1", "2", "0", "0", "1", "1", "1", "1", "1", "1", "1", "1"],
        ],
        [
            "tc",
            "qdisc",
            "add",
            "dev",
            "s0",
            "parent",
            NETEM_BAND,
            "handle",
            "40:",
            "netem",
            *NETEM.split(),
        ],
    ]
    for peer in peers:
        cmds.append(
            [
                "tc",
                "filter",
                "add",
                "dev",
                "s0",
                "parent",
                "1:0",
                "protocol",
                "ip",
                "prio",
                "1",
                "u32",
                "match",
                "ip",
                "dst",
                f"{peer}/32",
                "flowid",
                NETEM_BAND,
            ]
        )
    return cmds


@dataclass
class ReadyWatch:
    """A thread in a proxy's namespace asking its agent's ``GET /readyz``
    every :data:`READY_POLL_S` until it answers 200 (``ready_at``, monotonic)."""

    started: float
    ready_at: float | None = None
    error: str | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    @classmethod
    def start(cls, ns: str, port: int | None = None) -> ReadyWatch:
        from xpro_mesh.lab.agents import API_PORT

        watch = cls(time.monotonic())
        args = (ns, API_PORT if port is None else port)
        threading.Thread(target=watch._run, args=args, daemon=True).start()
        return watch

    def stop(self) -> None:
        self._stop.set()

    def _run(self, ns: str, port: int) -> None:
        from xpro_mesh.lab.origins import enter_netns, http_status

        self.error = enter_netns(ns)
        while self.error is None and not self._stop.is_set():
            answer = http_status(port, "/readyz")
            if answer is not None and answer[0] == 200:
                self.ready_at = time.monotonic()
                return
            self._stop.wait(READY_POLL_S)


@dataclass
class Network:
    """The lab's links and routes as faults change them; :meth:`restore`
    puts back whatever is still changed."""

    lab: LabPlan
    downed: set[int] = field(default_factory=set)
    # proxy -> when its links last went down (CLOCK_MONOTONIC): when it
    # stopped forwarding, the start of its clients' failover
    went_down: dict[int, float] = field(default_factory=dict)
    partitioned: bool = False
    lossy: bool = False
    # proxy -> the watch on its restarted agent's readiness (traffic still elsewhere)
    waiting: dict[int, ReadyWatch] = field(default_factory=dict)
    # the delayers (netem's delay without sch_netem), one per proxy, while lossy
    delays: list[DelayPath] = field(default_factory=list)

    def down(self, index: int, via: int, moves: tuple[str, ...] = ("good", "bot")) -> None:
        from xpro_mesh.lab import topology

        self.downed.add(index)
        topology.set_proxy_links(self.lab, index, up=False)
        self.went_down[index] = time.monotonic()
        topology.route_block_through(self.lab, index, via, moves)

    def up(self, index: int) -> None:
        """Proxy ``index``'s links up; its traffic still goes elsewhere
        until :meth:`failback`."""
        from xpro_mesh.lab import topology

        topology.set_proxy_links(self.lab, index, up=True)

    def failback(self, index: int, wait_ready: bool) -> None:
        """Proxy ``index``'s clients and bots back through it: at once, or
        (``wait_ready``, its agent just restarted) once :meth:`failbacks`
        finds its agent ready."""
        if not wait_ready:
            self._route_back(index)
            return
        from xpro_mesh.lab.topology import NETNS_DIR

        ns = next(p.ns for p in self.lab.proxies if p.index == index)
        self.waiting[index] = ReadyWatch.start(str(NETNS_DIR / ns))

    def failbacks(self, now: float | None = None) -> list[tuple[int, float, bool]]:
        """Move back the traffic of every proxy whose agent is ready now, or
        that waited :data:`READY_TIMEOUT_S`: (proxy, seconds waited, ready)."""
        now = time.monotonic() if now is None else now
        moved = []
        for index, watch in sorted(self.waiting.items()):
            if watch.ready_at is None and now - watch.started < READY_TIMEOUT_S:
                continue
            watch.stop()
            del self.waiting[index]
            self._route_back(index)
            waited = (watch.ready_at if watch.ready_at is not None else now) - watch.started
            moved.append((index, waited, watch.ready_at is not None))
        return moved

    def _route_back(self, index: int) -> None:
        from xpro_mesh.lab import topology

        topology.route_block_through(self.lab, index, index)
        self.downed.discard(index)

    def partition(self, groups: tuple[tuple[int, ...], ...]) -> None:
        side = {i: n for n, g in enumerate(groups) for i in g}
        self.partitioned = True
        for p in self.lab.proxies:
            if p.index not in side:
                continue
            others = [
                q.service_addr
                for q in self.lab.proxies
                if q.index in side and side[q.index] != side[p.index]
            ]
            if others:
                _run(p.ns, "nft", "-f", "-", stdin=partition_ruleset(p.service_addr, others))

    def heal(self) -> None:
        for p in self.lab.proxies:
            _run(p.ns, "nft", "delete", "table", "ip", NFT_TABLE, check=False)
        self.partitioned = False

    def netem(self) -> str:
        """tc netem on every proxy's packets to its peers; where the kernel
        has no netem (or no prio), nftables' loss and duplication and, for
        the delay, a :class:`~xpro_mesh.lab.delayer.DelayPath` per proxy
        (the gossip port's packets to its peers through an NFQUEUE) instead.
        Which one: the return value."""
        self.lossy = True
        try:
            for p in self.lab.proxies:
                peers = [q.service_addr for q in self.lab.proxies if q.index != p.index]
                for cmd in netem_commands(peers):
                    _run(p.ns, *cmd)
            return f"tc netem {NETEM}"
        except ScenarioError as e:
            if "unknown" not in str(e).lower():
                raise
        from xpro_mesh.lab.agents import GOSSIP_PORT
        from xpro_mesh.lab.topology import NETNS_DIR

        for p in self.lab.proxies:
            _run(p.ns, "tc", "qdisc", "del", "dev", "s0", "root", check=False)
            peers = [q.service_addr for q in self.lab.proxies if q.index != p.index]
            path = DelayPath(str(NETNS_DIR / p.ns), p.service_addr, peers, GOSSIP_PORT, p.index)
            self.delays.append(path)
            path.launch()  # all at once: each one's start-up is a Python interpreter's
        try:
            for path in self.delays:
                path.start()
        except RuntimeError as e:
            raise ScenarioError(str(e)) from e
        for p in self.lab.proxies:
            peers = [q.service_addr for q in self.lab.proxies if q.index != p.index]
            _run(p.ns, "nft", "-f", "-", stdin=lossy_ruleset(peers))
        return (
            f"nftables {LOSS_PCT}% loss, {DUP_PCT}% duplication; delay "
            f"{DELAY_MS:g}ms {JITTER_MS:g}ms (uniform) by a userspace delayer on NFQUEUE "
            "(this kernel has no sch_netem)"
        )

    def clear(self) -> None:
        for path in self.delays:
            with contextlib.suppress(Exception):
                path.signal_stop()
        for path in self.delays:
            with contextlib.suppress(Exception):
                path.stop()
        self.delays.clear()
        for p in self.lab.proxies:
            _run(p.ns, "tc", "qdisc", "del", "dev", "s0", "root", check=False)
            _run(p.ns, "nft", "delete", "table", "ip", LOSSY_TABLE, check=False)
        self.lossy = False

    def restore(self) -> None:
        for watch in self.waiting.values():
            watch.stop()
        self.waiting.clear()
        for index in sorted(self.downed):
            with contextlib.suppress(Exception):
                self.up(index)
                self._route_back(index)
        if self.partitioned:
            self.heal()
        if self.lossy:
            self.clear()


def fault_process(target: str, lab: LabPlan) -> str:
    """The process name a fault's target means in :class:`Processes` (a
    proxy's: its agent)."""
    if target == "redis":
        return "redis"
    index = int(target.partition(":")[2])
    return next(f"agent-{p.ns}" for p in lab.proxies if p.index == index)


def inject(
    fault: Fault, lab: LabPlan, procs: Processes, network: Links | None = None
) -> str | None:
    """Carry ``fault`` out; what was done, or None where the mode does not
    run the target."""
    name = "" if fault.target == "gossip" else fault_process(fault.target, lab)
    if fault.action == "kill":
        return f"SIGKILL {name}" if procs.kill(name) else None
    if fault.action == "restart":
        return f"restarted {name}" if procs.restart(name) else None
    if fault.target == "gossip" and network is not None:
        if fault.action == "partition":
            network.partition(fault.groups)
            sides = " | ".join(",".join(map(str, g)) for g in fault.groups)
            return f"gossip path partitioned {sides} (nftables)"
        if fault.action == "heal":
            network.heal()
            return "gossip path healed"
        if fault.action == "netem":
            how = network.netem()
            return f"lossy gossip path: {how}"
        if fault.action == "clear":
            network.clear()
            return "netem off the gossip path"
    if fault.action in ("down", "up") and network is not None:
        index = int(fault.target.partition(":")[2])
        if fault.action == "down":
            return _proxy_down(fault, index, name, procs, network)
        network.up(index)
        restarted = procs.restart(name)
        network.failback(index, wait_ready=restarted)
        return f"proxy {index} up{' (restarted ' + name + ')' if restarted else ''}" + (
            ", its traffic back once its agent is ready" if restarted else ""
        )
    raise ScenarioError(f"unknown fault action {fault.action!r}")


def _proxy_down(fault: Fault, index: int, name: str, procs: Processes, network: Links) -> str:
    killed = procs.kill(name)
    network.down(index, fault.via if fault.via is not None else index, fault.moves)
    what = "its traffic" if "good" in fault.moves else "its bots"
    return f"proxy {index} down{' (SIGKILL ' + name + ')' if killed else ''}" + (
        f", {what} through proxy {fault.via}" if fault.via is not None else ""
    )
