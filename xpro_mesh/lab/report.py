"""A scenario's results for people and for programs: a rich table on the
terminal, the JSON document of issue 5, and a figure (attack packets/s at the
victim and good clients' success over time, one line per mode) as PNG and as
a self-contained HTML page (inline SVG and the table; no external assets).
"""

from __future__ import annotations

import html
import io
import json
from pathlib import Path
from typing import Any

from xpro_mesh.lab.metrics import ModeMetrics, SeriesPoint
from xpro_mesh.lab.plans import MODES, ScenarioPlan
from xpro_mesh.lab.results import ScenarioResult

__all__ = ["as_json", "print_table", "render_figure", "write_html", "write_json", "write_png"]

MODE_COLOURS = {
    "none": "#7f7f7f",
    "local": "#d62728",
    "master": "#9467bd",
    "gossip": "#2ca02c",
    "gossip-paper": "#ff7f0e",
}

METRIC_KEYS = (
    "attack_delivered_ratio",
    "attack_delivered_ratio_after_mitigation",
    "good_success_ratio",
    "good_latency_ms_p50",
    "good_latency_ms_p99",
    "time_to_mitigate_s",
)


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def _series(points: tuple[SeriesPoint, ...]) -> list[list[float | None]]:
    return [[p.t, _round(p.value, 3)] for p in points]


def mode_json(
    m: ModeMetrics,
    proxies: dict[str, dict[str, int]],
    wall_s: float,
    notes: tuple[str, ...],
    extra: dict[str, Any] | None = None,
    mesh: dict[str, dict[str, Any]] | None = None,
    dispersion: dict[str, Any] | None = None,
) -> dict[str, Any]:
    mesh = mesh or {}
    doc = {
        "attack_delivered_ratio": _round(m.attack_delivered_ratio),
        "attack_delivered_ratio_after_mitigation": _round(
            m.attack_delivered_ratio_after_mitigation
        ),
        "good_success_ratio": _round(m.good_success_ratio),
        "good_latency_ms_p50": _round(m.good_latency_ms_p50, 3),
        "good_latency_ms_p99": _round(m.good_latency_ms_p99, 3),
        "time_to_mitigate_s": m.time_to_mitigate_s,
        "time_to_mitigate_by_block_s": m.time_to_mitigate_by_block,
        "good_success_ratio_under_attack": _round(m.good_success_ratio_under_attack),
        "good_success_by_group": {k: _round(v) for k, v in m.good_success_by_group.items()},
        "attack_sent": m.attack_sent,
        "attack_delivered": m.attack_delivered,
        "good_requests": m.good_requests,
        "good_lost_in_flight": m.good_lost_in_flight,
        "per_proxy": proxies,
        "wall_s": wall_s,
        "notes": list(notes),
        "phases": {
            label: {
                "start_s": ph.start,
                "stop_s": ph.stop,
                "attack_sent": ph.attack_sent,
                "attack_delivered": ph.attack_delivered,
                "attack_delivered_ratio": _round(ph.attack_delivered_ratio),
                "attack_delivered_ratio_by_block": {
                    k: _round(v) for k, v in ph.attack_delivered_ratio_by_block.items()
                },
                "good_requests": ph.good_requests,
                "good_success_ratio": _round(ph.good_success_ratio),
                "good_lost_in_flight": ph.good_lost_in_flight,
                "time_to_remitigate_s": ph.time_to_remitigate_s,
                "attack_delivered_ratio_after_remitigation": _round(
                    ph.attack_delivered_ratio_after_remitigation
                ),
                "good_latency_ms_p50": _round(ph.good_latency_ms_p50, 3),
                "good_latency_ms_p99": _round(ph.good_latency_ms_p99, 3),
                **({"mesh": mesh[label]} if label in mesh else {}),
            }
            for label, ph in m.phases.items()
        },
        "series": {
            "attack_pps_at_victim": _series(m.attack_pps),
            "attack_pps_sent": _series(m.attack_sent_pps),
            "good_success": _series(m.good_success),
        },
    }
    if extra is not None:
        doc["botnet"] = extra
    if dispersion is not None:
        doc["dispersion"] = dispersion
    return doc


