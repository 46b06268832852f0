"""Specifications of the agent configuration: profiles, precedence, errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from xpro_mesh.agent.config import (
    AgentConfig,
    Backend,
    ConfigError,
    GossipConfig,
    LogLevel,
    Policy,
    Profile,
    Thresholds,
    config_keys,
    defaults,
    format_duration,
    lan_gossip,
    load_config,
    local_gossip,
    parse_duration,
    parse_rate,
    reload_thresholds,
    wan_gossip,
)
from xpro_mesh.algorithm import Params
from xpro_mesh.mesh.membership import MembershipParams

MS = 1_000_000
S = 1_000_000_000
RUNNABLE = {"backend": "memory", "key_file": "/etc/xpro/cluster.key"}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def error_of(path: Path | None = None, overrides: dict[str, object] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path, overrides)
    return str(caught.value)


# --- units --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("500ms", 500 * MS),
        ("2s", 2 * S),
        ("1m", 60 * S),
        ("1min", 60 * S),
        ("1h", 3600 * S),
        ("1m30s", 90 * S),
        ("1.5s", 1_500 * MS),
        ("250us", 250_000),
        ("250µs", 250_000),
        ("10ns", 10),
        (" 2s ", 2 * S),
    ],
)
def test_durations_in_human_units(text: str, ns: int) -> None:
    assert parse_duration(text) == ns


@pytest.mark.parametrize(
    ("value", "pps"),
    [
        (1000, 1000),
        ("1000", 1000),
        ("1000/s", 1000),
        ("2k pps", 2000),
        ("2kpps", 2000),
        ("1.5k/s", 1500),
        ("6000/min", 100),
        ("3M/s", 3_000_000),
        ("600/m", 10),
    ],
)
def test_rates_in_human_units(value: object, pps: int) -> None:
    assert parse_rate(value) == pps


@pytest.mark.parametrize("ns", [1, 999, 250_000, 500 * MS, 2 * S, 90 * S, 60 * S, 3600 * S])
def test_format_duration_round_trips(ns: int) -> None:
    assert parse_duration(format_duration(ns)) == ns


# --- profiles and defaults -------------------------------------------------------------


def test_lan_is_the_default_profile_and_matches_the_membership_defaults() -> None:
    config = defaults()
    assert config.profile is Profile.LAN
    assert config.gossip == lan_gossip()
    assert config.gossip.membership_params() == MembershipParams()
    assert config.bind == ("0.0.0.0", 7946) and config.api == ("127.0.0.1", 7947)
    assert config.backend is Backend.XDP and config.log_level is LogLevel.INFO
    assert config.thresholds.policy is Policy.FAIR_SHARE


def test_profiles_trade_speed_for_tolerance() -> None:
    local, lan, wan = local_gossip(), lan_gossip(), wan_gossip()
    assert local.probe_interval_ns < lan.probe_interval_ns < wan.probe_interval_ns
    assert local.interval_ns < lan.interval_ns < wan.interval_ns
    assert local.max_message_bytes == 60_000 and lan.max_message_bytes == 1_400
    assert defaults("local").bind == ("127.0.0.1", 7946)


def test_detection_time_bounds_of_the_profiles_for_five_nodes() -> None:
    assert lan_gossip().detection_time_bound_ns(5) == 15_000 * MS
    assert local_gossip().detection_time_bound_ns(5) == 2_800 * MS


def test_thresholds_give_the_algorithm_params() -> None:
    assert Thresholds().params() == Params(
        t_t1=5 * S, t_t2=S, t_t3=S, t_t4=10 * S, t_f1=100, t_f2=1000, r=2
    )


def test_every_field_is_settable_by_a_dotted_key() -> None:
    keys = config_keys()
    assert "gossip.interval" in keys and "thresholds.t_f1" in keys and "max_skew" in keys
    assert "limits.max_keys" in keys and "peers" in keys and "node_id" in keys
    assert not [k for k in keys if k.endswith("_ns")]


# --- precedence: defaults <- file <- flags --------------------------------------------------


def test_file_overrides_defaults_and_flags_override_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        node_id = "from-file"
        backend = "memory"
        key_file = "/etc/xpro/cluster.key"
        peers = ["10.0.0.2:7946", "10.0.0.3:7946"]
        [gossip]
        interval = "1s"
        fanout = 5
        [thresholds]
        t_f1 = "250/s"
        """,
    )
    config = load_config(path, {"node-id": "from-flag", "gossip.fanout": "4", "iface": None})
    assert config.node_id == "from-flag"
    assert config.gossip.fanout == 4
    assert config.gossip.interval_ns == S  # file, no flag
    assert config.gossip.probe_interval_ns == S  # lan default
    assert config.thresholds.t_f1 == 250
    assert config.peers == (("10.0.0.2", 7946), ("10.0.0.3", 7946))


