/* xpro_policy.h: what the filter does with its verdict, and what it never
 * judges. Included by xpro.c after its maps; two hooks there call it:
 *
 *   xpro_allowed(&key)        before Algorithm 2: a packet whose source or
 *                             destination is in the allow-list is passed
 *                             uncounted (management, peers, monitoring).
 *   xpro_action(verdict)      the XDP action for a verdict: XDP_DROP for the
 *                             two drop verdicts in enforce mode; XDP_PASS for
 *                             everything in monitor mode, where the drops
 *                             are still counted (stats.drop_*) and warned
 *                             about, and also in policy_stats.monitored.
 *
 * Both maps are pinned beside the others. The policy map's one entry is
 * written whole by the agent (xpro_mesh/datapath/policy.py); an unwritten
 * entry (all zero) is enforce with an empty allow-list, the behaviour of a
 * filter that predates this header. Keys of the allow-list are 16-byte
 * addresses, IPv4 as ::ffff:a.b.c.d (prefix length + 96), as everywhere in
 * the maps.
 */
#ifndef XPRO_POLICY_H
#define XPRO_POLICY_H

#define XPRO_ACTION_ENFORCE 0 /* drop what Algorithm 2 drops */
#define XPRO_ACTION_MONITOR 1 /* count and report what would be dropped, drop nothing */

#ifndef XPRO_ALLOW_MAX
#define XPRO_ALLOW_MAX 1024
#endif

struct xpro_policy {
	__u32 action;  /* XPRO_ACTION_* */
	__u32 version; /* the mesh configuration document's version, for status */
	__u64 pad;
};

struct xpro_policy_stats {
	__u64 allowed;   /* packets passed uncounted by the allow-list */
	__u64 monitored; /* packets judged drop but passed (monitor mode) */
};

/* struct bpf_lpm_trie_key's layout: the address bytes right after the
 * prefix length (a struct xpro_addr, 8-byte aligned, would leave 4 bytes of
 * padding inside the compared data). 20 bytes. */
struct xpro_allow_key {
	__u32 prefixlen; /* bits of addr that must match (0..128) */
	__u8 addr[16];
};

#endif /* XPRO_POLICY_H */
