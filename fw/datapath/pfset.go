package datapath

import (
	"net/netip"
	"slices"
)

// The IPv4 half of the prefilter is looked up in bitmaps, not in a trie
// (bpf/include/prefilter.h): qbo_pf_v4_full has one bit per /24 that a
// prefix of length <= 24 denies whole, and qbo_pf_v4_host one 256-bit
// map of denied host bytes per /24 that prefixes of length 25..32 touch.
// This file keeps the set of prefixes those bitmaps expand and computes
// any word or host map from it, so that a delete recomputes exactly the
// bits that no remaining prefix covers. It touches no kernel.

const (
	pfShortMax = 24 // longest prefix held in the /24 bitmap
	pfWordBits = 18 // a word of the /24 bitmap covers one /18
)

// v4Key is an IPv4 prefix packed as address<<8 | length, so that sorted
// keys run by address and, at one address, from the shortest prefix: the
// prefixes inside a block are one run starting at the block's own key.
type v4Key uint64

func mkV4(addr uint32, bits int) v4Key {
	return v4Key(uint64(addr&v4Mask(bits))<<8 | uint64(bits))
}

func v4KeyOf(p netip.Prefix) v4Key {
	a := p.Addr().As4()
	return mkV4(uint32(a[0])<<24|uint32(a[1])<<16|uint32(a[2])<<8|uint32(a[3]), p.Bits())
}

func v4Mask(bits int) uint32 {
	if bits == 0 {
		return 0
	}
	return ^uint32(0) << (32 - bits)
}

func (k v4Key) addr() uint32 { return uint32(k >> 8) }
func (k v4Key) bits() int    { return int(k & 0xff) }
func (k v4Key) last() uint32 { return k.addr() | ^v4Mask(k.bits()) }

func (k v4Key) prefix() netip.Prefix {
	a := k.addr()
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(a >> 24), byte(a >> 16), byte(a >> 8), byte(a)}), k.bits())
}

// v4Set is a set of IPv4 prefixes: short (/0../24) and long (/25../32)
// ones in two sorted slices, each treated as immutable so that a changed
// set can be built beside the current one and dropped if the change
// fails.
type v4Set struct {
	short, long []v4Key
	lens        [pfShortMax + 1]int // short prefixes per length
}

func (s *v4Set) len() int { return len(s.short) + len(s.long) }

func (s *v4Set) slice(k v4Key) []v4Key {
	if k.bits() <= pfShortMax {
		return s.short
	}
	return s.long
}

func (s *v4Set) has(k v4Key) bool {
	_, ok := slices.BinarySearch(s.slice(k), k)
	return ok
}

// with returns s plus add, which must be sorted, unique and not in s.
func (s *v4Set) with(add []v4Key) v4Set {
	out := v4Set{lens: s.lens}
	sh, lo := split(add)
	out.short, out.long = merge(s.short, sh), merge(s.long, lo)
	for _, k := range sh {
		out.lens[k.bits()]++
	}
	return out
}

// without returns s minus del, which must be sorted, unique and in s.
func (s *v4Set) without(del []v4Key) v4Set {
	out := v4Set{lens: s.lens}
	sh, lo := split(del)
	out.short, out.long = subtract(s.short, sh), subtract(s.long, lo)
	for _, k := range sh {
		out.lens[k.bits()]--
	}
	return out
}

func split(keys []v4Key) (short, long []v4Key) {
	for _, k := range keys {
		if k.bits() <= pfShortMax {
			short = append(short, k)
		} else {
			long = append(long, k)
		}
	}
	return short, long
}

func merge(a, b []v4Key) []v4Key {
	if len(b) == 0 {
		return a
	}
	out := make([]v4Key, 0, len(a)+len(b))
	i, j := 0, 0
	for i < len(a) && j < len(b) {
		if a[i] < b[j] {
			out = append(out, a[i])
			i++
		} else {
			out = append(out, b[j])
			j++
		}
	}
	out = append(out, a[i:]...)
	return append(out, b[j:]...)
}

func subtract(a, b []v4Key) []v4Key {
	if len(b) == 0 {
		return a
	}
	out := make([]v4Key, 0, len(a)-len(b))
	j := 0
	for _, k := range a {
		for j < len(b) && b[j] < k {
			j++
		}
		if j < len(b) && b[j] == k {
			continue
		}
		out = append(out, k)
	}
	return out
}

// run returns the keys of sorted whose address lies in [first, last].
func run(sorted []v4Key, first, last uint32) []v4Key {
	i, _ := slices.BinarySearch(sorted, v4Key(uint64(first)<<8))
	j := i
	for j < len(sorted) && sorted[j].addr() <= last {
		j++
	}
	return sorted[i:j]
}

// fullWord is word w of qbo_pf_v4_full: bit i is /24 number w*64+i,
// set when a short prefix covers it.
func (s *v4Set) fullWord(w uint32) uint64 {
	base := w << (32 - pfWordBits)
	for l := 0; l <= pfWordBits; l++ {
		if s.lens[l] > 0 && s.has(mkV4(base, l)) {
			return ^uint64(0)
		}
	}
	var v uint64
	for _, k := range run(s.short, base, base|^v4Mask(pfWordBits)) {
		if k.bits() <= pfWordBits {
			continue // starts at base, so the loop above found it
		}
		v |= ones(1<<(pfShortMax-k.bits())) << (k.addr() >> 8 & 63)
	}
	return v
}

// hosts is the value of /24 number n in qbo_pf_v4_host: bit h&63 of
// word h>>6 is host byte h, set when a long prefix covers it.
func (s *v4Set) hosts(n uint32) [4]uint64 {
	var h [4]uint64
	for _, k := range run(s.long, n<<8, n<<8|0xff) {
		first, cnt := k.addr()&0xff, uint32(1)<<(32-k.bits())
		for b := first; b < first+cnt; b += 64 {
			h[b>>6] |= ones(min(cnt, 64)) << (b & 63)
		}
	}
	return h
}

func ones(n uint32) uint64 {
	if n >= 64 {
		return ^uint64(0)
	}
	return 1<<n - 1
}

// affected lists the words of qbo_pf_v4_full and the /24s of
// qbo_pf_v4_host that a change of the prefixes keys may alter, sorted.
func affected(keys []v4Key) (words, nets []uint32) {
	var seen [(1 << 24) / 64 / 64]uint64 // one bit per word
	for _, k := range keys {
		if k.bits() > pfShortMax {
			nets = append(nets, k.addr()>>8)
			continue
		}
		for w := k.addr() >> (32 - pfWordBits); w <= k.last()>>(32-pfWordBits); w++ {
			if seen[w>>6]&(1<<(w&63)) == 0 {
				seen[w>>6] |= 1 << (w & 63)
				words = append(words, w)
			}
		}
	}
	slices.Sort(words)
	slices.Sort(nets)
	return words, slices.Compact(nets)
}
