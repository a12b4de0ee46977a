//go:build ignore

/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * qbo kernel telemetry: process lifecycle, TCP state changes and packet
 * drops, written as records to the shared "events" ring buffer.
 *
 * Every program is tp_btf (a BTF raw tracepoint): no kprobes or tracefs are
 * needed, arguments are typed kernel pointers, and the attachment is a BPF
 * link that the loader pins so that telemetry outlives qbod.
 */
#include "qbo_vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include "events.h"
#include "qbo_net.h"

char __license[] SEC("license") = "Dual BSD/GPL";

/* The task an event is about (or, for drops, whatever task was running). */
struct task_ctx {
	__u64 cgroup_id; /* cgroup v2 id */
	__u32 pid;       /* thread group id, what userspace calls the pid */
	__u32 tid;       /* kernel task id */
	__u32 uid;
	__u32 gid;
	char comm[16];
};

struct exec_event {
	struct qbo_event_hdr hdr;
	struct task_ctx task;
	__u32 ppid;
	__u32 old_tid; /* the thread that called execve; task.tid after de_thread */
	char filename[256];
};

struct fork_event {
	struct qbo_event_hdr hdr;
	struct task_ctx task; /* the parent, which is current */
	__u32 child_pid;
	__u32 child_tid;
	__u8 thread; /* clone(CLONE_THREAD): the child joined the parent's group */
	__u8 _pad[7];
};

struct exit_event {
	struct qbo_event_hdr hdr;
	struct task_ctx task;
	__s32 exit_code; /* task->exit_code, in wait(2) status form */
	__u8 group_dead; /* the last thread of the group is exiting */
	__u8 _pad[3];
};

struct tcp_event {
	struct qbo_event_hdr hdr;
	struct task_ctx task; /* the socket's owner (see struct sk_owner), zero if unknown */
	__u64 skaddr;         /* socket address: an opaque per-connection cookie */
	__u8 saddr[16];       /* local address, network order; 4 bytes used for IPv4 */
	__u8 daddr[16];       /* remote address */
	__u16 sport;          /* local port, host order; 0 until connect picks it */
	__u16 dport;          /* remote port, host order */
	__u8 family;          /* 4 or 6 */
	__u8 oldstate;
	__u8 newstate;
	__u8 _pad;
	__u32 netns;          /* inode number of the socket's network namespace */
	__u32 _pad2;
};

struct drop_event {
	struct qbo_event_hdr hdr;
	struct task_ctx task; /* current: often unrelated (softirq) */
	__u64 location;       /* kernel text address that freed the skb */
	__u32 reason;         /* enum skb_drop_reason */
	__u32 ifindex;        /* skb->dev, 0 if none */
	__u32 netns;          /* inode number of the device's (or socket's) netns */
	__u16 eth_proto;      /* skb->protocol, host order */
	__u8 l4_proto;        /* IP protocol, 0 if the packet did not parse */
	__u8 family;          /* 4 or 6 if an IP header parsed, else 0 */
	__u8 saddr[16];       /* network order; 4 bytes used for IPv4 */
	__u8 daddr[16];
	__u16 sport;          /* host order, TCP and UDP only */
	__u16 dport;
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, QBO_EV_KIND_MAX);
	__type(key, __u32);
	__type(value, struct qbo_kind_stat);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} trace_stats SEC(".maps");

/*
 * What is remembered of a TCP socket between its state changes. TCP state
 * changes mostly run in softirq, where current is whoever was interrupted,
 * so the owner is recorded when the socket is driven from process context
 * (connect: SYN_SENT, listen: LISTEN) or inherited from its listener
 * (SYN_RECV). The local port is kept because the kernel releases it before
 * the CLOSE transition fires.
 */
struct sk_owner {
	struct task_ctx task;
	__u16 lport; /* last non-zero local port seen, host order */
	__u8 _pad[6];
};

/*
 * Socket address -> sk_owner, dropped at CLOSE. LRU so that sockets whose
 * CLOSE was never seen (closed while the programs were being replaced) age
 * out.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct sk_owner);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} trace_sk_owner SEC(".maps");

struct listen_key {
	__u32 netns;
	__u16 port; /* host order */
	__u16 _pad;
};

