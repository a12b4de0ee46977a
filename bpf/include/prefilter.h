/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * prefilter.h: the firewall's XDP deny prefilter, shared by every object
 * that owns an uplink's XDP entry point.
 *
 * An interface has one XDP program, so the object that owns it (bpf/lb on
 * the uplink, bpf/fw's standalone fw_xdp_prefilter elsewhere) includes this
 * header and calls qbo_prefilter() first. Every map is pinned by name, so
 * every includer loaded with the same pin path shares the one set of maps
 * that qbod's firewall fills (fw/datapath/prefilter.go).
 *
 * The cost of a packet that matches nothing must not grow with the number
 * of prefixes, so IPv4 is not looked up in a trie (whose depth grows with
 * its contents) but in bitmaps over the 2^24 /24 networks, indexed by
 * n = saddr >> 8 in host order:
 *
 *   qbo_pf_v4_full  bit n set: every address of /24 n is denied (prefixes
 *                   of length <= 24 expanded into their /24s)
 *   qbo_pf_v4_part  bit n set: /24 n holds longer (/25../32) prefixes,
 *                   whose addresses qbo_pf_v4_host lists
 *   qbo_pf_v4_host  /24 n -> 256-bit bitmap of its denied host bytes
 *
 * A miss costs two array reads, which the verifier inlines; only a /24
 * that holds long prefixes costs a hash lookup more. The full and part
 * bitmaps are computed independently (a /32 inside a denied /24 also
 * stays in qbo_pf_v4_host), so a change only ever sets bits (add) or only
 * clears them (delete). IPv6 keeps its LPM trie, which is skipped unless
 * qbo_pf_cfg says it holds prefixes.
 *
 * qbo_pf_v4 and qbo_pf_v6 are the record of the prefixes as added: the
 * source of truth a restarted qbod reads back (and `bpftool map dump`
 * shows). The program reads qbo_pf_v6, never qbo_pf_v4.
 *
 * API (stable; add, never change):
 *
 *   int qbo_prefilter(void *data, void *data_end);
 *
 *     Returns XDP_DROP when the packet's IPv4 or IPv6 source address lies
 *     in a denied prefix, else XDP_PASS, meaning "continue with your own
 *     program". Malformed or non-IP frames are passed on (counted): the
 *     full parser downstream gives them their defined verdict.
 *
 *   Maps (names are ABI: pinned at <pin dir>/<name>):
 *     qbo_pf_v4      LPM trie, key struct qbo_pf_key4, value struct
 *                    qbo_pf_val, QBO_PF_MAX_ENTRIES entries: the IPv4
 *                    prefixes added (record only; not read by the program)
 *     qbo_pf_v6      same with struct qbo_pf_key6: the IPv6 prefixes,
 *                    looked up by the program
 *     qbo_pf_v4_full array of QBO_PF_V4_WORDS __u64, key __u32 word:
 *                    bit (n & 63) of word (n >> 6) is /24 n, denied whole
 *     qbo_pf_v4_part same shape: /24 n has entries in qbo_pf_v4_host
 *     qbo_pf_v4_host hash, key __u32 n, value struct qbo_pf_hosts (bit
 *                    (h & 63) of w[h >> 6] is host byte h of /24 n),
 *                    QBO_PF_MAX_ENTRIES entries, not preallocated
 *     qbo_pf_cfg     array of one struct qbo_pf_config: the prefix counts
 *     qbo_pf_stats   per-CPU array of __u64 indexed by enum qbo_pf_stat
 *
 * Include after qbo_vmlinux.h, qbo_uapi.h and <bpf/bpf_helpers.h>.
 */
#ifndef QBO_PREFILTER_H
#define QBO_PREFILTER_H

#include "qbo_net.h"

#define QBO_PF_MAX_ENTRIES (1 << 20)
#define QBO_PF_V4_WORDS ((1 << 24) / 64)

struct qbo_pf_key4 {
	__u32 prefixlen;
	__u8 addr[4];
};

struct qbo_pf_key6 {
	__u32 prefixlen;
	__u8 addr[16];
};

/* Reserved for per-prefix flags; written as zero. */
struct qbo_pf_val {
	__u32 flags;
};

/* The denied host bytes of one /24. */
struct qbo_pf_hosts {
	__u64 w[4];
};

struct qbo_pf_config {
	__u32 v4_prefixes; /* entries in qbo_pf_v4 (informational) */
	__u32 v6_prefixes; /* entries in qbo_pf_v6; 0 skips the trie */
};

enum qbo_pf_stat {
	QBO_PF_PASS = 0,     /* no deny prefix matched */
	QBO_PF_DROP = 1,     /* dropped by a deny prefix */
	QBO_PF_NOT_IP = 2,   /* not IPv4/IPv6: passed on */
	QBO_PF_MALFORMED = 3,/* truncated header: passed on to the full parser */
	QBO_PF_STAT_MAX = 4,
};

struct {
	__uint(type, QBO_MAP_TYPE_LPM_TRIE);
	__type(key, struct qbo_pf_key4);
	__type(value, struct qbo_pf_val);
	__uint(max_entries, QBO_PF_MAX_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} qbo_pf_v4 SEC(".maps");

struct {
	__uint(type, QBO_MAP_TYPE_LPM_TRIE);
	__type(key, struct qbo_pf_key6);
	__type(value, struct qbo_pf_val);
	__uint(max_entries, QBO_PF_MAX_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} qbo_pf_v6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, QBO_PF_V4_WORDS);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} qbo_pf_v4_full SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, QBO_PF_V4_WORDS);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} qbo_pf_v4_part SEC(".maps");

