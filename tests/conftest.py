"""Shared fixtures.

Kernel tier (``@pytest.mark.kernel``): ``xdp_test_program`` builds
bpf/xpro.c once per session with the test clock seam (-DXPRO_TEST_CLOCK)
and unpinned maps; ``kernel_maps`` hands each test its maps as fresh
(``xdp_small_program``/``small_kernel_maps``: 12 pair slots and 3
destination slots; ``xdp_clock_program``: the real clock).

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


SMALL_SIZES = (12, 3)  # pair slots, destination slots of xdp_small_program


@pytest.fixture(scope="session")
def xdp_small_program() -> Iterator[object]:
    """bpf/xpro.c with 12 pair slots and 3 destination slots (test clock):
    free rings that run out within a test."""
    _require_root()
    from xpro_mesh.datapath import loader
    from xpro_mesh.datapath.config import MapSizes

    pairs_max, dests_max = SMALL_SIZES
    prog = loader.load(
        loader.BuildOptions(sizes=MapSizes(pairs_max, dests_max), test_clock=True),
        log_tag="xpro-tests-small",
    )
    try:
        yield prog
    finally:
        prog.close()


@pytest.fixture(scope="session")
def xdp_clock_program() -> Iterator[object]:
    """bpf/xpro.c as attached (the real clock), maps unpinned: for tests of
    concurrency, where time must move within one BPF_PROG_TEST_RUN."""
    _require_root()
    from xpro_mesh.datapath import loader
    from xpro_mesh.datapath.config import MapSizes

    prog = loader.load(
        loader.BuildOptions(sizes=MapSizes(pairs_max=1 << 12, dests_max=1 << 6)),
        log_tag="xpro-tests-clock",
    )
    try:
        yield prog
    finally:
        prog.close()


@pytest.fixture
def small_kernel_maps(xdp_small_program: object) -> Iterator[object]:
    """The small program's maps, as fresh."""
    from datapath_support import clear_maps

    maps = xdp_small_program.maps()  # type: ignore[attr-defined]
    clear_maps(maps)
    try:
        yield maps
    finally:
        maps.close()


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
