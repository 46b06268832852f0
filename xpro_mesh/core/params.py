"""The paper's thresholds, one record with one set of defaults.

:class:`Params` is what the reference model (:mod:`.algorithm`), the gossip
merge (:mod:`.gossip_state`), the data path's config map
(:class:`~xpro_mesh.datapath.config.XdpConfig`), the agent's ``[thresholds]``
and the Ansible role's ``xpro_t_*`` variables hold; the role's defaults are
rendered from :data:`DEFAULTS` (``scripts/render_ansible_defaults.py``, and a
test compares them).

Units are the kernel's: T_T1..T_T4 in nanoseconds, T_F1 and T_F2 in whole
packets per second, r a whole divisor. The record itself only checks what the
rules need to be computable (integers, none negative, r >= 2): the model and
the tests use windows of a few ns. :func:`operational_problems` adds what an
operator's configuration must also satisfy; the agent and ``xdp attach``
apply it and name the key.

Each field's metadata says its ``unit`` (``duration``, ``rate``, ``count``,
``policy``: how an operator writes it, :mod:`xpro_mesh.units`), ``what`` it
is and ``why`` the default is what it is.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields
from typing import Any, Literal

from xpro_mesh.units import format_duration

__all__ = ["DEFAULTS", "NS_PER_S", "Params", "Policy", "Unit", "operational_problems"]

NS_PER_S = 10**9

Unit = Literal["duration", "rate", "count", "policy"]


class Policy(enum.StrEnum):
    """The destination rule while D is over T_F2 (docs/design.md, "The
    destination rule")."""

    FAIR_SHARE = "fair-share"  # drop only the pairs above D's fair share T_F2 / n(D)
    PAPER = "paper"  # lines 21-23 literally: every packet to D, whoever sends it


_DURATIONS = ("t_t1", "t_t2", "t_t3", "t_t4")
_INTS = (
    "t_t1",
    "t_t2",
    "t_t3",
    "t_t4",
    "t_f1",
    "t_f2",
    "r",
    "admit_k",
    "admit_rate",
    "admit_burst",
    "src_prefix4",
    "src_prefix6",
)

ADMIT_BURST_MAX = 4000
"""The kernel keeps a destination's bucket in micro-packets in 32 bits."""
ADMIT_RATE_MAX = 1 << 23
"""Keeps the kernel's refill (elapsed ns, capped at 2^40, times the rate) in 63 bits."""


def _meta(unit: Unit, what: str, why: str) -> dict[str, Any]:
    return {"unit": unit, "what": what, "why": why}


@dataclass(frozen=True, slots=True)
class Params:
    """T_T1..T_T4, T_F1, T_F2, r and the destination policy.

    t_t1: idle time after which a pair's window restarts (Alg. 2 lines 7-9)
          and after which a restarted local window replaces the master's
          (Alg. 1 line 5).
    t_t2: the shortest pair window over which T_F1 is judged (Alg. 2 line 14).
    t_t3: the shortest destination window over which T_F2 is judged (line 21).
    t_t4: the longest window before it is divided by r (Alg. 1 lines 13-23).
    t_f1: packets/s allowed per (client, destination) pair.
    t_f2: packets/s allowed per destination, over all clients and proxies.
    r:    frequency division factor, an integer >= 2 (lines 14-15).
    admit_k, admit_rate, admit_burst: the fair-share policy's admission
          budget (not in the paper; issue 11): while D is over T_F2, a pair
          with fewer than admit_k packets or a window not longer than T_T2
          is young, and young pairs share a token bucket of admit_rate/s,
          admit_burst deep, per destination; n(D) counts established pairs.
    policy: which packets to D are dropped while D is over T_F2.

    The defaults suit a service that a few hundred clients reach through a
    LAN mesh (gossip every 500 ms); T_F1 and T_F2 are the first thing an
    operator tunes to the service.
    """

    t_t1: int = field(
        default=5 * NS_PER_S,
        metadata=_meta(
            "duration",
            "idle gap after which a (client, destination) window restarts",
            "10 LAN gossip rounds (500 ms each): a restart is never an artefact of sync jitter, "
            "and a client idle that long starts afresh instead of carrying an old burst",
        ),
    )
    t_t2: int = field(
        default=1 * NS_PER_S,
        metadata=_meta(
            "duration",
            "shortest pair window judged against T_F1",
            "below a second a rate is a handful of packets: 3 packets in 1 ms read 3000/s",
        ),
    )
    t_t3: int = field(
        default=1 * NS_PER_S,
        metadata=_meta(
            "duration",
            "shortest destination window judged against T_F2",
            "as T_T2, for the sum over all clients",
        ),
    )
    t_t4: int = field(
        default=10 * NS_PER_S,
        metadata=_meta(
            "duration",
            "longest window before it is divided by r",
            "the rate is that of the last ~10 s, 20 LAN gossip rounds: the few rounds a count "
            "takes to spread change it little, and an attack that stops is forgotten in seconds",
        ),
    )
    t_f1: int = field(
        default=100,
        metadata=_meta(
            "rate",
            "packets/s allowed per (client, destination) pair",
            "far above what one device or user sends to one service, far below a flooding bot",
        ),
    )
    t_f2: int = field(
        default=1000,
        metadata=_meta(
            "rate",
            "packets/s allowed per destination, summed over all clients and proxies",
            "a small service's capacity; set it to what the protected service can take",
        ),
    )
    r: int = field(
        default=2,
        metadata=_meta(
            "count",
            "frequency division factor, an integer >= 2",
            "halving each T_T4 keeps a long window's rate close to its recent past",
        ),
    )
    admit_k: int = field(
        default=4,
        metadata=_meta(
            "count",
            "packets a pair needs (with a window over T_T2) to be established, "
            "not admitted through the destination's budget",
            "a forged source sends one packet; a real client sends 4 in its first second or two",
        ),
    )
    admit_rate: int = field(
        default=100,
        metadata=_meta(
            "rate",
            "packets/s of young pairs a destination over T_F2 admits (its admission budget)",
            "a tenth of the default T_F2: new clients still get in, a forged flood is capped there",
        ),
    )
    admit_burst: int = field(
        default=10,
        metadata=_meta(
            "count",
            "young-pair packets the admission budget holds at most (a token bucket's depth)",
            "a few new clients arriving at once; at most 4000 (the kernel's 32-bit bucket)",
        ),
    )
    src_prefix4: int = field(
        default=32,
        metadata=_meta(
            "count",
            "leading bits of an IPv4 source that make one client (a pair's key), 1-32",
            "an IPv4 address is one host; shorten it where one client owns a block",
        ),
    )
    src_prefix6: int = field(
        default=64,
        metadata=_meta(
            "count",
            "leading bits of an IPv6 source that make one client (a pair's key), 1-128",
            "a host owns its /64 and may rotate addresses inside it (privacy addresses, "
            "a forged flood), which must not make new pairs",
        ),
    )
    policy: Policy = field(
        default=Policy.FAIR_SHARE,
        metadata=_meta(
            "policy",
            "which packets to drop while a destination is over T_F2: fair-share or paper",
            "fair-share keeps the slow, legitimate clients reaching D; paper cuts D off",
        ),
    )

    def __post_init__(self) -> None:
        for name in _INTS:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{name} must be an integer, got {value!r}")
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if self.r < 2:
            raise ValueError(f"r must be an integer >= 2, got {self.r}")
        if self.admit_burst > ADMIT_BURST_MAX:
            raise ValueError(
                f"admit_burst must be at most {ADMIT_BURST_MAX}, got {self.admit_burst}"
            )
        if self.admit_rate > ADMIT_RATE_MAX:
            raise ValueError(
                f"admit_rate must be at most {ADMIT_RATE_MAX}/s, got {self.admit_rate}"
            )
        for name, most in (("src_prefix4", 32), ("src_prefix6", 128)):
            if not 1 <= getattr(self, name) <= most:
                raise ValueError(
                    f"{name} must be a prefix length in 1..{most}, got {getattr(self, name)}"
                )
        if not isinstance(self.policy, Policy):
            raise TypeError(f"policy must be a Policy, got {self.policy!r}")

    @classmethod
    def of(cls, source: object) -> Params:
        """The thresholds of any object holding them under the same names."""
        return cls(**{f.name: getattr(source, f.name) for f in fields(cls)})

    def as_json(self) -> dict[str, int | str]:
        """ns, packets/s and the policy's name (``GET /v1/config``, logs)."""
        return {
            "t_t1": self.t_t1,
            "t_t2": self.t_t2,
            "t_t3": self.t_t3,
            "t_t4": self.t_t4,
            "t_f1": self.t_f1,
            "t_f2": self.t_f2,
            "r": self.r,
            "admit_k": self.admit_k,
            "admit_rate": self.admit_rate,
            "admit_burst": self.admit_burst,
            "src_prefix4": self.src_prefix4,
            "src_prefix6": self.src_prefix6,
            "policy": str(self.policy),
        }

    def as_toml(self, policy: Policy | None = None) -> str:
        """The ``[thresholds]`` body as an operator writes it (durations with
        their shortest exact unit), also a valid flat ``xdp attach`` config;
        ``policy`` overrides the record's (a lab mode chooses its own)."""
        chosen = self.policy if policy is None else policy
        return "\n".join(
            [
                *(f'{n} = "{format_duration(getattr(self, n))}"' for n in _DURATIONS),
                f"t_f1 = {self.t_f1}",
                f"t_f2 = {self.t_f2}",
                f"r = {self.r}",
                f'policy = "{chosen}"',
                f"admit_k = {self.admit_k}",
                f"admit_rate = {self.admit_rate}",
                f"admit_burst = {self.admit_burst}",
                f"src_prefix4 = {self.src_prefix4}",
                f"src_prefix6 = {self.src_prefix6}",
            ]
        )


DEFAULTS = Params()
"""The one set of defaults (the data path, the agent and the Ansible role)."""


def operational_problems(p: Params, prefix: str = "") -> list[tuple[str, str]]:
    """What an operator's thresholds must satisfy beyond the model's:
    ``(key, problem)`` for each violation, in field order, keys as
    ``prefix + name`` (the agent's ``"thresholds."``, the data path's ``""``).

    Windows must be longer than 0 (a 0 T_T1 restarts every window on every
    packet); T_T2 and T_T3 must not exceed T_T4, since a window that long is
    divided by r before it is ever judged; the rates must be at least 1/s
    (0 drops every pair as soon as its window is judged).
    """
    out: list[tuple[str, str]] = []
    for name in ("t_t1", "t_t2", "t_t3", "t_t4"):
        if getattr(p, name) <= 0:
            out.append((prefix + name, "must be longer than 0s"))
    for name in ("t_t2", "t_t3"):
        value = getattr(p, name)
        if value > p.t_t4 > 0:
            out.append(
                (
                    prefix + name,
                    f"must not exceed {prefix}t_t4 ({format_duration(p.t_t4)}): a window that "
                    f"long is divided by r before it is ever judged, got {format_duration(value)}",
                )
            )
    for name in ("t_f1", "t_f2"):
        if getattr(p, name) < 1:
            out.append((prefix + name, "must be at least 1/s"))
    return out
