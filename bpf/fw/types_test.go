package fw

import (
	"testing"
	"unsafe"

	"github.com/cilium/ebpf/btf"
)

// The Go mirrors of the C structs have the sizes the object's BTF says.
func TestTypeSizesMatchBTF(t *testing.T) {
	spec, err := loadFw()
	if err != nil {
		t.Fatal(err)
	}
	for name, size := range map[string]uintptr{
		"fw_tuple4": unsafe.Sizeof(Tuple4{}), "fw_tuple6": unsafe.Sizeof(Tuple6{}),
		"fw_ifslot_key": unsafe.Sizeof(IfslotKey{}), "fw_scope_val": unsafe.Sizeof(ScopeVal{}),
		"fw_key4": unsafe.Sizeof(Key4{}), "fw_key6": unsafe.Sizeof(Key6{}),
		"fw_rule": unsafe.Sizeof(Rule{}), "fw_counter": unsafe.Sizeof(Counter{}),
		"fw_config": unsafe.Sizeof(Config{}), "fw_ct_key": unsafe.Sizeof(CTKey{}),
		"fw_ct_ent": unsafe.Sizeof(CTEnt{}), "fw_ct_set": unsafe.Sizeof(CTSet{}),
		"fw_tss4_bucket": unsafe.Sizeof(TSS4Bucket{}), "fw_tss6_bucket": unsafe.Sizeof(TSS6Bucket{}),
		"fw_deny_event": unsafe.Sizeof(DenyEvent{}),
		"qbo_pf_key4":   unsafe.Sizeof(PFKey4{}), "qbo_pf_key6": unsafe.Sizeof(PFKey6{}),
		"qbo_pf_hosts": unsafe.Sizeof(PFHosts{}), "qbo_pf_config": unsafe.Sizeof(PFConfig{}),
	} {
		var st *btf.Struct
		if err := spec.Types.TypeByName(name, &st); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if uintptr(st.Size) != size {
			t.Errorf("%s: C %d bytes, Go %d", name, st.Size, size)
		}
	}
	// The capacities fw.c declares are the constants fw/datapath reads.
	for name, want := range map[string]uint32{"fw_tss4_v3": 2 * TSSBuckets, "fw_tss6_v3": 2 * TSSBuckets,
		"fw_rules_v3": 2 * MaxRules, "fw_counters_v2": MaxRules, "fw_scopes_v3": 2 * 2 * MaxIfaces,
		"fw_ifslot_v3": 2 * IfindexDirect, "fw_ifslot_hi_v3": 2 * MaxIfaces, "fw_ct_v3": CTSets} {
		if got := spec.Maps[name].MaxEntries; got != want {
			t.Errorf("%s: %d entries in fw.c, %d in Go", name, got, want)
		}
	}
	if n := len(TSS4Bucket{}.Tag); n != TSSWays || len(CTSet{}.Tag) != CTWays {
		t.Errorf("%d ways per entry bucket, Go says %d", n, TSSWays)
	}
	if n := len(ScopeVal{}.T4); n != MaxTuples || len(ScopeVal{}.T6) != MaxTuples {
		t.Errorf("fw_scope_val holds %d tuples per family, Go says %d", n, MaxTuples)
	}
	if n := len(statNames); n != int(StatMax) {
		t.Errorf("%d stat names for %d stats", n, StatMax)
	}
}

// migrate.go's byte offsets are the C layout's.
func TestConnectionLayoutOffsets(t *testing.T) {
	var s CTSet
	var e CTEnt
	for name, got := range map[string][2]uintptr{
		"set size":   {unsafe.Sizeof(s), ctSetSize},
		"check":      {unsafe.Offsetof(s.Check), ctCheckOff},
		"ways":       {unsafe.Offsetof(s.Way), ctWaysOff},
		"entry size": {unsafe.Sizeof(e), ctEntSize},
		"key size":   {unsafe.Sizeof(e.Key), ctKeySize},
		"created":    {unsafe.Offsetof(e.CreatedNs), ctCreatedOff},
		"generation": {unsafe.Offsetof(e.Generation), ctGenOff},
		"hook":       {unsafe.Offsetof(e.Hook), ctHookOff},
		"first_b":    {unsafe.Offsetof(e.FirstB), ctFirstBOff},
	} {
		if got[0] != got[1] {
			t.Errorf("%s: C %d, migrate.go %d", name, got[0], got[1])
		}
	}
}
