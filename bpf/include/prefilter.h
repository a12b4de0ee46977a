/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * prefilter.h: the firewall's XDP deny prefilter, shared by every object
 * that owns an uplink's XDP entry point.
 *
 * An interface has one XDP program, so the object that owns it (bpf/lb on
 * the uplink, bpf/fw's standalone fw_xdp_prefilter elsewhere) includes this
 * header and calls qbo_prefilter() first. The deny lists are LPM tries
 * pinned by name, so every includer loaded with the same pin path shares
 * the one set of maps that qbod's firewall fills.
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
 *     qbo_pf_v4    LPM trie, key struct qbo_pf_key4, value struct qbo_pf_val,
 *                  QBO_PF_MAX_ENTRIES entries
 *     qbo_pf_v6    same with struct qbo_pf_key6
 *     qbo_pf_stats per-CPU array of __u64 indexed by enum qbo_pf_stat
 *
 * Include after qbo_vmlinux.h, qbo_uapi.h and <bpf/bpf_helpers.h>.
 */
#ifndef QBO_PREFILTER_H
#define QBO_PREFILTER_H

#include "qbo_net.h"

#define QBO_PF_MAX_ENTRIES (1 << 20)

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
		struct qbo_pf_key4 k = {.prefixlen = 32};
		__builtin_memcpy(k.addr, ip->saddr, 4);
		if (bpf_map_lookup_elem(&qbo_pf_v4, &k))
			return qbo_pf_count(QBO_PF_DROP, XDP_DROP);
		return qbo_pf_count(QBO_PF_PASS, XDP_PASS);
	}
	if (proto == ETH_P_IPV6) {
		struct qbo_ipv6hdr *ip6 = (void *)l3;
		if ((void *)(ip6 + 1) > data_end)
			return qbo_pf_count(QBO_PF_MALFORMED, XDP_PASS);
		struct qbo_pf_key6 k = {.prefixlen = 128};
		__builtin_memcpy(k.addr, ip6->saddr, 16);
		if (bpf_map_lookup_elem(&qbo_pf_v6, &k))
			return qbo_pf_count(QBO_PF_DROP, XDP_DROP);
		return qbo_pf_count(QBO_PF_PASS, XDP_PASS);
	}
	return qbo_pf_count(QBO_PF_NOT_IP, XDP_PASS);
}

#endif /* QBO_PREFILTER_H */
