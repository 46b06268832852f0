"""The XDP program's configuration: thresholds, destination policy, clock
and warning limits, as one typed, validated object.

Sources, in order: defaults here <- a TOML file (``xdp attach --config``)
<- ``KEY=VALUE`` assignments (``xdp set``). Durations are stored in ns and
accept human units (``"1s"``, ``"500ms"``, ``"250us"``, ``"100ns"``,
``"2m"``); rates are packets per second (``100``, ``"10k"``). Errors name
the key.

TOML, flat or under an ``[xdp]`` table::

    t_t1 = "10s"     # idle time after which a pair's window restarts
    t_t2 = "1s"      # shortest pair window judged against t_f1
    t_t3 = "1s"      # shortest destination window judged against t_f2
    t_t4 = "60s"     # longest window before decay by r (agent)
    t_f1 = 100       # packets/s per (client, destination)
    t_f2 = "10k"     # packets/s per destination, all clients, all proxies
    r = 2            # frequency division factor
    policy = "fair-share"   # or "paper"
    clock = "coarse"        # or "precise"
    warn_interval = "1s"    # between two overload warnings of one pair
    warn_per_cpu = 100      # overload warnings per second per CPU, at most
    pairs_max = 1048576     # map sizes: used when the maps are created
    dests_max = 65536
"""

from __future__ import annotations

import enum
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from xpro_mesh import units
from xpro_mesh.core.algorithm import NS_PER_S, Params
from xpro_mesh.datapath import structs

__all__ = [
    "ClockSource",
    "ConfigError",
    "MapSizes",
    "Policy",
    "XdpConfig",
    "load_config_file",
    "parse_duration",
    "parse_rate",
]

_MAX_S64 = 2**63 - 1


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the key."""


class Policy(enum.StrEnum):
    """The destination rule (DESIGN.md, "The destination rule")."""

    FAIR_SHARE = "fair-share"  # the default: only the pairs above T_F2 / n(D)
    PAPER = "paper"  # lines 21-23 literally: every packet to D while D is over T_F2


class ClockSource(enum.StrEnum):
    """The kernel clock the program reads once per packet."""

    COARSE = "coarse"  # bpf_ktime_get_coarse_ns(): ~15 ns, one jiffy resolution
    PRECISE = "precise"  # bpf_ktime_get_ns(): ~30 ns, ns resolution


def _parse_quantity(
    key: str,
    value: object,
    what: str,
    from_text: Callable[[str], int],
    hint: str = "",
    unit: str = "",
) -> int:
    """An int as it is, or a string through ``from_text``; a bool, another
    type or a value outside the kernel's s64 is one ConfigError naming ``key``."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ConfigError(f"{key}: expected {what}, got {value!r}")
    if isinstance(value, int):
        number = value
    else:
        try:
            number = from_text(value)
        except ValueError as exc:
            raise ConfigError(f"{key}: {exc}{hint}") from None
    if not 0 <= number <= _MAX_S64:
        raise ConfigError(f"{key}: {number}{unit} is out of range")
    return number


def _duration_text(text: str) -> int:
    text = text.strip()
    return int(text) if text.isdigit() else units.parse_duration_ns(text)


def parse_duration(key: str, value: object) -> int:
    """ns from an int (ns) or a string with a unit; a bare number is ns."""
    return _parse_quantity(
        key, value, "a duration", _duration_text, " (e.g. 1s, 500ms, 100ns)", unit=" ns"
    )


def parse_rate(key: str, value: object) -> int:
    """packets/s from an int or a string like ``"10k"``."""
    return _parse_quantity(key, value, "packets per second", units.parse_rate_pps)


def _parse_int(key: str, value: object) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    raise ConfigError(f"{key}: expected an integer, got {value!r}")


def _parse_enum(key: str, value: object, kind: type[enum.Enum]) -> Any:
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(str(m.value) for m in kind)
        raise ConfigError(f"{key}: {value!r} is not one of {choices}") from None


# The integer fields, range-checked here and copied into the kernel's struct.
_INT_FIELDS = ("t_t1", "t_t2", "t_t3", "t_t4", "t_f1", "t_f2", "r", "warn_interval", "warn_per_cpu")


