"""The lab's pure halves: the topology plan, the scenario plans (who sends
what, when, under which thresholds), mode parsing, and the report's JSON
shape and figure from a synthetic result. No namespaces."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import pytest

from xpro_mesh.cli import build_parser
from xpro_mesh.core.params import Policy
from xpro_mesh.lab import (
    agents,
    faults,
    metrics,
    plans,
    report,
    scenario,
    spoofed,
    supervise,
    topology,
)
from xpro_mesh.lab.scenario import ModeResult, ScenarioError, ScenarioResult


def test_plan_spreads_clients_and_bots_round_robin_over_proxies() -> None:
    lab = topology.plan(proxies=3, clients=12, bots=180)
    assert [p.ns for p in lab.proxies] == ["xl-p0", "xl-p1", "xl-p2"]
    assert len(lab.good_addrs()) == 12 and len(lab.bot_addrs()) == 180
    per_proxy = {s.ns: len(s.addrs) for s in lab.senders}
    assert per_proxy == {"xl-c0": 4, "xl-c1": 4, "xl-c2": 4, "xl-b0": 60, "xl-b1": 60, "xl-b2": 60}
    for s in lab.senders:
        block = lab.proxies[s.proxy].client_block.rsplit(".", 2)[0]
        assert all(a.startswith(block + ".") for a in s.addrs)
    assert len(set(lab.good_addrs()) | set(lab.bot_addrs())) == 192
    assert len(lab.namespaces()) == 3 + 3 + 6


def test_plan_survives_a_json_round_trip() -> None:
    lab = topology.plan(2, 3, 7)
    assert topology.LabPlan.from_json(lab.to_json()) == lab


@pytest.mark.parametrize("args", [(0, 1, 1), (51, 1, 1), (2, 197, 1), (2, 1, 311)])
def test_plan_refuses_sizes_it_cannot_address(args: tuple[int, int, int]) -> None:
    with pytest.raises(topology.LabError):
        topology.plan(*args)


def test_distributed_puts_each_bot_below_t_f1_and_the_mesh_above_t_f2() -> None:
    lab = topology.plan(3, 12, 180)
    plan = scenario.distributed(lab, 30)
    t = plan.thresholds
    bots = [f for f in plan.flows if f.role == "bots"]
    goods = [f for f in plan.flows if f.role == "good"]
    bot_rate = bots[0].rate
    total = sum(len(f.addrs) * f.rate for f in bots)
    per_proxy = max(len(f.addrs) * f.rate for f in bots)
    clients = sum(len(f.addrs) for f in plan.flows)
    assert bot_rate < t.t_f1
    assert per_proxy < t.t_f2 < total  # no proxy alone sees the overload; the mesh does
    assert goods[0].rate < t.t_f2 / clients < bot_rate  # the fair share separates them
    assert {f.proxy for f in bots} == {0, 1, 2}
    assert plan.attack_start == 6.0 and plan.attack_stop == 27.0
    assert all(f.start == 0.0 and f.stop == 30 for f in goods)


def test_low_and_slow_bots_send_at_the_good_clients_rate() -> None:
    lab = topology.plan(3, 12, 180)
    plan = scenario.low_and_slow(lab, 30)
    rates = {f.role: f.rate for f in plan.flows}
    assert rates["bots"] == rates["good"]
    total = sum(len(f.addrs) * f.rate for f in plan.flows if f.role == "bots")
    assert plan.thresholds.t_f2 < total


def test_heavy_hitter_is_one_address_above_t_f1() -> None:
    plan = scenario.heavy_hitter(topology.plan(3, 12, 180), 20)
    heavy = [f for f in plan.flows if f.role == "bots"]
    assert len(heavy) == 1 and len(heavy[0].addrs) == 1
    assert heavy[0].rate > plan.thresholds.t_f1


def test_flash_crowd_is_good_traffic_only_and_over_capacity() -> None:
    plan = scenario.flash_crowd(topology.plan(3, 12, 180), 30)
    assert {f.role for f in plan.flows} == {"good"}
    assert plan.attack_start is None
    crowd = sum(len(f.addrs) * f.rate for f in plan.flows if f.label == "crowd")
    assert crowd > plan.thresholds.t_f2


def test_every_scenario_builds_for_a_small_lab() -> None:
    lab = topology.plan(3, 3, 20)
    for spec in scenario.SCENARIOS.values():
        plan = spec.build(lab, 10)
        assert plan.flows and plan.duration == 10
        json.dumps(plan.params())


def test_chaos_crashes_an_agent_restarts_it_then_kills_the_master_for_good() -> None:
    lab = topology.plan(3, 12, 180)
    plan = scenario.chaos(lab, 40)
    base = scenario.distributed(lab, 40)
    assert plan.flows == base.flows and plan.thresholds == base.thresholds
    assert plan.attack_start is not None and plan.attack_stop is not None
    assert [(f.action, f.target) for f in plan.faults] == [
        ("kill", "agent:1"),
        ("restart", "agent:1"),
        ("kill", "redis"),  # Redis stays dead
    ]
    times = [f.at for f in plan.faults]
    assert plan.attack_start < times[0] < times[1] < times[2] < plan.attack_stop
    # The phases tile the attack, cut at the faults.
    edges = [(p.start, p.stop) for p in plan.phases]
    assert edges[0][0] == plan.attack_start and edges[-1][1] == plan.attack_stop
    assert all(a[1] == b[0] for a, b in itertools.pairwise(edges))
    assert [p.stop for p in plan.phases[:-1]] == times
    params = plan.params()
    assert len(params["faults"]) == 3 and len(params["phases"]) == 4  # type: ignore[arg-type]
    with pytest.raises(ScenarioError, match="at least 2 proxies"):
        scenario.chaos(topology.plan(1, 2, 4), 40)


def test_fault_targets_name_the_processes_a_mode_started(tmp_path: Path) -> None:
    lab = topology.plan(3, 3, 3)
    assert faults.fault_process("agent:2", lab) == "agent-xl-p2"
    assert faults.fault_process("redis", lab) == "redis"
    procs = supervise.Processes()
    log = tmp_path / "a.log"
    first = procs.start("agent-xl-p1", ["sh", "-c", "echo life; exec sleep 30"], log)

    def lives(n: int) -> None:
        deadline = time.monotonic() + 10
        while log.read_text().count("life") < n and time.monotonic() < deadline:
            time.sleep(0.01)

    try:
        lives(1)
        kill = scenario.Fault(1.0, "kill", "agent:1")
        assert faults.inject(kill, lab, procs) == "SIGKILL agent-xl-p1"
        assert first.returncode == -9
        # A target the mode does not run is left alone.
        assert faults.inject(scenario.Fault(1.0, "kill", "redis"), lab, procs) is None
        assert "agent-xl-p1" in procs.killed
        restart = scenario.Fault(2.0, "restart", "agent:1")
        assert faults.inject(restart, lab, procs) == "restarted agent-xl-p1"
        assert faults.inject(restart, lab, procs) is None  # already running
        ((name, second),) = procs.procs
        assert name == "agent-xl-p1" and second.poll() is None and second is not first
        assert "agent-xl-p1" not in procs.killed
        lives(2)
    finally:
        procs.stop()
    assert log.read_text() == "life\nlife\n"  # the second life appends to the first's log


def test_failover_takes_a_whole_proxy_down_mid_attack_and_brings_it_back() -> None:
    lab = topology.plan(3, 12, 180)
    plan = scenario.failover(lab, 40)
    assert plan.flows == scenario.distributed(lab, 40).flows
    assert [(f.action, f.target, f.via) for f in plan.faults] == [
        ("down", "proxy:1", 2),
        ("up", "proxy:1", None),
    ]
    assert plan.attack_start is not None and plan.attack_stop is not None
    assert plan.attack_start < plan.faults[0].at < plan.faults[1].at < plan.attack_stop
    assert [p.stop for p in plan.phases[:-1]] == [f.at for f in plan.faults]
    assert "move to proxy 2" in plan.faults[0].describe()
    assert plan.params()["faults"][0]["via"] == 2  # type: ignore[index]
    with pytest.raises(ScenarioError, match="at least 2 proxies"):
        scenario.failover(topology.plan(1, 2, 4), 40)


class RecordingNetwork:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int | None]] = []

    def down(self, index: int, via: int, moves: tuple[str, ...] = ("good", "bot")) -> None:
        self.calls.append(("down", index, via))

    def up(self, index: int) -> None:
        self.calls.append(("up", index, None))

    def failback(self, index: int, wait_ready: bool) -> None:
        self.calls.append(("failback", index, int(wait_ready)))

    def partition(self, groups: tuple[tuple[int, ...], ...]) -> None:
        self.calls.append(("partition", len(groups), None))

    def heal(self) -> None:
        self.calls.append(("heal", 0, None))

    def netem(self) -> str:
        self.calls.append(("netem", 0, None))
        return "tc netem (recorded)"

    def clear(self) -> None:
        self.calls.append(("clear", 0, None))


def test_gossip_path_faults_go_to_the_network_and_touch_no_process() -> None:
    lab = topology.plan(5, 5, 5)
    procs = supervise.Processes()
    net = RecordingNetwork()
    plan = scenario.chaos(topology.plan(5, 20, 300), 50)
    done = [faults.inject(f, lab, procs, net) for f in plan.faults if f.target == "gossip"]
    assert [c[0] for c in net.calls] == ["partition", "heal", "netem", "clear"]
    assert done == [
        "gossip path partitioned 0,1 | 2,3,4 (nftables)",
        "gossip path healed",
        "lossy gossip path: tc netem (recorded)",
        "netem off the gossip path",
    ]
    assert procs.procs == []


def test_a_proxy_going_down_kills_its_agent_and_coming_up_restarts_it(tmp_path: Path) -> None:
    lab = topology.plan(3, 3, 3)
    procs = supervise.Processes()
    net = RecordingNetwork()
    procs.start("agent-xl-p1", ["sleep", "30"], tmp_path / "a.log")
    try:
        down = scenario.Fault(1.0, "down", "proxy:1", via=2)
        done = faults.inject(down, lab, procs, net)
        assert done == "proxy 1 down (SIGKILL agent-xl-p1), its traffic through proxy 2"
        assert net.calls == [("down", 1, 2)] and "agent-xl-p1" in procs.killed
        done = faults.inject(scenario.Fault(2.0, "up", "proxy:1"), lab, procs, net)
        assert done == (
            "proxy 1 up (restarted agent-xl-p1), its traffic back once its agent is ready"
        )
        # links up, and the traffic waits for the restarted agent's readiness
        assert net.calls[-2:] == [("up", 1, None), ("failback", 1, 1)]
        assert procs.procs[0][1].poll() is None
    finally:
        procs.stop()


def test_thresholds_render_as_toml_for_xdp_and_the_agent(tmp_path: Path) -> None:
    import tomllib

    from xpro_mesh.agent.config import load_config
    from xpro_mesh.datapath.config import load_config_file

    lab = topology.plan(3, 12, 180)
    plan = scenario.distributed(lab, 30)
    xdp = tmp_path / "xdp.toml"
    xdp.write_text(plan.thresholds.as_toml(Policy.PAPER))
    config, _sizes = load_config_file(xdp)
    assert config.policy == "paper" and config.t_f2 == plan.thresholds.t_f2
    assert config.t_t2 == 500_000_000
    agent = tmp_path / "agent.toml"
    agents.write_agent_config(agent, plan, "fair-share")
    assert tomllib.loads(agent.read_text())["gossip"]["interval"] == scenario.GOSSIP_INTERVAL
    cfg = load_config(agent, {"iface": "c0"}, require_key_file=False)
    assert cfg.thresholds.t_f1 == plan.thresholds.t_f1
    assert str(cfg.thresholds.policy) == "fair-share"
    assert cfg.gossip.interval_ns == 100_000_000


def test_parse_modes_keeps_order_and_refuses_unknown() -> None:
    assert scenario.parse_modes("gossip, none,gossip") == ("gossip", "none")
    with pytest.raises(ScenarioError, match="unknown mode 'mesh'"):
        scenario.parse_modes("none,mesh")
    with pytest.raises(ScenarioError):
        scenario.parse_modes(" , ")


def _synthetic_result() -> ScenarioResult:
    lab = topology.plan(2, 2, 20)
    plan = scenario.distributed(lab, 10)
    bots = []
    arrivals: dict[str, dict[str, int]] = {}
    for block in (100, 101):
        bots.append(
            metrics.BotStream.from_json(
                {
                    "block": block,
                    "start": 2.0,
                    "stop": 9.0,
                    "sent_bins": {str(k): 20 for k in range(20, 90)},
                }
            )
        )
        arrivals[str(block)] = {str(k): (20 if k < 30 else 0) for k in range(20, 90)}
    victim = metrics.VictimArrivals.from_json({"bin_s": 0.1, "bins": {"attack": arrivals}})
    goods = [
        metrics.GoodRequests.from_json(
            {"label": "regular", "requests": [[t / 2, 0.0004] for t in range(20)]}
        )
    ]
    m = metrics.mode_metrics(victim, bots, goods, 10)
    modes = {
        "gossip": ModeResult(
            "gossip", m, {"xl-p0": {"pass": 5, "drop_pair": 0, "drop_dest": 9, "pairs": 3}}, 12.0
        ),
    }
    return ScenarioResult(plan=plan, lab=lab, modes=modes, wall_s=12.0)


def test_report_json_has_the_issue_shape() -> None:
    doc = report.as_json(_synthetic_result())
    assert set(doc) == {"scenario", "params", "modes"}
    assert doc["scenario"] == "distributed"
    g = doc["modes"]["gossip"]
    for key in report.METRIC_KEYS:
        assert key in g
    assert g["time_to_mitigate_s"] == pytest.approx(1.0)
    assert g["attack_delivered_ratio_after_mitigation"] == 0.0
    assert g["good_success_ratio"] == 1.0
    assert g["per_proxy"]["xl-p0"]["drop_dest"] == 9
    assert doc["params"]["thresholds"]["t_f1"] == scenario.T_F1
    json.dumps(doc)


def test_report_has_a_phase_table_for_a_chaos_run(tmp_path: Path) -> None:
    lab = topology.plan(2, 2, 20)
    plan = scenario.chaos(lab, 10)
    base = _synthetic_result()
    gossip = base.modes["gossip"]
    victim = metrics.VictimArrivals.from_json(
        {"bin_s": 0.1, "bins": {"attack": {"100": {str(k): 20 for k in range(40, 60)}}}}
    )
    bots = [
        metrics.BotStream.from_json(
            {
                "block": b,
                "start": 2.0,
                "stop": 9.0,
                "sent_bins": {str(k): 20 for k in range(20, 90)},
            }
        )
        for b in (100, 101)
    ]
    m = metrics.mode_metrics(
        victim, bots, [], 10, phases=[(p.label, p.start, p.stop) for p in plan.phases]
    )
    result = ScenarioResult(
        plan=plan,
        lab=lab,
        wall_s=1.0,
        modes={"gossip": ModeResult("gossip", m, gossip.proxies, 1.0)},
    )
    doc = report.as_json(result)
    phases = doc["modes"]["gossip"]["phases"]
    assert list(phases) == [p.label for p in plan.phases]
    assert [f["action"] for f in doc["params"]["faults"]] == ["kill", "restart", "kill"]
    rows = report.phase_rows(result)
    assert rows[0][0] == "gossip" and len(rows[0]) == 1 + len(plan.phases)
    assert any("[" in cell for cell in rows[0][1:])  # one proxy's block leaked, one did not
    report.write_html(result, tmp_path / "c.html")
    assert "Per phase" in (tmp_path / "c.html").read_text()
    report.write_png(result, tmp_path / "c.png")


def test_report_figure_and_page_are_self_contained(tmp_path: Path) -> None:
    result = _synthetic_result()
    report.write_png(result, tmp_path / "f.png")
    assert (tmp_path / "f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report.write_html(result, tmp_path / "f.html")
    page = (tmp_path / "f.html").read_text()
    assert "<svg" in page and "gossip" in page
    assert 'src="http' not in page and 'href="http' not in page
    report.write_json(result, tmp_path / "r.json")
    assert json.loads((tmp_path / "r.json").read_text())["scenario"] == "distributed"


def test_cli_knows_the_lab_commands() -> None:
    parser = build_parser()
    args = parser.parse_args(
        [
            "lab",
            "scenario",
            "distributed",
            "--modes",
            "none,gossip",
            "--duration",
            "12",
            "--json-out",
            "x.json",
        ]
    )
    assert args.name == "distributed" and args.duration == 12
    assert parser.parse_args(["lab", "up", "--proxies", "2"]).proxies == 2
    for action in ("down", "status"):
        assert callable(parser.parse_args(["lab", action]).func)


GOLDEN = Path(__file__).parent / "data" / "lab_plans.json"
GOLDEN_LABS = [(3, 12, 180), (3, 9, 90), (2, 2, 20), (5, 20, 300), (2, 3, 7)]


def _plan_doc(plan: scenario.ScenarioPlan) -> dict[str, object]:
    """What a plan says: its JSON parameters, every flow and the thresholds
    as both TOML bodies the runner writes."""
    return {
        "scenario": plan.name,
        "summary": plan.summary,
        **plan.params(),
        "flows": [asdict(f) for f in plan.flows],
        "xdp_toml": {p: plan.thresholds.as_toml(Policy(p)) for p in ("fair-share", "paper")},
    }


def test_every_scenario_plan_is_byte_for_byte_the_recorded_one() -> None:
    """The plans recorded before ``lab/`` was split by concern (the
    golden file): a refactoring of the lab changes no scenario."""
    golden = json.loads(GOLDEN.read_text())
    for size in GOLDEN_LABS:
        lab = topology.plan(*size)
        for name in sorted(golden_names := {k.split("/")[0] for k in golden["digests"]}):
            spec = scenario.SCENARIOS[name]
            for d in (spec.default_duration, 15.0, 10.0):
                key = f"{name}/{size[0]}x{size[1]}x{size[2]}/{d:g}"
                doc = json.loads(json.dumps(_plan_doc(spec.build(lab, d))))
                if key in golden["full"]:
                    assert doc == golden["full"][key], key
                text = json.dumps(doc, sort_keys=True).encode()
                assert hashlib.sha256(text).hexdigest() == golden["digests"][key], key
    assert golden_names <= set(scenario.SCENARIOS)


def test_botnet_spreads_spoofed_sources_in_a_block_per_proxy_outside_the_lab_24s() -> None:
    lab = topology.plan(3, 9, 90)
    plan = scenario.botnet(lab, 30, bots=6900, rate=1.0)
    blocks = plan.spoofed
    assert [b.count for b in blocks] == [2300, 2300, 2300]
    assert [b.cidr for b in blocks] == ["10.128.0.0/14", "10.132.0.0/14", "10.136.0.0/14"]
    assert [b.ns for b in blocks] == ["xl-b0", "xl-b1", "xl-b2"]  # frames to their own proxy
    assert blocks[0].first == "10.128.0.1" and blocks[0].last() == "10.128.8.252"
    lab_24s = {p.client_block.rsplit(".", 2)[0] for p in lab.proxies}
    assert not any(b.first.rsplit(".", 2)[0] in lab_24s for b in blocks)
    assert not [f for f in plan.flows if f.role == "bots"]  # no Python senders
    assert plan.agent_profile == "lan" and plan.pairs_max >= 2 * 2300


def test_botnet_t_f2_is_over_every_proxy_alone_and_under_the_mesh() -> None:
    for proxies, bots in [(3, 2100), (3, 60000), (4, 1001), (5, 20000)]:
        lab = topology.plan(proxies, 2 * proxies, proxies)
        plan = scenario.botnet(lab, 30, bots=bots)
        t = plan.thresholds
        per_proxy = max(b.pps for b in plan.spoofed)
        assert per_proxy < t.t_f2 < bots * 1.0
        assert plan.spoofed[0].rate < t.t_f1  # each source alone is innocent
        good = [f for f in plan.flows if f.role == "good"]
        # A bot's gap is under the idle gap T_T1, a good client's over it: each
        # good request opens a new window of a known pair, every bot's runs on.
        t_t1 = t.t_t1 / 10**9
        assert 1 / plan.spoofed[0].rate < t_t1 < 1 / good[0].rate
        # The fair share lies between a known good client's judged rate (one
        # packet over the idle gap before it) and a bot's, with margin.
        share = t.t_f2 / (bots + len(good))
        assert 1.15 * good[0].rate < share < 0.8 * plan.spoofed[0].rate
        # ... and polls inside the expiry horizon, so its slot stays known.
        assert 1 / good[0].rate < (t.t_t1 + t.t_t4) / 10**9
        # The budgets of all proxies admit at most 3 % of the attack.
        assert proxies * t.admit_rate <= 0.03 * bots * plan.spoofed[0].rate
    assert plans.botnet_t_f2(2100.0) == 840  # 0.4, as in distributed


def test_botnet_refuses_sizes_it_cannot_address() -> None:
    lab = topology.plan(3, 3, 3)
    for kwargs, flag in [
        ({"bots": 2}, "--bots"),
        ({"bots": 900_000}, "--bots"),
        ({"rate": 0.0}, "--rate-per-bot"),
        ({"proxies": 4}, "--proxies"),
        ({"proxies": 2}, "--proxies"),
    ]:
        with pytest.raises(ScenarioError, match=flag):
            scenario.botnet(lab, 30, **kwargs)  # type: ignore[arg-type]


def test_botnet_params_record_the_blocks_and_the_other_plans_do_not_change() -> None:
    lab = topology.plan(3, 9, 90)
    params = scenario.botnet(lab, 15, bots=2100).params()
    spoofed = params["spoofed"]
    assert spoofed["sources"] == 2100 and spoofed["offered_pps"] == 2100.0  # type: ignore[index]
    assert params["gossip_interval"] == "500ms"  # the lan profile's round
    assert "spoofed" not in scenario.distributed(lab, 15).params()


def test_trafgen_counts_the_source_through_the_block_and_nft_counts_each_block() -> None:
    plan = scenario.botnet(topology.plan(3, 3, 3), 30, bots=3000)
    b = plan.spoofed[1]
    cfg = spoofed.trafgen_config(b, "02:00:00:00:00:01", "02:00:00:00:00:02", "10.20.0.2", 9000)
    assert "saddr=dinc(0x0a840001, 0x0a8403e8)" in cfg  # 10.132.0.1 .. 10.132.3.232
    assert "dport=9000" in cfg and "0x41" in cfg  # the attack tag
    rules = spoofed.nft_ruleset(plan.spoofed)
    assert "ip saddr 10.132.0.0/14 counter name b132 drop" in rules
    assert "hook prerouting priority -300" in rules


def test_trafgen_writes_the_frames_the_config_describes(tmp_path: Path) -> None:
    """The real trafgen, into a pcap file (no network): every source of
    the block once per cycle, to the victim's port, checksums valid."""
    import shutil
    import struct

    if shutil.which("trafgen") is None:
        pytest.fail("trafgen (netsniff-ng) is not installed: scripts/setup.sh installs it")
    import subprocess

    b = scenario.botnet(topology.plan(3, 3, 3), 30, bots=30).spoofed[0]
    cfg = tmp_path / "t.cfg"
    cfg.write_text(
        spoofed.trafgen_config(b, "02:00:00:00:00:01", "02:00:00:00:00:02", "10.20.0.2", 9000)
    )
    pcap = tmp_path / "t.pcap"
    subprocess.run(
        ["trafgen", "--conf", str(cfg), "--dev", str(pcap), "--num", "20"],
        check=True,
        capture_output=True,
    )
    data, off, sources = pcap.read_bytes(), 24, []
    while off < len(data):
        incl = struct.unpack_from("<I", data, off + 8)[0]
        frame = data[off + 16 : off + 16 + incl]
        off += 16 + incl
        sources.append(".".join(str(x) for x in frame[26:30]))
        assert frame[36:38] == (9000).to_bytes(2, "big") and frame[42:43] == b"A"
        words = struct.unpack("!10H", frame[14:34])
        total = sum(words)
        assert (total & 0xFFFF) + (total >> 16) == 0xFFFF  # the IPv4 header checksum holds
    assert sources[:10] == [f"10.128.0.{i}" for i in range(1, 11)] and sources[10] == "10.128.0.1"


