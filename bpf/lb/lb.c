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
 * the backend; lb_revnat finds the reply's flow in the same set of the flow
 * table (the set is chosen by the client's address and port) and rewrites
 * its source back to the VIP.
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
} lb_flows3 SEC(".maps");

volatile const __u32 lb_flow_mask = LB_FLOWS / LB_FLOW_WAYS - 1;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LB_VIPF_BITS / 64);
	__uint(map_flags, 1U << 10); /* BPF_F_MMAPABLE: lb/datapath writes words through memory */
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_vipf SEC(".maps");

/* lb_rnat_spill holds the replies' translations of NAT flows, still in
 * use, that lost their way in lb_flows3 to a newer flow of the same set
 * (see lb_flow_evict): a live NAT flow keeps its translation until this
 * LRU hash itself is full, while the common cases (a set with room, or a
 * stale victim) pay no hash-map insert. Key: the reply (backend ->
 * client). Sized like the flow table by the loader. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, LB_FLOWS);
	__type(key, struct lb_flow_key);
	__type(value, struct lb_rnat_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_rnat_spill SEC(".maps");

/* lb_rnat_scratch: an evicted flow's key (fwd) and its reply's entry on
 * the way to lb_rnat_spill (ent). A per-CPU buffer instead of the stack,
 * whose 512 bytes lb_xdp and lb_record share. */
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

/* The tables of an older qbo that lb_upgrade copies into lb_flows3, as
 * their layouts were: lb_flows2 (flow sets chosen by the whole key),
 * lb_rnat2 (reply sets) and lb_rnat (an LRU hash of replies). Not pinned by
 * this object: the loader hands in the old pinned maps that exist, and
 * else shrinks these to placeholders that nothing reads. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LB_FLOWS / LB_FLOW_WAYS);
	__uint(map_flags, 1U << 10); /* BPF_F_MMAPABLE, as lb_flows2 was created */
	__type(key, __u32);
	__type(value, struct lb_flow_set);
} lb_flows_old SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LB_FLOWS / LB_FLOW_WAYS);
	__uint(map_flags, 1U << 10); /* BPF_F_MMAPABLE, as lb_rnat2 was created */
	__type(key, __u32);
	__type(value, struct lb_rnat_set);
} lb_rnat2_old SEC(".maps");

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

/* ---- the flow table (lb.h) ---- */

/* lb_client_hash: three multiplies over the client's side of a flow (its
 * address as two words a0 a1, and w: port | protocol << 32 | family << 40),
 * which a flow and its reply share (a hit never computes the Maglev hash).
 * The low half chooses the set, the high half is the tag. */
static __always_inline __u64 lb_client_hash(__u64 a0, __u64 a1, __u64 w)
{
	__u64 h = a0 * 0x9e3779b97f4a7c15ULL ^ a1 * 0xc2b2ae3d27d4eb4fULL ^ w * 0x165667b19e3779f9ULL;
	return h ^ (h >> 29);
}

/* The key's fifth word: sport | dport << 16 | proto << 32 | family << 40. */
#define LB_KEY_SPORT_SIDE 0xffffffff0000ffffULL

/* lb_flow_hash hashes a flow as the client sent it (client -> VIP). */
static __always_inline __u64 lb_flow_hash(const struct lb_flow_key *k)
{
	const __u64 *x = (const void *)k;
	return lb_client_hash(x[0], x[1], x[4] & LB_KEY_SPORT_SIDE);
}

/* lb_reply_side is a reply's (backend -> client) client side in the
 * layout of a flow key's fifth word: the client's port moved to sport. */
static __always_inline __u64 lb_reply_side(const struct lb_flow_key *r)
{
	const __u64 *y = (const void *)r;
	return ((y[4] >> 16) & 0xffff) | (y[4] & ~0xffffffffULL);
}

/* lb_reply_hash hashes a reply: the same as its flow's hash. */
static __always_inline __u64 lb_reply_hash(const struct lb_flow_key *r)
{
	const __u64 *y = (const void *)r;
	return lb_client_hash(y[2], y[3], lb_reply_side(r));
}

static __always_inline __u32 lb_set_tag(__u64 h) { return (__u32)(h >> 32) | 1; }

