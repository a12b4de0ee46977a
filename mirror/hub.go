package mirror

import (
	"context"
	"encoding/json"
	"fmt"
	"path"
	"sort"
	"sync"
	"sync/atomic"
)

const (
	// defaultWindow is how many of its last deltas a mirror retains so that
	// a client reconnecting with a resume token gets exactly what it missed.
	defaultWindow = 4096
	// snapshotChunk is the most objects one snapshot message carries.
	snapshotChunk = 256
)

// HandlerFunc runs one command. Its result is JSON-marshalled into the
// reply's result. An error that is (errors.As) an *Error is sent as is; any
// other error is sent with code CodeInternal. ctx is cancelled when the
// connection that sent the command closes.
type HandlerFunc func(ctx context.Context, req *Request) (any, error)

// Request is one command as a handler sees it.
type Request struct {
	Command   string
	Args      json.RawMessage
	Principal Principal
}

// Principal is who sent a command, and what it may do.
type Principal struct {
	Name   string
	Scopes []string
}

// Allows reports whether one of p's scopes matches scope. Scopes are
// path.Match patterns over "mirror:NAME" (watching a mirror) and
// "command:COMMAND" (running a command, e.g. "command:get processes");
// "*" alone allows everything, including names with a slash.
func (p Principal) Allows(scope string) bool {
	for _, pattern := range p.Scopes {
		if pattern == "*" {
			return true
		}
		if ok, err := path.Match(pattern, scope); err == nil && ok {
			return true
		}
	}
	return false
}

// HubStats are the hub's counters, for export as metrics.
type HubStats struct {
	Clients           int64  // connections open now
	Commands          uint64 // command messages received (built-in ones too)
	CommandErrors     uint64 // replies with ok=false and anonymous error messages
	LaggedDisconnects uint64 // clients disconnected because they fell behind
	DeltasSent        uint64 // delta messages written to clients, replays included
	EncodeErrors      uint64 // objects dropped because json.Marshal failed on them
	Mirrors           []MirrorStats
}

// MirrorStats are the counters of one mirror.
type MirrorStats struct {
	Name        string
	Kind        string
	Published   uint64 // deltas published since the mirror was created
	Subscribers int    // clients watching it now
	Seq         uint64 // current sequence number
	Objects     int    // objects (state) or retained events (stream)
}

// counters are the hub-wide statistics, shared by mirrors, client queues and
// the server.
type counters struct {
	clients       atomic.Int64
	commands      atomic.Uint64
	commandErrors atomic.Uint64
	lagged        atomic.Uint64
	deltasSent    atomic.Uint64
	encodeErrors  atomic.Uint64
}

// Hub holds the named mirrors and the command table.
type Hub struct {
	window int // deltas retained per mirror; tests shrink it
	stats  counters

	mu       sync.RWMutex
	mirrors  map[string]*mirror
	handlers map[string]HandlerFunc
}

// NewHub returns an empty hub. The built-in commands (get mirrors, watch,
// unwatch) are answered by the Server and need no registration.
func NewHub() *Hub {
	return &Hub{
		window:   defaultWindow,
		mirrors:  make(map[string]*mirror),
		handlers: make(map[string]HandlerFunc),
	}
}

// NewState creates a state mirror: objects keyed by string. It panics if the
// name is empty or already taken, which is a programming error.
func (h *Hub) NewState(name, description string) *State {
	return &State{m: h.add(name, description, KindState, 0)}
}

// NewStream creates a stream mirror: events, of which the last keep make up
// the snapshot a new watcher receives, oldest first. It panics if the name is
// empty or already taken, which is a programming error.
func (h *Hub) NewStream(name, description string, keep int) *Stream {
	if keep < 0 {
		keep = 0
	}
	return &Stream{m: h.add(name, description, KindStream, keep)}
}

func (h *Hub) add(name, description, kind string, keep int) *mirror {
	if name == "" {
		panic("mirror: a mirror needs a name")
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, dup := h.mirrors[name]; dup {
		panic(fmt.Sprintf("mirror: mirror %q created twice", name))
	}
	m := newMirror(h, name, description, kind, keep)
	h.mirrors[name] = m
	return m
}

func (h *Hub) mirror(name string) *mirror {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.mirrors[name]
}

// sorted returns the mirrors in name order.
func (h *Hub) sorted() []*mirror {
	h.mu.RLock()
	ms := make([]*mirror, 0, len(h.mirrors))
	for _, m := range h.mirrors {
		ms = append(ms, m)
	}
	h.mu.RUnlock()
	sort.Slice(ms, func(i, j int) bool { return ms[i].name < ms[j].name })
	return ms
}

// Mirrors describes every mirror, sorted by name.
func (h *Hub) Mirrors() []MirrorInfo {
	ms := h.sorted()
	infos := make([]MirrorInfo, 0, len(ms))
	for _, m := range ms {
		infos = append(infos, m.info())
	}
	return infos
}

// Commands lists every command the hub answers, built-in ones included,
// sorted.
func (h *Hub) Commands() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := []string{CommandGetMirrors, CommandWatch, CommandUnwatch}
	for c := range h.handlers {
		out = append(out, c)
	}
	sort.Strings(out)
	return out
}

// Handle registers fn as the handler of command. It panics if command is
// empty, built in, or already registered, which are programming errors.
func (h *Hub) Handle(command string, fn HandlerFunc) {
	switch command {
	case "":
		panic("mirror: a command needs a name")
	case CommandGetMirrors, CommandWatch, CommandUnwatch:
		panic(fmt.Sprintf("mirror: command %q is built in", command))
	}
	if fn == nil {
		panic(fmt.Sprintf("mirror: command %q registered without a handler", command))
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, dup := h.handlers[command]; dup {
		panic(fmt.Sprintf("mirror: command %q registered twice", command))
	}
	h.handlers[command] = fn
}

func (h *Hub) handler(command string) HandlerFunc {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.handlers[command]
}

// Stats returns a copy of the hub's counters.
func (h *Hub) Stats() HubStats {
	st := HubStats{
		Clients:           h.stats.clients.Load(),
		Commands:          h.stats.commands.Load(),
		CommandErrors:     h.stats.commandErrors.Load(),
		LaggedDisconnects: h.stats.lagged.Load(),
		DeltasSent:        h.stats.deltasSent.Load(),
		EncodeErrors:      h.stats.encodeErrors.Load(),
	}
	for _, m := range h.sorted() {
		info := m.info()
		st.Mirrors = append(st.Mirrors, MirrorStats{
			Name:        info.Name,
			Kind:        info.Kind,
			Published:   m.published.Load(),
			Subscribers: info.Subscribers,
			Seq:         info.Seq,
			Objects:     info.Objects,
		})
	}
	return st
}
