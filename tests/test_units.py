"""Durations and rates as operators write them: one rule for the whole project."""

from __future__ import annotations

import pytest

from xpro_mesh.units import (
    MAX_S64,
    ConfigError,
    format_duration,
    parse_duration_ns,
    parse_rate_pps,
    show,
)

MS = 10**6
S = 10**9


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("500ms", 500 * MS),
        ("1.5s", 1_500 * MS),
        ("1m30s", 90 * S),
        ("1min", 60 * S),
        ("2h", 7200 * S),
        ("250us", 250_000),
        ("250µs", 250_000),
        ("100ns", 100),
        (" 5s ", 5 * S),
    ],
)
def test_a_duration_is_numbers_with_units_summed_in_ns(text: str, ns: int) -> None:
    assert parse_duration_ns(text) == ns


@pytest.mark.parametrize("bare", [500, "500", "1.5", 0, "0"])
def test_a_bare_number_is_refused_as_a_duration_saying_why(bare: object) -> None:
    with pytest.raises(ValueError, match=r"with a unit .*\(a bare number is refused\), got "):
        parse_duration_ns(bare)


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("fast", 'expected a duration like "500ms" or "1m30s", got "fast"'),
        ("-1s", 'expected a duration like "500ms" or "1m30s", got "-1s"'),
        (True, 'expected a duration like "500ms" or "1m30s", got true'),
        (1.5, "a bare number is refused"),
        ([1], "got a list"),
        ("1.5ns", 'expected a whole number of nanoseconds, got "1.5ns"'),
        ("300000000000h", "must be at most 2^63-1 ns"),
    ],
)
def test_bad_durations_say_what_was_expected(value: object, problem: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_duration_ns(value)
    assert problem in str(caught.value)


@pytest.mark.parametrize(
    ("value", "pps"),
    [
        (1000, 1000),
        ("1000", 1000),
        ("1000/s", 1000),
        ("2k pps", 2000),
        ("1.5k", 1500),
        ("3M/s", 3_000_000),
        ("6000/min", 100),
        ("600/m", 10),
        (0, 0),
    ],
)
def test_a_rate_is_packets_per_second_and_a_bare_number_is_one(value: object, pps: int) -> None:
    assert parse_rate_pps(value) == pps


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("fast", 'expected a rate like 1000, "1000/s" or "2k pps", got "fast"'),
        (-5, "expected a rate like 1000"),
        (True, "got true"),
        (2.5, "got 2.5"),
        ("1.5/s", 'expected a whole number of packets per second, got "1.5/s" = 1.5/s'),
        (2**63, "must be at most 2^63-1 packets/s"),
    ],
)
def test_bad_rates_say_what_was_expected(value: object, problem: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_rate_pps(value)
    assert problem in str(caught.value)


@pytest.mark.parametrize("ns", [1, 999, 250_000, 500 * MS, 2 * S, 90 * S, 3600 * S, MAX_S64])
def test_format_duration_is_exact_and_parses_back(ns: int) -> None:
    assert parse_duration_ns(format_duration(ns)) == ns


def test_a_config_error_is_one_line_with_key_and_problem_apart() -> None:
    error = ConfigError("thresholds.t_t1", "must be longer than 0s")
    assert str(error) == "thresholds.t_t1: must be longer than 0s"
    assert (error.key, error.problem) == ("thresholds.t_t1", "must be longer than 0s")
    assert isinstance(error, ValueError)


def test_values_are_shown_as_toml_spells_them() -> None:
    assert [show(v) for v in ("x", True, 3, [1], {"a": 1})] == [
        '"x"', "true", "3", "a list", "a table"
    ]  # fmt: skip
