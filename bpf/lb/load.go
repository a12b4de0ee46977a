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
	// FlowEntries overrides the capacity of the flow table lb_flows2
	// (rounded down to a power of two, at least LB_FLOW_WAYS) when it is
	// created; a pinned table keeps its size. The reverse-NAT table
	// lb_rnat2 is created with the flow table's size.
	FlowEntries uint32
	// MaglevSlots overrides the size of the flat Maglev array (only when
	// it is created).
	MaglevSlots uint32
}

// Objects is the loaded lb object.
type Objects struct {
	objs  lbObjects
	links map[string]link.Link
	// oldRevNAT is the pin of lb_rnat, the reverse-NAT table of an older
	// qbo, while its entries are being copied into lb_rnat2.
	oldRevNAT string
	copied    RevNATCopy
	pinDir    string
}

// RevNATCopy counts what Load copied from lb_rnat, the reverse-NAT table
// (an LRU hash) that lb_rnat2 replaced.
type RevNATCopy struct {
	// Copied entries; Replaced of them took the way of another entry,
	// whose reply is no longer translated (its set was full).
	Copied, Replaced int
}

// RevNATCopied reports the copy from lb_rnat; ok is false when there was
// no such table to copy.
func (o *Objects) RevNATCopied() (c RevNATCopy, ok bool) { return o.copied, o.oldRevNAT != "" }

// Load loads the object (reusing pinned maps), and attaches it to the
// uplinks: a pinned link running the same program is kept, one running
// another program is updated in place (link.Update swaps the program
// atomically, so no packet misses the balancer during an upgrade).
//
// Upgrading from a qbo whose reverse-NAT table was lb_rnat, it copies that
// table into lb_rnat2 before attaching (so the new lb_revnat finds every
// reply the old one did) and again after (for the flows the old lb_xdp
// recorded until its link was updated), then removes lb_rnat's pin.
func Load(opts Options) (*Objects, error) {
	o, err := load(opts)
	if err != nil {
		return nil, err
	}
	if err := o.copyRevNAT(); err != nil {
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
// interface (tests, benchmarks); like Load, it copies and removes lb_rnat.
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
	// The set-associative tables: a pinned one keeps its size, a new one
	// is sized by the options, lb_rnat2 like the flow table; each
	// program's set mask follows the map it will use.
	flowSets := spec.Maps["lb_flows2"].MaxEntries
	if opts.FlowEntries != 0 {
		flowSets = max(1, prevPow2(opts.FlowEntries/FlowWays))
	}
	flowSets, err = sizeSets(spec, pinDir, "lb_flows2", "lb_flow_mask", flowSets)
	if err != nil {
		return nil, err
	}
	if _, err := sizeSets(spec, pinDir, "lb_rnat2", "lb_rnat_mask", flowSets); err != nil {
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
	copts := &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: pinDir}}
	oldPath := filepath.Join(pinDir, "lb_rnat")
	old, err := ebpf.LoadPinnedMap(oldPath, nil)
	switch {
	case err == nil:
		defer old.Close()
		spec.Maps["lb_rnat_old"].MaxEntries = old.MaxEntries()
		copts.MapReplacements = map[string]*ebpf.Map{"lb_rnat_old": old}
		o.oldRevNAT = oldPath
	case errors.Is(err, os.ErrNotExist):
		// Nothing to copy: a placeholder, released right after loading.
		spec.Maps["lb_rnat_old"].MaxEntries = 1
	default:
		return nil, fmt.Errorf("opening lb_rnat of an older qbo: %w", err)
	}
	if err := spec.LoadAndAssign(&o.objs, copts); err != nil {
		return nil, fmt.Errorf("loading lb object: %w", err)
	}
	if o.oldRevNAT == "" {
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

// copyRevNAT runs lb_rnat_upgrade: lb_rnat's entries that lb_rnat2 lacks
// are inserted into it.
func (o *Objects) copyRevNAT() error {
	if o.objs.LbRnatUpgrade == nil {
		return nil
	}
	var st lbLbRnatUpgradeStats
	if _, err := o.objs.LbRnatUpgrade.Run(&ebpf.RunOptions{Context: &st, ContextOut: &st}); err != nil {
		return fmt.Errorf("copying lb_rnat into lb_rnat2: %w", err)
	}
	o.copied.Copied += int(st.Copied)
	o.copied.Replaced += int(st.Replaced)
	return nil
}

// finishUpgrade takes over what an older qbo left pinned, once the old
// programs (detached by now) no longer write to it: lb_rnat (finishRevNAT)
// and lb_stats (adoptStats).
func (o *Objects) finishUpgrade() error {
	if err := o.finishRevNAT(); err != nil {
		return err
	}
	return o.adoptStats()
}

// finishRevNAT copies lb_rnat (again), removes its pin and releases the
// upgrade program.
func (o *Objects) finishRevNAT() error {
	if o.objs.LbRnatUpgrade == nil {
		return nil
	}
	if err := o.copyRevNAT(); err != nil {
		return err
	}
	if err := os.Remove(o.oldRevNAT); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing lb_rnat: %w", err)
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
	o.objs.LbRnatUpgrade.Close()
	o.objs.LbRnatOld.Close()
	o.objs.LbRnatUpgrade, o.objs.LbRnatOld = nil, nil
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

// FlowWays is LB_FLOW_WAYS: entries per set of the flow and reverse-NAT
// tables.
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
func (o *Objects) Flows() *ebpf.Map     { return o.objs.LbFlows2 }
func (o *Objects) VIPFilter() *ebpf.Map { return o.objs.LbVipf }
func (o *Objects) RevNAT() *ebpf.Map    { return o.objs.LbRnat2 }

// RevNATSpill is lb_rnat_spill, where reverse-NAT entries displaced from
// lb_rnat2's sets go.
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
	"rnat_stale",
}

// Decap is lb_decap, for the TC ingress of a DSR backend host without an
// ipip device.
func (o *Objects) Decap() *ebpf.Program { return o.objs.LbDecap }
