"""Specification of per-node identity and the per-origin bounds (issue 12):
a holder of the cluster key can write only its own origin's rows, and what
it writes there is bounded in rows held, rows per second and time left
uncovered. The findings are reproduced with the datagram that exposed them,
at real agents on real UDP sockets (as tests/test_agent_security.py does);
the relay path with whole meshes on the in-memory network."""

from __future__ import annotations

import asyncio
import random
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from agent_support import QUIET, counts, eventually, feed, gossip_addr, stop_agent
from hypothesis import given, settings
from hypothesis import strategies as st

from xpro_mesh.agent.config import ConfigError, load_config, local_gossip
from xpro_mesh.agent.daemon import Agent, AgentError, xdp_config
from xpro_mesh.bench.loopback import LoopbackMesh, wait_until
from xpro_mesh.core.algorithm import Params
from xpro_mesh.core.gossip_state import Coverage, GossipState, LocalCount, MergeLimits
from xpro_mesh.core.rows import ADDRESS_DTYPE, ColumnarDelta, RowBatch
from xpro_mesh.datapath.memory import MemoryMaps
from xpro_mesh.datapath.structs import to_addr
from xpro_mesh.mesh import auth, columns, identity, wire
from xpro_mesh.mesh.membership import Membership
from xpro_mesh.mesh.messages import SignedRows
from xpro_mesh.mesh.node import MeshNode, NodeTiming
from xpro_mesh.mesh.state import GossipStateAdapter
from xpro_mesh.mesh.stream import MemoryStreams
from xpro_mesh.mesh.transport import MemoryNetwork

pytestmark = pytest.mark.timeout(90)

S = 10**9
DST = "10.9.0.1"
VICTIM_CLIENT = "10.1.0.7"


# --- keys and the trust list -------------------------------------------------------


def write(path: Path, text: str, mode: int) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_a_node_key_signs_batches_that_only_its_trust_line_verifies() -> None:
    seed_a, pub_a = identity.generate_node_key()
    _seed_b, pub_b = identity.generate_node_key()
    a = identity.parse_node_key(seed_a)
    trust = identity.parse_trust_list(f"a {pub_a}\nb {pub_b}\n")
    sig = a.sign("a", b"rows")
    assert trust.verify("a", b"rows", sig)
    assert not trust.verify("a", b"rowz", sig)  # other bytes
    assert not trust.verify("b", b"rows", sig)  # a's key does not sign for b
    assert not trust.verify("c", b"rows", sig)  # not listed
    assert a.public.hex() == pub_a and pub_a not in repr(seed_a) and seed_a not in repr(a)


def test_bad_key_and_trust_files_are_refused_with_one_line_naming_the_file(
    tmp_path: Path,
) -> None:
    seed, pub = identity.generate_node_key()
    cases: list[tuple[Callable[[], object], str]] = [
        (lambda: identity.load_node_key(write(tmp_path / "k1", seed, 0o644)), "chmod 600"),
        (lambda: identity.load_node_key(write(tmp_path / "k2", seed[:-2], 0o600)), "64 hex"),
        (lambda: identity.load_node_key(write(tmp_path / "k3", "", 0o600)), "found 0"),
        (lambda: identity.load_node_key(tmp_path / "absent"), "cannot read"),
        (lambda: identity.load_trust_list(write(tmp_path / "t1", f"a {pub}", 0o666)), "chmod 644"),
        (
            lambda: identity.load_trust_list(write(tmp_path / "t2", f"a {pub}\na {pub}", 0o644)),
            "listed twice",
        ),
        (lambda: identity.load_trust_list(write(tmp_path / "t3", "a zz", 0o644)), "64 hex"),
        (lambda: identity.load_trust_list(write(tmp_path / "t4", "# none\n", 0o644)), "no node"),
    ]
    for load, words in cases:
        with pytest.raises(auth.KeyFileError) as info:
            load()
        message = str(info.value)
        assert "\n" not in message and words in message and str(tmp_path) in message
        assert seed not in message
    # A world-readable trust list is fine: it holds public keys only.
    assert len(identity.load_trust_list(write(tmp_path / "ok", f"a {pub}\n", 0o644))) == 1


