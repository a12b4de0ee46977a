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
 * Each (scope, tuple, masked field values) is one entry of fw_tss4_v3 or
 * fw_tss6_v3 (cuckoo hash tables in arrays, built whole by qbod) holding
 * the best rule position producing it. A packet's scope entry lists, per
 * family, the tuples to search (the interface's own and its hook's
 * node-wide ones) sorted by the best position each holds; the walk masks
 * the packet's fields with each tuple's masks, probes the entry's two
 * buckets, keeps the lowest position, and stops once the next tuple's
 * best cannot beat it. No match: the scope's default policy.
 *
 * Every table is keyed by (or indexed by) generation, and a packet reads
 * the active generation once, so it is judged by one whole rule set.
 *
 * State: an allowed new flow is recorded in fw_ct_v3 (a set-associative
 * array; per interface, keyed by its two endpoints in a canonical order,
 * so that a packet and its reply find the entry with one probe); its
 * later packets and its replies pass without classification, as do ICMP
 * errors quoting it. First fragments record their verdict in fw_frags so
 * later fragments (which carry no ports) follow it.
 *
 * Cost: no hash-map lookup and no function call on the path of an
 * established packet, nor on the path of a new packet whose scope has at
 * most two tuples worth searching for its family (fw_classify probes
 * those inline); longer walks make one call (fw_search). See
 * fw_tss4_get for why calls matter on this CPU. The judge is inlined
 * three times (fw_decide): for the frames qbo_parse_plain4 takes (untagged
 * IPv4 TCP/UDP, no options, not a fragment), for those qbo_parse_plain6
 * takes (untagged IPv6 TCP/UDP, no extension header), each compiled for
 * what that frame is known to be, and for every other frame after
 * qbo_parse. The
 * general copy's parse, and the classified fields of IPv6 packets and of
 * walks that call fw_search, live in a per-CPU scratch value (fw_scratch),
 * not on the stack: that leaves room
 * in the 512-byte stack for fw_search's frame, and the verifier tracks
 * less.
 *
 * Maps whose layout or meaning changed carry a version suffix (_v2: the
 * tuple scheme, _v3: the array tables), so that an upgraded object never
 * shares a map with the old programs still attached until qbod updates
 * their links.
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
#define FW_MAX_TUPLES 128    /* searched per interface, hook and family */
#define FW_MAX_IFACES 256
#define FW_IFINDEX_DIRECT 65536 /* ifindexes below this find their slot by array */
#define FW_CT_WAYS 4
#define FW_CT_SETS 65536 /* 262,144 connections */
#define FW_TSS_WAYS 4
#define FW_TSS_SHIFT 16
#define FW_TSS_BUCKETS (1 << FW_TSS_SHIFT) /* per family and generation */
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
} __attribute__((aligned(8)));

struct fw_key6 {
	__u32 hdr;
	__be32 src[4];
	__be32 dst[4];
	__be16 port;
	__u8 proto;
	__u8 pad;
} __attribute__((aligned(8)));

/* The entry tables (fw_tss4_v3, fw_tss6_v3) are bucketized cuckoo hash
 * tables in arrays, one half per generation, which qbod builds whole for
 * the inactive generation (fw/datapath): an entry lives in one of the two
 * buckets its hash names, in one of four ways, tagged with the hash's
 * high half (0 = empty way). A lookup is two inlined array reads and tag
 * compares, never a hash-map walk. fw_tss_hash in Go is this hash. */
struct fw_tss4_bucket {
	__u32 tag[FW_TSS_WAYS];
	__u32 pos[FW_TSS_WAYS]; /* the entry's best rule position */
	struct fw_key4 key[FW_TSS_WAYS];
};

struct fw_tss6_bucket {
	__u32 tag[FW_TSS_WAYS];
	__u32 pos[FW_TSS_WAYS];
	struct fw_key6 key[FW_TSS_WAYS];
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
	__u32 seed;       /* the active generation's entry-table hash seed */
};

/* A flow: its two endpoints in canonical order (a before b, comparing
 * address words, then ports), so both directions share one entry. Six
 * 64-bit words, which fw.c builds in registers (see fw_ct_fill) and
 * hashes and compares word by word. */
struct fw_ct_key {
	__be32 addr_a[4];
	__be32 addr_b[4];
	__u32 ifindex;
	__be16 port_a;
	__be16 port_b;
	__u8 family;
	__u8 proto;
	__u16 pad;
	__u32 pad2;
} __attribute__((aligned(8)));

struct fw_ct_ent {
	struct fw_ct_key key;
	__u64 created_ns;
	__u32 generation; /* fw_config.generation that allowed the flow */
	__u8 hook;        /* where the flow's first packet was seen */
	__u8 first_b;     /* the flow's first packet came from endpoint b */
	__u16 pad;
};

