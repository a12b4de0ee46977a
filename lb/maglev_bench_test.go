package lb

import "testing"

func BenchmarkMaglev100(b *testing.B) {
	bs := backends(100, func(int) uint32 { return 1 })
	m := TableSizeFor(100, 0)
	for range b.N {
		Maglev(bs, m)
	}
}
