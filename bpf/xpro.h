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
 * counts are signed 64-bit. Slots are array elements named by number, so
 * the mmapped arrays and the program agree on them without pointers.
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

/* Key of pair_index: (client i, destination D). */
struct xpro_pair_key {
	struct xpro_addr src;
	struct xpro_addr dst;
};

/* A slot number of pair_slots or dest_slots; XPRO_NO_SLOT: none (ends of
 * the ts1 order, a pair without a destination). */
#define XPRO_NO_SLOT 0xffffffffU

/* Agent half, v_gen: the slot was expired by the agent (never a live gen,
 * which is even and at least 2). */
#define XPRO_VGEN_NONE 0

/*
 * One pair slot of pair_slots (an mmapable array, 128 bytes, two cache
 * lines). docs/kernel-agent-contract.md is the contract; in short:
 *
 * Kernel half (only the XDP program writes it):
 *   gen     per-slot sequence lock and the window's identity: odd while the
 *           kernel (re)initialises the slot (allocation, idle restart) or
 *           while the slot is a CPU's spare; even and >= 2 when live. It
 *           only grows: a slot's next life or window has a new gen.
 *   ts1, ts2, c   the local window (Algorithm 2 ts1', ts2', c'): packets
 *           counted HERE since ts1. No dc: the agent's delta is c - c read.
 *   key     the pair; dslot/dgen its destination slot and that slot's gen
 *           (low 32 bits) when linked; prev/next the ts1 order (slot numbers).
 * Agent half (only the agent writes it): the mesh's view of the window
 *   whose gen is v_gen. Valid while v_gen == gen: judged count c + v_adj,
 *   window v_ts1 .. max(ts2, v_ts2).
 */
struct xpro_slot {
	/* kernel half, line 1: written by every packet */
	__u64 gen;
	__u64 ts1;
	__u64 ts2;
	__s64 c;
	struct xpro_pair_key key;
	/* kernel half, line 2: written on allocation, restart, warning */
	__u64 warn_ts;  /* last overload warning sent for this pair, 0 = never */
	__u32 dslot;    /* destination slot, XPRO_NO_SLOT when none */
	__u32 dgen;     /* low 32 bits of dest_slots[dslot].gen when linked */
	__u32 prev;     /* next older pair of the same destination (ts1 order) */
	__u32 next;     /* next newer pair of the same destination */
	__u32 flags;    /* XPRO_SLOT_*; with gap_us one 64-bit word (compare-and-swap) */
	__u32 gap_us;   /* the idle gap before this window began, us (saturating); 0 = first window */
	/* agent half */
	__u64 v_gen;
	__s64 v_adj;    /* mesh count at the agent's read - c at that read */
	__u64 v_ts1;
	__u64 v_ts2;
};

/* xpro_slot.flags / xpro_dslot.flags */
#define XPRO_SLOT_LINKED 0x1 /* pair: in its destination's ts1 order */
#define XPRO_DEST_DIRTY 0x2  /* dest: the ts1 order missed an update (lock busy, relink) */
#define XPRO_SLOT_ESTABLISHED 0x4 /* pair: counted in its destination's n (issue 11) */
#define XPRO_SLOT_KNOWN 0x8 /* pair: its window restarted (a source that came back), for the slot's life */

/* The admission budget's unit: a young packet costs this many tokens
 * (micro-packets, so a refill over a few ns is not lost to rounding). */
#define XPRO_ADMIT_UNIT 1000000ULL

/*
 * One destination slot of dest_slots (mmapable, 128 bytes). Kernel half:
 * the local aggregate of lines 18-20 over the pairs linked to it: ts1 the
 * exact min ts1 (head of the ts1 order), ts2 the max, c the sum of the
 * pairs' c, n the established pairs linked to it (XPRO_SLOT_ESTABLISHED:
 * at least admit_k packets and a window over T_T2; a restart takes a pair
 * out again), admit the admission budget's tokens (issue 11: micro-packets,
 * refilled at admit_rate up to admit_burst by the CPU that moves ts2
 * forward). flags and admit are one 64-bit word, changed by
 * compare-and-swap. Agent half: the mesh's
 * view, valid while v_gen == gen: count c + v_adj, clients n + v_nadj,
 * window v_ts1 .. max(ts2, v_ts2). The agent re-bases it absolutely every
 * cycle (v_adj = mesh count - c read), so it cannot drift.
 */
struct xpro_dslot {
	/* kernel half */
	__u64 gen;
	__u64 ts1;
	__u64 ts2;
	__s64 c;
	__s64 n;
	struct xpro_addr dst;
	__u64 lock;     /* 0 free, 1 held: guards head, tail, ts1 and the pairs' links */
	__u32 head;     /* the pair with the smallest ts1 */
	__u32 tail;     /* the pair (re)started last */
	__u32 flags;    /* XPRO_DEST_*; with admit one 64-bit word */
	__u32 admit;    /* admission budget: tokens (micro-packets), kernel-owned */
	/* agent half */
	__u64 v_gen;
	__s64 v_adj;
	__s64 v_nadj;
	__u64 v_ts1;
	__u64 v_ts2;
	__s64 v_c;      /* the mesh's count at the renewal (window v_ts1 .. v_ts2): the held view (issue 13) */
};

