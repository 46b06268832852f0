/* xpro_vouch.h: vouches (issue 13). A pair established at other proxies
 * (the mesh's rows) and under the fair share there may be vouched for by
 * this proxy's agent: a young pair that is vouched is judged by the fair
 * share (like a known pair) instead of the admission budget, so a client
 * moved here from a dead proxy is not made to queue with the bots for D's
 * small budget. Two maps, written by the agent only
 * (xpro_mesh/agent/vouching.py):
 *
 *   vouch_bloom   array of XPRO_BLOOM_WORDS __u64 (2^20 bits, mmapable):
 *                 a pair's two bits (xpro_vouch_hash) set when vouched; a
 *                 forged source pays one or two bit tests.
 *   vouched       hash: pair key -> __u32 (1), at most XPRO_VOUCHED_MAX:
 *                 the truth; looked up only when both bits are set.
 *
 * The hash is twinned bit for bit in xpro_mesh/datapath/vouch_bloom.py.
 */
#ifndef XPRO_VOUCH_H
#define XPRO_VOUCH_H

#ifndef XPRO_VOUCHED_MAX
#define XPRO_VOUCHED_MAX 131072
#endif
#define XPRO_BLOOM_BITS_LOG2 20
#define XPRO_BLOOM_WORDS (1U << (XPRO_BLOOM_BITS_LOG2 - 6))
#define XPRO_BLOOM_MASK ((1ULL << XPRO_BLOOM_BITS_LOG2) - 1)
#define XPRO_VOUCH_K1 0x9E3779B97F4A7C15ULL
#define XPRO_VOUCH_K2 0xC2B2AE3D27D4EB4FULL

/* The pair key (32 bytes) as four native-order (little-endian) 64-bit
 * words, mixed by multiply-xorshift. Bit 1: h's low 20 bits; bit 2: bits
 * 32..51. */
static __always_inline __u64 xpro_vouch_hash(const __u64 *w)
{
	__u64 h = w[0] * XPRO_VOUCH_K1;

	h = (h ^ w[1]) * XPRO_VOUCH_K2;
	h ^= h >> 31;
	h = (h ^ w[2]) * XPRO_VOUCH_K1;
	h = (h ^ w[3]) * XPRO_VOUCH_K2;
	h ^= h >> 29;
	return h;
}

#endif /* XPRO_VOUCH_H */
