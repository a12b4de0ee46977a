package datapath

import (
	"errors"
	"fmt"
	"net/netip"
	"runtime"
	"sync"

	"github.com/cilium/ebpf"

	bpffw "github.com/qbo/qbo/bpf/fw"
	"github.com/qbo/qbo/fw"
)

// Limits are the capacities of the maps in bpf/fw/fw.c.
var Limits = fw.Limits{MaxRules: bpffw.MaxRules, MaxPrefixes: bpffw.MaxPrefixes, MaxIfaces: bpffw.MaxIfaces}

// ErrNoInterface: a compiled rule set names an interface that does not exist.
var ErrNoInterface = errors.New("interface not found")

// Counter is a rule's packet and byte count, summed over CPUs.
type Counter struct {
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

// Datapath writes compiled rule sets into the firewall object's maps.
type Datapath struct {
	mu    sync.Mutex
	m     *bpffw.Maps
	slots map[string]uint32 // rule name -> counter slot
	names map[uint32]string // the inverse, for decoding events
	ifidx map[int]string    // ifindex -> name, as of the last Apply
}

// New wraps the maps of a loaded firewall object.
func New(m *bpffw.Maps) *Datapath {
	return &Datapath{m: m, slots: map[string]uint32{}, names: map[uint32]string{}, ifidx: map[int]string{}}
}

func (d *Datapath) config() (bpffw.Config, error) {
	var c bpffw.Config
	if err := d.m.FwCfg.Lookup(uint32(0), &c); err != nil {
		return c, fmt.Errorf("reading firewall config: %w", err)
	}
	return c, nil
}

// Generation is the number of rule sets applied since the maps were
// created; its low bit is the active half of the double buffer.
func (d *Datapath) Generation() (uint32, error) {
	c, err := d.config()
	return c.Generation, err
}

func encodeBits(b fw.Bitmap) *bpffw.Bits {
	var out bpffw.Bits
	for i, w := range b {
		out.W[i] = w
		if w != 0 {
			out.Summary[i/64] |= 1 << (i % 64)
		}
	}
	return &out
}

func hookNum(h fw.Direction) uint32 {
	if h == fw.Egress {
		return bpffw.HookEgress
	}
	return bpffw.HookIngress
}

func action(a fw.Action) uint32 {
	if a == fw.Allow {
		return bpffw.ActAllow
	}
	return bpffw.ActDeny
}

// Apply replaces the whole rule set atomically. It writes c into the
// inactive half of every table, then flips the active generation with one
// map update: a packet reads the generation once, so it sees the old set
// or the new one, never a mix. The old half stays intact until the next
// Apply overwrites it. ifindex resolves interface names; an unknown one
// refuses the whole set before anything is written.
func (d *Datapath) Apply(c *fw.Compiled, ifindex func(string) (int, error), reevaluate bool) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(c.Rules) > bpffw.MaxRules || c.Words > bpffw.Words {
		return fmt.Errorf("%w: %d rules, at most %d", fw.ErrCapacity, len(c.Rules), bpffw.MaxRules)
	}
	idx := map[string]int{}
	for _, n := range c.Ifaces {
		i, err := ifindex(n)
		if err != nil {
			return fmt.Errorf("%w: %s: %v", ErrNoInterface, n, err)
		}
		idx[n] = i
	}
	cfg, err := d.config()
	if err != nil {
		return err
	}
	if len(d.slots) == 0 && cfg.Generation > 0 {
		d.adoptSlots(c, cfg.Generation&1)
	}
	next := cfg.Generation + 1
	gen := next & 1

	if err := d.clear(gen); err != nil {
		return err
	}
	slots, err := d.assignSlots(c)
	if err != nil {
		return err
	}
	for sc, bits := range c.Scopes {
		if sc.Iface == "" {
			continue // every attached interface has its own scope
		}
		k := bpffw.ScopeKey{Gen: gen, Ifindex: uint32(idx[sc.Iface]), Hook: hookNum(sc.Hook)}
		v := bpffw.ScopeVal{Deflt: action(c.Defaults[sc]), Bits: *encodeBits(bits)}
		if err := d.m.FwScopes.Update(&k, &v, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("writing scope %s/%s: %w", sc.Iface, sc.Hook, err)
		}
	}
	for _, t := range []struct {
		m    *ebpf.Map
		ents []fw.PrefixBits
	}{{d.m.FwSrc4, c.Src4}, {d.m.FwDst4, c.Dst4}, {d.m.FwSrc6, c.Src6}, {d.m.FwDst6, c.Dst6}} {
		for _, e := range t.ents {
			if err := t.m.Update(lpmKey(gen, e.Prefix), encodeBits(e.Bits), ebpf.UpdateAny); err != nil {
				return fmt.Errorf("writing prefix %s: %w", e.Prefix, err)
			}
		}
	}
	for p, bits := range c.Proto {
		if err := d.m.FwProto.Update(&bpffw.GenKey{Gen: gen, Id: uint32(p)}, encodeBits(bits), ebpf.UpdateAny); err != nil {
			return fmt.Errorf("writing protocol %d: %w", p, err)
		}
	}
	keys := make([]uint32, bpffw.Ports)
	vals := make([]uint32, bpffw.Ports)
	for i, iv := range c.Ports {
		if err := d.m.FwPorts.Update(&bpffw.GenKey{Gen: gen, Id: uint32(i)}, encodeBits(iv.Bits), ebpf.UpdateAny); err != nil {
			return fmt.Errorf("writing port interval %d-%d: %w", iv.Lo, iv.Hi, err)
		}
		for p := int(iv.Lo); p <= int(iv.Hi); p++ {
			keys[p], vals[p] = gen*bpffw.Ports+uint32(p), uint32(i)
		}
	}
	if _, err := d.m.FwPortIdx.BatchUpdate(keys, vals, nil); err != nil {
		return fmt.Errorf("writing port index: %w", err)
	}
	for i, r := range c.Rules {
		v := bpffw.Rule{Slot: slots[i], Action: uint8(action(r.Action))}
		if r.Log {
			v.Log = 1
		}
		if err := d.m.FwRules.Update(gen*bpffw.MaxRules+uint32(i), &v, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("writing rule %s: %w", r.Name, err)
		}
	}

	// The switch.
	nc := bpffw.Config{ActiveGen: gen, Generation: next}
	if reevaluate {
		nc.Reevaluate = 1
	}
	if err := d.m.FwCfg.Update(uint32(0), &nc, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("switching generation: %w", err)
	}

	// Only now forget the slots of removed rules: until the switch, old
	// packets still counted into them.
	keep := map[string]bool{}
	for _, r := range c.Rules {
		keep[r.Name] = true
	}
	for name, s := range d.slots {
		if !keep[name] {
			delete(d.slots, name)
			delete(d.names, s)
		}
	}
	d.ifidx = map[int]string{}
	for n, i := range idx {
		d.ifidx[i] = n
	}
	return nil
}

