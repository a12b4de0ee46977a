// Package runtime will drive dockerd and containerd to run compute instances
// (Docker-in-Docker containers) and Kubernetes clusters whose nodes are
// containers. It is the only code that talks to the container engines; it
// imports nothing of bpf, lb, fw or mirror. (Empty until the runtime issue.)
package runtime
