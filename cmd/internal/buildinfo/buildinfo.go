// Package buildinfo carries the version stamped into qbod and qbo at link
// time (make build sets it with -ldflags -X). It imports nothing of qbo.
package buildinfo

// Version is overwritten by the linker; "dev" marks an unstamped build.
var Version = "dev"
