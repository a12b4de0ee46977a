// Package datapath is the adapter between the lb core and bpf/lb's maps:
// the only code that knows the C layouts and network byte order. It reads
// the maps into lb.Tables, applies lb.Ops, and reads flow counts and
// counters.
//
// It imports lb, bpf/lb and cilium/ebpf.
package datapath