/* The free rings: pair_free / dest_free hold slot numbers (one __u64 each,
 * the array element size), ring_ctl[XPRO_RING_PAIRS / XPRO_RING_DESTS] the
 * positions. head: the kernel takes ring[head % size] and advances it by a
 * compare-and-swap; tail: the agent (or the loader's initial fill) writes
 * ring[tail % size], then advances tail. Free slots: tail - head. Each on
 * its own cache line. */
#define XPRO_RING_PAIRS 0
#define XPRO_RING_DESTS 1

struct xpro_ring {
	__u64 head;      /* kernel */
	__u64 size;      /* ring entries (a power of two), set by the loader */
	__u64 pad1[6];
	__u64 tail;      /* agent */
	__u64 agent_at;  /* ring_ctl[XPRO_RING_PAIRS] only: the agent's heartbeat, cluster ns of its last view write (issue 13) */
	__u64 pad2[6];
};

/* The per-CPU spares: a slot a CPU took from a ring but could not use
 * (another CPU inserted the same key first), kept for its next new key. */
struct xpro_spare {
	__u32 pair;  /* slot + 1; 0: none (a per-CPU array starts zeroed) */
	__u32 dest;  /* slot + 1; 0: none */
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
	__u64 admit_k;        /* fair-share: packets an established pair has at least */
	__u64 admit_rate;     /* fair-share: young-pair packets/s a destination over T_F2 admits */
	__u64 admit_burst;    /* fair-share: the admission budget's depth, packets (<= 4000) */
	__u64 view_hold;      /* ns: a destination view not renewed holds its mesh rate this long (issue 13) */
	__u64 view_hold_max;  /* ns: ... and up to this long while the agent's heartbeat is stale */
	__u32 policy;         /* XPRO_POLICY_* */
	__u32 clock;          /* XPRO_CLOCK_* */
	__u32 version;        /* XPRO_CONFIG_VERSION once written; 0: pass everything */
	__u32 unparsed;       /* XPRO_UNPARSED_*: what to do with a carrier not parsed */
	__u32 src_prefix4;    /* a pair's client is this many leading bits of an IPv4 source (1-32) */
	__u32 src_prefix6;    /* ... of an IPv6 source (1-128); 0 in either: the whole address */
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
#define XPRO_VERDICT_UNPARSED 6 /* deep VLAN stack, MPLS, PPPoE: config.unparsed */

/* xpro_config.unparsed */
#define XPRO_UNPARSED_PASS 0
#define XPRO_UNPARSED_DROP 1

/* The per-CPU stats array's one entry. Counters only grow; userspace sums
 * the CPUs. The last two fields are the per-CPU warning limiter's state. */
struct xpro_stats {
	__u64 pass;                /* IP packets passed by the filter */
	__u64 drop_pair;           /* dropped by the pair rule (line 15) */
	__u64 drop_dest;           /* dropped by the destination rule (lines 21-23) */
	__u64 new_pairs;           /* pair slots taken by new pairs */
	__u64 resets;              /* pair windows restarted by the idle rule */
	__u64 warnings;            /* overload warnings put on the ring buffer */
	__u64 warnings_suppressed; /* warnings over the per-CPU budget */
	__u64 events_lost;         /* ring buffer full */
	__u64 not_ip;              /* non-IP frames passed untouched */
	__u64 malformed;           /* truncated or bad IP headers, passed */
	__u64 unconfigured;        /* passed because no config was written */
	__u64 pair_full;           /* no free pair slot (or index full): packet passed uncounted */
	__u64 dest_full;           /* no free destination slot: pair judged without one */
	__u64 lock_busy;           /* ts1-order update skipped, lock not taken */
	__u64 new_dests;           /* destination slots taken */
	__u64 insert_races;        /* a new key inserted by another CPU first: slot kept as spare */
	__u64 pair_views;          /* packets judged with a valid pair view */
	__u64 dest_views;          /* packets judged with a valid destination view */
	__u64 relinks;             /* pairs moved to a new slot of their destination */
	__u64 admitted;            /* young pairs' packets passed through the admission budget */
	__u64 drop_admit;          /* young pairs' packets dropped, budget empty (also in drop_dest) */
	__u64 probation_drops;     /* of which new pairs dropped before a slot was taken */
	__u64 unparsed;            /* carriers not parsed (> 8 VLAN tags, MPLS, PPPoE) */
	__u64 held_views;          /* packets of D judged over T_F2 by its held view alone (issue 13) */
	__u64 expired_views;       /* packets of D whose over-T_F2 view was past its hold */
	__u64 warn_window;         /* limiter: second (cluster time) of the budget */
	__u64 warn_in_window;      /* limiter: warnings sent in that second */
	__u64 vouched;             /* young pairs' packets passed by the fair share as vouched (issue 13) */
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

#endif /* XPRO_H */
