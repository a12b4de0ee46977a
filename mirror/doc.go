// Package mirror owns qbo's mirrors: named websocket convergence points where
// every observer receives the current state of something (a snapshot) and then
// every change to it (deltas), plus the JSON command channel that travels on
// the same socket.
//
// It owns:
//   - the Hub, its State mirrors (keyed objects) and Stream mirrors (events),
//     sequence numbers, epochs and the retained window used for resume;
//   - per-client send queues with a bounded budget, coalescing and the
//     lagged-then-disconnect rule;
//   - the websocket Server (an http.Handler), the Client used by the CLI and by
//     end-to-end tests, principals and their scopes;
//   - the wire contract: protocol.go, asyncapi.yaml (embedded as AsyncAPI) and
//     the single-file web page (web/index.html, served by WebHandler).
//
// It may import the standard library and github.com/coder/websocket only.
// It imports nothing of bpf/, lb/, fw/ or runtime/: cmd/qbod feeds mirrors
// through State and Stream and registers command handlers with Hub.Handle.
//
// Library code does not log; the Server logs through the *slog.Logger it is
// given, and logs normal closes at debug level only.
//
// Locking: a mirror's mutex is always taken before a client queue's mutex,
// never the other way round. Publishing holds the mirror's mutex only to
// assign the sequence number and append to queues; it never waits for a
// client.
package mirror
