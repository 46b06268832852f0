"""Acceptance of the agent (issue 4) with real ``xpro-mesh agent`` processes.

Five agents on 127.0.0.1 with the in-memory data path and the ``local``
profile, joined through one seed, driven only through their HTTP API and
signals, as an operator would (:mod:`xpro_mesh.bench.loopback`). Every
process is killed in the fixture's finalizer, also when a test fails, and
every test has a time limit.

The thresholds are set so that nothing in a test drops or restarts a window
(T_T1 10 min, T_T4 1 h, T_F1/T_F2 far above the fed rates): what is checked
is the sharing, so every count is exact.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from xpro_mesh.agent.config import local_gossip
from xpro_mesh.bench.loopback import AgentProcess, HttpError, LoopbackMesh, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

N = 5
DST = "10.9.0.1"
CONVERGE_S = 10.0  # generous: a few 100 ms rounds are enough, the host is shared
QUIET_THRESHOLDS: dict[str, object] = {
    "t_t1": "10m",
    "t_t4": "1h",
    "t_f1": "1000000/s",
    "t_f2": "10000000/s",
}
DETECTION_BOUND_S = local_gossip().detection_time_bound_ns(N) / 1e9


@pytest.fixture
def mesh(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[LoopbackMesh]:
    m = LoopbackMesh(tmp_path / "mesh", thresholds=dict(QUIET_THRESHOLDS))
    failed_before = request.session.testsfailed
    try:
        yield m
    finally:
        m.close()
        if request.session.testsfailed > failed_before:
            print(m.logs())  # shown with the failure's captured output


def all_alive(agents: list[AgentProcess], names: set[str]) -> bool:
    for a in agents:
        states = a.peer_states()
        if {n for n, s in states.items() if s == "alive"} != names:
            return False
    return True


def converged(agents: list[AgentProcess], expected: dict[tuple[str, str], int]) -> bool:
    return all(a.counts(DST) == expected for a in agents)


def wait_converged(agents: list[AgentProcess], expected: dict[tuple[str, str], int]) -> None:
    try:
        wait_until(lambda: converged(agents, expected), CONVERGE_S, "exact global counts")
    except TimeoutError:
        seen = {a.node_id: a.counts(DST) for a in agents}
        raise AssertionError(f"expected {expected} on every node, saw {seen}") from None


def feed_load(
    agents: list[AgentProcess], plan: list[tuple[int, str, int]]
) -> dict[tuple[str, str], int]:
    """Feed ``(node index, src, packets)`` and return the global counts it makes."""
    expected: Counter[tuple[str, str]] = Counter()
    for index, src, count in plan:
        agents[index].feed(src, DST, count)
        expected[(src, DST)] += count
    return dict(expected)


def test_membership_converges_from_one_seed(mesh: LoopbackMesh) -> None:
    agents = mesh.start_cluster(N)
    names = {a.node_id for a in agents}
    wait_until(lambda: all_alive(agents, names), CONVERGE_S, "every node to see 5 alive")
    for a in agents:
        status = a.status()
        assert status["node_id"] == a.node_id
        assert sorted(p["node_id"] for p in status["peers"] if p["state"] == "alive") == sorted(
            names
        )


def test_distributed_load_converges_to_exact_global_counts_everywhere(
    mesh: LoopbackMesh,
) -> None:
    agents = mesh.start_cluster(N)
    plan = [
        (0, "10.1.0.1", 30),  # a pair seen by one proxy only
        (1, "10.1.0.2", 12),
        (2, "10.1.0.3", 7),
        # one client spread thin over every proxy: the botnet case
        *[(i, "10.1.0.9", 5 + i) for i in range(N)],
        (4, "10.1.0.1", 3),  # a client that moved from node-0 to node-4
    ]
    expected = feed_load(agents, plan)
    assert expected[("10.1.0.9", DST)] == sum(5 + i for i in range(N))
    wait_converged(agents, expected)
    # A second burst on top: the counts keep adding up exactly.
    more = feed_load(agents, [(3, "10.1.0.2", 8), (0, "10.1.0.9", 1)])
    wait_converged(agents, dict(Counter(expected) + Counter(more)))


def test_sigkilled_node_is_declared_dead_in_time_and_rejoins_with_full_state(
    mesh: LoopbackMesh,
) -> None:
    agents = mesh.start_cluster(N)
    names = {a.node_id for a in agents}
    wait_until(lambda: all_alive(agents, names), CONVERGE_S, "membership")
    victim = agents[3]
    expected = feed_load(
        agents,
        [(3, "10.2.0.3", 40), (3, "10.2.0.9", 4), (0, "10.2.0.9", 6), (1, "10.2.0.1", 11)],
    )
    wait_converged(agents, expected)
    old_incarnation = agents[0].incarnations()[victim.node_id]

    victim.proc.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    victim.proc.wait(timeout=5)
    survivors = [a for a in agents if a is not victim]
    seen_dead: dict[str, float] = {}

    def all_see_dead() -> bool:
        for a in survivors:
            if a.node_id not in seen_dead and a.peer_states().get(victim.node_id) == "dead":
                seen_dead[a.node_id] = time.monotonic() - killed
        return len(seen_dead) == len(survivors)

    wait_until(all_see_dead, 3 * DETECTION_BOUND_S, "the survivors to declare the victim dead")
    worst = max(seen_dead.values())
    assert worst <= DETECTION_BOUND_S, (
        f"detection took {worst:.2f} s, bound {DETECTION_BOUND_S:.2f} s ({seen_dead})"
    )

    # The survivors keep converging without it.
    more = feed_load(survivors, [(0, "10.2.0.9", 9), (2, "10.2.0.3", 2)])
    expected = dict(Counter(expected) + Counter(more))
    wait_converged(survivors, expected)

    # Same node id again, same address. Packets arrive at once (a proxy's
    # kernel keeps counting while its agent restarts): they must add to the
    # window it counted before the crash, not replace it.
    back = mesh.restart(victim, [agents[0].gossip])
    again = feed_load([back], [(0, "10.2.0.3", 5)])
    expected = dict(Counter(expected) + Counter(again))
    everyone = [*survivors, back]
    wait_until(lambda: all_alive(everyone, names), CONVERGE_S, "the restarted node alive")
    for a in everyone:
        assert a.incarnations()[victim.node_id] > old_incarnation
    wait_converged(everyone, expected)
    assert back.counts(DST)[("10.2.0.3", DST)] == 40 + 2 + 5


def test_sigterm_exits_zero_promptly_and_peers_see_it_leave(mesh: LoopbackMesh) -> None:
    agents = mesh.start_cluster(3)
    names = {a.node_id for a in agents}
    wait_until(lambda: all_alive(agents, names), CONVERGE_S, "membership")
    leaving = agents[2]
    leaving.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    assert leaving.proc.wait(timeout=5) == 0
    assert time.monotonic() - sent < 3.0
    others = agents[:2]
    wait_until(
        lambda: all(a.peer_states().get(leaving.node_id) == "dead" for a in others),
        1.0,
        "the peers to see the node leave (well inside the detection time)",
    )
    assert any("stopped" in r.get("msg", "") for r in leaving.log_records())


def test_sighup_reloads_thresholds_and_refuses_a_bad_file(mesh: LoopbackMesh) -> None:
    agent = mesh.start("solo")
    assert agent.get("/v1/config")["thresholds"]["t_f1"] == 1_000_000

    mesh.write_config({**QUIET_THRESHOLDS, "t_f1": "250/s", "policy": "paper"})
    agent.send_signal(signal.SIGHUP)
    wait_until(lambda: agent.get("/v1/config")["thresholds"]["t_f1"] == 250, 5.0, "the reload")
    assert agent.get("/v1/config")["thresholds"]["policy"] == "paper"

    mesh.write_config({}, raw='profile = "local"\n[thresholds]\nt_f1 = "fast"\n')
    agent.send_signal(signal.SIGHUP)
    wait_until(
        lambda: any("reload refused" in r.get("msg", "") for r in agent.log_records()),
        5.0,
        "the refusal in the log",
    )
    refusal = next(r for r in agent.log_records() if "reload refused" in r.get("msg", ""))
    assert refusal["level"] == "error" and "thresholds.t_f1" in refusal["msg"]
    assert agent.get("/v1/config")["thresholds"]["t_f1"] == 250
    assert agent.alive()


def test_put_config_needs_the_token_and_goes_live(mesh: LoopbackMesh) -> None:
    agent = mesh.start("solo")
    body = {"thresholds": {"t_f1": "10/s", "t_t2": "1ms"}}
    for token in (None, "wrong-token"):
        with pytest.raises(HttpError) as refused:
            agent.request("PUT", "/v1/config", body, token=token)
        assert refused.value.status == 401
    assert agent.get("/v1/config")["thresholds"]["t_f1"] == 1_000_000

    doc = agent.get("/v1/config")
    answer = agent.request("PUT", "/v1/config", body, token=mesh.token)
    assert b'"t_f1": 10' in answer
    assert agent.get("/v1/config")["thresholds"]["t_f1"] == 10
    assert agent.get("/v1/config")["thresholds"]["t_t4"] == doc["thresholds"]["t_t4"]
    # Live in the data path: a pair over 10/s for longer than T_T2 is dropped.
    assert agent.feed("10.3.0.1", DST, 1)["verdicts"] == {"pass": 1}
    time.sleep(0.05)
    verdicts = agent.feed("10.3.0.1", DST, 50)["verdicts"]
    assert verdicts.get("drop_pair", 0) == 50, verdicts


def test_metrics_parse_as_prometheus_text(mesh: LoopbackMesh) -> None:
    agents = mesh.start_cluster(2)
    names = {a.node_id for a in agents}
    wait_until(lambda: all_alive(agents, names), CONVERGE_S, "membership")
    agents[0].feed("10.4.0.1", DST, 3)
    wait_until(lambda: agents[1].counts(DST).get(("10.4.0.1", DST)) == 3, CONVERGE_S, "the count")
    families = {f.name: f for f in text_string_to_metric_families(agents[1].metrics_text())}
    for name in (
        "xpro_packets",
        "xpro_gossip_rounds",
        "xpro_mesh_sent_bytes",
        "xpro_messages_received",
        "xpro_members",
        "xpro_sync_cycles",
    ):
        assert name in families, sorted(families)
    members = {s.labels["state"]: s.value for s in families["xpro_members"].samples}
    assert members["alive"] == 2
    assert sum(s.value for s in families["xpro_mesh_sent_bytes"].samples) > 0
    rounds = [s.value for s in families["xpro_gossip_rounds"].samples]
    assert rounds and rounds[0] > 0
