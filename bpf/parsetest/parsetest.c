//go:build ignore

/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * parsetest: runs parse.h's parsers on one frame and keeps both
 * results in parse_out, for bpf/parsetest's tests.
 */
#include "qbo_vmlinux.h"
#include "qbo_uapi.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "parse.h"

char __license[] SEC("license") = "Dual BSD/GPL";

struct parse_result {
	struct qbo_pkt general; /* filled by qbo_parse */
	struct qbo_pkt plain;   /* filled by qbo_parse_plain4 */
	__s32 result;           /* qbo_parse's result */
	__s32 plain_ok;         /* qbo_parse_plain4's result */
	struct qbo_pkt plain6;  /* filled by qbo_parse_plain6 */
	__s32 plain6_ok;        /* qbo_parse_plain6's result */
	__s32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct parse_result);
} parse_out SEC(".maps");

SEC("xdp")
int parse_both(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 zero = 0;
	struct parse_result *o = bpf_map_lookup_elem(&parse_out, &zero);
	if (!o)
		return XDP_DROP;
	/* Whole structs, inner included: a field one parser leaves alone
	 * compares equal only if the other leaves it alone too. */
	__builtin_memset(&o->general, 0, sizeof(o->general));
	__builtin_memset(&o->plain, 0, sizeof(o->plain));
	__builtin_memset(&o->plain6, 0, sizeof(o->plain6));
	o->result = qbo_parse(data, data_end, &o->general);
	o->plain_ok = qbo_parse_plain4(data, data_end, &o->plain);
	o->plain6_ok = qbo_parse_plain6(data, data_end, &o->plain6);
	return XDP_PASS;
}