def test_member_transitions_are_read_from_the_agents_log_lines(tmp_path: Path) -> None:
    log = tmp_path / "agent.log"

    def line(second: int, msg: str) -> str:
        return json.dumps(
            {"ts": f"2026-12-01T10:00:{second:02d}.000Z", "level": "info", "msg": msg}
        )

    log.write_text(
        "\n".join(
            [
                line(1, "member p1: unknown -> alive"),
                line(2, "member p1: alive -> suspect"),
                line(3, "member p1: suspect -> alive"),
                line(4, "member p2: alive -> suspect"),
                line(9, "member p2: suspect -> dead"),  # after the traffic: the agents leaving
            ]
        )
        + "\nnot json\n"
    )
    from datetime import datetime

    t0 = datetime.fromisoformat("2026-12-01T10:00:00+00:00").timestamp()
    assert agents.member_transitions(log, t0, t0 + 5) == {"alive->suspect": 2, "suspect->alive": 1}
    assert agents.member_transitions(log)["suspect->dead"] == 1


def test_agent_usage_reads_cpu_and_peak_memory_from_proc(tmp_path: Path) -> None:
    procs = supervise.Processes()
    procs.start(
        "agent-xl-p0",
        [
            "python3",
            "-c",
            "x = bytearray(30 << 20); "
            "import time; t = time.process_time()\n"
            "while time.process_time() - t < 0.3: pass\n"
            "time.sleep(30)",
        ],
        tmp_path / "a.log",
    )
    usage = agents.Usage()
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            usage.sample(procs)
            figures = usage.as_json().get("xl-p0")
            if figures and figures["cpu_s"] >= 0.3 and figures["peak_rss_mb"] >= 30:
                break
            time.sleep(0.1)
    finally:
        procs.stop()
    assert figures is not None and figures["cpu_s"] >= 0.3 and figures["peak_rss_mb"] >= 30


