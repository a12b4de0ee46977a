package datapath

import (
	"errors"
	"testing"
)

func TestSlotAlloc(t *testing.T) {
	a := slotAlloc{size: 100}
	x, _ := a.alloc(40)
	y, _ := a.alloc(40)
	if _, err := a.alloc(40); !errors.Is(err, ErrNoSlots) {
		t.Fatalf("overcommitted: %v", err)
	}
	a.free(x)
	z, err := a.alloc(30)
	if err != nil || z.off != 0 {
		t.Fatalf("first fit: %v %v", z, err)
	}
	if w, err := a.alloc(20); err != nil || w.off != 80 {
		t.Fatalf("tail: %v %v", w, err)
	}
	a.reserve(span{30, 5})
	if w, err := a.alloc(5); err != nil || w.off != 35 {
		t.Fatalf("after reserve: %v %v (y=%v)", w, err, y)
	}
}
