// Package runtime runs compute instances (Docker-in-Docker containers) on the
// node and attributes processes to the containers they run in. It is the only
// code that talks to the container engines; it imports nothing of bpf, lb, fw
// or mirror.
//
// Sub-packages:
//   - engine: the Docker and containerd clients, the label vocabulary and the
//     errors every other package branches on.
//   - image: the offline build of the instance image from the host's binaries.
//   - instance: the lifecycle of instances (create with rollback, delete,
//     exec, load image, reconcile after a crash).
//
// This package itself holds the pure attribution of a process (by its
// /proc/PID/cgroup) to the container, and nested container, it runs in.
package runtime
