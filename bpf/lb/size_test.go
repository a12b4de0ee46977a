package lb

import (
	"testing"
	"unsafe"
)

// The generated Go structs must have the C layouts' sizes (lb.h).
func TestStructSizes(t *testing.T) {
	for name, c := range map[string][2]uintptr{
		"lb_svc_key":  {unsafe.Sizeof(SvcKey{}), 20},
		"lb_svc_val":  {unsafe.Sizeof(SvcVal{}), 20},
		"lb_backend":  {unsafe.Sizeof(Backend{}), 28},
		"lb_flow_key": {unsafe.Sizeof(FlowKey{}), 40},
		"lb_flow":     {unsafe.Sizeof(Flow{}), 8},
		"lb_flow_ent": {unsafe.Sizeof(FlowEnt{}), 48},
		"lb_set_head": {unsafe.Sizeof(SetHead{}), 64},
		"lb_flow_set": {unsafe.Sizeof(FlowSet{}), 256},
		"lb_rnat_val": {unsafe.Sizeof(RevNATVal{}), 20},
		"lb_rnat_ent": {unsafe.Sizeof(RevNATEnt{}), 64},
		"lb_rnat_set": {unsafe.Sizeof(RevNATSet{}), 320},
		"lb_frag_key": {unsafe.Sizeof(FragKey{}), 40},
	} {
		if c[0] != c[1] {
			t.Errorf("%s: Go %d bytes, C %d", name, c[0], c[1])
		}
	}
	if len(StatNames) != 27 { // LB_ST_MAX
		t.Errorf("StatNames has %d names, lb.h counts 27", len(StatNames))
	}
}