func lpmKey(gen uint32, p netip.Prefix) any {
	if p.Addr().Is4() {
		return &bpffw.LPM4Key{Prefixlen: 32 + uint32(p.Bits()), Gen: gen, Addr: p.Addr().As4()}
	}
	return &bpffw.LPM6Key{Prefixlen: 32 + uint32(p.Bits()), Gen: gen, Addr: p.Addr().As16()}
}

// clear deletes generation gen's entries from the keyed tables (arrays are
// overwritten in full by Apply).
func (d *Datapath) clear(gen uint32) error {
	errs := []error{
		clearGen(d.m.FwScopes, gen, func(k *bpffw.ScopeKey) uint32 { return k.Gen }),
		clearGen(d.m.FwSrc4, gen, func(k *bpffw.LPM4Key) uint32 { return k.Gen }),
		clearGen(d.m.FwDst4, gen, func(k *bpffw.LPM4Key) uint32 { return k.Gen }),
		clearGen(d.m.FwSrc6, gen, func(k *bpffw.LPM6Key) uint32 { return k.Gen }),
		clearGen(d.m.FwDst6, gen, func(k *bpffw.LPM6Key) uint32 { return k.Gen }),
		clearGen(d.m.FwProto, gen, func(k *bpffw.GenKey) uint32 { return k.Gen }),
		clearGen(d.m.FwPorts, gen, func(k *bpffw.GenKey) uint32 { return k.Gen }),
	}
	return errors.Join(errs...)
}

