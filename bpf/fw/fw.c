//go:build ignore

/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * qbo stateful firewall: TCX ingress and egress programs, plus the XDP
 * deny prefilter for interfaces whose XDP entry point no other object owns.
 *
 * Classification is tuple space search (see fw/doc.go for the scheme and
 * its limits). Rules are numbered by priority (position 0 first). Within a
 * scope (an interface's hook, or the node-wide rules of a hook) the rules
 * are grouped by mask tuple: source and destination prefix length,
 * protocol compared or not, and how many leading destination-port bits
 * are compared (a port range is split into aligned power-of-two blocks).
 * Each (scope, tuple, masked field values) is one entry of fw_tss4 or
 * fw_tss6 holding the best rule position producing it. A packet's scope
 * entry lists, per family, the tuples to search (the interface's own and
 * its hook's node-wide ones) sorted by the best position each holds; the
 * walk masks the packet's fields with each tuple's masks, does one hash
 * lookup, keeps the lowest position, and stops once the next tuple's best
 * cannot beat it. No match: the scope's default policy.
 *
 * Every table is keyed by (or indexed by) generation, and a packet reads
 * the active generation once, so it is judged by one whole rule set.
 *
 * State: an allowed new flow is recorded in fw_ct_v2 (per interface,
 * keyed by its two endpoints in a canonical order, so that a packet and
 * its reply find the entry with one lookup); its later packets and its
 * replies pass without classification, as do ICMP errors quoting it.
 * First fragments record their verdict in fw_frags so later fragments
 * (which carry no ports) follow it.
 *
 * Maps whose layout or meaning changed from the bitmap scheme carry a
 * _v2 name, so that an upgraded object never shares a map with the old
 * programs still attached until qbod updates their links.
 */
#include "qbo_vmlinux.h"
#include "qbo_uapi.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "events.h"
#include "parse.h"
#include "prefilter.h"

char __license[] SEC("license") = "Dual BSD/GPL";

#define FW_MAX_RULES 65536
#define FW_MAX_TUPLES 64     /* searched per interface, hook and family */
#define FW_MAX_ENTRIES 262144 /* per family and generation */
#define FW_MAX_IFACES 256
#define FW_IFINDEX_DIRECT 65536 /* ifindexes below this find their slot by array */
#define FW_CT_SIZE 262144
#define FW_FRAG_SIZE 16384
#define FW_LOG_PER_SEC 100 /* deny events per CPU per second */
#define FW_SLOT_DEFAULT 0xffffffff
#define FW_NO_RULE 0xffffffff

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

/* One mask tuple in a scope's IPv4 search list. Masks are in network
 * order, as the packet's fields are. */
struct fw_tuple4 {
	__u32 hdr;  /* the key's first word: generation, owning scope, tuple id */
	__u32 best; /* the lowest rule position among the tuple's entries */
	__be32 smask;
	__be32 dmask;
	__be16 pmask;
	__u8 protomask;
	__u8 pad;
};

struct fw_tuple6 {
	__u32 hdr;
	__u32 best;
	__be32 smask[4];
	__be32 dmask[4];
	__be16 pmask;
	__u8 protomask;
	__u8 pad;
};

/* An interface's slot for ifindexes from FW_IFINDEX_DIRECT up. */
struct fw_ifslot_key {
	__u32 gen;
	__u32 ifindex;
};

struct fw_scope_val {
	__u32 deflt; /* enum fw_action */
	__u32 n4;    /* tuples in t4, sorted by best */
	__u32 n6;
	__u32 pad;
	struct fw_tuple4 t4[FW_MAX_TUPLES];
	struct fw_tuple6 t6[FW_MAX_TUPLES];
};

/* An entry's key: a packet's fields masked by one tuple's masks. The
 * value is the best rule position (__u32) producing it. */
struct fw_key4 {
	__u32 hdr;
	__be32 src;
	__be32 dst;
	__be16 port;
	__u8 proto; /* ICMPv6 is ICMP */
	__u8 pad;
};

struct fw_key6 {
	__u32 hdr;
	__be32 src[4];
	__be32 dst[4];
	__be16 port;
	__u8 proto;
	__u8 pad;
};

struct fw_rule {
	__u32 slot;  /* index into fw_counters_v2, stable across rule sets */
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

/* A flow: its two endpoints in canonical order (a before b, comparing
 * address words, then ports), so both directions share one entry. */
struct fw_ct_key {
	__u32 ifindex;
	__u8 family;
	__u8 proto;
	__be16 port_a;
	__be16 port_b;
	__u16 pad;
	__be32 addr_a[4];
	__be32 addr_b[4];
};

struct fw_ct_val {
	__u64 created_ns;
	__u32 generation; /* fw_config.generation that allowed the flow */
	__u8 hook;        /* where the flow's first packet was seen */
	__u8 first_b;     /* the flow's first packet came from endpoint b */
	__u16 pad;
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
	__u32 slot; /* fw_rules_v2 slot of the deciding rule */
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
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct fw_key4);
	__type(value, __u32);
	__uint(max_entries, 2 * FW_MAX_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fw_tss4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct fw_key6);
	__type(value, __u32);
	__uint(max_entries, 2 * FW_MAX_ENTRIES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fw_tss6 SEC(".maps");

/* Attached interfaces: generation g's slot + 1 of ifindex i at
 * g*FW_IFINDEX_DIRECT + i (0: not attached). An array lookup is inlined
 * by the verifier, a hash lookup costs as much as a tuple's; larger
 * ifindexes (hosts that have created many interfaces) use fw_ifslot_hi. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 2 * FW_IFINDEX_DIRECT);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fw_ifslot SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct fw_ifslot_key);
	__type(value, __u32);
	__uint(max_entries, 2 * FW_MAX_IFACES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fw_ifslot_hi SEC(".maps");

/* Scope of (generation g, slot s, hook h) at (g*FW_MAX_IFACES + s)*2 + h. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct fw_scope_val);
	__uint(max_entries, 2 * FW_MAX_IFACES * 2);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fw_scopes_v2 SEC(".maps");

/* Rule position i of generation g at g*FW_MAX_RULES + i. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct fw_rule);
	__uint(max_entries, 2 * FW_MAX_RULES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fw_rules_v2 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct fw_counter);
	__uint(max_entries, FW_MAX_RULES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fw_counters_v2 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct fw_config);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fw_cfg_v2 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct fw_ct_key);
	__type(value, struct fw_ct_val);
	__uint(max_entries, FW_CT_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fw_ct_v2 SEC(".maps");

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

/* Per-CPU counters are only written by programs on their CPU, with
 * migration disabled: a plain add is enough, and unlike an atomic one it
 * costs no locked instruction on every packet. */
static __always_inline int fw_count(__u32 stat, int verdict)
{
	__u64 *c = bpf_map_lookup_elem(&fw_stats, &stat);
	if (c)
		*c += 1;
	return verdict;
}

/* The header fields classification looks at. */
struct fw_fields {
	__u8 family;
	__u8 proto; /* ICMPv6 is ICMP */
	__be16 dport; /* 0 when the packet has no ports */
	__be32 saddr[4];
	__be32 daddr[4];
};

enum fw_class {
	FW_CLASS_UNATTACHED = 0,
	FW_CLASS_DEFAULT = 1,
	FW_CLASS_RULE = 2,
};

/* fw_search4/6 walk a scope's search list and return the lowest rule
 * position any tuple's entry gives, or FW_NO_RULE. The list is sorted by
 * each tuple's best position, so once that is not below the best found
 * no later tuple can improve on it. */
static __always_inline __u32 fw_search4(struct fw_scope_val *sc, struct fw_fields *f)
{
	struct fw_key4 k = {};
	__u32 best = FW_NO_RULE;
	__u32 n = sc->n4;

	for (__u32 i = 0; i < FW_MAX_TUPLES; i++) {
		if (i >= n)
			break;
		struct fw_tuple4 *t = &sc->t4[i];
		if (t->best >= best)
			break;
		k.hdr = t->hdr;
		k.src = f->saddr[0] & t->smask;
		k.dst = f->daddr[0] & t->dmask;
		k.port = f->dport & t->pmask;
		k.proto = f->proto & t->protomask;
		__u32 *pos = bpf_map_lookup_elem(&fw_tss4, &k);
		if (pos && *pos < best)
			best = *pos;
	}
	return best;
}

static __always_inline __u32 fw_search6(struct fw_scope_val *sc, struct fw_fields *f)
{
	struct fw_key6 k = {};
	__u32 best = FW_NO_RULE;
	__u32 n = sc->n6;

	for (__u32 i = 0; i < FW_MAX_TUPLES; i++) {
		if (i >= n)
			break;
		struct fw_tuple6 *t = &sc->t6[i];
		if (t->best >= best)
			break;
		k.hdr = t->hdr;
		for (int w = 0; w < 4; w++) {
			k.src[w] = f->saddr[w] & t->smask[w];
			k.dst[w] = f->daddr[w] & t->dmask[w];
		}
		k.port = f->dport & t->pmask;
		k.proto = f->proto & t->protomask;
		__u32 *pos = bpf_map_lookup_elem(&fw_tss6, &k);
		if (pos && *pos < best)
			best = *pos;
	}
	return best;
}

/* fw_classify finds the rule (or default) deciding f at (ifindex, hook)
 * in generation gen. */
static __always_inline int fw_classify(__u32 gen, __u32 ifindex, __u32 hook, struct fw_fields *f,
				       struct fw_rule *out)
{
	__u32 *slot;
	if (ifindex < FW_IFINDEX_DIRECT) {
		__u32 i = gen * FW_IFINDEX_DIRECT + ifindex;
		slot = bpf_map_lookup_elem(&fw_ifslot, &i);
	} else {
		struct fw_ifslot_key ik = {.gen = gen, .ifindex = ifindex};
		slot = bpf_map_lookup_elem(&fw_ifslot_hi, &ik);
	}
	if (!slot || *slot == 0 || *slot > FW_MAX_IFACES)
		return FW_CLASS_UNATTACHED;
	__u32 si = ((gen * FW_MAX_IFACES + *slot - 1) << 1) | (hook & 1);
	struct fw_scope_val *sc = bpf_map_lookup_elem(&fw_scopes_v2, &si);
	if (!sc)
		return FW_CLASS_UNATTACHED;
	out->action = sc->deflt;
	out->slot = FW_SLOT_DEFAULT;
	out->log = 0;

	__u32 best = f->family == 4 ? fw_search4(sc, f) : fw_search6(sc, f);
	if (best >= FW_MAX_RULES)
		return FW_CLASS_DEFAULT;
	__u32 ri = gen * FW_MAX_RULES + best;
	struct fw_rule *r = bpf_map_lookup_elem(&fw_rules_v2, &ri);
	if (!r)
		return FW_CLASS_DEFAULT;
	*out = *r;
	return FW_CLASS_RULE;
}

static __always_inline void fw_count_rule(__u32 slot, __u32 len)
{
	if (slot == FW_SLOT_DEFAULT)
		return;
	struct fw_counter *c = bpf_map_lookup_elem(&fw_counters_v2, &slot);
	if (c) {
		c->packets += 1;
		c->bytes += len;
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

/* fw_frag_allow: a first fragment that passes as part of a tracked flow
 * lets its later fragments (which carry no ports) pass too. */
static __always_inline void fw_frag_allow(__u32 ifindex, struct qbo_pkt *pkt)
{
	if (!(pkt->flags & QBO_PKT_FRAG))
		return;
	struct fw_frag_key fk;
	struct fw_frag_val fv = {.action = FW_ACT_ALLOW, .slot = FW_SLOT_DEFAULT};
	fw_frag_key(&fk, ifindex, pkt);
	bpf_map_update_elem(&fw_frags, &fk, &fv, BPF_ANY);
}

/* fw_ct_fill sets k to the flow of a packet from (s, sp) to (d, dp) and
 * returns whether the packet goes from endpoint b to endpoint a. */
static __always_inline __u8 fw_ct_fill(struct fw_ct_key *k, const __be32 *s, __be16 sp, const __be32 *d,
				       __be16 dp)
{
	__u8 from_b = sp > dp;
	for (int i = 3; i >= 0; i--) {
		if (s[i] != d[i])
			from_b = s[i] > d[i];
	}
	if (from_b) {
		__builtin_memcpy(k->addr_a, d, 16);
		__builtin_memcpy(k->addr_b, s, 16);
		k->port_a = dp;
		k->port_b = sp;
	} else {
		__builtin_memcpy(k->addr_a, s, 16);
		__builtin_memcpy(k->addr_b, d, 16);
		k->port_a = sp;
		k->port_b = dp;
	}
	return from_b;
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
	struct fw_config *cfg = bpf_map_lookup_elem(&fw_cfg_v2, &zero);
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

	struct fw_ct_key ck = {.ifindex = ifindex, .family = pkt.family};

	if (pkt.flags & QBO_PKT_ICMP_ERR) {
		/* The quoted packet is a flow's packet (either direction). */
		ck.proto = pkt.inner.proto;
		fw_ct_fill(&ck, pkt.inner.saddr, pkt.inner.sport, pkt.inner.daddr, pkt.inner.dport);
		if (bpf_map_lookup_elem(&fw_ct_v2, &ck))
			return fw_count(FW_ST_ICMP_RELATED, FW_TCX_NEXT);
	}

	ck.proto = pkt.proto;
	__u8 from_b = fw_ct_fill(&ck, pkt.saddr, pkt.sport, pkt.daddr, pkt.dport);
	struct fw_ct_val *cv = bpf_map_lookup_elem(&fw_ct_v2, &ck);
	int reply = cv && cv->first_b != from_b;
	if (cv && (!reeval || cv->generation == generation)) {
		fw_frag_allow(ifindex, &pkt);
		return fw_count(reply ? FW_ST_CT_REPLY : FW_ST_CT_ESTABLISHED, FW_TCX_NEXT);
	}

	/* A new flow, or a tracked one to judge again by a newer rule set
	 * (as its first direction was judged, at the hook it was seen). */
	struct fw_fields f = {.family = pkt.family, .proto = pkt.proto};
	if (f.proto == QBO_IPPROTO_ICMPV6)
		f.proto = QBO_IPPROTO_ICMP;
	__u32 class_hook = hook;
	if (reply) {
		__builtin_memcpy(f.saddr, pkt.daddr, 16);
		__builtin_memcpy(f.daddr, pkt.saddr, 16);
		f.dport = pkt.sport;
	} else {
		__builtin_memcpy(f.saddr, pkt.saddr, 16);
		__builtin_memcpy(f.daddr, pkt.daddr, 16);
		f.dport = (pkt.flags & QBO_PKT_PORTS) ? pkt.dport : 0;
	}
	if (cv)
		class_hook = cv->hook;
	struct fw_rule r;
	int class = fw_classify(gen, ifindex, class_hook, &f, &r);

	if (cv) {
		if (class == FW_CLASS_UNATTACHED || r.action == FW_ACT_ALLOW) {
			cv->generation = generation;
			fw_frag_allow(ifindex, &pkt);
			return fw_count(reply ? FW_ST_CT_REPLY : FW_ST_CT_ESTABLISHED, FW_TCX_NEXT);
		}
		bpf_map_delete_elem(&fw_ct_v2, &ck);
		fw_count_rule(r.slot, len);
		return fw_count(FW_ST_REEVAL_DENY, FW_TCX_DROP);
	}

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
				       .hook = hook, .first_b = from_b};
		bpf_map_update_elem(&fw_ct_v2, &ck, &nv, BPF_ANY);
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
