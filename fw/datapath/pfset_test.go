package datapath

import (
	"errors"
	"fmt"
	"math/bits"
	mrand "math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"testing"

	bpffw "github.com/qbo/qbo/bpf/fw"
	"github.com/qbo/qbo/fw"
)

// Unit tier: the prefilter's planning against a fake kernel that models
// the maps as Go maps. The bpftest tier (kernel_test.go) runs the same
// kind of checks through the real program.

type fakePF struct {
	rec4   map[bpffw.PFKey4]bool
	rec6   map[bpffw.PFKey6]bool
	words  [2][]uint64 // full, part
	hosts  map[uint32][4]uint64
	cfg    bpffw.PFConfig
	ops    int
	failAt int // the op that fails (1-based); 0: none
}

var errInjected = errors.New("injected failure")

func newFakePF() *fakePF {
	return &fakePF{rec4: map[bpffw.PFKey4]bool{}, rec6: map[bpffw.PFKey6]bool{},
		words: [2][]uint64{make([]uint64, bpffw.PrefilterV4Words), make([]uint64, bpffw.PrefilterV4Words)}, hosts: map[uint32][4]uint64{}}
}

func (f *fakePF) apply(op pfOp) error {
	keys := reflect.ValueOf(op.keys)
	if keys.Len() == 0 {
		return nil
	}
	f.ops++
	half := keys.Len()
	if f.ops == f.failAt {
		half /= 2 // a batch that fails part way
	}
	for i := range half {
		k := keys.Index(i).Interface()
		var v any
		if !op.del {
			v = reflect.ValueOf(op.vals).Index(i).Interface()
		}
		switch op.m {
		case pfRec4:
			if op.del {
				delete(f.rec4, k.(bpffw.PFKey4))
			} else {
				f.rec4[k.(bpffw.PFKey4)] = true
			}
		case pfRec6:
			if op.del {
				delete(f.rec6, k.(bpffw.PFKey6))
			} else {
				f.rec6[k.(bpffw.PFKey6)] = true
			}
		case pfFull, pfPart:
			if op.del || k.(uint32) >= bpffw.PrefilterV4Words {
				return fmt.Errorf("bad array op %+v", op)
			}
			f.words[op.m-pfFull][k.(uint32)] = v.(uint64)
		case pfHost:
			if op.del {
				delete(f.hosts, k.(uint32))
			} else {
				f.hosts[k.(uint32)] = v.(bpffw.PFHosts).W
			}
		case pfCfg:
			f.cfg = v.(bpffw.PFConfig)
		}
	}
	if f.ops == f.failAt {
		return errInjected
	}
	return nil
}

func (f *fakePF) readRecords() ([]bpffw.PFKey4, []bpffw.PFKey6, error) {
	var k4 []bpffw.PFKey4
	var k6 []bpffw.PFKey6
	for k := range f.rec4 {
		k4 = append(k4, k)
	}
	for k := range f.rec6 {
		k6 = append(k6, k)
	}
	return k4, k6, nil
}

func (f *fakePF) readLookup() (full, part []uint64, hosts map[uint32][4]uint64, cfg bpffw.PFConfig, err error) {
	full, part = slices.Clone(f.words[0]), slices.Clone(f.words[1])
	hosts = map[uint32][4]uint64{}
	for n, h := range f.hosts {
		hosts[n] = h
	}
	return full, part, hosts, f.cfg, nil
}

// denied is qbo_pf_v4_denied in prefilter.h, over the fake maps.
func (f *fakePF) denied(a netip.Addr) bool {
	b := a.As4()
	n := uint32(b[0])<<16 | uint32(b[1])<<8 | uint32(b[2])
	bit := uint64(1) << (n & 63)
	if f.words[0][n>>6]&bit != 0 {
		return true
	}
	if f.words[1][n>>6]&bit == 0 {
		return false
	}
	h, ok := f.hosts[n]
	return ok && h[b[3]>>6]>>(b[3]&63)&1 == 1
}

