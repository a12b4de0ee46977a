package mirror

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"runtime/debug"
	"sync"
	"time"

	"github.com/coder/websocket"
)

// ServerOptions configure a Server. Zero values mean the defaults.
type ServerOptions struct {
	// Auth identifies the principal behind a request before the upgrade;
	// an error is answered with HTTP 401. nil lets everyone in with
	// Scopes ["*"], which is right only where the transport already
	// restricts who can connect (the root-only unix socket).
	Auth func(r *http.Request) (Principal, error)
	// OriginPatterns are the browser origins allowed besides the server's
	// own (websocket.AcceptOptions.OriginPatterns). Default: same origin.
	OriginPatterns []string
	// SendBudget is how many deltas may wait in one client's queue before
	// the client is told it lagged and is disconnected. Default 1024.
	SendBudget int
	// ReadLimit is the largest message a client may send; a larger one
	// closes that connection with status 1009. Default 1 MiB.
	ReadLimit int64
	// WriteTimeout bounds every single write. Default 10s.
	WriteTimeout time.Duration
	// MaxInFlight is how many commands of one connection may be running
	// or have an answer not yet written; with that many the server reads
	// nothing more from that connection. Default 8.
	MaxInFlight int
}

func (o ServerOptions) withDefaults() ServerOptions {
	if o.SendBudget <= 0 {
		o.SendBudget = 1024
	}
	if o.ReadLimit <= 0 {
		o.ReadLimit = 1 << 20
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = 10 * time.Second
	}
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = 8
	}
	return o
}

// Server is the websocket endpoint of a Hub. It is an http.Handler; qbod
// mounts it at /ws on each of its listeners.
type Server struct {
	hub  *Hub
	log  *slog.Logger
	opts ServerOptions

	mu     sync.Mutex
	conns  map[*conn]struct{}
	closed bool
	wg     sync.WaitGroup
}

// NewServer returns a Server for hub that logs to log (nil: discard).
func NewServer(hub *Hub, log *slog.Logger, opts ServerOptions) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{hub: hub, log: log, opts: opts.withDefaults(), conns: make(map[*conn]struct{})}
}

// ServeHTTP authenticates the request, upgrades it to a websocket and serves
// the connection until it closes.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	principal := Principal{Name: "anonymous", Scopes: []string{"*"}}
	if s.opts.Auth != nil {
		p, err := s.opts.Auth(r)
		if err != nil {
			s.log.Debug("websocket authentication failed", "remote", r.RemoteAddr, "err", err)
			w.Header().Set("WWW-Authenticate", `Bearer realm="qbo"`)
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		principal = p
	}
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		http.Error(w, "server is shutting down", http.StatusServiceUnavailable)
		return
	}
	ws, err := websocket.Accept(w, r, &websocket.AcceptOptions{OriginPatterns: s.opts.OriginPatterns})
	if err != nil {
		// Accept has answered the request already.
		s.log.Debug("websocket upgrade failed", "remote", r.RemoteAddr, "err", err)
		return
	}
	ws.SetReadLimit(s.opts.ReadLimit)

	ctx, cancel := context.WithCancel(context.Background())
	c := &conn{
		s:         s,
		ws:        ws,
		principal: principal,
		remote:    r.RemoteAddr,
		ctx:       ctx,
		cancel:    cancel,
		ob:        newOutbox(&s.hub.stats, s.opts.SendBudget),
		sem:       make(chan struct{}, s.opts.MaxInFlight),
		subs:      make(map[string]*subscriber),
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		cancel()
		ws.Close(websocket.StatusGoingAway, "server shutting down")
		return
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		s.wg.Done()
	}()
	c.serve()
}

// Close closes every connection with status 1001 (going away), refuses new
// ones, and waits for the connections to finish.
func (s *Server) Close() {
	s.mu.Lock()
	s.closed = true
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		go c.ws.Close(websocket.StatusGoingAway, "server shutting down")
	}
	s.wg.Wait()
}

// conn is one websocket connection: a read loop that dispatches commands
// and a writer that drains the outbox.
type conn struct {
	s         *Server
	ws        *websocket.Conn
	principal Principal
	remote    string
	ctx       context.Context // cancelled when the connection ends
	cancel    context.CancelFunc
	ob        *outbox
	sem       chan struct{} // command slots: read but not yet answered

	subs map[string]*subscriber // by mirror; only the read loop touches it
}

