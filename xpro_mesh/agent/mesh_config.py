"""The agent's keeper of the mesh-wide configuration document.

It holds the newest :class:`~xpro_mesh.core.config_doc.MeshConfig` this
node has seen, offers it to one gossip target every round, adopts a newer
one from any peer (and answers an older one with its own, so a node that
was away catches up at its first exchange), persists it to ``path`` (JSON,
written to a temporary file and renamed: a crash leaves the old or the new
document, never half of one) and applies it live through ``apply``.

At start the persisted document, if any, wins over the file's thresholds:
the mesh's configuration is what an operator set last with ``PUT
/v1/config``, and ``agent.toml``'s ``[thresholds]`` are the defaults a new
mesh starts from (version 0, never offered).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from xpro_mesh.agent.config import AgentConfig, Backend, Thresholds
from xpro_mesh.core.config_doc import MeshConfig, decode
from xpro_mesh.core.params import Policy
from xpro_mesh.datapath.backend import MapBackend
from xpro_mesh.mesh.node import MeshNode


class Agent(Protocol):
    """What the keeper needs of agent/daemon.py's Agent (no import cycle)."""

    config: AgentConfig
    thresholds: Thresholds
    node: MeshNode | None
    backend: MapBackend | None

    async def set_thresholds(self, thresholds: Thresholds) -> None: ...

    def spawn_config_task(self, task: asyncio.Task[None]) -> None: ...


__all__ = [
    "MeshConfigKeeper",
    "apply_policy",
    "changed_outside_thresholds",
    "install",
    "policy_stats",
    "static_part",
    "thresholds_of",
]

log = logging.getLogger("xpro_mesh.agent")


class MeshConfigKeeper:
    def __init__(
        self,
        node_id: str,
        initial: MeshConfig,
        path: Path | None,
        apply: Callable[[MeshConfig], None],
    ) -> None:
        self.node_id = node_id
        self.path = path
        self.apply = apply
        self.current = initial
        self.peer_versions: dict[str, int] = {}
        self.rejected = 0
        stored = self._load()
        if stored is not None and stored.newer_than(self.current):
            self.current = stored

    def _load(self) -> MeshConfig | None:
        if self.path is None or not self.path.exists():
            return None
        doc = decode(self.path.read_bytes())
        if isinstance(doc, MeshConfig):
            return doc
        log.warning("ignoring the stored mesh configuration %s: %s", self.path, doc)
        return None

    def _store(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_bytes(self.current.encode())
        with contextlib.suppress(AttributeError):
            os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)

    def adopt(self, doc: MeshConfig) -> bool:
        """Make ``doc`` current if it is newer; True when it was."""
        if not doc.newer_than(self.current):
            return False
        self.current = doc
        self._store()
        log.info("mesh configuration version %d from %s: %s", doc.version, doc.origin,
                 json.dumps(doc.as_json()))  # fmt: skip
        self.apply(doc)
        return True

    def publish(self, **changes: object) -> MeshConfig:
        """A new version from this node (``PUT /v1/config``), spread by gossip."""
        doc = self.current.successor(self.node_id, **changes)
        self.adopt(doc)
        return doc

    # --- the node's ConfigHook -------------------------------------------------

    def offer(self) -> bytes | None:
        return self.current.encode() if self.current.version > 0 else None

    def receive(self, sender: str, document: bytes) -> bytes | None:
        doc = decode(document)
        if not isinstance(doc, MeshConfig):
            self.rejected += 1
            return None
        self.peer_versions[sender] = doc.version
        if self.adopt(doc):
            return None
        if self.current.newer_than(doc):
            return self.offer()  # the peer is behind: answer with ours
        return None


def thresholds_of(doc: MeshConfig, current: Thresholds) -> Thresholds:
    """The document's thresholds over ``current`` (ConfigError if invalid)."""
    values: dict[str, Any] = {}
    for key, value in doc.thresholds.items():
        values[key] = Policy(str(value)) if key == "policy" else value
    return dataclasses.replace(current, **values)


