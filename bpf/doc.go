// Package bpf is the root of qbo's kernel side. Each sub-package owns one
// BPF object: its C source (compiled by bpf2go, generated Go committed), the
// loader that pins its maps under /sys/fs/bpf/qbo and attaches it with links,
// and the decoders for what it emits. Shared C headers live in include/.
//
// Only sub-packages of bpf import github.com/cilium/ebpf together with the
// lb/datapath and fw/datapath adapters; nothing here imports lb, fw, runtime
// or mirror.
package bpf