/* The connection table (fw_ct_v3) is set-associative, like the load
 * balancer's flow table: an array of FW_CT_SETS sets of FW_CT_WAYS
 * connections shared by all CPUs; the set is chosen by the key's hash, a
 * way by its tag (the hash's high half | 1; 0 = empty). Looking up is an
 * inlined array read and a few compares; a new connection takes an empty
 * way or the least recently used one. Ways are written without locks:
 * check covers the tag, hook and direction, so a torn entry read while
 * another CPU writes it is a miss (the packet is classified). The first
 * 64 bytes hold the tags, so a miss reads one cache line. */
struct fw_ct_set {
	__u32 tag[FW_CT_WAYS];
	__u32 check[FW_CT_WAYS];
	__u32 used[FW_CT_WAYS]; /* the set's clock when the way was last used */
	__u32 clock;            /* advanced on every insert into the set */
	__u32 pad[3];
	struct fw_ct_ent way[FW_CT_WAYS];
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

/* The header fields classification looks at. */
struct fw_fields {
	__u8 family;
	__u8 proto; /* ICMPv6 is ICMP */
	__be16 dport; /* 0 when the packet has no ports */
	__be32 saddr[4];
	__be32 daddr[4];
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

/* Bucket b of generation g at g*FW_TSS_BUCKETS + b. Memory-mapped: qbod
 * writes a generation's half in one copy. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct fw_tss4_bucket);
	__uint(max_entries, 2 * FW_TSS_BUCKETS);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fw_tss4_v3 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct fw_tss6_bucket);
	__uint(max_entries, 2 * FW_TSS_BUCKETS);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fw_tss6_v3 SEC(".maps");

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
} fw_ifslot_v3 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct fw_ifslot_key);
	__type(value, __u32);
	__uint(max_entries, 2 * FW_MAX_IFACES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fw_ifslot_hi_v3 SEC(".maps");

/* Scope of (generation g, slot s, hook h) at (g*FW_MAX_IFACES + s)*2 + h. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct fw_scope_val);
	__uint(max_entries, 2 * FW_MAX_IFACES * 2);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fw_scopes_v3 SEC(".maps");

/* Rule position i of generation g at g*FW_MAX_RULES + i. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct fw_rule);
	__uint(max_entries, 2 * FW_MAX_RULES);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fw_rules_v3 SEC(".maps");

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
} fw_cfg_v3 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct fw_ct_set);
	__uint(max_entries, FW_CT_SETS);
	__uint(map_flags, BPF_F_MMAPABLE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fw_ct_v3 SEC(".maps");

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

/* A packet's parse and the fields it is classified by, per CPU: kept
 * here rather than on the stack, whose 512 bytes fw_judge's spills and
 * fw_search's frame share. One judgement at a time per CPU: TC and XDP
 * programs run with bottom halves off and do not nest. */
struct fw_scratch {
	struct qbo_pkt pkt;
	struct fw_fields f;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct fw_scratch);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} fw_scratch SEC(".maps");

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

/* ---- hashing (fw_tss_hash and fw_ct_hash in fw/datapath are these) ---- */

/* fw_fold mixes a sum of word products so that every key bit reaches
 * the low bits (which choose buckets and sets): a product only carries a
 * bit upwards. */
static __always_inline __u64 fw_fold(__u64 h)
{
	h = (h ^ (h >> 32)) * 0xff51afd7ed558ccdULL;
	return h ^ (h >> 29);
}

/* The tag of hash h: its high half, never 0 (0 marks an empty way). */
static __always_inline __u32 fw_tag(__u64 h) { return (__u32)(h >> 32) | 1; }

static __always_inline __u64 fw_ct_hash(const __u64 *w)
{
	return fw_fold(w[0] * 0x9e3779b97f4a7c15ULL ^ w[1] * 0xc2b2ae3d27d4eb4fULL ^ w[2] * 0x165667b19e3779f9ULL ^
		       w[3] * 0x27d4eb2f165667c5ULL ^ w[4] * 0x94d049bb133111ebULL ^ w[5] * 0xd6e8feb86659fd93ULL);
}

/* ---- entry tables ---- */

/* fw_no_zero_lane is true when none of the four 32-bit lanes of v0, v1
 * is zero: the classic test for a zero lane (exact as to whether any lane
 * is zero), a few instructions for a whole bucket's tags. */
static __always_inline int fw_no_zero_lane(__u64 v0, __u64 v1)
{
	__u64 z = ((v0 - 0x0000000100000001ULL) & ~v0) | ((v1 - 0x0000000100000001ULL) & ~v1);
	return (z & 0x8000000080000000ULL) == 0;
}

/* fw_tags_miss is true when none of a bucket's four tags is tag. */
static __always_inline int fw_tags_miss(const __u32 *tags, __u32 tag)
{
	const __u64 *t = (const void *)tags;
	__u64 tt = (__u64)tag << 32 | tag;
	return fw_no_zero_lane(t[0] ^ tt, t[1] ^ tt);
}

/* fw_bucket_full is true when none of a bucket's four tags is 0 (an
 * empty way). The tables are built so that an entry lives in its second
 * bucket only if its first was full when it was placed, and a bucket
 * never loses an entry while a half is built (fw/datapath buildTSS): so
 * an entry whose first bucket has an empty way is not in its second, and
 * a miss there reads one bucket, not two. */
static __always_inline int fw_bucket_full(const __u32 *tags)
{
	const __u64 *t = (const void *)tags;
	return fw_no_zero_lane(t[0], t[1]);
}

/* fw_tss4_bucket_pos returns the position of entry (w0, w1) with tag in
 * bucket b, or FW_NO_RULE. */
static __always_inline __u32 fw_tss4_bucket_pos(const struct fw_tss4_bucket *b, __u64 w0, __u64 w1, __u32 tag)
{
	if (fw_tags_miss(b->tag, tag))
		return FW_NO_RULE;
	int i;
#pragma unroll
	for (i = 0; i < FW_TSS_WAYS; i++) {
		const __u64 *y = (const void *)&b->key[i];
		if (b->tag[i] == tag && ((w0 ^ y[0]) | (w1 ^ y[1])) == 0)
			return b->pos[i];
	}
	return FW_NO_RULE;
}

static __always_inline __u32 fw_tss6_bucket_pos(const struct fw_tss6_bucket *b, const __u64 *x, __u32 tag)
{
	if (fw_tags_miss(b->tag, tag))
		return FW_NO_RULE;
	int i;
#pragma unroll
	for (i = 0; i < FW_TSS_WAYS; i++) {
		const __u64 *y = (const void *)&b->key[i];
		if (b->tag[i] == tag &&
		    ((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3]) | (x[4] ^ y[4])) == 0)
			return b->pos[i];
	}
	return FW_NO_RULE;
}

