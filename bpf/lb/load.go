package lb

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/qbo/qbo/bpf"
)

// Options configure Load.
type Options struct {
	// PinDir is the bpffs directory for maps; default bpf.DefaultPinDir.
	PinDir string
	// Uplinks get lb_xdp (XDP) and lb_revnat (TCX egress). Links of
	// interfaces not listed are removed.
	Uplinks []string
	// FlowEntries overrides the capacity of the flow table lb_flows3
	// (rounded down to a power of two, at least LB_FLOW_WAYS) when it is
	// created; a pinned table keeps its size, and one that replaces an
	// older qbo's lb_flows2 takes that table's size.
	FlowEntries uint32
	// MaglevSlots overrides the size of the flat Maglev array (only when
	// it is created).
	MaglevSlots uint32
}

// Objects is the loaded lb object.
type Objects struct {
	objs  lbObjects
	links map[string]link.Link
	// upgrade holds the pins of an older qbo's tables (oldTables) that
	// exist, while their entries are being copied into lb_flows3.
	upgrade []string
	copied  UpgradeCopy
	pinDir  string
}

// oldTables are the flow and reverse-NAT tables of older qbo versions,
// by pin name, and the lb.c map that stands in for each while lb_upgrade
// copies it into lb_flows3.
var oldTables = []struct{ pin, stand string }{
	{"lb_flows2", "lb_flows_old"}, // flow sets chosen by the whole key
	{"lb_rnat2", "lb_rnat2_old"},  // reply sets
	{"lb_rnat", "lb_rnat_old"},    // an LRU hash of replies
}

// UpgradeCopy counts what Load copied from an older qbo's tables.
type UpgradeCopy struct {
	// Flows copied from lb_flows2; Replaced of them took the way of
	// another flow (its set was full), which re-picks its backend at its
	// next packet and, for a NAT flow in use, kept its reply's
	// translation in lb_rnat_spill.
	Flows, Replaced int
	// Replies of lb_rnat2 or lb_rnat whose flow was not in lb_flows2,
	// copied into lb_rnat_spill.
	Replies int
}

// Upgraded reports the copy from an older qbo's tables; ok is false when
// there was none to copy.
func (o *Objects) Upgraded() (c UpgradeCopy, ok bool) { return o.copied, len(o.upgrade) != 0 }

// Load loads the object (reusing pinned maps), and attaches it to the
// uplinks: a pinned link running the same program is kept, one running
// another program is updated in place (link.Update swaps the program
// atomically, so no packet misses the balancer during an upgrade).
//
// Upgrading from a qbo whose tables were lb_flows2 and lb_rnat2 (or lb_rnat),
// it copies them into lb_flows3 before attaching (so the new programs find
// every flow and reply the old ones did) and again after (for the flows the
// old lb_xdp recorded until its link was updated), then removes their pins.
func Load(opts Options) (*Objects, error) {
	o, err := load(opts)
	if err != nil {
		return nil, err
	}
	if err := o.copyOld(); err != nil {
		o.Close()
		return nil, err
	}
	if err := o.attach(opts); err != nil {
		o.Close()
		return nil, err
	}
	if err := o.finishUpgrade(); err != nil {
		o.Close()
		return nil, err
	}
	return o, nil
}

// LoadUnattached loads the object and its pinned maps without touching any
// interface (tests, benchmarks); like Load, it copies and removes an older
// qbo's tables.
func LoadUnattached(opts Options) (*Objects, error) {
	o, err := load(opts)
	if err != nil {
		return nil, err
	}
	if err := o.finishUpgrade(); err != nil {
		o.Close()
		return nil, err
	}
	return o, nil
}

