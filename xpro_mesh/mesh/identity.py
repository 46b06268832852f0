"""Per-node identity: each node signs its own rows with an Ed25519 key, and
every node holds a trust list of the mesh's public keys by node id.

Why: under the cluster key alone (:mod:`xpro_mesh.mesh.auth`) every key
holder can send rows under any origin, so one compromised proxy could make a
legitimate client ``drop_pair`` on every node or switch the pair rule off for
an attacker (issue 12). With a signature per origin, a row of origin X is
taken only inside a batch that X's own key signed; a relay forwards X's
batch as X signed it (:mod:`xpro_mesh.mesh.relay`), so a compromised node
can lie about its own origin only, and what it can claim there is bounded by
the per-origin limits (:class:`xpro_mesh.mesh.node.OriginLimits`).

The node id is bound to its key by the trust list, which the operator
distributes with the rest of the configuration (the Ansible role writes it
from every host's public key): a key that is not listed under an origin's
name signs nothing for it. Signatures are per batch (one a datagram or
stream frame), never per row, so the scale targets hold (issue 9: about
1 us of agent CPU a pair and 16 bytes on the wire a changed row;
``xpro-mesh bench wire`` prints the signing figures).

Files (both text, ``#`` comments and blank lines ignored):

* the **node key** (``node_key_file``): one line of 64 hex characters, the
  32-byte Ed25519 seed; a secret, so mode 0600 like the cluster key;
* the **trust list** (``trust_file``): one ``NODE_ID PUBLIC_KEY_HEX`` a line;
  public, so it may be world-readable, but nobody but its owner may write
  it (whoever can add a line can sign for that name).

Signed bytes: ``b"xpro-mesh/rows\\0" || origin (UTF-8) || b"\\0" ||
SHA-256(rows)``, where ``rows`` is the columnar encoding of the batch
(:func:`xpro_mesh.mesh.columns.encode_rows`). The domain prefix keeps a
row signature from ever being valid for anything else this key signs. The
rows are hashed once with SHA-256 (SHA-NI: ~1.4 GB/s here) rather than
handed to Ed25519 whole, which hashes its message twice with SHA-512
(~0.4 GB/s): a 4 MiB frame cost 19 ms to sign and 10 ms to verify, now
about 3 ms each.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from xpro_mesh.mesh.auth import KeyFileError, check_private

__all__ = [
    "PUBLIC_KEY_BYTES",
    "SEED_BYTES",
    "SIGNATURE_BYTES",
    "NodeKey",
    "TrustList",
    "check_not_writable_by_others",
    "generate_node_key",
    "load_node_key",
    "load_trust_list",
    "parse_node_key",
    "parse_trust_list",
    "signed_bytes",
]

SEED_BYTES = 32
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
_DOMAIN = b"xpro-mesh/rows\x00"
MAX_TRUSTED = 4096  # lines in a trust list (the membership's own bound on senders)


def signed_bytes(origin: str, rows: bytes) -> bytes:
    """What an origin's signature covers (module docstring)."""
    return b"".join((_DOMAIN, origin.encode(), b"\x00", hashlib.sha256(rows).digest()))


def _raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


class NodeKey:
    """This node's signing key. ``repr`` shows the public key only."""

    __slots__ = ("_key", "public")

    def __init__(self, seed: bytes) -> None:
        if len(seed) != SEED_BYTES:
            raise ValueError(f"an Ed25519 seed is {SEED_BYTES} bytes, got {len(seed)}")
        self._key = Ed25519PrivateKey.from_private_bytes(seed)
        self.public: bytes = _raw_public(self._key.public_key())

    def sign(self, origin: str, rows: bytes) -> bytes:
        """The 64-byte signature of ``rows`` as ``origin``'s batch."""
        return self._key.sign(signed_bytes(origin, rows))

    def __repr__(self) -> str:
        return f"NodeKey(public {self.public.hex()})"