/* fw_tss4_get returns the best rule position of the fw_key4 whose two
 * words are w0, w1 in generation gen's table, or FW_NO_RULE: the entry is
 * in the bucket named by the hash's low bits or, only if that one is
 * full, in the one named by the next bits (fw_bucket_full).
 *
 * Keys are passed as words built in registers: storing a key field by
 * field and loading it as words would stall on every word (a load cannot
 * be forwarded from several narrower stores).
 *
 * Lookups are inlined: on this CPU (AMD, "Safe RET" against speculative
 * return stack overflow) every return costs several ns, so a BPF-to-BPF
 * call or a helper the verifier does not inline is the most expensive
 * thing a program can do (see fw_classify and fw_search for the one call
 * a new flow may make). */
static __always_inline __u32 fw_tss4_get(__u64 w0, __u64 w1, __u32 gen, __u64 seed)
{
	__u64 h = fw_fold((w0 ^ seed) * 0x9e3779b97f4a7c15ULL ^ w1 * 0xc2b2ae3d27d4eb4fULL);
	__u32 tag = fw_tag(h);
	__u32 i = gen * FW_TSS_BUCKETS + ((__u32)h & (FW_TSS_BUCKETS - 1));
	struct fw_tss4_bucket *b = bpf_map_lookup_elem(&fw_tss4_v3, &i);
	if (!b)
		return FW_NO_RULE;
	__u32 pos = fw_tss4_bucket_pos(b, w0, w1, tag);
	if (pos != FW_NO_RULE || !fw_bucket_full(b->tag))
		return pos;
	i = gen * FW_TSS_BUCKETS + (((__u32)h >> FW_TSS_SHIFT) & (FW_TSS_BUCKETS - 1));
	b = bpf_map_lookup_elem(&fw_tss4_v3, &i);
	if (!b)
		return FW_NO_RULE;
	return fw_tss4_bucket_pos(b, w0, w1, tag);
}

/* fw_tss6_get is fw_tss4_get for the five words of a fw_key6. */
static __always_inline __u32 fw_tss6_get(const __u64 *x, __u32 gen, __u64 seed)
{
	__u64 h = fw_fold((x[0] ^ seed) * 0x9e3779b97f4a7c15ULL ^ x[1] * 0xc2b2ae3d27d4eb4fULL ^
			  x[2] * 0x165667b19e3779f9ULL ^ x[3] * 0x27d4eb2f165667c5ULL ^ x[4] * 0x94d049bb133111ebULL);
	__u32 tag = fw_tag(h);
	__u32 i = gen * FW_TSS_BUCKETS + ((__u32)h & (FW_TSS_BUCKETS - 1));
	struct fw_tss6_bucket *b = bpf_map_lookup_elem(&fw_tss6_v3, &i);
	if (!b)
		return FW_NO_RULE;
	__u32 pos = fw_tss6_bucket_pos(b, x, tag);
	if (pos != FW_NO_RULE || !fw_bucket_full(b->tag))
		return pos;
	i = gen * FW_TSS_BUCKETS + (((__u32)h >> FW_TSS_SHIFT) & (FW_TSS_BUCKETS - 1));
	b = bpf_map_lookup_elem(&fw_tss6_v3, &i);
	if (!b)
		return FW_NO_RULE;
	return fw_tss6_bucket_pos(b, x, tag);
}

/* ---- the connection table ---- */

