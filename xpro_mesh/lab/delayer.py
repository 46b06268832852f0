"""netem's delay in userspace, for a kernel built without sch_netem (this
VM's): iptables (``NFQUEUE --queue-bypass``) in a proxy's namespace queues
the gossip packets from it to its peers, and this process, run inside that
namespace, holds each one for a uniform ``mean +- jitter`` ms (a seeded
draw) and then accepts it.

One thread, one timer heap: a packet is released when its own time is due,
whatever came before it (netem's jitter reorders too), never by a sleep per
packet. ``--queue-bypass`` lets packets through unqueued while nothing
listens on the queue, so a dead or stopped delayer blackholes nothing; on
SIGTERM the held packets are accepted at once.

    python -m xpro_mesh.lab.delayer --netns /var/run/netns/xl-p0 --queue 13

The rules: :func:`queue_rules`; the process's owner:
:class:`xpro_mesh.lab.faults.Network`."""

from __future__ import annotations

import argparse
import heapq
import random
import select
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["DELAY_MS", "JITTER_MS", "QUEUE_NUM", "DelayPath", "Delayer", "queue_rules"]

QUEUE_NUM = 13  # the NFQUEUE in each proxy's namespace (queues are per namespace)
DELAY_MS, JITTER_MS = 50.0, 20.0  # NETEM's "delay 50ms 20ms", uniform over [30, 70] ms
IPT_CHAIN = "XL_DELAY"  # the rules' own chain in the mangle table (its OUTPUT jumps to it)


def queue_rules(own: str, peers: list[str], port: int, queue: int = QUEUE_NUM) -> str:
    """The ``iptables-restore --noflush`` script (iptables-nft) that queues
    to ``queue`` the packets from ``own`` to each of ``peers`` to or from
    ``port`` (UDP and TCP: the gossip and its stream), with
    ``--queue-bypass``, in the lab's own chain :data:`IPT_CHAIN`, jumped to
    from the mangle table's OUTPUT (priority -150), so they are delayed
    before nftables' loss and duplication (priority 0) see them. One script,
    applied at once. The kernel has no nft ``queue`` expression
    (CONFIG_NFT_QUEUE unset), only xt's NFQUEUE target."""
    lines = ["*mangle", f":{IPT_CHAIN} - [0:0]", f"-A OUTPUT -j {IPT_CHAIN}"]
    for peer in peers:
        for proto in ("udp", "tcp"):
            lines.append(
                f"-A {IPT_CHAIN} -s {own} -d {peer} -p {proto} -m multiport --ports {port}"
                f" -j NFQUEUE --queue-num {queue} --queue-bypass"
            )
    return "\n".join([*lines, "COMMIT", ""])


def unqueue_rules() -> str:
    """The ``iptables-restore --noflush`` script that undoes
    :func:`queue_rules` (it fails, changing nothing, where there is
    nothing to undo)."""
    undo = [f":{IPT_CHAIN} - [0:0]", f"-D OUTPUT -j {IPT_CHAIN}", f"-X {IPT_CHAIN}"]
    return "\n".join(["*mangle", *undo, "COMMIT", ""])


@dataclass
class Delayer:
    """The timer heap: :meth:`hold` a packet, :meth:`release` what is due.
    Sans-IO (time passed in), so a test drives it without a queue."""

    delay_ms: float = DELAY_MS
    jitter_ms: float = JITTER_MS
    seed: int = 0
    held: list[tuple[float, int, Any]] = field(default_factory=list)
    _rng: random.Random = field(init=False)
    _seq: int = 0

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def draw_s(self) -> float:
        lo = max(0.0, self.delay_ms - self.jitter_ms)
        return self._rng.uniform(lo, self.delay_ms + self.jitter_ms) / 1000.0

    def hold(self, packet: Any, now: float) -> float:
        """Hold ``packet`` until ``now`` plus a draw; returns when it is due."""
        due = now + self.draw_s()
        self._seq += 1
        heapq.heappush(self.held, (due, self._seq, packet))
        return due

    def release(self, now: float) -> list[Any]:
        """The packets due by ``now``, earliest first (removed from the heap)."""
        out = []
        while self.held and self.held[0][0] <= now:
            out.append(heapq.heappop(self.held)[2])
        return out

    def drain(self) -> list[Any]:
        out = [p for _, _, p in sorted(self.held)]
        self.held.clear()
        return out

    def next_due(self) -> float | None:
        return self.held[0][0] if self.held else None


