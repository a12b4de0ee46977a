//go:build ignore

/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * qbo stateful firewall: TCX ingress and egress programs, plus the XDP
 * deny prefilter for interfaces whose XDP entry point no other object owns.
 *
 * Classification (see fw/doc.go for the scheme and its limits): the active
 * generation's tables give one bitmap of rules per field (scope =
 * interface+hook, source prefix, destination prefix, protocol, destination
 * port interval); the verdict is the rule of the lowest bit set in their
 * AND, found through 64-bit summary words, or the scope's default policy.
 * Every table is keyed by generation, and a packet reads the active
 * generation once, so it is judged by one whole rule set.
 *
 * State: an allowed new flow is recorded in fw_ct (per interface); its
 * later packets and its replies pass without classification, as do ICMP
 * errors quoting it. First fragments record their verdict in fw_frags so
 * later fragments (which carry no ports) follow it.
 */
#include "qbo_vmlinux.h"
#include "qbo_uapi.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "events.h"
#include "parse.h"
#include "prefilter.h"

char __license[] SEC("license") = "Dual BSD/GPL";

#define FW_MAX_RULES 16384
#define FW_WORDS (FW_MAX_RULES / 64)
#define FW_SUMMARY (FW_WORDS / 64)
#define FW_MAX_PREFIXES 16385
#define FW_MAX_IFACES 256
#define FW_PORTS 65536
#define FW_MAX_INTERVALS (2 * FW_MAX_RULES + 1)
#define FW_CT_SIZE 262144
#define FW_FRAG_SIZE 16384
#define FW_LOG_PER_SEC 100 /* deny events per CPU per second */
#define FW_SLOT_DEFAULT 0xffffffff

/* TCX verdicts: allow hands the packet to the next program (the load
 * balancer's reverse NAT may follow the firewall). */
#define FW_TCX_NEXT (-1)
#define FW_TCX_DROP 2

enum fw_action {
	FW_ACT_DENY = 0,
	FW_ACT_ALLOW = 1,
};

enum fw_hook {
	FW_HOOK_INGRESS = 0,
	FW_HOOK_EGRESS = 1,
};

/* Counters in fw_stats; each names the verdict it goes with. ABI: append. */
enum fw_stat {
	FW_ST_NOT_IP = 0,       /* pass */
	FW_ST_TRUNCATED = 1,    /* drop */
	FW_ST_BAD_VERSION = 2,  /* drop */
	FW_ST_BAD_IHL = 3,      /* drop */
	FW_ST_EXT_LIMIT = 4,    /* drop: too many IPv6 extension headers to judge */
	FW_ST_UNATTACHED = 5,   /* pass: no scope for this interface and hook */
	FW_ST_CT_ESTABLISHED = 6, /* pass */
	FW_ST_CT_REPLY = 7,     /* pass */
	FW_ST_ICMP_RELATED = 8, /* pass */
	FW_ST_RULE_ALLOW = 9,   /* pass */
	FW_ST_RULE_DENY = 10,   /* drop */
	FW_ST_DEFAULT_ALLOW = 11, /* pass */
	FW_ST_DEFAULT_DENY = 12,  /* drop */
	FW_ST_FRAG_ALLOW = 13,  /* pass: later fragment of an allowed first */
	FW_ST_FRAG_DENY = 14,   /* drop: later fragment of a denied first */
	FW_ST_FRAG_ORPHAN = 15, /* drop: later fragment whose first was not seen */
	FW_ST_REEVAL_DENY = 16, /* drop: established flow denied by a newer set */
	FW_ST_LOG_RATELIMITED = 17, /* deny event not sent: over the rate */
	FW_ST_MAX = 18,
};

/* A bitmap of rules in priority order, with summary[i] bit j set when
 * w[i*64+j] is non-zero. */
struct fw_bits {
	__u64 summary[FW_SUMMARY];
	__u64 w[FW_WORDS];
};

struct fw_scope_key {
	__u32 gen;
	__u32 ifindex;
	__u32 hook;
};

struct fw_scope_val {
	__u32 deflt; /* enum fw_action */
	__u32 pad;
	struct fw_bits bits;
};

/* LPM keys: the generation is the first 32 bits of the matched data, so
 * prefixlen is 32 + the address prefix length. */