func (c *conn) serve() {
	stats := &c.s.hub.stats
	stats.clients.Add(1)
	defer stats.clients.Add(-1)
	c.s.log.Debug("websocket connected", "remote", c.remote, "principal", c.principal.Name)

	writerDone := make(chan struct{})
	go func() {
		defer close(writerDone)
		c.writeLoop()
	}()
	c.readLoop()

	c.cancel()
	c.ob.close()
	for _, sub := range c.subs {
		sub.m.unsubscribe(sub)
	}
	<-writerDone
	// A close handshake, not CloseNow: the peer gets to read whatever close
	// frame was already sent (1009, 1013) before the socket goes away. It
	// returns at once if the connection is already closed.
	c.ws.Close(websocket.StatusNormalClosure, "")
}

// readLoop reads messages and answers each. Every message takes one of
// the connection's MaxInFlight slots, held until its answer is written
// (release); with every slot taken it reads nothing more. That bounds both
// the commands running and the answers waiting for a client that sends
// without reading.
func (c *conn) readLoop() {
	for {
		select {
		case c.sem <- struct{}{}:
		case <-c.ctx.Done():
			return
		}
		typ, data, err := c.ws.Read(c.ctx)
		if err != nil {
			c.release()
			c.logEnd(err)
			return
		}
		if typ != websocket.MessageText {
			msg, _ := DecodeCommand(data)
			c.fail(msg.ID, Errorf(CodeBadRequest, "binary messages are not supported; send JSON text"))
			continue
		}
		msg, err := DecodeCommand(data)
		if err != nil {
			c.fail(msg.ID, err)
			continue
		}
		c.s.hub.stats.commands.Add(1)
		c.dispatch(msg)
	}
}

// release frees the command slot of one answered message.
func (c *conn) release() { <-c.sem }

func (c *conn) logEnd(err error) {
	log := c.s.log.With("remote", c.remote, "principal", c.principal.Name)
	switch {
	case errors.Is(err, websocket.ErrMessageTooBig):
		log.Info("websocket closed: message too big", "limit", c.s.opts.ReadLimit)
	case websocket.CloseStatus(err) == websocket.StatusNormalClosure,
		websocket.CloseStatus(err) == websocket.StatusGoingAway:
		log.Debug("websocket closed by peer")
	default:
		log.Debug("websocket closed", "err", err)
	}
}

// dispatch runs one decoded command. Built-in commands run here, in
// order, so that a watch followed by an unwatch behave as sent; others run
// on their own goroutine.
func (c *conn) dispatch(msg Message) {
	req := &Request{Command: msg.Command, Args: msg.Args, Principal: c.principal}
	switch msg.Command {
	case CommandWatch:
		if err := c.call(msg.Command, func() (any, error) { return nil, c.watch(msg.ID, req) }); err != nil {
			c.fail(msg.ID, err)
		}
		return
	case CommandUnwatch:
		c.run(msg.ID, msg.Command, func() (any, error) { return c.unwatch(req) })
		return
	case CommandGetMirrors:
		c.run(msg.ID, msg.Command, func() (any, error) { return c.getMirrors(req) })
		return
	}
	fn := c.s.hub.handler(msg.Command)
	if fn == nil {
		c.fail(msg.ID, Errorf(CodeUnknownCommand, "unknown command %q", msg.Command))
		return
	}
	if !c.principal.Allows("command:" + msg.Command) {
		c.fail(msg.ID, Errorf(CodeUnauthorized, "not allowed to run %q", msg.Command))
		return
	}
	go c.run(msg.ID, msg.Command, func() (any, error) { return fn(c.ctx, req) })
}

// run runs fn and replies with its result.
func (c *conn) run(id, command string, fn func() (any, error)) {
	result, err := c.callResult(command, fn)
	c.reply(id, result, err)
}

// call runs fn for a command that queues its own reply on success.
func (c *conn) call(command string, fn func() (any, error)) error {
	_, err := c.callResult(command, fn)
	return err
}

// callResult runs fn, turning a panic into an internal error.
func (c *conn) callResult(command string, fn func() (any, error)) (result any, err error) {
	defer func() {
		if p := recover(); p != nil {
			c.s.log.Error("command panicked", "command", command, "remote", c.remote,
				"panic", fmt.Sprint(p), "stack", string(debug.Stack()))
			result, err = nil, Errorf(CodeInternal, "command %q failed unexpectedly", command)
		}
	}()
	return fn()
}

