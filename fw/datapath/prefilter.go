package datapath

import (
	"cmp"
	"errors"
	"fmt"
	"math/bits"
	"net/netip"
	"reflect"
	"slices"
	"sync"

	"github.com/cilium/ebpf"

	bpffw "github.com/qbo/qbo/bpf/fw"
	"github.com/qbo/qbo/fw"
)

// Prefilter fills the XDP deny prefilter's maps (bpf/include/prefilter.h).
// It keeps the set of prefixes the maps hold: the record tries
// (qbo_pf_v4, qbo_pf_v6) list them as added and are what Read rebuilds
// the set from; the IPv4 bitmaps are derived from the set, and every
// change rewrites only the words and /24s it touches.
type Prefilter struct {
	mu    sync.Mutex
	k     pfKernel
	stats *ebpf.Map
	v4    v4Set
	v6    map[netip.Prefix]bool
	// What qbo_pf_v4_full and qbo_pf_v4_part hold, so that a change
	// writes the words it alters and no others.
	full, part []uint64
}

// NewPrefilter wraps the prefilter maps of a loaded firewall object (the
// same pinned maps bpf/lb's XDP entry point reads) and reads back the
// prefixes they hold (Read).
func NewPrefilter(m *bpffw.Maps) (*Prefilter, error) {
	p := &Prefilter{k: &mapKernel{maps: [pfMaps]*ebpf.Map{
		pfRec4: m.QboPfV4, pfRec6: m.QboPfV6, pfFull: m.QboPfV4Full,
		pfPart: m.QboPfV4Part, pfHost: m.QboPfV4Host, pfCfg: m.QboPfCfg,
	}}, stats: m.QboPfStats}
	if err := p.Read(); err != nil {
		return nil, err
	}
	return p, nil
}

// Read rebuilds the set from the record tries (maps a previous qbod left
// pinned) and rewrites whatever of the lookup maps does not match it: a
// qbod stopped in the middle of a change, or one from before the bitmaps,
// leaves them behind.
func (p *Prefilter) Read() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	rec4, rec6, err := p.k.readRecords()
	if err != nil {
		return err
	}
	keys := make([]v4Key, len(rec4))
	for i, r := range rec4 {
		keys[i] = mkV4(uint32(r.Addr[0])<<24|uint32(r.Addr[1])<<16|uint32(r.Addr[2])<<8|uint32(r.Addr[3]), int(r.Prefixlen))
	}
	slices.Sort(keys)
	set := (&v4Set{}).with(slices.Compact(keys))
	v6 := map[netip.Prefix]bool{}
	for _, r := range rec6 {
		v6[netip.PrefixFrom(netip.AddrFrom16(r.Addr), int(r.Prefixlen)).Masked()] = true
	}
	full, part, hosts, cfg, err := p.k.readLookup()
	if err != nil {
		return err
	}
	// Plan the repair as the change from what the kernel holds to the
	// set; only the lookup maps and the counts are written.
	p.v4, p.v6, p.full, p.part = set, v6, full, part
	// Words and /24s to check: those the set touches and those the
	// kernel has anything in.
	words, nets := affected(slices.Concat(set.short, set.long))
	for w := range full {
		if full[w] != 0 {
			words = append(words, uint32(w))
		}
		for v := part[w]; v != 0; v &= v - 1 {
			nets = append(nets, uint32(w)<<6|uint32(bits.TrailingZeros64(v)))
		}
	}
	for n := range hosts {
		nets = append(nets, n)
	}
	slices.Sort(words)
	slices.Sort(nets)
	words, nets = slices.Compact(words), slices.Compact(nets)
	pl := p.plan(&set, words, nets, func(n uint32) ([4]uint64, bool) { h, ok := hosts[n]; return h, ok })
	steps := slices.Concat(pl.hostPut, pl.part, pl.full, pl.hostDel)
	if want := (bpffw.PFConfig{V4Prefixes: uint32(set.len()), V6Prefixes: uint32(len(v6))}); cfg != want {
		steps = append(steps, cfgStepFrom(cfg, want))
	}
	if err := p.run(steps); err != nil {
		return fmt.Errorf("repairing the prefilter's lookup maps: %w", err)
	}
	pl.commit(p)
	return nil
}

