/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Wire formats of the network headers qbo's programs parse. These describe
 * packet bytes, not kernel memory, so they carry no preserve_access_index,
 * and they avoid bitfields so that their layout does not depend on the
 * compiler's bitfield order.
 */
#ifndef QBO_NET_H
#define QBO_NET_H

struct qbo_iphdr {
	__u8 ver_ihl; /* version << 4 | header length in 32-bit words */
	__u8 tos;
	__be16 tot_len;
	__be16 id;
	__be16 frag_off; /* flags << 13 | fragment offset in 8-byte units */
	__u8 ttl;
	__u8 protocol;
	__be16 check;
	__u8 saddr[4];
	__u8 daddr[4];
};

struct qbo_ipv6hdr {
	__be32 ver_tc_flow; /* version << 28 | traffic class << 20 | flow label */
	__be16 payload_len;
	__u8 nexthdr;
	__u8 hop_limit;
	__u8 saddr[16];
	__u8 daddr[16];
};

/* The first four bytes of TCP and UDP headers: both start with the ports. */
struct qbo_l4ports {
	__be16 source;
	__be16 dest;
};

#define QBO_IP_MF 0x2000
#define QBO_IP_OFFMASK 0x1fff

#endif /* QBO_NET_H */
