"""What ships to operators passes the linters they will run: shellcheck on
every script (the rendered init script too), ``ansible-lint --profile
production`` on the role, ``systemd-analyze security`` on the rendered unit,
``promtool check rules`` on the alert rules and ``promtool check metrics`` on
a live agent's ``/metrics``; the rules and the dashboard only name metrics
the agent exports; a missing extra is one line naming it."""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import aiohttp
import jinja2
import pytest
import yaml
from agent_support import eventually, gossip_addr, start_agent, stop_agent

from xpro_mesh.cli import main as cli_main
from xpro_mesh.extras import MissingExtra, need

REPO = Path(__file__).resolve().parent.parent
ROLE = REPO / "deploy/ansible/roles/xpro_mesh"
RULES = REPO / "deploy/prometheus/xpro-mesh.rules.yml"
DASHBOARD = REPO / "deploy/grafana/xpro-mesh.json"


def _tool(name: str) -> str:
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed (scripts/setup.sh installs it)")
    return found


def _render(template: str, **overrides: object) -> str:
    """A role template rendered with the role's defaults (as Ansible would,
    for the filters these templates use)."""
    defaults = yaml.safe_load((ROLE / "defaults/main.yml").read_text())
    values = {k: v for k, v in defaults.items() if "{{" not in str(v)}
    values.update(
        xpro_mesh_venv="/opt/xpro-mesh/.venv",
        xpro_mesh_controller_path="/etc/init.d/xpro-mesh-agent",
        xpro_mesh_node_id="proxy-1",
        **overrides,
    )
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["quote"] = lambda s: shlex.quote(str(s))
    env.filters["dirname"] = lambda s: str(Path(str(s)).parent)
    env.filters["to_json"] = json.dumps
    return env.from_string((ROLE / "templates" / template).read_text()).render(**values)


def test_every_script_and_the_rendered_init_script_pass_shellcheck(tmp_path: Path) -> None:
    init = tmp_path / "xpro-mesh-agent"
    init.write_text(_render("xpro-mesh-agent.init.j2"))
    scripts = sorted(str(p) for p in (REPO / "scripts").glob("*.sh"))
    proc = subprocess.run(
        [_tool("shellcheck"), *scripts, str(init)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout


def test_the_role_passes_ansible_lint_production_profile() -> None:
    proc = subprocess.run(
        [_tool("ansible-lint"), "--profile", "production", "--offline", "--nocolor"],
        cwd=REPO / "deploy",
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_argument_specs_name_every_default_of_the_role() -> None:
    defaults = yaml.safe_load((ROLE / "defaults/main.yml").read_text())
    specs = yaml.safe_load((ROLE / "meta/argument_specs.yml").read_text())
    options = specs["argument_specs"]["main"]["options"]
    assert set(options) == set(defaults)
    for name, option in options.items():
        assert option["description"] != name, f"{name} has no description"
        assert option["default"] == defaults[name], name


def test_the_rendered_unit_rates_at_most_5_in_systemd_analyze_security(tmp_path: Path) -> None:
    unit = tmp_path / "xpro-mesh-agent.service"
    unit.write_text(_render("xpro-mesh-agent.service.j2"))
    proc = subprocess.run(
        [_tool("systemd-analyze"), "security", "--offline=true", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d)", proc.stdout)
    assert found, proc.stdout + proc.stderr
    print(f"systemd-analyze security: {found[1]} (target <= 5.0)")
    assert float(found[1]) <= 5.0, proc.stdout
    text = unit.read_text()
    for directive in (
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "UMask=0077",
    ):
        assert directive in text
    bounding = re.search(r"^CapabilityBoundingSet=(.*)$", text, re.M)
    assert bounding and "CAP_BPF" in bounding[1] and "CAP_NET_ADMIN" in bounding[1]


def test_the_alert_rules_pass_promtool_check_rules() -> None:
    proc = subprocess.run(
        [_tool("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 10 rules found" in proc.stdout


async def _scrape(tmp_path: Path) -> str:
    key = tmp_path / "cluster.key"
    key.write_text("ab" * 32 + "\n")
    key.chmod(0o600)  # the agent refuses a key others can read
    agent = await start_agent("metrics-1", key)
    peer = await start_agent("metrics-2", key, peers=[gossip_addr(agent)])
    try:
        # Two members: mesh messages (and their byte counters) flow.
        def heard() -> bool:
            counters = agent.mesh_counters()
            return counters is not None and sum(counters.received_bytes.values()) > 0

        await eventually(heard, 30, "the first gossip message")
        assert agent.api is not None
        host, port = agent.api.address
        async with aiohttp.ClientSession() as http:
            for i in range(3):
                body = {"src": f"10.9.0.{i + 1}", "dst": "10.9.1.1", "count": 5}
                async with http.post(f"http://{host}:{port}/v1/feed", json=body) as resp:
                    assert resp.status in (200, 403)
            async with http.get(f"http://{host}:{port}/metrics") as resp:
                return await resp.text()
    finally:
        await stop_agent(peer)
        await stop_agent(agent)


async def test_a_live_agents_metrics_pass_promtool_check_metrics(tmp_path: Path) -> None:
    text = await _scrape(tmp_path)
    proc = await asyncio.to_thread(
        subprocess.run,
        [_tool("promtool"), "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for family in (
        "# TYPE xpro_sync_duration_seconds histogram",
        "xpro_build_info{",
        'xpro_threshold_rate{threshold="t_f1"}',
        'xpro_map_slots_used{map="pairs"}',
        "xpro_events_lost_total",
        "xpro_map_evictions_total",
        "process_resident_memory_bytes",
        "xpro_loop_lag_seconds",
    ):
        assert family in text, family


async def test_rules_and_dashboard_only_name_metrics_the_agent_exports(tmp_path: Path) -> None:
    text = await _scrape(tmp_path)
    # Families without samples yet (no peer has sent anything) still declare
    # their type; a counter's samples end in _total.
    exported = set(re.findall(r"^([a-z_]+?)(?:\{| )", text, re.M))
    for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M):
        exported.add(f"{name}_total" if kind == "counter" else name)
    exprs = [r["expr"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    dashboard = json.loads(DASHBOARD.read_text())
    exprs += [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\b((?:xpro|process)_[a-z_]+)", e)}
    assert used, "no metric found in the rules and the dashboard"
    assert used <= exported, f"not exported: {sorted(used - exported)}"


def test_a_missing_extra_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "pyroute2", None)  # as if not installed
    with pytest.raises(MissingExtra, match=r"pip install 'xpro-mesh\[lab\]'"):
        need("pyroute2", "xpro-mesh lab")
    assert cli_main(["lab", "status"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "xpro-mesh[lab]" in err and "Traceback" not in err


@pytest.mark.slow
def test_the_sdist_carries_what_the_role_ships(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "-o", str(tmp_path), str(REPO)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (sdist,) = tmp_path.glob("*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for shipped in (
        "LICENSE",
        "scripts/setup.sh",
        "deploy/site.yml",
        "deploy/ansible/roles/xpro_mesh/tasks/main.yml",
        "deploy/prometheus/xpro-mesh.rules.yml",
        "deploy/grafana/xpro-mesh.json",
        "bpf/xpro.c",
    ):
        assert shipped in names, shipped
