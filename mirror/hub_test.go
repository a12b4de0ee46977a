package mirror

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"reflect"
	"strconv"
	"sync"
	"testing"
)

// drain takes everything queued in ob, as the connection writer would, and
// decodes it. A close entry becomes a Message of type "close".
func drain(t testing.TB, ob *outbox) []Message {
	t.Helper()
	var msgs []Message
	for e := ob.pop(); e != nil; e = ob.pop() {
		if e.kind == entryClose {
			msgs = append(msgs, Message{Type: "close"})
			continue
		}
		err := e.emit(func(b []byte, _ bool) error {
			var m Message
			if err := json.Unmarshal(b, &m); err != nil {
				return err
			}
			msgs = append(msgs, m)
			return nil
		})
		if err != nil {
			t.Fatalf("decoding queued message: %v", err)
		}
	}
	return msgs
}

// replica rebuilds a mirror's state from what a subscriber received, and
// checks the ordering rules on the way.
type replica struct {
	t       testing.TB
	objects map[string]string
	epoch   string
	seq     uint64
	ended   bool
	lagged  string
}

func newReplica(t testing.TB) *replica {
	return &replica{t: t, objects: make(map[string]string)}
}

func (r *replica) apply(msgs ...Message) {
	r.t.Helper()
	for _, m := range msgs {
		switch m.Type {
		case TypeReply:
			if m.OK == nil || !*m.OK {
				r.t.Fatalf("failed reply: %+v", m.Error)
			}
		case TypeSnapshot:
			if r.ended {
				r.t.Fatalf("snapshot chunk after snapshot_end")
			}
			for _, o := range m.Objects {
				r.objects[o.Key] = string(o.Object)
			}
		case TypeSnapshotEnd:
			if m.Recovered == nil || !*m.Recovered {
				if m.Count == nil || *m.Count != len(r.objects) {
					r.t.Fatalf("snapshot_end count %v, got %d objects", m.Count, len(r.objects))
				}
			}
			r.ended, r.epoch, r.seq = true, m.Epoch, m.Seq
		case TypeDelta:
			if !r.ended {
				r.t.Fatalf("delta %d before snapshot_end", m.Seq)
			}
			if m.Seq <= r.seq {
				r.t.Fatalf("delta seq %d after %d: not increasing", m.Seq, r.seq)
			}
			if m.Epoch != r.epoch {
				r.t.Fatalf("delta epoch %q, snapshot epoch %q", m.Epoch, r.epoch)
			}
			r.seq = m.Seq
			switch m.Op {
			case OpUpsert, OpEvent:
				r.objects[m.Key] = string(m.Object)
			case OpDelete:
				delete(r.objects, m.Key)
			}
		case TypeLagged:
			r.lagged = m.Resume
		case "close":
		default:
			r.t.Fatalf("unexpected message %+v", m)
		}
	}
}

func (r *replica) equal(objs []Object) bool {
	if len(objs) != len(r.objects) {
		return false
	}
	for _, o := range objs {
		if r.objects[o.Key] != string(o.Object) {
			return false
		}
	}
	return true
}

func subscribeT(t testing.TB, m *mirror, ob *outbox, since string) {
	t.Helper()
	var tok *Token
	if since != "" {
		tk, err := ParseToken(since)
		if err != nil {
			t.Fatal(err)
		}
		tok = &tk
	}
	if _, ok := m.subscribe(ob, "w", tok, nil); !ok {
		t.Fatal("subscribe refused")
	}
}

func newTestOutbox(h *Hub, budget int) *outbox { return newOutbox(&h.stats, budget) }