def test_keygen_writes_a_0600_node_key_never_overwrites_it_and_prints_its_trust_line(
    tmp_path: Path,
) -> None:
    def keygen(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "xpro_mesh", "keygen", *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    key = tmp_path / "node.key"
    made = keygen("--node", str(key), "--node-id", "proxy-1")
    assert made.returncode == 0, made.stderr
    name, public = made.stdout.split()
    assert name == "proxy-1" and key.stat().st_mode & 0o777 == 0o600
    assert identity.load_node_key(key).public.hex() == public
    again = keygen("--node", str(key))
    assert again.returncode != 0 and "never overwritten" in again.stderr
    assert again.stderr.count("\n") == 1 and "Traceback" not in again.stderr
    shown = keygen("--public", str(key), "--node-id", "proxy-1")
    assert shown.stdout.split() == ["proxy-1", public]
    assert "--node" in keygen("--help").stdout


def test_signed_rows_of_another_origin_inside_a_batch_are_refused_at_decode() -> None:
    seed, _pub = identity.generate_node_key()
    mallory = identity.parse_node_key(seed)
    rows = columns.encode_rows(delta_of("peer", [VICTIM_CLIENT], c=10**9))
    forged = SignedRows("mallory", rows, mallory.sign("mallory", rows))
    back = wire.decode(wire.encode(forged))
    assert isinstance(back, SignedRows)
    assert wire.decode_signed(back) == wire.WireError("foreign_rows")
    own = columns.encode_rows(delta_of("mallory", [VICTIM_CLIENT], c=5))
    fine = wire.decode_signed(SignedRows("mallory", own, mallory.sign("mallory", own)))
    assert isinstance(fine, ColumnarDelta) and fine.rows == 1


def test_the_signed_frame_bound_holds_for_the_encoder() -> None:
    for n in (0, 200, 70_000):
        size = len(wire.encode(SignedRows("o", b"x" * n, b"s" * 64))) - n - len("o")
        assert size <= wire.SIGNED_FRAME_BYTES


# --- real agents ----------------------------------------------------------------------


def delta_of(
    origin: str,
    clients: list[str],
    *,
    c: int = 10,
    seq0: int = 1,
    claim: bool = False,
    inc: int = 1,
) -> ColumnarDelta:
    n = len(clients)
    now = time.time_ns()
    src = np.array([to_addr(x) for x in clients], dtype=ADDRESS_DTYPE)
    dst = np.array([to_addr(DST)] * n, dtype=ADDRESS_DTYPE)
    seq = np.arange(seq0, seq0 + n, dtype=np.int64)
    batch = RowBatch(
        origin,
        src,
        dst,
        np.full(n, now - S, np.int64),
        np.full(n, now, np.int64),
        np.full(n, c, np.int64),
        np.full(n, inc, np.int64),
        seq,
    )
    after = (inc, seq0 - 1) if seq0 > 1 else (0, 0)  # contiguous from nothing held
    coverage = (Coverage(origin, after, (inc, seq0 + n - 1)),) if claim else ()
    return ColumnarDelta((batch,), coverage)


class Mesh:
    """Key files for a cluster: the cluster key, a node key each, one trust list."""

    def __init__(self, root: Path, names: list[str]) -> None:
        self.root = root
        self.cluster = write(root / "cluster.key", auth.generate_key_line() + "\n", 0o600)
        self.keys: dict[str, identity.NodeKey] = {}
        lines = []
        for name in names:
            seed, public = identity.generate_node_key()
            write(root / f"{name}.key", seed + "\n", 0o600)
            self.keys[name] = identity.parse_node_key(seed)
            lines.append(f"{name} {public}")
        self.trust = write(root / "trust", "\n".join(lines) + "\n", 0o644)
        self.ring = auth.load_keyring(self.cluster)

    def overrides(self, name: str, extra: dict[str, str] | None = None) -> dict[str, object | None]:
        return {
            "backend": "memory",
            "profile": "local",
            "node_id": name,
            "bind": "127.0.0.1:0",
            "api": "127.0.0.1:0",
            "key_file": str(self.cluster),
            "node_key_file": str(self.root / f"{name}.key"),
            "trust_file": str(self.trust),
            **QUIET,
            **(extra or {}),
        }

    async def start(
        self,
        name: str,
        peers: list[tuple[str, int]] | None = None,
        extra: dict[str, str] | None = None,
    ) -> Agent:
        over = self.overrides(name, extra)
        over["peers"] = ",".join(f"{h}:{p}" for h, p in peers or [])
        config = load_config(None, over)
        agent = Agent(config, backend=MemoryMaps(xdp_config(config.thresholds)))
        await agent.start()
        return agent

    def signed(self, signer: str, origin: str, delta: ColumnarDelta) -> bytes:
        rows = columns.encode_rows(delta)
        return wire.encode(SignedRows(origin, rows, self.keys[signer].sign(origin, rows)))

    def seal(self, payload: bytes, counter: int, to: str = "target") -> bytes:
        return auth.seal(self.ring, "mallory", 7, counter, time.time_ns(), payload, recipient_id=to)


@pytest.fixture
def attacker() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield sock
    finally:
        sock.close()


def node(agent: Agent) -> MeshNode:
    assert agent.node is not None
    return agent.node


async def test_a_key_holder_cannot_write_another_origins_rows(
    tmp_path: Path, attacker: socket.socket
) -> None:
    """One forged row with c = 1e9 under another origin made a legitimate
    client drop_pair on every node: the row's origin was never tied to its
    sender (here 1e8 in one second, within max_rate: main takes this very
    datagram). Now it must come in its origin's own signed batch."""
    mesh = Mesh(tmp_path, ["target", "peer", "mallory"])
    target = await mesh.start("target")
    peer = await mesh.start("peer", [gossip_addr(target)])
    try:
        await eventually(lambda: node(target).membership.num_live() == 2, 10, "the two to meet")
        to = gossip_addr(target)
        forged = delta_of("peer", [VICTIM_CLIENT], c=10**8, seq0=10**6, claim=True)
        attempts = [
            ("unsigned", wire.encode(forged)),  # the finding's datagram, as it was
            ("bad_signature", mesh.signed("mallory", "peer", forged)),  # mallory signs as peer
            ("foreign_rows", mesh.signed("mallory", "mallory", forged)),  # peer's rows in hers
        ]
        for counter, (_, payload) in enumerate(attempts):
            attacker.sendto(mesh.seal(payload, counter), to)
        rejected = node(target).counters.rejected
        await eventually(
            lambda: all(rejected[r] >= 1 for r, _ in attempts), 10, "the three refusals"
        )
        assert node(target).counters.rows_rejected["unsigned"] == 1
        assert (VICTIM_CLIENT, DST) not in counts(target)
        # The real origin's rows still arrive, signed, and exactly.
        feed(peer.backend, VICTIM_CLIENT, DST, 5)  # type: ignore[arg-type]
        await eventually(
            lambda: counts(target).get((VICTIM_CLIENT, DST)) == 5, 10, "peer's own rows"
        )
        assert node(target).counters.signed_batches >= 1
        assert target.api is not None
        host, port = target.api.address
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://{host}:{port}/v1/status") as resp,
        ):
            status = await resp.json()
        assert status["identity"]["signing"] is True and status["identity"]["trusted"] == 3
        assert status["identity"]["node_key"] == mesh.keys["target"].public.hex()
        assert status["rejected"]["unsigned"] == 1 and status["rows_rejected"]["unsigned"] == 1
    finally:
        await stop_agent(peer)
        await stop_agent(target)


