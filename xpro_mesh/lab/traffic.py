"""Traffic for the lab: the victim's service, good clients and bots.

Each role runs as its own process inside a lab namespace (started with
``nsenter --net``) and writes one JSON document to ``--out`` when it ends, so
the scenario measures at the victim and at the clients, not from the
filter's own counters.

Every UDP datagram starts with a tag byte, ``G`` (a good client's request)
or ``A`` (attack), then the sender's sequence number and send time; the
victim counts arrivals per second per tag and echoes ``G`` requests back.
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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

HEADER = struct.Struct("!cQd")  # tag, sequence number, send time (monotonic s)
GOOD = b"G"
ATTACK = b"A"
PAYLOAD_PAD = b"\x00" * 32


def _install_stop(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)


# --- the victim ---------------------------------------------------------------


BIN_S = 0.1  # the victim's time resolution (seconds per bin)


@dataclass
class VictimCounts:
    """Arrivals at the victim per 100 ms bin since it started, per tag and per
    sending block (the third octet of the source: which proxy's clients)."""

    started_at: float
    bins: dict[str, dict[int, dict[int, int]]] = field(
        default_factory=lambda: {"good": defaultdict(lambda: defaultdict(int)),
                                 "attack": defaultdict(lambda: defaultdict(int))}
    )
    tcp_connections: int = 0

    def add(self, tag: bytes, src: str, now: float) -> None:
        b = int((now - self.started_at) / BIN_S)
        key = "good" if tag == GOOD else "attack"
        try:
            block = int(src.split(".")[2])
        except (IndexError, ValueError):
            block = -1
        self.bins[key][block][b] += 1

    def to_json(self) -> dict[str, object]:
        return {
            "started_at": self.started_at,
            "bin_s": BIN_S,
            "bins": {
                tag: {str(block): {str(k): v for k, v in sorted(series.items())}
                      for block, series in blocks.items()}
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


async def run_victim(host: str, port: int, duration: float) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    _install_stop(loop, stop)
    counts = VictimCounts(started_at=time.monotonic())
    transport, _ = await loop.create_datagram_endpoint(
        lambda: _VictimUdp(counts), local_addr=(host, port)
    )

    async def tcp_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        counts.tcp_connections += 1
        data = await reader.read(1024)
        writer.write(data)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(tcp_client, host, port)
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=duration)
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
    sockets: Sequence[socket.socket],
    rate_per_addr: float,
    duration: float,
    stop: asyncio.Event,
    send: object,
) -> None:
    """Call ``send(sock, seq)`` for every address at ``rate_per_addr`` pps,
    round-robin, catching up after scheduling hiccups (a token account)."""
    assert callable(send)
    start = time.monotonic()
    sent = 0
    total_rate = rate_per_addr * len(sockets)
    tick = 0.005
    while not stop.is_set():
        now = time.monotonic()
        elapsed = now - start
        if elapsed >= duration:
            break
        owed = int(elapsed * total_rate) - sent
        for _ in range(max(0, owed)):
            send(sockets[sent % len(sockets)], sent)
            sent += 1
        await asyncio.sleep(tick)


async def run_bots(
    addrs: Sequence[str], target: tuple[str, int], rate: float, delay: float, duration: float
) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    _install_stop(loop, stop)
    sockets = [_bound_socket(a) for a in addrs]
    errors = 0

    def send(sock: socket.socket, seq: int) -> None:
        nonlocal errors
        try:
            sock.sendto(HEADER.pack(ATTACK, seq, time.monotonic()) + PAYLOAD_PAD, target)
        except (BlockingIOError, OSError):
            errors += 1

    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=delay)
    started = time.monotonic()
    counter = {"sent": 0}

    def counted(sock: socket.socket, seq: int) -> None:
        counter["sent"] += 1
        send(sock, seq)

    if not stop.is_set():
        await _paced(sockets, rate, duration, stop, counted)
    for s in sockets:
        s.close()
    return {
        "role": "bot",
        "addrs": len(addrs),
        "started_at": started,
        "sent": counter["sent"],
        "send_errors": errors,
    }


async def run_good(
    addrs: Sequence[str], target: tuple[str, int], rate: float, duration: float,
    reply_timeout: float,
) -> dict[str, object]:
    """Request/response clients: every request either gets its echo within
    ``reply_timeout`` (success, latency recorded) or counts as failed."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    _install_stop(loop, stop)
    sockets = [_bound_socket(a) for a in addrs]
    outstanding: dict[tuple[int, int], float] = {}
    results: list[tuple[float, float | None]] = []  # (send time, latency or None)
    t0 = time.monotonic()

    def on_readable(idx: int) -> None:
        sock = sockets[idx]
        while True:
            try:
                data = sock.recv(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            if len(data) < HEADER.size:
                continue
            _tag, seq, sent_at = HEADER.unpack_from(data)
            if outstanding.pop((idx, seq), None) is not None:
                latency = time.monotonic() - sent_at
                results.append((sent_at - t0, latency if latency <= reply_timeout else None))

    for i, s in enumerate(sockets):
        loop.add_reader(s.fileno(), on_readable, i)

    def send(sock: socket.socket, seq: int) -> None:
        idx = sockets.index(sock)
        now = time.monotonic()
        outstanding[(idx, seq)] = now
        with contextlib.suppress(OSError):
            sock.sendto(HEADER.pack(GOOD, seq, now) + PAYLOAD_PAD, target)

    await _paced(sockets, rate, duration, stop, send)
    await asyncio.sleep(reply_timeout)
    for (_, _), sent_at in outstanding.items():
        results.append((sent_at - t0, None))
    for s in sockets:
        loop.remove_reader(s.fileno())
        s.close()
    results.sort()
    requests = [[round(t, 4), None if lat is None else round(lat, 6)] for t, lat in results]
    return {"role": "good", "addrs": len(addrs), "started_at": t0, "requests": requests}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m xpro_mesh.lab.traffic")
    sub = parser.add_subparsers(dest="role", required=True)
    v = sub.add_parser("victim")
    v.add_argument("--host", default="0.0.0.0")
    v.add_argument("--port", type=int, default=9000)
    v.add_argument("--duration", type=float, default=3600)
    v.add_argument("--out", type=Path, required=True)
    for name in ("bots", "good"):
        s = sub.add_parser(name)
        s.add_argument("--addrs", required=True, help="comma-separated source addresses")
        s.add_argument("--target", default="10.20.0.2:9000")
        s.add_argument("--rate", type=float, required=True, help="packets/s per address")
        s.add_argument("--duration", type=float, required=True)
        s.add_argument("--out", type=Path, required=True)
        if name == "bots":
            s.add_argument("--delay", type=float, default=0.0, help="seconds before the attack")
        else:
            s.add_argument("--timeout", type=float, default=0.5)
    args = parser.parse_args(argv)
    if args.role == "victim":
        doc = asyncio.run(run_victim(args.host, args.port, args.duration))
        args.out.write_text(json.dumps(doc))
        return 0
    host, _, port = args.target.rpartition(":")
    target = (host, int(port))
    addrs = [a for a in args.addrs.split(",") if a]
    if args.role == "bots":
        doc = asyncio.run(run_bots(addrs, target, args.rate, args.delay, args.duration))
    else:
        doc = asyncio.run(run_good(addrs, target, args.rate, args.duration, args.timeout))
    args.out.write_text(json.dumps(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
