package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"sync"
	"time"

	containerd "github.com/containerd/containerd/v2/client"

	"github.com/qbo/qbo/fw"
	"github.com/qbo/qbo/mirror"
	"github.com/qbo/qbo/runtime/engine"
	"github.com/qbo/qbo/runtime/instance"
)

// The runtime subsystem: compute instances and the host's containers.
// Mirrors are fed by Docker events (hints: the stream can skip) and by full
// lists (truth) on start, after each hint and every runtime.resync.
func init() {
	rt := &runtimeSys{}
	theRuntime = rt
	register(subsystem{name: "runtime", early: true, start: rt.start, status: rt.status})
	fwInstanceResolver = rt
}

// instanceNetWatchers are told (each in its own goroutine) when the set of
// instances or their host-side interfaces changed: the firewall re-resolves
// its instance targets.
var instanceNetWatchers []func()

// theRuntime is the one runtime subsystem, for attributePID.
var theRuntime *runtimeSys

// errRuntimeDown: instance targets cannot be resolved without the runtime.
var errRuntimeDown = errors.New("the runtime is not running")

// ResolveIfaces gives the host side of an instance's veth pair, where the
// firewall attaches (the host side's egress is the instance's ingress).
func (rt *runtimeSys) ResolveIfaces(ctx context.Context, t fw.Target) ([]string, error) {
	if rt.m == nil {
		return nil, errRuntimeDown
	}
	inst, err := rt.m.Get(ctx, t.Name)
	if err != nil {
		return nil, err
	}
	if inst.HostVeth == "" {
		return nil, fmt.Errorf("instance %s has no network interface (status %s)", t.Name, inst.Status)
	}
	return []string{inst.HostVeth}, nil
}

// placePID says which container, instance and nested container a process
// runs in (from /proc/PID/cgroup and the last full list); zero for a host
// process or when the runtime is not running. The telemetry mirrors label
// processes and connections with it.
func placePID(pid uint32) placement {
	if theRuntime == nil || theRuntime.m == nil {
		return placement{}
	}
	a, _ := theRuntime.m.Attribute(int(pid))
	return placement{Container: a.Container, Instance: a.Instance, Nested: a.Nested}
}

type runtimeSys struct {
	d     *daemon
	ctrd  *containerd.Client // nil when containerd is not configured or not answering
	ctx   context.Context    // the daemon's: lifecycles outlive requests
	m     *instance.Manager
	instM *mirror.State
	contM *mirror.State
	hint  chan struct{}

	// feed serialises every write to the two mirrors, so that a list taken
	// before an operation's progress report is never published after it.
	feed  sync.Mutex
	inner map[string]context.CancelFunc // event watchers of inner dockerds

	veths map[string]string // instance -> host veth at the last list (under feed)

	mu       sync.Mutex
	docker   string
	ctrdErr  string
	recovery *instance.Recovery
	lastErr  string
}

