package fw

import (
	"cmp"
	"fmt"
	"math/bits"
	"net/netip"
	"slices"
)

// Limits are the datapath's capacities. A rule set that exceeds one is
// refused by Compile as a whole, never partially applied.
type Limits struct {
	MaxRules   int // rule positions (and per-rule counter slots)
	MaxTuples  int // mask tuples searched at one interface and hook, per family
	MaxEntries int // hash entries per family, all scopes together
	MaxIfaces  int // attached interfaces
}

// DefaultLimits match the maps declared in bpf/fw/fw.c (fw/datapath's
// Limits is built from the same constants and tested equal).
var DefaultLimits = Limits{MaxRules: 65536, MaxTuples: 128, MaxEntries: 229376, MaxIfaces: 256}

// Families index the per-family halves of a Compiled.
const (
	IPv4 = 0
	IPv6 = 1
)

// Scope is one classification context: an attached interface's hook, or
// the node-wide rules of a hook (Iface "").
type Scope struct {
	Iface string
	Hook  Direction
}

// CompiledRule is the rule at one priority position.
type CompiledRule struct {
	Name   string
	Action Action
	Log    bool
}

// Tuple is a mask tuple: which leading bits of each field the entries of
// one hash group compare. Zero bits is "any".
type Tuple struct {
	SrcBits  uint8 // source prefix length
	DstBits  uint8 // destination prefix length
	Proto    bool  // protocol compared
	PortBits uint8 // leading bits of the destination port compared
}

// TupleRef is one tuple in a scope's search list.
type TupleRef struct {
	Owner int // scope id whose entries it holds: the scope itself, or its hook's node-wide scope
	ID    int // tuple id, unique within (Owner, family)
	Tuple Tuple
	Best  int // lowest rule position among its entries
}

// EntryKey is a hash entry's key: a packet's fields masked by the
// tuple's masks, under the owning scope and tuple id. Proto is the
// normalized protocol (ICMPv6 counts as ICMP), or 0 when not compared.
type EntryKey struct {
	Scope int
	Tuple int
	Proto uint8
	Port  uint16
	Src   netip.Addr
	Dst   netip.Addr
}

// CompiledScope is one scope's default policy and search lists.
type CompiledScope struct {
	Scope   Scope
	Default Action
	// Search holds, per family, the tuples a packet at this scope is
	// looked up in: the scope's own and its hook's node-wide ones,
	// sorted by Best.
	Search [2][]TupleRef
}

// Compiled is a rule set turned into tuple space search tables (see the
// package documentation). It is pure data; fw/datapath encodes it into
// maps.
type Compiled struct {
	Rules []CompiledRule // by priority position
	// Scopes is indexed by scope id: 0 and 1 are the node-wide ingress
	// and egress scopes, then each attached interface's ingress and
	// egress.
	Scopes []CompiledScope
	// Entries maps, per family, each masked key to the best (lowest)
	// rule position among the rules producing it.
	Entries [2]map[EntryKey]int
	Ifaces  []string // attached interfaces, sorted
	index   map[Scope]int
}

// NodeScope is the scope id of the node-wide rules of hook.
func NodeScope(hook Direction) int {
	if hook == Egress {
		return 1
	}
	return 0
}

// PortBlock is an aligned power-of-two block of destination ports: the
// ports whose leading Bits bits equal Value's.
type PortBlock struct {
	Value uint16
	Bits  uint8
}

// PortBlocks splits r into the fewest aligned blocks; any port is the one
// block of 0 bits.
func PortBlocks(r PortRange) []PortBlock {
	if r.Any() {
		return []PortBlock{{0, 0}}
	}
	var out []PortBlock
	for lo, hi := int(r.Lo), int(r.Hi); lo <= hi; {
		size := 1 << 16
		if lo != 0 {
			size = lo & -lo // the largest block lo is aligned to
		}
		for lo+size-1 > hi {
			size /= 2
		}
		out = append(out, PortBlock{uint16(lo), uint8(16 - bits.TrailingZeros(uint(size)))})
		lo += size
	}
	return out
}

// PortMask is the mask of a port's leading bits.
func PortMask(bits uint8) uint16 { return uint16(0xffff << (16 - uint32(bits))) }

// classProto is the protocol classification compares: ICMPv6 is ICMP, as
// a rule's "icmp" means both.
func classProto(p uint8) uint8 {
	if p == ProtoICMPv6 {
		return ProtoICMP
	}
	return p
}