struct fw_lpm4_key {
	__u32 prefixlen;
	__u32 gen;
	__u8 addr[4];
};

struct fw_lpm6_key {
	__u32 prefixlen;
	__u32 gen;
	__u8 addr[16];
};

struct fw_gen_key {
	__u32 gen;
	__u32 id; /* protocol number (0 = any other), or port interval */
};

struct fw_rule {
	__u32 slot;  /* index into fw_counters, stable across rule sets */
	__u8 action; /* enum fw_action */
	__u8 log;
	__u16 pad;
};

struct fw_counter {
	__u64 packets;
	__u64 bytes;
};

struct fw_config {
	__u32 active_gen; /* 0 or 1 */
	__u32 reevaluate; /* re-classify flows created under an older generation */
	__u32 generation; /* counts rule-set replacements; low bit = active_gen */
	__u32 pad;
};

struct fw_ct_key {
	__u32 ifindex;
	__u8 family;
	__u8 proto;
	__be16 sport;
	__be16 dport;
	__u16 pad;
	__be32 saddr[4];
	__be32 daddr[4];
};

struct fw_ct_val {
	__u64 created_ns;
	__u32 generation; /* fw_config.generation that allowed the flow */
	__u32 hook;       /* where the flow's first packet was seen */
};

struct fw_frag_key {
	__u32 ifindex;
	__u8 family;
	__u8 proto;
	__u16 pad;
	__be32 id;
	__be32 saddr[4];
	__be32 daddr[4];
};

struct fw_frag_val {
	__u32 action;
	__u32 slot;
};

struct fw_rate {
	__u64 window_ns;
	__u64 count;
};

/* The record of a logged deny (kind QBO_EV_FW_DENY, version 1). */
struct fw_deny_event {
	struct qbo_event_hdr hdr;
	__u32 ifindex;
	__u32 slot; /* fw_rules slot of the deciding rule */
	__u8 family;
	__u8 proto;
	__u8 hook;
	__u8 pad;
	__be16 sport;
	__be16 dport;
	__be32 saddr[4];
	__be32 daddr[4];
	__u32 len;
	__u32 pad2;
};

