"""The XDP program's configuration: thresholds, destination policy, clock
and warning limits, as one typed, validated object.

Sources, in order: defaults (the thresholds': the core's
:data:`~xpro_mesh.core.params.DEFAULTS`) <- a TOML file (``xdp attach
--config``) <- ``KEY=VALUE`` assignments (``xdp set``). Durations are stored
in ns and need a unit (``"1s"``, ``"500ms"``, ``"250us"``, ``"100ns"``,
``"2m"``; a bare number is refused); rates are packets per second (``100``,
``"10k"``), as everywhere (:mod:`xpro_mesh.units`). Errors name the key.

TOML, flat or under an ``[xdp]`` table::

    t_t1 = "5s"      # idle time after which a pair's window restarts
    t_t2 = "1s"      # shortest pair window judged against t_f1
    t_t3 = "1s"      # shortest destination window judged against t_f2
    t_t4 = "10s"     # longest window before decay by r (agent)
    t_f1 = 100       # packets/s per (client, destination)
    t_f2 = 1000      # packets/s per destination, all clients, all proxies
    r = 2            # frequency division factor
    admit_k = 4      # fair-share: packets (and a window over t_t2) of an established pair
    admit_rate = 100 # fair-share: young-pair packets/s a destination over t_f2 admits
    admit_burst = 10 # fair-share: that budget's depth, packets (at most 4000)
    policy = "fair-share"   # or "paper"
    clock = "coarse"        # or "precise"
    warn_interval = "1s"    # between two overload warnings of one pair
    warn_per_cpu = 100      # overload warnings per second per CPU, at most
    view_hold = "1s"        # a destination view no agent renews keeps the mesh's rate this long
    view_hold_max = "30s"   # ... and up to this long while the agent's heartbeat is stale
    unparsed = "pass"       # or "drop": > 8 VLAN tags, MPLS, PPPoE (counted either way)
    src_prefix4 = 32        # a client is this many leading bits of an IPv4 source (1-32)
    src_prefix6 = 64        # ... of an IPv6 source (1-128): a host's /64 is one client
    pairs_max = 1048576     # map sizes: used when the maps are created
    dests_max = 65536
"""

from __future__ import annotations

import enum
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from xpro_mesh import units
from xpro_mesh.core.keys import source_prefix
from xpro_mesh.core.params import (
    ADMIT_BURST_MAX,
    ADMIT_RATE_MAX,
    DEFAULTS,
    NS_PER_S,
    Params,
    Policy,
    operational_problems,
)
from xpro_mesh.datapath import structs
from xpro_mesh.units import ConfigError

__all__ = [
    "ClockSource",
    "ConfigError",
    "MapSizes",
    "Policy",
    "Unparsed",
    "XdpConfig",
    "load_config_file",
    "parse_duration",
    "parse_rate",
]

_MAX_S64 = units.MAX_S64


class Unparsed(enum.StrEnum):
    """What the program does with an IP carrier it cannot parse (more than
    8 VLAN tags, MPLS, PPPoE session): counted either way (``unparsed``)."""

    PASS = "pass"
    DROP = "drop"


class ClockSource(enum.StrEnum):
    """The kernel clock the program reads once per packet."""

    COARSE = "coarse"  # bpf_ktime_get_coarse_ns(): ~15 ns, one jiffy resolution
    PRECISE = "precise"  # bpf_ktime_get_ns(): ~30 ns, ns resolution


def parse_duration(key: str, value: object) -> int:
    """ns from a string with a unit (:func:`xpro_mesh.units.parse_duration_ns`)."""
    try:
        return units.parse_duration_ns(value)
    except ValueError as exc:
        raise ConfigError(key, str(exc)) from None


def parse_rate(key: str, value: object) -> int:
    """packets/s from an int or a string like ``"10k"``."""
    try:
        return units.parse_rate_pps(value)
    except ValueError as exc:
        raise ConfigError(key, str(exc)) from None


