"""The mesh-wide configuration document, end to end through real kernels:
three agents (real processes, gossip on loopback) each with the XDP filter
attached to its own veth, real UDP packets from a client namespace.

One ``PUT /v1/config`` on one agent (monitor + an allow-list) reaches
every node's live policy maps by gossip and changes the fate of real
packets on every veth: an over-threshold source that is allow-listed is
delivered and never counted, an over-threshold source that is not is
delivered too (monitor) and counted as a would-be drop. A second document
from another agent (enforce) drops the latter again, everywhere, while
the allow-listed source keeps passing."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pyroute2 import NetNS
from pyroute2 import netns as pyroute2_netns

from xpro_mesh.cli.xdp import stats_report
from xpro_mesh.datapath import loader
from xpro_mesh.datapath.bpf_maps import BpfMaps
from xpro_mesh.datapath.policy import Action, PolicyMaps, PolicyStats, parse_prefix

pytestmark = pytest.mark.netns

BPF_RUN = Path("/run/xpro/bpf")
NODES = 3
PORT = 9999
TOKEN = "mesh-config-kernel-token"
NUD_PERMANENT, SO_RCVBUFFORCE = 0x80, 33
RATE = 400  # packets/s per source: 4x T_F1
AGENT_TOML = """[thresholds]
t_t1 = "10m"
t_t2 = "200ms"
t_t3 = "200ms"
t_t4 = "1h"
t_f1 = "100/s"
t_f2 = "10000000/s"
policy = "fair-share"
"""


@dataclass(frozen=True)
class Node:
    """Proxy i: veth pa<i> (mesh side, the filter) <-> ca<i> (client side)."""

    i: int

    @property
    def iface(self) -> str:
        return f"pa{self.i}"

    @property
    def server(self) -> str:
        return f"10.30.{self.i}.2"

    @property
    def heavy(self) -> str:  # over T_F1, never allow-listed
        return f"10.30.{self.i}.1"

    @property
    def trusted(self) -> str:  # over T_F1, in the allow-list once it is set
        return f"10.30.{self.i}.9"

    @property
    def allow(self) -> str:
        return f"10.30.{self.i}.8/29"

    @property
    def gossip(self) -> int:
        return 17_460 + self.i

    @property
    def api(self) -> int:
        return 17_470 + self.i


@contextlib.contextmanager
def inside(ns: str) -> Iterator[None]:
    pyroute2_netns.pushns(ns)
    try:
        yield
    finally:
        pyroute2_netns.popns()


def _wire(cli: str, mesh: str, nodes: list[Node]) -> None:
    with NetNS(mesh) as ipm:
        ipm.link("set", index=ipm.link_lookup(ifname="lo")[0], state="up")
    for n in nodes:
        with NetNS(cli) as ipc:
            ipc.link(
                "add", ifname=f"ca{n.i}", kind="veth", peer={"ifname": n.iface, "net_ns_fd": mesh}
            )
        with NetNS(mesh) as ipm:
            pa = ipm.link_lookup(ifname=n.iface)[0]
            ipm.addr("add", index=pa, address=n.server, prefixlen=24)
            ipm.link("set", index=pa, state="up")
            mac = ipm.get_links(pa)[0].get_attr("IFLA_ADDRESS")
        with NetNS(cli) as ipc:
            ca = ipc.link_lookup(ifname=f"ca{n.i}")[0]
            for addr in (n.heavy, n.trusted):
                ipc.addr("add", index=ca, address=addr, prefixlen=24)
            ipc.link("set", index=ca, state="up")
            ipc.neigh("add", dst=n.server, lladdr=mac, ifindex=ca, state=NUD_PERMANENT)


class Receiver:
    """Datagrams per source on every node's server address, in a thread."""

    def __init__(self, ns: str, nodes: list[Node]) -> None:
        self.socks = []
        with inside(ns):
            for n in nodes:
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
                s.bind((n.server, PORT))
                s.setblocking(False)
                self.socks.append(s)
        self.counts: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select(self.socks, [], [], 0.05)
            for s in ready:
                with contextlib.suppress(BlockingIOError):
                    while True:
                        _data, addr = s.recvfrom(64)
                        self.counts[addr[0]] += 1

    def settle(self) -> Counter[str]:
        time.sleep(0.4)
        return Counter(self.counts)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for s in self.socks:
            s.close()


