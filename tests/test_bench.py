"""The benchmarks' shared statistics and the ``xpro-mesh bench`` command.

The statistics are pure; the command is run as an operator runs it (a real
process), with the agent benchmark at a size that takes a second: its
figures are not judged here (speed is the benchmark's business), only that
they come out whole, with every target reported met or missed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from xpro_mesh.bench import BENCHES
from xpro_mesh.bench.stats import Check, Spread, checks_json, dumps, ratio

ROOT = Path(__file__).resolve().parents[1]


def xpro(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "xpro_mesh", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def test_spread_is_min_median_max_of_the_repetitions() -> None:
    s = Spread.of([5, 1, 4, 2, 3])
    assert (s.min, s.median, s.max) == (1, 3, 5)
    assert str(s) == "1/3/5"
    assert Spread.of([0.0012, 0.002]).fmt(1e3, 1) == "1.2/1.6/2.0"


def test_spread_of_nothing_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one sample"):
        Spread.of([])


def test_ratio_compares_medians_not_extremes() -> None:
    assert ratio(Spread(1, 30, 1000), Spread(10, 10, 10)) == 3.0


def test_a_check_is_met_on_its_bound_and_missed_past_it() -> None:
    assert Check("cost", 3.5, 3.5, "x").met
    assert not Check("cost", 3.51, 3.5, "x").met
    assert Check("speedup", 2.0, 2.0, bound="at_least").met
    assert not Check("speedup", 1.9, 2.0, bound="at_least").met
    assert Check("cost", 4.0, 3.5, "x").line() == "cost: 4x (target <= 3.5x) MISSED"


def test_checks_json_lists_every_check_and_names_the_missed() -> None:
    doc = checks_json([Check("a", 1, 2, "ms"), Check("b", 3, 2, "ms")])
    assert [c["met"] for c in doc["checks"]] == [True, False]
    assert doc["missed"] == ["b: 3 ms (target <= 2 ms) MISSED"]
    assert json.loads(dumps({"spread": Spread(1, 2, 3)})) == {
        "spread": {"min": 1, "median": 2, "max": 3}
    }


def test_bench_help_lists_every_benchmark() -> None:
    out = xpro("bench", "--help")
    assert out.returncode == 0, out.stderr
    for name in BENCHES:
        assert name in out.stdout


@pytest.mark.parametrize("name", sorted(BENCHES))
def test_each_benchmark_has_its_own_help(name: str) -> None:
    out = xpro("bench", name, "--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"usage: xpro-mesh bench {name}")


def test_unknown_benchmark_and_bad_options_are_one_line_errors() -> None:
    unknown = xpro("bench", "nosuch")
    assert unknown.returncode == 2
    assert "invalid choice: 'nosuch'" in unknown.stderr
    bad = xpro("bench", "agent", "--pairs", "many")
    assert bad.returncode == 2
    assert "argument --pairs: expected counts like 1000,10000, got 'many'" in bad.stderr
    assert "Traceback" not in bad.stderr + unknown.stderr


def test_agent_bench_reports_every_cycle_and_its_target_as_json() -> None:
    out = xpro(
        "bench", "agent", "--pairs", "500", "--backends", "memory", "--reps", "1",
        "--skip-mesh", "--json",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    kinds = [c["kind"] for c in doc["sync_cycles"]]
    assert kinds == ["fill", "quiet", "busy"]
    assert all(c["pairs"] == 500 and c["backend"] == "memory" for c in doc["sync_cycles"])
    busy = doc["sync_cycles"][2]
    assert busy["merge_cpu_s"]["median"] > 0 and 0 < busy["wire_bytes_per_row"] < 100
    # quiet CPU, busy CPU per pair, memory per row, wire bytes per row
    assert len(doc["checks"]) == 4
    assert all({"what", "value", "target", "met"} <= set(c) for c in doc["checks"])
    assert len(doc["missed"]) == sum(not c["met"] for c in doc["checks"])


@pytest.mark.kernel
def test_datapath_bench_reports_both_ratios_of_every_case() -> None:
    out = xpro(
        "bench", "datapath", "--repeat", "1000", "--runs", "1", "--new-pair-repeat", "100",
        "--json",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    cases = {(f["family"], f["case"]) for f in doc["packet"]}
    assert len(cases) == 8
    assert len(doc["checks"]) == 2 * len(cases)
    for f in doc["packet"]:
        assert f["over_bare"] == f["filter"]["median"] / f["bare"]["median"]


def test_a_large_figure_is_printed_whole_not_in_exponent_form() -> None:
    assert Check("cycle", 4843.2, 500, "ms").line() == "cycle: 4843 ms (target <= 500 ms) MISSED"
    assert Check("cycle", 12.06, 100, "ms").line() == "cycle: 12.1 ms (target <= 100 ms) met"


def test_the_veth_bench_config_sends_random_sources_or_one_and_counts_xdp_packets() -> None:
    from xpro_mesh.bench.veth import trafgen_config, xdp_packets

    flood = trafgen_config("aa:bb:cc:dd:ee:ff", "11:22:33:44:55:66", "10.77.0.2", None)
    assert "saddr=drnd()" in flood and "daddr=10.77.0.2" in flood
    one = trafgen_config("aa:bb:cc:dd:ee:ff", "11:22:33:44:55:66", "10.77.0.2", "10.76.0.1")
    assert "saddr=10.76.0.1," in one
    ethtool = "rx_queue_0_xdp_packets: 7\n rx_queue_0_xdp_drops: 5\n rx_queue_1_xdp_packets: 3\n"
    assert xdp_packets(ethtool) == 10


@pytest.mark.kernel
@pytest.mark.skipif(shutil.which("trafgen") is None, reason="trafgen (netsniff-ng) not installed")
def test_spoofed_veth_bench_reports_a_ratio_and_its_target_for_every_case() -> None:
    # 2 s windows: a paced trafgen sends its packets in bursts (each window
    # of 0.3 s on a loaded host saw none); the ratio takes the shares.
    out = xpro("bench", "spoofed-veth", "--runs", "1", "--seconds", "2", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    cases = {(f["established"], f["load"]) for f in doc["veth"]}
    assert cases == {(0, "paced"), (0, "full"), (1, "paced"), (1, "full")}
    assert len(doc["checks"]) == 4 and all(c["target"] == 0.95 for c in doc["checks"])
    for f in doc["veth"]:
        assert f["drop_all_pps"]["median"] > 0 and f["filter_pps"]["median"] > 0
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    assert "xbv-" not in names.stdout  # nothing left behind
