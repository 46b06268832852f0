"""Fault injection: carrying out a plan's :class:`~xpro_mesh.lab.plans.Fault`
(a process SIGKILLed or restarted, a whole proxy down and its traffic moved
to another, then back), and putting the lab's links and routes back
whatever happens (the lab outlives the run)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Protocol

from xpro_mesh.lab.plans import Fault, ScenarioError
from xpro_mesh.lab.supervise import Processes
from xpro_mesh.lab.topology import LabPlan

__all__ = ["Network", "fault_process", "inject"]


class Links(Protocol):
    def down(self, index: int, via: int) -> None: ...
    def up(self, index: int) -> None: ...


@dataclass
class Network:
    """The lab's links and routes as faults change them; :meth:`restore`
    puts back whatever is still changed."""

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
    name = fault_process(fault.target, lab)
    if fault.action == "kill":
        return f"SIGKILL {name}" if procs.kill(name) else None
    if fault.action == "restart":
        return f"restarted {name}" if procs.restart(name) else None
    if fault.action in ("down", "up") and network is not None:
        index = int(fault.target.partition(":")[2])
        if fault.action == "down":
            return _proxy_down(fault, index, name, procs, network)
        network.up(index)
        restarted = procs.restart(name)
        return f"proxy {index} up{' (restarted ' + name + ')' if restarted else ''}"
    raise ScenarioError(f"unknown fault action {fault.action!r}")


def _proxy_down(fault: Fault, index: int, name: str, procs: Processes, network: Links) -> str:
    killed = procs.kill(name)
    network.down(index, fault.via if fault.via is not None else index)
    return f"proxy {index} down{' (SIGKILL ' + name + ')' if killed else ''}" + (
        f", its traffic through proxy {fault.via}" if fault.via is not None else ""
    )