func TestWatchWhilePublishingConverges(t *testing.T) {
	h := NewHub()
	s := h.NewState("things", "")
	const writers, perWriter, keys = 4, 3000, 64
	ob := newTestOutbox(h, 1<<30)
	r := newReplica(t)

	var wg sync.WaitGroup
	quarter := make(chan struct{})
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 1))
			for i := range perWriter {
				if w == 0 && i == perWriter/4 {
					close(quarter)
				}
				k := strconv.Itoa(rng.IntN(keys))
				if rng.IntN(5) == 0 {
					s.Delete(k, "test")
				} else {
					s.Upsert(k, map[string]int{"w": w, "i": i}, "test")
				}
			}
		}()
	}
	// A reader drains concurrently, so that some deltas leave the queue
	// while others are coalesced in it.
	var received []Message
	stop := make(chan struct{})
	readerDone := make(chan struct{})
	go func() {
		defer close(readerDone)
		for {
			select {
			case <-ob.wake:
				received = append(received, drain(t, ob)...)
			case <-stop:
				return
			}
		}
	}()
	<-quarter // join while the writers are busy
	subscribeT(t, s.m, ob, "")
	wg.Wait()
	close(stop)
	<-readerDone
	received = append(received, drain(t, ob)...)
	r.apply(received...)

	if !r.ended {
		t.Fatal("no snapshot_end received")
	}
	if got, want := r.seq, s.m.info().Seq; got != want {
		t.Errorf("replica at seq %d, mirror at %d", got, want)
	}
	if !r.equal(s.List()) {
		t.Errorf("replica differs from the mirror:\nreplica %v\nmirror  %v", r.objects, s.List())
	}
}

func TestStreamWatchWhilePublishingMissesAndRepeatsNothing(t *testing.T) {
	h := NewHub()
	const writers, perWriter = 4, 2000
	st := h.NewStream("ev", "", writers*perWriter)
	ob := newTestOutbox(h, 1<<30)

	var wg sync.WaitGroup
	third := make(chan struct{})
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWriter {
				if w == 0 && i == perWriter/3 {
					close(third)
				}
				st.Publish(map[string]int{"w": w, "i": i}, "test")
			}
		}()
	}
	<-third
	subscribeT(t, st.m, ob, "")
	wg.Wait()

	seen := make(map[string]int)
	var end uint64
	for _, m := range drain(t, ob) {
		switch m.Type {
		case TypeSnapshot:
			for _, o := range m.Objects {
				seen[o.Key]++
			}
		case TypeSnapshotEnd:
			end = m.Seq
		case TypeDelta:
			if m.Seq <= end {
				t.Fatalf("delta %d not after snapshot seq %d", m.Seq, end)
			}
			seen[m.Key]++
		}
	}
	for seq := 1; seq <= writers*perWriter; seq++ {
		if n := seen[strconv.Itoa(seq)]; n != 1 {
			t.Fatalf("event %d received %d times", seq, n)
		}
	}
	if len(seen) != writers*perWriter {
		t.Fatalf("received %d distinct events, want %d", len(seen), writers*perWriter)
	}
}

func TestUpsertIdenticalJSONIsNoop(t *testing.T) {
	h := NewHub()
	s := h.NewState("p", "")
	type proc struct {
		PID  int    `json:"pid"`
		Comm string `json:"comm"`
	}
	s.Upsert("1", proc{1, "init"}, "test")
	s.Upsert("1", proc{1, "init"}, "again")
	s.Upsert("1", struct {
		P int    `json:"pid"`
		C string `json:"comm"`
	}{1, "init"}, "same JSON, other type")
	if seq := s.m.info().Seq; seq != 1 {
		t.Fatalf("seq %d after identical upserts, want 1", seq)
	}
	s.Upsert("1", proc{1, "systemd"}, "changed")
	s.Delete("2", "absent")
	if seq := s.m.info().Seq; seq != 2 {
		t.Fatalf("seq %d, want 2", seq)
	}
	got, ok := s.Get("1")
	if !ok || string(got) != `{"pid":1,"comm":"systemd"}` {
		t.Fatalf("Get = %s, %v", got, ok)
	}
}

