package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"path/filepath"
	"sync"
	"time"

	bpflb "github.com/qbo/qbo/bpf/lb"
	"github.com/qbo/qbo/bpf/sock"
	"github.com/qbo/qbo/lb"
	"github.com/qbo/qbo/lb/datapath"
	"github.com/qbo/qbo/mirror"
)

type lbConfig struct {
	TableSize    uint32        `yaml:"maglev_table_size"`
	FlowEntries  uint32        `yaml:"flow_entries"`
	DrainTimeout time.Duration `yaml:"drain_timeout"`
	Cgroup       string        `yaml:"cgroup"`
}

func init() {
	var s lbSystem
	register(subsystem{name: "lb", start: s.start, status: s.status, stop: s.stop})
}

// lbSystem owns the desired services (persisted in state_dir/lb.json), the
// loaded lb object, and the "services" mirror.
type lbSystem struct {
	mu       sync.Mutex
	log      *slog.Logger
	path     string
	state    *lb.State
	obj      *bpflb.Objects
	sock     *sock.Objects
	sockErr  error
	dp       *datapath.Datapath
	mirror   *mirror.State
	drain    time.Duration
	draining map[uint32]time.Time // backend ID -> when it started draining
	after    []func()             // run by mutate once a change is committed
	uplinks  []string
	downErr  error // why start failed, for the commands' "unavailable"
}

// serviceView is a service as the mirror and "get services" show it.
type serviceView struct {
	Name      string        `json:"name"`
	VIP       string        `json:"vip"`
	Proto     string        `json:"proto"`
	Mode      lb.Mode       `json:"mode"`
	Drain     bool          `json:"drain,omitempty"`
	ID        uint32        `json:"id"`
	TableSize uint32        `json:"table_size"`
	Backends  []backendView `json:"backends"`
}

type backendView struct {
	Addr   string `json:"addr"`
	Weight uint32 `json:"weight"`
	ID     uint32 `json:"id"`
	State  string `json:"state"` // active or draining
	Flows  int    `json:"flows"` // entries in the flow table
}

func (s *lbSystem) start(ctx context.Context, d *daemon, wg *sync.WaitGroup) (err error) {
	defer func() {
		if err != nil {
			s.mu.Lock()
			s.downErr = err
			s.mu.Unlock()
		}
	}()
	s.log = d.log.With("subsystem", "lb")
	s.mirror = d.hub.NewState("services", "load-balanced services (VIP:port/proto) with their backends and per-backend flow counts")
	s.path = filepath.Join(d.cfg.StateDir, "lb.json")
	s.drain = d.cfg.LB.DrainTimeout
	s.draining = map[uint32]time.Time{}
	s.uplinks = d.cfg.Uplinks
	s.registerCommands(d.hub)

	if ts := d.cfg.LB.TableSize; ts != 0 && !lb.IsPrime(ts) {
		return fmt.Errorf("lb.maglev_table_size %d is not a prime", ts)
	}
	st, err := lb.LoadState(s.path)
	if err != nil {
		return err
	}
	st.TableSize = d.cfg.LB.TableSize
	obj, err := bpflb.Load(bpflb.Options{PinDir: d.cfg.PinDir, Uplinks: d.cfg.Uplinks, FlowEntries: d.cfg.LB.FlowEntries})
	if err != nil {
		return err
	}
	if c, ok := obj.Upgraded(); ok {
		s.log.Info("flow and reverse-NAT tables of an older qbo copied into lb_flows3 and removed",
			"flows", c.Flows, "replaced", c.Replaced, "replies_spilled", c.Replies)
	}
	// The socket hooks share bpf/lb's maps (pinned by name), so they load
	// after it. Without them, traffic from outside is still balanced.
	so, err := sock.Load(sock.Options{PinDir: d.cfg.PinDir, Cgroup: d.cfg.LB.Cgroup})
	if err != nil {
		s.log.Error("socket load balancing unavailable", "err", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.state, s.obj, s.dp, s.sock, s.sockErr = st, obj, datapath.New(obj), so, err
	ops, err := s.dp.Sync(st.Tables())
	if err != nil {
		return fmt.Errorf("restoring services: %w", err)
	}
	s.log.Info("load balancer ready", "services", len(st.Services), "ops", len(ops), "uplinks", d.cfg.Uplinks)
	s.publishLocked("restore")

	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(2 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				s.refresh()
			}
		}
	}()
	return nil
}

func (s *lbSystem) stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.obj != nil {
		s.obj.Close()
		// Commands that arrive while qbod stops answer "unavailable",
		// not errors from closed maps.
		s.obj, s.dp = nil, nil
	}
	if s.sock != nil {
		s.sock.Close()
		s.sock = nil
	}
}