def test_profile_from_the_file_then_values_from_the_file_win_over_it(tmp_path: Path) -> None:
    path = write(tmp_path, 'profile = "local"\n[gossip]\nprobe_interval = "300ms"\n')
    config = load_config(path, RUNNABLE)
    assert config.profile is Profile.LOCAL
    assert config.gossip.probe_interval_ns == 300 * MS
    assert config.gossip.interval_ns == local_gossip().interval_ns


def test_profile_flag_beats_the_profile_in_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'profile = "local"\n')
    config = load_config(path, {**RUNNABLE, "profile": "wan"})
    assert config.profile is Profile.WAN and config.gossip == wan_gossip()


def test_no_file_means_defaults_and_flags() -> None:
    config = load_config(None, {**RUNNABLE, "peers": "10.0.0.2:7946, [::1]:7000"})
    assert config.peers == (("10.0.0.2", 7946), ("::1", 7000))
    assert config.key_file == Path("/etc/xpro/cluster.key")


def test_duplicate_peers_are_kept_once() -> None:
    assert load_config(None, {**RUNNABLE, "peers": "a:1,a:1"}).peers == (("a", 1),)


def test_xdp_backend_with_an_interface_is_accepted() -> None:
    config = load_config(None, {"iface": "eth0", "key_file": "k"})
    assert config.backend is Backend.XDP and config.iface == "eth0"


def test_advertised_address_is_the_bind_unless_it_is_a_wildcard() -> None:
    assert defaults().advertised is None
    assert defaults("local").advertised == ("127.0.0.1", 7946)
    config = load_config(None, {**RUNNABLE, "advertise": "10.0.0.1:7946"})
    assert config.advertised == ("10.0.0.1", 7946)


