package fw_test

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"testing"

	"github.com/qbo/qbo/fw"
	"github.com/qbo/qbo/fw/fwtest"
)

func TestCompiledClassifyMatchesReferenceModel(t *testing.T) {
	ifaces := []string{"eth0", "veth1", "veth2"}
	res := fw.Resolved{fw.Node: {"eth0"}}
	for seed := uint64(0); seed < 300; seed++ {
		r := rand.New(rand.NewPCG(seed, 1))
		s := fwtest.RuleSet(r, 1+r.IntN(150), ifaces)
		c, err := fw.Compile(s, res, fw.DefaultLimits)
		if err != nil {
			t.Fatalf("seed %d: %v", seed, err)
		}
		for i := 0; i < 200; i++ {
			p := fwtest.Packet(r, ifaces)
			want := fw.Evaluate(&s, res, p)
			if got := c.Classify(p); got != want {
				t.Fatalf("seed %d packet %+v: compiled %+v, model %+v", seed, p, got, want)
			}
		}
	}
}

func TestFirstMatchByPriority(t *testing.T) {
	s := fw.RuleSet{Rules: []fw.Rule{
		{Name: "allow-lan-ssh", Priority: 10, Action: fw.Allow, Src: netip.MustParsePrefix("10.198.1.0/24"), Proto: fw.ProtoTCP, Ports: fw.PortRange{Lo: 22, Hi: 22}},
		{Name: "deny-ssh", Priority: 20, Action: fw.Deny, Log: true, Proto: fw.ProtoTCP, Ports: fw.PortRange{Lo: 22, Hi: 22}},
		{Name: "b-same-prio", Priority: 30, Action: fw.Deny, Proto: fw.ProtoUDP},
		{Name: "a-same-prio", Priority: 30, Action: fw.Allow, Proto: fw.ProtoUDP},
	}, Policies: []fw.Policy{{Target: fw.Node, Direction: fw.Ingress, Action: fw.Deny}}}
	res := fw.Resolved{fw.Node: {"eth0"}}
	c, err := fw.Compile(s, res, fw.DefaultLimits)
	if err != nil {
		t.Fatal(err)
	}
	a := netip.MustParseAddr
	for _, tc := range []struct {
		p    fw.Packet
		want fw.Verdict
	}{
		{fw.Packet{"eth0", fw.Ingress, a("10.198.1.5"), a("10.198.0.1"), fw.ProtoTCP, 22}, fw.Verdict{fw.Allow, "allow-lan-ssh", false}},
		{fw.Packet{"eth0", fw.Ingress, a("10.198.2.5"), a("10.198.0.1"), fw.ProtoTCP, 22}, fw.Verdict{fw.Deny, "deny-ssh", true}},
		{fw.Packet{"eth0", fw.Ingress, a("10.198.2.5"), a("10.198.0.1"), fw.ProtoTCP, 80}, fw.Verdict{fw.Deny, "", false}},
		{fw.Packet{"eth0", fw.Egress, a("10.198.2.5"), a("10.198.0.1"), fw.ProtoTCP, 22}, fw.Verdict{fw.Allow, "", false}},
		{fw.Packet{"eth0", fw.Ingress, a("10.198.2.5"), a("10.198.0.1"), fw.ProtoUDP, 53}, fw.Verdict{fw.Allow, "a-same-prio", false}},
		{fw.Packet{"eth9", fw.Ingress, a("10.198.2.5"), a("10.198.0.1"), fw.ProtoTCP, 22}, fw.Verdict{fw.Allow, "", false}},
	} {
		if got := fw.Evaluate(&s, res, tc.p); got != tc.want {
			t.Errorf("model %+v: got %+v want %+v", tc.p, got, tc.want)
		}
		if got := c.Classify(tc.p); got != tc.want {
			t.Errorf("compiled %+v: got %+v want %+v", tc.p, got, tc.want)
		}
	}
}

func TestInstanceTargetFlipsHook(t *testing.T) {
	inst := fw.Target{Kind: fw.TargetInstance, Name: "web"}
	s := fw.RuleSet{Rules: []fw.Rule{{Name: "in", Action: fw.Deny, Target: inst, Direction: fw.Ingress}}}
	res := fw.Resolved{inst: {"vethweb"}}
	p := fw.Packet{Iface: "vethweb", Hook: fw.Egress, Src: netip.MustParseAddr("10.1.1.1"), Dst: netip.MustParseAddr("10.1.1.2"), Proto: fw.ProtoUDP, DPort: 1}
	if v := fw.Evaluate(&s, res, p); v.Rule != "in" {
		t.Fatalf("into the instance is the host side's egress: got %+v", v)
	}
	p.Hook = fw.Ingress
	if v := fw.Evaluate(&s, res, p); v.Rule != "" {
		t.Fatalf("got %+v", v)
	}
}

