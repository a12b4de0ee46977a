package mirror

import (
	"sync"
)

// subscriber is one client watching one mirror.
type subscriber struct {
	m        *mirror
	ob       *outbox
	coalesce bool // state mirror: a newer delta for a key replaces a queued one

	// Guarded by ob.mu.
	pending map[string]*entry // queued deltas by key, for coalescing
	last    uint64            // seq of the last delta queued; the resume point if it lags
}

// watchStart is the beginning of a subscription: the reply to watch, then a
// snapshot or a replay, then snapshot_end. The objects or deltas were
// captured under the mirror's lock; they are encoded by the writer, outside
// it.
type watchStart struct {
	reply     []byte
	mirror    string
	epoch     string
	seq       uint64
	state     bool     // objects need sorting by key
	recovered bool     // replay instead of objects
	objects   []Object // fresh snapshot
	replay    []*delta // resumed: the deltas after seq
}

type entryKind uint8

const (
	entryRaw   entryKind = iota // an encoded reply, error or lagged message
	entryDelta                  // a live delta of sub's mirror
	entryWatch                  // a watchStart
	entryClose                  // close the connection as lagged
)

type entry struct {
	prev, next *entry
	kind       entryKind
	raw        []byte
	d          *delta
	sub        *subscriber
	w          *watchStart
	done       func() // called once the entry is written: frees its command slot
}

// outbox is the send queue of one client connection. Publishers append to
// it without ever waiting; the connection's writer takes entries from the
// front. Only deltas count against the budget. Answers to commands (replies,
// error messages, the start of a subscription however large its snapshot)
// are bounded by the connection's command slots instead: a slot is held
// from reading a command until its answer is written, so a client that
// sends without reading stalls its own reads, not the server's memory.
type outbox struct {
	stats  *counters
	budget int
	wake   chan struct{} // capacity 1: "there is something to take"

	mu     sync.Mutex
	head   *entry
	tail   *entry
	deltas int
	closed bool
}

func newOutbox(stats *counters, budget int) *outbox {
	return &outbox{stats: stats, budget: budget, wake: make(chan struct{}, 1)}
}

// linkLocked appends e and wakes the writer.
func (ob *outbox) linkLocked(e *entry) {
	e.prev = ob.tail
	if ob.tail != nil {
		ob.tail.next = e
	} else {
		ob.head = e
	}
	ob.tail = e
	if e.kind == entryDelta {
		ob.deltas++
	}
	select {
	case ob.wake <- struct{}{}:
	default:
	}
}

func (ob *outbox) unlinkLocked(e *entry) {
	if e.prev != nil {
		e.prev.next = e.next
	} else {
		ob.head = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	} else {
		ob.tail = e.prev
	}
	e.prev, e.next = nil, nil
	if e.kind == entryDelta {
		ob.deltas--
		if e.sub.pending[e.d.key] == e {
			delete(e.sub.pending, e.d.key)
		}
	}
}

// pushRaw queues an encoded answer to a command; done (if not nil) runs
// once it is written. If the connection is closing nobody would read the
// answer: it is dropped, done runs at once, and pushRaw reports false.
func (ob *outbox) pushRaw(b []byte, done func()) bool {
	return ob.push(&entry{kind: entryRaw, raw: b, done: done})
}

// pushWatch queues the start of a subscription, like pushRaw.
func (ob *outbox) pushWatch(sub *subscriber, w *watchStart, done func()) bool {
	return ob.push(&entry{kind: entryWatch, w: w, sub: sub, done: done})
}

func (ob *outbox) push(e *entry) bool {
	ob.mu.Lock()
	closed := ob.closed
	if !closed {
		ob.linkLocked(e)
	}
	ob.mu.Unlock()
	if closed && e.done != nil {
		e.done()
	}
	return !closed
}

