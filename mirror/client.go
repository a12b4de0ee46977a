package mirror

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/coder/websocket"
)

const (
	// clientReadLimit is the largest message the client accepts. Snapshot
	// chunks carry up to snapshotChunk objects, so this is generous.
	clientReadLimit = 64 << 20
	// subscriptionBuffer is how many messages of one subscription the client
	// holds for Next. When it is full the client stops reading the socket,
	// and the server, not the client's memory, absorbs the backlog.
	subscriptionBuffer = 1024
)

// ErrClosed is returned (wrapped) once the connection is closed.
var ErrClosed = errors.New("mirror: connection closed")

// ErrLagged is returned (wrapped) by Subscription.Next after the server
// reported that the subscription fell behind. The error text carries the
// resume token, which Subscription.Token also returns.
var ErrLagged = errors.New("mirror: subscription lagged")

// DialOptions say where the daemon is. Socket wins over URL.
type DialOptions struct {
	Socket string // unix socket path; the request goes to http://unix/ws
	URL    string // ws://host:port/ws or wss://...
	Token  string // sent as "Authorization: Bearer TOKEN"
}

// Client is a connection to a mirror server. It is safe for concurrent use.
type Client struct {
	ws   *websocket.Conn
	ids  atomic.Uint64
	done chan struct{} // closed when the read loop ends

	closeOnce sync.Once
	closing   chan struct{} // closed by Close: stop waiting for Next callers

	mu      sync.Mutex
	pending map[string]chan Message
	subs    map[string]*Subscription
	err     error // why the read loop ended; set before done is closed
}

// Dial connects to a mirror server. A server that refuses the credentials
// yields an error that is (errors.As) an *Error with CodeUnauthorized.
func Dial(ctx context.Context, opts DialOptions) (*Client, error) {
	var u string
	var hc *http.Client
	switch {
	case opts.Socket != "":
		u = "http://unix/ws"
		socket := opts.Socket
		hc = &http.Client{Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", socket)
			},
		}}
	case opts.URL != "":
		u = opts.URL
	default:
		return nil, errors.New("dialing mirror server: neither socket nor URL given")
	}
	header := http.Header{}
	if opts.Token != "" {
		header.Set("Authorization", "Bearer "+opts.Token)
	}
	ws, resp, err := websocket.Dial(ctx, u, &websocket.DialOptions{HTTPClient: hc, HTTPHeader: header})
	if err != nil {
		where := u
		if opts.Socket != "" {
			where = opts.Socket
		}
		if resp != nil && (resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden) {
			return nil, fmt.Errorf("dialing %s: %w", where, Errorf(CodeUnauthorized, "the server refused the credentials (HTTP %d)", resp.StatusCode))
		}
		return nil, fmt.Errorf("dialing %s: %w", where, err)
	}
	ws.SetReadLimit(clientReadLimit)
	c := &Client{
		ws:      ws,
		done:    make(chan struct{}),
		closing: make(chan struct{}),
		pending: make(map[string]chan Message),
		subs:    make(map[string]*Subscription),
	}
	go c.readLoop()
	return c, nil
}

func (c *Client) readLoop() {
	var err error
	defer func() {
		c.mu.Lock()
		c.err = err
		c.mu.Unlock()
		close(c.done)
	}()
	for {
		var typ websocket.MessageType
		var data []byte
		typ, data, err = c.ws.Read(context.Background())
		if err != nil {
			return
		}
		var m Message
		if typ != websocket.MessageText || json.Unmarshal(data, &m) != nil {
			continue // not ours to interpret; the server never sends this
		}
		switch m.Type {
		case TypeReply:
			c.mu.Lock()
			ch := c.pending[m.ID]
			delete(c.pending, m.ID)
			c.mu.Unlock()
			if ch != nil {
				ch <- m // buffered; one reply per id
			}
		case TypeSnapshot, TypeSnapshotEnd, TypeDelta, TypeLagged:
			c.mu.Lock()
			s := c.subs[m.Mirror]
			c.mu.Unlock()
			if s != nil {
				select {
				case s.ch <- m:
				case <-s.gone:
				case <-c.closing:
				}
			}
		}
	}
}

// closedErr says why the connection is gone. Call it after done is closed.
func (c *Client) closedErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil || errors.Is(c.err, net.ErrClosed) {
		return ErrClosed
	}
	return fmt.Errorf("%w: %v", ErrClosed, c.err)
}

