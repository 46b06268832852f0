"""Traffic for the lab: the victim's service, good clients and bots.

Each role runs as its own process inside a lab namespace (started with
``nsenter --net``, which keeps /sys and so the bpffs pins visible) and
writes one JSON document to ``--out`` when it ends, so the scenario measures
at the victim and at the clients, not from the filter's own counters.

One timeline: every process gets the same epoch (a CLOCK_MONOTONIC reading
taken by the scenario; namespaces share the clock) and ``--start`` /
``--stop`` offsets from it, and reports times as seconds since the epoch.
With ``--epoch-file`` a process opens its sockets, writes ``--ready`` and
waits for the scenario to write the epoch there, so a slow start on a busy
machine delays everyone alike instead of skewing one sender.
So the victim's arrival bins, the bots' send bins and the good clients'
requests line up without any clock arithmetic in the analysis.

Every UDP datagram starts with a tag byte, ``G`` (a good client's request)
or ``A`` (attack), then the sender's sequence number and send time; the
victim counts arrivals per 100 ms bin per tag and per source block (the
third octet: which proxy the sender sits behind) and echoes ``G`` requests
back. It also answers TCP with an echo (a small service for hand tests).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import socket
import struct
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

HEADER = struct.Struct("!cQd")  # tag, sequence number, send time (monotonic s)
GOOD = b"G"
ATTACK = b"A"
PAYLOAD_PAD = b"\x00" * 32
BIN_S = 0.1  # the time resolution of every series (seconds per bin)
SOCKET_BUFFER = 4 << 20


def _install_stop(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


def _mark_ready(path: Path | None) -> None:
    """Tell the scenario this process has its sockets (``--ready FILE``)."""
    if path is not None:
        path.write_text("ready\n")


def _read_epoch(path: Path) -> float | None:
    """The epoch once written (a few bytes on a local filesystem)."""
    try:
        return float(path.read_text())
    except (OSError, ValueError):
        return None


async def _epoch(source: float | Path, stop: asyncio.Event, wait_s: float = 120.0) -> float:
    """The epoch itself, or read from a file the scenario writes once every
    process is ready."""
    if not isinstance(source, Path):
        return source
    deadline = time.monotonic() + wait_s
    while not stop.is_set() and time.monotonic() < deadline:
        epoch = _read_epoch(source)
        if epoch is not None:
            return epoch
        await asyncio.sleep(0.02)
    raise SystemExit(f"no epoch in {source} after {wait_s:g} s")


async def _sleep_until(deadline: float, stop: asyncio.Event) -> None:
    """Sleep until the monotonic clock reads ``deadline`` or ``stop`` is set."""
    delay = deadline - time.monotonic()
    if delay > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=delay)


# --- the victim ---------------------------------------------------------------


@dataclass
class VictimCounts:
    """Arrivals at the victim per bin since the epoch, per tag and per
    sending block (the third octet of the source: which proxy's clients)."""

    epoch: float
    bins: dict[str, dict[int, dict[int, int]]] = field(
        default_factory=lambda: {
            "good": defaultdict(lambda: defaultdict(int)),
            "attack": defaultdict(lambda: defaultdict(int)),
        }
    )
    tcp_connections: int = 0

    def add(self, tag: bytes, src: str, now: float) -> None:
        b = int((now - self.epoch) // BIN_S)
        key = "good" if tag == GOOD else "attack"
        try:
            block = int(src.split(".")[2])
        except (IndexError, ValueError):
            block = -1
        self.bins[key][block][b] += 1

    def to_json(self) -> dict[str, object]:
        return {
            "role": "victim",
            "epoch": self.epoch,
            "bin_s": BIN_S,
            "bins": {
                tag: {
                    str(block): {str(k): v for k, v in sorted(series.items())}
                    for block, series in blocks.items()
                }
                for tag, blocks in self.bins.items()
            },
            "tcp_connections": self.tcp_connections,
        }


class _VictimUdp(asyncio.DatagramProtocol):
    def __init__(self, counts: VictimCounts) -> None:
        self.counts = counts
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) < HEADER.size:
            return
        tag = data[:1]
        self.counts.add(tag, addr[0], time.monotonic())
        if tag == GOOD and self.transport is not None:
            self.transport.sendto(data, addr)


async def run_victim(
    host: str, port: int, start_at: float | Path, stop_at: float, ready: Path | None = None
) -> dict[str, object]:
    """Serve until ``epoch + stop_at`` (or SIGTERM) and return the counts."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    _install_stop(loop, stop)
    counts = VictimCounts(epoch=start_at if isinstance(start_at, float) else time.monotonic())
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
    sock.bind((host, port))
    transport, _ = await loop.create_datagram_endpoint(lambda: _VictimUdp(counts), sock=sock)

    async def tcp_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        counts.tcp_connections += 1
        with contextlib.suppress(OSError):
            data = await reader.read(1024)
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(tcp_client, host, port)
    _mark_ready(ready)
    epoch = counts.epoch = await _epoch(start_at, stop)
    await _sleep_until(epoch + stop_at, stop)
    transport.close()
    server.close()
    return counts.to_json()


# --- senders --------------------------------------------------------------------


def _bound_socket(addr: str) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.bind((addr, 0))
    return sock


async def _paced(
    count: int,
    rate_per_addr: float,
    start: float,
    stop_at: float,
    stop: asyncio.Event,
    send: Callable[[int, int], None],
) -> int:
    """Call ``send(index, seq)`` round-robin over ``count`` addresses so that
    each sends ``rate_per_addr`` packets/s from monotonic ``start`` until
    ``stop_at``, catching up after scheduling hiccups (a token account).
    A process that comes up after ``start`` begins at its own start instead
    of bursting what it would have owed. Returns how many were sent."""
    total_rate = rate_per_addr * count
    tick = 0.005
    if count == 0 or total_rate <= 0:
        await _sleep_until(stop_at, stop)
        return 0
    await _sleep_until(start, stop)
    late = time.monotonic() - start
    slot = int(late * total_rate) if late > 2 * tick else 0
    calls = 0
    while not stop.is_set():
        now = time.monotonic()
        if now >= stop_at:
            break
        owed = int((now - start) * total_rate) - slot
        for _ in range(max(0, owed)):
            send(slot % count, slot)
            slot += 1
            calls += 1
        await asyncio.sleep(tick)
    return calls


async def run_bots(
    addrs: Sequence[str],
    target: tuple[str, int],
    rate: float,
    start_at: float | Path,
    start: float,
    stop_at: float,
    ready: Path | None = None,
) -> dict[str, object]:
    """Attack packets from every address in ``addrs`` at ``rate`` pps each,
    from ``epoch + start`` to ``epoch + stop_at``; counts what was sent per bin."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    _install_stop(loop, stop)
    sockets = [_bound_socket(a) for a in addrs]
    errors = 0
    sent_bins: dict[int, int] = defaultdict(int)
    _mark_ready(ready)
    epoch = await _epoch(start_at, stop)

    def send(index: int, seq: int) -> None:
        nonlocal errors
        now = time.monotonic()
        try:
            sockets[index].sendto(HEADER.pack(ATTACK, seq, now) + PAYLOAD_PAD, target)
        except OSError:
            errors += 1
            return
        sent_bins[int((now - epoch) // BIN_S)] += 1

    sent = await _paced(len(sockets), rate, epoch + start, epoch + stop_at, stop, send)
    for s in sockets:
        s.close()
    return {
        "role": "bot",
        "addrs": len(addrs),
        # the victim's key for these packets: the third octet of the source
        "block": int(addrs[0].split(".")[2]) if addrs else -1,
        "rate": rate,
        "epoch": epoch,
        "start": start,
        "stop": stop_at,
        "bin_s": BIN_S,
        "sent": sent - errors,
        "send_errors": errors,
        "sent_bins": {str(k): v for k, v in sorted(sent_bins.items())},
    }


async def run_good(
    addrs: Sequence[str],
    target: tuple[str, int],
    rate: float,
    start_at: float | Path,
    start: float,
    stop_at: float,
    reply_timeout: float,
    label: str,
    ready: Path | None = None,
) -> dict[str, object]:
    """Request/response clients: every request either gets its echo within
    ``reply_timeout`` (success, latency recorded) or counts as failed."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    _install_stop(loop, stop)
    sockets = [_bound_socket(a) for a in addrs]
    outstanding: dict[tuple[int, int], float] = {}
    results: list[tuple[float, float | None]] = []  # (send time since epoch, latency or None)

    def on_readable(idx: int) -> None:
        sock = sockets[idx]
        while True:
            try:
                data = sock.recv(2048)
            except OSError:
                return
            if len(data) < HEADER.size:
                continue
            _tag, seq, sent_at = HEADER.unpack_from(data)
            if outstanding.pop((idx, seq), None) is not None:
                latency = time.monotonic() - sent_at
                results.append((sent_at - epoch, latency if latency <= reply_timeout else None))

    for i, s in enumerate(sockets):
        loop.add_reader(s.fileno(), on_readable, i)
    _mark_ready(ready)
    epoch = await _epoch(start_at, stop)

    def send(index: int, seq: int) -> None:
        now = time.monotonic()
        outstanding[(index, seq)] = now
        with contextlib.suppress(OSError):
            sockets[index].sendto(HEADER.pack(GOOD, seq, now) + PAYLOAD_PAD, target)

    await _paced(len(sockets), rate, epoch + start, epoch + stop_at, stop, send)
    if not stop.is_set():
        await _sleep_until(time.monotonic() + reply_timeout, stop)
    for sent_at in outstanding.values():
        results.append((sent_at - epoch, None))
    for s in sockets:
        loop.remove_reader(s.fileno())
        s.close()
    return _good_doc(label, len(addrs), rate, epoch, start, stop_at, reply_timeout, results)


@dataclass(frozen=True, slots=True)
class ClientMode:
    """Good clients on :class:`xpro_mesh.client.ProxyClient` (dispersion):
    ``via`` the source addresses that go through each proxy (node id ->
    one per client, in the order of the clients' own addresses), ``apis``
    each proxy's API as the clients reach it. With ``pin`` every client
    holds a fixed list (``pin`` weight 1, the others 0: all on one proxy)
    until ``follow_at`` s after the epoch (None: for good), then reads
    ``GET /v1/proxies`` every ``refresh_s`` like the rest."""

    via: dict[str, tuple[str, ...]]
    apis: dict[str, tuple[str, int]]
    pin: str | None = None
    follow_at: float | None = None
    refresh_s: float = 2.0
    attempts: int = 3


async def run_good_client(
    addrs: Sequence[str],
    mode: ClientMode,
    target: tuple[str, int],
    rate: float,
    start_at: float | Path,
    start: float,
    stop_at: float,
    reply_timeout: float,
    label: str,
    ready: Path | None = None,
) -> dict[str, object]:
    """:func:`run_good`'s clients, each request sent through
    ``ProxyClient.request(send)``: ``send(proxy)`` sends the datagram from
    the client's source behind ``proxy`` and waits for its echo; an attempt
    not answered within ``reply_timeout`` fails over to the client's next
    proxy (``attempts`` in all). A request succeeds when some attempt is
    answered; its latency runs from its first send. The namespace refreshes
    the list once per ``refresh_s`` for all its clients (a gateway's view),
    each client keeps its own choice and failures."""
    from xpro_mesh.client import ClientConfig, NoProxyAnswered, ProxyClient
    from xpro_mesh.client import Proxy as ListedProxy

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    _install_stop(loop, stop)
    nodes = sorted(mode.via)
    socks = {(j, n): _bound_socket(mode.via[n][j]) for j in range(len(addrs)) for n in nodes}
    waiting: dict[tuple[int, str, int], asyncio.Future[float]] = {}
    seqs = iter(range(1 << 62))

    def on_readable(key: tuple[int, str]) -> None:
        sock = socks[key]
        while True:
            try:
                data = sock.recv(2048)
            except OSError:
                return
            if len(data) < HEADER.size:
                continue
            _tag, seq, _sent = HEADER.unpack_from(data)
            fut = waiting.pop((*key, seq), None)
            if fut is not None and not fut.done():
                fut.set_result(time.monotonic())

    for key, sock in socks.items():
        loop.add_reader(sock.fileno(), on_readable, key)
    apis = tuple(sorted(mode.apis.items()))

    def config(client_id: str) -> ClientConfig:
        return ClientConfig(
            seeds=tuple(e for _n, e in apis),
            client_id=client_id,
            api_of=apis,
            refresh_s=mode.refresh_s,
            timeout_s=reply_timeout,
            attempts=mode.attempts,
        )

    def fixed(weight: Callable[[str], float]) -> list[ListedProxy]:
        return [
            ListedProxy(n, mode.apis[n][0], weight(n), mode.apis[n])
            for n in nodes
            if n in mode.apis
        ]

    clients = [ProxyClient(config(a)) for a in addrs]
    gateway = ProxyClient(config(f"gateway-{label}-{addrs[0] if addrs else ''}"))
    await gateway.start(refresh=False)
    if mode.pin is not None:
        initial = fixed(lambda n: 1.0 if n == mode.pin else 0.0)
    else:
        initial = gateway.proxies or fixed(lambda n: 1.0)
    for c in clients:
        c.proxies = list(initial)
    results: list[tuple[float, float | None]] = []
    detail: list[list[object]] = []  # [client, send time, latency or None, proxy or None]
    _mark_ready(ready)
    epoch = await _epoch(start_at, stop)

    async def follow() -> None:
        if mode.pin is not None:
            if mode.follow_at is None:
                return
            await _sleep_until(epoch + mode.follow_at, stop)
        while not stop.is_set():
            if await gateway.refresh():
                for c in clients:
                    c.proxies = list(gateway.proxies)
            await _sleep_until(time.monotonic() + mode.refresh_s, stop)

    async def one_request(j: int) -> None:
        t0 = time.monotonic()

        async def attempt(proxy: ListedProxy) -> float:
            seq = next(seqs)
            key = (j, proxy.node_id, seq)
            sock = socks.get((j, proxy.node_id))
            if sock is None:
                raise OSError(f"no source behind {proxy.node_id}")
            fut: asyncio.Future[float] = loop.create_future()
            waiting[key] = fut
            try:
                sock.sendto(HEADER.pack(GOOD, seq, time.monotonic()) + PAYLOAD_PAD, target)
                return await fut
            finally:
                waiting.pop(key, None)

        try:
            answered, proxy = await clients[j].request(attempt)
            latency: float | None = answered - t0
            node: str | None = proxy.node_id
        except NoProxyAnswered:
            latency, node = None, None
        results.append((t0 - epoch, latency))
        detail.append(
            [j, round(t0 - epoch, 4), None if latency is None else round(latency, 6), node]
        )

    tasks: set[asyncio.Task[None]] = set()

    def send(index: int, _seq: int) -> None:
        task = loop.create_task(one_request(index))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    lag = [0.0]  # the latest this loop woke (a bound on how late it saw an answer)

    async def ticker() -> None:
        while not stop.is_set():
            t = time.monotonic()
            await asyncio.sleep(0.05)
            lag[0] = max(lag[0], time.monotonic() - t - 0.05)

    follower = loop.create_task(follow())
    watch = loop.create_task(ticker())
    await _paced(len(addrs), rate, epoch + start, epoch + stop_at, stop, send)
    budget = mode.attempts * reply_timeout + 2.0
    if tasks:
        await asyncio.wait(set(tasks), timeout=budget)
    for task in list(tasks):
        task.cancel()
    for helper in (follower, watch):
        helper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await helper
    await gateway.close()
    for sock in socks.values():
        loop.remove_reader(sock.fileno())
        sock.close()
    doc = _good_doc(label, len(addrs), rate, epoch, start, stop_at, reply_timeout, results)
    doc["client"] = {
        "addrs": list(addrs),
        "pin": mode.pin,
        "follow_at": mode.follow_at,
        "refresh_s": mode.refresh_s,
        "timeout_s": reply_timeout,
        "attempts": mode.attempts,
        "failover_bound_s": config("bound").failover_bound_s(1.0 / rate) if rate > 0 else None,
        "failovers": sum(c.failovers for c in clients),
        "refreshes": gateway.refreshes,
        "refresh_failures": gateway.refresh_failures,
        "unfinished": len(tasks),
        "loop_lag_max_s": round(lag[0], 3),
        "requests": sorted(detail, key=lambda r: (float(str(r[1])), int(str(r[0])))),
    }
    return doc


def _named(text: str) -> dict[str, str]:
    """``a=x;b=y`` as a dict (the client options' shape)."""
    out = {}
    for part in text.split(";"):
        name, sep, value = part.partition("=")
        if not sep or not name or not value:
            raise SystemExit(f"expected NODE=VALUE;NODE=VALUE..., got {text!r}")
        out[name] = value
    return out


def _endpoint(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def _good_doc(
    label: str,
    addrs: int,
    rate: float,
    epoch: float,
    start: float,
    stop_at: float,
    reply_timeout: float,
    results: list[tuple[float, float | None]],
) -> dict[str, object]:
    """The good clients' JSON document: every request, in send order."""
    requests = [[round(t, 4), None if lat is None else round(lat, 6)] for t, lat in sorted(results)]
    return {
        "role": "good",
        "label": label,
        "addrs": addrs,
        "rate": rate,
        "epoch": epoch,
        "start": start,
        "stop": stop_at,
        "timeout": reply_timeout,
        "requests": requests,
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m xpro_mesh.lab.traffic")
    sub = parser.add_subparsers(dest="role", required=True)
    v = sub.add_parser("victim")
    v.add_argument("--host", default="0.0.0.0")
    v.add_argument("--port", type=int, default=9000)
    for name in ("bots", "good"):
        s = sub.add_parser(name)
        s.add_argument("--addrs", required=True, help="comma-separated source addresses")
        s.add_argument("--target", default="10.20.0.2:9000")
        s.add_argument("--rate", type=float, required=True, help="packets/s per address")
        s.add_argument("--start", type=float, default=0.0, help="seconds after the epoch")
        if name == "good":
            s.add_argument("--timeout", type=float, default=0.5, help="reply timeout (s)")
            s.add_argument("--label", default="good", help="group name in the report")
            s.add_argument(
                "--via",
                default=None,
                help="client mode: NODE=ADDR,ADDR;... the sources through each proxy",
            )
            s.add_argument(
                "--api", default=None, help="client mode: NODE=HOST:PORT;... each proxy's API"
            )
            s.add_argument("--pin", default=None, help="client mode: all on this proxy at first")
            s.add_argument(
                "--follow-at",
                type=float,
                default=None,
                help="client mode with --pin: follow GET /v1/proxies from this time",
            )
            s.add_argument(
                "--refresh", type=float, default=2.0, help="client mode: list refresh (s)"
            )
    for s in sub.choices.values():
        s.add_argument(
            "--epoch",
            type=float,
            default=None,
            help="CLOCK_MONOTONIC seconds all offsets count from (default: now)",
        )
        s.add_argument(
            "--epoch-file",
            type=Path,
            default=None,
            help="wait for the epoch to be written to this file",
        )
        s.add_argument("--stop", type=float, required=True, help="seconds after the epoch")
        s.add_argument("--out", type=Path, required=True)
        s.add_argument(
            "--ready", type=Path, default=None, help="write this file once the sockets are open"
        )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    epoch: float | Path = (
        args.epoch_file
        if args.epoch_file is not None
        else time.monotonic()
        if args.epoch is None
        else args.epoch
    )
    if args.role == "victim":
        doc = asyncio.run(run_victim(args.host, args.port, epoch, args.stop, args.ready))
    else:
        host, _, port = args.target.rpartition(":")
        target = (host, int(port))
        addrs = [a for a in args.addrs.split(",") if a]
        if args.role == "bots":
            doc = asyncio.run(
                run_bots(addrs, target, args.rate, epoch, args.start, args.stop, args.ready)
            )
        elif args.via is not None:
            mode = ClientMode(
                via={n: tuple(v.split(",")) for n, v in _named(args.via).items()},
                apis={n: _endpoint(v) for n, v in _named(args.api or "").items()},
                pin=args.pin,
                follow_at=args.follow_at,
                refresh_s=args.refresh,
            )
            doc = asyncio.run(
                run_good_client(
                    addrs,
                    mode,
                    target,
                    args.rate,
                    epoch,
                    args.start,
                    args.stop,
                    args.timeout,
                    args.label,
                    args.ready,
                )
            )
        else:
            doc = asyncio.run(
                run_good(
                    addrs,
                    target,
                    args.rate,
                    epoch,
                    args.start,
                    args.stop,
                    args.timeout,
                    args.label,
                    args.ready,
                )
            )
    args.out.write_text(json.dumps(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
