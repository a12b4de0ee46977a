package datapath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"runtime"
	"sync"

	"github.com/cilium/ebpf"

	bpffw "github.com/qbo/qbo/bpf/fw"
	"github.com/qbo/qbo/fw"
)

// Limits are the capacities of the maps in bpf/fw/fw.c.
var Limits = fw.Limits{MaxRules: bpffw.MaxRules, MaxTuples: bpffw.MaxTuples, MaxEntries: bpffw.MaxEntries,
	MaxIfaces: bpffw.MaxIfaces}

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
	// half4, half6: the last built entry-table halves (buffers reused).
	half4, half6 []byte
}

// New wraps the maps of a loaded firewall object.
func New(m *bpffw.Maps) *Datapath {
	return &Datapath{m: m, slots: map[string]uint32{}, names: map[uint32]string{}, ifidx: map[int]string{}}
}

func (d *Datapath) config() (bpffw.Config, error) {
	var c bpffw.Config
	if err := d.m.FwCfgV3.Lookup(uint32(0), &c); err != nil {
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

// keyHdr is an entry key's first word, which a scope's tuple hands the
// datapath ready-made: bit 31 the generation, then the owning scope id,
// then the tuple id in the low byte. Compile numbers scopes from 0 (at
// most 2 + 2*MaxIfaces) and tuples below MaxTuples, so the fields never
// overlap.
func keyHdr(gen uint32, scope, tuple int) uint32 {
	return gen<<31 | uint32(scope)<<8 | uint32(tuple)
}

// ne32 and ne16 hold network-order bytes in the host-order integers the
// generated C mirrors use for __be32 and __be16 fields.
func ne32(b []byte) uint32 { return binary.NativeEndian.Uint32(b) }

func ne16(v uint16) uint16 { return binary.NativeEndian.Uint16([]byte{byte(v >> 8), byte(v)}) }

// addrMask is the network-order mask of a prefix of bits in a total-bit
// address.
func addrMask(bits uint8, total int) []byte {
	m := make([]byte, total/8)
	for b := 0; b < int(bits); b++ {
		m[b/8] |= 0x80 >> (b % 8)
	}
	return m
}

func protoMask(t fw.Tuple) uint8 {
	if t.Proto {
		return 0xff
	}
	return 0
}

func encodeScope(gen uint32, sc *fw.CompiledScope) *bpffw.ScopeVal {
	v := &bpffw.ScopeVal{Deflt: action(sc.Default), N4: uint32(len(sc.Search[fw.IPv4])), N6: uint32(len(sc.Search[fw.IPv6]))}
	for i, t := range sc.Search[fw.IPv4] {
		v.T4[i] = bpffw.Tuple4{Hdr: keyHdr(gen, t.Owner, t.ID), Best: uint32(t.Best),
			Smask: ne32(addrMask(t.Tuple.SrcBits, 32)), Dmask: ne32(addrMask(t.Tuple.DstBits, 32)),
			Pmask: ne16(fw.PortMask(t.Tuple.PortBits)), Protomask: protoMask(t.Tuple)}
	}
	for i, t := range sc.Search[fw.IPv6] {
		e := bpffw.Tuple6{Hdr: keyHdr(gen, t.Owner, t.ID), Best: uint32(t.Best),
			Pmask: ne16(fw.PortMask(t.Tuple.PortBits)), Protomask: protoMask(t.Tuple)}
		sm, dm := addrMask(t.Tuple.SrcBits, 128), addrMask(t.Tuple.DstBits, 128)
		for w := range 4 {
			e.Smask[w], e.Dmask[w] = ne32(sm[4*w:]), ne32(dm[4*w:])
		}
		v.T6[i] = e
	}
	return v
}

// fits checks c against the maps' capacities (Compile with Limits
// already did; this guards a Compiled made with other limits).
func fits(c *fw.Compiled) error {
	if len(c.Rules) > bpffw.MaxRules {
		return fmt.Errorf("%w: %d rules, at most %d", fw.ErrCapacity, len(c.Rules), bpffw.MaxRules)
	}
	if len(c.Ifaces) > bpffw.MaxIfaces {
		return fmt.Errorf("%w: %d interfaces, at most %d", fw.ErrCapacity, len(c.Ifaces), bpffw.MaxIfaces)
	}
	for f := range 2 {
		if len(c.Entries[f]) > bpffw.MaxEntries {
			return fmt.Errorf("%w: %d entries, at most %d", fw.ErrCapacity, len(c.Entries[f]), bpffw.MaxEntries)
		}
		for _, sc := range c.Scopes {
			if len(sc.Search[f]) > bpffw.MaxTuples {
				return fmt.Errorf("%w: %d tuples at %s %s, at most %d", fw.ErrCapacity, len(sc.Search[f]),
					sc.Scope.Iface, sc.Scope.Hook, bpffw.MaxTuples)
			}
		}
	}
	return nil
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
	if err := fits(c); err != nil {
		return err
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

	// The entry tables are built (and may be refused) before anything is
	// written or any counter slot changes hands.
	seed, err := d.buildHalves(c, gen, next*0x9e3779b1)
	if err != nil {
		return err
	}
	if err := d.clear(gen); err != nil {
		return err
	}
	slots, err := d.assignSlots(c)
	if err != nil {
		return err
	}
	// Interfaces: slot i+1 for c.Ifaces[i], its scopes at slot i.
	direct := make([]uint32, bpffw.IfindexDirect)
	for i, n := range c.Ifaces {
		ix := uint32(idx[n])
		if ix < bpffw.IfindexDirect {
			direct[ix] = uint32(i + 1)
		} else if err := d.m.FwIfslotHiV3.Update(&bpffw.IfslotKey{Gen: gen, Ifindex: ix}, uint32(i+1), ebpf.UpdateAny); err != nil {
			return fmt.Errorf("writing interface %s: %w", n, err)
		}
	}
	dkeys := make([]uint32, bpffw.IfindexDirect)
	for i := range dkeys {
		dkeys[i] = gen*bpffw.IfindexDirect + uint32(i)
	}
	if err := batchUpdate(d.m.FwIfslotV3, dkeys, direct); err != nil {
		return err
	}
	slot := map[string]uint32{}
	for i, n := range c.Ifaces {
		slot[n] = uint32(i)
	}
	for i := range c.Scopes {
		sc := &c.Scopes[i]
		if sc.Scope.Iface == "" {
			continue // node-wide tuples are in every interface's search lists
		}
		k := (gen*bpffw.MaxIfaces+slot[sc.Scope.Iface])*2 + hookNum(sc.Scope.Hook)
		if err := d.m.FwScopesV3.Update(k, encodeScope(gen, sc), ebpf.UpdateAny); err != nil {
			return fmt.Errorf("writing scope %s/%s: %w", sc.Scope.Iface, sc.Scope.Hook, err)
		}
	}
	if err := d.writeHalves(gen); err != nil {
		return err
	}
	rkeys, rvals := make([]uint32, len(c.Rules)), make([]bpffw.Rule, len(c.Rules))
	for i, r := range c.Rules {
		rkeys[i] = gen*bpffw.MaxRules + uint32(i)
		rvals[i] = bpffw.Rule{Slot: slots[i], Action: uint8(action(r.Action))}
		if r.Log {
			rvals[i].Log = 1
		}
	}
	if err := batchUpdate(d.m.FwRulesV3, rkeys, rvals); err != nil {
		return err
	}

	// The switch.
	nc := bpffw.Config{ActiveGen: gen, Generation: next, Seed: seed}
	if reevaluate {
		nc.Reevaluate = 1
	}
	if err := d.m.FwCfgV3.Update(uint32(0), &nc, ebpf.UpdateAny); err != nil {
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

// batchChunk bounds one batch syscall's buffers.
const batchChunk = 8192

func batchUpdate[K, V any](m *ebpf.Map, keys []K, vals []V) error {
	for i := 0; i < len(keys); i += batchChunk {
		j := min(i+batchChunk, len(keys))
		if _, err := m.BatchUpdate(keys[i:j], vals[i:j], nil); err != nil {
			return fmt.Errorf("writing %s: %w", m, err)
		}
	}
	return nil
}

// clear deletes generation gen's interfaces from fw_ifslot_hi_v3. The
// arrays need no clearing: Apply rewrites fw_ifslot_v3's half and the
// entry tables' halves in full, and the scopes and rules it writes are the
// only ones the new half refers to.
func (d *Datapath) clear(gen uint32) error {
	return clearGen[bpffw.IfslotKey, uint32](d.m.FwIfslotHiV3, func(k *bpffw.IfslotKey) bool { return k.Gen == gen })
}

// clearGen deletes the keys of m that stale selects, reading the map in
// batches (a 65,536-rule set is as many entries).
func clearGen[K, V any](m *ebpf.Map, stale func(*K) bool) error {
	var del []K
	keys, vals := make([]K, batchChunk), make([]V, batchChunk)
	var cursor ebpf.MapBatchCursor
	for {
		n, err := m.BatchLookup(&cursor, keys, vals, nil)
		for i := range n {
			if stale(&keys[i]) {
				del = append(del, keys[i])
			}
		}
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			break
		}
		if err != nil {
			return fmt.Errorf("reading %s: %w", m, err)
		}
	}
	for i := 0; i < len(del); i += batchChunk {
		j := min(i+batchChunk, len(del))
		if _, err := m.BatchDelete(del[i:j], nil); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
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
		if err := d.m.FwRulesV3.Lookup(gen*bpffw.MaxRules+uint32(i), &v); err != nil || v.Slot >= bpffw.MaxRules || seen[v.Slot] {
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
// one, else a free one with zeroed counters. Slots of the rules c removes
// stay theirs until the switch (packets judged by the old set still count
// into them), unless old and new rules together need more than MaxRules
// slots: then removed rules' slots are reused, and a packet the old set
// counts between their zeroing here and the switch is counted for the new
// rule.
func (d *Datapath) assignSlots(c *fw.Compiled) ([]uint32, error) {
	used := map[uint32]bool{}
	for _, s := range d.slots {
		used[s] = true
	}
	var leaving []string // computed when the free slots run out
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
		for next < bpffw.MaxRules && used[next] {
			next++
		}
		slot := next
		if slot >= bpffw.MaxRules {
			if leaving == nil {
				keep := map[string]bool{}
				for _, r := range c.Rules {
					keep[r.Name] = true
				}
				leaving = []string{}
				for name := range d.slots {
					if !keep[name] {
						leaving = append(leaving, name)
					}
				}
			}
			if len(leaving) == 0 {
				return nil, fmt.Errorf("%w: no free counter slot", fw.ErrCapacity)
			}
			old := leaving[len(leaving)-1]
			leaving = leaving[:len(leaving)-1]
			slot = d.slots[old]
			delete(d.slots, old)
		}
		if err := d.m.FwCountersV2.Update(slot, zero, ebpf.UpdateAny); err != nil {
			return nil, fmt.Errorf("zeroing counters: %w", err)
		}
		used[slot] = true
		d.slots[r.Name], d.names[slot] = slot, r.Name
		out[i] = slot
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
		if err := d.m.FwCountersV2.Lookup(s, &per); err != nil {
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
// packet is classified again by the active rule set. It clears
// fw_ct_v3 through its memory mapping; a connection a packet records
// while the table is being cleared may survive.
func (d *Datapath) FlushConnections() error {
	mem, err := d.m.FwCtV3.Memory()
	if err != nil {
		return fmt.Errorf("mapping connections: %w", err)
	}
	if _, err := mem.WriteAt(make([]byte, mem.Size()), 0); err != nil {
		return fmt.Errorf("clearing connections: %w", err)
	}
	return nil
}