def test_cli_takes_botnet_options_and_other_scenarios_refuse_them() -> None:
    args = build_parser().parse_args(
        ["lab", "scenario", "botnet", "--bots", "6900", "--rate-per-bot", "2", "--proxies", "3"]
    )
    assert (args.bots, args.rate_per_bot, args.proxies) == (6900, 2.0, 3)
    from xpro_mesh.lab import runner

    lab = topology.plan(3, 3, 3)
    if os.geteuid() == 0:
        with pytest.raises(ScenarioError, match="--bots is an option of scenario botnet"):
            runner.prepare(lab, "distributed", ["none"], 10, {"bots": 10})
        assert runner.prepare(lab, "botnet", ["none"], 10, {"bots": 300}).spoofed


def test_chaos_on_five_proxies_gives_each_fault_its_own_phase() -> None:
    """Issue 13: two of five proxies die at once and come back, an agent
    alone crashes and restarts, the gossip path splits 2 | 3 and heals,
    then turns lossy; last Redis dies. Each stretch is a phase."""
    lab = topology.plan(5, 20, 300)
    plan = scenario.chaos(lab, 50)
    assert plan == scenario.SCENARIOS["chaos"].build(lab, 50, proxies=5)
    assert plan.flows == scenario.distributed(lab, 50).flows
    assert [(f.action, f.target, f.via) for f in plan.faults] == [
        ("down", "proxy:1", 0),
        ("down", "proxy:3", 4),
        ("up", "proxy:1", None),
        ("up", "proxy:3", None),
        ("kill", "agent:2", None),
        ("restart", "agent:2", None),
        ("partition", "gossip", None),
        ("heal", "gossip", None),
        ("netem", "gossip", None),
        ("clear", "gossip", None),
        ("kill", "redis", None),
    ]
    assert plan.faults[6].groups == ((0, 1), (2, 3, 4))
    assert [p.label for p in plan.phases] == [
        "before",
        "proxies 1 and 3 dead",
        "proxies 1 and 3 back",
        "agent of proxy 2 down",
        "agent of proxy 2 back",
        "partition 0,1 | 2,3,4",
        "healed",
        "lossy gossip path",
        "Redis down",
    ]
    edges = [(p.start, p.stop) for p in plan.phases]
    assert edges[0][0] == plan.attack_start and edges[-1][1] == plan.attack_stop
    assert all(a[1] == b[0] for a, b in itertools.pairwise(edges))
    assert all(b - a >= 2.8 - 1e-9 for a, b in edges)  # at 50 s: every phase at least 2.8 s
    assert plan.params()["faults"][6]["groups"] == [[0, 1], [2, 3, 4]]  # type: ignore[index]
    with pytest.raises(ScenarioError, match="the lab has 3"):
        scenario.SCENARIOS["chaos"].build(topology.plan(3, 12, 180), 50, proxies=5)
    # On 3 proxies the old run stays as it was recorded.
    assert len(scenario.chaos(topology.plan(3, 12, 180), 50).faults) == 3


