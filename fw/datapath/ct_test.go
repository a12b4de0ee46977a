//go:build bpftest

package datapath

import (
	"bytes"
	"encoding/binary"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"unsafe"

	"github.com/cilium/ebpf"

	bpffw "github.com/qbo/qbo/bpf/fw"
	"github.com/qbo/qbo/fw"
)

// ctKey is fw_ct_fill's key, as bytes: the endpoints in canonical order
// (address words compared as the program loads them, then ports).
func ctKey(ifindex int, proto uint8, src netip.Addr, sport uint16, dst netip.Addr, dport uint16) []byte {
	addr := func(a netip.Addr) []byte {
		if a.Is4() {
			b := a.As4()
			return append(b[:], make([]byte, 12)...)
		}
		b := a.As16()
		return b[:]
	}
	s, d := addr(src), addr(dst)
	be := func(p uint16) []byte { return binary.BigEndian.AppendUint16(nil, p) }
	sp, dp := be(sport), be(dport)
	fromB := binary.LittleEndian.Uint16(sp) > binary.LittleEndian.Uint16(dp)
	for i := 3; i >= 0; i-- {
		if sw, dw := binary.LittleEndian.Uint32(s[4*i:]), binary.LittleEndian.Uint32(d[4*i:]); sw != dw {
			fromB = sw > dw
		}
	}
	if fromB {
		s, d, sp, dp = d, s, dp, sp
	}
	k := append(append([]byte{}, s...), d...)
	k = binary.LittleEndian.AppendUint32(k, uint32(ifindex))
	k = append(append(k, sp...), dp...)
	family := byte(4)
	if src.Is6() {
		family = 6
	}
	return append(k, family, proto, 0, 0, 0, 0, 0, 0)
}

// The connection table is set-associative: five connections whose keys
// fall in one set share its four ways, the least recently used one is
// replaced (a connection found by a packet is used), and its replies are
// then judged as new packets. A way whose check word does not match its
// content (a write torn by another CPU) is a miss, not a hit.
func TestConnectionTableSetReplacementAndCheck(t *testing.T) {
	e := newEnv(t)
	if n := unsafe.Sizeof(bpffw.CTKey{}); n != 48 {
		t.Fatalf("fw_ct_key is %d bytes", n)
	}
	e.apply(fw.RuleSet{Policies: []fw.Policy{{Target: fw.Node, Direction: fw.Ingress, Action: fw.Deny}}},
		fw.Resolved{fw.Node: {"d0"}})
	ifx := e.ifidx["d0"]

	// Five outbound TCP flows hostA:sport -> hostB:dport in one set.
	type flow struct{ sport, dport uint16 }
	var flows []flow
	set := bpffw.CTSetOf(bpffw.CTHash(ctKey(ifx, 6, hostA, 40000, hostB, 80)))
	for sp := 40000; len(flows) < 5 && sp < 65536; sp++ {
		for dp := 80; len(flows) < 5 && dp < 2080; dp++ {
			if bpffw.CTSetOf(bpffw.CTHash(ctKey(ifx, 6, hostA, uint16(sp), hostB, uint16(dp)))) == set {
				flows = append(flows, flow{uint16(sp), uint16(dp)})
			}
		}
	}
	if len(flows) < 5 {
		t.Fatal("no five flows in one set")
	}
	out := func(f flow) []byte {
		return tpkt{src: hostA, dst: hostB, proto: 6, sport: f.sport, dport: f.dport}.build()
	}
	reply := func(f flow) []byte {
		return tpkt{src: hostB, dst: hostA, proto: 6, sport: f.dport, dport: f.sport}.build()
	}
	for _, f := range flows[:4] {
		if got := e.run(fw.Egress, "d0", out(f)); got != next {
			t.Fatalf("outbound %v: %s", f, verdictName(got))
		}
	}
	// flows[0] is used again (its reply), so flows[1] is the least
	// recently used when flows[4] arrives.
	if got := e.run(fw.Ingress, "d0", reply(flows[0])); got != next {
		t.Fatalf("reply of %v: %s", flows[0], verdictName(got))
	}
	if got := e.run(fw.Egress, "d0", out(flows[4])); got != next {
		t.Fatalf("outbound %v: %s", flows[4], verdictName(got))
	}
	for i, f := range flows {
		want := uint32(next)
		if i == 1 {
			want = drop // replaced: its reply is a new inbound packet, denied
		}
		if got := e.run(fw.Ingress, "d0", reply(f)); got != want {
			t.Errorf("reply of flow %d %v: %s, want %s", i, f, verdictName(got), verdictName(want))
		}
	}

	// Tear flows[0]'s way (way 0: it was inserted first into an empty set)
	// by changing its check word through the map's memory.
	mem, err := e.f.Maps().FwCtV3.Memory()
	if err != nil {
		t.Fatal(err)
	}
	stride := int64(unsafe.Sizeof(bpffw.CTSet{}))
	var raw [4]byte
	off := int64(set)*stride + int64(unsafe.Offsetof(bpffw.CTSet{}.Check))
	if _, err := mem.ReadAt(raw[:], off); err != nil {
		t.Fatal(err)
	}
	raw[0] ^= 0x5a
	if _, err := mem.WriteAt(raw[:], off); err != nil {
		t.Fatal(err)
	}
	if got := e.run(fw.Ingress, "d0", reply(flows[0])); got != drop {
		t.Fatalf("reply of a torn connection: %s, want it judged as new (dropped)", verdictName(got))
	}
	if got := e.run(fw.Ingress, "d0", reply(flows[2])); got != next {
		t.Fatalf("reply of an intact connection in the same set: %s", verdictName(got))
	}
}

