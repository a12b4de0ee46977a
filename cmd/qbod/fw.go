package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"

	bpffw "github.com/qbo/qbo/bpf/fw"
	"github.com/qbo/qbo/fw"
	"github.com/qbo/qbo/fw/datapath"
	"github.com/qbo/qbo/mirror"
)

func init() {
	s := &fwSystem{}
	register(subsystem{name: "firewall", start: s.start, status: s.status, stop: s.stop, record: s.handleRecord})
	instanceNetWatchers = append(instanceNetWatchers, s.instancesChanged)
}

// instancesChanged re-commits the rule set when the runtime reports that
// instances' interfaces changed (an instance created, restarted or
// deleted), so that rules targeted at an instance follow its veth.
func (s *fwSystem) instancesChanged() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dp == nil || !slices.ContainsFunc(s.set.Rules, func(r fw.Rule) bool { return r.Target.Kind == fw.TargetInstance }) &&
		!slices.ContainsFunc(s.set.Policies, func(p fw.Policy) bool { return p.Target.Kind == fw.TargetInstance }) {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := s.commitLocked(ctx, s.set, true); err != nil {
		s.log.Warn("re-applying rules after an instance change", "err", err)
		return
	}
	s.publishLocked("instances")
}

// ifaceResolver turns a container or instance target into its host-side
// interface names. The runtime provides one (fwInstanceResolver); until it
// is wired, instance targets are refused.
type ifaceResolver interface {
	ResolveIfaces(ctx context.Context, t fw.Target) ([]string, error)
}

// fwInstanceResolver is set by the runtime's wiring; nil means instance
// targets cannot be resolved yet.
var fwInstanceResolver ifaceResolver

// fwDenyKeep is how many recent deny events the firewall mirror holds.
const fwDenyKeep = 64

// fwSystem owns the desired rule set (state_dir/fw.json), the loaded
// firewall object and the "firewall" mirror.
type fwSystem struct {
	mu      sync.Mutex
	log     *slog.Logger
	dir     string
	uplinks []string
	set     fw.RuleSet
	obj     *bpffw.Firewall
	dp      *datapath.Datapath
	pf      *datapath.Prefilter
	mirror  *mirror.State
	denySeq uint64
	ifaces  []string          // attached by the last commit
	owners  map[string]string // host-side interface -> instance/container name
	ownRing bool              // the ring is ours to read (telemetry is off)
	events  uint64
	downErr error // why start failed, for the commands' "unavailable"
}

// ruleView is a rule as the mirror and "get rules" show it.
type ruleView struct {
	Kind      string `json:"kind"` // "rule"
	Name      string `json:"name"`
	Priority  int    `json:"priority"`
	Action    string `json:"action"`
	Log       bool   `json:"log,omitempty"`
	Direction string `json:"direction"`
	Src       string `json:"src,omitempty"`
	Dst       string `json:"dst,omitempty"`
	Proto     string `json:"proto,omitempty"`
	Port      string `json:"port,omitempty"`
	Target    string `json:"target"`
	Packets   uint64 `json:"packets"`
	Bytes     uint64 `json:"bytes"`
}

type policyView struct {
	Kind      string `json:"kind"` // "policy"
	Target    string `json:"target"`
	Direction string `json:"direction"`
	Action    string `json:"action"`
}

type denyView struct {
	Kind      string    `json:"kind"` // "deny"
	Time      time.Time `json:"time"`
	Rule      string    `json:"rule"`
	Iface     string    `json:"iface"`
	Instance  string    `json:"instance,omitempty"` // the container or instance behind Iface, if known
	Ifindex   uint32    `json:"ifindex"`
	Direction string    `json:"direction"`
	Proto     string    `json:"proto"`
	Src       string    `json:"src"`
	Dst       string    `json:"dst"`
	Len       uint32    `json:"len"`
}

func viewRule(r fw.Rule, c datapath.Counter) ruleView {
	v := ruleView{Kind: "rule", Name: r.Name, Priority: r.Priority, Action: string(r.Action), Log: r.Log,
		Direction: string(r.Direction), Proto: fw.ProtoName(r.Proto), Target: r.Target.String(),
		Packets: c.Packets, Bytes: c.Bytes}
	if r.Src.IsValid() {
		v.Src = r.Src.String()
	}
	if r.Dst.IsValid() {
		v.Dst = r.Dst.String()
	}
	if !r.Ports.Any() {
		v.Port = r.Ports.String()
	}
	return v
}

