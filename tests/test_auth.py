"""Specifications of the datagram envelope: cluster key, keyring, replays."""

from __future__ import annotations

import hmac
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xpro_mesh.mesh.auth import (
    MAGIC,
    KeyFileError,
    Keyring,
    Opened,
    Reason,
    Rejected,
    ReplayGuard,
    Sealer,
    envelope_overhead,
    generate_key_line,
    key_id,
    load_keyring,
    open_,
    parse_keyring,
    payload_budget,
    seal,
)

S = 10**9
NOW = 1_700_000_000 * S
OLD = bytes(range(32))
NEW = bytes(range(100, 132))


def ring(*keys: bytes) -> Keyring:
    return Keyring(list(keys))


def sealed(counter: int = 0, *, keys: Keyring | None = None, at: int = NOW, inc: int = 7) -> bytes:
    return seal(keys or ring(OLD), "proxy-1", inc, counter, at, b"payload")


def reason_of(result: Opened | Rejected) -> Reason | None:
    return result.reason if isinstance(result, Rejected) else None


# --- round trip ---------------------------------------------------------------


def test_sealed_datagram_opens_to_its_fields_and_payload() -> None:
    datagram = seal(ring(OLD), "proxy-1", 7, 3, NOW, b"\x00\x01 msgpack")
    opened = open_(ring(OLD), datagram, NOW + S, ReplayGuard())
    assert opened == Opened("proxy-1", 7, 3, NOW, b"\x00\x01 msgpack", key_index=0)


def test_envelope_overhead_is_the_exact_size_added() -> None:
    datagram = seal(ring(OLD), "prøxy", 1, 1, NOW, b"x" * 10)
    assert len(datagram) == 10 + envelope_overhead("prøxy")


def test_payload_budget_is_the_largest_payload_that_fits() -> None:
    budget = payload_budget(1400, "proxy-1")
    assert len(seal(ring(OLD), "proxy-1", 1, 1, NOW, b"x" * budget, max_bytes=1400)) == 1400
    with pytest.raises(ValueError, match="chunk"):
        seal(ring(OLD), "proxy-1", 1, 1, NOW, b"x" * (budget + 1), max_bytes=1400)


def test_sealer_counts_up_so_each_of_its_datagrams_is_accepted_once() -> None:
    sealer = Sealer(ring(OLD), "proxy-1", incarnation=5)
    guard = ReplayGuard()
    datagrams = [sealer.seal(NOW, b"p%d" % i) for i in range(5)]
    assert [open_(ring(OLD), d, NOW, guard).counter for d in datagrams] == [0, 1, 2, 3, 4]  # type: ignore[union-attr]
    assert all(reason_of(open_(ring(OLD), d, NOW, guard)) is Reason.REPLAY for d in datagrams)


@pytest.mark.parametrize(
    ("sender", "inc", "counter", "now"),
    [("", 1, 1, NOW), ("x" * 256, 1, 1, NOW), ("p", -1, 1, NOW), ("p", 1, 2**64, NOW)],
)
def test_seal_refuses_fields_the_format_cannot_carry(
    sender: str, inc: int, counter: int, now: int
) -> None:
    with pytest.raises(ValueError):
        seal(ring(OLD), sender, inc, counter, now, b"")


# --- every rejection reason -----------------------------------------------------


def test_wrong_magic_is_bad_magic() -> None:
    datagram = b"ZZ" + sealed()[2:]
    assert reason_of(open_(ring(OLD), datagram, NOW, ReplayGuard())) is Reason.BAD_MAGIC


def test_unknown_format_version_is_bad_magic() -> None:
    datagram = MAGIC + bytes([99]) + sealed()[3:]
    assert reason_of(open_(ring(OLD), datagram, NOW, ReplayGuard())) is Reason.BAD_MAGIC


def test_sender_id_that_is_not_utf8_is_bad_magic_even_under_a_valid_mac() -> None:
    body = (
        struct.pack(">2sB8sB", MAGIC, 1, key_id(OLD), 1) + b"\xff" + struct.pack(">QQQ", 1, 1, NOW)
    )
    datagram = body + hmac.digest(OLD, body, "sha256")
    assert reason_of(open_(ring(OLD), datagram, NOW, ReplayGuard())) is Reason.BAD_MAGIC


@pytest.mark.parametrize("cut", [0, 1, 5, 12, 20, 40])
def test_datagram_shorter_than_its_header_is_truncated(cut: int) -> None:
    assert reason_of(open_(ring(OLD), sealed()[:cut], NOW, ReplayGuard())) is Reason.TRUNCATED


def test_sender_length_pointing_past_the_end_is_truncated() -> None:
    datagram = bytearray(sealed())
    datagram[11] = 255
    assert reason_of(open_(ring(OLD), bytes(datagram), NOW, ReplayGuard())) is Reason.TRUNCATED


