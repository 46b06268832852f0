"""The lab's network: namespaces, bridges, veth pairs, addresses and routes.

Two halves, kept apart (STYLE: compute what to change apart from changing it):
:func:`plan` is pure and says what the lab looks like; :func:`build` and
:func:`destroy` apply it with pyroute2. Every name starts with ``xl-`` so that
:func:`destroy` can find and remove all of it after a crash, idempotently.

Layout (one L2 segment per side, bridged in a switch namespace so the root
namespace is never touched)::

    xl-c<i> (good clients behind proxy i) ─┐
    xl-b<i> (bots behind proxy i) ─────────┤ br-c ── c0 [XDP] xl-p<i> s0 ── br-s ── xl-victim
                                            (every client can reach every     ├── xl-redis (M_DB)
                                             proxy: one segment)              └── agents gossip here

Addresses (all inside these namespaces): proxies 10.10.0.<10+i>/16 on the
client side and 10.20.0.<10+i>/16 on the service side; clients behind proxy
i use 10.10.<100+i>.<2..99>, bots 10.10.<100+i>.<100..254>; the victim is
10.20.0.2 and the Redis master 10.20.0.3. The victim routes each proxy's
client block back through that proxy, so replies take the same path.

Every good client can also send through any other proxy k (dispersion,
``xpro_mesh.client``): it has one more address in proxy k's block (after
that block's own clients, ``.2..99``), and its namespace a policy rule
``from 10.10.<100+k>.0/24 lookup <100+k>``, table 100+k's default via proxy
k. Choosing a proxy is choosing the source address; the victim's route per
block sends the reply back through that proxy. The home block has no rule
(the main table's default), so :func:`route_block_through` still moves a
block by hand. Only for labs of at most 98 good clients (every block holds
all of them).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

PREFIX = "xl-"
SWITCH_NS = "xl-sw"
VICTIM_NS = "xl-victim"
REDIS_NS = "xl-redis"
VICTIM_ADDR = "10.20.0.2"
REDIS_ADDR = "10.20.0.3"
STATE_FILE = Path("/run/xpro/lab.json")
NETNS_DIR = Path("/var/run/netns")


class LabError(Exception):
    """The lab could not be built or torn down; the message says what failed."""


@dataclass(frozen=True, slots=True)
class Proxy:
    index: int
    ns: str
    client_addr: str  # on c0, the client-facing side (XDP attaches here)
    service_addr: str  # on s0, towards the victim; agents gossip here
    client_block: str  # the /24 of the clients and bots behind this proxy


@dataclass(frozen=True, slots=True)
class Sender:
    """A namespace of good clients or bots behind one proxy."""

    ns: str
    role: str  # "good" | "bot"
    proxy: int
    addrs: tuple[str, ...]
    # good clients: per other proxy k, (k, one address per client in k's
    # block, in the order of ``addrs``): the sources that go through proxy k
    aliases: tuple[tuple[int, tuple[str, ...]], ...] = ()

    def sources_via(self, proxy: int) -> tuple[str, ...] | None:
        """This namespace's client addresses that go through ``proxy``
        (``addrs`` for its own proxy), or None where it has none."""
        if proxy == self.proxy:
            return self.addrs
        return next((a for k, a in self.aliases if k == proxy), None)


@dataclass(frozen=True, slots=True)
class LabPlan:
    proxies: tuple[Proxy, ...]
    senders: tuple[Sender, ...]
    victim_addr: str = VICTIM_ADDR
    redis_addr: str = REDIS_ADDR
    pin_root: str = "/run/xpro/bpf"
    extra: dict[str, str] = field(default_factory=dict)

    def namespaces(self) -> list[str]:
        names = [SWITCH_NS, VICTIM_NS, REDIS_NS]
        names += [p.ns for p in self.proxies]
        names += [s.ns for s in self.senders]
        return names

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> LabPlan:
        raw = json.loads(text)
        return cls(
            proxies=tuple(Proxy(**p) for p in raw["proxies"]),
            senders=tuple(
                Sender(
                    ns=s["ns"],
                    role=s["role"],
                    proxy=s["proxy"],
                    addrs=tuple(s["addrs"]),
                    aliases=tuple((int(k), tuple(a)) for k, a in s.get("aliases", ())),
                )
                for s in raw["senders"]
            ),
            victim_addr=raw["victim_addr"],
            redis_addr=raw["redis_addr"],
            pin_root=raw["pin_root"],
            extra=raw.get("extra", {}),
        )

    def good_addrs(self) -> list[str]:
        return [a for s in self.senders if s.role == "good" for a in s.addrs]

    def bot_addrs(self) -> list[str]:
        return [a for s in self.senders if s.role == "bot" for a in s.addrs]

    def clients_can_choose(self) -> bool:
        """Whether every good client has a source behind every proxy."""
        good = [s for s in self.senders if s.role == "good"]
        return bool(good) and all(
            s.sources_via(p.index) is not None for s in good for p in self.proxies
        )


def plan(proxies: int = 3, clients: int = 12, bots: int = 240) -> LabPlan:
    """The lab for ``proxies`` proxies, ``clients`` good clients and ``bots``
    bot addresses, both spread round-robin over the proxies."""
    if not 1 <= proxies <= 50:
        raise LabError(f"--proxies must be between 1 and 50, got {proxies}")
    if clients < 0 or clients > 98 * proxies:
        raise LabError(f"--clients must be between 0 and {98 * proxies}, got {clients}")
    if bots < 0 or bots > 155 * proxies:
        raise LabError(f"--bots must be between 0 and {155 * proxies}, got {bots}")
    ps = tuple(
        Proxy(
            index=i,
            ns=f"{PREFIX}p{i}",
            client_addr=f"10.10.0.{10 + i}",
            service_addr=f"10.20.0.{10 + i}",
            client_block=f"10.10.{100 + i}.0/24",
        )
        for i in range(proxies)
    )
    senders: list[Sender] = []
    for role, count, first in (("good", clients, 2), ("bot", bots, 100)):
        per_proxy: list[list[str]] = [[] for _ in range(proxies)]
        for n in range(count):
            i = n % proxies
            per_proxy[i].append(f"10.10.{100 + i}.{first + len(per_proxy[i])}")
        for i, addrs in enumerate(per_proxy):
            if addrs:
                tag = "c" if role == "good" else "b"
                ns = f"{PREFIX}{tag}{i}"
                senders.append(Sender(ns=ns, role=role, proxy=i, addrs=tuple(addrs)))
    if 0 < clients <= MAX_CHOOSING_CLIENTS and proxies > 1:
        senders = _with_aliases(senders, proxies)
    return LabPlan(proxies=ps, senders=tuple(senders))


MAX_CHOOSING_CLIENTS = 98  # .2..99 of every block holds every good client


def _with_aliases(senders: list[Sender], proxies: int) -> list[Sender]:
    """Each good client one address in every other proxy's block, counted
    up after that block's own clients (see the module doc)."""
    taken = [
        2 + sum(len(s.addrs) for s in senders if s.role == "good" and s.proxy == k)
        for k in range(proxies)
    ]
    out = []
    for s in senders:
        if s.role != "good":
            out.append(s)
            continue
        aliases = []
        for k in range(proxies):
            if k == s.proxy:
                continue
            first = taken[k]
            taken[k] += len(s.addrs)
            aliases.append((k, tuple(f"10.10.{100 + k}.{first + j}" for j in range(len(s.addrs)))))
        out.append(replace(s, aliases=tuple(aliases)))
    return out


