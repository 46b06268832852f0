"""Picking a proxy: what an IoT device or its gateway runs (DeDoS dispersion).

The proxies publish where good traffic should go (``GET /v1/proxies`` on any
of them: the live proxies with weights summing to 1). A :class:`ProxyClient`

* **chooses** by weighted rendezvous hashing: each proxy scores
  ``-ln(u) / weight`` with ``u`` a hash of (client id, proxy id) in (0, 1),
  and the lowest score wins. Over many clients, each proxy gets its weight's
  share; when a weight changes, only the clients that must move do; and
  every client has its own order of the others, weighted too;
* **refreshes** the list every ``refresh_s`` from its current proxy, else the
  next, else a seed (each try bounded by ``timeout_s``);
* **fails over at once**: a request (the application's own call, given the
  proxy) that does not complete within ``timeout_s`` or errors marks the
  proxy failed for ``quarantine_s`` and is retried on the next proxy of the
  client's order, immediately the first time, then with doubling backoff,
  ``attempts`` tries in all.

The failover bound: a client sending every ``I`` seconds whose proxy stops
answering has its next request fail within ``timeout_s`` (every attempt is
cut at ``timeout_s``) and succeed on the next proxy, so it reaches another
proxy within ``I + 2·timeout_s`` (:meth:`ClientConfig.failover_bound_s`),
whatever the mesh's failure detector takes to notice.

Depends on aiohttp and the standard library only. ``python -m
xpro_mesh.client --seed HOST:PORT`` prints the list and this client's order.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import math
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp

__all__ = ["ClientConfig", "NoProxyAnswered", "Proxy", "ProxyClient", "rendezvous_order"]

T = TypeVar("T")
DEFAULT_API_PORT = 7947


class NoProxyAnswered(Exception):
    """Every attempt of one request failed (the last error is the cause)."""


@dataclass(frozen=True, slots=True)
class Proxy:
    """One proxy as ``GET /v1/proxies`` lists it."""

    node_id: str
    host: str
    weight: float
    api: tuple[str, int]  # where its HTTP API answers
    state: str = "alive"
    load: str = "ok"

    @property
    def url(self) -> str:
        return f"http://{self.api[0]}:{self.api[1]}"


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """How a client picks, refreshes and fails over (times in seconds)."""

    seeds: tuple[tuple[str, int], ...]  # API endpoints to start from (host, port)
    client_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    api_port: int = DEFAULT_API_PORT  # API port of the proxies learnt from the list
    refresh_s: float = 5.0  # how often the list is read again
    timeout_s: float = 0.5  # a proxy that does not answer within this is failed over
    attempts: int = 3  # tries per request, each on the next proxy
    backoff_s: float = 0.05  # wait before the third try; doubles after
    backoff_max_s: float = 1.0
    quarantine_s: float = 10.0  # a failed proxy is tried last for this long
    # node id -> (host, port) of its API where the gossiped host is not what
    # this client can reach (a NAT, or the lab: the mesh gossips on the
    # proxies' service side, clients reach their client side)
    api_of: tuple[tuple[str, tuple[str, int]], ...] = ()

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ValueError("seeds: at least one proxy API endpoint (host:port) is needed")
        for name in ("refresh_s", "timeout_s", "quarantine_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {self.attempts}")
        if self.backoff_s < 0 or self.backoff_max_s < self.backoff_s:
            raise ValueError("backoff_s must be >= 0 and <= backoff_max_s")

    def failover_bound_s(self, send_interval_s: float) -> float:
        """Longest time from a proxy going silent to this client's next success
        elsewhere, for a client sending every ``send_interval_s``: one interval
        until the next request, one timeout for the silent proxy, one timeout
        at most for the next (every attempt is cut at ``timeout_s``)."""
        return send_interval_s + 2 * self.timeout_s


def _unit_hash(client_id: str, node_id: str) -> float:
    """A uniform number in (0, 1) from the pair, the same on every client."""
    digest = hashlib.blake2b(f"{client_id}\x00{node_id}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") + 0.5) / 2**64


def rendezvous_order(client_id: str, proxies: Sequence[Proxy]) -> list[Proxy]:
    """This client's preference order: weighted rendezvous (lowest
    ``-ln(u)/w`` first), proxies of weight 0 last (by hash). The first is
    chosen with probability ``weight`` over clients; removing a proxy moves
    only its own clients, to the next of each one's order."""

    def score(p: Proxy) -> tuple[int, float]:
        u = _unit_hash(client_id, p.node_id)
        if p.weight <= 0:
            return (1, u)
        return (0, -math.log(u) / p.weight)

    return sorted(proxies, key=score)


def parse_proxies(
    doc: Any, api_port: int, api_of: dict[str, tuple[str, int]] | None = None
) -> list[Proxy]:
    """The ``proxies`` of a ``GET /v1/proxies`` document (ValueError if not
    one); each API on its gossiped host and ``api_port``, or where
    ``api_of`` says for its node id."""
    if not isinstance(doc, dict) or not isinstance(doc.get("proxies"), list):
        raise ValueError('expected {"proxies": [...]}')
    out = []
    for item in doc["proxies"]:
        host = str(item["host"])
        node_id = str(item["node_id"])
        out.append(
            Proxy(
                node_id=node_id,
                host=host,
                weight=float(item["weight"]),
                api=(api_of or {}).get(node_id, (host, api_port)),
                state=str(item.get("state", "alive")),
                load=str(item.get("load", "ok")),
            )
        )
    return out