def test_key_not_on_the_keyring_is_unknown_key() -> None:
    assert reason_of(open_(ring(NEW), sealed(), NOW, ReplayGuard())) is Reason.UNKNOWN_KEY


def test_changed_payload_is_bad_mac() -> None:
    datagram = sealed()
    forged = datagram[: -32 - 7] + b"PAYLOAD" + datagram[-32:]
    assert reason_of(open_(ring(OLD), forged, NOW, ReplayGuard())) is Reason.BAD_MAC


def test_mac_made_with_another_key_under_our_key_id_is_bad_mac() -> None:
    forged = seal(ring(NEW), "proxy-1", 1, 1, NOW, b"x")
    forged = forged[:3] + key_id(OLD) + forged[11:]
    assert reason_of(open_(ring(OLD), forged, NOW, ReplayGuard())) is Reason.BAD_MAC


def test_timestamp_older_than_the_window_is_stale() -> None:
    guard = ReplayGuard(window_ns=30 * S)
    assert reason_of(open_(ring(OLD), sealed(at=NOW - 31 * S), NOW, guard)) is Reason.STALE
    assert isinstance(open_(ring(OLD), sealed(1, at=NOW - 29 * S), NOW, guard), Opened)


def test_timestamp_ahead_of_the_window_is_future() -> None:
    guard = ReplayGuard(window_ns=30 * S)
    assert reason_of(open_(ring(OLD), sealed(at=NOW + 31 * S), NOW, guard)) is Reason.FUTURE
    assert isinstance(open_(ring(OLD), sealed(1, at=NOW + 29 * S), NOW, guard), Opened)


def test_same_datagram_twice_is_replay() -> None:
    guard = ReplayGuard()
    assert isinstance(open_(ring(OLD), sealed(), NOW, guard), Opened)
    assert reason_of(open_(ring(OLD), sealed(), NOW, guard)) is Reason.REPLAY


def test_datagram_over_the_size_limit_is_oversized() -> None:
    datagram = seal(ring(OLD), "p", 1, 1, NOW, b"x" * 2000, max_bytes=4000)
    assert (
        reason_of(open_(ring(OLD), datagram, NOW, ReplayGuard(), max_bytes=1400))
        is Reason.OVERSIZED
    )


def test_rejected_datagrams_do_not_touch_the_replay_state() -> None:
    guard = ReplayGuard()
    stale = sealed(counter=9, at=NOW - 60 * S)
    assert reason_of(open_(ring(OLD), stale, NOW, guard)) is Reason.STALE
    assert len(guard) == 0


# --- the replay window ------------------------------------------------------------


def test_reordered_counters_inside_the_bitmap_are_accepted_once() -> None:
    guard = ReplayGuard(bitmap_bits=64)
    for counter in (10, 7, 9, 8, 11, 3):
        assert guard.accept("a", 1, counter), counter
    for counter in (10, 7, 9, 8, 11, 3):
        assert not guard.accept("a", 1, counter), counter


def test_counter_older_than_the_bitmap_is_rejected() -> None:
    guard = ReplayGuard(bitmap_bits=64)
    assert guard.accept("a", 1, 100)
    assert guard.accept("a", 1, 37)  # 63 behind: last slot of the bitmap
    assert not guard.accept("a", 1, 36)  # 64 behind: outside


def test_a_big_counter_jump_clears_the_bitmap() -> None:
    guard = ReplayGuard(bitmap_bits=64)
    assert guard.accept("a", 1, 5)
    assert guard.accept("a", 1, 10_000)
    assert guard.accept("a", 1, 9_990)
    assert not guard.accept("a", 1, 5)


def test_each_incarnation_has_its_own_window_and_replays_of_an_earlier_life_are_refused() -> None:
    guard = ReplayGuard()
    assert guard.accept("a", 1, 500)
    assert guard.accept("a", 2, 0)  # restarted: counter starts again
    assert guard.accept("a", 2, 1)
    assert not guard.accept("a", 1, 500)  # a capture of the earlier life
    assert not guard.accept("a", 2, 0)


def test_windows_are_per_sender() -> None:
    guard = ReplayGuard()
    assert guard.accept("a", 1, 0)
    assert guard.accept("b", 1, 0)


def test_sender_state_is_bounded_least_recently_heard_first_out() -> None:
    guard = ReplayGuard(max_senders=3)
    for sender in "abc":
        guard.accept(sender, 1, 0)
    guard.accept("a", 1, 1)  # a is now the most recent
    guard.accept("d", 1, 0)  # evicts b
    assert len(guard) == 3
    assert not guard.accept("a", 1, 0)
    assert guard.accept("b", 1, 0)  # forgotten, so accepted again (bounded memory)


# --- key rotation -------------------------------------------------------------------


