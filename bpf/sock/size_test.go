package sock

import (
	"testing"
	"unsafe"
)

func TestStructSizes(t *testing.T) {
	if s := unsafe.Sizeof(NatVal{}); s != 40 {
		t.Errorf("lb_sock_nat_val: Go %d bytes, C 40", s)
	}
}
