//go:build ignore

/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * qbo L4 load balancer: XDP on the uplink (lb_xdp) for traffic from outside
 * the node, TC egress on the uplink (lb_revnat) for replies of NATed flows.
 *
 * Verdicts (each has an lb_stat counter; no path returns XDP_ABORTED):
 *
 *   not IP (ARP, ...)                      PASS   PASS_NOT_IP
 *   truncated at any header                DROP   DROP_TRUNCATED
 *   IP version != ethertype                DROP   DROP_BAD_VERSION
 *   IPv4 IHL < 5 or tot_len < IHL*4        DROP   DROP_BAD_IHL
 *   IPv4 options (IHL > 5)                 balanced as usual, IPOPTS
 *   IPv6 0-6 extension headers             balanced as usual, EXTHDRS
 *   IPv6 > 6 extension headers             PASS   PASS_EXT_LIMIT
 *   not to a service                       PASS   PASS_NO_SERVICE
 *   service without backends               DROP   DROP_NO_BACKEND
 *   first fragment (MF, offset 0)          balanced; records its backend FRAG_FIRST
 *   later fragment of a recorded datagram  follows the first  FRAG_LATER
 *   later fragment, first not seen         PASS   PASS_FRAG_MISS
 *   ICMP error quoting a balanced flow     to that flow's backend  ICMP_ERR
 *                                          (NAT: outer and quote translated)
 *   ICMP error quoting anything else       PASS   PASS_ICMP_ERR_MISS
 *   DSR without a route/neighbour          DROP   DROP_DSR_FIB
 *   DSR of a VLAN-tagged frame             DROP   DROP_DSR_VLAN
 *   prefilter says drop                    DROP   DROP_PREFILTER
 *
 * Flows: the set-associative flow table (lb.h) is looked up first, by a
 * cheap hash of the 5-tuple, after the VIP filter; a hit needs no service
 * lookup. A miss looks the service up, picks by Maglev (lb_hash, the
 * reference hash of lb.FlowTuple.Hash) and records the flow.
 *
 * NAT (local backends): destination rewritten to the backend, checksums
 * fixed incrementally, then XDP_PASS so that the node's stack routes it to
 * the backend; a new flow records its reply in lb_rnat2, where lb_revnat
 * finds the VIP to rewrite the reply's source back to.
 * DSR (remote backends): IPIP (or IPv6-in-IPv6) to the backend, XDP_TX or
 * redirect towards its next hop; the backend answers the client directly.
 */
#include "qbo_vmlinux.h"
#include "qbo_uapi.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "parse.h"
#include "lb.h"

char __license[] SEC("license") = "Dual BSD/GPL";

#include "lb_maps.h"

/* The flow table (see lb.h): LB_FLOWS / LB_FLOW_WAYS sets. The loader
 * may size it (a power of two) and sets lb_flow_mask to match. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LB_FLOWS / LB_FLOW_WAYS);
	__uint(map_flags, 1U << 10); /* BPF_F_MMAPABLE: flow counts are read through memory */
	__type(key, __u32);
	__type(value, struct lb_flow_set);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_flows2 SEC(".maps");

volatile const __u32 lb_flow_mask = LB_FLOWS / LB_FLOW_WAYS - 1;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LB_VIPF_BITS / 64);
	__uint(map_flags, 1U << 10); /* BPF_F_MMAPABLE: lb/datapath writes words through memory */
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_vipf SEC(".maps");

/* The reverse-NAT table (see lb.h), as many entries as the flow table;
 * the loader sets lb_rnat_mask. Mmapable only for the placement: an
 * mmapable array's values start on a page, so each 320-byte set's header
 * and entries fill one cache line each. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LB_FLOWS / LB_FLOW_WAYS);
	__uint(map_flags, 1U << 10); /* BPF_F_MMAPABLE */
	__type(key, __u32);
	__type(value, struct lb_rnat_set);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_rnat2 SEC(".maps");

volatile const __u32 lb_rnat_mask = LB_FLOWS / LB_FLOW_WAYS - 1;

/* lb_rnat_spill holds the reverse-NAT entries, still in use, that lost
 * their way in lb_rnat2 to a newer flow of the same set (see
 * lb_rnat_insert): a live NAT flow keeps its translation until this LRU
 * hash itself is full, while the common cases (a set with room, or a
 * stale victim) pay no hash-map insert. Sized like the flow table by the
 * loader. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, LB_FLOWS);
	__type(key, struct lb_flow_key);
	__type(value, struct lb_rnat_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_rnat_spill SEC(".maps");

/* lb_rnat_scratch: a reverse-NAT entry on its way to lb_rnat_spill, and
 * the key of its flow. A per-CPU buffer instead of the stack, whose 512
 * bytes lb_xdp and lb_record share. */
struct lb_rnat_scratch {
	struct lb_rnat_ent ent;
	struct lb_flow_key fwd;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lb_rnat_scratch);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_rnat_scratch SEC(".maps");

/* lb_rnat, the reverse-NAT table before lb_rnat2 (an LRU hash), as its
 * layout was. Not pinned by this object: the loader hands in the old
 * pinned map when there is one, for lb_rnat_upgrade to copy, and else
 * shrinks this to a placeholder that nothing reads. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, LB_FLOWS);
	__uint(map_flags, BPF_F_NO_COMMON_LRU);
	__type(key, struct lb_flow_key);
	__type(value, struct lb_rnat_val);
} lb_rnat_old SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, LB_FRAGS);
	__type(key, struct lb_frag_key);
	__type(value, struct lb_flow);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_frags SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LB_ST_SLOTS);
	__type(key, __u32);
	__type(value, struct lb_stat_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_stats2 SEC(".maps");

static __always_inline void count(__u32 st)
{
	struct lb_stat_val *v = bpf_map_lookup_elem(&lb_stats2, &st);
	if (v)
		v->packets++;
}

#if __has_include("prefilter.h")
#include "prefilter.h"
#define LB_HAVE_PREFILTER 1
#endif

/* lb_prefilter is the hook where the firewall's XDP deny-list runs before
 * balancing: it returns non-zero to drop. */