func TestReconcile(t *testing.T) {
	h := NewHub()
	s := h.NewState("p", "")
	for _, k := range []string{"a", "b", "c"} {
		s.Upsert(k, k, "seed")
	}
	ob := newTestOutbox(h, 100)
	subscribeT(t, s.m, ob, "")
	s.Reconcile(map[string]any{"b": "b", "c": "C", "d": "d"}, "reconcile")

	want := []Object{{"b", json.RawMessage(`"b"`)}, {"c", json.RawMessage(`"C"`)}, {"d", json.RawMessage(`"d"`)}}
	if got := s.List(); !reflect.DeepEqual(got, want) {
		t.Fatalf("List = %v, want %v", got, want)
	}
	var ops []string
	for _, m := range drain(t, ob) {
		if m.Type == TypeDelta {
			if m.Cause != "reconcile" {
				t.Errorf("delta cause %q", m.Cause)
			}
			ops = append(ops, fmt.Sprintf("%d %s %s", m.Seq, m.Op, m.Key))
		}
	}
	if want := []string{"4 delete a", "5 upsert c", "6 upsert d"}; !reflect.DeepEqual(ops, want) {
		t.Fatalf("deltas %v, want %v", ops, want)
	}
	if s.Len() != 3 {
		t.Fatalf("Len = %d", s.Len())
	}
}

func TestResumeInWindowReplaysExactlyTheMissedDeltas(t *testing.T) {
	h := NewHub()
	s := h.NewState("p", "")
	for i := range 10 {
		s.Upsert(strconv.Itoa(i%3), i, "test")
	}
	ob := newTestOutbox(h, 100)
	subscribeT(t, s.m, ob, "")
	r := newReplica(t)
	r.apply(drain(t, ob)...)
	token := Token{Epoch: r.epoch, Seq: r.seq}
	if token.Seq != 10 {
		t.Fatalf("snapshot at %d", token.Seq)
	}

	// The client goes away; changes go on.
	s.m.unsubscribe(firstSub(s.m))
	for i := 10; i < 15; i++ {
		s.Upsert(strconv.Itoa(i%4), i, "test")
	}
	s.Delete("0", "test")

	ob2 := newTestOutbox(h, 100)
	subscribeT(t, s.m, ob2, token.String())
	msgs := drain(t, ob2)
	if msgs[0].Type != TypeReply {
		t.Fatalf("first message %q, want the reply", msgs[0].Type)
	}
	end := msgs[1]
	if end.Type != TypeSnapshotEnd || end.Recovered == nil || !*end.Recovered || end.Seq != 10 || *end.Count != 0 {
		t.Fatalf("second message %+v, want snapshot_end recovered at 10", end)
	}
	var seqs []uint64
	for _, m := range msgs[2:] {
		if m.Type != TypeDelta {
			t.Fatalf("unexpected %q in replay", m.Type)
		}
		seqs = append(seqs, m.Seq)
	}
	if want := []uint64{11, 12, 13, 14, 15, 16}; !reflect.DeepEqual(seqs, want) {
		t.Fatalf("replayed %v, want %v", seqs, want)
	}
	r.apply(msgs...)
	if !r.equal(s.List()) {
		t.Fatalf("resumed replica %v differs from %v", r.objects, s.List())
	}

	// Resuming at the current seq replays nothing and is still recovered.
	ob3 := newTestOutbox(h, 100)
	subscribeT(t, s.m, ob3, Token{Epoch: r.epoch, Seq: 16}.String())
	msgs = drain(t, ob3)
	if len(msgs) != 2 || !*msgs[1].Recovered || msgs[1].Seq != 16 {
		t.Fatalf("resume at current seq: %+v", msgs)
	}
}

func firstSub(m *mirror) *subscriber {
	m.mu.Lock()
	defer m.mu.Unlock()
	for s := range m.subs {
		return s
	}
	return nil
}

func TestResumeOutsideWindowSendsFreshSnapshot(t *testing.T) {
	h := NewHub()
	h.window = 8
	s := h.NewState("p", "")
	for i := range 20 {
		s.Upsert(strconv.Itoa(i%5), i, "test")
	}
	epoch := s.m.epoch
	for _, tc := range []struct {
		name, since string
		recovered   bool
	}{
		{"too old", epoch + ":5", false},
		{"oldest retained is next", epoch + ":12", true},
		{"just out of window", epoch + ":11", false},
		{"other epoch", "0123456789abcdef:19", false},
		{"from the future", epoch + ":21", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ob := newTestOutbox(h, 100)
			subscribeT(t, s.m, ob, tc.since)
			msgs := drain(t, ob)
			r := newReplica(t)
			r.apply(msgs...)
			var end Message
			for _, m := range msgs {
				if m.Type == TypeSnapshotEnd {
					end = m
				}
			}
			if *end.Recovered != tc.recovered {
				t.Fatalf("recovered = %v, want %v", *end.Recovered, tc.recovered)
			}
			if !tc.recovered {
				if end.Seq != 20 || !r.equal(s.List()) {
					t.Fatalf("fresh snapshot at %d: %v", end.Seq, r.objects)
				}
			}
		})
	}
}

