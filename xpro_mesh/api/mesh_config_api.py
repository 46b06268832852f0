"""The mesh configuration's face in the API: ``PUT /v1/config``'s ``action``
and ``allow`` fields checked, and the document's version in ``/v1/status``,
``/v1/config`` and each peer's row (the version it last offered)."""

from __future__ import annotations

from typing import Any

from xpro_mesh.core.config_doc import ACTIONS, MAX_ALLOW
from xpro_mesh.datapath.policy import parse_prefix

__all__ = ["check", "document", "peer_version"]


def check(fields: dict[str, Any]) -> tuple[str | None, list[str] | None]:
    """``action`` and ``allow`` of a request, or ValueError naming the field."""
    action = fields.get("action")
    if action is not None and action not in ACTIONS:
        raise ValueError(f"action: expected enforce or monitor, got {action!r}")
    allow = fields.get("allow")
    if allow is not None:
        if not isinstance(allow, list) or len(allow) > MAX_ALLOW:
            raise ValueError(f"allow: expected a list of at most {MAX_ALLOW} prefixes")
        for prefix in allow:
            parse_prefix(str(prefix))  # raises "not a prefix: ..."
        allow = [str(p) for p in allow]
    return action, allow


def document(agent: object) -> dict[str, Any]:
    keeper = getattr(agent, "mesh_config", None)
    if keeper is None:
        return {}
    doc = keeper.current
    return {
        "config_version": doc.version,
        "config_origin": doc.origin,
        "action": doc.action,
        "allow": list(doc.allow),
    }


def peer_version(agent: object, node_id: str) -> int | None:
    keeper = getattr(agent, "mesh_config", None)
    if keeper is None:
        return None
    if node_id == keeper.node_id:
        return int(keeper.current.version)
    version = keeper.peer_versions.get(node_id)
    return int(version) if version is not None else None