func ruleKey(name string) string { return "rule/" + name }

func policyKey(p fw.Policy) string { return "policy/" + p.Target.String() + "/" + string(p.Direction) }

func (s *fwSystem) start(ctx context.Context, d *daemon, wg *sync.WaitGroup) (err error) {
	defer func() {
		if err != nil {
			s.mu.Lock()
			s.downErr = err
			s.mu.Unlock()
		}
	}()
	s.log = d.log.With("subsystem", "firewall")
	s.dir = d.cfg.StateDir
	s.uplinks = d.cfg.Uplinks
	s.mirror = d.hub.NewState("firewall", "firewall rules with per-rule packet/byte counters, default policies, and recent logged denies")
	s.registerCommands(d.hub)

	set, err := fw.LoadState(s.dir)
	if err != nil {
		return err
	}
	opts := bpffw.Options{PinDir: d.cfg.PinDir}
	if d.tracer != nil {
		opts.Events = d.tracer.EventsMap()
	}
	obj, err := bpffw.Load(opts)
	if err != nil {
		return err
	}
	pf, err := datapath.NewPrefilter(obj.Maps())
	if err != nil {
		obj.Close()
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.obj, s.dp, s.pf = obj, datapath.New(obj.Maps()), pf
	if err := s.commitLocked(ctx, set, true); err != nil {
		return fmt.Errorf("restoring firewall rules: %w", err)
	}
	s.publishLocked("restore")
	s.log.Info("firewall ready", "rules", len(set.Rules), "interfaces", s.ifaces, "prefilter", len(set.Prefilter))

	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(time.Second)
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
	// With telemetry on, the trace reader owns the shared ring and passes
	// deny records (kind QBO_EV_FW_DENY) through to handleRecord; with
	// telemetry off, the ring the firewall object created is read here.
	if d.tracer == nil {
		rd, err := ringbuf.NewReader(obj.Maps().Events)
		if err != nil {
			return fmt.Errorf("opening the event ring: %w", err)
		}
		s.ownRing = true
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-ctx.Done()
			rd.Close()
		}()
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				rec, err := rd.Read()
				if err != nil {
					return // closed
				}
				s.handleRecord(rec.RawSample)
			}
		}()
	}
	return nil
}

// handleRecord publishes one deny record into the mirror, keeping the
// last fwDenyKeep.
func (s *fwSystem) handleRecord(raw []byte) {
	if !datapath.IsDenyRecord(raw) {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dp == nil {
		return
	}
	e, err := s.dp.Decode(raw)
	if err != nil {
		return
	}
	s.events++
	s.denySeq++
	v := denyView{Kind: "deny", Time: bootToWall(e.BootNS), Rule: e.Rule, Iface: e.Iface, Instance: s.owners[e.Iface], Ifindex: e.Ifindex,
		Direction: string(e.Hook), Proto: protoLabel(e.Proto), Src: e.Src.String(), Dst: e.Dst.String(), Len: e.Len}
	s.mirror.Upsert(fmt.Sprintf("deny/%020d", s.denySeq), v, "deny")
	if s.denySeq > fwDenyKeep {
		s.mirror.Delete(fmt.Sprintf("deny/%020d", s.denySeq-fwDenyKeep), "expire")
	}
}

func protoLabel(p uint8) string {
	if n := fw.ProtoName(p); n != "" {
		return n
	}
	return strconv.Itoa(int(p))
}

// bootToWall converts a CLOCK_BOOTTIME stamp to wall time.
func bootToWall(ns uint64) time.Time {
	now := time.Now()
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return now
	}
	return now.Add(-time.Duration(ts.Nano() - int64(ns)))
}

func (s *fwSystem) stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.obj != nil {
		s.obj.Close()
		s.obj, s.dp = nil, nil
	}
}

func (s *fwSystem) status() any {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]any{"rules": len(s.set.Rules), "interfaces": s.ifaces, "deny_events": s.events}
	if s.dp != nil {
		if st, err := s.dp.Stats(); err == nil {
			out["counters"] = st
		}
		if g, err := s.dp.Generation(); err == nil {
			out["generation"] = g
		}
	}
	if s.pf != nil {
		if st, err := s.pf.Stats(); err == nil {
			out["prefilter"] = st
		}
	}
	return out
}