def serve(queue: int, delayer: Delayer, ready: Any = None) -> int:
    """Bind ``queue`` in the current namespace and delay its packets until
    SIGTERM or SIGINT; then accept what is held. Returns packets delayed."""
    from xpro_mesh.extras import need

    nfqueue = need("netfilterqueue", "the lab's delay on the gossip path")
    COPY_META, NetfilterQueue = nfqueue.COPY_META, nfqueue.NetfilterQueue

    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    count = 0

    def _queued(pkt: Any) -> None:
        nonlocal count
        count += 1
        delayer.hold(pkt, time.monotonic())

    nfq = NetfilterQueue()
    nfq.bind(queue, _queued, max_len=8192, mode=COPY_META)
    try:
        fd = nfq.get_fd()
        if ready is not None:
            ready()
        while not stop:
            due = delayer.next_due()
            timeout = 0.2 if due is None else max(0.0, due - time.monotonic())
            try:
                readable, _, _ = select.select([fd], [], [], timeout)
            except InterruptedError:
                continue
            if readable:
                nfq.run(block=False)
            for pkt in delayer.release(time.monotonic()):
                pkt.accept()
        for pkt in delayer.drain():
            pkt.accept()
    finally:
        nfq.unbind()
    return count


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m xpro_mesh.lab.delayer", description=__doc__)
    ap.add_argument("--netns", help="network namespace file to run in (default: this one)")
    ap.add_argument("--queue", type=int, default=QUEUE_NUM)
    ap.add_argument("--delay-ms", type=float, default=DELAY_MS)
    ap.add_argument("--jitter-ms", type=float, default=JITTER_MS)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.netns:
        from xpro_mesh.lab.origins import enter_netns

        err = enter_netns(args.netns)
        if err is not None:
            print(f"delayer: {args.netns}: {err}", file=sys.stderr)
            return 1
    delayer = Delayer(args.delay_ms, args.jitter_ms, args.seed)

    def _ready() -> None:
        print("ready", flush=True)

    count = serve(args.queue, delayer, _ready)
    print(f"delayed {count} packets", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())


@dataclass
class DelayPath:
    """One namespace's delay: its delayer process (started first, so the
    queue has a listener before anything is queued) and its rules. Owned by
    :class:`xpro_mesh.lab.faults.Network`, which stops it at ``netem off``
    and when the run ends; ``lab down`` kills a leftover one with the rest
    of the namespace's processes (and removes the namespace, rules and all)."""

    netns: str  # the namespace file, /var/run/netns/xl-p0
    own: str
    peers: list[str]
    port: int
    seed: int = 0
    queue: int = QUEUE_NUM
    proc: Any = None

    def launch(self) -> None:
        """Start the delayer process (:meth:`start` waits for it): the
        owner launches every namespace's at once, then waits."""
        import subprocess

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "xpro_mesh.lab.delayer", "--netns", self.netns, *self._args()],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def start(self, timeout_s: float = 10.0) -> None:
        """The delayer listening on its queue, then the rules."""
        if self.proc is None:
            self.launch()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        line = self.proc.stdout.readline() if ready else ""
        if line.strip() != "ready":
            self.proc.kill()
            err = self.proc.communicate(timeout=5)[1]
            raise RuntimeError(f"delayer in {self.netns} did not start: {err.strip()[-300:]}")
        self._restore(queue_rules(self.own, self.peers, self.port, self.queue), check=True)

    def _args(self) -> list[str]:
        return ["--queue", str(self.queue), "--seed", str(self.seed)]

    def signal_stop(self) -> None:
        """Rules out, SIGTERM to the delayer (it accepts what it holds);
        :meth:`stop` also waits for it."""
        self._restore(unqueue_rules(), check=False)
        if self.proc is not None:
            self.proc.terminate()

    def stop(self) -> None:
        self.signal_stop()
        if self.proc is not None:
            try:
                self.proc.communicate(timeout=5)
            except Exception:
                self.proc.kill()
                self.proc.communicate()
            self.proc = None

    def _restore(self, script: str, check: bool) -> None:
        import subprocess

        done = subprocess.run(
            ["nsenter", f"--net={self.netns}", "iptables-restore", "-w", "--noflush"],
            input=script,
            capture_output=True,
            text=True,
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"iptables-restore in {self.netns}: {done.stderr.strip()[:200]}")
