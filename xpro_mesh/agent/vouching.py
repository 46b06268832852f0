"""The agent's vouches (issue 13): once per sync cycle, select from the
mesh's rows the pairs established elsewhere and under the fair share
(xpro_mesh.core.vouch.select_vouched) and write them to the filter's
vouch maps (VouchMaps or the twin's MemoryVouches: ``write`` sends only the
difference to the hash map, so a steady mesh costs no map writes)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from xpro_mesh.core.vouch import Row, select_vouched


class VouchWriter(Protocol):
    capacity: int

    def write(self, keys: Iterable[bytes]) -> tuple[int, int]: ...


class Vouching:
    """Selection plus the incremental write, bounded by ``vouched_max``
    (and the map's capacity)."""

    def __init__(self, maps: VouchWriter, *, local: str, vouched_max: int) -> None:
        self._maps = maps
        self._local = local
        self._max = min(vouched_max, maps.capacity)

    def cycle(self, rows: Iterable[Row], *, t_f2: int, t_t2: int, admit_k: int) -> tuple[int, int]:
        """(added, removed) this cycle."""
        keys = select_vouched(
            rows, local=self._local, t_f2=t_f2, t_t2=t_t2, admit_k=admit_k, max_pairs=self._max
        )
        return self._maps.write(keys)
