"""The traffic processes' pacing and start-up handshake, without a network."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from xpro_mesh.lab import traffic


async def test_paced_sends_each_address_at_its_rate_round_robin() -> None:
    sent: list[tuple[int, int]] = []
    start = time.monotonic() + 0.05
    calls = await traffic._paced(
        4, 50.0, start, start + 0.5, asyncio.Event(), lambda i, seq: sent.append((i, seq))
    )
    assert calls == len(sent)
    assert 95 <= calls <= 101  # 4 addresses x 50 pps x 0.5 s
    assert [i for i, _ in sent[:8]] == [0, 1, 2, 3, 0, 1, 2, 3]


async def test_paced_started_late_does_not_burst_what_it_missed() -> None:
    sent: list[float] = []
    start = time.monotonic() - 1.0  # the process came up a second late
    await traffic._paced(
        1, 100.0, start, start + 1.2, asyncio.Event(), lambda i, seq: sent.append(time.monotonic())
    )
    assert len(sent) <= 25  # ~0.2 s worth, not the 100 owed for the missed second


async def test_epoch_comes_from_the_file_once_written(tmp_path: Path) -> None:
    path = tmp_path / "epoch"

    async def write_later() -> None:
        await asyncio.sleep(0.1)
        path.write_text("123.5")

    writer = asyncio.create_task(write_later())
    assert await traffic._epoch(path, asyncio.Event(), wait_s=5) == 123.5
    await writer
    assert await traffic._epoch(7.0, asyncio.Event()) == 7.0
