// Package lb owns the load balancer's BPF object: lb.c (XDP lb_xdp on each
// uplink, TCX egress lb_revnat for reverse NAT), its generated Go binding,
// and the loader that pins its maps under the pin directory and attaches
// its programs through pinned links (links/lb_xdp_<if>, links/lb_revnat_<if>).
//
// The flow table (lb_flows2) and the reverse-NAT table (lb_rnat2) are
// set-associative arrays (lb.h says why and what it costs). lb_rnat2
// replaced lb_rnat, an LRU hash whose insert cost a new NAT flow more than
// the rest of its path: when lb_rnat is still pinned, the loader copies it
// with lb_rnat_upgrade (a syscall program that runs the datapath's own
// insert over it) and removes its pin.
//
// It imports cilium/ebpf and package bpf only; lb/datapath is the one user
// that reads and writes the maps.
package lb
