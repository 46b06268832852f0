"""The transport seam: best-effort datagrams, a real UDP one and an in-memory twin.

Why: memberlist's ``Transport`` interface ("the packet interface is assumed to
be best-effort") has a real ``net_transport.go`` and a ``mock_transport.go``
so whole clusters run in one test process. Here the gossip and membership
code sees only :class:`Transport`: :class:`UdpTransport` on an asyncio
datagram endpoint in the agent, :class:`MemoryTransport` on a
:class:`MemoryNetwork` in tests, where loss, duplication, reordering,
latency and partitions are dialled in and drawn from a seeded rng.

This is the best-effort half; bulk state goes on the reliable half,
:mod:`xpro_mesh.mesh.stream`. A delta small enough for datagrams is cut by
the caller (:func:`xpro_mesh.mesh.wire.chunk_rows`) to the payload room
under :attr:`Transport.max_datagram` that
:func:`xpro_mesh.mesh.auth.payload_budget` leaves after the envelope, and
every chunk stands alone, so a lost chunk costs only its own rows until the
next round.

The size limit is a trade. The default, 60 000 bytes, is one packet on
loopback (its MTU is 65 536) and lets a delta go out in few datagrams; on
an Ethernet link (MTU 1500) the same datagram leaves as ~41 IP fragments and
the loss of any one loses all of it, so the ``lan`` profile uses 1 400 bytes
(one frame, no fragmentation, more datagrams for the same state) and ``wan``
1 200 (under common tunnel MTUs).

Errors never propagate to the caller: a datagram that cannot be sent or is
too large is dropped and counted in :class:`TransportStats`, as UDP drops it
anyway. Receiving is by callback (``on_datagram(payload, source_addr)``),
called from the event loop; it must be quick (hand the datagram to a queue
or a sans-IO state machine).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import random
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "DEFAULT_MAX_DATAGRAM_BYTES",
    "Address",
    "DatagramHandler",
    "ManualScheduler",
    "MemoryNetwork",
    "MemoryTransport",
    "NetworkStats",
    "Scheduler",
    "Transport",
    "TransportStats",
    "UdpTransport",
]

log = logging.getLogger(__name__)

Address = tuple[str, int]
DatagramHandler = Callable[[bytes, Address], None]
Scheduler = Callable[[float, Callable[[], None]], object]
"""``call_later(delay_seconds, callback)``, like ``loop.call_later``."""

DEFAULT_MAX_DATAGRAM_BYTES = 60_000
UDP_MAX_PAYLOAD = 65_507  # IPv4: 65 535 - 20 (IP) - 8 (UDP)


@dataclass(slots=True)
class TransportStats:
    """Counters of one transport (the agent exports them as metrics)."""

    sent: int = 0
    sent_bytes: int = 0
    received: int = 0
    received_bytes: int = 0
    oversized_sent: int = 0  # refused: over max_datagram
    oversized_received: int = 0  # dropped: over max_datagram
    send_errors: int = 0  # the OS refused the send, or the send buffer was full
    receive_errors: int = 0  # errors the OS reported on the socket (e.g. ICMP unreachable)
    handler_errors: int = 0  # the on_datagram callback raised (a bug: logged)
    dropped_closed: int = 0  # sent after close


class Transport(Protocol):
    """Best-effort datagrams: may be lost, duplicated or reordered."""

    @property
    def local_addr(self) -> Address: ...

    @property
    def max_datagram(self) -> int: ...

    @property
    def stats(self) -> TransportStats: ...

    def send(self, datagram: bytes, addr: Address) -> bool:
        """Queue ``datagram`` for ``addr``; False if it was dropped here
        (closed, oversized, OS error). True does not mean it arrives."""
        ...

    def close(self) -> None: ...


def _deliver(handler: DatagramHandler, stats: TransportStats, data: bytes, addr: Address) -> None:
    stats.received += 1
    stats.received_bytes += len(data)
    try:
        handler(data, addr)
    except Exception:
        stats.handler_errors += 1
        log.exception("datagram handler failed on %d bytes from %s:%d", len(data), *addr)


# --- UDP ---------------------------------------------------------------------


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, owner: UdpTransport) -> None:
        self._owner = owner

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self._owner._received(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        self._owner.stats.receive_errors += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self._owner._closed = True


class UdpTransport:
    """:class:`Transport` over an asyncio UDP endpoint. Open it with
    :meth:`open` inside a running loop; the owner closes it."""

    def __init__(
        self, on_datagram: DatagramHandler, *, max_datagram: int, max_send_buffer_bytes: int
    ) -> None:
        if not 0 < max_datagram <= UDP_MAX_PAYLOAD:
            raise ValueError(f"max_datagram must be 1..{UDP_MAX_PAYLOAD}, got {max_datagram}")
        self._on_datagram = on_datagram
        self._max_datagram = max_datagram
        self._max_send_buffer = max_send_buffer_bytes
        self._stats = TransportStats()
        self._transport: asyncio.DatagramTransport | None = None
        self._local_addr: Address = ("", 0)
        self._closed = False

    @classmethod
    async def open(
        cls,
        bind: Address,
        on_datagram: DatagramHandler,
        *,
        max_datagram: int = DEFAULT_MAX_DATAGRAM_BYTES,
        max_send_buffer_bytes: int = 4 * 1024 * 1024,
        receive_buffer_bytes: int = 4 * 1024 * 1024,
    ) -> UdpTransport:
        """Bind ``bind`` (port 0: any free port; see :attr:`local_addr`).

        ``receive_buffer_bytes`` asks the kernel for a larger socket buffer, so
        a burst of gossip (a full sync) is not dropped while the loop is busy;
        the kernel caps it at ``net.core.rmem_max``.
        """
        self = cls(
            on_datagram, max_datagram=max_datagram, max_send_buffer_bytes=max_send_buffer_bytes
        )
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _UdpProtocol(self), local_addr=bind
        )
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer_bytes)
            except OSError:
                log.warning("could not set SO_RCVBUF to %d bytes", receive_buffer_bytes)
        sockname = transport.get_extra_info("sockname")
        self._local_addr = (str(sockname[0]), int(sockname[1]))
        return self

    @property
    def local_addr(self) -> Address:
        return self._local_addr

    @property
    def max_datagram(self) -> int:
        return self._max_datagram

    @property
    def stats(self) -> TransportStats:
        return self._stats

    @property
    def closed(self) -> bool:
        return self._closed

    def send(self, datagram: bytes, addr: Address) -> bool:
        transport = self._transport
        if transport is None or self._closed or transport.is_closing():
            self._stats.dropped_closed += 1
            return False
        if len(datagram) > self._max_datagram:
            self._stats.oversized_sent += 1
            return False
        # asyncio's and uvloop's UDP transports both have it; typeshed omits it.
        buffered: Callable[[], int] | None = getattr(transport, "get_write_buffer_size", None)
        if buffered is not None and buffered() > self._max_send_buffer:
            self._stats.send_errors += 1  # best effort: drop rather than buffer without bound
            return False
        try:
            transport.sendto(datagram, addr)
        except (OSError, ValueError, TypeError):
            self._stats.send_errors += 1
            return False
        self._stats.sent += 1
        self._stats.sent_bytes += len(datagram)
        return True

    def close(self) -> None:
        self._closed = True
        if self._transport is not None:
            self._transport.close()

    def _received(self, data: bytes, addr: Address) -> None:
        if self._closed:
            return
        if len(data) > self._max_datagram:
            self._stats.oversized_received += 1
            return
        _deliver(self._on_datagram, self._stats, data, addr)


# --- in memory -----------------------------------------------------------------


class ManualScheduler:
    """A :data:`Scheduler` on a virtual clock, for deterministic tests without
    an event loop: callbacks run only in :meth:`advance`, in time order. Time
    is kept in integer nanoseconds so that sums of delays compare exactly."""

    def __init__(self) -> None:
        self.now_ns = 0
        self._due: list[tuple[int, int, Callable[[], None]]] = []
        self._order = itertools.count()

    def __call__(self, delay_s: float, callback: Callable[[], None]) -> None:
        at = self.now_ns + max(0, round(delay_s * 1e9))
        heapq.heappush(self._due, (at, next(self._order), callback))

    def advance(self, seconds: float) -> int:
        """Move the clock and run what fell due (including callbacks that
        those schedule within the span); returns how many ran."""
        until = self.now_ns + round(seconds * 1e9)
        ran = 0
        while self._due and self._due[0][0] <= until:
            at, _, callback = heapq.heappop(self._due)
            self.now_ns = at
            callback()
            ran += 1
        self.now_ns = until
        return ran

    def pending(self) -> int:
        return len(self._due)


@dataclass(slots=True)
class NetworkStats:
    """What the simulated network did to the datagrams given to it."""

    delivered: int = 0
    lost: int = 0  # dropped by the loss rate
    duplicated: int = 0
    reordered: int = 0
    blocked: int = 0  # dropped by a partition
    undeliverable: int = 0  # nobody attached (or closed) at the destination


@dataclass(slots=True)
class MemoryNetwork:
    """An in-process datagram network with dialled-in faults.

    ``loss``, ``duplicate`` and ``reorder`` are probabilities per datagram;
    a datagram takes ``latency_s + uniform(0, jitter_s)``, and a reordered
    one ``reorder_delay_s`` more, so datagrams sent after it overtake it. All
    draws come from ``rng`` in send order, so a seed fixes the faults. The
    fields may be changed while it runs. ``scheduler`` defaults to the
    running loop's ``call_later``; pass a :class:`ManualScheduler` to run
    without asyncio. Delivery is never synchronous inside ``send``.
    """

    rng: random.Random = field(default_factory=lambda: random.Random(0))
    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    latency_s: float = 0.0
    jitter_s: float = 0.0
    reorder_delay_s: float = 0.005
    max_datagram: int = DEFAULT_MAX_DATAGRAM_BYTES
    scheduler: Scheduler | None = None
    stats: NetworkStats = field(default_factory=NetworkStats)
    _endpoints: dict[Address, MemoryTransport] = field(default_factory=dict, init=False)
    _blocked: set[frozenset[str]] = field(default_factory=set, init=False)
    _next_port: int = field(default=40_000, init=False)

    def attach(self, addr: Address, on_datagram: DatagramHandler) -> MemoryTransport:
        """A transport at ``addr`` (port 0: a free port is chosen)."""
        host, port = addr
        if port == 0:
            while (host, self._next_port) in self._endpoints:
                self._next_port += 1
            port = self._next_port
            self._next_port += 1
        if (host, port) in self._endpoints:
            raise OSError(f"address in use: {host}:{port}")
        transport = MemoryTransport(self, (host, port), on_datagram, self.max_datagram)
        self._endpoints[(host, port)] = transport
        return transport

    def partition(self, side_a: Iterable[Address], side_b: Iterable[Address]) -> None:
        """Drop every datagram between the two sides, both ways."""
        for a in side_a:
            for b in side_b:
                self._blocked.add(frozenset((_key(a), _key(b))))

    def heal(self) -> None:
        self._blocked.clear()

    def _detach(self, transport: MemoryTransport) -> None:
        if self._endpoints.get(transport.local_addr) is transport:
            del self._endpoints[transport.local_addr]

    def _send(self, src: Address, datagram: bytes, dst: Address) -> None:
        if frozenset((_key(src), _key(dst))) in self._blocked:
            self.stats.blocked += 1
            return
        if self.rng.random() < self.loss:
            self.stats.lost += 1
            return
        copies = 1
        if self.rng.random() < self.duplicate:
            copies = 2
            self.stats.duplicated += 1
        schedule = self.scheduler or asyncio.get_running_loop().call_later
        for _ in range(copies):
            delay = self.latency_s + self.rng.uniform(0.0, self.jitter_s)
            if self.rng.random() < self.reorder:
                delay += self.reorder_delay_s
                self.stats.reordered += 1
            schedule(delay, lambda: self._arrive(src, datagram, dst))

    def _arrive(self, src: Address, datagram: bytes, dst: Address) -> None:
        endpoint = self._endpoints.get(dst)
        if endpoint is None or endpoint.closed:
            self.stats.undeliverable += 1
            return
        self.stats.delivered += 1
        endpoint._received(datagram, src)


def _key(addr: Address) -> str:
    return f"{addr[0]}:{addr[1]}"


class MemoryTransport:
    """:class:`Transport` on a :class:`MemoryNetwork` (made by
    :meth:`MemoryNetwork.attach`)."""

    def __init__(
        self,
        network: MemoryNetwork,
        addr: Address,
        on_datagram: DatagramHandler,
        max_datagram: int,
    ) -> None:
        self._network = network
        self._addr = addr
        self._on_datagram = on_datagram
        self._max_datagram = max_datagram
        self._stats = TransportStats()
        self.closed = False

    @property
    def local_addr(self) -> Address:
        return self._addr

    @property
    def max_datagram(self) -> int:
        return self._max_datagram

    @property
    def stats(self) -> TransportStats:
        return self._stats

    def send(self, datagram: bytes, addr: Address) -> bool:
        if self.closed:
            self._stats.dropped_closed += 1
            return False
        if len(datagram) > self._max_datagram:
            self._stats.oversized_sent += 1
            return False
        self._stats.sent += 1
        self._stats.sent_bytes += len(datagram)
        self._network._send(self._addr, bytes(datagram), addr)
        return True

    def close(self) -> None:
        self.closed = True
        self._network._detach(self)

    def _received(self, data: bytes, addr: Address) -> None:
        if len(data) > self._max_datagram:
            self._stats.oversized_received += 1
            return
        _deliver(self._on_datagram, self._stats, data, addr)
