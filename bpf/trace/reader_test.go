package trace

import "testing"

// TestDeliverNeverBlocks checks the Reader's accounting without a kernel: a
// full queue drops and counts instead of blocking, and undecodable records
// are counted apart.
func TestDeliverNeverBlocks(t *testing.T) {
	r := &Reader{events: make(chan Event, 1)}
	exec := record(t, execRecord())
	r.deliver(exec)
	r.deliver(exec) // the queue is full: dropped
	r.deliver(exec[:10])
	want := ReaderStats{Received: 3, Decoded: 2, DecodeErrors: 1, QueueDropped: 1}
	if got := r.Stats(); got != want {
		t.Errorf("Stats = %+v, want %+v", got, want)
	}
	if ev := <-r.Events(); ev.Kind() != KindExec {
		t.Errorf("queued %#v, want the exec event", ev)
	}
}