// refresh republishes rules with their counters (unchanged ones are no-ops
// in the mirror).
func (s *fwSystem) refresh() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.dp == nil {
		return
	}
	cnt, err := s.dp.Counters()
	if err != nil {
		s.log.Warn("reading rule counters", "err", err)
		return
	}
	for _, r := range s.set.Rules {
		s.mirror.Upsert(ruleKey(r.Name), viewRule(r, cnt[r.Name]), "counters")
	}
}

// publishLocked makes the mirror's rules and policies equal to s.set,
// keeping the deny events.
func (s *fwSystem) publishLocked(cause string) {
	cnt, _ := s.dp.Counters()
	objs := map[string]any{}
	for _, o := range s.mirror.List() {
		if len(o.Key) > 5 && o.Key[:5] == "deny/" {
			objs[o.Key] = o.Object
		}
	}
	for _, r := range s.set.Rules {
		objs[ruleKey(r.Name)] = viewRule(r, cnt[r.Name])
	}
	for _, p := range s.set.Policies {
		objs[policyKey(p)] = policyView{Kind: "policy", Target: p.Target.String(), Direction: string(p.Direction), Action: string(p.Action)}
	}
	objs["prefilter"] = map[string]any{"kind": "prefilter", "prefixes": len(s.set.Prefilter), "uplinks": s.uplinks}
	s.mirror.Reconcile(objs, cause)
}

// targets reports whether the committed rule set already names t.
func (s *fwSystem) targets(t fw.Target) bool {
	return slices.ContainsFunc(s.set.Rules, func(r fw.Rule) bool { return r.Target == t }) ||
		slices.ContainsFunc(s.set.Policies, func(p fw.Policy) bool { return p.Target == t })
}

// resolve maps every target of set to interface names. restoring (at start,
// or when instances change) tolerates an instance that cannot be resolved
// (deleted, or not running): its rules are kept and apply to no interface
// until it is back; a command naming it is refused instead.
func (s *fwSystem) resolve(ctx context.Context, set *fw.RuleSet, restoring bool) (fw.Resolved, error) {
	res := fw.Resolved{fw.Node: s.uplinks}
	var targets []fw.Target
	for _, r := range set.Rules {
		targets = append(targets, r.Target)
	}
	for _, p := range set.Policies {
		targets = append(targets, p.Target)
	}
	for _, t := range targets {
		if t.Kind != fw.TargetInstance {
			continue
		}
		if _, done := res[t]; done {
			continue
		}
		if fwInstanceResolver == nil {
			return nil, mirror.Errorf(mirror.CodeUnavailable, "instance target %s: the runtime's interface resolver is not wired", t.Name)
		}
		names, err := fwInstanceResolver.ResolveIfaces(ctx, t)
		if err != nil && !restoring && errors.Is(err, errRuntimeDown) {
			return nil, mirror.Errorf(mirror.CodeUnavailable, "instance target %s: %v", t.Name, err)
		}
		// Only a target this change introduces must resolve: an instance
		// that an existing rule names and that has gone since must not
		// block unrelated changes (its rules wait for it, as at start).
		if err != nil && (restoring || s.targets(t)) {
			s.log.Warn("firewall target instance is not available; its rules wait for it", "instance", t.Name, "err", err)
			names = nil
		} else if err != nil {
			return nil, mirror.Errorf(mirror.CodeNotFound, "instance %s: %v", t.Name, err)
		}
		res[t] = names
	}
	return res, nil
}

func ifindexOf(name string) (int, error) {
	ifc, err := net.InterfaceByName(name)
	if err != nil {
		return 0, err
	}
	return ifc.Index, nil
}