async def test_one_origin_cannot_fill_the_table_its_quota_is_per_origin(
    tmp_path: Path, attacker: socket.socket
) -> None:
    """max_pairs and max_origins were global: one origin could fill them for
    all. A signer writing its own origin now stops at its quota."""
    mesh = Mesh(tmp_path, ["target", "peer", "mallory"])
    quota = {"limits.max_keys_per_origin": "20", "limits.max_keys": "100"}
    target = await mesh.start("target", extra=quota)
    peer = await mesh.start("peer", [gossip_addr(target)], extra=quota)
    try:
        await eventually(lambda: node(target).membership.num_live() == 2, 10, "the two to meet")
        flood = delta_of("mallory", [f"10.2.{i // 250}.{i % 250}" for i in range(60)], claim=True)
        attacker.sendto(mesh.seal(mesh.signed("mallory", "mallory", flood), 0), gossip_addr(target))
        rows = node(target).counters.rows_rejected
        await eventually(lambda: rows["origin_full"] == 40, 10, "the flood past the quota")
        assert target.state.rows_of_origin("mallory") == 20
        # Another origin's new clients still find room (within its own quota).
        for i in range(15):
            feed(peer.backend, f"10.3.0.{i}", DST, 1)  # type: ignore[arg-type]
        await eventually(
            lambda: sum(1 for (s, _) in counts(target) if s.startswith("10.3.")) == 15,
            10,
            "the honest origin's 15 pairs",
        )
    finally:
        await stop_agent(peer)
        await stop_agent(target)