static __always_inline int lb_prefilter(struct xdp_md *ctx)
{
#ifdef LB_HAVE_PREFILTER
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	return qbo_prefilter(data, data_end) == XDP_DROP;
#else
	return 0;
#endif
}

/* ---- hashing (the Go reference is lb.FlowTuple.Hash) ---- */

static __always_inline __u32 rol32(__u32 x, int r) { return (x << r) | (x >> (32 - r)); }

static __always_inline __u32 lb_mix(__u32 h, __u32 k)
{
	k *= 0xcc9e2d51;
	k = rol32(k, 15);
	k *= 0x1b873593;
	h ^= k;
	h = rol32(h, 13);
	return h * 5 + 0xe6546b64;
}

static __always_inline __u32 lb_hash(const struct lb_flow_key *k)
{
	__u32 h = 0x9e3779b9;
	int i;
#pragma unroll
	for (i = 0; i < 4; i++)
		h = lb_mix(h, k->saddr[i]);
#pragma unroll
	for (i = 0; i < 4; i++)
		h = lb_mix(h, k->daddr[i]);
	h = lb_mix(h, (__u32)k->sport | ((__u32)k->dport << 16));
	h = lb_mix(h, k->proto);
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}


/* lb_vip_hash: the VIP filter's hash (Go: lb.VIPHash): two multiplies,
 * the bit is taken from the top. */
static __always_inline __u32 lb_vip_hash(const __be32 *addr, __be16 port, __u8 proto, __u8 family)
{
	__u64 a = (__u64)(addr[0] ^ addr[1] ^ addr[2] ^ addr[3]) * 0x9e3779b97f4a7c15ULL;
	__u64 b = (__u64)((__u32)port | ((__u32)proto << 16) | ((__u32)family << 24)) * 0xc2b2ae3d27d4eb4fULL;
	return (__u32)((a ^ b) >> 32);
}

/* lb_vip_maybe: false when no service has this address, port and
 * protocol; true means "look the service up". */
static __always_inline int lb_vip_maybe(const struct qbo_pkt *pkt)
{
	__u32 b = lb_vip_hash(pkt->daddr, pkt->dport, pkt->proto, pkt->family) >> (32 - LB_VIPF_SHIFT);
	__u32 w = b / 64;
	__u64 *word = bpf_map_lookup_elem(&lb_vipf, &w);
	return word && (*word & (1ULL << (b % 64)));
}

/* ---- the set-associative tables (lb.h): flows and reverse NAT ---- */

/* lb_flow_hash: five multiplies over the key's words (a hit never
 * computes the Maglev hash). The low half chooses the set, the high half
 * is the tag. */
static __always_inline __u64 lb_flow_hash(const struct lb_flow_key *k)
{
	const __u64 *x = (const void *)k;
	__u64 h = x[0] * 0x9e3779b97f4a7c15ULL ^ x[1] * 0xc2b2ae3d27d4eb4fULL ^ x[2] * 0x165667b19e3779f9ULL ^
		  x[3] * 0x27d4eb2f165667c5ULL ^ x[4] * 0x94d049bb133111ebULL;
	return h ^ (h >> 29);
}

static __always_inline __u32 lb_set_tag(__u64 h) { return (__u32)(h >> 32) | 1; }

static __always_inline int lb_key_eq(const struct lb_flow_key *a, const struct lb_flow_key *b)
{
	const __u64 *x = (const void *)a, *y = (const void *)b;
	return ((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3]) | (x[4] ^ y[4])) == 0;
}

/* Both tables' entries start with their key; ways is the set's entry
 * array and stride its element size, so the code below serves both. */
static __always_inline const struct lb_flow_key *lb_set_key(const void *ways, __u32 stride, int i)
{
	return ways + i * stride;
}

/* lb_set_find returns the way holding key k (tag tag), or -1. The caller
 * checks the way's payload against its check word. */
static __always_inline int lb_set_find(const struct lb_set_head *s, const void *ways, __u32 stride,
				       const struct lb_flow_key *k, __u32 tag)
{
	int i;
#pragma unroll
	for (i = 0; i < LB_FLOW_WAYS; i++)
		if (s->tag[i] == tag && lb_key_eq(lb_set_key(ways, stride, i), k))
			return i;
	return -1;
}

/* lb_set_touch makes way i the set's most recently used. The store (and
 * the hit bit: the way's entry was used after an insert into its set,
 * which lb_rnat_insert reads of flows) happens only when the set took an
 * insert since the way's last use, rare for a busy flow. */
static __always_inline void lb_set_touch(struct lb_set_head *s, int i)
{
	__u32 now = s->clock;
	if (s->used[i] != now) {
		s->used[i] = now;
		if (!(s->hit & (1U << i)))
			s->hit |= 1U << i;
	}
}

/* lb_set_victim chooses the way for key k: its own (a rewrite), else an
 * empty one, else the least recently used. It advances the set's clock to
 * *now, and reports whether the way held another key. */
static __always_inline int lb_set_victim(struct lb_set_head *s, const void *ways, __u32 stride,
					 const struct lb_flow_key *k, __u32 tag, __u32 *now, int *other)
{
	__u32 t = s->clock + 1;
	__u32 victim = 0, best = 0;
	int i;
#pragma unroll
	for (i = 0; i < LB_FLOW_WAYS; i++) {
		__u32 score;
		if (!s->tag[i])
			score = 0xfffffffe;
		else if (s->tag[i] == tag && lb_key_eq(lb_set_key(ways, stride, i), k))
			score = 0xffffffff;
		else
			score = t - s->used[i];
		if (score > best) {
			best = score;
			victim = i;
		}
	}
	s->clock = t;
	*now = t;
	*other = best < 0xfffffffe;
	return victim & (LB_FLOW_WAYS - 1);
}

