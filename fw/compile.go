package fw

import (
	"fmt"
	"math/bits"
	"net/netip"
	"slices"
)

// Limits are the datapath's capacities. A rule set that exceeds one is
// refused by Compile as a whole, never partially applied.
type Limits struct {
	MaxRules    int // bits in a bitmap
	MaxPrefixes int // distinct prefixes per (field, family) trie, /0 included
	MaxIfaces   int // attached interfaces
}

// DefaultLimits match the maps declared in bpf/fw/fw.c.
var DefaultLimits = Limits{MaxRules: 16384, MaxPrefixes: 16385, MaxIfaces: 256}

// Bitmap has bit i set when the rule at priority position i is in the set.
type Bitmap []uint64

func newBitmap(words int) Bitmap { return make(Bitmap, words) }

func (b Bitmap) set(i int) { b[i/64] |= 1 << (i % 64) }

// Has reports whether bit i is set.
func (b Bitmap) Has(i int) bool { return b[i/64]&(1<<(i%64)) != 0 }

func (b Bitmap) or(o Bitmap) {
	for i := range b {
		b[i] |= o[i]
	}
}

// Scope is one classification context: an attached interface's hook, or
// the node-wide fallback (Iface "").
type Scope struct {
	Iface string
	Hook  Direction
}

// CompiledRule is the rule at one bit position.
type CompiledRule struct {
	Name   string
	Action Action
	Log    bool
}

// PrefixBits is one trie entry: the rules whose prefix for that field
// contains Prefix (rules without a prefix are in every family's /0).
type PrefixBits struct {
	Prefix netip.Prefix
	Bits   Bitmap
}

// PortInterval is one entry of the port table: every destination port in
// [Lo, Hi] matches the same rules. Port 0 stands for "no port".
type PortInterval struct {
	Lo, Hi uint16
	Bits   Bitmap
}

// Compiled is a rule set turned into per-field lookup tables. A packet's
// verdict is the lowest bit set in the AND of its scope's, source
// prefix's, destination prefix's, protocol's and port's bitmaps, or the
// scope's default when the AND is empty. Compiled is pure data; datapath
// encodes it into maps.
type Compiled struct {
	Words    int
	Rules    []CompiledRule
	Scopes   map[Scope]Bitmap
	Defaults map[Scope]Action
	Src4     []PrefixBits // sorted by prefix length, then address
	Src6     []PrefixBits
	Dst4     []PrefixBits
	Dst6     []PrefixBits
	// Proto has keys 0 (every protocol not listed), ICMP, TCP, UDP, ICMPv6.
	Proto  map[uint8]Bitmap
	Ports  []PortInterval // ascending, covering 0..65535
	Ifaces []string       // attached interfaces, sorted
}

// CompiledProtos are the protocol keys Compiled.Proto always has.
var CompiledProtos = []uint8{ProtoAny, ProtoICMP, ProtoTCP, ProtoUDP, ProtoICMPv6}

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
	words := max(1, (len(rules)+63)/64)
	c := &Compiled{
		Words:    words,
		Scopes:   map[Scope]Bitmap{},
		Defaults: map[Scope]Action{},
		Proto:    map[uint8]Bitmap{},
		Ifaces:   res.Attached(&s),
	}
	if len(c.Ifaces) > lim.MaxIfaces {
		return nil, fmt.Errorf("%w: %d interfaces, at most %d", ErrCapacity, len(c.Ifaces), lim.MaxIfaces)
	}
	for _, r := range rules {
		c.Rules = append(c.Rules, CompiledRule{Name: r.Name, Action: r.Action, Log: r.Log})
	}

	// Scopes: the node-wide fallback, then each attached interface.
	scopes := []Scope{{"", Ingress}, {"", Egress}}
	for _, n := range c.Ifaces {
		scopes = append(scopes, Scope{n, Ingress}, Scope{n, Egress})
	}
	for _, sc := range scopes {
		b := newBitmap(words)
		for i, r := range rules {
			if sc.Iface == "" {
				if r.Target.Kind == TargetNode && r.Direction == sc.Hook {
					b.set(i)
				}
			} else if res.appliesAt(r.Target, r.Direction, sc.Iface, sc.Hook) {
				b.set(i)
			}
		}
		c.Scopes[sc] = b
		if sc.Iface == "" {
			c.Defaults[sc] = Allow
			for _, p := range s.Policies {
				if p.Target.Kind == TargetNode && p.Direction == sc.Hook {
					c.Defaults[sc] = p.Action
				}
			}
		} else {
			c.Defaults[sc] = defaultAt(&s, res, sc.Iface, sc.Hook)
		}
	}

	var err error
	field := func(get func(*Rule) netip.Prefix, v4 bool) []PrefixBits {
		if err != nil {
			return nil
		}
		var out []PrefixBits
		out, err = compilePrefixes(rules, get, v4, words, lim.MaxPrefixes)
		return out
	}
	c.Src4 = field(func(r *Rule) netip.Prefix { return r.Src }, true)
	c.Src6 = field(func(r *Rule) netip.Prefix { return r.Src }, false)
	c.Dst4 = field(func(r *Rule) netip.Prefix { return r.Dst }, true)
	c.Dst6 = field(func(r *Rule) netip.Prefix { return r.Dst }, false)
	if err != nil {
		return nil, err
	}

	for _, p := range CompiledProtos {
		b := newBitmap(words)
		for i, r := range rules {
			if r.Proto == ProtoAny || r.Proto == p || (r.Proto == ProtoICMP && p == ProtoICMPv6) {
				b.set(i)
			}
		}
		c.Proto[p] = b
	}
	c.Ports = compilePorts(rules, words)
	return c, nil
}

