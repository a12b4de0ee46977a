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
		"fw_bits": unsafe.Sizeof(Bits{}), "fw_scope_key": unsafe.Sizeof(ScopeKey{}),
		"fw_scope_val": unsafe.Sizeof(ScopeVal{}), "fw_lpm4_key": unsafe.Sizeof(LPM4Key{}),
		"fw_lpm6_key": unsafe.Sizeof(LPM6Key{}), "fw_gen_key": unsafe.Sizeof(GenKey{}),
		"fw_rule": unsafe.Sizeof(Rule{}), "fw_counter": unsafe.Sizeof(Counter{}),
		"fw_config": unsafe.Sizeof(Config{}), "fw_ct_key": unsafe.Sizeof(CTKey{}),
		"fw_ct_val": unsafe.Sizeof(CTVal{}), "fw_deny_event": unsafe.Sizeof(DenyEvent{}),
		"qbo_pf_key4": unsafe.Sizeof(PFKey4{}), "qbo_pf_key6": unsafe.Sizeof(PFKey6{}),
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
	if n := len(statNames); n != int(StatMax) {
		t.Errorf("%d stat names for %d stats", n, StatMax)
	}
}
