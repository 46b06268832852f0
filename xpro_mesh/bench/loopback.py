"""Real agent processes on loopback: start, query, signal, stop.

The acceptance tests of the agent (``tests/test_agent_processes.py``) and its
benchmark (:mod:`xpro_mesh.bench.agent`) run ``xpro-mesh agent`` as separate
processes with the in-memory data path, the ``local`` profile and kernel-chosen
ports on 127.0.0.1, and drive them only through what an operator has: the HTTP
API and signals. :class:`LoopbackMesh` owns every process it starts and kills
whatever is still running when it is closed, also when a test fails.

Ports are chosen by the kernel (``--bind 127.0.0.1:0 --api 127.0.0.1:0``): the
API port is read from the agent's "up" log line, the gossip port from its own
entry in ``/v1/peers``. A restarted node binds its previous gossip port again,
as a proxy with a fixed address would.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from xpro_mesh.mesh import auth, identity

__all__ = ["AgentProcess", "HttpError", "LoopbackMesh", "wait_until"]

HOST = "127.0.0.1"
START_TIMEOUT_S = 20.0  # interpreter start and imports on a busy two-core host
HTTP_TIMEOUT_S = 5.0
_UP = re.compile(r"agent (?P<node>\S+) up: .* api=(?P<host>[^:]+):(?P<port>\d+)")

T = TypeVar("T")


class HttpError(Exception):
    """An API answer other than 2xx: ``status`` and the body."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


