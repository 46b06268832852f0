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
from typing import Protocol

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
    max_reply_datagrams: int = 64  # datagrams answering one Sync at most (the rest next round)
    sync_answers_burst: int = 4  # Syncs of one peer answered back to back at most ...
    sync_answers_per_interval: float = 2.0  # ... and on average per interval


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
    # The position on our keyring of the key each peer last sealed with (0:
    # our primary). An operator removes an old key once no peer shows > 0.
    peer_keys: dict[str, int] = field(default_factory=dict)


def message_sender_addr(message: wire.Message) -> Address:
    """Where replies to ``message`` go: its sender's advertised address (a
    delta carries none and draws no reply)."""
    sender = getattr(message, "sender", None)
    return sender.addr if isinstance(sender, MemberUpdate) else ("", 0)


class ConfigHook(Protocol):
    """What the node asks of the mesh configuration's keeper (bytes only)."""

    def offer(self) -> bytes | None: ...

    def receive(self, sender: str, document: bytes) -> bytes | None: ...


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
        # The agent's keeper of the mesh configuration document, if any.
        self.config_hook: ConfigHook | None = None
        self.counters = MeshCounters()
        self._sealer = auth.Sealer(
            keyring, self.node_id, membership.incarnation, max_bytes=timing.max_message_bytes
        )
        self._replay = auth.ReplayGuard(window_ns=timing.replay_window_ns)
        self._stream_replay = auth.ReplayGuard(window_ns=timing.replay_window_ns)
        # Larger datagrams are refused (and counted) here, not by the transport,
        # so that every refusal shows in one place by reason.
        self._receive_limit = max(timing.max_message_bytes, MIN_RECEIVE_BYTES)
        self._transport: Transport | None = None
        self._stream: StreamTransport | None = None
        self._stream_sealer: auth.Sealer | None = None
        self._hold_until: dict[Address, int] = {}  # no new stream answer to a peer before
        self._answer_tokens: dict[str, tuple[float, int]] = {}  # peer -> (tokens, at mono ns)
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

    def set_keyring(self, keyring: auth.Keyring) -> None:
        """A reloaded key file (SIGHUP): seal with its first key from now on,
        open with any of its keys. Replay windows are kept."""
        self.keyring = keyring
        self._sealer.keyring = keyring
        if self._stream_sealer is not None:
            self._stream_sealer.keyring = keyring
        self.counters.peer_keys.clear()  # positions refer to the old ring

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
            ping = Ping(0, member.node_id, self._self_update(), self._piggyback())
            self._send(ping, member.addr, member.node_id)
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
            sync = Sync(digest, True, self._self_update(), self._piggyback())
            self._send(sync, member.addr, member.node_id)
        # The mesh configuration document: ours to one target a round (push);
        # an older one is answered with ours (pull), see agent/mesh_config.py.
        offer = self.config_hook.offer() if self.config_hook is not None else None
        if offer is not None:
            first = targets[0]
            self._send(wire.ConfigOffer(self.node_id, offer), first.addr, first.node_id)

    def _self_update(self) -> MemberUpdate:
        return self.membership.self_update()

    def _piggyback(self) -> tuple[MemberUpdate, ...]:
        return tuple(self.membership.updates_to_piggyback(PIGGYBACK))

    def _send(self, message: wire.Message, addr: Address, to: str) -> None:
        """Seal ``message`` for node ``to`` ("" only for a seed whose id we do
        not know yet) and send it to ``addr``."""
        if self._transport is None:
            return
        payload = wire.encode(message)
        kind = wire.kind_of(message)
        try:
            datagram = self._sealer.seal(self.wall_ns(), payload, to)
        except ValueError:
            self.counters.rejected["oversized_out"] += 1
            log.warning("dropping an oversized %s message (%d bytes)", kind, len(payload))
            return
        if self._transport.send(datagram, addr):
            self.counters.sent[kind] += 1
            self.counters.sent_bytes[kind] += len(datagram)

    def _may_answer(self, peer: str) -> bool:
        """A token bucket per peer for Sync answers: the costly reply (a delta)
        is what a flood of valid Syncs would buy, so a peer gets at most
        ``sync_answers_burst`` back to back and ``sync_answers_per_interval``
        on average; a correct peer sends one per round."""
        now = self.mono_ns()
        burst = self.timing.sync_answers_burst
        tokens, at = self._answer_tokens.get(peer, (float(burst), now))
        tokens = min(
            float(burst),
            tokens + (now - at) * self.timing.sync_answers_per_interval / self.timing.interval_ns,
        )
        if tokens < 1.0:
            self._answer_tokens[peer] = (tokens, now)
            return False
        self._answer_tokens[peer] = (tokens - 1.0, now)
        if len(self._answer_tokens) > 4 * max(1, len(self.membership.local_state())) + 64:
            self._answer_tokens.pop(next(iter(self._answer_tokens)))  # bounded: oldest peer out
        return True

    def _answer(self, sync: Sync, addr: Address) -> None:
        """Answer a peer's digest: the rows it lacks, then (if it asked) ours.
        By datagrams when they are few, else both on one stream, in order.

        ``addr`` is the address the peer advertises under the MAC, never the
        datagram's source: an answer cannot be reflected to a third party.
        At most ``max_reply_datagrams`` datagrams answer one Sync (each chunk's
        claims cover only its own rows, so a cut prefix is a valid answer and
        the next round sends the rest): a 165-byte Sync with an empty digest
        drew 521 KB (issue 12)."""
        to = sync.sender.node_id
        if not self._may_answer(to):
            self.counters.rejected["rate_limited"] += 1
            return
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
        budget = auth.payload_budget(self.timing.max_message_bytes, self.node_id, to)
        if delta.batches or delta.coverage:
            room = self.timing.stream_after_datagrams * budget
            if stream is not None and delta.rows * MIN_ROW_BYTES > room:
                self._start_stream(delta, reply, addr, to)  # sure not to fit: size it off the loop
                return
            size = wire.encoded_size(delta)
            if stream is not None and size > room:
                self._start_stream(delta, reply, addr, to)
                return
            chunks = wire.chunk_rows(delta, budget, whole_bytes=size)
            if len(chunks) > self.timing.max_reply_datagrams:
                self.counters.rejected["reply_cut"] += 1
                chunks = chunks[: self.timing.max_reply_datagrams]
            for chunk in chunks:
                self._send(chunk, addr, to)
        if reply is not None:
            self._send(reply, addr, to)

    def _start_stream(
        self, delta: ColumnarDelta, reply: Sync | None, addr: Address, to: str
    ) -> None:
        """Encode and cut a large delta in a worker thread (numpy leaves the
        GIL for most of it, so probes keep being answered), then send."""
        self._hold_until[addr] = _FAR  # under way until sent
        task = asyncio.get_running_loop().create_task(self._stream_delta(delta, reply, addr, to))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _stream_delta(
        self, delta: ColumnarDelta, reply: Sync | None, addr: Address, to: str
    ) -> None:
        stream, sealer = self._stream, self._stream_sealer
        assert stream is not None and sealer is not None
        budget = auth.payload_budget(stream.limits.max_frame_bytes, self.node_id, to)
        try:
            payloads = await asyncio.to_thread(_encode_chunks, delta, budget)
        except ValueError:
            self.counters.rejected["oversized_out"] += 1
            self._hold_until[addr] = 0
            return
        if reply is not None:
            payloads.append((wire.Kind.SYNC, wire.encode(reply)))
        frames = [sealer.seal(self.wall_ns(), payload, to) for _, payload in payloads]
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
                self._send(msg, action.addr, action.node_id)
            elif isinstance(action, IndirectProbe):
                req = PingReq(
                    action.seq, action.node_id, action.addr, self._self_update(), self._piggyback()
                )
                self._send(req, action.via_addr, action.via_id)
            elif isinstance(action, ForwardAck):
                ack = Ack(action.seq, self._self_update(), self._piggyback())
                self._send(ack, action.addr, action.node_id)
            elif isinstance(action, ForwardNack):
                nack = Nack(action.seq, self._self_update(), self._piggyback())
                self._send(nack, action.addr, action.node_id)
            elif isinstance(action, SyncState):
                self._send_members(action.addr, action.node_id or "", reply=True)
            elif isinstance(action, Announce):
                me = self._self_update()
                for addr, to in zip(action.addrs, action.ids, strict=True):
                    self._send(Members(me, (action.update,), False), addr, to)
            elif isinstance(action, MemberChanged):
                before = action.previous or "unknown"
                after = action.current or "forgotten"
                self.counters.transitions[f"{before}->{after}"] += 1
                log.info("member %s: %s -> %s", action.node_id, before, after)

    def _send_members(self, addr: Address, to: str, reply: bool) -> None:
        members = self.membership.local_state()
        me = self._self_update()
        for i in range(0, max(1, len(members)), MEMBERS_PER_MESSAGE):
            part = tuple(members[i : i + MEMBERS_PER_MESSAGE])
            self._send(Members(me, part, reply and i == 0), addr, to)

    # --- receiving ---------------------------------------------------------------

    def receive(self, datagram: bytes, addr: Address) -> None:
        """The datagram transport's handler: open, decode, dispatch; count failures.

        ``addr`` (the UDP source) is not used for replies: whoever forged it
        would choose where the answer goes. Replies go to the address the
        sender advertises in its member record, under the MAC."""
        del addr
        opened = auth.open_(
            self.keyring,
            datagram,
            self.wall_ns(),
            self._replay,
            max_bytes=self._receive_limit,
            recipient_id=self.node_id,
        )
        message = self._decode(opened, wire.DEFAULT_LIMITS, len(datagram))
        if message is not None:
            self._dispatch(message, message_sender_addr(message))

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
            recipient_id=self.node_id,
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
        keys = self.counters.peer_keys
        keys.pop(opened.sender_id, None)
        keys[opened.sender_id] = opened.key_index
        if len(keys) > auth.DEFAULT_MAX_SENDERS:
            keys.pop(next(iter(keys)))  # bounded: the longest unheard first out
        kind = wire.kind_of(message)
        self.counters.received[kind] += 1
        self.counters.received_bytes[kind] += size
        sender = getattr(message, "sender", None)
        sender_id = sender.node_id if isinstance(sender, MemberUpdate) else sender
        if isinstance(sender_id, str) and sender_id != opened.sender_id:
            self.counters.rejected["sender_mismatch"] += 1
            return None
        if opened.recipient_id == "" and not isinstance(message, Members):
            # Only a join (push-pull to a seed's address) goes out unaddressed.
            self.counters.rejected["no_recipient"] += 1
            return None
        return message

    def _dispatch(self, message: wire.Message, addr: Address) -> None:
        now = self.mono_ns()
        m = self.membership
        self._dispatch_kind(message, addr, now)
        sender = getattr(message, "sender", None)
        if isinstance(sender, MemberUpdate):
            # A member we hold dead is talking to us: tell it, so it refutes.
            self._perform(m.on_sender(sender, now))

    def _dispatch_kind(self, message: wire.Message, addr: Address, now: int) -> None:
        m = self.membership
        if isinstance(message, Ping):
            self._perform(m.on_update((message.sender, *message.updates), now))
            if message.target_id == self.node_id:
                ack = Ack(message.seq, self._self_update(), self._piggyback())
                self._send(ack, addr, message.sender.node_id)
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
                self._send_members(addr, message.sender.node_id, reply=False)
        elif isinstance(message, Sync):
            self._perform(m.on_update((message.sender, *message.updates), now))
            self._answer(message, addr)
            if not message.reply:
                # The answer to our digest: the peer sent its delta before it.
                self.counters.pulls += 1
                self.pulled.set()
        elif isinstance(message, ColumnarDelta):
            self._merge(message)
        elif isinstance(message, wire.ConfigOffer) and self.config_hook is not None:
            answer = self.config_hook.receive(message.sender, message.document)
            member = self.membership.member(message.sender)
            if answer is not None and member is not None:  # to its known address only
                self._send(wire.ConfigOffer(self.node_id, answer), member.addr, member.node_id)

    def _merge(self, delta: ColumnarDelta) -> None:
        report = self.state.merge(delta, self.wall_ns(), self.limits)
        if report.accepted or report.adopted:
            self.on_merged()
        self.counters.rows_accepted += report.accepted + report.adopted
        self.counters.rows_stale += report.stale
        for reason, n in report.rejected.items():
            self.counters.rows_rejected[str(reason)] += n
        self.counters.last_merge_ns = self.wall_ns()