// clean reports whether the lookup maps hold no stray state: no zero
// host map, and a part bit exactly where a host map is.
func (f *fakePF) clean() error {
	for n, h := range f.hosts {
		if h == [4]uint64{} {
			return fmt.Errorf("empty host map for /24 %#x", n)
		}
		if f.words[1][n>>6]&(1<<(n&63)) == 0 {
			return fmt.Errorf("host map for /24 %#x without its part bit", n)
		}
	}
	for w, v := range f.words[1] {
		for ; v != 0; v &= v - 1 {
			n := uint32(w)<<6 | uint32(bits.TrailingZeros64(v))
			if _, ok := f.hosts[n]; !ok {
				return fmt.Errorf("part bit for /24 %#x without a host map", n)
			}
		}
	}
	return nil
}

func newTestPrefilter(t *testing.T, k pfKernel) *Prefilter {
	t.Helper()
	p := &Prefilter{k: k}
	if err := p.Read(); err != nil {
		t.Fatal(err)
	}
	return p
}

// refSet is the reference: a list of prefixes and Contains.
type refSet map[netip.Prefix]bool

func (r refSet) contains(a netip.Addr) bool {
	for p := range r {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// randPrefix draws IPv4 prefixes in a few small regions so that they
// overlap often, with every length from /0 (rarely) to /32.
func randPrefix(r *mrand.Rand) netip.Prefix {
	bases := [][4]byte{{10, 0, 0, 0}, {10, 0, 1, 0}, {192, 168, 0, 0}, {172, 16, 255, 0}}
	b := bases[r.IntN(len(bases))]
	b[1] ^= byte(r.IntN(2))
	b[2] ^= byte(r.IntN(4))
	b[3] = byte(r.IntN(256))
	bits := 16 + r.IntN(17)
	switch r.IntN(40) {
	case 0:
		bits = r.IntN(16)
	case 1, 2, 3:
		bits = 24
	}
	return netip.PrefixFrom(netip.AddrFrom4(b), bits).Masked()
}

// probes are addresses near every prefix's edges plus random ones.
func probes(r *mrand.Rand, set []netip.Prefix, n int) []netip.Addr {
	var out []netip.Addr
	for _, p := range set {
		first := p.Addr()
		last := lastAddr(p)
		out = append(out, first, last)
		if prev := first.Prev(); prev.IsValid() {
			out = append(out, prev)
		}
		if next := last.Next(); next.IsValid() {
			out = append(out, next)
		}
	}
	for range n {
		out = append(out, randPrefix(r).Addr().Next())
	}
	return out
}

func lastAddr(p netip.Prefix) netip.Addr {
	a := p.Addr().As4()
	v := (uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])) | ^v4Mask(p.Bits())
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
}

func TestPrefilterPlanDifferential(t *testing.T) {
	r := mrand.New(mrand.NewPCG(1, 2))
	for round := range 20 {
		f := newFakePF()
		p := newTestPrefilter(t, f)
		ref := refSet{}
		for step := range 12 {
			var batch []netip.Prefix
			for range 1 + r.IntN(30) {
				batch = append(batch, randPrefix(r))
			}
			del := step > 2 && r.IntN(3) == 0
			if del {
				// Mostly prefixes that are there, some that are not.
				for q := range ref {
					if r.IntN(2) == 0 {
						batch = append(batch, q)
					}
				}
			}
			var n int
			var err error
			want := 0
			if del {
				for _, q := range dedupe(batch) {
					if ref[q] {
						want++
						delete(ref, q)
					}
				}
				n, err = p.Delete(batch)
			} else {
				for _, q := range dedupe(batch) {
					if !ref[q] {
						want++
						ref[q] = true
					}
				}
				n, err = p.Add(batch)
			}
			if err != nil {
				t.Fatal(err)
			}
			if n != want {
				t.Fatalf("round %d step %d: changed %d, want %d", round, step, n, want)
			}
			checkAgainst(t, f, ref, r)
			if got := p.Prefixes(); !sameSet(got, ref) {
				t.Fatalf("round %d step %d: Prefixes %v, want %v", round, step, got, ref)
			}
		}
		// A restart reads the same set back and writes nothing.
		ops := f.ops
		q := newTestPrefilter(t, f)
		if !sameSet(q.Prefixes(), ref) {
			t.Fatalf("after restart: %v, want %v", q.Prefixes(), ref)
		}
		if f.ops != ops {
			t.Errorf("a restart over consistent maps wrote %d ops", f.ops-ops)
		}
	}
}