def as_json(result: ScenarioResult) -> dict[str, Any]:
    """``{"scenario", "params", "modes": {mode: {metrics...}}}`` (issue 5)."""
    lab = result.lab
    params = dict(result.plan.params())
    lab_params: dict[str, int] = {
        "proxies": len(lab.proxies),
        "good_addresses": len(lab.good_addrs()),
        "bot_addresses": len(lab.bot_addrs()),
    }
    if result.plan.spoofed:
        lab_params["spoofed_sources"] = _bot_count(result)
    params["lab"] = lab_params
    params["wall_s"] = result.wall_s
    doc: dict[str, Any] = {
        "scenario": result.plan.name,
        "params": params,
        "modes": {
            name: mode_json(
                r.metrics, r.proxies, r.wall_s, r.notes, r.extra, r.phase_mesh, r.dispersion
            )
            for name, r in result.modes.items()
        },
    }
    if result.plan.compare:
        doc["overload"] = overload_summary(result)
    return doc


OVERLOAD_KEYS = (
    "max_mean_load_ratio_before",
    "max_mean_load_ratio_after",
    "rebalance_s",
    "weight_changes",
    "weight_changes_max_per_node",
    "weight_changes_after_follow",
)


def overload_summary(result: ScenarioResult) -> dict[str, Any]:
    """Issue 14's keys side by side: per mode, ``without`` (clients left on
    the loaded proxy) and ``with`` dispersion (``<mode>+dispersion``), the
    good clients' success and latency, and the acceptance checks."""
    out: dict[str, Any] = {}
    for name, r in result.modes.items():
        figures = (r.dispersion or {}).get("overload")
        if figures is None:
            continue
        mode, _, variant = name.partition("+")
        side = out.setdefault(mode, {}).setdefault("with" if variant else "without", {})
        side.update({k: figures[k] for k in OVERLOAD_KEYS})
        side.update(
            good_success_ratio=_round(r.metrics.good_success_ratio),
            good_latency_ms_p50=_round(r.metrics.good_latency_ms_p50, 3),
            good_latency_ms_p99=_round(r.metrics.good_latency_ms_p99, 3),
            good_success_after_follow=figures["good_success_after_follow"],
            weight_changes_bound=figures["weight_changes_bound"],
        )
    for sides in out.values():
        with_, without = sides.get("with"), sides.get("without")
        if with_ is None or without is None:
            continue
        after = with_["max_mean_load_ratio_after"]
        sides["acceptance"] = {
            "max_mean_load_ratio_after_le_1.3": after is not None and after <= 1.3,
            "weight_changes_bounded": with_["weight_changes_max_per_node"]
            <= with_["weight_changes_bound"],
            "good_success_not_worse": (with_["good_success_ratio"] or 0.0)
            >= (without["good_success_ratio"] or 0.0),
        }
    return out


def write_json(result: ScenarioResult, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(as_json(result), indent=2) + "\n")


# --- the table ------------------------------------------------------------------


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{v * 100:.1f} %"


def _ms(v: float | None) -> str:
    return "—" if v is None else f"{v:.1f}"


def _count(n: int) -> str:
    return f"{n / 1000:.1f}k" if n >= 10_000 else str(n)


def _secs(v: float | None, attack: bool) -> str:
    if v is None:
        return "never" if attack else "—"
    return f"{v:.1f} s"


