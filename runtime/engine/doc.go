// Package engine owns the connections to the container engines: dockerd
// through github.com/moby/moby/client (negotiating down to the host's API,
// 1.41 for Debian's dockerd 20.10) and the label vocabulary under the
// reverse-DNS prefix "dev.qbo." by which everything qbo creates is found again
// ("no external state": labels are the only record). It also defines the
// sentinel errors the other runtime packages wrap.
//
// It also lists containerd's containers outside dockerd's namespace, with
// the state of each one's task, through containerd's classic services.
//
// It may import the moby client and API types, the containerd client and
// API types, and the standard library; it imports no other qbo package.
package engine