@dataclass(frozen=True, slots=True)
class TrustList:
    """The mesh's public keys by node id: who may sign for which origin."""

    keys: dict[str, Ed25519PublicKey]
    raw: dict[str, bytes]

    @classmethod
    def of(cls, entries: dict[str, bytes]) -> TrustList:
        keys = {name: Ed25519PublicKey.from_public_bytes(pk) for name, pk in entries.items()}
        return cls(keys, dict(entries))

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, origin: object) -> bool:
        return origin in self.keys

    def verify(self, origin: str, rows: bytes, signature: bytes) -> bool:
        """Whether ``signature`` is ``origin``'s listed key's over ``rows``."""
        key = self.keys.get(origin)
        if key is None or len(signature) != SIGNATURE_BYTES:
            return False
        try:
            key.verify(signature, signed_bytes(origin, rows))
        except InvalidSignature:
            return False
        return True


def _hex32(text: str, source: str, number: int, what: str) -> bytes:
    if len(text) != 64:
        raise KeyFileError(source, number, f"expected {what} of 64 hex characters, got {len(text)}")
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise KeyFileError(source, number, f"{what}: only hex digits 0-9 a-f") from None


def _lines(text: str) -> list[tuple[int, str]]:
    out = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if line:
            out.append((number, line))
    return out


def parse_node_key(text: str, source: str = "<node key file>") -> NodeKey:
    """One line of 64 hex characters (the seed)."""
    lines = _lines(text)
    if len(lines) != 1:
        raise KeyFileError(
            source, None, f"expected one key line of 64 hex characters, found {len(lines)}"
        )
    number, line = lines[0]
    return NodeKey(_hex32(line, source, number, "an Ed25519 seed"))


def parse_trust_list(text: str, source: str = "<trust file>") -> TrustList:
    """``NODE_ID PUBLIC_KEY_HEX`` a line; a name or a key twice is refused."""
    entries: dict[str, bytes] = {}
    first: dict[bytes, int] = {}
    for number, line in _lines(text):
        parts = line.split()
        if len(parts) != 2:
            raise KeyFileError(source, number, "expected NODE_ID PUBLIC_KEY_HEX")
        name, key_hex = parts
        if not 1 <= len(name.encode()) <= 255:
            raise KeyFileError(source, number, "a node id is 1..255 bytes")
        public = _hex32(key_hex, source, number, "a public key")
        if name in entries:
            raise KeyFileError(source, number, f"node {name} listed twice")
        if public in first:
            raise KeyFileError(source, number, f"the same public key as line {first[public]}")
        first[public] = number
        entries[name] = public
        if len(entries) > MAX_TRUSTED:
            raise KeyFileError(source, number, f"more than {MAX_TRUSTED} nodes")
    if not entries:
        raise KeyFileError(source, None, "no node in the trust list (NODE_ID PUBLIC_KEY_HEX)")
    try:
        return TrustList.of(entries)
    except ValueError as exc:  # not a point on the curve
        raise KeyFileError(source, None, f"a public key is not an Ed25519 key: {exc}") from None


def check_not_writable_by_others(path: str | Path) -> str | None:
    """Why a public file may not be used, or None: group or others may write it."""
    try:
        mode = Path(path).stat().st_mode & 0o777
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"
    if mode & 0o022:
        return f"mode {mode:04o} lets group or others write it: chmod 644 {path}"
    return None


def _read(path: str | Path, problem: str | None) -> str:
    source = str(path)
    if problem is not None:
        raise KeyFileError(source, None, problem)
    try:
        return Path(path).read_text(encoding="ascii")
    except UnicodeDecodeError:
        raise KeyFileError(source, None, "not an ASCII text file") from None
    except OSError as exc:
        raise KeyFileError(source, None, f"cannot read: {exc.strerror or exc}") from None


def load_node_key(path: str | Path) -> NodeKey:
    """Read the node key; a file group or others may read is refused."""
    return parse_node_key(_read(path, check_private(path)), str(path))


def load_trust_list(path: str | Path) -> TrustList:
    """Read the trust list; a file group or others may write is refused."""
    return parse_trust_list(_read(path, check_not_writable_by_others(path)), str(path))


def generate_node_key() -> tuple[str, str]:
    """A fresh key: (the key file line, the public key in hex)."""
    key = Ed25519PrivateKey.generate()
    seed = key.private_bytes(
        serialization.Encoding.Raw,
        serialization.PrivateFormat.Raw,
        serialization.NoEncryption(),
    )
    return seed.hex(), _raw_public(key.public_key()).hex()