// Prefixes returns the prefixes the prefilter holds: IPv4 by address and
// length, then IPv6.
func (p *Prefilter) Prefixes() []netip.Prefix {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]netip.Prefix, 0, p.v4.len()+len(p.v6))
	for _, k := range merge(p.v4.short, p.v4.long) {
		out = append(out, k.prefix())
	}
	var v6 []netip.Prefix
	for q := range p.v6 {
		v6 = append(v6, q)
	}
	slices.SortFunc(v6, func(a, b netip.Prefix) int {
		return cmp.Or(a.Addr().Compare(b.Addr()), cmp.Compare(a.Bits(), b.Bits()))
	})
	return append(out, v6...)
}

// normalize validates and normalizes prefixes and splits them by family,
// sorted and without duplicates.
func normalize(prefixes []netip.Prefix) ([]v4Key, []netip.Prefix, error) {
	var k4 []v4Key
	var k6 []netip.Prefix
	seen := map[netip.Prefix]bool{}
	for _, pr := range prefixes {
		q := fw.NormalizePrefix(pr)
		if !q.IsValid() {
			return nil, nil, fmt.Errorf("%w: invalid prefilter prefix %q", fw.ErrInvalid, pr)
		}
		if q.Addr().Is4() {
			k4 = append(k4, v4KeyOf(q))
		} else if !seen[q] {
			seen[q] = true
			k6 = append(k6, q)
		}
	}
	slices.Sort(k4)
	return slices.Compact(k4), k6, nil
}

