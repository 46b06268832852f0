"""The mesh's protocol messages as plain frozen dataclasses.

Their bytes are :mod:`xpro_mesh.mesh.wire`'s business; the state they carry
is :mod:`xpro_mesh.core.gossip_state`'s (``Digest``, ``Delta``) and
:mod:`xpro_mesh.mesh.membership`'s (``MemberUpdate``). Every message that a
node sends anyway carries the sender's own record and a few piggybacked
membership updates (SWIM §4.1: dissemination rides on failure detection).
"""

from __future__ import annotations

from dataclasses import dataclass

from xpro_mesh.core.gossip_state import Digest
from xpro_mesh.mesh.membership import Address, MemberUpdate

__all__ = ["Ack", "Members", "Nack", "Ping", "PingReq", "SignedRows", "Sync"]


@dataclass(frozen=True, slots=True)
class Ping:
    """SWIM ping: "are you ``target_id``? answer ``ack(seq)``"."""

    seq: int
    target_id: str
    sender: MemberUpdate
    updates: tuple[MemberUpdate, ...] = ()


@dataclass(frozen=True, slots=True)
class Ack:
    """The answer to a ping (or a forwarded one, for a ping-req)."""

    seq: int
    sender: MemberUpdate
    updates: tuple[MemberUpdate, ...] = ()


@dataclass(frozen=True, slots=True)
class Nack:
    """A ping-req helper's "I asked, the target did not answer in time"
    (Lifeguard): the asker learns its helper is reachable, so a probe that
    fails with its nacks in is the target's fault, not the asker's."""

    seq: int
    sender: MemberUpdate
    updates: tuple[MemberUpdate, ...] = ()


@dataclass(frozen=True, slots=True)
class PingReq:
    """SWIM ping-req: "probe ``target_id`` at ``target_addr`` for me"."""

    seq: int
    target_id: str
    target_addr: Address
    sender: MemberUpdate
    updates: tuple[MemberUpdate, ...] = ()


@dataclass(frozen=True, slots=True)
class Members:
    """Membership push-pull: the sender's full member list; ``reply`` asks
    the receiver to answer with its own."""

    sender: MemberUpdate
    members: tuple[MemberUpdate, ...]
    reply: bool


@dataclass(frozen=True, slots=True)
class Sync:
    """Anti-entropy push-pull (Scuttlebutt): the sender's digest; the receiver
    answers with the rows the digest lacks (``Delta`` chunks) and, when
    ``reply`` is set, its own digest so the sender can do the same."""

    digest: Digest
    reply: bool
    sender: MemberUpdate
    updates: tuple[MemberUpdate, ...] = ()


@dataclass(frozen=True, slots=True, eq=False)
class SignedRows:
    """One origin's batch of rows as that origin signed it
    (:mod:`xpro_mesh.mesh.identity`): ``rows`` is the columnar encoding of a
    delta holding rows and claims of ``origin`` only. Relays forward the
    three fields unchanged, so the signature travels with the rows."""

    origin: str
    rows: bytes
    signature: bytes
