/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * xpro.c - Algorithm 2 of X-Pro (Al Atiiq & Gehrmann) in XDP, loaded by bcc
 * (xpro_mesh/datapath/loader.py). Two programs share the maps:
 *
 *   xpro_filter  attached to the client-facing interface: one verdict per
 *                frame (every IPv4/IPv6 packet, any transport; the rest
 *                passes).
 *   xpro_apply   never attached: the agent runs it with BPF_PROG_TEST_RUN
 *                to re-base records with atomics ("Write-back" below).
 *
 * The reference is xpro_mesh/core/algorithm.py (filter_packet: policy
 * "paper", filter_packet_fair_share: policy "fair-share"). Integers as
 * there: a rate test c / (ts2 - ts1) > T_F is c * 10^9 > T_F * (ts2 - ts1),
 * done here in 128 bits so it never overflows where Python does not.
 *
 * Build macros (set by the loader):
 *   XPRO_PIN_DIR      pin every map under this bpffs directory (reuse if pinned)
 *   XPRO_PAIRS_MAX    pair map size (LRU), default 1M
 *   XPRO_DESTS_MAX    destination map size (LRU), default 64K
 *   XPRO_TEST_CLOCK   tests only: the kernel clock reading is clock.test_now,
 *                     and the verdict of the last packet is left in
 *                     clock.test_verdict. Nothing else differs.
 *   XPRO_BENCH        bench only: adds the baselines bench_drop and
 *                     bench_skeleton; with XPRO_BENCH_VARY_SRC every packet
 *                     gets a new source (to time the new-pair path).
 *
 * Times. The program reads the kernel clock once per packet
 * (bpf_ktime_get_coarse_ns() by default, config.clock selects
 * bpf_ktime_get_ns()) and adds clock.offset, which the loader/agent keeps
 * equal to CLOCK_REALTIME - CLOCK_MONOTONIC, so records hold cluster time
 * (xpro_mesh/datapath/clock.py is the one place that converts). The coarse
 * clock ticks once a jiffy (4 ms at HZ=250) and lags the precise one by at
 * most a jiffy: window lengths are off by at most one jiffy, a relative
 * error of jiffy / T_T2 on the pair rule (0.4 % at T_T2 = 1 s); the loader
 * warns when a threshold is shorter than 100 jiffies.
 *
 * Concurrency. Several CPUs update one pair and one destination.
 *   - Counts are exact: c, dc of a pair and c, n of a destination change
 *     only by atomic add (__sync_fetch_and_add) or atomic exchange; the
 *     value a packet judges is the one its own atomic returned.
 *   - The idle restart (lines 4-7) is claimed by one CPU with a
 *     compare-and-swap on ts2; the winner exchanges c and dc with 1 and
 *     adds 1 - old c to its destination, so a destination's c stays equal to
 *     the sum of its pairs' c exactly. A packet of the same pair on another
 *     CPU in the few ns between the claim and the exchange is counted in the
 *     old window and discarded with it: at most (CPUs - 1) packets per
 *     restart, and a restart needs T_T1 of silence first.
 *   - ts2 of a pair is a plain store of the packet's clock reading; under
 *     concurrency it may end up older than another CPU's reading by the time
 *     between a clock read and the store (well under a microsecond; zero
 *     with the coarse clock unless a tick falls in between). ts2 of a
 *     destination only moves forward. ts1 is written by the restart winner.
 *   - The destination's ts1 order (below) is changed only under a per
 *     destination lock (compare-and-swap on dest.lock with a bounded spin).
 *     A CPU that cannot take it in XPRO_LOCK_SPINS tries skips the order
 *     update and counts stats.lock_busy: that pair's ts1 is then missing from
 *     the order until its next restart or the agent's next write-back.
 *   - The config is read field by field; a threshold change is seen by the
 *     next packet on every CPU.
 *
 * Exactness (destination min ts1). Line 18 takes the min of ts1 over all
 * clients of D. Each pair's ts1 only ever becomes "now" (a new pair, an idle
 * restart), so the pairs of D ordered by ts1 are the pairs in the order they
 * last (re)started: a queue where a restart moves a pair to the tail. The
 * program keeps that queue as a doubly linked list threaded through the pair
 * map (pair.prev/next name the neighbours' source addresses; dest.head and
 * dest.tail the ends). The head holds the minimum; when the head restarts,
 * the new minimum is the new head's ts1: O(1), at most four lookups, only
 * on the rare restart path (bcc 0.26 cannot emit the callbacks that
 * bpf_for_each_map_elem or bpf_loop need, and a scan of 1M pairs per
 * restart would be a DoS lever anyway). With one CPU, no eviction and a
 * monotone clock the aggregate equals the model's exactly; the
 * differential test checks every record. It is not exact when (a) the LRU
 * evicts a pair of D or D itself, (b) the lock is busy (above), (c) the
 * agent sets a ts1 out of order; each case is repaired by the agent's next
 * write-back of D. (b) is counted in stats.lock_busy; a broken link met in
 * (a) sets XPRO_DEST_DIRTY; evictions show in `xpro-mesh xdp stats`.
 *
 * Write-back. Userspace map writes replace whole values, so a re-base
 * written from userspace would erase the packets counted between the
 * agent's read and its write. Instead the agent fills apply_ops and runs
 * xpro_apply through BPF_PROG_TEST_RUN; each op is applied in the kernel
 * with atomics: for a pair dc -= acked_dc, c += c_delta, ts1 = ts1,
 * ts2 = max(ts2, ts2), mark = 0, skipped (status RESTARTED) when the window
 * restarted since the read (ts1 no longer the one read; checked and set by
 * one compare-and-swap); for a destination c += c_delta, n += n_delta,
 * ts1 = ts1, ts2 = max. The deltas leave alone what the kernel counted
 * between the read and the apply, so those packets survive. The one race left: a restart claimed on another CPU in the
 * nanoseconds between an op's compare-and-swap on ts1 and its adds puts
 * that op's deltas into the new window (needs T_T1 of silence first, and a
 * packet landing within ns of the apply of that very pair).
 */
