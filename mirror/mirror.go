package mirror

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// delta is one published change. Its wire form is encoded once, at publish
// time, and the same bytes go to every subscriber and into the window.
type delta struct {
	seq  uint64
	op   string
	key  string // coalescing key; "" for loss notices, which never coalesce
	data []byte // the encoded delta message
}

// mirror is what State and Stream share: sequence numbers, the epoch, the
// retained window and the subscribers.
type mirror struct {
	hub         *Hub
	name        string
	kind        string
	description string
	epoch       string
	published   atomic.Uint64

	mu      sync.Mutex
	seq     uint64
	window  ring[*delta] // the last deltas, for resume
	subs    map[*subscriber]struct{}
	objects map[string]json.RawMessage // state mirrors
	events  ring[Object]               // stream mirrors: the snapshot
}

func newMirror(h *Hub, name, description, kind string, keep int) *mirror {
	m := &mirror{
		hub:         h,
		name:        name,
		kind:        kind,
		description: description,
		epoch:       newEpoch(),
		window:      newRing[*delta](h.window),
		subs:        make(map[*subscriber]struct{}),
	}
	if kind == KindState {
		m.objects = make(map[string]json.RawMessage)
	} else {
		m.events = newRing[Object](keep)
	}
	return m
}

// newEpoch returns a random identifier for one lifetime of a mirror: a
// resume token from another lifetime (another daemon run) never matches.
func newEpoch() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // never fails, see crypto/rand.Read
	return hex.EncodeToString(b[:])
}

func (m *mirror) info() MirrorInfo {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := len(m.objects)
	if m.kind == KindStream {
		n = m.events.len()
	}
	return MirrorInfo{
		Name:        m.name,
		Kind:        m.kind,
		Description: m.description,
		Epoch:       m.epoch,
		Seq:         m.seq,
		Objects:     n,
		Subscribers: len(m.subs),
	}
}

// marshal encodes an object handed to a publisher. A value json.Marshal
// rejects (a channel, a NaN float) is counted and dropped: publishers have no
// error to return and must not be able to take the daemon down.
func (m *mirror) marshal(obj any) (json.RawMessage, bool) {
	b, err := json.Marshal(obj)
	if err != nil {
		m.hub.stats.encodeErrors.Add(1)
		return nil, false
	}
	return b, true
}

// publishLocked assigns the next sequence number to a change, retains it
// and queues it for every subscriber. m.mu must be held. Subscribers whose
// queue refuses the delta (lagged or closed) are dropped here.
func (m *mirror) publishLocked(op, key string, obj json.RawMessage, cause string) {
	m.seq++
	d := &delta{seq: m.seq, op: op, key: key}
	d.data = appendDelta(make([]byte, 0, 128+len(obj)), m.name, m.epoch, d.seq, op, key, cause, time.Now(), obj)
	m.window.push(d)
	for sub := range m.subs {
		if !sub.ob.pushDelta(sub, d) {
			delete(m.subs, sub)
		}
	}
	m.published.Add(1)
}

func (m *mirror) loss(n LossNotice) {
	b, ok := m.marshal(n)
	if !ok {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.publishLocked(OpLoss, "", b, "loss")
}

// subscribe registers ob for the mirror's deltas and queues, in one step
// under the mirror's lock, the reply to the watch command with the given id
// followed by either a fresh snapshot at the current sequence number, or,
// when since names this epoch and everything after since.Seq is still in
// the window, a replay of exactly those deltas. Deltas published after that
// are queued behind it, so nothing is missed or sent twice. done runs once
// all of that is written (see pushRaw).
func (m *mirror) subscribe(ob *outbox, id string, since *Token, done func()) (*subscriber, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	w := &watchStart{mirror: m.name, epoch: m.epoch, state: m.kind == KindState}
	if since != nil && m.canResume(*since) {
		w.recovered = true
		w.seq = since.Seq
		n := int(m.seq - since.Seq)
		w.replay = make([]*delta, 0, n)
		for i := m.window.len() - n; i < m.window.len(); i++ {
			w.replay = append(w.replay, m.window.at(i))
		}
	} else {
		w.seq = m.seq
		w.objects = m.snapshotLocked()
	}
	w.reply = encodeReply(id, marshalWire(WatchResult{Mirror: m.name, Epoch: m.epoch, Seq: w.seq}))
	// last is m.seq, not w.seq: a replay delivers everything up to m.seq
	// before any live delta, so that is where a lagged resume must start.
	sub := &subscriber{m: m, ob: ob, coalesce: m.kind == KindState, last: m.seq}
	if !ob.pushWatch(sub, w, done) {
		return nil, false
	}
	m.subs[sub] = struct{}{}
	return sub, true
}

// canResume reports whether the deltas after t are all still retained.
// m.mu must be held.
func (m *mirror) canResume(t Token) bool {
	if t.Epoch != m.epoch || t.Seq > m.seq {
		return false
	}
	return m.seq-t.Seq <= uint64(m.window.len())
}

// snapshotLocked copies the current objects; a state mirror's copy is
// sorted later by the connection's writer, outside the lock.
func (m *mirror) snapshotLocked() []Object {
	if m.kind == KindStream {
		objs := make([]Object, m.events.len())
		for i := range objs {
			objs[i] = m.events.at(i)
		}
		return objs
	}
	objs := make([]Object, 0, len(m.objects))
	for k, v := range m.objects {
		objs = append(objs, Object{Key: k, Object: v})
	}
	return objs
}

func (m *mirror) unsubscribe(sub *subscriber) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.subs, sub)
}