func (s *lbSystem) status() any {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]any{"uplinks": s.uplinks, "socket_lb": s.sock != nil}
	if s.sockErr != nil {
		out["socket_lb_error"] = s.sockErr.Error()
	}
	if s.state != nil {
		out["services"] = len(s.state.Services)
	}
	if s.dp != nil {
		if st, err := s.dp.Stats(); err == nil {
			out["counters"] = st
		}
	}
	return out
}

// refresh publishes flow counts and forgets draining backends whose flows
// ended or whose drain timeout passed.
func (s *lbSystem) refresh() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dp == nil {
		return
	}
	counts, err := s.dp.FlowCounts()
	if err != nil {
		s.log.Warn("reading flow counts", "err", err)
		return
	}
	changed := false
	before := s.snapshotLocked()
	now := time.Now()
	for _, svc := range s.state.Sorted() {
		for _, b := range svc.Draining {
			since, ok := s.draining[b.ID]
			if !ok {
				s.draining[b.ID] = now
				since = now
			}
			if counts[b.ID] == 0 || now.Sub(since) >= s.drain {
				s.state.Forget(svc.Name, b.ID)
				delete(s.draining, b.ID)
				changed = true
			}
		}
	}
	if changed {
		if err := s.commitLocked(before); err != nil {
			s.log.Warn("forgetting drained backends", "err", err)
		}
	}
	s.publishCountsLocked(counts, "flows")
}

func (s *lbSystem) publishLocked(cause string) {
	counts, err := s.dp.FlowCounts()
	if err != nil {
		counts = map[uint32]int{}
	}
	s.publishCountsLocked(counts, cause)
}

func (s *lbSystem) publishCountsLocked(counts map[uint32]int, cause string) {
	objs := map[string]any{}
	for _, svc := range s.state.Sorted() {
		objs[svc.Name] = view(svc, counts)
	}
	s.mirror.Reconcile(objs, cause)
}

func view(svc *lb.Service, counts map[uint32]int) serviceView {
	v := serviceView{Name: svc.Name, VIP: svc.VIP.String(), Proto: svc.Proto.String(), Mode: svc.Mode,
		Drain: svc.Drain, ID: svc.ID, TableSize: svc.TableSize, Backends: []backendView{}}
	for _, b := range svc.Backends {
		v.Backends = append(v.Backends, backendView{Addr: b.Addr.String(), Weight: b.Weight, ID: b.ID, State: "active", Flows: counts[b.ID]})
	}
	for _, b := range svc.Draining {
		v.Backends = append(v.Backends, backendView{Addr: b.Addr.String(), Weight: b.Weight, ID: b.ID, State: "draining", Flows: counts[b.ID]})
	}
	return v
}

// commitLocked persists the desired state and programs the maps: only the
// services that changed since before, so that a change costs the same with
// 1 or 100k services.
func (s *lbSystem) commitLocked(before map[string]*lb.Service) error {
	if err := s.state.Save(s.path); err != nil {
		return err
	}
	var ops []lb.Op
	for name, old := range before {
		if cur := s.state.Services[name]; cur != old {
			ops = append(ops, lb.Diff(lb.ServiceTables(cur), lb.ServiceTables(old))...)
		}
	}
	for name, cur := range s.state.Services {
		if _, ok := before[name]; !ok {
			ops = append(ops, lb.Diff(lb.ServiceTables(cur), lb.NewTables())...)
		}
	}
	return s.dp.Apply(lb.Order(ops))
}

func (s *lbSystem) snapshotLocked() map[string]*lb.Service {
	m := make(map[string]*lb.Service, len(s.state.Services))
	for k, v := range s.state.Services {
		m[k] = v // services are replaced on change, never mutated in place
	}
	return m
}

type addServiceArgs struct {
	Name     string   `json:"name"`
	VIP      string   `json:"vip"`      // IP:PORT/PROTO
	Backends []string `json:"backends"` // IP:PORT[@WEIGHT]
	Mode     string   `json:"mode,omitempty"`
	Drain    bool     `json:"drain,omitempty"`
}

type backendArgs struct {
	Service string `json:"service"`
	Backend string `json:"backend"` // IP:PORT[@WEIGHT]
}

// decodeBackend decodes the arguments of add and delete backend, which both
// need a service and a backend.
func decodeBackend(req *mirror.Request) (backendArgs, error) {
	var a backendArgs
	if err := req.Decode(&a); err != nil {
		return a, err
	}
	if err := required(req, "service", a.Service); err != nil {
		return a, err
	}
	return a, required(req, "backend", a.Backend)
}

