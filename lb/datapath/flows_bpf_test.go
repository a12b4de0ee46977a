//go:build bpftest

package datapath

import (
	"encoding/binary"
	"net/netip"
	"testing"

	bpflb "github.com/qbo/qbo/bpf/lb"
	"github.com/qbo/qbo/lb"
)

// newSmallEnv is newEnv with a flow table of one set (4 entries).
func newSmallEnv(t *testing.T) *env {
	t.Helper()
	e := loadEnv(t, bpflb.Options{PinDir: tempPin(t), FlowEntries: bpflb.FlowWays})
	if f := e.obj.Flows().MaxEntries(); f != 1 {
		t.Fatalf("flow table has %d sets, want 1", f)
	}
	return e
}

func (e *env) flowSet() bpflb.FlowSet {
	e.t.Helper()
	var s bpflb.FlowSet
	if err := e.obj.Flows().Lookup(uint32(0), &s); err != nil {
		e.t.Fatal(err)
	}
	return s
}

// inSet reports which client ports the set holds.
func (e *env) inSet() map[uint16]bool {
	out := map[uint16]bool{}
	s := e.flowSet()
	for i, w := range s.Way {
		if s.Head.Tag[i] != 0 {
			out[Port(w.Key.Sport)] = true
		}
	}
	return out
}

