"""One typed configuration object for the agent: defaults ← TOML ← flags.

Why: an agent misconfigured by one typo drops the wrong traffic or never
joins the mesh, so configuration is read once at start, every value is
checked, and the first bad one stops the start with one line that names the
key (``gossip.interval: expected a duration like "500ms", got "fast"``).
Unknown keys are errors too, with a "did you mean".

Precedence: the defaults of a named profile, then the TOML file, then the
command-line flags (a dict of dotted keys, ``None`` meaning "flag not given").
The profile is chosen the same way (``profile = "local"`` in the file,
``{"profile": "local"}`` from a flag). Profiles follow memberlist's
``DefaultLANConfig`` / ``DefaultWANConfig`` / ``DefaultLocalConfig``:

* ``lan`` (default): proxies on one data-centre network;
* ``local``: every agent on one host (loopback tests, the lab), fast timers;
* ``wan``: proxies across sites, slow and lossy links.

Units are for humans (:mod:`xpro_mesh.units`, one rule for the whole
project): durations need a unit, ``"250us" "500ms" "2s" "1m30s" "1h"`` (a bare
number is refused); rates are packets/s, ``1000`` ``"1000/s" "2k pps"
"6000/min"``; sizes ``1400`` ``"60kB"`` ``"64KiB"``. Fields ending in ``_ns``
are nanoseconds and are spelled without the suffix in the file
(``max_skew_ns`` is ``max_skew``).

A TOML file looks like::

    profile = "lan"
    node_id = "proxy-1"
    bind = "0.0.0.0:7946"
    advertise = "10.0.0.1:7946"
    peers = ["10.0.0.2:7946", "10.0.0.3:7946"]
    iface = "eth0"
    key_file = "/etc/xpro-mesh/cluster.key"

    [thresholds]
    t_f1 = "100/s"
    t_f2 = "5k/s"
    policy = "fair-share"

    [gossip]
    interval = "500ms"

SIGHUP re-reads only the thresholds (:func:`reload_thresholds`), which can
change while the agent runs without touching the mesh.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import json
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xpro_mesh import units
from xpro_mesh.core.dispersion import DispersionParams
from xpro_mesh.core.params import Params, Policy, operational_problems
from xpro_mesh.mesh.membership import MembershipParams, detection_time_bound_ns
from xpro_mesh.mesh.stream import StreamLimits
from xpro_mesh.mesh.transport import UDP_MAX_PAYLOAD, Address
from xpro_mesh.units import ConfigError

__all__ = [
    "AgentConfig",
    "Backend",
    "ConfigError",
    "DispersionConfig",
    "GossipConfig",
    "Limits",
    "LogLevel",
    "Policy",
    "Profile",
    "SyncMode",
    "Thresholds",
    "config_keys",
    "defaults",
    "format_duration",
    "lan_gossip",
    "load_config",
    "local_gossip",
    "parse_duration",
    "parse_rate",
    "reload_thresholds",
    "wan_gossip",
]

US = 1_000
MS = 1_000_000
S = 1_000_000_000
MIN_MESSAGE_BYTES = 512  # room for the envelope (<= 323 bytes) and a useful payload
MIN_FRAME_BYTES = 64 * 1024  # a stream frame smaller than a datagram would defeat it


class Backend(enum.StrEnum):
    XDP = "xdp"  # the kernel program's pinned BPF maps
    MEMORY = "memory"  # the in-memory twin: no kernel program, for tests and the lab


class SyncMode(enum.StrEnum):
    """How a proxy shares what it counts."""

    GOSSIP = "gossip"  # this project: the masterless mesh
    MASTER = "master"  # the paper's architecture: Algorithm 1 against a Redis M_DB
    NONE = "none"  # the filter alone (X-Pro without sharing)


class Profile(enum.StrEnum):
    LAN = "lan"
    LOCAL = "local"
    WAN = "wan"


class LogLevel(enum.StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


# --- value parsers: raw TOML/flag value -> typed value, or _Bad ---------------


class _Bad(Exception):
    """A parser's complaint; the builder adds the key."""


_show = units.show


def parse_duration(value: object) -> int:
    """``"500ms"`` → 500_000_000 ns (:func:`xpro_mesh.units.parse_duration_ns`:
    a bare number is refused)."""
    try:
        return units.parse_duration_ns(value)
    except ValueError as exc:
        raise _Bad(str(exc)) from None


def parse_rate(value: object) -> int:
    """Packets per second (:func:`xpro_mesh.units.parse_rate_pps`)."""
    try:
        return units.parse_rate_pps(value)
    except ValueError as exc:
        raise _Bad(str(exc)) from None


