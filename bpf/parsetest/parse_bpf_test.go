//go:build bpftest

package parsetest

import (
	"encoding/binary"
	"os"
	"testing"

	"github.com/cilium/ebpf"
)

// The bpftest tier loads parsetest.c into the running kernel and drives it
// with BPF_PROG_TEST_RUN. It needs root:
//
//	go test -tags bpftest ./bpf/parsetest/

const (
	parseOK   = 0
	pktPorts  = 1 << 4 // QBO_PKT_PORTS
	minFrame  = 14     // BPF_PROG_TEST_RUN's shortest XDP input
	ethIPv4   = 0x0800
	ethIPv6   = 0x86dd
	ethVLAN   = 0x8100
	protoTCP  = 6
	protoUDP  = 17
	protoICMP = 1
)

func load(tb testing.TB) *parsetestObjects {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Fatal("the bpftest tier loads BPF programs and needs root (euid 0)")
	}
	var objs parsetestObjects
	if err := loadParsetestObjects(&objs, nil); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { objs.Close() })
	return &objs
}

// parse runs both parsers on frame.
func (o *parsetestObjects) parse(tb testing.TB, frame []byte) parsetestParseResult {
	tb.Helper()
	if _, err := o.ParseBoth.Run(&ebpf.RunOptions{Data: frame}); err != nil {
		tb.Fatalf("prog.Run: %v", err)
	}
	var r parsetestParseResult
	if err := o.ParseOut.Lookup(uint32(0), &r); err != nil {
		tb.Fatal(err)
	}
	return r
}

// check holds qbo_parse_plain4 and qbo_parse_plain6 to their contract on
// frame: each takes exactly the frames qbo_parse parses to its family with
// flags == QBO_PKT_PORTS, and fills the packet as qbo_parse does. It
// reports the family of the plain parser that took it, or 0.
func (o *parsetestObjects) check(tb testing.TB, frame []byte) int {
	tb.Helper()
	r := o.parse(tb, frame)
	took := 0
	for _, p := range []struct {
		family int
		ok     int32
		pkt    parsetestQboPkt
	}{{4, r.PlainOk, r.Plain}, {6, r.Plain6Ok, r.Plain6}} {
		want := r.Result == parseOK && int(r.General.Family) == p.family && r.General.Flags == pktPorts
		if (p.ok == 1) != want {
			tb.Fatalf("frame %x: qbo_parse_plain%d says %d, qbo_parse says result %d family %d flags %#x",
				frame, p.family, p.ok, r.Result, r.General.Family, r.General.Flags)
		}
		if want {
			if p.pkt != r.General {
				tb.Fatalf("frame %x: qbo_parse_plain%d filled\n%+v\nqbo_parse\n%+v", frame, p.family, p.pkt, r.General)
			}
			took = p.family
		}
	}
	return took
}

// frame builds Ethernet (with the given VLAN tags) + IPv4 or IPv6 + l4.
func frame(vlans int, v6 bool, ihl int, fragOff uint16, proto uint8, l4 []byte) []byte {
	f := []byte{2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2}
	for range vlans {
		f = binary.BigEndian.AppendUint16(f, ethVLAN)
		f = append(f, 0, 7)
	}
	if v6 {
		f = binary.BigEndian.AppendUint16(f, ethIPv6)
		ip := make([]byte, 40)
		ip[0] = 0x60
		binary.BigEndian.PutUint16(ip[4:], uint16(len(l4)))
		ip[6], ip[7] = proto, 64
		ip[8], ip[23] = 0xfd, 2
		ip[24], ip[39] = 0xfd, 1
		return append(append(f, ip...), l4...)
	}
	f = binary.BigEndian.AppendUint16(f, ethIPv4)
	ip := make([]byte, 4*ihl)
	ip[0] = 0x40 | byte(ihl)
	binary.BigEndian.PutUint16(ip[2:], uint16(len(ip)+len(l4)))
	binary.BigEndian.PutUint16(ip[4:], 0x1234)
	binary.BigEndian.PutUint16(ip[6:], fragOff)
	ip[8], ip[9] = 64, proto
	copy(ip[12:], []byte{10, 199, 0, 2, 10, 199, 100, 1})
	for i := 20; i < len(ip); i++ {
		ip[i] = 1 // NOP option
	}
	return append(append(f, ip...), l4...)
}

