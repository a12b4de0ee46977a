/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * lb_maps.h: the load balancer maps that bpf/lb and bpf/sock share. Both
 * objects declare them identically and pin them by name, so whichever loads
 * first creates them and the other reuses them: one set of services,
 * backends and Maglev tables for XDP and for the socket hooks.
 * Include after qbo_uapi.h, <bpf/bpf_helpers.h> and lb.h.
 */
#ifndef QBO_LB_MAPS_H
#define QBO_LB_MAPS_H

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, LB_MAX_SERVICES);
	__type(key, struct lb_svc_key);
	__type(value, struct lb_svc_val);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_svc SEC(".maps");

/* Backends by ID (an array: the lookup is inlined). A free ID's entry is
 * all zero (family 0, service 0: service IDs start at 1). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LB_MAX_BACKENDS);
	__uint(map_flags, 1U << 10); /* BPF_F_MMAPABLE: lb/datapath reads it through memory */
	__type(key, __u32);
	__type(value, struct lb_backend);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_backends2 SEC(".maps");

static __always_inline struct lb_backend *lb_backend_get(__u32 id)
{
	struct lb_backend *be = bpf_map_lookup_elem(&lb_backends2, &id);
	if (!be || be->service == 0)
		return 0;
	return be;
}

/* Maglev tables: one flat array; service S owns slots [S.offset,
 * S.offset + S.table_size). A table change writes a fresh range and then
 * switches the service entry to it (one hash update), so a packet sees the
 * old table or the new one, and no map-of-maps update (which waits for an
 * RCU grace period in the syscall) is needed. It is mmapable, so a table
 * is written with plain stores instead of one syscall element each. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LB_MAGLEV_SLOTS);
	__uint(map_flags, 1U << 10); /* BPF_F_MMAPABLE: lb/datapath writes tables through memory */
	__type(key, __u32);
	__type(value, __u32);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} lb_maglev SEC(".maps");

#endif /* QBO_LB_MAPS_H */