#include <uapi/linux/bpf.h>
#include "xpro.h"
#include "xpro_parse.h"

#ifndef XPRO_PAIRS_MAX
#define XPRO_PAIRS_MAX 1048576
#endif
#ifndef XPRO_DESTS_MAX
#define XPRO_DESTS_MAX 65536
#endif
#ifndef XPRO_EVENTS_BYTES
#define XPRO_EVENTS_BYTES (256 * 1024)
#endif
/* Tries for a destination lock: packet path, apply path (retried by userspace). */
#define XPRO_LOCK_SPINS 256
#define XPRO_APPLY_LOCK_SPINS 32
#define XPRO_NS_PER_S 1000000000ULL

#ifdef XPRO_PIN_DIR
#define XPRO_MAP(_type, _k, _v, _name, _max) \
	BPF_TABLE_PINNED(_type, _k, _v, _name, _max, XPRO_PIN_DIR "/" #_name)
#define XPRO_RINGBUF_SECTION "maps/ringbuf:" XPRO_PIN_DIR "/events"
#else
#define XPRO_MAP(_type, _k, _v, _name, _max) BPF_TABLE(_type, _k, _v, _name, _max)
#define XPRO_RINGBUF_SECTION "maps/ringbuf"
#endif

XPRO_MAP("lru_hash", struct xpro_pair_key, struct xpro_pair, pairs, XPRO_PAIRS_MAX);
XPRO_MAP("lru_hash", struct xpro_addr, struct xpro_dest, dests, XPRO_DESTS_MAX);
XPRO_MAP("array", __u32, struct xpro_config, config, 1);
XPRO_MAP("array", __u32, struct xpro_clock, clock, 1);
XPRO_MAP("percpu_array", __u32, struct xpro_stats, stats, 1);
XPRO_MAP("array", __u32, struct xpro_op, apply_ops, XPRO_APPLY_BATCH);

/* BPF_RINGBUF_OUTPUT with an optional pin (bcc has no pinned variant). */
struct events_table_t {
	int key;
	__u32 leaf;
	int (*ringbuf_output)(void *, __u64, __u64);
	__u32 max_entries;
};
__attribute__((section(XPRO_RINGBUF_SECTION)))
struct events_table_t events = { .max_entries = XPRO_EVENTS_BYTES };

/* ---- integers ---------------------------------------------------------- */

/* a * b as a 128-bit (hi, lo). */
static __always_inline void xpro_mul64(__u64 a, __u64 b, __u64 *hi, __u64 *lo)
{
	__u64 a0 = a & 0xffffffffULL, a1 = a >> 32;
	__u64 b0 = b & 0xffffffffULL, b1 = b >> 32;
	__u64 p00 = a0 * b0, p01 = a0 * b1, p10 = a1 * b0, p11 = a1 * b1;
	__u64 mid = (p00 >> 32) + (p01 & 0xffffffffULL) + (p10 & 0xffffffffULL);

	*lo = (mid << 32) | (p00 & 0xffffffffULL);
	*hi = p11 + (p01 >> 32) + (p10 >> 32) + (mid >> 32);
}

/* (hi, lo) *= m for m < 2^32; the callers' bounds keep it below 2^128. */
static __always_inline void xpro_mul128_small(__u64 *hi, __u64 *lo, __u64 m)
{
	__u64 l0 = (*lo & 0xffffffffULL) * m;
	__u64 l1 = (*lo >> 32) * m;
	__u64 nlo = l0 + (l1 << 32);

	*hi = *hi * m + (l1 >> 32) + (nlo < l0);
	*lo = nlo;
}

/* c * 10^9 * n > limit * window, exactly, for window > 0 and n >= 1:
 * the model's rate_exceeds (n = 1) and the fair-share test. c < 2^63,
 * n < 2^32 (clamped; n(D) is a client count), so the left side < 2^125. */
static __always_inline int xpro_rate_over(__s64 c, __s64 n, __u64 limit, __u64 window)
{
	__u64 lh = 0, ll, rh, rl;

	if (c <= 0)
		return 0;
	ll = (__u64)c;
	xpro_mul128_small(&lh, &ll, XPRO_NS_PER_S);
	if (n > 1)
		xpro_mul128_small(&lh, &ll, n > 0xffffffffLL ? 0xffffffffULL : (__u64)n);
	xpro_mul64(limit, window, &rh, &rl);
	return lh > rh || (lh == rh && ll > rl);
}

/* ---- clock -------------------------------------------------------------- */

static __always_inline __u64 xpro_now(const struct xpro_config *cfg, struct xpro_clock *clk)
{
#ifdef XPRO_TEST_CLOCK
	__u64 raw = clk->test_now;
#else
	__u64 raw = cfg->clock == XPRO_CLOCK_PRECISE ? bpf_ktime_get_ns() : bpf_ktime_get_coarse_ns();
#endif
	return raw + (__u64)clk->offset;
}

/* ---- the destination's ts1 order --------------------------------------- */

static __always_inline int xpro_lock(struct xpro_dest *d, int spins)
{
	for (int i = 0; i < spins; i++)
		if (__sync_val_compare_and_swap(&d->lock, 0, 1) == 0)
			return 1;
	return 0;
}

static __always_inline void xpro_unlock(struct xpro_dest *d)
{
	__sync_lock_test_and_set(&d->lock, 0);
}

static __always_inline struct xpro_pair *xpro_pair_of(const struct xpro_addr *src,
						       const struct xpro_addr *dst)
{
	struct xpro_pair_key k;

	k.src = *src;
	k.dst = *dst;
	return pairs.lookup(&k);
}

/* Put pair p (key) at the tail of its destination's order. Lock held. */
static __always_inline void xpro_list_append(struct xpro_dest *d, struct xpro_pair *p,
					     const struct xpro_pair_key *key)
{
	p->flags &= ~(XPRO_PAIR_HAS_PREV | XPRO_PAIR_HAS_NEXT);
	if (!(d->flags & XPRO_DEST_HAS_LIST)) {
		d->head = key->src;
		d->tail = key->src;
		d->flags |= XPRO_DEST_HAS_LIST;
		return;
	}
	struct xpro_addr tail = d->tail;

	if (xpro_addr_eq(&tail, &key->src)) {
		/* A re-created pair the order still names (eviction): keep it last. */
		d->flags |= XPRO_DEST_DIRTY;
		return;
	}
	struct xpro_pair *t = xpro_pair_of(&tail, &key->dst);

	if (t) {
		t->next = key->src;
		t->flags |= XPRO_PAIR_HAS_NEXT;
	} else {
		d->flags |= XPRO_DEST_DIRTY;
	}
	p->prev = tail;
	p->flags |= XPRO_PAIR_HAS_PREV;
	d->tail = key->src;
}

/* Take pair p (key) out of its destination's order. Lock held. A neighbour
 * is only rewritten when it still points back at p, so stale links (after
 * an eviction) cannot damage the rest of the order. */
static __always_inline void xpro_list_unlink(struct xpro_dest *d, struct xpro_pair *p,
					     const struct xpro_pair_key *key)
{
	__u32 f = p->flags;
	struct xpro_addr prev = p->prev;
	struct xpro_addr next = p->next;
	int listed = d->flags & XPRO_DEST_HAS_LIST;

	if (listed && xpro_addr_eq(&d->head, &key->src)) {
		if (f & XPRO_PAIR_HAS_NEXT)
			d->head = next;
		else
			d->flags &= ~XPRO_DEST_HAS_LIST;
	} else if (f & XPRO_PAIR_HAS_PREV) {
		struct xpro_pair *q = xpro_pair_of(&prev, &key->dst);

		if (q && (q->flags & XPRO_PAIR_HAS_NEXT) && xpro_addr_eq(&q->next, &key->src)) {
			if (f & XPRO_PAIR_HAS_NEXT)
				q->next = next;
			else
				q->flags &= ~XPRO_PAIR_HAS_NEXT;
		} else {
			d->flags |= XPRO_DEST_DIRTY;
		}
	}
	if (listed && xpro_addr_eq(&d->tail, &key->src)) {
		if (f & XPRO_PAIR_HAS_PREV)
			d->tail = prev;
		else
			d->flags &= ~XPRO_DEST_HAS_LIST;
	} else if (f & XPRO_PAIR_HAS_NEXT) {
		struct xpro_pair *q = xpro_pair_of(&next, &key->dst);

		if (q && (q->flags & XPRO_PAIR_HAS_PREV) && xpro_addr_eq(&q->prev, &key->src)) {
			if (f & XPRO_PAIR_HAS_PREV)
				q->prev = prev;
			else
				q->flags &= ~XPRO_PAIR_HAS_PREV;
		} else {
			d->flags |= XPRO_DEST_DIRTY;
		}
	}
	p->flags = f & ~(XPRO_PAIR_HAS_PREV | XPRO_PAIR_HAS_NEXT);
}

/* d.ts1 = ts1 of the head of the order (the smallest). Lock held. */
static __always_inline void xpro_ts1_from_head(struct xpro_dest *d, const struct xpro_pair *p,
					       const struct xpro_pair_key *key)
{
	if (!(d->flags & XPRO_DEST_HAS_LIST))
		return;
	if (xpro_addr_eq(&d->head, &key->src)) {
		d->ts1 = p->ts1;
		return;
	}
	struct xpro_addr head = d->head;
	struct xpro_pair *h = xpro_pair_of(&head, &key->dst);

	if (h)
		d->ts1 = h->ts1;
	else
		d->flags |= XPRO_DEST_DIRTY;
}

/* ---- bench baselines (xpro_mesh/datapath/bench.py; only with -DXPRO_BENCH) */

#ifdef XPRO_BENCH
XPRO_MAP("percpu_array", __u32, __u64, bench_seq, 1);

/* -DXPRO_BENCH_VARY_SRC: a new source address every packet, so that
 * BPF_PROG_TEST_RUN's repeat measures the new-pair path. */
static __always_inline void xpro_bench_vary(struct xpro_pair_key *key)
{
#ifdef XPRO_BENCH_VARY_SRC
	__u32 zero = 0;
	__u64 *seq = bench_seq.lookup(&zero);

	if (seq) {
		*seq += 1;
		key->src.w[1] ^= (__u32)*seq;
	}
#endif
}

int bench_drop(struct xdp_md *ctx)
{
	return XDP_DROP;
}

/* The floor of Algorithm 2: parse, one clock read, the two lookups. */
int bench_skeleton(struct xdp_md *ctx)
{
	struct xpro_pair_key key;

	if (xpro_parse(ctx, &key) != XPRO_PARSE_IP)
		return XDP_PASS;
	xpro_bench_vary(&key);
	__u64 now = bpf_ktime_get_coarse_ns();
	struct xpro_pair *p = pairs.lookup(&key);
	struct xpro_dest *d = dests.lookup(&key.dst);

	return p && d && now ? XDP_DROP : XDP_PASS;
}
#endif

/* ---- the filter --------------------------------------------------------- */

#define XPRO_EV_EXTEND 0 /* line 10-11: the packet extends the window */
#define XPRO_EV_NEW 1    /* a pair never seen */
#define XPRO_EV_RESET 2  /* lines 4-7: idle longer than T_T1, window restarts */

static __always_inline void xpro_warn(const struct xpro_config *cfg, struct xpro_stats *st,
				      struct xpro_pair *p, const struct xpro_pair_key *key,
				      __u64 now, __u64 ts1, __s64 c)
{
	__u64 last = p->warn_ts;

	/* One warning per pair per warn_interval; one CPU wins the slot. */
	if (last != 0 && (__s64)(now - last) < (__s64)cfg->warn_interval)
		return;
	if (__sync_val_compare_and_swap(&p->warn_ts, last, now) != last)
		return;
	/* And at most warn_per_cpu per second on this CPU. */
	__u64 second = now / XPRO_NS_PER_S;

	if (st->warn_window != second) {
		st->warn_window = second;
		st->warn_in_window = 0;
	}
	if (st->warn_in_window >= cfg->warn_per_cpu) {
		st->warnings_suppressed++;
		return;
	}
	st->warn_in_window++;

	struct xpro_event ev = {};

	ev.src = key->src;
	ev.dst = key->dst;
	ev.ts1 = ts1;
	ev.ts2 = now;
	ev.c = c;
	ev.suppressed = st->warnings_suppressed;
	if (events.ringbuf_output(&ev, sizeof(ev), 0) == 0)
		st->warnings++;
	else
		st->events_lost++;
}

static __always_inline int xpro_judge(const struct xpro_config *cfg, struct xpro_stats *st,
				      struct xpro_pair_key *key, __u64 now)
{
	__s64 t_t1 = (__s64)cfg->t_t1, t_t2 = (__s64)cfg->t_t2, t_t3 = (__s64)cfg->t_t3;
	struct xpro_pair *p = pairs.lookup(key);
	int event = XPRO_EV_EXTEND;
	__s64 c_now, dest_delta = 1;
	__u64 ts1, old_ts1 = 0;

	/* Lines 1-13: open, restart or extend the pair's window; count the packet. */
	if (!p) {
		struct xpro_pair fresh = {};

		fresh.ts1 = now;
		fresh.ts2 = now;
		fresh.c = 1;
		fresh.dc = 1;
		if (pairs.insert(key, &fresh) == 0) {
			event = XPRO_EV_NEW;
			st->new_pairs++;
		}
		/* else another CPU created it first: count into theirs. */
		p = pairs.lookup(key);
		if (!p) {
			st->pair_full++;
			return XPRO_VERDICT_PASS;
		}
	}
	if (event == XPRO_EV_NEW) {
		c_now = 1;
		ts1 = now;
	} else {
		__u64 seen = p->ts2;

		if ((__s64)(now - seen) > t_t1 &&
		    __sync_val_compare_and_swap(&p->ts2, seen, now) == seen) {
			event = XPRO_EV_RESET;
			old_ts1 = p->ts1;
			p->ts1 = now;
			p->mark = 1;
			dest_delta = 1 - __sync_lock_test_and_set(&p->c, 1);
			__sync_lock_test_and_set(&p->dc, 1);
			c_now = 1;
			ts1 = now;
			st->resets++;
		} else {
			c_now = __sync_fetch_and_add(&p->c, 1) + 1;
			__sync_fetch_and_add(&p->dc, 1);
			p->ts2 = now;
			ts1 = p->ts1;
		}
	}

	/* Lines 18-20, incrementally: D's aggregate takes this packet too,
	 * whatever the verdict (the model counts dropped packets). */
	struct xpro_dest *d = dests.lookup(&key->dst);
	__s64 dest_c = 0;

	if (!d) {
		struct xpro_dest fresh = {};

		fresh.ts1 = ts1;
		fresh.ts2 = now;
		fresh.c = c_now;
		fresh.n = 1;
		fresh.head = key->src;
		fresh.tail = key->src;
		fresh.flags = XPRO_DEST_HAS_LIST;
		if (dests.insert(&key->dst, &fresh) == 0) {
			p->flags &= ~(XPRO_PAIR_HAS_PREV | XPRO_PAIR_HAS_NEXT);
			event = -1; /* the aggregate is this pair alone */
		}
		d = dests.lookup(&key->dst);
		if (!d)
			st->dest_full++;
	}
	if (d && event == -1) {
		dest_c = c_now;
	} else if (d) {
		dest_c = __sync_fetch_and_add(&d->c, dest_delta) + dest_delta;
		if ((__s64)(now - d->ts2) > 0)
			d->ts2 = now;
		if (event == XPRO_EV_NEW) {
			__sync_fetch_and_add(&d->n, 1);
			if (xpro_lock(d, XPRO_LOCK_SPINS)) {
				if ((__s64)(d->ts1 - now) > 0)
					d->ts1 = now;
				xpro_list_append(d, p, key);
				xpro_unlock(d);
			} else {
				st->lock_busy++;
			}
		} else if (event == XPRO_EV_RESET) {
			if (xpro_lock(d, XPRO_LOCK_SPINS)) {
				if (!((d->flags & XPRO_DEST_HAS_LIST) &&
				      xpro_addr_eq(&d->tail, &key->src))) {
					xpro_list_unlink(d, p, key);
					xpro_list_append(d, p, key);
				}
				if (old_ts1 == d->ts1)
					xpro_ts1_from_head(d, p, key);
				xpro_unlock(d);
			} else {
				st->lock_busy++;
			}
		}
	}

	/* Line 14-15: the pair's own rate. */
	__s64 pair_window = (__s64)(now - ts1);

	if (pair_window > t_t2 && xpro_rate_over(c_now, 1, cfg->t_f1, (__u64)pair_window)) {
		xpro_warn(cfg, st, p, key, now, ts1, c_now);
		return XPRO_VERDICT_DROP_PAIR;
	}
	if (!d)
		return XPRO_VERDICT_PASS;

	/* Lines 21-23: D's rate over all its clients. */
	__s64 dest_window = (__s64)(d->ts2 - d->ts1);

	if (!(dest_window > t_t3 && xpro_rate_over(dest_c, 1, cfg->t_f2, (__u64)dest_window)))
		return XPRO_VERDICT_PASS;
	if (cfg->policy == XPRO_POLICY_PAPER)
		return XPRO_VERDICT_DROP_DEST;
	/* fair-share: only a pair above T_F2 / n(D). */
	__s64 n = d->n;

	if (n < 1)
		n = 1;
	if (pair_window > t_t2 && xpro_rate_over(c_now, n, cfg->t_f2, (__u64)pair_window))
		return XPRO_VERDICT_DROP_DEST;
	return XPRO_VERDICT_PASS;
}

int xpro_filter(struct xdp_md *ctx)
{
	__u32 zero = 0;
	struct xpro_stats *st = stats.lookup(&zero);
	struct xpro_config *cfg = config.lookup(&zero);
	struct xpro_clock *clk = clock.lookup(&zero);
	struct xpro_pair_key key;
	int verdict;

	if (!st || !cfg || !clk)
		return XDP_PASS;
	int parsed = xpro_parse(ctx, &key);
#ifdef XPRO_BENCH
	xpro_bench_vary(&key);
#endif

	if (parsed == XPRO_PARSE_NOT_IP) {
		st->not_ip++;
		verdict = XPRO_VERDICT_NOT_IP;
	} else if (parsed != XPRO_PARSE_IP) {
		st->malformed++;
		verdict = XPRO_VERDICT_MALFORMED;
	} else if (cfg->version == 0) {
		st->unconfigured++;
		verdict = XPRO_VERDICT_UNCONFIGURED;
	} else {
		verdict = xpro_judge(cfg, st, &key, xpro_now(cfg, clk));
		if (verdict == XPRO_VERDICT_DROP_PAIR)
			st->drop_pair++;
		else if (verdict == XPRO_VERDICT_DROP_DEST)
			st->drop_dest++;
		else
			st->pass++;
	}
#ifdef XPRO_TEST_CLOCK
	clk->test_verdict = verdict;
#endif
	return verdict == XPRO_VERDICT_DROP_PAIR || verdict == XPRO_VERDICT_DROP_DEST ? XDP_DROP
										      : XDP_PASS;
}

/* ---- write-back --------------------------------------------------------- */

static __always_inline __u32 xpro_apply_dest(struct xpro_op *op)
{
	struct xpro_dest *d = dests.lookup(&op->key.dst);

	if (!d) {
		struct xpro_dest fresh = {};

		fresh.ts1 = op->ts1;
		fresh.ts2 = op->ts2;
		fresh.c = op->c_delta;
		fresh.n = op->n_delta;
		if (dests.insert(&op->key.dst, &fresh) == 0)
			return XPRO_STATUS_CREATED;
		d = dests.lookup(&op->key.dst);
		if (!d)
			return XPRO_STATUS_FAILED;
	}
	if (!xpro_lock(d, XPRO_APPLY_LOCK_SPINS))
		return XPRO_STATUS_PENDING; /* userspace retries */
	__sync_fetch_and_add(&d->c, op->c_delta);
	__sync_fetch_and_add(&d->n, op->n_delta);
	if ((__s64)(op->ts2 - d->ts2) > 0)
		d->ts2 = op->ts2;
	d->ts1 = op->ts1;
	xpro_unlock(d);
	return XPRO_STATUS_APPLIED;
}

static __always_inline __u32 xpro_apply_pair(struct xpro_op *op, struct xpro_stats *st)
{
	struct xpro_pair *p = pairs.lookup(&op->key);

	if (!p) {
		if (!(op->flags & XPRO_OP_CREATE))
			return XPRO_STATUS_MISSING;
		/* Lines 26-28 of Algorithm 1: adopt a pair counted elsewhere. */
		struct xpro_dest *d = dests.lookup(&op->key.dst);

		if (d && !xpro_lock(d, XPRO_APPLY_LOCK_SPINS))
			return XPRO_STATUS_PENDING;
		struct xpro_pair fresh = {};
		__u32 status = XPRO_STATUS_FAILED;

		fresh.ts1 = op->ts1;
		fresh.ts2 = op->ts2;
		fresh.c = op->c_delta;
		fresh.dc = -op->acked_dc;
		if (pairs.insert(&op->key, &fresh) == 0) {
			p = pairs.lookup(&op->key);
			if (p && d)
				xpro_list_append(d, p, &op->key);
			st->apply_created++;
			status = XPRO_STATUS_CREATED;
		} else if (pairs.lookup(&op->key)) {
			status = XPRO_STATUS_PENDING; /* a packet created it just now: retry */
		}
		if (d)
			xpro_unlock(d);
		return status;
	}
	if (op->flags & XPRO_OP_EXPECT) {
		if (__sync_val_compare_and_swap(&p->ts1, op->expect_ts1, op->ts1) != op->expect_ts1)
			return XPRO_STATUS_RESTARTED;
	} else {
		p->ts1 = op->ts1;
	}
	__sync_fetch_and_add(&p->dc, -op->acked_dc);
	__sync_fetch_and_add(&p->c, op->c_delta);
	if ((__s64)(op->ts2 - p->ts2) > 0)
		p->ts2 = op->ts2;
	p->mark = 0;
	return XPRO_STATUS_APPLIED;
}

static __always_inline __u32 xpro_apply_delete(struct xpro_op *op, struct xpro_stats *st)
{
	struct xpro_pair *p = pairs.lookup(&op->key);

	if (!p)
		return XPRO_STATUS_MISSING;
	struct xpro_dest *d = dests.lookup(&op->key.dst);

	if (d) {
		if (!xpro_lock(d, XPRO_APPLY_LOCK_SPINS))
			return XPRO_STATUS_PENDING;
		xpro_list_unlink(d, p, &op->key);
		__sync_fetch_and_add(&d->c, -p->c);
		__sync_fetch_and_add(&d->n, -1);
		if (p->ts1 == d->ts1)
			xpro_ts1_from_head(d, p, &op->key);
		pairs.delete(&op->key);
		xpro_unlock(d);
	} else {
		pairs.delete(&op->key);
	}
	st->apply_deleted++;
	return XPRO_STATUS_APPLIED;
}

/* Run with BPF_PROG_TEST_RUN; the frame's first 4 bytes hold the number of
 * ops filled in apply_ops. Each op's status is written back in place. */
int xpro_apply(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	__u32 *countp = data;
	__u32 zero = 0;

	if ((void *)(countp + 1) > end)
		return XDP_ABORTED;
	__u32 count = *countp;
	struct xpro_stats *st = stats.lookup(&zero);

	if (!st)
		return XDP_ABORTED;
	for (__u32 i = 0; i < XPRO_APPLY_BATCH; i++) {
		if (i >= count)
			break;
		__u32 idx = i;
		struct xpro_op *op = apply_ops.lookup(&idx);

		if (!op)
			break;
		if (op->status != XPRO_STATUS_PENDING)
			continue;
		if (op->kind == XPRO_OP_DEST)
			op->status = xpro_apply_dest(op);
		else if (op->kind == XPRO_OP_PAIR)
			op->status = xpro_apply_pair(op, st);
		else if (op->kind == XPRO_OP_DELETE)
			op->status = xpro_apply_delete(op, st);
	}
	return XDP_PASS;
}