def table_rows(result: ScenarioResult) -> list[list[str]]:
    """One row per mode, cells as shown (the terminal table and the HTML)."""
    rows = []
    attack = result.plan.attack_start is not None
    for name, r in result.modes.items():
        m = r.metrics
        drops = " ".join(
            f"{ns.removeprefix('xl-')} {_count(c.get('drop_pair', 0) + c.get('drop_dest', 0))}"
            for ns, c in sorted(r.proxies.items())
        )
        groups = ""
        if len(m.good_success_by_group) > 1:
            groups = (
                " (" + ", ".join(f"{k} {_pct(v)}" for k, v in m.good_success_by_group.items()) + ")"
            )
        rows.append(
            [
                name,
                _pct(m.attack_delivered_ratio) if attack else "—",
                _pct(m.attack_delivered_ratio_after_mitigation) if attack else "—",
                _secs(m.time_to_mitigate_s, attack),
                _pct(m.good_success_ratio) + groups,
                _ms(m.good_latency_ms_p50),
                _ms(m.good_latency_ms_p99),
                drops or "—",
            ]
        )
    return rows


def phase_headers(result: ScenarioResult) -> list[str]:
    return ["mode", *(f"{ph.label} ({ph.start:g}-{ph.stop:g} s)" for ph in result.plan.phases)]


def phase_rows(result: ScenarioResult) -> list[list[str]]:
    """Per mode and phase: the attack's share delivered (and, where the
    proxies differ, per proxy's block) and the good success — a chaos run's
    story in one table."""
    rows = []
    for name, r in result.modes.items():
        cells = [name]
        for ph in result.plan.phases:
            pm = r.metrics.phases.get(ph.label)
            if pm is None:
                cells.append("—")
                continue
            blocks = pm.attack_delivered_ratio_by_block
            spread = ""
            values = [v for v in blocks.values() if v is not None]
            if values and max(values) - min(values) > 0.05:
                spread = " [" + " ".join(_pct(v) for v in blocks.values()) + "]"
            cell = (
                f"attack {_pct(pm.attack_delivered_ratio)}{spread}, "
                f"good {_pct(pm.good_success_ratio)}"
            )
            if pm.good_lost_in_flight:
                cell += f" ({pm.good_lost_in_flight} lost in flight with a dead proxy)"
            if pm.time_to_remitigate_s is not None and pm.time_to_remitigate_s > 0:
                cell += (
                    f", cut again after {pm.time_to_remitigate_s:g} s "
                    f"({_pct(pm.attack_delivered_ratio_after_remitigation)} from then)"
                )
            elif pm.attack_sent and pm.time_to_remitigate_s is None:
                cell += ", not cut again"
            if pm.good_latency_ms_p50 is not None and pm.good_latency_ms_p99 is not None:
                cell += f", p50/p99 {pm.good_latency_ms_p50:.1f}/{pm.good_latency_ms_p99:.1f} ms"
            conv = r.phase_mesh.get(ph.label, {})
            if conv.get("rounds_to_converge") is not None:
                cell += f", members settled in {conv['rounds_to_converge']} rounds"
            if conv.get("rows_rounds_to_catch_up") is not None:
                cell += f", rows in {conv['rows_rounds_to_catch_up']}"
            if conv.get("agent_up_s") is not None:
                cell += f" (agent up after {conv['agent_up_s']:.1f} s)"
            if conv.get("count_error_max") is not None:
                cell += f", count error {conv['count_error_max']}"
            for fb in conv.get("failbacks", ()):
                ready = "ready" if fb["ready"] else "not ready"
                waited = f"{fb['waited_s']:.1f} s"
                cell += f", proxy {fb['proxy']}'s traffic back after {waited} ({ready})"
            cells.append(cell)
        rows.append(cells)
    return rows


BOTNET_HEADERS = (
    "mode",
    "offered pps",
    "achieved pps",
    "suspicions",
    "transitions",
    "agent CPU s (traffic)",
    "agent peak RSS MB",
)


