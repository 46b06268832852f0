"""Specifications of the broadcast queue (memberlist's TransmitLimitedQueue)."""

from __future__ import annotations

import pytest

from xpro_mesh.mesh.broadcast import TransmitLimitedQueue, retransmit_limit


def test_retransmit_limit_is_mult_times_ceil_log10_n_plus_one() -> None:
    assert retransmit_limit(4, 1) == 4
    assert retransmit_limit(4, 9) == 4
    assert retransmit_limit(4, 10) == 8
    assert retransmit_limit(4, 99) == 8
    assert retransmit_limit(4, 100) == 12
    assert retransmit_limit(4, 0) == 1  # never zero: a lone node still announces itself


def test_each_update_is_sent_exactly_the_limit_then_dropped() -> None:
    queue: TransmitLimitedQueue[str, str] = TransmitLimitedQueue(retransmit_mult=2)
    queue.enqueue("a", "alive a")
    sent = [queue.take(10, num_nodes=5) for _ in range(4)]
    assert sent == [["alive a"], ["alive a"], [], []]
    assert len(queue) == 0


def test_newer_update_about_the_same_subject_replaces_the_older() -> None:
    queue: TransmitLimitedQueue[str, str] = TransmitLimitedQueue(retransmit_mult=3)
    queue.enqueue("a", "suspect a@1")
    queue.take(1, num_nodes=5)
    queue.enqueue("a", "alive a@2")
    assert len(queue) == 1
    assert [queue.take(5, 5) for _ in range(4)] == [["alive a@2"]] * 3 + [[]]


def test_least_sent_first_and_newest_first_among_equals() -> None:
    queue: TransmitLimitedQueue[str, str] = TransmitLimitedQueue(retransmit_mult=4)
    queue.enqueue("a", "a")
    queue.enqueue("b", "b")
    assert queue.take(1, 5) == ["b"]
    queue.enqueue("c", "c")
    assert queue.take(2, 5) == ["c", "a"]
    assert queue.pending() == ["c", "b", "a"]  # pending() does not count a transmission


def test_full_queue_drops_the_most_sent_entry() -> None:
    queue: TransmitLimitedQueue[str, str] = TransmitLimitedQueue(retransmit_mult=9, max_entries=2)
    queue.enqueue("a", "a")
    queue.take(1, 5)
    queue.enqueue("b", "b")
    queue.enqueue("c", "c")
    assert sorted(queue.pending()) == ["b", "c"]


def test_take_of_nothing_or_zero_items_is_empty() -> None:
    queue: TransmitLimitedQueue[str, str] = TransmitLimitedQueue(retransmit_mult=1)
    assert queue.take(3, 5) == []
    queue.enqueue("a", "a")
    assert queue.take(0, 5) == []
    assert len(queue) == 1


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        TransmitLimitedQueue(retransmit_mult=0)
