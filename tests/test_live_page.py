"""What an operator looks at: ``GET /v1/top`` names the heavy pair of a
two-agent mesh with its rate and verdict, ``xpro-mesh top --once`` shows it,
and the agent's live page (``GET /``), loaded in a real headless Chromium,
renders the same numbers (read back from the rendered DOM).

``XPRO_SCREENSHOTS=DIR`` also saves the page as DIR/live-page.png and the
terminal view as DIR/top.txt (how docs/ got them)."""

from __future__ import annotations

import asyncio
import html
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from agent_support import eventually, gossip_addr, stop_agent

from xpro_mesh.agent.config import load_config
from xpro_mesh.agent.daemon import Agent, xdp_config
from xpro_mesh.datapath.memory import MemoryMaps

HEAVY, LIGHT, VICTIM, OTHER = "10.20.0.66", "10.20.0.7", "10.30.0.1", "10.30.0.2"


async def _agent(name: str, key: Path, peers: str) -> tuple[Agent, MemoryMaps]:
    config = load_config(
        None,
        {
            "backend": "memory",
            "profile": "local",
            "node_id": name,
            "bind": "127.0.0.1:0",
            "api": "127.0.0.1:0",
            "key_file": str(key),
            "peers": peers,
            "thresholds.t_t1": "10m",
            "thresholds.t_f1": 50,
            "thresholds.t_f2": 300,
        },
    )
    maps = MemoryMaps(xdp_config(config.thresholds))
    agent = Agent(config, backend=maps)
    await agent.start()
    return agent, maps


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[tuple[Agent, Agent]]:
    key = tmp_path / "cluster.key"
    key.write_text("cd" * 32 + "\n")
    key.chmod(0o600)  # the agent refuses a key others can read
    a, maps_a = await _agent("proxy-a", key, "")
    host, port = gossip_addr(a)
    b, maps_b = await _agent("proxy-b", key, f"{host}:{port}")
    try:
        # HEAVY sends 400 packets to VICTIM through both proxies (200 each: the
        # mesh sees 400 in a second, 8x T_F1); LIGHT sends 20 through one.
        start = time.time_ns() - 2 * 10**9  # within max_skew of every clock here
        for maps in (maps_a, maps_b):
            for i in range(200):
                maps.feed(HEAVY, VICTIM, start + i * 5 * 10**6)
        for i in range(20):
            maps_b.feed(LIGHT, OTHER, start + i * 50 * 10**6)

        def merged() -> bool:
            counts = {(r.src, r.dst): r.c for r in a.top_pairs(None, 10)[0]}
            return len(counts) == 2 and max(counts.values()) == 400 and len(a.members()) == 2

        await eventually(merged, 30, "both proxies' counts merged on proxy-a")
        yield a, b
    finally:
        await stop_agent(b)
        await stop_agent(a)


def _url(agent: Agent) -> str:
    assert agent.api is not None
    host, port = agent.api.address
    return f"http://{host}:{port}"


async def test_top_names_the_heavy_pair_mesh_wide_with_rate_and_verdict(
    mesh: tuple[Agent, Agent],
) -> None:
    a, _b = mesh
    async with aiohttp.ClientSession() as http:
        async with http.get(_url(a) + "/v1/top") as resp:
            doc = await resp.json()
        async with http.get(_url(a) + "/v1/top?limit=0") as resp:
            assert resp.status == 400
    heavy, light = doc["pairs"]
    assert (heavy["src"], heavy["dst"], heavy["packets"], heavy["verdict"]) == (
        HEAVY, VICTIM, 400, "drop",
    )  # fmt: skip
    assert heavy["pps"] == pytest.approx(400 / 0.995, rel=0.01)  # 400 packets over 0.995 s
    assert heavy["origins"] == 2  # counted on both proxies
    assert (light["src"], light["verdict"]) == (LIGHT, "pass")
    assert doc["destinations"][0] == {
        "dst": VICTIM, "pps": heavy["pps"], "clients": 1, "packets": 400, "verdict": "over",
    }  # fmt: skip
    assert doc["mesh"]["destinations_over_t_f2"] == 1
    assert doc["mesh"]["members_alive"] == 2
    assert [m["node_id"] for m in doc["members"]] == ["proxy-a", "proxy-b"]


async def test_xpro_mesh_top_once_shows_members_and_top_talkers(
    mesh: tuple[Agent, Agent],
) -> None:
    a, _b = mesh
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "xpro_mesh", "top", "--once", "--api", _url(a),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "COLUMNS": "110", "TERM": "dumb"},
    )  # fmt: skip
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    text = out.decode()
    assert "members alive 2" in text
    row = next(line for line in text.splitlines() if HEAVY in line)
    cells = [c.strip() for c in row.strip("│ ").split("│")]
    assert cells[:2] == [HEAVY, VICTIM] and cells[-1] == "drop", row
    assert cells[3] == "400" and cells[4] == "2", row  # packets, proxies
    assert "destinations over T_F2 (1)" in text
    if os.environ.get("XPRO_SCREENSHOTS"):
        await asyncio.to_thread(Path(os.environ["XPRO_SCREENSHOTS"], "top.txt").write_text, text)


def _chromium() -> str:
    for name in ("chromium", "chromium-headless-shell", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("no Chromium (scripts/setup.sh installs Debian's chromium)")


async def _browser(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        _chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-dev-shm-usage", "--virtual-time-budget=4000", *args,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode == 0, err.decode()[-2000:]
    return out.decode()


def _cell(dom: str, element_id: str) -> str:
    found = re.search(rf'id="{element_id}"[^>]*>([^<]*)<', dom)
    assert found, f"#{element_id} not in the rendered page"
    return html.unescape(found[1])


async def test_the_live_page_renders_the_mesh_in_a_real_browser(
    mesh: tuple[Agent, Agent], tmp_path: Path
) -> None:
    a, _b = mesh
    dom = await _browser("--dump-dom", _url(a) + "/")
    assert re.search(r'<body[^>]*data-rendered="\d+"', dom), "the page's script never rendered"
    async with aiohttp.ClientSession() as http, http.get(_url(a) + "/v1/top") as resp:
        doc = await resp.json()
    assert _cell(dom, "mesh-members") == "2"
    assert _cell(dom, "mesh-over") == "1"
    assert _cell(dom, "mesh-pairs") == str(doc["mesh"]["pairs"]) == "2"
    assert _cell(dom, "thresholds") == "50 / 300"
    body = re.search(r'<table id="pairs">.*?<tbody>(.*?)</tbody>', dom, re.S)
    assert body, "no pairs table"
    first_row = re.findall(r"<td[^>]*>([^<]*)</td>", body[1])[:4]
    top = doc["pairs"][0]
    assert first_row[:2] == [HEAVY, VICTIM] and first_row[3] == "drop"
    assert float(first_row[2]) == top["pps"]  # JavaScript prints 400.0 as "400"
    assert 'class="drop"' in body[1]
    shots = os.environ.get("XPRO_SCREENSHOTS")
    png = Path(shots, "live-page.png") if shots else tmp_path / "live-page.png"
    await _browser(f"--screenshot={png}", "--window-size=1200,900", _url(a) + "/")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