func load(opts Options) (*Objects, error) {
	pinDir := opts.PinDir
	if pinDir == "" {
		pinDir = bpf.DefaultPinDir
	}
	if err := os.MkdirAll(bpf.LinksDir(pinDir), 0o700); err != nil {
		return nil, fmt.Errorf("creating pin directory: %w", err)
	}
	spec, err := loadLb()
	if err != nil {
		return nil, fmt.Errorf("loading lb object: %w", err)
	}
	// The flow table: a pinned one keeps its size, a new one takes the
	// size of the table it replaces or else the options'; the program's
	// set mask follows it.
	flowSets := spec.Maps["lb_flows3"].MaxEntries
	if opts.FlowEntries != 0 {
		flowSets = max(1, prevPow2(opts.FlowEntries/FlowWays))
	}
	if m, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, "lb_flows2"), nil); err == nil {
		flowSets = m.MaxEntries()
		m.Close()
	}
	flowSets, err = sizeSets(spec, pinDir, "lb_flows3", "lb_flow_mask", flowSets)
	if err != nil {
		return nil, err
	}
	// lb_rnat_spill holds as many entries as the flow table (or keeps the
	// size it is pinned with).
	spec.Maps["lb_rnat_spill"].MaxEntries = flowSets * FlowWays
	if m, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, "lb_rnat_spill"), nil); err == nil {
		spec.Maps["lb_rnat_spill"].MaxEntries = m.MaxEntries()
		m.Close()
	}
	if opts.MaglevSlots != 0 {
		spec.Maps["lb_maglev"].MaxEntries = opts.MaglevSlots
	}
	o := &Objects{links: map[string]link.Link{}, pinDir: pinDir}
	copts := &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: pinDir}, MapReplacements: map[string]*ebpf.Map{}}
	for _, t := range oldTables {
		path := filepath.Join(pinDir, t.pin)
		old, err := ebpf.LoadPinnedMap(path, nil)
		switch {
		case err == nil:
			defer old.Close()
			spec.Maps[t.stand].MaxEntries = old.MaxEntries()
			copts.MapReplacements[t.stand] = old
			o.upgrade = append(o.upgrade, path)
		case errors.Is(err, os.ErrNotExist):
			// Nothing to copy: a placeholder, released after loading.
			spec.Maps[t.stand].MaxEntries = 1
		default:
			return nil, fmt.Errorf("opening %s of an older qbo: %w", t.pin, err)
		}
	}
	if err := spec.LoadAndAssign(&o.objs, copts); err != nil {
		return nil, fmt.Errorf("loading lb object: %w", err)
	}
	if len(o.upgrade) == 0 {
		o.releaseUpgrade()
	}
	return o, nil
}

// sizeSets sizes set-associative table name (sets, or its pinned size)
// and its set mask variable, and returns the size.
func sizeSets(spec *ebpf.CollectionSpec, pinDir, name, mask string, sets uint32) (uint32, error) {
	m, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, name), nil)
	switch {
	case err == nil:
		sets = m.MaxEntries()
		m.Close()
	case !errors.Is(err, os.ErrNotExist):
		return 0, fmt.Errorf("opening %s: %w", name, err)
	}
	if sets == 0 || sets&(sets-1) != 0 {
		return 0, fmt.Errorf("%s has %d sets, not a power of two", name, sets)
	}
	spec.Maps[name].MaxEntries = sets
	if err := spec.Variables[mask].Set(sets - 1); err != nil {
		return 0, fmt.Errorf("sizing %s: %w", name, err)
	}
	return sets, nil
}

// copyOld runs lb_upgrade: what the older tables hold and lb_flows3 lacks
// is inserted into it.
func (o *Objects) copyOld() error {
	if o.objs.LbUpgrade == nil {
		return nil
	}
	var st lbLbUpgradeStats
	if _, err := o.objs.LbUpgrade.Run(&ebpf.RunOptions{Context: &st, ContextOut: &st}); err != nil {
		return fmt.Errorf("copying an older qbo's flow tables into lb_flows3: %w", err)
	}
	o.copied.Flows += int(st.Flows)
	o.copied.Replaced += int(st.Replaced)
	o.copied.Replies += int(st.Replies)
	return nil
}

