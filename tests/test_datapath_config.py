"""The XDP configuration: units, TOML, KEY=VALUE, validation naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from xpro_mesh.core.algorithm import Params
from xpro_mesh.core.params import DEFAULTS
from xpro_mesh.datapath.config import (
    ClockSource,
    ConfigError,
    MapSizes,
    Policy,
    XdpConfig,
    load_config_file,
    parse_duration,
    parse_rate,
)


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("1s", 10**9),
        ("500ms", 5 * 10**8),
        ("250us", 250_000),
        ("100ns", 100),
        ("1.5s", 1_500_000_000),
        ("2m", 120 * 10**9),
        ("42ns", 42),
    ],
)
def test_durations_accept_human_units_and_store_ns(text: object, ns: int) -> None:
    assert parse_duration("t_t1", text) == ns


@pytest.mark.parametrize(
    ("text", "pps"),
    [("100", 100), (100, 100), ("10k", 10_000), ("2M", 2 * 10**6), ("1.5k", 1500), ("300pps", 300)],
)
def test_rates_are_packets_per_second(text: object, pps: int) -> None:
    assert parse_rate("t_f1", text) == pps


@pytest.mark.parametrize("bad", ["fast", "-1s", "1.0000000001s", True, 1.5])
def test_bad_durations_name_the_key(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"^t_t2: "):
        parse_duration("t_t2", bad)


@pytest.mark.parametrize("bare", [42, "42", " 42 "])
def test_a_bare_number_is_not_a_duration_here_either(bare: object) -> None:
    with pytest.raises(ConfigError, match=r"^t_t1: .*\(a bare number is refused\)"):
        parse_duration("t_t1", bare)


def test_the_defaults_are_the_cores_thresholds() -> None:
    assert XdpConfig().params == DEFAULTS
    assert (XdpConfig().t_t1, XdpConfig().t_t4, XdpConfig().t_f2) == (5 * 10**9, 10 * 10**9, 1000)


@pytest.mark.parametrize(
    ("assignments", "message"),
    [
        (["t_t2=20s"], r"^t_t2: must not exceed t_t4 \(10s\)"),
        (["t_t4=500ms"], r"^t_t2: must not exceed t_t4 \(500ms\)"),
        (["t_t1=0s"], r"^t_t1: must be longer than 0s"),
        (["t_f2=0"], r"^t_f2: must be at least 1/s"),
    ],
)
def test_an_operators_thresholds_are_checked_as_the_agent_checks_them(
    assignments: list[str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        XdpConfig().with_assignments(assignments)


def test_a_value_not_set_is_not_judged_again() -> None:
    odd = XdpConfig(t_t2=0)  # a test program's map may hold one
    assert odd.with_assignments(["t_f1=5"]).t_f1 == 5


def test_defaults_are_valid_and_fair_share() -> None:
    cfg = XdpConfig()
    assert cfg.policy is Policy.FAIR_SHARE
    assert cfg.clock is ClockSource.COARSE
    assert isinstance(cfg.params, Params)


def test_assignments_update_only_the_named_keys() -> None:
    cfg = XdpConfig().with_assignments(["t_f1=250", "t_t2=500ms", "policy=paper", "clock=precise"])
    assert (cfg.t_f1, cfg.t_t2, cfg.policy, cfg.clock) == (
        250,
        5 * 10**8,
        Policy.PAPER,
        ClockSource.PRECISE,
    )
    assert cfg.t_f2 == XdpConfig().t_f2


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("t_f9=1", "^t_f9: unknown key"),
        ("policy=strict", "^policy: 'strict' is not one of"),
        ("r=1", "^r: must be an integer >= 2"),
        ("t_f1", "expected KEY=VALUE"),
    ],
)
def test_bad_assignments_name_the_key(assignment: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        XdpConfig().with_assignments([assignment])


def test_struct_round_trip_keeps_every_field() -> None:
    cfg = XdpConfig(
        t_t1=7,
        t_t2=8,
        t_t3=9,
        t_t4=10,
        t_f1=11,
        t_f2=12,
        r=3,
        policy=Policy.PAPER,
        clock=ClockSource.PRECISE,
        warn_interval=13,
        warn_per_cpu=14,
    )
    raw = cfg.to_struct()
    assert raw.version == 1
    assert XdpConfig.from_struct(raw) == cfg


def test_params_round_trip() -> None:
    p = Params(t_t1=1, t_t2=2, t_t3=3, t_t4=4, t_f1=5, t_f2=6, r=7)
    assert XdpConfig.from_params(p).params == p


def test_toml_file_flat_or_under_xdp(tmp_path: Path) -> None:
    flat = tmp_path / "flat.toml"
    flat.write_text('t_t1 = "5s"\nt_f1 = 50\npolicy = "paper"\npairs_max = 4096\n')
    cfg, sizes = load_config_file(flat)
    assert (cfg.t_t1, cfg.t_f1, cfg.policy) == (5 * 10**9, 50, Policy.PAPER)
    assert sizes == MapSizes(pairs_max=4096)
    nested = tmp_path / "nested.toml"
    nested.write_text('[xdp]\nt_f2 = "20k"\n')
    assert load_config_file(nested)[0].t_f2 == 20_000


def test_toml_errors_name_the_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('t_t3 = "soon"\n')
    with pytest.raises(ConfigError, match=r"bad\.toml: t_t3: "):
        load_config_file(bad)
    with pytest.raises(ConfigError, match="no such file"):
        load_config_file(tmp_path / "missing.toml")