static __always_inline __u32 fw_ct_check(__u32 tag, __u8 hook, __u8 first_b)
{
	return tag ^ (((__u32)hook << 1 | first_b) + 1) * 0x9e3779b1;
}

static __always_inline struct fw_ct_set *fw_ct_set(__u64 h)
{
	__u32 i = (__u32)h & (FW_CT_SETS - 1);
	return bpf_map_lookup_elem(&fw_ct_v3, &i);
}

static __always_inline int fw_ct_key_eq(const __u64 *x, const struct fw_ct_ent *e)
{
	const __u64 *y = (const void *)&e->key;
	return ((x[0] ^ y[0]) | (x[1] ^ y[1]) | (x[2] ^ y[2]) | (x[3] ^ y[3]) | (x[4] ^ y[4]) | (x[5] ^ y[5])) == 0;
}

/* A hit of fw_ct_find: FW_CT_HIT | first_b << 40 | hook << 32 | generation. */
#define FW_CT_HIT (1ULL << 48)

/* fw_ct_find looks connection x (a fw_ct_key's six words, hash h) up in
 * its set s and returns 0 or the hit's fields packed (FW_CT_HIT); a hit
 * refreshes the way's recency. A way whose check does not match its
 * content is being written by another CPU: a miss. */
static __always_inline __u64 fw_ct_find(struct fw_ct_set *s, const __u64 *x, __u64 h)
{
	__u32 tag = fw_tag(h);
	int i;
#pragma unroll
	for (i = 0; i < FW_CT_WAYS; i++) {
		if (s->tag[i] != tag)
			continue;
		struct fw_ct_ent *e = &s->way[i];
		if (!fw_ct_key_eq(x, e))
			continue;
		__u8 hook = e->hook, first_b = e->first_b;
		if (s->check[i] != fw_ct_check(tag, hook, first_b))
			return 0;
		__u32 now = s->clock;
		if (s->used[i] != now)
			s->used[i] = now;
		return FW_CT_HIT | (__u64)(first_b & 1) << 40 | (__u64)(hook & 1) << 32 | e->generation;
	}
	return 0;
}

/* fw_ct_update sets the generation of connection x (hash h) in set s, or
 * forgets the connection (a re-evaluation denied it). */
static __always_inline void fw_ct_update(struct fw_ct_set *s, const __u64 *x, __u64 h, __u32 generation, int forget)
{
	__u32 tag = fw_tag(h);
	int i;
#pragma unroll
	for (i = 0; i < FW_CT_WAYS; i++) {
		if (s->tag[i] != tag || !fw_ct_key_eq(x, &s->way[i]))
			continue;
		if (forget)
			s->tag[i] = 0;
		else
			s->way[i].generation = generation;
		return;
	}
}

/* fw_ct_insert records connection x (hash h) in set s: in its own way,
 * else an empty one, else in place of the least recently used. */
static __always_inline void fw_ct_insert(struct fw_ct_set *s, const __u64 *x, __u64 h, __u32 generation, __u8 hook,
					 __u8 first_b)
{
	__u32 tag = fw_tag(h);
	__u32 now = s->clock + 1;
	__u32 victim = 0, best = 0;
	int i;
#pragma unroll
	for (i = 0; i < FW_CT_WAYS; i++) {
		__u32 score;
		if (!s->tag[i])
			score = 0xfffffffe;
		else if (s->tag[i] == tag && fw_ct_key_eq(x, &s->way[i]))
			score = 0xffffffff;
		else
			score = now - s->used[i];
		if (score > best) {
			best = score;
			victim = i;
		}
	}
	victim &= FW_CT_WAYS - 1;
	s->clock = now;
	struct fw_ct_ent *e = &s->way[victim];
	s->tag[victim] = 0;
	asm volatile("" ::: "memory");
	__u64 *ek = (void *)&e->key;
#pragma unroll
	for (i = 0; i < 6; i++)
		ek[i] = x[i];
	e->created_ns = bpf_ktime_get_ns();
	e->generation = generation;
	e->hook = hook;
	e->first_b = first_b;
	e->pad = 0;
	s->used[victim] = now;
	s->check[victim] = fw_ct_check(tag, hook, first_b);
	asm volatile("" ::: "memory");
	s->tag[victim] = tag;
}

enum fw_class {
	FW_CLASS_UNATTACHED = 0,
	FW_CLASS_DEFAULT = 1,
	FW_CLASS_RULE = 2,
};

/* fw_index is i as an index into a search list, computed afresh: the
 * walk may start at any tuple, and a pointer the compiler advanced from
 * one iteration to the next would lose its bounds to the verifier. */
static __always_inline __u32 fw_index(__u32 i)
{
	asm volatile("" : "+r"(i));
	return i & (FW_MAX_TUPLES - 1);
}

/* fw_probe4 returns the position tuple t gives the fields (src, dst,
 * port, proto), or FW_NO_RULE. */
