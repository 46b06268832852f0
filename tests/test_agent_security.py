"""Hostile datagrams at a running agent: each is dropped unread, counted by
reason in ``/v1/status`` ("rejected") and in ``/metrics``
(``xpro_messages_rejected``), and the agent keeps gossiping.

Two real agents in this process (real UDP sockets on 127.0.0.1, the HTTP
API, the map-sync loop over the in-memory data path); the attacker is a raw
UDP socket. Datagrams that must pass the envelope are sealed with
:mod:`xpro_mesh.mesh.auth` as a key holder would.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from agent_support import counts, eventually, feed, gossip_addr, start_agent, stop_agent
from prometheus_client.parser import text_string_to_metric_families

from xpro_mesh.agent.daemon import Agent
from xpro_mesh.core.rows import ColumnarDelta
from xpro_mesh.mesh import auth, wire
from xpro_mesh.mesh.membership import MemberState, MemberUpdate
from xpro_mesh.mesh.messages import Ping

pytestmark = pytest.mark.timeout(60)

DST = "10.9.0.1"
S = 10**9


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "cluster.key"
    path.write_text(auth.generate_key_line() + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def attacker() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    try:
        yield sock
    finally:
        sock.close()


async def api_get(agent: Agent, path: str) -> tuple[int, str]:
    assert agent.api is not None
    host, port = agent.api.address
    async with aiohttp.ClientSession() as http, http.get(f"http://{host}:{port}{path}") as resp:
        return resp.status, await resp.text()


def rejected_in_metrics(text: str) -> dict[str, float]:
    for family in text_string_to_metric_families(text):
        if family.name == "xpro_messages_rejected":
            return {s.labels["reason"]: s.value for s in family.samples}
    return {}


def received(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(65_535))
        except BlockingIOError:
            return out


async def test_forged_malformed_oversized_and_replayed_datagrams_are_counted_and_dropped(
    key_file: Path, attacker: socket.socket
) -> None:
    target = await start_agent("target", key_file)
    peer = await start_agent("peer", key_file, [gossip_addr(target)])
    try:
        await eventually(
            lambda: target.node is not None and target.node.membership.num_live() == 2,
            10,
            "the two agents to meet",
        )
        to = gossip_addr(target)
        keyring = auth.load_keyring(key_file)
        outsider = auth.Keyring([bytes(range(32))])
        now = time.time_ns()
        me = attacker.getsockname()
        ping = wire.encode(Ping(7, "target", MemberUpdate("replayer", me, 1, MemberState.ALIVE)))

        def sealed(
            payload: bytes, *, ring: auth.Keyring = keyring, counter: int = 0, at: int = now
        ) -> bytes:
            return auth.seal(
                ring, "replayer", 1, counter, at, payload, recipient_id="target", max_bytes=65_507
            )

        genuine = sealed(ping)  # a real datagram, as captured on the wire
        tampered = bytearray(sealed(ping, counter=1))
        tampered[-40] ^= 0x01  # one payload bit flipped under a valid key id
        cases: list[tuple[str, bytes]] = [
            ("unknown_key", sealed(ping, ring=outsider, counter=2)),
            ("bad_mac", bytes(tampered)),
            ("bad_magic", b"\x00garbage, not an envelope" * 3),
            ("truncated", genuine[:20]),
            ("malformed", sealed(b"\xc1 not msgpack at all", counter=3)),
            ("malformed", sealed(wire.encode(ColumnarDelta())[:-1] + b"\xc1", counter=4)),
            ("oversized", sealed(b"\x00" * 61_000, counter=5)),
            ("stale", sealed(ping, counter=6, at=now - 60 * S)),
        ]
        attacker.sendto(genuine, to)
        await eventually(lambda: bool(received(attacker)), 5, "the agent's ack to the ping")
        attacker.sendto(genuine, to)  # the same datagram again: a replay
        for _reason, datagram in cases:
            attacker.sendto(datagram, to)

        want: dict[str, int] = {"replay": 1}
        for reason, _ in cases:
            want[reason] = want.get(reason, 0) + 1
        assert target.node is not None
        node = target.node
        await eventually(
            lambda: all(node.counters.rejected[r] >= n for r, n in want.items()),
            5,
            f"rejections {want}",
        )
        assert received(attacker) == []  # the replayed ping got no second ack

        status_code, body = await api_get(target, "/v1/status")
        assert status_code == 200
        status = json.loads(body)
        for reason, n in want.items():
            assert status["rejected"].get(reason) == n, (reason, status["rejected"])
        _, metrics = await api_get(target, "/metrics")
        from_metrics = rejected_in_metrics(metrics)
        for reason, n in want.items():
            assert from_metrics.get(reason) == n, (reason, from_metrics)

        # Still working: it answers, and counts fed on the peer reach it exactly.
        assert (await api_get(target, "/healthz"))[0] == 200
        feed(peer.backend, "10.1.0.1", DST, 17)  # type: ignore[arg-type]
        feed(target.backend, "10.1.0.1", DST, 4)  # type: ignore[arg-type]
        want_counts = {("10.1.0.1", DST): 21}
        await eventually(lambda: counts(target) == want_counts == counts(peer), 10, "convergence")
    finally:
        await stop_agent(peer)
        await stop_agent(target)
