"""The agent's HTTP API (aiohttp): status, peers, records, config, metrics.

Read endpoints are open (bind the API to loopback or a management network);
``PUT /v1/config`` and ``POST /v1/feed`` need the bearer token from
``api_token_file`` and are refused when none is configured. ``POST /v1/feed``
exists only with the memory backend: it pushes packets through the
in-memory data path, which is how tests and demos drive agents without a
kernel program. Its body is ``{"src", "dst", "count"}`` or a list of them
(many pairs in one request, at most ``MAX_FEED`` packets in all).

Hostile clients (issue 12: 1 000 slow connections held the API for 91 s and
starved ``/healthz`` of descriptors; malformed requests logged tracebacks;
bad PUTs returned 500) meet these bounds, all in :class:`_Guard` and
:func:`_middleware`:

* at most ``MAX_CONNECTIONS`` connections at once; one more is closed at once;
* a connection must finish a request's headers within ``HEADER_TIMEOUT_S`` of
  opening or of its previous answer (so neither a slow header nor an idle
  keep-alive connection holds a descriptor longer), and a body must arrive
  within ``BODY_TIMEOUT_S``;
* a client error is a 4xx with a one-line JSON reason and one log line at
  info, never a traceback; a handler's own bug is a 500 with one error line.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import time
from dataclasses import replace
from typing import Any

from aiohttp import web
from prometheus_client import generate_latest

from xpro_mesh.agent.config import ConfigError, Thresholds
from xpro_mesh.api import mesh_config_api, metrics, page, proxies, top
from xpro_mesh.api.view import NOT_READY, AgentView, ready
from xpro_mesh.datapath.backend import PairKey
from xpro_mesh.datapath.structs import from_addr, to_addr

__all__ = ["ApiServer", "status_document"]

MAX_RECORDS = 10_000
MAX_FEED = 100_000
MAX_CONNECTIONS = 256  # well under the unit's LimitNOFILE, so the agent keeps descriptors
HEADER_TIMEOUT_S = 10.0  # to finish a request's headers, from connect or the last answer
BODY_TIMEOUT_S = 10.0
MAX_BODY_BYTES = 1 << 20
MAX_JSON_DEPTH = 16

log = logging.getLogger("xpro_mesh.api")
_SERVER: web.AppKey[ApiServer] = web.AppKey("api_server")


class _OneLine(logging.Filter):
    """aiohttp logs a malformed request with its traceback; make it one info line."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            record.msg = "bad request: %s"
            record.args = (" ".join(str(exc).split())[:200] or type(exc).__name__,)
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


logging.getLogger("aiohttp.server").addFilter(_OneLine())


class _Guard(asyncio.Protocol):
    """Wraps aiohttp's per-connection protocol: counts connections against
    the limit and closes one that has not finished a request in time."""

    def __init__(self, inner: asyncio.Protocol, server: ApiServer) -> None:
        self.inner = inner
        self.server = server
        self.transport: asyncio.BaseTransport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.counted = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # asyncio's or uvloop's: both have abort()
        if len(self.server.connections) >= self.server.max_connections:
            self.server.refused_connections += 1
            transport.abort()  # type: ignore[attr-defined]
            return
        self.counted = True
        self.server.connections[id(transport)] = self
        self.arm()
        self.inner.connection_made(transport)

    def arm(self) -> None:
        self.disarm()
        self.timer = asyncio.get_running_loop().call_later(
            self.server.header_timeout_s, self.expire
        )

    def disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def expire(self) -> None:
        self.server.timed_out_connections += 1
        if self.transport is not None:
            self.transport.abort()  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.disarm()
        if self.counted and self.transport is not None:
            self.server.connections.pop(id(self.transport), None)
        if self.counted:
            self.inner.connection_lost(exc)


def _depth(value: object, limit: int) -> bool:
    """Whether ``value`` nests at most ``limit`` deep (iteratively: no recursion)."""
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, d = stack.pop()
        if d > limit:
            return False
        if isinstance(item, dict):
            stack.extend((v, d + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, d + 1) for v in item)
    return True


async def _json_body(request: web.Request) -> object:
    """The request's JSON body, bounded in size, time and depth; ValueError
    with a one-line reason otherwise."""
    try:
        raw = await asyncio.wait_for(request.read(), BODY_TIMEOUT_S)
    except TimeoutError:
        raise ValueError(f"body not received within {BODY_TIMEOUT_S:g} s") from None
    except web.HTTPRequestEntityTooLarge:
        raise ValueError(f"body over {MAX_BODY_BYTES} bytes") from None
    if raw.count(b"[") + raw.count(b"{") > 4 * MAX_JSON_DEPTH and not _shallow_text(raw):
        raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH}")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):
        raise ValueError("expected JSON") from None
    if not _depth(body, MAX_JSON_DEPTH):
        raise ValueError(f"JSON nested deeper than {MAX_JSON_DEPTH}")
    return body


