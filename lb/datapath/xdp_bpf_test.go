//go:build bpftest

package datapath

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	mrand "math/rand/v2"
	"net/netip"
	"os"
	"testing"

	"github.com/cilium/ebpf"

	bpflb "github.com/qbo/qbo/bpf/lb"
	"github.com/qbo/qbo/lb"
)

const (
	xdpDrop     = 1
	xdpPass     = 2
	xdpTX       = 3
	xdpRedirect = 4
)

type env struct {
	t     testing.TB
	obj   *bpflb.Objects
	dp    *Datapath
	state *lb.State
}

func newEnv(t testing.TB) *env {
	t.Helper()
	return loadEnv(t, bpflb.Options{PinDir: tempPin(t)})
}

// tempPin is a fresh pin directory, removed when the test ends.
func tempPin(t testing.TB) string {
	b := make([]byte, 4)
	rand.Read(b)
	pin := "/sys/fs/bpf/qbo-test-lb-" + hex.EncodeToString(b)
	t.Cleanup(func() { os.RemoveAll(pin) })
	return pin
}

// loadEnv loads the object (unattached) with opts.
func loadEnv(t testing.TB, opts bpflb.Options) *env {
	t.Helper()
	obj, err := bpflb.LoadUnattached(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { obj.Close() })
	return &env{t: t, obj: obj, dp: New(obj), state: lb.NewState()}
}

func (e *env) sync() {
	e.t.Helper()
	if _, err := e.dp.Sync(e.state.Tables()); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) add(svc lb.Service) *lb.Service {
	e.t.Helper()
	s, err := e.state.AddService(svc)
	if err != nil {
		e.t.Fatal(err)
	}
	e.sync()
	return s
}

func (e *env) run(frame []byte) (uint32, []byte) {
	e.t.Helper()
	out := make([]byte, len(frame)+256)
	ret, err := e.obj.XDP().Run(&ebpf.RunOptions{Data: frame, DataOut: out})
	if err != nil {
		e.t.Fatalf("prog.Run: %v", err)
	}
	return ret, out
}

func (e *env) stat(name string) uint64 {
	e.t.Helper()
	st, err := e.dp.Stats()
	if err != nil {
		e.t.Fatal(err)
	}
	return st[name]
}

var (
	vip4    = netip.MustParseAddr("10.199.100.1")
	vip6    = netip.MustParseAddr("fd00:199::100")
	client4 = netip.MustParseAddr("10.199.0.2")
	client6 = netip.MustParseAddr("fd00:199::2")
)

func be(s string) lb.Backend { b, _ := lb.ParseBackend(s); return b }

// dst returns the destination address and port of an output frame.
func dst(t testing.TB, f []byte, family int) (netip.Addr, uint16) {
	t.Helper()
	if family == 4 {
		ihl := int(f[14]&0xf) * 4
		a := netip.AddrFrom4([4]byte(f[30:34]))
		return a, binary.BigEndian.Uint16(f[14+ihl+2:])
	}
	return netip.AddrFrom16([16]byte(f[38:54])), 0
}

func checkSums4(t testing.TB, f []byte, proto uint8) {
	t.Helper()
	ihl := int(f[14]&0xf) * 4
	ip := f[14 : 14+ihl]
	if csum(ip, 0) != 0 {
		t.Errorf("bad IPv4 header checksum")
	}
	tot := int(binary.BigEndian.Uint16(ip[2:]))
	l4 := f[14+ihl : 14+tot]
	src, dst := netip.AddrFrom4([4]byte(ip[12:16])), netip.AddrFrom4([4]byte(ip[16:20]))
	if csum(l4, pseudo(src, dst, proto, len(l4))) != 0 {
		t.Errorf("bad L4 checksum")
	}
}

