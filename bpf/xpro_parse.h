/* SPDX-License-Identifier: GPL-2.0-only */
/*
 * xpro_parse.h - bounds-checked header parsing for the XDP program: from an
 * Ethernet frame (a VLAN stack of up to XPRO_VLAN_MAX tags: 802.1Q, 802.1ad,
 * 0x9100 QinQ) to the (source, destination) pair key, IPv4 addresses
 * v4-mapped into the 16-byte form. A carrier the filter cannot read (a
 * deeper stack, MPLS, PPPoE session) is XPRO_PARSE_UNPARSED: counted, and
 * passed or dropped by config.unparsed (issue 11). Pure: no maps.
 */
#ifndef XPRO_PARSE_H
#define XPRO_PARSE_H

#define XPRO_PARSE_IP 0
#define XPRO_PARSE_NOT_IP 1    /* ARP, LLDP, ...: passed untouched */
#define XPRO_PARSE_MALFORMED 2 /* truncated or bad IP header: passed, counted */
#define XPRO_PARSE_UNPARSED 3  /* an IP carrier not parsed (deep VLAN stack, MPLS, PPPoE) */

#define XPRO_VLAN_MAX 8
#define XPRO_ETH_P_QINQ_OLD 0x9100
#define XPRO_ETH_P_MPLS_UC 0x8847
#define XPRO_ETH_P_MPLS_MC 0x8848
#define XPRO_ETH_P_PPPOE_SES 0x8864

#define XPRO_ETH_P_IP 0x0800
#define XPRO_ETH_P_IPV6 0x86DD
#define XPRO_ETH_P_8021Q 0x8100
#define XPRO_ETH_P_8021AD 0x88A8

struct xpro_ethhdr {
	__u8 dst[6];
	__u8 src[6];
	__be16 proto;
};

struct xpro_vlanhdr {
	__be16 tci;
	__be16 proto;
};

struct xpro_ipv4hdr {
	__u8 ver_ihl;
	__u8 tos;
	__be16 tot_len;
	__be16 id;
	__be16 frag_off;
	__u8 ttl;
	__u8 protocol;
	__sum16 check;
	__be32 saddr;
	__be32 daddr;
};

struct xpro_ipv6hdr {
	__be32 ver_tc_flow;
	__be16 payload_len;
	__u8 nexthdr;
	__u8 hop_limit;
	__u8 saddr[16];
	__u8 daddr[16];
};

static __always_inline void xpro_addr_from_v4(struct xpro_addr *a, __be32 v4)
{
	a->w[0] = 0;
	a->w[1] = 0;
	a->w[2] = bpf_htonl(0x0000ffff);
	a->w[3] = v4;
}

static __always_inline int xpro_addr_eq(const struct xpro_addr *a, const struct xpro_addr *b)
{
	return a->q[0] == b->q[0] && a->q[1] == b->q[1];
}

/* Fill key from the frame in ctx; returns XPRO_PARSE_*. */
static __always_inline int xpro_parse(struct xdp_md *ctx, struct xpro_pair_key *key)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct xpro_ethhdr *eth = data;
	void *cur = eth + 1;
	__be16 proto;

	if (cur > end)
		return XPRO_PARSE_MALFORMED; /* shorter than an Ethernet header */
	proto = eth->proto;
#pragma unroll
	for (int i = 0; i < XPRO_VLAN_MAX; i++) {
		if (proto != bpf_htons(XPRO_ETH_P_8021Q) && proto != bpf_htons(XPRO_ETH_P_8021AD) &&
		    proto != bpf_htons(XPRO_ETH_P_QINQ_OLD))
			break;
		struct xpro_vlanhdr *vh = cur;
		if ((void *)(vh + 1) > end)
			return XPRO_PARSE_MALFORMED;
		proto = vh->proto;
		cur = vh + 1;
	}
	if (proto == bpf_htons(XPRO_ETH_P_IP)) {
		struct xpro_ipv4hdr *ip = cur;
		if ((void *)(ip + 1) > end)
			return XPRO_PARSE_MALFORMED;
		if ((ip->ver_ihl >> 4) != 4 || (ip->ver_ihl & 0x0f) < 5)
			return XPRO_PARSE_MALFORMED;
		xpro_addr_from_v4(&key->src, ip->saddr);
		xpro_addr_from_v4(&key->dst, ip->daddr);
		return XPRO_PARSE_IP;
	}
	if (proto == bpf_htons(XPRO_ETH_P_IPV6)) {
		struct xpro_ipv6hdr *ip6 = cur;
		if ((void *)(ip6 + 1) > end)
			return XPRO_PARSE_MALFORMED;
		if ((*(__u8 *)ip6 >> 4) != 6)
			return XPRO_PARSE_MALFORMED;
		__builtin_memcpy(key->src.b, ip6->saddr, 16);
		__builtin_memcpy(key->dst.b, ip6->daddr, 16);
		return XPRO_PARSE_IP;
	}
	if (proto == bpf_htons(XPRO_ETH_P_8021Q) || proto == bpf_htons(XPRO_ETH_P_8021AD) ||
	    proto == bpf_htons(XPRO_ETH_P_QINQ_OLD) || proto == bpf_htons(XPRO_ETH_P_MPLS_UC) ||
	    proto == bpf_htons(XPRO_ETH_P_MPLS_MC) || proto == bpf_htons(XPRO_ETH_P_PPPOE_SES))
		return XPRO_PARSE_UNPARSED;
	return XPRO_PARSE_NOT_IP;
}

#endif /* XPRO_PARSE_H */
