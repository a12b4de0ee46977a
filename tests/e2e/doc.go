// Package e2e is qbo's end-to-end tier (build tag e2e, run by make test-e2e
// as root). Each test starts its own qbod with its own state dir, socket and
// bpffs pin dir, and removes all of it in t.Cleanup.
package e2e
