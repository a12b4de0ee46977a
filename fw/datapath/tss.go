package datapath

import (
	"encoding/binary"
	"fmt"
	"math/rand/v2"

	"github.com/cilium/ebpf"

	bpffw "github.com/qbo/qbo/bpf/fw"
	"github.com/qbo/qbo/fw"
)

// An entry table's half (one generation of fw_tss4_v3 or fw_tss6_v3) is
// a bucketized cuckoo hash table that Apply builds whole in memory and
// copies into the map's memory mapping: each entry goes in one of the two
// buckets its hash names (bpffw.TSSBucketsOf), in one of TSSWays ways.
// Placing an entry whose buckets are both full moves a resident to its
// other bucket, and so on (a random walk); at MaxEntries (7/8 of the
// slots) the walk ends in a few steps. Should it not, the half is built
// again with the next hash seed.
//
// The programs rely on one property of this build: an entry is in its
// second bucket only if its first is full. place tries the first bucket
// first, and a bucket never loses an entry (a displaced resident's way is
// taken by the entry displacing it), so a first bucket that was full
// stays full. A miss whose first bucket has an empty way then reads one
// bucket, not two (fw_bucket_full in fw.c); TestEntryTablesBuildAtCapacity
// looks entries up that way.

// tssLayout describes one family's table.
type tssLayout struct {
	keySize    int // bytes of fw_key4 / fw_key6
	bucketSize int // bytes of a bucket: tags, positions, keys
	hash       func(k []byte, seed uint32) uint64
}

var (
	tss4Layout = tssLayout{keySize: 16, bucketSize: 96, hash: bpffw.TSS4Hash}
	tss6Layout = tssLayout{keySize: 40, bucketSize: 192, hash: bpffw.TSS6Hash}
)

// maxKicks bounds the random walk placing one entry.
const maxKicks = 2000

// tssEntry is an entry's encoded key, best rule position and hash.
type tssEntry struct {
	key []byte
	pos uint32
	h   uint64
}

// buildTSS lays entries out in one half of the table and returns the
// half's bytes (buf reused when large enough), or false when the walk
// fails with this seed.
func buildTSS(l tssLayout, ents []tssEntry, seed uint32, buf []byte) ([]byte, bool) {
	const ways = bpffw.TSSWays
	slots := make([]int32, bpffw.TSSBuckets*ways)
	for i := range slots {
		slots[i] = -1
	}
	for i := range ents {
		ents[i].h = l.hash(ents[i].key, seed)
	}
	rng := rand.New(rand.NewPCG(uint64(seed), 0x71626f))
	place := func(e int32) bool {
		for range maxKicks {
			b1, b2 := bpffw.TSSBucketsOf(ents[e].h)
			for _, b := range [2]uint32{b1, b2} {
				for w := range ways {
					if slots[int(b)*ways+w] < 0 {
						slots[int(b)*ways+w] = e
						return true
					}
				}
			}
			b := b1
			if rng.IntN(2) == 1 {
				b = b2
			}
			s := int(b)*ways + rng.IntN(ways)
			e, slots[s] = slots[s], e
		}
		return false
	}
	for i := range ents {
		if !place(int32(i)) {
			return buf, false
		}
	}
	size := bpffw.TSSBuckets * l.bucketSize
	if cap(buf) < size {
		buf = make([]byte, size)
	}
	buf = buf[:size]
	clear(buf)
	for s, e := range slots {
		if e < 0 {
			continue
		}
		b := buf[(s/ways)*l.bucketSize:]
		w := s % ways
		binary.LittleEndian.PutUint32(b[4*w:], bpffw.Tag(ents[e].h))
		binary.LittleEndian.PutUint32(b[16+4*w:], ents[e].pos)
		copy(b[32+w*l.keySize:], ents[e].key)
	}
	return buf, true
}

// entryKey4 encodes fw_key4: the header word, then the masked fields in
// network order.
func entryKey4(gen uint32, k fw.EntryKey) []byte {
	b := make([]byte, 16)
	binary.LittleEndian.PutUint32(b, keyHdr(gen, k.Scope, k.Tuple))
	s, d := k.Src.As4(), k.Dst.As4()
	copy(b[4:], s[:])
	copy(b[8:], d[:])
	binary.BigEndian.PutUint16(b[12:], k.Port)
	b[14] = k.Proto
	return b
}

// entryKey6 encodes fw_key6.
func entryKey6(gen uint32, k fw.EntryKey) []byte {
	b := make([]byte, 40)
	binary.LittleEndian.PutUint32(b, keyHdr(gen, k.Scope, k.Tuple))
	s, d := k.Src.As16(), k.Dst.As16()
	copy(b[4:], s[:])
	copy(b[20:], d[:])
	binary.BigEndian.PutUint16(b[36:], k.Port)
	b[38] = k.Proto
	return b
}

// seedTries is how many hash seeds Apply tries before refusing a set.
const seedTries = 8

// buildHalves builds both families' halves for generation gen, trying
// seeds from first on; it returns the seed that worked.
func (d *Datapath) buildHalves(c *fw.Compiled, gen, first uint32) (uint32, error) {
	var e4, e6 []tssEntry
	for k, pos := range c.Entries[fw.IPv4] {
		e4 = append(e4, tssEntry{key: entryKey4(gen, k), pos: uint32(pos)})
	}
	for k, pos := range c.Entries[fw.IPv6] {
		e6 = append(e6, tssEntry{key: entryKey6(gen, k), pos: uint32(pos)})
	}
	for try := range uint32(seedTries) {
		seed := first + try*0x9e3779b9
		var ok4, ok6 bool
		d.half4, ok4 = buildTSS(tss4Layout, e4, seed, d.half4)
		if !ok4 {
			continue
		}
		d.half6, ok6 = buildTSS(tss6Layout, e6, seed, d.half6)
		if ok6 {
			return seed, nil
		}
	}
	return 0, fmt.Errorf("%w: the entry tables could not be built with %d seeds (%d IPv4, %d IPv6 entries)",
		fw.ErrCapacity, seedTries, len(e4), len(e6))
}

// writeHalves copies the built halves into generation gen's half of each
// entry table, through the maps' memory mappings (packets read only the
// active half).
func (d *Datapath) writeHalves(gen uint32) error {
	for _, t := range []struct {
		m    *ebpf.Map
		half []byte
	}{{d.m.FwTss4V3, d.half4}, {d.m.FwTss6V3, d.half6}} {
		mem, err := t.m.Memory()
		if err != nil {
			return fmt.Errorf("mapping %s: %w", t.m, err)
		}
		if _, err := mem.WriteAt(t.half, int64(gen)*int64(len(t.half))); err != nil {
			return fmt.Errorf("writing %s: %w", t.m, err)
		}
	}
	return nil
}