// commitLocked compiles set, replaces the datapath's rule set atomically,
// attaches to new interfaces, detaches from ones no longer targeted, and
// persists set. A set that does not compile or fit is refused before any
// change. restoring (at start) tolerates targeted interfaces that do not
// exist (a container's veth that went away with it): their rules are
// kept and apply when the set is next committed with the interface back;
// a command naming a missing interface is refused instead.
func (s *fwSystem) commitLocked(ctx context.Context, set fw.RuleSet, restoring bool) error {
	res, err := s.resolve(ctx, &set, restoring)
	if err != nil {
		return err
	}
	c, err := fw.Compile(set, res, datapath.Limits)
	if err != nil {
		return err
	}
	ifindex := ifindexOf
	present := map[string]bool{}
	for _, n := range c.Ifaces {
		_, err := ifindexOf(n)
		present[n] = err == nil
		if err != nil && restoring {
			s.log.Warn("firewall target interface is missing; its rules wait for it", "iface", n)
		}
	}
	if restoring {
		// ifindex 0 is never a packet's: the scope is written but unused.
		ifindex = func(n string) (int, error) {
			i, err := ifindexOf(n)
			if err != nil {
				return 0, nil
			}
			return i, nil
		}
	}
	if err := s.dp.Apply(c, ifindex, set.Reevaluate); err != nil {
		return err
	}
	for _, n := range c.Ifaces {
		if !present[n] {
			continue
		}
		i, _ := ifindexOf(n)
		if err := s.obj.Attach(n, i); err != nil {
			return err
		}
	}
	var keep []string
	for _, n := range c.Ifaces {
		if present[n] {
			keep = append(keep, n)
		}
	}
	if err := s.obj.DetachExcept(keep); err != nil {
		return err
	}
	if err := set.Validate(); err != nil {
		return err
	}
	if err := s.syncPrefilterLocked(set.Prefilter); err != nil {
		return err
	}
	if err := fw.SaveState(s.dir, set); err != nil {
		return err
	}
	s.set, s.ifaces = set, c.Ifaces
	s.owners = map[string]string{}
	for t, names := range res {
		if t.Kind == fw.TargetInstance {
			for _, n := range names {
				s.owners[n] = t.Name
			}
		}
	}
	return nil
}

// syncPrefilterLocked makes the prefilter maps hold exactly want. At start
// the maps hold what a previous qbod left (the prefilter reads it back), so
// only the difference is written.
func (s *fwSystem) syncPrefilterLocked(want []netip.Prefix) error {
	_, _, err := s.pf.Replace(want)
	return err
}

type prefilterArgs struct {
	CIDRs []string `json:"cidrs"`
}

func (a prefilterArgs) prefixes() ([]netip.Prefix, error) {
	if len(a.CIDRs) == 0 {
		return nil, fmt.Errorf("%w: no CIDR given", fw.ErrInvalid)
	}
	out := make([]netip.Prefix, 0, len(a.CIDRs))
	for _, c := range a.CIDRs {
		p, err := parseCIDR(c)
		if err != nil {
			return nil, err
		}
		out = append(out, fw.NormalizePrefix(p))
	}
	return out, nil
}

// prefixSet returns the distinct prefixes of ps.
func prefixSet(ps []netip.Prefix) map[netip.Prefix]bool {
	out := make(map[netip.Prefix]bool, len(ps))
	for _, p := range ps {
		out[p] = true
	}
	return out
}

// addRuleArgs are the arguments of "add rule" (the CLI's flags).
type addRuleArgs struct {
	Name      string `json:"name"`
	Action    string `json:"action"`
	Log       bool   `json:"log"`
	Direction string `json:"direction"`
	Src       string `json:"src"`
	Dst       string `json:"dst"`
	Proto     string `json:"proto"`
	Port      string `json:"port"`
	Priority  *int   `json:"priority"`
	Iface     string `json:"iface"`
	Instance  string `json:"instance"`
}

func (a addRuleArgs) rule() (fw.Rule, error) {
	r := fw.Rule{Name: a.Name, Action: fw.Action(a.Action), Log: a.Log, Direction: fw.Direction(a.Direction),
		Priority: fw.DefaultPriority, Target: fw.Node}
	if a.Priority != nil {
		r.Priority = *a.Priority
	}
	var err error
	for _, f := range []struct {
		s   string
		dst *netip.Prefix
	}{{a.Src, &r.Src}, {a.Dst, &r.Dst}} {
		if f.s == "" {
			continue
		}
		if *f.dst, err = parseCIDR(f.s); err != nil {
			return r, err
		}
	}
	if r.Proto, err = fw.ParseProto(a.Proto); err != nil {
		return r, err
	}
	if a.Port != "" {
		if r.Ports, err = fw.ParsePortRange(a.Port); err != nil {
			return r, err
		}
	}
	switch {
	case a.Iface != "" && a.Instance != "":
		return r, fmt.Errorf("%w: --iface and --instance are exclusive", fw.ErrInvalid)
	case a.Iface != "":
		r.Target = fw.Target{Kind: fw.TargetIface, Name: a.Iface}
	case a.Instance != "":
		r.Target = fw.Target{Kind: fw.TargetInstance, Name: a.Instance}
	}
	return r, r.Normalize()
}

