package datapath

import (
	"cmp"
	"errors"
	"slices"
)

// ErrNoSlots is returned when the Maglev array has no free range large
// enough for a table.
var ErrNoSlots = errors.New("maglev array full")

// span is a range of Maglev array slots.
type span struct{ off, n uint32 }

// slotAlloc hands out ranges of the flat Maglev array, first fit.
type slotAlloc struct {
	size uint32
	used []span // sorted by off
}

func (a *slotAlloc) reserve(s span) {
	i, _ := slices.BinarySearchFunc(a.used, s.off, func(e span, off uint32) int { return cmp.Compare(e.off, off) })
	a.used = slices.Insert(a.used, i, s)
}

func (a *slotAlloc) alloc(n uint32) (span, error) {
	prev := uint32(0)
	for i, u := range a.used {
		if u.off-prev >= n {
			s := span{prev, n}
			a.used = slices.Insert(a.used, i, s)
			return s, nil
		}
		prev = u.off + u.n
	}
	if a.size-prev >= n {
		s := span{prev, n}
		a.used = append(a.used, s)
		return s, nil
	}
	return span{}, ErrNoSlots
}

func (a *slotAlloc) free(s span) {
	if i := slices.Index(a.used, s); i >= 0 {
		a.used = slices.Delete(a.used, i, i+1)
	}
}