def test_rotation_old_key_still_accepted_new_key_sends() -> None:
    rotated = ring(NEW, OLD)  # step 2: new key first
    not_yet = ring(OLD, NEW)  # step 1 on a node that has not moved yet
    guard = ReplayGuard()
    from_not_yet = seal(not_yet, "b", 1, 0, NOW, b"x")
    from_rotated = seal(rotated, "a", 1, 0, NOW, b"y")
    assert from_rotated[3:11] == key_id(NEW)
    assert open_(rotated, from_not_yet, NOW, guard) == Opened("b", 1, 0, NOW, b"x", key_index=1)
    assert open_(not_yet, from_rotated, NOW, guard) == Opened("a", 1, 0, NOW, b"y", key_index=1)


def test_after_rotation_a_node_with_only_the_old_key_cannot_open() -> None:
    datagram = seal(ring(NEW, OLD), "a", 1, 0, NOW, b"x")
    assert reason_of(open_(ring(OLD), datagram, NOW, ReplayGuard())) is Reason.UNKNOWN_KEY


# --- hostile input -----------------------------------------------------------------


def test_any_single_flipped_bit_is_rejected() -> None:
    datagram = seal(ring(OLD), "proxy-1", 7, 3, NOW, b"a payload")
    for bit in range(len(datagram) * 8):
        flipped = bytearray(datagram)
        flipped[bit // 8] ^= 1 << (bit % 8)
        result = open_(ring(OLD), bytes(flipped), NOW, ReplayGuard())
        assert isinstance(result, Rejected), bit
        assert result.reason in {
            Reason.BAD_MAGIC,
            Reason.TRUNCATED,
            Reason.UNKNOWN_KEY,
            Reason.BAD_MAC,
        }, bit


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_raise_and_never_open(datagram: bytes) -> None:
    assert isinstance(open_(ring(OLD), datagram, NOW, ReplayGuard()), Rejected)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 255), st.binary(max_size=120))
def test_random_bytes_behind_a_valid_prefix_never_raise_and_never_open(
    sender_len: int, rest: bytes
) -> None:
    datagram = struct.pack(">2sB8sB", MAGIC, 1, key_id(OLD), sender_len) + rest
    assert isinstance(open_(ring(OLD), datagram, NOW, ReplayGuard()), Rejected)


# --- the key file ---------------------------------------------------------------------


def test_key_file_first_key_sends_and_comments_and_blanks_are_ignored() -> None:
    text = f"# cluster keys\n\n{NEW.hex()}  # since May\n   \n{OLD.hex().upper()}\n"
    keyring = parse_keyring(text)
    assert keyring.primary == NEW
    assert len(keyring) == 2
    assert keyring.lookup(key_id(OLD)) == (1, OLD)


def test_generated_key_line_parses() -> None:
    assert len(parse_keyring(generate_key_line())) == 1


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        (f"{OLD.hex()}\n{OLD.hex()[:-1]}\n", 2, "got 63 characters"),
        (f"# c\n{'g' * 64}\n", 2, "hex digits"),
        (f"{OLD.hex()}\n\n{OLD.hex()}\n", 3, "same key as line 1"),
    ],
)
def test_key_file_errors_name_file_and_line_and_never_echo_the_key(
    text: str, line: int, fragment: str
) -> None:
    with pytest.raises(KeyFileError) as caught:
        parse_keyring(text, "/etc/xpro/cluster.key")
    message = str(caught.value)
    assert message.startswith(f"/etc/xpro/cluster.key:{line}: ")
    assert fragment in message
    assert OLD.hex()[:16] not in message.lower() and "g" * 16 not in message
    assert caught.value.line == line


def test_key_file_without_keys_is_an_error() -> None:
    with pytest.raises(KeyFileError, match=r"^k\.key: no key"):
        parse_keyring("# only a comment\n", "k.key")


def test_missing_key_file_is_a_key_file_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match=r"absent\.key: cannot read"):
        load_keyring(tmp_path / "absent.key")


def test_binary_key_file_is_a_key_file_error(tmp_path: Path) -> None:
    path = tmp_path / "bin.key"
    path.write_bytes(b"\xff\xfe" * 40)
    path.chmod(0o600)
    with pytest.raises(KeyFileError, match=r"bin\.key: not an ASCII"):
        load_keyring(path)


def test_load_keyring_reads_a_file(tmp_path: Path) -> None:
    path = tmp_path / "cluster.key"
    path.write_text(OLD.hex() + "\n")
    path.chmod(0o600)
    assert load_keyring(path).primary == OLD


def test_keyring_repr_shows_key_ids_not_keys() -> None:
    text = repr(ring(OLD, NEW))
    assert key_id(OLD).hex() in text
    assert OLD.hex()[:16] not in text and NEW.hex()[:16] not in text


def test_keyring_refuses_wrong_key_lengths_and_emptiness() -> None:
    with pytest.raises(ValueError):
        Keyring([])
    with pytest.raises(ValueError):
        Keyring([b"short"])
