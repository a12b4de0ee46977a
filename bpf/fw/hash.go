package fw

import "encoding/binary"

// The hashes of fw.c (fw_tss4_hash, fw_tss6_hash, fw_ct_hash) over a
// key's bytes as the C struct lays them out: fw/datapath places entries
// and connections where the programs look for them.

const (
	mul0 = 0x9e3779b97f4a7c15
	mul1 = 0xc2b2ae3d27d4eb4f
	mul2 = 0x165667b19e3779f9
	mul3 = 0x27d4eb2f165667c5
	mul4 = 0x94d049bb133111eb
	mul5 = 0xd6e8feb86659fd93
)

func fold(h uint64) uint64 {
	h = (h ^ h>>32) * 0xff51afd7ed558ccd
	return h ^ h>>29
}

func word(k []byte, i int) uint64 { return binary.LittleEndian.Uint64(k[8*i:]) }

// TSS4Hash is fw_tss4_hash of a 16-byte fw_key4.
func TSS4Hash(k []byte, seed uint32) uint64 {
	return fold((word(k, 0)^uint64(seed))*mul0 ^ word(k, 1)*mul1)
}

// TSS6Hash is fw_tss6_hash of a 40-byte fw_key6.
func TSS6Hash(k []byte, seed uint32) uint64 {
	return fold((word(k, 0)^uint64(seed))*mul0 ^ word(k, 1)*mul1 ^ word(k, 2)*mul2 ^ word(k, 3)*mul3 ^ word(k, 4)*mul4)
}

// CTHash is fw_ct_hash of a 48-byte fw_ct_key.
func CTHash(k []byte) uint64 {
	return fold(word(k, 0)*mul0 ^ word(k, 1)*mul1 ^ word(k, 2)*mul2 ^ word(k, 3)*mul3 ^ word(k, 4)*mul4 ^
		word(k, 5)*mul5)
}

// Tag is fw_tag: the hash's high half, never 0 (an empty way).
func Tag(h uint64) uint32 { return uint32(h>>32) | 1 }

// TSSBucketsOf hash h is: the two buckets (within a generation's half) an
// entry may live in.
func TSSBucketsOf(h uint64) (uint32, uint32) {
	return uint32(h) & (TSSBuckets - 1), uint32(h) >> TSSShift & (TSSBuckets - 1)
}

// CTSetOf is the set of fw_ct_v3 a connection of hash h lives in.
func CTSetOf(h uint64) uint32 { return uint32(h) & (CTSets - 1) }

// CTCheck is fw_ct_check.
func CTCheck(tag uint32, hook, firstB uint8) uint32 {
	return tag ^ ((uint32(hook)<<1|uint32(firstB))+1)*0x9e3779b1
}
