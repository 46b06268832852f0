"""The lab end to end, short: real namespaces, real XDP programs, real agents
gossiping, real traffic (``make demo`` is the long version).

``lab up`` with 3 proxies, the ``distributed`` scenario in modes none, local
and gossip for 15 s each, then ``lab down``. Asserts the report's shape and
the paper's point: a botnet spread thin over the proxies passes a proxy
filtering alone and is cut by the mesh, while good clients keep talking.
The test owns every ``xl-`` namespace: a lab left up is torn down first.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from xpro_mesh.cli import main
from xpro_mesh.lab import topology

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.timeout(420)]


@pytest.fixture
def lab() -> object:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, XDP)")
    topology.destroy()
    assert main(["lab", "up", "--proxies", "3", "--clients", "9", "--bots", "90"]) == 0
    try:
        yield topology.current()
    finally:
        assert main(["lab", "down"]) == 0


def test_distributed_attack_passes_local_filters_and_is_cut_by_gossip(
    lab: object, tmp_path: Path
) -> None:
    out = tmp_path / "distributed.json"
    status = main(
        ["lab", "scenario", "distributed", "--modes", "none,local,gossip", "--duration", "15",
         "--json-out", str(out), "--png", str(tmp_path / "d.png"),
         "--html", str(tmp_path / "d.html"), "--quiet"]
    )
    assert status == 0
    doc = json.loads(out.read_text())
    assert doc["scenario"] == "distributed"
    assert set(doc["modes"]) == {"none", "local", "gossip"}
    assert doc["params"]["lab"] == {"proxies": 3, "good_addresses": 9, "bot_addresses": 90}
    for mode in doc["modes"].values():
        for key in ("attack_delivered_ratio", "attack_delivered_ratio_after_mitigation",
                    "good_success_ratio", "good_latency_ms_p50", "good_latency_ms_p99",
                    "time_to_mitigate_s", "per_proxy"):
            assert key in mode
        assert mode["attack_sent"] > 0 and mode["good_requests"] > 0
    none, local, gossip = (doc["modes"][m] for m in ("none", "local", "gossip"))
    assert none["attack_delivered_ratio"] > 0.95 and none["time_to_mitigate_s"] is None
    assert local["attack_delivered_ratio"] > 0.8  # no proxy alone sees T_F2
    assert set(local["per_proxy"]) == {"xl-p0", "xl-p1", "xl-p2"}
    assert gossip["time_to_mitigate_s"] is not None and gossip["time_to_mitigate_s"] < 3.0
    assert gossip["attack_delivered_ratio_after_mitigation"] < 0.05
    assert gossip["attack_delivered_ratio"] < local["attack_delivered_ratio"] / 2
    assert gossip["good_success_ratio"] > 0.95
    assert sum(p["drop_dest"] for p in gossip["per_proxy"].values()) > 0
    assert (tmp_path / "d.png").stat().st_size > 10_000
    assert "<svg" in (tmp_path / "d.html").read_text()
    # Nothing left running in the lab, and no filter attached.
    st = topology.status()
    assert all(n == 0 for n in st["processes"].values()), st["processes"]
    assert all(p["xdp"] is None for p in st["proxies"])


def test_lab_down_is_idempotent_and_up_recovers_from_a_killed_run(lab: object) -> None:
    # A killed run: the namespaces stay, the state file is gone.
    topology.STATE_FILE.unlink()
    assert main(["lab", "up", "--proxies", "2", "--clients", "2", "--bots", "4"]) == 0
    assert [p.ns for p in topology.current().proxies] == ["xl-p0", "xl-p1"]  # type: ignore[union-attr]
    assert main(["lab", "up"]) != 0  # already up: one-line error
    assert main(["lab", "down"]) == 0
    assert main(["lab", "down"]) == 0
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "xl-" not in left
    assert main(["lab", "up", "--proxies", "2", "--clients", "2", "--bots", "4"]) == 0
