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
import gc
import json
import logging
import random
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from xpro_mesh.agent.config import (
    AgentConfig,
    Backend,
    ConfigError,
    SyncMode,
    Thresholds,
    reload_thresholds,
)
from xpro_mesh.agent.mapsync import PLAN_STEP, SyncPlan, plan_destinations, plan_sync_steps
from xpro_mesh.core.dispersion import Steering, plan_steering
from xpro_mesh.core.gossip_state import GossipState, MergeLimits
from xpro_mesh.datapath.backend import (
    MapBackend,
    OverloadWarning,
    PairKey,
    PairOp,
    PairRecord,
    Stats,
)
from xpro_mesh.datapath.config import XdpConfig
from xpro_mesh.mesh import auth
from xpro_mesh.mesh.membership import Membership, Workload, incarnation_from_wall_clock
from xpro_mesh.mesh.node import MeshNode, NodeTiming
from xpro_mesh.mesh.transport import UDP_MAX_PAYLOAD, UdpTransport

__all__ = ["Agent", "AgentError", "SyncReport", "open_backend", "xdp_config"]

log = logging.getLogger("xpro_mesh.agent")
T = TypeVar("T")

LOAD_INTERVAL_S = 2.0  # how often the workload W is measured and published
EVENT_POLL_S = 0.2  # overload warnings are forwarded at most this late
CLOCK_SYNC_S = 1.0  # kernel → cluster clock offset refresh
STEER_HYSTERESIS = 0.2  # an overloaded proxy returns below 80 % of the threshold
WEBHOOK_QUEUE = 256  # warnings waiting for the webhook; more are dropped (counted)
SYNC_FAILURE_LOG_S = 10.0  # a sync failing every cycle logs once per this
FIRST_PULL_ROUNDS = 10  # gossip intervals the first map sync waits for a peer's answer
FULL_SYNC_EVERY = 60  # map syncs between two full ones (the others skip quiet pairs)
FULL_SYNC_SHARE = 4  # a full sync when over 1/4 of the kernel's pairs changed anyway


class AgentError(Exception):
    """The agent cannot start; the message is the one line to print."""


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


def open_backend(config: AgentConfig) -> MapBackend:
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
                config.iface, config=xdp_config(config.thresholds), pin_root=config.pin_root
            )
            log.info("attached the XDP filter to %s in %s mode", config.iface, result.mode)
        maps = BpfMaps.open(loader.pin_dir_for(config.pin_root, config.iface))
        maps.set_config(xdp_config(config.thresholds, maps.get_config()))
        return maps
    except DatapathError as exc:
        raise AgentError(str(exc)) from None


@dataclass(slots=True)
class SyncReport:
    """The last map-sync cycle, for /v1/status and /metrics."""

    cycles: int = 0
    last_duration_s: float = 0.0
    last_pairs_read: int = 0
    last_ops: int = 0
    last_deletes: int = 0
    last_restarted: int = 0
    last_full: bool = False
    full_cycles: int = 0
    failures: int = 0
    last_error: str = ""


@dataclass(slots=True)
class AgentCounters:
    warnings: int = 0
    webhook_sent: int = 0
    webhook_dropped: int = 0
    reloads: int = 0
    reload_errors: int = 0
    loop_lag_ms: float = 0.0
    load: Workload | None = None
    steering: Steering | None = None
    stats: Stats = field(default_factory=Stats)