async def test_an_origins_rows_beyond_its_line_rate_are_refused(
    tmp_path: Path, attacker: socket.socket
) -> None:
    mesh = Mesh(tmp_path, ["target", "mallory"])
    target = await mesh.start(
        "target", extra={"limits.origin_rate": "10/s", "limits.origin_burst": "50"}
    )
    try:
        to = gossip_addr(target)
        clients = [f"10.2.0.{i}" for i in range(50)]
        first = delta_of("mallory", clients, claim=True)
        second = delta_of("mallory", clients, seq0=51, claim=True)
        attacker.sendto(mesh.seal(mesh.signed("mallory", "mallory", first), 0), to)
        attacker.sendto(mesh.seal(mesh.signed("mallory", "mallory", second), 1), to)
        rows = node(target).counters.rows_rejected
        await eventually(lambda: rows["origin_rate"] == 50, 10, "the second batch refused")
        assert node(target).counters.rows_accepted == 50
    finally:
        await stop_agent(target)


async def test_rows_of_an_origin_that_never_claims_coverage_expire(
    tmp_path: Path, attacker: socket.socket
) -> None:
    """100k rows without a coverage claim were offered again on every Sync
    (the receiver's API hung, it was declared dead). Now an origin whose rows
    stay above its covered watermark loses them."""
    mesh = Mesh(tmp_path, ["target", "peer", "mallory"])
    fast = {"limits.uncovered_after": "1s"}
    target = await mesh.start("target", extra=fast)
    peer = await mesh.start("peer", [gossip_addr(target)], extra=fast)
    try:
        await eventually(lambda: node(target).membership.num_live() == 2, 10, "the two to meet")
        uncovered = delta_of("mallory", [f"10.2.0.{i}" for i in range(100)])  # no claim
        attacker.sendto(
            mesh.seal(mesh.signed("mallory", "mallory", uncovered), 0), gossip_addr(target)
        )
        await eventually(
            lambda: target.state.rows_of_origin("mallory") == 100, 10, "the rows taken"
        )
        await eventually(
            lambda: (
                target.state.rows_of_origin("mallory") == 0
                and peer.state.rows_of_origin("mallory") == 0
            ),
            10,
            "the uncovered rows dropped everywhere",
        )
        assert node(target).counters.uncovered_dropped == 100
        assert "mallory" not in node(target).relay.origins()
        # A covered origin keeps its rows.
        feed(peer.backend, VICTIM_CLIENT, DST, 3)  # type: ignore[arg-type]
        await eventually(lambda: counts(target).get((VICTIM_CLIENT, DST)) == 3, 10, "peer's rows")
        await asyncio.sleep(2.0)
        assert counts(target).get((VICTIM_CLIENT, DST)) == 3
    finally:
        await stop_agent(peer)
        await stop_agent(target)


async def test_an_agent_refuses_to_start_with_a_missing_or_unlisted_node_key(
    tmp_path: Path,
) -> None:
    mesh = Mesh(tmp_path, ["target"])
    with pytest.raises(ConfigError, match="trust_file: required"):
        load_config(None, {**mesh.overrides("target"), "trust_file": None})
    stranger = mesh.overrides("stranger")
    write(tmp_path / "stranger.key", identity.generate_node_key()[0], 0o600)
    config = load_config(None, stranger)
    agent = Agent(config, backend=MemoryMaps(xdp_config(config.thresholds)))
    with pytest.raises(AgentError, match=r"stranger.* is not listed; add the line: stranger "):
        await agent.start()
    await agent.shutdown()