# --- every error names its key ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"gossip.interval": "fast"},
            'gossip.interval: expected a duration like "500ms" or "1m30s", got "fast"',
        ),
        (
            {"gossip.interval": "500"},
            'gossip.interval: expected a duration with a unit like "500ms" or "5s" '
            '(a bare number is refused), got "500"',
        ),
        ({"gossip.interval": "0s"}, "gossip.interval: must be longer than 0s"),
        ({"gossip.fanout": "three"}, 'gossip.fanout: expected a whole number, got "three"'),
        ({"gossip.fanout": "0"}, "gossip.fanout: must be at least 1"),
        ({"gossip.suspicion_mult": "0"}, "gossip.suspicion_mult: must be at least 1"),
        (
            {"gossip.probe_timeout": "2s"},
            "gossip.probe_timeout: must be shorter than gossip.probe_interval (1s), got 2s",
        ),
        (
            {"gossip.max_message_bytes": "70kB"},
            "gossip.max_message_bytes: must be 512..65507 bytes (one UDP datagram), got 70000",
        ),
        (
            {"gossip.max_message_bytes": "big"},
            'gossip.max_message_bytes: expected a size in bytes like 1400 or "60kB", got "big"',
        ),
        ({"thresholds.t_f1": "fast"}, "thresholds.t_f1: expected a rate like 1000"),
        ({"thresholds.t_f1": "1.5/s"}, "thresholds.t_f1: expected a whole number of packets"),
        ({"thresholds.t_f2": "0"}, "thresholds.t_f2: must be at least 1/s"),
        ({"thresholds.r": "1"}, "thresholds.r: must be an integer >= 2, got 1"),
        ({"thresholds.t_t1": "0s"}, "thresholds.t_t1: must be longer than 0s"),
        ({"thresholds.t_t2": "20s"}, "thresholds.t_t2: must not exceed thresholds.t_t4 (10s)"),
        ({"thresholds.t_t3": "11s"}, "thresholds.t_t3: must not exceed thresholds.t_t4 (10s)"),
        (
            {"thresholds.policy": "fair"},
            'thresholds.policy: expected one of "fair-share", "paper", got "fair" '
            '(did you mean "fair-share"?)',
        ),
        ({"backend": "ebpf"}, 'backend: expected one of "xdp", "memory", got "ebpf"'),
        ({"profile": "lan2"}, 'profile: expected one of "lan", "local", "wan", got "lan2"'),
        ({"log_level": "loud"}, 'log_level: expected one of "debug", "info", "warning"'),
        ({"bind": "0.0.0.0"}, 'bind: expected host:port like "10.0.0.2:7946", got "0.0.0.0"'),
        ({"api": "127.0.0.1:70000"}, 'api: port must be 0..65535, got "127.0.0.1:70000"'),
        ({"peers": "10.0.0.2:0"}, 'peers: item 1: port must be 1..65535, got "10.0.0.2:0"'),
        ({"peers": "a:1,b:x"}, 'peers: item 2: expected host:port like "10.0.0.2:7946", got "b:x"'),
        ({"advertise": "h:0"}, "advertise: port must be 1..65535"),
        (
            {"node_id": "two words"},
            "node_id: expected 1-255 bytes of printable text without spaces",
        ),
        ({"node_id": "x" * 256}, "node_id: expected 1-255 bytes"),
        ({"iface": " "}, 'iface: expected a non-empty string, got " "'),
        ({"key_file": ""}, 'key_file: expected a non-empty string, got ""'),
        (
            {"webhook_url": "ftp://x"},
            'webhook_url: expected an http:// or https:// URL, got "ftp://x"',
        ),
        ({"max_skew": "40s"}, "max_skew: must not exceed gossip.replay_window (30s)"),
        ({"limits.max_keys": "-1"}, 'limits.max_keys: expected a whole number, got "-1"'),
        ({"limits.max_rate": "0"}, "limits.max_rate: must be at least 1/s"),
        (
            {"gossip.intervall": "1s"},
            'gossip.intervall: unknown key (did you mean "gossip.interval"?)',
        ),
        ({"interval": "1s"}, 'interval: unknown key (did you mean "gossip.interval"?)'),
        ({"colour": "blue"}, "colour: unknown key"),
    ],
)
def test_bad_flag_values_are_one_line_naming_the_key(
    overrides: dict[str, object], message: str
) -> None:
    text = error_of(None, {**RUNNABLE, **overrides})
    assert text.startswith(message), text
    assert "\n" not in text


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            "[gossip]\ninterval = 500\n",
            'gossip.interval: expected a duration with a unit like "500ms" or "5s" '
            "(a bare number is refused), got 500",
        ),
        (
            "[thresholds]\nt_t1 = 5\n",
            'thresholds.t_t1: expected a duration with a unit like "500ms" or "5s" '
            "(a bare number is refused), got 5",
        ),
        (
            "[gossip]\ninterval = true\n",
            'gossip.interval: expected a duration like "500ms" or "1m30s", got true',
        ),
        ("[thresholds]\nr = 2.5\n", "thresholds.r: expected a whole number, got 2.5"),
        ("[thresholds]\nt_f1 = -5\n", "thresholds.t_f1: expected a rate like 1000"),
        ("peers = 7946\n", "peers: expected a list of host:port"),
        ('peers = ["a:1", 2]\n', 'peers: item 2: expected host:port like "10.0.0.2:7946", got 2'),
        ("gossip = 3\n", "gossip: expected a table ([gossip]), got 3"),
        ("[node_id]\nx = 1\n", "node_id: expected a value, got a table"),
        ("[gossip]\ninterval = { a = 1 }\n", "gossip.interval: expected a value, got a table"),
        ('[gosip]\ninterval = "1s"\n', 'gosip: unknown key (did you mean "gossip"?)'),
        ("[gossip.extra]\na = 1\n", "gossip.extra: unknown key"),
        ('node-id = "a"\n', 'node-id: unknown key (did you mean "node_id"?)'),
        ('profile = "lan"\nbackend = "xdp"\n', 'iface: required with backend = "xdp"'),
    ],
)
def test_bad_file_values_are_one_line_naming_the_key(
    tmp_path: Path, toml: str, message: str
) -> None:
    text = error_of(write(tmp_path, toml), {"key_file": "k"})
    assert text.startswith(message), text