def _shallow_text(raw: bytes) -> bool:
    """Whether the brackets in ``raw`` never open more than MAX_JSON_DEPTH deep
    (checked before parsing, so the parser's recursion is never reached)."""
    depth = 0
    for byte in raw:
        if byte in (0x5B, 0x7B):
            depth += 1
            if depth > MAX_JSON_DEPTH:
                return False
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return True


@web.middleware
async def _middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    server = request.app[_SERVER]
    guard = server.connections.get(id(request.transport)) if request.transport else None
    if guard is not None:
        guard.disarm()  # the headers are in; the body has its own timeout
    try:
        try:
            response: web.StreamResponse = await handler(request)
            return response
        except web.HTTPException as exc:
            if exc.status >= 400:
                log.info("%s %s: %d %s", request.method, request.path, exc.status, exc.reason)
            raise
        except Exception as exc:  # a handler bug: one line, never a traceback
            log.error("%s %s: %s: %s", request.method, request.path, type(exc).__name__, exc)
            return _error(500, "internal error")
    finally:
        if guard is not None and guard.transport is not None and not guard.transport.is_closing():
            guard.arm()  # the next request's headers, or idle: the same bound


def _addr(raw: object) -> str:
    if isinstance(raw, bytes) and len(raw) == 16:
        return str(from_addr(raw))
    return str(raw)


def peers_document(agent: AgentView) -> list[dict[str, Any]]:
    out = []
    me = agent.info.node_id
    for m in sorted(agent.members(), key=lambda m: m.node_id):
        load = None
        if m.load is not None:
            load = {
                "packets_in_per_s": round(m.load.packets_in_per_s, 1),
                "drop_ratio": round(m.load.drop_ratio, 4),
                "loop_lag_ms": round(m.load.loop_lag_ms, 1),
            }
        out.append(
            {
                "node_id": m.node_id,
                "addr": f"{m.addr[0]}:{m.addr[1]}",
                "state": str(m.state),
                "incarnation": m.incarnation,
                "self": m.node_id == me,
                "load": load,
                "config_version": mesh_config_api.peer_version(agent, m.node_id),
            }
        )
    return out


def status_document(agent: AgentView) -> dict[str, Any]:
    info = agent.info
    counters = agent.mesh_counters()
    stats = agent.stats()
    sync = agent.sync_status()
    load = agent.load()
    pairs, rows = agent.table_size()
    return {
        "node_id": info.node_id,
        "incarnation": info.incarnation,
        "sync": info.sync,
        "backend": info.backend,
        "iface": info.iface,
        "uptime_s": round((time.time_ns() - info.started_ns) / 1e9, 1),
        "peers": peers_document(agent),
        "rounds": counters.rounds if counters else 0,
        "keys": pairs,
        "rows": rows,
        "ready": ready(agent),
        "sync_cycles": sync.cycles,
        "sync_full_cycles": sync.full_cycles,
        "last_sync_ms": round(sync.last_duration_s * 1000, 2),
        "last_sync_error": sync.last_error or None,
        "sync_failures": sync.failures,
        "drops": {"drop_pair": stats.drop_pair, "drop_dest": stats.drop_dest},
        "passed": stats.passed,
        "load": None
        if load is None
        else {
            "packets_in_per_s": round(load.packets_in_per_s, 1),
            "drop_ratio": round(load.drop_ratio, 4),
            "loop_lag_ms": round(load.loop_lag_ms, 1),
        },
        "rejected": dict(counters.rejected) if counters else {},
        "peer_keys": dict(sorted(counters.peer_keys.items())) if counters else {},
        "rows_rejected": dict(counters.rows_rejected) if counters else {},
        "identity": {
            "signing": bool(counters.node_key),
            "node_key": counters.node_key or None,
            "trusted": counters.trusted,
            "signed_batches": counters.signed_batches,
            "relayed_batches": counters.relayed_batches,
            "uncovered_dropped": counters.uncovered_dropped,
        }
        if counters
        else None,
        "warnings": agent.warnings(),
        "policy": str(agent.thresholds.policy),
        **mesh_config_api.document(agent),
    }


