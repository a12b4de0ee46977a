package mirror

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// Message types on the wire. Every websocket text message is one JSON object
// with a "type" field; the AsyncAPI document (asyncapi.yaml) is the contract.
const (
	TypeCommand     = "command"      // client -> server: run a command
	TypeReply       = "reply"        // server -> client: answer to a command with the same id
	TypeSnapshot    = "snapshot"     // server -> client: a chunk of the current objects of a mirror
	TypeSnapshotEnd = "snapshot_end" // server -> client: the snapshot at seq S is complete
	TypeDelta       = "delta"        // server -> client: one change, seq S+1, S+2, ...
	TypeLagged      = "lagged"       // server -> client: subscriber fell behind; a resume token follows, then close
	TypeError       = "error"        // server -> client: a message that could not be read at all (no id)
)

// Mirror kinds, as reported in MirrorInfo.Kind.
const (
	KindState  = "state"  // keyed objects; deltas are upserts and deletes
	KindStream = "stream" // events; the snapshot is the last few events
)

// Built-in commands, answered by the server itself rather than by a handler
// registered with Hub.Handle.
const (
	CommandGetMirrors = "get mirrors" // result: []MirrorInfo
	CommandWatch      = "watch"       // args: WatchArgs; result: WatchResult
	CommandUnwatch    = "unwatch"     // args: UnwatchArgs; result: UnwatchArgs
)

// Delta operations.
const (
	OpUpsert = "upsert" // object with this key was created or changed (state mirrors)
	OpDelete = "delete" // object with this key is gone (state mirrors)
	OpEvent  = "event"  // one event (stream mirrors)
	OpLoss   = "loss"   // events were lost upstream; Object is a LossNotice
)

// Error codes carried in Error.Code. The CLI maps them to exit codes.
const (
	CodeBadRequest     = "bad_request"     // malformed message or arguments
	CodeUnknownCommand = "unknown_command" // no such command
	CodeNotFound       = "not_found"       // named object or mirror does not exist
	CodeConflict       = "conflict"        // object already exists or is busy
	CodeUnauthorized   = "unauthorized"    // the token's scopes do not allow this
	CodeUnavailable    = "unavailable"     // the subsystem behind the command is not running
	CodeInternal       = "internal"        // anything else
)

// Error is the structured error of a failed command. It is also a Go error,
// so command handlers can return it and clients can errors.As it.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Errorf builds an *Error with the given code.
func Errorf(code, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Message is the union of every wire message; which fields are set depends
// on Type. Clients decode into it. The server encodes each type with its own
// struct (wire.go) so that fields whose zero value means something, such as
// seq 0 or count 0, are always present.
type Message struct {
	Type string `json:"type"`

	// command and reply
	ID      string          `json:"id,omitempty"`
	Command string          `json:"command,omitempty"`
	Args    json.RawMessage `json:"args,omitempty"`
	OK      *bool           `json:"ok,omitempty"`
	Result  json.RawMessage `json:"result,omitempty"`
	Error   *Error          `json:"error,omitempty"`

	// snapshot, snapshot_end, delta, lagged
	Mirror    string          `json:"mirror,omitempty"`
	Epoch     string          `json:"epoch,omitempty"`
	Seq       uint64          `json:"seq,omitempty"`
	Recovered *bool           `json:"recovered,omitempty"` // snapshot_end: true when a resume replayed missed deltas instead
	Objects   []Object        `json:"objects,omitempty"`   // snapshot
	Count     *int            `json:"count,omitempty"`     // snapshot_end: number of objects sent
	Op        string          `json:"op,omitempty"`
	Key       string          `json:"key,omitempty"`
	Cause     string          `json:"cause,omitempty"` // why a delta happened: exec, exit, fork, reconcile, ...
	Time      string          `json:"time,omitempty"`  // RFC 3339 with nanoseconds, when the change was published
	Object    json.RawMessage `json:"object,omitempty"`
	Resume    string          `json:"resume,omitempty"` // lagged: token to pass as "since" when reconnecting
}

// Object is one keyed object of a snapshot.
type Object struct {
	Key    string          `json:"key"`
	Object json.RawMessage `json:"object"`
}

// LossNotice is the object of an OpLoss delta: Count events were lost at
// Source ("ring": the kernel ring buffer was full, "queue": the reader queue
// was full) since the previous notice; Total is the running total.
type LossNotice struct {
	Source string `json:"source"`
	Count  uint64 `json:"count"`
	Total  uint64 `json:"total"`
}

// WatchArgs are the arguments of the "watch" command.
type WatchArgs struct {
	Mirror string `json:"mirror"`
	Since  string `json:"since,omitempty"` // a resume token "EPOCH:SEQ"
}

// UnwatchArgs are the arguments (and the result) of the "unwatch" command.
type UnwatchArgs struct {
	Mirror string `json:"mirror"`
}

// WatchResult is the reply to "watch"; the snapshot (or replay) follows.
type WatchResult struct {
	Mirror string `json:"mirror"`
	Epoch  string `json:"epoch"`
	Seq    uint64 `json:"seq"`
}

// MirrorInfo describes one mirror in the reply to "get mirrors".
type MirrorInfo struct {
	Name        string `json:"name"`
	Kind        string `json:"kind"` // "state" or "stream"
	Description string `json:"description"`
	Epoch       string `json:"epoch"`
	Seq         uint64 `json:"seq"`
	Objects     int    `json:"objects"`
	Subscribers int    `json:"subscribers"`
}

// Token is a resume position: the mirror epoch and the last sequence number
// the client has seen.
type Token struct {
	Epoch string
	Seq   uint64
}

func (t Token) String() string { return t.Epoch + ":" + strconv.FormatUint(t.Seq, 10) }

// ParseToken parses "EPOCH:SEQ".
func ParseToken(s string) (Token, error) {
	epoch, seq, ok := strings.Cut(s, ":")
	if !ok || epoch == "" {
		return Token{}, Errorf(CodeBadRequest, "resume token %q: want EPOCH:SEQ", s)
	}
	n, err := strconv.ParseUint(seq, 10, 64)
	if err != nil {
		return Token{}, Errorf(CodeBadRequest, "resume token %q: bad sequence number", s)
	}
	return Token{Epoch: epoch, Seq: n}, nil
}