def test_key_file_is_required_to_start() -> None:
    assert error_of(None, {"backend": "memory"}).startswith("key_file: required")
    assert load_config(None, {"backend": "memory"}, require_key_file=False).key_file is None


def test_invalid_toml_names_the_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, 'node_id = "a"\n[gossip\n')
    text = error_of(path)
    assert text.startswith(f"{path}: invalid TOML") and "line 2" in text


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.toml"
    assert error_of(path).startswith(f"{path}: cannot read the config file")


def test_error_carries_key_and_problem_apart() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, {**RUNNABLE, "gossip.fanout": "0"})
    assert caught.value.key == "gossip.fanout" and caught.value.problem == "must be at least 1"


def test_constructing_invalid_sections_directly_is_refused_too() -> None:
    with pytest.raises(ConfigError, match=r"^thresholds\.r: "):
        Thresholds(r=1)
    with pytest.raises(ConfigError, match=r"^gossip\.probe_timeout: "):
        GossipConfig(**_lan_with(probe_timeout_ns=2 * S))
    with pytest.raises(ConfigError, match=r"^node_id: "):
        AgentConfig(node_id="")


def _lan_with(**changes: int) -> dict[str, int]:
    base = lan_gossip()
    values = {name: getattr(base, name) for name in GossipConfig.__dataclass_fields__}
    values.update(changes)
    return values


# --- SIGHUP reload ------------------------------------------------------------------------------


def test_reload_returns_the_files_thresholds_over_the_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, '[thresholds]\nt_f1 = "300/s"\npolicy = "paper"\n[gossip]\nfanout = 9\n')
    reloaded = reload_thresholds(path)
    assert reloaded == Thresholds(t_f1=300, policy=Policy.PAPER)


def test_reload_applies_threshold_flags_over_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[thresholds]\nt_f1 = "300/s"\n')
    assert reload_thresholds(path, {"thresholds.t_f1": "400"}) == Thresholds(t_f1=400)


def test_reload_of_a_bad_file_returns_the_error_instead_of_raising(tmp_path: Path) -> None:
    path = write(tmp_path, '[thresholds]\nt_f1 = "lots"\n')
    error = reload_thresholds(path)
    assert isinstance(error, ConfigError) and error.key == "thresholds.t_f1"


def test_reload_refuses_unknown_keys_anywhere_in_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[thresholds]\nt_f1 = 5\n[gossip]\nfanot = 3\n")
    error = reload_thresholds(path)
    assert isinstance(error, ConfigError) and error.key == "gossip.fanot"


def test_reload_does_not_need_what_only_a_start_needs(tmp_path: Path) -> None:
    path = write(tmp_path, 'backend = "xdp"\n[thresholds]\nr = 4\n')  # no iface, no key_file
    assert reload_thresholds(path) == Thresholds(r=4)


def test_reload_of_a_missing_file_is_an_error_value(tmp_path: Path) -> None:
    assert isinstance(reload_thresholds(tmp_path / "gone.toml"), ConfigError)


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("thresholds.src_prefix6", "200", "must be a prefix length in 1..128, got 200"),
        ("thresholds.src_prefix4", "0", "must be a prefix length in 1..32, got 0"),
        ("thresholds.admit_burst", "5000", "must be at most 4000, got 5000"),
    ],
)
def test_a_threshold_out_of_the_records_bounds_is_one_error_naming_its_key(
    key: str, value: str, problem: str
) -> None:
    """The core record's own bounds (not only the operator's rules) come out
    as a ConfigError with the dotted key, never a traceback."""
    with pytest.raises(ConfigError) as caught:
        load_config(None, {**RUNNABLE, key: value})
    assert (caught.value.key, caught.value.problem) == (key, problem)