/* Writing way i: lb_set_open empties it (readers miss it from then on),
 * the caller writes the entry, lb_set_close publishes it. */
static __always_inline void lb_set_open(struct lb_set_head *s, int i)
{
	s->tag[i] = 0;
	if (s->hit & (1U << i))
		s->hit &= ~(1U << i);
	asm volatile("" ::: "memory");
}

static __always_inline void lb_set_close(struct lb_set_head *s, int i, __u32 tag, __u32 check, __u32 now)
{
	s->used[i] = now;
	s->check[i] = check;
	asm volatile("" ::: "memory");
	s->tag[i] = tag;
}

/* -- lb_flows2 -- */

static __always_inline __u32 lb_flow_check(__u32 tag, __u32 backend, __u32 service)
{
	return tag ^ (backend * 0x9e3779b1) ^ (service * 0x85ebca77);
}

static __always_inline struct lb_flow_set *lb_flow_set(__u64 h)
{
	__u32 i = (__u32)h & lb_flow_mask;
	return bpf_map_lookup_elem(&lb_flows2, &i);
}

/* lb_flow_find returns the entry of flow k (hash h) in set s, or NULL;
 * a hit refreshes the way's recency. An entry whose check does not match
 * its content is being written by another CPU: a miss. */
static __always_inline struct lb_flow_ent *lb_flow_find(struct lb_flow_set *s, const struct lb_flow_key *k, __u64 h)
{
	__u32 tag = lb_set_tag(h);
	int i = lb_set_find(&s->head, s->way, sizeof(s->way[0]), k, tag);
	if (i < 0)
		return 0;
	struct lb_flow_ent *e = &s->way[i];
	if (s->head.check[i] != lb_flow_check(tag, e->backend, e->service))
		return 0;
	lb_set_touch(&s->head, i);
	return e;
}

/* lb_flow_insert records flow k in set s. */
static __always_inline void lb_flow_insert(struct lb_flow_set *s, const struct lb_flow_key *k, __u64 h,
					   __u32 backend, __u32 service)
{
	__u32 tag = lb_set_tag(h), now;
	int other;
	int i = lb_set_victim(&s->head, s->way, sizeof(s->way[0]), k, tag, &now, &other);
	struct lb_flow_ent *e = &s->way[i];
	lb_set_open(&s->head, i);
	e->key = *k;
	e->backend = backend;
	e->service = service;
	lb_set_close(&s->head, i, tag, lb_flow_check(tag, backend, service), now);
}

/* -- lb_rnat2 -- */

static __always_inline __u32 lb_rnat_check(__u32 tag, const struct lb_rnat_val *v)
{
	__u32 a = v->vip[0] ^ rol32(v->vip[1], 8) ^ rol32(v->vip[2], 16) ^ rol32(v->vip[3], 24);
	return tag ^ (a * 0x9e3779b1) ^ ((__u32)v->vport * 0x85ebca77);
}

static __always_inline struct lb_rnat_set *lb_rnat_set(__u64 h)
{
	__u32 i = (__u32)h & lb_rnat_mask;
	return bpf_map_lookup_elem(&lb_rnat2, &i);
}

/* lb_rnat_find copies the VIP of reply k (hash h) into *v; non-zero on a
 * hit. The copy is made before the check is compared, so that a write
 * racing with the copy shows as a miss. */
static __always_inline int lb_rnat_find(struct lb_rnat_set *s, const struct lb_flow_key *k, __u64 h,
					struct lb_rnat_val *v)
{
	__u32 tag = lb_set_tag(h);
	int i = lb_set_find(&s->head, s->way, sizeof(s->way[0]), k, tag);
	if (i < 0)
		return 0;
	*v = s->way[i].val;
	if (s->head.check[i] != lb_rnat_check(tag, v))
		return 0;
	lb_set_touch(&s->head, i);
	return 1;
}

/* lb_rnat_fwd_live reports whether the flow of reverse-NAT entry c->ent
 * is still in the flow table and has had a packet after an insert into
 * its set (so it is not merely a flow seen once). */
static __always_inline int lb_rnat_fwd_live(struct lb_rnat_scratch *c)
{
	struct lb_flow_key *f = &c->fwd;
	__builtin_memset(f, 0, sizeof(*f));
	__builtin_memcpy(f->saddr, c->ent.key.daddr, 16);
	__builtin_memcpy(f->daddr, c->ent.val.vip, 16);
	f->sport = c->ent.key.dport;
	f->dport = c->ent.val.vport;
	f->proto = c->ent.key.proto;
	f->family = c->ent.key.family;
	__u64 h = lb_flow_hash(f);
	struct lb_flow_set *s = lb_flow_set(h);
	if (!s)
		return 0;
	__u32 tag = lb_set_tag(h);
	int i = lb_set_find(&s->head, s->way, sizeof(s->way[0]), f, tag);
	if (i < 0)
		return 0;
	return (s->head.hit >> i) & 1;
}

/* lb_rnat_insert records reply k -> v in set s; non-zero when it took the
 * way of another reply. A set-associative table alone would drop a live
 * NAT flow's translation whenever a fifth flow lands in its set, long
 * before the table is full; so a victim that is still in use moves to
 * lb_rnat_spill first, and the set is marked so that lb_revnat looks there
 * on a miss. In use: touched since the set's last LB_FLOW_WAYS inserts,
 * or its flow is in the flow table and has had packets after an insert
 * into its set (a client that keeps sending while the replies pause).
 * Otherwise the victim has been outlived by a whole set's worth of newer
 * entries, which stands for about the table's capacity of inserts (a set
 * sees 1/sets of them): what an LRU of the table's size would have evicted
 * by now. It is dropped (counted as stale), so that flow churn beyond the
 * table's size does not pay a hash-map insert per new flow. */