func ports(n int, extra ...byte) []byte {
	h := make([]byte, n)
	binary.BigEndian.PutUint16(h[0:], 40000)
	binary.BigEndian.PutUint16(h[2:], 80)
	return append(h, extra...)
}

func bases() map[string][]byte {
	icmpErr := append([]byte{3, 4, 0, 0, 0, 0, 5, 0xdc}, frame(0, false, 5, 0, protoTCP, ports(8))[14:]...)
	return map[string][]byte{
		"ipv4 tcp":                frame(0, false, 5, 0, protoTCP, ports(20, 'h', 'i')),
		"ipv4 tcp, DF":            frame(0, false, 5, 0x4000, protoTCP, ports(20)),
		"ipv4 udp, no payload":    frame(0, false, 5, 0, protoUDP, ports(8)),
		"ipv4 options":            frame(0, false, 6, 0, protoTCP, ports(20)),
		"vlan ipv4 tcp":           frame(1, false, 5, 0, protoTCP, ports(20)),
		"qinq ipv4 udp":           frame(2, false, 5, 0, protoUDP, ports(8)),
		"ipv4 first fragment":     frame(0, false, 5, 0x2000, protoUDP, ports(8, 1, 2, 3, 4)),
		"ipv4 later fragment":     frame(0, false, 5, 0x0003, protoUDP, ports(8)),
		"ipv4 icmp error":         frame(0, false, 5, 0, protoICMP, icmpErr),
		"ipv4 other protocol":     frame(0, false, 5, 0, 47, ports(8)),
		"ipv6 udp":                frame(0, true, 0, 0, protoUDP, ports(8)),
		"ipv6 tcp":                frame(0, true, 0, 0, protoTCP, ports(20)),
		"ipv6 destination option": frame(0, true, 0, 0, 60, append([]byte{protoUDP, 0, 1, 4, 0, 0, 0, 0}, ports(8)...)),
		"arp":                     append(frame(0, false, 5, 0, 0, nil)[:12], 0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1),
	}
}

// TestParsePlain runs the parsers over the base frames, every truncation
// of them, and every one of them with one of the first 64 bytes replaced
// by a value that sits on a boundary of some check.
func TestParsePlain(t *testing.T) {
	o := load(t)
	plain := map[string]int{"ipv4 tcp": 4, "ipv4 tcp, DF": 4, "ipv4 udp, no payload": 4, "ipv6 udp": 6, "ipv6 tcp": 6}
	taken := map[int]int{}
	for name, base := range bases() {
		if got := o.check(t, base); got != plain[name] {
			t.Errorf("%s: taken by the plain parser of family %d, want %d", name, got, plain[name])
		}
		for n := minFrame; n < len(base); n++ {
			o.check(t, base[:n])
		}
		for i := 0; i < len(base) && i < 64; i++ {
			for _, v := range []byte{0, 1, 0x05, 0x06, 0x08, 0x11, 0x14, 0x20, 0x3f, 0x40, 0x44, 0x45, 0x46, 0x60, 0x81, 0x86, 0xdd, 0xff, base[i] ^ 0x80} {
				f := append([]byte(nil), base...)
				f[i] = v
				taken[o.check(t, f)]++
			}
		}
	}
	if taken[4] == 0 || taken[6] == 0 {
		t.Fatalf("mutated frames taken by family: %v; a plain parser that takes none proves nothing", taken)
	}
}

// FuzzParsePlain holds the same contract on random frames.
func FuzzParsePlain(f *testing.F) {
	for _, b := range bases() {
		f.Add(b)
	}
	o := load(f)
	f.Fuzz(func(t *testing.T, frame []byte) {
		if len(frame) < minFrame || len(frame) > 1500 {
			return
		}
		o.check(t, frame)
	})
}
