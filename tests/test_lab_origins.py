"""The lab's rows figures: GET /v1/origins (per origin held: watermark,
rows, summed count) and what beats of it say after a mend (caught up
after how many rounds; the count error among live origins at equal
versions)."""

from __future__ import annotations

import asyncio

import aiohttp
import numpy as np

from xpro_mesh.agent.config import load_config
from xpro_mesh.agent.daemon import Agent
from xpro_mesh.core.algorithm import Params
from xpro_mesh.core.table import PairTable
from xpro_mesh.lab.origins import Sample, _get, parse_origins, settle_figures

S = 10**9
P = Params(t_t1=3 * S, t_t2=S // 2, t_t3=S, t_t4=2 * S, t_f1=50, t_f2=1200, r=2)
T0 = 1_000_000.0


def addr(i: int) -> bytes:
    return b"\x00" * 10 + b"\xff\xff" + bytes([10, 1, 0, i])


def test_origin_summary_is_the_watermark_rows_and_count_per_origin() -> None:
    a, b = PairTable("a", 1, P), PairTable("b", 1, P)
    now = 1_800_000_000 * S
    src = np.array([addr(1), addr(2)], "S16")
    dst = np.array([addr(99)] * 2, "S16")
    a.record_local(
        src, dst, np.full(2, now), np.full(2, now), np.array([3, 4]), np.zeros(2, np.int64)
    )
    assert a.origin_summary() == {"a": ((1, 2), 2, 7)}
    b.merge(a.delta_for(b.digest()), now)
    assert b.origin_summary()["a"] == ((1, 2), 2, 7)
    assert b.origin_summary()["b"] == ((1, 0), 0, 0)
    # rows idle since before the cut-off are left out (those near expiry)
    assert b.origin_summary(active_since=now + 1)["a"] == ((1, 2), 0, 0)


def beat(k: int, **nodes: dict[str, tuple[tuple[int, int], int, int]]) -> dict[str, Sample]:
    return {n: Sample(k, T0 + 0.1 * k + 0.001 * i, o) for i, (n, o) in enumerate(nodes.items())}


def samples(*beats: dict[str, Sample]) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = {}
    for b in beats:
        for n, s in b.items():
            out.setdefault(n, []).append(s)
    return out


def test_rows_catch_up_when_every_holder_has_what_each_origin_had_a_beat_before() -> None:
    v = (7, 10)
    beats = samples(
        beat(0, p0={"p0": (v, 5, 50)}, p1={"p1": ((8, 3), 1, 9)}),  # p1 just restarted
        beat(1, p0={"p0": ((7, 11), 5, 52), "p1": ((8, 3), 1, 9)}, p1={"p1": ((8, 4), 1, 9)}),
        beat(
            2,
            p0={"p0": ((7, 12), 5, 54), "p1": ((8, 4), 1, 9)},
            p1={"p1": ((8, 4), 1, 9), "p0": ((7, 11), 5, 52)},
        ),
    )
    figures = settle_figures(beats, T0, T0 + 1, 0.1)
    assert figures["rows_caught_up"] is True
    assert figures["rows_rounds_to_catch_up"] == 2  # beat 2, 0.2 s after the mend
    # at beat 2 p0's view of p1 is at p1's version: compared, equal counts
    assert figures["count_error_max"] == 0 and figures["count_comparisons"] == 1
    assert figures["count_error_max_raw"] == 2  # p1's view of p0 is one change behind


def test_a_count_difference_at_equal_versions_is_a_count_error() -> None:
    beats = samples(
        beat(0, p0={"p0": ((1, 5), 2, 10)}, p1={"p1": ((2, 1), 1, 1), "p0": ((1, 5), 2, 10)}),
        beat(
            1,
            p0={"p0": ((1, 5), 2, 10), "p1": ((2, 1), 1, 1)},
            p1={"p1": ((2, 1), 1, 1), "p0": ((1, 5), 2, 8)},
        ),
    )
    figures = settle_figures(beats, T0, T0 + 1, 0.1)
    assert figures["rows_caught_up"] is True and figures["count_error_max"] == 2


def test_rows_never_caught_up_across_a_partition() -> None:
    beats = samples(
        *(
            beat(
                k,
                p0={"p0": ((1, 10 + k), 1, k)},
                p1={"p1": ((2, 10 + k), 1, k), "p0": ((1, 9), 1, 0)},
            )
            for k in range(5)
        )
    )
    figures = settle_figures(beats, T0, T0 + 1, 0.1)
    assert figures["rows_caught_up"] is False and figures["rows_rounds_to_catch_up"] is None
    assert figures["beats"] == 5


async def test_the_agent_answers_origins_and_the_sampler_reads_it() -> None:
    config = load_config(
        None, {"backend": "memory", "sync": "none", "api": "127.0.0.1:0"}, require_key_file=False
    )
    agent = Agent(config)
    now = 1_800_000_000 * S
    agent.state.record_local(
        np.array([addr(1)], "S16"),
        np.array([addr(99)], "S16"),
        np.full(1, now),
        np.full(1, now),
        np.array([6]),
        np.zeros(1, np.int64),
    )
    await agent.start()
    try:
        assert agent.api is not None
        host, port = agent.api.address
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://{host}:{port}/v1/origins") as resp,
            http.get(f"http://{host}:{port}/v1/origins?active_since=x") as bad,
        ):
            doc = await resp.json()
            assert bad.status == 400
        me = config.node_id
        assert doc["node_id"] == me
        assert doc["origins"][me]["rows"] == 1 and doc["origins"][me]["count"] == 6
        assert parse_origins(doc)[me] == ((agent.incarnation, 1), 1, 6)
        raw = await asyncio.to_thread(_get, port, "/v1/origins")
        assert raw is not None and parse_origins(raw) == parse_origins(doc)
        assert await asyncio.to_thread(_get, 1, "/v1/origins") is None  # nobody there
    finally:
        agent.stop.set()
        await agent.shutdown()