def test_a_partition_drops_only_packets_between_the_two_sides() -> None:
    rules = faults.partition_ruleset("10.20.0.10", ["10.20.0.12", "10.20.0.13"])
    assert "ip daddr 10.20.0.10 ip saddr { 10.20.0.12, 10.20.0.13 } drop" in rules
    assert "ip saddr 10.20.0.10 ip daddr { 10.20.0.12, 10.20.0.13 } drop" in rules
    assert "policy accept" in rules and "10.20.0.2" not in rules  # the victim untouched


def test_netem_hangs_from_a_band_fed_only_by_the_peers_addresses() -> None:
    cmds = faults.netem_commands(["10.20.0.11", "10.20.0.12"])
    assert cmds[1][-7:] == ["loss", "20%", "delay", "50ms", "20ms", "duplicate", "5%"]
    assert " ".join(cmds[1]).endswith("netem " + plans.NETEM)
    filters = [c for c in cmds if c[1] == "filter"]
    assert [c[c.index("dst") + 1] for c in filters] == ["10.20.0.11/32", "10.20.0.12/32"]
    assert all(c[-1] == faults.NETEM_BAND for c in filters)


def test_the_delay_queues_only_the_gossip_port_between_proxies_and_never_blackholes() -> None:
    from xpro_mesh.lab import delayer

    assert (delayer.DELAY_MS, delayer.JITTER_MS) == (50.0, 20.0)  # NETEM's delay 50ms 20ms
    assert "delay 50ms 20ms" in plans.NETEM
    script = delayer.queue_rules("10.20.0.10", ["10.20.0.11", "10.20.0.12"], 7946)
    queued = [line.split() for line in script.splitlines() if "NFQUEUE" in line]
    assert len(queued) == 4  # udp and tcp, to each peer
    for c in queued:
        assert c[c.index("-s") + 1] == "10.20.0.10"
        assert c[c.index("-d") + 1] in ("10.20.0.11", "10.20.0.12")
        assert c[c.index("--ports") + 1] == "7946"
        assert c[:2] == ["-A", "XL_DELAY"] and c[-1] == "--queue-bypass"  # no listener: passes
    assert "-A OUTPUT -j XL_DELAY" in script.splitlines()
    # the undo removes the jump and the lab's own chain
    assert {"-D OUTPUT -j XL_DELAY", "-X XL_DELAY"} <= set(delayer.unqueue_rules().splitlines())


