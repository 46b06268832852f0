"""One thresholds record: the core's defaults are the data path's, the
agent's and the Ansible role's; operators' values are checked the same way
everywhere and every problem is one line naming its key."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from xpro_mesh.agent.config import ConfigError, Thresholds, load_config, reload_thresholds
from xpro_mesh.core.params import DEFAULTS, NS_PER_S, Params, Policy, operational_problems
from xpro_mesh.datapath.config import XdpConfig
from xpro_mesh.datapath.config import load_config_file as load_xdp_file
from xpro_mesh.units import ConfigError as TheConfigError

ROOT = Path(__file__).resolve().parents[1]
ROLE_DEFAULTS = ROOT / "deploy/ansible/roles/xpro_mesh/defaults/main.yml"
S = NS_PER_S


def test_every_threshold_has_a_unit_a_meaning_and_a_reason_for_its_default() -> None:
    for f in fields(Params):
        assert f.metadata["unit"] in ("duration", "rate", "count", "policy"), f.name
        assert len(f.metadata["what"]) > 10 and len(f.metadata["why"]) > 10, f.name


def test_the_data_path_and_the_agent_default_to_the_cores_record() -> None:
    assert XdpConfig().params == DEFAULTS
    assert Thresholds().params() == DEFAULTS
    assert load_config(None, {"backend": "memory"}, require_key_file=False).thresholds.params() == (
        DEFAULTS
    )


def test_there_is_one_config_error() -> None:
    from xpro_mesh.datapath import config as datapath_config

    assert ConfigError is TheConfigError is datapath_config.ConfigError


def test_the_ansible_role_defaults_are_rendered_from_the_record() -> None:
    check = subprocess.run(
        [sys.executable, str(ROOT / "scripts/render_ansible_defaults.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_ansible_role_defaults_read_back_as_the_record() -> None:
    role = yaml.safe_load(ROLE_DEFAULTS.read_text())
    flags = {f"thresholds.{f.name}": role[f"xpro_mesh_{f.name}"] for f in fields(Params)}
    config = load_config(None, {"backend": "memory", **flags}, require_key_file=False)
    assert config.thresholds.params() == DEFAULTS


def test_precedence_is_defaults_then_toml_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('[thresholds]\nt_t1 = "7s"\nt_f1 = 50\n')
    config = load_config(
        path, {"backend": "memory", "thresholds.t_f1": "60/s"}, require_key_file=False
    )
    t = config.thresholds
    assert (t.t_t1, t.t_f1, t.t_f2) == (7 * S, 60, DEFAULTS.t_f2)
    assert reload_thresholds(path, {"thresholds.t_f1": "60"}) == Thresholds(t_t1=7 * S, t_f1=60)


def test_xdp_config_files_override_the_same_defaults(tmp_path: Path) -> None:
    path = tmp_path / "xdp.toml"
    path.write_text('t_t4 = "20s"\npolicy = "paper"\n')
    config, _ = load_xdp_file(path)
    assert config.params == replace(DEFAULTS, t_t4=20 * S, policy=Policy.PAPER)


@pytest.mark.parametrize(
    ("field", "value", "key"),
    [
        ("t_t1", 0, "t_t1"),
        ("t_t2", 11 * S, "t_t2"),
        ("t_t3", 11 * S, "t_t3"),
        ("t_f1", 0, "t_f1"),
        ("t_f2", 0, "t_f2"),
    ],
)
def test_an_operators_thresholds_fail_by_one_rule_in_both_places(
    field: str, value: int, key: str, tmp_path: Path
) -> None:
    values: dict[str, Any] = {field: value}
    bad = replace(DEFAULTS, **values)
    [(problem_key, problem)] = operational_problems(bad)
    assert problem_key == key
    with pytest.raises(ConfigError) as agent_error:
        Thresholds(**values)
    assert str(agent_error.value) == f"thresholds.{key}: {problem}".replace(
        "exceed t_t4", "exceed thresholds.t_t4"
    )
    path = tmp_path / "xdp.toml"
    path.write_text(f"{field} = {value if field.startswith('t_f') else repr(f'{value}ns')}\n")
    with pytest.raises(ConfigError) as xdp_error:
        load_xdp_file(path)
    assert str(xdp_error.value) == f"{path}: {key}: {problem}"
    assert "\n" not in str(xdp_error.value)


def test_the_model_accepts_windows_an_operator_may_not_set() -> None:
    tiny = Params(t_t1=1, t_t2=5, t_t3=0, t_t4=2, t_f1=0, t_f2=0, r=2)  # unit tests need these
    assert [k for k, _ in operational_problems(tiny)] == ["t_t3", "t_t2", "t_f1", "t_f2"]


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("thresholds.t_t1", 5, "thresholds.t_t1: expected a duration with a unit"),
        ("thresholds.t_t4", "forever", "thresholds.t_t4: expected a duration like"),
        ("thresholds.t_f2", "lots", "thresholds.t_f2: expected a rate like"),
        ("thresholds.r", "1", "thresholds.r: must be an integer >= 2, got 1"),
        ("thresholds.policy", "strict", 'thresholds.policy: expected one of "fair-share"'),
    ],
)
def test_bad_threshold_values_are_one_line_naming_the_key(
    key: str, value: object, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, {"backend": "memory", key: value}, require_key_file=False)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_the_record_renders_as_a_thresholds_table_both_loaders_read_back(tmp_path: Path) -> None:
    lab = replace(DEFAULTS, t_t1=3 * S, t_t2=S // 2, t_t4=2 * S, t_f1=50, t_f2=1440)
    text = lab.as_toml(Policy.PAPER)
    assert text.splitlines()[:2] == ['t_t1 = "3s"', 't_t2 = "500ms"']
    xdp = tmp_path / "xdp.toml"
    xdp.write_text(text)
    assert load_xdp_file(xdp)[0].params == replace(lab, policy=Policy.PAPER)
    agent = tmp_path / "agent.toml"
    agent.write_text("[thresholds]\n" + lab.as_toml())
    assert reload_thresholds(agent) == Thresholds.of(lab)
