/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * lb.h: the load balancer's map layouts, shared by bpf/lb (XDP + TC) and
 * bpf/sock (cgroup socket LB), and read by lb/datapath through bpf2go.
 * Addresses and ports are network order; IPv4 lives in addr[0].
 *
 * Change a struct => rename its map (lb_svc -> lb_svc2 ...), so that a new
 * qbod never reuses a pinned map of the old layout.
 */
#ifndef QBO_LB_H
#define QBO_LB_H

#define LB_MAX_SERVICES 131072
#define LB_MAX_BACKENDS 262144
#define LB_FLOWS 262144
#define LB_FRAGS 16384
/* Slots of the flat Maglev array shared by all services (4 bytes each);
 * lb/datapath allocates each service a range of table_size slots. The
 * loader may override the size. */
#define LB_MAGLEV_SLOTS (1 << 22)

struct lb_svc_key {
	__be32 addr[4];
	__be16 port;
	__u8 proto;
	__u8 family; /* 4 or 6 */
};

enum lb_svc_flags {
	LB_SVC_DSR = 1 << 0,
};

struct lb_svc_val {
	__u32 id;         /* service ID (flows and backends refer to it) */
	__u32 count;      /* backends in the table; 0 => drop new flows */
	__u32 table_size; /* Maglev table size, a prime */
	__u32 flags;      /* enum lb_svc_flags */
	__u32 offset;     /* first slot of its Maglev table in lb_maglev */
};

enum lb_backend_flags {
	LB_BE_DSR = 1 << 0,
	LB_BE_DRAINING = 1 << 1,
};

struct lb_backend {
	__be32 addr[4];
	__be16 port;
	__u8 family;
	__u8 pad;
	__u32 service; /* the service ID it belongs to */
	__u32 flags;   /* enum lb_backend_flags */
};

/* A flow as the client sent it (client -> VIP). 8-aligned: lb.c compares
 * keys as five 64-bit words. */
struct lb_flow_key {
	__be32 saddr[4];
	__be32 daddr[4];
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 family;
	__u16 pad;
} __attribute__((aligned(8)));

struct lb_flow {
	__u32 backend;
	__u32 service;
};

/* The flow table (lb_flows3) is set-associative: an array of sets of
 * LB_FLOW_WAYS entries, shared by all CPUs. Looking an entry up is an
 * inlined array access and a few compares, never a hash-map walk;
 * inserting replaces an empty way or the way least recently used (by the
 * set's clock), so the cost of a new flow does not change when the table
 * is full (the Maglev paper's fixed-size connection table). Entries are
 * written without locks: check covers the tag and the entry's payload, so
 * a reader that sees a torn concurrent write treats the entry as a miss.
 *
 * The set is chosen by a hash of the client's side of the flow only
 * (address, port, protocol: lb_client_hash in lb.c), which a reply (backend
 * -> client) has too. So one entry serves both directions: lb_xdp finds a
 * flow by its whole key, lb_revnat finds a NAT flow's reply in the same set
 * by the client and the backend, and a new NAT flow writes one entry, not
 * a flow entry and a reverse-NAT entry in two tables of 16 MiB (each write
 * a cache and TLB miss once the tables outgrow the caches). lb_flows3
 * replaced lb_flows2 (sets chosen by the whole key) and lb_rnat2 (the
 * replies' own sets); the loader copies both (lb_upgrade in lb.c).
 *
 * The price of a fixed set per client: a set holds at most LB_FLOW_WAYS
 * entries, so a fifth live flow of a set evicts the least recently used
 * one before the table is full (for random clients about 0.4% of them
 * with the table a quarter full, 4% half full, 20% full). The evicted
 * flow's next packet re-picks its backend by Maglev (the same one while
 * the backend set is unchanged), but a NAT flow's reply cannot re-derive
 * its VIP: so a NAT flow that is still in use moves its reply's
 * translation to lb_rnat_spill (lb.c) instead of losing it. Flows that
 * share the client's address and port (one UDP socket sending to several
 * VIPs) always share a set: from the fifth, they take turns in it. */
#define LB_FLOW_WAYS 4

/* A set's header (its first cache line): each way's tag and recency, so
 * that a lookup that misses reads one cache line, and a hit one more. */
struct lb_set_head {
	__u32 tag[LB_FLOW_WAYS];   /* high half of the key hash, | 1; 0 = empty */
	__u32 check[LB_FLOW_WAYS]; /* the table's check of tag and payload */
	__u32 used[LB_FLOW_WAYS];  /* the set's clock when the way was last used */
	__u32 clock;               /* advanced on every insert into the set */
	__u32 spilled;             /* a NAT flow of this set moved its reply to lb_rnat_spill */
	__u32 hit;                 /* bit i: way i was used after an insert into the set */
	__u32 pad;
};