func TestCapacityIsRefusedWhole(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	s := fwtest.RuleSet(r, 11, nil)
	res := fw.Resolved{fw.Node: {"eth0"}}
	for _, c := range []struct {
		name string
		lim  fw.Limits
	}{
		{"rules", fw.Limits{MaxRules: 10, MaxTuples: 64, MaxEntries: 1000, MaxIfaces: 4}},
		{"tuples", fw.Limits{MaxRules: 100, MaxTuples: 1, MaxEntries: 1000, MaxIfaces: 4}},
		{"entries", fw.Limits{MaxRules: 100, MaxTuples: 64, MaxEntries: 2, MaxIfaces: 4}},
		{"interfaces", fw.Limits{MaxRules: 100, MaxTuples: 64, MaxEntries: 1000, MaxIfaces: 0}},
	} {
		if _, err := fw.Compile(s, res, c.lim); !errors.Is(err, fw.ErrCapacity) {
			t.Errorf("%s: want ErrCapacity, got %v", c.name, err)
		}
	}
	if _, err := fw.Compile(s, res, fw.Limits{MaxRules: 11, MaxTuples: 64, MaxEntries: 1000, MaxIfaces: 1}); err != nil {
		t.Errorf("a set that fits exactly: %v", err)
	}
}

// TestTupleMerging: 75 mask tuples at one hook are more than a scope
// may search (64 here, DefaultLimits has 128); Compile merges tuples by
// expanding entries until 64 are left, and classification is unchanged.
func TestTupleMerging(t *testing.T) {
	var s fw.RuleSet
	for sb := 8; sb <= 32; sb++ {
		for _, db := range []int{0, 8, 16} {
			r := fw.Rule{Name: fmt.Sprintf("s%d-d%d", sb, db), Priority: (sb*7 + db) % 13, Action: fw.Allow,
				Src: netip.PrefixFrom(netip.MustParseAddr("10.198.1.7"), sb).Masked()}
			if sb%2 == 0 {
				r.Action = fw.Deny
			}
			if db > 0 {
				r.Dst = netip.PrefixFrom(netip.MustParseAddr("10.198.2.9"), db).Masked()
			}
			s.Rules = append(s.Rules, r)
		}
	}
	res := fw.Resolved{fw.Node: {"eth0"}}
	lim := fw.DefaultLimits
	lim.MaxTuples = 64
	c, err := fw.Compile(s, res, lim)
	if err != nil {
		t.Fatal(err)
	}
	id, _ := c.ScopeID(fw.Scope{Iface: "eth0", Hook: fw.Ingress})
	if n := len(c.Scopes[id].Search[fw.IPv4]); n != 64 {
		t.Errorf("%d tuples searched, want 64 (75 merged down)", n)
	}
	for _, src := range []string{"10.198.1.7", "10.198.1.6", "10.198.0.7", "10.199.1.7", "10.0.0.1", "11.198.1.7", "10.198.1.135"} {
		for _, dst := range []string{"10.198.2.9", "10.198.3.9", "10.199.2.9", "11.0.0.1"} {
			p := fw.Packet{Iface: "eth0", Hook: fw.Ingress, Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr(dst), Proto: fw.ProtoTCP, DPort: 80}
			if got, want := c.Classify(p), fw.Evaluate(&s, res, p); got != want {
				t.Errorf("%s -> %s: compiled %+v, model %+v", src, dst, got, want)
			}
		}
	}
}

