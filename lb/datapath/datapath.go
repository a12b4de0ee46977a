package datapath

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"net/netip"

	"github.com/cilium/ebpf"

	bpflb "github.com/qbo/qbo/bpf/lb"
	"github.com/qbo/qbo/lb"
)

// Datapath reads and writes the lb object's maps.
type Datapath struct {
	obj *bpflb.Objects
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
	var (
		id uint32
		b  bpflb.Backend
	)
	it = d.obj.Backends().Iterate()
	for it.Next(&id, &b) {
		t.Backends[id] = lb.BackendEntry{
			Addr:    netip.AddrPortFrom(FromAddr4(b.Addr, b.Family), Port(b.Port)),
			Service: b.Service, Flags: b.Flags,
		}
	}
	if err := it.Err(); err != nil {
		return t, fmt.Errorf("reading lb_backends: %w", err)
	}
	var innerID ebpf.MapID
	it = d.obj.Maglev().Iterate()
	for it.Next(&id, &innerID) {
		tab, err := readInner(innerID)
		if err != nil {
			return t, err
		}
		t.Maglev[id] = tab
	}
	if err := it.Err(); err != nil {
		return t, fmt.Errorf("reading lb_maglev: %w", err)
	}
	return t, nil
}

func readInner(id ebpf.MapID) ([]uint32, error) {
	m, err := ebpf.NewMapFromID(id)
	if err != nil {
		return nil, fmt.Errorf("opening maglev table %d: %w", id, err)
	}
	defer m.Close()
	tab := make([]uint32, m.MaxEntries())
	for i := range tab {
		if err := m.Lookup(uint32(i), &tab[i]); err != nil {
			return nil, fmt.Errorf("reading maglev table %d: %w", id, err)
		}
	}
	return tab, nil
}

// Apply runs ops in order; it stops at the first error.
func (d *Datapath) Apply(ops []lb.Op) error {
	for _, op := range ops {
		if err := d.apply(op); err != nil {
			return fmt.Errorf("applying %v: %w", op.Kind, err)
		}
	}
	return nil
}

func (d *Datapath) apply(op lb.Op) error {
	switch op.Kind {
	case lb.PutBackend:
		return d.obj.Backends().Put(op.ID, backend(op.Backend))
	case lb.PutMaglev:
		return d.putMaglev(op.ID, op.Table)
	case lb.PutService:
		v := bpflb.SvcVal{Id: op.Service.ID, Count: op.Service.Count, TableSize: op.Service.TableSize, Flags: op.Service.Flags}
		return d.obj.Services().Put(SvcKey(op.Key), v)
	case lb.DelService:
		return ignoreMissing(d.obj.Services().Delete(SvcKey(op.Key)))
	case lb.DelMaglev:
		return ignoreMissing(d.obj.Maglev().Delete(op.ID))
	case lb.DelBackend:
		return ignoreMissing(d.obj.Backends().Delete(op.ID))
	}
	return fmt.Errorf("unknown op %d", op.Kind)
}

// putMaglev builds a new inner array and swaps it in: a packet sees the old
// table or the new one, never a half-written one.
func (d *Datapath) putMaglev(id uint32, table []uint32) error {
	spec := d.obj.InnerSpec()
	spec.MaxEntries = uint32(len(table))
	spec.Name = "lb_mg"
	// No BTF: loading the object's BTF for every table costs milliseconds.
	spec.Key, spec.Value = nil, nil
	m, err := ebpf.NewMap(spec)
	if err != nil {
		return fmt.Errorf("creating maglev table: %w", err)
	}
	defer m.Close()
	keys := make([]uint32, len(table))
	for i := range keys {
		keys[i] = uint32(i)
	}
	if _, err := m.BatchUpdate(keys, table, nil); err != nil {
		return fmt.Errorf("filling maglev table: %w", err)
	}
	return d.obj.Maglev().Put(id, m)
}

func ignoreMissing(err error) error {
	if errors.Is(err, ebpf.ErrKeyNotExist) {
		return nil
	}
	return err
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

// FlowCounts counts the flow table's entries per backend ID.
func (d *Datapath) FlowCounts() (map[uint32]int, error) {
	out := map[uint32]int{}
	var (
		k bpflb.FlowKey
		v bpflb.Flow
	)
	it := d.obj.Flows().Iterate()
	for it.Next(&k, &v) {
		out[v.Backend]++
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("reading lb_flows: %w", err)
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
