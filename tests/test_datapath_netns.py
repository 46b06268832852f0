"""Real traffic through a real veth: two namespaces, the filter attached by
the CLI on the receiving side, a heavy client above T_F1 dropped, light
clients (IPv4 and IPv6) passed, counters and warnings seen by userspace,
thresholds changed live, and nothing left behind after detach."""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from datapath_support import run_cli
from pyroute2 import NetNS
from pyroute2 import netns as pyroute2_netns

from xpro_mesh.datapath import libbpf, loader
from xpro_mesh.datapath.backend import PairKey
from xpro_mesh.datapath.bpf_maps import BpfMaps
from xpro_mesh.datapath.frames import ip_frame

pytestmark = pytest.mark.netns

BPF_RUN = Path("/run/xpro/bpf")  # bpffs outside /sys (ip netns exec remounts /sys)
HEAVY, LIGHT4, LIGHT6 = "10.201.0.1", "10.201.0.3", "fd00:201::1"
SERVER4, SERVER6 = "10.201.0.2", "fd00:201::2"
PORT = 9999
IFA_F_NODAD, NUD_PERMANENT, SO_RCVBUFFORCE = 0x02, 0x80, 33


@contextlib.contextmanager
def inside(ns: str) -> Iterator[None]:
    """Run the block in network namespace ``ns`` (sockets made here stay there)."""
    pyroute2_netns.pushns(ns)
    try:
        yield
    finally:
        pyroute2_netns.popns()


def _veth_pair(nsa: str, nsb: str) -> None:
    """va (clients: HEAVY, LIGHT4, LIGHT6) in nsa <-> vb (server) in nsb."""
    with NetNS(nsa) as ipa:
        ipa.link("add", ifname="va", kind="veth", peer={"ifname": "vb", "net_ns_fd": nsb})
    with NetNS(nsb) as ipb:
        vb = ipb.link_lookup(ifname="vb")[0]
        ipb.addr("add", index=vb, address=SERVER4, prefixlen=24)
        ipb.addr("add", index=vb, address=SERVER6, prefixlen=64, flags=IFA_F_NODAD)
        ipb.link("set", index=vb, state="up")
        mac = ipb.get_links(vb)[0].get_attr("IFLA_ADDRESS")
    with NetNS(nsa) as ipa:
        va = ipa.link_lookup(ifname="va")[0]
        for addr in (HEAVY, LIGHT4):
            ipa.addr("add", index=va, address=addr, prefixlen=24)
        ipa.addr("add", index=va, address=LIGHT6, prefixlen=64, flags=IFA_F_NODAD)
        ipa.link("set", index=va, state="up")
        # Static neighbours: no ARP/ND queueing in the way of the first packets.
        ipa.neigh("add", dst=SERVER4, lladdr=mac, ifindex=va, state=NUD_PERMANENT)
        ipa.neigh(
            "add", dst=SERVER6, lladdr=mac, ifindex=va, state=NUD_PERMANENT, family=socket.AF_INET6
        )


class Receiver:
    """Counts datagrams per source address on the server, in a thread."""

    def __init__(self, ns: str) -> None:
        with inside(ns):
            self.socks = []
            for family, addr in ((socket.AF_INET, SERVER4), (socket.AF_INET6, SERVER6)):
                s = socket.socket(family, socket.SOCK_DGRAM)
                s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
                s.bind((addr, PORT))
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
        time.sleep(0.3)
        return Counter(self.counts)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for s in self.socks:
            s.close()


def _senders(ns: str) -> dict[str, socket.socket]:
    out = {}
    with inside(ns):
        for addr in (HEAVY, LIGHT4, LIGHT6):
            s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET, socket.SOCK_DGRAM)
            s.bind((addr, 0))
            out[addr] = s
    return out


def _send(senders: dict[str, socket.socket], rates: dict[str, int], seconds: float) -> Counter[str]:
    """Send at ``rates`` (packets/s per source) for ``seconds``, paced."""
    sent: Counter[str] = Counter()
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for src, rate in rates.items():
            # After a stall, catch up by at most 32 packets: a real client does
            # not send bursts of hundreds (they would overflow veth's 256-slot ring).
            due = min(int(elapsed * rate) + 1, sent[src] + 32)
            server = SERVER6 if ":" in src else SERVER4
            while sent[src] < due:
                senders[src].sendto(b"x" * 18, (server, PORT))
                sent[src] += 1
        time.sleep(0.0005)
    return sent