func clearGen[K any](m *ebpf.Map, gen uint32, genOf func(*K) uint32) error {
	var stale []K
	var cur, next K
	var prev any // nil: start at the first key
	for {
		err := m.NextKey(prev, &next)
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			break
		}
		if err != nil {
			return fmt.Errorf("iterating %s: %w", m, err)
		}
		if genOf(&next) == gen {
			stale = append(stale, next)
		}
		cur = next
		prev = &cur
	}
	for i := range stale {
		if err := m.Delete(&stale[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("deleting from %s: %w", m, err)
		}
	}
	return nil
}

// adoptSlots recovers the name -> slot assignment after a restart from the
// active generation's rule table, assuming c is the set that was applied
// (qbod re-applies its persisted set): counters then continue.
func (d *Datapath) adoptSlots(c *fw.Compiled, gen uint32) {
	seen := map[uint32]bool{}
	got := map[string]uint32{}
	for i, r := range c.Rules {
		var v bpffw.Rule
		if err := d.m.FwRules.Lookup(gen*bpffw.MaxRules+uint32(i), &v); err != nil || v.Slot >= bpffw.MaxRules || seen[v.Slot] {
			return
		}
		seen[v.Slot] = true
		got[r.Name] = v.Slot
	}
	for n, s := range got {
		d.slots[n], d.names[s] = s, n
	}
}

// assignSlots gives every rule of c a counter slot: its old one if it had
// one, else a free one with zeroed counters.
func (d *Datapath) assignSlots(c *fw.Compiled) ([]uint32, error) {
	used := map[uint32]bool{}
	for _, s := range d.slots {
		used[s] = true
	}
	next := uint32(0)
	out := make([]uint32, len(c.Rules))
	zero := make([]bpffw.Counter, runtime.NumCPU())
	if n, err := ebpf.PossibleCPU(); err == nil {
		zero = make([]bpffw.Counter, n)
	}
	for i, r := range c.Rules {
		if s, ok := d.slots[r.Name]; ok {
			out[i] = s
			continue
		}
		for used[next] {
			next++
		}
		if next >= bpffw.MaxRules {
			return nil, fmt.Errorf("%w: no free counter slot", fw.ErrCapacity)
		}
		if err := d.m.FwCounters.Update(next, zero, ebpf.UpdateAny); err != nil {
			return nil, fmt.Errorf("zeroing counters: %w", err)
		}
		used[next] = true
		d.slots[r.Name], d.names[next] = next, r.Name
		out[i] = next
	}
	return out, nil
}

// Counters returns each current rule's counters, summed over CPUs.
func (d *Datapath) Counters() (map[string]Counter, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make(map[string]Counter, len(d.slots))
	var per []bpffw.Counter
	for name, s := range d.slots {
		if err := d.m.FwCounters.Lookup(s, &per); err != nil {
			return nil, fmt.Errorf("reading counters of %s: %w", name, err)
		}
		var c Counter
		for _, p := range per {
			c.Packets += p.Packets
			c.Bytes += p.Bytes
		}
		out[name] = c
	}
	return out, nil
}

// Stats returns the datapath's verdict counters by name, summed over CPUs.
func (d *Datapath) Stats() (map[string]uint64, error) {
	out := map[string]uint64{}
	var per []uint64
	for s := bpffw.Stat(0); s < bpffw.StatMax; s++ {
		if err := d.m.FwStats.Lookup(uint32(s), &per); err != nil {
			return nil, fmt.Errorf("reading stats: %w", err)
		}
		var n uint64
		for _, v := range per {
			n += v
		}
		out[s.String()] = n
	}
	return out, nil
}

// FlushConnections forgets every tracked connection: each flow's next
// packet is classified again by the active rule set.
func (d *Datapath) FlushConnections() error {
	var k bpffw.CTKey
	var keys []bpffw.CTKey
	it := d.m.FwCt.Iterate()
	for it.Next(&k, new(bpffw.CTVal)) {
		keys = append(keys, k)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("iterating connections: %w", err)
	}
	for i := range keys {
		if err := d.m.FwCt.Delete(&keys[i]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("deleting connection: %w", err)
		}
	}
	return nil
}
