// Package tests holds the end-to-end tier: it runs the built qbod and qbo
// binaries (make build, QBO_BIN points at them) against the real kernel, real
// network namespaces and real websocket clients. Nothing imports it.
package tests
