package lb

import (
	"cmp"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"slices"

	"github.com/qbo/qbo/internal/statefile"
)

// State is the desired state: the services by name, with the IDs the
// datapath knows them and their backends by. It is not safe for concurrent
// use. Every mutation returns an error and leaves State unchanged on error.
type State struct {
	Services map[string]*Service `json:"services"`
	// TableSize, when non-zero, is the Maglev table size of every new
	// service (a prime); zero picks from TableSizes by backend count.
	TableSize uint32 `json:"-"`
	// MinTableSize is the smallest table picked automatically.
	MinTableSize uint32 `json:"-"`
}

// NewState returns an empty desired state.
func NewState() *State { return &State{Services: map[string]*Service{}} }

// Sorted returns the services ordered by name.
func (s *State) Sorted() []*Service {
	out := make([]*Service, 0, len(s.Services))
	for _, v := range s.Services {
		out = append(out, v)
	}
	slices.SortFunc(out, func(a, b *Service) int { return cmp.Compare(a.Name, b.Name) })
	return out
}

func (s *State) usedIDs() (svc, be map[uint32]bool) {
	svc, be = map[uint32]bool{}, map[uint32]bool{}
	for _, v := range s.Services {
		svc[v.ID] = true
		for _, b := range v.Backends {
			be[b.ID] = true
		}
		for _, b := range v.Draining {
			be[b.ID] = true
		}
	}
	return svc, be
}

// MaxBackendIDs is the size of the datapath's backend array (LB_MAX_BACKENDS
// in bpf/include/lb.h); ID 0 is never used.
const MaxBackendIDs = 262144

func freeID(used map[uint32]bool) uint32 {
	for id := uint32(1); ; id++ {
		if !used[id] {
			used[id] = true
			return id
		}
	}
}

func (s *State) tableSize(n int, cur uint32) uint32 {
	if s.TableSize != 0 {
		return max(s.TableSize, cur)
	}
	return max(TableSizeFor(n, s.MinTableSize), cur)
}

// AddService adds a new service; its backends get IDs.
func (s *State) AddService(svc Service) (*Service, error) {
	if svc.Mode == "" {
		svc.Mode = ModeNAT
	}
	for i := range svc.Backends {
		if svc.Backends[i].Weight == 0 {
			svc.Backends[i].Weight = 1
		}
	}
	if err := svc.Validate(); err != nil {
		return nil, err
	}
	if len(svc.Backends) > MaxBackends {
		return nil, fmt.Errorf("%w: more than %d backends", ErrInvalid, MaxBackends)
	}
	if _, ok := s.Services[svc.Name]; ok {
		return nil, fmt.Errorf("service %q: %w", svc.Name, ErrExists)
	}
	for _, o := range s.Services {
		if o.Key() == svc.Key() {
			return nil, fmt.Errorf("vip %v/%v is service %q: %w", svc.VIP, svc.Proto, o.Name, ErrExists)
		}
	}
	c := svc.clone()
	svcIDs, beIDs := s.usedIDs()
	if len(beIDs)+len(c.Backends) >= MaxBackendIDs {
		return nil, fmt.Errorf("%w: the node's backend table is full (%d backends)", ErrInvalid, MaxBackendIDs-1)
	}
	c.ID = freeID(svcIDs)
	for i := range c.Backends {
		c.Backends[i].ID = freeID(beIDs)
	}
	c.Draining = nil
	c.TableSize = s.tableSize(len(c.Backends), 0)
	s.Services[c.Name] = c
	return c, nil
}

// DeleteService removes a service; its flows lose their service and end.
func (s *State) DeleteService(name string) error {
	if _, ok := s.Services[name]; !ok {
		return fmt.Errorf("service %q: %w", name, ErrNotFound)
	}
	delete(s.Services, name)
	return nil
}

// AddBackend adds a backend to a service (a draining one comes back with
// its old ID, so its flows stay where they are).
func (s *State) AddBackend(name string, b Backend) (*Service, error) {
	svc, ok := s.Services[name]
	if !ok {
		return nil, fmt.Errorf("service %q: %w", name, ErrNotFound)
	}
	if b.Weight == 0 {
		b.Weight = 1
	}
	if err := svc.validBackend(b); err != nil {
		return nil, err
	}
	if slices.ContainsFunc(svc.Backends, func(o Backend) bool { return o.Addr == b.Addr }) {
		return nil, fmt.Errorf("backend %v of %q: %w", b.Addr, name, ErrExists)
	}
	if len(svc.Backends) >= MaxBackends {
		return nil, fmt.Errorf("%w: more than %d backends", ErrInvalid, MaxBackends)
	}
	c := svc.clone()
	if i := slices.IndexFunc(c.Draining, func(o Backend) bool { return o.Addr == b.Addr }); i >= 0 {
		b.ID = c.Draining[i].ID
		c.Draining = slices.Delete(c.Draining, i, i+1)
	} else {
		_, beIDs := s.usedIDs()
		if len(beIDs)+1 >= MaxBackendIDs {
			return nil, fmt.Errorf("%w: the node's backend table is full (%d backends)", ErrInvalid, MaxBackendIDs-1)
		}
		b.ID = freeID(beIDs)
	}
	c.Backends = append(c.Backends, b)
	c.TableSize = s.tableSize(len(c.Backends), c.TableSize)
	s.Services[name] = c
	return c, nil
}

// DeleteBackend takes a backend out of a service's Maglev table; it keeps
// draining (its existing flows stay) until Forget.
func (s *State) DeleteBackend(name string, addr netip.AddrPort) (*Service, Backend, error) {
	svc, ok := s.Services[name]
	if !ok {
		return nil, Backend{}, fmt.Errorf("service %q: %w", name, ErrNotFound)
	}
	addr = netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port())
	i := slices.IndexFunc(svc.Backends, func(o Backend) bool { return o.Addr == addr })
	if i < 0 {
		return nil, Backend{}, fmt.Errorf("backend %v of %q: %w", addr, name, ErrNotFound)
	}
	c := svc.clone()
	b := c.Backends[i]
	c.Backends = slices.Delete(c.Backends, i, i+1)
	c.Draining = append(c.Draining, b)
	s.Services[name] = c
	return c, b, nil
}

// Forget drops a draining backend whose flows have ended.
func (s *State) Forget(name string, id uint32) {
	svc, ok := s.Services[name]
	if !ok {
		return
	}
	c := svc.clone()
	c.Draining = slices.DeleteFunc(c.Draining, func(b Backend) bool { return b.ID == id })
	s.Services[name] = c
}

// Save writes the state to path atomically (temp file, fsync, rename).
func (s *State) Save(path string) error {
	return statefile.Save(path, s)
}

// LoadState reads a state saved by Save; a missing file is an empty state.
func LoadState(path string) (*State, error) {
	s := NewState()
	data, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("loading lb state: %w", err)
	}
	if err := json.Unmarshal(data, s); err != nil {
		return nil, fmt.Errorf("loading lb state %s: %w", path, err)
	}
	if s.Services == nil {
		s.Services = map[string]*Service{}
	}
	for name, v := range s.Services {
		if v.Name != name {
			return nil, fmt.Errorf("loading lb state: service %q stored as %q: %w", v.Name, name, ErrInvalid)
		}
	}
	return s, nil
}
