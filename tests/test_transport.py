"""Specifications of the transport seam: the in-memory twin and real UDP."""

from __future__ import annotations

import asyncio
import random

import pytest

from xpro_mesh.mesh.transport import (
    Address,
    ManualScheduler,
    MemoryNetwork,
    MemoryTransport,
    Transport,
    UdpTransport,
)

A: Address = ("10.0.0.1", 7946)
B: Address = ("10.0.0.2", 7946)
C: Address = ("10.0.0.3", 7946)


class Inbox:
    def __init__(self) -> None:
        self.got: list[tuple[bytes, Address]] = []

    def __call__(self, data: bytes, addr: Address) -> None:
        self.got.append((data, addr))

    @property
    def payloads(self) -> list[bytes]:
        return [d for d, _ in self.got]


def pair(**faults: object) -> tuple[MemoryNetwork, ManualScheduler, MemoryTransport, Inbox]:
    clock = ManualScheduler()
    net = MemoryNetwork(rng=random.Random(1), scheduler=clock, **faults)  # type: ignore[arg-type]
    inbox = Inbox()
    net.attach(B, inbox)
    return net, clock, net.attach(A, Inbox()), inbox


# --- the in-memory network ------------------------------------------------------


def test_memory_transport_is_a_transport() -> None:
    _, _, sender, _ = pair()
    transport: Transport = sender
    assert transport.local_addr == A and transport.max_datagram == 60_000


def test_datagram_arrives_with_its_source_address_after_the_latency_never_inside_send() -> None:
    _, clock, a, inbox = pair(latency_s=0.010)
    assert a.send(b"hello", B)
    assert inbox.got == []
    clock.advance(0.009)
    assert inbox.got == []
    clock.advance(0.001)
    assert inbox.got == [(b"hello", A)]
    assert a.stats.sent == 1 and a.stats.sent_bytes == 5


def test_loss_drops_and_counts() -> None:
    net, clock, a, inbox = pair(loss=0.3)
    for i in range(1000):
        a.send(b"%d" % i, B)
    clock.advance(1)
    assert len(inbox.got) + net.stats.lost == 1000
    assert 200 < net.stats.lost < 400


def test_duplication_delivers_twice() -> None:
    net, clock, a, inbox = pair(duplicate=1.0)
    a.send(b"x", B)
    clock.advance(1)
    assert inbox.payloads == [b"x", b"x"] and net.stats.duplicated == 1


def test_reordering_lets_later_datagrams_overtake() -> None:
    net, clock, a, inbox = pair(reorder=0.3, latency_s=0.001)
    sent = [b"%03d" % i for i in range(100)]
    for datagram in sent:
        a.send(datagram, B)
    clock.advance(1)
    assert sorted(inbox.payloads) == sent
    assert inbox.payloads != sent and net.stats.reordered > 0


def test_same_seed_same_faults() -> None:
    def run() -> list[bytes]:
        _, clock, a, inbox = pair(loss=0.2, duplicate=0.2, reorder=0.2, jitter_s=0.01)
        for i in range(200):
            a.send(b"%d" % i, B)
        clock.advance(1)
        return inbox.payloads

    assert run() == run()


def test_oversized_datagram_is_refused_and_counted() -> None:
    _, clock, a, inbox = pair(max_datagram=1400)
    assert not a.send(b"x" * 1401, B)
    assert a.send(b"x" * 1400, B)
    clock.advance(1)
    assert a.stats.oversized_sent == 1 and len(inbox.got) == 1


def test_nobody_at_the_address_is_undeliverable_not_an_error() -> None:
    net, clock, a, _ = pair()
    assert a.send(b"x", C)
    clock.advance(1)
    assert net.stats.undeliverable == 1


def test_closed_transport_neither_sends_nor_receives_and_frees_its_address() -> None:
    net, clock, a, _ = pair()
    inbox_c = Inbox()
    c = net.attach(C, inbox_c)
    a.send(b"in flight", C)
    c.close()
    assert not c.send(b"x", A) and c.stats.dropped_closed == 1
    clock.advance(1)
    assert inbox_c.got == [] and net.stats.undeliverable == 1
    net.attach(C, Inbox())  # the address is free again


