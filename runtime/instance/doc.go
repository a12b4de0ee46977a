// Package instance owns the lifecycle of compute instances: containers that
// run their own dockerd (Docker-in-Docker) without --privileged. Creation is
// an ordered list of small steps (socket directory, storage volume, shared
// network, container, start, readiness) each with its undo, run with full
// rollback on failure. Every object carries labels under engine.Prefix and is
// found again by label; the only in-memory state is which operations are in
// flight. After a crash, Recover completes or removes whatever a killed
// creation left behind.
//
// It may import runtime, runtime/engine, runtime/image, the moby client and
// API types, golang.org/x/sys/unix and the standard library.
package instance