func TestPortBlocks(t *testing.T) {
	for _, c := range []struct {
		r    fw.PortRange
		want []fw.PortBlock
	}{
		{fw.PortRange{}, []fw.PortBlock{{0, 0}}},
		{fw.PortRange{Lo: 22, Hi: 22}, []fw.PortBlock{{22, 16}}},
		{fw.PortRange{Lo: 8000, Hi: 8100}, []fw.PortBlock{{8000, 10}, {8064, 11}, {8096, 14}, {8100, 16}}},
		{fw.PortRange{Lo: 1, Hi: 65535}, nil}, // checked by coverage below
	} {
		got := fw.PortBlocks(c.r)
		if c.want != nil && !slices.Equal(got, c.want) {
			t.Errorf("%v: got %v, want %v", c.r, got, c.want)
		}
	}
	// Every range is covered exactly, by aligned blocks, in ascending order.
	r := rand.New(rand.NewPCG(5, 6))
	for i := 0; i < 2000; i++ {
		lo := 1 + r.IntN(65535)
		hi := lo + r.IntN(65536-lo)
		if i == 0 {
			lo, hi = 1, 65535
		}
		next := lo
		for _, b := range fw.PortBlocks(fw.PortRange{Lo: uint16(lo), Hi: uint16(hi)}) {
			size := 1 << (16 - int(b.Bits))
			if int(b.Value) != next || int(b.Value)%size != 0 {
				t.Fatalf("%d-%d: block %+v at %d", lo, hi, b, next)
			}
			next += size
		}
		if next != hi+1 {
			t.Fatalf("%d-%d: blocks end at %d", lo, hi, next-1)
		}
	}
}

func TestValidation(t *testing.T) {
	for _, r := range []fw.Rule{
		{Name: "", Action: fw.Allow},
		{Name: "x", Action: "maybe"},
		{Name: "x", Action: fw.Allow, Direction: "sideways"},
		{Name: "x", Action: fw.Allow, Proto: fw.ProtoICMP, Ports: fw.PortRange{Lo: 1, Hi: 2}},
		{Name: "x", Action: fw.Allow, Proto: fw.ProtoTCP, Ports: fw.PortRange{Lo: 5, Hi: 2}},
		{Name: "x", Action: fw.Allow, Src: netip.MustParsePrefix("10.0.0.0/8"), Dst: netip.MustParsePrefix("fd00::/8")},
		{Name: "x", Action: fw.Allow, Target: fw.Target{Kind: fw.TargetIface}},
		{Name: "x", Action: fw.Allow, Proto: 99},
	} {
		if err := r.Normalize(); !errors.Is(err, fw.ErrInvalid) {
			t.Errorf("%+v: want ErrInvalid, got %v", r, err)
		}
	}
	r := fw.Rule{Name: "ok", Action: fw.Allow, Src: netip.MustParsePrefix("10.1.2.3/8")}
	if err := r.Normalize(); err != nil || r.Src.String() != "10.0.0.0/8" || r.Direction != fw.Ingress || r.Target != fw.Node {
		t.Fatalf("normalize: %v %+v", err, r)
	}
	if _, err := fw.ParsePortRange("0"); err == nil {
		t.Error("port 0 accepted")
	}
	if pr, err := fw.ParsePortRange("20-30"); err != nil || pr != (fw.PortRange{Lo: 20, Hi: 30}) {
		t.Errorf("20-30: %v %v", pr, err)
	}
	s := fw.RuleSet{Rules: []fw.Rule{{Name: "a", Action: fw.Allow}, {Name: "a", Action: fw.Deny}}}
	if err := s.Validate(); !errors.Is(err, fw.ErrInvalid) {
		t.Errorf("duplicate names: %v", err)
	}
}

func TestStateRoundTrip(t *testing.T) {
	dir := t.TempDir()
	s, err := fw.LoadState(dir)
	if err != nil || len(s.Rules) != 0 {
		t.Fatalf("empty dir: %v %+v", err, s)
	}
	s = fwtest.RuleSet(rand.New(rand.NewPCG(3, 4)), 20, []string{"eth0"})
	s.Reevaluate = true
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	if err := fw.SaveState(dir, s); err != nil {
		t.Fatal(err)
	}
	got, err := fw.LoadState(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Rules) != len(s.Rules) || got.Rules[3] != s.Rules[3] || !got.Reevaluate || len(got.Policies) != len(s.Policies) {
		t.Fatalf("round trip differs:\n%+v\n%+v", got, s)
	}
}

func FuzzCompileAgreesWithModel(f *testing.F) {
	f.Add(uint64(1), uint64(2), uint8(10))
	f.Add(uint64(7), uint64(0), uint8(200))
	f.Fuzz(func(t *testing.T, a, b uint64, n uint8) {
		r := rand.New(rand.NewPCG(a, b))
		ifaces := []string{"eth0", "veth1"}
		res := fw.Resolved{fw.Node: {"eth0"}}
		s := fwtest.RuleSet(r, int(n), ifaces)
		c, err := fw.Compile(s, res, fw.DefaultLimits)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 50; i++ {
			p := fwtest.Packet(r, ifaces)
			if got, want := c.Classify(p), fw.Evaluate(&s, res, p); got != want {
				t.Fatalf("packet %+v: compiled %+v, model %+v", p, got, want)
			}
		}
	})
}

