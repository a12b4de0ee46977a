// Package lb is the load balancer's control plane core: the Service and
// Backend model (net/netip, host-order integers), weighted Maglev tables,
// the packet hash shared with the datapath, the pure reconcile from desired
// state to map operations, and persistence of the desired state.
//
// It imports only the standard library and internal/statefile: no cilium/ebpf, no byte order of C
// structs. lb/datapath translates Tables and Ops to the kernel maps.
package lb