func familyOf(a netip.Addr) int {
	if a.Is4() {
		return IPv4
	}
	return IPv6
}

func maskAddr(a netip.Addr, bits uint8) netip.Addr {
	p, _ := a.Prefix(int(bits))
	return p.Addr()
}

// Key is the entry key a packet's fields give under t.
func (t TupleRef) Key(p Packet) EntryKey {
	k := EntryKey{Scope: t.Owner, Tuple: t.ID, Port: p.DPort & PortMask(t.Tuple.PortBits),
		Src: maskAddr(p.Src, t.Tuple.SrcBits), Dst: maskAddr(p.Dst, t.Tuple.DstBits)}
	if t.Tuple.Proto {
		k.Proto = classProto(p.Proto)
	}
	return k
}

var zeroAddr = [2]netip.Addr{netip.IPv4Unspecified(), netip.IPv6Unspecified()}

// Compile validates s and compiles it for the interfaces in res, refusing
// it with ErrCapacity if it does not fit lim. It does not modify s.
func Compile(s RuleSet, res Resolved, lim Limits) (*Compiled, error) {
	s = s.Clone()
	if err := s.Validate(); err != nil {
		return nil, err
	}
	if len(s.Rules) > lim.MaxRules {
		return nil, fmt.Errorf("%w: %d rules, at most %d", ErrCapacity, len(s.Rules), lim.MaxRules)
	}
	rules := sorted(s.Rules)
	c := &Compiled{
		Ifaces:  res.Attached(&s),
		Entries: [2]map[EntryKey]int{{}, {}},
		index:   map[Scope]int{},
	}
	if len(c.Ifaces) > lim.MaxIfaces {
		return nil, fmt.Errorf("%w: %d interfaces, at most %d", ErrCapacity, len(c.Ifaces), lim.MaxIfaces)
	}
	for _, r := range rules {
		c.Rules = append(c.Rules, CompiledRule{Name: r.Name, Action: r.Action, Log: r.Log})
	}

	// Scopes: the node-wide ones, then each attached interface's.
	addScope := func(sc Scope, def Action) {
		c.index[sc] = len(c.Scopes)
		c.Scopes = append(c.Scopes, CompiledScope{Scope: sc, Default: def})
	}
	for _, h := range []Direction{Ingress, Egress} {
		def := Allow
		for _, p := range s.Policies {
			if p.Target.Kind == TargetNode && p.Direction == h {
				def = p.Action
			}
		}
		addScope(Scope{"", h}, def)
	}
	for _, n := range c.Ifaces {
		for _, h := range []Direction{Ingress, Egress} {
			addScope(Scope{n, h}, defaultAt(&s, res, n, h))
		}
	}

	// Each scope's own tuples and their entries. Rules come in priority
	// order, so the first rule to produce a key or a tuple is its best.
	var own [2][][]*group // [family][scope id]
	for f := range own {
		own[f] = make([][]*group, len(c.Scopes))
	}
	byMask := map[groupID]*group{}
	var owners []int
	for pos, r := range rules {
		owners = owners[:0]
		if r.Target.Kind == TargetNode {
			owners = append(owners, NodeScope(r.Direction))
		} else {
			for _, n := range res.ifaces(r.Target) {
				if id, ok := c.index[Scope{n, hookOf(r.Target, r.Direction)}]; ok {
					owners = append(owners, id)
				}
			}
		}
		for f := range 2 {
			if (r.Src.IsValid() && familyOf(r.Src.Addr()) != f) || (r.Dst.IsValid() && familyOf(r.Dst.Addr()) != f) {
				continue
			}
			k := fieldKey{Proto: r.Proto, Src: zeroAddr[f], Dst: zeroAddr[f]}
			var t Tuple
			if r.Src.IsValid() {
				k.Src, t.SrcBits = r.Src.Addr(), uint8(r.Src.Bits())
			}
			if r.Dst.IsValid() {
				k.Dst, t.DstBits = r.Dst.Addr(), uint8(r.Dst.Bits())
			}
			t.Proto = r.Proto != ProtoAny
			for _, b := range PortBlocks(r.Ports) {
				t.PortBits, k.Port = b.Bits, b.Value
				for _, sc := range owners {
					g := byMask[groupID{sc, f, t}]
					if g == nil {
						g = &group{owner: sc, t: t, best: pos, ents: map[fieldKey]int{}}
						byMask[groupID{sc, f, t}] = g
						own[f][sc] = append(own[f][sc], g)
					}
					if _, ok := g.ents[k]; !ok {
						g.ents[k] = pos
					}
				}
			}
		}
	}

	fams := [2]string{"IPv4", "IPv6"}
	for f := range 2 {
		if err := fitTuples(c.Scopes, own[f], lim, fams[f]); err != nil {
			return nil, err
		}
	}

	// Number each scope's tuples best first and emit the entries.
	for f := range 2 {
		ids := map[*group]int{}
		for sc := range c.Scopes {
			slices.SortFunc(own[f][sc], func(a, b *group) int { return cmp.Compare(a.best, b.best) })
			for i, g := range own[f][sc] {
				ids[g] = i
				for k, pos := range g.ents {
					c.Entries[f][EntryKey{Scope: sc, Tuple: i, Proto: k.Proto, Port: k.Port, Src: k.Src, Dst: k.Dst}] = pos
				}
			}
		}
		// Search lists: an interface's hook looks in its own tuples and
		// in its hook's node-wide ones, best first.
		for id := range c.Scopes {
			sc := &c.Scopes[id]
			var list []TupleRef
			for _, g := range searched(own[f], sc.Scope, id) {
				list = append(list, TupleRef{Owner: g.owner, ID: ids[g], Tuple: g.t, Best: g.best})
			}
			slices.SortFunc(list, func(a, b TupleRef) int {
				return cmp.Or(cmp.Compare(a.Best, b.Best), cmp.Compare(a.Owner, b.Owner), cmp.Compare(a.ID, b.ID))
			})
			sc.Search[f] = list
		}
		if n := len(c.Entries[f]); n > lim.MaxEntries {
			return nil, fmt.Errorf("%w: %d %s hash entries, at most %d (a rule counts once per port block, "+
				"and once per interface for an instance with several)", ErrCapacity, n, fams[f], lim.MaxEntries)
		}
	}
	return c, nil
}

