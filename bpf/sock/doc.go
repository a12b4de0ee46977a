// Package sock owns the socket-level load balancer's BPF object: sock.c
// (cgroup connect4/6, sendmsg4/6, recvmsg4/6, getpeername4/6), its
// generated Go binding, and the loader that attaches each program to the
// cgroup v2 root through a link pinned at links/sock_<program>. It shares
// bpf/lb's services, backends and Maglev maps (pinned by name), so it must
// be loaded with the same pin directory, after bpf/lb.
//
// It imports cilium/ebpf and package bpf only.
package sock