struct listen_val {
	__u64 skaddr; /* the listener, so only its own CLOSE removes the entry */
	struct task_ctx owner;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct listen_key);
	__type(value, struct listen_val);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} trace_listen SEC(".maps");

static __always_inline void task_ctx_current(struct task_ctx *t)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	__u64 uid_gid = bpf_get_current_uid_gid();

	t->cgroup_id = bpf_get_current_cgroup_id();
	t->pid = pid_tgid >> 32;
	t->tid = (__u32)pid_tgid;
	t->uid = (__u32)uid_gid;
	t->gid = uid_gid >> 32;
	bpf_get_current_comm(t->comm, sizeof(t->comm));
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(sched_process_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	struct exec_event *e;

	e = qbo_event_reserve(&trace_stats, QBO_EV_EXEC, QBO_EVENT_V1, sizeof(*e));
	if (!e)
		return 0;

	/* current is p, and after de_thread it has the leader's pid. */
	task_ctx_current(&e->task);
	e->ppid = BPF_CORE_READ(p, real_parent, tgid);
	e->old_tid = old_pid;
	if (bpf_probe_read_kernel_str(e->filename, sizeof(e->filename), BPF_CORE_READ(bprm, filename)) < 0)
		e->filename[0] = '\0';

	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(sched_process_fork, struct task_struct *parent, struct task_struct *child)
{
	struct fork_event *e;
	__u32 child_pid, child_tid;

	e = qbo_event_reserve(&trace_stats, QBO_EV_FORK, QBO_EVENT_V1, sizeof(*e));
	if (!e)
		return 0;

	child_pid = BPF_CORE_READ(child, tgid);
	child_tid = BPF_CORE_READ(child, pid);

	/* kernel_clone fires this in the parent, so current is parent. */
	task_ctx_current(&e->task);
	e->child_pid = child_pid;
	e->child_tid = child_tid;
	e->thread = child_pid != child_tid;
	__builtin_memset(e->_pad, 0, sizeof(e->_pad));

	bpf_ringbuf_submit(e, 0);
	return 0;
}

/*
 * Recent kernels (6.18 here) pass group_dead to the tracepoint; the CO-RE
 * type match below checks the running kernel's prototype for it. Where the
 * prototype lacks it, the group is dead when signal->live has dropped to
 * zero: do_exit decrements it before it fires the tracepoint. (The local
 * struct task_struct must stay matchable for this: e.g. no char members,
 * since the kernel is built with -funsigned-char and clang for BPF is not.)
 */
typedef void (*btf_trace_sched_process_exit___group_dead)(void *, struct task_struct *, bool);

SEC("tp_btf/sched_process_exit")
int BPF_PROG(sched_process_exit, struct task_struct *p)
{
	struct exit_event *e;
	__u8 group_dead;

	if (bpf_core_type_matches(btf_trace_sched_process_exit___group_dead))
		group_dead = (__u8)ctx[1] != 0;
	else
		group_dead = BPF_CORE_READ(p, signal, live.counter) == 0;

	e = qbo_event_reserve(&trace_stats, QBO_EV_EXIT, QBO_EVENT_V1, sizeof(*e));
	if (!e)
		return 0;

	task_ctx_current(&e->task);
	e->exit_code = BPF_CORE_READ(p, exit_code);
	e->group_dead = group_dead;
	__builtin_memset(e->_pad, 0, sizeof(e->_pad));

	bpf_ringbuf_submit(e, 0);
	return 0;
}

static __always_inline __u32 sock_netns(struct sock *sk)
{
	return BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(inet_sock_set_state, struct sock *sk, int oldstate, int newstate)
{
	struct sk_owner so = {};
	struct listen_key lk = {};
	struct listen_val *lv;
	struct sk_owner *o;
	struct tcp_event *e;
	__u64 skaddr = (__u64)sk;
	__u16 family, lport;

	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family != AF_INET && family != AF_INET6)
		return 0;

	lport = BPF_CORE_READ(sk, __sk_common.skc_num);
	lk.netns = sock_netns(sk);

	if (newstate == TCP_SYN_SENT || newstate == TCP_LISTEN) {
		/* connect() and listen(): process context, current owns sk. */
		task_ctx_current(&so.task);
		so.lport = lport;
		bpf_map_update_elem(&trace_sk_owner, &skaddr, &so, BPF_ANY);
		if (newstate == TCP_LISTEN) {
			struct listen_val v = { .skaddr = skaddr, .owner = so.task };

			lk.port = lport;
			bpf_map_update_elem(&trace_listen, &lk, &v, BPF_ANY);
		}
	} else {
		o = bpf_map_lookup_elem(&trace_sk_owner, &skaddr);
		if (o) {
			so.task = o->task;
			if (lport)
				o->lport = lport;
			else
				lport = o->lport;
		} else if (newstate == TCP_SYN_RECV) {
			/* A passive open: the child is cloned from its listener. */
			lk.port = lport;
			lv = bpf_map_lookup_elem(&trace_listen, &lk);
			if (lv) {
				so.task = lv->owner;
				so.lport = lport;
				bpf_map_update_elem(&trace_sk_owner, &skaddr, &so, BPF_ANY);
			}
		}
	}

	if (newstate == TCP_CLOSE) {
		bpf_map_delete_elem(&trace_sk_owner, &skaddr);
		if (oldstate == TCP_LISTEN) {
			lk.port = lport;
			lv = bpf_map_lookup_elem(&trace_listen, &lk);
			/* Only its own listener: SO_REUSEPORT siblings share the key. */
			if (lv && lv->skaddr == skaddr)
				bpf_map_delete_elem(&trace_listen, &lk);
		}
	}

	e = qbo_event_reserve(&trace_stats, QBO_EV_TCP_STATE, QBO_EVENT_V1, sizeof(*e));
	if (!e)
		return 0;

	e->task = so.task;
	e->skaddr = skaddr;
	__builtin_memset(e->saddr, 0, sizeof(e->saddr));
	__builtin_memset(e->daddr, 0, sizeof(e->daddr));
	if (family == AF_INET) {
		__be32 a;

		a = BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr);
		__builtin_memcpy(e->saddr, &a, sizeof(a));
		a = BPF_CORE_READ(sk, __sk_common.skc_daddr);
		__builtin_memcpy(e->daddr, &a, sizeof(a));
		e->family = 4;
	} else {
		BPF_CORE_READ_INTO(&e->saddr, sk, __sk_common.skc_v6_rcv_saddr);
		BPF_CORE_READ_INTO(&e->daddr, sk, __sk_common.skc_v6_daddr);
		e->family = 6;
	}
	e->sport = lport;
	e->dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	e->oldstate = oldstate;
	e->newstate = newstate;
	e->_pad = 0;
	e->netns = lk.netns;
	e->_pad2 = 0;

	bpf_ringbuf_submit(e, 0);
	return 0;
}

