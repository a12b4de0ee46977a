// Package trace owns qbo's kernel telemetry object: trace.c (BTF tracepoints
// on process exec/fork/exit, TCP state changes and packet drops), its
// bpf2go-generated bindings, the loader that pins its maps and links under
// the qbo bpffs directory, and the reader that turns ring buffer records
// into typed events.
//
// It also owns the shared telemetry ring buffer ("events", declared in
// bpf/include/events.h): other qbo objects write their own event kinds into
// it after their loaders take Tracer.EventsMap as a MapReplacement.
//
// It imports github.com/cilium/ebpf, golang.org/x/sys/unix and qbo's bpf
// package, and nothing else of qbo. This is the only code that knows the C
// layout and byte order of trace records; everything it returns uses
// net/netip and host-order integers. It never logs.
//
// Test tiers: plain `go test` runs the hermetic decoder tests; `go test
// -tags bpftest` (root) loads the object into the running kernel and checks
// real exec, fork, exit, TCP and drop events.
package trace