static __always_inline int lb_rnat_insert(struct lb_rnat_set *s, const struct lb_flow_key *k, __u64 h,
					  const struct lb_rnat_val *v)
{
	__u32 tag = lb_set_tag(h), now;
	int other;
	int i = lb_set_victim(&s->head, s->way, sizeof(s->way[0]), k, tag, &now, &other);
	struct lb_rnat_ent *e = &s->way[i];
	__u32 zero = 0;
	struct lb_rnat_scratch *c = other ? bpf_map_lookup_elem(&lb_rnat_scratch, &zero) : 0;
	if (c) {
		c->ent = *e;
		/* Intact (not half written by another CPU), and in use. */
		if (s->head.check[i] == lb_rnat_check(s->head.tag[i], &c->ent.val)) {
			if (now - s->head.used[i] < LB_FLOW_WAYS || lb_rnat_fwd_live(c)) {
				bpf_map_update_elem(&lb_rnat_spill, &c->ent.key, &c->ent.val, BPF_ANY);
				if (!s->head.spilled)
					s->head.spilled = 1;
				count(LB_ST_RNAT_SPILL);
			} else {
				count(LB_ST_RNAT_STALE);
			}
		}
	}
	lb_set_open(&s->head, i);
	e->key = *k;
	e->val = *v;
	lb_set_close(&s->head, i, tag, lb_rnat_check(tag, v), now);
	return other;
}

/* ---- checksums (RFC 1624 incremental update; byte-order agnostic as
 * long as old, new and the checksum are loaded the same way) ---- */

static __always_inline __u16 csum_fold(__u32 s)
{
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)s;
}

static __always_inline void csum_replace4(__u16 *sum, __u32 from, __u32 to)
{
	__u32 s = (__u16)~*sum;
	s += (~from & 0xffff) + (~from >> 16);
	s += (to & 0xffff) + (to >> 16);
	*sum = ~csum_fold(s);
}

static __always_inline void csum_replace2(__u16 *sum, __u16 from, __u16 to)
{
	__u32 s = (__u16)~*sum;
	s += (__u16)~from;
	s += to;
	*sum = ~csum_fold(s);
}

/* ---- packet rewriting ---- */

/* lb_l4_csum returns the L4 checksum field of a TCP/UDP header, or NULL. A
 * later fragment has none; a UDP checksum of zero means "none" (IPv4). */
static __always_inline __u16 *lb_l4_csum(void *data, void *data_end, struct qbo_pkt *pkt)
{
	if (pkt->flags & QBO_PKT_FRAG_LATER)
		return 0;
	__u32 off = pkt->l4_off;
	if (pkt->proto == IPPROTO_TCP) {
		__u8 *tcp = qbo_ptr(data, data_end, off, 20);
		return tcp ? (__u16 *)(tcp + 16) : 0;
	}
	if (pkt->proto == IPPROTO_UDP) {
		__u8 *udp = qbo_ptr(data, data_end, off, 8);
		if (!udp)
			return 0;
		__u16 *c = (__u16 *)(udp + 6);
		if (*c == 0 && pkt->family == 4)
			return 0;
		return c;
	}
	return 0;
}

static __always_inline void lb_fix_udp0(struct qbo_pkt *pkt, __u16 *c)
{
	if (pkt->proto == IPPROTO_UDP && *c == 0)
		*c = 0xffff;
}

/* csum_delta4 / csum_delta2: the one's complement difference of replacing
 * from with to, to be added to a checksum with csum_apply. */
static __always_inline __u32 csum_delta4(__u32 from, __u32 to)
{
	return (~from & 0xffff) + (~from >> 16) + (to & 0xffff) + (to >> 16);
}

static __always_inline __u32 csum_delta2(__u16 from, __u16 to) { return (__u16)~from + (__u32)to; }

static __always_inline void csum_apply(__u16 *sum, __u32 delta)
{
	*sum = ~csum_fold((__u16)~*sum + delta);
}

/* lb_dnat rewrites the destination address (and port, when the packet has
 * ports) to the backend's; the L4 checksum gets one update for all of it. */
static __always_inline int lb_dnat(void *data, void *data_end, struct qbo_pkt *pkt,
				   const struct lb_backend *be)
{
	__u16 *l4c = lb_l4_csum(data, data_end, pkt);
	__u32 d4 = 0;
	if (pkt->family == 4) {
		struct qbo_iphdr *ip = qbo_ptr(data, data_end, pkt->l3_off, sizeof(*ip));
		if (!ip)
			return -1;
		__u32 old;
		__builtin_memcpy(&old, ip->daddr, 4);
		d4 = csum_delta4(old, be->addr[0]);
		csum_apply(&ip->check, d4);
		__builtin_memcpy(ip->daddr, &be->addr[0], 4);
	} else {
		struct qbo_ipv6hdr *ip6 = qbo_ptr(data, data_end, pkt->l3_off, sizeof(*ip6));
		if (!ip6)
			return -1;
		int i;
#pragma unroll
		for (i = 0; i < 4; i++) {
			__u32 old;
			__builtin_memcpy(&old, ip6->daddr + 4 * i, 4);
			d4 += csum_delta4(old, be->addr[i]);
		}
		__builtin_memcpy(ip6->daddr, be->addr, 16);
	}
	if (pkt->flags & QBO_PKT_PORTS) {
		struct qbo_l4ports *p = qbo_ptr(data, data_end, pkt->l4_off, sizeof(*p));
		if (!p)
			return -1;
		d4 += csum_delta2(p->dest, be->port);
		p->dest = be->port;
	}
	if (l4c) {
		csum_apply(l4c, d4);
		lb_fix_udp0(pkt, l4c);
	}
	return 0;
}

