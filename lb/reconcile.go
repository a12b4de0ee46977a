package lb

import (
	"cmp"
	"net/netip"
	"slices"
)

// Service entry flags, as the datapath sees them.
const (
	SvcDSR uint32 = 1 << 0
)

// Backend entry flags.
const (
	BackendDSR      uint32 = 1 << 0
	BackendDraining uint32 = 1 << 1
)

// SvcEntry is the value of a service in the datapath.
type SvcEntry struct {
	ID        uint32
	Count     uint32 // backends in the Maglev table
	TableSize uint32
	Flags     uint32
}

// BackendEntry is the value of a backend in the datapath.
type BackendEntry struct {
	Addr    netip.AddrPort
	Service uint32
	Flags   uint32
}

// Tables is the full content of the datapath's maps (or what it should
// be): services by key, backends by ID, Maglev tables by service ID.
type Tables struct {
	Services map[Key]SvcEntry
	Backends map[uint32]BackendEntry
	Maglev   map[uint32][]uint32
}

// NewTables returns empty tables.
func NewTables() Tables {
	return Tables{Services: map[Key]SvcEntry{}, Backends: map[uint32]BackendEntry{}, Maglev: map[uint32][]uint32{}}
}

// Tables computes the desired datapath content.
func (s *State) Tables() Tables {
	t := NewTables()
	for _, svc := range s.Services {
		t.add(svc)
	}
	return t
}

func (t Tables) add(svc *Service) {
	var flags, bflags uint32
	if svc.Mode == ModeDSR {
		flags |= SvcDSR
		bflags |= BackendDSR
	}
	t.Services[svc.Key()] = SvcEntry{ID: svc.ID, Count: uint32(len(svc.Backends)), TableSize: svc.TableSize, Flags: flags}
	for _, b := range svc.Backends {
		t.Backends[b.ID] = BackendEntry{Addr: b.Addr, Service: svc.ID, Flags: bflags}
	}
	for _, b := range svc.Draining {
		t.Backends[b.ID] = BackendEntry{Addr: b.Addr, Service: svc.ID, Flags: bflags | BackendDraining}
	}
	if len(svc.Backends) > 0 {
		t.Maglev[svc.ID] = Maglev(svc.Backends, svc.TableSize)
	}
}

// ServiceTables is the datapath content of one service (nil: none), so
// that a change of one service is Diff(ServiceTables(new),
// ServiceTables(old)) without reading every map.
func ServiceTables(svc *Service) Tables {
	t := NewTables()
	if svc != nil {
		t.add(svc)
	}
	return t
}

// OpKind is what an Op does.
type OpKind int

// Ops run in this order: everything a service entry points to exists
// before the entry does, and is removed only after it.
const (
	PutBackend OpKind = iota
	PutMaglev
	PutService
	DelService
	DelMaglev
	DelBackend
)

func (k OpKind) String() string {
	return [...]string{"put-backend", "put-maglev", "put-service", "del-service", "del-maglev", "del-backend"}[k]
}

// Op is one map operation.
type Op struct {
	Kind    OpKind
	Key     Key          // PutService, DelService
	Service SvcEntry     // PutService
	ID      uint32       // backend ID or service ID (maglev)
	Backend BackendEntry // PutBackend
	Table   []uint32     // PutMaglev
}

// Diff returns the operations that turn actual into desired, in the order
// they must run. It is pure: no kernel, no I/O.
func Diff(desired, actual Tables) []Op {
	var ops []Op
	for id, b := range desired.Backends {
		if a, ok := actual.Backends[id]; !ok || a != b {
			ops = append(ops, Op{Kind: PutBackend, ID: id, Backend: b})
		}
	}
	for id, tab := range desired.Maglev {
		if a, ok := actual.Maglev[id]; !ok || !slices.Equal(a, tab) {
			ops = append(ops, Op{Kind: PutMaglev, ID: id, Table: tab})
		}
	}
	for k, v := range desired.Services {
		if a, ok := actual.Services[k]; !ok || a != v {
			ops = append(ops, Op{Kind: PutService, Key: k, Service: v})
		}
	}
	for k := range actual.Services {
		if _, ok := desired.Services[k]; !ok {
			ops = append(ops, Op{Kind: DelService, Key: k})
		}
	}
	for id := range actual.Maglev {
		if _, ok := desired.Maglev[id]; !ok {
			ops = append(ops, Op{Kind: DelMaglev, ID: id})
		}
	}
	for id := range actual.Backends {
		if _, ok := desired.Backends[id]; !ok {
			ops = append(ops, Op{Kind: DelBackend, ID: id})
		}
	}
	return Order(ops)
}

// Order sorts ops into the order they must run (see OpKind), stably and
// deterministically.
func Order(ops []Op) []Op {
	slices.SortStableFunc(ops, func(a, b Op) int {
		if c := cmp.Compare(a.Kind, b.Kind); c != 0 {
			return c
		}
		if c := cmp.Compare(a.ID, b.ID); c != 0 {
			return c
		}
		return a.Key.VIP.Compare(b.Key.VIP)*4 + cmp.Compare(a.Key.Port, b.Key.Port)*2 + cmp.Compare(a.Key.Proto, b.Key.Proto)
	})
	return ops
}

// Apply applies ops to t (the fake kernel of the unit tests, and the
// proof that Diff's ops reach desired).
func (t Tables) Apply(ops []Op) {
	for _, op := range ops {
		switch op.Kind {
		case PutBackend:
			t.Backends[op.ID] = op.Backend
		case PutMaglev:
			t.Maglev[op.ID] = slices.Clone(op.Table)
		case PutService:
			t.Services[op.Key] = op.Service
		case DelService:
			delete(t.Services, op.Key)
		case DelMaglev:
			delete(t.Maglev, op.ID)
		case DelBackend:
			delete(t.Backends, op.ID)
		}
	}
}