def _send(ns: str, nodes: list[Node], seconds: float) -> Counter[str]:
    """Every node's heavy and trusted source at RATE for ``seconds``, paced."""
    socks: dict[str, tuple[socket.socket, str]] = {}
    with inside(ns):
        for n in nodes:
            for src in (n.heavy, n.trusted):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.bind((src, 0))
                socks[src] = (s, n.server)
    sent: Counter[str] = Counter()
    start = time.perf_counter()
    try:
        while (elapsed := time.perf_counter() - start) < seconds:
            for src, (s, server) in socks.items():
                due = min(int(elapsed * RATE) + 1, sent[src] + 16)
                while sent[src] < due:
                    s.sendto(b"x" * 18, (server, PORT))
                    sent[src] += 1
            time.sleep(0.0005)
    finally:
        for s, _server in socks.values():
            s.close()
    return sent


def _api(ns: str, node: Node, method: str, path: str, body: object = None) -> dict[str, object]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{node.api}{path}", data, method=method)
    req.add_header("Authorization", f"Bearer {TOKEN}")
    req.add_header("Content-Type", "application/json")
    with inside(ns), urllib.request.urlopen(req, timeout=5) as resp:
        answer: dict[str, object] = json.loads(resp.read())
        return answer


def _metrics(ns: str, node: Node) -> str:
    with inside(ns), urllib.request.urlopen(f"http://127.0.0.1:{node.api}/metrics") as resp:
        return str(resp.read().decode())


def _wait(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            if check():
                return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _policy(
    pins: Path, node: Node
) -> tuple[tuple[Action, int], list[tuple[int, bytes]], PolicyStats]:
    with PolicyMaps.open(pins / node.iface) as maps:
        return maps.action(), maps.allow_list(), maps.stats()


def _drop_pair(pins: Path, node: Node) -> int:
    with BpfMaps.open(pins / node.iface) as maps:
        return maps.read_stats().drop_pair


def _count(pins: Path, node: Node, src: str) -> int:
    with BpfMaps.open(pins / node.iface) as maps:
        slot = maps.lookup_pair(src, node.server)
        assert slot is not None, f"{src} -> {node.server} has no slot"
        return int(maps.pair_slots[slot]["c"])


@pytest.fixture
def mesh(
    netns: Callable[[str], str], tmp_path: Path
) -> Iterator[tuple[str, str, Path, list[Node]]]:
    """Three agents in one namespace, the filter on each one's veth."""
    cli, ns = netns("xmck-cli"), netns("xmck-mesh")
    nodes = [Node(i) for i in range(NODES)]
    _wire(cli, ns, nodes)
    pins = BPF_RUN / ns
    key = tmp_path / "cluster.key"
    key.write_text(os.urandom(32).hex() + "\n")
    key.chmod(0o600)
    token = tmp_path / "api.token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    config = tmp_path / "agent.toml"
    config.write_text(AGENT_TOML)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    procs: list[subprocess.Popen[bytes]] = []
    logs = []
    try:
        for n in nodes:
            peers = ",".join(f"127.0.0.1:{m.gossip}" for m in nodes if m.i != n.i)
            log = (tmp_path / f"agent{n.i}.log").open("wb")
            logs.append(log)
            argv = [
                *("nsenter", f"--net=/var/run/netns/{ns}", sys.executable, "-m", "xpro_mesh"),
                *("agent", "--node-id", f"m{n.i}", "--backend", "xdp", "--iface", n.iface),
                *("--pin-root", str(pins), "--bind", f"127.0.0.1:{n.gossip}"),
                *("--api", f"127.0.0.1:{n.api}", "--key-file", str(key), "--peers", peers),
                *("--api-token-file", str(token), "--config", str(config)),
                *("--profile", "local", "--state-dir", str(tmp_path / f"state{n.i}")),
            ]
            procs.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env))

        def all_joined() -> bool:
            for p in procs:
                assert p.poll() is None, "an agent exited: " + _tails(tmp_path)
            return all(len(_api(ns, n, "GET", "/v1/status")["peers"]) >= NODES - 1 for n in nodes)  # type: ignore[arg-type]

        _wait(all_joined, 90, "three agents up and joined")
        yield cli, ns, pins, nodes
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for log in logs:
            log.close()
        # The filter stays after the agent (by design): detach it and its pins.
        with inside(ns):
            for n in nodes:
                with contextlib.suppress(Exception):
                    loader.detach(n.iface, pin_root=pins)