def botnet_rows(result: ScenarioResult) -> list[list[str]]:
    """Per mode the sender's offered and achieved rate, the agents' member
    transitions (alive->suspect counted apart) and their CPU and memory."""
    rows = []
    for name, r in result.modes.items():
        b = r.extra or {}
        moves: dict[str, int] = {}
        for per_agent in b.get("member_transitions", {}).values():
            for k, n in per_agent.items():
                moves[k] = moves.get(k, 0) + n
        agents = b.get("agents", {})
        cpu = " ".join(f"{v['cpu_s_during_traffic']:.1f}" for _, v in sorted(agents.items()))
        rss = " ".join(f"{v['peak_rss_mb']:.0f}" for _, v in sorted(agents.items()))
        rows.append(
            [
                name,
                f"{b.get('offered_pps', 0):.0f}",
                f"{b.get('achieved_pps', 0):.0f} ({_pct(b.get('achieved_ratio'))})",
                str(b.get("suspicions", 0)) if agents else "—",
                ", ".join(f"{k} {n}" for k, n in sorted(moves.items())) or "—",
                cpu or "—",
                rss or "—",
            ]
        )
    return rows


FILTER_HEADERS = (
    "mode",
    "drop pair",
    "drop dest",
    "of which young (budget empty)",
    "of which before a slot",
    "admitted young",
    "new pairs",
    "no slot (map full)",
    "pair map peak fill",
)


def filter_rows(result: ScenarioResult) -> list[list[str]]:
    """Per filtering mode of a spoofed run, the filters' counters summed
    over the proxies: drops by reason, what the admission budget let in,
    and the pair map's pressure (peak fill: the fullest proxy's)."""
    rows = []
    for name, r in result.modes.items():
        f = (r.extra or {}).get("filters")
        if not f:
            continue
        t = f["total"]
        fill = max(f["pairs_peak_fill"].values(), default=None)
        peak = max(f["pairs_peak"].values(), default=0)
        rows.append(
            [
                name,
                _count(t["drop_pair"]),
                _count(t["drop_dest"]),
                _count(t["drop_admit"]),
                _count(t["probation_drops"]),
                _count(t["admitted"]),
                _count(t["new_pairs"]),
                _count(t["pair_full"]),
                f"{_count(peak)} ({_pct(fill)})",
            ]
        )
    return rows


TABLE_HEADERS = (
    "mode",
    "attack delivered",
    "after mitigation",
    "time to mitigate",
    "good success",
    "p50 ms",
    "p99 ms",
    "drops per proxy",
)


def print_table(result: ScenarioResult) -> None:
    from rich.console import Console
    from rich.table import Table

    plan = result.plan
    t = plan.thresholds
    table = Table(
        title=f"scenario {plan.name}: {plan.summary}",
        caption=(
            f"{len(result.lab.proxies)} proxies, {len(result.lab.good_addrs())} good clients, "
            f"{len(result.lab.bot_addrs())} bot addresses; T_F1 {t.t_f1} pps, T_F2 {t.t_f2} "
            f"pps, T_T2 {t.t_t2}, T_T3 {t.t_t3}, T_T4 {t.t_t4}, r {t.r}; "
            f"{plan.duration:g} s per mode, wall {result.wall_s:.0f} s"
        ),
    )
    for i, h in enumerate(TABLE_HEADERS):
        table.add_column(h, justify="left" if i in (0, 7) else "right")
    for row in table_rows(result):
        table.add_row(*row)
    probe = Console()
    console = probe if probe.is_terminal else Console(width=140)
    console.print(table)
    if plan.phases:
        faults = "; ".join(f.describe() for f in plan.faults)
        phases = Table(
            title="attack delivered and good success per phase "
            "([per proxy] where the proxies differ)",
            caption=f"faults: {faults}" if faults else None,
        )
        for h in phase_headers(result):
            phases.add_column(h, justify="left")
        for row in phase_rows(result):
            phases.add_row(*row)
        console.print(phases)
    if plan.spoofed:
        spoofed = Table(
            title="botnet: the sender, the members' states and the agents' cost (per proxy)"
        )
        for h in BOTNET_HEADERS:
            spoofed.add_column(h, justify="left" if h in ("mode", "transitions") else "right")
        for row in botnet_rows(result):
            spoofed.add_row(*row)
        console.print(spoofed)
        frows = filter_rows(result)
        if frows:
            filters = Table(title="the filters: drops by reason and the pair map (all proxies)")
            for h in FILTER_HEADERS:
                filters.add_column(h, justify="left" if h == "mode" else "right")
            for row in frows:
                filters.add_row(*row)
            console.print(filters)
    if any(r.dispersion for r in result.modes.values()):
        console.print(dispersion_table(result))
    for name, r in result.modes.items():
        for note in r.notes:
            console.print(f"[yellow]note[/] {name}: {note}")