/* Not preallocated: a /24 with long prefixes is rare next to the 1M that
 * could be, and 1M preallocated elements would cost ~90 MiB up front. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct qbo_pf_hosts);
	__uint(max_entries, QBO_PF_MAX_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} qbo_pf_v4_host SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct qbo_pf_config);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} qbo_pf_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, QBO_PF_STAT_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} qbo_pf_stats SEC(".maps");

static __always_inline int qbo_pf_count(__u32 stat, int verdict)
{
	__u64 *c = bpf_map_lookup_elem(&qbo_pf_stats, &stat);
	if (c)
		*c += 1; /* per-CPU slot, and XDP does not nest on a CPU */
	return verdict;
}

/* qbo_pf_v4_denied says whether IPv4 source a (network order bytes) lies
 * in a denied prefix: at most two inlined array reads and, for a /24 that
 * holds long prefixes, one hash lookup. */
static __always_inline int qbo_pf_v4_denied(const __u8 *a)
{
	__u32 n = ((__u32)a[0] << 16) | ((__u32)a[1] << 8) | a[2];
	__u32 word = n >> 6;
	__u64 bit = 1ULL << (n & 63);

	__u64 *w = bpf_map_lookup_elem(&qbo_pf_v4_full, &word);
	if (w && (*w & bit))
		return 1;
	w = bpf_map_lookup_elem(&qbo_pf_v4_part, &word);
	if (!w || !(*w & bit))
		return 0;
	struct qbo_pf_hosts *h = bpf_map_lookup_elem(&qbo_pf_v4_host, &n);
	if (!h)
		return 0;
	__u8 host = a[3];
	return (h->w[host >> 6] >> (host & 63)) & 1;
}

static __always_inline int qbo_prefilter(void *data, void *data_end)
{
	__u8 *eth = data;
	if ((void *)(eth + 14) > data_end)
		return qbo_pf_count(QBO_PF_MALFORMED, XDP_PASS);
	__u16 proto = ((__u16)eth[12] << 8) | eth[13];
	__u8 *l3 = eth + 14;
	if (proto == 0x8100 || proto == 0x88A8) {
		if ((void *)(l3 + 4) > data_end)
			return qbo_pf_count(QBO_PF_MALFORMED, XDP_PASS);
		proto = ((__u16)l3[2] << 8) | l3[3];
		l3 += 4;
	}
	if (proto == ETH_P_IP) {
		struct qbo_iphdr *ip = (void *)l3;
		if ((void *)(ip + 1) > data_end)
			return qbo_pf_count(QBO_PF_MALFORMED, XDP_PASS);
		if (qbo_pf_v4_denied(ip->saddr))
			return qbo_pf_count(QBO_PF_DROP, XDP_DROP);
		return qbo_pf_count(QBO_PF_PASS, XDP_PASS);
	}
	if (proto == ETH_P_IPV6) {
		struct qbo_ipv6hdr *ip6 = (void *)l3;
		if ((void *)(ip6 + 1) > data_end)
			return qbo_pf_count(QBO_PF_MALFORMED, XDP_PASS);
		__u32 zero = 0;
		struct qbo_pf_config *cfg = bpf_map_lookup_elem(&qbo_pf_cfg, &zero);
		if (!cfg || !cfg->v6_prefixes)
			return qbo_pf_count(QBO_PF_PASS, XDP_PASS);
		struct qbo_pf_key6 k = {.prefixlen = 128};
		__builtin_memcpy(k.addr, ip6->saddr, 16);
		if (bpf_map_lookup_elem(&qbo_pf_v6, &k))
			return qbo_pf_count(QBO_PF_DROP, XDP_DROP);
		return qbo_pf_count(QBO_PF_PASS, XDP_PASS);
	}
	return qbo_pf_count(QBO_PF_NOT_IP, XDP_PASS);
}

#endif /* QBO_PREFILTER_H */