// Add inserts deny prefixes and returns how many were not there before.
// A change that would not fit is refused whole; one that fails part way
// is undone.
func (p *Prefilter) Add(prefixes []netip.Prefix) (int, error) {
	k4, k6, err := normalize(prefixes)
	if err != nil {
		return 0, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	k4 = slices.DeleteFunc(k4, p.v4.has)
	k6 = slices.DeleteFunc(k6, func(q netip.Prefix) bool { return p.v6[q] })
	return p.add(k4, k6)
}

// Delete removes deny prefixes and returns how many were there; missing
// ones are ignored. Addresses that another prefix still covers stay
// denied.
func (p *Prefilter) Delete(prefixes []netip.Prefix) (int, error) {
	k4, k6, err := normalize(prefixes)
	if err != nil {
		return 0, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	k4 = slices.DeleteFunc(k4, func(k v4Key) bool { return !p.v4.has(k) })
	k6 = slices.DeleteFunc(k6, func(q netip.Prefix) bool { return !p.v6[q] })
	return p.del(k4, k6)
}

// Replace makes the prefilter hold exactly want and returns how many
// prefixes it added and deleted. It adds first, so that no address
// denied before and after passes in between, unless only deleting first
// makes room.
func (p *Prefilter) Replace(want []netip.Prefix) (added, deleted int, err error) {
	w4, w6, err := normalize(want)
	if err != nil {
		return 0, 0, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	var add4, del4 []v4Key
	cur := merge(p.v4.short, p.v4.long)
	i, j := 0, 0
	for i < len(cur) || j < len(w4) {
		switch {
		case j == len(w4) || i < len(cur) && cur[i] < w4[j]:
			del4 = append(del4, cur[i])
			i++
		case i == len(cur) || w4[j] < cur[i]:
			add4 = append(add4, w4[j])
			j++
		default:
			i, j = i+1, j+1
		}
	}
	var add6, del6 []netip.Prefix
	keep6 := map[netip.Prefix]bool{}
	for _, q := range w6 {
		keep6[q] = true
		if !p.v6[q] {
			add6 = append(add6, q)
		}
	}
	for q := range p.v6 {
		if !keep6[q] {
			del6 = append(del6, q)
		}
	}
	if p.v4.len()+len(add4) > bpffw.PrefilterMaxEntries || len(p.v6)+len(add6) > bpffw.PrefilterMaxEntries {
		if deleted, err = p.del(del4, del6); err != nil {
			return 0, 0, err
		}
		added, err = p.add(add4, add6)
		return added, deleted, err
	}
	if added, err = p.add(add4, add6); err != nil {
		return 0, 0, err
	}
	deleted, err = p.del(del4, del6)
	return added, deleted, err
}

// add inserts prefixes that are not in the set (p.mu held).
func (p *Prefilter) add(k4 []v4Key, k6 []netip.Prefix) (int, error) {
	n4, n6 := p.v4.len()+len(k4), len(p.v6)+len(k6)
	if n4 > bpffw.PrefilterMaxEntries || n6 > bpffw.PrefilterMaxEntries {
		return 0, fmt.Errorf("%w: the prefilter holds at most %d prefixes per address family; this change would make %d IPv4 and %d IPv6",
			fw.ErrCapacity, bpffw.PrefilterMaxEntries, n4, n6)
	}
	if len(k4)+len(k6) == 0 {
		return 0, nil
	}
	next := p.v4.with(k4)
	pl := p.planChange(&next, k4)
	// Monotone: every write only adds denied addresses, and a /24's host
	// map is in place before its part bit says to look there.
	steps := slices.Concat(p.recordSteps(k4, k6, false), pl.hostPut, pl.part, pl.full, []pfStep{p.cfgStep(n4, n6)})
	if err := p.run(steps); err != nil {
		return 0, fmt.Errorf("adding prefilter prefixes: %w", err)
	}
	pl.commit(p)
	p.v4 = next
	for _, q := range k6 {
		p.v6[q] = true
	}
	return len(k4) + len(k6), nil
}

// del removes prefixes that are in the set (p.mu held).
func (p *Prefilter) del(k4 []v4Key, k6 []netip.Prefix) (int, error) {
	if len(k4)+len(k6) == 0 {
		return 0, nil
	}
	next := p.v4.without(k4)
	pl := p.planChange(&next, k4)
	// Monotone the other way: the count that gates the IPv6 trie and the
	// bits go first, a /24's host map after its part bit, the record last.
	steps := slices.Concat([]pfStep{p.cfgStep(next.len(), len(p.v6)-len(k6))}, pl.full, pl.part, pl.hostPut, pl.hostDel,
		p.recordSteps(k4, k6, true))
	if err := p.run(steps); err != nil {
		return 0, fmt.Errorf("deleting prefilter prefixes: %w", err)
	}
	pl.commit(p)
	p.v4 = next
	for _, q := range k6 {
		delete(p.v6, q)
	}
	return len(k4) + len(k6), nil
}

// Stats returns pass, drop, not_ip and malformed counts summed over CPUs.
func (p *Prefilter) Stats() (map[string]uint64, error) {
	out := map[string]uint64{}
	var per []uint64
	for i, name := range []string{"pass", "drop", "not_ip", "malformed"} {
		if err := p.stats.Lookup(uint32(i), &per); err != nil {
			return nil, fmt.Errorf("reading prefilter stats: %w", err)
		}
		for _, v := range per {
			out[name] += v
		}
	}
	return out, nil
}

// --- planning: pure data, no kernel ---

// pfMap names a prefilter map in a plan.
type pfMap int

const (
	pfRec4 pfMap = iota
	pfRec6
	pfFull
	pfPart
	pfHost
	pfCfg
	pfMaps
)

var pfMapNames = [pfMaps]string{"qbo_pf_v4", "qbo_pf_v6", "qbo_pf_v4_full", "qbo_pf_v4_part", "qbo_pf_v4_host", "qbo_pf_cfg"}

// pfOp is one batch write: put vals at keys, or delete keys (a missing
// key is no error). keys is a []bpffw.PFKey4, []bpffw.PFKey6 or []uint32;
// vals a []bpffw.PFVal, []uint64, []bpffw.PFHosts or []bpffw.PFConfig.
type pfOp struct {
	m    pfMap
	del  bool
	keys any
	vals any
}

// pfStep is an op and the ops that undo it.
type pfStep struct {
	do   pfOp
	undo []pfOp
}

func putOp[K, V any](m pfMap, keys []K, vals []V) pfOp { return pfOp{m: m, keys: keys, vals: vals} }
func delOp[K any](m pfMap, keys []K) pfOp              { return pfOp{m: m, del: true, keys: keys} }

// v4Plan is the change of the IPv4 lookup maps from what they hold to a
// set: each group is one step, in an order the caller picks.
type v4Plan struct {
	hostPut, hostDel, part, full []pfStep
	// The words written, for commit.
	fullI, partI []uint32
	fullV, partV []uint64
}

// planChange plans the lookup maps' change to next, the current set with
// keys added or removed.
func (p *Prefilter) planChange(next *v4Set, keys []v4Key) v4Plan {
	words, nets := affected(keys)
	return p.plan(next, words, nets, func(n uint32) ([4]uint64, bool) {
		if p.part[n>>6]&(1<<(n&63)) == 0 {
			return [4]uint64{}, false
		}
		return p.v4.hosts(n), true
	})
}

// plan computes, for the given words of the /24 bitmap and the given /24s,
// the values next implies, and the writes from what the maps hold now
// (p.full, p.part, and old for qbo_pf_v4_host) to those values.
func (p *Prefilter) plan(next *v4Set, words, nets []uint32, old func(n uint32) ([4]uint64, bool)) v4Plan {
	var pl v4Plan
	var fo []uint64
	for _, w := range words {
		if v := next.fullWord(w); v != p.full[w] {
			pl.fullI, pl.fullV, fo = append(pl.fullI, w), append(pl.fullV, v), append(fo, p.full[w])
		}
	}
	partW := map[uint32]uint64{} // new words
	var pi, di []uint32
	var pv []bpffw.PFHosts
	var puUndoK, puUndoDelK, delUndoK []uint32
	var puUndoV, delUndoV []bpffw.PFHosts
	for _, n := range nets {
		h := next.hosts(n)
		o, had := old(n)
		w, bit := n>>6, uint64(1)<<(n&63)
		cur, ok := partW[w]
		if !ok {
			cur = p.part[w]
		}
		switch {
		case h != [4]uint64{}:
			partW[w] = cur | bit
			if had && h == o {
				continue
			}
			pi, pv = append(pi, n), append(pv, bpffw.PFHosts{W: h})
			if had {
				puUndoK, puUndoV = append(puUndoK, n), append(puUndoV, bpffw.PFHosts{W: o})
			} else {
				puUndoDelK = append(puUndoDelK, n)
			}
		case had:
			partW[w] = cur &^ bit
			di = append(di, n)
			delUndoK, delUndoV = append(delUndoK, n), append(delUndoV, bpffw.PFHosts{W: o})
		default:
			partW[w] = cur &^ bit
		}
	}
	var po []uint64
	for w, v := range partW {
		if v != p.part[w] {
			pl.partI, pl.partV, po = append(pl.partI, w), append(pl.partV, v), append(po, p.part[w])
		}
	}
	if len(pl.fullI) > 0 {
		pl.full = []pfStep{{do: putOp(pfFull, pl.fullI, pl.fullV), undo: []pfOp{putOp(pfFull, pl.fullI, fo)}}}
	}
	if len(pl.partI) > 0 {
		pl.part = []pfStep{{do: putOp(pfPart, pl.partI, pl.partV), undo: []pfOp{putOp(pfPart, pl.partI, po)}}}
	}
	if len(pi) > 0 {
		undo := []pfOp{delOp(pfHost, puUndoDelK)}
		if len(puUndoK) > 0 {
			undo = append(undo, putOp(pfHost, puUndoK, puUndoV))
		}
		pl.hostPut = []pfStep{{do: putOp(pfHost, pi, pv), undo: undo}}
	}
	if len(di) > 0 {
		pl.hostDel = []pfStep{{do: delOp(pfHost, di), undo: []pfOp{putOp(pfHost, delUndoK, delUndoV)}}}
	}
	return pl
}

// commit records in p what a plan that ran wrote.
func (pl *v4Plan) commit(p *Prefilter) {
	for i, w := range pl.fullI {
		p.full[w] = pl.fullV[i]
	}
	for i, w := range pl.partI {
		p.part[w] = pl.partV[i]
	}
}

// recordSteps writes (or with del, removes) prefixes in the record tries.
func (p *Prefilter) recordSteps(k4 []v4Key, k6 []netip.Prefix, del bool) []pfStep {
	var steps []pfStep
	if len(k4) > 0 {
		keys := make([]bpffw.PFKey4, len(k4))
		for i, k := range k4 {
			a := k.addr()
			keys[i] = bpffw.PFKey4{Prefixlen: uint32(k.bits()), Addr: [4]byte{byte(a >> 24), byte(a >> 16), byte(a >> 8), byte(a)}}
		}
		put, rm := putOp(pfRec4, keys, make([]bpffw.PFVal, len(keys))), delOp(pfRec4, keys)
		steps = append(steps, flip(put, rm, del))
	}
	if len(k6) > 0 {
		keys := make([]bpffw.PFKey6, len(k6))
		for i, q := range k6 {
			keys[i] = bpffw.PFKey6{Prefixlen: uint32(q.Bits()), Addr: q.Addr().As16()}
		}
		put, rm := putOp(pfRec6, keys, make([]bpffw.PFVal, len(keys))), delOp(pfRec6, keys)
		steps = append(steps, flip(put, rm, del))
	}
	return steps
}

func flip(put, rm pfOp, del bool) pfStep {
	if del {
		return pfStep{do: rm, undo: []pfOp{put}}
	}
	return pfStep{do: put, undo: []pfOp{rm}}
}

// cfgStep writes the prefix counts; its undo writes the set's current
// ones.
func (p *Prefilter) cfgStep(n4, n6 int) pfStep {
	return cfgStepFrom(bpffw.PFConfig{V4Prefixes: uint32(p.v4.len()), V6Prefixes: uint32(len(p.v6))},
		bpffw.PFConfig{V4Prefixes: uint32(n4), V6Prefixes: uint32(n6)})
}

func cfgStepFrom(old, cfg bpffw.PFConfig) pfStep {
	return pfStep{do: putOp(pfCfg, []uint32{0}, []bpffw.PFConfig{cfg}), undo: []pfOp{putOp(pfCfg, []uint32{0}, []bpffw.PFConfig{old})}}
}

// run executes steps in order; if one fails, it undoes it and every step
// before it, newest first, and returns the failure.
func (p *Prefilter) run(steps []pfStep) error {
	for i, s := range steps {
		err := p.k.apply(s.do)
		if err == nil {
			continue
		}
		err = fmt.Errorf("writing %s: %w", pfMapNames[s.do.m], err)
		for j := i; j >= 0; j-- {
			for _, u := range steps[j].undo {
				if uerr := p.k.apply(u); uerr != nil {
					return errors.Join(err, fmt.Errorf("undoing (the prefilter maps may be inconsistent until the next start): %w", uerr))
				}
			}
		}
		return err
	}
	return nil
}

// --- the kernel ---

// pfKernel is what the prefilter needs of its maps (a fake in unit tests).
type pfKernel interface {
	apply(op pfOp) error
	readRecords() ([]bpffw.PFKey4, []bpffw.PFKey6, error)
	// readLookup returns the /24 bitmaps' words, the host maps and the
	// counts.
	readLookup() (full, part []uint64, hosts map[uint32][4]uint64, cfg bpffw.PFConfig, err error)
}

type mapKernel struct{ maps [pfMaps]*ebpf.Map }

func (k *mapKernel) apply(op pfOp) error {
	m := k.maps[op.m]
	keys := reflect.ValueOf(op.keys)
	if keys.Len() == 0 {
		return nil
	}
	if op.del {
		for done := 0; done < keys.Len(); {
			n, err := m.BatchDelete(keys.Slice(done, keys.Len()).Interface(), nil)
			done += n
			switch {
			case err == nil:
				return nil
			case errors.Is(err, ebpf.ErrKeyNotExist):
				done++ // that key is gone already
			case errors.Is(err, ebpf.ErrNotSupported):
				for i := done; i < keys.Len(); i++ {
					if err := m.Delete(keys.Index(i).Interface()); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
						return err
					}
				}
				return nil
			default:
				return err
			}
		}
		return nil
	}
	_, err := m.BatchUpdate(op.keys, op.vals, nil)
	if errors.Is(err, ebpf.ErrNotSupported) { // kernels before 5.6
		vals := reflect.ValueOf(op.vals)
		for i := range keys.Len() {
			if err := m.Update(keys.Index(i).Interface(), vals.Index(i).Interface(), ebpf.UpdateAny); err != nil {
				return err
			}
		}
		return nil
	}
	return err
}

func (k *mapKernel) readRecords() ([]bpffw.PFKey4, []bpffw.PFKey6, error) {
	k4, err := trieKeys[bpffw.PFKey4](k.maps[pfRec4])
	if err != nil {
		return nil, nil, err
	}
	k6, err := trieKeys[bpffw.PFKey6](k.maps[pfRec6])
	return k4, k6, err
}

// trieKeys lists an LPM trie's keys: in batches where the kernel has
// BPF_MAP_LOOKUP_BATCH for tries, else one BPF_MAP_GET_NEXT_KEY a key.
func trieKeys[K any](m *ebpf.Map) ([]K, error) {
	var out []K
	var c ebpf.MapBatchCursor
	keys := make([]K, 4096)
	vals := make([]bpffw.PFVal, len(keys))
	for {
		n, err := m.BatchLookup(&c, keys, vals, nil)
		out = append(out, keys[:n]...)
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return out, nil
		}
		if errors.Is(err, ebpf.ErrNotSupported) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", m.String(), err)
		}
	}
	out = out[:0]
	var key K
	var prev any // nil: the first key
	for {
		if err := m.NextKey(prev, &key); errors.Is(err, ebpf.ErrKeyNotExist) {
			return out, nil
		} else if err != nil {
			return nil, fmt.Errorf("reading %s: %w", m.String(), err)
		}
		out = append(out, key)
		prev = key
	}
}

