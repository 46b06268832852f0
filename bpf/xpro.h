/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * xpro.h - the structures shared by the XDP program (bpf/xpro.c) and
 * userspace. Python mirrors them with ctypes in ONE module,
 * xpro_mesh/datapath/structs.py, whose test compiles a probe against this
 * header and compares every size and offset.
 *
 * Rules for this file: fixed-width types only, every struct a multiple of
 * 8 bytes with explicit padding, no bitfields, no pointers. Times are
 * nanoseconds of the cluster time base (xpro_mesh/datapath/clock.py);
 * counts are signed 64-bit (the agent re-bases them with signed deltas).
 */
#ifndef XPRO_H
#define XPRO_H

/* One IPv4 or IPv6 address, 16 bytes in network order. IPv4 is stored
 * v4-mapped (::ffff:a.b.c.d) so one map serves both families. */
struct xpro_addr {
	union {
		__u8 b[16];
		__u32 w[4];
		__u64 q[2];
	};
};

/* Key of the pair map: (client i, destination D). */
struct xpro_pair_key {
	struct xpro_addr src;
	struct xpro_addr dst;
};

/* xpro_pair.flags */
#define XPRO_PAIR_HAS_PREV 0x1 /* prev names an older pair of the same D */
#define XPRO_PAIR_HAS_NEXT 0x2 /* next names a newer pair of the same D */

/* Value of the pair map: the L_DB entry of Algorithm 2 (ts1', ts2', c',
 * dc', mark') plus the pair's place in its destination's ts1 order (a
 * doubly linked list threaded through the pair map by source address, so
 * the destination's min ts1 survives its holder's window restart in O(1);
 * see "Exactness" in xpro.c). */
struct xpro_pair {
	__u64 ts1;     /* window start */
	__u64 ts2;     /* last packet */
	__s64 c;       /* packets in the window, mesh-wide as of the last sync plus local since */
	__s64 dc;      /* packets counted here since the last sync */
	__u64 warn_ts; /* last overload warning sent for this pair, 0 = never */
	__u32 mark;    /* 1: window restarted by the idle rule since the last sync */
	__u32 flags;   /* XPRO_PAIR_HAS_* */
	struct xpro_addr prev; /* source of the next older pair of this destination */
	struct xpro_addr next; /* source of the next newer pair of this destination */
};

/* xpro_dest.flags */
#define XPRO_DEST_HAS_LIST 0x1 /* head and tail are valid */
#define XPRO_DEST_DIRTY 0x2    /* the ts1 order missed an update (lock contention, eviction) */

/* Value of the destination map: lines 18-20 of Algorithm 2 kept
 * incrementally: min ts1, max ts2 and sum of c over the clients of D, and
 * n(D), the number of clients (local count, or the mesh's after a sync). */
struct xpro_dest {
	__u64 ts1;
	__u64 ts2;
	__s64 c;
	__s64 n;
	__u64 lock;  /* 0 free, 1 held: guards head, tail, ts1 and the pairs' prev/next */
	__u32 flags; /* XPRO_DEST_* */
	__u32 pad;
	struct xpro_addr head; /* source of the pair with the smallest ts1 */
	struct xpro_addr tail; /* source of the pair (re)started last */
};

#define XPRO_CONFIG_VERSION 1

/* xpro_config.policy: the destination rule (DESIGN.md "The destination rule"). */
#define XPRO_POLICY_PAPER 0      /* lines 21-23 literally: every packet to D */
#define XPRO_POLICY_FAIR_SHARE 1 /* only pairs above T_F2 / n(D) */

/* xpro_config.clock */
#define XPRO_CLOCK_COARSE 0  /* bpf_ktime_get_coarse_ns(): one jiffy resolution */
#define XPRO_CLOCK_PRECISE 1 /* bpf_ktime_get_ns() */

/* The config map's one entry: every threshold, changed live by userspace
 * (whole-value writes; the program reads it once per packet). */
struct xpro_config {
	__u64 t_t1;           /* ns: idle time after which a pair's window restarts */
	__u64 t_t2;           /* ns: shortest pair window judged against T_F1 */
	__u64 t_t3;           /* ns: shortest destination window judged against T_F2 */
	__u64 t_t4;           /* ns: longest window before decay by r (agent side) */
	__u64 t_f1;           /* packets/s per (client, destination) pair */
	__u64 t_f2;           /* packets/s per destination */
	__u64 r;              /* frequency division factor (agent side) */
	__u64 warn_interval;  /* ns between two overload warnings of one pair */
	__u64 warn_per_cpu;   /* overload warnings per second per CPU, at most */
	__u32 policy;         /* XPRO_POLICY_* */
	__u32 clock;          /* XPRO_CLOCK_* */
	__u32 version;        /* XPRO_CONFIG_VERSION once written; 0: pass everything */
	__u32 pad;
};