def test_the_delayer_releases_each_packet_at_its_own_draw_not_in_arrival_order() -> None:
    from xpro_mesh.lab.delayer import Delayer

    d = Delayer(seed=3)
    dues = [d.hold(i, now=i * 0.001) for i in range(50)]
    assert all(0.030 <= due - i * 0.001 <= 0.070 for i, due in enumerate(dues))
    out = []
    for t in range(0, 200):
        out += d.release(t * 0.001)
    assert sorted(out) == list(range(50))
    assert out == sorted(range(50), key=lambda i: (dues[i], i))  # reordered, as netem's jitter
    assert out != list(range(50))


def _log(path: Path, lines: list[tuple[float, str]]) -> Path:
    from datetime import UTC, datetime

    path.write_text(
        "".join(
            json.dumps({"ts": datetime.fromtimestamp(t, UTC).isoformat(), "msg": m}) + "\n"
            for t, m in lines
        )
    )
    return path


def test_convergence_counts_rounds_to_the_last_membership_change(tmp_path: Path) -> None:
    t0 = 1_000_000.0
    logs = {
        "p0": _log(
            tmp_path / "0",
            [
                (t0 - 5, "member p1: unknown -> alive"),
                (t0 - 2, "member p1: alive -> dead"),
                (t0 + 0.25, "member p1: dead -> alive"),
            ],
        ),
        "p1": _log(tmp_path / "1", [(t0 + 0.31, "member p0: unknown -> alive")]),
    }
    conv = agents.convergence(logs, {"p0", "p1"}, t0, t0 + 3, 0.1)
    assert conv == {
        "membership_converged": True,
        "rounds_to_converge": 4,
        "seconds_to_converge": 0.31,
    }
    # p1 never heard of p0 again by then: not converged.
    late = agents.convergence(logs, {"p0", "p1"}, t0, t0 + 0.3, 0.1)
    assert late["membership_converged"] is False and late["rounds_to_converge"] is None


