package lb

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Proto is an IP protocol number a service balances.
type Proto uint8

const (
	TCP Proto = 6
	UDP Proto = 17
)

func (p Proto) String() string {
	switch p {
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	}
	return strconv.Itoa(int(p))
}

// ParseProto parses "tcp" or "udp".
func ParseProto(s string) (Proto, error) {
	switch strings.ToLower(s) {
	case "tcp":
		return TCP, nil
	case "udp":
		return UDP, nil
	}
	return 0, fmt.Errorf("%w: protocol %q (want tcp or udp)", ErrInvalid, s)
}

// Mode says how packets reach the backends of a service.
type Mode string

const (
	// ModeNAT rewrites the destination to the backend (DNAT) and the
	// replies' source back to the VIP (reverse NAT): for backends on this
	// node.
	ModeNAT Mode = "nat"
	// ModeDSR encapsulates in IPIP towards the backend, which answers the
	// client directly (direct server return): for backends elsewhere. The
	// backend port must equal the VIP port.
	ModeDSR Mode = "dsr"
)

var (
	// ErrInvalid is returned for a malformed service or backend.
	ErrInvalid = errors.New("invalid")
	// ErrNotFound is returned for an unknown service or backend.
	ErrNotFound = errors.New("not found")
	// ErrExists is returned when adding what already exists.
	ErrExists = errors.New("already exists")
)

// Backend is one destination of a service.
type Backend struct {
	Addr netip.AddrPort `json:"addr"`
	// Weight is relative to the other backends' (default 1).
	Weight uint32 `json:"weight"`
	// ID is the datapath's backend ID, assigned by State.
	ID uint32 `json:"id"`
}

// Service is a VIP:port/proto balanced over weighted backends.
type Service struct {
	Name  string         `json:"name"`
	VIP   netip.AddrPort `json:"vip"`
	Proto Proto          `json:"proto"`
	Mode  Mode           `json:"mode"`
	// Drain keeps sockets (socket LB) of a deleted backend open; flows in
	// the XDP path always drain.
	Drain    bool      `json:"drain,omitempty"`
	Backends []Backend `json:"backends"`
	// Draining backends were deleted but may still carry flows: they keep
	// their ID and backend entry, and no new flow picks them.
	Draining []Backend `json:"draining,omitempty"`
	// ID is the datapath's service ID, assigned by State.
	ID uint32 `json:"id"`
	// TableSize is the Maglev table size (a prime), fixed when the service
	// is created and only grown, so that a backend change moves as few
	// slots as possible.
	TableSize uint32 `json:"table_size"`
}

// Key identifies a service in the datapath.
type Key struct {
	VIP   netip.Addr
	Port  uint16
	Proto Proto
}

func (s *Service) Key() Key {
	return Key{VIP: s.VIP.Addr().Unmap(), Port: s.VIP.Port(), Proto: s.Proto}
}

// ParseVIP parses "IP:PORT/PROTO".
func ParseVIP(s string) (netip.AddrPort, Proto, error) {
	ap, ps, ok := strings.Cut(s, "/")
	if !ok {
		return netip.AddrPort{}, 0, fmt.Errorf("%w: vip %q: want IP:PORT/PROTO", ErrInvalid, s)
	}
	addr, err := netip.ParseAddrPort(ap)
	if err != nil {
		return netip.AddrPort{}, 0, fmt.Errorf("%w: vip %q: %v", ErrInvalid, s, err)
	}
	p, err := ParseProto(ps)
	if err != nil {
		return netip.AddrPort{}, 0, err
	}
	return netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port()), p, nil
}

// ParseBackend parses "IP:PORT[@WEIGHT]".
func ParseBackend(s string) (Backend, error) {
	ap, ws, hasW := strings.Cut(s, "@")
	addr, err := netip.ParseAddrPort(ap)
	if err != nil {
		return Backend{}, fmt.Errorf("%w: backend %q: %v", ErrInvalid, s, err)
	}
	b := Backend{Addr: netip.AddrPortFrom(addr.Addr().Unmap(), addr.Port()), Weight: 1}
	if hasW {
		w, err := strconv.ParseUint(ws, 10, 16)
		if err != nil || w == 0 {
			return Backend{}, fmt.Errorf("%w: backend %q: weight must be 1..65535", ErrInvalid, s)
		}
		b.Weight = uint32(w)
	}
	return b, nil
}

// Validate checks a service as given by a user (IDs not yet assigned).
func (s *Service) Validate() error {
	if s.Name == "" || len(s.Name) > 63 || strings.ContainsAny(s.Name, " /\t\n") {
		return fmt.Errorf("%w: service name %q", ErrInvalid, s.Name)
	}
	if !s.VIP.IsValid() || s.VIP.Port() == 0 {
		return fmt.Errorf("%w: vip %v", ErrInvalid, s.VIP)
	}
	if s.Proto != TCP && s.Proto != UDP {
		return fmt.Errorf("%w: protocol %d", ErrInvalid, s.Proto)
	}
	if s.Mode != ModeNAT && s.Mode != ModeDSR {
		return fmt.Errorf("%w: mode %q (want nat or dsr)", ErrInvalid, s.Mode)
	}
	seen := map[netip.AddrPort]bool{}
	for _, b := range s.Backends {
		if err := s.validBackend(b); err != nil {
			return err
		}
		if seen[b.Addr] {
			return fmt.Errorf("%w: backend %v listed twice", ErrInvalid, b.Addr)
		}
		seen[b.Addr] = true
	}
	return nil
}

func (s *Service) validBackend(b Backend) error {
	if !b.Addr.IsValid() || b.Addr.Port() == 0 || b.Weight == 0 {
		return fmt.Errorf("%w: backend %v", ErrInvalid, b.Addr)
	}
	if b.Addr.Addr().Is4() != s.VIP.Addr().Is4() {
		return fmt.Errorf("%w: backend %v and vip %v are of different families", ErrInvalid, b.Addr, s.VIP)
	}
	if s.Mode == ModeDSR && b.Addr.Port() != s.VIP.Port() {
		return fmt.Errorf("%w: dsr backend %v must use the vip port %d", ErrInvalid, b.Addr, s.VIP.Port())
	}
	return nil
}

func (s *Service) clone() *Service {
	c := *s
	c.Backends = slices.Clone(s.Backends)
	c.Draining = slices.Clone(s.Draining)
	return &c
}
