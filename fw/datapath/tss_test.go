package datapath

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"testing"

	bpffw "github.com/qbo/qbo/bpf/fw"
)

// findTSS looks key up in a built half the way fw_tss4_get/fw_tss6_get
// do: the tag in the entry's first bucket, then, only if that bucket is
// full (fw_bucket_full), in its second; then the key.
func findTSS(l tssLayout, half, key []byte, seed uint32) (uint32, bool) {
	h := l.hash(key, seed)
	b1, b2 := bpffw.TSSBucketsOf(h)
	for _, b := range []uint32{b1, b2} {
		bk := half[int(b)*l.bucketSize:]
		full := true
		for w := range bpffw.TSSWays {
			tag := binary.LittleEndian.Uint32(bk[4*w:])
			if tag == bpffw.Tag(h) && bytes.Equal(bk[32+w*l.keySize:][:l.keySize], key) {
				return binary.LittleEndian.Uint32(bk[16+4*w:]), true
			}
			full = full && tag != 0
		}
		if !full {
			return 0, false
		}
	}
	return 0, false
}

// The entry tables build at their capacity (7/8 of the slots), and at a
// quarter of it, with random keys, and every entry is found where the
// programs look for it, with its position: in particular no entry is in
// its second bucket while its first has an empty way, which the programs
// rely on to read one bucket on a miss. Keys that are not entries are
// not found.
func TestEntryTablesBuildAtCapacity(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, c := range []struct {
		l tssLayout
		n int
	}{{tss4Layout, bpffw.MaxEntries}, {tss6Layout, bpffw.MaxEntries}, {tss4Layout, bpffw.MaxEntries / 4}} {
		l := c.l
		ents := make([]tssEntry, c.n)
		seen := map[string]bool{}
		for i := range ents {
			k := make([]byte, l.keySize)
			for {
				for j := range k {
					k[j] = byte(rng.Uint32())
				}
				if !seen[string(k)] {
					break
				}
			}
			seen[string(k)] = true
			ents[i] = tssEntry{key: k, pos: uint32(i % bpffw.MaxRules)}
		}
		const seed = 12345
		half, ok := buildTSS(l, ents, seed, nil)
		if !ok {
			t.Fatalf("%d-byte keys: %d entries did not fit", l.keySize, len(ents))
		}
		if len(half) != bpffw.TSSBuckets*l.bucketSize {
			t.Fatalf("half of %d bytes", len(half))
		}
		for _, e := range ents {
			pos, found := findTSS(l, half, e.key, seed)
			if !found || pos != e.pos {
				t.Fatalf("%d-byte keys: %x found %v at %d, want %d", l.keySize, e.key, found, pos, e.pos)
			}
		}
		miss := make([]byte, l.keySize)
		for range 1000 {
			for j := range miss {
				miss[j] = byte(rng.Uint32())
			}
			if _, found := findTSS(l, half, miss, seed); found && !seen[string(miss)] {
				t.Fatalf("%x found but not an entry", miss)
			}
		}
	}
}

// One more entry than the slots cannot be placed: the build says so
// instead of dropping an entry.
func TestEntryTablesRefuseOverfull(t *testing.T) {
	n := bpffw.TSSBuckets*bpffw.TSSWays + 1
	ents := make([]tssEntry, n)
	for i := range ents {
		k := make([]byte, 16)
		binary.LittleEndian.PutUint64(k, uint64(i))
		ents[i] = tssEntry{key: k}
	}
	if _, ok := buildTSS(tss4Layout, ents, 1, nil); ok {
		t.Fatal("more entries than slots were placed")
	}
}