def dispersion_rows(result: ScenarioResult) -> list[list[str]]:
    """One row per run whose good clients were on ``xpro_mesh.client``."""
    rows = []
    for name, r in result.modes.items():
        d = r.dispersion or {}
        o, f = d.get("overload"), d.get("failover")
        if o is not None:
            rows.append(
                [
                    name,
                    f"max/mean load {o['max_mean_load_ratio_before']} -> "
                    f"{o['max_mean_load_ratio_after']} (target <= 1.3), rebalance "
                    f"{o['rebalance_s']} s, weight changes {o['weight_changes']} "
                    f"(bound {o['weight_changes_bound']}), clients at the end {o['clients_end']}",
                ]
            )
        if f is not None:
            rows.append(
                [
                    name,
                    f"proxy {f['dead']} died at {f['down_at_s']} s: {f['recovered']}/"
                    f"{f['affected']} of its clients answered elsewhere after "
                    f"{f['failover_min_s']}-{f['failover_max_s']} s (median "
                    f"{f['failover_median_s']}; bound {f['bound_s']} s, target "
                    f"{f['target_s']} s: {'met' if f['met'] else 'missed'})",
                ]
            )
    return rows


def dispersion_table(result: ScenarioResult) -> Any:
    from rich.table import Table

    table = Table(title="dispersion: good clients on xpro_mesh.client")
    table.add_column("run", justify="left")
    table.add_column("figures", justify="left")
    for row in dispersion_rows(result):
        table.add_row(*row)
    return table


# --- the figure ------------------------------------------------------------------


def _legend_label(name: str, m: ModeMetrics, attack: bool) -> str:
    parts = []
    if attack and m.time_to_mitigate_s is None and m.attack_delivered_ratio is not None:
        parts.append(f"never mitigated, {_pct(m.attack_delivered_ratio)} of the attack delivered")
    elif attack and m.attack_delivered_ratio_after_mitigation is not None:
        parts.append(
            f"mitigated in {m.time_to_mitigate_s:.1f} s, then "
            f"{_pct(m.attack_delivered_ratio_after_mitigation)} delivered"
        )
    if m.good_success_ratio is not None:
        parts.append(f"good {_pct(m.good_success_ratio)}")
    return f"{name}: " + ", ".join(parts) if parts else name


def _steps(
    points: tuple[SeriesPoint, ...], scale: float = 1.0
) -> tuple[list[float], list[float | None]]:
    """x, y for a ``steps-post`` line whose last step is drawn to its end
    (a None value leaves a gap: no requests in that interval)."""
    if not points:
        return [], []
    xs = [p.t for p in points]
    ys = [None if p.value is None else p.value * scale for p in points]
    step = xs[1] - xs[0] if len(xs) > 1 else 1.0
    return [*xs, xs[-1] + step], [*ys, ys[-1]]


def _plot_modes(ax1: Any, ax2: Any, result: ScenarioResult) -> tuple[list[Any], float]:
    """One line per mode on both axes (later modes thinner, on top); the
    legend handles and the highest rate drawn."""
    attack = result.plan.attack_start is not None
    n = len(result.modes)
    peak = 0.0
    handles = []
    for i, (name, r) in enumerate(result.modes.items()):
        m = r.metrics
        style = {
            "color": MODE_COLOURS.get(name),
            "linewidth": 1.5 + 1.1 * (n - 1 - i),
            "zorder": 2 + i,
            "alpha": 0.9,
            "drawstyle": "steps-post",
            "solid_capstyle": "butt",
        }
        top = m.attack_pps if attack else m.good_pps
        xs, ys = _steps(top)
        (line,) = ax1.plot(xs, ys, label=_legend_label(name, m, attack), **style)
        handles.append(line)
        peak = max([peak, *(p.value or 0.0 for p in top)])
        xs, ys = _steps(m.good_success, scale=100.0)
        ax2.plot(xs, ys, **style)
    first = next(iter(result.modes.values()), None)
    if first is not None:
        offered = first.metrics.attack_sent_pps if attack else first.metrics.good_sent_pps
        xs, ys = _steps(offered)
        (line,) = ax1.plot(
            xs,
            ys,
            color="black",
            linestyle=":",
            linewidth=1.2,
            drawstyle="steps-post",
            zorder=20,
            label="sent by the bots" if attack else "sent by the clients",
        )
        handles.append(line)
        peak = max([peak, *(p.value or 0.0 for p in offered)])
    return handles, peak