// TestClientWithinBudgetSeesEveryDelta: coalescing is for clients that fall
// behind; one that keeps up sees each change, not just the net effect.
func TestClientWithinBudgetSeesEveryDelta(t *testing.T) {
	h := NewHub()
	s := h.NewState("p", "")
	ob := newTestOutbox(h, 100)
	subscribeT(t, s.m, ob, "")
	drain(t, ob)
	s.Upsert("a", 1, "fork")
	s.Upsert("a", 2, "exec")
	s.Delete("a", "exit")
	var got []string
	for _, m := range drain(t, ob) {
		got = append(got, fmt.Sprintf("%d %s %s", m.Seq, m.Op, m.Cause))
	}
	want := []string{"1 upsert fork", "2 upsert exec", "3 delete exit"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("queued %q, want %q", got, want)
	}
}

// TestCoalescingKeepsLatestValuePerKey: at the budget, queued deltas that a
// newer one for the same key supersedes are dropped; loss notices never are.
func TestCoalescingKeepsLatestValuePerKey(t *testing.T) {
	h := NewHub()
	s := h.NewState("p", "")
	ob := newTestOutbox(h, 4)
	subscribeT(t, s.m, ob, "")
	drain(t, ob)

	s.Upsert("a", 1, "t") // 1
	s.Upsert("b", 1, "t") // 2
	s.Upsert("a", 2, "t") // 3
	s.Loss(LossNotice{Source: "ring", Count: 1, Total: 1})
	s.Upsert("a", 3, "t") // 5
	s.Loss(LossNotice{Source: "ring", Count: 2, Total: 3})
	s.Upsert("b", 2, "t") // 7
	s.Delete("a", "t")    // 8

	var got []string
	for _, m := range drain(t, ob) {
		got = append(got, fmt.Sprintf("%d %s %s %s", m.Seq, m.Op, m.Key, m.Object))
	}
	want := []string{
		`4 loss  {"source":"ring","count":1,"total":1}`,
		`6 loss  {"source":"ring","count":2,"total":3}`,
		`7 upsert b 2`,
		`8 delete a `,
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("queued:\n%q\nwant\n%q", got, want)
	}
}

func TestLaggedSubscriberGetsResumeTokenForTheRest(t *testing.T) {
	for _, kind := range []string{KindState, KindStream} {
		t.Run(kind, func(t *testing.T) {
			h := NewHub()
			var publish func(i int)
			var m *mirror
			if kind == KindState {
				s := h.NewState("p", "")
				publish = func(i int) { s.Upsert(strconv.Itoa(i), i, "t") }
				m = s.m
			} else {
				st := h.NewStream("p", "", 100)
				publish = func(i int) { st.Publish(i, "t") }
				m = st.m
			}
			const budget = 4
			ob := newTestOutbox(h, budget)
			subscribeT(t, m, ob, "")
			for i := range 10 {
				publish(i)
			}
			msgs := drain(t, ob)
			r := newReplica(t)
			r.apply(msgs...)
			if last := msgs[len(msgs)-1]; last.Type != "close" {
				t.Fatalf("last queued %q, want the close", last.Type)
			}
			if want := (Token{Epoch: m.epoch, Seq: budget}).String(); r.lagged != want {
				t.Fatalf("lagged resume %q, want %q", r.lagged, want)
			}
			if r.seq != budget {
				t.Fatalf("replica got to %d before the gap, want %d", r.seq, budget)
			}
			if st := h.Stats(); st.LaggedDisconnects != 1 || st.Mirrors[0].Subscribers != 0 {
				t.Fatalf("stats after lag: %+v", st)
			}

			ob2 := newTestOutbox(h, 100)
			subscribeT(t, m, ob2, r.lagged)
			msgs = drain(t, ob2)
			r.apply(msgs...)
			var seqs []uint64
			for _, m := range msgs {
				if m.Type == TypeDelta {
					seqs = append(seqs, m.Seq)
				}
			}
			if want := []uint64{5, 6, 7, 8, 9, 10}; !reflect.DeepEqual(seqs, want) {
				t.Fatalf("after resume got %v, want %v", seqs, want)
			}
			if len(r.objects) != 10 {
				t.Fatalf("replica has %d objects, want 10", len(r.objects))
			}
		})
	}
}