/* The clock map's one entry, apart from the config so that the loader's
 * periodic offset updates never race an operator's threshold change. */
struct xpro_clock {
	__s64 offset;      /* cluster ns = kernel clock ns + offset */
	__u64 test_now;    /* -DXPRO_TEST_CLOCK builds: the kernel clock reading */
	__u64 test_verdict; /* -DXPRO_TEST_CLOCK builds: XPRO_VERDICT_* of the last packet */
	__u64 pad;
};

/* Verdicts (Algorithm 2). */
#define XPRO_VERDICT_PASS 0
#define XPRO_VERDICT_DROP_PAIR 1 /* line 15 */
#define XPRO_VERDICT_DROP_DEST 2 /* lines 21-23 */
#define XPRO_VERDICT_NOT_IP 3
#define XPRO_VERDICT_MALFORMED 4
#define XPRO_VERDICT_UNCONFIGURED 5

/* The per-CPU stats array's one entry. Counters only grow; userspace sums
 * the CPUs. The last two fields are the per-CPU warning limiter's state. */
struct xpro_stats {
	__u64 pass;                /* IP packets passed by the filter */
	__u64 drop_pair;           /* dropped by the pair rule (line 15) */
	__u64 drop_dest;           /* dropped by the destination rule (lines 21-23) */
	__u64 new_pairs;           /* pairs created by packets */
	__u64 resets;              /* pair windows restarted by the idle rule */
	__u64 warnings;            /* overload warnings put on the ring buffer */
	__u64 warnings_suppressed; /* warnings over the per-CPU budget */
	__u64 events_lost;         /* ring buffer full */
	__u64 not_ip;              /* non-IP frames passed untouched */
	__u64 malformed;           /* truncated or bad IP headers, passed */
	__u64 unconfigured;        /* passed because no config was written */
	__u64 pair_full;           /* pair insert failed, packet passed */
	__u64 dest_full;           /* destination insert failed */
	__u64 lock_busy;           /* ts1-order update skipped, lock not taken */
	__u64 apply_created;       /* pairs created by the apply program */
	__u64 apply_deleted;       /* pairs deleted by the apply program */
	__u64 warn_window;         /* limiter: second (cluster time) of the budget */
	__u64 warn_in_window;      /* limiter: warnings sent in that second */
};

/* One overload warning (Algorithm 2 line 15) on the events ring buffer. */
struct xpro_event {
	struct xpro_addr src;
	struct xpro_addr dst;
	__u64 ts1;
	__u64 ts2;
	__s64 c;
	__u64 suppressed; /* warnings this CPU had suppressed when it sent this one */
};

/* Apply program (agent write-back), see xpro.c "Write-back". */
#define XPRO_APPLY_BATCH 128

#define XPRO_OP_NONE 0
#define XPRO_OP_DEST 1   /* re-base a destination aggregate (create if absent) */
#define XPRO_OP_PAIR 2   /* re-base a pair */
#define XPRO_OP_DELETE 3 /* delete a pair, taking it out of its destination */

/* xpro_op.flags */
#define XPRO_OP_EXPECT 0x1 /* pair ops: skip unless ts1 == expect_ts1 (no restart since the read) */
#define XPRO_OP_CREATE 0x2 /* pair ops: create the pair when it is absent */

/* xpro_op.status, written back by the apply program */
#define XPRO_STATUS_PENDING 0
#define XPRO_STATUS_APPLIED 1
#define XPRO_STATUS_CREATED 2
#define XPRO_STATUS_RESTARTED 3 /* skipped: the window restarted since the read */
#define XPRO_STATUS_MISSING 4   /* skipped: no such pair */
#define XPRO_STATUS_FAILED 5    /* map full */

/* One entry of the apply_ops array. */
struct xpro_op {
	__u32 kind;   /* XPRO_OP_* */
	__u32 flags;  /* XPRO_OP_EXPECT | XPRO_OP_CREATE */
	__u32 status; /* XPRO_STATUS_* (out) */
	__u32 pad;
	struct xpro_pair_key key; /* dest ops use key.dst only */
	__u64 expect_ts1; /* pair: ts1 as read */
	__s64 acked_dc;   /* pair: dc -= acked_dc (the dc the agent read and merged) */
	__s64 c_delta;    /* pair and dest: c += c_delta */
	__s64 n_delta;    /* dest: n += n_delta */
	__u64 ts1;        /* pair and dest: ts1 = ts1 */
	__u64 ts2;        /* pair and dest: ts2 = max(ts2, ts2) */
};

#endif /* XPRO_H */
