"""Shared fixtures.

Kernel tier (``@pytest.mark.kernel``): ``xdp_test_program`` builds
bpf/xpro.c once per session with the test clock seam (-DXPRO_TEST_CLOCK)
and unpinned maps; ``kernel_maps`` hands each test its maps emptied.

Namespace tier (``@pytest.mark.netns``): ``netns`` makes uniquely named
network namespaces (pyroute2's fixture model) and always removes them, with
everything inside, also when the test fails.

Both tiers skip when not root (CI runs as root); as root, a missing bcc or
a kernel that rejects the program is a failure, not a skip.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator

import pytest


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (BPF programs, network namespaces)")


@pytest.fixture
def root() -> None:
    """Skip unless root."""
    _require_root()


@pytest.fixture(scope="session")
def xdp_test_program() -> Iterator[object]:
    """bpf/xpro.c loaded once with -DXPRO_TEST_CLOCK, maps unpinned."""
    _require_root()
    from xpro_mesh.datapath import loader
    from xpro_mesh.datapath.config import MapSizes

    prog = loader.load(
        loader.BuildOptions(sizes=MapSizes(pairs_max=1 << 16, dests_max=1 << 12), test_clock=True),
        log_tag="xpro-tests",
    )
    try:
        yield prog
    finally:
        prog.close()


@pytest.fixture
def kernel_maps(xdp_test_program: object) -> Iterator[object]:
    """The test program's maps, emptied (pairs, destinations, stats, config, clock)."""
    from datapath_support import clear_maps

    maps = xdp_test_program.maps()  # type: ignore[attr-defined]
    clear_maps(maps)
    try:
        yield maps
    finally:
        maps.close()


@pytest.fixture
def netns() -> Iterator[Callable[[str], str]]:
    """``make(prefix) -> name``: a fresh network namespace, removed at teardown
    (with its veths and any XDP program on them)."""
    _require_root()
    from pyroute2 import netns as pyroute2_netns

    made: list[str] = []

    def make(prefix: str) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        pyroute2_netns.create(name)
        made.append(name)
        return name

    try:
        yield make
    finally:
        for name in reversed(made):
            with contextlib.suppress(OSError):
                pyroute2_netns.remove(name)
