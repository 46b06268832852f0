"""Sync through a central Redis: the paper's architecture (X-Pro's ``syncdb``),
kept as the baseline the mesh is measured against (lab mode ``master``).

Every interval each proxy runs Algorithm 1 (:func:`sync_master`) for every
(i, D_addr) in its L_DB (the kernel's pair map) or in M_DB (Redis hashes
``xpro:pair:<src><dst>`` with fields ts1, ts2, c), writes M_DB back and
writes the returned L_DB records into the kernel's slots as views (the same
one-writer contract as the mesh: docs/kernel-agent-contract.md). A pair
counted only elsewhere enters this proxy's kernel with its first packet here
and gets M_DB's record at the next cycle (lines 26-28, applied lazily); its
count is in every destination aggregate at once. M_DB is read and written in one
lease lock (SET NX PX, released by token), so two proxies syncing at once do
not overwrite each other's counts, which the prototype's plain HSETs did;
reads and writes are pipelined (two round trips per cycle).

Two deliberate differences from the literal lines. A proxy that counted
nothing for a pair since its last sync (dc' = 0, no idle restart) takes the
M_DB record as lines 26-28 do, instead of running lines 5-25 on its stale
copy: run literally on N proxies, lines 13-17 divide the count by r once per
proxy per interval once the window passes T_T4, so a pair sent through one
proxy is undercounted N-fold.
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

import numpy as np

from xpro_mesh.agent.mapsync import SlotMemory, SlotRead, read_slots
from xpro_mesh.agent.syncer import SyncReport
from xpro_mesh.core.algorithm import (
    LocalRecord,
    MasterRecord,
    Params,
    fold_destinations,
    sync_master,
)
from xpro_mesh.datapath.backend import DestRead, MapBackend, PairKey

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
) -> tuple[dict[PairKey, MasterRecord], dict[PairKey, LocalRecord]]:
    """Algorithm 1 over the union of L_DB and M_DB (pure).

    Returns the M_DB records to write and the L_DB as it is after the sync
    (the kernel's views, and the destination aggregates).
    """
    writes: dict[PairKey, MasterRecord] = {}
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
                LocalRecord(m.ts1, m.ts2, m.c, 0, 0, cur.known, cur.gap_us),
                m,
            )
        else:
            synced = sync_master(cur, m, p)
        new_local, new_master = synced
        assert new_local is not None and new_master is not None
        if cur is not None and master.get(key) is None:
            new_local = LocalRecord(
                new_local.ts1, new_local.ts2, new_local.c, 0, 0, cur.known, cur.gap_us
            )
        if new_master != master.get(key):
            writes[key] = new_master
        after[key] = new_local
    return writes, after


class MasterSync:
    """The ``master`` syncer: one Redis connection, one cycle per interval."""

    def __init__(self, backend: MapBackend, host: str, port: int, params: Params) -> None:
        from xpro_mesh.extras import need

        need("redis", "sync = master (the Redis M_DB)")  # one line if missing
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.backend = backend
        self.params = params

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
        self.memory = SlotMemory.for_slots(backend.pairs_max, backend.dests_max)

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
        pairs = read_slots(self.backend, self.memory)
        dests = self.backend.read_dests()
        local, slot_of = self._local_records(pairs)
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
            writes, after = plan_master(local, master, p)
            writer = self.client.pipeline(transaction=True)
            for key, rec in writes.items():
                rk = _redis_key(key)
                writer.hset(rk, mapping={"ts1": rec.ts1, "ts2": rec.ts2, "c": rec.c})
                writer.expire(rk, horizon_s)
            writer.execute()
        # What was read is in M_DB now: only then is it this syncer's last read
        # (a cycle that fails before this point reads the same packets again).
        self.memory.gen[pairs.slots] = pairs.gen
        self.memory.c[pairs.slots] = pairs.c
        self._write_views(pairs, dests, local, slot_of, after, time.time_ns())
        self.cycles += 1

    def _local_records(
        self, pairs: SlotRead
    ) -> tuple[dict[PairKey, LocalRecord], dict[PairKey, tuple[int, int, int]]]:
        """The kernel's slots as the paper's L_DB: each pair's judged record
        (the local window combined with the view this syncer wrote: the
        record Algorithm 2 applies) with ``dc'`` the packets counted since the
        last read and ``mark'`` = 1 for a window restarted since (a new gen).

        A window this process has not read yet but whose view an earlier life
        of the agent wrote (``v_gen == gen``) counts as synced: its packets
        since that life's last sync are not added to M_DB (a restarted master
        agent under-counts by what its kernel saw while it was down; adding
        the whole window would count M_DB's share of it twice). The memory of
        what was read is updated by the caller once M_DB holds it."""
        memory = self.memory
        local: dict[PairKey, LocalRecord] = {}
        slot_of: dict[PairKey, tuple[int, int, int]] = {}
        live_view = self.backend.pair_slots
        srcs, dsts = pairs.src, pairs.dst
        for i, slot in enumerate(pairs.slots.tolist()):
            src, dst = bytes(srcs[i]), bytes(dsts[i])
            key = PairKey(src.ljust(16, b"\0"), dst.ljust(16, b"\0"))
            gen, c = int(pairs.gen[i]), int(pairs.c[i])
            ts1, ts2 = int(pairs.ts1[i]), int(pairs.ts2[i])
            row = live_view[slot]  # the agent half: this syncer's own last write
            seen = int(memory.gen[slot])
            mark = 0
            if seen == gen:
                dc = max(0, c - int(memory.c[slot]))
            elif int(row["v_gen"]) == gen:
                dc = 0
            else:
                dc = c
                mark = 1 if seen != 0 else 0
            if int(row["v_gen"]) == gen:
                ts1 = int(row["v_ts1"])
                ts2 = max(ts2, int(row["v_ts2"]))
                judged = c + int(row["v_adj"])
            else:
                judged = c
            local[key] = LocalRecord(ts1=ts1, ts2=ts2, c=judged, dc=dc, mark=mark)
            slot_of[key] = (slot, gen, c)
        return local, slot_of

    def _write_views(
        self,
        pairs: SlotRead,
        dests: DestRead,
        local: dict[PairKey, LocalRecord],
        slot_of: dict[PairKey, tuple[int, int, int]],
        after: dict[PairKey, LocalRecord],
        now: int,
    ) -> None:
        """The synced L_DB into the kernel as views, and each destination's
        aggregate over every pair M_DB and L_DB hold for it (lines 18-20;
        pairs counted only elsewhere included, as the paper's L_DB holds them
        after lines 26-28), re-based absolutely."""
        p = self.params
        stale_before = now - (p.t_t1 + p.t_t4)
        views: list[tuple[int, int, int, int, int]] = []
        gone: list[tuple[int, int]] = []
        live: list[tuple[bytes, LocalRecord]] = []
        for key, rec in after.items():
            placed = slot_of.get(key)
            if rec.ts2 < stale_before:
                if placed is not None:
                    gone.append((placed[0], placed[1]))
                continue
            if placed is not None:
                slot, gen, c = placed
                views.append((slot, gen, rec.c - c, rec.ts1, rec.ts2))
            live.append((key.dst, rec))
        per_dst = fold_destinations(live)
        dviews: list[tuple[int, int, int, int, int, int]] = []
        dgone: list[tuple[int, int]] = []
        for i, dslot in enumerate(dests.slots.tolist()):
            drow = dests.rows[i]
            agg = per_dst.get(bytes(drow["dst"]))
            if agg is None:
                dgone.append((dslot, int(drow["gen"])))
                continue
            dviews.append(
                (
                    dslot,
                    int(drow["gen"]),
                    agg.c - int(drow["c"]),
                    agg.clients - int(drow["n"]),
                    agg.ts1,
                    agg.ts2,
                )
            )
        b = self.backend
        if views:
            s, g, adj, t1, t2 = (np.array(col) for col in zip(*views, strict=True))
            b.write_pair_views(s.astype(np.uint32), g.astype(np.uint64), adj, t1, t2)
        if dviews:
            s, g, adj, nadj, t1, t2 = (np.array(col) for col in zip(*dviews, strict=True))
            b.write_dest_views(s.astype(np.uint32), g.astype(np.uint64), adj, nadj, t1, t2)
        b.expire_pairs(
            np.array([x[0] for x in gone], np.uint32), np.array([x[1] for x in gone], np.uint64)
        )
        b.expire_dests(
            np.array([x[0] for x in dgone], np.uint32), np.array([x[1] for x in dgone], np.uint64)
        )