static __always_inline __u32 fw_probe4(const struct fw_tuple4 *t, __u64 src, __u64 dst, __u64 port, __u64 proto,
				       __u32 gen, __u64 seed)
{
	/* fw_key4's words: hdr | src << 32, dst | port << 32 | proto << 48. */
	__u64 w0 = t->hdr | (src & t->smask) << 32;
	__u64 w1 = (dst & t->dmask) | (port & t->pmask) << 32 | (proto & t->protomask) << 48;
	return fw_tss4_get(w0, w1, gen, seed);
}

/* fw_probe6 is fw_probe4 for IPv6: fw_key6's words are hdr | src[0] <<
 * 32, src[1] | src[2] << 32, src[3] | dst[0] << 32, dst[1] | dst[2] << 32,
 * dst[3] | port << 32 | proto << 48. */
static __always_inline __u32 fw_probe6(const struct fw_tuple6 *t, const struct fw_fields *f, __u32 gen,
				       __u64 seed)
{
	__u64 k[5];
	k[0] = t->hdr | (__u64)(f->saddr[0] & t->smask[0]) << 32;
	k[1] = (f->saddr[1] & t->smask[1]) | (__u64)(f->saddr[2] & t->smask[2]) << 32;
	k[2] = (f->saddr[3] & t->smask[3]) | (__u64)(f->daddr[0] & t->dmask[0]) << 32;
	k[3] = (f->daddr[1] & t->dmask[1]) | (__u64)(f->daddr[2] & t->dmask[2]) << 32;
	k[4] = (f->daddr[3] & t->dmask[3]) | (__u64)(f->dport & t->pmask) << 32 |
	       (__u64)(f->proto & t->protomask) << 48;
	return fw_tss6_get(k, gen, seed);
}

/* fw_search4/6 walk a scope's search list from tuple `from` on and
 * return the lowest rule position any tuple's entry gives, or best if
 * none is lower. The list is sorted by each tuple's best position, so
 * once that is not below the best found no later tuple can improve on
 * it. */
static __always_inline __u32 fw_search4(struct fw_scope_val *sc, struct fw_fields *f, __u32 gen, __u64 seed,
					__u32 from, __u32 best)
{
	__u32 n = sc->n4;
	__u64 src = f->saddr[0], dst = f->daddr[0], port = f->dport, proto = f->proto;

	for (__u32 i = from; i < FW_MAX_TUPLES; i++) {
		if (i >= n)
			break;
		struct fw_tuple4 *t = &sc->t4[fw_index(i)];
		if (t->best >= best)
			break;
		__u32 pos = fw_probe4(t, src, dst, port, proto, gen, seed);
		if (pos < best)
			best = pos;
	}
	return best;
}

static __always_inline __u32 fw_search6(struct fw_scope_val *sc, struct fw_fields *f, __u32 gen, __u64 seed,
					__u32 from, __u32 best)
{
	__u32 n = sc->n6;

	for (__u32 i = from; i < FW_MAX_TUPLES; i++) {
		if (i >= n)
			break;
		struct fw_tuple6 *t = &sc->t6[fw_index(i)];
		if (t->best >= best)
			break;
		__u32 pos = fw_probe6(t, f, gen, seed);
		if (pos < best)
			best = pos;
	}
	return best;
}

/* fw_search returns the best rule position for f in scope si, walking
 * its search list from tuple (from & (FW_MAX_TUPLES - 1)) on, or
 * (from >> 32) if no tuple there gives a lower one. It is the one
 * function call a classified packet may make, once the two tuples
 * fw_classify probes inline leave more to search. A
 * global function is verified once, on its own, whereas inlined, the
 * whole walk would be verified again for every distinct state the parser
 * and the connection lookup leave, more than the verifier allows. */
__attribute__((noinline)) __u32 fw_search(struct fw_fields *f, __u32 si, __u32 gen, __u64 seed, __u64 from)
{
	if (!f) /* a global function's pointer may be NULL to the verifier */
		return FW_NO_RULE;
	struct fw_scope_val *sc = bpf_map_lookup_elem(&fw_scopes_v3, &si);
	if (!sc)
		return FW_NO_RULE;
	__u32 start = from & (FW_MAX_TUPLES - 1), best = from >> 32;
	return f->family == 4 ? fw_search4(sc, f, gen, seed, start, best) : fw_search6(sc, f, gen, seed, start, best);
}

/* fw_ifslot_hi returns the slot + 1 of a large ifindex (0: not
 * attached). A function of its own: were the two lookups of fw_classify
 * in one function, the compiler would merge them into one call with a
 * map chosen at run time, which the verifier cannot inline, and every
 * packet would pay a real helper call. */
__attribute__((noinline)) __u32 fw_ifslot_hi(__u32 gen, __u32 ifindex)
{
	struct fw_ifslot_key ik = {.gen = gen, .ifindex = ifindex};
	__u32 *s = bpf_map_lookup_elem(&fw_ifslot_hi_v3, &ik);
	return s ? *s : 0;
}

/* fw_fields4 writes an IPv4 packet's classified fields into the per-CPU
 * scratch value, for fw_search, and returns them (NULL: never). */
