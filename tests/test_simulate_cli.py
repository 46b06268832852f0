"""Specification of ``xpro-mesh simulate``: the operator's view of the simulator."""

from __future__ import annotations

import json

import pytest

from xpro_mesh.cli import main

FIELDS = {
    "nodes",
    "fanout",
    "loss",
    "seed",
    "rounds_to_converge",
    "max_count_error",
    "bytes_per_node_per_round",
    "converged",
    "messages",
    "messages_lost",
}


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, object]]:
    status = main(["simulate", "--json", *args])
    out = capsys.readouterr().out
    return status, json.loads(out)


def test_json_reports_convergence_with_exact_counts_within_the_log_bound(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, report = run_json(capsys, "--nodes", "40", "--fanout", "3", "--seed", "5")
    assert status == 0
    assert report.keys() >= FIELDS
    assert (report["nodes"], report["fanout"], report["loss"], report["seed"]) == (40, 3, 0.0, 5)
    assert report["converged"] is True and report["max_count_error"] == 0
    assert isinstance(report["rounds_to_converge"], int)
    assert 1 <= report["rounds_to_converge"] <= 6 + 2  # ceil(log2 40) + 2
    assert isinstance(report["bytes_per_node_per_round"], float)
    assert report["bytes_per_node_per_round"] > 0 and report["messages_lost"] == 0


def test_lossy_run_loses_messages_and_still_converges_exactly(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, report = run_json(capsys, "--nodes", "30", "--loss", "0.3", "--chunk", "4")
    assert status == 0
    assert report["converged"] is True and report["max_count_error"] == 0
    messages_lost = report["messages_lost"]
    assert isinstance(messages_lost, int) and messages_lost > 0


def test_same_seed_gives_the_same_figures(capsys: pytest.CaptureFixture[str]) -> None:
    _, first = run_json(capsys, "--nodes", "25", "--loss", "0.2", "--seed", "9")
    _, second = run_json(capsys, "--nodes", "25", "--loss", "0.2", "--seed", "9")
    del first["wall_seconds"], second["wall_seconds"]
    assert first == second


def test_run_that_does_not_converge_says_so_and_exits_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, report = run_json(capsys, "--nodes", "50", "--max-rounds", "1")
    assert status == 1
    assert report["converged"] is False and report["rounds_to_converge"] is None
    max_count_error = report["max_count_error"]
    assert isinstance(max_count_error, int) and max_count_error > 0


def test_single_node_has_nothing_to_gossip(capsys: pytest.CaptureFixture[str]) -> None:
    status, report = run_json(capsys, "--nodes", "1")
    assert status == 0 and report["rounds_to_converge"] == 0 and report["max_count_error"] == 0


def test_human_summary_names_the_figures(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--nodes", "12"]) == 0
    out = capsys.readouterr().out
    for words in ("rounds to converge", "largest count error", "bytes per node per round"):
        assert words in out


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--nodes", "0"], "--nodes must be >= 1"),
        (["--fanout", "0"], "--fanout must be >= 1"),
        (["--loss", "1"], "--loss must be in [0, 1)"),
        (["--loss", "-0.1"], "--loss must be in [0, 1)"),
        (["--loss", "nan"], "--loss must be in [0, 1)"),
        (["--max-rounds", "0"], "--max-rounds must be >= 1"),
        (["--chunk", "0"], "--chunk must be >= 1"),
        (["--destinations", "300"], "--destinations must be in 1..256"),
    ],
)
def test_bad_input_is_one_clean_line_and_status_2(
    capsys: pytest.CaptureFixture[str], args: list[str], complaint: str
) -> None:
    assert main(["simulate", *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xpro-mesh: error: ") and complaint in lines[0]