format_duration = units.format_duration


_SIZE = re.compile(r"(\d+)\s*(B|kB|KB|KiB|MB|MiB)?")
_SIZE_MULT = {None: 1, "B": 1, "kB": 1000, "KB": 1000, "KiB": 1024, "MB": 10**6, "MiB": 2**20}


def _size(value: object) -> int:
    expected = f'expected a size in bytes like 1400 or "60kB", got {_show(value)}'
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and (match := _SIZE.fullmatch(value.strip())):
        return int(match.group(1)) * _SIZE_MULT[match.group(2)]
    raise _Bad(expected)


def _fraction(value: object) -> float:
    """An occupancy or share: ``0.8`` or ``"80%"`` (0 < x <= 10)."""
    expected = f'expected a fraction like 0.8 or "80%", got {_show(value)}'
    if isinstance(value, bool):
        raise _Bad(expected)
    number: float
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            number = float(text[:-1]) / 100 if text.endswith("%") else float(text)
        except ValueError:
            raise _Bad(expected) from None
    else:
        raise _Bad(expected)
    if not 0 < number <= 10:
        raise _Bad(expected)
    return number


def _count(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    raise _Bad(f"expected a whole number, got {_show(value)}")


_HOST_PORT = re.compile(
    r"\[(?P<v6>[0-9A-Fa-f:.%a-z]+)\]:(?P<p6>\d+)|(?P<host>[^\s:\[\]]+):(?P<port>\d+)"
)


def _address(value: object, *, port_zero: bool) -> Address:
    expected = f'expected host:port like "10.0.0.2:7946", got {_show(value)}'
    if not isinstance(value, str):
        raise _Bad(expected)
    match = _HOST_PORT.fullmatch(value.strip())
    if match is None:
        raise _Bad(expected)
    host = match.group("v6") or match.group("host")
    port = int(match.group("p6") or match.group("port"))
    if not (0 if port_zero else 1) <= port <= 65535:
        raise _Bad(f"port must be {0 if port_zero else 1}..65535, got {_show(value)}")
    return (host, port)


def _bind_address(value: object) -> Address:
    return _address(value, port_zero=True)


def _peer_address(value: object) -> Address:
    return _address(value, port_zero=False)


def _peers(value: object) -> tuple[Address, ...]:
    if isinstance(value, str):
        items: list[object] = [v for v in value.split(",") if v.strip()]
    elif isinstance(value, list):
        items = value
    else:
        raise _Bad(f'expected a list of host:port like ["10.0.0.2:7946"], got {_show(value)}')
    peers: list[Address] = []
    for index, item in enumerate(items, start=1):
        try:
            peers.append(_peer_address(item))
        except _Bad as bad:
            raise _Bad(f"item {index}: {bad}") from None
    return tuple(dict.fromkeys(peers))


def _text(value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _Bad(f"expected a non-empty string, got {_show(value)}")
    return value.strip()


def _path(value: object) -> Path:
    return Path(_text(value))


def _url(value: object) -> str:
    text = _text(value)
    if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", text):
        raise _Bad(f"expected an http:// or https:// URL, got {_show(value)}")
    return text


def _choice(kind: type[enum.StrEnum]) -> Callable[[object], enum.StrEnum]:
    names = [member.value for member in kind]

    def parse(value: object) -> enum.StrEnum:
        if isinstance(value, str) and value.strip().lower() in names:
            return kind(value.strip().lower())
        options = ", ".join(json.dumps(n) for n in names)
        hint = ""
        if isinstance(value, str):
            given = value.strip().lower()
            close = [n for n in names if given and n.startswith(given)]
            close = close or difflib.get_close_matches(given, names, n=1)
            hint = f' (did you mean "{close[0]}"?)' if close else ""
        raise _Bad(f"expected one of {options}, got {_show(value)}{hint}")

    return parse


Parser = Callable[[object], object]


def _parse(parse: Parser) -> dict[str, Parser]:
    """Field metadata: a file or flag may set this field, through ``parse``."""
    return {"parse": parse}


def _require(ok: bool, key: str, problem: str) -> None:
    if not ok:
        raise ConfigError(key, problem)


# --- the configuration -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Thresholds(Params):
    """The ``[thresholds]`` section: the core's record (its fields, defaults
    and the reason for each: :class:`~xpro_mesh.core.params.Params`), checked
    as an operator's configuration, each problem naming its dotted key."""

    def __post_init__(self) -> None:
        for key, problem in operational_problems(self, "thresholds."):
            raise ConfigError(key, problem)
        if self.r < 2:
            raise ConfigError("thresholds.r", f"must be an integer >= 2, got {self.r}")
        try:
            Params.__post_init__(self)
        except (TypeError, ValueError) as exc:  # the record's own bounds, by field name
            name, _, problem = str(exc).partition(" ")
            raise ConfigError(f"thresholds.{name}", problem) from None

    def params(self) -> Params:
        """The core's :class:`~xpro_mesh.core.params.Params` itself (a Thresholds
        compares unequal to it, being of another class)."""
        return Params.of(self)


# How a threshold is written, by the unit the core gives it.
_THRESHOLD_PARSERS: dict[str, Parser] = {
    "duration": parse_duration,
    "rate": parse_rate,
    "count": _count,
    "policy": _choice(Policy),
}


@dataclass(frozen=True, slots=True)
class GossipConfig:
    """Timers and sizes of the gossip mesh; see the profile functions for
    what each value trades. Durations are ns."""

    interval_ns: int = field(metadata=_parse(parse_duration))
    fanout: int = field(metadata=_parse(_count))
    push_pull_interval_ns: int = field(metadata=_parse(parse_duration))
    probe_interval_ns: int = field(metadata=_parse(parse_duration))
    probe_timeout_ns: int = field(metadata=_parse(parse_duration))
    suspicion_mult: int = field(metadata=_parse(_count))
    indirect_checks: int = field(metadata=_parse(_count))
    retransmit_mult: int = field(metadata=_parse(_count))
    max_message_bytes: int = field(metadata=_parse(_size))
    replay_window_ns: int = field(metadata=_parse(parse_duration))
    dead_retention_ns: int = field(metadata=_parse(parse_duration))
    stream_after: int = field(metadata=_parse(_count))
    stream_frame_bytes: int = field(metadata=_parse(_size))
    stream_max_bytes: int = field(metadata=_parse(_size))
    stream_connections: int = field(metadata=_parse(_count))
    stream_timeout_ns: int = field(metadata=_parse(parse_duration))

    def __post_init__(self) -> None:
        for name in (
            "interval_ns",
            "push_pull_interval_ns",
            "probe_interval_ns",
            "probe_timeout_ns",
            "replay_window_ns",
            "dead_retention_ns",
            "stream_timeout_ns",
        ):
            _require(getattr(self, name) > 0, f"gossip.{_key(name)}", "must be longer than 0s")
        for name in ("fanout", "suspicion_mult", "retransmit_mult", "stream_connections"):
            _require(getattr(self, name) >= 1, f"gossip.{name}", "must be at least 1")
        _require(
            self.probe_timeout_ns < self.probe_interval_ns,
            "gossip.probe_timeout",
            f"must be shorter than gossip.probe_interval "
            f"({format_duration(self.probe_interval_ns)}), "
            f"got {format_duration(self.probe_timeout_ns)}",
        )
        _require(
            MIN_MESSAGE_BYTES <= self.max_message_bytes <= UDP_MAX_PAYLOAD,
            "gossip.max_message_bytes",
            f"must be {MIN_MESSAGE_BYTES}..{UDP_MAX_PAYLOAD} bytes (one UDP datagram), "
            f"got {self.max_message_bytes}",
        )
        _require(
            MIN_FRAME_BYTES <= self.stream_frame_bytes <= self.stream_max_bytes,
            "gossip.stream_frame_bytes",
            f"must be {MIN_FRAME_BYTES} bytes..gossip.stream_max_bytes "
            f"({self.stream_max_bytes}), got {self.stream_frame_bytes}",
        )

    def stream_limits(self) -> StreamLimits:
        """Bounds of the push-pull stream (:mod:`xpro_mesh.mesh.stream`)."""
        timeout = self.stream_timeout_ns / 1e9
        return StreamLimits(
            max_frame_bytes=self.stream_frame_bytes,
            max_stream_bytes=self.stream_max_bytes,
            max_streams=self.stream_connections,
            connect_timeout_s=timeout,
            io_timeout_s=timeout,
        )

    def membership_params(self) -> MembershipParams:
        return MembershipParams(
            probe_interval_ns=self.probe_interval_ns,
            probe_timeout_ns=self.probe_timeout_ns,
            suspicion_mult=self.suspicion_mult,
            indirect_checks=self.indirect_checks,
            retransmit_mult=self.retransmit_mult,
            push_pull_interval_ns=self.push_pull_interval_ns,
            dead_retention_ns=self.dead_retention_ns,
        )

    def detection_time_bound_ns(self, num_nodes: int) -> int:
        """See :mod:`xpro_mesh.mesh.membership` ("Detection time")."""
        return detection_time_bound_ns(
            self.membership_params(), num_nodes, self.interval_ns, self.fanout
        )


def lan_gossip() -> GossipConfig:
    """Proxies on one data-centre network (memberlist ``DefaultLANConfig``)."""
    return GossipConfig(
        # anti-entropy round: shorter spreads counts sooner, costs bandwidth
        interval_ns=500 * MS,
        # peers per round: more converges in fewer rounds, costs messages
        fanout=3,
        # full member-list exchange: repairs missed gossip, costs a full list
        push_pull_interval_ns=30 * S,
        # one failure check per node per interval: shorter detects sooner, costs probes
        probe_interval_ns=1 * S,
        # wait for a direct ack: a LAN round trip plus a busy agent's lag
        probe_timeout_ns=500 * MS,
        # suspicion lasts 4·max(1, log10 N) probe intervals: fewer false deaths, slower detection
        suspicion_mult=4,
        # ping-req helpers: more forgive one lossy link, cost messages
        indirect_checks=3,
        # each update is sent 4·⌈log10(N+1)⌉ times: reach against bandwidth
        retransmit_mult=4,
        # one Ethernet frame: no IP fragmentation, but more datagrams per full sync
        max_message_bytes=1_400,
        # accepted clock skew plus delay: tolerance against replay exposure
        replay_window_ns=30 * S,
        # remember the dead: refutes stale rumours, holds a little memory
        dead_retention_ns=30 * S,
        # a delta needing more datagrams goes on the TCP stream: keeps bulk out of the probes' way
        stream_after=4,
        # one stream frame (~300k changed rows): fewer writes, more memory per frame
        stream_frame_bytes=4 * 1024 * 1024,
        # one push-pull stream in all (a full table of 1M pairs x 3 origins fits)
        stream_max_bytes=128 * 1024 * 1024,
        # inbound streams at once: more peers served together, more memory
        stream_connections=8,
        # connect and per-frame read/write: a LAN round trip and a busy peer's lag
        stream_timeout_ns=5 * S,
    )


def local_gossip() -> GossipConfig:
    """Every agent on one host: loopback tests and the lab (memberlist
    ``DefaultLocalConfig``, faster still)."""
    return GossipConfig(
        # loopback is cheap: fast convergence for tests
        interval_ns=100 * MS,
        # as lan
        fanout=3,
        # repairs within a test's patience
        push_pull_interval_ns=5 * S,
        # detects a killed agent in about a second
        probe_interval_ns=200 * MS,
        # loopback RTT is microseconds; the rest is event-loop lag on a busy host
        probe_timeout_ns=100 * MS,
        # 600 ms of suspicion for N <= 10: fast, but a stalled agent may be suspected
        suspicion_mult=3,
        # the helpers share the host and its loopback, so more add little
        indirect_checks=1,
        # few nodes: a little above memberlist's 2 for a sure reach
        retransmit_mult=3,
        # one loopback packet (MTU 65536): fewest datagrams per full sync
        max_message_bytes=60_000,
        # one clock: only delay to absorb
        replay_window_ns=10 * S,
        # restarts in tests come back quickly
        dead_retention_ns=10 * S,
        # loopback datagrams are large (60 kB): only big deltas need the stream
        stream_after=4,
        # as lan
        stream_frame_bytes=4 * 1024 * 1024,
        # as lan
        stream_max_bytes=128 * 1024 * 1024,
        # every agent of a test on one host
        stream_connections=8,
        # loopback is fast; a stalled test agent gets the rest
        stream_timeout_ns=2 * S,
    )


def wan_gossip() -> GossipConfig:
    """Proxies across sites (memberlist ``DefaultWANConfig``)."""
    return GossipConfig(
        # fewer rounds over costly links
        interval_ns=1 * S,
        # one more peer per round makes up for the slower rounds
        fanout=4,
        # full lists are expensive across sites
        push_pull_interval_ns=60 * S,
        # WAN round trips and jitter
        probe_interval_ns=5 * S,
        # a slow path is not a dead node
        probe_timeout_ns=3 * S,
        # partitions heal slowly: tolerate them longer before declaring death
        suspicion_mult=6,
        # independent paths matter most here
        indirect_checks=3,
        # as lan
        retransmit_mult=4,
        # under tunnel and VPN MTUs: no fragmentation anywhere on the path
        max_message_bytes=1_200,
        # looser clocks across sites
        replay_window_ns=60 * S,
        # slower news: remember the dead longer
        dead_retention_ns=60 * S,
        # datagrams are small here: move bulk to the stream early
        stream_after=4,
        # smaller frames: a lost connection costs less to redo
        stream_frame_bytes=1024 * 1024,
        # as lan
        stream_max_bytes=128 * 1024 * 1024,
        # fewer sites, fewer peers at once
        stream_connections=4,
        # WAN round trips and a congested path
        stream_timeout_ns=15 * S,
    )


@dataclass(frozen=True, slots=True)
class DispersionConfig:
    """DeDoS dispersion (docs/dispersion.md): how W is measured and when the
    weights of ``GET /v1/proxies`` change. Durations are ns. DeDoS's own
    figures (act over 40 %, type >= 50 %, no removal within 20 s of an
    addition nor 5 s of a removal) are the core's and not configurable."""

    # packets/s one proxy judges at occupancy 1 (W = packets in / capacity)
    capacity: int = field(metadata=_parse(parse_rate))
    # T_W: occupancy above which a proxy is overloaded and weighted down
    t_w: float = field(metadata=_parse(_fraction))
    # event-loop lag that counts as a full agent (W >= lag / lag_budget)
    lag_budget_ns: int = field(metadata=_parse(parse_duration))
    # DeDoS: statistics read and rules applied every 100 ms
    stats_interval_ns: int = field(metadata=_parse(parse_duration))
    # rates are measured over this window (smooths bursts, delays reaction)
    window_ns: int = field(metadata=_parse(parse_duration))
    # W is gossiped this often (each publication bumps the incarnation)
    publish_interval_ns: int = field(metadata=_parse(parse_duration))
    # no shift back until the proxy was under T_W this long
    calm_ns: int = field(metadata=_parse(parse_duration))
    # minimum spacing between two weight changes
    min_change_ns: int = field(metadata=_parse(parse_duration))
    # relative weight change below which nothing moves (noise moves no client)
    deadband: float = field(metadata=_parse(_fraction))

    def __post_init__(self) -> None:
        _require(self.capacity >= 1, "dispersion.capacity", "must be at least 1/s")
        _require(
            0.4 < self.t_w <= 10,
            "dispersion.t_w",
            f"must be over 0.4 (DeDoS acts from 40 %), got {self.t_w}",
        )
        for name in ("lag_budget_ns", "stats_interval_ns", "window_ns", "publish_interval_ns"):
            _require(getattr(self, name) > 0, f"dispersion.{_key(name)}", "must be longer than 0s")
        _require(
            self.window_ns >= self.stats_interval_ns,
            "dispersion.window",
            f"must be at least dispersion.stats_interval "
            f"({format_duration(self.stats_interval_ns)}), got {format_duration(self.window_ns)}",
        )
        _require(self.deadband < 1, "dispersion.deadband", f"must be below 1, got {self.deadband}")

    def params(self) -> DispersionParams:
        """The core's rules with these values (:mod:`xpro_mesh.core.dispersion`)."""
        return DispersionParams(
            capacity_pps=float(self.capacity),
            lag_budget_ms=self.lag_budget_ns / MS,
            t_w=self.t_w,
            calm_ns=self.calm_ns,
            min_change_ns=self.min_change_ns,
            deadband=self.deadband,
        )


def lan_dispersion() -> DispersionConfig:
    return DispersionConfig(
        # one core of XDP at ~100 ns a packet, with room for the kernel's own work
        capacity=1_000_000,
        # 80 %: weighted down before the NIC queues overflow
        t_w=0.8,
        # under the lan probe timeout (500 ms): a loop this late starts failing probes
        lag_budget_ns=250 * MS,
        # DeDoS's figure
        stats_interval_ns=100 * MS,
        # one second of counters: bursts of a few ms do not move clients
        window_ns=1 * S,
        # one gossiped update a second per node
        publish_interval_ns=1 * S,
        # a proxy calm for 10 s takes clients back
        calm_ns=10 * S,
        # above the clients' time to follow (their refresh, 5 s by default, plus
        # the window): the rules never act on a half-finished move
        min_change_ns=6 * S,
        # 10 %: a weight moves only when it changes by more than a tenth
        deadband=0.1,
    )


def local_dispersion() -> DispersionConfig:
    return replace_dispersion(
        lan_dispersion(),
        # loopback agents judge packets fed through the API: a few thousand a second
        capacity=5_000,
        # the local probe timeout is 100 ms
        lag_budget_ns=100 * MS,
        # rates over half a second: tests see a move within a second or two
        window_ns=500 * MS,
        # as the window
        publish_interval_ns=500 * MS,
        # short enough for a test to see a shift back
        calm_ns=5 * S,
        # clients on loopback refresh every second or two
        min_change_ns=3 * S,
    )


def wan_dispersion() -> DispersionConfig:
    return replace_dispersion(
        lan_dispersion(),
        # the wan probe timeout is 3 s
        lag_budget_ns=1 * S,
        # gossip is slower across sites: publish less often, smooth longer
        window_ns=2 * S,
        publish_interval_ns=2 * S,
        # clients across sites are costly to move: wait longer before moving back
        calm_ns=30 * S,
        # clients across sites refresh less often
        min_change_ns=12 * S,
    )


def replace_dispersion(base: DispersionConfig, **changes: Any) -> DispersionConfig:
    return dataclasses.replace(base, **changes)


_PROFILE_DISPERSION: dict[Profile, Callable[[], DispersionConfig]] = {
    Profile.LAN: lan_dispersion,
    Profile.LOCAL: local_dispersion,
    Profile.WAN: wan_dispersion,
}


_PROFILE_GOSSIP: dict[Profile, Callable[[], GossipConfig]] = {
    Profile.LAN: lan_gossip,
    Profile.LOCAL: local_gossip,
    Profile.WAN: wan_gossip,
}


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what the agent accepts from peers (docs/design.md, "Safety
    against peers"): a buggy or compromised key holder cannot exhaust memory
    or inject absurd counts (docs/threat-model.md says what it still can)."""

    # pair entries accepted from one origin (a peer's own counts)
    max_keys: int = field(default=1_000_000, metadata=_parse(_count))
    # packets/s one pair entry may claim; above is absurd (100GbE line rate at 64 B)
    max_rate: int = field(default=150_000_000, metadata=_parse(parse_rate))
    # rows one origin may hold here (its quota: one origin cannot fill the table)
    max_keys_per_origin: int = field(default=1_000_000, metadata=_parse(_count))
    # rows of one origin's batches taken per second, and back to back
    origin_rate: int = field(default=4_000_000, metadata=_parse(parse_rate))
    origin_burst: int = field(default=4_000_000, metadata=_parse(_count))
    # an origin whose rows stay above its claimed coverage this long loses them
    uncovered_after_ns: int = field(default=10 * S, metadata=_parse(parse_duration))

    def __post_init__(self) -> None:
        _require(self.max_keys >= 1, "limits.max_keys", "must be at least 1")
        _require(self.max_rate >= 1, "limits.max_rate", "must be at least 1/s")
        _require(self.max_keys_per_origin >= 1, "limits.max_keys_per_origin", "must be at least 1")
        _require(self.origin_rate >= 1, "limits.origin_rate", "must be at least 1/s")
        _require(self.origin_burst >= 1, "limits.origin_burst", "must be at least 1")
        _require(self.uncovered_after_ns > 0, "limits.uncovered_after", "must be positive")


def _node_id_ok(node_id: str) -> bool:
    return (
        1 <= len(node_id.encode()) <= 255
        and node_id.isprintable()
        and not any(ch.isspace() for ch in node_id)
    )


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """Everything one agent is started with. Build it with :func:`load_config`.

    Each value is checked when constructed; what a *start* additionally needs
    (``key_file``; ``iface`` with the ``xdp`` backend) is checked by
    :func:`load_config`, so that tests and tools can hold partial configs."""

    # named defaults for the gossip timers (lan | local | wan)
    profile: Profile = field(default=Profile.LAN, metadata=_parse(_choice(Profile)))
    # this proxy's name in the mesh; must be unique and stable across restarts
    node_id: str = field(default_factory=socket.gethostname, metadata=_parse(_text))
    # gossip socket (UDP); port 0 picks a free port (tests)
    bind: Address = field(default=("0.0.0.0", 7946), metadata=_parse(_bind_address))
    # where peers reach this node; None: the bind address (see ``advertised``)
    advertise: Address | None = field(default=None, metadata=_parse(_peer_address))
    # HTTP API; loopback by default, since PUT /v1/config changes the filter
    api: Address = field(default=("127.0.0.1", 7947), metadata=_parse(_bind_address))
    # seeds to join through; any live member will do, self is skipped
    peers: tuple[Address, ...] = field(default=(), metadata=_parse(_peers))
    # interface the XDP program attaches to (xdp backend only)
    iface: str | None = field(default=None, metadata=_parse(_text))
    # where the filter state lives: kernel maps or the in-memory twin
    backend: Backend = field(default=Backend.XDP, metadata=_parse(_choice(Backend)))
    # how counts are shared: gossip (the mesh), master (paper: Redis M_DB), none
    sync: SyncMode = field(default=SyncMode.GOSSIP, metadata=_parse(_choice(SyncMode)))
    # the Redis M_DB for sync = "master" (host:port)
    redis: Address | None = field(default=None, metadata=_parse(_peer_address))
    # cluster keys, one 64-hex-character key a line, the first one sends
    key_file: Path | None = field(default=None, metadata=_parse(_path))
    # bearer token for PUT /v1/config; None: the API is read-only
    api_token_file: Path | None = field(default=None, metadata=_parse(_path))
    # this node's Ed25519 signing key (xpro-mesh keygen --node); with trust_file,
    # rows are taken only in batches signed by their origin (mesh/identity.py)
    node_key_file: Path | None = field(default=None, metadata=_parse(_path))
    # the mesh's public keys, NODE_ID PUBLIC_KEY_HEX a line
    trust_file: Path | None = field(default=None, metadata=_parse(_path))
    # bpffs directory of the pinned maps
    pin_root: Path = field(default=Path("/sys/fs/bpf/xpro"), metadata=_parse(_path))
    log_level: LogLevel = field(default=LogLevel.INFO, metadata=_parse(_choice(LogLevel)))
    # overload warnings are also POSTed here (optional)
    webhook_url: str | None = field(default=None, metadata=_parse(_url))
    # how far ahead of our clock a peer's record timestamps may be: the clock
    # skew between hosts that the rules tolerate (NTP keeps it to milliseconds)
    max_skew_ns: int = field(default=1 * S, metadata=_parse(parse_duration))
    limits: Limits = field(default_factory=Limits)
    thresholds: Thresholds = field(default_factory=Thresholds)
    gossip: GossipConfig = field(default_factory=lan_gossip)
    dispersion: DispersionConfig = field(default_factory=lan_dispersion)

    def __post_init__(self) -> None:
        _require(
            _node_id_ok(self.node_id),
            "node_id",
            f"expected 1-255 bytes of printable text without spaces, got {_show(self.node_id)}",
        )
        _require(
            self.max_skew_ns <= self.gossip.replay_window_ns,
            "max_skew",
            f"must not exceed gossip.replay_window "
            f"({format_duration(self.gossip.replay_window_ns)}): a peer that far ahead "
            "would have every message refused as from the future, "
            f"got {format_duration(self.max_skew_ns)}",
        )

    @property
    def advertised(self) -> Address | None:
        """The address gossiped for this node, or None when only a wildcard
        bind is known (the agent must then pick an interface address)."""
        if self.advertise is not None:
            return self.advertise
        if self.bind[0] in ("0.0.0.0", "::", ""):
            return None
        return self.bind


def defaults(profile: Profile | str = Profile.LAN) -> AgentConfig:
    """The configuration of a profile before any file or flag."""
    chosen = Profile(profile)
    bind = ("127.0.0.1", 7946) if chosen is Profile.LOCAL else ("0.0.0.0", 7946)
    return AgentConfig(
        profile=chosen,
        bind=bind,
        gossip=_PROFILE_GOSSIP[chosen](),
        dispersion=_PROFILE_DISPERSION[chosen](),
    )


# --- building ------------------------------------------------------------------------

_SECTIONS: dict[str, type[Any]] = {
    "limits": Limits,
    "thresholds": Thresholds,
    "gossip": GossipConfig,
    "dispersion": DispersionConfig,
}


def _key(field_name: str) -> str:
    return field_name.removesuffix("_ns")


def _build_schema() -> dict[str, tuple[str | None, str, Parser]]:
    schema: dict[str, tuple[str | None, str, Parser]] = {}
    for top in dataclasses.fields(AgentConfig):
        if top.name in _SECTIONS:
            for inner in dataclasses.fields(_SECTIONS[top.name]):
                parse = inner.metadata.get("parse") or _THRESHOLD_PARSERS[inner.metadata["unit"]]
                schema[f"{top.name}.{_key(inner.name)}"] = (top.name, inner.name, parse)
        else:
            schema[_key(top.name)] = (None, top.name, top.metadata["parse"])
    return schema


_SCHEMA = _build_schema()


def config_keys() -> list[str]:
    """Every key a file or flag may set, dotted (``gossip.interval``)."""
    return sorted(_SCHEMA)


def _unknown(key: str) -> ConfigError:
    close = difflib.get_close_matches(key, [*_SCHEMA, *_SECTIONS], n=1, cutoff=0.6)
    hint = f' (did you mean "{close[0]}"?)' if close else ""
    return ConfigError(key, f"unknown key{hint}")


def _flatten(document: Mapping[str, Any]) -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in document.items():
        if key in _SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(key, f"expected a table ([{key}]), got {_show(value)}")
            for inner, inner_value in value.items():
                dotted = f"{key}.{inner}"
                if dotted not in _SCHEMA:
                    raise _unknown(dotted)
                if isinstance(inner_value, dict):
                    raise ConfigError(dotted, "expected a value, got a table")
                flat[dotted] = inner_value
        elif isinstance(value, dict) and key in _SCHEMA:
            raise ConfigError(key, "expected a value, got a table")
        else:
            flat[key] = value
    return flat


def _parse_values(flat: Mapping[str, object]) -> dict[str, object]:
    typed: dict[str, object] = {}
    for key, raw in flat.items():
        entry = _SCHEMA.get(key)
        if entry is None:
            raise _unknown(key)
        try:
            typed[key] = entry[2](raw)
        except _Bad as bad:
            raise ConfigError(key, str(bad)) from None
    return typed


def _read_toml(path: str | Path) -> dict[str, Any]:
    source = str(path)
    try:
        with open(path, "rb") as stream:
            return tomllib.load(stream)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, f"invalid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(source, f"cannot read the config file: {exc.strerror or exc}") from None


def _normalise_overrides(overrides: Mapping[str, object | None] | None) -> dict[str, object]:
    if not overrides:
        return {}
    return {k.replace("-", "_"): v for k, v in overrides.items() if v is not None}


def _assemble(typed: Mapping[str, object]) -> AgentConfig:
    base = defaults(Profile(str(typed.get("profile", Profile.LAN))))
    top: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
    for key, value in typed.items():
        section, name, _ = _SCHEMA[key]
        if section is None:
            top[name] = value
        else:
            sections[section][name] = value
    for name, updates in sections.items():
        top[name] = dataclasses.replace(getattr(base, name), **updates)
    return dataclasses.replace(base, **top)


def load_config(
    path: str | Path | None = None,
    overrides: Mapping[str, object | None] | None = None,
    *,
    require_key_file: bool = True,
) -> AgentConfig:
    """Build the agent's configuration: profile defaults ← TOML file at
    ``path`` ← ``overrides`` (flag values by dotted key; dashes count as
    underscores; ``None`` is skipped). Raises :class:`ConfigError`."""
    typed = _parse_values(_flatten(_read_toml(path))) if path is not None else {}
    typed.update(_parse_values(_normalise_overrides(overrides)))
    config = _assemble(typed)
    if config.backend is Backend.XDP and config.iface is None:
        raise ConfigError(
            "iface", 'required with backend = "xdp" (the interface the XDP program attaches to)'
        )
    if config.sync is SyncMode.MASTER and config.redis is None:
        raise ConfigError("redis", 'required with sync = "master" (the M_DB, host:port)')
    if (config.node_key_file is None) != (config.trust_file is None):
        missing = "trust_file" if config.trust_file is None else "node_key_file"
        raise ConfigError(
            missing,
            "required with the other: node_key_file signs our rows, trust_file checks theirs",
        )
    if require_key_file and config.sync is SyncMode.GOSSIP and config.key_file is None:
        raise ConfigError(
            "key_file",
            "required: every gossip message is authenticated with the cluster key "
            "(a file of 64-hex-character keys, one a line)",
        )
    return config


def reload_thresholds(
    path: str | Path, overrides: Mapping[str, object | None] | None = None
) -> Thresholds | ConfigError:
    """For SIGHUP: the thresholds of the file at ``path`` (defaults ← file ←
    ``overrides``), or the :class:`ConfigError` that stops the reload. The
    whole file is checked for unknown keys and bad values, but only the
    thresholds are taken; nothing running is touched either way."""
    try:
        typed = _parse_values(_flatten(_read_toml(path)))
        typed.update(_parse_values(_normalise_overrides(overrides)))
        updates: dict[str, Any] = {
            _SCHEMA[key][1]: value for key, value in typed.items() if key.startswith("thresholds.")
        }
        return dataclasses.replace(Thresholds(), **updates)
    except ConfigError as error:
        return error
