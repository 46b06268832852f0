"""The lab's delay on the gossip path where the kernel has no sch_netem: a
real NFQUEUE in a real namespace, the delayer holding each queued packet
for its seeded draw of netem's ``delay 50ms 20ms``, and packets passing
(not lost) once the delayer is gone (``--queue-bypass``).

Pings go one at a time, so ping ``i`` is the ``i``-th packet queued and
gets the delayer's ``i``-th draw: each round trip can be checked against
its own draw."""

from __future__ import annotations

import socket
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from xpro_mesh.lab.delayer import DELAY_MS, IPT_CHAIN, JITTER_MS, Delayer, DelayPath
from xpro_mesh.lab.origins import enter_netns

pytestmark = pytest.mark.netns

NETNS = Path("/var/run/netns")
PORT = 7946
A, B = "10.97.0.1", "10.97.0.2"
PINGS = 120
SEED = 7


def _ip(ns: str, *argv: str) -> None:
    subprocess.run(["ip", "-n", ns, *argv], check=True, capture_output=True)


@pytest.fixture
def pair(netns: Callable[[str], str]) -> Iterator[tuple[str, str]]:
    """Namespaces a (10.97.0.1) and b (10.97.0.2) on one veth; b echoes UDP on PORT."""
    a, b = netns("xpd-a"), netns("xpd-b")
    subprocess.run(
        ["ip", "link", "add", "s0", "netns", a, "type", "veth", "peer", "s0", "netns", b],
        check=True,
    )
    for ns, addr in ((a, A), (b, B)):
        _ip(ns, "addr", "add", f"{addr}/24", "dev", "s0")
        _ip(ns, "link", "set", "s0", "up")
        _ip(ns, "link", "set", "lo", "up")
    stop = threading.Event()
    bound = threading.Event()

    def echo() -> None:
        assert enter_netns(str(NETNS / b)) is None
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((B, PORT))
            s.settimeout(0.1)
            bound.set()
            while not stop.is_set():
                try:
                    data, peer = s.recvfrom(2048)
                except TimeoutError:
                    continue
                s.sendto(data, peer)

    t = threading.Thread(target=echo, daemon=True)
    t.start()
    assert bound.wait(5)
    try:
        yield a, b
    finally:
        stop.set()
        t.join(2)


def _pings(ns: str, n: int, timeout_s: float = 2.0) -> list[float | None]:
    """``n`` UDP round trips from a's PORT to b's PORT, one at a time: each
    one's seconds, or None where no answer came."""
    out: list[float | None] = []

    def run() -> None:
        assert enter_netns(str(NETNS / ns)) is None
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((A, PORT))
            s.settimeout(timeout_s)
            for i in range(n):
                sent = time.monotonic()
                s.sendto(i.to_bytes(4, "big"), (B, PORT))
                try:
                    while int.from_bytes(s.recv(64), "big") != i:
                        pass
                    out.append(time.monotonic() - sent)
                except TimeoutError:
                    out.append(None)

    t = threading.Thread(target=run)
    t.start()
    t.join()
    return out


def _rules(ns: str) -> str:
    done = subprocess.run(
        ["nsenter", f"--net={NETNS / ns}", "iptables", "-t", "mangle", "-S"],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def test_each_gossip_packet_waits_its_draw_of_delay_50ms_20ms(pair: tuple[str, str]) -> None:
    a, _ = pair
    base = _pings(a, PINGS)
    path = DelayPath(str(NETNS / a), A, [B], PORT, seed=SEED)
    path.start()
    try:
        delayed = _pings(a, PINGS)
    finally:
        path.stop()
    draws = Delayer(DELAY_MS, JITTER_MS, SEED)
    want = [draws.draw_s() for _ in range(PINGS)]

    assert None not in base and None not in delayed
    rtts = [r for r in delayed if r is not None]
    # never released before its own draw (the draw is within [30, 70] ms)
    assert all(rtt >= draw for rtt, draw in zip(rtts, want, strict=True))
    assert all((DELAY_MS - JITTER_MS) / 1e3 <= d <= (DELAY_MS + JITTER_MS) / 1e3 for d in want)
    # and held for that draw, not some other: the typical packet's excess
    # over its own draw is small beside the draws' spread (11.5 ms). The
    # median, since a loaded host delays some wake-ups by tens of ms
    # (measured at load 10 with the lab running: median excess 0.4-0.8 ms,
    # single excesses up to 200 ms).
    excess = [rtt - draw for rtt, draw in zip(rtts, want, strict=True)]
    assert statistics.median(excess) <= statistics.stdev(want) / 2


def test_packets_pass_when_the_delayer_is_gone_and_stop_removes_the_rules(
    pair: tuple[str, str],
) -> None:
    a, _ = pair
    path = DelayPath(str(NETNS / a), A, [B], PORT, seed=SEED)
    path.start()
    assert f"-A {IPT_CHAIN} -s {A}/32 -d {B}/32 -p udp" in _rules(a)
    assert path.proc is not None
    path.proc.kill()  # a crashed delayer: its rules stay, nothing listens on the queue
    path.proc.wait()
    try:
        assert IPT_CHAIN in _rules(a)
        answered = _pings(a, 20, timeout_s=1.0)
        assert None not in answered  # --queue-bypass: not blackholed
    finally:
        path.stop()
    assert IPT_CHAIN not in _rules(a)