def _mark_timeline(ax1: Any, ax2: Any, plan: ScenarioPlan) -> None:
    """The attack (or the crowd) shaded, the faults as vertical lines."""
    for ax in (ax1, ax2):
        if plan.attack_start is not None and plan.attack_stop is not None:
            ax.axvspan(plan.attack_start, plan.attack_stop, color="#f2dede", alpha=0.5, zorder=0)
        else:
            starts = [f.start for f in plan.flows if f.label == "crowd"]
            stops = [f.stop for f in plan.flows if f.label == "crowd"]
            if starts:
                ax.axvspan(min(starts), max(stops), color="#dde8f2", alpha=0.5, zorder=0)
        for at in sorted({f.at for f in plan.faults}):
            ax.axvline(at, color="black", linewidth=1, linestyle="-.", zorder=1)
        ax.grid(True, alpha=0.3)
    for at in sorted({f.at for f in plan.faults}):
        what = ", ".join(f"{f.action} {f.target}" for f in plan.faults if f.at == at)
        ax1.annotate(
            what,
            (at, 1.0),
            xycoords=("data", "axes fraction"),
            textcoords="offset points",
            xytext=(3, -10),
            fontsize=7.5,
        )


def _label_axes(ax1: Any, ax2: Any, plan: ScenarioPlan, peak: float) -> None:
    attack = plan.attack_start is not None
    t = plan.thresholds
    ax1.axhline(t.t_f2, color="#555555", linestyle="--", linewidth=1)
    ax1.annotate(
        f"T_F2 {t.t_f2} pps",
        (0.995, t.t_f2),
        xycoords=("axes fraction", "data"),
        textcoords="offset points",
        xytext=(0, 4),
        fontsize=8,
        color="#555555",
        ha="right",
    )
    ax1.set_ylabel("attack packets/s at the victim" if attack else "good requests/s at the victim")
    ax1.set_ylim(0, max(peak, t.t_f2) * 1.12 + 1)
    ax2.set_ylabel("good requests answered (%)")
    shaded = "the attack" if attack else "the crowd"
    ax2.set_xlabel(f"seconds (shaded: {shaded})")
    ax2.set_ylim(-3, 103)


def render_figure(result: ScenarioResult, fmt: str) -> bytes:
    """The figure as ``png`` or ``svg`` bytes (matplotlib, Agg).

    Modes that behave alike overlap; each later mode is drawn thinner on top
    of the earlier ones so that every line stays visible."""
    from xpro_mesh.extras import need

    matplotlib = need("matplotlib", "the lab's figures")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plan = result.plan
    fig, (ax1, ax2) = plt.subplots(
        2, 1, figsize=(10, 7.5), sharex=True, gridspec_kw={"height_ratios": [3, 2]}
    )
    handles, peak = _plot_modes(ax1, ax2, result)
    _mark_timeline(ax1, ax2, plan)
    _label_axes(ax1, ax2, plan, peak)
    fig.legend(
        handles=handles,
        loc="upper center",
        ncol=2,
        fontsize=8.5,
        frameon=False,
        bbox_to_anchor=(0.5, 0.955),
    )
    t = plan.thresholds
    fig.suptitle(
        f"{plan.name}: {len(result.lab.proxies)} proxies, "
        f"{_bot_count(result)} bot addresses, {len(result.lab.good_addrs())} "
        f"good clients; T_F1 {t.t_f1} pps, T_F2 {t.t_f2} pps",
        fontsize=11,
    )
    rows = (len(handles) + 1) // 2
    fig.tight_layout(rect=(0, 0, 1, 0.96 - 0.026 * rows))
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _bot_count(result: ScenarioResult) -> int:
    """The bot addresses the plan used (spoofed sources, or the lab's)."""
    if result.plan.spoofed:
        return sum(b.count for b in result.plan.spoofed)
    return len(result.lab.bot_addrs())