def test_address_in_use_is_refused_and_port_zero_picks_a_free_one() -> None:
    net, _, _, _ = pair()
    with pytest.raises(OSError):
        net.attach(A, Inbox())
    first, second = net.attach(("h", 0), Inbox()), net.attach(("h", 0), Inbox())
    assert first.local_addr != second.local_addr and first.local_addr[1] > 0


def test_partition_blocks_both_ways_until_healed() -> None:
    net, clock, a, inbox_b = pair()
    inbox_a = Inbox()
    a2 = net.attach(C, inbox_a)
    net.partition([B], [A, C])
    a.send(b"1", B)
    b = net._endpoints[B]
    b.send(b"2", C)
    clock.advance(1)
    assert inbox_b.got == [] and inbox_a.got == [] and net.stats.blocked == 2
    net.heal()
    a.send(b"3", B)
    clock.advance(1)
    assert inbox_b.payloads == [b"3"]
    a2.close()


def test_a_failing_handler_is_counted_and_the_next_datagram_still_arrives() -> None:
    clock = ManualScheduler()
    net = MemoryNetwork(scheduler=clock)
    calls: list[bytes] = []

    def handler(data: bytes, addr: Address) -> None:
        calls.append(data)
        if data == b"bad":
            raise RuntimeError("bug in the handler")

    net.attach(B, handler)
    a = net.attach(A, Inbox())
    a.send(b"bad", B)
    a.send(b"good", B)
    clock.advance(1)
    assert calls == [b"bad", b"good"]
    assert net._endpoints[B].stats.handler_errors == 1


async def test_memory_network_uses_the_running_loop_by_default() -> None:
    net = MemoryNetwork(latency_s=0.001)
    arrived = asyncio.Event()
    net.attach(B, lambda data, addr: arrived.set())
    net.attach(A, Inbox()).send(b"x", B)
    await asyncio.wait_for(arrived.wait(), 1)


# --- real UDP on loopback ---------------------------------------------------------


async def test_udp_loopback_round_trip_limits_and_errors_counted() -> None:
    queue_a: asyncio.Queue[tuple[bytes, Address]] = asyncio.Queue()
    queue_b: asyncio.Queue[tuple[bytes, Address]] = asyncio.Queue()
    a = await UdpTransport.open(("127.0.0.1", 0), lambda d, s: queue_a.put_nowait((d, s)))
    b = await UdpTransport.open(
        ("127.0.0.1", 0), lambda d, s: queue_b.put_nowait((d, s)), max_datagram=1000
    )
    try:
        transport: Transport = a
        assert transport.local_addr[1] > 0
        assert a.send(b"ping", b.local_addr)
        assert await asyncio.wait_for(queue_b.get(), 2) == (b"ping", a.local_addr)
        assert b.send(b"ack", a.local_addr)
        assert await asyncio.wait_for(queue_a.get(), 2) == (b"ack", b.local_addr)

        assert not b.send(b"x" * 1001, a.local_addr)  # refused on the way out
        assert b.stats.oversized_sent == 1
        big = b"y" * 50_000
        assert a.send(big, b.local_addr)  # fine for a, too big for b
        assert b.send(b"marker", b.local_addr)
        assert await asyncio.wait_for(queue_b.get(), 2) == (b"marker", b.local_addr)
        assert b.stats.oversized_received == 1 and b.stats.received == 2

        assert not a.send(b"x" * 70_000, b.local_addr)
        assert a.send(b"to nobody", ("127.0.0.1", 9))  # never raises
        await asyncio.sleep(0.01)
    finally:
        a.close()
        b.close()
    assert not a.send(b"late", b.local_addr) and a.stats.dropped_closed == 1


async def test_udp_refuses_a_limit_above_what_udp_can_carry() -> None:
    with pytest.raises(ValueError):
        await UdpTransport.open(("127.0.0.1", 0), lambda d, s: None, max_datagram=70_000)