def apply_policy(agent: Agent, doc: MeshConfig) -> None:
    """The action and the allow-list into the live filter's policy maps (the
    pinned ones under XDP, the twin's :class:`MemoryPolicy` in memory)."""
    from xpro_mesh.datapath.policy import Action, PolicyMaps

    config = agent.config
    if config.backend is Backend.MEMORY:
        from xpro_mesh.datapath.memory import MemoryMaps

        if isinstance(agent.backend, MemoryMaps):
            agent.backend.policy.set_allow_list(doc.allow)
            agent.backend.policy.set_action(Action(doc.action), doc.version)
        return
    if config.iface is None:
        return
    from xpro_mesh.datapath import loader

    with PolicyMaps.open(loader.pin_dir_for(config.pin_root, config.iface)) as maps:
        maps.set_allow_list(doc.allow)
        maps.set_action(Action(doc.action), doc.version)


def policy_stats(agent: Agent) -> tuple[str, int, int] | None:
    """The live filter's (action, allowed, monitored): the kernel's policy
    maps under XDP (None when they cannot be read, e.g. not yet attached),
    the twin's :class:`MemoryPolicy` in memory."""
    from xpro_mesh.datapath.errors import DatapathError
    from xpro_mesh.datapath.memory import MemoryMaps
    from xpro_mesh.datapath.policy import PolicyMaps

    if isinstance(agent.backend, MemoryMaps):
        policy = agent.backend.policy
        (action, _version), stats = policy.action(), policy.stats()
        return str(action), stats.allowed, stats.monitored
    config = agent.config
    if config.backend is not Backend.XDP or config.iface is None:
        return None
    from xpro_mesh.datapath import loader

    try:
        with PolicyMaps.open(loader.pin_dir_for(config.pin_root, config.iface)) as maps:
            (action, _version), stats = maps.action(), maps.stats()
    except (DatapathError, OSError):
        return None
    return str(action), stats.allowed, stats.monitored


def install(agent: Agent, state_dir: Path | None) -> MeshConfigKeeper:
    """A keeper for ``agent``, hooked to its mesh node (if it gossips), the
    stored document applied now if it is newer than the file's thresholds."""
    initial = MeshConfig(0, agent.config.node_id, dict(agent.thresholds.as_json()))
    loop = asyncio.get_running_loop()

    def apply(doc: MeshConfig) -> None:
        async def run() -> None:
            try:
                await agent.set_thresholds(thresholds_of(doc, agent.thresholds))
                await asyncio.to_thread(apply_policy, agent, doc)
            except Exception as exc:  # a bad document must not stop the agent
                log.error("mesh configuration version %d not applied: %s", doc.version, exc)

        agent.spawn_config_task(loop.create_task(run(), name="mesh-config"))

    path = state_dir / "mesh-config.json" if state_dir is not None else None
    keeper = MeshConfigKeeper(agent.config.node_id, initial, path, apply)
    if keeper.current.version > 0:
        apply(keeper.current)
    if agent.node is not None:
        agent.node.config_hook = keeper
    return keeper


_THRESHOLDS_SECTION = re.compile(r"(?ms)^\[thresholds\].*?(?=^\[|\Z)")


def static_part(path: str | Path | None) -> str | None:
    """The config file without its ``[thresholds]`` section (None: no file)."""
    if path is None:
        return None
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    return _THRESHOLDS_SECTION.sub("", text)


def changed_outside_thresholds(path: str | Path, at_start: str | None) -> str:
    """Which top-level keys or sections of the file changed outside
    ``[thresholds]`` since the agent started ("" when none)."""
    now = static_part(path)
    if now is None or at_start is None or now == at_start:
        return ""
    before, after = set(at_start.splitlines()), set(now.splitlines())
    changed = sorted({ln.split("=")[0].strip() for ln in before ^ after if ln.strip()})
    return ", ".join(changed) or "the file"
