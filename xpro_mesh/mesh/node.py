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
from typing import Any, Protocol

from xpro_mesh.core.gossip_state import ZERO_VERSION, MergeLimits, MergeReport, Version
from xpro_mesh.core.rows import ColumnarDelta
from xpro_mesh.mesh import auth, columns, identity, wire
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
from xpro_mesh.mesh.messages import Ack, Members, Nack, Ping, PingReq, SignedRows, Sync
from xpro_mesh.mesh.relay import RelayLimits, RelayStore
from xpro_mesh.mesh.state import ReplicatedState
from xpro_mesh.mesh.stream import StreamTransport
from xpro_mesh.mesh.transport import Transport

__all__ = ["MeshCounters", "MeshNode", "NodeTiming", "OriginLimits", "sign_chunks", "signed_budget"]

log = logging.getLogger("xpro_mesh.mesh")

PIGGYBACK = 6  # membership updates riding on each message (~60 bytes each)
MEMBERS_PER_MESSAGE = 16  # member records per push-pull datagram
MIN_RECEIVE_BYTES = 1400  # one Ethernet frame is always accepted, whatever our own limit
STREAM_ROWS_PER_FRAME = 1 << 20  # rows a stream frame may carry (decoder bound)
MIN_ROW_BYTES = 2  # no changed row encodes smaller: more rows than this allows surely stream
_FAR = 1 << 62
RELAY_SLACK = 32  # bytes an own signed chunk leaves free, for a relay's longer envelope


def _nothing() -> None:
    return None


def _encode_chunks(
    delta: ColumnarDelta, budget: int, signer: identity.NodeKey | None, origin: str
) -> list[tuple[wire.Kind, bytes]]:
    """The payloads of ``delta`` cut to ``budget`` (runs in a worker thread);
    with ``signer``, each chunk is one signed batch of ``origin``."""
    if signer is None:
        return [(wire.Kind.DELTA, wire.encode(c)) for c in wire.chunk_rows(delta, budget)]
    return [
        (wire.Kind.SIGNED, wire.encode(m))
        for m in sign_chunks(delta, signed_budget(budget, origin), signer, origin)
    ]


def signed_budget(payload_budget: int, origin: str) -> int:
    """What :func:`wire.chunk_rows` may fill so the signed message fits
    ``payload_budget`` with room for a relay's envelope."""
    frame = wire.SIGNED_FRAME_BYTES + len(origin.encode()) - wire.DELTA_FRAME_BYTES
    return payload_budget - frame - RELAY_SLACK


def sign_chunks(
    delta: ColumnarDelta, budget: int, signer: identity.NodeKey, origin: str
) -> list[SignedRows]:
    """``delta`` (rows of ``origin`` only) cut to ``budget``, each chunk
    signed once: one signature a batch, never a row (issue 9's budget)."""
    out = []
    for chunk in wire.chunk_rows(delta, budget):
        rows = columns.encode_rows(chunk)
        out.append(SignedRows(origin, rows, signer.sign(origin, rows)))
    return out


def _signed_size(m: SignedRows) -> int:
    """An upper bound of ``m``'s encoded size."""
    return len(m.rows) + len(m.origin.encode()) + wire.SIGNED_FRAME_BYTES


def _remember(cache: dict[Any, Any], key: tuple[Version, Version, int], value: Any) -> None:
    """Keep ``value`` under ``key``; entries for an older mark of ours go
    (they can never be asked for again), and at most 16 are kept."""
    for old in [k for k in cache if k[1] != key[1]]:
        del cache[old]
    cache[key] = value
    while len(cache) > 16:
        cache.pop(next(iter(cache)))


def _top_version(delta: ColumnarDelta) -> dict[str, Version]:
    """Per origin, the highest row version in ``delta``."""
    tops: dict[str, Version] = {}
    for b in delta.batches:
        if len(b):
            inc = int(b.inc.max())
            seq = int(b.seq[b.inc == inc].max())
            tops[b.origin] = max(tops.get(b.origin, ZERO_VERSION), (inc, seq))
    return tops


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