// group is one (scope, family, tuple)'s entries while compiling.
type group struct {
	owner int
	t     Tuple
	best  int
	ents  map[fieldKey]int // masked fields -> best rule position
}

type groupID struct {
	scope, fam int
	t          Tuple
}

type fieldKey struct {
	Proto uint8
	Port  uint16
	Src   netip.Addr
	Dst   netip.Addr
}

// searched lists the groups a packet at scope id looks in: its own, and
// for an interface its hook's node-wide ones.
func searched(own [][]*group, sc Scope, id int) []*group {
	if sc.Iface == "" {
		return own[id]
	}
	return append(slices.Clone(own[id]), own[NodeScope(sc.Hook)]...)
}

// maxExpand bounds one merge's expansion: a merged entry becomes at most
// 2^maxExpand entries.
const maxExpand = 12

// fitTuples brings every scope's search list within lim.MaxTuples by
// merging tuples (controlled expansion): the entries of a tuple A move to
// a tuple B of the same scope that compares the same protocol and at
// least A's bits of every other field, each entry expanded into every
// value of the extra bits. A packet's B-masked key then equals an
// expansion of an A entry exactly when it matched that entry under A, so
// results are unchanged; only entries grow. It merges cheapest first
// (fewest added entries) and refuses the set when no merge is left or the
// entries would exceed lim.MaxEntries.
func fitTuples(scopes []CompiledScope, own [][]*group, lim Limits, fam string) error {
	total := 0
	for _, gs := range own {
		for _, g := range gs {
			total += len(g.ents)
		}
	}
	for {
		worst, excess := -1, 0
		for id, sc := range scopes {
			if n := len(searched(own, sc.Scope, id)) - lim.MaxTuples; n > excess {
				worst, excess = id, n
			}
		}
		if worst < 0 {
			return nil
		}
		// Candidates: merges within the worst scope's own tuples, and for
		// an interface within its hook's node-wide ones.
		owners := []int{worst}
		if scopes[worst].Scope.Iface != "" {
			owners = append(owners, NodeScope(scopes[worst].Scope.Hook))
		}
		var from, into *group
		var fromIdx, owner int
		best, tooBig := -1, false
		for _, o := range owners {
			for i, a := range own[o] {
				for _, b := range own[o] {
					d, ok := expansion(a.t, b.t)
					if !ok || a == b {
						continue
					}
					cost := len(a.ents) * (1<<d - 1)
					if total+cost > lim.MaxEntries {
						tooBig = true
						continue
					}
					if best < 0 || cost < best {
						best, from, into, fromIdx, owner = cost, a, b, i, o
					}
				}
			}
		}
		if from == nil {
			sc := scopes[worst].Scope
			where := "node-wide"
			if sc.Iface != "" {
				where = sc.Iface + " (its own and the node-wide rules)"
			}
			why := "no two of them can merge"
			if tooBig {
				why = fmt.Sprintf("merging them would exceed %d entries", lim.MaxEntries)
			}
			return fmt.Errorf("%w: %s rules at %s %s need %d mask tuples, at most %d, and %s: "+
				"too many combinations of prefix lengths, protocol given or not, and port block sizes "+
				"(a port range is split into aligned power-of-two blocks)",
				ErrCapacity, fam, where, sc.Hook, len(searched(own, sc, worst)), lim.MaxTuples, why)
		}
		total -= len(from.ents) + len(into.ents)
		merge(from, into)
		total += len(into.ents)
		own[owner] = slices.Delete(own[owner], fromIdx, fromIdx+1)
	}
}