// finishUpgrade takes over what an older qbo left pinned, once the old
// programs (detached by now) no longer write to it: its flow tables
// (finishTables) and lb_stats (adoptStats).
func (o *Objects) finishUpgrade() error {
	if err := o.finishTables(); err != nil {
		return err
	}
	return o.adoptStats()
}

// finishTables copies the older tables (again), removes their pins and
// releases the upgrade program.
func (o *Objects) finishTables() error {
	if o.objs.LbUpgrade == nil {
		return nil
	}
	if err := o.copyOld(); err != nil {
		return err
	}
	for _, path := range o.upgrade {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("removing %s: %w", filepath.Base(path), err)
		}
	}
	o.releaseUpgrade()
	return nil
}

// adoptStats adds the counters of lb_stats, the counter map of an older
// qbo (sized by its number of counters, so it could not be reused once one
// was added), into lb_stats2, and removes its pin.
func (o *Objects) adoptStats() error {
	path := filepath.Join(o.pinDir, "lb_stats")
	old, err := ebpf.LoadPinnedMap(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("opening lb_stats of an older qbo: %w", err)
	}
	defer old.Close()
	n := min(old.MaxEntries(), o.objs.LbStats2.MaxEntries())
	for k := range n {
		var was, now []StatVal
		if err := old.Lookup(k, &was); err != nil {
			return fmt.Errorf("reading lb_stats: %w", err)
		}
		if err := o.objs.LbStats2.Lookup(k, &now); err != nil {
			return fmt.Errorf("reading lb_stats2: %w", err)
		}
		for c := range min(len(was), len(now)) {
			now[c].Packets += was[c].Packets
		}
		if err := o.objs.LbStats2.Put(k, now); err != nil {
			return fmt.Errorf("writing lb_stats2: %w", err)
		}
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing lb_stats: %w", err)
	}
	return nil
}

func (o *Objects) releaseUpgrade() {
	o.objs.LbUpgrade.Close()
	o.objs.LbFlowsOld.Close()
	o.objs.LbRnat2Old.Close()
	o.objs.LbRnatOld.Close()
	o.objs.LbUpgrade, o.objs.LbFlowsOld, o.objs.LbRnat2Old, o.objs.LbRnatOld = nil, nil, nil, nil
}

func (o *Objects) attach(opts Options) error {
	pinDir := opts.PinDir
	if pinDir == "" {
		pinDir = bpf.DefaultPinDir
	}
	dir := bpf.LinksDir(pinDir)
	want := map[string]bool{}
	for _, name := range opts.Uplinks {
		iface, err := net.InterfaceByName(name)
		if err != nil {
			return fmt.Errorf("uplink %s: %w", name, err)
		}
		xdp := "lb_xdp_" + name
		tc := "lb_revnat_" + name
		want[xdp], want[tc] = true, true
		if err := o.ensure(filepath.Join(dir, xdp), o.objs.LbXdp, func() (link.Link, error) {
			return link.AttachXDP(link.XDPOptions{Program: o.objs.LbXdp, Interface: iface.Index})
		}); err != nil {
			return fmt.Errorf("attaching lb_xdp to %s: %w", name, err)
		}
		if err := o.ensure(filepath.Join(dir, tc), o.objs.LbRevnat, func() (link.Link, error) {
			return link.AttachTCX(link.TCXOptions{Program: o.objs.LbRevnat, Interface: iface.Index, Attach: ebpf.AttachTCXEgress})
		}); err != nil {
			return fmt.Errorf("attaching lb_revnat to %s: %w", name, err)
		}
	}
	// Unpinning the last reference detaches links of removed uplinks.
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("listing links: %w", err)
	}
	for _, e := range entries {
		n := e.Name()
		if (strings.HasPrefix(n, "lb_xdp_") || strings.HasPrefix(n, "lb_revnat_")) && !want[n] {
			if err := bpf.DetachPinned(filepath.Join(dir, n)); err != nil {
				return err
			}
		}
	}
	return nil
}

