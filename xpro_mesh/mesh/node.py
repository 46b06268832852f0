"""One mesh node: membership and anti-entropy driven over a transport.

The thin asyncio shell around the sans-IO pieces: it turns
:class:`~xpro_mesh.mesh.membership.Membership` actions and the
:class:`~xpro_mesh.core.gossip_state.GossipState` push-pull into sealed
datagrams (:mod:`~xpro_mesh.mesh.auth`, :mod:`~xpro_mesh.mesh.wire`) and the
datagrams it receives back into calls. Everything a peer sends is opened,
decoded and validated before it touches state; what fails is dropped and
counted by reason, never raised.

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

from xpro_mesh.core.gossip_state import Delta, GossipState, MergeLimits, MergeReport, chunk_delta
from xpro_mesh.mesh import auth, wire
from xpro_mesh.mesh.membership import (
    Action,
    Address,
    ForwardAck,
    IndirectProbe,
    MemberChanged,
    Membership,
    MemberUpdate,
    Probe,
    SyncState,
)
from xpro_mesh.mesh.messages import Ack, Members, Ping, PingReq, Sync
from xpro_mesh.mesh.transport import Transport

__all__ = ["MeshCounters", "MeshNode", "NodeTiming"]

log = logging.getLogger("xpro_mesh.mesh")

PIGGYBACK = 6  # membership updates riding on each message (~60 bytes each)
MEMBERS_PER_MESSAGE = 16  # member records per push-pull datagram
MIN_RECEIVE_BYTES = 1400  # one Ethernet frame is always accepted, whatever our own limit


@dataclass(frozen=True, slots=True)
class NodeTiming:
    """The anti-entropy knobs (membership timing is in MembershipParams)."""

    interval_ns: int = 500_000_000  # push-pull with `fanout` peers this often
    fanout: int = 3
    max_message_bytes: int = 1400
    replay_window_ns: int = 30_000_000_000


@dataclass(slots=True)
class MeshCounters:
    """What the node did, for /metrics and /v1/status."""

    rounds: int = 0
    sent: Counter[str] = field(default_factory=Counter)  # messages by kind
    sent_bytes: Counter[str] = field(default_factory=Counter)
    received: Counter[str] = field(default_factory=Counter)
    received_bytes: Counter[str] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)  # datagrams, by reason
    pulls: int = 0  # our digests answered by a peer (its delta, then its Sync)
    rows_accepted: int = 0
    rows_stale: int = 0
    rows_rejected: Counter[str] = field(default_factory=Counter)
    last_merge_ns: int = 0


class MeshNode:
    """A mesh member: call :meth:`receive` for every datagram, run :meth:`run`."""

    def __init__(
        self,
        *,
        state: GossipState,
        membership: Membership,
        keyring: auth.Keyring,
        timing: NodeTiming,
        limits: MergeLimits,
        rng: random.Random | None = None,
        wall_ns: Callable[[], int] = time.time_ns,
        mono_ns: Callable[[], int] = time.monotonic_ns,
        on_rows_changed: Callable[[MergeReport], None] | None = None,
        on_member_changed: Callable[[MemberChanged], None] | None = None,
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
        self._budget = auth.payload_budget(timing.max_message_bytes, self.node_id)
        self._rows_per_chunk = max(1, wire.entries_per_payload(self._budget))
        # Larger datagrams are refused (and counted) here, not by the transport,
        # so that every refusal shows in one place by reason.
        self._receive_limit = max(timing.max_message_bytes, MIN_RECEIVE_BYTES)
        self._transport: Transport | None = None
        self._on_rows_changed = on_rows_changed
        self._on_member_changed = on_member_changed
        self._wake = asyncio.Event()
        self.pulled = asyncio.Event()  # a peer answered one of our digests

    # --- wiring ----------------------------------------------------------------

    def attach(self, transport: Transport) -> None:
        self._transport = transport

    def join(self, seeds: Iterable[Address]) -> None:
        self._perform(self.membership.join(list(seeds), self.mono_ns()))

    async def run(self, stop: asyncio.Event) -> None:
        """Membership timers and anti-entropy rounds until ``stop`` is set."""
        next_round = self.mono_ns()
        while not stop.is_set():
            now = self.mono_ns()
            self._perform(self.membership.tick(now))
            if now >= next_round:
                self.gossip_round()
                next_round = now + self.timing.interval_ns
            deadline = min(self.membership.next_deadline_ns(), next_round)
            delay = max(0.0, (deadline - self.mono_ns()) / 1e9)
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=min(delay, 1.0))

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

    def _send_delta(self, delta: Delta, addr: Address) -> None:
        if not delta.entries and not delta.coverage:
            return
        for chunk in chunk_delta(delta, self._rows_per_chunk):
            self._send(chunk, addr)

    def _perform(self, actions: Iterable[Action]) -> None:
        for action in actions:
            if isinstance(action, Probe):
                msg = Ping(action.seq, action.node_id, self._self_update(), self._piggyback())
                self._send(msg, action.addr)
            elif isinstance(action, IndirectProbe):
                req = PingReq(
                    action.seq, action.node_id, action.addr, self._self_update(), self._piggyback()
                )
                self._send(req, action.via_addr)
            elif isinstance(action, ForwardAck):
                self._send(Ack(action.seq, self._self_update(), self._piggyback()), action.addr)
            elif isinstance(action, SyncState):
                self._send_members(action.addr, reply=True)
            elif isinstance(action, MemberChanged):
                log.info(
                    "member %s: %s -> %s",
                    action.node_id,
                    action.previous or "unknown",
                    action.current or "forgotten",
                )
                if self._on_member_changed is not None:
                    self._on_member_changed(action)

    def _send_members(self, addr: Address, reply: bool) -> None:
        members = self.membership.local_state()
        me = self._self_update()
        for i in range(0, max(1, len(members)), MEMBERS_PER_MESSAGE):
            part = tuple(members[i : i + MEMBERS_PER_MESSAGE])
            self._send(Members(me, part, reply and i == 0), addr)

    # --- receiving ---------------------------------------------------------------

    def receive(self, datagram: bytes, addr: Address) -> None:
        """The transport's handler: open, decode, dispatch; count failures."""
        opened = auth.open_(
            self.keyring, datagram, self.wall_ns(), self._replay, max_bytes=self._receive_limit
        )
        if isinstance(opened, auth.Rejected):
            self.counters.rejected[str(opened.reason)] += 1
            return
        message = wire.decode(opened.payload)
        if isinstance(message, wire.WireError):
            self.counters.rejected["malformed"] += 1
            return
        kind = wire.kind_of(message)
        self.counters.received[kind] += 1
        self.counters.received_bytes[kind] += len(datagram)
        sender = getattr(message, "sender", None)
        if isinstance(sender, MemberUpdate) and sender.node_id != opened.sender_id:
            self.counters.rejected["sender_mismatch"] += 1
            return
        now = self.mono_ns()
        if isinstance(message, Ping):
            self._perform(self.membership.on_update((message.sender, *message.updates), now))
            if message.target_id == self.node_id:
                self._send(Ack(message.seq, self._self_update(), self._piggyback()), addr)
        elif isinstance(message, Ack):
            self._perform(self.membership.on_update((message.sender, *message.updates), now))
            self._perform(self.membership.on_ack(message.seq, now))
        elif isinstance(message, PingReq):
            self._perform(self.membership.on_update((message.sender, *message.updates), now))
            self._perform(
                self.membership.on_ping_request(
                    message.sender.node_id,
                    addr,
                    message.seq,
                    message.target_id,
                    message.target_addr,
                    now,
                )
            )
        elif isinstance(message, Members):
            self._perform(self.membership.merge_state((message.sender, *message.members), now))
            if message.reply:
                self._send_members(addr, reply=False)
        elif isinstance(message, Sync):
            self._perform(self.membership.on_update((message.sender, *message.updates), now))
            self._send_delta(self.state.delta_for(message.digest), addr)
            if message.reply:
                digest = self.state.digest()
                self._send(Sync(digest, False, self._self_update(), self._piggyback()), addr)
            else:
                # The answer to our digest: the peer sent its delta before it.
                self.counters.pulls += 1
                self.pulled.set()
        elif isinstance(message, Delta):
            self._merge(message)

    def _merge(self, delta: Delta) -> None:
        report = self.state.merge(delta, self.wall_ns(), self.limits)
        self.counters.rows_accepted += report.accepted + report.adopted
        self.counters.rows_stale += report.stale
        for reason, n in report.rejected.items():
            self.counters.rows_rejected[str(reason)] += n
        self.counters.last_merge_ns = self.wall_ns()
        if report.changed_pairs and self._on_rows_changed is not None:
            self._on_rows_changed(report)