// An upgrade from the hash-map connection table (fw_ct_v2, 44-byte keys)
// keeps the connections it holds: the new object copies them into
// fw_ct_v3 and unpins the old map, so a reply to a connection made before
// the upgrade still passes a default-deny ingress policy (the test fails
// without the copy: the reply is then a new inbound packet).
func TestUpgradeKeepsConnections(t *testing.T) {
	var ifx int
	e := newEnv(t, func(dir string) {
		m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.LRUHash, KeySize: 44, ValueSize: 16, MaxEntries: 1024})
		if err != nil {
			t.Fatal(err)
		}
		defer m.Close()
		// The old key of hostA:40000 -> hostB:80 on lo (ifindex 1 in
		// every namespace; the test's veths are numbered later): the new
		// key's fields in the old order.
		ifx = 1
		nk := ctKey(ifx, 6, hostA, 40000, hostB, 80)
		ok := append(append(append([]byte{}, nk[32:36]...), nk[40], nk[41]), nk[36:40]...)
		ok = append(append(ok, 0, 0), nk[0:32]...)
		v := make([]byte, 16)
		v[12], v[13] = 1, 0 // seen at egress, first packet from endpoint a
		if bytes.Compare(hostA.AsSlice(), hostB.AsSlice()) > 0 {
			v[13] = 1
		}
		if err := m.Put(ok, v); err != nil {
			t.Fatal(err)
		}
		if err := m.Pin(filepath.Join(dir, "fw_ct_v2")); err != nil {
			t.Fatal(err)
		}
	})
	if e.ifidx["lo"] != ifx {
		t.Fatalf("lo is ifindex %d", e.ifidx["lo"])
	}
	if _, err := os.Stat(filepath.Join(e.dir, "fw_ct_v2")); !os.IsNotExist(err) {
		t.Fatalf("fw_ct_v2 still pinned: %v", err)
	}
	e.apply(fw.RuleSet{Policies: []fw.Policy{{Target: fw.Node, Direction: fw.Ingress, Action: fw.Deny}}},
		fw.Resolved{fw.Node: {"lo"}})
	if got := e.run(fw.Ingress, "lo", tpkt{src: hostB, dst: hostA, proto: 6, sport: 80, dport: 40000}.build()); got != next {
		t.Fatalf("reply of a connection from before the upgrade: %s", verdictName(got))
	}
	if got := e.run(fw.Ingress, "lo", tpkt{src: hostB, dst: hostA, proto: 6, sport: 80, dport: 40001}.build()); got != drop {
		t.Fatalf("inbound packet of no connection: %s", verdictName(got))
	}
}
