/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * parse.h: the one bounds-checked packet parser every qbo networking
 * program uses (bpf/lb, bpf/fw). It reads Ethernet, up to two VLAN tags,
 * IPv4 (IHL checked, options skipped, fragments classified) or IPv6 (up to
 * QBO_MAX_EXTHDRS extension headers walked, fragment header decoded), the
 * TCP/UDP ports, and for ICMP/ICMPv6 errors the embedded (inner) packet's
 * addresses and ports, so that an error about a balanced flow can follow it.
 *
 * API (stable; add, never change):
 *
 *   enum qbo_parse_result qbo_parse(void *data, void *data_end,
 *                                   struct qbo_pkt *pkt);
 *
 *   int qbo_parse_plain4(void *data, void *data_end, struct qbo_pkt *pkt);
 *   int qbo_parse_plain6(void *data, void *data_end, struct qbo_pkt *pkt);
 *
 *     The common frame only: untagged IPv4 without options, not a
 *     fragment, TCP or UDP with its whole header. For such a frame it
 *     fills *pkt exactly as qbo_parse does (QBO_PARSE_OK, flags
 *     QBO_PKT_PORTS) and returns 1; for any other it returns 0 and the
 *     caller runs qbo_parse. It accepts exactly the frames that qbo_parse
 *     parses to family 4 with flags == QBO_PKT_PORTS (bpf/parsetest checks
 *     it on crafted and fuzzed frames). A caller that handles its result
 *     in a separate inlined copy of its code gets that copy compiled for
 *     constant offsets and flags (lb_xdp's established flow: 15-25% less
 *     time in BenchmarkXDPRatio, see docs/BENCHMARKS.md).
 *
 *     qbo_parse_plain6 is the same for untagged IPv6 whose next header is
 *     TCP or UDP (no extension headers): it accepts exactly the frames
 *     that qbo_parse parses to family 6 with flags == QBO_PKT_PORTS.
 *
 * It never reads out of bounds and never fails the verifier's bounds
 * checks. It returns one qbo_parse_result and fills *pkt as far as it got.
 * The result is a classification, not a verdict: the caller maps each
 * result to its own action and counter (bpf/lb documents its table in
 * lb.c). The recommended mapping, used by bpf/lb:
 *
 *   QBO_PARSE_OK           parsed; for TCP/UDP (not a later fragment) the
 *                          full 20/8-byte header is present and ports valid
 *   QBO_PARSE_NOT_IP       not IPv4/IPv6 (ARP, LLDP...): pass
 *   QBO_PARSE_TRUNCATED    a header ends past data_end: drop
 *   QBO_PARSE_BAD_VERSION  IP version nibble disagrees with ethertype: drop
 *   QBO_PARSE_BAD_IHL      IPv4 IHL < 5 or tot_len < IHL*4: drop
 *   QBO_PARSE_EXT_LIMIT    more than QBO_MAX_EXTHDRS IPv6 ext headers: pass
 *                          (not balanced; the stack applies its own rules)
 *
 * Include after qbo_vmlinux.h, qbo_uapi.h, <bpf/bpf_helpers.h> and
 * <bpf/bpf_endian.h>.
 *
 * Addresses are kept as the raw network-order bytes (IPv4 in addr[0],
 * addr[1..3] zero); ports are network order. Offsets are from data.
 */
#ifndef QBO_PARSE_H
#define QBO_PARSE_H

#include "qbo_net.h"

#ifndef QBO_MAX_EXTHDRS
#define QBO_MAX_EXTHDRS 6
#endif

#define QBO_ETH_HLEN 14
#define QBO_ETH_P_8021Q 0x8100
#define QBO_ETH_P_8021AD 0x88A8
#define QBO_IPPROTO_ICMP 1
#define QBO_IPPROTO_IPIP 4
#define QBO_IPPROTO_ICMPV6 58
#define QBO_IPPROTO_HOPOPTS 0
#define QBO_IPPROTO_ROUTING 43
#define QBO_IPPROTO_FRAGMENT 44
#define QBO_IPPROTO_AH 51
#define QBO_IPPROTO_DSTOPTS 60
#define QBO_IPPROTO_NONE 59
#define QBO_IPV6_HLEN 40
#define QBO_IPV4_HLEN 20