func dedupe(ps []netip.Prefix) []netip.Prefix {
	seen := map[netip.Prefix]bool{}
	var out []netip.Prefix
	for _, p := range ps {
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	return out
}

func sameSet(got []netip.Prefix, want refSet) bool {
	if len(got) != len(want) {
		return false
	}
	for _, p := range got {
		if !want[p] {
			return false
		}
	}
	return true
}

func checkAgainst(t *testing.T, f *fakePF, ref refSet, r *mrand.Rand) {
	t.Helper()
	var set []netip.Prefix
	for q := range ref {
		set = append(set, q)
	}
	for _, a := range probes(r, set, 200) {
		if got, want := f.denied(a), ref.contains(a); got != want {
			t.Fatalf("%s: denied %v, want %v (set %v)", a, got, want, set)
		}
	}
	if err := f.clean(); err != nil {
		t.Fatal(err)
	}
	if int(f.cfg.V4Prefixes) != len(ref) || len(f.rec4) != len(ref) {
		t.Fatalf("counts: cfg %d, record %d, want %d", f.cfg.V4Prefixes, len(f.rec4), len(ref))
	}
}

func TestPrefilterOverlapDelete(t *testing.T) {
	f := newFakePF()
	p := newTestPrefilter(t, f)
	for _, c := range []struct{ keep, del string }{
		{"10.0.0.0/8", "10.1.0.0/16"},
		{"10.1.0.0/16", "10.0.0.0/8"},
		{"10.1.2.0/24", "10.1.2.0/23"},
		{"10.1.2.0/23", "10.1.2.0/24"},
		{"10.1.2.128/25", "10.1.2.130/31"},
		{"10.1.2.130/31", "10.1.2.128/25"},
		{"10.1.2.0/24", "10.1.2.7/32"},
		{"10.1.2.7/32", "10.1.2.0/24"},
	} {
		keep, del := netip.MustParsePrefix(c.keep), netip.MustParsePrefix(c.del)
		if _, err := p.Add([]netip.Prefix{keep, del}); err != nil {
			t.Fatal(err)
		}
		if n, err := p.Delete([]netip.Prefix{del}); err != nil || n != 1 {
			t.Fatalf("delete %s: %d %v", del, n, err)
		}
		for _, x := range []netip.Addr{keep.Addr(), lastAddr(keep)} {
			if !f.denied(x) {
				t.Errorf("keep %s, delete %s: %s no longer denied", keep, del, x)
			}
		}
		if !keep.Contains(del.Addr()) && f.denied(del.Addr()) {
			t.Errorf("keep %s, delete %s: %s still denied", keep, del, del.Addr())
		}
		if n, err := p.Delete([]netip.Prefix{keep}); err != nil || n != 1 {
			t.Fatalf("delete %s: %d %v", keep, n, err)
		}
		if f.denied(keep.Addr()) || len(f.hosts) != 0 || len(p.Prefixes()) != 0 {
			t.Fatalf("not empty after deleting %s and %s", keep, del)
		}
	}
}

// A failure at any op leaves the maps as they were before the change.
func TestPrefilterUndo(t *testing.T) {
	r := mrand.New(mrand.NewPCG(3, 4))
	base := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/16"), netip.MustParsePrefix("10.0.1.7/32"), netip.MustParsePrefix("fd00::/64")}
	for _, del := range []bool{false, true} {
		for failAt := 1; ; failAt++ {
			f := newFakePF()
			p := newTestPrefilter(t, f)
			if _, err := p.Add(base); err != nil {
				t.Fatal(err)
			}
			var batch []netip.Prefix
			if del {
				batch = base
			} else {
				for range 20 {
					batch = append(batch, randPrefix(r))
				}
				batch = append(batch, netip.MustParsePrefix("fd00:1::/48"))
			}
			before := snapshot(f)
			f.ops, f.failAt = 0, failAt
			var err error
			if del {
				_, err = p.Delete(batch)
			} else {
				_, err = p.Add(batch)
			}
			if err == nil {
				if failAt == 1 {
					t.Fatal("no op ran")
				}
				break // failAt is past the last op
			}
			if !errors.Is(err, errInjected) {
				t.Fatal(err)
			}
			if after := snapshot(f); !reflect.DeepEqual(before, after) {
				t.Fatalf("del=%v failAt=%d: maps changed by a failed change", del, failAt)
			}
			if got := p.Prefixes(); len(got) != len(base) {
				t.Fatalf("del=%v failAt=%d: set changed: %v", del, failAt, got)
			}
		}
	}
}

func snapshot(f *fakePF) string {
	k4 := slices.Collect(func(y func(string) bool) {
		for k := range f.rec4 {
			y(fmt.Sprint(k))
		}
		for k := range f.rec6 {
			y(fmt.Sprint(k))
		}
	})
	slices.Sort(k4)
	nz := func(m []uint64) map[int]uint64 {
		out := map[int]uint64{}
		for k, v := range m {
			if v != 0 {
				out[k] = v
			}
		}
		return out
	}
	return fmt.Sprint(k4, nz(f.words[0]), nz(f.words[1]), f.hosts, f.cfg)
}

// Read repairs lookup maps that do not match the record (a qbod stopped
// part way, or one from before the bitmaps).
func TestPrefilterReadRepairs(t *testing.T) {
	f := newFakePF()
	p := newTestPrefilter(t, f)
	set := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.168.1.5/32"), netip.MustParsePrefix("192.168.1.0/25")}
	if _, err := p.Add(set); err != nil {
		t.Fatal(err)
	}
	good := snapshot(f)
	f.words[0][7] = 1                  // a stray /24
	f.words[0][10<<10] = 0             // part of 10/8 lost
	f.hosts[0x00abcdef] = [4]uint64{1} // a stray host map
	f.words[1][0x00abcdef>>6] |= 1 << (0x00abcdef & 63)
	delete(f.hosts, 192<<16|168<<8|1) // a lost host map (its part bit stays)
	q := newTestPrefilter(t, f)
	if got := snapshot(f); got != good {
		t.Fatalf("not repaired:\n%s\nwant\n%s", got, good)
	}
	if !sameSet(q.Prefixes(), refSet{set[0]: true, set[1]: true, set[2]: true}) {
		t.Fatalf("set %v", q.Prefixes())
	}
}

func TestPrefilterRefusesWhole(t *testing.T) {
	f := newFakePF()
	p := newTestPrefilter(t, f)
	if _, err := p.Add([]netip.Prefix{{}}); !errors.Is(err, fw.ErrInvalid) {
		t.Fatalf("invalid prefix: %v", err)
	}
	// Fill to capacity cheaply: the record count is what is checked.
	var many []v4Key
	for i := range uint32(bpffw.PrefilterMaxEntries) {
		many = append(many, mkV4(0x0b000000+i<<8, 24))
	}
	p.v4 = p.v4.with(many)
	if _, err := p.Add([]netip.Prefix{netip.MustParsePrefix("1.2.3.4/32")}); !errors.Is(err, fw.ErrCapacity) {
		t.Fatalf("over capacity: %v", err)
	}
	if f.ops != 0 {
		t.Fatalf("a refused change wrote %d ops", f.ops)
	}
	if n, err := p.Add([]netip.Prefix{netip.MustParsePrefix("11.0.0.0/24")}); n != 0 || err != nil {
		t.Fatalf("re-adding a present prefix at capacity: %d %v", n, err)
	}
}

func TestPrefilterReplace(t *testing.T) {
	r := mrand.New(mrand.NewPCG(5, 6))
	f := newFakePF()
	p := newTestPrefilter(t, f)
	old := refSet{}
	for range 3 {
		want := refSet{}
		for q := range old {
			if r.IntN(2) == 0 {
				want[q] = true // kept
			}
		}
		for range 30 {
			want[randPrefix(r)] = true
		}
		if r.IntN(2) == 0 {
			want[netip.MustParsePrefix("fd00::/64")] = true
		}
		var list []netip.Prefix
		for q := range want {
			list = append(list, q, q) // duplicates count once
		}
		wantAdd, wantDel := 0, 0
		for q := range want {
			if !old[q] {
				wantAdd++
			}
		}
		for q := range old {
			if !want[q] {
				wantDel++
			}
		}
		added, deleted, err := p.Replace(list)
		if err != nil {
			t.Fatal(err)
		}
		if added != wantAdd || deleted != wantDel {
			t.Fatalf("replace: +%d -%d, want +%d -%d", added, deleted, wantAdd, wantDel)
		}
		if !sameSet(p.Prefixes(), want) {
			t.Fatalf("after replace: %v, want %v", p.Prefixes(), want)
		}
		v4 := refSet{}
		for q := range want {
			if q.Addr().Is4() {
				v4[q] = true
			}
		}
		checkAgainst(t, f, v4, r)
		old = want
	}
}