async def test_sighup_reloads_the_trust_list_and_a_bad_one_keeps_the_running_list(
    tmp_path: Path,
) -> None:
    mesh = Mesh(tmp_path, ["target"])
    target = await mesh.start("target")
    try:
        before = node(target).trust
        assert before is not None and "newcomer" not in before
        _seed, public = identity.generate_node_key()
        lines = mesh.trust.read_text() + f"newcomer {public}\n"
        write(mesh.trust, lines, 0o644)
        target.reload()  # what SIGHUP calls
        running = node(target).trust
        assert running is not None and "newcomer" in running
        write(mesh.trust, lines + "garbage\n", 0o644)
        target.reload()
        assert node(target).trust is running and target.counters.reload_errors == 1
    finally:
        await stop_agent(target)


@pytest.mark.slow
def test_five_signing_agent_processes_converge_to_exact_counts(tmp_path: Path) -> None:
    """The acceptance run of tests/test_agent_processes.py with rows signed:
    five ``xpro-mesh agent`` processes, one seed, exact global counts."""
    names = [f"node-{i}" for i in range(5)]
    quiet: dict[str, object] = {
        "t_t1": "10m",
        "t_t4": "1h",
        "t_f1": "1000000/s",
        "t_f2": "10000000/s",
    }
    with LoopbackMesh(tmp_path / "mesh", thresholds=quiet, signed_nodes=names) as mesh:
        agents = mesh.start_cluster(5)
        expected = {}
        for i, agent in enumerate(agents):
            agent.feed("10.1.0.9", DST, 5 + i)  # one client spread over every proxy
            agent.feed(f"10.1.1.{i}", DST, 3)
            expected[(f"10.1.1.{i}", DST)] = 3
        expected[("10.1.0.9", DST)] = sum(5 + i for i in range(5))
        wait_until(
            lambda: all(a.counts(DST) == expected for a in agents), 20, "exact global counts"
        )
        for agent in agents:
            ident = agent.status()["identity"]
            assert ident["signing"] and ident["trusted"] == 5 and ident["signed_batches"] > 0
            assert agent.status()["rows_rejected"].get("unsigned", 0) == 0


# --- relaying, in-memory meshes -----------------------------------------------------

P = Params(t_t1=5 * S, t_t2=S, t_t3=S, t_t4=60 * S, t_f1=100, t_f2=1000, r=2)
KEYRING = auth.Keyring([bytes(range(32))])
VICTIM = b"\x00" * 10 + b"\xff\xff" + bytes([10, 20, 0, 2])


def signing_node(
    net: MemoryNetwork,
    name: str,
    port: int,
    keys: dict[str, identity.NodeKey],
    streams: MemoryStreams | None = None,
) -> MeshNode:
    cfg = local_gossip()
    membership = Membership(
        name,
        ("10.20.0.1", port),
        incarnation=int(time.time() * 1000),
        now_ns=time.monotonic_ns(),
        rng=random.Random(port),
        params=cfg.membership_params(),
    )
    trust = identity.TrustList.of({n: k.public for n, k in keys.items()})
    mesh_node = MeshNode(
        state=GossipStateAdapter(GossipState(name, incarnation=membership.incarnation, params=P)),
        membership=membership,
        keyring=KEYRING,
        timing=NodeTiming(interval_ns=cfg.interval_ns, fanout=cfg.fanout),
        limits=MergeLimits(),
        rng=random.Random(port + 1),
        node_key=keys[name],
        trust=trust,
    )
    addr = ("10.20.0.1", port)
    stream = streams.attach(addr, mesh_node.receive_frame) if streams is not None else None
    mesh_node.attach(net.attach(addr, mesh_node.receive), stream)
    return mesh_node


def table(n: MeshNode) -> GossipState:
    assert isinstance(n.state, GossipStateAdapter)
    return n.state.state


