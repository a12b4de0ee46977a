package lb

import (
	"hash/fnv"
	"math/bits"
	"slices"
)

// TableSizes are the Maglev table sizes qbo picks from: primes roughly
// doubling, so a service's table is >= 100x its backend count (which keeps
// each backend's share within about 1% of its weight's share) without
// every small service paying for the largest table.
var TableSizes = []uint32{251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071}

// MaxBackends is the most backends a service may have: the largest table
// is >= 100x it.
const MaxBackends = 1310

// TableSizeFor returns the smallest size in TableSizes that is >= 100 x n
// and >= min.
func TableSizeFor(n int, min uint32) uint32 {
	want := uint64(n) * 100
	if uint64(min) > want {
		want = uint64(min)
	}
	for _, m := range TableSizes {
		if uint64(m) >= want {
			return m
		}
	}
	return TableSizes[len(TableSizes)-1]
}

// IsPrime reports whether n is prime (for configured table sizes).
func IsPrime(n uint32) bool {
	if n < 2 {
		return false
	}
	for d := uint32(2); d*d <= n; d++ {
		if n%d == 0 {
			return false
		}
	}
	return true
}

// Maglev builds the weighted Maglev lookup table of size m (a prime) for
// backends and returns, per slot, the backend's ID. Each backend has a
// permutation of the slots derived from its address (not its position or
// ID), so that adding or removing one backend moves only about its share
// of slots. Weights are honoured by letting backend i claim a slot in
// round r only while it holds fewer than r*w_i/w_max slots. An empty
// backend list gives a nil table.
func Maglev(backends []Backend, m uint32) []uint32 {
	if len(backends) == 0 || m == 0 {
		return nil
	}
	bs := slices.Clone(backends)
	slices.SortFunc(bs, func(a, b Backend) int { return a.Addr.Compare(b.Addr) })
	n := len(bs)
	offset := make([]uint64, n)
	skip := make([]uint64, n)
	next := make([]uint64, n)
	held := make([]uint64, n)
	var wmax uint64
	for i, b := range bs {
		h1, h2 := backendHashes(b)
		offset[i] = h1 % uint64(m)
		skip[i] = h2%uint64(m-1) + 1
		wmax = max(wmax, uint64(b.Weight))
	}
	table := make([]uint32, m)
	taken := make([]bool, m)
	filled := uint32(0)
	for round := uint64(1); filled < m; round++ {
		for i, b := range bs {
			quota := round * uint64(b.Weight) / wmax
			for held[i] < quota && filled < m {
				var c uint64
				for {
					c = (offset[i] + next[i]*skip[i]) % uint64(m)
					next[i]++
					if !taken[c] {
						break
					}
				}
				taken[c] = true
				table[c] = b.ID
				held[i]++
				filled++
			}
		}
	}
	return table
}

func backendHashes(b Backend) (uint64, uint64) {
	key, _ := b.Addr.MarshalBinary()
	h := fnv.New64a()
	h.Write([]byte("qbo-maglev-offset"))
	h.Write(key)
	h1 := h.Sum64()
	h.Reset()
	h.Write([]byte("qbo-maglev-skip"))
	h.Write(key)
	return h1, h.Sum64()
}

// FlowTuple is what the datapath hashes to pick a slot: raw network-order
// address bytes (IPv4 in the first 4 bytes, the rest zero) and ports.
type FlowTuple struct {
	Src, Dst         [16]byte
	SrcPort, DstPort uint16 // host order
	Proto            Proto
}

// Hash is the flow hash the BPF program computes (murmur3's 32-bit block
// mixing over the tuple's words, as the little-endian CPU loads them). It
// is defined here so that tests can prove the datapath and this reference
// pick the same slot.
func (t FlowTuple) Hash() uint32 {
	h := uint32(HashSeed)
	for _, a := range [][16]byte{t.Src, t.Dst} {
		for i := 0; i < 16; i += 4 {
			h = mix(h, le32(a[i:]))
		}
	}
	// Ports as stored in the packet (big-endian), loaded little-endian.
	sp := uint32(bits.ReverseBytes16(t.SrcPort))
	dp := uint32(bits.ReverseBytes16(t.DstPort))
	h = mix(h, sp|dp<<16)
	h = mix(h, uint32(t.Proto))
	return fmix(h)
}

// VIPHash is the datapath's VIP filter hash (lb_vip_hash in bpf/lb/lb.c)
// over a service's raw address words (as the little-endian CPU loads
// them), its port (host order here, network order in the packet), its
// protocol and its family (4 or 6). The filter uses its top bits.
func VIPHash(addr [16]byte, port uint16, proto Proto, family uint8) uint32 {
	x := le32(addr[0:]) ^ le32(addr[4:]) ^ le32(addr[8:]) ^ le32(addr[12:])
	y := uint32(bits.ReverseBytes16(port)) | uint32(proto)<<16 | uint32(family)<<24
	return uint32((uint64(x)*0x9e3779b97f4a7c15 ^ uint64(y)*0xc2b2ae3d27d4eb4f) >> 32)
}

// HashSeed seeds the flow hash.
const HashSeed = 0x9e3779b9

func le32(b []byte) uint32 {
	return uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
}

func mix(h, k uint32) uint32 {
	k *= 0xcc9e2d51
	k = bits.RotateLeft32(k, 15)
	k *= 0x1b873593
	h ^= k
	h = bits.RotateLeft32(h, 13)
	return h*5 + 0xe6546b64
}

func fmix(h uint32) uint32 {
	h ^= h >> 16
	h *= 0x85ebca6b
	h ^= h >> 13
	h *= 0xc2b2ae35
	h ^= h >> 16
	return h
}

// Pick returns the backend ID the datapath chooses for a new flow.
func Pick(table []uint32, t FlowTuple) uint32 {
	if len(table) == 0 {
		return 0
	}
	return table[t.Hash()%uint32(len(table))]
}