func (rt *runtimeSys) start(ctx context.Context, d *daemon, wg *sync.WaitGroup) error {
	rt.d, rt.ctx = d, ctx
	rt.hint = make(chan struct{}, 1)
	rt.inner = map[string]context.CancelFunc{}
	rt.instM = d.hub.NewState("instances", "compute instances (Docker-in-Docker): status, resources, address, host veth, and the containers inside each")
	rt.contM = d.hub.NewState("containers", "containers of the host dockerd (with the instance each belongs to) and of containerd outside dockerd's namespace")
	rc := d.cfg.Runtime
	rt.docker = rc.Docker

	// Without dockerd (or with a bad setting) the commands still exist and
	// answer "unavailable" with the reason; status shows it too.
	fail := func(err error) error {
		unavailable := func(context.Context, *mirror.Request) (any, error) {
			return nil, mirror.Errorf(mirror.CodeUnavailable, "runtime: %v", err)
		}
		for _, c := range runtimeCommands {
			d.hub.Handle(c, unavailable)
		}
		return err
	}
	subnet, err := netip.ParsePrefix(rc.Subnet)
	if err != nil {
		return fail(fmt.Errorf("runtime.subnet: %w", err))
	}
	docker, err := engine.Docker(ctx, rc.Docker)
	if err != nil {
		return fail(fmt.Errorf("%w (is dockerd running? scripts/engines.sh start)", err))
	}
	cfg := instance.DefaultConfig(d.cfg.StateDir)
	cfg.Network, cfg.Bridge, cfg.Subnet = rc.Network, rc.Bridge, subnet
	if rc.ReadyTimeout > 0 {
		cfg.ReadyTimeout = rc.ReadyTimeout
	}
	rt.m = instance.New(docker, cfg, rt.progress)

	d.hub.Handle("add instance", rt.addInstance)
	d.hub.Handle("get instances", getFrom(rt.instM, "instance"))
	d.hub.Handle("delete instance", rt.deleteInstance)
	d.hub.Handle("exec", rt.exec)
	d.hub.Handle("load image", rt.loadImage)
	d.hub.Handle("build image", rt.buildImage)
	d.hub.Handle("get containers", getFrom(rt.contM, "container"))

	if rc.Containerd != "" {
		if rt.ctrd, err = engine.Containerd(ctx, rc.Containerd); err != nil {
			// Docker's containers and the instances do not need it.
			rt.ctrdErr = err.Error()
			d.log.Warn("containerd unavailable; the containers mirror shows Docker's only", "err", err)
		} else {
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer rt.ctrd.Close()
				rt.watch(ctx, "containerd", func(ctx context.Context) error { return engine.WatchContainerd(ctx, rt.ctrd, rt.poke) })
			}()
		}
	}

	resync := rc.Resync
	if resync <= 0 {
		resync = 30 * time.Second
	}
	wg.Add(3)
	go func() {
		defer wg.Done()
		defer docker.Close()
		// Finish or remove what a killed qbod left half-made before the
		// first list, so the mirror never shows a half-made instance.
		rec, err := rt.m.Recover(ctx)
		rt.mu.Lock()
		rt.recovery = &rec
		rt.mu.Unlock()
		if err != nil {
			d.log.Error("runtime recovery", "err", err)
		} else if len(rec.Completed)+len(rec.Removed) > 0 {
			d.log.Info("runtime recovery", "completed", rec.Completed, "removed", rec.Removed)
		}
		rt.refresh()
		for {
			select {
			case <-ctx.Done():
				return
			case <-rt.hint:
				rt.refresh()
			}
		}
	}()
	go func() {
		defer wg.Done()
		rt.watch(ctx, "docker", func(ctx context.Context) error { return rt.m.Watch(ctx, rt.poke) })
	}()
	go func() {
		defer wg.Done()
		t := time.NewTicker(resync)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				rt.poke()
			}
		}
	}()
	return nil
}

// watch keeps an engine's event stream open; each time it ends, it
// re-lists (events may have been missed) and reconnects.
func (rt *runtimeSys) watch(ctx context.Context, engineName string, stream func(context.Context) error) {
	for ctx.Err() == nil {
		err := stream(ctx)
		if ctx.Err() != nil {
			return
		}
		rt.d.log.Warn("event stream ended; re-listing", "engine", engineName, "err", err)
		rt.poke()
		select {
		case <-ctx.Done():
		case <-time.After(time.Second): // back off before reconnecting
		}
	}
}

// containerdObj is a containerd container in the containers mirror, keyed
// containerd/NAMESPACE/ID.
type containerdObj struct {
	engine.ContainerdContainer
	Engine string `json:"engine"`
	Name   string `json:"name"`
}

var runtimeCommands = []string{"add instance", "get instances", "delete instance", "exec", "load image", "build image", "get containers"}

// poke asks for a re-list; pokes coalesce.
func (rt *runtimeSys) poke() {
	select {
	case rt.hint <- struct{}{}:
	default:
	}
}

// progress publishes each step of a create or delete as it happens.
func (rt *runtimeSys) progress(inst instance.Instance) {
	rt.feed.Lock()
	cause := inst.Status
	if inst.Step != "" {
		cause += ":" + inst.Step
	}
	rt.instM.Upsert(inst.Name, inst, cause)
	rt.feed.Unlock()
	rt.poke()
}

