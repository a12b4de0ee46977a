package datapath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"net/netip"
	"slices"

	"github.com/cilium/ebpf"

	bpflb "github.com/qbo/qbo/bpf/lb"
	"github.com/qbo/qbo/lb"
)

// Datapath reads and writes the lb object's maps. It owns the allocation
// of Maglev array ranges: a table change writes a fresh range, switches the
// service entry to it, then frees the old range. It is not safe for
// concurrent use.
type Datapath struct {
	obj     *bpflb.Objects
	slots   slotAlloc
	tables  map[uint32]span   // service ID -> its range in use
	keys    map[uint32]lb.Key // service ID -> its key, for switching
	pending map[uint32]span   // written by PutMaglev, not yet switched to
	loaded  bool              // slots/tables reflect the maps (after Read)
	vips    map[uint32]int    // VIP filter bit -> services setting it
	flowBuf []byte            // FlowCounts' copy of the flow table, reused (16 MiB at the default size)
}

// New wraps a loaded object.
func New(obj *bpflb.Objects) *Datapath { return &Datapath{obj: obj} }

// Addr4 converts an address to the C layout (raw bytes in 4 words).
func Addr4(a netip.Addr) [4]uint32 {
	var out [4]uint32
	a = a.Unmap()
	if a.Is4() {
		b := a.As4()
		out[0] = binary.LittleEndian.Uint32(b[:])
		return out
	}
	b := a.As16()
	for i := range 4 {
		out[i] = binary.LittleEndian.Uint32(b[4*i:])
	}
	return out
}

// FromAddr4 is the inverse of Addr4.
func FromAddr4(w [4]uint32, family uint8) netip.Addr {
	var b [16]byte
	for i := range 4 {
		binary.LittleEndian.PutUint32(b[4*i:], w[i])
	}
	if family == 4 {
		return netip.AddrFrom4([4]byte(b[:4]))
	}
	return netip.AddrFrom16(b)
}

// Port converts a host-order port to the C layout (network order).
func Port(p uint16) uint16 { return bits.ReverseBytes16(p) }

func family(a netip.Addr) uint8 {
	if a.Unmap().Is4() {
		return 4
	}
	return 6
}

// SvcKey converts a service key.
func SvcKey(k lb.Key) bpflb.SvcKey {
	return bpflb.SvcKey{Addr: Addr4(k.VIP), Port: Port(k.Port), Proto: uint8(k.Proto), Family: family(k.VIP)}
}

func backend(b lb.BackendEntry) bpflb.Backend {
	return bpflb.Backend{Addr: Addr4(b.Addr.Addr()), Port: Port(b.Addr.Port()), Family: family(b.Addr.Addr()), Service: b.Service, Flags: b.Flags}
}

// Read returns the maps' current content.
func (d *Datapath) Read() (lb.Tables, error) {
	t := lb.NewTables()
	var (
		k bpflb.SvcKey
		v bpflb.SvcVal
	)
	it := d.obj.Services().Iterate()
	for it.Next(&k, &v) {
		key := lb.Key{VIP: FromAddr4(k.Addr, k.Family), Port: Port(k.Port), Proto: lb.Proto(k.Proto)}
		t.Services[key] = lb.SvcEntry{ID: v.Id, Count: v.Count, TableSize: v.TableSize, Flags: v.Flags}
	}
	if err := it.Err(); err != nil {
		return t, fmt.Errorf("reading lb_svc: %w", err)
	}
	if err := d.readBackends(t); err != nil {
		return t, err
	}
	if err := d.rebuildVIPFilter(t); err != nil {
		return t, err
	}
	if err := d.readMaglev(t); err != nil {
		return t, err
	}
	return t, nil
}

// backendStride is lb_backends2's element size in its memory mapping
// (28 bytes rounded up to 8).
const backendStride = 32