static __always_inline struct fw_fields *fw_fields4(__u32 src, __u32 dst, __be16 port, __u8 proto)
{
	__u32 zero = 0;
	struct fw_scratch *scr = bpf_map_lookup_elem(&fw_scratch, &zero);
	if (!scr)
		return 0;
	struct fw_fields *f = &scr->f;
	f->family = 4;
	f->proto = proto;
	f->dport = port;
	f->saddr[0] = src;
	f->saddr[1] = 0;
	f->saddr[2] = 0;
	f->saddr[3] = 0;
	f->daddr[0] = dst;
	f->daddr[1] = 0;
	f->daddr[2] = 0;
	f->daddr[3] = 0;
	return f;
}

/* fw_classify finds the rule (or default) deciding a packet at (ifindex,
 * hook) in generation gen. An IPv4 packet's fields are (src, dst, port,
 * proto); f holds them too, or is NULL (IPv4 only: the plain copy of
 * fw_decide), in which case they are written to the scratch value only if
 * the walk goes on to fw_search. An IPv6 packet's fields are in f. */
static __always_inline int fw_classify(__u32 gen, __u64 seed, __u32 ifindex, __u32 hook, struct fw_fields *f,
				       __u8 family, __u32 src, __u32 dst, __be16 port, __u8 proto,
				       struct fw_rule *out)
{
	__u32 slot = 0;
	if (ifindex < FW_IFINDEX_DIRECT) {
		__u32 i = gen * FW_IFINDEX_DIRECT + ifindex;
		__u32 *s = bpf_map_lookup_elem(&fw_ifslot_v3, &i);
		if (s)
			slot = *s;
	} else {
		slot = fw_ifslot_hi(gen, ifindex);
	}
	if (slot == 0 || slot > FW_MAX_IFACES)
		return FW_CLASS_UNATTACHED;
	__u32 si = ((gen * FW_MAX_IFACES + slot - 1) << 1) | (hook & 1);
	struct fw_scope_val *sc = bpf_map_lookup_elem(&fw_scopes_v3, &si);
	if (!sc)
		return FW_CLASS_UNATTACHED;
	out->action = sc->deflt;
	out->slot = FW_SLOT_DEFAULT;
	out->log = 0;