// reply queues the answer to a command. Replies are never dropped while the
// connection lives.
func (c *conn) reply(id string, result any, err error) {
	if err != nil {
		c.fail(id, err)
		return
	}
	b, err := json.Marshal(result)
	if err != nil {
		c.fail(id, fmt.Errorf("encoding the result: %w", err))
		return
	}
	c.ob.pushRaw(encodeReply(id, b), c.release)
}

// fail answers a command with an error, or, when the message had no usable
// id, sends an anonymous error message.
func (c *conn) fail(id string, err error) {
	var e *Error
	if !errors.As(err, &e) {
		level := slog.LevelWarn
		if c.ctx.Err() != nil {
			level = slog.LevelDebug // the connection is ending; the handler saw its ctx cancelled
		}
		c.s.log.Log(context.Background(), level, "command failed", "remote", c.remote, "err", err)
		e = &Error{Code: CodeInternal, Message: err.Error()}
	}
	c.s.hub.stats.commandErrors.Add(1)
	if id == "" {
		c.ob.pushRaw(encodeError(e), c.release)
		return
	}
	c.ob.pushRaw(encodeReplyError(id, e), c.release)
}

// watch subscribes the connection to a mirror. On success the reply has
// been queued together with the snapshot; an error still needs its answer.
func (c *conn) watch(id string, req *Request) error {
	var args WatchArgs
	if err := req.Decode(&args); err != nil {
		return err
	}
	if args.Mirror == "" {
		return Errorf(CodeBadRequest, "watch: mirror is required")
	}
	if !c.principal.Allows("mirror:" + args.Mirror) {
		return Errorf(CodeUnauthorized, "not allowed to watch %q", args.Mirror)
	}
	m := c.s.hub.mirror(args.Mirror)
	if m == nil {
		return Errorf(CodeNotFound, "no mirror %q", args.Mirror)
	}
	var since *Token
	if args.Since != "" {
		t, err := ParseToken(args.Since)
		if err != nil {
			return err
		}
		since = &t
	}
	if c.subs[args.Mirror] != nil {
		return Errorf(CodeConflict, "already watching %q", args.Mirror)
	}
	sub, ok := m.subscribe(c.ob, id, since, c.release)
	if !ok {
		// The connection is closing: nobody will read an answer, and
		// subscribe has freed the command slot already.
		return nil
	}
	c.subs[args.Mirror] = sub
	return nil
}

func (c *conn) unwatch(req *Request) (any, error) {
	var args UnwatchArgs
	if err := req.Decode(&args); err != nil {
		return nil, err
	}
	sub := c.subs[args.Mirror]
	if sub == nil {
		return nil, Errorf(CodeNotFound, "not watching %q", args.Mirror)
	}
	delete(c.subs, args.Mirror)
	sub.m.unsubscribe(sub)
	c.ob.purge(sub)
	return args, nil
}

// getMirrors lists the mirrors the principal may watch. It needs no
// command scope: knowing a mirror exists is worth nothing without the
// scope to watch it.
func (c *conn) getMirrors(req *Request) (any, error) {
	var args struct{}
	if err := req.Decode(&args); err != nil {
		return nil, err
	}
	infos := []MirrorInfo{}
	for _, info := range c.s.hub.Mirrors() {
		if c.principal.Allows("mirror:" + info.Name) {
			infos = append(infos, info)
		}
	}
	return infos, nil
}

func (c *conn) writeLoop() {
	defer c.cancel()
	for {
		select {
		case <-c.ob.wake:
		case <-c.ctx.Done():
			return
		}
		for e := c.ob.pop(); e != nil; e = c.ob.pop() {
			if e.kind == entryClose {
				c.s.log.Info("websocket client lagged; disconnecting", "remote", c.remote,
					"principal", c.principal.Name, "mirror", e.sub.m.name, "budget", c.s.opts.SendBudget)
				c.ws.Close(websocket.StatusTryAgainLater, "lagged")
				return
			}
			if err := e.emit(c.write); err != nil {
				c.s.log.Debug("websocket write failed", "remote", c.remote, "err", err)
				return
			}
			if e.done != nil {
				e.done()
			}
		}
	}
}

func (c *conn) write(msg []byte, delta bool) error {
	ctx, cancel := context.WithTimeout(c.ctx, c.s.opts.WriteTimeout)
	defer cancel()
	if err := c.ws.Write(ctx, websocket.MessageText, msg); err != nil {
		return err
	}
	if delta {
		c.s.hub.stats.deltasSent.Add(1)
	}
	return nil
}
