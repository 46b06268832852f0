"""Scenarios: the same traffic through the lab once per mode, measured at the
victim and at the clients. The names the CLI and the reports use, gathered
from the modules that own them:

* :mod:`~xpro_mesh.lab.plans` — the pure scenario plans and their thresholds;
* :mod:`~xpro_mesh.lab.runner` — carrying a plan out once per mode;
* :mod:`~xpro_mesh.lab.supervise` — processes in namespaces, XDP on the proxies;
* :mod:`~xpro_mesh.lab.agents` — the agents (and Redis) a mode runs;
* :mod:`~xpro_mesh.lab.faults` — crashes, restarts, a proxy down and back;
* :mod:`~xpro_mesh.lab.spoofed` — botnet's trafgen senders and nftables counters;
* :mod:`~xpro_mesh.lab.progress` and :mod:`~xpro_mesh.lab.report` — the
  operator's view while it runs and the reports after.
"""

from __future__ import annotations

from xpro_mesh.lab.plans import (
    AGENT_SYNC,
    BOT_RATE,
    CAPACITY_SHARE,
    GOOD_RATE,
    GOSSIP_INTERVAL,
    MODES,
    POLICY,
    SCENARIOS,
    T_F1,
    Fault,
    Flow,
    Phase,
    ScenarioError,
    ScenarioPlan,
    ScenarioSpec,
    SpoofedBlock,
    botnet,
    capacity,
    chaos,
    distributed,
    failover,
    flash_crowd,
    heavy_hitter,
    low_and_slow,
    parse_modes,
)
from xpro_mesh.lab.results import ModeResult, ScenarioResult
from xpro_mesh.lab.runner import run

__all__ = [
    "AGENT_SYNC",
    "BOT_RATE",
    "CAPACITY_SHARE",
    "GOOD_RATE",
    "GOSSIP_INTERVAL",
    "MODES",
    "POLICY",
    "SCENARIOS",
    "T_F1",
    "Fault",
    "Flow",
    "ModeResult",
    "Phase",
    "ScenarioError",
    "ScenarioPlan",
    "ScenarioResult",
    "ScenarioSpec",
    "SpoofedBlock",
    "botnet",
    "capacity",
    "chaos",
    "distributed",
    "failover",
    "flash_crowd",
    "heavy_hitter",
    "low_and_slow",
    "parse_modes",
    "run",
]