func TestXDPPaths(t *testing.T) {
	e := newEnv(t)
	svc := e.add(lb.Service{Name: "web", VIP: netip.AddrPortFrom(vip4, 80), Proto: lb.TCP,
		Backends: []lb.Backend{be("10.199.1.2:8080"), be("10.199.2.2:8080"), be("10.199.3.2:8080")}})
	e.add(lb.Service{Name: "dns6", VIP: netip.AddrPortFrom(vip6, 53), Proto: lb.UDP,
		Backends: []lb.Backend{be("[fd00:199:1::2]:5353")}})
	e.add(lb.Service{Name: "empty", VIP: netip.AddrPortFrom(vip4, 81), Proto: lb.TCP})
	backends := map[netip.Addr]bool{}
	for _, b := range svc.Backends {
		backends[b.Addr.Addr()] = true
	}
	tcp := pktSpec{src: client4, dst: vip4, sport: 40000, dport: 80, proto: 6, payload: []byte("hello")}

	t.Run("nat new and established flow", func(t *testing.T) {
		ret, out := e.run(tcp.bytes())
		if ret != xdpPass {
			t.Fatalf("verdict %d", ret)
		}
		a, p := dst(t, out, 4)
		if !backends[a] || p != 8080 {
			t.Fatalf("rewritten to %v:%d", a, p)
		}
		checkSums4(t, out, 6)
		ret, out2 := e.run(tcp.bytes())
		a2, _ := dst(t, out2, 4)
		if ret != xdpPass || a2 != a {
			t.Fatalf("established flow went to %v, first to %v", a2, a)
		}
		if e.stat("est_flow") == 0 || e.stat("new_flow") == 0 {
			t.Fatal("flow counters not counted")
		}
	})
	t.Run("ipv6 udp nat", func(t *testing.T) {
		p := pktSpec{src: client6, dst: vip6, sport: 1234, dport: 53, proto: 17, payload: []byte("q")}
		ret, out := e.run(p.bytes())
		a, _ := dst(t, out, 6)
		if ret != xdpPass || a != netip.MustParseAddr("fd00:199:1::2") {
			t.Fatalf("verdict %d dst %v", ret, a)
		}
		if port := binary.BigEndian.Uint16(out[14+40+2:]); port != 5353 {
			t.Fatalf("port %d", port)
		}
		l4 := out[54 : 54+8+1]
		if csum(l4, pseudo(client6, a, 17, len(l4))) != 0 {
			t.Fatal("bad UDP checksum")
		}
	})

	type tc struct {
		name    string
		frame   []byte
		verdict uint32
		stat    string
		// rewritten: the destination becomes a backend of web
		rewritten bool
	}
	opts := tcp
	opts.ihl = 8
	opts.sport = 40001
	badIHL := tcp.bytes()
	badIHL[14] = 0x44
	badVer := tcp.bytes()
	badVer[14] = 0x65
	arp := make([]byte, 42)
	arp[12], arp[13] = 0x08, 0x06
	first := tcp
	first.sport, first.mf, first.fragID, first.payload = 40002, true, 77, make([]byte, 16)
	later := tcp
	later.sport, later.fragOff, later.fragID, later.payload = 40002, 3, 77, make([]byte, 16)
	orphan := later
	orphan.fragID = 78
	vlan := tcp
	vlan.vlan, vlan.sport = true, 40003
	nosvc := tcp
	nosvc.dport = 443
	empty := tcp
	empty.dport = 81
	cases := []tc{
		{"not ip", arp, xdpPass, "pass_not_ip", false},
		{"ihl < 5", badIHL, xdpDrop, "drop_bad_ihl", false},
		{"version mismatch", badVer, xdpDrop, "drop_bad_version", false},
		{"ip options", opts.bytes(), xdpPass, "ipopts", true},
		{"vlan tag", vlan.bytes(), xdpPass, "nat", false},
		{"first fragment", first.bytes(), xdpPass, "frag_first", true},
		{"later fragment follows first", later.bytes(), xdpPass, "frag_later", true},
		{"later fragment without first", orphan.bytes(), xdpPass, "pass_frag_miss", false},
		{"no service", nosvc.bytes(), xdpPass, "pass_no_service", false},
		{"no backends", empty.bytes(), xdpDrop, "drop_no_backend", false},
	}
	// ICMP error quoting the reply of the established flow.
	icmpQuote := pktSpec{src: vip4, dst: client4, sport: 80, dport: 40000, proto: 6}.bytes()[14:]
	icmp := append([]byte{3, 4, 0, 0, 0, 0, 0, 0}, icmpQuote[:28]...)
	binary.BigEndian.PutUint16(icmp[2:], csum(icmp, 0))
	cases = append(cases, tc{"icmp error of a balanced flow", pktSpec{src: netip.MustParseAddr("10.199.0.254"), dst: vip4, proto: 1, l4raw: icmp}.bytes(), xdpPass, "icmp_err", true})
	icmpOther := append([]byte{3, 4, 0, 0, 0, 0, 0, 0}, pktSpec{src: vip4, dst: client4, sport: 80, dport: 9, proto: 6}.bytes()[14:42]...)
	cases = append(cases, tc{"icmp error of another flow", pktSpec{src: client4, dst: vip4, proto: 1, l4raw: icmpOther}.bytes(), xdpPass, "pass_icmp_err_miss", false})
	for n := 0; n <= 7; n++ {
		p := pktSpec{src: client6, dst: vip6, sport: uint16(2000 + n), dport: 53, proto: 17, extHdrs: n}
		want, st := uint32(xdpPass), "nat"
		if n > 6 {
			st = "pass_ext_limit"
		} else if n > 0 {
			st = "exthdrs"
		}
		cases = append(cases, tc{fmt.Sprintf("ipv6 %d extension headers", n), p.bytes(), want, st, false})
	}
	f6 := pktSpec{src: client6, dst: vip6, sport: 3000, dport: 53, proto: 17, fragHdr: true, mf: true, fragID: 9, payload: make([]byte, 8)}
	cases = append(cases, tc{"ipv6 first fragment", f6.bytes(), xdpPass, "frag_first", false})
	l6 := f6
	l6.mf, l6.fragOff = false, 2
	cases = append(cases, tc{"ipv6 later fragment", l6.bytes(), xdpPass, "frag_later", false})

	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := e.stat(c.stat)
			ret, out := e.run(c.frame)
			if ret != c.verdict {
				t.Fatalf("verdict %d, want %d", ret, c.verdict)
			}
			if e.stat(c.stat) != before+1 {
				t.Fatalf("counter %s not incremented", c.stat)
			}
			if c.rewritten {
				a, _ := dst(t, out, 4)
				if !backends[a] {
					t.Fatalf("destination %v is not a backend", a)
				}
			}
		})
	}
	t.Run("truncated at every offset", func(t *testing.T) {
		for _, f := range [][]byte{tcp.bytes(), opts.bytes(), pktSpec{src: client6, dst: vip6, sport: 1, dport: 53, proto: 17, extHdrs: 3}.bytes(), cases[len(cases)-11].frame} {
			for n := 14; n < len(f); n++ {
				ret, _ := e.run(f[:n])
				if ret != xdpDrop && ret != xdpPass {
					t.Fatalf("len %d: verdict %d", n, ret)
				}
			}
		}
		for n := 14; n < 14+20+20; n++ {
			if ret, _ := e.run(tcp.bytes()[:n]); ret != xdpDrop {
				t.Fatalf("TCP frame cut at %d: verdict %d, want drop", n, ret)
			}
		}
	})
	t.Run("dsr encapsulates", func(t *testing.T) {
		// prog.Run only reports the verdict: nothing is transmitted.
		e.add(lb.Service{Name: "far", VIP: netip.AddrPortFrom(vip4, 82), Proto: lb.TCP, Mode: lb.ModeDSR,
			Backends: []lb.Backend{be("192.0.2.1:82")}})
		p := tcp
		p.dport = 82
		in := p.bytes()
		ret, out := e.run(in)
		if ret == xdpDrop {
			if e.stat("drop_dsr_fib") == 0 {
				t.Fatal("dropped without counting drop_dsr_fib")
			}
			return // no route to 192.0.2.1 on this host: the defined verdict
		}
		if ret != xdpTX && ret != xdpRedirect {
			t.Fatalf("verdict %d", ret)
		}
		if out[14+9] != 4 || netip.AddrFrom4([4]byte(out[30:34])) != netip.MustParseAddr("192.0.2.1") {
			t.Fatalf("not IPIP to the backend: %x", out[:60])
		}
		if csum(out[14:34], 0) != 0 {
			t.Fatal("bad outer checksum")
		}
		if string(out[34:34+len(in)-14]) != string(in[14:]) {
			t.Fatal("inner packet changed")
		}
	})
}

