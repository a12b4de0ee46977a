/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The telemetry ring buffer shared by every qbo BPF object, and the header
 * that starts every record written to it.
 *
 * bpf/trace creates the ring and pins it as <pin dir>/events; any other
 * object that includes this file declares the same map (same name, type and
 * size) and its loader hands it the trace object's map through
 * CollectionOptions.MapReplacements, so there is exactly one ring and one
 * reader. A consumer switches on hdr.kind and checks hdr.version before it
 * trusts the rest of the record.
 */
#ifndef QBO_EVENTS_H
#define QBO_EVENTS_H

/* Include after qbo_vmlinux.h and <bpf/bpf_helpers.h>. */

/*
 * Kinds are ABI: never renumber, only append. 1..15 belong to bpf/trace,
 * 16..31 to bpf/lb, 32..47 to bpf/fw. The enum is packed so that it is one
 * byte in the header and bpf2go still sees its name and values.
 */
enum __attribute__((packed)) qbo_event_kind {
	QBO_EV_NONE = 0,
	QBO_EV_EXEC = 1,
	QBO_EV_FORK = 2,
	QBO_EV_EXIT = 3,
	QBO_EV_TCP_STATE = 4,
	QBO_EV_DROP = 5,

	/* bpf/fw: a packet denied by a rule marked log (struct fw_deny_event). */
	QBO_EV_FW_DENY = 32,

	/* Size of per-kind counter arrays; keep above every kind in use. */
	QBO_EV_KIND_MAX = 64,
};

/*
 * Layout version of a record of a given kind. A kind whose struct changes
 * incompatibly gets the next version (and, if its pinned maps change too,
 * new map names); a decoder rejects versions it does not know.
 */
enum __attribute__((packed)) qbo_event_version {
	QBO_EVENT_V1 = 1,
};

struct qbo_event_hdr {
	enum qbo_event_kind kind;
	enum qbo_event_version version;
	__u16 size;   /* sizeof the whole record, header included */
	__u32 cpu;    /* CPU that wrote it: the ring orders by reservation, not by time */
	__u64 ts_ns;  /* bpf_ktime_get_boot_ns(): CLOCK_BOOTTIME, keeps counting in suspend */
};

/* Per-CPU, per-kind counters of what an object emitted and lost. */
struct qbo_kind_stat {
	__u64 emitted; /* records reserved and submitted */
	__u64 lost;    /* bpf_ringbuf_reserve failures: the ring was full */
};

#define QBO_EVENTS_RING_SIZE (4 << 20)

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, QBO_EVENTS_RING_SIZE);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} events SEC(".maps");

/*
 * qbo_event_reserve reserves a record of size bytes for kind, fills in its
 * header and counts the outcome in stats (a per-CPU array of struct
 * qbo_kind_stat indexed by kind). It returns NULL when the ring is full; the
 * caller fills in the rest and calls bpf_ringbuf_submit. size must be a
 * compile-time constant (the verifier requires it of bpf_ringbuf_reserve).
 */
static __always_inline void *qbo_event_reserve(void *stats, enum qbo_event_kind kind,
						enum qbo_event_version version, __u16 size)
{
	__u32 key = kind;
	struct qbo_kind_stat *st = bpf_map_lookup_elem(stats, &key);
	struct qbo_event_hdr *hdr = bpf_ringbuf_reserve(&events, size, 0);

	/*
	 * Atomic even though the slot is per-CPU: a program in softirq can
	 * interrupt one running in process context on the same CPU.
	 */
	if (!hdr) {
		if (st)
			__sync_fetch_and_add(&st->lost, 1);
		return NULL;
	}
	if (st)
		__sync_fetch_and_add(&st->emitted, 1);

	hdr->kind = kind;
	hdr->version = version;
	hdr->size = size;
	hdr->cpu = bpf_get_smp_processor_id();
	hdr->ts_ns = bpf_ktime_get_boot_ns();
	return hdr;
}

#endif /* QBO_EVENTS_H */