/* lb_flows3: a client flow -> its backend. A reader that misses re-picks
 * by Maglev (the same backend while the backend set is unchanged). For a
 * NAT backend the entry is also the reply's translation: key.daddr and
 * key.dport are the VIP the reply leaves from. */
struct lb_flow_ent {
	struct lb_flow_key key;
	__u32 backend;
	__u32 service;
};

/* 256 bytes: the header and four 48-byte entries. */
struct lb_flow_set {
	struct lb_set_head head;
	struct lb_flow_ent way[LB_FLOW_WAYS];
};

/* lb_vipf, the VIP filter: bit (lb_vip_hash(addr, port, proto, family) >>
 * (32 - LB_VIPF_SHIFT)) is set for every service, so most packets that are
 * not to a service leave after one inlined array read. */
#define LB_VIPF_SHIFT 20
#define LB_VIPF_BITS (1 << LB_VIPF_SHIFT)

/* The reply of a NATed flow (backend -> client) maps back to the VIP: the
 * value of lb_rnat_spill, and of the older reverse-NAT tables lb_rnat (an
 * LRU hash) and lb_rnat2 (sets of struct lb_rnat_ent, chosen by the whole
 * reply key), which lb_upgrade reads when an older qbo left them pinned. */
struct lb_rnat_val {
	__be32 vip[4];
	__be16 vport;
	__u16 pad;
};

/* lb_rnat2's layout (the reply's 5-tuple -> the VIP), read by lb_upgrade. */
struct lb_rnat_ent {
	struct lb_flow_key key;
	struct lb_rnat_val val;
};

struct lb_rnat_set {
	struct lb_set_head head;
	struct lb_rnat_ent way[LB_FLOW_WAYS];
};

/* The context of lb_upgrade (a syscall program): what it did. */
struct lb_upgrade_stats {
	__u32 flows;    /* flows copied from lb_flows2 into lb_flows3 */
	__u32 replies;  /* replies of lb_rnat2 / lb_rnat whose flow lb_flows3 lacks: into lb_rnat_spill */
	__u32 present;  /* already there (written by lb_xdp, or a previous run) */
	__u32 replaced; /* copied flows that took the way of another flow: their set was full */
};

/* A fragmented datagram, so that later fragments (no ports) follow the
 * first. */
struct lb_frag_key {
	__be32 saddr[4];
	__be32 daddr[4];
	__be32 id;
	__u8 proto;
	__u8 family;
	__u16 pad;
};

/* Counters: one per defined verdict of every path (see lb.c's table). */
enum lb_stat {
	LB_ST_PASS_NOT_IP = 0,
	LB_ST_DROP_TRUNCATED,
	LB_ST_DROP_BAD_VERSION,
	LB_ST_DROP_BAD_IHL,
	LB_ST_PASS_EXT_LIMIT,
	LB_ST_PASS_NO_SERVICE,
	LB_ST_NEW_FLOW,
	LB_ST_EST_FLOW,
	LB_ST_DROP_NO_BACKEND,
	LB_ST_IPOPTS,
	LB_ST_EXTHDRS,
	LB_ST_FRAG_FIRST,
	LB_ST_FRAG_LATER,
	LB_ST_PASS_FRAG_MISS,
	LB_ST_ICMP_ERR,
	LB_ST_PASS_ICMP_ERR_MISS,
	LB_ST_NAT,
	LB_ST_DSR,
	LB_ST_DROP_DSR_FIB,
	LB_ST_DROP_DSR_VLAN,
	LB_ST_DROP_DSR_HEADROOM,
	LB_ST_DROP_PREFILTER,
	LB_ST_REVNAT,
	LB_ST_DROP_FLOW_FULL,
	LB_ST_RNAT_SPILL, /* an evicted NAT flow in use: its reply moved to lb_rnat_spill */
	LB_ST_RNAT_STALE, /* an evicted NAT flow no longer in use: its reply is dropped */
	LB_ST_REVNAT_PULL, /* lb_revnat pulled headers past the skb's linear part */
	LB_ST_MAX,
};

/* lb_stats2 has room for counters added later, so that adding one does
 * not change the pinned map's size (lb_stats, its predecessor, was sized
 * LB_ST_MAX; the loader copies its counts). */
#define LB_ST_SLOTS 64
_Static_assert(LB_ST_MAX <= LB_ST_SLOTS, "lb_stats2 is too small");

struct lb_stat_val {
	__u64 packets;
};

#endif /* QBO_LB_H */
