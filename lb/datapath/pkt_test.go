package datapath

import (
	"encoding/binary"
	"net/netip"
)

// pktSpec describes a crafted frame for the datapath tests.
type pktSpec struct {
	src, dst     netip.Addr
	sport, dport uint16
	proto        uint8
	ihl          int    // IPv4 header words (default 5; options zero-filled NOPs)
	fragOff      uint16 // IPv4 offset (8-byte units) or IPv6 fragment offset
	mf           bool
	fragID       uint32
	extHdrs      int // IPv6 destination-options headers before L4
	fragHdr      bool
	payload      []byte
	vlan         bool
	l4raw        []byte // replaces the TCP/UDP header when set
}

func csum(b []byte, init uint32) uint16 {
	s := init
	for i := 0; i+1 < len(b); i += 2 {
		s += uint32(binary.BigEndian.Uint16(b[i:]))
	}
	if len(b)%2 == 1 {
		s += uint32(b[len(b)-1]) << 8
	}
	for s > 0xffff {
		s = (s & 0xffff) + (s >> 16)
	}
	return ^uint16(s)
}

func pseudo(src, dst netip.Addr, proto uint8, l int) uint32 {
	var s uint32
	for _, a := range []netip.Addr{src, dst} {
		b := a.AsSlice()
		for i := 0; i < len(b); i += 2 {
			s += uint32(binary.BigEndian.Uint16(b[i:]))
		}
	}
	return s + uint32(proto) + uint32(l)
}

func (p pktSpec) l4() []byte {
	if p.l4raw != nil {
		return p.l4raw
	}
	var h []byte
	if p.proto == 6 {
		h = make([]byte, 20)
		h[12] = 5 << 4
		h[13] = 0x02 // SYN
	} else {
		h = make([]byte, 8)
	}
	binary.BigEndian.PutUint16(h[0:], p.sport)
	binary.BigEndian.PutUint16(h[2:], p.dport)
	h = append(h, p.payload...)
	if p.proto == 17 {
		binary.BigEndian.PutUint16(h[4:], uint16(len(h)))
	}
	c := csum(h, pseudo(p.src, p.dst, p.proto, len(h)))
	if p.proto == 17 && c == 0 {
		c = 0xffff
	}
	off := 16
	if p.proto == 17 {
		off = 6
	}
	binary.BigEndian.PutUint16(h[off:], c)
	return h
}

func (p pktSpec) bytes() []byte {
	eth := make([]byte, 12, 64)
	copy(eth, []byte{2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2})
	if p.vlan {
		eth = append(eth, 0x81, 0x00, 0, 7)
	}
	l4 := p.l4()
	if p.src.Is4() {
		ihl := p.ihl
		if ihl == 0 {
			ihl = 5
		}
		hl := max(ihl, 5) * 4
		ip := make([]byte, hl)
		ip[0] = 0x40 | byte(ihl&0xf)
		binary.BigEndian.PutUint16(ip[2:], uint16(hl+len(l4)))
		binary.BigEndian.PutUint16(ip[4:], uint16(p.fragID))
		fo := p.fragOff
		if p.mf {
			fo |= 0x2000
		}
		binary.BigEndian.PutUint16(ip[6:], fo)
		ip[8] = 64
		ip[9] = p.proto
		for i := 20; i < hl; i++ {
			ip[i] = 1 // NOP options
		}
		copy(ip[12:], p.src.AsSlice())
		copy(ip[16:], p.dst.AsSlice())
		binary.BigEndian.PutUint16(ip[10:], csum(ip, 0))
		if p.fragOff != 0 {
			l4 = p.payload
		}
		return append(append(append(eth, 0x08, 0x00), ip...), l4...)
	}
	var ext []byte
	next := p.proto
	if p.fragOff != 0 {
		l4 = p.payload
	}
	if p.fragHdr {
		f := make([]byte, 8)
		f[0] = next
		fo := p.fragOff << 3
		if p.mf {
			fo |= 1
		}
		binary.BigEndian.PutUint16(f[2:], fo)
		binary.BigEndian.PutUint32(f[4:], p.fragID)
		ext = append(f, ext...)
		next = 44
	}
	for range p.extHdrs {
		d := make([]byte, 8)
		d[0] = next
		d[2] = 1 // PadN
		d[3] = 4
		ext = append(d, ext...)
		next = 60
	}
	ip := make([]byte, 40)
	ip[0] = 0x60
	binary.BigEndian.PutUint16(ip[4:], uint16(len(ext)+len(l4)))
	ip[6] = next
	ip[7] = 64
	copy(ip[8:], p.src.AsSlice())
	copy(ip[24:], p.dst.AsSlice())
	return append(append(append(append(eth, 0x86, 0xdd), ip...), ext...), l4...)
}