static __always_inline int lb_key_eq(const struct lb_flow_key *a, const struct lb_flow_key *b)
{
	const __u64 *x = (const void *)a, *y = (const void *)b;
	return ((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3]) | (x[4] ^ y[4])) == 0;
}

/* lb_set_touch makes way i the set's most recently used. The store (and
 * the hit bit: the way's entry was used after an insert into its set,
 * which lb_flow_evict reads) happens only when the set took an insert
 * since the way's last use, rare for a busy flow. */
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
static __always_inline int lb_set_victim(struct lb_flow_set *s, const struct lb_flow_key *k, __u32 tag,
					 __u32 *now, int *other)
{
	__u32 t = s->head.clock + 1;
	__u32 victim = 0, best = 0;
	int i;
#pragma unroll
	for (i = 0; i < LB_FLOW_WAYS; i++) {
		__u32 score;
		if (!s->head.tag[i])
			score = 0xfffffffe;
		else if (s->head.tag[i] == tag && lb_key_eq(&s->way[i].key, k))
			score = 0xffffffff;
		else
			score = t - s->head.used[i];
		if (score > best) {
			best = score;
			victim = i;
		}
	}
	s->head.clock = t;
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

static __always_inline __u32 lb_flow_check(__u32 tag, __u32 backend, __u32 service)
{
	return tag ^ (backend * 0x9e3779b1) ^ (service * 0x85ebca77);
}

static __always_inline struct lb_flow_set *lb_flow_set(__u64 h)
{
	__u32 i = (__u32)h & lb_flow_mask;
	return bpf_map_lookup_elem(&lb_flows3, &i);
}

/* lb_flow_find returns the entry of flow k (hash h) in set s, or NULL;
 * a hit refreshes the way's recency. An entry whose check does not match
 * its content is being written by another CPU: a miss. */
static __always_inline struct lb_flow_ent *lb_flow_find(struct lb_flow_set *s, const struct lb_flow_key *k, __u64 h)
{
	__u32 tag = lb_set_tag(h);
	int i;
#pragma unroll
	for (i = 0; i < LB_FLOW_WAYS; i++) {
		if (s->head.tag[i] != tag || !lb_key_eq(&s->way[i].key, k))
			continue;
		struct lb_flow_ent *e = &s->way[i];
		if (s->head.check[i] != lb_flow_check(tag, e->backend, e->service))
			return 0;
		lb_set_touch(&s->head, i);
		return e;
	}
	return 0;
}

/* lb_reply_find finds the NAT flow of reply r (hash h) in set s: the
 * entry whose client is r's destination and whose backend is r's source.
 * It copies the VIP the reply must leave from into *v; non-zero on a hit,
 * which refreshes the flow's recency (a flow whose backend keeps sending
 * while its client is quiet stays in use). The copy is made before the
 * check is compared, so that a write racing with it shows as a miss
 * (check covers the backend and service; a racing write of another flow of
 * the same client port, the only one whose key could pass the compare,
 * would have to reuse that port towards another VIP within those
 * nanoseconds). */
static __always_inline int lb_reply_find(struct lb_flow_set *s, const struct lb_flow_key *r, __u64 h,
					 struct lb_rnat_val *v)
{
	const __u64 *y = (const void *)r;
	__u64 side = lb_reply_side(r);
	__u32 tag = lb_set_tag(h);
	int i;
#pragma unroll
	for (i = 0; i < LB_FLOW_WAYS; i++) {
		if (s->head.tag[i] != tag)
			continue;
		struct lb_flow_ent *e = &s->way[i];
		const __u64 *x = (const void *)&e->key;
		if (((x[0] ^ y[2]) | (x[1] ^ y[3]) | ((x[4] & LB_KEY_SPORT_SIDE) ^ side)) != 0)
			continue;
		__u32 bid = e->backend, sid = e->service;
		struct lb_backend *be = lb_backend_get(bid);
		if (!be || (be->flags & LB_BE_DSR) || be->port != r->sport ||
		    ((be->addr[0] ^ r->saddr[0]) | (be->addr[1] ^ r->saddr[1]) | (be->addr[2] ^ r->saddr[2]) |
		     (be->addr[3] ^ r->saddr[3])))
			continue;
		__builtin_memcpy(v->vip, e->key.daddr, 16);
		v->vport = e->key.dport;
		v->pad = 0;
		asm volatile("" ::: "memory");
		if (s->head.check[i] != lb_flow_check(tag, bid, sid))
			return 0;
		lb_set_touch(&s->head, i);
		return 1;
	}
	return 0;
}

/* lb_flow_evict is called for way i of set s before a new flow takes it
 * (now: the set's clock). A NAT flow still in use moves its reply's
 * translation to lb_rnat_spill, and the set is marked so that lb_revnat
 * looks there on a miss. In use: touched since the set's last
 * LB_FLOW_WAYS inserts, or used (by a packet either way) after an insert
 * into its set, so not merely a flow seen once. Otherwise the flow has
 * been outlived by a whole set's worth of newer ones, which stands for
 * about the table's capacity of inserts (a set sees 1/sets of them): what
 * an LRU of the table's size would have evicted by now. Its translation is
 * dropped (counted as stale), so that flow churn beyond the table's size
 * does not pay a hash-map insert per new flow. A DSR flow has no reply to
 * translate; its entry is simply replaced. */
static __always_inline void lb_flow_evict(struct lb_flow_set *s, int i, __u32 now)
{
	struct lb_flow_ent *e = &s->way[i];
	__u32 bid = e->backend, sid = e->service;
	struct lb_backend *be = lb_backend_get(bid);
	if (!be || (be->flags & LB_BE_DSR))
		return;
	if (now - s->head.used[i] >= LB_FLOW_WAYS && !(s->head.hit & (1U << i))) {
		count(LB_ST_RNAT_STALE);
		return;
	}
	__u32 zero = 0;
	struct lb_rnat_scratch *c = bpf_map_lookup_elem(&lb_rnat_scratch, &zero);
	if (!c)
		return;
	c->fwd = e->key;
	asm volatile("" ::: "memory");
	/* Intact: not half written by another CPU. */
	if (s->head.check[i] != lb_flow_check(s->head.tag[i], bid, sid))
		return;
	struct lb_rnat_ent *r = &c->ent;
	__builtin_memcpy(r->key.saddr, be->addr, 16);
	__builtin_memcpy(r->key.daddr, c->fwd.saddr, 16);
	r->key.sport = be->port;
	r->key.dport = c->fwd.sport;
	r->key.proto = c->fwd.proto;
	r->key.family = c->fwd.family;
	r->key.pad = 0;
	__builtin_memcpy(r->val.vip, c->fwd.daddr, 16);
	r->val.vport = c->fwd.dport;
	r->val.pad = 0;
	bpf_map_update_elem(&lb_rnat_spill, &r->key, &r->val, BPF_ANY);
	if (!s->head.spilled)
		s->head.spilled = 1;
	count(LB_ST_RNAT_SPILL);
}

/* lb_flow_insert records flow k (hash h) in set s; non-zero when it took
 * the way of another flow. */
static __always_inline int lb_flow_insert(struct lb_flow_set *s, const struct lb_flow_key *k, __u64 h,
					  __u32 backend, __u32 service)
{
	__u32 tag = lb_set_tag(h), now;
	int other;
	int i = lb_set_victim(s, k, tag, &now, &other);
	if (other)
		lb_flow_evict(s, i, now);
	struct lb_flow_ent *e = &s->way[i];
	lb_set_open(&s->head, i);
	e->key = *k;
	e->backend = backend;
	e->service = service;
	lb_set_close(&s->head, i, tag, lb_flow_check(tag, backend, service), now);
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

/* lb_record records new flow k (hash h) on backend bid of service sid in
 * the flow table; for a NAT backend the entry is also its reply's
 * translation.
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

/* lb_revnat_pkt is lb_revnat after parsing: a reply of a NATed flow
 * leaves with the VIP as its source. Like lb_balance it is inlined once
 * for qbo_parse_plain4's frames (plain: family 4, flags QBO_PKT_PORTS,
 * constant offsets) and once for the others. */
static __always_inline int lb_revnat_pkt(struct __sk_buff *skb, struct qbo_pkt *pkt, const int plain)
{
	__u16 flags = plain ? QBO_PKT_PORTS : pkt->flags;
	__u8 family = plain ? 4 : pkt->family;
	if (!(flags & QBO_PKT_PORTS) || (flags & QBO_PKT_FRAG))
		return TC_ACT_OK;
	struct lb_flow_key k = {};
	__builtin_memcpy(k.saddr, pkt->saddr, 16);
	__builtin_memcpy(k.daddr, pkt->daddr, 16);
	k.sport = pkt->sport;
	k.dport = pkt->dport;
	k.proto = pkt->proto;
	k.family = family;
	__u64 h = lb_reply_hash(&k);
	struct lb_flow_set *s = lb_flow_set(h);
	struct lb_rnat_val r;
	if (!s)
		return TC_ACT_OK;
	if (!lb_reply_find(s, &k, h, &r)) {
		/* Only a set that has spilled can have this reply elsewhere. */
		if (!s->head.spilled)
			return TC_ACT_OK;
		struct lb_rnat_val *sp = bpf_map_lookup_elem(&lb_rnat_spill, &k);
		if (!sp)
			return TC_ACT_OK;
		r = *sp;
	}
	/* The helpers below make what they write writable (and linear)
	 * themselves. */
	__u32 l4 = pkt->l4_off;
	__u32 csum_off = l4 + (pkt->proto == IPPROTO_TCP ? 16 : 6);
	__u64 l4flags = pkt->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
	if (family == 4) {
		__u32 l3 = pkt->l3_off;
		bpf_l4_csum_replace(skb, csum_off, k.saddr[0], r.vip[0], l4flags | BPF_F_PSEUDO_HDR | 4);
		bpf_l3_csum_replace(skb, l3 + 10, k.saddr[0], r.vip[0], 4);
		bpf_skb_store_bytes(skb, l3 + 12, &r.vip[0], 4, 0);
	} else {
		__u32 l3 = pkt->l3_off;
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

/* lb_revnat runs on the uplink's egress, so every packet leaving it pays
 * for it: a reply of a NATed flow leaves with the VIP as its source,
 * everything else is left alone. Headers are read where they are; only a
 * packet whose headers reach past the skb's linear part is pulled (a
 * helper call the common packet does not pay) and parsed again. */
SEC("tc")
int lb_revnat(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct qbo_pkt pkt;
	if (qbo_parse_plain4(data, data_end, &pkt))
		return lb_revnat_pkt(skb, &pkt, 1);
	int res = qbo_parse(data, data_end, &pkt);
	if (res == QBO_PARSE_TRUNCATED && skb->len > (__u32)(data_end - data)) {
		bpf_skb_pull_data(skb, skb->len < 128 ? skb->len : 128);
		count(LB_ST_REVNAT_PULL);
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
		res = qbo_parse(data, data_end, &pkt);
	}
	if (res != QBO_PARSE_OK)
		return TC_ACT_OK;
	return lb_revnat_pkt(skb, &pkt, 0);
}

/* lb_upgrade copies the flow and reverse-NAT tables of an older qbo
 * (lb_flows_old, lb_rnat2_old, lb_rnat_old: handed in by the loader) into
 * lb_flows3 with the datapath's own insert, so that flows keep their
 * backend and NAT flows their reply's translation across an upgrade:
 * every intact flow of lb_flows2, then every reply of lb_rnat2 and lb_rnat
 * whose flow lb_flows3 does not hold (its flow entry was evicted earlier),
 * which goes to lb_rnat_spill. An entry lb_flows3 already holds keeps it
 * (lb_xdp wrote it, so it is the newer); the loader runs it again after
 * attaching to pick up what the old lb_xdp added meanwhile. The spilled
 * replies of lb_rnat2's sets are marked in their lb_flows3 sets. Run
 * through BPF_PROG_TEST_RUN; ctx holds the counts.
 *
 * lb_adopt_flow and lb_adopt_reply are global functions, checked once
 * each: inlined four times into the callbacks below (one per way of an
 * old set), they made the verifier explore more states than its budget
 * of 1M instructions allows on kernel 6.18.44, since it checks a callback
 * as a loop that runs any number of times. */
__noinline int lb_adopt_flow(const struct lb_flow_ent *e, struct lb_upgrade_stats *st)
{
	if (!e || !st)
		return 0;
	struct lb_flow_key k = e->key;
	__u64 h = lb_flow_hash(&k);
	struct lb_flow_set *s = lb_flow_set(h);
	if (!s)
		return 0;
	if (lb_flow_find(s, &k, h)) {
		st->present++;
		return 0;
	}
	st->flows++;
	if (lb_flow_insert(s, &k, h, e->backend, e->service))
		st->replaced++;
	return 0;
}

static long lb_adopt_flow_set(void *map, const __u32 *i, struct lb_flow_set *old, struct lb_upgrade_stats *st)
{
	int w;
#pragma unroll
	for (w = 0; w < LB_FLOW_WAYS; w++) {
		__u32 tag = old->head.tag[w];
		struct lb_flow_ent e = old->way[w];
		if (tag && old->head.check[w] == lb_flow_check(tag, e.backend, e.service))
			lb_adopt_flow(&e, st);
	}
	return 0;
}

static __always_inline void lb_mark_spilled(const struct lb_flow_key *r)
{
	struct lb_flow_set *s = lb_flow_set(lb_reply_hash(r));
	if (s && !s->head.spilled)
		s->head.spilled = 1;
}

__noinline int lb_adopt_reply(const struct lb_flow_key *r, const struct lb_rnat_val *v, struct lb_upgrade_stats *st)
{
	if (!r || !v || !st)
		return 0;
	struct lb_rnat_val cur;
	__u64 h = lb_reply_hash(r);
	struct lb_flow_set *s = lb_flow_set(h);
	if (!s)
		return 0;
	if (lb_reply_find(s, r, h, &cur) || bpf_map_lookup_elem(&lb_rnat_spill, r)) {
		st->present++;
		return 0;
	}
	st->replies++;
	bpf_map_update_elem(&lb_rnat_spill, r, v, BPF_ANY);
	if (!s->head.spilled)
		s->head.spilled = 1;
	return 0;
}

/* lb_rnat_check: lb_rnat2's check of an entry's tag and VIP. */
static __always_inline __u32 lb_rnat_check(__u32 tag, const struct lb_rnat_val *v)
{
	__u32 a = v->vip[0] ^ rol32(v->vip[1], 8) ^ rol32(v->vip[2], 16) ^ rol32(v->vip[3], 24);
	return tag ^ (a * 0x9e3779b1) ^ ((__u32)v->vport * 0x85ebca77);
}

static long lb_adopt_reply_set(void *map, const __u32 *i, struct lb_rnat_set *old, struct lb_upgrade_stats *st)
{
	int w;
#pragma unroll
	for (w = 0; w < LB_FLOW_WAYS; w++) {
		__u32 tag = old->head.tag[w];
		struct lb_rnat_ent e = old->way[w];
		if (tag && old->head.check[w] == lb_rnat_check(tag, &e.val))
			lb_adopt_reply(&e.key, &e.val, st);
	}
	return 0;
}

static long lb_adopt_reply_elem(void *map, const struct lb_flow_key *rk, const struct lb_rnat_val *v,
				struct lb_upgrade_stats *st)
{
	/* Copies: a global function's arguments are writable memory to the
	 * verifier, and a map key is not. */
	struct lb_flow_key r = *rk;
	struct lb_rnat_val val = *v;
	lb_adopt_reply(&r, &val, st);
	return 0;
}

static long lb_mark_spill(void *map, const struct lb_flow_key *r, void *v, void *ctx)
{
	lb_mark_spilled(r);
	return 0;
}

SEC("syscall")
int lb_upgrade(struct lb_upgrade_stats *ctx)
{
	struct lb_upgrade_stats st = {};
	bpf_for_each_map_elem(&lb_flows_old, lb_adopt_flow_set, &st, 0);
	bpf_for_each_map_elem(&lb_rnat2_old, lb_adopt_reply_set, &st, 0);
	bpf_for_each_map_elem(&lb_rnat_old, lb_adopt_reply_elem, &st, 0);
	bpf_for_each_map_elem(&lb_rnat_spill, lb_mark_spill, 0, 0);
	ctx->flows = st.flows;
	ctx->replies = st.replies;
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