enum qbo_parse_result {
	QBO_PARSE_OK = 0,
	QBO_PARSE_NOT_IP = 1,
	QBO_PARSE_TRUNCATED = 2,
	QBO_PARSE_BAD_VERSION = 3,
	QBO_PARSE_BAD_IHL = 4,
	QBO_PARSE_EXT_LIMIT = 5,
};

/* qbo_pkt.flags */
enum qbo_pkt_flags {
	QBO_PKT_VLAN = 1 << 0,       /* at least one VLAN tag was skipped */
	QBO_PKT_IPOPTS = 1 << 1,     /* IPv4 IHL > 5 (options skipped) */
	QBO_PKT_FRAG = 1 << 2,       /* a fragment (first or later) */
	QBO_PKT_FRAG_LATER = 1 << 3, /* offset != 0: no L4 header, ports are 0 */
	QBO_PKT_PORTS = 1 << 4,      /* sport/dport are valid */
	QBO_PKT_ICMP_ERR = 1 << 5,   /* ICMP(v6) error; inner is valid */
	QBO_PKT_EXTHDRS = 1 << 6,    /* IPv6 extension headers were walked */
};

/* The embedded packet of an ICMP error, as the original sender saw it. */
struct qbo_pkt_inner {
	__be32 saddr[4];
	__be32 daddr[4];
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

struct qbo_pkt {
	__u16 l3_off;    /* offset of the IP header */
	__u16 l4_off;    /* offset of the L4 header (after options/ext hdrs) */
	__u16 ethertype; /* host order, after VLAN tags */
	__u8 family;     /* 4 or 6, 0 if not IP */
	__u8 proto;      /* L4 protocol (after the IPv6 extension walk) */
	__u16 flags;     /* enum qbo_pkt_flags */
	__u8 nexthdrs;   /* IPv6 extension headers walked */
	__u8 icmp_type;  /* for ICMP/ICMPv6 */
	__be32 frag_id;  /* IPv4 id (zero-extended) or IPv6 fragment id */
	__be32 saddr[4];
	__be32 daddr[4];
	__be16 sport;
	__be16 dport;
	__u16 ip_len;    /* IPv4 tot_len / IPv6 payload_len + 40, host order */
	__u16 pad;
	struct qbo_pkt_inner inner;
};

/* qbo_parse_bound: an offset must stay below this to be read at all; it
 * also gives the verifier a constant upper bound for variable offsets. */
#define QBO_PARSE_MAX_OFF 4096

static __always_inline void *qbo_ptr(void *data, void *data_end, __u32 off, __u32 len)
{
	if (off > QBO_PARSE_MAX_OFF)
		return 0;
	void *p = data + off;
	if (p + len > data_end)
		return 0;
	return p;
}

static __always_inline int qbo_icmp4_is_error(__u8 type)
{
	/* dest unreachable, source quench, redirect, time exceeded, param */
	return type == 3 || type == 4 || type == 5 || type == 11 || type == 12;
}

static __always_inline int qbo_icmp6_is_error(__u8 type)
{
	/* dest unreachable, packet too big, time exceeded, param problem */
	return type >= 1 && type <= 4;
}

/* qbo_parse_ports reads the two ports at off (TCP and UDP both start with
 * them). */
static __always_inline int qbo_parse_ports(void *data, void *data_end, __u32 off,
					   __be16 *sport, __be16 *dport)
{
	struct qbo_l4ports *l4 = qbo_ptr(data, data_end, off, sizeof(*l4));
	if (!l4)
		return QBO_PARSE_TRUNCATED;
	*sport = l4->source;
	*dport = l4->dest;
	return QBO_PARSE_OK;
}

/* qbo_parse_inner decodes the IP header and first L4 bytes quoted in an
 * ICMP(v6) error at off. Only what an ICMP error guarantees is required:
 * the IP header and 8 bytes of L4. */
static __always_inline int qbo_parse_inner(void *data, void *data_end, __u32 off, __u8 family,
					   struct qbo_pkt_inner *in)
{
	__u32 l4;
	if (family == 4) {
		struct qbo_iphdr *ip = qbo_ptr(data, data_end, off, sizeof(*ip));
		if (!ip)
			return QBO_PARSE_TRUNCATED;
		__u8 ihl = ip->ver_ihl & 0xf;
		if ((ip->ver_ihl >> 4) != 4)
			return QBO_PARSE_BAD_VERSION;
		if (ihl < 5)
			return QBO_PARSE_BAD_IHL;
		__builtin_memcpy(&in->saddr[0], ip->saddr, 4);
		__builtin_memcpy(&in->daddr[0], ip->daddr, 4);
		in->proto = ip->protocol;
		l4 = off + ihl * 4;
	} else {
		struct qbo_ipv6hdr *ip6 = qbo_ptr(data, data_end, off, sizeof(*ip6));
		if (!ip6)
			return QBO_PARSE_TRUNCATED;
		if ((((__u8 *)ip6)[0] >> 4) != 6)
			return QBO_PARSE_BAD_VERSION;
		__builtin_memcpy(in->saddr, ip6->saddr, 16);
		__builtin_memcpy(in->daddr, ip6->daddr, 16);
		in->proto = ip6->nexthdr; /* quoted ext headers are not walked */
		l4 = off + QBO_IPV6_HLEN;
	}
	if (in->proto == IPPROTO_TCP || in->proto == IPPROTO_UDP)
		return qbo_parse_ports(data, data_end, l4, &in->sport, &in->dport);
	return QBO_PARSE_OK;
}

static __always_inline int qbo_parse_l4(void *data, void *data_end, struct qbo_pkt *pkt)
{
	if (pkt->flags & QBO_PKT_FRAG_LATER)
		return QBO_PARSE_OK;
	__u32 off = pkt->l4_off;
	if (pkt->proto == IPPROTO_TCP || pkt->proto == IPPROTO_UDP) {
		/* The whole fixed header (checksum included) must be there,
		 * so that a caller may rewrite it. */
		if (!qbo_ptr(data, data_end, off, pkt->proto == IPPROTO_TCP ? 20 : 8))
			return QBO_PARSE_TRUNCATED;
		int r = qbo_parse_ports(data, data_end, off, &pkt->sport, &pkt->dport);
		if (r == QBO_PARSE_OK)
			pkt->flags |= QBO_PKT_PORTS;
		return r;
	}
	if ((pkt->family == 4 && pkt->proto == QBO_IPPROTO_ICMP) ||
	    (pkt->family == 6 && pkt->proto == QBO_IPPROTO_ICMPV6)) {
		__u8 *icmp = qbo_ptr(data, data_end, off, 8);
		if (!icmp)
			return QBO_PARSE_TRUNCATED;
		pkt->icmp_type = icmp[0];
		int err = pkt->family == 4 ? qbo_icmp4_is_error(icmp[0]) : qbo_icmp6_is_error(icmp[0]);
		if (!err)
			return QBO_PARSE_OK;
		__builtin_memset(&pkt->inner, 0, sizeof(pkt->inner));
		int r = qbo_parse_inner(data, data_end, off + 8, pkt->family, &pkt->inner);
		if (r == QBO_PARSE_OK)
			pkt->flags |= QBO_PKT_ICMP_ERR;
		/* A mangled quote is the ICMP error's problem, not the outer
		 * packet's: report the outer as parsed, without ICMP_ERR. */
		return QBO_PARSE_OK;
	}
	return QBO_PARSE_OK;
}

static __always_inline int qbo_parse_ipv4(void *data, void *data_end, struct qbo_pkt *pkt)
{
	struct qbo_iphdr *ip = qbo_ptr(data, data_end, pkt->l3_off, sizeof(*ip));
	if (!ip)
		return QBO_PARSE_TRUNCATED;
	if ((ip->ver_ihl >> 4) != 4)
		return QBO_PARSE_BAD_VERSION;
	__u32 ihl = (ip->ver_ihl & 0xf) * 4;
	if (ihl < QBO_IPV4_HLEN)
		return QBO_PARSE_BAD_IHL;
	__u16 tot = bpf_ntohs(ip->tot_len);
	if (tot < ihl)
		return QBO_PARSE_BAD_IHL;
	if (ihl > QBO_IPV4_HLEN) {
		/* Options are skipped, but they must be present in full. */
		if (!qbo_ptr(data, data_end, pkt->l3_off, ihl))
			return QBO_PARSE_TRUNCATED;
		pkt->flags |= QBO_PKT_IPOPTS;
	}
	pkt->family = 4;
	pkt->proto = ip->protocol;
	pkt->ip_len = tot;
	__builtin_memcpy(&pkt->saddr[0], ip->saddr, 4);
	__builtin_memcpy(&pkt->daddr[0], ip->daddr, 4);
	pkt->l4_off = pkt->l3_off + ihl;
	__u16 frag = bpf_ntohs(ip->frag_off);
	if (frag & (QBO_IP_MF | QBO_IP_OFFMASK)) {
		pkt->flags |= QBO_PKT_FRAG;
		pkt->frag_id = (__be32)ip->id;
		if (frag & QBO_IP_OFFMASK)
			pkt->flags |= QBO_PKT_FRAG_LATER;
	}
	return qbo_parse_l4(data, data_end, pkt);
}

static __always_inline int qbo_parse_ipv6(void *data, void *data_end, struct qbo_pkt *pkt)
{
	struct qbo_ipv6hdr *ip6 = qbo_ptr(data, data_end, pkt->l3_off, sizeof(*ip6));
	if (!ip6)
		return QBO_PARSE_TRUNCATED;
	if ((((__u8 *)ip6)[0] >> 4) != 6)
		return QBO_PARSE_BAD_VERSION;
	pkt->family = 6;
	pkt->ip_len = bpf_ntohs(ip6->payload_len) + QBO_IPV6_HLEN;
	__builtin_memcpy(pkt->saddr, ip6->saddr, 16);
	__builtin_memcpy(pkt->daddr, ip6->daddr, 16);

	__u8 nh = ip6->nexthdr;
	__u32 off = pkt->l3_off + QBO_IPV6_HLEN;
	int i;
#pragma unroll
	for (i = 0; i < QBO_MAX_EXTHDRS + 1; i++) {
		if (nh != QBO_IPPROTO_HOPOPTS && nh != QBO_IPPROTO_ROUTING &&
		    nh != QBO_IPPROTO_FRAGMENT && nh != QBO_IPPROTO_DSTOPTS && nh != QBO_IPPROTO_AH)
			break;
		if (i == QBO_MAX_EXTHDRS)
			return QBO_PARSE_EXT_LIMIT;
		__u8 *h = qbo_ptr(data, data_end, off, 8);
		if (!h)
			return QBO_PARSE_TRUNCATED;
		pkt->flags |= QBO_PKT_EXTHDRS;
		pkt->nexthdrs++;
		__u32 len;
		if (nh == QBO_IPPROTO_FRAGMENT) {
			/* nexthdr, reserved, offset<<3 | M, id */
			__u16 fo = ((__u16)h[2] << 8) | h[3];
			pkt->flags |= QBO_PKT_FRAG;
			if (fo & 0xfff8)
				pkt->flags |= QBO_PKT_FRAG_LATER;
			__builtin_memcpy(&pkt->frag_id, h + 4, 4);
			len = 8;
		} else if (nh == QBO_IPPROTO_AH) {
			len = ((__u32)h[1] + 2) * 4;
		} else {
			len = ((__u32)h[1] + 1) * 8;
		}
		nh = h[0];
		off += len;
	}
	pkt->proto = nh;
	pkt->l4_off = off;
	return qbo_parse_l4(data, data_end, pkt);
}

/* qbo_parse parses the frame in [data, data_end) into *pkt (zeroed here;
 * pkt->inner only for ICMP errors, the one case that fills it). */
static __always_inline int qbo_parse(void *data, void *data_end, struct qbo_pkt *pkt)
{
	__builtin_memset(pkt, 0, __builtin_offsetof(struct qbo_pkt, inner));
	__u8 *eth = qbo_ptr(data, data_end, 0, QBO_ETH_HLEN);
	if (!eth)
		return QBO_PARSE_TRUNCATED;
	__u16 proto = ((__u16)eth[12] << 8) | eth[13];
	__u32 off = QBO_ETH_HLEN;
	int i;
#pragma unroll
	for (i = 0; i < 2; i++) {
		if (proto != QBO_ETH_P_8021Q && proto != QBO_ETH_P_8021AD)
			break;
		__u8 *tag = qbo_ptr(data, data_end, off, 4);
		if (!tag)
			return QBO_PARSE_TRUNCATED;
		proto = ((__u16)tag[2] << 8) | tag[3];
		off += 4;
		pkt->flags |= QBO_PKT_VLAN;
	}
	pkt->ethertype = proto;
	pkt->l3_off = off;
	if (proto == ETH_P_IP)
		return qbo_parse_ipv4(data, data_end, pkt);
	if (proto == ETH_P_IPV6)
		return qbo_parse_ipv6(data, data_end, pkt);
	return QBO_PARSE_NOT_IP;
}

/* qbo_plain_ports is what the plain parsers share after the IP header,
 * which ends at l4 == data + QBO_ETH_HLEN + hlen: TCP or UDP with its whole
 * header. For such a frame it fills *pkt as qbo_parse does, except the
 * addresses, and returns 1; otherwise it returns 0 and leaves *pkt alone. */
static __always_inline int qbo_plain_ports(struct qbo_pkt *pkt, struct qbo_l4ports *l4, void *data_end,
					   __u16 ethertype, __u8 family, __u16 hlen, __u8 proto, __u16 ip_len)
{
	if (proto == IPPROTO_TCP) {
		if ((void *)l4 + 20 > data_end)
			return 0;
	} else if (proto == IPPROTO_UDP) {
		if ((void *)l4 + 8 > data_end)
			return 0;
	} else {
		return 0;
	}
	__builtin_memset(pkt, 0, __builtin_offsetof(struct qbo_pkt, inner));
	pkt->l3_off = QBO_ETH_HLEN;
	pkt->l4_off = QBO_ETH_HLEN + hlen;
	pkt->ethertype = ethertype;
	pkt->family = family;
	pkt->proto = proto;
	pkt->flags = QBO_PKT_PORTS;
	pkt->ip_len = ip_len;
	pkt->sport = l4->source;
	pkt->dport = l4->dest;
	return 1;
}

/* qbo_parse_plain4: see the API above. It is a second reading of the
 * checks qbo_parse makes for this one case, kept beside it on purpose:
 * what it buys is constant offsets in the caller, which qbo_parse's
 * merged result cannot give. */
static __always_inline int qbo_parse_plain4(void *data, void *data_end, struct qbo_pkt *pkt)
{
	__u8 *eth = data;
	struct qbo_iphdr *ip = data + QBO_ETH_HLEN;
	if ((void *)(ip + 1) > data_end)
		return 0;
	if (eth[12] != 0x08 || eth[13] != 0x00 || ip->ver_ihl != 0x45)
		return 0;
	__u16 tot = bpf_ntohs(ip->tot_len);
	if (tot < QBO_IPV4_HLEN || (ip->frag_off & bpf_htons(QBO_IP_MF | QBO_IP_OFFMASK)))
		return 0;
	if (!qbo_plain_ports(pkt, (void *)(ip + 1), data_end, ETH_P_IP, 4, QBO_IPV4_HLEN, ip->protocol, tot))
		return 0;
	__builtin_memcpy(&pkt->saddr[0], ip->saddr, 4);
	__builtin_memcpy(&pkt->daddr[0], ip->daddr, 4);
	return 1;
}

/* qbo_parse_plain6: see the API above; qbo_parse_plain4 for IPv6. */
static __always_inline int qbo_parse_plain6(void *data, void *data_end, struct qbo_pkt *pkt)
{
	__u8 *eth = data;
	struct qbo_ipv6hdr *ip6 = data + QBO_ETH_HLEN;
	if ((void *)(ip6 + 1) > data_end)
		return 0;
	if (eth[12] != 0x86 || eth[13] != 0xdd || (((__u8 *)ip6)[0] >> 4) != 6)
		return 0;
	if (!qbo_plain_ports(pkt, (void *)(ip6 + 1), data_end, ETH_P_IPV6, 6, QBO_IPV6_HLEN, ip6->nexthdr,
			     bpf_ntohs(ip6->payload_len) + QBO_IPV6_HLEN))
		return 0;
	__builtin_memcpy(pkt->saddr, ip6->saddr, 16);
	__builtin_memcpy(pkt->daddr, ip6->daddr, 16);
	return 1;
}

#endif /* QBO_PARSE_H */
