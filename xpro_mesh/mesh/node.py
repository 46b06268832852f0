"""One mesh node: membership and anti-entropy driven over a transport.

The thin asyncio shell around the sans-IO pieces: it turns
:class:`~xpro_mesh.mesh.membership.Membership` actions and the push-pull of
the replicated table (:class:`~xpro_mesh.mesh.state.ReplicatedState`) into
sealed messages (:mod:`~xpro_mesh.mesh.auth`, :mod:`~xpro_mesh.mesh.wire`)
and the messages it receives back into calls. Everything a peer sends is
opened, decoded and validated before it touches state; what fails is dropped
and counted by reason, never raised.

Two channels (memberlist's split): probes, acks, membership and small
deltas travel as datagrams; a delta that needs more than
:attr:`NodeTiming.stream_after_datagrams` datagrams goes on the stream
(:mod:`~xpro_mesh.mesh.stream`) as a few large frames, followed by the
node's own digest when the peer asked for it, so the peer learns of the
answer only once it holds the rows. Without a stream attached, every delta
goes as datagrams.

Two clocks: membership timers run on the monotonic clock; records and the
envelope's freshness check use the cluster clock (realtime ns, hosts kept by
NTP), the one time base of the mesh.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from xpro_mesh.core.gossip_state import MergeLimits
from xpro_mesh.core.rows import ColumnarDelta
from xpro_mesh.mesh import auth, wire
from xpro_mesh.mesh.membership import (
    Action,
    Address,
    Announce,
    ForwardAck,
    ForwardNack,
    IndirectProbe,
    MemberChanged,
    Membership,
    MemberUpdate,
    Probe,
    SyncState,
)
from xpro_mesh.mesh.messages import Ack, Members, Nack, Ping, PingReq, Sync
from xpro_mesh.mesh.state import ReplicatedState
from xpro_mesh.mesh.stream import StreamTransport
from xpro_mesh.mesh.transport import Transport

__all__ = ["MeshCounters", "MeshNode", "NodeTiming"]

log = logging.getLogger("xpro_mesh.mesh")

PIGGYBACK = 6  # membership updates riding on each message (~60 bytes each)
MEMBERS_PER_MESSAGE = 16  # member records per push-pull datagram
MIN_RECEIVE_BYTES = 1400  # one Ethernet frame is always accepted, whatever our own limit
STREAM_ROWS_PER_FRAME = 1 << 20  # rows a stream frame may carry (decoder bound)
MIN_ROW_BYTES = 2  # no changed row encodes smaller: more rows than this allows surely stream
_FAR = 1 << 62


def _nothing() -> None:
    return None


def _encode_chunks(delta: ColumnarDelta, budget: int) -> list[tuple[wire.Kind, bytes]]:
    """The payloads of ``delta`` cut to ``budget`` (runs in a worker thread)."""
    return [(wire.Kind.DELTA, wire.encode(c)) for c in wire.chunk_rows(delta, budget)]


@dataclass(frozen=True, slots=True)
class NodeTiming:
    """The anti-entropy knobs (membership timing is in MembershipParams)."""

    interval_ns: int = 500_000_000  # push-pull with `fanout` peers this often
    fanout: int = 3
    max_message_bytes: int = 1400
    replay_window_ns: int = 30_000_000_000
    stream_after_datagrams: int = 4  # a delta needing more datagrams goes on the stream
    eager_gap_ns: int = 100_000_000  # round_soon starts a round no sooner after the last


@dataclass(slots=True)
class MeshCounters:
    """What the node did, for /metrics and /v1/status."""

    rounds: int = 0
    sent: Counter[str] = field(default_factory=Counter)  # messages by kind
    sent_bytes: Counter[str] = field(default_factory=Counter)
    received: Counter[str] = field(default_factory=Counter)
    received_bytes: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)  # messages, by reason
    pulls: int = 0  # our digests answered by a peer (its delta, then its Sync)
    rows_accepted: int = 0
    rows_stale: int = 0
    rows_rejected: Counter[str] = field(default_factory=Counter)
    last_merge_ns: int = 0
    transitions: Counter[str] = field(default_factory=Counter)  # "alive->suspect", ...
    streams_sent: int = 0  # deltas handed to the stream
    stream_deferred: int = 0  # answers skipped while a stream to that peer was under way


class MeshNode:
    """A mesh member: feed it datagrams (:meth:`receive`) and stream frames
    (:meth:`receive_frame`), run :meth:`run`."""

    def __init__(
        self,
        *,
        state: ReplicatedState,
        membership: Membership,
        keyring: auth.Keyring,
        timing: NodeTiming,
        limits: MergeLimits,
        rng: random.Random | None = None,
        wall_ns: Callable[[], int] = time.time_ns,
        mono_ns: Callable[[], int] = time.monotonic_ns,
    ) -> None:
        self.state = state
        self.membership = membership
        self.node_id = membership.node_id
        self.keyring = keyring
        self.timing = timing
        self.limits = limits
        self.rng = rng or random.Random()
        self.wall_ns = wall_ns
        self.mono_ns = mono_ns
        self.counters = MeshCounters()
        self._sealer = auth.Sealer(
            keyring, self.node_id, membership.incarnation, max_bytes=timing.max_message_bytes
        )
        self._replay = auth.ReplayGuard(window_ns=timing.replay_window_ns)
        self._stream_replay = auth.ReplayGuard(window_ns=timing.replay_window_ns)
        self._budget = auth.payload_budget(timing.max_message_bytes, self.node_id)
        # Larger datagrams are refused (and counted) here, not by the transport,
        # so that every refusal shows in one place by reason.
        self._receive_limit = max(timing.max_message_bytes, MIN_RECEIVE_BYTES)
        self._transport: Transport | None = None
        self._stream: StreamTransport | None = None
        self._stream_sealer: auth.Sealer | None = None
        self._hold_until: dict[Address, int] = {}  # no new stream answer to a peer before
        self._tasks: set[asyncio.Task[None]] = set()  # stream preparations under way
        self.pulled = asyncio.Event()  # a peer answered one of our digests
        # Called after a merge that accepted rows (the map sync writes them
        # into the kernel then, not at its next cycle).
        self.on_merged: Callable[[], None] = _nothing
        self._wake = asyncio.Event()  # run(): a round is due sooner (round_soon)
        self._next_round = 0
        self._last_round = -_FAR

    # --- wiring ----------------------------------------------------------------

    def attach(self, transport: Transport, stream: StreamTransport | None = None) -> None:
        self._transport = transport
        self._stream = stream
        if stream is not None:
            self._stream_sealer = auth.Sealer(
                self.keyring,
                self.node_id,
                self.membership.incarnation,
                max_bytes=stream.limits.max_frame_bytes,
                magic=auth.STREAM_MAGIC,
            )

    def join(self, seeds: Iterable[Address]) -> None:
        self._perform(self.membership.join(list(seeds), self.mono_ns()))

    async def run(self, stop: asyncio.Event) -> None:
        """Membership timers and anti-entropy rounds until ``stop`` is set."""
        self._next_round = self.mono_ns()
        stopper = asyncio.ensure_future(stop.wait())
        stopper.add_done_callback(lambda _: self._wake.set())
        try:
            while not stop.is_set():
                now = self.mono_ns()
                self._perform(self.membership.tick(now))
                if now >= self._next_round:
                    self.gossip_round()
                    self._last_round = now
                    self._next_round = now + self.timing.interval_ns
                deadline = min(self.membership.next_deadline_ns(), self._next_round)
                delay = max(0.0, (deadline - self.mono_ns()) / 1e9)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), timeout=min(delay, 1.0))
                self._wake.clear()
        finally:
            stopper.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def round_soon(self) -> None:
        """New rows of our own: the next anti-entropy round now, rather than
        up to an interval later (what a mitigation waits for), but never
        sooner than ``eager_gap_ns`` after the last one, so that sync cycles
        faster than the rounds do not multiply them. The round after it is
        an interval later, as always."""
        soon = max(self.mono_ns(), self._last_round + self.timing.eager_gap_ns)
        if soon < self._next_round:
            self._next_round = soon
            self._wake.set()

    async def leave(self, linger_s: float = 0.2) -> None:
        """Gossip our departure to a few peers before the process exits."""
        self._perform(self.membership.leave(self.mono_ns()))
        for member in self.membership.random_peers(self.timing.fanout, self.rng):
            self._send(Ping(0, member.node_id, self._self_update(), self._piggyback()), member.addr)
        await asyncio.sleep(linger_s)

    # --- sending -----------------------------------------------------------------

    def gossip_round(self) -> None:
        """One anti-entropy round: push our digest to ``fanout`` live peers and
        ask for theirs (push-pull, Scuttlebutt)."""
        targets = self.membership.gossip_targets(self.timing.fanout, self.rng)
        if not targets:
            return
        self.counters.rounds += 1
        digest = self.state.digest()
        for member in targets:
            self._send(Sync(digest, True, self._self_update(), self._piggyback()), member.addr)

    def _self_update(self) -> MemberUpdate:
        return self.membership.self_update()

    def _piggyback(self) -> tuple[MemberUpdate, ...]:
        return tuple(self.membership.updates_to_piggyback(PIGGYBACK))

    def _send(self, message: wire.Message, addr: Address) -> None:
        if self._transport is None:
            return
        payload = wire.encode(message)
        kind = wire.kind_of(message)
        try:
            datagram = self._sealer.seal(self.wall_ns(), payload)
        except ValueError:
            self.counters.rejected["oversized_out"] += 1
            log.warning("dropping an oversized %s message (%d bytes)", kind, len(payload))
            return
        if self._transport.send(datagram, addr):
            self.counters.sent[kind] += 1
            self.counters.sent_bytes[kind] += len(datagram)

    def _answer(self, sync: Sync, addr: Address) -> None:
        """Answer a peer's digest: the rows it lacks, then (if it asked) ours.
        By datagrams when they are few, else both on one stream, in order."""
        stream = self._stream
        if stream is not None and (
            stream.sending_to(addr) or self.mono_ns() < self._hold_until.get(addr, 0)
        ):
            # Rows on their way (or still being merged there) answer this
            # digest too: a digest sent meanwhile would only ask for them again.
            self.counters.stream_deferred += 1
            return
        delta = self.state.delta_for(sync.digest)
        reply = (
            Sync(self.state.digest(), False, self._self_update(), self._piggyback())
            if sync.reply
            else None
        )
        if delta.batches or delta.coverage:
            room = self.timing.stream_after_datagrams * self._budget
            if stream is not None and delta.rows * MIN_ROW_BYTES > room:
                self._start_stream(delta, reply, addr)  # sure not to fit: size it off the loop
                return
            size = wire.encoded_size(delta)
            if stream is not None and size > room:
                self._start_stream(delta, reply, addr)
                return
            for chunk in wire.chunk_rows(delta, self._budget, whole_bytes=size):
                self._send(chunk, addr)
        if reply is not None:
            self._send(reply, addr)

    def _start_stream(self, delta: ColumnarDelta, reply: Sync | None, addr: Address) -> None:
        """Encode and cut a large delta in a worker thread (numpy leaves the
        GIL for most of it, so probes keep being answered), then send."""
        self._hold_until[addr] = _FAR  # under way until sent
        task = asyncio.get_running_loop().create_task(self._stream_delta(delta, reply, addr))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _stream_delta(self, delta: ColumnarDelta, reply: Sync | None, addr: Address) -> None:
        stream, sealer = self._stream, self._stream_sealer
        assert stream is not None and sealer is not None
        budget = auth.payload_budget(stream.limits.max_frame_bytes, self.node_id)
        try:
            payloads = await asyncio.to_thread(_encode_chunks, delta, budget)
        except ValueError:
            self.counters.rejected["oversized_out"] += 1
            self._hold_until[addr] = 0
            return
        if reply is not None:
            payloads.append((wire.Kind.SYNC, wire.encode(reply)))
        frames = [sealer.seal(self.wall_ns(), payload) for _, payload in payloads]
        # A stream of several frames takes the peer a while to merge; its
        # digests meanwhile are stale, so give it one round. One frame: none,
        # the next round's rows must not wait (mitigation time).
        several = len(payloads) - (reply is not None) > 1
        self._hold_until[addr] = self.mono_ns() + (self.timing.interval_ns if several else 0)
        if stream.send(addr, frames):
            self.counters.streams_sent += 1
            for (kind, _), frame in zip(payloads, frames, strict=True):
                self.counters.sent[kind] += 1
                self.counters.sent_bytes[kind] += len(frame)

    def _perform(self, actions: Iterable[Action]) -> None:
        for action in actions:
            if isinstance(action, Probe):
                updates = self._piggyback()
                buddy = self.membership.buddy(action.node_id)
                if buddy is not None:
                    updates = (buddy, *updates[: PIGGYBACK - 1])
                msg = Ping(action.seq, action.node_id, self._self_update(), updates)
                self._send(msg, action.addr)
            elif isinstance(action, IndirectProbe):
                req = PingReq(
                    action.seq, action.node_id, action.addr, self._self_update(), self._piggyback()
                )
                self._send(req, action.via_addr)
            elif isinstance(action, ForwardAck):
                self._send(Ack(action.seq, self._self_update(), self._piggyback()), action.addr)
            elif isinstance(action, ForwardNack):
                self._send(Nack(action.seq, self._self_update(), self._piggyback()), action.addr)
            elif isinstance(action, SyncState):
                self._send_members(action.addr, reply=True)
            elif isinstance(action, Announce):
                me = self._self_update()
                for addr in action.addrs:
                    self._send(Members(me, (action.update,), False), addr)
            elif isinstance(action, MemberChanged):
                before = action.previous or "unknown"
                after = action.current or "forgotten"
                self.counters.transitions[f"{before}->{after}"] += 1
                log.info("member %s: %s -> %s", action.node_id, before, after)

    def _send_members(self, addr: Address, reply: bool) -> None:
        members = self.membership.local_state()
        me = self._self_update()
        for i in range(0, max(1, len(members)), MEMBERS_PER_MESSAGE):
            part = tuple(members[i : i + MEMBERS_PER_MESSAGE])
            self._send(Members(me, part, reply and i == 0), addr)

    # --- receiving ---------------------------------------------------------------

    def receive(self, datagram: bytes, addr: Address) -> None:
        """The datagram transport's handler: open, decode, dispatch; count failures."""
        opened = auth.open_(
            self.keyring, datagram, self.wall_ns(), self._replay, max_bytes=self._receive_limit
        )
        message = self._decode(opened, wire.DEFAULT_LIMITS, len(datagram))
        if message is not None:
            self._dispatch(message, addr)

    def receive_frame(self, frame: bytes, peer: Address) -> None:
        """The stream's handler. Replies go to the sender's advertised
        address (the connection's port is an ephemeral one)."""
        limit = self._stream.limits.max_frame_bytes if self._stream else len(frame)
        opened = auth.open_(
            self.keyring,
            frame,
            self.wall_ns(),
            self._stream_replay,
            max_bytes=limit,
            magic=auth.STREAM_MAGIC,
        )
        limits = wire.WireLimits(max_message_bytes=limit, max_entries=STREAM_ROWS_PER_FRAME)
        message = self._decode(opened, limits, len(frame))
        if message is None:
            return
        if isinstance(message, ColumnarDelta):
            self._merge(message)
        elif isinstance(message, Sync):
            self._dispatch(message, message.sender.addr)
        else:
            self.counters.rejected["unexpected_on_stream"] += 1

    def _decode(
        self, opened: auth.Opened | auth.Rejected, limits: wire.WireLimits, size: int
    ) -> wire.Message | None:
        if isinstance(opened, auth.Rejected):
            self.counters.rejected[str(opened.reason)] += 1
            return None
        message = wire.decode(opened.payload, limits)
        if isinstance(message, wire.WireError):
            self.counters.rejected["malformed"] += 1
            return None
        kind = wire.kind_of(message)
        self.counters.received[kind] += 1
        self.counters.received_bytes[kind] += size
        sender = getattr(message, "sender", None)
        if isinstance(sender, MemberUpdate) and sender.node_id != opened.sender_id:
            self.counters.rejected["sender_mismatch"] += 1
            return None
        return message

    def _dispatch(self, message: wire.Message, addr: Address) -> None:
        now = self.mono_ns()
        m = self.membership
        if isinstance(message, Ping):
            self._perform(m.on_update((message.sender, *message.updates), now))
            if message.target_id == self.node_id:
                self._send(Ack(message.seq, self._self_update(), self._piggyback()), addr)
        elif isinstance(message, Ack):
            self._perform(m.on_update((message.sender, *message.updates), now))
            self._perform(m.on_ack(message.seq, now))
        elif isinstance(message, Nack):
            self._perform(m.on_update((message.sender, *message.updates), now))
            self._perform(m.on_nack(message.seq, now))
        elif isinstance(message, PingReq):
            self._perform(m.on_update((message.sender, *message.updates), now))
            self._perform(
                m.on_ping_request(
                    message.sender.node_id,
                    addr,
                    message.seq,
                    message.target_id,
                    message.target_addr,
                    now,
                )
            )
        elif isinstance(message, Members):
            self._perform(m.merge_state((message.sender, *message.members), now))
            if message.reply:
                self._send_members(addr, reply=False)
        elif isinstance(message, Sync):
            self._perform(m.on_update((message.sender, *message.updates), now))
            self._answer(message, addr)
            if not message.reply:
                # The answer to our digest: the peer sent its delta before it.
                self.counters.pulls += 1
                self.pulled.set()
        elif isinstance(message, ColumnarDelta):
            self._merge(message)

    def _merge(self, delta: ColumnarDelta) -> None:
        report = self.state.merge(delta, self.wall_ns(), self.limits)
        if report.accepted or report.adopted:
            self.on_merged()
        self.counters.rows_accepted += report.accepted + report.adopted
        self.counters.rows_stale += report.stale
        for reason, n in report.rejected.items():
            self.counters.rows_rejected[str(reason)] += n
        self.counters.last_merge_ns = self.wall_ns()
