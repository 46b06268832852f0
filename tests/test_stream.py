"""Specification of the stream transport on real loopback sockets: frames
arrive whole and in order, every bound is enforced and counted, nothing
raises into the event loop."""

from __future__ import annotations

import asyncio
import random
import struct
import time

from xpro_mesh.agent.config import local_gossip
from xpro_mesh.core.algorithm import Params
from xpro_mesh.core.gossip_state import GossipState, LocalCount, MergeLimits
from xpro_mesh.mesh import auth
from xpro_mesh.mesh.membership import Membership
from xpro_mesh.mesh.node import MeshNode, NodeTiming
from xpro_mesh.mesh.state import GossipStateAdapter
from xpro_mesh.mesh.stream import StreamLimits, TcpStreamTransport
from xpro_mesh.mesh.transport import Address, UdpTransport

LOOPBACK: Address = ("127.0.0.1", 0)


async def settle(predicate: object, rounds: int = 500) -> None:
    assert callable(predicate)
    for _ in range(rounds):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


async def test_frames_arrive_whole_and_in_order() -> None:
    got: list[bytes] = []
    rx = await TcpStreamTransport.open(LOOPBACK, lambda f, _p: got.append(f))
    tx = await TcpStreamTransport.open(LOOPBACK, lambda f, _p: None)
    frames = [bytes([i]) * (1 << 20) for i in range(4)] + [b"end"]
    try:
        assert tx.send(rx.local_addr, frames)
        assert tx.sending_to(rx.local_addr)
        assert not tx.send(rx.local_addr, [b"again"])  # one send per peer at a time
        await settle(lambda: len(got) == 5)
        assert got == frames
        await settle(lambda: not tx.sending_to(rx.local_addr))
        assert tx.stats.streams_sent == 1 and tx.stats.frames_sent == 5
        assert tx.stats.rejected["busy"] == 1
        assert rx.stats.bytes_received == sum(map(len, frames))
    finally:
        await tx.close()
        await rx.close()


async def raw_connection(addr: Address, data: bytes) -> None:
    _reader, writer = await asyncio.open_connection(*addr)
    writer.write(data)
    await writer.drain()
    writer.close()


async def test_an_oversized_frame_ends_the_stream_and_is_counted() -> None:
    got: list[bytes] = []
    rx = await TcpStreamTransport.open(
        LOOPBACK, lambda f, _p: got.append(f), StreamLimits(max_frame_bytes=1024)
    )
    try:
        await raw_connection(rx.local_addr, struct.pack(">I", 1025) + b"x" * 1025)
        await settle(lambda: rx.stats.rejected["oversized_frame"] == 1)
        await raw_connection(rx.local_addr, struct.pack(">I", 0))
        await settle(lambda: rx.stats.rejected["oversized_frame"] == 2)
        assert got == []
    finally:
        await rx.close()


async def test_a_stream_longer_than_its_bound_is_cut() -> None:
    got: list[bytes] = []
    rx = await TcpStreamTransport.open(
        LOOPBACK,
        lambda f, _p: got.append(f),
        StreamLimits(max_frame_bytes=100, max_stream_bytes=250),
    )
    try:
        frame = struct.pack(">I", 100) + b"y" * 100
        await raw_connection(rx.local_addr, frame * 3)
        await settle(lambda: rx.stats.rejected["stream_too_long"] == 1)
        assert len(got) == 2
    finally:
        await rx.close()


async def test_a_silent_or_truncated_peer_times_out_or_is_counted() -> None:
    rx = await TcpStreamTransport.open(LOOPBACK, lambda f, _p: None, StreamLimits(io_timeout_s=0.2))
    try:
        _reader, writer = await asyncio.open_connection(*rx.local_addr)
        writer.write(b"\x00\x00")  # half a length, then nothing
        await writer.drain()
        await settle(lambda: rx.stats.rejected["timeout"] == 1)
        writer.close()
        await raw_connection(rx.local_addr, struct.pack(">I", 10) + b"abc")
        await settle(lambda: rx.stats.rejected["truncated"] == 1)
    finally:
        await rx.close()


