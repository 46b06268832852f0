"""The mesh-wide configuration: one versioned document for every proxy.

Thresholds (the core's :class:`~xpro_mesh.core.params.Params`, as
``as_json`` writes them: ns, packets/s, the policy's name), the filter's
action (``enforce`` | ``monitor``) and its allow-list (prefixes never
counted nor dropped). It spreads by gossip and every node keeps the
newest it has seen: a last-writer-wins register whose order is
``(version, origin)``, so two nodes that each publish version n+1 at once
still converge on one document (the larger origin name), and a node can
never go back to an older one. Pure: no I/O, no clock; bytes in, bytes out.

Invariants: ``version >= 1`` for a published document (0 is "none yet",
what a node runs from its own file); :func:`decode` of :func:`encode` is
the identity; :func:`decode` never raises on a peer's bytes.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field, fields
from typing import Any

from xpro_mesh.core.params import Params

__all__ = ["ACTIONS", "MAX_ALLOW", "MAX_DOC_BYTES", "ConfigDocError", "MeshConfig", "decode"]

ACTIONS = ("enforce", "monitor")
MAX_ALLOW = 256  # prefixes: a document must fit one gossip datagram
MAX_DOC_BYTES = 16_384
# Every field of the one thresholds record: a new threshold is mesh-wide at once.
THRESHOLD_KEYS = tuple(f.name for f in fields(Params))


class ConfigDocError(ValueError):
    """A document that is not one (the message names the field)."""


@dataclass(frozen=True, slots=True)
class MeshConfig:
    version: int
    origin: str  # the node that published it
    thresholds: dict[str, int | str] = field(default_factory=dict)
    action: str = "enforce"
    allow: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if type(self.version) is not int or not 0 <= self.version < 2**63:
            raise ConfigDocError(f"version: expected an integer >= 0, got {self.version!r}")
        if not isinstance(self.origin, str) or not 0 < len(self.origin.encode()) <= 255:
            raise ConfigDocError("origin: expected a node name of 1..255 bytes")
        if self.action not in ACTIONS:
            raise ConfigDocError(f"action: expected enforce or monitor, got {self.action!r}")
        unknown = sorted(set(self.thresholds) - set(THRESHOLD_KEYS))
        if unknown:
            raise ConfigDocError(f"thresholds: unknown key(s) {', '.join(unknown)}")
        if len(self.allow) > MAX_ALLOW:
            raise ConfigDocError(f"allow: at most {MAX_ALLOW} prefixes, got {len(self.allow)}")
        for prefix in self.allow:
            try:
                ipaddress.ip_network(prefix, strict=False)
            except (ValueError, TypeError):
                raise ConfigDocError(f"allow: not a prefix: {prefix!r}") from None

    def order(self) -> tuple[int, str]:
        """Newer wins: by version, then by origin name (deterministic ties)."""
        return (self.version, self.origin)

    def newer_than(self, other: MeshConfig | None) -> bool:
        return other is None or self.order() > other.order()

    def successor(self, origin: str, **changes: Any) -> MeshConfig:
        """The next version, published by ``origin``, with ``changes``."""
        values: dict[str, Any] = {
            "thresholds": dict(self.thresholds),
            "action": self.action,
            "allow": self.allow,
        }
        if "thresholds" in changes and changes["thresholds"] is not None:
            values["thresholds"] = {**values["thresholds"], **changes["thresholds"]}
        for key in ("action", "allow"):
            if changes.get(key) is not None:
                values[key] = tuple(changes[key]) if key == "allow" else changes[key]
        return MeshConfig(self.version + 1, origin, **values)

    def as_json(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "origin": self.origin,
            "thresholds": dict(self.thresholds),
            "action": self.action,
            "allow": list(self.allow),
        }

    def encode(self) -> bytes:
        return json.dumps(self.as_json(), sort_keys=True, separators=(",", ":")).encode()


def decode(data: bytes) -> MeshConfig | ConfigDocError:
    """The document in ``data`` or why not (never raises)."""
    if len(data) > MAX_DOC_BYTES:
        return ConfigDocError(f"document of {len(data)} bytes is over {MAX_DOC_BYTES}")
    try:
        raw = json.loads(data)
        if not isinstance(raw, dict):
            raise ConfigDocError("not an object")
        thresholds = raw.get("thresholds", {})
        allow = raw.get("allow", [])
        if not isinstance(thresholds, dict) or not isinstance(allow, list):
            raise ConfigDocError("thresholds must be an object, allow a list")
        for key, value in thresholds.items():
            if isinstance(value, bool) or not isinstance(value, int | str):
                raise ConfigDocError(f"thresholds.{key}: expected a number or a name")
        version, origin = raw.get("version"), raw.get("origin")
        if type(version) is not int or not isinstance(origin, str):
            raise ConfigDocError("version must be an integer and origin a name")
        return MeshConfig(
            version,
            origin,
            thresholds,
            raw.get("action", "enforce"),
            tuple(allow),
        )
    except ConfigDocError as exc:
        return exc
    except (ValueError, TypeError) as exc:
        return ConfigDocError(f"undecodable: {type(exc).__name__}")