// readBackends reads the backend array through its memory mapping (the
// array has 262,144 slots; a syscall per element would take a second).
func (d *Datapath) readBackends(t lb.Tables) error {
	m := d.obj.Backends()
	mem, err := m.Memory()
	if err != nil {
		return fmt.Errorf("mapping lb_backends2: %w", err)
	}
	raw := make([]byte, backendStride*int(m.MaxEntries()))
	if _, err := mem.ReadAt(raw, 0); err != nil {
		return fmt.Errorf("reading lb_backends2: %w", err)
	}
	for id := range m.MaxEntries() {
		e := raw[backendStride*int(id):]
		svc := binary.LittleEndian.Uint32(e[20:])
		if svc == 0 {
			continue
		}
		var w [4]uint32
		for i := range w {
			w[i] = binary.LittleEndian.Uint32(e[4*i:])
		}
		port := binary.LittleEndian.Uint16(e[16:])
		t.Backends[id] = lb.BackendEntry{
			Addr:    netip.AddrPortFrom(FromAddr4(w, e[18]), Port(port)),
			Service: svc, Flags: binary.LittleEndian.Uint32(e[24:]),
		}
	}
	return nil
}

// vipBit is the VIP filter bit of a service key (lb_vip_hash in lb.c).
func vipBit(k lb.Key) uint32 {
	c := SvcKey(k)
	var a [16]byte
	for i := range 4 {
		binary.LittleEndian.PutUint32(a[4*i:], c.Addr[i])
	}
	return lb.VIPHash(a, k.Port, k.Proto, c.Family) >> (32 - vipFilterShift)
}

// vipFilterShift is LB_VIPF_SHIFT; the filter has 1<<vipFilterShift bits.
const (
	vipFilterShift = 20
	vipFilterBits  = 1 << vipFilterShift
)

// rebuildVIPFilter recomputes lb_vipf from the services in t.
func (d *Datapath) rebuildVIPFilter(t lb.Tables) error {
	d.vips = map[uint32]int{}
	words := make([]uint64, vipFilterBits/64)
	for k := range t.Services {
		b := vipBit(k)
		d.vips[b]++
		words[b/64] |= 1 << (b % 64)
	}
	mem, err := d.obj.VIPFilter().Memory()
	if err != nil {
		return fmt.Errorf("mapping lb_vipf: %w", err)
	}
	raw := make([]byte, 8*len(words))
	for i, w := range words {
		binary.LittleEndian.PutUint64(raw[8*i:], w)
	}
	if _, err := mem.WriteAt(raw, 0); err != nil {
		return fmt.Errorf("writing lb_vipf: %w", err)
	}
	return nil
}

// setVIPBit sets or clears one filter bit, through memory (an aligned
// 64-bit store; lb_xdp reads whole words).
func (d *Datapath) setVIPBit(b uint32, on bool) error {
	mem, err := d.obj.VIPFilter().Memory()
	if err != nil {
		return fmt.Errorf("mapping lb_vipf: %w", err)
	}
	var raw [8]byte
	off := int64(8 * (b / 64))
	if _, err := mem.ReadAt(raw[:], off); err != nil {
		return err
	}
	w := binary.LittleEndian.Uint64(raw[:])
	if on {
		w |= 1 << (b % 64)
	} else {
		w &^= 1 << (b % 64)
	}
	binary.LittleEndian.PutUint64(raw[:], w)
	_, err = mem.WriteAt(raw[:], off)
	return err
}

// maglevStride is the distance between lb_maglev's elements in its memory
// mapping: the kernel rounds an array's element size up to 8 bytes.
const maglevStride = 8

// readMaglev reads the whole Maglev array (batched) and slices each
// service's table out of it; it also rebuilds the range allocator.
func (d *Datapath) readMaglev(t lb.Tables) error {
	m := d.obj.Maglev()
	mem, err := m.Memory()
	if err != nil {
		return fmt.Errorf("mapping lb_maglev: %w", err)
	}
	raw := make([]byte, maglevStride*int(m.MaxEntries()))
	if _, err := mem.ReadAt(raw, 0); err != nil {
		return fmt.Errorf("reading lb_maglev: %w", err)
	}
	all := make([]uint32, m.MaxEntries())
	for i := range all {
		all[i] = binary.LittleEndian.Uint32(raw[maglevStride*i:])
	}
	d.slots = slotAlloc{size: m.MaxEntries()}
	d.tables, d.keys, d.pending = map[uint32]span{}, map[uint32]lb.Key{}, map[uint32]span{}
	var (
		k bpflb.SvcKey
		v bpflb.SvcVal
	)
	it := d.obj.Services().Iterate()
	for it.Next(&k, &v) {
		if v.Count == 0 || v.TableSize == 0 || uint64(v.Offset)+uint64(v.TableSize) > uint64(len(all)) {
			continue
		}
		s := span{v.Offset, v.TableSize}
		d.slots.reserve(s)
		d.tables[v.Id] = s
		d.keys[v.Id] = lb.Key{VIP: FromAddr4(k.Addr, k.Family), Port: Port(k.Port), Proto: lb.Proto(k.Proto)}
		t.Maglev[v.Id] = slices.Clone(all[s.off : s.off+s.n])
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("reading lb_svc: %w", err)
	}
	d.loaded = true
	return nil
}