/* lb_dsr encapsulates the IP packet in IPIP / IPv6-in-IPv6 to the backend
 * and sends it towards the next hop. */
static __always_inline int lb_dsr(struct xdp_md *ctx, struct qbo_pkt *pkt,
				  const struct lb_backend *be)
{
	if (pkt->l3_off != QBO_ETH_HLEN) {
		count(LB_ST_DROP_DSR_VLAN);
		return XDP_DROP;
	}
	struct bpf_fib_lookup fib = {};
	int hlen;
	if (pkt->family == 4) {
		fib.family = AF_INET;
		fib.ipv4_dst = be->addr[0];
		fib.tot_len = pkt->ip_len + QBO_IPV4_HLEN;
		hlen = QBO_IPV4_HLEN;
	} else {
		fib.family = AF_INET6;
		__builtin_memcpy(fib.ipv6_dst, be->addr, 16);
		fib.tot_len = pkt->ip_len + QBO_IPV6_HLEN;
		hlen = QBO_IPV6_HLEN;
	}
	fib.ifindex = ctx->ingress_ifindex;
	long rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), BPF_FIB_LOOKUP_SRC);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS) {
		count(LB_ST_DROP_DSR_FIB);
		return XDP_DROP;
	}
	if (bpf_xdp_adjust_head(ctx, -hlen)) {
		count(LB_ST_DROP_DSR_HEADROOM);
		return XDP_DROP;
	}
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u8 *eth = qbo_ptr(data, data_end, 0, QBO_ETH_HLEN);
	if (!eth) {
		count(LB_ST_DROP_DSR_HEADROOM);
		return XDP_DROP;
	}
	__builtin_memcpy(eth, fib.dmac, 6);
	__builtin_memcpy(eth + 6, fib.smac, 6);
	if (pkt->family == 4) {
		struct qbo_iphdr *o = qbo_ptr(data, data_end, QBO_ETH_HLEN, sizeof(*o));
		if (!o) {
			count(LB_ST_DROP_DSR_HEADROOM);
			return XDP_DROP;
		}
		eth[12] = 0x08;
		eth[13] = 0x00;
		o->ver_ihl = 0x45;
		o->tos = 0;
		o->tot_len = bpf_htons(pkt->ip_len + QBO_IPV4_HLEN);
		o->id = 0;
		o->frag_off = 0;
		o->ttl = 64;
		o->protocol = QBO_IPPROTO_IPIP;
		o->check = 0;
		__builtin_memcpy(o->saddr, &fib.ipv4_src, 4);
		__builtin_memcpy(o->daddr, &be->addr[0], 4);
		__u16 *w = (__u16 *)o;
		__u32 s = 0;
		int i;
#pragma unroll
		for (i = 0; i < 10; i++)
			s += w[i];
		o->check = ~csum_fold(s);
	} else {
		struct qbo_ipv6hdr *o = qbo_ptr(data, data_end, QBO_ETH_HLEN, sizeof(*o));
		if (!o) {
			count(LB_ST_DROP_DSR_HEADROOM);
			return XDP_DROP;
		}
		eth[12] = 0x86;
		eth[13] = 0xdd;
		o->ver_tc_flow = bpf_htonl(0x60000000);
		o->payload_len = bpf_htons(pkt->ip_len);
		o->nexthdr = 41; /* IPv6-in-IPv6 */
		o->hop_limit = 64;
		__builtin_memcpy(o->saddr, fib.ipv6_src, 16);
		__builtin_memcpy(o->daddr, be->addr, 16);
	}
	count(LB_ST_DSR);
	if (fib.ifindex == ctx->ingress_ifindex)
		return XDP_TX;
	return bpf_redirect(fib.ifindex, 0);
}

static __always_inline int lb_forward(struct xdp_md *ctx, struct qbo_pkt *pkt,
				      const struct lb_backend *be)
{
	if (be->flags & LB_BE_DSR)
		return lb_dsr(ctx, pkt, be);
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	if (lb_dnat(data, data_end, pkt, be)) {
		count(LB_ST_DROP_TRUNCATED);
		return XDP_DROP;
	}
	count(LB_ST_NAT);
	return XDP_PASS;
}

static __always_inline void lb_frag_key(struct lb_frag_key *fk, const struct qbo_pkt *pkt)
{
	__builtin_memset(fk, 0, sizeof(*fk));
	__builtin_memcpy(fk->saddr, pkt->saddr, 16);
	__builtin_memcpy(fk->daddr, pkt->daddr, 16);
	fk->id = pkt->frag_id;
	fk->proto = pkt->proto;
	fk->family = pkt->family;
}

/* lb_icmp_nat translates an ICMP(v6) error about a NATed flow for its
 * backend. The error quotes the packet the client got (VIP:vport ->
 * client); the backend sent it as backend:port -> client. So the outer
 * destination becomes the backend, and the quote's source address and
 * port become the backend's, so that the backend's stack finds the socket
 * (path MTU discovery depends on it). Checksums kept valid: the outer IPv4
 * header, the quoted IPv4 header, and the ICMP checksum, which covers the
 * quote and, for ICMPv6, the pseudo-header with the outer destination. The
 * quoted L4 checksum is not updated (receivers do not check it; a quote
 * may not even hold it). */