class ProxyClient:
    """Use as ``async with ProxyClient(config) as client:`` (the session and
    the refresh task are owned here), then ``await client.request(send)``."""

    def __init__(
        self,
        config: ClientConfig,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.clock = clock
        self.proxies: list[Proxy] = []
        self.failed_until: dict[str, float] = {}
        self.refreshes = 0
        self.refresh_failures = 0
        self.failovers = 0
        self._session: aiohttp.ClientSession | None = None
        self._refresher: asyncio.Task[None] | None = None

    async def __aenter__(self) -> ProxyClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self, refresh: bool = True) -> None:
        """Open the session and read the list once (from any seed); with
        ``refresh``, keep reading it every ``refresh_s``."""
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.config.timeout_s)
        )
        await self.refresh()
        if refresh:
            self._refresher = asyncio.create_task(self._refresh_loop(), name="proxy-refresh")

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        """The client's HTTP session (open between start and close), for
        applications whose traffic is HTTP."""
        assert self._session is not None, "start() the client first"
        return self._session

    # --- choice -------------------------------------------------------------------

    def order(self) -> list[Proxy]:
        """Proxies in this client's order, those failed recently last."""
        now = self.clock()
        ranked = rendezvous_order(self.config.client_id, self.proxies)
        ok = [p for p in ranked if self.failed_until.get(p.node_id, 0.0) <= now]
        return ok + [p for p in ranked if p not in ok]

    @property
    def current(self) -> Proxy | None:
        order = self.order()
        return order[0] if order else None

    def mark_failed(self, proxy: Proxy) -> None:
        self.failed_until[proxy.node_id] = self.clock() + self.config.quarantine_s

    # --- requests -----------------------------------------------------------------

    async def request(self, send: Callable[[Proxy], Awaitable[T]]) -> tuple[T, Proxy]:
        """``send(proxy)`` on this client's proxy; on a timeout or an error, at
        once on the next, then with backoff; at most ``attempts`` tries.
        Returns the result and the proxy that answered."""
        cfg = self.config
        tried: list[str] = []
        last: BaseException | None = None
        for attempt in range(cfg.attempts):
            candidates = [p for p in self.order() if p.node_id not in tried] or self.order()
            if not candidates:
                await self.refresh()
                candidates = self.order()
                if not candidates:
                    break
            proxy = candidates[0]
            tried.append(proxy.node_id)
            if attempt >= 2:
                await asyncio.sleep(min(cfg.backoff_max_s, cfg.backoff_s * 2 ** (attempt - 2)))
            try:
                result = await asyncio.wait_for(send(proxy), cfg.timeout_s)
            except (TimeoutError, OSError, aiohttp.ClientError) as exc:
                last = exc
                self.mark_failed(proxy)
                self.failovers += 1
                continue
            return result, proxy
        raise NoProxyAnswered(f"no proxy answered in {cfg.attempts} attempts: {last!r}") from last

    # --- the list -----------------------------------------------------------------

    async def refresh(self) -> bool:
        """Read ``/v1/proxies`` from the current proxy, else the next ones,
        else the seeds; True when a list was read."""
        cfg = self.config
        endpoints = [p.api for p in self.order()] + [s for s in cfg.seeds]
        seen: set[tuple[str, int]] = set()
        for host, port in endpoints:
            if (host, port) in seen:
                continue
            seen.add((host, port))
            try:
                doc = await asyncio.wait_for(self._get_json(host, port), cfg.timeout_s)
                proxies = parse_proxies(doc, cfg.api_port, dict(cfg.api_of))
            except (TimeoutError, OSError, aiohttp.ClientError, ValueError, KeyError, TypeError):
                continue
            if proxies:
                self.proxies = proxies
                self.refreshes += 1
                return True
        self.refresh_failures += 1
        return False

    async def _get_json(self, host: str, port: int) -> Any:
        assert self._session is not None, "start() the client first"
        async with self._session.get(f"http://{host}:{port}/v1/proxies") as resp:
            resp.raise_for_status()
            return await resp.json()

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.refresh_s)
            await self.refresh()


def _endpoint(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


async def _show(args: argparse.Namespace) -> int:
    config = ClientConfig(
        seeds=tuple(args.seed),
        client_id=args.client_id or uuid.uuid4().hex,
        api_port=args.api_port,
        timeout_s=args.timeout,
    )
    client = ProxyClient(config)
    await client.start(refresh=False)
    try:
        if not client.proxies:
            print("error: no seed answered GET /v1/proxies", file=sys.stderr)
            return 1
        print(f"client {config.client_id}")
        for rank, p in enumerate(client.order(), 1):
            print(f"{rank:>2}. {p.node_id:<20} {p.host:<16} weight {p.weight:.3f}  {p.load}")
        return 0
    finally:
        await client.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m xpro_mesh.client",
        description="Show the proxies and this client's order (DeDoS dispersion).",
    )
    parser.add_argument(
        "--seed",
        type=_endpoint,
        action="append",
        required=True,
        help="a proxy's API endpoint HOST:PORT (repeatable)",
    )
    parser.add_argument(
        "--api-port",
        type=int,
        default=DEFAULT_API_PORT,
        help="API port of the proxies in the list (default 7947)",
    )
    parser.add_argument("--client-id", help="stable id of this client (default: random)")
    parser.add_argument("--timeout", type=float, default=0.5, help="seconds per request")
    args = parser.parse_args(argv)
    try:
        return asyncio.run(_show(args))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
