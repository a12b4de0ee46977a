package mirror

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/coder/websocket"
)

// testLogger sends the server's log to the test log, so that a failing test
// shows what the server saw.
func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

type fixture struct {
	hub    *Hub
	procs  *State
	conns  *State
	events *Stream
	srv    *Server
	http   *httptest.Server
	url    string
}

// newFixture serves a hub like qbod's on a loopback httptest server. Tokens
// "root", "proc" (mirror:processes) and "getter" (command:get *) are known;
// any other token is refused.
func newFixture(t *testing.T, opts ServerOptions) *fixture {
	t.Helper()
	f := &fixture{hub: NewHub()}
	f.procs = f.hub.NewState("processes", "running processes")
	f.conns = f.hub.NewState("connections", "TCP connections")
	f.events = f.hub.NewStream("events", "kernel events", 16)
	f.hub.Handle("status", func(context.Context, *Request) (any, error) {
		return map[string]any{"version": "test"}, nil
	})
	f.hub.Handle("get processes", func(_ context.Context, req *Request) (any, error) {
		var args struct {
			Name string `json:"name"`
		}
		if err := req.Decode(&args); err != nil {
			return nil, err
		}
		if args.Name != "" {
			obj, ok := f.procs.Get(args.Name)
			if !ok {
				return nil, Errorf(CodeNotFound, "process %q not found", args.Name)
			}
			return []json.RawMessage{obj}, nil
		}
		return f.procs.List(), nil
	})
	f.hub.Handle("panic", func(context.Context, *Request) (any, error) { panic("handler bug") })
	f.hub.Handle("plain error", func(context.Context, *Request) (any, error) { return nil, errors.New("disk on fire") })
	if opts.Auth == nil {
		opts.Auth = func(r *http.Request) (Principal, error) {
			tok, _ := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			switch tok {
			case "", "root":
				return Principal{Name: "root", Scopes: []string{"*"}}, nil
			case "proc":
				return Principal{Name: "proc", Scopes: []string{"mirror:processes"}}, nil
			case "getter":
				return Principal{Name: "getter", Scopes: []string{"command:get *"}}, nil
			}
			return Principal{}, errors.New("unknown token")
		}
	}
	f.srv = NewServer(f.hub, testLogger(t), opts)
	f.http = httptest.NewServer(f.srv)
	f.url = "ws" + strings.TrimPrefix(f.http.URL, "http") + "/ws"
	t.Cleanup(func() {
		f.srv.Close()
		f.http.Close()
	})
	return f
}