func (o *Objects) ensure(path string, prog *ebpf.Program, attach func() (link.Link, error)) error {
	l, err := bpf.EnsureLink(path, prog, attach)
	if err != nil {
		return err
	}
	o.links[path] = l
	return nil
}

// Close releases the caller's handles; pinned maps and links stay, so
// traffic keeps being balanced while qbod is down.
func (o *Objects) Close() error {
	var errs []error
	for _, l := range o.links {
		errs = append(errs, l.Close())
	}
	o.links = nil
	errs = append(errs, o.objs.Close())
	return errors.Join(errs...)
}

// Detach removes the uplinks' pinned links (the balancer stops).
func Detach(pinDir string) error {
	dir := bpf.LinksDir(pinDir)
	entries, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	for _, e := range entries {
		if n := e.Name(); strings.HasPrefix(n, "lb_xdp_") || strings.HasPrefix(n, "lb_revnat_") {
			if err := bpf.DetachPinned(filepath.Join(dir, n)); err != nil {
				return err
			}
		}
	}
	return nil
}

// FlowWays is LB_FLOW_WAYS: entries per set of the flow table.
const FlowWays = 4

func prevPow2(n uint32) uint32 {
	p := uint32(1)
	for p*2 <= n && p*2 != 0 {
		p *= 2
	}
	return p
}

// Maps handed to lb/datapath.
func (o *Objects) Services() *ebpf.Map  { return o.objs.LbSvc }
func (o *Objects) Backends() *ebpf.Map  { return o.objs.LbBackends2 }
func (o *Objects) Maglev() *ebpf.Map    { return o.objs.LbMaglev }
func (o *Objects) Flows() *ebpf.Map     { return o.objs.LbFlows3 }
func (o *Objects) VIPFilter() *ebpf.Map { return o.objs.LbVipf }

// RevNATSpill is lb_rnat_spill, where the replies' translations of NAT
// flows evicted from lb_flows3 while in use go.
func (o *Objects) RevNATSpill() *ebpf.Map { return o.objs.LbRnatSpill }
func (o *Objects) Frags() *ebpf.Map       { return o.objs.LbFrags }
func (o *Objects) Stats() *ebpf.Map       { return o.objs.LbStats2 }
func (o *Objects) XDP() *ebpf.Program     { return o.objs.LbXdp }
func (o *Objects) TC() *ebpf.Program      { return o.objs.LbRevnat }

// Go mirrors of the C structs, generated by bpf2go.
type (
	SvcKey    = lbLbSvcKey
	SvcVal    = lbLbSvcVal
	Backend   = lbLbBackend
	FlowKey   = lbLbFlowKey
	Flow      = lbLbFlow
	SetHead   = lbLbSetHead
	FlowEnt   = lbLbFlowEnt
	FlowSet   = lbLbFlowSet
	RevNATVal = lbLbRnatVal
	RevNATEnt = lbLbRnatEnt
	RevNATSet = lbLbRnatSet
	FragKey   = lbLbFragKey
	StatVal   = lbLbStatVal
)

// Counter names, indexed by enum lb_stat in lb.h.
var StatNames = []string{
	"pass_not_ip", "drop_truncated", "drop_bad_version", "drop_bad_ihl", "pass_ext_limit",
	"pass_no_service", "new_flow", "est_flow", "drop_no_backend", "ipopts", "exthdrs",
	"frag_first", "frag_later", "pass_frag_miss", "icmp_err", "pass_icmp_err_miss", "nat", "dsr",
	"drop_dsr_fib", "drop_dsr_vlan", "drop_dsr_headroom", "drop_prefilter", "revnat", "drop_flow_full", "rnat_spill",
	"rnat_stale", "revnat_pull",
}

// Decap is lb_decap, for the TC ingress of a DSR backend host without an
// ipip device.
func (o *Objects) Decap() *ebpf.Program { return o.objs.LbDecap }
