"""Public contract of the X-Pro algorithm core (see :mod:`xpro_mesh.core.algorithm`).

External checks import from here::

    from xpro_mesh.algorithm import (
        Params, LocalRecord, MasterRecord, Verdict, sync_master, filter_packet,
    )
"""

from xpro_mesh.core.algorithm import (
    NS_PER_S,
    DestinationAggregate,
    LocalRecord,
    MasterRecord,
    Params,
    Verdict,
    destination_aggregate,
    filter_packet,
    filter_packet_fair_share,
    rate_exceeds,
    sync_master,
)

__all__ = [
    "NS_PER_S",
    "DestinationAggregate",
    "LocalRecord",
    "MasterRecord",
    "Params",
    "Verdict",
    "destination_aggregate",
    "filter_packet",
    "filter_packet_fair_share",
    "rate_exceeds",
    "sync_master",
]
