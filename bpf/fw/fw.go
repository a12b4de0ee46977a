package fw

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/qbo/qbo/bpf"
)

// The C layouts, for fw/datapath (the only code that fills these maps).
type (
	Tuple4     = fwFwTuple4
	Tuple6     = fwFwTuple6
	IfslotKey  = fwFwIfslotKey
	ScopeVal   = fwFwScopeVal
	Key4       = fwFwKey4
	Key6       = fwFwKey6
	Rule       = fwFwRule
	Counter    = fwFwCounter
	Config     = fwFwConfig
	CTKey      = fwFwCtKey
	CTEnt      = fwFwCtEnt
	CTSet      = fwFwCtSet
	TSS4Bucket = fwFwTss4Bucket
	TSS6Bucket = fwFwTss6Bucket
	DenyEvent  = fwFwDenyEvent
	EventHdr   = fwQboEventHdr
	PFKey4     = fwQboPfKey4
	PFKey6     = fwQboPfKey6
	PFVal      = fwQboPfVal
	PFHosts    = fwQboPfHosts
	PFConfig   = fwQboPfConfig
	Maps       = fwMaps
	Programs   = fwPrograms
	KindStat   = fwQboKindStat
	FragKey    = fwFwFragKey
	FragVal    = fwFwFragVal
	RateWindow = fwFwRate
)

// Constants shared with fw.c (enums the BTF does not carry).
const (
	MaxRules  = 65536 // FW_MAX_RULES: rule positions and counter slots
	MaxTuples = 128   // FW_MAX_TUPLES: searched per interface, hook and family
	// MaxEntries: entries per family and generation; 7/8 of the slots of
	// an entry table's half, a load at which a cuckoo table always builds.
	MaxEntries = TSSBuckets * TSSWays / 8 * 7
	// TSSBuckets, TSSWays: buckets per generation in fw_tss4_v3 and
	// fw_tss6_v3 (FW_TSS_BUCKETS) and ways per bucket; TSSShift is
	// FW_TSS_SHIFT (the hash bits naming a bucket).
	TSSBuckets = 1 << TSSShift
	TSSShift   = 16
	TSSWays    = 4
	// CTSets, CTWays: fw_ct_v3's sets and ways (262,144 connections).
	CTSets    = 65536
	CTWays    = 4
	MaxIfaces = 256
	// IfindexDirect: ifindexes below it find their slot in fw_ifslot (an
	// array), larger ones in fw_ifslot_hi (FW_IFINDEX_DIRECT).
	IfindexDirect = 65536
	SlotDefault   = 0xffffffff

	ActDeny  = 0
	ActAllow = 1

	HookIngress = 0
	HookEgress  = 1

	// EventKindDeny is QBO_EV_FW_DENY in bpf/include/events.h.
	EventKindDeny = 32

	// PrefilterMaxEntries is QBO_PF_MAX_ENTRIES per family.
	PrefilterMaxEntries = 1 << 20
	// PrefilterV4Words is QBO_PF_V4_WORDS: one bit per IPv4 /24.
	PrefilterV4Words = (1 << 24) / 64

	// TCX verdicts the programs return.
	VerdictNext = 0xffffffff // TCX_NEXT (-1): allowed, next program
	VerdictDrop = 2
)

// Stat indexes fw_stats; the names are what status shows.
type Stat uint32

const (
	StatNotIP Stat = iota
	StatTruncated
	StatBadVersion
	StatBadIHL
	StatExtLimit
	StatUnattached
	StatCTEstablished
	StatCTReply
	StatICMPRelated
	StatRuleAllow
	StatRuleDeny
	StatDefaultAllow
	StatDefaultDeny
	StatFragAllow
	StatFragDeny
	StatFragOrphan
	StatReevalDeny
	StatLogRateLimited
	StatMax
)

var statNames = [...]string{"not_ip", "truncated", "bad_version", "bad_ihl", "ext_limit", "unattached",
	"ct_established", "ct_reply", "icmp_related", "rule_allow", "rule_deny", "default_allow",
	"default_deny", "frag_allow", "frag_deny", "frag_orphan", "reeval_deny", "log_ratelimited"}

func (s Stat) String() string {
	if int(s) < len(statNames) {
		return statNames[s]
	}
	return fmt.Sprintf("stat%d", uint32(s))
}

// Prefilter stats (enum qbo_pf_stat in prefilter.h).
const (
	PFPass = iota
	PFDrop
	PFNotIP
	PFMalformed
	PFStatMax
)

// obsoletePins are maps of earlier layouts that no program of this object
// uses. Load unpins them: the old programs, attached until their links are
// updated, keep their own references, so unpinning only frees the maps
// once nothing runs the old code.
var obsoletePins = []string{"fw_src4", "fw_dst4", "fw_src6", "fw_dst6", "fw_proto", "fw_port_idx",
	"fw_ports", "fw_scopes", "fw_rules", "fw_counters", "fw_cfg", "fw_ct",
	"fw_tss4", "fw_tss6", "fw_ifslot", "fw_ifslot_hi", "fw_scopes_v2", "fw_rules_v2", "fw_cfg_v2", "fw_ct_v2"}

