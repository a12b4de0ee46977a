package trace

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/qbo/qbo/bpf"
)

// Options configure Load.
type Options struct {
	// PinDir is the bpffs directory for maps; links go in
	// bpf.LinksDir(PinDir). Default bpf.DefaultPinDir.
	PinDir string
}

// Tracer is the loaded trace object: its maps (pinned) and its programs,
// each attached through a pinned link.
type Tracer struct {
	objs  traceObjects
	links map[string]link.Link // by program name
}

// program pairs a program's name (as in the ELF and bpftool) with its
// loaded instance; the name also names its link pin, trace_<name>.
type program struct {
	name string
	prog *ebpf.Program
}

func (t *Tracer) programs() []program {
	p := &t.objs.tracePrograms
	return []program{
		{traceProgSchedProcessExec, p.SchedProcessExec},
		{traceProgSchedProcessFork, p.SchedProcessFork},
		{traceProgSchedProcessExit, p.SchedProcessExit},
		{traceProgInetSockSetState, p.InetSockSetState},
		{traceProgKfreeSkb, p.KfreeSkb},
	}
}

func (t *Tracer) maps() map[string]*ebpf.Map {
	m := &t.objs.traceMaps
	return map[string]*ebpf.Map{
		traceMapEvents:       m.Events,
		traceMapTraceStats:   m.TraceStats,
		traceMapTraceSkOwner: m.TraceSkOwner,
		traceMapTraceListen:  m.TraceListen,
	}
}

// Load loads the trace object and makes sure each of its programs is
// attached through a link pinned under the links directory.
//
// Maps pinned in PinDir are reused (so their IDs and contents survive a
// restart of the caller); missing ones are created and pinned. A pinned
// link whose program has the same tag and maps as the freshly loaded one is
// kept; any other is replaced. Replacement attaches and pins every new link
// first and only then swaps the pins and detaches the old links, so a
// failure leaves the old programs running, and a successful upgrade has no
// gap (for an instant both versions run and an event may be seen twice).
//
// Close releases the caller's handles only: the pins keep the programs
// attached and the maps alive.
func Load(opts Options) (*Tracer, error) {
	pinDir := opts.PinDir
	if pinDir == "" {
		pinDir = bpf.DefaultPinDir
	}
	linksDir := bpf.LinksDir(pinDir)
	if err := os.MkdirAll(linksDir, 0o700); err != nil {
		return nil, fmt.Errorf("creating pin directory: %w", err)
	}

	spec, err := loadTrace()
	if err != nil {
		return nil, fmt.Errorf("loading trace object: %w", err)
	}
	t := &Tracer{links: map[string]link.Link{}}
	err = spec.LoadAndAssign(&t.objs, &ebpf.CollectionOptions{
		Maps: ebpf.MapOptions{PinPath: pinDir},
	})
	if err != nil {
		return nil, fmt.Errorf("loading trace object: %w", err)
	}

	if err := t.attach(linksDir); err != nil {
		t.Close()
		return nil, err
	}
	return t, nil
}

// replacement is a new link pinned at tmp, waiting to be renamed over path.
type replacement struct {
	name      string
	path, tmp string
	new, old  link.Link // old is nil when nothing was pinned at path
}

func (t *Tracer) attach(linksDir string) (err error) {
	var pending []replacement
	defer func() {
		if err == nil {
			return
		}
		for _, r := range pending {
			_ = bpf.Unlink(r.tmp)
			r.new.Close()
			if r.old != nil {
				r.old.Close()
			}
		}
	}()

	for _, p := range t.programs() {
		path := filepath.Join(linksDir, "trace_"+p.name)
		old, err := bpf.LoadPinnedLink(path)
		if err != nil {
			return err
		}
		if old != nil {
			same, err := bpf.SameProgram(old, p.prog)
			if err != nil {
				old.Close()
				return fmt.Errorf("inspecting pinned link %s: %w", path, err)
			}
			if same {
				t.links[p.name] = old
				continue
			}
		}

		r := replacement{name: p.name, path: path, tmp: path + "_next", old: old}
		r.new, err = link.AttachTracing(link.TracingOptions{
			Program:    p.prog,
			AttachType: ebpf.AttachTraceRawTp,
		})
		if err != nil {
			if old != nil {
				old.Close()
			}
			return fmt.Errorf("attaching %s: %w", p.name, err)
		}
		pending = append(pending, r)
		// A leftover from an interrupted Load would make the pin fail.
		if err := bpf.Unlink(r.tmp); err != nil {
			return fmt.Errorf("removing stale pin: %w", err)
		}
		if err := r.new.Pin(r.tmp); err != nil {
			return fmt.Errorf("pinning link for %s: %w", p.name, err)
		}
	}

	// Commit: rename(2) replaces each old pin atomically; closing the old
	// link's last handle then detaches the old program.
	for i, r := range pending {
		if err := os.Rename(r.tmp, r.path); err != nil {
			pending = pending[i:]
			return fmt.Errorf("replacing pinned link for %s: %w", r.name, err)
		}
		if r.old != nil {
			r.old.Close()
		}
		t.links[r.name] = r.new
	}
	pending = nil
	return nil
}