// expansion reports how many extra bits merging tuple a into b expands
// each entry by, and whether the merge is allowed at all.
func expansion(a, b Tuple) (int, bool) {
	if a.Proto != b.Proto || b.SrcBits < a.SrcBits || b.DstBits < a.DstBits || b.PortBits < a.PortBits {
		return 0, false
	}
	d := int(b.SrcBits-a.SrcBits) + int(b.DstBits-a.DstBits) + int(b.PortBits-a.PortBits)
	return d, d <= maxExpand
}

func merge(a, b *group) {
	for k, pos := range a.ents {
		for _, src := range expandAddr(k.Src, a.t.SrcBits, b.t.SrcBits) {
			for _, dst := range expandAddr(k.Dst, a.t.DstBits, b.t.DstBits) {
				for _, port := range expandPort(k.Port, a.t.PortBits, b.t.PortBits) {
					e := fieldKey{Proto: k.Proto, Port: port, Src: src, Dst: dst}
					if old, ok := b.ents[e]; !ok || pos < old {
						b.ents[e] = pos
					}
				}
			}
		}
	}
	b.best = min(a.best, b.best)
}

// expandAddr lists every address whose first to bits start with a's first
// from bits and whose remaining bits are zero.
func expandAddr(a netip.Addr, from, to uint8) []netip.Addr {
	out := []netip.Addr{a}
	for bit := int(from); bit < int(to); bit++ {
		for _, x := range out {
			b := x.AsSlice()
			b[bit/8] |= 0x80 >> (bit % 8)
			y, _ := netip.AddrFromSlice(b)
			out = append(out, y)
		}
	}
	return out
}

func expandPort(p uint16, from, to uint8) []uint16 {
	out := []uint16{p}
	for bit := int(from); bit < int(to); bit++ {
		for _, x := range out {
			out = append(out, x|0x8000>>bit)
		}
	}
	return out
}

// ScopeID returns the id of scope sc, if the set has it.
func (c *Compiled) ScopeID(sc Scope) (int, bool) {
	id, ok := c.index[sc]
	return id, ok
}

// Classify runs the compiled scheme in Go, exactly as the datapath does:
// walk the packet's scope's search list for its family, one hash lookup
// per tuple, keep the lowest rule position, stop once the next tuple's
// best cannot beat it. It is the executable specification of bpf/fw's
// classifier and is tested against Evaluate.
func (c *Compiled) Classify(p Packet) Verdict {
	id, ok := c.index[Scope{p.Iface, p.Hook}]
	if !ok || p.Iface == "" {
		return Verdict{Action: Allow} // not attached here
	}
	sc := &c.Scopes[id]
	f := familyOf(p.Src)
	best := -1
	for _, t := range sc.Search[f] {
		if best >= 0 && t.Best >= best {
			break
		}
		if pos, ok := c.Entries[f][t.Key(p)]; ok && (best < 0 || pos < best) {
			best = pos
		}
	}
	if best < 0 {
		return Verdict{Action: sc.Default}
	}
	r := c.Rules[best]
	return Verdict{Action: r.Action, Rule: r.Name, Log: r.Log}
}