// Options configure Load.
type Options struct {
	// PinDir is the bpffs directory for maps; links go in
	// bpf.LinksDir(PinDir). Default bpf.DefaultPinDir.
	PinDir string
	// Events is the shared telemetry ring (trace's EventsMap). When nil,
	// the object uses (or creates) the ring pinned in PinDir.
	Events *ebpf.Map
}

// Firewall is the loaded firewall object. Its maps are pinned in PinDir and
// its TCX links in the links directory, so rules keep being enforced
// while qbod is down.
type Firewall struct {
	objs     fwObjects
	linksDir string
}

// Load loads the object, reusing maps pinned in PinDir.
func Load(opts Options) (*Firewall, error) {
	pinDir := opts.PinDir
	if pinDir == "" {
		pinDir = bpf.DefaultPinDir
	}
	linksDir := bpf.LinksDir(pinDir)
	if err := os.MkdirAll(linksDir, 0o700); err != nil {
		return nil, fmt.Errorf("creating pin directory: %w", err)
	}
	spec, err := loadFw()
	if err != nil {
		return nil, fmt.Errorf("loading firewall object: %w", err)
	}
	co := &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: pinDir}}
	if opts.Events != nil {
		co.MapReplacements = map[string]*ebpf.Map{"events": opts.Events}
	}
	f := &Firewall{linksDir: linksDir}
	if err := spec.LoadAndAssign(&f.objs, co); err != nil {
		return nil, fmt.Errorf("loading firewall object: %w", err)
	}
	if _, err := adoptOldConnections(pinDir, f.objs.FwCtV3); err != nil {
		f.Close()
		return nil, err
	}
	for _, n := range obsoletePins {
		if err := os.Remove(filepath.Join(pinDir, n)); err != nil && !errors.Is(err, os.ErrNotExist) {
			f.Close()
			return nil, fmt.Errorf("removing obsolete pin: %w", err)
		}
	}
	return f, nil
}

// Maps returns the object's maps.
func (f *Firewall) Maps() *Maps { return &f.objs.fwMaps }

// Programs returns the object's programs.
func (f *Firewall) Programs() *Programs { return &f.objs.fwPrograms }

// Close releases the caller's handles; pins keep everything alive.
func (f *Firewall) Close() error { return f.objs.Close() }

func (f *Firewall) linkPath(ifname, hook string) string {
	return filepath.Join(f.linksDir, "fw_"+strings.ReplaceAll(ifname, ".", "_")+"_"+hook)
}

// Attach makes sure the ingress and egress programs run on ifindex, first
// in its TCX chains, through links pinned under the interface's name. A
// pinned link is updated in place to the current program, so an upgrade
// has no gap.
func (f *Firewall) Attach(ifname string, ifindex int) error {
	for _, h := range []struct {
		name   string
		prog   *ebpf.Program
		attach ebpf.AttachType
	}{
		{"ingress", f.objs.FwIngress, ebpf.AttachTCXIngress},
		{"egress", f.objs.FwEgress, ebpf.AttachTCXEgress},
	} {
		path := f.linkPath(ifname, h.name)
		if old, err := link.LoadPinnedLink(path, nil); err == nil {
			info, ierr := old.Info()
			if ierr == nil && info.TCX() != nil && int(info.TCX().Ifindex) == ifindex {
				err = old.Update(h.prog)
				old.Close()
				if err != nil {
					return fmt.Errorf("updating %s link on %s: %w", h.name, ifname, err)
				}
				continue
			}
			// The interface went away and its name came back as another.
			old.Close()
			if err := unlink(path); err != nil {
				return err
			}
		} else if !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("opening pinned link %s: %w", path, err)
		}
		l, err := link.AttachTCX(link.TCXOptions{Interface: ifindex, Program: h.prog, Attach: h.attach, Anchor: link.Head()})
		if err != nil {
			return fmt.Errorf("attaching %s program to %s: %w", h.name, ifname, err)
		}
		err = l.Pin(path)
		l.Close()
		if err != nil {
			return fmt.Errorf("pinning %s link on %s: %w", h.name, ifname, err)
		}
	}
	return nil
}

// Detach removes the programs from ifname (by unpinning their links).
func (f *Firewall) Detach(ifname string) error {
	for _, h := range []string{"ingress", "egress"} {
		if err := unlink(f.linkPath(ifname, h)); err != nil {
			return err
		}
	}
	return nil
}

// DetachExcept removes the programs from every interface with pinned
// firewall links except those named in keep.
func (f *Firewall) DetachExcept(keep []string) error {
	want := map[string]bool{}
	for _, n := range keep {
		for _, h := range []string{"ingress", "egress"} {
			want[filepath.Base(f.linkPath(n, h))] = true
		}
	}
	ents, err := os.ReadDir(f.linksDir)
	if err != nil {
		return fmt.Errorf("listing links: %w", err)
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "fw_") && !want[e.Name()] {
			if err := unlink(filepath.Join(f.linksDir, e.Name())); err != nil {
				return err
			}
		}
	}
	return nil
}

func unlink(path string) error { return bpf.DetachPinned(path) }