def write_png(result: ScenarioResult, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(render_figure(result, "png"))


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
th { background: #f4f4f4; } td:first-child, th:first-child { text-align: left; }
td:last-child { text-align: left; font-family: monospace; }
.params { font-size: 13px; color: #444; } code { background: #f4f4f4; padding: 0 3px; }
svg { max-width: 100%; height: auto; }
"""


def write_html(result: ScenarioResult, path: Path) -> None:
    """One file: the figure as inline SVG, the table, the parameters."""
    svg = render_figure(result, "svg").decode()
    svg = svg[svg.find("<svg") :]
    plan = result.plan
    head = "".join(f"<th>{html.escape(h)}</th>" for h in TABLE_HEADERS)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
        for row in table_rows(result)
    )
    modes = "".join(
        f"<li><b>{html.escape(n)}</b>: {html.escape(MODES.get(n, ''))}</li>" for n in result.modes
    )
    params = html.escape(json.dumps(as_json(result)["params"], indent=2))
    notes = "".join(
        f"<li><b>{html.escape(n)}</b>: {html.escape(note)}</li>"
        for n, r in result.modes.items()
        for note in r.notes
    )
    notes_block = f'<p>Notes:</p><ul class="params">{notes}</ul>' if notes else ""
    phase_block = ""
    if plan.phases:
        ph_head = "".join(f"<th>{html.escape(h)}</th>" for h in phase_headers(result))
        ph_body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
            for row in phase_rows(result)
        )
        faults = html.escape("; ".join(f.describe() for f in plan.faults))
        phase_block = (
            f"<p>Per phase (faults: {faults}):</p><table><tr>{ph_head}</tr>{ph_body}</table>"
        )
    page = _page(result, svg, head, body, modes, params, notes_block, phase_block)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page)


def _table_html(headers: tuple[str, ...] | list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _page(
    result: ScenarioResult,
    svg: str,
    head: str,
    body: str,
    modes: str,
    params: str,
    notes_block: str,
    phase_block: str,
) -> str:
    plan = result.plan
    botnet_block = ""
    if plan.spoofed:
        botnet_block = (
            "<p>The sender, the members' states and the agents' cost "
            "(per proxy):</p>" + _table_html(BOTNET_HEADERS, botnet_rows(result))
        )
        frows = filter_rows(result)
        if frows:
            botnet_block += (
                "<p>The filters: drops by reason and the pair map (all proxies):</p>"
                + _table_html(FILTER_HEADERS, frows)
            )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>xpro-mesh lab: {html.escape(plan.name)}</title><style>{_CSS}</style></head>
<body>
<h1>xpro-mesh lab — scenario <code>{html.escape(plan.name)}</code></h1>
<p>{html.escape(plan.summary)}. {html.escape(plan.notes)}</p>
{svg}
<table><tr>{head}</tr>{body}</table>
{phase_block}
{botnet_block}
<p class="params">Measured at the victim (attack packets counted per source block) and at the
good clients (request/response within the reply timeout). <i>Time to mitigate</i>: from attack
start until every proxy's attack stream stays at or below 5 % of what its bots send
(0.5 s windows); <i>after mitigation</i>: the delivered share of the attack from then on (the
whole attack when it never is). Drops per proxy: the filters' own counters.</p>
<ul class="params">{modes}</ul>
{notes_block}
<details><summary>parameters</summary><pre class="params">{params}</pre></details>
</body></html>
"""