// pushDelta queues d for sub. A client that keeps up sees every delta, so
// a watcher of a state mirror sees each exec, fork and exit, not only their
// net effect. When the queue reaches the budget, a state mirror's queued
// deltas are coalesced first: every delta superseded by a newer one for the
// same key is dropped (the queue stays in sequence order and the client
// still converges on the latest value). If the queue is still full the
// client has lagged: it is sent a lagged message with the seq of the last
// delta queued for sub as resume point, the connection is closed after it,
// and pushDelta reports false so that the mirror drops sub. It also reports
// false if the connection is closing.
func (ob *outbox) pushDelta(sub *subscriber, d *delta) bool {
	ob.mu.Lock()
	defer ob.mu.Unlock()
	if ob.closed {
		return false
	}
	keyed := sub.coalesce && d.key != ""
	if ob.deltas >= ob.budget && sub.coalesce {
		ob.coalesceLocked(sub, d.key)
	}
	if ob.deltas >= ob.budget {
		ob.lagLocked(sub)
		return false
	}
	e := &entry{kind: entryDelta, d: d, sub: sub}
	ob.linkLocked(e)
	if keyed {
		if sub.pending == nil {
			sub.pending = make(map[string]*entry)
		}
		sub.pending[d.key] = e
	}
	sub.last = d.seq
	return true
}

// coalesceLocked drops sub's queued deltas that a newer one for the same
// key supersedes; a queued delta for next (about to be queued) counts as
// superseded too. Loss deltas have no key and are never dropped.
func (ob *outbox) coalesceLocked(sub *subscriber, next string) {
	for e := ob.head; e != nil; {
		following := e.next
		if e.kind == entryDelta && e.sub == sub && e.d.key != "" &&
			(sub.pending[e.d.key] != e || (next != "" && e.d.key == next)) {
			ob.unlinkLocked(e)
		}
		e = following
	}
}

func (ob *outbox) lagLocked(sub *subscriber) {
	resume := Token{Epoch: sub.m.epoch, Seq: sub.last}.String()
	ob.linkLocked(&entry{kind: entryRaw, raw: marshalWire(laggedWire{Type: TypeLagged, Mirror: sub.m.name, Resume: resume})})
	ob.linkLocked(&entry{kind: entryClose, sub: sub})
	ob.closed = true
	ob.stats.lagged.Add(1)
}

// purge removes the deltas queued for sub, after it was unsubscribed. The
// start of its subscription stays: it holds the reply to watch, and replies
// are never dropped.
func (ob *outbox) purge(sub *subscriber) {
	ob.mu.Lock()
	defer ob.mu.Unlock()
	for e := ob.head; e != nil; {
		next := e.next
		if e.kind == entryDelta && e.sub == sub {
			ob.unlinkLocked(e)
		}
		e = next
	}
}

// pop takes the first entry, or returns nil if there is none.
func (ob *outbox) pop() *entry {
	ob.mu.Lock()
	defer ob.mu.Unlock()
	e := ob.head
	if e != nil {
		ob.unlinkLocked(e)
	}
	return e
}

// close refuses everything pushed from now on.
func (ob *outbox) close() {
	ob.mu.Lock()
	defer ob.mu.Unlock()
	ob.closed = true
}

// emit hands the messages of e to write in order; delta reports whether a
// message is a delta, for the statistics. An entryClose has no message.
func (e *entry) emit(write func(msg []byte, delta bool) error) error {
	switch e.kind {
	case entryRaw:
		return write(e.raw, false)
	case entryDelta:
		return write(e.d.data, true)
	case entryWatch:
		return e.w.emit(write)
	}
	return nil
}

func (w *watchStart) emit(write func(msg []byte, delta bool) error) error {
	if err := write(w.reply, false); err != nil {
		return err
	}
	if !w.recovered {
		if w.state {
			sortObjects(w.objects)
		}
		for i := 0; i < len(w.objects); i += snapshotChunk {
			chunk := w.objects[i:min(i+snapshotChunk, len(w.objects))]
			msg := marshalWire(snapshotWire{Type: TypeSnapshot, Mirror: w.mirror, Epoch: w.epoch, Seq: w.seq, Objects: chunk})
			if err := write(msg, false); err != nil {
				return err
			}
		}
	}
	end := marshalWire(snapshotEndWire{
		Type:      TypeSnapshotEnd,
		Mirror:    w.mirror,
		Epoch:     w.epoch,
		Seq:       w.seq,
		Count:     len(w.objects),
		Recovered: w.recovered,
	})
	if err := write(end, false); err != nil {
		return err
	}
	for _, d := range w.replay {
		if err := write(d.data, true); err != nil {
			return err
		}
	}
	return nil
}
