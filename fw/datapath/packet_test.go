//go:build bpftest

package datapath

import (
	"encoding/binary"
	"net/netip"
)

// tpkt describes a test packet; build turns it into Ethernet frame bytes.
type tpkt struct {
	src, dst     netip.Addr
	proto        uint8
	sport, dport uint16
	icmpType     uint8
	inner        []byte // ICMP error quote (an IP header + 8 bytes)
	ipOpts       int    // IPv4 option bytes (multiple of 4)
	fragOff      uint16 // in 8-byte units
	moreFrags    bool
	fragID       uint32
	extHdrs      int // IPv6 destination-options headers before L4
	payload      int
}

func csum(b []byte) uint16 {
	var s uint32
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return ^uint16(s)
}

func (p tpkt) l4() []byte {
	var l4 []byte
	switch p.proto {
	case 6:
		l4 = make([]byte, 20)
		binary.BigEndian.PutUint16(l4[0:], p.sport)
		binary.BigEndian.PutUint16(l4[2:], p.dport)
		l4[12] = 5 << 4
		l4[13] = 0x02 // SYN
	case 17:
		l4 = make([]byte, 8)
		binary.BigEndian.PutUint16(l4[0:], p.sport)
		binary.BigEndian.PutUint16(l4[2:], p.dport)
		binary.BigEndian.PutUint16(l4[4:], uint16(8+p.payload))
	case 1, 58:
		l4 = make([]byte, 8)
		l4[0] = p.icmpType
		l4 = append(l4, p.inner...)
	default:
		l4 = make([]byte, 8)
	}
	return append(l4, make([]byte, p.payload)...)
}

// ip returns the IP header(s) and L4 bytes without Ethernet.
func (p tpkt) ip() []byte {
	l4 := p.l4()
	if p.fragOff > 0 {
		l4 = make([]byte, 16+p.payload) // a later fragment carries payload only
	}
	if p.src.Is4() {
		hl := 20 + p.ipOpts
		h := make([]byte, hl)
		h[0] = 0x40 | byte(hl/4)
		binary.BigEndian.PutUint16(h[2:], uint16(hl+len(l4)))
		binary.BigEndian.PutUint16(h[4:], uint16(p.fragID))
		fo := p.fragOff
		if p.moreFrags {
			fo |= 0x2000
		}
		binary.BigEndian.PutUint16(h[6:], fo)
		h[8] = 64
		h[9] = p.proto
		for i := 20; i < hl; i++ {
			h[i] = 1 // NOP options
		}
		s, d := p.src.As4(), p.dst.As4()
		copy(h[12:], s[:])
		copy(h[16:], d[:])
		binary.BigEndian.PutUint16(h[10:], csum(h))
		return append(h, l4...)
	}
	var ext []byte
	next := p.proto
	if p.fragOff > 0 || p.moreFrags {
		f := make([]byte, 8)
		f[0] = next
		binary.BigEndian.PutUint16(f[2:], p.fragOff<<3|boolU16(p.moreFrags))
		binary.BigEndian.PutUint32(f[4:], p.fragID)
		ext = append(f, ext...)
		next = 44
	}
	for i := 0; i < p.extHdrs; i++ {
		e := make([]byte, 8)
		e[0] = next
		ext = append(e, ext...)
		next = 60
	}
	h := make([]byte, 40)
	h[0] = 0x60
	binary.BigEndian.PutUint16(h[4:], uint16(len(ext)+len(l4)))
	h[6] = next
	h[7] = 64
	s, d := p.src.As16(), p.dst.As16()
	copy(h[8:], s[:])
	copy(h[24:], d[:])
	return append(append(h, ext...), l4...)
}

func boolU16(b bool) uint16 {
	if b {
		return 1
	}
	return 0
}

// build returns the frame, padded with payload to at least minSKBFrame
// bytes so that well-formed packets can run through the skb programs.
func (p tpkt) build() []byte {
	f := p.frame()
	if len(f) < minSKBFrame {
		p.payload += minSKBFrame - len(f)
		f = p.frame()
	}
	return f
}

func (p tpkt) frame() []byte {
	eth := make([]byte, 14)
	copy(eth[0:6], []byte{2, 0, 0, 0, 0, 1})
	copy(eth[6:12], []byte{2, 0, 0, 0, 0, 2})
	if p.src.Is4() {
		binary.BigEndian.PutUint16(eth[12:], 0x0800)
	} else {
		binary.BigEndian.PutUint16(eth[12:], 0x86DD)
	}
	return append(eth, p.ip()...)
}

// quote is what an ICMP error about p carries: its IP header and 8 L4 bytes.
func (p tpkt) quote() []byte {
	b := p.ip()
	hl := 40
	if p.src.Is4() {
		hl = 20 + p.ipOpts
	}
	return b[:hl+8]
}