@pytest.fixture
def topology(netns: Callable[[str], str], tmp_path: Path) -> Iterator[tuple[str, str, Path]]:
    nsa, nsb = netns("xpt-cli"), netns("xpt-srv")
    _veth_pair(nsa, nsb)
    pin_root = BPF_RUN / nsb
    try:
        yield nsa, nsb, pin_root
    finally:
        # Pins live on the host's bpffs, not in the namespace: remove them here
        # even when the test failed half-way.
        with inside(nsb), contextlib.suppress(Exception):
            loader.detach("vb", pin_root=pin_root)


def test_heavy_client_dropped_light_clients_passed_over_real_veth(
    topology: tuple[str, str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nsa, nsb, pin_root = topology
    config = tmp_path / "xdp.toml"
    config.write_text(
        't_t1 = "10s"\nt_t2 = "200ms"\nt_t3 = "200ms"\nt_f1 = 200\nt_f2 = "1M"\n'
        'clock = "precise"\nwarn_interval = "10s"\npolicy = "fair-share"\n'
    )
    with inside(nsb):
        status, err = run_cli(
            [
                "xdp",
                "attach",
                "--iface",
                "vb",
                "--pin-root",
                str(pin_root),
                "--config",
                str(config),
                "--mode",
                "native",
            ]
        )
    assert (status, err) == (0, "")
    assert "in native mode" in capsys.readouterr().out

    receiver = Receiver(nsb)
    senders = _senders(nsa)
    try:
        sent = _send(senders, {HEAVY: 2000, LIGHT4: 20, LIGHT6: 20}, 1.5)
        got = receiver.settle()

        assert got[LIGHT4] == sent[LIGHT4]
        assert got[LIGHT6] == sent[LIGHT6]
        assert 0 < got[HEAVY] < sent[HEAVY] // 2

        with inside(nsb):
            status, err = run_cli(
                ["xdp", "stats", "--iface", "vb", "--pin-root", str(pin_root), "--json"]
            )
        assert (status, err) == (0, "")
        stats = json.loads(capsys.readouterr().out)
        assert stats["mode"] == "native"
        dropped = sent[HEAVY] - got[HEAVY]
        assert abs(stats["drop_pair"] - dropped) <= dropped // 50
        assert stats["drop_dest"] == 0
        assert stats["pass"] >= got[HEAVY] + got[LIGHT4] + got[LIGHT6]
        assert stats["pairs"] >= 3
        assert stats["pairs_free"] == stats["pairs_max"] - stats["pairs"]
        assert stats["destinations"] >= 2

        with BpfMaps.open(pin_root / "vb") as maps:
            warnings = maps.poll_events(timeout_ms=200)
            read = maps.read_pairs()
            light6 = maps.lookup_pair(LIGHT6, SERVER6)
        assert {w.key for w in warnings} == {PairKey.of(HEAVY, SERVER4)}
        counts = dict(zip(read.slots.tolist(), read.rows["c"].tolist(), strict=True))
        assert light6 is not None and counts[light6] == sent[LIGHT6]

        # Raise T_F1 live: the heavy client's next burst goes through.
        with inside(nsb):
            assert run_cli(
                ["xdp", "set", "--iface", "vb", "--pin-root", str(pin_root), "t_f1=1M"]
            ) == (0, "")
        before = receiver.settle()
        burst = _send(senders, {HEAVY: 2000}, 0.3)
        after = receiver.settle()
        assert after[HEAVY] - before[HEAVY] == burst[HEAVY]
    finally:
        receiver.close()
        for s in senders.values():
            s.close()

    with inside(nsb):
        assert run_cli(["xdp", "detach", "--iface", "vb", "--pin-root", str(pin_root)]) == (0, "")
        ifindex = socket.if_nametoindex("vb")
        assert libbpf.xdp_query(ifindex) == (0, 0)
    assert not pin_root.exists()


def test_reattach_reuses_live_maps_and_generic_mode_detaches_cleanly(
    topology: tuple[str, str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _nsa, nsb, pin_root = topology
    pin_dir = pin_root / "vb"
    with inside(nsb):
        assert run_cli(
            ["xdp", "attach", "--iface", "vb", "--pin-root", str(pin_root), "--mode", "generic"]
        ) == (0, "")
        assert "in generic mode" in capsys.readouterr().out
        ifindex = socket.if_nametoindex("vb")
        _native, generic_id = libbpf.xdp_query(ifindex)
        assert generic_id
    # Count a packet through the pinned filter, then change a threshold.
    filter_fd = libbpf.obj_get(str(pin_dir / "prog_filter"))
    try:
        libbpf.prog_test_run(filter_fd, ip_frame("10.9.9.1", "10.9.9.2"))
    finally:
        os.close(filter_fd)
    with inside(nsb):
        assert run_cli(
            ["xdp", "set", "--iface", "vb", "--pin-root", str(pin_root), "t_f1=123"]
        ) == (0, "")
        # A restarted loader finds the live maps: pairs and config survive.
        assert run_cli(
            ["xdp", "attach", "--iface", "vb", "--pin-root", str(pin_root), "--mode", "generic"]
        ) == (0, "")
        out = capsys.readouterr().out
        assert "reused live maps" in out
        assert run_cli(
            ["xdp", "stats", "--iface", "vb", "--pin-root", str(pin_root), "--json"]
        ) == (0, "")
        stats = json.loads(capsys.readouterr().out)
        assert stats["config"]["t_f1"] == 123
        # The live rings were kept, not filled again (that would hand out
        # the pair's slot a second time).
        assert stats["pairs"] >= 1  # ours, and whatever else the veth saw (ND)
        assert stats["pairs_free"] == stats["pairs_max"] - stats["pairs"]
        with BpfMaps.open(pin_dir) as maps:
            slot = maps.lookup_pair("10.9.9.1", "10.9.9.2")
            assert slot is not None and int(maps.pair_slots["c"][slot]) == 1
        assert stats["mode"] == "generic"
        _native, new_id = libbpf.xdp_query(ifindex)
        assert new_id and new_id != generic_id  # replaced, not stacked

        assert run_cli(["xdp", "detach", "--iface", "vb", "--pin-root", str(pin_root)]) == (0, "")
        assert "generic" in capsys.readouterr().out
        assert libbpf.xdp_query(ifindex) == (0, 0)
    assert not pin_root.exists()


def _in_ip_netns_exec(ns: str, argv: list[str]) -> tuple[int, str, str]:
    """Run the xdp CLI under ``ip netns exec`` (new mount namespace, /sys remounted)."""
    code = (
        "import sys; from datapath_support import run_cli; "
        f"status, err = run_cli({argv!r}); print(err, file=sys.stderr); sys.exit(status)"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}
    proc = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    return proc.returncode, proc.stdout, proc.stderr.strip()


def test_under_ip_netns_exec_pins_go_to_a_shared_bpffs(netns: Callable[[str], str]) -> None:
    """The lab's path: ``ip netns exec`` hides /sys/fs/bpf, so the default
    pin root is refused with a hint, and /run/xpro/bpf/<ns> works, with the
    pins visible from the host. Loopback has no native XDP: auto falls back
    to generic and says so."""
    ns = netns("xpt-exec")
    pin_root = BPF_RUN / ns
    status, _out, err = _in_ip_netns_exec(ns, ["xdp", "attach", "--iface", "lo"])
    assert status == 2
    assert "use --pin-root on a bpffs shared with the host" in err
    try:
        status, out, err = _in_ip_netns_exec(
            ns, ["xdp", "attach", "--iface", "lo", "--pin-root", str(pin_root)]
        )
        assert (status, err) == (0, ""), err
        assert "in generic mode" in out
        assert (pin_root / "lo" / "pair_slots").exists()  # seen from the host
    finally:
        status, out, err = _in_ip_netns_exec(
            ns, ["xdp", "detach", "--iface", "lo", "--pin-root", str(pin_root)]
        )
    assert (status, err) == (0, ""), err
    assert not pin_root.exists()