def test_spoofed_draws_each_proxys_sources_at_random_from_its_own_slash8() -> None:
    """Issue 11's forged flood: a block per proxy, outside the lab's 10/8
    and clear of martians, the rate split evenly, the flood split at T_T3
    after its start; trafgen draws each source at random (drnd), the victim
    counts each block by its /8."""
    lab = topology.plan(3, 9, 90)
    plan = plans.spoofed(lab, 20, flood_pps=9000)
    assert [(b.cidr, b.pps, b.forged) for b in plan.spoofed] == [
        ("11.0.0.0/8", 3000, True),
        ("12.0.0.0/8", 3000, True),
        ("13.0.0.0/8", 3000, True),
    ]
    assert [b.block for b in plan.spoofed] == [11, 12, 13]
    assert {b.ns for b in plan.spoofed} == {s.ns for s in lab.senders if s.role == "bot"}
    assert [f.role for f in plan.flows] == ["good"] * len(plan.flows)
    assert [(p.label, p.start, p.stop) for p in plan.phases] == [
        ("before the flood", 0.0, 4.0),
        ("flood, first T_T3", 4.0, 5.0),
        ("flood after T_T3", 5.0, 18.0),
        ("after the flood", 18.0, 20.0),
    ]
    cfg = spoofed.trafgen_config(
        plan.spoofed[1], "02:00:00:00:00:01", "02:00:00:00:00:02", "10.20.0.2", 9000
    )
    assert "saddr=drnd(0x0c000001, 0x0cfffffe)" in cfg  # 12.0.0.1 .. 12.255.255.254
    assert "ip saddr 12.0.0.0/8 counter name b12 drop" in spoofed.nft_ruleset(plan.spoofed)
    params = plan.params()["spoofed"]
    assert isinstance(params, dict) and params["forged"] and params["offered_pps"] == 9000
    assert sum(lane.pps for lane in plan.spoofed[0].lanes(spoofed.LANES)) == 3000