func TestLagRightAfterAReplayResumesAfterTheReplay(t *testing.T) {
	h := NewHub()
	st := h.NewStream("p", "", 0)
	for i := range 5 {
		st.Publish(i, "t")
	}
	// A budget of 0 makes the very first live delta overflow, before any
	// live delta could move the resume point.
	ob := newTestOutbox(h, 0)
	subscribeT(t, st.m, ob, Token{Epoch: st.m.epoch, Seq: 1}.String()) // replays 2..5
	st.Publish(5, "t")                                                 // 6 overflows
	r := newReplica(t)
	r.apply(drain(t, ob)...)
	if want := (Token{Epoch: st.m.epoch, Seq: 5}).String(); r.lagged != want || r.seq != 5 {
		t.Fatalf("lagged %q after delta %d, want %q after 5", r.lagged, r.seq, want)
	}
}

func TestStreamSnapshotIsLastKeepEvents(t *testing.T) {
	h := NewHub()
	st := h.NewStream("events", "", 3)
	for i := 1; i <= 5; i++ {
		st.Publish(map[string]int{"n": i}, "drop")
		if i == 2 {
			st.Loss(LossNotice{Source: "queue", Count: 7, Total: 7})
		}
	}
	ob := newTestOutbox(h, 100)
	subscribeT(t, st.m, ob, "")
	msgs := drain(t, ob)
	if len(msgs) != 3 || msgs[1].Type != TypeSnapshot {
		t.Fatalf("messages %+v", msgs)
	}
	var got []string
	for _, o := range msgs[1].Objects {
		got = append(got, o.Key+"="+string(o.Object))
	}
	want := []string{`4={"n":3}`, `5={"n":4}`, `6={"n":5}`}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("snapshot %v, want %v", got, want)
	}
	if end := msgs[2]; end.Seq != 6 || *end.Count != 3 {
		t.Fatalf("snapshot_end %+v", end)
	}
	if infos := h.Mirrors(); infos[0].Objects != 3 || infos[0].Kind != KindStream {
		t.Fatalf("Mirrors = %+v", infos)
	}
}

func TestSnapshotIsChunkedAndSorted(t *testing.T) {
	h := NewHub()
	s := h.NewState("p", "")
	objs := make(map[string]any)
	for i := range 600 {
		objs[fmt.Sprintf("k%04d", i)] = i
	}
	s.Reconcile(objs, "seed")
	ob := newTestOutbox(h, 100)
	subscribeT(t, s.m, ob, "")
	var sizes []int
	prev := ""
	for _, m := range drain(t, ob) {
		if m.Type != TypeSnapshot {
			continue
		}
		sizes = append(sizes, len(m.Objects))
		for _, o := range m.Objects {
			if o.Key <= prev {
				t.Fatalf("key %q after %q", o.Key, prev)
			}
			prev = o.Key
		}
	}
	if want := []int{256, 256, 88}; !reflect.DeepEqual(sizes, want) {
		t.Fatalf("chunks %v, want %v", sizes, want)
	}
}

func TestUnmarshallableObjectIsCountedNotPublished(t *testing.T) {
	h := NewHub()
	s := h.NewState("p", "")
	s.Upsert("x", make(chan int), "bad")
	s.Reconcile(map[string]any{"y": 1, "z": func() {}}, "bad")
	if st := h.Stats(); st.EncodeErrors != 2 || st.Mirrors[0].Seq != 1 {
		t.Fatalf("stats %+v", st)
	}
}