class Agent:
    """One proxy's agent. ``await Agent(config).run()`` until a signal."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        config_path: Path | None = None,
        backend: MapBackend | None = None,
        api_token: str | None = None,
        syncer_factory: Callable[[Agent], Any] | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.backend: MapBackend | None = backend
        self.api_token = api_token
        self.started_ns = time.time_ns()
        self.incarnation = incarnation_from_wall_clock(self.started_ns)
        self.thresholds = config.thresholds
        self.state = GossipState(config.node_id, self.incarnation, config.thresholds.params())
        self.limits = MergeLimits(
            max_skew_ns=config.max_skew_ns,
            max_rate_pps=config.limits.max_rate,
            max_pairs=config.limits.max_keys,
        )
        self.node: MeshNode | None = None
        self.sync = SyncReport()
        self.counters = AgentCounters()
        self.stop = asyncio.Event()
        self._syncer_factory = syncer_factory
        self._tasks: list[asyncio.Task[None]] = []
        self._written_last: dict[Any, PairRecord] = {}  # pairs the last map sync wrote
        self._kernel_pairs = 0  # pairs the kernel should hold after the last sync
        self.full_sync_every = FULL_SYNC_EVERY  # 0: every map sync is a full one
        self.plan_step = PLAN_STEP  # pairs planned between two yields to the loop
        self._since_full = FULL_SYNC_EVERY
        self._warnings: asyncio.Queue[OverloadWarning] = asyncio.Queue(WEBHOOK_QUEUE)
        self.recent_warnings: list[dict[str, Any]] = []

    # --- lifecycle -----------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        try:
            await self.start()
            await self.stop.wait()
            return 0
        finally:
            await self.shutdown()

    async def start(self) -> None:
        """Open the data path, the mesh and the API; start the tasks."""
        if self.backend is None:
            self.backend = await self._blocking(open_backend, self.config)
        syncer: Any = None
        if self.config.sync is SyncMode.GOSSIP:
            await self._start_mesh()
        elif self.config.sync is SyncMode.MASTER:
            from xpro_mesh.agent.master import MasterSync

            factory = self._syncer_factory or MasterSync.for_agent
            syncer = factory(self)
        from xpro_mesh.api.http import ApiServer

        self.api = ApiServer(self)
        await self.api.start()
        self._spawn(self._sync_loop(syncer), "map-sync")
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

    async def _start_mesh(self) -> None:
        cfg = self.config
        if cfg.key_file is None:
            raise AgentError("key_file: required for sync = gossip")
        try:
            keyring = auth.load_keyring(cfg.key_file)
        except (auth.KeyFileError, OSError) as exc:
            raise AgentError(f"key_file: {exc}") from None
        g = cfg.gossip
        timing = NodeTiming(
            interval_ns=g.interval_ns,
            fanout=g.fanout,
            max_message_bytes=g.max_message_bytes,
            replay_window_ns=g.replay_window_ns,
        )
        # The socket comes first (its port may be chosen by the kernel, and
        # the advertised address follows from it); datagrams that arrive
        # before the node exists are dropped like any lost datagram.
        receiver: list[Callable[[bytes, tuple[str, int]], None]] = []

        def deliver(data: bytes, addr: tuple[str, int]) -> None:
            if receiver:
                receiver[0](data, addr)

        try:
            # The socket takes any datagram; the node refuses (and counts)
            # those over gossip.max_message_bytes.
            transport = await UdpTransport.open(cfg.bind, deliver, max_datagram=UDP_MAX_PAYLOAD)
        except OSError as exc:
            raise AgentError(f"bind {cfg.bind[0]}:{cfg.bind[1]}: {exc.strerror or exc}") from None
        self._transport = transport
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
            state=self.state,
            membership=membership,
            keyring=keyring,
            timing=timing,
            limits=self.limits,
            rng=rng,
        )
        self.node.attach(transport)
        receiver.append(self.node.receive)
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
        api = getattr(self, "api", None)
        if api is not None:
            await api.stop()
        transport = getattr(self, "_transport", None)
        if transport is not None:
            transport.close()
        if self.backend is not None:
            with contextlib.suppress(Exception):
                self.backend.close()
        log.info("agent %s stopped", self.config.node_id)

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
            self.stop.set()

    async def _blocking(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    # --- configuration ---------------------------------------------------------------

    def reload(self) -> None:
        """SIGHUP: new thresholds from the config file, live in the filter."""
        if self.config_path is None:
            log.warning("SIGHUP ignored: the agent was started without --config")
            return
        result = reload_thresholds(self.config_path)
        if isinstance(result, ConfigError):
            self.counters.reload_errors += 1
            log.error("reload refused, keeping the running thresholds: %s", result)
            return
        asyncio.get_running_loop().create_task(self.set_thresholds(result))

    async def set_thresholds(self, thresholds: Thresholds) -> None:
        """Make ``thresholds`` live: the kernel's config map and the rows' window rules."""
        assert self.backend is not None
        backend = self.backend
        await self._blocking(
            lambda: backend.set_config(xdp_config(thresholds, backend.get_config()))
        )
        self.state.set_params(thresholds.params())
        self.thresholds = thresholds
        self.config = replace(self.config, thresholds=thresholds)
        self.counters.reloads += 1
        log.info("thresholds now %s", json.dumps(thresholds.as_json()))

    # --- loops -------------------------------------------------------------------------

    async def _sync_loop(self, syncer: Any) -> None:
        interval = self.config.gossip.interval_ns / 1e9
        if self.config.sync is SyncMode.GOSSIP:
            await self._await_first_pull(FIRST_PULL_ROUNDS * interval)
        failing = 0
        logged_at = 0.0
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                if self.config.sync is SyncMode.GOSSIP:
                    await self.sync_once()
                elif syncer is not None:
                    await syncer.cycle()
                    self.sync.cycles += 1
                else:
                    self.sync.cycles += 1
                self.sync.last_error = ""
            except Exception as exc:  # a failed cycle is counted, the next one retries
                self.sync.failures += 1
                error = f"{type(exc).__name__}: {exc}"
                failing += 1
                now = time.monotonic()
                # With M_DB gone every cycle fails: log the first failure, a
                # new error, then one line per SYNC_FAILURE_LOG_S (counted).
                if error != self.sync.last_error or now - logged_at >= SYNC_FAILURE_LOG_S:
                    log.warning(
                        "map sync failed: %s (%d cycles failing in a row)", error, failing
                    )
                    logged_at = now
                self.sync.last_error = error
            else:
                if failing:
                    log.info("map sync works again after %d failed cycles", failing)
                failing = 0
            self.sync.last_duration_s = time.monotonic() - started
            await self._sleep(max(0.0, interval - self.sync.last_duration_s))

    async def _await_first_pull(self, timeout_s: float) -> None:
        """Hold the first map sync until a peer has answered our digest.

        A restarted node gets the rows of its earlier life back from its peers
        and adopts them, but only for pairs it has not counted since it started
        (:meth:`GossipState.merge`). Its kernel maps may have outlived it (pinned
        maps keep counting while the agent restarts), so a map sync before the
        first pull would start fresh rows for those pairs and the window counted
        before the restart would be refused as ``own_origin``, lost. Waiting
        loses nothing: the kernel keeps the packets in ``dc`` until the sync.
        A node alone (the first of a new mesh) waits ``timeout_s`` once.
        """
        node = self.node
        if node is None:
            return
        started = time.monotonic()
        pulled = asyncio.ensure_future(node.pulled.wait())
        stopped = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait(
                {pulled, stopped}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            pulled.cancel()
            stopped.cancel()
        if node.pulled.is_set():
            log.info(
                "first map sync after a peer's answer (%.0f ms)", (time.monotonic() - started) * 1e3
            )
        elif not self.stop.is_set():
            log.info(
                "no peer answered within %.1f s: first map sync without the mesh's rows", timeout_s
            )

    async def sync_once(self) -> None:
        """One map-sync cycle (see :mod:`xpro_mesh.agent.mapsync`).

        Incremental when it can be: the kernel is scanned for pairs with new
        packets (without a Python object per quiet pair), the state names the
        pairs whose views moved, and only those are planned. A full cycle
        (every pair read and planned) runs first, every ``full_sync_every``
        cycles, after new thresholds, when the kernel holds a number of pairs
        the agent did not expect (an LRU eviction, a pair deleted by hand),
        after an op that failed, or when a large share of the pairs changed
        anyway. Both plan the same operations (``tests/test_agent_sync.py``).
        """
        with _gc_paused():
            await self._sync_cycle()

    async def _sync_cycle(self) -> None:
        backend = self.backend
        assert backend is not None
        state = self.state
        changed = state.take_changed()
        read = None
        if (
            changed is not None
            and self._since_full < self.full_sync_every
            and len(changed) * FULL_SYNC_SHARE <= self._kernel_pairs
            and hasattr(backend, "read_active_pairs")
        ):
            changed |= self._written_last.keys()
            read = await self._incremental_read(backend, changed)
        if read is None:
            changed = None
            pairs = await self._blocking(backend.read_pairs)
            total = len(pairs)
        else:
            pairs, total = read
        steps = plan_sync_steps(state, pairs, time.time_ns(), changed, self.plan_step)
        while True:
            try:
                next(steps)
            except StopIteration as done:
                plan: SyncPlan = done.value
                break
            await asyncio.sleep(0)  # the mesh runs between two steps
        deleted = 0
        if plan.deletes:
            deleted = await self._blocking(backend.delete_pairs, plan.deletes)
        report = await self._blocking(backend.apply, plan.pair_ops, ())
        skipped = {*report.restarted, *report.missing}
        touched = None if changed is None else {pair[1] for pair in changed}
        dest_ops = plan_destinations(state, plan.pair_ops, skipped, touched)
        if dest_ops:
            await self._blocking(backend.apply, (), dest_ops)
        self._kernel_pairs = total + report.created - deleted
        self._since_full = self._since_full + 1 if read is not None else 0
        if report.failed or len(plan.pair_ops) * FULL_SYNC_SHARE > self._kernel_pairs:
            # Which ops failed is unknown, or most pairs were written: read all next.
            self._since_full = self.full_sync_every
            self._written_last = {}
        else:
            self._remember_writes(pairs, plan.pair_ops, skipped)
        self.sync.cycles += 1
        self.sync.full_cycles += 1 if read is None else 0
        self.sync.last_full = read is None
        self.sync.last_pairs_read = len(pairs)
        self.sync.last_ops = len(plan.pair_ops) + len(dest_ops)
        self.sync.last_deletes = len(plan.deletes)
        self.sync.last_restarted = len(report.restarted)

    async def _incremental_read(
        self, backend: MapBackend, changed: set[Any]
    ) -> tuple[list[tuple[PairKey, PairRecord]], int] | None:
        """The kernel records an incremental cycle plans: the pairs with new
        packets, and those of the changed pairs (what the last cycle wrote is
        known without asking). None: run a full cycle instead."""
        active, total = await self._blocking(backend.read_active_pairs)
        has_pair = self.state.has_pair
        fresh = sum(1 for key, _ in active if not has_pair((key.src, key.dst)))
        if total != self._kernel_pairs + fresh or len(changed) * FULL_SYNC_SHARE > total:
            return None
        seen = {(key.src, key.dst) for key, _ in active}
        pairs = list(active)
        wanted: list[PairKey] = []
        written = self._written_last
        for pair in changed:
            if pair in seen:
                continue
            expected = written.get(pair)
            if expected is not None:
                pairs.append((PairKey(*pair), expected))
            else:
                wanted.append(PairKey(*pair))
        if len(wanted) * FULL_SYNC_SHARE > total:
            return None
        if wanted:
            pairs += await self._blocking(backend.lookup_pairs, wanted)
        return pairs, total

    def _remember_writes(
        self,
        pairs: list[tuple[PairKey, PairRecord]],
        ops: tuple[PairOp, ...],
        skipped: set[PairKey],
    ) -> None:
        """What each applied pair op left in the kernel (the backend's apply
        rules with no packet since): the next incremental cycle re-checks those
        pairs (their new ts2 can trigger the T_T4 rule) without a lookup. A
        packet since sets dc, and the scan for new packets finds the pair."""
        read = {key: rec for key, rec in pairs} if ops else {}
        written: dict[Any, PairRecord] = {}
        for op in ops:
            if op.key in skipped:
                continue
            rec = read.get(op.key)
            if op.expect_ts1 is None or rec is None:
                after = PairRecord(op.ts1, op.ts2, op.c_delta, 0, 0)
            else:
                after = PairRecord(op.ts1, max(rec.ts2, op.ts2), rec.c + op.c_delta, 0, 0)
            written[(op.key.src, op.key.dst)] = after
        self._written_last = written

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), timeout=seconds)

    async def _load_loop(self) -> None:
        """Measure W (packets/s in, drop ratio, loop lag) and publish it."""
        assert self.backend is not None
        backend = self.backend
        prev = await self._blocking(backend.read_stats)
        prev_t = time.monotonic()
        while not self.stop.is_set():
            expected = time.monotonic() + LOAD_INTERVAL_S
            await self._sleep(LOAD_INTERVAL_S)
            lag_ms = max(0.0, (time.monotonic() - expected) * 1000)
            stats = await self._blocking(backend.read_stats)
            now = time.monotonic()
            seen = _total(stats) - _total(prev)
            dropped = (stats.drop_pair + stats.drop_dest) - (prev.drop_pair + prev.drop_dest)
            load = Workload(
                packets_in_per_s=max(0.0, seen / max(now - prev_t, 1e-3)),
                drop_ratio=min(1.0, max(0.0, dropped / seen)) if seen > 0 else 0.0,
                loop_lag_ms=lag_ms,
            )
            self.counters.load = load
            self.counters.loop_lag_ms = lag_ms
            self.counters.stats = stats
            if self.node is not None:
                self.node.membership.set_load(load, time.monotonic_ns())
            self.counters.steering = self.steering()
            prev, prev_t = stats, now

    def steering(self) -> Steering:
        """Where new clients should go, from the live members' published loads
        (and ours); hysteresis keeps an overloaded proxy out until it recovers."""
        loads: dict[str, float] = {}
        if self.node is not None:
            for m in self.node.membership.live_members():
                if m.load is not None:
                    loads[m.node_id] = m.load.packets_in_per_s
        if self.counters.load is not None:
            loads[self.config.node_id] = self.counters.load.packets_in_per_s
        previous = self.counters.steering.overloaded if self.counters.steering else frozenset()
        return plan_steering(loads, float(self.config.steer_threshold), STEER_HYSTERESIS, previous)

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


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection during a map sync: it allocates an object
    or more per pair read and planned, which with a million pairs would
    trigger collections that walk the whole (long-lived) state again and
    again. Reference counting still frees everything; cycles wait for the
    next collection."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _total(stats: Stats) -> int:
    return stats.passed + stats.drop_pair + stats.drop_dest