def test_spoofed_at_full_rate_runs_one_unpaced_sender_per_proxy(tmp_path: Path) -> None:
    plan = plans.spoofed(topology.plan(2, 2, 20), 10, flood_pps=0)
    (lane,) = plan.spoofed[0].lanes(spoofed.LANES)
    assert lane.pps == 0 and lane.forged
    doc = plan.params()["spoofed"]
    assert isinstance(doc, dict) and doc["offered_pps"] == "full rate"


def test_spoofed_refuses_rates_and_proxies_it_cannot_run() -> None:
    lab = topology.plan(3, 3, 3)
    with pytest.raises(ScenarioError, match=r"--flood-pps: 0 \(full rate\) or up to"):
        plans.spoofed(lab, 20, flood_pps=-1)
    with pytest.raises(ScenarioError, match="--proxies: between 1 and 3"):
        plans.spoofed(lab, 20, proxies=4)


def test_trafgen_draws_forged_sources_inside_the_block(tmp_path: Path) -> None:
    """The real trafgen, into a pcap (no network): 200 frames, every source
    inside 11.0.0.0/8 and (drawn from 16M) all but a few distinct."""
    import shutil
    import struct
    import subprocess

    if shutil.which("trafgen") is None:
        pytest.fail("trafgen (netsniff-ng) is not installed: scripts/setup.sh installs it")
    b = plans.spoofed(topology.plan(3, 3, 3), 20).spoofed[0]
    cfg = tmp_path / "t.cfg"
    cfg.write_text(
        spoofed.trafgen_config(b, "02:00:00:00:00:01", "02:00:00:00:00:02", "10.20.0.2", 9000)
    )
    pcap = tmp_path / "t.pcap"
    subprocess.run(
        ["trafgen", "--conf", str(cfg), "--dev", str(pcap), "--num", "200"],
        check=True,
        capture_output=True,
    )
    data, off, sources = pcap.read_bytes(), 24, []
    while off < len(data):
        incl = struct.unpack_from("<I", data, off + 8)[0]
        frame = data[off + 16 : off + 16 + incl]
        off += 16 + incl
        sources.append(bytes(frame[26:30]))
        words = struct.unpack("!10H", frame[14:34])
        total = sum(words)
        assert (total & 0xFFFF) + (total >> 16) == 0xFFFF  # the IPv4 header checksum holds
    assert len(sources) == 200
    assert all(s[0] == 11 for s in sources)
    assert len(set(sources)) >= 195


def test_cli_takes_the_spoofed_options_and_its_default_modes() -> None:
    args = build_parser().parse_args(
        ["lab", "scenario", "spoofed", "--flood-pps", "5000", "--proxies", "2"]
    )
    assert (args.flood_pps, args.proxies, args.modes) == (5000.0, 2, None)
    assert scenario.SCENARIOS["spoofed"].default_modes == "none,gossip,gossip-paper"
    from xpro_mesh.lab import runner

    if os.geteuid() == 0:
        with pytest.raises(ScenarioError, match="--flood-pps is an option of scenario spoofed"):
            runner.prepare(topology.plan(3, 3, 3), "botnet", ["none"], 10, {"flood_pps": 10})


def test_agent_log_notes_complaints_but_not_the_filter_left_attached_at_exit(
    tmp_path: Path,
) -> None:
    log = tmp_path / "agent.log"
    lines = [
        {"level": "warning", "msg": "overload warning", "event": "overload_warning"},
        {"level": "warning", "msg": "the XDP filter stays attached", "event": "left_in_kernel"},
        {"level": "info", "msg": "agent p0 stopped"},
    ]
    log.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    assert agents.agent_log("agent-p0", log) == (1, [])
    lines.append({"level": "error", "msg": "sync failed: boom"})
    log.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    assert agents.agent_log("agent-p0", log) == (
        1,
        ["agent-p0: 1 warnings/errors logged, first: sync failed: boom"],
    )


def test_every_good_client_has_one_source_behind_every_proxy_and_none_is_shared() -> None:
    """Choosing a proxy is choosing the source: each good client has one
    address in every proxy's block, after that block's own clients, in the
    good range; bots have none; the home addresses are as before."""
    lab = topology.plan(3, 12, 180)
    before = [a for s in lab.senders for a in s.addrs]
    assert lab.clients_can_choose()
    seen: set[str] = set(lab.good_addrs()) | set(lab.bot_addrs())
    for s in lab.senders:
        if s.role == "bot":
            assert s.aliases == ()
            continue
        assert s.sources_via(s.proxy) == s.addrs
        for p in lab.proxies:
            sources = s.sources_via(p.index)
            assert sources is not None and len(sources) == len(s.addrs)
            block = p.client_block.rsplit(".", 2)[0] + "."
            assert all(a.startswith(block) and 2 <= int(a.rsplit(".", 1)[1]) <= 99 for a in sources)
            if p.index != s.proxy:
                assert not seen & set(sources)
                seen |= set(sources)
    assert len(seen) == 12 * 3 + 180
    assert before == [a for s in topology.plan(3, 12, 180).senders for a in s.addrs]
    assert topology.LabPlan.from_json(lab.to_json()) == lab


def test_a_lab_of_more_than_98_good_clients_cannot_choose_and_overload_says_so() -> None:
    lab = topology.plan(3, 120, 3)
    assert not lab.clients_can_choose()
    with pytest.raises(ScenarioError, match="98"):
        plans.overload(lab, 30)
    with pytest.raises(ScenarioError, match="98"):
        plans.failover(lab, 30, client=True)


def test_overload_pins_every_good_client_on_proxy_0_over_t_w_then_compares() -> None:
    lab = topology.plan(3, 96, 0)
    plan = plans.overload(lab, 40)
    assert plan.client is not None and plan.client.pin == 0 and plan.client.follow_at == 12.0
    assert not plan.spoofed and all(f.role == "good" for f in plan.flows)
    total = sum(len(f.addrs) * f.rate for f in plan.flows)
    assert "capacity = 480" in plan.agent_toml and total == 480  # proxy 0 at W = 1 > T_W
    assert plan.thresholds.t_f2 >= 10 * total  # no fair-share drop blurs the figures
    (k0, p0), (k1, p1) = plan.variants("gossip")
    assert (k0, k1) == ("gossip", "gossip+dispersion")
    assert p0.client is not None and not p0.client.follow and p1 is plan
    other = plans.distributed(topology.plan(3, 9, 90), 30)
    assert other.variants("gossip") == [("gossip", other)]
    assert plan.params()["client"] == plan.client.record()


