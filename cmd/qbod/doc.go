// Command qbod is the qbo node daemon and the composition root: it loads the
// BPF objects (bpf/...), wires their events and the runtime's state into
// mirrors (mirror), and serves the websocket API, metrics and the web page on
// a TCP listener and a root-only unix socket.
//
// It is the only place that knows every part; the parts know nothing of each
// other. Deciding how kernel events change the process and connection tables
// (telemetry.go) is pure and unit-tested; reading /proc is in procfs.go.
package main
