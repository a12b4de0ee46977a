package fw

import (
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
)

// Action is what a rule or a default policy does with a packet.
type Action string

const (
	Allow Action = "allow"
	Deny  Action = "deny"
)

// Direction is the hook a rule applies to, seen from its target: ingress
// is traffic arriving at the target, egress traffic leaving it.
type Direction string

const (
	Ingress Direction = "ingress"
	Egress  Direction = "egress"
)

// Directions lists both directions in a fixed order.
var Directions = []Direction{Ingress, Egress}

// Protocol numbers a rule can name. ProtoICMP matches ICMP over IPv4 and
// ICMPv6 over IPv6.
const (
	ProtoAny    uint8 = 0
	ProtoICMP   uint8 = 1
	ProtoTCP    uint8 = 6
	ProtoUDP    uint8 = 17
	ProtoICMPv6 uint8 = 58
)

// TargetKind says what a target names.
type TargetKind string

const (
	// TargetNode is every interface the firewall is attached to.
	TargetNode TargetKind = "node"
	// TargetIface is one interface of the node, by name.
	TargetIface TargetKind = "iface"
	// TargetInstance is a container or instance; it resolves to its
	// host-side interfaces, where ingress (into the instance) is the
	// host side's egress hook.
	TargetInstance TargetKind = "instance"
)

// Target is what a rule or policy applies to.
type Target struct {
	Kind TargetKind `json:"kind"`
	Name string     `json:"name,omitempty"`
}

// Node is the whole-node target.
var Node = Target{Kind: TargetNode}

func (t Target) String() string {
	if t.Kind == TargetNode || t.Kind == "" {
		return "node"
	}
	return string(t.Kind) + ":" + t.Name
}

// ParseTarget parses "node", "iface:NAME" or "instance:NAME".
func ParseTarget(s string) (Target, error) {
	if s == "" || s == "node" {
		return Node, nil
	}
	kind, name, ok := strings.Cut(s, ":")
	t := Target{Kind: TargetKind(kind), Name: name}
	if !ok {
		return Target{}, fmt.Errorf("%w: target %q: want node, iface:NAME or instance:NAME", ErrInvalid, s)
	}
	return t, t.validate()
}

// PortRange is an inclusive range of destination ports; the zero value
// means any port.
type PortRange struct {
	Lo uint16 `json:"lo"`
	Hi uint16 `json:"hi"`
}

// Any reports whether r matches every port.
func (r PortRange) Any() bool { return r.Lo == 0 && r.Hi == 0 }

func (r PortRange) String() string {
	switch {
	case r.Any():
		return "any"
	case r.Lo == r.Hi:
		return strconv.Itoa(int(r.Lo))
	}
	return fmt.Sprintf("%d-%d", r.Lo, r.Hi)
}

// ParsePortRange parses "N" or "N-M" (1..65535, N <= M).
func ParsePortRange(s string) (PortRange, error) {
	lo, hi, isRange := strings.Cut(s, "-")
	if !isRange {
		hi = lo
	}
	l, err1 := strconv.ParseUint(lo, 10, 16)
	h, err2 := strconv.ParseUint(hi, 10, 16)
	if err1 != nil || err2 != nil || l == 0 || h < l {
		return PortRange{}, fmt.Errorf("%w: port %q: want N or N-M with 1 <= N <= M <= 65535", ErrInvalid, s)
	}
	return PortRange{Lo: uint16(l), Hi: uint16(h)}, nil
}

// ParseProto parses "tcp", "udp", "icmp" or "" (any).
func ParseProto(s string) (uint8, error) {
	switch s {
	case "", "any":
		return ProtoAny, nil
	case "tcp":
		return ProtoTCP, nil
	case "udp":
		return ProtoUDP, nil
	case "icmp":
		return ProtoICMP, nil
	}
	return 0, fmt.Errorf("%w: protocol %q: want tcp, udp or icmp", ErrInvalid, s)
}

// ProtoName is the inverse of ParseProto ("" for any).
func ProtoName(p uint8) string {
	switch p {
	case ProtoTCP:
		return "tcp"
	case ProtoUDP:
		return "udp"
	case ProtoICMP, ProtoICMPv6:
		return "icmp"
	case ProtoAny:
		return ""
	}
	return strconv.Itoa(int(p))
}

// DefaultPriority is the priority of a rule added without one.
const DefaultPriority = 1000