// TestFlowTableReplacesLeastRecentlyUsed fills the one set, touches the
// oldest flow, and checks that a fifth flow replaces the least recently
// used one; the flows kept stay where they were (no new pick).
func TestFlowTableReplacesLeastRecentlyUsed(t *testing.T) {
	e := newSmallEnv(t)
	e.add(lb.Service{Name: "web", VIP: netip.AddrPortFrom(vip4, 80), Proto: lb.TCP,
		Backends: []lb.Backend{be("10.199.1.2:80"), be("10.199.2.2:80")}})
	pkt := func(sp uint16) []byte {
		return pktSpec{src: client4, dst: vip4, sport: sp, dport: 80, proto: 6}.bytes()
	}
	for sp := uint16(1001); sp <= 1004; sp++ {
		e.run(pkt(sp))
	}
	if got := e.inSet(); len(got) != 4 {
		t.Fatalf("set holds %v, want 4 flows", got)
	}
	e.run(pkt(1001)) // 1002 is now the least recently used
	newBefore := e.stat("new_flow")
	e.run(pkt(1005))
	got := e.inSet()
	if got[1002] || !got[1001] || !got[1003] || !got[1004] || !got[1005] {
		t.Fatalf("after a fifth flow the set holds %v, want 1001 1003 1004 1005", got)
	}
	if n := e.stat("new_flow") - newBefore; n != 1 {
		t.Fatalf("%d new flows, want 1", n)
	}
	// A re-picked flow reuses its own entry instead of taking a second.
	if err := e.state.DeleteService("web"); err != nil {
		t.Fatal(err)
	}
	e.add(lb.Service{Name: "web", VIP: netip.AddrPortFrom(vip4, 80), Proto: lb.TCP,
		Backends: []lb.Backend{be("10.199.3.2:80")}})
	e.run(pkt(1005))
	n := 0
	set := e.flowSet()
	for i, w := range set.Way {
		if set.Head.Tag[i] != 0 && Port(w.Key.Sport) == 1005 {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("flow 1005 has %d entries after a re-pick, want 1", n)
	}
}

// TestFlowTableTornEntryIsAMiss writes an entry whose check does not match
// its content (what a reader sees in the middle of a concurrent write):
// the packet must not use it, and is balanced as a new flow.
func TestFlowTableTornEntryIsAMiss(t *testing.T) {
	e := newSmallEnv(t)
	svc := e.add(lb.Service{Name: "web", VIP: netip.AddrPortFrom(vip4, 80), Proto: lb.TCP,
		Backends: []lb.Backend{be("10.199.1.2:80"), be("10.199.2.2:80")}})
	frame := pktSpec{src: client4, dst: vip4, sport: 2000, dport: 80, proto: 6}.bytes()
	_, out := e.run(frame)
	picked, _ := dst(t, out, 4)
	s := e.flowSet()
	var way int = -1
	for i := range s.Way {
		if s.Head.Tag[i] != 0 {
			way = i
		}
	}
	if way < 0 {
		t.Fatal("flow not recorded")
	}
	// The other backend of the same service (a valid entry but for the
	// check, which was computed for the first).
	other := svc.Backends[0].ID
	if other == s.Way[way].Backend {
		other = svc.Backends[1].ID
	}
	s.Way[way].Backend = other
	if err := e.obj.Flows().Put(uint32(0), s); err != nil {
		t.Fatal(err)
	}
	newBefore, estBefore := e.stat("new_flow"), e.stat("est_flow")
	_, out = e.run(frame)
	if a, _ := dst(t, out, 4); a != picked {
		t.Fatalf("forwarded to %v, Maglev picks %v", a, picked)
	}
	if e.stat("new_flow") != newBefore+1 || e.stat("est_flow") != estBefore {
		t.Fatalf("torn entry was used as an established flow")
	}
}

// TestVIPFilter checks that the filter bits follow the services: a packet
// to a deleted service's VIP passes untouched, and a filter bit shared by
// two services stays set while one of them remains.
func TestVIPFilter(t *testing.T) {
	e := newEnv(t)
	keys := map[uint32][]lb.Key{}
	var a, b lb.Key
	// Find two service keys that share a filter bit.
	for i := 0; ; i++ {
		k := lb.Key{VIP: netip.AddrFrom4([4]byte{10, 199, byte(i >> 8), byte(i)}), Port: 80, Proto: lb.TCP}
		bit := vipBit(k)
		keys[bit] = append(keys[bit], k)
		if len(keys[bit]) == 2 {
			a, b = keys[bit][0], keys[bit][1]
			break
		}
	}
	for i, k := range []lb.Key{a, b} {
		e.add(lb.Service{Name: []string{"a", "b"}[i], VIP: netip.AddrPortFrom(k.VIP, 80), Proto: lb.TCP,
			Backends: []lb.Backend{be("10.199.1.2:8080")}})
	}
	to := func(k lb.Key) netip.Addr {
		_, out := e.run(pktSpec{src: client4, dst: k.VIP, sport: 3000, dport: 80, proto: 6}.bytes())
		d, _ := dst(t, out, 4)
		return d
	}
	if to(a) != netip.MustParseAddr("10.199.1.2") || to(b) != netip.MustParseAddr("10.199.1.2") {
		t.Fatal("services not balanced")
	}
	if err := e.state.DeleteService("a"); err != nil {
		t.Fatal(err)
	}
	e.sync()
	if got := to(a); got != a.VIP {
		t.Fatalf("packet to deleted service went to %v", got)
	}
	if to(b) != netip.MustParseAddr("10.199.1.2") {
		t.Fatal("service sharing the deleted one's filter bit is no longer balanced")
	}
	// Rebuilt from the maps (a restarted qbod), the filter is the same.
	if _, err := New(e.obj).Read(); err != nil {
		t.Fatal(err)
	}
	if to(b) != netip.MustParseAddr("10.199.1.2") {
		t.Fatal("rebuilt filter lost a service")
	}
	if err := e.state.DeleteService("b"); err != nil {
		t.Fatal(err)
	}
	e.sync()
	if got := to(b); got != b.VIP {
		t.Fatalf("packet to deleted service went to %v", got)
	}
}

// TestICMPErrorNAT sends an ICMP error (fragmentation needed / packet too
// big) quoting what the client received from the VIP, for a NATed flow of
// each family: the backend must get it with itself as the outer
// destination and as the quote's source (address and port), with every
// checksum that covers them valid.
func TestICMPErrorNAT(t *testing.T) {
	e := newEnv(t)
	e.add(lb.Service{Name: "v4", VIP: netip.AddrPortFrom(vip4, 80), Proto: lb.TCP,
		Backends: []lb.Backend{be("10.199.1.2:8080")}})
	e.add(lb.Service{Name: "v6", VIP: netip.AddrPortFrom(vip6, 80), Proto: lb.TCP,
		Backends: []lb.Backend{be("[fd00:199:1::2]:8080")}})
	router4 := netip.MustParseAddr("10.199.0.254")
	router6 := netip.MustParseAddr("fd00:199::fe")
	for _, c := range []struct {
		client, vip, router, backend netip.Addr
		icmpType                     byte
		proto                        uint8
	}{
		{client4, vip4, router4, netip.MustParseAddr("10.199.1.2"), 3, 1},
		{client6, vip6, router6, netip.MustParseAddr("fd00:199:1::2"), 2, 58},
	} {
		e.run(pktSpec{src: c.client, dst: c.vip, sport: 41000, dport: 80, proto: 6}.bytes())
		quote := pktSpec{src: c.vip, dst: c.client, sport: 80, dport: 41000, proto: 6}.bytes()[14:]
		if c.vip.Is4() {
			quote = quote[:28]
		} else {
			quote = quote[:48]
		}
		icmp := append([]byte{c.icmpType, 4, 0, 0, 0, 0, 0x05, 0xdc}, quote...)
		if c.vip.Is4() {
			binary.BigEndian.PutUint16(icmp[2:], csum(icmp, 0))
		} else {
			binary.BigEndian.PutUint16(icmp[2:], csum(icmp, pseudo(c.router, c.vip, 58, len(icmp))))
		}
		frame := pktSpec{src: c.router, dst: c.vip, proto: c.proto, l4raw: icmp}.bytes()
		before := e.stat("icmp_err")
		ret, out := e.run(frame)
		out = out[:len(frame)]
		if ret != xdpPass || e.stat("icmp_err") != before+1 {
			t.Fatalf("%v: verdict %d, icmp_err not counted", c.vip, ret)
		}
		var l3, l4 int
		var outerDst, quoteSrc netip.Addr
		if c.vip.Is4() {
			l3, l4 = 14, 34
			outerDst = netip.AddrFrom4([4]byte(out[30:34]))
			if csum(out[l3:l4], 0) != 0 {
				t.Errorf("v4: outer header checksum")
			}
			q := out[l4+8:]
			quoteSrc = netip.AddrFrom4([4]byte(q[12:16]))
			if csum(q[:20], 0) != 0 {
				t.Errorf("v4: quoted header checksum")
			}
			if p := binary.BigEndian.Uint16(q[20:]); p != 8080 {
				t.Errorf("v4: quoted source port %d", p)
			}
			if csum(out[l4:], 0) != 0 {
				t.Errorf("v4: ICMP checksum")
			}
		} else {
			l3, l4 = 14, 54
			outerDst = netip.AddrFrom16([16]byte(out[38:54]))
			q := out[l4+8:]
			quoteSrc = netip.AddrFrom16([16]byte(q[8:24]))
			if p := binary.BigEndian.Uint16(q[40:]); p != 8080 {
				t.Errorf("v6: quoted source port %d", p)
			}
			if csum(out[l4:], pseudo(c.router, c.backend, 58, len(out)-l4)) != 0 {
				t.Errorf("v6: ICMPv6 checksum")
			}
		}
		if outerDst != c.backend || quoteSrc != c.backend {
			t.Errorf("%v: outer destination %v, quoted source %v, want %v", c.vip, outerDst, quoteSrc, c.backend)
		}
	}
}