async def test_rows_reach_a_node_the_origin_cannot_reach_in_the_origins_own_signed_batch() -> None:
    """a and c cannot talk; b relays a's batches as a signed them, and c
    takes them because a's key verifies them, not because b sent them."""
    keys = {n: identity.parse_node_key(identity.generate_node_key()[0]) for n in "abc"}
    net = MemoryNetwork(rng=random.Random(5))
    a, b, c = (signing_node(net, n, 7300 + i, keys) for i, n in enumerate("abc"))
    net.partition([("10.20.0.1", 7300)], [("10.20.0.1", 7302)])
    stop = asyncio.Event()
    b.join([("10.20.0.1", 7300)])
    c.join([("10.20.0.1", 7301)])
    tasks = [asyncio.create_task(n.run(stop)) for n in (a, b, c)]
    pair = (b"\x00" * 10 + b"\xff\xff" + bytes([10, 10, 100, 1]), VICTIM)
    try:
        now = time.time_ns()
        table(a).record_local(pair, LocalCount(now, now + 1, dc=42, mark=0))
        deadline = time.monotonic() + 15
        while not ((v := table(c).pair_view(pair)) is not None and v.c == 42):
            assert time.monotonic() < deadline, "a's row never reached c"
            await asyncio.sleep(0.02)
        assert b.counters.relayed_batches >= 1
        assert c.counters.signed_batches >= 1
        assert table(c).digest().versions.get("a") == table(a).digest().versions["a"]
    finally:
        stop.set()
        await asyncio.gather(*tasks)


async def test_five_signing_nodes_agree_on_exact_counts_under_loss_and_duplication() -> None:
    """Property 2 (exactness) with every row signed and relayed as signed."""
    names = [f"s{i}" for i in range(5)]
    keys = {n: identity.parse_node_key(identity.generate_node_key()[0]) for n in names}
    net = MemoryNetwork(rng=random.Random(11), loss=0.05, duplicate=0.05)
    nodes = [signing_node(net, n, 7400 + i, keys) for i, n in enumerate(names)]
    stop = asyncio.Event()
    for n in nodes[1:]:
        n.join([("10.20.0.1", 7400)])
    tasks = [asyncio.create_task(n.run(stop)) for n in nodes]
    pair = (b"\x00" * 10 + b"\xff\xff" + bytes([10, 10, 100, 7]), VICTIM)
    try:
        deadline = time.monotonic() + 10
        while not all(n.membership.num_live() == 5 for n in nodes):
            assert time.monotonic() < deadline, "the five never met"
            await asyncio.sleep(0.02)
        now = time.time_ns()
        for i, n in enumerate(nodes):
            table(n).record_local(pair, LocalCount(now, now + i, dc=10 + i, mark=0))
        deadline = time.monotonic() + 15
        while not all((v := table(n).pair_view(pair)) is not None and v.c == 60 for n in nodes):
            assert time.monotonic() < deadline, [table(n).pair_view(pair) for n in nodes]
            await asyncio.sleep(0.02)
        assert all(n.counters.rows_rejected.get("unsigned", 0) == 0 for n in nodes)
    finally:
        stop.set()
        await asyncio.gather(*tasks)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_any_bytes_signed_by_a_listed_key_never_raise_and_a_refusal_changes_nothing(
    data: st.DataObject,
) -> None:
    """What a compromised signer can send: arbitrary or mutated row bytes
    under a valid signature of its own origin."""
    keys = {n: identity.parse_node_key((bytes([i + 1]) * 32).hex()) for i, n in enumerate("tm")}
    net = MemoryNetwork()
    target = signing_node(net, "t", 7500, keys)
    good = columns.encode_rows(delta_of("m", [f"10.2.0.{i}" for i in range(5)], claim=True))
    if data.draw(st.booleans()):
        rows = data.draw(st.binary(max_size=300))
    else:
        mutated = bytearray(good)
        for _ in range(data.draw(st.integers(1, 4))):
            at = data.draw(st.integers(0, len(mutated) - 1))
            mutated[at] ^= 1 << data.draw(st.integers(0, 7))
        rows = bytes(mutated)
    origin = data.draw(st.sampled_from(["m", "t", "x"]))
    message = SignedRows(origin, rows, keys["m"].sign(origin, rows))
    before = (frozenset(table(target).entries()), table(target).digest())
    target._merge_signed(message, wire.DEFAULT_LIMITS)
    taken = target.counters.signed_batches
    if origin != "m" or not taken:
        assert (frozenset(table(target).entries()), table(target).digest()) == before


