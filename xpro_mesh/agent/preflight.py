"""What an operator should hear before the agent touches an interface.

:func:`warnings` lists settings that work but are unsafe (a cluster key or
token file others can read, an API on every address with no token);
:func:`check` is ``xpro-mesh agent --check-config``: the whole configuration
read and judged as the agent would, without attaching, binding or mounting
anything. :func:`left_in_kernel` says what stays behind when the agent
stops (docs/operators.md, "When the agent stops").
"""

from __future__ import annotations

import ipaddress
import socket
import stat
from dataclasses import dataclass, field
from pathlib import Path

from xpro_mesh.agent.config import AgentConfig, Backend, SyncMode
from xpro_mesh.mesh import auth, identity

__all__ = ["CheckReport", "check", "left_in_kernel", "warnings"]


def _loose(path: Path | None) -> str | None:
    if path is None:
        return None
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return f"{path} is readable by others (mode {stat.S_IMODE(mode):04o}): chmod 600 {path}"
    return None


def _wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return host in ("", "*")


def warnings(config: AgentConfig, api_token: str | None) -> list[str]:
    """Unsafe but working settings, one sentence each (never raises)."""
    out = []
    for what, path in (
        ("key_file", config.key_file),
        ("api_token_file", config.api_token_file),
        ("node_key_file", config.node_key_file),
    ):
        loose = _loose(path)
        if loose:
            out.append(f"{what}: {loose}")

    host, port = config.api
    if _wildcard(host) and api_token is None:
        out.append(
            f"api {host}:{port} listens on every address with no api_token_file: anyone who "
            "reaches it reads the mesh's clients and destinations; bind it to loopback or a "
            "management address, or set api_token_file"
        )
    return out


def left_in_kernel(config: AgentConfig) -> str:
    """What keeps running after the agent exits (the filter is not detached)."""
    return (
        f"the XDP filter stays attached to {config.iface} and keeps judging packets with its "
        "last thresholds, action and allow-list, on this proxy's own counts (the mesh's views "
        "age out within T_T1); remove it with: xpro-mesh xdp detach --iface "
        f"{config.iface} --pin-root {config.pin_root}"
    )


@dataclass(slots=True)
class CheckReport:
    """The outcome of ``--check-config``: problems stop a start, warnings do not."""

    summary: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def check(config: AgentConfig, api_token: str | None) -> CheckReport:
    """Judge ``config`` as the agent would start it, touching nothing."""
    report = CheckReport()
    t = config.thresholds
    report.summary.append(
        f"node {config.node_id}, backend {config.backend}, sync {config.sync}, "
        f"api {config.api[0]}:{config.api[1]}"
    )
    report.summary.append(f"thresholds t_f1 {t.t_f1} pps, t_f2 {t.t_f2} pps, policy {t.policy}")
    if config.sync is SyncMode.GOSSIP and config.key_file is not None:
        try:
            lines = [ln.strip() for ln in config.key_file.read_text().splitlines() if ln.strip()]
        except OSError as exc:
            report.problems.append(f"key_file: {exc.strerror}: {config.key_file}")
        else:
            bad = [
                ln
                for ln in lines
                if len(ln) != 64 or not all(c in "0123456789abcdefABCDEF" for c in ln)
            ]
            if not lines or bad:
                report.problems.append(
                    f"key_file: {config.key_file} needs one or more keys of 64 hex characters "
                    f"({len(bad)} malformed, {len(lines)} lines)"
                )
            else:
                report.summary.append(f"{len(lines)} cluster key(s) in {config.key_file}")
    if config.node_key_file is not None and config.trust_file is not None:
        try:
            key = identity.load_node_key(config.node_key_file)
            trust = identity.load_trust_list(config.trust_file)
        except auth.KeyFileError as exc:
            report.problems.append(str(exc))
        else:
            if trust.raw.get(config.node_id) != key.public:
                report.problems.append(
                    f"trust_file: {config.trust_file} does not list {config.node_id} "
                    f"{key.public.hex()}"
                )
            report.summary.append(
                f"node key {key.public.hex()[:16]}..., {len(trust)} trusted node(s) in "
                f"{config.trust_file}: rows are taken only as their origin signed them"
            )
    if config.backend is Backend.XDP and config.iface is not None:
        try:
            socket.if_nametoindex(config.iface)
        except OSError:
            report.problems.append(f"iface: no interface named {config.iface}")
        else:
            report.summary.append(_iface_state(config))
    report.warnings = warnings(config, api_token)
    if config.sync is SyncMode.GOSSIP and config.node_key_file is None:
        # At start the agent logs this itself, when the mesh starts (daemon).
        report.warnings.append(
            "no node_key_file/trust_file: rows are not tied to their origin, so any holder "
            "of the cluster key can write any origin's rows (xpro-mesh keygen --node)"
        )
    return report


def _iface_state(config: AgentConfig) -> str:
    assert config.iface is not None
    try:
        from xpro_mesh.datapath import loader

        foreign = loader.foreign_program(config.iface, pin_root=config.pin_root)
        state = loader.status(config.iface, pin_root=config.pin_root)
    except Exception as exc:  # no root, no libbpf: say so, do not fail the check
        return f"iface {config.iface}: cannot inspect its XDP state ({exc})"
    if foreign:
        return (
            f"iface {config.iface}: runs another XDP program (id {foreign}); the agent will "
            "refuse to replace it without --replace"
        )
    if state.mode is not None:
        return f"iface {config.iface}: our filter is attached ({state.mode}); the agent reuses it"
    return f"iface {config.iface}: no XDP program; the agent will attach the filter"
