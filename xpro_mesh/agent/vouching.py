"""The agent's vouches (issue 13): once per sync cycle, select from the
mesh's rows the pairs established at other origins and under the fair share
(:meth:`~xpro_mesh.core.table.PairTable.vouched`, the columnar form of
:func:`~xpro_mesh.core.vouch.select_vouched`) and write them to the filter's
vouch maps (:class:`~xpro_mesh.datapath.vouch_bloom.VouchMaps`, or the twin's
``MemoryMaps.vouches``). ``write`` sends only the difference to the hash
map, so a steady mesh costs no map writes."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from xpro_mesh.core.table import PairTable
from xpro_mesh.datapath.backend import MapBackend
from xpro_mesh.datapath.errors import DatapathError
from xpro_mesh.datapath.vouch_bloom import VOUCHED_MAX

log = logging.getLogger(__name__)


class VouchWriter(Protocol):
    capacity: int

    def write(self, keys: Iterable[bytes]) -> tuple[int, int]: ...


class Vouching:
    """Selection plus the incremental write, bounded by ``vouched_max`` and
    the map's capacity."""

    def __init__(self, maps: VouchWriter, *, vouched_max: int) -> None:
        self.maps = maps
        self.max = min(vouched_max, maps.capacity)
        self.last: tuple[int, int, int] = (0, 0, 0)  # (vouched, added, removed)

    def cycle(self, table: PairTable) -> tuple[int, int, int]:
        keys = table.vouched(self.max)
        added, removed = self.maps.write(keys)
        self.last = (len(keys), added, removed)
        return self.last


def open_vouching(
    backend: MapBackend, pin_root: Path, iface: str | None, vouched_max: int = VOUCHED_MAX
) -> Vouching | None:
    """The vouching of this backend: the twin's set, the pinned maps, or
    None (a filter attached before vouches: warned, judged without)."""
    from xpro_mesh.datapath.memory import MemoryMaps

    if isinstance(backend, MemoryMaps):
        return Vouching(backend.vouches, vouched_max=vouched_max)
    if iface is None:
        return None
    from xpro_mesh.datapath import loader
    from xpro_mesh.datapath.vouch_bloom import VouchMaps

    try:
        maps = VouchMaps.open(loader.pin_dir_for(pin_root, iface))
    except DatapathError as exc:
        log.warning("no vouches: %s", exc)
        return None
    maps.clear()  # this agent is the one writer: start from what it selects
    return Vouching(maps, vouched_max=vouched_max)