# --- applying the plan (pyroute2) --------------------------------------------


def _nsexec(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command with only the network namespace changed (``nsenter
    --net`` keeps /sys, so bpffs pins stay visible, unlike ``ip netns exec``)."""
    return subprocess.run(
        ["nsenter", f"--net={NETNS_DIR / ns}", *argv],
        check=check,
        capture_output=True,
        text=True,
    )


def sysctl(ns: str, key: str, value: str) -> None:
    path = "/proc/sys/" + key.replace(".", "/")
    _nsexec(ns, "sh", "-c", f"echo {value} > {path}")


def build(lab: LabPlan, progress: object = None) -> None:
    """Create every namespace, link, address and route of ``lab``.

    Fails with :class:`LabError` if any ``xl-`` namespace already exists
    (run ``lab down`` first); on a failure half-way it tears down what it
    made, so a failed ``lab up`` leaves nothing behind.
    """
    from pyroute2 import netns

    existing = [n for n in netns.listnetns() if n.startswith(PREFIX)]
    if existing:
        raise LabError(
            f"lab namespaces already exist ({', '.join(sorted(existing)[:4])}...); "
            "run `xpro-mesh lab down` first"
        )
    try:
        for name in lab.namespaces():
            netns.create(name)
        _wire_switch(lab)
        _address_proxies(lab)
        _address_senders(lab)
        STATE_FILE.parent.mkdir(parents=True, exist_ok=True)
        STATE_FILE.write_text(lab.to_json())
    except Exception as exc:
        destroy()
        if isinstance(exc, LabError):
            raise
        raise LabError(f"lab up failed and was rolled back: {exc}") from exc


def _wire_switch(lab: LabPlan) -> None:
    """The two bridges in the switch namespace and one veth per namespace
    into them (clients, bots and proxies' c0 on br-c; s0, victim, Redis on br-s)."""
    from pyroute2 import NetNS

    with NetNS(SWITCH_NS) as sw:
        for br in ("br-c", "br-s"):
            sw.link("add", ifname=br, kind="bridge")
            sw.link("set", index=sw.link_lookup(ifname=br)[0], state="up")

        def wire(port: str, ns: str, ifname: str, bridge: str) -> None:
            sw.link("add", ifname=port, kind="veth", peer={"ifname": ifname, "net_ns_fd": ns})
            idx = sw.link_lookup(ifname=port)[0]
            sw.link("set", index=idx, master=sw.link_lookup(ifname=bridge)[0], state="up")

        for p in lab.proxies:
            wire(f"p{p.index}c", p.ns, "c0", "br-c")
            wire(f"p{p.index}s", p.ns, "s0", "br-s")
        wire("vic", VICTIM_NS, "v0", "br-s")
        wire("rds", REDIS_NS, "r0", "br-s")
        for s in lab.senders:
            wire(s.ns.removeprefix(PREFIX), s.ns, "e0", "br-c")


def _link_up(ns: str, ifname: str, addrs: list[tuple[str, int]]) -> None:
    from pyroute2 import NetNS

    with NetNS(ns) as n:
        lo = n.link_lookup(ifname="lo")[0]
        n.link("set", index=lo, state="up")
        idx = n.link_lookup(ifname=ifname)[0]
        for addr, plen in addrs:
            n.addr("add", index=idx, address=addr, prefixlen=plen)
        n.link("set", index=idx, state="up")


def _address_proxies(lab: LabPlan) -> None:
    """Proxies forward with reverse-path filtering off; the victim routes
    each proxy's client block back through it."""
    from pyroute2 import NetNS

    for p in lab.proxies:
        _link_up(p.ns, "c0", [(p.client_addr, 16)])
        _link_up(p.ns, "s0", [(p.service_addr, 16)])
        sysctl(p.ns, "net.ipv4.ip_forward", "1")
        for key in ("net.ipv4.conf.all.rp_filter", "net.ipv4.conf.default.rp_filter"):
            sysctl(p.ns, key, "0")
        # Proxies do not tell clients about the direct path to the
        # victim's segment (both are on-link for them).
        sysctl(p.ns, "net.ipv4.conf.all.send_redirects", "0")
    _link_up(VICTIM_NS, "v0", [(lab.victim_addr, 16)])
    _link_up(REDIS_NS, "r0", [(lab.redis_addr, 16)])
    with NetNS(VICTIM_NS) as v:
        for p in lab.proxies:
            v.route("add", dst=p.client_block, gateway=p.service_addr)


def _address_senders(lab: LabPlan) -> None:
    """Senders' addresses are /32s on their one link; everything else (the
    victim included) goes through their proxy, or, from a good client's
    address in proxy k's block, through proxy k (table 100+k)."""
    from pyroute2 import NetNS

    for s in lab.senders:
        aliases = [a for _k, addrs in s.aliases for a in addrs]
        _link_up(s.ns, "e0", [(a, 32) for a in (*s.addrs, *aliases)])
        proxy = lab.proxies[s.proxy]
        with NetNS(s.ns) as n:
            idx = n.link_lookup(ifname="e0")[0]
            n.route("add", dst="10.10.0.0/16", oif=idx, scope=253)
            n.route("add", dst="0.0.0.0/0", gateway=proxy.client_addr)
            for k, _addrs in s.aliases:
                table = 100 + k
                via = lab.proxies[k]
                n.route("add", dst="10.10.0.0/16", oif=idx, scope=253, table=table)
                n.route("add", dst="0.0.0.0/0", gateway=via.client_addr, table=table)
                n.rule(
                    "add",
                    src=via.client_block.split("/")[0],
                    src_len=24,
                    table=table,
                    priority=1000 + k,
                )


def route_block_through(
    lab: LabPlan, block_of: int, through: int, roles: tuple[str, ...] = ("good", "bot")
) -> None:
    """Send the traffic of proxy ``block_of``'s clients and bots through
    proxy ``through``, both ways: their default route, and the victim's
    route back to their block. ``through == block_of`` restores the layout
    of :func:`build`. What anycast, ECMP or DNS does when a proxy dies, done
    here at once: the lab measures the mesh, not the network's failover.
    With ``roles`` ``("bot",)`` only the bots' default route moves (good
    clients that fail over on their own keep theirs; bots get no replies,
    so the victim's route stays)."""
    from pyroute2 import NetNS

    via = lab.proxies[through]
    for s in lab.senders:
        if s.proxy == block_of and s.role in roles:
            with NetNS(s.ns) as n:
                n.route("replace", dst="0.0.0.0/0", gateway=via.client_addr)
    if "good" not in roles:
        return
    with NetNS(VICTIM_NS) as v:
        v.route("replace", dst=lab.proxies[block_of].client_block, gateway=via.service_addr)


def set_proxy_links(lab: LabPlan, index: int, up: bool) -> None:
    """Both links of proxy ``index`` up or down: a proxy that died forwards
    nothing (its XDP program stays attached, as after a power cut)."""
    from pyroute2 import NetNS

    with NetNS(lab.proxies[index].ns) as n:
        for ifname in ("c0", "s0"):
            n.link("set", index=n.link_lookup(ifname=ifname)[0], state="up" if up else "down")


def lab_namespaces() -> list[str]:
    from pyroute2 import netns

    return sorted(n for n in netns.listnetns() if n.startswith(PREFIX))


def _pids_in(ns: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
    return [int(x) for x in out.stdout.split() if x.isdigit()]


def destroy(grace_s: float = 3.0) -> list[str]:
    """Remove every ``xl-`` namespace (and the processes running in them).

    Idempotent: a second call, or a call after a killed run, finds what is
    left and removes it. Returns the namespaces removed.
    """
    from pyroute2 import netns

    names = lab_namespaces()
    stop_processes(names, grace_s)
    for name in names:
        with contextlib.suppress(Exception):
            netns.remove(name)
    with contextlib.suppress(FileNotFoundError):
        STATE_FILE.unlink()
    _remove_lab_pins()
    return names


def stop_processes(names: list[str] | None = None, grace_s: float = 3.0) -> int:
    """SIGTERM every process in the lab's namespaces, SIGKILL what is left
    after ``grace_s``; returns how many there were (leftovers of a killed
    scenario: agents, traffic, redis)."""
    if names is None:
        names = lab_namespaces()
    pids = {pid for ns in names for pid in _pids_in(ns)}
    found = len(pids)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while pids and time.monotonic() < deadline:
        pids = {p for p in pids if _alive(p)}
        time.sleep(0.05)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _remove_lab_pins() -> None:
    root = Path("/run/xpro/bpf")
    if not root.is_dir():
        return
    for ns_dir in root.glob(f"{PREFIX}*"):
        for path in sorted(ns_dir.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                path.rmdir() if path.is_dir() else path.unlink()
        with contextlib.suppress(OSError):
            ns_dir.rmdir()


def current() -> LabPlan | None:
    """The plan of the lab that is up, if any."""
    try:
        return LabPlan.from_json(STATE_FILE.read_text())
    except (FileNotFoundError, KeyError, ValueError):
        return None


def _xdp_on(ns: str, ifname: str) -> str | None:
    """``"native prog 42"`` for the XDP program on ``ifname`` in ``ns``, if any."""
    out = _nsexec(ns, "ip", "-j", "link", "show", "dev", ifname, check=False)
    try:
        links = json.loads(out.stdout or "[]")
    except ValueError:
        return None
    for link in links:
        xdp = link.get("xdp")
        if xdp:
            mode = {1: "native", 2: "generic", 3: "offload"}.get(xdp.get("mode"), "attached")
            prog = xdp.get("prog", {}).get("id")
            return f"{mode} prog {prog}" if prog else mode
    return None


def status() -> dict[str, Any]:
    """What ``lab status`` shows: the namespaces present, the plan if the lab
    is up, and per proxy its XDP program and process count."""
    names = lab_namespaces()
    lab = current() if names else None
    processes = {ns: len(_pids_in(ns)) for ns in names}
    report: dict[str, Any] = {
        "up": lab is not None,
        "namespaces": names,
        "processes": processes,
        "proxies": [],
        "good_addrs": 0,
        "bot_addrs": 0,
    }
    if lab is not None:
        report["good_addrs"] = len(lab.good_addrs())
        report["bot_addrs"] = len(lab.bot_addrs())
        report["victim_addr"] = lab.victim_addr
        report["redis_addr"] = lab.redis_addr
        report["proxies"] = [
            {
                "ns": p.ns,
                "client_addr": p.client_addr,
                "service_addr": p.service_addr,
                "client_block": p.client_block,
                "xdp": _xdp_on(p.ns, "c0") if p.ns in processes else None,
                "processes": processes.get(p.ns, 0),
            }
            for p in lab.proxies
        ]
    return report