def test_failover_on_the_client_moves_only_the_bots_routes() -> None:
    lab = topology.plan(3, 9, 90)
    plain, client = plans.failover(lab, 40), plans.failover(lab, 40, client=True)
    assert plain.client is None and plain.faults[0].moves == ("good", "bot")
    assert client.client is not None and client.client.pin is None
    assert client.faults[0].moves == ("bot",)
    assert "fail over on their own" in client.faults[0].describe()


def test_overload_figures_read_the_load_per_proxy_from_the_victims_blocks(
    tmp_path: Path,
) -> None:
    """Synthetic: 30 req/s through proxy 0 for 10 s, then 10 req/s through
    each; two weight changes logged by p0's agent."""
    from xpro_mesh.lab import dispersion

    bins: dict[int, dict[int, int]] = {100: {}, 101: {}, 102: {}}
    for b in range(200):
        if b < 100:
            bins[100][b] = 3
        else:
            for block in bins:
                bins[block][b] = 1
    victim = metrics.VictimArrivals(0.1, {}, {k: metrics.BinSeries(v) for k, v in bins.items()})
    requests = [[j, 10.0 + 0.2 * j, 0.001, f"p{j % 3}"] for j in range(30)]
    goods = [{"client": {"requests": requests}}]
    log = tmp_path / "agent.log"
    log.write_text(
        "\n".join(
            json.dumps({"ts": ts, "msg": msg})
            for ts, msg in (
                ("1970-01-01T00:00:05Z", "dispersion addition: weights {}"),
                ("1970-01-01T00:00:12Z", "dispersion removal: weights {}"),
                ("1970-01-01T00:00:13Z", "member p1: alive -> suspect"),
            )
        )
    )
    o = dispersion.overload_figures(
        victim, goods, [0, 1, 2], 10.0, 20.0, {"p0": log}, (0.0, 20.0), 5.0, True
    )
    assert o["max_mean_load_ratio_before"] == 3.0
    assert o["max_mean_load_ratio_after"] == 1.0
    assert o["rebalance_s"] == 1.0
    assert o["weight_changes"] == {"p0": 2} and o["weight_changes_bound"] == 5
    assert o["clients_end"] == {"p0": 10, "p1": 10, "p2": 10}
    assert o["good_success_after_follow"] == 1.0


def test_failover_figures_time_each_dead_proxys_client_to_its_first_answer_elsewhere() -> None:
    from xpro_mesh.lab import dispersion

    # client 0 on p1 until it dies at 5.0 s, answered by p2 at 5.8 s;
    # client 1 on p0 throughout (not affected)
    requests = [
        [0, 4.5, 0.001, "p1"],
        [0, 5.2, 0.6, "p2"],
        [1, 4.6, 0.001, "p0"],
        [1, 5.1, 0.001, "p0"],
    ]
    goods = [{"client": {"addrs": ["a", "b"], "failover_bound_s": 1.5, "requests": requests}}]
    f = dispersion.failover_figures(goods, 1, 5.0)
    assert f["affected"] == 1 and f["recovered"] == 1
    assert f["failover_s"] == {"a": 0.8} and f["met"] is True and f["bound_s"] == 1.5


def test_the_botnet_attack_begins_after_every_good_client_has_polled() -> None:
    """Good clients are clients the service knows: each has polled once
    before the flood (a client first seen in its first second would meet an
    admission budget the bots' first packets have emptied)."""
    lab = topology.plan(3, 9, 90)
    for duration in (15, 30, 60):
        plan = scenario.botnet(lab, duration)
        good = [f for f in plan.flows if f.role == "good"]
        assert plan.attack_start is not None and plan.attack_start > 1 / good[0].rate
    with pytest.raises(ScenarioError, match="--duration"):
        scenario.botnet(lab, 4)


def test_a_restarted_proxys_traffic_moves_back_once_its_agent_answers_ready(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The failback waits for ``GET /readyz`` = 200 (a restarted proxy judges
    by its own counts until its agent has written the mesh's view), and
    moves the traffic back anyway after READY_TIMEOUT_S."""
    import http.server
    import threading

    answers = {"status": 503}

    class Readyz(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(answers["status"] if self.path == "/readyz" else 404)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Readyz)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    net = faults.Network(topology.plan(3, 3, 3))
    moved: list[int] = []
    monkeypatch.setattr(net, "_route_back", moved.append)
    try:
        watch = faults.ReadyWatch.start("/proc/self/ns/net", server.server_address[1])
        net.waiting[1] = watch
        time.sleep(0.3)
        assert watch.ready_at is None and watch.error is None
        assert net.failbacks() == [] and moved == []  # not ready: the traffic stays away
        answers["status"] = 200
        deadline = time.monotonic() + 5
        while watch.ready_at is None and time.monotonic() < deadline:
            time.sleep(0.01)
        ((index, waited, ready),) = net.failbacks()
        assert (index, ready, moved) == (1, True, [1]) and waited >= 0.3
        assert net.waiting == {}
        # One that never answers moves back after the timeout, not ready.
        answers["status"] = 503
        net.waiting[2] = faults.ReadyWatch.start("/proc/self/ns/net", server.server_address[1])
        later = time.monotonic() + faults.READY_TIMEOUT_S
        ((index, waited, ready),) = net.failbacks(now=later)
        assert (index, ready, moved) == (2, False, [1, 2])
        assert waited >= faults.READY_TIMEOUT_S
        # Without a restarted agent (a mode without agents) it moves back at once.
        net.failback(0, wait_ready=False)
        assert moved == [1, 2, 0]
    finally:
        server.shutdown()