@dataclass(frozen=True, slots=True)
class XdpConfig:
    """Everything the kernel program reads from its config map.

    t_t1..t_t4 in ns, t_f1/t_f2 in packets/s, as :class:`Params` of the core
    (whose docstring explains each); r is carried for the agent. The rest is
    the data path's own: the destination policy, the kernel clock, and the
    overload-warning limits (per pair: one per ``warn_interval``; per CPU:
    ``warn_per_cpu`` a second).
    """

    t_t1: int = 10 * NS_PER_S
    t_t2: int = 1 * NS_PER_S
    t_t3: int = 1 * NS_PER_S
    t_t4: int = 60 * NS_PER_S
    t_f1: int = 100
    t_f2: int = 10_000
    r: int = 2
    policy: Policy = Policy.FAIR_SHARE
    clock: ClockSource = ClockSource.COARSE
    warn_interval: int = 1 * NS_PER_S
    warn_per_cpu: int = 100

    def __post_init__(self) -> None:
        for name in _INT_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"{name}: must be an integer, got {value!r}")
            if not 0 <= value <= _MAX_S64:
                raise ConfigError(f"{name}: {value} is out of range 0..2^63-1")
        if self.r < 2:
            raise ConfigError(f"r: must be an integer >= 2, got {self.r}")
        if not isinstance(self.policy, Policy):
            raise ConfigError(f"policy: {self.policy!r} is not a Policy")
        if not isinstance(self.clock, ClockSource):
            raise ConfigError(f"clock: {self.clock!r} is not a ClockSource")

    # -- conversions -------------------------------------------------------

    @property
    def params(self) -> Params:
        """The core's thresholds (for the reference model and the agent)."""
        return Params.of(self)

    @classmethod
    def from_params(cls, p: Params, **rest: Any) -> XdpConfig:
        return cls(**asdict(p), **rest)

    def to_struct(self) -> structs.XproConfig:
        c = structs.XproConfig()
        for name in _INT_FIELDS:
            setattr(c, name, getattr(self, name))
        c.policy = (
            structs.XPRO_POLICY_PAPER
            if self.policy is Policy.PAPER
            else structs.XPRO_POLICY_FAIR_SHARE
        )
        c.clock = (
            structs.XPRO_CLOCK_PRECISE
            if self.clock is ClockSource.PRECISE
            else structs.XPRO_CLOCK_COARSE
        )
        c.version = structs.XPRO_CONFIG_VERSION
        return c

    @classmethod
    def from_struct(cls, c: structs.XproConfig) -> XdpConfig:
        return cls(
            t_t1=c.t_t1,
            t_t2=c.t_t2,
            t_t3=c.t_t3,
            t_t4=c.t_t4,
            t_f1=c.t_f1,
            t_f2=c.t_f2,
            r=max(2, c.r),
            policy=Policy.PAPER if c.policy == structs.XPRO_POLICY_PAPER else Policy.FAIR_SHARE,
            clock=(
                ClockSource.PRECISE if c.clock == structs.XPRO_CLOCK_PRECISE else ClockSource.COARSE
            ),
            warn_interval=c.warn_interval,
            warn_per_cpu=c.warn_per_cpu,
        )

    def as_dict(self) -> dict[str, int | str]:
        return {
            f.name: (str(v) if isinstance(v := getattr(self, f.name), enum.Enum) else v)
            for f in fields(self)
        }

    # -- updates -----------------------------------------------------------

    def updated(self, values: Mapping[str, object]) -> XdpConfig:
        """A copy with ``values`` (strings or typed) parsed and validated."""
        known = {f.name for f in fields(self)}
        changes: dict[str, Any] = {}
        for key, raw in values.items():
            if key not in known:
                raise ConfigError(f"{key}: unknown key (known: {', '.join(sorted(known))})")
            changes[key] = _parse_value(key, raw)
        return replace(self, **changes)

    def with_assignments(self, assignments: list[str]) -> XdpConfig:
        """``xdp set`` arguments: ``KEY=VALUE`` strings."""
        values: dict[str, str] = {}
        for item in assignments:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"{item!r}: expected KEY=VALUE")
            values[key.strip()] = value.strip()
        return self.updated(values)


def _parse_value(key: str, raw: object) -> Any:
    if key in ("t_t1", "t_t2", "t_t3", "t_t4", "warn_interval"):
        return parse_duration(key, raw)
    if key in ("t_f1", "t_f2"):
        return parse_rate(key, raw)
    if key in ("r", "warn_per_cpu"):
        return _parse_int(key, raw)
    if key == "policy":
        return _parse_enum(key, raw, Policy)
    if key == "clock":
        return _parse_enum(key, raw, ClockSource)
    raise ConfigError(f"{key}: unknown key")


@dataclass(frozen=True, slots=True)
class MapSizes:
    """Map capacities, fixed when the maps are created (a restart with live
    pinned maps keeps theirs)."""

    pairs_max: int = 1 << 20
    dests_max: int = 1 << 16

    def __post_init__(self) -> None:
        for name in ("pairs_max", "dests_max"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 1 << 28:
                raise ConfigError(f"{name}: must be an integer in 1..2^28, got {value!r}")


def load_config_file(path: str | Path) -> tuple[XdpConfig, MapSizes]:
    """Read a TOML file (flat, or keys under ``[xdp]``)."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{p}: {exc}") from None
    table = data.get("xdp", data)
    if not isinstance(table, dict):
        raise ConfigError(f"{p}: [xdp] must be a table")
    sizes_raw = {k: table.pop(k) for k in ("pairs_max", "dests_max") if k in table}
    try:
        sizes = MapSizes(**{k: _parse_int(k, v) for k, v in sizes_raw.items()})
        config = XdpConfig().updated(table)
    except ConfigError as exc:
        raise ConfigError(f"{p}: {exc}") from None
    return config, sizes