func (s *lbSystem) registerCommands(h *mirror.Hub) {
	h.Handle("get services", s.whileRunning(getFrom(s.mirror, "service")))
	h.Handle("add service", s.mutate(func(req *mirror.Request) (any, error) {
		var a addServiceArgs
		if err := req.Decode(&a); err != nil {
			return nil, err
		}
		vip, proto, err := lb.ParseVIP(a.VIP)
		if err != nil {
			return nil, err
		}
		svc := lb.Service{Name: a.Name, VIP: vip, Proto: proto, Mode: lb.Mode(a.Mode), Drain: a.Drain}
		for _, b := range a.Backends {
			be, err := lb.ParseBackend(b)
			if err != nil {
				return nil, err
			}
			svc.Backends = append(svc.Backends, be)
		}
		return s.state.AddService(svc)
	}))
	h.Handle("delete service", s.mutate(func(req *mirror.Request) (any, error) {
		name, err := decodeName(req)
		if err != nil {
			return nil, err
		}
		return nil, s.state.DeleteService(name)
	}))
	h.Handle("add backend", s.mutate(func(req *mirror.Request) (any, error) {
		a, err := decodeBackend(req)
		if err != nil {
			return nil, err
		}
		be, err := lb.ParseBackend(a.Backend)
		if err != nil {
			return nil, err
		}
		return s.state.AddBackend(a.Service, be)
	}))
	h.Handle("delete backend", s.mutate(func(req *mirror.Request) (any, error) {
		a, err := decodeBackend(req)
		if err != nil {
			return nil, err
		}
		addr, err := netip.ParseAddrPort(a.Backend)
		if err != nil {
			return nil, fmt.Errorf("%w: backend %q: %v", lb.ErrInvalid, a.Backend, err)
		}
		svc, b, err := s.state.DeleteBackend(a.Service, addr)
		if err != nil {
			return nil, err
		}
		s.draining[b.ID] = time.Now()
		// Once the backend is out of the maps, so that the sockets'
		// reconnects cannot pick it again.
		s.after = append(s.after, func() { s.destroySockets(svc, b) })
		return svc, nil
	}))
}

// downLocked is the error of every load-balancer command while the load
// balancer is not running (it failed to start, or qbod is stopping):
// "unavailable", before any argument is looked at, as the runtime's
// commands answer.
func (s *lbSystem) downLocked() error {
	switch {
	case s.downErr != nil:
		return mirror.Errorf(mirror.CodeUnavailable, "load balancer is not running: %v", s.downErr)
	case s.dp == nil:
		return mirror.Errorf(mirror.CodeUnavailable, "load balancer is not running")
	}
	return nil
}

// whileRunning answers h while the load balancer runs; its mirror, which
// h reads, is empty otherwise, and an empty list would say "no services".
func (s *lbSystem) whileRunning(h mirror.HandlerFunc) mirror.HandlerFunc {
	return func(ctx context.Context, req *mirror.Request) (any, error) {
		s.mu.Lock()
		err := s.downLocked()
		s.mu.Unlock()
		if err != nil {
			return nil, err
		}
		return h(ctx, req)
	}
}

// mutate runs fn on the desired state under the lock, then persists and
// programs it; on failure the previous state is restored.
func (s *lbSystem) mutate(fn func(*mirror.Request) (any, error)) mirror.HandlerFunc {
	return func(_ context.Context, req *mirror.Request) (any, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		if err := s.downLocked(); err != nil {
			return nil, err
		}
		before := s.snapshotLocked()
		s.after = nil
		res, err := fn(req)
		if err != nil {
			return nil, lbError(err)
		}
		defer func() { s.after = nil }()
		if err := s.commitLocked(before); err != nil {
			s.state.Services = before
			if _, rerr := s.dp.Sync(s.state.Tables()); rerr != nil {
				s.log.Error("restoring maps after a failed change", "err", rerr)
			}
			return nil, mirror.Errorf(mirror.CodeInternal, "%v", err)
		}
		for _, f := range s.after {
			f()
		}
		s.publishLocked(req.Command)
		if svc, ok := res.(*lb.Service); ok {
			return view(svc, nil), nil
		}
		return map[string]bool{"ok": true}, nil
	}
}

// destroySockets terminates the node's sockets that socket LB connected
// to b, unless the service drains. Flows from outside (XDP) always drain.
func (s *lbSystem) destroySockets(svc *lb.Service, b lb.Backend) {
	if svc.Drain || s.sock == nil {
		return
	}
	n, err := s.sock.Destroy(b.ID)
	if err != nil {
		s.log.Warn("terminating sockets of a deleted backend", "backend", b.Addr, "err", err)
		return
	}
	s.log.Info("terminated sockets of a deleted backend", "service", svc.Name, "backend", b.Addr, "sockets", n)
}

func lbError(err error) error {
	switch {
	case errors.Is(err, lb.ErrNotFound):
		return mirror.Errorf(mirror.CodeNotFound, "%v", err)
	case errors.Is(err, lb.ErrExists):
		return mirror.Errorf(mirror.CodeConflict, "%v", err)
	case errors.Is(err, lb.ErrInvalid):
		return mirror.Errorf(mirror.CodeBadRequest, "%v", err)
	}
	var me *mirror.Error
	if errors.As(err, &me) {
		return err
	}
	return mirror.Errorf(mirror.CodeInternal, "%v", err)
}