// compilePrefixes builds one trie's entries. A longest-prefix lookup must
// return every rule whose prefix contains the packet's address, so each
// entry carries its own rules OR its longest ancestor entry's; /0 always
// exists and holds the rules without a prefix for this field.
func compilePrefixes(rules []Rule, get func(*Rule) netip.Prefix, v4 bool, words, maxPrefixes int) ([]PrefixBits, error) {
	zero := netip.PrefixFrom(netip.IPv6Unspecified(), 0)
	if v4 {
		zero = netip.PrefixFrom(netip.IPv4Unspecified(), 0)
	}
	own := map[netip.Prefix]Bitmap{zero: newBitmap(words)}
	for i := range rules {
		p := get(&rules[i])
		if !p.IsValid() {
			own[zero].set(i)
			continue
		}
		if p.Addr().Is4() != v4 {
			continue
		}
		if own[p] == nil {
			own[p] = newBitmap(words)
		}
		own[p].set(i)
	}
	if len(own) > maxPrefixes {
		fam := "IPv6"
		if v4 {
			fam = "IPv4"
		}
		return nil, fmt.Errorf("%w: %d distinct %s prefixes in one field, at most %d", ErrCapacity, len(own), fam, maxPrefixes)
	}
	out := make([]PrefixBits, 0, len(own))
	for p := range own {
		out = append(out, PrefixBits{Prefix: p})
	}
	slices.SortFunc(out, func(a, b PrefixBits) int {
		if a.Prefix.Bits() != b.Prefix.Bits() {
			return a.Prefix.Bits() - b.Prefix.Bits()
		}
		return a.Prefix.Addr().Compare(b.Prefix.Addr())
	})
	done := make(map[netip.Prefix]Bitmap, len(out))
	for i := range out {
		p := out[i].Prefix
		b := slices.Clone(own[p])
		for l := p.Bits() - 1; l >= 0; l-- {
			anc, _ := p.Addr().Prefix(l)
			if ab, ok := done[anc]; ok {
				b.or(ab)
				break
			}
		}
		done[p] = b
		out[i].Bits = b
	}
	return out, nil
}

// compilePorts cuts 0..65535 at every rule range boundary; each interval's
// bitmap has the rules without ports plus those whose range covers it.
func compilePorts(rules []Rule, words int) []PortInterval {
	cuts := map[int]bool{0: true}
	for _, r := range rules {
		if !r.Ports.Any() {
			cuts[int(r.Ports.Lo)] = true
			cuts[int(r.Ports.Hi)+1] = true
		}
	}
	starts := make([]int, 0, len(cuts))
	for c := range cuts {
		if c <= 65535 {
			starts = append(starts, c)
		}
	}
	slices.Sort(starts)
	out := make([]PortInterval, len(starts))
	for i, lo := range starts {
		hi := 65535
		if i+1 < len(starts) {
			hi = starts[i+1] - 1
		}
		b := newBitmap(words)
		for j, r := range rules {
			if r.Ports.Any() || (int(r.Ports.Lo) <= lo && hi <= int(r.Ports.Hi)) {
				b.set(j)
			}
		}
		out[i] = PortInterval{Lo: uint16(lo), Hi: uint16(hi), Bits: b}
	}
	return out
}

// Classify runs the compiled scheme in Go, exactly as the datapath does:
// one lookup per field, AND, lowest set bit. It is the executable
// specification of bpf/fw's classifier and is tested against Evaluate.
func (c *Compiled) Classify(p Packet) Verdict {
	sc, ok := c.Scopes[Scope{p.Iface, p.Hook}]
	def := c.Defaults[Scope{p.Iface, p.Hook}]
	if !ok {
		if !slices.Contains(c.Ifaces, p.Iface) {
			return Verdict{Action: Allow}
		}
		sc, def = c.Scopes[Scope{"", p.Hook}], c.Defaults[Scope{"", p.Hook}]
	}
	src, dst := c.Src6, c.Dst6
	if p.Src.Is4() {
		src, dst = c.Src4, c.Dst4
	}
	proto, ok := c.Proto[p.Proto]
	if !ok {
		proto = c.Proto[ProtoAny]
	}
	fields := []Bitmap{sc, LongestMatch(src, p.Src), LongestMatch(dst, p.Dst), proto, c.PortBits(p.DPort)}
	for w := 0; w < c.Words; w++ {
		m := ^uint64(0)
		for _, f := range fields {
			m &= f[w]
		}
		if m != 0 {
			r := c.Rules[w*64+bits.TrailingZeros64(m)]
			return Verdict{Action: r.Action, Rule: r.Name, Log: r.Log}
		}
	}
	return Verdict{Action: def}
}

// LongestMatch returns the bitmap of the longest prefix in t containing a.
func LongestMatch(t []PrefixBits, a netip.Addr) Bitmap {
	var best Bitmap
	for _, e := range t {
		if e.Prefix.Contains(a) {
			best = e.Bits // t is sorted by length: the last hit is the longest
		}
	}
	return best
}

// PortBits returns the bitmap of the interval holding port.
func (c *Compiled) PortBits(port uint16) Bitmap {
	i, found := slices.BinarySearchFunc(c.Ports, port, func(iv PortInterval, p uint16) int { return int(iv.Lo) - int(p) })
	if !found {
		i--
	}
	return c.Ports[i].Bits
}