// parseCIDR accepts a prefix or a bare address (a host prefix).
func parseCIDR(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%w: %q is not a CIDR or address", fw.ErrInvalid, s)
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

type policyArgs struct {
	Action     string `json:"action"`
	Direction  string `json:"direction"`
	Iface      string `json:"iface"`
	Instance   string `json:"instance"`
	Reevaluate *bool  `json:"reevaluate"`
}

func (s *fwSystem) registerCommands(h *mirror.Hub) {
	h.Handle("add rule", s.mutate(func(req *mirror.Request, set fw.RuleSet) (fw.RuleSet, any, error) {
		var a addRuleArgs
		if err := req.Decode(&a); err != nil {
			return set, nil, err
		}
		r, err := a.rule()
		if err != nil {
			return set, nil, err
		}
		return set.WithRule(r), viewRule(r, datapath.Counter{}), nil
	}))
	h.Handle("delete rule", s.mutate(func(req *mirror.Request, set fw.RuleSet) (fw.RuleSet, any, error) {
		name, err := decodeName(req)
		if err != nil {
			return set, nil, err
		}
		out, err := set.WithoutRule(name)
		return out, map[string]string{"deleted": name}, err
	}))
	h.Handle("set policy", s.mutate(func(req *mirror.Request, set fw.RuleSet) (fw.RuleSet, any, error) {
		var a policyArgs
		if err := req.Decode(&a); err != nil {
			return set, nil, err
		}
		if a.Reevaluate != nil {
			set = set.Clone()
			set.Reevaluate = *a.Reevaluate
			if a.Action == "" {
				// Re-evaluation is one switch for every tracked flow of
				// the node (bpf/fw's config), as conntrack is one table
				// for all of iptables: it cannot be scoped to a target or
				// a direction, so naming one is refused, not ignored.
				for _, f := range []struct{ name, value string }{{"direction", a.Direction}, {"iface", a.Iface}, {"instance", a.Instance}} {
					if f.value != "" {
						return set, nil, mirror.Errorf(mirror.CodeBadRequest,
							"set policy: reevaluate is node-wide and takes no %s; %s applies only with an action", f.name, f.name)
					}
				}
				return set, map[string]bool{"reevaluate": set.Reevaluate}, nil
			}
		}
		p := fw.Policy{Target: fw.Node, Direction: fw.Direction(a.Direction), Action: fw.Action(a.Action)}
		switch {
		case a.Iface != "" && a.Instance != "":
			return set, nil, fmt.Errorf("%w: --iface and --instance are exclusive", fw.ErrInvalid)
		case a.Iface != "":
			p.Target = fw.Target{Kind: fw.TargetIface, Name: a.Iface}
		case a.Instance != "":
			p.Target = fw.Target{Kind: fw.TargetInstance, Name: a.Instance}
		}
		if err := p.Normalize(); err != nil {
			return set, nil, err
		}
		return set.WithPolicy(p), policyView{Kind: "policy", Target: p.Target.String(), Direction: string(p.Direction), Action: string(p.Action)}, nil
	}))
	h.Handle("get rules", s.read(func(req *mirror.Request) (any, error) {
		var a getArgs
		if err := req.Decode(&a); err != nil {
			return nil, err
		}
		cnt, err := s.dp.Counters()
		if err != nil {
			return nil, mirror.Errorf(mirror.CodeInternal, "%v", err)
		}
		rules := slices.Clone(s.set.Rules)
		slices.SortFunc(rules, func(a, b fw.Rule) int {
			if a.Priority != b.Priority {
				return a.Priority - b.Priority
			}
			return cmpString(a.Name, b.Name)
		})
		out := []ruleView{}
		for _, r := range rules {
			if a.Name == "" || r.Name == a.Name {
				out = append(out, viewRule(r, cnt[r.Name]))
			}
		}
		if a.Name != "" && len(out) == 0 {
			return nil, mirror.Errorf(mirror.CodeNotFound, "rule %q not found", a.Name)
		}
		return out, nil
	}))
	h.Handle("add prefilter", s.mutate(func(req *mirror.Request, set fw.RuleSet) (fw.RuleSet, any, error) {
		var a prefilterArgs
		if err := req.Decode(&a); err != nil {
			return set, nil, err
		}
		ps, err := a.prefixes()
		if err != nil {
			return set, nil, err
		}
		// The reply counts the prefixes that were not listed yet.
		have, added := prefixSet(set.Prefilter), 0
		for _, p := range ps {
			if !have[p] {
				have[p] = true
				set.Prefilter = append(set.Prefilter, p)
				added++
			}
		}
		return set, map[string]int{"added": added}, nil
	}))
	h.Handle("delete prefilter", s.mutate(func(req *mirror.Request, set fw.RuleSet) (fw.RuleSet, any, error) {
		var a prefilterArgs
		if err := req.Decode(&a); err != nil {
			return set, nil, err
		}
		ps, err := a.prefixes()
		if err != nil {
			return set, nil, err
		}
		drop := prefixSet(ps)
		out := set.Prefilter[:0:0]
		for _, p := range set.Prefilter {
			if !drop[p] {
				out = append(out, p)
			}
		}
		if len(set.Prefilter)-len(out) != len(drop) {
			return set, nil, fmt.Errorf("prefilter prefix: %w", fw.ErrNotFound)
		}
		set.Prefilter = out
		return set, map[string]int{"deleted": len(drop)}, nil
	}))
	h.Handle("get prefilter", s.read(func(req *mirror.Request) (any, error) {
		var none struct{}
		if err := req.Decode(&none); err != nil {
			return nil, err
		}
		out := make([]map[string]string, 0, len(s.set.Prefilter))
		for _, p := range s.set.Prefilter {
			out = append(out, map[string]string{"cidr": p.String()})
		}
		return out, nil
	}))
	h.Handle("get policies", s.read(func(req *mirror.Request) (any, error) {
		// The name of "get policies NAME" is a target: node, iface:NAME or
		// instance:NAME, as the policies show it.
		var a getArgs
		if err := req.Decode(&a); err != nil {
			return nil, err
		}
		var only fw.Target
		if a.Name != "" {
			t, err := fw.ParseTarget(a.Name)
			if err != nil {
				return nil, fwError(err)
			}
			only = t
		}
		out := []policyView{}
		for _, p := range s.set.Policies {
			if a.Name == "" || p.Target == only {
				out = append(out, policyView{Kind: "policy", Target: p.Target.String(), Direction: string(p.Direction), Action: string(p.Action)})
			}
		}
		if a.Name != "" && len(out) == 0 {
			return nil, mirror.Errorf(mirror.CodeNotFound, "no policy set for target %s", only)
		}
		return out, nil
	}))
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// downLocked is the error of every firewall command while the firewall is
// not running (it failed to start, or qbod is stopping): "unavailable",
// before any argument is looked at, as the runtime's commands answer.
func (s *fwSystem) downLocked() error {
	switch {
	case s.downErr != nil:
		return mirror.Errorf(mirror.CodeUnavailable, "firewall is not running: %v", s.downErr)
	case s.dp == nil:
		return mirror.Errorf(mirror.CodeUnavailable, "firewall is not running")
	}
	return nil
}

// read runs fn under the lock while the firewall is running: the commands
// that only look at the rule set.
func (s *fwSystem) read(fn func(*mirror.Request) (any, error)) mirror.HandlerFunc {
	return func(_ context.Context, req *mirror.Request) (any, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		if err := s.downLocked(); err != nil {
			return nil, err
		}
		return fn(req)
	}
}

// mutate runs fn on a copy of the rule set and commits the result whole;
// on failure nothing changes.
func (s *fwSystem) mutate(fn func(*mirror.Request, fw.RuleSet) (fw.RuleSet, any, error)) mirror.HandlerFunc {
	return func(ctx context.Context, req *mirror.Request) (any, error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		if err := s.downLocked(); err != nil {
			return nil, err
		}
		set, res, err := fn(req, s.set.Clone())
		if err != nil {
			return nil, fwError(err)
		}
		if err := s.commitLocked(ctx, set, false); err != nil {
			return nil, fwError(err)
		}
		s.publishLocked(req.Command)
		return res, nil
	}
}

func fwError(err error) error {
	var me *mirror.Error
	switch {
	case errors.As(err, &me):
		return err
	case errors.Is(err, fw.ErrNotFound):
		return mirror.Errorf(mirror.CodeNotFound, "%v", err)
	case errors.Is(err, fw.ErrInvalid), errors.Is(err, fw.ErrCapacity), errors.Is(err, datapath.ErrNoInterface):
		return mirror.Errorf(mirror.CodeBadRequest, "%v", err)
	}
	return mirror.Errorf(mirror.CodeInternal, "%v", err)
}
