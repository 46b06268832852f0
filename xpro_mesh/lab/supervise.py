"""Process supervision for a scenario run: commands inside a lab namespace,
one owner (:class:`Processes`) that starts, kills, restarts and stops every
process a mode runs, the XDP filters attached and detached on every proxy,
and the filters' live counters.

Commands enter a namespace with ``nsenter --net`` (``ip netns exec``
remounts /sys and would hide the bpffs pins); ``nsenter`` execs the
command, so a started process's pid is the command's own.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from xpro_mesh.lab.plans import ScenarioError
from xpro_mesh.lab.topology import NETNS_DIR, LabPlan, Proxy

__all__ = [
    "FilterStats",
    "Processes",
    "attach_all",
    "cli",
    "detach_all",
    "in_ns",
    "inside",
    "last_line",
    "pin_root",
    "run_all",
    "tcp_ready",
]

STOP_GRACE_S = 5.0


def in_ns(ns: str, *argv: str) -> list[str]:
    return ["nsenter", f"--net={NETNS_DIR / ns}", *argv]


def cli(ns: str, *argv: str) -> list[str]:
    """``xpro-mesh ARGV`` inside ``ns``, with this interpreter."""
    return in_ns(ns, sys.executable, "-m", "xpro_mesh", *argv)


def pin_root(lab: LabPlan, proxy: Proxy) -> str:
    return f"{lab.pin_root}/{proxy.ns}"


@dataclass
class Processes:
    """Every process a mode starts; one owner stops them all."""

    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    argv: dict[str, tuple[list[str], Path]] = field(default_factory=dict)
    killed: set[str] = field(default_factory=set)  # by a fault: not a death to report

    def start(self, name: str, argv: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
        # A restarted process's log follows its first life's.
        with open(log, "ab" if name in self.argv else "wb") as out:
            proc = subprocess.Popen(
                list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        self.procs.append((name, proc))
        self.argv[name] = (list(argv), log)
        return proc

    def running(self, prefix: str) -> list[tuple[str, subprocess.Popen[bytes]]]:
        """The processes whose name starts with ``prefix`` and that still run."""
        return [(n, p) for n, p in self.procs if n.startswith(prefix) and p.poll() is None]

    def kill(self, name: str) -> bool:
        """SIGKILL ``name`` (a crash); False when it is not running."""
        for n, p in self.procs:
            if n == name and p.poll() is None:
                p.kill()
                p.wait()
                self.killed.add(name)
                return True
        return False

    def restart(self, name: str) -> bool:
        """Start ``name`` again as it was first started; False if it never was
        or still runs."""
        if name not in self.argv or any(n == name and p.poll() is None for n, p in self.procs):
            return False
        argv, log = self.argv[name]
        self.procs = [(n, p) for n, p in self.procs if n != name]
        self.start(name, argv, log)
        self.killed.discard(name)
        return True

    def stop(self, names: Callable[[str], bool] = lambda _n: True) -> None:
        """SIGTERM the chosen processes, SIGKILL what is left after the grace."""
        chosen = [(n, p) for n, p in self.procs if names(n)]
        for _, p in chosen:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for _, p in chosen:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=max(0.05, deadline - time.monotonic()))
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
                p.wait()
        self.procs = [(n, p) for n, p in self.procs if (n, p) not in chosen]


def run_all(commands: Sequence[Sequence[str]], what: str, timeout: float = 120) -> None:
    """Run commands in parallel; a failure is a ScenarioError with its output."""
    procs = [
        subprocess.Popen(list(c), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for c in commands
    ]
    failures: list[str] = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            out, _ = p.communicate()
            failures.append(f"timed out: {out.decode(errors='replace').strip()}")
            continue
        if p.returncode != 0:
            failures.append(
                out.decode(errors="replace").strip().splitlines()[-1:][0]
                if out.strip()
                else f"exit {p.returncode}"
            )
    if failures:
        raise ScenarioError(f"{what} failed: {failures[0]}")


def detach_all(lab: LabPlan) -> None:
    with contextlib.suppress(ScenarioError):
        run_all(
            [
                cli(p.ns, "xdp", "detach", "--iface", "c0", "--pin-root", pin_root(lab, p))
                for p in lab.proxies
            ],
            "xdp detach",
        )


def attach_all(lab: LabPlan, config: Path) -> None:
    run_all(
        [
            cli(
                p.ns,
                "xdp",
                "attach",
                "--iface",
                "c0",
                "--pin-root",
                pin_root(lab, p),
                "--config",
                str(config),
            )
            for p in lab.proxies
        ],
        "xdp attach",
    )


@contextlib.contextmanager
def inside(ns: str) -> Iterator[None]:
    """This thread in ``ns`` for the block (sockets made in it stay there)."""
    from pyroute2 import netns

    netns.pushns(ns)
    try:
        yield
    finally:
        netns.popns()


def tcp_ready(ns: str, addr: str, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with inside(ns):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.settimeout(0.5)
            sock.connect((addr, port))
            return True
        except OSError:
            time.sleep(0.1)
        finally:
            sock.close()
    return False


def last_line(path: Path) -> str:
    with contextlib.suppress(OSError):
        lines = path.read_text(errors="replace").strip().splitlines()
        if lines:
            return lines[-1][:300]
    return "(no output)"


class FilterStats:
    """Live counters of every proxy's filter, read from the pinned maps."""

    def __init__(self, lab: LabPlan) -> None:
        from xpro_mesh.datapath.bpf_maps import BpfMaps

        self.maps: dict[str, Any] = {}
        for p in lab.proxies:
            pin_dir = Path(pin_root(lab, p)) / "c0"
            if (pin_dir / "stats").exists():
                with contextlib.suppress(Exception):
                    self.maps[p.ns] = BpfMaps.open(pin_dir)

    def read(self, pairs: bool = True) -> dict[str, dict[str, int]]:
        """Per proxy its verdict counters and (``pairs``) the pair slots in
        use (the live display leaves them out: it needs only the rates)."""
        out: dict[str, dict[str, int]] = {}
        for ns, maps in self.maps.items():
            with contextlib.suppress(Exception):
                counters = maps.read_stats().as_dict()
                out[ns] = {
                    "pass": counters["pass"],
                    "drop_pair": counters["drop_pair"],
                    "drop_dest": counters["drop_dest"],
                }
                if pairs:
                    out[ns]["pairs"] = maps.ring_status().pairs_in_use
        return out

    def close(self) -> None:
        for maps in self.maps.values():
            with contextlib.suppress(Exception):
                maps.close()
        self.maps.clear()