static __always_inline int lb_icmp_nat(void *data, void *data_end, struct qbo_pkt *pkt,
				       const struct lb_backend *be)
{
	__u32 off = pkt->l4_off;
	__u8 *icmp = qbo_ptr(data, data_end, off, 8);
	if (!icmp)
		return -1;
	__u16 *ic = (__u16 *)(icmp + 2);
	__u32 in = off + 8;
	__u32 old;
	int i;
	if (pkt->family == 4) {
		struct qbo_iphdr *ip = qbo_ptr(data, data_end, pkt->l3_off, sizeof(*ip));
		if (!ip)
			return -1;
		__builtin_memcpy(&old, ip->daddr, 4);
		csum_replace4(&ip->check, old, be->addr[0]);
		__builtin_memcpy(ip->daddr, &be->addr[0], 4);
		struct qbo_iphdr *q = qbo_ptr(data, data_end, in, sizeof(*q));
		if (!q)
			return -1;
		__u32 qhl = (q->ver_ihl & 0xf) * 4;
		if (qhl < QBO_IPV4_HLEN)
			return -1;
		struct qbo_l4ports *qp = qbo_ptr(data, data_end, in + qhl, sizeof(*qp));
		if (!qp)
			return -1;
		__builtin_memcpy(&old, q->saddr, 4);
		__u16 qc = q->check;
		csum_replace4(&q->check, old, be->addr[0]);
		__builtin_memcpy(q->saddr, &be->addr[0], 4);
		csum_replace4(ic, old, be->addr[0]);
		csum_replace2(ic, qc, q->check);
		csum_replace2(ic, qp->source, be->port);
		qp->source = be->port;
		return 0;
	}
	struct qbo_ipv6hdr *ip6 = qbo_ptr(data, data_end, pkt->l3_off, sizeof(*ip6));
	if (!ip6)
		return -1;
	struct qbo_ipv6hdr *q6 = qbo_ptr(data, data_end, in, sizeof(*q6));
	if (!q6)
		return -1;
	struct qbo_l4ports *qp = qbo_ptr(data, data_end, in + QBO_IPV6_HLEN, sizeof(*qp));
	if (!qp)
		return -1;
#pragma unroll
	for (i = 0; i < 4; i++) {
		__builtin_memcpy(&old, ip6->daddr + 4 * i, 4);
		csum_replace4(ic, old, be->addr[i]);
		__builtin_memcpy(&old, q6->saddr + 4 * i, 4);
		csum_replace4(ic, old, be->addr[i]);
	}
	__builtin_memcpy(ip6->daddr, be->addr, 16);
	__builtin_memcpy(q6->saddr, be->addr, 16);
	csum_replace2(ic, qp->source, be->port);
	qp->source = be->port;
	return 0;
}

/* lb_icmp_err forwards an ICMP error about a balanced flow to its backend.
 * The error quotes the reply (VIP -> client), so the flow is the quote
 * reversed: DSR encapsulates it as is, NAT translates it (lb_icmp_nat). */
static __always_inline int lb_icmp_err(struct xdp_md *ctx, struct qbo_pkt *pkt)
{
	struct lb_flow_key k = {};
	__builtin_memcpy(k.saddr, pkt->inner.daddr, 16);
	__builtin_memcpy(k.daddr, pkt->inner.saddr, 16);
	k.sport = pkt->inner.dport;
	k.dport = pkt->inner.sport;
	k.proto = pkt->inner.proto;
	k.family = pkt->family;
	__u64 h = lb_flow_hash(&k);
	struct lb_flow_set *s = lb_flow_set(h);
	struct lb_flow_ent *f = s ? lb_flow_find(s, &k, h) : 0;
	struct lb_backend *be = f ? lb_backend_get(f->backend) : 0;
	if (!be) {
		count(LB_ST_PASS_ICMP_ERR_MISS);
		return XDP_PASS;
	}
	count(LB_ST_ICMP_ERR);
	if (be->flags & LB_BE_DSR)
		return lb_dsr(ctx, pkt, be);
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	if (lb_icmp_nat(data, data_end, pkt, be)) {
		count(LB_ST_DROP_TRUNCATED);
		return XDP_DROP;
	}
	return XDP_PASS;
}

static __always_inline int lb_pick(__u32 h, const struct lb_svc_val *svc, __u32 *bid)
{
	if (svc->count == 0 || svc->table_size == 0)
		return -1;
	__u32 slot = svc->offset + h % svc->table_size;
	__u32 *b = bpf_map_lookup_elem(&lb_maglev, &slot);
	if (!b || *b == 0)
		return -1;
	*bid = *b;
	return 0;
}

/* lb_record records new flow k (hash h) on backend bid of service sid: in
 * the flow table, and for a NAT backend the reply's reverse-NAT entry.
 *
 * A global function: the verifier checks it once, not again for every
 * parser outcome that leads to a new flow (inlined, lb_xdp took 95% of
 * the verifier's budget of 1M instructions). A new flow pays one call. */
__noinline int lb_record(const struct lb_flow_key *k, __u64 h, __u32 bid, __u32 sid)
{
	if (!k)
		return 0;
	struct lb_flow_set *set = lb_flow_set(h);
	if (set)
		lb_flow_insert(set, k, h, bid, sid);
	else
		count(LB_ST_DROP_FLOW_FULL);
	struct lb_backend *be = lb_backend_get(bid);
	if (!be || (be->flags & LB_BE_DSR))
		return 0;
	struct lb_flow_key rk = {};
	__builtin_memcpy(rk.saddr, be->addr, 16);
	__builtin_memcpy(rk.daddr, k->saddr, 16);
	rk.sport = be->port;
	rk.dport = k->sport;
	rk.proto = k->proto;
	rk.family = k->family;
	struct lb_rnat_val rn = {.vport = k->dport};
	__builtin_memcpy(rn.vip, k->daddr, 16);
	__u64 rh = lb_flow_hash(&rk);
	struct lb_rnat_set *rs = lb_rnat_set(rh);
	if (rs)
		lb_rnat_insert(rs, &rk, rh, &rn);
	return 0;
}

/* lb_new_flow balances a flow that the flow table does not hold: service
 * lookup, Maglev pick, record. Returns the backend or NULL with *verdict
 * set. */