def _tails(tmp_path: Path) -> str:
    return " | ".join(
        p.read_text(errors="replace").strip().splitlines()[-1:][0]
        for p in sorted(tmp_path.glob("agent*.log"))
        if p.read_text(errors="replace").strip()
    )


def test_one_put_changes_the_verdicts_of_real_packets_on_every_nodes_kernel(
    mesh: tuple[str, str, Path, list[Node]],
) -> None:
    cli, ns, pins, nodes = mesh
    receiver = Receiver(ns, nodes)
    try:
        # Version 0, enforce, no allow-list: both sources are over T_F1 and cut.
        sent = _send(cli, nodes, 1.2)
        got = receiver.settle()
        for n in nodes:
            for src in (n.heavy, n.trusted):
                assert got[src] < sent[src] // 2, (src, got[src], sent[src])

        # One PUT on m0: monitor, and each node's trusted /29 allowed.
        doc = {"action": "monitor", "allow": [n.allow for n in nodes]}
        answer = _api(ns, nodes[0], "PUT", "/v1/config", doc)
        assert answer["mesh"]["version"] == 1  # type: ignore[index]
        allow = sorted(parse_prefix(n.allow) for n in nodes)

        def in_every_kernel(action: Action, version: int) -> bool:
            return all(_policy(pins, n)[:2] == ((action, version), allow) for n in nodes)

        _wait(lambda: in_every_kernel(Action.MONITOR, 1), 30, "version 1 in every kernel")
        before = {n.i: (_policy(pins, n)[2], _drop_pair(pins, n)) for n in nodes}
        counted = {n.i: _count(pins, n, n.trusted) for n in nodes}
        base = receiver.settle()
        sent = _send(cli, nodes, 1.2)
        got = receiver.settle() - base
        for n in nodes:
            # Everything delivered: the allowed source and the over-threshold one.
            assert got[n.trusted] == sent[n.trusted], (n, got, sent)
            assert got[n.heavy] == sent[n.heavy], (n, got, sent)
            stats_before, drops_before = before[n.i]
            stats, drops = _policy(pins, n)[2], _drop_pair(pins, n)
            # The heavy source's packets were judged drop and counted as such.
            would_drop = drops - drops_before
            assert would_drop >= sent[n.heavy] * 9 // 10, (n, would_drop, sent[n.heavy])
            assert stats.monitored - stats_before.monitored == would_drop
            # The allowed one was never counted: its pair did not move.
            assert stats.allowed - stats_before.allowed >= sent[n.trusted]
            assert _count(pins, n, n.trusted) == counted[n.i]
            # ... and `xpro-mesh xdp stats` reports both to the operator.
            with inside(ns):
                report = stats_report(
                    argparse.Namespace(iface=n.iface, pin_root=str(pins), json=True)
                )
            assert (report["action"], report["action_version"]) == ("monitor", 1)
            assert report["allow_list"] == [m.allow for m in nodes]
            assert report["monitored"] == stats.monitored and report["allowed"] == stats.allowed
            # ... and so does each agent's /metrics.
            metrics = _metrics(ns, n)
            assert 'xpro_action_info{action="monitor"} 1.0' in metrics
            assert f'xpro_policy_packets_total{{outcome="monitored"}} {stats.monitored:.1f}' in (
                metrics
            )

        # A second document from m2 (enforce; the allow-list stays): cut again.
        answer = _api(ns, nodes[2], "PUT", "/v1/config", {"action": "enforce"})
        assert answer["mesh"]["version"] == 2  # type: ignore[index]
        _wait(lambda: in_every_kernel(Action.ENFORCE, 2), 30, "version 2 in every kernel")
        base = receiver.settle()
        sent = _send(cli, nodes, 1.2)
        got = receiver.settle() - base
        for n in nodes:
            assert got[n.trusted] == sent[n.trusted], (n, got, sent)
            assert got[n.heavy] < sent[n.heavy] // 10, (n, got, sent)
            assert _api(ns, n, "GET", "/v1/status")["config_version"] == 2
    finally:
        receiver.close()
