"""Cluster key, keyring and replay protection for every gossip datagram.

Why: the agents write what peers tell them into the kernel's drop tables, so an
unauthenticated datagram could make the mesh drop a victim's legitimate
clients (or stop dropping a flood). Every datagram is therefore sealed with
HMAC-SHA256 under a cluster key, and carries enough to reject replays.

The shape follows memberlist's ``keyring.go``/``security.go``: a keyring whose
first key is used to send and all of whose keys are accepted on receipt, so a
key can be rotated without downtime:

1. add the new key as the *second* line on every node (all still send with the
   old key, all accept both);
2. move the new key to the first line on every node (they send with the new
   key; nodes not yet changed still accept it);
3. remove the old key everywhere.

:attr:`Opened.key_index` tells the receiver which key a peer used, so the
operator can see when step 3 is safe.

Integrity only, not secrecy: HMAC does not hide the payload. The records are
rates of (client, destination) pairs between proxies of one operator; if they
must be hidden, run the mesh over a private network or WireGuard.

Envelope (big-endian, ``struct``; the payload is opaque bytes that the wire
module encodes)::

    offset   size  field
    0        2     magic  b"XM"
    2        1     format version (2)
    3        8     key id: first 8 bytes of SHA-256("xpro-mesh/key-id" 0 key)
    11       1     sender id length L (1..255)
    12       L     sender id, UTF-8
    12+L     1     recipient id length R (0..255)
    13+L     R     recipient id, UTF-8 (empty: "whoever listens here", joins only)
    13+L+R   8     incarnation  (the sender's boot epoch, see below)
    21+L+R   8     counter      (per datagram, increasing within an incarnation)
    29+L+R   8     timestamp    (sender's realtime clock, ns since the epoch)
    37+L+R   n     payload
    37+L+R+n 32    HMAC-SHA256(key, every byte before it)

The recipient is under the MAC, so a datagram captured on its way to one node
is refused by every other (``wrong_recipient``): without it, each capture was
accepted once by every node of the mesh (issue 12). Only a node that does not
yet know a peer's id (a join to a seed address) sends an empty recipient, and
the node accepts those for membership push-pull only.

Replays (the IPsec anti-replay scheme, RFC 4303 §3.4.3, plus a clock check):

* a datagram whose timestamp is more than ``window_ns`` (default 30 s) behind
  or ahead of the receiver's clock is ``stale``/``future``: this bounds how
  long a captured datagram stays useful, and how far clocks may drift apart;
* within the window, per (sender, incarnation), a sliding bitmap of the last
  ``bitmap_bits`` counters rejects a counter already seen (``replay``);
  counters more than ``bitmap_bits`` behind the highest seen are rejected too.
  A sender keeps up to ``lives_per_sender`` incarnations' windows at once (the
  least recently heard goes first), and a new incarnation opens a window of
  its own whether it is higher or lower than the others. A guard that let
  only a higher incarnation in was locked out twice (issue 12): by one valid
  datagram naming the sender with incarnation 2^64 - 1, and by a sender whose
  clock stepped back across a restart. A replay of an earlier life is still
  refused by that life's window while the window is held; it is held for as
  long as the sender does not start ``lives_per_sender`` newer lives within
  the time window, which a correct node does not.

The guard keeps state for at most ``max_senders`` windows in all (least
recently heard first out). Only datagrams whose MAC verified touch it, so only a key
holder can push a sender out; if one does, that sender's datagrams still inside
the time window could be replayed once. With the default 4096 senders this
needs thousands of distinct forged-by-insider ids, which the membership limits
refuse anyway.

The ``incarnation`` the agent passes here should be its boot epoch (e.g.
:func:`xpro_mesh.mesh.membership.incarnation_from_wall_clock` at start), so a
restart opens a fresh window and its counter may start at 0 again.

Sans-IO: no clock reads (``now_ns`` is passed in), no sockets, no exceptions on
hostile input (:func:`open_` returns :class:`Rejected` with a :class:`Reason`).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
import struct
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DEFAULT_BITMAP_BITS",
    "DEFAULT_MAX_DATAGRAM_BYTES",
    "DEFAULT_MAX_SENDERS",
    "DEFAULT_WINDOW_NS",
    "FORMAT_VERSION",
    "KEY_BYTES",
    "MAC_BYTES",
    "MAGIC",
    "STREAM_MAGIC",
    "KeyFileError",
    "Keyring",
    "Opened",
    "Reason",
    "Rejected",
    "ReplayGuard",
    "Sealer",
    "check_private",
    "envelope_overhead",
    "generate_key_line",
    "key_id",
    "load_keyring",
    "open_",
    "parse_keyring",
    "payload_budget",
    "seal",
]

MAGIC = b"XM"
STREAM_MAGIC = b"XS"
"""Frames on the stream (:mod:`xpro_mesh.mesh.stream`) carry their own magic,
so a datagram captured off the wire cannot be replayed as a stream frame (the
two channels keep separate replay windows) nor the other way round."""
FORMAT_VERSION = 2
KEY_BYTES = 32
KEY_ID_BYTES = 8
MAC_BYTES = 32
MAX_SENDER_ID_BYTES = 255
DEFAULT_WINDOW_NS = 30 * 10**9
DEFAULT_BITMAP_BITS = 1024
DEFAULT_MAX_SENDERS = 4096
DEFAULT_LIVES_PER_SENDER = 4
DEFAULT_MAX_DATAGRAM_BYTES = 60_000

_U64_MAX = 2**64 - 1
_PREFIX = struct.Struct(">2sB8sB")  # magic, version, key id, sender id length
_COUNTERS = struct.Struct(">QQQ")  # incarnation, counter, timestamp
_KEY_ID_DOMAIN = b"xpro-mesh/key-id\x00"
_MIN_DATAGRAM = _PREFIX.size + 1 + 1 + _COUNTERS.size + MAC_BYTES


class Reason(enum.StrEnum):
    """Why a datagram was dropped; the agent counts drops by reason."""

    BAD_MAGIC = "bad_magic"  # not this format: magic, version or sender id field
    TRUNCATED = "truncated"  # shorter than its header says
    UNKNOWN_KEY = "unknown_key"  # sealed with a key not on our keyring
    BAD_MAC = "bad_mac"  # forged or corrupted
    STALE = "stale"  # timestamp more than the window behind our clock
    FUTURE = "future"  # timestamp more than the window ahead of our clock
    REPLAY = "replay"  # (sender, incarnation, counter) already accepted
    OVERSIZED = "oversized"  # larger than the datagram limit
    WRONG_RECIPIENT = "wrong_recipient"  # sealed for another node (a capture replayed here)


class KeyFileError(ValueError):
    """A key file that cannot be used. The message names the file and line and
    never contains key material."""

    def __init__(self, source: str, line: int | None, problem: str) -> None:
        where = f"{source}:{line}" if line is not None else source
        super().__init__(f"{where}: {problem}")
        self.source = source
        self.line = line


def key_id(key: bytes) -> bytes:
    """The 8-byte identifier sent in clear so the receiver picks the key
    directly (memberlist tries every key; this makes unknown keys cheap to
    reject). Domain-separated so it is never a MAC or hash used elsewhere."""
    return hashlib.sha256(_KEY_ID_DOMAIN + key).digest()[:KEY_ID_BYTES]


class Keyring:
    """The cluster keys: :attr:`primary` seals, every key opens.

    ``repr`` shows key ids only, so a keyring can be logged.
    """

    __slots__ = ("_by_id", "_keys")

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise ValueError("a keyring needs at least one key")
        by_id: dict[bytes, tuple[int, bytes]] = {}
        for index, key in enumerate(keys):
            if len(key) != KEY_BYTES:
                raise ValueError(f"key {index} is {len(key)} bytes, expected {KEY_BYTES}")
            kid = key_id(key)
            if kid in by_id:
                raise ValueError(f"key {index} has the same key id as key {by_id[kid][0]}")
            by_id[kid] = (index, bytes(key))
        self._keys: tuple[bytes, ...] = tuple(bytes(k) for k in keys)
        self._by_id = by_id

    @property
    def primary(self) -> bytes:
        return self._keys[0]

    @property
    def primary_id(self) -> bytes:
        return key_id(self._keys[0])

    def __len__(self) -> int:
        return len(self._keys)

    def lookup(self, kid: bytes) -> tuple[int, bytes] | None:
        """(index on the keyring, key) for a key id, or None."""
        return self._by_id.get(kid)

    def __repr__(self) -> str:
        ids = ", ".join(key_id(k).hex() for k in self._keys)
        return f"Keyring(key ids: {ids})"


def parse_keyring(text: str, source: str = "<key file>") -> Keyring:
    """Parse key-file text: one key per line as 64 hex characters, the first
    key line the sending key; blank lines and ``#`` comments (also after a key)
    are ignored."""
    keys: list[bytes] = []
    first_line_of: dict[bytes, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if len(line) != 2 * KEY_BYTES:
            raise KeyFileError(
                source,
                number,
                f"expected {2 * KEY_BYTES} hex characters (a {KEY_BYTES}-byte key), "
                f"got {len(line)} characters",
            )
        try:
            key = bytes.fromhex(line)
        except ValueError:
            raise KeyFileError(
                source, number, "expected only hex digits 0-9 a-f in a key line"
            ) from None
        if key in first_line_of:
            raise KeyFileError(
                source, number, f"the same key as line {first_line_of[key]} (duplicate)"
            )
        first_line_of[key] = number
        keys.append(key)
    if not keys:
        raise KeyFileError(source, None, "no key in the file (expected 64 hex characters a line)")
    try:
        return Keyring(keys)
    except ValueError as exc:  # an 8-byte key id collision: 2**-64
        raise KeyFileError(source, None, str(exc)) from None


def check_private(path: str | Path) -> str | None:
    """Why a secret file may not be used, or None: one that group or others
    may read or write is refused (whoever can read the cluster key can write
    every kernel's drop table; the Ansible role writes it 0600)."""
    try:
        mode = Path(path).stat().st_mode & 0o777
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"
    if mode & 0o077:
        return f"mode {mode:04o} lets group or others at it: chmod 600 {path}"
    return None


def load_keyring(path: str | Path) -> Keyring:
    """Read and parse a key file; every failure is a :class:`KeyFileError`."""
    source = str(path)
    problem = check_private(path)
    if problem is not None:
        raise KeyFileError(source, None, problem)
    try:
        text = Path(path).read_text(encoding="ascii")
    except UnicodeDecodeError:
        raise KeyFileError(source, None, "not an ASCII text file") from None
    except OSError as exc:
        raise KeyFileError(source, None, f"cannot read: {exc.strerror or exc}") from None
    return parse_keyring(text, source)


def generate_key_line() -> str:
    """A fresh random key as one key-file line (64 hex characters)."""
    return secrets.token_hex(KEY_BYTES)


MAX_RECIPIENT_BYTES = MAX_SENDER_ID_BYTES


def envelope_overhead(sender_id: str, recipient_id: str = "") -> int:
    """Bytes the envelope adds to a payload from ``sender_id`` to ``recipient_id``."""
    recipient = len(recipient_id.encode())
    return _PREFIX.size + len(sender_id.encode()) + 1 + recipient + _COUNTERS.size + MAC_BYTES


def payload_budget(max_datagram_bytes: int, sender_id: str, recipient_id: str = "") -> int:
    """The largest payload that fits one datagram: what callers chunk to."""
    return max_datagram_bytes - envelope_overhead(sender_id, recipient_id)


def seal(
    keyring: Keyring,
    sender_id: str,
    incarnation: int,
    counter: int,
    now_ns: int,
    payload: bytes,
    *,
    recipient_id: str = "",
    max_bytes: int = DEFAULT_MAX_DATAGRAM_BYTES,
    magic: bytes = MAGIC,
) -> bytes:
    """Wrap ``payload`` in an authenticated envelope under the primary key,
    for ``recipient_id`` ("" only when the recipient's id is not known).

    Raises ``ValueError`` for arguments this node should never produce (an
    empty or over-long sender id, a field outside u64, a datagram over
    ``max_bytes``): those are bugs in the caller, not network input.
    """
    sender = sender_id.encode()
    if not 1 <= len(sender) <= MAX_SENDER_ID_BYTES:
        raise ValueError(f"sender id must be 1..{MAX_SENDER_ID_BYTES} UTF-8 bytes")
    recipient = recipient_id.encode()
    if len(recipient) > MAX_RECIPIENT_BYTES:
        raise ValueError(f"recipient id must be 0..{MAX_RECIPIENT_BYTES} UTF-8 bytes")
    for name, value in (("incarnation", incarnation), ("counter", counter), ("now_ns", now_ns)):
        if not 0 <= value <= _U64_MAX:
            raise ValueError(f"{name} must fit in an unsigned 64-bit integer, got {value}")
    size = _PREFIX.size + len(sender) + 1 + len(recipient) + _COUNTERS.size
    size += len(payload) + MAC_BYTES
    if size > max_bytes:
        raise ValueError(
            f"sealed datagram would be {size} bytes, over the {max_bytes}-byte limit: "
            "chunk the payload (see payload_budget)"
        )
    key = keyring.primary
    body = b"".join(
        (
            _PREFIX.pack(magic, FORMAT_VERSION, key_id(key), len(sender)),
            sender,
            bytes((len(recipient),)),
            recipient,
            _COUNTERS.pack(incarnation, counter, now_ns),
            payload,
        )
    )
    return body + hmac.digest(key, body, "sha256")


class Sealer:
    """One node's sending side: its keyring, id and boot incarnation, and the
    datagram counter that must never repeat within that incarnation."""

    __slots__ = ("counter", "incarnation", "keyring", "magic", "max_bytes", "sender_id")

    def __init__(
        self,
        keyring: Keyring,
        sender_id: str,
        incarnation: int,
        *,
        max_bytes: int = DEFAULT_MAX_DATAGRAM_BYTES,
        magic: bytes = MAGIC,
    ) -> None:
        self.keyring = keyring
        self.sender_id = sender_id
        self.incarnation = incarnation
        self.max_bytes = max_bytes
        self.magic = magic
        self.counter = 0

    def seal(self, now_ns: int, payload: bytes, recipient_id: str = "") -> bytes:
        datagram = seal(
            self.keyring,
            self.sender_id,
            self.incarnation,
            self.counter,
            now_ns,
            payload,
            recipient_id=recipient_id,
            max_bytes=self.max_bytes,
            magic=self.magic,
        )
        self.counter += 1
        return datagram


@dataclass(frozen=True, slots=True)
class Opened:
    """An authentic, fresh datagram."""

    sender_id: str
    incarnation: int
    counter: int
    timestamp_ns: int
    payload: bytes
    key_index: int  # 0: the receiver's primary key; > 0: an older key still in use
    recipient_id: str = ""  # "" only from a node that did not know our id (a join)


@dataclass(frozen=True, slots=True)
class Rejected:
    """A dropped datagram and why."""

    reason: Reason


@dataclass(slots=True)
class _SenderWindow:
    incarnation: int
    highest: int
    bitmap: int  # bit i set: counter (highest - i) was accepted


class ReplayGuard:
    """Per-receiver anti-replay state (see the module docstring).

    Memory is bounded: ``max_senders`` windows of ``bitmap_bits`` bits each,
    at most ``lives_per_sender`` of them for one sender.
    """

    __slots__ = (
        "_lives",
        "_windows",
        "bitmap_bits",
        "lives_per_sender",
        "max_senders",
        "window_ns",
    )

    def __init__(
        self,
        *,
        window_ns: int = DEFAULT_WINDOW_NS,
        bitmap_bits: int = DEFAULT_BITMAP_BITS,
        max_senders: int = DEFAULT_MAX_SENDERS,
        lives_per_sender: int = DEFAULT_LIVES_PER_SENDER,
    ) -> None:
        if min(window_ns, bitmap_bits, max_senders, lives_per_sender) <= 0:
            raise ValueError(
                "window_ns, bitmap_bits, max_senders and lives_per_sender must be positive"
            )
        self.window_ns = window_ns
        self.bitmap_bits = bitmap_bits
        self.max_senders = max_senders
        self.lives_per_sender = lives_per_sender
        self._windows: OrderedDict[tuple[str, int], _SenderWindow] = OrderedDict()
        self._lives: dict[str, list[int]] = {}  # sender -> its incarnations held, oldest first

    def __len__(self) -> int:
        return len(self._lives)

    def check_time(self, timestamp_ns: int, now_ns: int) -> Reason | None:
        if timestamp_ns < now_ns - self.window_ns:
            return Reason.STALE
        if timestamp_ns > now_ns + self.window_ns:
            return Reason.FUTURE
        return None

    def accept(self, sender_id: str, incarnation: int, counter: int) -> bool:
        """Record (sender, incarnation, counter) and say whether it is new.

        Call only for datagrams whose MAC verified: the state it updates is
        what later rejects replays, so forgeries must not reach it.
        """
        key = (sender_id, incarnation)
        window = self._windows.get(key)
        lives = self._lives.setdefault(sender_id, [])
        if window is None:
            self._windows[key] = _SenderWindow(incarnation, counter, 1)
            lives.append(incarnation)
            if len(lives) > self.lives_per_sender:
                self._drop((sender_id, lives[0]))
            while len(self._windows) > self.max_senders:
                self._drop(next(iter(self._windows)))
            return True
        self._windows.move_to_end(key)
        lives.remove(incarnation)
        lives.append(incarnation)
        if counter > window.highest:
            shift = counter - window.highest
            mask = (1 << self.bitmap_bits) - 1
            window.bitmap = ((window.bitmap << shift) | 1) & mask if shift < self.bitmap_bits else 1
            window.highest = counter
            return True
        offset = window.highest - counter
        if offset >= self.bitmap_bits or window.bitmap >> offset & 1:
            return False
        window.bitmap |= 1 << offset
        return True

    def _drop(self, key: tuple[str, int]) -> None:
        del self._windows[key]
        lives = self._lives[key[0]]
        lives.remove(key[1])
        if not lives:
            del self._lives[key[0]]


def open_(
    keyring: Keyring,
    datagram: bytes,
    now_ns: int,
    replay_guard: ReplayGuard,
    *,
    max_bytes: int = DEFAULT_MAX_DATAGRAM_BYTES,
    magic: bytes = MAGIC,
    recipient_id: str | None = None,
) -> Opened | Rejected:
    """Verify and unwrap one datagram. Never raises on any input.

    With ``recipient_id``, a datagram sealed for another node is refused
    (``wrong_recipient``); one with an empty recipient passes, and the caller
    decides what it may carry (:attr:`Opened.recipient_id`).

    Checks run cheapest-first and the replay state is only updated once the
    MAC and the clock check have passed.
    """
    if len(datagram) > max_bytes:
        return Rejected(Reason.OVERSIZED)
    if len(datagram) < _PREFIX.size:
        return Rejected(Reason.TRUNCATED)
    found_magic, version, kid, sender_len = _PREFIX.unpack_from(datagram)
    if found_magic != magic or version != FORMAT_VERSION or sender_len == 0:
        return Rejected(Reason.BAD_MAGIC)
    body_end = len(datagram) - MAC_BYTES
    recipient_at = _PREFIX.size + sender_len
    if recipient_at + 1 > body_end:
        return Rejected(Reason.TRUNCATED)
    recipient_len = datagram[recipient_at]
    counters_at = recipient_at + 1 + recipient_len
    if counters_at + _COUNTERS.size > body_end:
        return Rejected(Reason.TRUNCATED)
    found = keyring.lookup(kid)
    if found is None:
        return Rejected(Reason.UNKNOWN_KEY)
    key_index, key = found
    body = memoryview(datagram)[:body_end]
    expected = hmac.digest(key, body, "sha256")
    if not hmac.compare_digest(expected, datagram[body_end:]):
        return Rejected(Reason.BAD_MAC)
    try:
        sender_id = datagram[_PREFIX.size : recipient_at].decode()
        recipient = datagram[recipient_at + 1 : counters_at].decode()
    except UnicodeDecodeError:
        return Rejected(Reason.BAD_MAGIC)
    if recipient_id is not None and recipient not in ("", recipient_id):
        return Rejected(Reason.WRONG_RECIPIENT)
    incarnation, counter, timestamp_ns = _COUNTERS.unpack_from(datagram, counters_at)
    late_or_early = replay_guard.check_time(timestamp_ns, now_ns)
    if late_or_early is not None:
        return Rejected(late_or_early)
    if not replay_guard.accept(sender_id, incarnation, counter):
        return Rejected(Reason.REPLAY)
    payload = bytes(datagram[counters_at + _COUNTERS.size : body_end])
    return Opened(sender_id, incarnation, counter, timestamp_ns, payload, key_index, recipient)