// Close releases the Tracer's file descriptors. Pinned maps and links stay,
// so telemetry keeps flowing into the ring while nobody reads it.
func (t *Tracer) Close() error {
	var errs []error
	for _, l := range t.links {
		errs = append(errs, l.Close())
	}
	t.links = nil
	errs = append(errs, t.objs.Close())
	return errors.Join(errs...)
}

// EventsMap is the shared telemetry ring buffer, for other objects'
// CollectionOptions.MapReplacements.
func (t *Tracer) EventsMap() *ebpf.Map { return t.objs.Events }

// MapIDs returns the kernel ID of each of the object's maps by name.
func (t *Tracer) MapIDs() (map[string]ebpf.MapID, error) {
	ids := map[string]ebpf.MapID{}
	for name, m := range t.maps() {
		info, err := m.Info()
		if err != nil {
			return nil, fmt.Errorf("reading info of map %s: %w", name, err)
		}
		id, ok := info.ID()
		if !ok {
			return nil, fmt.Errorf("reading ID of map %s: %w", name, ebpf.ErrNotSupported)
		}
		ids[name] = id
	}
	return ids, nil
}

// linkIDs returns the kernel ID of each program's link by program name.
func (t *Tracer) linkIDs() (map[string]link.ID, error) {
	ids := map[string]link.ID{}
	for name, l := range t.links {
		info, err := l.Info()
		if err != nil {
			return nil, fmt.Errorf("reading info of link %s: %w", name, err)
		}
		ids[name] = info.ID
	}
	return ids, nil
}

// KindStats counts the records of one kind the kernel side wrote.
type KindStats struct {
	// Emitted records were written to the ring.
	Emitted uint64
	// Lost records found the ring full: the reader fell behind.
	Lost uint64
}

// KernelStats are the kernel-side counters of the trace object, summed over
// CPUs. They count since the trace_stats map was created, which survives
// restarts of the caller.
type KernelStats struct {
	// Kinds is keyed by Event.Kind names. The five kinds of this package
	// are always present; other objects' kinds ("kind_<n>") when non-zero.
	Kinds map[string]KindStats
	// Emitted and Lost are the totals over all kinds.
	Emitted, Lost uint64
}

// Stats reads the kernel-side counters.
func (t *Tracer) Stats() (KernelStats, error) {
	st := KernelStats{Kinds: map[string]KindStats{
		KindExec: {}, KindFork: {}, KindExit: {}, KindTCPState: {}, KindDrop: {},
	}}
	var (
		key    uint32
		perCPU []traceQboKindStat
	)
	it := t.objs.TraceStats.Iterate()
	for it.Next(&key, &perCPU) {
		var k KindStats
		for _, c := range perCPU {
			k.Emitted += c.Emitted
			k.Lost += c.Lost
		}
		if k == (KindStats{}) {
			continue
		}
		st.Kinds[kindName(traceQboEventKind(key))] = k
		st.Emitted += k.Emitted
		st.Lost += k.Lost
	}
	if err := it.Err(); err != nil {
		return KernelStats{}, fmt.Errorf("reading trace_stats: %w", err)
	}
	return st, nil
}

func kindName(k traceQboEventKind) string {
	switch k {
	case traceQboEventKindQBO_EV_EXEC:
		return KindExec
	case traceQboEventKindQBO_EV_FORK:
		return KindFork
	case traceQboEventKindQBO_EV_EXIT:
		return KindExit
	case traceQboEventKindQBO_EV_TCP_STATE:
		return KindTCPState
	case traceQboEventKindQBO_EV_DROP:
		return KindDrop
	}
	return "kind_" + strconv.Itoa(int(k))
}