// Apply runs ops in order; it stops at the first error. The first call
// reads the maps (to learn which Maglev ranges are in use).
func (d *Datapath) Apply(ops []lb.Op) error {
	if !d.loaded {
		if _, err := d.Read(); err != nil {
			return err
		}
	}
	for i := 0; i < len(ops); {
		// A run of backend puts is one batch syscall (a service's
		// backends come together: one syscall each cost about a quarter
		// of programming a 100-backend service).
		j := i
		for j < len(ops) && ops[j].Kind == lb.PutBackend {
			j++
		}
		if j-i > 1 {
			if err := d.putBackends(ops[i:j]); err != nil {
				return fmt.Errorf("applying %v: %w", lb.PutBackend, err)
			}
			i = j
			continue
		}
		if err := d.apply(ops[i]); err != nil {
			return fmt.Errorf("applying %v: %w", ops[i].Kind, err)
		}
		i++
	}
	// A table that changed under an unchanged service entry: switch the
	// entry to the new range now.
	for id, s := range d.pending {
		key, ok := d.keys[id]
		if !ok {
			d.slots.free(s)
			delete(d.pending, id)
			continue
		}
		var v bpflb.SvcVal
		if err := d.obj.Services().Lookup(SvcKey(key), &v); err != nil {
			return fmt.Errorf("switching maglev table of service %d: %w", id, err)
		}
		v.Offset = s.off
		if err := d.obj.Services().Put(SvcKey(key), v); err != nil {
			return fmt.Errorf("switching maglev table of service %d: %w", id, err)
		}
		d.commit(id, s)
	}
	return nil
}

// putBackends writes the backend entries of ops (all PutBackend) in one
// batch. The array's batch update writes them in order, as single puts
// would, and stops at the first failure.
func (d *Datapath) putBackends(ops []lb.Op) error {
	keys := make([]uint32, len(ops))
	vals := make([]bpflb.Backend, len(ops))
	for i, op := range ops {
		keys[i], vals[i] = op.ID, backend(op.Backend)
	}
	_, err := d.obj.Backends().BatchUpdate(keys, vals, nil)
	return err
}

// commit makes s the table of service id and frees its previous range.
func (d *Datapath) commit(id uint32, s span) {
	if old, ok := d.tables[id]; ok && old != s {
		d.slots.free(old)
	}
	d.tables[id] = s
	delete(d.pending, id)
}

func (d *Datapath) apply(op lb.Op) error {
	switch op.Kind {
	case lb.PutBackend:
		return d.obj.Backends().Put(op.ID, backend(op.Backend))
	case lb.PutMaglev:
		return d.putMaglev(op.ID, op.Table)
	case lb.PutService:
		id := op.Service.ID
		v := bpflb.SvcVal{Id: id, Count: op.Service.Count, TableSize: op.Service.TableSize, Flags: op.Service.Flags}
		s, pending := d.pending[id]
		if !pending {
			s = d.tables[id]
		}
		v.Offset = s.off
		// The filter bit goes up before the service entry appears.
		var old bpflb.SvcVal
		isNew := d.obj.Services().Lookup(SvcKey(op.Key), &old) != nil
		if isNew {
			b := vipBit(op.Key)
			if d.vips[b] == 0 {
				if err := d.setVIPBit(b, true); err != nil {
					return fmt.Errorf("writing lb_vipf: %w", err)
				}
			}
			d.vips[b]++
		}
		if err := d.obj.Services().Put(SvcKey(op.Key), v); err != nil {
			return err
		}
		d.keys[id] = op.Key
		if pending {
			d.commit(id, s)
		}
		return nil
	case lb.DelService:
		var v bpflb.SvcVal
		if err := d.obj.Services().Lookup(SvcKey(op.Key), &v); err == nil && d.keys[v.Id] == op.Key {
			delete(d.keys, v.Id)
		}
		err := d.obj.Services().Delete(SvcKey(op.Key))
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		// The filter bit goes down after the entry is gone.
		b := vipBit(op.Key)
		if d.vips[b]--; d.vips[b] <= 0 {
			delete(d.vips, b)
			return d.setVIPBit(b, false)
		}
		return nil
	case lb.DelMaglev:
		if s, ok := d.tables[op.ID]; ok {
			d.slots.free(s)
			delete(d.tables, op.ID)
		}
		return nil
	case lb.DelBackend:
		// A free ID's slot is all zero (service 0: no backend).
		return d.obj.Backends().Put(op.ID, bpflb.Backend{})
	}
	return fmt.Errorf("unknown op %d", op.Kind)
}