static __always_inline struct lb_backend *lb_new_flow(struct qbo_pkt *pkt, struct lb_flow_key *k, __u64 h,
						      __u32 *bid, __u32 *sid, int *verdict)
{
	struct lb_svc_key sk = {};
	__builtin_memcpy(sk.addr, pkt->daddr, 16);
	sk.port = pkt->dport;
	sk.proto = pkt->proto;
	sk.family = pkt->family;
	struct lb_svc_val *svc = bpf_map_lookup_elem(&lb_svc, &sk);
	if (!svc) {
		count(LB_ST_PASS_NO_SERVICE);
		*verdict = XDP_PASS;
		return 0;
	}
	struct lb_backend *be = 0;
	if (lb_pick(lb_hash(k), svc, bid) == 0)
		be = lb_backend_get(*bid);
	if (!be) {
		count(LB_ST_DROP_NO_BACKEND);
		*verdict = XDP_DROP;
		return 0;
	}
	*sid = svc->id;
	/* A copy: were k's address to leave this inlined code, the
	 * compiler would keep k in memory on every path, the established
	 * flow's included (10-15 ns more a packet in BenchmarkXDPRatio). */
	struct lb_flow_key fk = *k;
	lb_record(&fk, h, *bid, svc->id);
	count(LB_ST_NEW_FLOW);
	return be;
}

/* lb_balance is lb_xdp after parsing. It is inlined twice: once for the
 * frames qbo_parse_plain4 takes (constant offsets and flags, so that copy
 * is compiled without the branches and variable offsets of the others)
 * and once for everything else. */
static __always_inline int lb_balance(struct xdp_md *ctx, struct qbo_pkt *pkt)
{
	if (pkt->flags & QBO_PKT_ICMP_ERR)
		return lb_icmp_err(ctx, pkt);

	struct lb_backend *be;
	__u32 bid, sid;
	if (pkt->flags & QBO_PKT_FRAG_LATER) {
		struct lb_frag_key fk;
		lb_frag_key(&fk, pkt);
		struct lb_flow *f = bpf_map_lookup_elem(&lb_frags, &fk);
		be = f ? lb_backend_get(f->backend) : 0;
		if (!be) {
			count(LB_ST_PASS_FRAG_MISS);
			return XDP_PASS;
		}
		count(LB_ST_FRAG_LATER);
		return lb_forward(ctx, pkt, be);
	}
	if (!(pkt->flags & QBO_PKT_PORTS) || !lb_vip_maybe(pkt)) {
		count(LB_ST_PASS_NO_SERVICE);
		return XDP_PASS;
	}

	struct lb_flow_key k = {};
	__builtin_memcpy(k.saddr, pkt->saddr, 16);
	__builtin_memcpy(k.daddr, pkt->daddr, 16);
	k.sport = pkt->sport;
	k.dport = pkt->dport;
	k.proto = pkt->proto;
	k.family = pkt->family;
	__u64 h = lb_flow_hash(&k);

	/* An established flow needs no service lookup: its entry names the
	 * service and backend. A backend that is gone (not merely draining)
	 * or now belongs to another service loses its flows: pick again. */
	be = 0;
	struct lb_flow_set *set = lb_flow_set(h);
	struct lb_flow_ent *f = set ? lb_flow_find(set, &k, h) : 0;
	if (f) {
		bid = f->backend;
		sid = f->service;
		be = lb_backend_get(bid);
		if (be && be->service != sid)
			be = 0;
		if (be)
			count(LB_ST_EST_FLOW);
	}
	if (!be) {
		int verdict = XDP_PASS;
		be = lb_new_flow(pkt, &k, h, &bid, &sid, &verdict);
		if (!be)
			return verdict;
	}
	if (pkt->flags & QBO_PKT_FRAG) {
		struct lb_frag_key fk;
		lb_frag_key(&fk, pkt);
		struct lb_flow fv = {.backend = bid, .service = sid};
		bpf_map_update_elem(&lb_frags, &fk, &fv, BPF_ANY);
		count(LB_ST_FRAG_FIRST);
	}
	return lb_forward(ctx, pkt, be);
}

SEC("xdp")
int lb_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct qbo_pkt pkt;

	if (lb_prefilter(ctx)) {
		count(LB_ST_DROP_PREFILTER);
		return XDP_DROP;
	}
	if (qbo_parse_plain4(data, data_end, &pkt))
		return lb_balance(ctx, &pkt);
	switch (qbo_parse(data, data_end, &pkt)) {
	case QBO_PARSE_OK:
		break;
	case QBO_PARSE_NOT_IP:
		count(LB_ST_PASS_NOT_IP);
		return XDP_PASS;
	case QBO_PARSE_BAD_VERSION:
		count(LB_ST_DROP_BAD_VERSION);
		return XDP_DROP;
	case QBO_PARSE_BAD_IHL:
		count(LB_ST_DROP_BAD_IHL);
		return XDP_DROP;
	case QBO_PARSE_EXT_LIMIT:
		count(LB_ST_PASS_EXT_LIMIT);
		return XDP_PASS;
	default:
		count(LB_ST_DROP_TRUNCATED);
		return XDP_DROP;
	}
	if (pkt.flags & QBO_PKT_IPOPTS)
		count(LB_ST_IPOPTS);
	if (pkt.flags & QBO_PKT_EXTHDRS)
		count(LB_ST_EXTHDRS);
	return lb_balance(ctx, &pkt);
}

/* lb_revnat runs on the uplink's egress: a reply of a NATed flow leaves
 * with the VIP as its source. Everything else is left alone. */
