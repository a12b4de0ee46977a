package fw

import (
	"cmp"
	"net/netip"
	"slices"
)

// Packet is what classification looks at: the hook it was seen at and the
// header fields rules can match. DPort is 0 for packets without ports
// (ICMP, other protocols, later fragments).
type Packet struct {
	Iface string
	Hook  Direction // the TCX hook: ingress = arriving at Iface
	Src   netip.Addr
	Dst   netip.Addr
	Proto uint8
	DPort uint16
}

// Verdict is the outcome of classifying a packet.
type Verdict struct {
	Action Action
	Rule   string // the deciding rule, "" when the default policy decided
	Log    bool
}

// Resolved maps each instance target (and TargetNode, for the interfaces
// the node-wide rules attach to besides every other attached interface) to
// host-side interface names. Interface targets resolve to themselves.
type Resolved map[Target][]string

// hookOf is the hook direction at which a rule of direction d for target t
// runs: instance interfaces are host-side veths, so traffic into the
// instance leaves through the host side.
func hookOf(t Target, d Direction) Direction {
	if t.Kind == TargetInstance {
		if d == Ingress {
			return Egress
		}
		return Ingress
	}
	return d
}

func (r Resolved) ifaces(t Target) []string {
	if t.Kind == TargetIface {
		return []string{t.Name}
	}
	return r[t]
}

// Attached lists every interface the rule set needs hooks on, sorted.
func (r Resolved) Attached(s *RuleSet) []string {
	set := map[string]bool{}
	for _, n := range r[Node] {
		set[n] = true
	}
	for _, rule := range s.Rules {
		for _, n := range r.ifaces(rule.Target) {
			set[n] = true
		}
	}
	for _, p := range s.Policies {
		for _, n := range r.ifaces(p.Target) {
			set[n] = true
		}
	}
	out := make([]string, 0, len(set))
	for n := range set {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// appliesAt reports whether something targeted at t with direction d runs
// at (iface, hook). Node-wide rules run on every attached interface.
func (r Resolved) appliesAt(t Target, d Direction, iface string, hook Direction) bool {
	if hookOf(t, d) != hook {
		return false
	}
	if t.Kind == TargetNode {
		return true
	}
	return slices.Contains(r.ifaces(t), iface)
}

// sorted returns the rules in priority order: lower priority first, ties
// by name. This order is the rule positions of a Compiled.
func sorted(rules []Rule) []Rule {
	out := slices.Clone(rules)
	slices.SortFunc(out, func(a, b Rule) int {
		if c := cmp.Compare(a.Priority, b.Priority); c != 0 {
			return c
		}
		return cmp.Compare(a.Name, b.Name)
	})
	return out
}

// Matches reports whether rule r's header fields match p (target and
// direction are not looked at).
func (r *Rule) Matches(p Packet) bool {
	if r.Src.IsValid() && !r.Src.Contains(p.Src) {
		return false
	}
	if r.Dst.IsValid() && !r.Dst.Contains(p.Dst) {
		return false
	}
	switch r.Proto {
	case ProtoAny:
	case ProtoICMP:
		if p.Proto != ProtoICMP && p.Proto != ProtoICMPv6 {
			return false
		}
	default:
		if p.Proto != r.Proto {
			return false
		}
	}
	if !r.Ports.Any() && (p.DPort < r.Ports.Lo || p.DPort > r.Ports.Hi) {
		return false
	}
	return true
}

// Evaluate is the reference model of first-match semantics: the
// lowest-priority rule that applies at the packet's hook and matches it
// decides; otherwise the default policy does. It is deliberately the
// obvious linear scan; the compiled classifier and the datapath are tested
// against it. A packet on an interface the rule set does not attach to is
// allowed.
func Evaluate(set *RuleSet, res Resolved, p Packet) Verdict {
	c := set.Clone()
	s := &c
	_ = s.Validate() // fills defaults; an invalid set is evaluated as given
	if !slices.Contains(res.Attached(s), p.Iface) {
		return Verdict{Action: Allow}
	}
	for _, r := range sorted(s.Rules) {
		if res.appliesAt(r.Target, r.Direction, p.Iface, p.Hook) && r.Matches(p) {
			return Verdict{Action: r.Action, Rule: r.Name, Log: r.Log}
		}
	}
	return Verdict{Action: defaultAt(s, res, p.Iface, p.Hook)}
}

// defaultAt picks the default policy at (iface, hook): an interface
// target's policy, else an instance target's, else the node's, else Allow.
func defaultAt(s *RuleSet, res Resolved, iface string, hook Direction) Action {
	best, rank := Allow, 99
	for _, p := range s.Policies {
		if !res.appliesAt(p.Target, p.Direction, iface, hook) {
			continue
		}
		r := map[TargetKind]int{TargetIface: 0, TargetInstance: 1, TargetNode: 2}[p.Target.Kind]
		if r < rank {
			best, rank = p.Action, r
		}
	}
	return best
}