func (f *fixture) dial(t *testing.T, token string) *Client {
	t.Helper()
	c, err := Dial(t.Context(), DialOptions{URL: f.url, Token: token})
	if err != nil {
		t.Fatalf("Dial: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// raw opens a plain websocket, for sending what the Client never would.
func (f *fixture) raw(t *testing.T) *websocket.Conn {
	t.Helper()
	ws, _, err := websocket.Dial(t.Context(), f.url, nil)
	if err != nil {
		t.Fatalf("websocket.Dial: %v", err)
	}
	ws.SetReadLimit(-1)
	t.Cleanup(func() { ws.CloseNow() })
	return ws
}

func readMsg(t *testing.T, ws *websocket.Conn) Message {
	t.Helper()
	typ, data, err := ws.Read(t.Context())
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	if typ != websocket.MessageText {
		t.Fatalf("server sent a %v message", typ)
	}
	var m Message
	if err := json.Unmarshal(data, &m); err != nil {
		t.Fatalf("server sent %q: %v", data, err)
	}
	return m
}

func wantCode(t *testing.T, err error, code string) {
	t.Helper()
	var e *Error
	if !errors.As(err, &e) || e.Code != code {
		t.Fatalf("error %v, want code %s", err, code)
	}
}

func TestGetMirrors(t *testing.T) {
	f := newFixture(t, ServerOptions{})
	f.procs.Upsert("1", map[string]any{"pid": 1}, "test")
	c := f.dial(t, "")
	var infos []MirrorInfo
	if err := c.Do(t.Context(), CommandGetMirrors, nil, &infos); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, i := range infos {
		names = append(names, i.Name+"/"+i.Kind)
	}
	if want := []string{"connections/state", "events/stream", "processes/state"}; !reflect.DeepEqual(names, want) {
		t.Fatalf("mirrors %v, want %v", names, want)
	}
	if p := infos[2]; p.Seq != 1 || p.Objects != 1 || p.Epoch == "" || p.Description != "running processes" {
		t.Fatalf("processes info %+v", p)
	}
}

func TestCommandErrors(t *testing.T) {
	f := newFixture(t, ServerOptions{})
	c := f.dial(t, "")
	ctx := t.Context()
	wantCode(t, c.Do(ctx, "no such thing", nil, nil), CodeUnknownCommand)
	wantCode(t, c.Do(ctx, CommandWatch, map[string]any{"mirror": "processes", "bogus": 1}, nil), CodeBadRequest)
	wantCode(t, c.Do(ctx, CommandWatch, map[string]any{}, nil), CodeBadRequest)
	wantCode(t, c.Do(ctx, CommandWatch, WatchArgs{Mirror: "nope"}, nil), CodeNotFound)
	wantCode(t, c.Do(ctx, CommandWatch, WatchArgs{Mirror: "processes", Since: "garbage"}, nil), CodeBadRequest)
	wantCode(t, c.Do(ctx, CommandUnwatch, UnwatchArgs{Mirror: "processes"}, nil), CodeNotFound)
	wantCode(t, c.Do(ctx, "get processes", map[string]any{"pid": 1}, nil), CodeBadRequest)
	wantCode(t, c.Do(ctx, "get processes", map[string]any{"name": "42"}, nil), CodeNotFound)
	wantCode(t, c.Do(ctx, "plain error", nil, nil), CodeInternal)
	var st map[string]string
	if err := c.Do(ctx, "status", nil, &st); err != nil || st["version"] != "test" {
		t.Fatalf("status after errors: %v, %v", st, err)
	}
	if s := f.hub.Stats(); s.Commands != 10 || s.CommandErrors != 9 {
		t.Fatalf("stats %+v", s)
	}
}

func TestWatchSnapshotDeltasAndResume(t *testing.T) {
	f := newFixture(t, ServerOptions{})
	for i := range 300 {
		f.procs.Upsert(strconv.Itoa(i), map[string]int{"pid": i}, "seed")
	}
	c := f.dial(t, "")
	ctx := t.Context()
	sub, err := c.Watch(ctx, "processes", "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Watch(ctx, "processes", ""); err == nil {
		t.Fatal("second watch of the same mirror succeeded")
	}
	r := newReplica(t)
	for !r.ended {
		m, err := sub.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		r.apply(m)
	}
	if len(r.objects) != 300 || r.seq != 300 {
		t.Fatalf("snapshot of %d objects at %d", len(r.objects), r.seq)
	}
	f.procs.Upsert("7", map[string]int{"pid": 7, "threads": 2}, "fork")
	f.procs.Delete("8", "exit")
	for r.seq < 302 {
		m, err := sub.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		r.apply(m)
	}
	if !r.equal(f.procs.List()) {
		t.Fatal("replica differs from the mirror")
	}
	tok := sub.Token()
	if tok != (Token{Epoch: r.epoch, Seq: 302}) {
		t.Fatalf("Token() = %v", tok)
	}

	// Another connection resumes from the token after more changes.
	c.Close()
	if _, err := sub.Next(ctx); !errors.Is(err, ErrClosed) {
		t.Fatalf("Next after Close: %v", err)
	}
	f.procs.Upsert("9", map[string]int{"pid": 9, "threads": 3}, "clone")
	c2 := f.dial(t, "")
	sub2, err := c2.Watch(ctx, "processes", tok.String())
	if err != nil {
		t.Fatal(err)
	}
	end, err := sub2.Next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if end.Type != TypeSnapshotEnd || !*end.Recovered || end.Seq != 302 {
		t.Fatalf("first message after resume %+v", end)
	}
	d, err := sub2.Next(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if d.Type != TypeDelta || d.Seq != 303 || d.Key != "9" || d.Cause != "clone" {
		t.Fatalf("replayed %+v", d)
	}
	r.apply(end, d)
	if !r.equal(f.procs.List()) {
		t.Fatal("resumed replica differs from the mirror")
	}

	// Unwatching stops the deltas; watching again works on the same client.
	if err := sub2.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c2.Watch(ctx, "processes", ""); err != nil {
		t.Fatalf("watch after unwatch: %v", err)
	}
	if s := f.hub.Stats(); s.DeltasSent < 3 {
		t.Fatalf("DeltasSent = %d", s.DeltasSent)
	}
}

func TestMalformedInputIsAnsweredAndConnectionStays(t *testing.T) {
	f := newFixture(t, ServerOptions{})
	ws := f.raw(t)
	ctx := t.Context()
	for _, tc := range []struct {
		in     string
		binary bool
		id     string // "" means an anonymous error message
	}{
		{in: `not json`},
		{in: `[1,2,3]`},
		{in: `"command"`},
		{in: `null`},
		{in: `{}`},
		{in: `{"type":"command","id":"7"}`, id: "7"},
		{in: `{"type":"reply","id":"8","command":"status"}`, id: "8"},
		{in: `{"type":"command","id":"9","command":"status","args":[1]}`, id: "9"},
		{in: `{"type":"command","id":"10","command":"status","extra":true}`, id: "10"},
		{in: `{"type":"command","id":11,"command":"status"}`},
		{in: "\x00\xff\xfe garbage", binary: true},
		{in: `{"type":"command","id":"12","command":"status"}`, binary: true, id: "12"},
	} {
		typ := websocket.MessageText
		if tc.binary {
			typ = websocket.MessageBinary
		}
		if err := ws.Write(ctx, typ, []byte(tc.in)); err != nil {
			t.Fatal(err)
		}
		m := readMsg(t, ws)
		var e *Error
		switch {
		case tc.id == "" && m.Type == TypeError:
			e = m.Error
		case tc.id != "" && m.Type == TypeReply && m.ID == tc.id && m.OK != nil && !*m.OK:
			e = m.Error
		default:
			t.Fatalf("%q: answered %+v", tc.in, m)
		}
		if e == nil || e.Code != CodeBadRequest {
			t.Fatalf("%q: error %+v, want bad_request", tc.in, e)
		}
	}
	if err := ws.Write(ctx, websocket.MessageText, []byte(`{"type":"command","id":"ok","command":"status"}`)); err != nil {
		t.Fatal(err)
	}
	if m := readMsg(t, ws); m.ID != "ok" || !*m.OK || string(m.Result) != `{"version":"test"}` {
		t.Fatalf("after malformed input: %+v", m)
	}
}

func TestOversizedMessageClosesOnlyThatConnection(t *testing.T) {
	f := newFixture(t, ServerOptions{ReadLimit: 1024})
	other := f.dial(t, "")
	ctx := t.Context()
	if err := other.Do(ctx, "status", nil, nil); err != nil {
		t.Fatal(err)
	}
	ws := f.raw(t)
	big := fmt.Sprintf(`{"type":"command","id":"1","command":"status","args":{"pad":%q}}`, strings.Repeat("x", 4096))
	if err := ws.Write(ctx, websocket.MessageText, []byte(big)); err != nil {
		t.Fatal(err)
	}
	_, _, err := ws.Read(ctx)
	if got := websocket.CloseStatus(err); got != websocket.StatusMessageTooBig {
		t.Fatalf("oversized message: read %v (status %v), want close 1009", err, got)
	}
	if err := other.Do(ctx, "status", nil, nil); err != nil {
		t.Fatalf("other client after the oversized message: %v", err)
	}
	c := f.dial(t, "")
	if err := c.Do(ctx, CommandGetMirrors, nil, nil); err != nil {
		t.Fatalf("new client after the oversized message: %v", err)
	}
}

func TestScopes(t *testing.T) {
	f := newFixture(t, ServerOptions{})
	ctx := t.Context()

	if _, err := Dial(ctx, DialOptions{URL: f.url, Token: "wrong"}); err == nil {
		t.Fatal("dial with an unknown token succeeded")
	} else {
		wantCode(t, err, CodeUnauthorized)
	}

	c := f.dial(t, "proc")
	if _, err := c.Watch(ctx, "processes", ""); err != nil {
		t.Fatalf("watch processes with mirror:processes: %v", err)
	}
	_, err := c.Watch(ctx, "events", "")
	wantCode(t, err, CodeUnauthorized)
	_, err = c.Watch(ctx, "nope", "")
	wantCode(t, err, CodeUnauthorized) // no scope: existence is not revealed
	wantCode(t, c.Do(ctx, "status", nil, nil), CodeUnauthorized)
	wantCode(t, c.Do(ctx, "get processes", nil, nil), CodeUnauthorized)
	var infos []MirrorInfo
	if err := c.Do(ctx, CommandGetMirrors, nil, &infos); err != nil || len(infos) != 1 || infos[0].Name != "processes" {
		t.Fatalf("get mirrors with mirror:processes: %+v, %v", infos, err)
	}

	g := f.dial(t, "getter")
	if err := g.Do(ctx, "get processes", nil, nil); err != nil {
		t.Fatalf("get processes with command:get *: %v", err)
	}
	wantCode(t, g.Do(ctx, "status", nil, nil), CodeUnauthorized)
	_, err = g.Watch(ctx, "processes", "")
	wantCode(t, err, CodeUnauthorized)
}

func TestHandlerPanicBecomesInternalError(t *testing.T) {
	f := newFixture(t, ServerOptions{})
	c := f.dial(t, "")
	ctx := t.Context()
	wantCode(t, c.Do(ctx, "panic", nil, nil), CodeInternal)
	if err := c.Do(ctx, "status", nil, nil); err != nil {
		t.Fatalf("connection after a handler panic: %v", err)
	}
}

func TestCommandsRunConcurrentlyAndSeeCancellation(t *testing.T) {
	f := newFixture(t, ServerOptions{})
	started := make(chan struct{})
	cancelled := make(chan struct{})
	f.hub.Handle("block", func(ctx context.Context, _ *Request) (any, error) {
		close(started)
		<-ctx.Done()
		close(cancelled)
		return nil, ctx.Err()
	})
	c := f.dial(t, "")
	ctx := t.Context()
	go c.Do(ctx, "block", nil, nil)
	<-started
	// The blocked command does not hold up others on the same connection.
	if err := c.Do(ctx, "status", nil, nil); err != nil {
		t.Fatal(err)
	}
	c.Close()
	<-cancelled
}

func TestMaxInFlightStopsReadingUntilACommandFinishes(t *testing.T) {
	f := newFixture(t, ServerOptions{MaxInFlight: 1})
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	f.hub.Handle("wait", func(context.Context, *Request) (any, error) {
		started <- struct{}{}
		<-release
		return "done", nil
	})
	c := f.dial(t, "")
	ctx := t.Context()
	waitErr := make(chan error, 1)
	go func() { waitErr <- c.Do(ctx, "wait", nil, nil) }()
	<-started
	statusErr := make(chan error, 1)
	go func() { statusErr <- c.Do(ctx, "status", nil, nil) }()
	select {
	case err := <-statusErr:
		t.Fatalf("status answered while the only slot was busy: %v", err)
	default:
	}
	close(release)
	if err := <-waitErr; err != nil {
		t.Fatal(err)
	}
	if err := <-statusErr; err != nil {
		t.Fatal(err)
	}
}

// TestLaggedClientIsToldAndCanResume fills a client's socket buffers by not
// reading, until the server's queue for it goes over budget.
func TestLaggedClientIsToldAndCanResume(t *testing.T) {
	f := newFixture(t, ServerOptions{SendBudget: 4})
	ctx := t.Context()
	ws := f.raw(t)
	watch := `{"type":"command","id":"w","command":"watch","args":{"mirror":"processes"}}`
	if err := ws.Write(ctx, websocket.MessageText, []byte(watch)); err != nil {
		t.Fatal(err)
	}
	r := newReplica(t)
	for !r.ended {
		r.apply(readMsg(t, ws))
	}

	pad := strings.Repeat("p", 64<<10)
	published := 0
	for f.hub.Stats().LaggedDisconnects == 0 {
		if published == 5000 {
			t.Fatal("published 5000 large deltas to a client that reads nothing and it never lagged")
		}
		published++
		f.procs.Upsert(strconv.Itoa(published), map[string]any{"pid": published, "pad": pad}, "test")
	}
	// More changes after the gap, which the resume must deliver.
	for i := 0; i < 3; i++ {
		published++
		f.procs.Upsert(strconv.Itoa(published), map[string]any{"pid": published}, "test")
	}

	for {
		typ, data, err := ws.Read(ctx)
		if err != nil {
			if got := websocket.CloseStatus(err); got != websocket.StatusTryAgainLater {
				t.Fatalf("connection ended with %v, want close 1013", err)
			}
			var ce websocket.CloseError
			if errors.As(err, &ce); ce.Reason != "lagged" {
				t.Fatalf("close reason %q", ce.Reason)
			}
			break
		}
		if typ != websocket.MessageText {
			t.Fatal("binary message from server")
		}
		var m Message
		if err := json.Unmarshal(data, &m); err != nil {
			t.Fatal(err)
		}
		if m.Type == TypeDelta && m.Seq != r.seq+1 {
			t.Fatalf("delta %d after %d: distinct keys must not coalesce", m.Seq, r.seq)
		}
		r.apply(m)
	}
	if r.lagged != (Token{Epoch: r.epoch, Seq: r.seq}).String() {
		t.Fatalf("lagged resume %q, but the last delta received was %d", r.lagged, r.seq)
	}

	c := f.dial(t, "")
	sub, err := c.Watch(ctx, "processes", r.lagged)
	if err != nil {
		t.Fatal(err)
	}
	for r.seq < uint64(published) {
		m, err := sub.Next(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if m.Type == TypeSnapshotEnd && !*m.Recovered {
			t.Fatal("resume after lag was not recovered")
		}
		if m.Type == TypeDelta && m.Seq != r.seq+1 {
			t.Fatalf("resumed delta %d after %d", m.Seq, r.seq)
		}
		r.apply(m)
	}
	if !r.equal(f.procs.List()) {
		t.Fatal("replica differs from the mirror after lag and resume")
	}
}

func TestServerCloseSendsGoingAway(t *testing.T) {
	f := newFixture(t, ServerOptions{})
	c := f.dial(t, "")
	ctx := t.Context()
	sub, err := c.Watch(ctx, "events", "")
	if err != nil {
		t.Fatal(err)
	}
	if m, err := sub.Next(ctx); err != nil || m.Type != TypeSnapshotEnd {
		t.Fatalf("Next = %+v, %v", m, err)
	}
	f.srv.Close()
	_, err = sub.Next(ctx)
	if !errors.Is(err, ErrClosed) || !strings.Contains(err.Error(), "1001") && !strings.Contains(err.Error(), "StatusGoingAway") {
		t.Fatalf("Next after server close: %v", err)
	}
	if err := c.Do(ctx, "status", nil, nil); !errors.Is(err, ErrClosed) {
		t.Fatalf("Do after server close: %v", err)
	}
	if _, err := Dial(ctx, DialOptions{URL: f.url}); err == nil {
		t.Fatal("dial after server close succeeded")
	}
	if n := f.hub.Stats().Clients; n != 0 {
		t.Fatalf("Clients = %d after Close", n)
	}
}

func TestDialUnixSocket(t *testing.T) {
	f := newFixture(t, ServerOptions{})
	sock := t.TempDir() + "/qbod.sock"
	l, err := (&net.ListenConfig{}).Listen(t.Context(), "unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/ws" || r.Host != "unix" {
			http.NotFound(w, r)
			return
		}
		f.srv.ServeHTTP(w, r)
	})}
	go hs.Serve(l)
	t.Cleanup(func() { hs.Close() })
	c, err := Dial(t.Context(), DialOptions{Socket: sock})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Do(t.Context(), "status", nil, nil); err != nil {
		t.Fatal(err)
	}
}

func TestWebHandler(t *testing.T) {
	h := WebHandler()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "http://qbo.test:7070/?token=abc", nil))
	if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), "new WebSocket(") {
		t.Fatalf("GET /: %d %.100q", rec.Code, rec.Body.String())
	}
	csp := rec.Header().Get("Content-Security-Policy")
	if !strings.Contains(csp, "script-src 'sha256-") || !strings.Contains(csp, "ws://qbo.test:7070") {
		t.Fatalf("CSP %q", csp)
	}
	for _, ref := range []string{"http://", "https://", "src=", "href="} {
		if strings.Contains(rec.Body.String(), ref) {
			t.Errorf("page references %q: it must be self-contained", ref)
		}
	}
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/other", nil))
	if rec.Code != http.StatusNotFound {
		t.Fatalf("GET /other: %d", rec.Code)
	}
	if !strings.HasPrefix(string(AsyncAPI), "asyncapi: 3.0.0") {
		t.Fatalf("AsyncAPI starts with %.30q", AsyncAPI)
	}
}
