package fw

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
)

// The session-1 connection table, fw_ct_v2, was an LRU hash of
// (fw_ct_key v2 -> fw_ct_val); its layouts as bytes:
const (
	oldCTKeySize = 44 // ifindex, family, proto, port_a, port_b, pad, addr_a[4], addr_b[4]
	oldCTValSize = 16 // created_ns, generation, hook, first_b, pad
)

// fw_ct_v3's layout, as bytes (struct fw_ct_set, fw_ct_ent).
const (
	ctSetSize    = 320
	ctWaysOff    = 64
	ctEntSize    = 64
	ctCheckOff   = 16
	ctKeySize    = 48
	ctCreatedOff = 48
	ctGenOff     = 56
	ctHookOff    = 60
	ctFirstBOff  = 61
)

// adoptOldConnections copies the connections of a pinned fw_ct_v2 (left
// by a qbod from before the array tables) into fw_ct_v3, so that an
// upgrade does not forget them: their replies keep passing under a
// default-deny policy. Each gets generation 1, the generation of the
// first rule set the new maps receive (qbod re-applies its persisted set
// at start), so re-evaluation treats them as judged by it. A connection
// whose set is full is dropped. It returns how many were copied.
func adoptOldConnections(pinDir string, ct *ebpf.Map) (int, error) {
	old, err := ebpf.LoadPinnedMap(filepath.Join(pinDir, "fw_ct_v2"), nil)
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("opening fw_ct_v2: %w", err)
	}
	defer old.Close()
	if old.KeySize() != oldCTKeySize || old.ValueSize() != oldCTValSize {
		return 0, nil // not the layout this code knows: nothing to adopt
	}
	mem, err := ct.Memory()
	if err != nil {
		return 0, fmt.Errorf("mapping fw_ct_v3: %w", err)
	}
	table := make([]byte, mem.Size())
	if _, err := mem.ReadAt(table, 0); err != nil {
		return 0, fmt.Errorf("reading fw_ct_v3: %w", err)
	}
	n := 0
	k, v := make([]byte, oldCTKeySize), make([]byte, oldCTValSize)
	it := old.Iterate()
	for it.Next(&k, &v) {
		key := make([]byte, 0, ctKeySize)
		key = append(key, k[12:44]...)                  // addr_a, addr_b
		key = append(key, k[0:4]...)                    // ifindex
		key = append(key, k[6:10]...)                   // port_a, port_b
		key = append(key, k[4], k[5], 0, 0, 0, 0, 0, 0) // family, proto, pad, pad2
		h := CTHash(key)
		set := table[int(CTSetOf(h))*ctSetSize:][:ctSetSize]
		for w := range CTWays {
			if binary.LittleEndian.Uint32(set[4*w:]) != 0 {
				continue
			}
			e := set[ctWaysOff+w*ctEntSize:][:ctEntSize]
			copy(e, key)
			copy(e[ctCreatedOff:], v[0:8])
			binary.LittleEndian.PutUint32(e[ctGenOff:], 1)
			e[ctHookOff], e[ctFirstBOff] = v[12]&1, v[13]&1
			tag := Tag(h)
			binary.LittleEndian.PutUint32(set[ctCheckOff+4*w:], CTCheck(tag, e[ctHookOff], e[ctFirstBOff]))
			binary.LittleEndian.PutUint32(set[4*w:], tag)
			n++
			break
		}
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("reading fw_ct_v2: %w", err)
	}
	if _, err := mem.WriteAt(table, 0); err != nil {
		return 0, fmt.Errorf("writing fw_ct_v3: %w", err)
	}
	return n, nil
}