@dataclass(frozen=True, slots=True)
class OriginLimits:
    """What one origin may make this node take, beyond the row checks of the
    merge (``MergeLimits``, which holds the per-origin row quota): a
    compromised signer can lie only about its own origin, and this bounds
    how fast and for how long (issue 12)."""

    rows_per_second: float = 4_000_000.0  # rows of one origin's batches taken per second ...
    rows_burst: int = 4_000_000  # ... and back to back (a full state for a joiner)
    # Rows of an origin above its covered watermark for this long are dropped:
    # an origin that never claims coverage had its rows re-sent on every Sync.
    uncovered_after_ns: int = 10 * 10**9


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
    node_key: str = ""  # our public key (hex) when rows are signed, else ""
    trusted: int = 0  # nodes on the trust list
    signed_batches: int = 0  # verified signed batches merged
    relayed_batches: int = 0  # batches of other origins passed on as signed
    uncovered_dropped: int = 0  # rows dropped: their origin left them uncovered


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
        node_key: identity.NodeKey | None = None,
        trust: identity.TrustList | None = None,
        origin_limits: OriginLimits | None = None,
        relay_limits: RelayLimits | None = None,
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
        # Per-node identity (mesh/identity.py): with a key and a trust list,
        # our rows go out signed and rows of any origin are taken only in
        # that origin's signed batch; without, the cluster key alone (legacy).
        self.node_key = node_key
        self.trust = trust
        self.origin_limits = origin_limits or OriginLimits()
        self.relay = RelayStore(relay_limits)
        self._show_identity()
        self._origin_tokens: dict[str, tuple[float, int]] = {}
        self._row_top: dict[str, Version] = {}  # per origin, the highest row version taken
        self._uncovered_since: dict[str, int] = {}  # origin -> wall ns its rows went uncovered
        # Origins dropped as uncovered: their rows are refused until a claim of
        # theirs advances the watermark (else a relay's copy brings them back).
        self._dropped: dict[str, int] = {}
        # Our own signed batches by (peer's mark of us, our mark, budget): peers
        # at the same mark (every caught-up peer, each round) get the same
        # batches, signed once; receivers verify each once (duplicates go by
        # signature before verifying), so a batch costs one signature a round.
        self._signed: dict[tuple[Version, Version, int], list[SignedRows]] = {}
        self._signed_frames: dict[tuple[Version, Version, int], list[tuple[wire.Kind, bytes]]] = {}

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

    @property
    def signing(self) -> bool:
        """Whether rows are tied to their origin (a key and a trust list)."""
        return self.node_key is not None and self.trust is not None

    def set_identity(self, node_key: identity.NodeKey, trust: identity.TrustList) -> None:
        """A reloaded node key and trust list (SIGHUP). Batches of an origin
        no longer listed are forgotten by the relay store."""
        self.node_key = node_key
        self.trust = trust
        self._show_identity()
        for origin in self.relay.origins():
            if origin not in trust:
                self.relay.drop_origin(origin)

    def _show_identity(self) -> None:
        signing = self.node_key is not None and self.trust is not None
        self.counters.node_key = self.node_key.public.hex() if signing and self.node_key else ""
        self.counters.trusted = len(self.trust) if signing and self.trust else 0

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
        self._expire_uncovered(self.wall_ns())
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
        signer = self.node_key if self.signing else None
        delta = self.state.delta_for(sync.digest, only=self.node_id if signer else None)
        relayed = self.relay.for_peer(sync.digest, skip=self.node_id) if signer else []
        reply = (
            Sync(self.state.digest(), False, self._self_update(), self._piggyback())
            if sync.reply
            else None
        )
        budget = auth.payload_budget(self.timing.max_message_bytes, self.node_id, to)
        if relayed:
            # A relayed batch goes as its origin cut it: one larger than a
            # datagram (a stream frame's) can only stream.
            fits = [m for m in relayed if _signed_size(m) <= budget]
            if len(fits) < len(relayed) and stream is not None:
                self._start_stream(delta, relayed, reply, addr, to, sync)
                return
            relayed = fits
        if delta.batches or delta.coverage or relayed:
            room = self.timing.stream_after_datagrams * budget
            extra = sum(_signed_size(m) for m in relayed)
            if stream is not None and delta.rows * MIN_ROW_BYTES + extra > room:
                self._start_stream(delta, relayed, reply, addr, to, sync)  # sure not to fit
                return
            size = wire.encoded_size(delta) if delta.batches or delta.coverage else 0
            if stream is not None and size + extra > room:
                self._start_stream(delta, relayed, reply, addr, to, sync)
                return
            messages: list[wire.Message] = []
            if size and signer is not None:
                key = self._signed_key(sync, budget)
                batches = self._signed.get(key)
                if batches is None:
                    batches = sign_chunks(
                        delta, signed_budget(budget, self.node_id), signer, self.node_id
                    )
                    _remember(self._signed, key, batches)
                messages += batches
            elif size:
                messages += wire.chunk_rows(delta, budget, whole_bytes=size)
            messages += relayed
            if len(messages) > self.timing.max_reply_datagrams:
                self.counters.rejected["reply_cut"] += 1
                messages = messages[: self.timing.max_reply_datagrams]
            for message in messages:
                if isinstance(message, SignedRows) and message.origin != self.node_id:
                    self.counters.relayed_batches += 1
                self._send(message, addr, to)
        if reply is not None:
            self._send(reply, addr, to)

    def _signed_key(self, sync: Sync, budget: int) -> tuple[Version, Version, int]:
        """What our signed answer to ``sync`` depends on (see ``_signed``)."""
        me = self.node_id
        mine = self.state.digest().versions.get(me, ZERO_VERSION)
        return (sync.digest.versions.get(me, ZERO_VERSION), mine, budget)

    def _start_stream(
        self,
        delta: ColumnarDelta,
        relayed: list[SignedRows],
        reply: Sync | None,
        addr: Address,
        to: str,
        sync: Sync,
    ) -> None:
        """Encode and cut a large delta in a worker thread (numpy leaves the
        GIL for most of it, so probes keep being answered), then send."""
        self._hold_until[addr] = _FAR  # under way until sent
        task = asyncio.get_running_loop().create_task(
            self._stream_delta(delta, relayed, reply, addr, to, sync)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _stream_delta(
        self,
        delta: ColumnarDelta,
        relayed: list[SignedRows],
        reply: Sync | None,
        addr: Address,
        to: str,
        sync: Sync,
    ) -> None:
        stream, sealer = self._stream, self._stream_sealer
        assert stream is not None and sealer is not None
        budget = auth.payload_budget(stream.limits.max_frame_bytes, self.node_id, to)
        signer = self.node_key if self.signing else None
        try:
            payloads: list[tuple[wire.Kind, bytes]] = []
            if delta.batches or delta.coverage:
                key = self._signed_key(sync, budget)
                cached = self._signed_frames.get(key) if signer is not None else None
                if cached is None:
                    cached = await asyncio.to_thread(
                        _encode_chunks, delta, budget, signer, self.node_id
                    )
                    if signer is not None:
                        _remember(self._signed_frames, key, cached)
                payloads = list(cached)
        except ValueError:
            self.counters.rejected["oversized_out"] += 1
            self._hold_until[addr] = 0
            return
        for message in relayed:
            payloads.append((wire.Kind.SIGNED, wire.encode(message)))
            self.counters.relayed_batches += 1
        if reply is not None:
            payloads.append((wire.Kind.SYNC, wire.encode(reply)))
        frames = []
        for kind, payload in payloads:
            try:
                frames.append((kind, sealer.seal(self.wall_ns(), payload, to)))
            except ValueError:  # a relayed batch over our frame limit: the origin serves it
                self.counters.rejected["oversized_out"] += 1
        # A stream of several frames takes the peer a while to merge; its
        # digests meanwhile are stale, so give it one round. One frame: none,
        # the next round's rows must not wait (mitigation time).
        several = len(frames) - (reply is not None) > 1
        self._hold_until[addr] = self.mono_ns() + (self.timing.interval_ns if several else 0)
        if stream.send(addr, [frame for _, frame in frames]):
            self.counters.streams_sent += 1
            for kind, frame in frames:
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
            self._merge_unsigned(message)
        elif isinstance(message, SignedRows):
            self._merge_signed(message, limits)
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
            self._merge_unsigned(message)
        elif isinstance(message, SignedRows):
            self._merge_signed(message, wire.DEFAULT_LIMITS)
        elif isinstance(message, wire.ConfigOffer) and self.config_hook is not None:
            answer = self.config_hook.receive(message.sender, message.document)
            member = self.membership.member(message.sender)
            if answer is not None and member is not None:  # to its known address only
                self._send(wire.ConfigOffer(self.node_id, answer), member.addr, member.node_id)

    def _merge_unsigned(self, delta: ColumnarDelta) -> None:
        """Rows under the cluster key alone: refused once rows are tied to
        their origin (a key holder could write any origin's rows)."""
        if self.signing:
            self.counters.rows_rejected["unsigned"] += delta.rows
            self.counters.rejected["unsigned"] += 1
            return
        self._merge(self._within_rate(delta))

    def _merge_signed(self, message: SignedRows, limits: wire.WireLimits) -> None:
        """One origin's batch: the signature must be the origin's listed key's
        and every row and claim inside the origin's own; then the per-origin
        rate, the merge (with its per-origin quota) and the relay store."""
        trust = self.trust
        if trust is None:
            self.counters.rejected["unverifiable"] += 1  # no trust list: cannot check
            return
        if message.signature in self.relay:
            self.counters.rejected["duplicate_batch"] += 1  # held already: merged before
            return
        if message.origin not in trust:
            self.counters.rejected["unknown_signer"] += 1
            return
        if not trust.verify(message.origin, message.rows, message.signature):
            self.counters.rejected["bad_signature"] += 1
            return
        delta = wire.decode_signed(message, limits)
        if isinstance(delta, wire.WireError):
            reason = "foreign_rows" if delta.reason == "foreign_rows" else "malformed"
            self.counters.rejected[reason] += 1
            return
        self.counters.signed_batches += 1
        admitted = self._within_rate(delta, charge=False)
        if admitted is not delta:
            return
        report = self._merge(delta)
        self._charge(message.origin, report.accepted + report.adopted)
        if message.origin != self.node_id and (
            report.accepted or report.adopted or report.watermarks_advanced
        ):
            self.relay.add(message, delta, self.wall_ns())

    def _within_rate(self, delta: ColumnarDelta, charge: bool = True) -> ColumnarDelta:
        """``delta`` without the batches (and claims) of origins over their
        row rate (``OriginLimits``): a token bucket per origin, refilled at
        ``rows_per_second`` up to ``rows_burst``; a batch needs as many
        tokens as it has rows. ``charge``: take them now, for every row
        offered (a delta under the cluster key, whose rows are not told apart
        by origin after the merge); else the caller charges what the merge
        accepted (:meth:`_charge`, a signed batch: one origin), so copies of
        rows already held cost an honest origin nothing."""
        lim = self.origin_limits
        now = self.mono_ns()
        refused: set[str] = set()
        for b in delta.batches:
            if not len(b) or b.origin == self.node_id or b.origin in refused:
                continue
            tokens, at = self._origin_tokens.get(b.origin, (float(lim.rows_burst), now))
            tokens = min(float(lim.rows_burst), tokens + (now - at) * lim.rows_per_second / 1e9)
            if tokens < len(b):
                refused.add(b.origin)
                self._origin_tokens[b.origin] = (tokens, now)
                continue
            self._origin_tokens[b.origin] = (tokens - len(b) if charge else tokens, now)
        if len(self._origin_tokens) > 4 * auth.DEFAULT_MAX_SENDERS:
            self._origin_tokens.pop(next(iter(self._origin_tokens)))
        if not refused:
            return delta
        for b in delta.batches:
            if b.origin in refused:
                self.counters.rows_rejected["origin_rate"] += len(b)
        return ColumnarDelta(
            tuple(b for b in delta.batches if b.origin not in refused),
            tuple(c for c in delta.coverage if c.origin not in refused),
        )

    def _charge(self, origin: str, rows: int) -> None:
        """Take ``rows`` tokens of ``origin``'s bucket (after :meth:`_within_rate`)."""
        held = self._origin_tokens.get(origin)
        if held is not None and rows:
            self._origin_tokens[origin] = (held[0] - rows, held[1])

    def _expire_uncovered(self, now: int) -> None:
        """Drop the rows of an origin above its covered watermark once they
        have stayed so for ``uncovered_after_ns``: such rows were offered
        again on every Sync (100k rows in 167 datagrams kept a receiver busy
        for minutes, issue 12). A correct origin claims what it sends, so its
        rows are covered within a round or two. Its covered rows stay; its
        further rows are refused until a claim of its advances the watermark
        (:meth:`_covered_again`)."""
        if not self._row_top:
            return
        marks = self.state.digest().versions
        for origin, top in list(self._row_top.items()):
            if top <= marks.get(origin, ZERO_VERSION):
                self._uncovered_since.pop(origin, None)
                continue
            since = self._uncovered_since.setdefault(origin, now)
            if now - since >= self.origin_limits.uncovered_after_ns:
                dropped = self.state.drop_uncovered(origin)
                self.relay.drop_origin(origin)
                del self._row_top[origin]
                del self._uncovered_since[origin]
                self._dropped[origin] = now
                if len(self._dropped) > self.limits.max_origins:
                    self._dropped.pop(next(iter(self._dropped)))
                self.counters.uncovered_dropped += dropped
                log.info("dropped %d rows of origin %s: not covered by a claim", dropped, origin)

    def _covered_again(self, delta: ColumnarDelta) -> ColumnarDelta:
        """``delta`` without the rows of origins dropped as uncovered, unless
        its claims for them advance their watermark (which lifts the drop)."""
        dropped = {b.origin for b in delta.batches if b.origin in self._dropped}
        for origin in dropped:
            claims = tuple(c for c in delta.coverage if c.origin == origin)
            if claims:
                only = ColumnarDelta((), claims)
                if self.state.merge(only, self.wall_ns(), self.limits).watermarks_advanced:
                    del self._dropped[origin]
        still = {o for o in dropped if o in self._dropped}
        if not still:
            return delta
        for b in delta.batches:
            if b.origin in still:
                self.counters.rows_rejected["uncovered"] += len(b)
        return ColumnarDelta(
            tuple(b for b in delta.batches if b.origin not in still),
            tuple(c for c in delta.coverage if c.origin not in still),
        )

    def _merge(self, delta: ColumnarDelta) -> MergeReport:
        if self._dropped:
            delta = self._covered_again(delta)
        report = self.state.merge(delta, self.wall_ns(), self.limits)
        if report.accepted or report.adopted:
            self.on_merged()
            for origin, top in _top_version(delta).items():
                if origin != self.node_id and top > self._row_top.get(origin, ZERO_VERSION):
                    self._row_top[origin] = top
            if len(self._row_top) > self.limits.max_origins:
                self._row_top.pop(next(iter(self._row_top)))
        self.counters.rows_accepted += report.accepted + report.adopted
        self.counters.rows_stale += report.stale
        for reason, n in report.rejected.items():
            self.counters.rows_rejected[str(reason)] += n
        self.counters.last_merge_ns = self.wall_ns()
        return report
