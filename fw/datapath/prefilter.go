package datapath

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"

	bpffw "github.com/qbo/qbo/bpf/fw"
	"github.com/qbo/qbo/fw"
)

// Prefilter fills the XDP deny prefilter's tries (bpf/include/prefilter.h).
type Prefilter struct {
	v4, v6, stats *ebpf.Map
}

// NewPrefilter wraps the prefilter maps of a loaded firewall object (the
// same pinned maps bpf/lb's XDP entry point reads).
func NewPrefilter(m *bpffw.Maps) *Prefilter {
	return &Prefilter{v4: m.QboPfV4, v6: m.QboPfV6, stats: m.QboPfStats}
}

// Add inserts deny prefixes; it refuses the whole batch if it would not
// fit. Batches go through BPF_MAP_UPDATE_BATCH where the kernel has it.
func (p *Prefilter) Add(prefixes []netip.Prefix) error {
	var k4 []bpffw.PFKey4
	var k6 []bpffw.PFKey6
	for _, pr := range prefixes {
		pr = pr.Masked()
		if pr.Addr().Is4() {
			k4 = append(k4, bpffw.PFKey4{Prefixlen: uint32(pr.Bits()), Addr: pr.Addr().As4()})
		} else {
			k6 = append(k6, bpffw.PFKey6{Prefixlen: uint32(pr.Bits()), Addr: pr.Addr().As16()})
		}
	}
	if len(k4) > bpffw.PrefilterMaxEntries || len(k6) > bpffw.PrefilterMaxEntries {
		return fmt.Errorf("%w: prefilter holds %d prefixes per family", fw.ErrCapacity, bpffw.PrefilterMaxEntries)
	}
	if err := update(p.v4, k4); err != nil {
		return err
	}
	return update(p.v6, k6)
}

func update[K any](m *ebpf.Map, keys []K) error {
	if len(keys) == 0 {
		return nil
	}
	vals := make([]bpffw.PFVal, len(keys))
	_, err := m.BatchUpdate(keys, vals, nil)
	if errors.Is(err, ebpf.ErrNotSupported) {
		for i := range keys {
			if err := m.Update(&keys[i], &vals[i], ebpf.UpdateAny); err != nil {
				return fmt.Errorf("adding prefilter prefix: %w", err)
			}
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("adding prefilter prefixes: %w", err)
	}
	return nil
}

// Delete removes deny prefixes; missing ones are ignored.
func (p *Prefilter) Delete(prefixes []netip.Prefix) error {
	for _, pr := range prefixes {
		pr = pr.Masked()
		var err error
		if pr.Addr().Is4() {
			err = p.v4.Delete(&bpffw.PFKey4{Prefixlen: uint32(pr.Bits()), Addr: pr.Addr().As4()})
		} else {
			err = p.v6.Delete(&bpffw.PFKey6{Prefixlen: uint32(pr.Bits()), Addr: pr.Addr().As16()})
		}
		if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("deleting prefilter prefix %s: %w", pr, err)
		}
	}
	return nil
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