def _parse_int(key: str, value: object) -> int:
    if isinstance(value, bool):
        raise ConfigError(key, f"expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    raise ConfigError(key, f"expected an integer, got {value!r}")


def _parse_enum(key: str, value: object, kind: type[enum.Enum]) -> Any:
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(str(m.value) for m in kind)
        raise ConfigError(key, f"{value!r} is not one of {choices}") from None


# The integer fields, range-checked here and copied into the kernel's struct.
_INT_FIELDS = (
    "t_t1",
    "t_t2",
    "t_t3",
    "t_t4",
    "t_f1",
    "t_f2",
    "r",
    "warn_interval",
    "warn_per_cpu",
    "admit_k",
    "admit_rate",
    "admit_burst",
    "view_hold",
    "view_hold_max",
)


@dataclass(frozen=True, slots=True)
class XdpConfig:
    """Everything the kernel program reads from its config map.

    The thresholds and the policy are the core's :class:`Params` (whose
    docstring explains each), with its defaults; r is carried for the agent
    (the kernel never divides). The rest is
    the data path's own: the destination policy, the kernel clock, and the
    overload-warning limits (per pair: one per ``warn_interval``; per CPU:
    ``warn_per_cpu`` a second).
    """

    t_t1: int = DEFAULTS.t_t1
    t_t2: int = DEFAULTS.t_t2
    t_t3: int = DEFAULTS.t_t3
    t_t4: int = DEFAULTS.t_t4
    t_f1: int = DEFAULTS.t_f1
    t_f2: int = DEFAULTS.t_f2
    r: int = DEFAULTS.r
    admit_k: int = DEFAULTS.admit_k
    admit_rate: int = DEFAULTS.admit_rate
    admit_burst: int = DEFAULTS.admit_burst
    view_hold: int = 1 * NS_PER_S
    view_hold_max: int = 30 * NS_PER_S
    policy: Policy = DEFAULTS.policy
    clock: ClockSource = ClockSource.COARSE
    warn_interval: int = 1 * NS_PER_S
    warn_per_cpu: int = 100
    unparsed: Unparsed = Unparsed.PASS
    src_prefix4: int = DEFAULTS.src_prefix4
    src_prefix6: int = DEFAULTS.src_prefix6

    def __post_init__(self) -> None:
        for name in _INT_FIELDS:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(name, f"must be an integer, got {value!r}")
            if not 0 <= value <= _MAX_S64:
                raise ConfigError(name, f"{value} is out of range 0..2^63-1")
        if self.r < 2:
            raise ConfigError("r", f"must be an integer >= 2, got {self.r}")
        if self.admit_burst > ADMIT_BURST_MAX:
            raise ConfigError(
                "admit_burst", f"must be at most {ADMIT_BURST_MAX}, got {self.admit_burst}"
            )
        if self.admit_rate > ADMIT_RATE_MAX:
            raise ConfigError(
                "admit_rate", f"must be at most {ADMIT_RATE_MAX}/s, got {self.admit_rate}"
            )
        if not isinstance(self.policy, Policy):
            raise ConfigError("policy", f"{self.policy!r} is not a Policy")
        if not isinstance(self.unparsed, Unparsed):
            raise ConfigError("unparsed", f"{self.unparsed!r} is not pass or drop")
        if not isinstance(self.clock, ClockSource):
            raise ConfigError("clock", f"{self.clock!r} is not a ClockSource")
        for name, most in (("src_prefix4", 32), ("src_prefix6", 128)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= most:
                raise ConfigError(name, f"must be a prefix length in 1..{most}, got {value!r}")

    # -- conversions -------------------------------------------------------

    @property
    def params(self) -> Params:
        """The core's thresholds (for the reference model and the agent)."""
        return Params.of(self)

    @classmethod
    def from_params(cls, p: Params, **rest: Any) -> XdpConfig:
        """The thresholds and policy of ``p``; ``rest`` sets any field (policy too)."""
        return cls(**{f.name: getattr(p, f.name) for f in fields(p)} | rest)

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
        c.unparsed = (
            structs.XPRO_UNPARSED_DROP
            if self.unparsed is Unparsed.DROP
            else structs.XPRO_UNPARSED_PASS
        )
        c.src_prefix4 = self.src_prefix4
        c.src_prefix6 = self.src_prefix6
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
            admit_k=c.admit_k,
            admit_rate=min(c.admit_rate, ADMIT_RATE_MAX),
            admit_burst=min(c.admit_burst, ADMIT_BURST_MAX),
            view_hold=c.view_hold,
            view_hold_max=c.view_hold_max,
            policy=Policy.PAPER if c.policy == structs.XPRO_POLICY_PAPER else Policy.FAIR_SHARE,
            clock=(
                ClockSource.PRECISE if c.clock == structs.XPRO_CLOCK_PRECISE else ClockSource.COARSE
            ),
            warn_interval=c.warn_interval,
            warn_per_cpu=c.warn_per_cpu,
            unparsed=Unparsed.DROP if c.unparsed == structs.XPRO_UNPARSED_DROP else Unparsed.PASS,
            src_prefix4=c.src_prefix4 if 1 <= c.src_prefix4 <= 32 else 32,
            src_prefix6=c.src_prefix6 if 1 <= c.src_prefix6 <= 128 else 128,
        )

    def client_of(self, src: bytes) -> bytes:
        """The client a 16-byte source address counts as (its prefix)."""
        return source_prefix(src, self.src_prefix4, self.src_prefix6)

    def as_dict(self) -> dict[str, int | str]:
        return {
            f.name: (str(v) if isinstance(v := getattr(self, f.name), enum.Enum) else v)
            for f in fields(self)
        }

    # -- updates -----------------------------------------------------------

    def updated(self, values: Mapping[str, object]) -> XdpConfig:
        """A copy with ``values`` (as an operator writes them) parsed and
        checked, also against the rules of an operator's thresholds
        (:func:`~xpro_mesh.core.params.operational_problems`)."""
        known = {f.name for f in fields(self)}
        changes: dict[str, Any] = {}
        for key, raw in values.items():
            if key not in known:
                raise ConfigError(key, f"unknown key (known: {', '.join(sorted(known))})")
            changes[key] = _parse_value(key, raw)
        config = replace(self, **changes)
        # Refuse what these values break; a key not set here and not judged
        # against one set here (t_t2 and t_t3 against t_t4) keeps the map's value.
        for key, problem in operational_problems(config.params):
            if key in changes or (key in ("t_t2", "t_t3") and "t_t4" in changes):
                raise ConfigError(key, problem)
        return config

    def with_assignments(self, assignments: list[str]) -> XdpConfig:
        """``xdp set`` arguments: ``KEY=VALUE`` strings."""
        values: dict[str, str] = {}
        for item in assignments:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(repr(item), "expected KEY=VALUE")
            values[key.strip()] = value.strip()
        return self.updated(values)


def _parse_value(key: str, raw: object) -> Any:
    if key in ("t_t1", "t_t2", "t_t3", "t_t4", "warn_interval", "view_hold", "view_hold_max"):
        return parse_duration(key, raw)
    if key in ("t_f1", "t_f2", "admit_rate"):
        return parse_rate(key, raw)
    if key in ("r", "warn_per_cpu", "admit_k", "admit_burst", "src_prefix4", "src_prefix6"):
        return _parse_int(key, raw)
    if key == "policy":
        return _parse_enum(key, raw, Policy)
    if key == "clock":
        return _parse_enum(key, raw, ClockSource)
    if key == "unparsed":
        return _parse_enum(key, raw, Unparsed)
    raise ConfigError(key, "unknown key")


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
                raise ConfigError(name, f"must be an integer in 1..2^28, got {value!r}")


def load_config_file(path: str | Path) -> tuple[XdpConfig, MapSizes]:
    """Read a TOML file (flat, or keys under ``[xdp]``)."""
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except FileNotFoundError:
        raise ConfigError(str(p), "no such file") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(str(p), str(exc)) from None
    table = data.get("xdp", data)
    if not isinstance(table, dict):
        raise ConfigError(str(p), "[xdp] must be a table")
    sizes_raw = {k: table.pop(k) for k in ("pairs_max", "dests_max") if k in table}
    try:
        sizes = MapSizes(**{k: _parse_int(k, v) for k, v in sizes_raw.items()})
        config = XdpConfig().updated(table)
    except ConfigError as exc:
        raise ConfigError(str(p), str(exc)) from None
    return config, sizes