// refresh re-lists instances and host containers and reconciles the mirrors.
func (rt *runtimeSys) refresh() {
	rt.feed.Lock()
	defer rt.feed.Unlock()
	ctx, cancel := context.WithTimeout(rt.ctx, 30*time.Second)
	defer cancel()
	insts, err := rt.m.List(ctx)
	if err == nil {
		objs := make(map[string]any, len(insts))
		for _, i := range insts {
			objs[i.Name] = i
		}
		rt.instM.Reconcile(objs, "resync")
		rt.watchInner(insts)
		rt.noticeVeths(insts)
		var conts []instance.HostContainer
		if conts, err = rt.m.Containers(ctx); err == nil {
			objs := make(map[string]any, len(conts))
			for _, c := range conts {
				objs[c.Name] = c
			}
			if rt.ctrd != nil {
				var cc []engine.ContainerdContainer
				if cc, err = engine.ContainerdContainers(ctx, rt.ctrd); err == nil {
					for _, c := range cc {
						key := "containerd/" + c.Namespace + "/" + c.ID
						objs[key] = containerdObj{ContainerdContainer: c, Engine: "containerd", Name: key}
					}
				}
			}
			if err == nil {
				rt.contM.Reconcile(objs, "resync")
			}
		}
	}
	rt.mu.Lock()
	rt.lastErr = ""
	if err != nil {
		rt.lastErr = err.Error()
	}
	rt.mu.Unlock()
	if err != nil && rt.ctx.Err() == nil {
		rt.d.log.Warn("runtime re-list failed", "err", err)
	}
}

// noticeVeths tells the instanceNetWatchers when an instance's host-side
// veth appeared, changed or went away since the last list.
func (rt *runtimeSys) noticeVeths(insts []instance.Instance) {
	veths := make(map[string]string, len(insts))
	for _, i := range insts {
		veths[i.Name] = i.HostVeth
	}
	if maps.Equal(veths, rt.veths) {
		return
	}
	rt.veths = veths
	for _, w := range instanceNetWatchers {
		go w()
	}
}

// watchInner keeps one event watcher per ready instance, so a container
// started inside one shows up without waiting for the resync.
func (rt *runtimeSys) watchInner(insts []instance.Instance) {
	ready := map[string]bool{}
	for _, i := range insts {
		if i.Status != instance.StatusReady {
			continue
		}
		ready[i.Name] = true
		if rt.inner[i.Name] != nil {
			continue
		}
		ctx, cancel := context.WithCancel(rt.ctx)
		rt.inner[i.Name] = cancel
		name := i.Name
		go func() {
			err := rt.m.WatchInner(ctx, name, rt.poke)
			if ctx.Err() == nil {
				rt.d.log.Debug("inner event stream ended", "instance", name, "err", err)
				rt.poke() // the next refresh starts a new watcher if it is still ready
			}
			rt.feed.Lock()
			if ctx.Err() == nil {
				delete(rt.inner, name)
			}
			rt.feed.Unlock()
			cancel()
		}()
	}
	for name, cancel := range rt.inner {
		if !ready[name] {
			cancel()
			delete(rt.inner, name)
		}
	}
}

func (rt *runtimeSys) status() any {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	st := map[string]any{"docker": rt.docker}
	if rt.ctrdErr != "" {
		st["containerd_error"] = rt.ctrdErr
	}
	if rt.instM != nil {
		st["instances"] = rt.instM.Len()
	}
	if rt.contM != nil {
		st["containers"] = rt.contM.Len()
	}
	if rt.recovery != nil {
		st["recovery"] = rt.recovery
	}
	if rt.lastErr != "" {
		st["last_error"] = rt.lastErr
	}
	return st
}

// apiError gives runtime errors their protocol codes.
func apiError(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, engine.ErrInvalid):
		return mirror.Errorf(mirror.CodeBadRequest, "%v", err)
	case errors.Is(err, engine.ErrNotFound):
		return mirror.Errorf(mirror.CodeNotFound, "%v", err)
	case errors.Is(err, engine.ErrExists):
		return mirror.Errorf(mirror.CodeConflict, "%v", err)
	case errors.Is(err, engine.ErrUnavailable):
		return mirror.Errorf(mirror.CodeUnavailable, "%v", err)
	}
	return err
}

