// Package lb owns the load balancer's BPF object: lb.c (XDP lb_xdp on each
// uplink, TCX egress lb_revnat for reverse NAT), its generated Go binding,
// and the loader that pins its maps under the pin directory and attaches
// its programs through pinned links (links/lb_xdp_<if>, links/lb_revnat_<if>).
//
// It imports cilium/ebpf and package bpf only; lb/datapath is the one user
// that reads and writes the maps.
package lb