// BenchmarkCompile compiles rule sets of growing size (the control
// plane's cost of a replacement, before any map write): fwtest's
// LargeRuleSet, whose port ranges and prefix lengths need tuple merging.
// (fwtest.RuleSet's sets, which draw every field from a handful of
// values, need up to about 110 tuples at one interface and fit up to
// 65,536 rules without merging.)
func BenchmarkCompile(b *testing.B) {
	for _, n := range []int{10, 1000, 10000, 65536} {
		s := fwtest.LargeRuleSet(rand.New(rand.NewPCG(9, 9)), n, "eth1")
		b.Run(fmt.Sprintf("rules=%d", n), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				if _, err := fw.Compile(s, fw.Resolved{fw.Node: {"eth0", "eth1"}}, fw.DefaultLimits); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func TestPrefilterValidation(t *testing.T) {
	s := fw.RuleSet{Prefilter: []netip.Prefix{netip.MustParsePrefix("10.1.2.3/8"), netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("fd00::1/64")}}
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	if len(s.Prefilter) != 2 || s.Prefilter[0].String() != "10.0.0.0/8" || s.Prefilter[1].String() != "fd00::/64" {
		t.Fatalf("normalized prefilter: %v", s.Prefilter)
	}
	s.Prefilter = append(s.Prefilter, netip.Prefix{})
	if err := s.Validate(); !errors.Is(err, fw.ErrInvalid) {
		t.Fatalf("invalid prefix: %v", err)
	}
}

func TestNormalizePrefix(t *testing.T) {
	for in, want := range map[string]string{
		"10.1.2.3/8":          "10.0.0.0/8",
		"::ffff:10.1.2.3/120": "10.1.2.0/24",
		"::ffff:10.1.2.3/96":  "0.0.0.0/0",
		"::ffff:0:0/80":       "::/80", // wider than the mapped range: stays IPv6
		"fd00::1/64":          "fd00::/64",
	} {
		if got := fw.NormalizePrefix(netip.MustParsePrefix(in)).String(); got != want {
			t.Errorf("%s: got %s, want %s", in, got, want)
		}
	}
	if got := fw.NormalizePrefix(netip.Prefix{}); got.IsValid() {
		t.Errorf("invalid prefix normalized to %s", got)
	}
}

// TestLargeRuleSets compiles 65,536-rule sets (the benchmark's, and a
// busier mixed set with ranges, prefixes of several lengths and both
// families) and checks sampled packets against the reference model.
func TestLargeRuleSets(t *testing.T) {
	const n = 65536
	rnd := rand.New(rand.NewPCG(11, 12))
	res := fw.Resolved{fw.Node: {"eth0", "eth1"}}
	for _, c := range []struct {
		name string
		s    fw.RuleSet
		hook fw.Direction
	}{
		{"benchmark", fwtest.BenchRules(n, "eth0"), fw.Egress},
		{"mixed", fwtest.LargeRuleSet(rnd, n, "eth1"), fw.Ingress},
	} {
		t.Run(c.name, func(t *testing.T) {
			cs, err := fw.Compile(c.s, res, fw.DefaultLimits)
			if err != nil {
				t.Fatal(err)
			}
			// Evaluate is a linear scan that validates and sorts the set
			// on every call (about 0.1 s at this size): sample packets,
			// half built to match a random rule, half random.
			for i := 0; i < 64; i++ {
				iface := []string{"eth0", "eth1"}[rnd.IntN(2)]
				p := fwtest.PacketFor(c.s.Rules[rnd.IntN(n)], iface, c.hook)
				if i%2 == 1 {
					p.Src = netip.AddrFrom4([4]byte{10, byte(rnd.IntN(4)), byte(rnd.IntN(256)), byte(rnd.IntN(256))})
					p.Dst, p.Proto, p.DPort = netip.MustParseAddr("10.198.0.2"), fw.ProtoTCP, uint16(1+rnd.IntN(65535))
				}
				want := fw.Evaluate(&c.s, res, p)
				if got := cs.Classify(p); got != want {
					t.Fatalf("packet %+v: compiled %+v, model %+v", p, got, want)
				}
			}
		})
	}
}