async def test_a_large_signed_delta_streams_and_is_relayed_as_its_stream_frame() -> None:
    """3 000 rows need more than stream_after datagrams: the origin signs one
    stream frame; the relay passes that frame on to the node the origin
    cannot reach (datagrams and stream both cut between a and c)."""
    keys = {n: identity.parse_node_key(identity.generate_node_key()[0]) for n in "abc"}
    net = MemoryNetwork(rng=random.Random(6))
    streams = MemoryStreams()
    a, b, c = (signing_node(net, n, 7600 + i, keys, streams) for i, n in enumerate("abc"))
    net.partition([("10.20.0.1", 7600)], [("10.20.0.1", 7602)])
    streams.partition(("10.20.0.1", 7600), ("10.20.0.1", 7602))
    stop = asyncio.Event()
    b.join([("10.20.0.1", 7600)])
    c.join([("10.20.0.1", 7601)])
    tasks = [asyncio.create_task(n.run(stop)) for n in (a, b, c)]
    now = time.time_ns()
    pairs = [
        (b"\x00" * 10 + b"\xff\xff" + bytes([10, 11, i // 250, i % 250]), VICTIM)
        for i in range(3000)
    ]
    try:
        for i, pair in enumerate(pairs):
            table(a).record_local(pair, LocalCount(now, now + i, dc=1 + i % 7, mark=0))
        deadline = time.monotonic() + 20
        while len(table(c)) < 3000:
            assert time.monotonic() < deadline, f"c holds {len(table(c))} of 3000 rows"
            await asyncio.sleep(0.05)
        assert a.counters.streams_sent >= 1 and b.counters.streams_sent >= 1
        assert b.counters.relayed_batches >= 1
        v = table(c).pair_view(pairs[-1])
        assert v is not None and v.c == 1 + 2999 % 7
    finally:
        stop.set()
        await asyncio.gather(*tasks)


def test_dropping_an_uncovered_origin_keeps_its_covered_rows_in_both_tables() -> None:
    from xpro_mesh.core.rows import to_delta
    from xpro_mesh.core.table import PairTable

    covered = delta_of("x", [f"10.2.0.{i}" for i in range(3)], claim=True)  # versions 1..3
    uncovered = delta_of("x", [f"10.2.1.{i}" for i in range(2)], seq0=10)  # 10, 11: no claim
    now = time.time_ns()
    scalar = GossipState("me", incarnation=1, params=P)
    columnar = PairTable("me", 1, P)
    for d in (covered, uncovered):
        scalar.merge(to_delta(d), now)
        columnar.merge(d, now)
    assert scalar.drop_uncovered("x") == columnar.drop_uncovered("x") == 2
    assert len(scalar) == len(columnar) == 3
    assert scalar.digest() == columnar.digest()
    assert scalar.drop_uncovered("me") == columnar.drop_uncovered("me") == 0


def test_check_config_judges_the_node_key_and_says_when_rows_are_unsigned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from xpro_mesh.cli import main as cli_main

    mesh = Mesh(tmp_path, ["target"])
    base = ["agent", "--check-config", "--backend", "memory", "--key-file", str(mesh.cluster)]
    base += ["--node-id", "target", "--api", "127.0.0.1:1"]
    assert cli_main(base) == 0
    assert "warning: no node_key_file/trust_file" in capsys.readouterr().out
    keyed = [*base, "--node-key-file", str(tmp_path / "target.key")]
    keyed += ["--trust-file", str(mesh.trust)]
    assert cli_main(keyed) == 0
    out = capsys.readouterr().out
    assert "1 trusted node(s)" in out and "no node_key_file" not in out
    write(mesh.trust, f"other {identity.generate_node_key()[1]}\n", 0o644)
    assert cli_main(keyed) == 1
    assert "problem: trust_file:" in capsys.readouterr().out