func TestXDPDrainKeepsFlows(t *testing.T) {
	e := newEnv(t)
	svc := e.add(lb.Service{Name: "web", VIP: netip.AddrPortFrom(vip4, 80), Proto: lb.TCP,
		Backends: []lb.Backend{be("10.199.1.2:80"), be("10.199.2.2:80"), be("10.199.3.2:80")}})
	first := map[uint16]netip.Addr{}
	for sp := uint16(1000); sp < 1300; sp++ {
		_, out := e.run(pktSpec{src: client4, dst: vip4, sport: sp, dport: 80, proto: 6}.bytes())
		first[sp], _ = dst(t, out, 4)
	}
	gone := svc.Backends[0].Addr
	if _, _, err := e.state.DeleteBackend("web", gone); err != nil {
		t.Fatal(err)
	}
	e.sync()
	for sp := uint16(1000); sp < 1300; sp++ {
		_, out := e.run(pktSpec{src: client4, dst: vip4, sport: sp, dport: 80, proto: 6}.bytes())
		if a, _ := dst(t, out, 4); a != first[sp] {
			t.Fatalf("existing flow %d moved from %v to %v", sp, first[sp], a)
		}
	}
	for sp := uint16(2000); sp < 2300; sp++ {
		_, out := e.run(pktSpec{src: client4, dst: vip4, sport: sp, dport: 80, proto: 6}.bytes())
		if a, _ := dst(t, out, 4); a == gone.Addr() {
			t.Fatalf("new flow went to the draining backend")
		}
	}
}