// Do sends a command and waits for its reply. args, if not nil, is
// marshalled as the command's arguments; result, if not nil, receives the
// reply's result. A failed command returns its *Error.
func (c *Client) Do(ctx context.Context, command string, args, result any) error {
	var raw json.RawMessage
	if args != nil {
		b, err := json.Marshal(args)
		if err != nil {
			return fmt.Errorf("%s: encoding arguments: %w", command, err)
		}
		raw = b
	}
	id := strconv.FormatUint(c.ids.Add(1), 10)
	ch := make(chan Message, 1)
	c.mu.Lock()
	c.pending[id] = ch
	c.mu.Unlock()
	forget := func() {
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
	}
	b, err := json.Marshal(Message{Type: TypeCommand, ID: id, Command: command, Args: raw})
	if err != nil {
		forget()
		return fmt.Errorf("%s: encoding: %w", command, err)
	}
	if err := c.ws.Write(ctx, websocket.MessageText, b); err != nil {
		forget()
		select {
		case <-c.done:
			return fmt.Errorf("%s: %w", command, c.closedErr())
		default:
		}
		return fmt.Errorf("%s: sending: %w", command, err)
	}
	var reply Message
	select {
	case reply = <-ch:
	case <-c.done:
		select {
		case reply = <-ch:
		default:
			return fmt.Errorf("%s: %w", command, c.closedErr())
		}
	case <-ctx.Done():
		forget()
		return ctx.Err()
	}
	if reply.OK == nil || !*reply.OK {
		if reply.Error != nil {
			return reply.Error
		}
		return Errorf(CodeInternal, "%s: failed reply without an error", command)
	}
	if result != nil {
		if err := json.Unmarshal(reply.Result, result); err != nil {
			return fmt.Errorf("%s: decoding result: %w", command, err)
		}
	}
	return nil
}

// Watch subscribes to a mirror. since is "" or a resume token "EPOCH:SEQ".
// It returns after the server accepted the watch; the snapshot (or the
// replay) and then the deltas come from Subscription.Next, which must be
// called promptly: a subscription that is not drained stops the client from
// reading, and the server eventually disconnects it as lagged.
func (c *Client) Watch(ctx context.Context, mirror, since string) (*Subscription, error) {
	s := &Subscription{
		c:      c,
		mirror: mirror,
		ch:     make(chan Message, subscriptionBuffer),
		gone:   make(chan struct{}),
	}
	c.mu.Lock()
	if c.subs[mirror] != nil {
		c.mu.Unlock()
		return nil, Errorf(CodeConflict, "already watching %q on this connection", mirror)
	}
	c.subs[mirror] = s
	c.mu.Unlock()
	var res WatchResult
	if err := c.Do(ctx, CommandWatch, WatchArgs{Mirror: mirror, Since: since}, &res); err != nil {
		s.forget()
		return nil, err
	}
	return s, nil
}

// Close closes the connection.
func (c *Client) Close() error {
	c.closeOnce.Do(func() { close(c.closing) })
	err := c.ws.Close(websocket.StatusNormalClosure, "")
	<-c.done
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// Subscription is one watched mirror of a Client.
type Subscription struct {
	c      *Client
	mirror string
	ch     chan Message
	gone   chan struct{} // closed by forget: the read loop drops our messages

	mu     sync.Mutex
	token  Token
	lagged bool
}

func (s *Subscription) forget() {
	s.c.mu.Lock()
	if s.c.subs[s.mirror] == s {
		delete(s.c.subs, s.mirror)
		close(s.gone)
	}
	s.c.mu.Unlock()
}

// Next returns the next message of the subscription, in order: snapshot
// chunks, snapshot_end, then deltas. If the subscription fell behind, Next
// returns the lagged message (its Resume is the token to watch again with),
// and from then on an error wrapping ErrLagged. After the connection closes
// it returns an error wrapping ErrClosed.
func (s *Subscription) Next(ctx context.Context) (Message, error) {
	s.mu.Lock()
	lagged, token := s.lagged, s.token
	s.mu.Unlock()
	if lagged {
		return Message{}, fmt.Errorf("%w: resume with since=%s", ErrLagged, token)
	}
	select {
	case m := <-s.ch:
		return s.note(m), nil
	default:
	}
	select {
	case m := <-s.ch:
		return s.note(m), nil
	case <-s.c.done:
		// Everything the read loop delivered before it ended is in ch.
		select {
		case m := <-s.ch:
			return s.note(m), nil
		default:
			return Message{}, s.c.closedErr()
		}
	case <-s.gone:
		return Message{}, fmt.Errorf("watching %q: %w", s.mirror, ErrClosed)
	case <-ctx.Done():
		return Message{}, ctx.Err()
	}
}

// note advances the resume position past m.
func (s *Subscription) note(m Message) Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch m.Type {
	case TypeSnapshotEnd:
		s.token = Token{Epoch: m.Epoch, Seq: m.Seq}
	case TypeDelta:
		s.token.Seq = m.Seq
	case TypeLagged:
		s.lagged = true
		if t, err := ParseToken(m.Resume); err == nil {
			s.token = t
		}
	}
	return m
}

// Token is the resume position of everything Next has returned so far: a
// later Watch with since=Token().String() continues right after it (or
// starts over with a fresh snapshot if the server no longer can). Before
// Next has returned the snapshot_end it is the zero Token: there is nothing
// to resume yet, so watch again without since.
func (s *Subscription) Token() Token {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.token
}

// Close stops watching: it sends unwatch and drops anything still queued
// for the subscription.
func (s *Subscription) Close(ctx context.Context) error {
	s.forget()
	return s.c.Do(ctx, CommandUnwatch, UnwatchArgs{Mirror: s.mirror}, nil)
}