class ApiServer:
    """The aiohttp application and its runner, owned by the agent."""

    def __init__(self, agent: AgentView, address: tuple[str, int]) -> None:
        self.agent = agent
        self.registry = metrics.registry_for(agent)
        self.app = web.Application(middlewares=[_middleware], client_max_size=MAX_BODY_BYTES)
        self.app[_SERVER] = self
        self.max_connections = MAX_CONNECTIONS
        self.header_timeout_s = HEADER_TIMEOUT_S
        self.connections: dict[int, _Guard] = {}
        self.refused_connections = 0
        self.timed_out_connections = 0
        self._server: asyncio.AbstractServer | None = None
        self.app.add_routes(
            [
                web.get("/healthz", self.healthz),
                web.get("/readyz", self.readyz),
                web.get("/v1/status", self.status),
                web.get("/v1/peers", self.peers),
                web.get("/v1/steering", self.steering),
                web.get("/v1/records", self.records),
                web.get("/v1/origins", self.origins),
                web.get("/v1/config", self.get_config),
                web.put("/v1/config", self.put_config),
                web.post("/v1/feed", self.feed),
                web.get("/metrics", self.metrics),
                *proxies.routes(agent),
                *top.routes(agent),
                *page.routes(),
            ]
        )
        self._runner: web.AppRunner | None = None
        self.address: tuple[str, int] = address

    async def start(self) -> None:
        """Listen on ``address``; raises OSError (the runner cleaned up) when it cannot."""
        self._runner = web.AppRunner(self.app, access_log=None, keepalive_timeout=HEADER_TIMEOUT_S)
        await self._runner.setup()
        host, port = self.address
        factory = self._runner.server
        assert factory is not None
        try:
            server = await asyncio.get_running_loop().create_server(
                lambda: _Guard(factory(), self), host, port, reuse_address=True, backlog=128
            )
        except OSError:
            await self._runner.cleanup()
            self._runner = None
            raise
        self._server = server
        sockets = getattr(server, "sockets", None) or []
        if sockets:
            name = sockets[0].getsockname()
            self.address = (str(name[0]), int(name[1]))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- handlers --------------------------------------------------------------

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(self, request: web.Request) -> web.Response:
        """200 once the agent has written the mesh's view into its data
        path (:func:`ready`), 503 before: what a load balancer or route
        announcer waits for before it sends this proxy traffic."""
        if ready(self.agent):
            return web.Response(text="ready\n")
        return web.Response(status=503, text=f"{NOT_READY}\n")

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(status_document(self.agent))

    async def peers(self, request: web.Request) -> web.Response:
        return web.json_response(peers_document(self.agent))

    async def steering(self, request: web.Request) -> web.Response:
        """DeDoS dispersion: weights for steering new clients (a resolver, a
        load balancer or the clients themselves use them)."""
        agent = self.agent
        steering = agent.steering()
        addrs = {p["node_id"]: p["addr"] for p in peers_document(agent)}
        return web.json_response(
            {
                "threshold_pps": agent.info.steer_threshold,
                "overloaded": sorted(steering.overloaded),
                "targets": [
                    {"node_id": n, "addr": addrs.get(n), "weight": round(w, 4)}
                    for n, w in sorted(steering.weights.items(), key=lambda kv: -kv[1])
                ],
            }
        )

    async def records(self, request: web.Request) -> web.Response:
        dst_raw = request.query.get("dst")
        try:
            limit = int(request.query.get("limit", "100"))
            if not 1 <= limit <= MAX_RECORDS:
                raise ValueError
        except ValueError:
            return _error(400, f"limit: expected an integer 1..{MAX_RECORDS}")
        dst: bytes | None = None
        if dst_raw:
            try:
                dst = to_addr(ipaddress.ip_address(dst_raw))
            except ValueError:
                return _error(400, f"dst: not an IP address: {dst_raw!r}")
        top, total = self.agent.top_pairs(dst, limit)
        out = [
            {
                "src": _addr(r.src),
                "dst": _addr(r.dst),
                "ts1": r.ts1,
                "ts2": r.ts2,
                "c": r.c,
                "origins": r.origins,
            }
            for r in top
        ]
        return web.json_response({"records": out, "total": total})

    async def origins(self, request: web.Request) -> web.Response:
        """Per origin held: its watermark (this node's clock for itself),
        rows and summed count (``?active_since=NS``: of the rows with ts2
        at or after that cluster time only), with the cluster time of the
        answer: what the lab compares across nodes (the count error among
        live origins)."""
        raw = request.query.get("active_since")
        try:
            since = None if raw is None else int(raw)
        except ValueError:
            return _error(400, f"active_since: expected integer nanoseconds, got {raw!r}")
        summary = self.agent.origin_summary(since)
        return web.json_response(
            {
                "node_id": self.agent.info.node_id,
                "at_ns": time.time_ns(),
                "origins": {
                    o: {"version": list(v), "rows": rows, "count": count}
                    for o, (v, rows, count) in sorted(summary.items())
                },
            }
        )

    async def get_config(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"thresholds": self.agent.thresholds.as_json(), **mesh_config_api.document(self.agent)}
        )

    def _authorised(self, request: web.Request) -> web.Response | None:
        token = self.agent.api_token
        if token is None:
            return _error(403, "no api_token_file configured: the API is read-only")
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer ") or not hmac.compare_digest(
            header[7:].strip().encode(), token.encode()
        ):
            return _error(401, "missing or wrong bearer token")
        return None

    async def put_config(self, request: web.Request) -> web.Response:
        denied = self._authorised(request)
        if denied is not None:
            return denied
        try:
            body = await _json_body(request)
        except ValueError as exc:
            return _error(400, f"body: {exc}")
        if not isinstance(body, dict):
            return _error(400, 'body: expected {"thresholds": {...}, "action": ..., "allow": []}')
        mesh = {k: body.pop(k) for k in ("action", "allow") if k in body}
        values = body.get("thresholds", body)
        if not isinstance(values, dict) or not (values or mesh):
            return _error(400, 'body: expected {"thresholds": {"t_f1": 200, ...}}')
        try:
            thresholds = _updated_thresholds(self.agent.thresholds, values) if values else None
            action, allow = mesh_config_api.check(mesh)
        except (ConfigError, ValueError) as exc:
            return _error(400, str(exc))
        except (TypeError, ArithmeticError) as exc:  # a value no check foresaw
            return _error(400, f"thresholds: {type(exc).__name__}: {exc}")
        # The mesh's document: a new version on every node (agent/mesh_config.py).
        doc = await self.agent.publish_config(thresholds, action, allow)
        return web.json_response({"thresholds": self.agent.thresholds.as_json(), "mesh": doc})

    async def feed(self, request: web.Request) -> web.Response:
        denied = self._authorised(request)
        if denied is not None:
            return denied
        backend = self.agent.feeder()
        if backend is None:
            return _error(404, "feed exists only with backend = memory")
        try:
            body = await _json_body(request)
            items = body if isinstance(body, list) else [body]
            packets = [_feed_item(item) for item in items]
            if sum(n for _, _, n in packets) > MAX_FEED:
                raise ValueError(f"at most {MAX_FEED} packets per request")
        except (ValueError, KeyError, TypeError) as exc:
            return _error(400, f"body: {exc}")
        verdicts: dict[str, int] = {}
        now = time.time_ns()
        for src, dst, count in packets:
            for i in range(count):
                v = str(backend.feed(src, dst, now + i))
                verdicts[v] = verdicts.get(v, 0) + 1
            now += count
        self.agent.note_stats(backend.read_stats())
        if isinstance(body, list):
            return web.json_response({"verdicts": verdicts, "pairs": len(packets)})
        key = PairKey(packets[0][0], packets[0][1])
        return web.json_response({"verdicts": verdicts, "key": str(key)})

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self.registry),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )


def _updated_thresholds(current: Thresholds, values: dict[str, Any]) -> Thresholds:
    from xpro_mesh.agent.config import format_duration, load_config

    flat = {f"thresholds.{k}": v for k, v in values.items()}
    base: dict[str, object] = {
        "thresholds.t_t1": format_duration(current.t_t1),
        "thresholds.t_t2": format_duration(current.t_t2),
        "thresholds.t_t3": format_duration(current.t_t3),
        "thresholds.t_t4": format_duration(current.t_t4),
        "thresholds.t_f1": current.t_f1,
        "thresholds.t_f2": current.t_f2,
        "thresholds.r": current.r,
        "thresholds.policy": str(current.policy),
    }
    base.update(flat)
    cfg = load_config(None, {"backend": "memory", **base}, require_key_file=False)
    return replace(cfg.thresholds)


def _feed_item(item: object) -> tuple[bytes, bytes, int]:
    """One ``{"src", "dst", "count"}`` of a feed request, as map addresses."""
    if not isinstance(item, dict):
        raise TypeError('expected {"src": IP, "dst": IP, "count": N} or a list of them')
    src = ipaddress.ip_address(item["src"])
    dst = ipaddress.ip_address(item["dst"])
    count = int(str(item.get("count", 1)))
    if not 1 <= count <= MAX_FEED:
        raise ValueError(f"count must be 1..{MAX_FEED}")
    return to_addr(src), to_addr(dst), count


def _error(status: int, message: str) -> web.Response:
    if status >= 400:
        log.info("API answered %d: %s", status, message)
    return web.json_response({"error": message}, status=status)