def wait_until(
    probe: Callable[[], T | None], timeout_s: float, what: str, interval_s: float = 0.05
) -> T:
    """Poll ``probe`` until it returns something other than None/False;
    ``TimeoutError`` naming ``what`` (and the last probe error) after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while True:
        try:
            value = probe()
            if value is not None and value is not False:
                return value
        except (OSError, HttpError, ValueError) as exc:
            last_error = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            raise TimeoutError(f"timed out after {timeout_s:g} s waiting for {what}{detail}")
        time.sleep(interval_s)


@dataclass
class AgentProcess:
    """One running ``xpro-mesh agent`` and how to reach it."""

    node_id: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    token: str
    api: tuple[str, int] = (HOST, 0)
    gossip: tuple[str, int] = (HOST, 0)

    # --- HTTP -------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.api[0]}:{self.api[1]}"

    def request(
        self,
        method: str,
        path: str,
        body: object | None = None,
        token: str | None = None,
        timeout_s: float = HTTP_TIMEOUT_S,
    ) -> bytes:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                raw: bytes = resp.read()
                return raw
        except urllib.error.HTTPError as exc:
            raise HttpError(exc.code, exc.read().decode(errors="replace")) from None

    def get(self, path: str) -> Any:
        return json.loads(self.request("GET", path))

    def status(self) -> dict[str, Any]:
        doc: dict[str, Any] = self.get("/v1/status")
        return doc

    def peer_states(self) -> dict[str, str]:
        """node id -> alive/suspect/dead, as this agent sees the mesh (self included)."""
        return {p["node_id"]: p["state"] for p in self.get("/v1/peers")}

    def incarnations(self) -> dict[str, int]:
        return {p["node_id"]: int(p["incarnation"]) for p in self.get("/v1/peers")}

    def counts(self, dst: str | None = None) -> dict[tuple[str, str], int]:
        """(src, dst) -> the mesh-wide count c, from ``/v1/records``."""
        query = "?limit=10000" + (f"&dst={dst}" if dst else "")
        doc = self.get("/v1/records" + query)
        return {(r["src"], r["dst"]): int(r["c"]) for r in doc["records"]}

    def feed(self, src: str, dst: str, count: int) -> dict[str, Any]:
        """Push ``count`` packets of one pair through the in-memory data path."""
        doc: dict[str, Any] = json.loads(
            self.request("POST", "/v1/feed", {"src": src, "dst": dst, "count": count}, self.token)
        )
        return doc

    def feed_many(self, packets: Sequence[tuple[str, str, int]]) -> dict[str, Any]:
        """Several pairs in one request: ``[(src, dst, count), ...]``."""
        body = [{"src": s, "dst": d, "count": n} for s, d, n in packets]
        doc: dict[str, Any] = json.loads(self.request("POST", "/v1/feed", body, self.token))
        return doc

    def metrics_text(self) -> str:
        return self.request("GET", "/metrics").decode()

    # --- process ----------------------------------------------------------------

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send_signal(self, sig: int) -> None:
        if self.alive():
            self.proc.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.alive():
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_records(self) -> list[dict[str, Any]]:
        """The structured log lines (JSON) written so far."""
        out = []
        for line in self.log().splitlines():
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if isinstance(doc, dict):
                    out.append(doc)
        return out


@dataclass
class LoopbackMesh:
    """Agents of one cluster key on 127.0.0.1, all owned here.

    ``thresholds``/``extra_config`` go into a TOML file passed with
    ``--config`` (so SIGHUP can reload it); the key and the API token are
    made here. Use as a context manager, or call :meth:`close`.
    """

    workdir: Path
    thresholds: dict[str, object] = field(default_factory=dict)
    extra_config: dict[str, object] = field(default_factory=dict)
    python: str = sys.executable
    # node ids that get a node key and a line in one trust file (rows signed
    # by their origin, mesh/identity.py); others run on the cluster key alone
    signed_nodes: Sequence[str] = ()
    agents: dict[str, AgentProcess] = field(default_factory=dict)
    _retired: list[AgentProcess] = field(default_factory=list)
    _generation: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.key_file = self.workdir / "cluster.key"
        self.key_file.write_text(auth.generate_key_line() + "\n")
        self.key_file.chmod(0o600)
        self.token = os.urandom(16).hex()
        self.token_file = self.workdir / "api.token"
        self.token_file.write_text(self.token + "\n")
        self.token_file.chmod(0o600)
        self.config_file = self.workdir / "agent.toml"
        self.write_config(self.thresholds)
        self.trust_file = self.workdir / "trust"
        lines = []
        for name in self.signed_nodes:
            seed, public = identity.generate_node_key()
            key = self.workdir / f"{name}.node.key"
            key.write_text(seed + "\n")
            key.chmod(0o600)
            lines.append(f"{name} {public}\n")
        if lines:
            self.trust_file.write_text("".join(lines))
            self.trust_file.chmod(0o644)

    def __enter__(self) -> LoopbackMesh:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def keyring(self) -> auth.Keyring:
        return auth.load_keyring(self.key_file)

    def write_config(self, thresholds: dict[str, object], raw: str | None = None) -> None:
        """Rewrite the config file (then SIGHUP an agent to reload it)."""
        if raw is not None:
            self.config_file.write_text(raw)
            return
        lines = ['profile = "local"']
        lines += [f"{k} = {_toml(v)}" for k, v in self.extra_config.items()]
        lines.append("[thresholds]")
        lines += [f"{k} = {_toml(v)}" for k, v in thresholds.items()]
        self.config_file.write_text("\n".join(lines) + "\n")

    # --- starting -----------------------------------------------------------------

    def spawn(
        self,
        node_id: str,
        peers: Iterable[tuple[str, int]] = (),
        bind_port: int = 0,
        extra_args: Sequence[str] = (),
    ) -> AgentProcess:
        """Start one agent; returns at once (see :meth:`wait_up`)."""
        gen = self._generation.get(node_id, 0) + 1
        self._generation[node_id] = gen
        log_path = self.workdir / f"{node_id}.{gen}.log"
        peer_list = ",".join(f"{h}:{p}" for h, p in peers)
        argv = [
            self.python,
            "-m",
            "xpro_mesh",
            "agent",
            "--backend",
            "memory",
            "--profile",
            "local",
            "--config",
            str(self.config_file),
            "--node-id",
            node_id,
            "--bind",
            f"{HOST}:{bind_port}",
            "--api",
            f"{HOST}:0",
            "--key-file",
            str(self.key_file),
            "--api-token-file",
            str(self.token_file),
            *(["--peers", peer_list] if peer_list else []),
            *(
                [
                    "--node-key-file",
                    str(self.workdir / f"{node_id}.node.key"),
                    "--trust-file",
                    str(self.trust_file),
                ]
                if node_id in self.signed_nodes
                else []
            ),
            *extra_args,
        ]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        agent = AgentProcess(node_id, proc, log_path, self.token)
        old = self.agents.get(node_id)
        if old is not None:
            self._retired.append(old)
        self.agents[node_id] = agent
        return agent

    def wait_up(self, agent: AgentProcess, timeout_s: float = START_TIMEOUT_S) -> AgentProcess:
        """Wait for the agent's "up" log line and its own entry in /v1/peers."""

        def up() -> bool:
            if not agent.alive():
                raise RuntimeError(
                    f"agent {agent.node_id} exited with {agent.proc.returncode}:\n"
                    + agent.log()[-2000:]
                )
            for doc in agent.log_records():
                match = _UP.search(str(doc.get("msg", "")))
                if match:
                    agent.api = (match["host"], int(match["port"]))
                    return True
            return False

        wait_until(up, timeout_s, f"agent {agent.node_id} to start")
        me = wait_until(
            lambda: next((p for p in agent.get("/v1/peers") if p["self"]), None),
            timeout_s,
            f"agent {agent.node_id}'s API",
        )
        host, port = me["addr"].rsplit(":", 1)
        agent.gossip = (host, int(port))
        return agent

    def start(
        self, node_id: str, peers: Iterable[tuple[str, int]] = (), bind_port: int = 0
    ) -> AgentProcess:
        return self.wait_up(self.spawn(node_id, peers, bind_port))

    def start_cluster(self, n: int, prefix: str = "node") -> list[AgentProcess]:
        """``n`` agents joining through the first one only (one seed)."""
        seed = self.start(f"{prefix}-0")
        rest = [self.spawn(f"{prefix}-{i}", [seed.gossip]) for i in range(1, n)]
        return [seed, *(self.wait_up(a) for a in rest)]

    def restart(self, agent: AgentProcess, peers: Iterable[tuple[str, int]]) -> AgentProcess:
        """Start ``agent``'s node id again on its gossip port (after it died)."""
        return self.start(agent.node_id, peers, bind_port=agent.gossip[1])

    # --- stopping -----------------------------------------------------------------

    def close(self) -> None:
        """SIGKILL every process still running and reap it."""
        for agent in [*self.agents.values(), *self._retired]:
            agent.kill()

    def logs(self) -> str:
        """Every agent's log tail, for a failing test's report."""
        parts = []
        for agent in [*self._retired, *self.agents.values()]:
            parts.append(f"--- {agent.log_path.name} ---\n{agent.log()[-3000:]}")
        return "\n".join(parts)


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value))
