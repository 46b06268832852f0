"""The reliable side of the transport seam: bulk state on a stream.

Why: memberlist splits its traffic the same way ("the packet interface is
assumed to be best-effort and the stream interface reliable"): probes and
small gossip stay datagrams, push-pull state transfer goes over TCP. A
delta of a million rows is a few large writes on one connection instead of
thousands of datagrams, which would queue in the receiver's socket buffer in
front of its probes and acks and make a healthy, busy node look dead (what
the lab saw at 6 900 bot sources: every peer flapping alive → suspect).

A stream here is one-way and short-lived: the sender connects to the peer's
gossip port (the same number, TCP), writes length-prefixed frames and
closes. The frames are opaque to this module; the node seals every one with
the cluster keyring (:mod:`xpro_mesh.mesh.auth`, under the stream's own magic
so a captured datagram cannot be replayed into a stream or back), including
its sender id, and opens and decodes every one it receives. Frame::

    offset  size  field
    0       4     length L, big-endian (1..max_frame_bytes)
    4       L     the sealed frame

Everything is bounded and nothing raises into the event loop: frame size,
bytes per stream, concurrent inbound streams, concurrent outbound sends (one
per peer), connect/read/write timeouts. What is refused or fails is counted
in :attr:`StreamStats.rejected` by reason and the connection dropped; the
sender's rows are offered again at the next anti-entropy round.

:class:`TcpStreamTransport` runs on asyncio streams; :class:`MemoryStreams`
is its in-memory twin for tests (the same frame, stream and outbound bounds
and counters; a stream arrives in one callback, so inbound concurrency and
timeouts have nothing to bound there).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from xpro_mesh.mesh.transport import Address, Scheduler

__all__ = [
    "FrameHandler",
    "MemoryStreamTransport",
    "MemoryStreams",
    "StreamLimits",
    "StreamStats",
    "StreamTransport",
    "TcpStreamTransport",
]

log = logging.getLogger(__name__)

FrameHandler = Callable[[bytes, Address], None]
"""``on_frame(frame, peer)``: one sealed frame, as it arrived."""

_LENGTH = struct.Struct(">I")


@dataclass(frozen=True, slots=True)
class StreamLimits:
    """Bounds of the stream side; the agent sets them from ``[gossip]``."""

    max_frame_bytes: int = 4 * 1024 * 1024  # one sealed frame
    max_stream_bytes: int = 64 * 1024 * 1024  # all frames of one connection
    max_streams: int = 8  # inbound connections at once; more are refused
    max_outbound: int = 4  # sends at once (and never two to one peer)
    connect_timeout_s: float = 2.0
    io_timeout_s: float = 5.0  # for each read or write of a frame

    def __post_init__(self) -> None:
        for name in ("max_frame_bytes", "max_stream_bytes", "max_streams", "max_outbound"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.connect_timeout_s <= 0 or self.io_timeout_s <= 0:
            raise ValueError("stream timeouts must be > 0")
        if self.max_frame_bytes > 0xFFFFFFFF:
            raise ValueError("max_frame_bytes must fit the 4-byte length")


@dataclass(slots=True)
class StreamStats:
    """Counters of one stream transport (exported as metrics)."""

    streams_sent: int = 0  # sends that wrote every frame
    streams_received: int = 0  # inbound connections accepted
    frames_sent: int = 0
    frames_received: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    rejected: Counter[str] = field(default_factory=Counter)  # by reason


class StreamTransport(Protocol):
    """Reliable, ordered, one-way bursts of frames to a peer."""

    @property
    def limits(self) -> StreamLimits: ...

    @property
    def stats(self) -> StreamStats: ...

    def sending_to(self, addr: Address) -> bool:
        """Whether a send to ``addr`` is still under way."""
        ...

    def send(self, addr: Address, frames: Sequence[bytes]) -> bool:
        """Start sending ``frames`` to ``addr`` in the background; False if
        refused here (closed, busy, a frame too large). True does not mean
        they arrive; a failure later is counted."""
        ...

    async def close(self) -> None: ...


def _check_out(stats: StreamStats, limits: StreamLimits, frames: Sequence[bytes]) -> bool:
    if not frames:
        return False
    if any(not 0 < len(f) <= limits.max_frame_bytes for f in frames):
        stats.rejected["oversized_out"] += 1
        return False
    if sum(len(f) for f in frames) > limits.max_stream_bytes:
        stats.rejected["stream_too_long_out"] += 1
        return False
    return True


def _deliver(handler: FrameHandler, stats: StreamStats, frame: bytes, peer: Address) -> None:
    stats.frames_received += 1
    stats.bytes_received += len(frame)
    try:
        handler(frame, peer)
    except Exception:
        stats.rejected["handler_error"] += 1
        log.exception("stream frame handler failed on %d bytes from %s:%d", len(frame), *peer)


# --- TCP -------------------------------------------------------------------------


class TcpStreamTransport:
    """:class:`StreamTransport` over asyncio TCP streams. Open it with
    :meth:`open` inside a running loop; the owner awaits :meth:`close`."""

    def __init__(self, on_frame: FrameHandler, limits: StreamLimits) -> None:
        self._on_frame = on_frame
        self._limits = limits
        self._stats = StreamStats()
        self._server: asyncio.Server | None = None
        self._inbound = 0
        self._outbound: dict[Address, asyncio.Task[None]] = {}
        self._handlers: set[asyncio.Task[None]] = set()
        self._closed = False
        self.local_addr: Address = ("", 0)

    @classmethod
    async def open(
        cls, bind: Address, on_frame: FrameHandler, limits: StreamLimits | None = None
    ) -> TcpStreamTransport:
        """Listen on ``bind`` (TCP; port 0 picks a free one)."""
        self = cls(on_frame, limits or StreamLimits())
        self._server = await asyncio.start_server(self._accept, bind[0], bind[1], limit=64 * 1024)
        sockname = self._server.sockets[0].getsockname()
        self.local_addr = (str(sockname[0]), int(sockname[1]))
        return self

    @property
    def limits(self) -> StreamLimits:
        return self._limits

    @property
    def stats(self) -> StreamStats:
        return self._stats

    def sending_to(self, addr: Address) -> bool:
        return addr in self._outbound

    def send(self, addr: Address, frames: Sequence[bytes]) -> bool:
        if self._closed:
            self._stats.rejected["closed"] += 1
            return False
        if addr in self._outbound or len(self._outbound) >= self._limits.max_outbound:
            self._stats.rejected["busy"] += 1
            return False
        if not _check_out(self._stats, self._limits, frames):
            return False
        task = asyncio.get_running_loop().create_task(self._send(addr, list(frames)))
        self._outbound[addr] = task
        task.add_done_callback(lambda _t: self._outbound.pop(addr, None))
        return True

    async def _send(self, addr: Address, frames: list[bytes]) -> None:
        lim = self._limits
        writer: asyncio.StreamWriter | None = None
        try:
            _reader, writer = await asyncio.wait_for(
                asyncio.open_connection(addr[0], addr[1]), lim.connect_timeout_s
            )
            assert writer is not None
            for frame in frames:
                writer.write(_LENGTH.pack(len(frame)))
                writer.write(frame)
                await asyncio.wait_for(writer.drain(), lim.io_timeout_s)
                self._stats.frames_sent += 1
                self._stats.bytes_sent += len(frame)
            writer.write_eof()
            await asyncio.wait_for(writer.drain(), lim.io_timeout_s)
            self._stats.streams_sent += 1
        except TimeoutError:
            self._stats.rejected["timeout_out"] += 1
        except OSError:
            self._stats.rejected["send_failed"] += 1
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(writer.wait_closed(), lim.io_timeout_s)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        try:
            if self._closed or self._inbound >= self._limits.max_streams:
                self._stats.rejected["too_many_streams"] += 1
                return
            self._inbound += 1
            try:
                peer = writer.get_extra_info("peername") or ("", 0)
                await self._read_frames(reader, (str(peer[0]), int(peer[1])))
            finally:
                self._inbound -= 1
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), self._limits.io_timeout_s)
            if task is not None:
                self._handlers.discard(task)

    async def _read_frames(self, reader: asyncio.StreamReader, peer: Address) -> None:
        lim = self._limits
        self._stats.streams_received += 1
        total = 0
        try:
            while True:
                try:
                    header = await asyncio.wait_for(reader.readexactly(4), lim.io_timeout_s)
                except asyncio.IncompleteReadError as exc:
                    if exc.partial:
                        self._stats.rejected["truncated"] += 1
                    return  # the sender closed: the stream is complete
                (length,) = _LENGTH.unpack(header)
                if not 0 < length <= lim.max_frame_bytes:
                    self._stats.rejected["oversized_frame"] += 1
                    return
                total += length
                if total > lim.max_stream_bytes:
                    self._stats.rejected["stream_too_long"] += 1
                    return
                frame = await asyncio.wait_for(reader.readexactly(length), lim.io_timeout_s)
                _deliver(self._on_frame, self._stats, frame, peer)
        except asyncio.IncompleteReadError:
            self._stats.rejected["truncated"] += 1
        except TimeoutError:
            self._stats.rejected["timeout"] += 1
        except OSError:
            self._stats.rejected["read_failed"] += 1

    async def close(self) -> None:
        self._closed = True
        if self._server is not None:
            self._server.close()
        tasks = [*self._outbound.values(), *self._handlers]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)


# --- in memory -------------------------------------------------------------------


@dataclass(slots=True)
class MemoryStreams:
    """An in-process stream network: a send delivers all its frames, in
    order, ``latency_s`` later (through ``scheduler``, default the running
    loop's ``call_later``), under the receiver's limits. Partitions refuse
    the connection, as a firewall would."""

    latency_s: float = 0.0
    scheduler: Scheduler | None = None
    _endpoints: dict[Address, MemoryStreamTransport] = field(default_factory=dict, init=False)
    _blocked: set[frozenset[Address]] = field(default_factory=set, init=False)

    def attach(
        self, addr: Address, on_frame: FrameHandler, limits: StreamLimits | None = None
    ) -> MemoryStreamTransport:
        if addr in self._endpoints:
            raise OSError(f"address in use: {addr[0]}:{addr[1]}")
        transport = MemoryStreamTransport(self, addr, on_frame, limits or StreamLimits())
        self._endpoints[addr] = transport
        return transport

    def partition(self, a: Address, b: Address) -> None:
        self._blocked.add(frozenset((a, b)))

    def heal(self) -> None:
        self._blocked.clear()

    def _connect(self, src: MemoryStreamTransport, dst: Address, frames: list[bytes]) -> None:
        schedule = self.scheduler or asyncio.get_running_loop().call_later

        def arrive() -> None:
            src._done(dst)
            peer = self._endpoints.get(dst)
            if peer is None or peer.closed or frozenset((src.local_addr, dst)) in self._blocked:
                src.stats.rejected["send_failed"] += 1
                return
            src.stats.streams_sent += 1
            src.stats.frames_sent += len(frames)
            src.stats.bytes_sent += sum(len(f) for f in frames)
            peer._receive(frames, src.local_addr)

        schedule(self.latency_s, arrive)


class MemoryStreamTransport:
    """:class:`StreamTransport` on :class:`MemoryStreams`."""

    def __init__(
        self, net: MemoryStreams, addr: Address, on_frame: FrameHandler, limits: StreamLimits
    ) -> None:
        self._net = net
        self.local_addr = addr
        self._on_frame = on_frame
        self._limits = limits
        self._stats = StreamStats()
        self._sending: set[Address] = set()
        self.closed = False

    @property
    def limits(self) -> StreamLimits:
        return self._limits

    @property
    def stats(self) -> StreamStats:
        return self._stats

    def sending_to(self, addr: Address) -> bool:
        return addr in self._sending

    def send(self, addr: Address, frames: Sequence[bytes]) -> bool:
        if self.closed:
            self._stats.rejected["closed"] += 1
            return False
        if addr in self._sending or len(self._sending) >= self._limits.max_outbound:
            self._stats.rejected["busy"] += 1
            return False
        if not _check_out(self._stats, self._limits, frames):
            return False
        self._sending.add(addr)
        self._net._connect(self, addr, [bytes(f) for f in frames])
        return True

    def _done(self, addr: Address) -> None:
        self._sending.discard(addr)

    def _receive(self, frames: list[bytes], peer: Address) -> None:
        lim = self._limits
        self._stats.streams_received += 1
        total = 0
        for frame in frames:
            if not 0 < len(frame) <= lim.max_frame_bytes:
                self._stats.rejected["oversized_frame"] += 1
                return
            total += len(frame)
            if total > lim.max_stream_bytes:
                self._stats.rejected["stream_too_long"] += 1
                return
            _deliver(self._on_frame, self._stats, frame, peer)

    async def close(self) -> None:
        self.closed = True
        self._net._endpoints.pop(self.local_addr, None)