// State is a mirror of objects keyed by string, e.g. processes keyed by
// pid. Every change gets the next sequence number of the mirror.
type State struct{ m *mirror }

// Upsert sets the object with this key. obj is marshalled here, once; if its
// JSON is identical to the current value nothing is published. cause says
// why the change happened (exec, exit, reconcile, ...).
func (s *State) Upsert(key string, obj any, cause string) {
	b, ok := s.m.marshal(obj)
	if !ok {
		return
	}
	s.m.mu.Lock()
	defer s.m.mu.Unlock()
	s.upsertLocked(key, b, cause)
}

func (s *State) upsertLocked(key string, b json.RawMessage, cause string) {
	if cur, ok := s.m.objects[key]; ok && bytes.Equal(cur, b) {
		return
	}
	s.m.objects[key] = b
	s.m.publishLocked(OpUpsert, key, b, cause)
}

// Delete removes the object with this key; it does nothing if there is none.
func (s *State) Delete(key string, cause string) {
	s.m.mu.Lock()
	defer s.m.mu.Unlock()
	s.deleteLocked(key, cause)
}

func (s *State) deleteLocked(key string, cause string) {
	if _, ok := s.m.objects[key]; !ok {
		return
	}
	delete(s.m.objects, key)
	s.m.publishLocked(OpDelete, key, nil, cause)
}

// Reconcile makes the state equal to objs: deletes for keys that are
// missing from objs, then upserts for new and changed objects, each in key
// order. It is the "lists are truth" resync a source runs after it may have
// missed events. An object that cannot be marshalled keeps its current value.
func (s *State) Reconcile(objs map[string]any, cause string) {
	encoded := make(map[string]json.RawMessage, len(objs))
	keep := make(map[string]bool, len(objs))
	for k, v := range objs {
		keep[k] = true
		if b, ok := s.m.marshal(v); ok {
			encoded[k] = b
		}
	}
	s.m.mu.Lock()
	defer s.m.mu.Unlock()
	var gone []string
	for k := range s.m.objects {
		if !keep[k] {
			gone = append(gone, k)
		}
	}
	sort.Strings(gone)
	for _, k := range gone {
		s.deleteLocked(k, cause)
	}
	keys := make([]string, 0, len(encoded))
	for k := range encoded {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		s.upsertLocked(k, encoded[k], cause)
	}
}

// Get returns a copy of the object with this key.
func (s *State) Get(key string) (json.RawMessage, bool) {
	s.m.mu.Lock()
	defer s.m.mu.Unlock()
	b, ok := s.m.objects[key]
	return bytes.Clone(b), ok
}

// List returns copies of all objects, sorted by key.
func (s *State) List() []Object {
	s.m.mu.Lock()
	objs := s.m.snapshotLocked()
	s.m.mu.Unlock()
	sortObjects(objs)
	for i := range objs {
		objs[i].Object = bytes.Clone(objs[i].Object)
	}
	return objs
}

// Len returns the number of objects.
func (s *State) Len() int {
	s.m.mu.Lock()
	defer s.m.mu.Unlock()
	return len(s.m.objects)
}

// Loss publishes an OpLoss delta: events were lost upstream, so the state
// may be stale until the next Reconcile. Loss deltas are never coalesced.
func (s *State) Loss(n LossNotice) { s.m.loss(n) }

// Stream is a mirror of events. Each event is an OpEvent delta whose key is
// its sequence number in decimal.
type Stream struct{ m *mirror }

// Publish appends one event. It never blocks on a slow watcher.
func (s *Stream) Publish(obj any, cause string) {
	b, ok := s.m.marshal(obj)
	if !ok {
		return
	}
	s.m.mu.Lock()
	defer s.m.mu.Unlock()
	key := strconv.FormatUint(s.m.seq+1, 10)
	s.m.events.push(Object{Key: key, Object: b})
	s.m.publishLocked(OpEvent, key, b, cause)
}

// Loss publishes an OpLoss delta: events were lost upstream (the kernel
// ring, a reader queue) before they reached the stream.
func (s *Stream) Loss(n LossNotice) { s.m.loss(n) }

func sortObjects(objs []Object) {
	sort.Slice(objs, func(i, j int) bool { return objs[i].Key < objs[j].Key })
}

// ring is a fixed-capacity FIFO that drops its oldest element when full.
type ring[T any] struct {
	buf   []T
	start int
	n     int
}

func newRing[T any](capacity int) ring[T] {
	return ring[T]{buf: make([]T, capacity)}
}

func (r *ring[T]) push(v T) {
	if len(r.buf) == 0 {
		return
	}
	if r.n < len(r.buf) {
		r.buf[(r.start+r.n)%len(r.buf)] = v
		r.n++
		return
	}
	r.buf[r.start] = v
	r.start = (r.start + 1) % len(r.buf)
}

func (r *ring[T]) len() int { return r.n }

// at returns the i-th element, 0 being the oldest.
func (r *ring[T]) at(i int) T { return r.buf[(r.start+i)%len(r.buf)] }
