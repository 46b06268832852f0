"""Sync through a central Redis: the paper's architecture (X-Pro's ``syncdb``),
kept as the baseline the mesh is measured against (lab mode ``master``).

Every interval each proxy runs Algorithm 1 (:func:`sync_master`) for every
(i, D_addr) in its L_DB (the kernel's pair map) or in M_DB (Redis hashes
``xpro:pair:<src><dst>`` with fields ts1, ts2, c), writes M_DB back and
re-bases its kernel maps with the returned L_DB records (through the same
loss-free apply path as the mesh). M_DB is read and written in one
lease lock (SET NX PX, released by token), so two proxies syncing at once do
not overwrite each other's counts, which the prototype's plain HSETs did;
reads and writes are pipelined (two round trips per cycle).

Two deliberate differences from the literal lines. A proxy that counted
nothing for a pair since its last sync (dc' = 0, no idle restart) takes the
M_DB record as lines 26-28 do, instead of running lines 5-25 on its stale
copy: run literally on N proxies, lines 13-17 divide the count by r once per
proxy per interval once the window passes T_T4, so a pair sent through one
proxy is undercounted N-fold (measured in the lab: 21 pps read as 1 pps).
And for a pair only in L_DB
(lines 31-33) the paper leaves dc' set, so the next sync would add the same
packets to M_DB a second time; here dc' is acknowledged (set to 0) as after
every other sync. Redis keys expire after T_T1 + T_T4 of silence, the same
horizon the mesh uses, so M_DB does not grow without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Iterator

from xpro_mesh.agent.mapsync import dest_ops_for
from xpro_mesh.agent.syncer import SyncReport
from xpro_mesh.core.algorithm import (
    LocalRecord,
    MasterRecord,
    Params,
    fold_destinations,
    sync_master,
)
from xpro_mesh.datapath.backend import MapBackend, PairKey, PairOp

__all__ = ["MasterSync", "plan_master"]

PREFIX = b"xpro:pair:"
LOCK = b"xpro:lock"
LOCK_TTL_MS = 2_000  # a proxy that dies holding the lock blocks the others this long
LOCK_WAIT_S = 1.0  # give up a cycle (and retry next interval) after waiting this long
_UNLOCK = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)


def _redis_key(key: PairKey) -> bytes:
    return PREFIX + key.src + key.dst


def _pair_of(redis_key: bytes) -> PairKey:
    raw = redis_key[len(PREFIX) :]
    return PairKey(raw[:16], raw[16:32])


def plan_master(
    local: dict[PairKey, LocalRecord],
    master: dict[PairKey, MasterRecord],
    p: Params,
) -> tuple[dict[PairKey, MasterRecord], list[PairOp], dict[PairKey, LocalRecord]]:
    """Algorithm 1 over the union of L_DB and M_DB (pure).

    Returns the M_DB records to write, the kernel operations, and the L_DB
    as it will be after them (for the destination aggregates).
    """
    writes: dict[PairKey, MasterRecord] = {}
    ops: list[PairOp] = []
    after: dict[PairKey, LocalRecord] = {}
    for key in local.keys() | master.keys():
        cur = local.get(key)
        m = master.get(key)
        if cur is not None and m is not None and cur.dc == 0 and cur.mark == 0:
            # Nothing counted here since the last sync: refresh the copy from
            # M_DB as lines 26-28 do. Running lines 5-25 on a stale copy would
            # apply the T_T4 division once per proxy per interval (every
            # copy's ts2' equals ts2 after a refresh), shrinking the count of
            # a pair sent through one proxy N-fold faster than its window.
            synced: tuple[LocalRecord | None, MasterRecord | None] = (
                LocalRecord(m.ts1, m.ts2, m.c, 0, 0),
                m,
            )
        else:
            synced = sync_master(cur, m, p)
        new_local, new_master = synced
        assert new_local is not None and new_master is not None
        if cur is not None and master.get(key) is None:
            new_local = LocalRecord(new_local.ts1, new_local.ts2, new_local.c, 0, 0)
        if new_master != master.get(key):
            writes[key] = new_master
        after[key] = new_local
        if cur is None:
            ops.append(PairOp(key, None, 0, new_local.c, new_local.ts1, new_local.ts2))
        elif (cur.c, cur.dc, cur.mark, cur.ts1) != (new_local.c, 0, 0, new_local.ts1) or (
            new_local.ts2 > cur.ts2
        ):
            ops.append(
                PairOp(key, cur.ts1, cur.dc, new_local.c - cur.c, new_local.ts1, new_local.ts2)
            )
    return writes, ops, after


class MasterSync:
    """The ``master`` syncer: one Redis connection, one cycle per interval."""

    def __init__(self, backend: MapBackend, host: str, port: int, params: Params) -> None:
        import redis

        self.backend = backend
        self.params = params
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # One attempt per cycle: the next interval is the retry. redis-py's
        # default (three retries with a backoff of seconds) held a sync with
        # M_DB gone for ~3.6 s, hiding from the operator how often it failed.
        self.client = redis.Redis(
            host=host,
            port=port,
            socket_timeout=2,
            socket_connect_timeout=2,
            retry=Retry(NoBackoff(), 0),
        )
        self.lock_waits = 0
        self.cycles = 0

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """M_DB is one database that every proxy read-modify-writes (the
        paper's M_DB): a lease lock serialises the proxies' syncs, so no
        proxy's counts are overwritten by another's."""
        token = secrets.token_hex(16)
        deadline = time.monotonic() + LOCK_WAIT_S
        while not self.client.set(LOCK, token, nx=True, px=LOCK_TTL_MS):
            self.lock_waits += 1
            if time.monotonic() > deadline:
                raise RuntimeError(f"M_DB lock busy for {LOCK_WAIT_S:.1f} s")
            time.sleep(0.002)
        try:
            yield
        finally:
            self.client.eval(_UNLOCK, 1, LOCK, token)

    def set_params(self, params: Params) -> None:
        """New thresholds (SIGHUP, PUT /v1/config): Algorithm 1's window rules
        (T_T1, T_T4, r) and the M_DB horizon follow the kernel's from the next
        cycle on."""
        self.params = params

    async def cycle(self, report: SyncReport | None = None) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.cycle_blocking)

    def cycle_blocking(self) -> None:
        p = self.params
        local = dict(self.backend.read_pairs())
        horizon_s = max(1, (p.t_t1 + p.t_t4) // 10**9)
        with self._locked():
            keys = set(self.client.scan_iter(match=PREFIX + b"*", count=1000))
            wanted = sorted(keys | {_redis_key(k) for k in local})
            reader = self.client.pipeline(transaction=False)
            for rk in wanted:
                reader.hgetall(rk)
            master: dict[PairKey, MasterRecord] = {}
            for rk, fields in zip(wanted, reader.execute(), strict=True):
                if fields:
                    master[_pair_of(rk)] = MasterRecord(
                        int(fields[b"ts1"]), int(fields[b"ts2"]), int(fields[b"c"])
                    )
            writes, ops, after = plan_master(local, master, p)
            writer = self.client.pipeline(transaction=True)
            for key, rec in writes.items():
                rk = _redis_key(key)
                writer.hset(rk, mapping={"ts1": rec.ts1, "ts2": rec.ts2, "c": rec.c})
                writer.expire(rk, horizon_s)
            writer.execute()
        now = time.time_ns()
        stale = [k for k, r in after.items() if r.ts2 < now - (p.t_t1 + p.t_t4) and k in local]
        if stale:
            self.backend.delete_pairs(stale)
        report = self.backend.apply(ops, ())
        gone = set(stale)
        folds = fold_destinations((k.dst, r) for k, r in after.items() if k not in gone)
        windows = {dst: (agg.ts1, agg.ts2) for dst, agg in folds.items()}
        skipped = {*report.restarted, *report.missing}
        self.backend.apply((), dest_ops_for(ops, skipped, windows))
        self.cycles += 1