async def test_inbound_streams_beyond_the_limit_are_refused() -> None:
    rx = await TcpStreamTransport.open(
        LOOPBACK, lambda f, _p: None, StreamLimits(max_streams=2, io_timeout_s=2.0)
    )
    writers = []
    try:
        for _ in range(3):
            _reader, writer = await asyncio.open_connection(*rx.local_addr)
            writers.append(writer)
        await settle(lambda: rx.stats.rejected["too_many_streams"] == 1)
        assert rx.stats.streams_received == 2
    finally:
        for w in writers:
            w.close()
        await rx.close()


async def test_a_send_to_nobody_fails_quietly_and_is_counted() -> None:
    tx = await TcpStreamTransport.open(LOOPBACK, lambda f, _p: None)
    probe = await TcpStreamTransport.open(LOOPBACK, lambda f, _p: None)
    closed = probe.local_addr
    await probe.close()
    try:
        assert tx.send(closed, [b"rows"])
        await settle(lambda: tx.stats.rejected["send_failed"] == 1)
        assert not tx.send(closed, [b"x" * (tx.limits.max_frame_bytes + 1)])
        assert tx.stats.rejected["oversized_out"] == 1
    finally:
        await tx.close()


async def test_two_nodes_on_real_sockets_move_a_large_delta_over_tcp() -> None:
    s = 10**9
    params = Params(t_t1=5 * s, t_t2=s, t_t3=s, t_t4=60 * s, t_f1=100, t_f2=1000, r=2)
    keyring = auth.Keyring([bytes(range(32))])
    cfg = local_gossip()
    tables: list[GossipState] = []
    nodes: list[MeshNode] = []
    closers: list[tuple[UdpTransport, TcpStreamTransport]] = []
    for i in range(2):
        table = GossipState(f"t{i}", 1, params)

        def udp_rx(d: bytes, a: Address, box: list[MeshNode] = nodes, i: int = i) -> None:
            if len(box) > i:
                box[i].receive(d, a)

        def tcp_rx(f: bytes, a: Address, box: list[MeshNode] = nodes, i: int = i) -> None:
            if len(box) > i:
                box[i].receive_frame(f, a)

        udp = await UdpTransport.open(LOOPBACK, udp_rx)
        tcp = await TcpStreamTransport.open(udp.local_addr, tcp_rx)
        membership = Membership(
            f"t{i}",
            udp.local_addr,
            incarnation=1,
            now_ns=time.monotonic_ns(),
            rng=random.Random(i),
            params=cfg.membership_params(),
        )
        node = MeshNode(
            state=GossipStateAdapter(table),
            membership=membership,
            keyring=keyring,
            timing=NodeTiming(interval_ns=cfg.interval_ns, max_message_bytes=1_400),
            limits=MergeLimits(),
            rng=random.Random(i + 10),
        )
        node.attach(udp, tcp)
        tables.append(table)
        nodes.append(node)
        closers.append((udp, tcp))
    now = time.time_ns()
    dst = b"\x00" * 10 + b"\xff\xff" + bytes([10, 20, 0, 2])
    for k in range(5_000):
        src = b"\x00" * 10 + b"\xff\xff" + bytes([44, 1]) + k.to_bytes(2, "big")
        tables[0].record_local((src, dst), LocalCount(now, now + k, dc=1, mark=0))
    stop = asyncio.Event()
    nodes[1].join([nodes[0].membership.addr])
    tasks = [asyncio.create_task(n.run(stop)) for n in nodes]
    try:
        await settle(lambda: len(tables[1].pair_views()) == 5_000, 1_000)
        assert nodes[0].counters.streams_sent >= 1
        assert closers[1][1].stats.frames_received >= 1
    finally:
        stop.set()
        await asyncio.gather(*tasks)
        for udp, tcp in closers:
            udp.close()
            await tcp.close()