type addInstanceArgs struct {
	Name   string  `json:"name"`
	CPUs   float64 `json:"cpus,omitempty"`
	Memory string  `json:"memory,omitempty"` // e.g. "512m", "2g"
	Image  string  `json:"image,omitempty"`
	GPUs   int     `json:"gpus,omitempty"`
}

func (rt *runtimeSys) addInstance(ctx context.Context, req *mirror.Request) (any, error) {
	var a addInstanceArgs
	if err := req.Decode(&a); err != nil {
		return nil, err
	}
	spec := instance.Spec{Name: a.Name, CPUs: a.CPUs, Image: a.Image, GPUs: a.GPUs}
	if a.Memory != "" {
		n, err := instance.ParseSize(a.Memory)
		if err != nil {
			return nil, apiError(err)
		}
		spec.Memory = n
	}
	if err := spec.Validate(); err != nil {
		return nil, apiError(err)
	}
	// The lifecycle runs on the daemon's context: a client that goes away
	// does not leave a half-made instance behind.
	type result struct {
		inst instance.Instance
		err  error
	}
	done := make(chan result, 1)
	go func() {
		inst, err := rt.m.Create(rt.ctx, spec)
		if err != nil {
			rt.d.log.Warn("instance creation failed", "instance", spec.Name, "err", err)
			// Re-list now (not on a later poke): the rolled-back instance
			// leaves the mirror before the command answers, and one that
			// already existed stays.
			rt.refresh()
		} else {
			rt.d.log.Info("instance ready", "instance", spec.Name, "address", inst.Address, "veth", inst.HostVeth)
		}
		done <- result{inst, err}
	}()
	select {
	case r := <-done:
		return r.inst, apiError(r.err)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (rt *runtimeSys) deleteInstance(ctx context.Context, req *mirror.Request) (any, error) {
	name, err := decodeName(req)
	if err != nil {
		return nil, err
	}
	done := make(chan error, 1)
	go func() {
		err := rt.m.Delete(rt.ctx, name)
		if err == nil {
			rt.feed.Lock()
			rt.instM.Delete(name, "deleted")
			rt.feed.Unlock()
			rt.d.log.Info("instance deleted", "instance", name)
		}
		rt.poke()
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			return nil, apiError(err)
		}
		return map[string]string{"deleted": name}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

type execArgs struct {
	Name string   `json:"name"`
	Argv []string `json:"argv"`
}

func (rt *runtimeSys) exec(ctx context.Context, req *mirror.Request) (any, error) {
	var a execArgs
	if err := req.Decode(&a); err != nil {
		return nil, err
	}
	if err := required(req, "name", a.Name); err != nil {
		return nil, err
	}
	res, err := rt.m.Exec(ctx, a.Name, a.Argv)
	return res, apiError(err)
}

type loadImageArgs struct {
	Name string `json:"name"`
	Path string `json:"path"`
}

func (rt *runtimeSys) loadImage(ctx context.Context, req *mirror.Request) (any, error) {
	var a loadImageArgs
	if err := req.Decode(&a); err != nil {
		return nil, err
	}
	if err := required(req, "name", a.Name); err != nil {
		return nil, err
	}
	loaded, err := rt.m.LoadImage(ctx, a.Name, a.Path)
	if err != nil {
		return nil, apiError(err)
	}
	rt.poke()
	return map[string]any{"instance": a.Name, "loaded": loaded}, nil
}

func (rt *runtimeSys) buildImage(ctx context.Context, req *mirror.Request) (any, error) {
	var a getArgs
	if err := req.Decode(&a); err != nil {
		return nil, err
	}
	if a.Name != "instance" {
		return nil, mirror.Errorf(mirror.CodeBadRequest, "build image: the only image qbo builds is \"instance\", not %q", a.Name)
	}
	res, err := rt.m.BuildImage(ctx)
	return res, apiError(err)
}
