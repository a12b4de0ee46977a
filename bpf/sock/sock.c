//go:build ignore

/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * qbo socket-level load balancer: cgroup v2 hooks at the root of the
 * unified hierarchy, so that every process of the node (host or container)
 * that connects or sends to a VIP talks to a backend directly. The choice is
 * made once per socket, at connect() (or per sendmsg() for unconnected UDP);
 * established connections then pay nothing per packet.
 *
 *   connect4/6    VIP:port -> backend (Maglev slot from the socket cookie)
 *   sendmsg4/6    the same for unconnected UDP
 *   recvmsg4/6    UDP replies from the backend appear to come from the VIP
 *   getpeername4/6 the peer is reported as the VIP
 *
 * The services, backends and Maglev maps are bpf/lb's (lb_maps.h, pinned by
 * name). Every hook returns 1 (allow): the balancer never refuses a call.
 */
#include "qbo_vmlinux.h"
#include "qbo_uapi.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "lb.h"
#include "lb_maps.h"

char __license[] SEC("license") = "Dual BSD/GPL";

/* What a socket was balanced to, for recvmsg/getpeername and for finding
 * the sockets of a deleted backend. */
struct lb_sock_nat_val {
	__be32 vip[4];
	__be32 addr[4]; /* backend */
	__be16 vport;
	__be16 port; /* backend */
	__u32 backend;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, LB_FLOWS);
	__type(key, __u64); /* socket cookie */
	__type(value, struct lb_sock_nat_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_sock_nat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 4);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_sock_stats SEC(".maps");

enum lb_sock_stat {
	LB_SOCK_BALANCED = 0, /* connect/sendmsg rewritten to a backend */
	LB_SOCK_NO_BACKEND = 1, /* VIP without backends: left as is */
	LB_SOCK_REVERSED = 2, /* recvmsg/getpeername rewritten to the VIP */
	LB_SOCK_DESTROYED = 3, /* sockets of a deleted backend terminated */
};

static __always_inline void sock_count(__u32 st)
{
	__u64 *v = bpf_map_lookup_elem(&lb_sock_stats, &st);
	if (v)
		*v += 1;
}

static __always_inline __u32 cookie_hash(__u64 c)
{
	c ^= c >> 33;
	c *= 0xff51afd7ed558ccdULL;
	c ^= c >> 33;
	c *= 0xc4ceb9fe1a85ec53ULL;
	c ^= c >> 33;
	return (__u32)c;
}

static __always_inline int sock_balance(struct bpf_sock_addr *ctx, int family)
{
	struct lb_svc_key k = {};
	if (family == 4) {
		k.addr[0] = ctx->user_ip4;
	} else {
		k.addr[0] = ctx->user_ip6[0];
		k.addr[1] = ctx->user_ip6[1];
		k.addr[2] = ctx->user_ip6[2];
		k.addr[3] = ctx->user_ip6[3];
	}
	k.port = (__be16)ctx->user_port;
	k.proto = ctx->protocol;
	k.family = family;
	struct lb_svc_val *svc = bpf_map_lookup_elem(&lb_svc, &k);
	if (!svc)
		return 1;
	if (svc->count == 0 || svc->table_size == 0) {
		sock_count(LB_SOCK_NO_BACKEND);
		return 1;
	}
	__u64 cookie = bpf_get_socket_cookie(ctx);
	__u32 slot = svc->offset + cookie_hash(cookie) % svc->table_size;
	__u32 *bid = bpf_map_lookup_elem(&lb_maglev, &slot);
	if (!bid) {
		sock_count(LB_SOCK_NO_BACKEND);
		return 1;
	}
	__u32 id = *bid;
	struct lb_backend *be = lb_backend_get(id);
	if (!be || be->family != family) {
		sock_count(LB_SOCK_NO_BACKEND);
		return 1;
	}
	struct lb_sock_nat_val nat = {.vport = k.port, .port = be->port, .backend = id};
	__builtin_memcpy(nat.vip, k.addr, 16);
	__builtin_memcpy(nat.addr, be->addr, 16);
	bpf_map_update_elem(&lb_sock_nat, &cookie, &nat, BPF_ANY);
	if (family == 4) {
		ctx->user_ip4 = be->addr[0];
	} else {
		ctx->user_ip6[0] = be->addr[0];
		ctx->user_ip6[1] = be->addr[1];
		ctx->user_ip6[2] = be->addr[2];
		ctx->user_ip6[3] = be->addr[3];
	}
	ctx->user_port = be->port;
	sock_count(LB_SOCK_BALANCED);
	return 1;
}