struct {
	__uint(type, QBO_MAP_TYPE_LPM_TRIE);
	__type(key, struct fw_lpm4_key);
	__type(value, struct fw_bits);
	__uint(max_entries, 2 * FW_MAX_PREFIXES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fw_src4 SEC(".maps"), fw_dst4 SEC(".maps");

struct {
	__uint(type, QBO_MAP_TYPE_LPM_TRIE);
	__type(key, struct fw_lpm6_key);
	__type(value, struct fw_bits);
	__uint(max_entries, 2 * FW_MAX_PREFIXES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fw_src6 SEC(".maps"), fw_dst6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct fw_gen_key);
	__type(value, struct fw_bits);
	__uint(max_entries, 16);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fw_proto SEC(".maps");

/* Port -> interval id, for generation g at g*65536 + port. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 2 * FW_PORTS);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fw_port_idx SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct fw_gen_key);
	__type(value, struct fw_bits);
	__uint(max_entries, 2 * FW_MAX_INTERVALS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fw_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct fw_scope_key);
	__type(value, struct fw_scope_val);
	__uint(max_entries, 2 * 2 * FW_MAX_IFACES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fw_scopes SEC(".maps");

/* Bit i of generation g at g*FW_MAX_RULES + i. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct fw_rule);
	__uint(max_entries, 2 * FW_MAX_RULES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fw_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct fw_counter);
	__uint(max_entries, FW_MAX_RULES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fw_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct fw_config);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fw_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct fw_ct_key);
	__type(value, struct fw_ct_val);
	__uint(max_entries, FW_CT_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fw_ct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct fw_frag_key);
	__type(value, struct fw_frag_val);
	__uint(max_entries, FW_FRAG_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fw_frags SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, FW_ST_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fw_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct qbo_kind_stat);
	__uint(max_entries, QBO_EV_KIND_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fw_kind_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct fw_rate);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fw_ratelimit SEC(".maps");

static __always_inline int fw_count(__u32 stat, int verdict)
{
	__u64 *c = bpf_map_lookup_elem(&fw_stats, &stat);
	if (c)
		__sync_fetch_and_add(c, 1);
	return verdict;
}

/* Index of the lowest set bit of x (x != 0), branch-free (de Bruijn) so
 * that the verifier walks one path per loop iteration, not 64. */
static const __u8 fw_debruijn[64] = {
	0, 1, 48, 2, 57, 49, 28, 3, 61, 58, 50, 42, 38, 29, 17, 4,
	62, 55, 59, 36, 53, 51, 43, 22, 45, 39, 33, 30, 24, 18, 12, 5,
	63, 47, 56, 27, 60, 41, 37, 16, 54, 35, 52, 21, 44, 32, 23, 11,
	46, 26, 40, 15, 34, 20, 31, 10, 25, 14, 19, 9, 13, 8, 7, 6,
};

static __always_inline __u32 fw_ctz(__u64 x)
{
	return fw_debruijn[(((x & -x) * 0x03f79d71b4cb0a89ULL) >> 58) & 63];
}

/* The header fields classification looks at. */
struct fw_tuple {
	__u8 family;
	__u8 proto;
	__u16 dport; /* host order; 0 when the packet has no ports */
	__be32 saddr[4];
	__be32 daddr[4];
};

enum fw_class {
	FW_CLASS_UNATTACHED = 0,
	FW_CLASS_DEFAULT = 1,
	FW_CLASS_RULE = 2,
};

/* fw_first_bit ANDs five bitmaps and returns the lowest set bit, or -1;
 * sum is the AND of their summaries (the candidate words). */
static __always_inline int fw_first_bit(__u64 *sum, struct fw_bits *a, struct fw_bits *b,
					struct fw_bits *c, struct fw_bits *d, struct fw_bits *e)
{
	for (int i = 0; i < FW_SUMMARY; i++) {
		__u64 s = sum[i];
		for (int j = 0; j < 64 && s; j++) {
			__u32 w = (i * 64 + fw_ctz(s)) & (FW_WORDS - 1);
			__u64 m = a->w[w] & b->w[w] & c->w[w] & d->w[w] & e->w[w];
			if (m)
				return (int)(w * 64 + fw_ctz(m));
			s &= s - 1;
		}
	}
	return -1;
}

/* fw_and_summary folds b's summary into acc and reports whether any
 * candidate word is left. */
static __always_inline int fw_and_summary(__u64 *acc, struct fw_bits *b)
{
	__u64 any = 0;
	for (int i = 0; i < FW_SUMMARY; i++) {
		acc[i] &= b->summary[i];
		any |= acc[i];
	}
	return any != 0;
}

/* fw_classify finds the rule (or default) deciding t at (ifindex, hook)
 * in generation gen. Fields are looked up cheapest first, and as soon as
 * the AND of the summaries is empty no rule can match: the default
 * decides without the remaining lookups. */
static __always_inline int fw_classify(__u32 gen, __u32 ifindex, __u32 hook, struct fw_tuple *t,
				       struct fw_rule *out)
{
	struct fw_scope_key sk = {.gen = gen, .ifindex = ifindex, .hook = hook};
	struct fw_scope_val *sc = bpf_map_lookup_elem(&fw_scopes, &sk);
	if (!sc)
		return FW_CLASS_UNATTACHED;
	out->action = sc->deflt;
	out->slot = FW_SLOT_DEFAULT;
	out->log = 0;
	__u64 acc[FW_SUMMARY];
	for (int i = 0; i < FW_SUMMARY; i++)
		acc[i] = sc->bits.summary[i];

	struct fw_gen_key pk = {.gen = gen, .id = t->proto};
	struct fw_bits *proto = bpf_map_lookup_elem(&fw_proto, &pk);
	if (!proto) {
		pk.id = 0;
		proto = bpf_map_lookup_elem(&fw_proto, &pk);
	}
	if (!proto || !fw_and_summary(acc, proto))
		return FW_CLASS_DEFAULT;

	__u32 pi = gen * FW_PORTS + t->dport;
	__u32 *iv = bpf_map_lookup_elem(&fw_port_idx, &pi);
	if (!iv)
		return FW_CLASS_DEFAULT;
	struct fw_gen_key ik = {.gen = gen, .id = *iv};
	struct fw_bits *port = bpf_map_lookup_elem(&fw_ports, &ik);
	if (!port || !fw_and_summary(acc, port))
		return FW_CLASS_DEFAULT;

	struct fw_bits *src, *dst;
	if (t->family == 4) {
		struct fw_lpm4_key k = {.prefixlen = 64, .gen = gen};
		__builtin_memcpy(k.addr, t->saddr, 4);
		src = bpf_map_lookup_elem(&fw_src4, &k);
		if (!src || !fw_and_summary(acc, src))
			return FW_CLASS_DEFAULT;
		__builtin_memcpy(k.addr, t->daddr, 4);
		dst = bpf_map_lookup_elem(&fw_dst4, &k);
	} else {
		struct fw_lpm6_key k = {.prefixlen = 160, .gen = gen};
		__builtin_memcpy(k.addr, t->saddr, 16);
		src = bpf_map_lookup_elem(&fw_src6, &k);
		if (!src || !fw_and_summary(acc, src))
			return FW_CLASS_DEFAULT;
		__builtin_memcpy(k.addr, t->daddr, 16);
		dst = bpf_map_lookup_elem(&fw_dst6, &k);
	}
	if (!dst || !fw_and_summary(acc, dst))
		return FW_CLASS_DEFAULT;

	int bit = fw_first_bit(acc, &sc->bits, src, dst, proto, port);
	if (bit < 0)
		return FW_CLASS_DEFAULT;
	__u32 ri = gen * FW_MAX_RULES + (__u32)bit;
	struct fw_rule *r = bpf_map_lookup_elem(&fw_rules, &ri);
	if (!r)
		return FW_CLASS_DEFAULT;
	*out = *r;
	return FW_CLASS_RULE;
}

static __always_inline void fw_count_rule(__u32 slot, __u32 len)
{
	if (slot == FW_SLOT_DEFAULT)
		return;
	struct fw_counter *c = bpf_map_lookup_elem(&fw_counters, &slot);
	if (c) {
		__sync_fetch_and_add(&c->packets, 1);
		__sync_fetch_and_add(&c->bytes, len);
	}
}

static __always_inline void fw_log_deny(__u32 ifindex, __u32 len, __u32 hook, struct qbo_pkt *pkt,
					__u32 slot)
{
	__u32 zero = 0;
	struct fw_rate *rt = bpf_map_lookup_elem(&fw_ratelimit, &zero);
	if (!rt)
		return;
	__u64 now = bpf_ktime_get_ns();
	if (now - rt->window_ns > 1000000000ULL) {
		rt->window_ns = now;
		rt->count = 0;
	}
	if (rt->count >= FW_LOG_PER_SEC) {
		fw_count(FW_ST_LOG_RATELIMITED, 0);
		return;
	}
	rt->count++;
	struct fw_deny_event *e = qbo_event_reserve(&fw_kind_stats, QBO_EV_FW_DENY, QBO_EVENT_V1,
						    sizeof(*e));
	if (!e)
		return;
	e->ifindex = ifindex;
	e->slot = slot;
	e->family = pkt->family;
	e->proto = pkt->proto;
	e->hook = hook;
	e->pad = 0;
	e->sport = pkt->sport;
	e->dport = pkt->dport;
	__builtin_memcpy(e->saddr, pkt->saddr, 16);
	__builtin_memcpy(e->daddr, pkt->daddr, 16);
	e->len = len;
	e->pad2 = 0;
	bpf_ringbuf_submit(e, 0);
}

static __always_inline void fw_frag_key(struct fw_frag_key *k, __u32 ifindex, struct qbo_pkt *pkt)
{
	__builtin_memset(k, 0, sizeof(*k));
	k->ifindex = ifindex;
	k->family = pkt->family;
	k->proto = pkt->proto;
	k->id = pkt->frag_id;
	__builtin_memcpy(k->saddr, pkt->saddr, 16);
	__builtin_memcpy(k->daddr, pkt->daddr, 16);
}

/* fw_judge decides one packet seen at (ifindex, hook); len is counted in
 * the rule's byte counter. It returns FW_TCX_NEXT or FW_TCX_DROP. */
static __always_inline int fw_judge(void *data, void *data_end, __u32 ifindex, __u32 len, __u32 hook)
{
	struct qbo_pkt pkt;

	switch (qbo_parse(data, data_end, &pkt)) {
	case QBO_PARSE_OK:
		break;
	case QBO_PARSE_NOT_IP:
		return fw_count(FW_ST_NOT_IP, FW_TCX_NEXT);
	case QBO_PARSE_BAD_VERSION:
		return fw_count(FW_ST_BAD_VERSION, FW_TCX_DROP);
	case QBO_PARSE_BAD_IHL:
		return fw_count(FW_ST_BAD_IHL, FW_TCX_DROP);
	case QBO_PARSE_EXT_LIMIT:
		return fw_count(FW_ST_EXT_LIMIT, FW_TCX_DROP);
	default:
		return fw_count(FW_ST_TRUNCATED, FW_TCX_DROP);
	}

	__u32 zero = 0;
	struct fw_config *cfg = bpf_map_lookup_elem(&fw_cfg, &zero);
	if (!cfg)
		return fw_count(FW_ST_UNATTACHED, FW_TCX_NEXT);
	/* Read once: everything below uses this generation's tables. */
	__u32 generation = cfg->generation;
	__u32 gen = generation & 1;
	__u32 reeval = cfg->reevaluate;

	if (pkt.flags & QBO_PKT_FRAG_LATER) {
		struct fw_frag_key fk;
		fw_frag_key(&fk, ifindex, &pkt);
		struct fw_frag_val *fv = bpf_map_lookup_elem(&fw_frags, &fk);
		if (!fv)
			return fw_count(FW_ST_FRAG_ORPHAN, FW_TCX_DROP);
		fw_count_rule(fv->slot, len);
		if (fv->action == FW_ACT_ALLOW)
			return fw_count(FW_ST_FRAG_ALLOW, FW_TCX_NEXT);
		return fw_count(FW_ST_FRAG_DENY, FW_TCX_DROP);
	}

	struct fw_ct_key ck = {.ifindex = ifindex, .family = pkt.family, .proto = pkt.proto};
	struct fw_ct_val *cv;
	struct fw_tuple t = {.family = pkt.family, .proto = pkt.proto};
	struct fw_rule r;
	__u32 class_hook = hook;
	int stat_ok = FW_ST_CT_ESTABLISHED;

	if (pkt.flags & QBO_PKT_ICMP_ERR) {
		/* The quoted packet is a flow's packet as its sender sent it. */
		ck.proto = pkt.inner.proto;
		__builtin_memcpy(ck.saddr, pkt.inner.saddr, 16);
		__builtin_memcpy(ck.daddr, pkt.inner.daddr, 16);
		ck.sport = pkt.inner.sport;
		ck.dport = pkt.inner.dport;
		if (bpf_map_lookup_elem(&fw_ct, &ck))
			return fw_count(FW_ST_ICMP_RELATED, FW_TCX_NEXT);
		__builtin_memcpy(ck.saddr, pkt.inner.daddr, 16);
		__builtin_memcpy(ck.daddr, pkt.inner.saddr, 16);
		ck.sport = pkt.inner.dport;
		ck.dport = pkt.inner.sport;
		if (bpf_map_lookup_elem(&fw_ct, &ck))
			return fw_count(FW_ST_ICMP_RELATED, FW_TCX_NEXT);
		ck.proto = pkt.proto;
	}

	/* Same direction as the flow's first packet? */
	__builtin_memcpy(ck.saddr, pkt.saddr, 16);
	__builtin_memcpy(ck.daddr, pkt.daddr, 16);
	ck.sport = pkt.sport;
	ck.dport = pkt.dport;
	cv = bpf_map_lookup_elem(&fw_ct, &ck);
	if (cv) {
		__builtin_memcpy(t.saddr, pkt.saddr, 16);
		__builtin_memcpy(t.daddr, pkt.daddr, 16);
		t.dport = bpf_ntohs(pkt.dport);
	} else {
		/* A reply? */
		__builtin_memcpy(ck.saddr, pkt.daddr, 16);
		__builtin_memcpy(ck.daddr, pkt.saddr, 16);
		ck.sport = pkt.dport;
		ck.dport = pkt.sport;
		cv = bpf_map_lookup_elem(&fw_ct, &ck);
		stat_ok = FW_ST_CT_REPLY;
		/* Re-evaluation judges the flow by its first direction. */
		__builtin_memcpy(t.saddr, pkt.daddr, 16);
		__builtin_memcpy(t.daddr, pkt.saddr, 16);
		t.dport = bpf_ntohs(pkt.sport);
	}
	if (cv) {
		if (!reeval || cv->generation == generation)
			return fw_count(stat_ok, FW_TCX_NEXT);
		class_hook = cv->hook;
		int c = fw_classify(gen, ifindex, class_hook, &t, &r);
		if (c == FW_CLASS_UNATTACHED || r.action == FW_ACT_ALLOW) {
			cv->generation = generation;
			return fw_count(stat_ok, FW_TCX_NEXT);
		}
		bpf_map_delete_elem(&fw_ct, &ck);
		fw_count_rule(r.slot, len);
		return fw_count(FW_ST_REEVAL_DENY, FW_TCX_DROP);
	}

	/* A new flow: classify it. */
	__builtin_memcpy(t.saddr, pkt.saddr, 16);
	__builtin_memcpy(t.daddr, pkt.daddr, 16);
	t.dport = (pkt.flags & QBO_PKT_PORTS) ? bpf_ntohs(pkt.dport) : 0;
	int class = fw_classify(gen, ifindex, hook, &t, &r);
	if (class == FW_CLASS_UNATTACHED)
		return fw_count(FW_ST_UNATTACHED, FW_TCX_NEXT);
	fw_count_rule(r.slot, len);

	if (pkt.flags & QBO_PKT_FRAG) {
		struct fw_frag_key fk;
		struct fw_frag_val fv = {.action = r.action, .slot = r.slot};
		fw_frag_key(&fk, ifindex, &pkt);
		bpf_map_update_elem(&fw_frags, &fk, &fv, BPF_ANY);
	}
	if (r.action == FW_ACT_ALLOW) {
		struct fw_ct_val nv = {.created_ns = bpf_ktime_get_ns(), .generation = generation,
				       .hook = hook};
		__builtin_memcpy(ck.saddr, pkt.saddr, 16);
		__builtin_memcpy(ck.daddr, pkt.daddr, 16);
		ck.sport = pkt.sport;
		ck.dport = pkt.dport;
		bpf_map_update_elem(&fw_ct, &ck, &nv, BPF_ANY);
		return fw_count(class == FW_CLASS_RULE ? FW_ST_RULE_ALLOW : FW_ST_DEFAULT_ALLOW,
				FW_TCX_NEXT);
	}
	if (r.log)
		fw_log_deny(ifindex, len, hook, &pkt, r.slot);
	return fw_count(class == FW_CLASS_RULE ? FW_ST_RULE_DENY : FW_ST_DEFAULT_DENY, FW_TCX_DROP);
}

SEC("tcx/ingress")
int fw_ingress(struct __sk_buff *skb)
{
	return fw_judge((void *)(long)skb->data, (void *)(long)skb->data_end, skb->ifindex, skb->len,
			FW_HOOK_INGRESS);
}

SEC("tcx/egress")
int fw_egress(struct __sk_buff *skb)
{
	return fw_judge((void *)(long)skb->data, (void *)(long)skb->data_end, skb->ifindex, skb->len,
			FW_HOOK_EGRESS);
}

/*
 * The same ingress judgement at XDP. qbod does not attach it; it exists
 * because BPF_PROG_TEST_RUN refuses skb frames shorter than 54 bytes on
 * the kernels qbo runs on, so the malformed corpus's short truncations
 * can only be driven through an XDP entry point (which accepts anything
 * from an Ethernet header up).
 */
SEC("xdp")
int fw_xdp_ingress(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	int v = fw_judge(data, data_end, ctx->ingress_ifindex, (__u32)(data_end - data), FW_HOOK_INGRESS);
	return v == FW_TCX_DROP ? XDP_DROP : XDP_PASS;
}

/* The prefilter alone, for an interface whose XDP hook no other qbo
 * object owns. */
SEC("xdp")
int fw_xdp_prefilter(struct xdp_md *ctx)
{
	return qbo_prefilter((void *)(long)ctx->data, (void *)(long)ctx->data_end);
}

/* Never called or loaded: puts the record type into BTF for bpf2go. */
__attribute__((used)) void fw_record_types(struct fw_deny_event *deny)
{
}