func (k *mapKernel) readLookup() (full, part []uint64, hosts map[uint32][4]uint64, cfg bpffw.PFConfig, err error) {
	fail := func(m pfMap, err error) ([]uint64, []uint64, map[uint32][4]uint64, bpffw.PFConfig, error) {
		return nil, nil, nil, cfg, fmt.Errorf("reading %s: %w", pfMapNames[m], err)
	}
	for _, a := range []struct {
		m   pfMap
		out *[]uint64
	}{{pfFull, &full}, {pfPart, &part}} {
		keys := make([]uint32, bpffw.PrefilterV4Words)
		*a.out = make([]uint64, bpffw.PrefilterV4Words)
		var c ebpf.MapBatchCursor
		n, err := k.maps[a.m].BatchLookup(&c, keys, *a.out, nil)
		if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fail(a.m, err)
		}
		if n != len(keys) {
			return fail(a.m, fmt.Errorf("%d of %d words", n, len(keys)))
		}
	}
	if err := k.maps[pfCfg].Lookup(uint32(0), &cfg); err != nil {
		return fail(pfCfg, err)
	}
	hosts = map[uint32][4]uint64{}
	var c ebpf.MapBatchCursor
	keys := make([]uint32, 4096)
	vals := make([]bpffw.PFHosts, len(keys))
	for {
		n, err := k.maps[pfHost].BatchLookup(&c, keys, vals, nil)
		for i := range n {
			hosts[keys[i]] = vals[i].W
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return full, part, hosts, cfg, nil
		}
		if err != nil {
			return fail(pfHost, err)
		}
	}
}
