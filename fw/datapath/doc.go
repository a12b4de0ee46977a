// Package datapath is the only code that knows bpf/fw's C layouts. It
// encodes a compiled rule set (package fw) into the firewall object's maps
// and replaces a whole set atomically: every table is keyed or indexed
// by a generation bit, Apply fills the inactive half and then flips one
// config word, so a packet, which reads the generation once, is judged by
// the old set or the new one, never a mix. It also assigns stable
// per-rule counter slots, reads counters and verdict statistics, decodes
// deny records from the shared telemetry ring, and fills the XDP
// prefilter's maps: it keeps the set of deny prefixes, expands IPv4 ones
// into bitmaps over the /24s (pfset.go, pure computation) and writes a
// change as a plan of batch writes that is undone if any write fails
// (prefilter.go).
//
// It imports fw, bpf/fw and cilium/ebpf. Its unit tests drive the
// prefilter's planning against a fake kernel; its tests with build tag
// bpftest load the real programs (bpf/lb's too, which reads the same
// prefilter maps) and drive them with BPF_PROG_TEST_RUN.
package datapath