/* sock_reverse makes a backend address the socket talks to read as the VIP
 * it was balanced from. */
static __always_inline int sock_reverse(struct bpf_sock_addr *ctx, int family)
{
	__u64 cookie = bpf_get_socket_cookie(ctx);
	struct lb_sock_nat_val *nat = bpf_map_lookup_elem(&lb_sock_nat, &cookie);
	if (!nat)
		return 1;
	if ((__be16)ctx->user_port != nat->port)
		return 1;
	if (family == 4) {
		if (ctx->user_ip4 != nat->addr[0])
			return 1;
		ctx->user_ip4 = nat->vip[0];
	} else {
		if (ctx->user_ip6[0] != nat->addr[0] || ctx->user_ip6[1] != nat->addr[1] ||
		    ctx->user_ip6[2] != nat->addr[2] || ctx->user_ip6[3] != nat->addr[3])
			return 1;
		ctx->user_ip6[0] = nat->vip[0];
		ctx->user_ip6[1] = nat->vip[1];
		ctx->user_ip6[2] = nat->vip[2];
		ctx->user_ip6[3] = nat->vip[3];
	}
	ctx->user_port = nat->vport;
	sock_count(LB_SOCK_REVERSED);
	return 1;
}

SEC("cgroup/connect4")
int sock_connect4(struct bpf_sock_addr *ctx) { return sock_balance(ctx, 4); }

SEC("cgroup/connect6")
int sock_connect6(struct bpf_sock_addr *ctx) { return sock_balance(ctx, 6); }

SEC("cgroup/sendmsg4")
int sock_sendmsg4(struct bpf_sock_addr *ctx) { return sock_balance(ctx, 4); }

SEC("cgroup/sendmsg6")
int sock_sendmsg6(struct bpf_sock_addr *ctx) { return sock_balance(ctx, 6); }

SEC("cgroup/recvmsg4")
int sock_recvmsg4(struct bpf_sock_addr *ctx) { return sock_reverse(ctx, 4); }

SEC("cgroup/recvmsg6")
int sock_recvmsg6(struct bpf_sock_addr *ctx) { return sock_reverse(ctx, 6); }

SEC("cgroup/getpeername4")
int sock_getpeer4(struct bpf_sock_addr *ctx) { return sock_reverse(ctx, 4); }

SEC("cgroup/getpeername6")
int sock_getpeer6(struct bpf_sock_addr *ctx) { return sock_reverse(ctx, 6); }

/* ---- terminating the sockets of a deleted backend ----
 *
 * lb/datapath writes the backend ID into lb_sock_kill and runs these
 * iterators once over every TCP and UDP socket of the node: a socket that
 * connect4/6 balanced to that backend (found by its cookie in lb_sock_nat)
 * is destroyed (bpf_sock_destroy: the application sees ECONNABORTED), so
 * it reconnects and is balanced again, instead of talking to a backend
 * that is gone. A service with "drain" skips this. */

struct bpf_iter_meta;
struct udp_sock;

struct bpf_iter__tcp {
	struct bpf_iter_meta *meta;
	struct sock_common *sk_common;
	__u32 uid;
} __attribute__((preserve_access_index));

struct bpf_iter__udp {
	struct bpf_iter_meta *meta;
	struct udp_sock *udp_sk;
	__u32 uid;
	int bucket;
} __attribute__((preserve_access_index));

extern int bpf_sock_destroy(struct sock_common *sk) __ksym;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} lb_sock_kill SEC(".maps");

static __always_inline void sock_kill(struct sock_common *sk)
{
	__u32 zero = 0;
	__u32 *target = bpf_map_lookup_elem(&lb_sock_kill, &zero);
	if (!target || *target == 0)
		return;
	__u64 cookie = bpf_get_socket_cookie(sk);
	struct lb_sock_nat_val *nat = bpf_map_lookup_elem(&lb_sock_nat, &cookie);
	if (!nat || nat->backend != *target)
		return;
	if (bpf_sock_destroy(sk) == 0)
		sock_count(LB_SOCK_DESTROYED);
}

SEC("iter/tcp")
int sock_kill_tcp(struct bpf_iter__tcp *ctx)
{
	struct sock_common *sk = ctx->sk_common;
	if (sk)
		sock_kill(sk);
	return 0;
}

SEC("iter/udp")
int sock_kill_udp(struct bpf_iter__udp *ctx)
{
	struct sock_common *sk = (struct sock_common *)ctx->udp_sk;
	if (sk)
		sock_kill(sk);
	return 0;
}