/*
 * Fills in the addresses and ports of the IP packet in skb's linear data.
 * Every read goes through bpf_probe_read_kernel and is checked against the
 * end of the linear data first, so a truncated or garbled packet (or an
 * unset network header) leaves family 0 or ports 0, never a bogus tuple.
 * IPv6 extension headers are not walked: l4_proto is then the first next
 * header and the ports stay 0.
 */
static __always_inline void drop_parse(struct drop_event *e, struct sk_buff *skb)
{
	unsigned char *head = BPF_CORE_READ(skb, head);
	__u32 tail = BPF_CORE_READ(skb, tail);
	__u32 nh = BPF_CORE_READ(skb, network_header);
	__u16 proto = e->eth_proto;
	struct qbo_l4ports ports;
	__u32 l4off;

	if (!head || nh == (__u16)~0U)
		return;

	if (proto != ETH_P_IP && proto != ETH_P_IPV6) {
		/* Locally built packets may not have skb->protocol set yet. */
		__u8 ver;

		if (nh + 1 > tail || bpf_probe_read_kernel(&ver, 1, head + nh))
			return;
		if (ver >> 4 == 4)
			proto = ETH_P_IP;
		else if (ver >> 4 == 6)
			proto = ETH_P_IPV6;
		else
			return;
	}

	if (proto == ETH_P_IP) {
		struct qbo_iphdr iph;
		__u32 ihl;

		if (nh + sizeof(iph) > tail || bpf_probe_read_kernel(&iph, sizeof(iph), head + nh))
			return;
		ihl = iph.ver_ihl & 0xf;
		if (iph.ver_ihl >> 4 != 4 || ihl < 5)
			return;
		e->family = 4;
		e->l4_proto = iph.protocol;
		__builtin_memcpy(e->saddr, iph.saddr, sizeof(iph.saddr));
		__builtin_memcpy(e->daddr, iph.daddr, sizeof(iph.daddr));
		if (bpf_ntohs(iph.frag_off) & QBO_IP_OFFMASK)
			return; /* a later fragment carries no L4 header */
		l4off = nh + ihl * 4;
	} else {
		struct qbo_ipv6hdr ip6;

		if (nh + sizeof(ip6) > tail || bpf_probe_read_kernel(&ip6, sizeof(ip6), head + nh))
			return;
		if (bpf_ntohl(ip6.ver_tc_flow) >> 28 != 6)
			return;
		e->family = 6;
		e->l4_proto = ip6.nexthdr;
		__builtin_memcpy(e->saddr, ip6.saddr, sizeof(ip6.saddr));
		__builtin_memcpy(e->daddr, ip6.daddr, sizeof(ip6.daddr));
		l4off = nh + sizeof(ip6);
	}

	if (e->l4_proto != IPPROTO_TCP && e->l4_proto != IPPROTO_UDP)
		return;
	if (l4off + sizeof(ports) > tail || bpf_probe_read_kernel(&ports, sizeof(ports), head + l4off))
		return;
	e->sport = bpf_ntohs(ports.source);
	e->dport = bpf_ntohs(ports.dest);
}

