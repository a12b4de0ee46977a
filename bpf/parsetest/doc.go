// Package parsetest holds a BPF object that exists only for tests of
// bpf/include/parse.h, the parser that bpf/lb and bpf/fw share: its one
// program runs qbo_parse and qbo_parse_plain4 on the same frame and
// records both results, so that the tests can hold the fast parser to the
// general one on crafted and fuzzed frames.
//
// It imports cilium/ebpf only; nothing but its own tests uses it.
package parsetest