// TestXDPDifferential drives random services, backends and packets through
// the program and through lb's Go reference (lb.Pick over lb.Maglev) and
// requires the same backend for every new flow.
func TestXDPDifferential(t *testing.T) {
	e := newEnv(t)
	rng := mrand.New(mrand.NewPCG(7, 11))
	var svcs []*lb.Service
	for i := range 20 {
		six := i%2 == 1
		vip := netip.AddrFrom4([4]byte{10, 199, 100, byte(i)})
		if six {
			vip = netip.AddrFrom16([16]byte{0xfd, 0, 1, 0x99, 15: byte(i)})
		}
		var bs []lb.Backend
		for j := range 1 + rng.IntN(12) {
			a := netip.AddrFrom4([4]byte{10, 199, byte(i), byte(j + 1)})
			if six {
				a = netip.AddrFrom16([16]byte{0xfd, 0, 2, 0x99, 14: byte(i), 15: byte(j + 1)})
			}
			bs = append(bs, lb.Backend{Addr: netip.AddrPortFrom(a, uint16(8000+j)), Weight: uint32(1 + rng.IntN(5))})
		}
		proto := lb.TCP
		if rng.IntN(2) == 0 {
			proto = lb.UDP
		}
		svcs = append(svcs, e.add(lb.Service{Name: fmt.Sprint("s", i), VIP: netip.AddrPortFrom(vip, uint16(1+rng.IntN(65000))), Proto: proto, Backends: bs}))
	}
	for range 3000 {
		s := svcs[rng.IntN(len(svcs))]
		var src netip.Addr
		if s.VIP.Addr().Is4() {
			src = netip.AddrFrom4([4]byte{10, 198, byte(rng.IntN(256)), byte(rng.IntN(256))})
		} else {
			var b [16]byte
			b[0] = 0xfd
			for i := 8; i < 16; i++ {
				b[i] = byte(rng.IntN(256))
			}
			src = netip.AddrFrom16(b)
		}
		sp := uint16(1 + rng.IntN(65535))
		p := pktSpec{src: src, dst: s.VIP.Addr(), sport: sp, dport: s.VIP.Port(), proto: uint8(s.Proto)}
		ret, out := e.run(p.bytes())
		if ret != xdpPass {
			t.Fatalf("verdict %d", ret)
		}
		var tup lb.FlowTuple
		copy(tup.Src[:], src.AsSlice())
		copy(tup.Dst[:], s.VIP.Addr().AsSlice())
		tup.SrcPort, tup.DstPort, tup.Proto = sp, s.VIP.Port(), s.Proto
		wantID := lb.Pick(lb.Maglev(s.Backends, s.TableSize), tup)
		var want lb.Backend
		for _, b := range s.Backends {
			if b.ID == wantID {
				want = b
			}
		}
		var got netip.Addr
		if src.Is4() {
			got, _ = dst(t, out, 4)
		} else {
			got, _ = dst(t, out, 6)
		}
		if got != want.Addr.Addr() {
			t.Fatalf("service %s flow %v:%d: datapath chose %v, reference %v", s.Name, src, sp, got, want.Addr)
		}
	}
}

// FuzzXDP feeds random frames: every verdict must be a defined one.
func FuzzXDP(f *testing.F) {
	f.Add(pktSpec{src: client4, dst: vip4, sport: 1, dport: 80, proto: 6}.bytes())
	f.Add(pktSpec{src: client6, dst: vip6, sport: 1, dport: 53, proto: 17, extHdrs: 2, fragHdr: true, mf: true}.bytes())
	e := newEnv(f)
	e.add(lb.Service{Name: "web", VIP: netip.AddrPortFrom(vip4, 80), Proto: lb.TCP, Backends: []lb.Backend{be("10.199.1.2:8080")}})
	e.add(lb.Service{Name: "dns6", VIP: netip.AddrPortFrom(vip6, 53), Proto: lb.UDP, Backends: []lb.Backend{be("[fd00:199:1::2]:5353")}})
	f.Fuzz(func(t *testing.T, frame []byte) {
		if len(frame) < 14 || len(frame) > 1500 {
			return
		}
		e.t = t
		ret, _ := e.run(frame)
		if ret != xdpDrop && ret != xdpPass && ret != xdpTX && ret != xdpRedirect {
			t.Fatalf("verdict %d for %x", ret, frame)
		}
	})
}

func TestSyncIsIdempotent(t *testing.T) {
	e := newEnv(t)
	e.add(lb.Service{Name: "web", VIP: netip.AddrPortFrom(vip4, 80), Proto: lb.TCP, Backends: []lb.Backend{be("10.199.1.2:8080"), be("10.199.2.2:8080")}})
	e.add(lb.Service{Name: "web6", VIP: netip.AddrPortFrom(vip6, 80), Proto: lb.TCP, Backends: []lb.Backend{be("[fd00:199:1::2]:8080")}})
	ops, err := e.dp.Sync(e.state.Tables())
	if err != nil || len(ops) != 0 {
		t.Fatalf("second sync: %v %v", ops, err)
	}
}
