// Package lb owns the load balancer's BPF object: lb.c (XDP lb_xdp on each
// uplink, TCX egress lb_revnat for reverse NAT), its generated Go binding,
// and the loader that pins its maps under the pin directory and attaches
// its programs through pinned links (links/lb_xdp_<if>, links/lb_revnat_<if>).
//
// The flow table (lb_flows3) is a set-associative array whose sets are
// chosen by the client's side of a flow, so that a NAT flow's entry is
// also its reply's translation (lb.h says why and what it costs). It
// replaced lb_flows2 and the reverse-NAT tables lb_rnat2 and lb_rnat: when
// those are still pinned, the loader copies them with lb_upgrade (a
// syscall program that runs the datapath's own insert over them) and
// removes their pins.
//
// It imports cilium/ebpf and package bpf only; lb/datapath is the one user
// that reads and writes the maps.
package lb