// putMaglev writes the table into a fresh range; the service entry is
// switched to it by its PutService or at the end of Apply.
func (d *Datapath) putMaglev(id uint32, table []uint32) error {
	if old, ok := d.pending[id]; ok {
		d.slots.free(old)
		delete(d.pending, id)
	}
	s, err := d.slots.alloc(uint32(len(table)))
	if err != nil {
		return err
	}
	mem, err := d.obj.Maglev().Memory()
	if err != nil {
		d.slots.free(s)
		return fmt.Errorf("mapping lb_maglev: %w", err)
	}
	// The range is unused until the service entry switches to it, so the
	// plain stores need no ordering against the datapath.
	raw := make([]byte, maglevStride*len(table))
	for i, id := range table {
		binary.LittleEndian.PutUint32(raw[maglevStride*i:], id)
	}
	if _, err := mem.WriteAt(raw, maglevStride*int64(s.off)); err != nil {
		d.slots.free(s)
		return fmt.Errorf("writing maglev table: %w", err)
	}
	d.pending[id] = s
	return nil
}

// Sync makes the maps equal to desired and returns the ops it ran.
func (d *Datapath) Sync(desired lb.Tables) ([]lb.Op, error) {
	actual, err := d.Read()
	if err != nil {
		return nil, err
	}
	ops := lb.Diff(desired, actual)
	return ops, d.Apply(ops)
}

// The layout of struct lb_flow_set in the mapping: a 64-byte header
// (tags, checks, recency, clock) and four 48-byte entries.
const (
	flowSetSize   = 256
	flowHeader    = 64
	flowEntSize   = 48
	flowEntBackOf = 40
)

// FlowCounts counts the flow table's live entries per backend ID (read
// through the table's memory mapping).
func (d *Datapath) FlowCounts() (map[uint32]int, error) {
	m := d.obj.Flows()
	mem, err := m.Memory()
	if err != nil {
		return nil, fmt.Errorf("mapping lb_flows3: %w", err)
	}
	n := flowSetSize * int(m.MaxEntries())
	if len(d.flowBuf) != n {
		d.flowBuf = make([]byte, n)
	}
	raw := d.flowBuf
	if _, err := mem.ReadAt(raw, 0); err != nil {
		return nil, fmt.Errorf("reading lb_flows3: %w", err)
	}
	out := map[uint32]int{}
	for off := 0; off < len(raw); off += flowSetSize {
		for w := range bpflb.FlowWays {
			if binary.LittleEndian.Uint32(raw[off+4*w:]) != 0 { // tag: in use
				out[binary.LittleEndian.Uint32(raw[off+flowHeader+flowEntSize*w+flowEntBackOf:])]++
			}
		}
	}
	return out, nil
}

// Stats reads the counters, summed over CPUs, by name.
func (d *Datapath) Stats() (map[string]uint64, error) {
	out := map[string]uint64{}
	for i, name := range bpflb.StatNames {
		var per []bpflb.StatVal
		if err := d.obj.Stats().Lookup(uint32(i), &per); err != nil {
			return nil, fmt.Errorf("reading lb_stats: %w", err)
		}
		var sum uint64
		for _, v := range per {
			sum += v.Packets
		}
		out[name] = sum
	}
	return out, nil
}
