"""What a scenario run produced: per mode its metrics and the filters'
counters, and the run as a whole (the report's input; plain records)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from xpro_mesh.lab import metrics
from xpro_mesh.lab.plans import ScenarioPlan
from xpro_mesh.lab.topology import LabPlan

__all__ = ["ModeResult", "ScenarioResult"]


@dataclass(frozen=True, slots=True)
class ModeResult:
    mode: str
    metrics: metrics.ModeMetrics
    proxies: dict[str, dict[str, int]]  # per proxy namespace: pass, drop_pair, drop_dest
    wall_s: float
    notes: tuple[str, ...] = ()
    extra: dict[str, Any] | None = None  # scenario-specific figures (botnet: spoofed, agents)
    # per phase label: the mesh's convergence after a heal or restart (chaos)
    phase_mesh: dict[str, dict[str, Any]] = field(default_factory=dict)
    # good clients on xpro_mesh.client: overload and failover figures (issue 14)
    dispersion: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ScenarioResult:
    plan: ScenarioPlan
    lab: LabPlan
    modes: dict[str, ModeResult]
    wall_s: float
    workdir: str | None = None