// Rule is one named firewall rule. Zero-valued match fields match anything.
// Among the rules of a packet's target and direction, the one with the
// lowest Priority that matches decides (ties: the lower Name).
type Rule struct {
	Name      string       `json:"name"`
	Priority  int          `json:"priority"`
	Action    Action       `json:"action"`
	Log       bool         `json:"log,omitempty"`
	Direction Direction    `json:"direction"`
	Src       netip.Prefix `json:"src,omitzero"`
	Dst       netip.Prefix `json:"dst,omitzero"`
	Proto     uint8        `json:"proto,omitempty"`
	Ports     PortRange    `json:"ports,omitzero"`
	Target    Target       `json:"target"`
}

// Policy is the default action of a target in one direction, taken when no
// rule matches. A target without one falls back to the node's, and the
// node's default is Allow.
type Policy struct {
	Target    Target    `json:"target"`
	Direction Direction `json:"direction"`
	Action    Action    `json:"action"`
}

// Sentinel errors callers branch on.
var (
	ErrInvalid  = errors.New("invalid rule")
	ErrCapacity = errors.New("rule set exceeds datapath capacity")
	ErrNotFound = errors.New("not found")
)

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`)

func (t Target) validate() error {
	switch t.Kind {
	case TargetNode:
		if t.Name != "" {
			return fmt.Errorf("%w: the node target takes no name", ErrInvalid)
		}
	case TargetIface, TargetInstance:
		if t.Name == "" || len(t.Name) > 63 || strings.ContainsAny(t.Name, "/: \t") {
			return fmt.Errorf("%w: %s target name %q", ErrInvalid, t.Kind, t.Name)
		}
	default:
		return fmt.Errorf("%w: target kind %q", ErrInvalid, t.Kind)
	}
	return nil
}

// Normalize fills defaults (direction ingress, node target, masked
// prefixes) and validates r.
func (r *Rule) Normalize() error {
	if !nameRE.MatchString(r.Name) {
		return fmt.Errorf("%w: name %q: want 1-63 of [A-Za-z0-9_.-], starting alphanumeric", ErrInvalid, r.Name)
	}
	if r.Action != Allow && r.Action != Deny {
		return fmt.Errorf("%w: rule %s: action %q: want allow or deny", ErrInvalid, r.Name, r.Action)
	}
	if r.Direction == "" {
		r.Direction = Ingress
	}
	if r.Direction != Ingress && r.Direction != Egress {
		return fmt.Errorf("%w: rule %s: direction %q: want ingress or egress", ErrInvalid, r.Name, r.Direction)
	}
	if r.Target.Kind == "" {
		r.Target = Node
	}
	if err := r.Target.validate(); err != nil {
		return fmt.Errorf("rule %s: %w", r.Name, err)
	}
	if r.Priority < 0 || r.Priority > 1<<30 {
		return fmt.Errorf("%w: rule %s: priority %d out of 0..%d", ErrInvalid, r.Name, r.Priority, 1<<30)
	}
	for _, p := range []*netip.Prefix{&r.Src, &r.Dst} {
		if p.IsValid() {
			*p = NormalizePrefix(*p)
		}
	}
	if r.Src.IsValid() && r.Dst.IsValid() && r.Src.Addr().Is4() != r.Dst.Addr().Is4() {
		return fmt.Errorf("%w: rule %s: src and dst are of different address families", ErrInvalid, r.Name)
	}
	switch r.Proto {
	case ProtoAny, ProtoTCP, ProtoUDP, ProtoICMP:
	case ProtoICMPv6:
		r.Proto = ProtoICMP
	default:
		return fmt.Errorf("%w: rule %s: protocol %d: want tcp, udp or icmp", ErrInvalid, r.Name, r.Proto)
	}
	if !r.Ports.Any() {
		if r.Proto != ProtoTCP && r.Proto != ProtoUDP {
			return fmt.Errorf("%w: rule %s: a port needs --proto tcp or udp", ErrInvalid, r.Name)
		}
		if r.Ports.Lo == 0 || r.Ports.Hi < r.Ports.Lo {
			return fmt.Errorf("%w: rule %s: port range %d-%d", ErrInvalid, r.Name, r.Ports.Lo, r.Ports.Hi)
		}
	}
	return nil
}

// NormalizePrefix masks p and writes an IPv4-mapped IPv6 prefix of length
// 96 or more as the IPv4 prefix it is (a shorter one stays IPv6: it spans
// more than the mapped range). An invalid p gives the zero Prefix.
func NormalizePrefix(p netip.Prefix) netip.Prefix {
	if !p.IsValid() {
		return netip.Prefix{}
	}
	if a := p.Addr(); a.Is4In6() && p.Bits() >= 96 {
		p = netip.PrefixFrom(a.Unmap(), p.Bits()-96)
	}
	return p.Masked()
}

// Normalize validates p and fills its defaults.
func (p *Policy) Normalize() error {
	if p.Target.Kind == "" {
		p.Target = Node
	}
	if err := p.Target.validate(); err != nil {
		return err
	}
	if p.Direction == "" {
		p.Direction = Ingress
	}
	if p.Direction != Ingress && p.Direction != Egress {
		return fmt.Errorf("%w: direction %q: want ingress or egress", ErrInvalid, p.Direction)
	}
	if p.Action != Allow && p.Action != Deny {
		return fmt.Errorf("%w: action %q: want allow or deny", ErrInvalid, p.Action)
	}
	return nil
}

// RuleSet is the whole desired configuration: what is persisted, compiled
// and applied as one unit.
type RuleSet struct {
	Rules    []Rule   `json:"rules"`
	Policies []Policy `json:"policies"`
	// Reevaluate makes established connections subject to rule changes:
	// a connection created under an older rule set is classified again
	// by the current one on its next packet.
	Reevaluate bool `json:"reevaluate,omitempty"`
	// Prefilter lists source prefixes the XDP prefilter drops on the
	// uplinks before any other processing (bpf/include/prefilter.h).
	Prefilter []netip.Prefix `json:"prefilter,omitempty"`
}

// MaxPrefilter is the prefilter's capacity per address family.
const MaxPrefilter = 1 << 20

// Validate normalizes every rule and policy and checks names are unique.
func (s *RuleSet) Validate() error {
	seen := map[string]bool{}
	for i := range s.Rules {
		if err := s.Rules[i].Normalize(); err != nil {
			return err
		}
		if seen[s.Rules[i].Name] {
			return fmt.Errorf("%w: duplicate rule name %q", ErrInvalid, s.Rules[i].Name)
		}
		seen[s.Rules[i].Name] = true
	}
	seenP := map[netip.Prefix]bool{}
	v4, v6 := 0, 0
	pf := s.Prefilter[:0:0]
	for _, p := range s.Prefilter {
		if !p.IsValid() {
			return fmt.Errorf("%w: invalid prefilter prefix", ErrInvalid)
		}
		p = NormalizePrefix(p)
		if seenP[p] {
			continue
		}
		seenP[p] = true
		pf = append(pf, p)
		if p.Addr().Is4() {
			v4++
		} else {
			v6++
		}
	}
	if v4 > MaxPrefilter || v6 > MaxPrefilter {
		return fmt.Errorf("%w: prefilter holds at most %d prefixes per family", ErrCapacity, MaxPrefilter)
	}
	s.Prefilter = pf
	pol := map[string]bool{}
	for i := range s.Policies {
		if err := s.Policies[i].Normalize(); err != nil {
			return err
		}
		k := s.Policies[i].Target.String() + "/" + string(s.Policies[i].Direction)
		if pol[k] {
			return fmt.Errorf("%w: duplicate policy for %s", ErrInvalid, k)
		}
		pol[k] = true
	}
	return nil
}

// Clone returns a deep copy of s.
func (s RuleSet) Clone() RuleSet {
	return RuleSet{
		Rules:      append([]Rule(nil), s.Rules...),
		Policies:   append([]Policy(nil), s.Policies...),
		Reevaluate: s.Reevaluate,
		Prefilter:  append([]netip.Prefix(nil), s.Prefilter...),
	}
}

// WithRule returns a copy of s with r added or replacing the rule of the
// same name.
func (s RuleSet) WithRule(r Rule) RuleSet {
	out := s.Clone()
	for i := range out.Rules {
		if out.Rules[i].Name == r.Name {
			out.Rules[i] = r
			return out
		}
	}
	out.Rules = append(out.Rules, r)
	return out
}

// WithoutRule returns a copy of s without the named rule, or ErrNotFound.
func (s RuleSet) WithoutRule(name string) (RuleSet, error) {
	out := s.Clone()
	for i := range out.Rules {
		if out.Rules[i].Name == name {
			out.Rules = append(out.Rules[:i], out.Rules[i+1:]...)
			return out, nil
		}
	}
	return out, fmt.Errorf("rule %q: %w", name, ErrNotFound)
}

// WithPolicy returns a copy of s with p set.
func (s RuleSet) WithPolicy(p Policy) RuleSet {
	out := s.Clone()
	for i := range out.Policies {
		if out.Policies[i].Target == p.Target && out.Policies[i].Direction == p.Direction {
			out.Policies[i] = p
			return out
		}
	}
	out.Policies = append(out.Policies, p)
	return out
}