func TestHubPanicsOnProgrammingErrors(t *testing.T) {
	h := NewHub()
	h.NewState("a", "")
	h.Handle("status", func(context.Context, *Request) (any, error) { return nil, nil })
	for name, fn := range map[string]func(){
		"duplicate mirror":  func() { h.NewStream("a", "", 1) },
		"empty name":        func() { h.NewState("", "") },
		"duplicate command": func() { h.Handle("status", func(context.Context, *Request) (any, error) { return nil, nil }) },
		"built-in command":  func() { h.Handle(CommandWatch, func(context.Context, *Request) (any, error) { return nil, nil }) },
	} {
		t.Run(name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Fatal("no panic")
				}
			}()
			fn()
		})
	}
}

func TestPrincipalAllows(t *testing.T) {
	for _, tc := range []struct {
		scopes []string
		scope  string
		want   bool
	}{
		{[]string{"*"}, "mirror:a/b", true},
		{[]string{"mirror:processes"}, "mirror:processes", true},
		{[]string{"mirror:processes"}, "mirror:events", false},
		{[]string{"mirror:processes"}, "command:status", false},
		{[]string{"mirror:*"}, "mirror:events", true},
		{[]string{"command:get *"}, "command:get processes", true},
		{[]string{"command:get *"}, "command:status", false},
		{[]string{"[bad"}, "mirror:x", false},
		{nil, "mirror:x", false},
	} {
		if got := (Principal{Scopes: tc.scopes}).Allows(tc.scope); got != tc.want {
			t.Errorf("%v.Allows(%q) = %v, want %v", tc.scopes, tc.scope, got, tc.want)
		}
	}
}

func TestRequestDecode(t *testing.T) {
	type args struct {
		Name string `json:"name"`
	}
	for _, tc := range []struct {
		raw     string
		want    string
		wantErr bool
	}{
		{"", "", false},
		{"null", "", false},
		{`{}`, "", false},
		{`{"name":"x"}`, "x", false},
		{`{"name":"x","other":1}`, "", true},
		{`{"name":"x"} {}`, "", true},
		{`{"name":1}`, "", true},
	} {
		var a args
		err := (&Request{Command: "get x", Args: json.RawMessage(tc.raw)}).Decode(&a)
		if tc.wantErr {
			var e *Error
			if !errors.As(err, &e) || e.Code != CodeBadRequest {
				t.Errorf("Decode(%q) = %v, want a bad_request", tc.raw, err)
			}
			continue
		}
		if err != nil || a.Name != tc.want {
			t.Errorf("Decode(%q) = %+v, %v", tc.raw, a, err)
		}
	}
}

func TestTokenRoundTrip(t *testing.T) {
	tok := Token{Epoch: "abc", Seq: 42}
	got, err := ParseToken(tok.String())
	if err != nil || got != tok {
		t.Fatalf("ParseToken(%q) = %v, %v", tok, got, err)
	}
	for _, bad := range []string{"", "abc", ":1", "abc:", "abc:x", "abc:-1"} {
		if _, err := ParseToken(bad); err == nil {
			t.Errorf("ParseToken(%q) succeeded", bad)
		}
	}
}

// BenchmarkPublish measures one state upsert fanned out to N subscribers,
// each drained by its own goroutine as a connection writer would.
func BenchmarkPublish(b *testing.B) {
	for _, n := range []int{1, 10, 100} {
		b.Run(fmt.Sprintf("subscribers=%d", n), func(b *testing.B) {
			h := NewHub()
			s := h.NewState("p", "")
			var wg sync.WaitGroup
			done := make(chan struct{})
			for range n {
				ob := newTestOutbox(h, 1<<30)
				subscribeT(b, s.m, ob, "")
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						select {
						case <-ob.wake:
							for e := ob.pop(); e != nil; e = ob.pop() {
							}
						case <-done:
							return
						}
					}
				}()
			}
			obj := map[string]any{"pid": 1, "comm": "bench", "exe": "/usr/bin/bench", "threads": 4}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; b.Loop(); i++ {
				obj["threads"] = i
				s.Upsert(strconv.Itoa(i%1024), obj, "bench")
			}
			b.StopTimer()
			close(done)
			wg.Wait()
		})
	}
}
