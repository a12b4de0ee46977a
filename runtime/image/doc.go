// Package image builds the instance image offline: a root filesystem made of
// the host's own dockerd, containerd, runc, iptables and static busybox (with
// the shared libraries their ELF headers name), plus the instance init script,
// imported into the host dockerd as qbo/instance:KEY. KEY is a hash of every
// file's content and of the script, so building is idempotent: an image with
// the same key is reused, and a changed host binary gives a new key.
//
// The image store of the host dockerd is the cache; nothing is written
// elsewhere. It may import runtime/engine, the moby client and the standard
// library.
package image
