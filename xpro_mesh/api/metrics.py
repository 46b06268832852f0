"""The agent's Prometheus metrics, read from the agent at scrape time.

Names follow Prometheus' conventions so that ``promtool check metrics``
passes (tests/test_metrics_promtool.py): base units (seconds, bytes) in
the name, ``_total`` on counters (prometheus_client adds it), ``_info``
for build information, histograms for durations. The process metrics
(CPU seconds, resident memory, open fds) come from prometheus_client's
process and platform collectors.

Alert rules and the Grafana dashboard built on these names live in
deploy/prometheus/ and deploy/grafana/; a rename here must be made there
too (tests/test_deploy_lint.py checks that every metric they use exists).
"""

from __future__ import annotations

import platform
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
)

from xpro_mesh import __version__
from xpro_mesh.api.view import AgentView, ready
from xpro_mesh.core.params import NS_PER_S

__all__ = ["AgentCollector", "registry_for"]


def registry_for(agent: AgentView) -> CollectorRegistry:
    """A registry with the agent's metrics and this process's."""
    registry = CollectorRegistry()
    registry.register(AgentCollector(agent))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


def _counter(name: str, help_: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, help_, value=value)


class AgentCollector:
    """Everything ``/metrics`` says about the filter, the sync and the mesh."""

    def __init__(self, agent: AgentView) -> None:
        self.agent = agent

    def collect(self) -> Iterator[Any]:
        yield from self._build()
        yield from self._filter()
        yield from self._thresholds()
        yield from self._maps()
        yield from self._sync()
        yield from self._mesh()

    def _build(self) -> Iterator[Any]:
        info = self.agent.info
        build = InfoMetricFamily("xpro_build", "Version of the running agent")
        build.add_metric(
            [],
            {
                "version": __version__,
                "python": platform.python_version(),
                "backend": info.backend,
                "sync": info.sync,
                "node_id": info.node_id,
            },
        )
        yield build
        yield GaugeMetricFamily(
            "xpro_start_time_seconds",
            "When the agent started (Unix time)",
            value=info.started_ns / NS_PER_S,
        )

    def _filter(self) -> Iterator[Any]:
        a = self.agent
        stats = a.stats()
        packets = CounterMetricFamily(
            "xpro_packets", "Packets judged by the XDP filter, by verdict", labels=["verdict"]
        )
        packets.add_metric(["pass"], stats.passed)
        packets.add_metric(["drop_pair"], stats.drop_pair)
        packets.add_metric(["drop_dest"], stats.drop_dest)
        yield packets
        yield _counter("xpro_overload_warnings", "Overload warnings (Alg. 2 line 15)", a.warnings())
        yield _counter(
            "xpro_events_lost",
            "Overload events the kernel could not hand to the agent (ring full)",
            stats.events_lost,
        )
        yield _counter(
            "xpro_warnings_suppressed",
            "Overload warnings the kernel rate-limited",
            stats.warnings_suppressed,
        )
        yield _counter("xpro_window_restarts", "Pair windows restarted (Alg. 2)", stats.resets)
        skipped = CounterMetricFamily(
            "xpro_packets_unjudged",
            "Packets passed without a judgement, by reason",
            labels=["reason"],
        )
        for reason in ("not_ip", "malformed", "unconfigured", "pair_full", "dest_full", "unparsed"):
            skipped.add_metric([reason], getattr(stats, reason))
        yield skipped
        admission = CounterMetricFamily(
            "xpro_admission",
            "Young pairs' packets at a destination over T_F2: through its admission budget "
            "(admitted) or not (dropped; probation: new pairs dropped before taking a slot), "
            "or vouched by the mesh and passed by the fair share (vouched)",
            labels=["outcome"],
        )
        admission.add_metric(["admitted"], stats.admitted)
        admission.add_metric(["dropped"], stats.drop_admit)
        admission.add_metric(["probation"], stats.probation_drops)
        admission.add_metric(["vouched"], stats.vouched)
        yield admission
        unrenewed = CounterMetricFamily(
            "xpro_dest_views_unrenewed",
            "Packets of a destination under T_F2 on its live view whose view, over T_F2 at its "
            "last renewal, still held it over (held) or was past view_hold / view_hold_max "
            "(expired)",
            labels=["state"],
        )
        unrenewed.add_metric(["held"], stats.held_views)
        unrenewed.add_metric(["expired"], stats.expired_views)
        yield unrenewed
        yield from self._policy()
        load = a.load()
        yield GaugeMetricFamily(
            "xpro_packets_in_rate",
            "Packets per second arriving at this proxy (last load sample)",
            value=load.packets_in_per_s if load is not None else 0.0,
        )
        yield GaugeMetricFamily(
            "xpro_drop_ratio",
            "Share of this proxy's packets dropped (last load sample, 0..1)",
            value=load.drop_ratio if load is not None else 0.0,
        )
        yield GaugeMetricFamily(
            "xpro_loop_lag_seconds",
            "Event-loop lag of the agent",
            value=load.loop_lag_ms / 1000 if load is not None else 0.0,
        )

    def _policy(self) -> Iterator[Any]:
        """bpf/xpro_policy.h: the action in force, and what it passed."""
        read = getattr(self.agent, "policy_stats", None)
        policy = read() if read is not None else None
        if policy is None:
            return
        action, allowed, monitored = policy
        info = InfoMetricFamily("xpro_action", "The filter's action (enforce or monitor)")
        info.add_metric([], {"action": action})
        yield info
        packets = CounterMetricFamily(
            "xpro_policy_packets",
            "Packets the policy passed: allowed (allow-list, never judged) or monitored "
            "(judged drop, passed: the monitor action)",
            labels=["outcome"],
        )
        packets.add_metric(["allowed"], allowed)
        packets.add_metric(["monitored"], monitored)
        yield packets

    def _thresholds(self) -> Iterator[Any]:
        t = self.agent.thresholds
        rate = GaugeMetricFamily(
            "xpro_threshold_rate",
            "Rate thresholds in packets per second (t_f1: per pair, t_f2: per destination)",
            labels=["threshold"],
        )
        rate.add_metric(["t_f1"], t.t_f1)
        rate.add_metric(["t_f2"], t.t_f2)
        yield rate
        window = GaugeMetricFamily(
            "xpro_threshold_window_seconds",
            "Window thresholds T_T1..T_T4 in seconds",
            labels=["threshold"],
        )
        for name in ("t_t1", "t_t2", "t_t3", "t_t4"):
            window.add_metric([name], getattr(t, name) / NS_PER_S)
        yield window
        policy = InfoMetricFamily("xpro_policy", "Drop policy while a destination is over T_F2")
        policy.add_metric([], {"policy": str(t.policy)})
        yield policy

    def _maps(self) -> Iterator[Any]:
        held_pairs, held_rows = self.agent.table_size()
        yield GaugeMetricFamily("xpro_pairs", "Pairs in the mesh state", value=held_pairs)
        yield GaugeMetricFamily("xpro_rows", "Per-origin rows in the mesh state", value=held_rows)
        ring_status = getattr(self.agent, "ring_status", None)
        ring = ring_status() if callable(ring_status) else None
        if ring is None:
            return
        used = GaugeMetricFamily(
            "xpro_map_slots_used", "Slots in use in the filter's maps", labels=["map"]
        )
        used.add_metric(["pairs"], ring.pairs_in_use)
        used.add_metric(["dests"], ring.dests_in_use)
        yield used
        size = GaugeMetricFamily(
            "xpro_map_slots", "Capacity of the filter's maps in slots", labels=["map"]
        )
        size.add_metric(["pairs"], ring.pairs_max)
        size.add_metric(["dests"], ring.dests_max)
        yield size
        yield _counter(
            "xpro_map_late_packets",
            "Packets counted into a slot after it was expired",
            ring.late_packets,
        )

    def _sync(self) -> Iterator[Any]:
        sync = self.agent.sync_status()
        yield _counter("xpro_sync_cycles", "Map-sync cycles", sync.cycles)
        yield GaugeMetricFamily(
            "xpro_ready",
            "1 once the agent has written the mesh's view into its data path (GET /readyz)",
            value=1 if ready(self.agent) else 0,
        )
        yield _counter("xpro_sync_failures", "Map-sync cycles that failed", sync.failures)
        yield _counter(
            "xpro_map_evictions",
            "Idle pairs expired from the filter's maps by the agent",
            getattr(sync, "deletes_total", 0),
        )
        durations = getattr(sync, "durations", None)
        if durations is not None:
            yield HistogramMetricFamily(
                "xpro_sync_duration_seconds",
                "Duration of map-sync cycles",
                buckets=durations.buckets(),
                sum_value=durations.total_s,
            )

    def _mesh(self) -> Iterator[Any]:
        a = self.agent
        c = a.mesh_counters()
        members = GaugeMetricFamily("xpro_members", "Mesh members by state", labels=["state"])
        counts: dict[str, int] = {"alive": 0, "suspect": 0, "dead": 0}
        for m in a.members():
            counts[str(m.state)] = counts.get(str(m.state), 0) + 1
        for state, n in counts.items():
            members.add_metric([state], n)
        yield members
        if c is None:
            return
        yield _counter("xpro_gossip_rounds", "Anti-entropy rounds", c.rounds)
        for name, series, help_ in (
            ("xpro_messages_sent", c.sent, "Mesh messages sent, by kind"),
            ("xpro_messages_received", c.received, "Mesh messages received, by kind"),
            ("xpro_mesh_sent_bytes", c.sent_bytes, "Mesh bytes sent, by kind"),
            ("xpro_mesh_received_bytes", c.received_bytes, "Mesh bytes received, by kind"),
        ):
            fam = CounterMetricFamily(name, help_, labels=["kind"])
            for kind, n in sorted(series.items()):
                fam.add_metric([str(kind)], n)
            yield fam
        rejected = CounterMetricFamily(
            "xpro_messages_rejected", "Datagrams dropped unread, by reason", labels=["reason"]
        )
        for reason, n in sorted(c.rejected.items()):
            rejected.add_metric([reason], n)
        yield rejected
        peer_keys = GaugeMetricFamily(
            "xpro_peer_key_index",
            "Position on this node's keyring of the key each peer last sealed with (0: primary)",
            labels=["peer"],
        )
        for peer, index in sorted(c.peer_keys.items()):
            peer_keys.add_metric([peer], index)
        yield peer_keys
        rows = CounterMetricFamily(
            "xpro_rows_rejected", "Rows from peers refused, by reason", labels=["reason"]
        )
        for reason, n in sorted(c.rows_rejected.items()):
            rows.add_metric([reason], n)
        yield rows
        yield _counter("xpro_rows_accepted", "Rows merged from peers", c.rows_accepted)