SEC("tc")
int lb_revnat(struct __sk_buff *skb)
{
	/* Make the headers we may rewrite linear. */
	bpf_skb_pull_data(skb, skb->len < 128 ? skb->len : 128);
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct qbo_pkt pkt;
	if (qbo_parse(data, data_end, &pkt) != QBO_PARSE_OK)
		return TC_ACT_OK;
	if (!(pkt.flags & QBO_PKT_PORTS) || (pkt.flags & QBO_PKT_FRAG))
		return TC_ACT_OK;
	struct lb_flow_key k = {};
	__builtin_memcpy(k.saddr, pkt.saddr, 16);
	__builtin_memcpy(k.daddr, pkt.daddr, 16);
	k.sport = pkt.sport;
	k.dport = pkt.dport;
	k.proto = pkt.proto;
	k.family = pkt.family;
	__u64 h = lb_flow_hash(&k);
	struct lb_rnat_set *s = lb_rnat_set(h);
	struct lb_rnat_val r;
	if (!s)
		return TC_ACT_OK;
	if (!lb_rnat_find(s, &k, h, &r)) {
		/* Only a set that has spilled can have this reply elsewhere. */
		if (!s->head.spilled)
			return TC_ACT_OK;
		struct lb_rnat_val *sp = bpf_map_lookup_elem(&lb_rnat_spill, &k);
		if (!sp)
			return TC_ACT_OK;
		r = *sp;
	}
	__u32 l4 = pkt.l4_off;
	__u32 csum_off = l4 + (pkt.proto == IPPROTO_TCP ? 16 : 6);
	__u64 l4flags = pkt.proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
	if (pkt.family == 4) {
		__u32 l3 = pkt.l3_off;
		bpf_l4_csum_replace(skb, csum_off, k.saddr[0], r.vip[0], l4flags | BPF_F_PSEUDO_HDR | 4);
		bpf_l3_csum_replace(skb, l3 + 10, k.saddr[0], r.vip[0], 4);
		bpf_skb_store_bytes(skb, l3 + 12, &r.vip[0], 4, 0);
	} else {
		__u32 l3 = pkt.l3_off;
		int i;
#pragma unroll
		for (i = 0; i < 4; i++)
			bpf_l4_csum_replace(skb, csum_off, k.saddr[i], r.vip[i], l4flags | BPF_F_PSEUDO_HDR | 4);
		bpf_skb_store_bytes(skb, l3 + 8, r.vip, 16, 0);
	}
	bpf_l4_csum_replace(skb, csum_off, k.sport, r.vport, l4flags | 2);
	bpf_skb_store_bytes(skb, l4, &r.vport, 2, 0);
	__u32 st = LB_ST_REVNAT;
	struct lb_stat_val *v = bpf_map_lookup_elem(&lb_stats2, &st);
	if (v)
		v->packets++;
	return TC_ACT_OK;
}

/* lb_rnat_upgrade copies lb_rnat_old (the pinned lb_rnat of an older qbo,
 * handed in by the loader) into lb_rnat2 with the datapath's own insert,
 * so that NAT flows keep their reverse translation across an upgrade. A
 * reply already in lb_rnat2 keeps its entry (lb_xdp wrote it, so it is
 * the newer); the loader may run it again to pick up what the old lb_xdp
 * added meanwhile. Run through BPF_PROG_TEST_RUN; ctx holds the counts. */
static long lb_rnat_copy(void *map, const struct lb_flow_key *k, struct lb_rnat_val *v,
			 struct lb_rnat_upgrade_stats *st)
{
	struct lb_flow_key key = *k;
	struct lb_rnat_val val = *v, cur;
	__u64 h = lb_flow_hash(&key);
	struct lb_rnat_set *s = lb_rnat_set(h);
	if (!s)
		return 1;
	if (lb_rnat_find(s, &key, h, &cur)) {
		st->present++;
		return 0;
	}
	st->copied++;
	if (lb_rnat_insert(s, &key, h, &val))
		st->replaced++;
	return 0;
}

SEC("syscall")
int lb_rnat_upgrade(struct lb_rnat_upgrade_stats *ctx)
{
	struct lb_rnat_upgrade_stats st = {};
	bpf_for_each_map_elem(&lb_rnat_old, lb_rnat_copy, &st, 0);
	ctx->copied = st.copied;
	ctx->present = st.present;
	ctx->replaced = st.replaced;
	return 0;
}

/* lb_decap is for DSR backend hosts whose kernel has no ipip/ip6tnl device:
 * attached at TC ingress of the backend's interface, it strips the outer
 * IPIP (IPv4-in-IPv4) or IPv6-in-IPv6 header that lb_dsr added, so that the
 * stack sees the client's packet to the VIP (configured on lo) and answers
 * the client directly. Anything else passes untouched. */
SEC("tc")
int lb_decap(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	__u8 *eth = qbo_ptr(data, data_end, 0, QBO_ETH_HLEN);
	if (!eth)
		return TC_ACT_OK;
	__u16 proto = ((__u16)eth[12] << 8) | eth[13];
	if (proto == ETH_P_IP) {
		struct qbo_iphdr *ip = qbo_ptr(data, data_end, QBO_ETH_HLEN, sizeof(*ip));
		if (!ip || ip->ver_ihl != 0x45 || ip->protocol != QBO_IPPROTO_IPIP)
			return TC_ACT_OK;
		if (bpf_skb_adjust_room(skb, -QBO_IPV4_HLEN, 1 /* BPF_ADJ_ROOM_MAC */, 0))
			return TC_ACT_SHOT;
		return TC_ACT_OK;
	}
	if (proto == ETH_P_IPV6) {
		struct qbo_ipv6hdr *ip6 = qbo_ptr(data, data_end, QBO_ETH_HLEN, sizeof(*ip6));
		if (!ip6 || ip6->nexthdr != 41)
			return TC_ACT_OK;
		if (bpf_skb_adjust_room(skb, -QBO_IPV6_HLEN, 1 /* BPF_ADJ_ROOM_MAC */, 0))
			return TC_ACT_SHOT;
		return TC_ACT_OK;
	}
	return TC_ACT_OK;
}
