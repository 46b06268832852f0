"""What the HTTP API sees of an agent: a small read interface plus the two
actions the API may take (new thresholds, packets fed to a memory data path).

The API depends on this module alone, never on the agent's internals: the
agent implements :class:`AgentView` (structurally), a test can implement it
with a dataclass. Types here come from the layers below (core, datapath, mesh)
or are defined here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from xpro_mesh.agent.config import Thresholds
from xpro_mesh.agent.load import Measured, ProxyEntry
from xpro_mesh.core.algorithm import Verdict
from xpro_mesh.core.dispersion import Dispersion, Steering
from xpro_mesh.datapath.backend import Stats
from xpro_mesh.mesh.membership import Member, Workload
from xpro_mesh.mesh.node import MeshCounters

__all__ = ["NOT_READY", "AgentView", "Feeder", "NodeInfo", "PairRecord", "SyncStatus", "ready"]


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """What does not change while the agent runs."""

    node_id: str
    incarnation: int
    started_ns: int  # wall clock, ns
    sync: str  # gossip | master | none
    backend: str  # xdp | memory
    iface: str | None
    steer_threshold: float  # packets/s above which a proxy is overloaded (T_W × capacity)


@dataclass(frozen=True, slots=True)
class PairRecord:
    """One pair's mesh-wide view (``GET /v1/records``): addresses as 16 bytes."""

    src: bytes
    dst: bytes
    ts1: int
    ts2: int
    c: int
    origins: int


class SyncStatus(Protocol):
    """The sync loop's record (``xpro_mesh.agent.syncer.SyncReport``)."""

    @property
    def cycles(self) -> int: ...
    @property
    def full_cycles(self) -> int: ...
    @property
    def last_duration_s(self) -> float: ...
    @property
    def failures(self) -> int: ...
    @property
    def last_error(self) -> str: ...


class Feeder(Protocol):
    """A data path that takes packets from userspace (the memory backend)."""

    def feed(self, src: bytes, dst: bytes, now: int) -> Verdict: ...

    def read_stats(self) -> Stats: ...


class AgentView(Protocol):
    """The agent as the API reads and drives it."""

    @property
    def info(self) -> NodeInfo: ...

    @property
    def api_token(self) -> str | None: ...

    @property
    def thresholds(self) -> Thresholds: ...

    def members(self) -> Sequence[Member]:
        """Every member the mesh knows (none without a mesh), this node included."""
        ...

    def mesh_counters(self) -> MeshCounters | None: ...

    def sync_status(self) -> SyncStatus: ...

    def table_size(self) -> tuple[int, int]:
        """(pairs, rows) held in the replicated state."""
        ...

    def origin_summary(
        self, active_since: int | None = None
    ) -> dict[str, tuple[tuple[int, int], int, int]]:
        """Per origin held: (watermark version, rows, summed count); see
        :meth:`xpro_mesh.core.table.PairTable.origin_summary`."""
        ...

    def top_pairs(self, dst: bytes | None, limit: int) -> tuple[Sequence[PairRecord], int]:
        """The ``limit`` mesh-wide pair views with the largest counts (towards
        ``dst`` only, when given), largest first, and how many pairs matched."""
        ...

    def stats(self) -> Stats:
        """The data path's counters as last read."""
        ...

    def load(self) -> Workload | None: ...

    def warnings(self) -> int: ...

    def steering(self) -> Steering: ...

    def proxies(self) -> Sequence[ProxyEntry]:
        """The live proxies with their dispersion weights (``GET /v1/proxies``)."""
        ...

    def dispersion(self) -> Dispersion:
        """The dispersion rules' state on this node (weights, change counts)."""
        ...

    def measured_here(self) -> Measured | None:
        """This node's own load window, with the figures that are not gossiped."""
        ...

    def feeder(self) -> Feeder | None:
        """The memory data path, or None (``POST /v1/feed`` is then 404)."""
        ...

    def note_stats(self, stats: Stats) -> None:
        """Fresh data path counters (read by the API after a feed)."""
        ...

    async def set_thresholds(self, thresholds: Thresholds) -> None: ...

    async def publish_config(
        self, thresholds: Thresholds | None, action: str | None, allow: list[str] | None
    ) -> dict[str, Any]:
        """A new mesh-wide configuration version (agent/mesh_config.py)."""
        ...


NOT_READY = "starting: the first map sync (the mesh's view into the data path) has not run yet"


def ready(agent: AgentView) -> bool:
    """Whether the agent has completed one map sync since it started: in
    gossip after a peer answered its first digest (or none did within
    ``FIRST_PULL_ROUNDS`` intervals), in master after one read of M_DB.
    Before it, a restarted proxy's filter judges with no view, or with a
    view its previous life wrote: traffic moved to it then is judged
    by this proxy's counts alone, and a distributed attack passes. Later
    failures of the sync do not make it unready (the filter keeps its rules
    and last views, and flapping readiness would move traffic under an
    outage of M_DB); they are in ``/v1/status`` and ``/metrics``."""
    return agent.sync_status().cycles > 0