/* The fourth argument (rx_sk, since 6.12) is not needed and not declared. */
SEC("tp_btf/kfree_skb")
int BPF_PROG(kfree_skb, struct sk_buff *skb, void *location, __u32 reason)
{
	struct net_device *dev;
	struct drop_event *e;
	struct sock *sk;

	e = qbo_event_reserve(&trace_stats, QBO_EV_DROP, QBO_EVENT_V1, sizeof(*e));
	if (!e)
		return 0;

	task_ctx_current(&e->task);
	e->location = (__u64)location;
	e->reason = reason;
	e->ifindex = 0;
	e->netns = 0;
	e->eth_proto = bpf_ntohs(BPF_CORE_READ(skb, protocol));
	e->l4_proto = 0;
	e->family = 0;
	__builtin_memset(e->saddr, 0, sizeof(e->saddr));
	__builtin_memset(e->daddr, 0, sizeof(e->daddr));
	e->sport = 0;
	e->dport = 0;
	e->_pad = 0;

	/*
	 * skb->dev shares a union with dev_scratch (UDP reuses it on socket
	 * queues), so it is read with a probe read, which tolerates a value
	 * that is not a pointer.
	 */
	dev = BPF_CORE_READ(skb, dev);
	if (dev) {
		e->ifindex = BPF_CORE_READ(dev, ifindex);
		e->netns = BPF_CORE_READ(dev, nd_net.net, ns.inum);
	} else {
		sk = BPF_CORE_READ(skb, sk);
		if (sk)
			e->netns = sock_netns(sk);
	}
	drop_parse(e, skb);

	bpf_ringbuf_submit(e, 0);
	return 0;
}

/*
 * Never called and never loaded: its signature is what puts the record
 * types into the object's BTF, where bpf2go finds them (-type). Clang emits
 * BTF only for types that globals, maps or function signatures use.
 */
__attribute__((used)) void trace_record_types(struct exec_event *exec, struct fork_event *fork,
					       struct exit_event *exit, struct tcp_event *tcp,
					       struct drop_event *drop)
{
}