	/* A scope's first two tuples are searched here, inlined: a call
	 * costs more on this CPU than a tuple's probe (see fw_tss4_get), and
	 * most scopes have few tuples, or find the deciding rule in their
	 * first ones (the list is sorted by best position). */
	__u32 best = FW_NO_RULE;
	if (family == 4) {
		__u32 n = sc->n4;
		if (n > 0)
			best = fw_probe4(&sc->t4[0], src, dst, port, proto, gen, seed);
		if (n > 1 && sc->t4[1].best < best) {
			__u32 pos = fw_probe4(&sc->t4[1], src, dst, port, proto, gen, seed);
			if (pos < best)
				best = pos;
			if (n > 2 && sc->t4[2].best < best) {
				if (!f)
					f = fw_fields4(src, dst, port, proto);
				if (f)
					best = fw_search(f, si, gen, seed, (__u64)best << 32 | 2);
			}
		}
	} else {
		__u32 n = sc->n6;
		if (n > 0)
			best = fw_probe6(&sc->t6[0], f, gen, seed);
		if (n > 1 && sc->t6[1].best < best) {
			__u32 pos = fw_probe6(&sc->t6[1], f, gen, seed);
			if (pos < best)
				best = pos;
			if (n > 2 && sc->t6[2].best < best)
				best = fw_search(f, si, gen, seed, (__u64)best << 32 | 2);
		}
	}
	if (best >= FW_MAX_RULES)
		return FW_CLASS_DEFAULT;
	__u32 ri = gen * FW_MAX_RULES + best;
	struct fw_rule *r = bpf_map_lookup_elem(&fw_rules_v3, &ri);
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
static __always_inline void fw_frag_allow(__u32 ifindex, struct qbo_pkt *pkt, __u16 flags)
{
	if (!(flags & QBO_PKT_FRAG))
		return;
	struct fw_frag_key fk;
	struct fw_frag_val fv = {.action = FW_ACT_ALLOW, .slot = FW_SLOT_DEFAULT};
	fw_frag_key(&fk, ifindex, pkt);
	bpf_map_update_elem(&fw_frags, &fk, &fv, BPF_ANY);
}

/* fw_ct_fill sets k (the six words of a fw_ct_key) to the flow of a
 * packet from (s, sp) to (d, dp) on ifindex and returns whether the packet
 * goes from endpoint b to endpoint a. The words are built in registers and
 * stored whole (see fw_tss4_get). With v4 (a constant in fw_decide's plain
 * copy) the addresses' last three words are known to be zero, so the
 * compiler drops their loads, compares and products. */
static __always_inline __u8 fw_ct_fill(__u64 *k, __u32 ifindex, __u8 family, __u8 proto, const __be32 *s,
				       __be16 sp, const __be32 *d, __be16 dp, const int v4)
{
	__u32 s0 = s[0], s1 = v4 ? 0 : s[1], s2 = v4 ? 0 : s[2], s3 = v4 ? 0 : s[3];
	__u32 d0 = d[0], d1 = v4 ? 0 : d[1], d2 = v4 ? 0 : d[2], d3 = v4 ? 0 : d[3];
	__u8 from_b = sp > dp;
	if (s3 != d3)
		from_b = s3 > d3;
	if (s2 != d2)
		from_b = s2 > d2;
	if (s1 != d1)
		from_b = s1 > d1;
	if (s0 != d0)
		from_b = s0 > d0;
	__u64 ws0 = s0 | (__u64)s1 << 32, ws1 = s2 | (__u64)s3 << 32;
	__u64 wd0 = d0 | (__u64)d1 << 32, wd1 = d2 | (__u64)d3 << 32;
	if (from_b) {
		k[0] = wd0;
		k[1] = wd1;
		k[2] = ws0;
		k[3] = ws1;
		k[4] = ifindex | (__u64)dp << 32 | (__u64)sp << 48;
	} else {
		k[0] = ws0;
		k[1] = ws1;
		k[2] = wd0;
		k[3] = wd1;
		k[4] = ifindex | (__u64)sp << 32 | (__u64)dp << 48;
	}
	k[5] = family | (__u64)proto << 8;
	return from_b;
}

/* fw_decide judges the packet qbo_parse or qbo_parse_plain4/6 left in
 * *pkt, seen at (ifindex, hook); len is counted in the rule's byte
 * counter. It returns FW_TCX_NEXT or FW_TCX_DROP.
 *
 * plain is a constant: fw_judge inlines one copy for the frames
 * qbo_parse_plain4 takes (plain == 1: untagged IPv4 TCP/UDP without
 * options, not a fragment: family 4 and flags QBO_PKT_PORTS, known to the
 * compiler), one for those qbo_parse_plain6 takes (plain == 2: family 6,
 * the same flags; its classified fields go to the scratch value, which
 * fw_probe6 reads, looked up only when the packet is classified) and one
 * for every other frame (the load balancer's fast path is the same
 * idea; docs/BENCHMARKS.md measures both). In the plain copy the
 * fragment and ICMP branches, the IPv6 words of the connection key and
 * the IPv6 search are gone, and with them their loads, spills and
 * multiplies. Its packet is a stack value that the compiler keeps in
 * registers (fields it never reads are never written), and its scr is
 * NULL: the classified fields go to the per-CPU scratch value only if the
 * walk calls fw_search (fw_fields4). The general copy's packet and
 * fields are in scr. */
static __always_inline int fw_decide(struct fw_scratch *scr, struct qbo_pkt *pkt, __u32 ifindex, __u32 len,
				     __u32 hook, const int plain)
{
	__u16 flags = plain ? QBO_PKT_PORTS : pkt->flags;
	__u8 family = plain == 1 ? 4 : plain == 2 ? 6 : pkt->family;
	__u32 zero = 0;

	struct fw_config *cfg = bpf_map_lookup_elem(&fw_cfg_v3, &zero);
	if (!cfg)
		return fw_count(FW_ST_UNATTACHED, FW_TCX_NEXT);
	/* Read once: everything below uses this generation's tables. */
	__u32 generation = cfg->generation;
	__u32 gen = generation & 1;
	__u32 reeval = cfg->reevaluate;
	__u64 seed = cfg->seed;

	if (flags & QBO_PKT_FRAG_LATER) {
		struct fw_frag_key fk;
		fw_frag_key(&fk, ifindex, pkt);
		struct fw_frag_val *fv = bpf_map_lookup_elem(&fw_frags, &fk);
		if (!fv)
			return fw_count(FW_ST_FRAG_ORPHAN, FW_TCX_DROP);
		fw_count_rule(fv->slot, len);
		if (fv->action == FW_ACT_ALLOW)
			return fw_count(FW_ST_FRAG_ALLOW, FW_TCX_NEXT);
		return fw_count(FW_ST_FRAG_DENY, FW_TCX_DROP);
	}

	__u64 ck[6];

	if (flags & QBO_PKT_ICMP_ERR) {
		/* The quoted packet is a flow's packet (either direction). */
		fw_ct_fill(ck, ifindex, family, pkt->inner.proto, pkt->inner.saddr, pkt->inner.sport,
			   pkt->inner.daddr, pkt->inner.dport, 0);
		__u64 ih = fw_ct_hash(ck);
		struct fw_ct_set *is = fw_ct_set(ih);
		if (is && fw_ct_find(is, ck, ih))
			return fw_count(FW_ST_ICMP_RELATED, FW_TCX_NEXT);
	}

	__u8 proto = pkt->proto;
	__u8 from_b =
		fw_ct_fill(ck, ifindex, family, proto, pkt->saddr, pkt->sport, pkt->daddr, pkt->dport, plain == 1);
	__u64 ch = fw_ct_hash(ck);
	struct fw_ct_set *cs = fw_ct_set(ch);
	if (!cs)
		return fw_count(FW_ST_UNATTACHED, FW_TCX_NEXT);
	__u64 hit = fw_ct_find(cs, ck, ch);
	int reply = hit && ((hit >> 40) & 1) != from_b;
	if (hit && (!reeval || (__u32)hit == generation)) {
		fw_frag_allow(ifindex, pkt, flags);
		return fw_count(reply ? FW_ST_CT_REPLY : FW_ST_CT_ESTABLISHED, FW_TCX_NEXT);
	}

	/* A new flow, or a tracked one to judge again by a newer rule set
	 * (as its first direction was judged, at the hook it was seen). */
	__u8 fproto = proto == QBO_IPPROTO_ICMPV6 ? QBO_IPPROTO_ICMP : proto;
	__u32 fsrc = reply ? pkt->daddr[0] : pkt->saddr[0];
	__u32 fdst = reply ? pkt->saddr[0] : pkt->daddr[0];
	__be16 fport = reply ? pkt->sport : ((flags & QBO_PKT_PORTS) ? pkt->dport : 0);
	struct fw_fields *f = 0;
	if (plain != 1) {
		if (plain == 2) {
			/* The plain IPv6 copy's fields go to the scratch value
			 * (fw_probe6 reads them from memory): looked up only
			 * for a packet that is classified. */
			__u32 z = 0;
			scr = bpf_map_lookup_elem(&fw_scratch, &z);
			if (!scr) /* never: a per-CPU array's key 0 */
				return fw_count(FW_ST_UNATTACHED, FW_TCX_NEXT);
		}
		f = &scr->f;
		f->family = family;
		f->proto = fproto;
		f->dport = fport;
		__builtin_memcpy(f->saddr, reply ? pkt->daddr : pkt->saddr, 16);
		__builtin_memcpy(f->daddr, reply ? pkt->saddr : pkt->daddr, 16);
	}
	__u32 class_hook = hook;
	if (hit)
		class_hook = (hit >> 32) & 1;
	struct fw_rule r = {}; /* every path defined: the verifier refuses copies of undefined registers */
	int class = fw_classify(gen, seed, ifindex, class_hook, f, family, fsrc, fdst, fport, fproto, &r);

	if (hit) {
		if (class == FW_CLASS_UNATTACHED || r.action == FW_ACT_ALLOW) {
			fw_ct_update(cs, ck, ch, generation, 0);
			fw_frag_allow(ifindex, pkt, flags);
			return fw_count(reply ? FW_ST_CT_REPLY : FW_ST_CT_ESTABLISHED, FW_TCX_NEXT);
		}
		fw_ct_update(cs, ck, ch, 0, 1);
		fw_count_rule(r.slot, len);
		return fw_count(FW_ST_REEVAL_DENY, FW_TCX_DROP);
	}

	if (class == FW_CLASS_UNATTACHED)
		return fw_count(FW_ST_UNATTACHED, FW_TCX_NEXT);
	fw_count_rule(r.slot, len);

	if (flags & QBO_PKT_FRAG) {
		struct fw_frag_key fk;
		struct fw_frag_val fv = {.action = r.action, .slot = r.slot};
		fw_frag_key(&fk, ifindex, pkt);
		bpf_map_update_elem(&fw_frags, &fk, &fv, BPF_ANY);
	}
	if (r.action == FW_ACT_ALLOW) {
		fw_ct_insert(cs, ck, ch, generation, hook, from_b);
		return fw_count(class == FW_CLASS_RULE ? FW_ST_RULE_ALLOW : FW_ST_DEFAULT_ALLOW,
				FW_TCX_NEXT);
	}
	if (r.log)
		fw_log_deny(ifindex, len, hook, pkt, r.slot);
	return fw_count(class == FW_CLASS_RULE ? FW_ST_RULE_DENY : FW_ST_DEFAULT_DENY, FW_TCX_DROP);
}

/* fw_judge decides one packet seen at (ifindex, hook); len is counted in
 * the rule's byte counter. It returns FW_TCX_NEXT or FW_TCX_DROP. */
static __always_inline int fw_judge(void *data, void *data_end, __u32 ifindex, __u32 len, __u32 hook)
{
	struct qbo_pkt plain;
	if (qbo_parse_plain4(data, data_end, &plain))
		return fw_decide(0, &plain, ifindex, len, hook, 1);
	if (qbo_parse_plain6(data, data_end, &plain))
		return fw_decide(0, &plain, ifindex, len, hook, 2);

	__u32 zero = 0;
	struct fw_scratch *scr = bpf_map_lookup_elem(&fw_scratch, &zero);
	if (!scr) /* never: a per-CPU array's key 0 */
		return fw_count(FW_ST_UNATTACHED, FW_TCX_NEXT);
	struct qbo_pkt *pkt = &scr->pkt;

	switch (qbo_parse(data, data_end, pkt)) {
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
	return fw_decide(scr, pkt, ifindex, len, hook, 0);
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
