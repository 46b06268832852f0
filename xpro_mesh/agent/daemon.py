"""The agent: one process per proxy, a few long-lived tasks with one owner.

``Agent.run`` starts everything in one place and stops it in one place
(aiohttp's habit): the mesh node (membership and anti-entropy), the map-sync
loop (kernel counts → rows → mesh view → kernel), the load publisher, the
overload-warning forwarder and the HTTP API. SIGTERM/SIGINT drain and exit
(a graceful *leave* is gossiped so peers do not wait out a suspicion);
SIGHUP reloads the thresholds from the config file into the live filter.

Blocking map calls (syscalls over up to a million entries) run in the
default executor; the mesh state is only touched on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from xpro_mesh.agent import mesh_config, preflight
from xpro_mesh.agent.config import (
    AgentConfig,
    Backend,
    ConfigError,
    SyncMode,
    Thresholds,
    reload_thresholds,
)
from xpro_mesh.agent.errors import AgentError
from xpro_mesh.agent.gossip_sync import FIRST_PULL_ROUNDS, GossipSync
from xpro_mesh.agent.load import Dispersal, Measured, ProxyEntry, run_load_loop
from xpro_mesh.agent.syncer import LocalOnly, Syncer, SyncReport, run_cycle, run_sync_loop
from xpro_mesh.agent.vouching import open_vouching
from xpro_mesh.api.http import ApiServer
from xpro_mesh.api.view import Feeder, NodeInfo, PairRecord
from xpro_mesh.core.dispersion import Dispersion, Steering
from xpro_mesh.core.gossip_state import MergeLimits
from xpro_mesh.core.table import PairTable
from xpro_mesh.datapath.backend import MapBackend, OverloadWarning, RingStatus, Stats
from xpro_mesh.datapath.config import XdpConfig
from xpro_mesh.mesh import auth, identity
from xpro_mesh.mesh.membership import (
    Member,
    Membership,
    MemberState,
    Workload,
    incarnation_from_wall_clock,
)
from xpro_mesh.mesh.node import MeshCounters, MeshNode, NodeTiming, OriginLimits
from xpro_mesh.mesh.state import TableAdapter
from xpro_mesh.mesh.stream import TcpStreamTransport
from xpro_mesh.mesh.transport import UDP_MAX_PAYLOAD, UdpTransport

__all__ = ["Agent", "AgentError", "SyncReport", "open_backend", "xdp_config"]

log = logging.getLogger("xpro_mesh.agent")
T = TypeVar("T")

EVENT_POLL_S = 0.2  # overload warnings are forwarded at most this late
CLOCK_SYNC_S = 1.0  # kernel → cluster clock offset refresh
WEBHOOK_QUEUE = 256  # warnings waiting for the webhook; more are dropped (counted)
BIND_ATTEMPTS = 10  # bind port 0: free UDP ports tried for one whose number is free for TCP too


def xdp_config(thresholds: Thresholds, base: XdpConfig | None = None) -> XdpConfig:
    """The kernel's config from the agent's thresholds (other fields kept)."""
    base = base or XdpConfig()
    return replace(
        XdpConfig.from_params(thresholds.params()),
        policy=thresholds.policy,
        clock=base.clock,
        warn_interval=base.warn_interval,
        warn_per_cpu=base.warn_per_cpu,
    )


def open_backend(config: AgentConfig, replace: bool = False) -> MapBackend:
    """The data path this agent drives: the live BPF maps (attaching the
    program first if the interface has none) or the in-memory twin."""
    if config.backend is Backend.MEMORY:
        from xpro_mesh.datapath.memory import MemoryMaps

        return MemoryMaps(xdp_config(config.thresholds))
    from xpro_mesh.datapath import loader
    from xpro_mesh.datapath.bpf_maps import BpfMaps
    from xpro_mesh.datapath.errors import DatapathError

    assert config.iface is not None  # load_config insists
    try:
        state = loader.status(config.iface, pin_root=config.pin_root)
        if state.mode is None or not state.pinned:
            result = loader.attach(
                config.iface,
                config=xdp_config(config.thresholds),
                pin_root=config.pin_root,
                replace=replace,
            )
            log.info("attached the XDP filter to %s in %s mode", config.iface, result.mode)
            for note in result.notes:  # e.g. a bpffs mounted at pin_root
                log.warning("%s", note)
        maps = BpfMaps.open(loader.pin_dir_for(config.pin_root, config.iface), recover=True)
        maps.set_config(xdp_config(config.thresholds, maps.get_config()))
        return maps
    except DatapathError as exc:
        raise AgentError(str(exc)) from None


@dataclass(slots=True)
class AgentCounters:
    warnings: int = 0
    webhook_sent: int = 0
    webhook_dropped: int = 0
    reloads: int = 0
    reload_errors: int = 0
    loop_lag_ms: float = 0.0
    load: Workload | None = None
    stats: Stats = field(default_factory=Stats)


class Agent:
    """One proxy's agent. ``await Agent(config).run()`` until a signal.

    It owns the data path, the mesh node, the syncer of its sync mode, the API
    and the tasks; :meth:`start` makes them and :meth:`shutdown` closes them,
    each in one place. It is the API's :class:`~xpro_mesh.api.view.AgentView`.
    """

    def __init__(
        self,
        config: AgentConfig,
        *,
        config_path: Path | None = None,
        backend: MapBackend | None = None,
        api_token: str | None = None,
        syncer: Syncer | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.backend: MapBackend | None = backend
        self.api_token = api_token
        # Replace another XDP program on the interface (--replace); refused otherwise.
        self.replace_foreign = False
        # The mesh-wide configuration (agent/mesh_config.py), kept in state_dir.
        self.state_dir: Path | None = None
        self.mesh_config: mesh_config.MeshConfigKeeper | None = None
        self._config_tasks: set[asyncio.Task[None]] = set()
        self._file_at_start = mesh_config.static_part(config_path)
        self.started_ns = time.time_ns()
        self.incarnation = incarnation_from_wall_clock(self.started_ns)
        self.thresholds = config.thresholds
        self.state = PairTable(config.node_id, self.incarnation, config.thresholds.params())
        self.limits = MergeLimits(
            max_skew_ns=config.max_skew_ns,
            max_rate_pps=config.limits.max_rate,
            max_pairs=config.limits.max_keys,
            max_rows_per_origin=config.limits.max_keys_per_origin,
        )
        self.node: MeshNode | None = None
        self.api: ApiServer | None = None
        self.sync = SyncReport()
        self.counters = AgentCounters()
        self.stop = asyncio.Event()
        self.syncer: Syncer | None = syncer
        self._tasks: list[asyncio.Task[None]] = []
        self._transport: UdpTransport | None = None
        self._stream: TcpStreamTransport | None = None
        self._warnings: asyncio.Queue[OverloadWarning] = asyncio.Queue(WEBHOOK_QUEUE)
        self.recent_warnings: list[dict[str, Any]] = []
        self.dispersal = Dispersal(config.dispersion)
        self.failed = False  # a task died: run() exits non-zero

    # --- lifecycle -----------------------------------------------------------------

    async def run(self) -> int:
        """Start, serve until SIGTERM/SIGINT (or a task fails), shut down; the
        exit status is 0 after a signal, 1 after a failed task."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        try:
            await self.start()
            await self.stop.wait()
            return 1 if self.failed else 0
        finally:
            await self.shutdown()

    async def start(self) -> None:
        """Open the data path, the mesh and the API; start the tasks."""
        if self.backend is None:
            self.backend = await self._blocking(open_backend, self.config, self.replace_foreign)
        for warning in preflight.warnings(self.config, self.api_token):
            log.warning("%s", warning)
        if self.config.sync is SyncMode.GOSSIP:
            await self._start_mesh()
        syncer = self.ensure_syncer()
        self.mesh_config = mesh_config.install(self, self.state_dir)
        self.api = ApiServer(self, self.config.api)
        try:
            await self.api.start()
        except OSError as exc:
            host, port = self.config.api
            raise AgentError(f"api {host}:{port}: {exc.strerror or exc}") from None
        interval_s = self.config.gossip.interval_ns / 1e9
        self._spawn(run_sync_loop(syncer, self.sync, interval_s, self.stop), "map-sync")
        self._spawn(self._load_loop(), "load")
        self._spawn(self._events_loop(), "events")
        self._spawn(self._clock_loop(), "clock")
        if self.config.webhook_url:
            self._spawn(self._webhook_loop(self.config.webhook_url), "webhook")
        log.info(
            "agent %s up: sync=%s backend=%s api=%s:%d",
            self.config.node_id,
            self.config.sync,
            self.config.backend,
            *self.api.address,
        )

    def ensure_syncer(self) -> Syncer:
        """The syncer of the configured sync mode, made on first use (after the
        mesh, whose first pull the gossip syncer waits for, when there is one)."""
        if self.syncer is None:
            assert self.backend is not None
            self.syncer = self._make_syncer(self.backend)
        return self.syncer

    async def sync_once(self) -> None:
        """One map-sync cycle now (tests and benchmarks; the loop runs them)."""
        await run_cycle(self.ensure_syncer(), self.sync)

    def _make_syncer(self, backend: MapBackend) -> Syncer:
        """The syncer of the configured sync mode (the one place that picks it)."""
        params = self.thresholds.params()
        if self.config.sync is SyncMode.MASTER:
            from xpro_mesh.agent.master import MasterSync

            assert self.config.redis is not None  # load_config insists
            host, port = self.config.redis
            return MasterSync(backend, host, port, params)
        if self.config.sync is SyncMode.GOSSIP:
            interval_s = self.config.gossip.interval_ns / 1e9
            gossip = GossipSync(
                backend,
                self.state,
                pulled=self.node.pulled if self.node is not None else None,
                first_pull_timeout_s=FIRST_PULL_ROUNDS * interval_s,
                stop=self.stop,
            )
            gossip.vouching = open_vouching(backend, self.config.pin_root, self.config.iface)
            if self.node is not None:
                # Eager both ways: own rows gossiped right after the cycle
                # that made them, peers' rows written right after the merge.
                gossip.on_own_rows = self.node.round_soon
                self.node.on_merged = gossip.news.set
            return gossip
        return LocalOnly(params)

    async def _start_mesh(self) -> None:
        cfg = self.config
        if cfg.key_file is None:
            raise AgentError("key_file: required for sync = gossip")
        try:
            keyring = auth.load_keyring(cfg.key_file)
        except (auth.KeyFileError, OSError) as exc:
            raise AgentError(f"key_file: {exc}") from None
        node_key, trust = self._load_identity()
        g = cfg.gossip
        timing = NodeTiming(
            interval_ns=g.interval_ns,
            fanout=g.fanout,
            max_message_bytes=g.max_message_bytes,
            replay_window_ns=g.replay_window_ns,
            stream_after_datagrams=g.stream_after,
        )
        # The socket comes first (its port may be chosen by the kernel, and
        # the advertised address follows from it); datagrams that arrive
        # before the node exists are dropped like any lost datagram.
        receiver: list[Callable[[bytes, tuple[str, int]], None]] = []

        def deliver(data: bytes, addr: tuple[str, int]) -> None:
            if receiver:
                receiver[0](data, addr)

        frames: list[Callable[[bytes, tuple[str, int]], None]] = []
        # Push-pull bulk goes on TCP at the gossip port's number (memberlist's
        # split). With port 0 the kernel picks a free UDP port, whose number
        # may be taken for TCP: then pick again.
        for attempt in range(1 if cfg.bind[1] else BIND_ATTEMPTS):
            try:
                # The socket takes any datagram; the node refuses (and counts)
                # those over gossip.max_message_bytes.
                transport = await UdpTransport.open(cfg.bind, deliver, max_datagram=UDP_MAX_PAYLOAD)
            except OSError as exc:
                raise AgentError(
                    f"bind {cfg.bind[0]}:{cfg.bind[1]}: {exc.strerror or exc}"
                ) from None
            try:
                stream = await TcpStreamTransport.open(
                    (cfg.bind[0], transport.local_addr[1]),
                    lambda frame, peer: frames[0](frame, peer) if frames else None,
                    g.stream_limits(),
                )
                break
            except OSError as exc:
                transport.close()
                if cfg.bind[1] or attempt == BIND_ATTEMPTS - 1:
                    raise AgentError(
                        f"bind {cfg.bind[0]}:{transport.local_addr[1]} (tcp): {exc.strerror or exc}"
                    ) from None
        self._transport = transport
        self._stream = stream
        advertised = cfg.advertised
        host = advertised[0] if advertised else transport.local_addr[0]
        port = advertised[1] if advertised and advertised[1] else transport.local_addr[1]
        if host in ("0.0.0.0", "::", ""):
            raise AgentError(
                "advertise: the bind address is a wildcard; set advertise = HOST:PORT "
                "(the address peers reach this node at)"
            )
        rng = random.Random()
        membership = Membership(
            cfg.node_id,
            (host, port),
            incarnation=self.incarnation,
            now_ns=time.monotonic_ns(),
            rng=rng,
            params=g.membership_params(),
        )
        self.node = MeshNode(
            state=TableAdapter(self.state),
            membership=membership,
            keyring=keyring,
            timing=timing,
            limits=self.limits,
            rng=rng,
            node_key=node_key,
            trust=trust,
            origin_limits=OriginLimits(
                rows_per_second=float(cfg.limits.origin_rate),
                rows_burst=cfg.limits.origin_burst,
                uncovered_after_ns=cfg.limits.uncovered_after_ns,
            ),
        )
        if node_key is None:
            log.warning(
                "no node_key_file/trust_file: rows are not tied to their origin, "
                "any cluster-key holder can write any origin's rows (docs/threat-model.md)"
            )
        self.node.attach(transport, stream)
        receiver.append(self.node.receive)
        frames.append(self.node.receive_frame)
        seeds = [p for p in cfg.peers if p != membership.addr]
        self.node.join(seeds)
        self._spawn(self.node.run(self.stop), "mesh")

    async def shutdown(self) -> None:
        """Stop every task, leave the mesh, close the API and the data path."""
        self.stop.set()
        if self.node is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.node.leave(), timeout=1.0)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self.api is not None:
            await self.api.stop()
        if self._transport is not None:
            self._transport.close()
        if self._stream is not None:
            await self._stream.close()
        if self.backend is not None:
            with contextlib.suppress(Exception):
                self.backend.close()
        log.info("agent %s stopped", self.config.node_id)
        if self.config.iface is not None and self.config.backend is not Backend.MEMORY:
            log.warning(
                "%s",
                preflight.left_in_kernel(self.config),
                extra={"fields": {"event": "left_in_kernel"}},
            )

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._task_done)
        self._tasks.append(task)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self.stop.is_set():
            return
        exc = task.exception()
        if exc is not None:
            log.error("task %s failed: %r; stopping the agent", task.get_name(), exc)
            self.failed = True
            self.stop.set()

    async def _blocking(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    # --- what the API sees (xpro_mesh.api.view.AgentView) ---------------------------

    @property
    def info(self) -> NodeInfo:
        c = self.config
        return NodeInfo(
            node_id=c.node_id,
            incarnation=self.incarnation,
            started_ns=self.started_ns,
            sync=str(c.sync),
            backend=str(c.backend),
            iface=c.iface,
            steer_threshold=c.dispersion.t_w * c.dispersion.capacity,
        )

    def members(self) -> Sequence[Member]:
        return [] if self.node is None else list(self.node.membership.members())

    def mesh_counters(self) -> MeshCounters | None:
        return None if self.node is None else self.node.counters

    def sync_status(self) -> SyncReport:
        return self.sync

    def ring_status(self) -> RingStatus | None:
        """The filter's slot usage (map fill for /metrics), None before the maps open."""
        return self.backend.ring_status() if self.backend is not None else None

    def table_size(self) -> tuple[int, int]:
        return self.state.num_pairs, len(self.state)

    def origin_summary(
        self, active_since: int | None = None
    ) -> dict[str, tuple[tuple[int, int], int, int]]:
        return self.state.origin_summary(active_since)

    def top_pairs(self, dst: bytes | None, limit: int) -> tuple[list[PairRecord], int]:
        table = self.state
        ids = table.live_ids()
        if dst is not None:
            wanted = table.destination_ids(np.array([dst], "S16"))[0]
            ids = ids[table.destination_of(ids) == wanted] if wanted >= 0 else ids[:0]
        views = table.pair_views(ids)
        order = np.argsort(-views.c, kind="stable")[:limit]
        src, d = table.pair_keys(views.ids[order])
        top = [
            PairRecord(
                bytes(s).ljust(16, b"\0"),
                bytes(x).ljust(16, b"\0"),
                int(views.ts1[i]),
                int(views.ts2[i]),
                views.exact_c()[i] if views.overflow else int(views.c[i]),
                int(views.origins[i]),
            )
            for s, x, i in zip(src, d, order.tolist(), strict=True)
        ]
        return top, len(ids)

    def stats(self) -> Stats:
        return self.counters.stats

    def note_stats(self, stats: Stats) -> None:
        self.counters.stats = stats

    def load(self) -> Workload | None:
        return self.counters.load

    def warnings(self) -> int:
        return self.counters.warnings

    def policy_stats(self) -> tuple[str, int, int] | None:
        """The filter's action and its allowed and monitored packet counts."""
        return mesh_config.policy_stats(self)

    def feeder(self) -> Feeder | None:
        from xpro_mesh.datapath.memory import MemoryMaps

        return self.backend if isinstance(self.backend, MemoryMaps) else None

    # --- configuration ---------------------------------------------------------------

    def spawn_config_task(self, task: asyncio.Task[None]) -> None:
        """Hold a configuration task until it ends (no fire-and-forget)."""
        self._config_tasks.add(task)
        task.add_done_callback(self._config_tasks.discard)

    async def publish_config(
        self, thresholds: Thresholds | None, action: str | None, allow: list[str] | None
    ) -> dict[str, Any]:
        """``PUT /v1/config``: a new mesh-wide version (gossip spreads it); the
        document as it now is."""
        # Always the whole set: the next version carries every threshold as
        # this node runs them (a SIGHUP before any mesh version included).
        live = thresholds if thresholds is not None else self.thresholds
        changes = {"thresholds": live.as_json(), "action": action, "allow": allow}
        keeper = self.mesh_config
        if keeper is None:  # started without a keeper: this node alone
            if thresholds is not None:
                await self.set_thresholds(thresholds)
            return {"thresholds": self.thresholds.as_json()}
        doc = keeper.publish(**changes)
        await asyncio.gather(*self._config_tasks, return_exceptions=True)
        return doc.as_json()

    def reload(self) -> None:
        """SIGHUP: the key file again (a rotation step, no restart), and new
        thresholds from the config file, live in the filter. A bad file is one
        error line and changes nothing."""
        self.reload_keys()
        if self.config_path is None:
            log.warning("SIGHUP ignored: the agent was started without --config")
            return
        result = reload_thresholds(self.config_path)
        if isinstance(result, ConfigError):
            self.counters.reload_errors += 1
            log.error("reload refused, keeping the running thresholds: %s", result)
            return
        outside = mesh_config.changed_outside_thresholds(self.config_path, self._file_at_start)
        if outside:
            log.warning(
                "SIGHUP reloads [thresholds] only: the change to %s takes a restart", outside
            )
        keeper = self.mesh_config
        if keeper is not None and keeper.current.version > 0:
            # A mesh-wide document is in force: the file's new thresholds
            # become its next version, for every node (not this one alone).
            keeper.publish(thresholds=result.as_json())
            return
        self.spawn_config_task(asyncio.get_running_loop().create_task(self.set_thresholds(result)))

    def _load_identity(self) -> tuple[identity.NodeKey | None, identity.TrustList | None]:
        """The node key and trust list, both or neither; one line on failure.
        Our own id must be on the trust list under our own public key, or
        every peer would refuse what we sign."""
        cfg = self.config
        if cfg.node_key_file is None or cfg.trust_file is None:
            return None, None
        try:
            node_key = identity.load_node_key(cfg.node_key_file)
        except auth.KeyFileError as exc:
            raise AgentError(f"node_key_file: {exc}") from None
        try:
            trust = identity.load_trust_list(cfg.trust_file)
        except auth.KeyFileError as exc:
            raise AgentError(f"trust_file: {exc}") from None
        listed = trust.raw.get(cfg.node_id)
        if listed != node_key.public:
            what = "not listed" if listed is None else "listed under another public key"
            raise AgentError(
                f"trust_file: {cfg.trust_file}: this node ({cfg.node_id}) is {what}; "
                f"add the line: {cfg.node_id} {node_key.public.hex()}"
            )
        return node_key, trust

    def reload_keys(self) -> None:
        if self.node is not None and self.config.node_key_file is not None:
            try:
                node_key, trust = self._load_identity()
            except AgentError as exc:
                self.counters.reload_errors += 1
                log.error("identity reload refused, keeping the running keys: %s", exc)
            else:
                assert node_key is not None and trust is not None
                self.node.set_identity(node_key, trust)
                log.info("identity reloaded: %r, %d trusted nodes", node_key, len(trust))
        key_file = self.config.key_file
        if self.node is None or key_file is None:
            return
        try:
            keyring = auth.load_keyring(key_file)
        except auth.KeyFileError as exc:
            self.counters.reload_errors += 1
            log.error("key reload refused, keeping the running keys: %s", exc)
            return
        self.node.set_keyring(keyring)
        log.info("keys reloaded: %r", keyring)

    async def set_thresholds(self, thresholds: Thresholds) -> None:
        """Make ``thresholds`` live: the kernel's config map and the rows' window rules."""
        assert self.backend is not None
        backend = self.backend
        await self._blocking(
            lambda: backend.set_config(xdp_config(thresholds, backend.get_config()))
        )
        params = thresholds.params()
        if self.syncer is not None:
            self.syncer.set_params(params)  # the gossip syncer sets the table's
        self.state.set_params(params)
        self.thresholds = thresholds
        self.config = replace(self.config, thresholds=thresholds)
        self.counters.reloads += 1
        log.info("thresholds now %s", json.dumps(thresholds.as_json()))

    # --- loops -------------------------------------------------------------------------

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), timeout=seconds)

    async def _load_loop(self) -> None:
        """W measured and published, the dispersion rules stepped (agent/load.py)."""
        assert self.backend is not None
        backend = self.backend

        async def read_stats() -> Stats:
            stats = await self._blocking(backend.read_stats)
            self.counters.stats = stats
            return stats

        await run_load_loop(self.dispersal, read_stats, self._publish_load, self._live, self.stop)

    def _publish_load(self, load: Workload) -> None:
        self.counters.load = load
        self.counters.loop_lag_ms = load.loop_lag_ms
        if self.node is not None:
            self.node.membership.set_load(load, time.monotonic_ns())

    def _live(self) -> list[Member]:
        if self.node is not None:
            return self.node.membership.live_members()
        addr = self.api.address if self.api is not None else ("127.0.0.1", 1)
        return [Member(self.config.node_id, addr, 0, MemberState.ALIVE, 0, self.counters.load)]

    def steering(self) -> Steering:
        return self.dispersal.steering()

    def proxies(self) -> list[ProxyEntry]:
        return self.dispersal.proxies()

    def measured_here(self) -> Measured | None:
        return self.dispersal.measured

    def dispersion(self) -> Dispersion:
        return self.dispersal.state

    async def _events_loop(self) -> None:
        """Overload warnings (Algorithm 2 line 15) → structured log (+ webhook)."""
        assert self.backend is not None
        backend = self.backend
        while not self.stop.is_set():
            events = await self._blocking(backend.poll_events, 0)
            for w in events:
                self.counters.warnings += 1
                record = {
                    "event": "overload_warning",
                    "node": self.config.node_id,
                    "src": str(w.key.src_ip),
                    "dst": str(w.key.dst_ip),
                    "rate_pps": round(w.rate_pps, 1),
                    "count": w.c,
                    "window_ns": w.ts2 - w.ts1,
                    "suppressed": w.suppressed,
                }
                log.warning("overload warning", extra={"fields": record})
                self.recent_warnings.append(record)
                del self.recent_warnings[:-100]
                if self.config.webhook_url:
                    try:
                        self._warnings.put_nowait(w)
                    except asyncio.QueueFull:
                        self.counters.webhook_dropped += 1
            await self._sleep(EVENT_POLL_S)

    async def _webhook_loop(self, url: str) -> None:
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=3)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                w = await self._warnings.get()
                body = {
                    "node": self.config.node_id,
                    "src": str(w.key.src_ip),
                    "dst": str(w.key.dst_ip),
                    "rate_pps": round(w.rate_pps, 1),
                    "count": w.c,
                }
                try:
                    async with session.post(url, json=body) as resp:
                        if resp.status < 300:
                            self.counters.webhook_sent += 1
                        else:
                            self.counters.webhook_dropped += 1
                except (aiohttp.ClientError, TimeoutError):
                    self.counters.webhook_dropped += 1

    async def _clock_loop(self) -> None:
        assert self.backend is not None
        backend = self.backend
        while not self.stop.is_set():
            await self._blocking(backend.sync_clock)
            await self._sleep(CLOCK_SYNC_S)
