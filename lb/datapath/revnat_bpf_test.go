//go:build bpftest

package datapath

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"

	bpflb "github.com/qbo/qbo/bpf/lb"
	"github.com/qbo/qbo/lb"
)

// reply runs lb_revnat on a reply from a backend to a client (TCP or UDP)
// and returns the source it leaves with; its checksums must be valid.
func (e *env) reply(from, to netip.AddrPort, proto uint8) netip.AddrPort {
	e.t.Helper()
	frame := pktSpec{src: from.Addr(), dst: to.Addr(), sport: from.Port(), dport: to.Port(), proto: proto, payload: []byte("hi")}.bytes()
	out := make([]byte, len(frame))
	ret, err := e.obj.TC().Run(&ebpf.RunOptions{Data: frame, DataOut: out})
	if err != nil || ret != 0 {
		e.t.Fatalf("tc verdict %d: %v", ret, err)
	}
	if from.Addr().Is4() {
		checkSums4(e.t, out, proto)
		return netip.AddrPortFrom(netip.AddrFrom4([4]byte(out[26:30])), binary.BigEndian.Uint16(out[34:]))
	}
	src := netip.AddrFrom16([16]byte(out[22:38]))
	if l4 := out[54:]; csum(l4, pseudo(src, to.Addr(), proto, len(l4))) != 0 {
		e.t.Errorf("bad L4 checksum of the IPv6 reply")
	}
	return netip.AddrPortFrom(src, binary.BigEndian.Uint16(out[54:]))
}

// replyKey is the reverse-NAT key of the reply from backend to client.
func replyKey(backend, client netip.AddrPort, proto uint8) bpflb.FlowKey {
	return bpflb.FlowKey{Saddr: Addr4(backend.Addr()), Daddr: Addr4(client.Addr()),
		Sport: Port(backend.Port()), Dport: Port(client.Port()), Proto: proto, Family: family(client.Addr())}
}

func revNATVal(vip netip.AddrPort) bpflb.RevNATVal {
	return bpflb.RevNATVal{Vip: Addr4(vip.Addr()), Vport: Port(vip.Port())}
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

// TestRevNAT balances a first packet of each kind of flow and sends the
// backend's reply through lb_revnat: a NAT flow's reply leaves from the
// VIP, a DSR flow records nothing (its backend answers the client itself).
func TestRevNAT(t *testing.T) {
	e := newEnv(t)
	e.add(lb.Service{Name: "web", VIP: netip.AddrPortFrom(vip4, 80), Proto: lb.TCP, Backends: []lb.Backend{be("10.199.1.2:8080")}})
	e.add(lb.Service{Name: "dns6", VIP: netip.AddrPortFrom(vip6, 53), Proto: lb.UDP, Backends: []lb.Backend{be("[fd00:199:1::2]:5353")}})
	e.add(lb.Service{Name: "far", VIP: netip.AddrPortFrom(vip4, 82), Proto: lb.TCP, Mode: lb.ModeDSR, Backends: []lb.Backend{be("192.0.2.1:82")}})
	for _, c := range []struct {
		name            string
		client, vip, be netip.AddrPort
		proto           uint8
		want            netip.AddrPort // the reply's source after lb_revnat
	}{
		{"ipv4 tcp nat", netip.AddrPortFrom(client4, 5555), netip.AddrPortFrom(vip4, 80), ap("10.199.1.2:8080"), 6, netip.AddrPortFrom(vip4, 80)},
		{"ipv6 udp nat", netip.AddrPortFrom(client6, 5556), netip.AddrPortFrom(vip6, 53), ap("[fd00:199:1::2]:5353"), 17, netip.AddrPortFrom(vip6, 53)},
		{"dsr: reply untouched", netip.AddrPortFrom(client4, 5557), netip.AddrPortFrom(vip4, 82), ap("192.0.2.1:82"), 6, ap("192.0.2.1:82")},
		{"no flow: reply untouched", netip.AddrPortFrom(client4, 5558), netip.AddrPort{}, ap("10.199.1.2:8080"), 6, ap("10.199.1.2:8080")},
	} {
		t.Run(c.name, func(t *testing.T) {
			e.t = t
			if c.vip.IsValid() {
				e.run(pktSpec{src: c.client.Addr(), dst: c.vip.Addr(), sport: c.client.Port(), dport: c.vip.Port(), proto: c.proto}.bytes())
			}
			before := e.stat("revnat")
			if got := e.reply(c.be, c.client, c.proto); got != c.want {
				t.Fatalf("reply leaves from %v, want %v", got, c.want)
			}
			if n, want := e.stat("revnat")-before, c.want != c.be; (n == 1) != want {
				t.Fatalf("revnat counted %d", n)
			}
		})
	}
}

// TestRevNATReplacesLeastRecentlyUsed fills the one reverse-NAT set, lets
// a reply refresh the oldest entry, and checks that the reverse entry of a
// fifth NAT flow replaces the least recently used one: that flow's reply
// is no longer translated, the others' still are.
func TestRevNATReplacesLeastRecentlyUsed(t *testing.T) {
	e := newSmallEnv(t)
	e.add(lb.Service{Name: "web", VIP: netip.AddrPortFrom(vip4, 80), Proto: lb.TCP, Backends: []lb.Backend{be("10.199.1.2:8080")}})
	backend, service := ap("10.199.1.2:8080"), netip.AddrPortFrom(vip4, 80)
	client := func(sp uint16) netip.AddrPort { return netip.AddrPortFrom(client4, sp) }
	open := func(sp uint16) {
		e.run(pktSpec{src: client4, dst: vip4, sport: sp, dport: 80, proto: 6}.bytes())
	}
	for sp := uint16(1001); sp <= 1004; sp++ {
		open(sp)
	}
	if got := e.reply(backend, client(1001), 6); got != service {
		t.Fatalf("reply of 1001 leaves from %v", got)
	}
	// 1002 is now the least recently used: its way goes to 1005, and its
	// entry moves to lb_rnat_spill, where its replies still find it.
	spills := e.stat("rnat_spill")
	open(1005)
	for sp := uint16(1001); sp <= 1005; sp++ {
		if got := e.reply(backend, client(sp), 6); got != service {
			t.Errorf("reply of %d leaves from %v, want %v", sp, got, service)
		}
	}
	if n := e.stat("rnat_spill") - spills; n != 1 {
		t.Errorf("%d entries spilled, want 1", n)
	}
	spill := e.obj.RevNATSpill()
	var k bpflb.FlowKey
	var v bpflb.RevNATVal
	found := map[uint16]bool{}
	for it := spill.Iterate(); it.Next(&k, &v); {
		found[Port(k.Dport)] = true
	}
	if !found[1002] || len(found) != 1 {
		t.Errorf("lb_rnat_spill holds the replies to %v, want 1002's", found)
	}
	var s bpflb.RevNATSet
	if err := e.obj.RevNAT().Lookup(uint32(0), &s); err != nil {
		t.Fatal(err)
	}
	n := 0
	for i, w := range s.Way {
		if s.Head.Tag[i] != 0 && Port(w.Key.Dport) == 1005 {
			n++
		}
	}
	if n != 1 {
		t.Fatalf("the set holds %d entries of 1005, want 1", n)
	}
}

// TestRevNATDropsStaleVictim fills one set with four NAT flows that see no
// reply and opens a fifth: the least recently used entry has been outlived
// by a whole set's worth of newer ones (what an LRU of the table's size
// would have evicted), so it is dropped, not moved to lb_rnat_spill.
func TestRevNATDropsStaleVictim(t *testing.T) {
	e := newSmallEnv(t)
	e.add(lb.Service{Name: "web", VIP: netip.AddrPortFrom(vip4, 80), Proto: lb.TCP, Backends: []lb.Backend{be("10.199.1.2:8080")}})
	backend, service := ap("10.199.1.2:8080"), netip.AddrPortFrom(vip4, 80)
	spills, stale := e.stat("rnat_spill"), e.stat("rnat_stale")
	for sp := uint16(1001); sp <= 1005; sp++ {
		e.run(pktSpec{src: client4, dst: vip4, sport: sp, dport: 80, proto: 6}.bytes())
	}
	if n := e.stat("rnat_stale") - stale; n != 1 {
		t.Errorf("%d stale entries dropped, want 1", n)
	}
	if n := e.stat("rnat_spill") - spills; n != 0 {
		t.Errorf("%d entries spilled, want none", n)
	}
	if got := e.reply(backend, netip.AddrPortFrom(client4, 1001), 6); got != backend {
		t.Errorf("reply of the dropped 1001 leaves from %v, want untranslated %v", got, backend)
	}
	for sp := uint16(1002); sp <= 1005; sp++ {
		if got := e.reply(backend, netip.AddrPortFrom(client4, sp), 6); got != service {
			t.Errorf("reply of %d leaves from %v, want %v", sp, got, service)
		}
	}
	// The next packet of 1001 records it again.
	e.run(pktSpec{src: client4, dst: vip4, sport: 1001, dport: 80, proto: 6}.bytes())
	if got := e.reply(backend, netip.AddrPortFrom(client4, 1001), 6); got != service {
		t.Errorf("reply of 1001 after its next packet leaves from %v, want %v", got, service)
	}
}

// TestRevNATKeptForLiveFlow: a NAT flow whose client keeps sending while
// its replies pause keeps its reverse entry. Its reverse entry is the
// least recently used of a full set and four inserts old, as a stale one,
// but its flow had a packet after an insert into the flow set: the entry
// moves to lb_rnat_spill instead of being dropped.
func TestRevNATKeptForLiveFlow(t *testing.T) {
	e := newSmallEnv(t)
	e.add(lb.Service{Name: "web", VIP: netip.AddrPortFrom(vip4, 80), Proto: lb.TCP, Backends: []lb.Backend{be("10.199.1.2:8080")}})
	backend, service := ap("10.199.1.2:8080"), netip.AddrPortFrom(vip4, 80)
	send := func(sp uint16) { e.run(pktSpec{src: client4, dst: vip4, sport: sp, dport: 80, proto: 6}.bytes()) }
	for sp := uint16(1001); sp <= 1004; sp++ {
		send(sp)
	}
	stale, spills := e.stat("rnat_stale"), e.stat("rnat_spill")
	send(1001) // no reply since it opened
	send(1005)
	if got := e.reply(backend, netip.AddrPortFrom(client4, 1001), 6); got != service {
		t.Errorf("reply of 1001 leaves from %v, want %v", got, service)
	}
	if n := e.stat("rnat_stale") - stale; n != 0 {
		t.Errorf("%d entries dropped as stale, want none", n)
	}
	if n := e.stat("rnat_spill") - spills; n != 1 {
		t.Errorf("%d entries spilled, want 1", n)
	}
}

// TestStatsUpgrade loads over a pin directory that holds lb_stats, the
// counter map of an older qbo (one slot per counter it had): the load
// succeeds, its counts are added into lb_stats2 and its pin is removed.
func TestStatsUpgrade(t *testing.T) {
	pin := tempPin(t)
	if err := os.MkdirAll(pin, 0o700); err != nil {
		t.Fatal(err)
	}
	m, err := ebpf.NewMapWithOptions(&ebpf.MapSpec{
		Name: "lb_stats", Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 8,
		MaxEntries: 24, Pinning: ebpf.PinByName,
	}, ebpf.MapOptions{PinPath: pin})
	if err != nil {
		t.Fatal(err)
	}
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]uint64{}
	for _, k := range []uint32{6, 7, 23} { // new_flow, est_flow, drop_flow_full
		per := make([]bpflb.StatVal, ncpu)
		per[0].Packets, per[ncpu-1].Packets = uint64(k)*100, 5
		if err := m.Put(k, per); err != nil {
			t.Fatal(err)
		}
		want[bpflb.StatNames[k]] = uint64(k)*100 + 5
		if ncpu == 1 {
			want[bpflb.StatNames[k]] = 5
		}
	}
	m.Close()

	e := loadEnv(t, bpflb.Options{PinDir: pin})
	for name, n := range want {
		if got := e.stat(name); got != n {
			t.Errorf("%s = %d after the upgrade, want %d", name, got, n)
		}
	}
	if _, err := os.Stat(filepath.Join(pin, "lb_stats")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("lb_stats still pinned: %v", err)
	}
}

// TestRevNATTornEntryIsAMiss gives the reverse-NAT entry of a NAT flow a
// VIP that its check word was not computed for (what a reader sees in the
// middle of a concurrent write): the reply must leave untranslated, not
// from that VIP. Restoring the entry translates it again.
func TestRevNATTornEntryIsAMiss(t *testing.T) {
	e := newSmallEnv(t)
	e.add(lb.Service{Name: "web", VIP: netip.AddrPortFrom(vip4, 80), Proto: lb.TCP, Backends: []lb.Backend{be("10.199.1.2:8080")}})
	backend, client := ap("10.199.1.2:8080"), netip.AddrPortFrom(client4, 2000)
	e.run(pktSpec{src: client4, dst: vip4, sport: 2000, dport: 80, proto: 6}.bytes())
	var s bpflb.RevNATSet
	if err := e.obj.RevNAT().Lookup(uint32(0), &s); err != nil {
		t.Fatal(err)
	}
	way := -1
	for i := range s.Way {
		if s.Head.Tag[i] != 0 {
			way = i
		}
	}
	if way < 0 {
		t.Fatal("reverse entry not recorded")
	}
	good := s
	s.Way[way].Val = revNATVal(ap("10.199.100.9:80"))
	for _, c := range []struct {
		name string
		set  bpflb.RevNATSet
		want netip.AddrPort
	}{
		{"torn", s, backend},
		{"restored", good, netip.AddrPortFrom(vip4, 80)},
	} {
		if err := e.obj.RevNAT().Put(uint32(0), c.set); err != nil {
			t.Fatal(err)
		}
		if got := e.reply(backend, client, 6); got != c.want {
			t.Fatalf("%s entry: reply leaves from %v, want %v", c.name, got, c.want)
		}
	}
}

// pinOldRevNAT pins lb_rnat in pin as qbo before lb_rnat2 created it (an
// LRU hash, reply 5-tuple -> VIP) and puts entries into it.
func pinOldRevNAT(t *testing.T, pin string, entries map[bpflb.FlowKey]bpflb.RevNATVal) {
	t.Helper()
	m, err := ebpf.NewMapWithOptions(&ebpf.MapSpec{
		Name: "lb_rnat", Type: ebpf.LRUHash, KeySize: 40, ValueSize: 20,
		MaxEntries: 1024, Flags: 2, /* BPF_F_NO_COMMON_LRU */
		Pinning: ebpf.PinByName,
	}, ebpf.MapOptions{PinPath: pin})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	for k, v := range entries {
		if err := m.Put(k, v); err != nil {
			t.Fatal(err)
		}
	}
}

// TestRevNATUpgrade loads over a pin directory that holds lb_rnat, the
// reverse-NAT table of an older qbo: its entries are copied into lb_rnat2
// (a reply lb_rnat2 already holds keeps its entry) and its pin removed.
// The second case goes through Load (copy, attach to no uplink, copy
// again), the first through LoadUnattached.
func TestRevNATUpgrade(t *testing.T) {
	backend := ap("10.199.1.2:8080")
	oldOnly, both := netip.AddrPortFrom(client4, 5555), netip.AddrPortFrom(client4, 6000)
	for _, c := range []struct {
		name string
		load func(bpflb.Options) (*bpflb.Objects, error)
	}{
		{"unattached", bpflb.LoadUnattached},
		{"load", bpflb.Load},
	} {
		t.Run(c.name, func(t *testing.T) {
			pin := tempPin(t)
			// A NAT flow recorded by the new lb_xdp before lb_rnat is
			// copied (as after the first copy in Load).
			e := loadEnv(t, bpflb.Options{PinDir: pin})
			e.add(lb.Service{Name: "web", VIP: netip.AddrPortFrom(vip4, 80), Proto: lb.TCP, Backends: []lb.Backend{be(backend.String())}})
			e.run(pktSpec{src: client4, dst: vip4, sport: both.Port(), dport: 80, proto: 6}.bytes())
			e.obj.Close()
			pinOldRevNAT(t, pin, map[bpflb.FlowKey]bpflb.RevNATVal{
				replyKey(backend, oldOnly, 6): revNATVal(ap("10.199.100.7:443")),
				replyKey(backend, both, 6):    revNATVal(ap("10.199.100.9:99")),
			})

			obj, err := c.load(bpflb.Options{PinDir: pin})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { obj.Close() })
			if got, ok := obj.RevNATCopied(); !ok || got != (bpflb.RevNATCopy{Copied: 1}) {
				t.Fatalf("copied %+v (ok %v), want 1 entry", got, ok)
			}
			if _, err := os.Stat(filepath.Join(pin, "lb_rnat")); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("lb_rnat still pinned: %v", err)
			}
			e = &env{t: t, obj: obj, dp: New(obj), state: lb.NewState()}
			if got := e.reply(backend, oldOnly, 6); got != ap("10.199.100.7:443") {
				t.Fatalf("reply of the copied entry leaves from %v", got)
			}
			if got := e.reply(backend, both, 6); got != netip.AddrPortFrom(vip4, 80) {
				t.Fatalf("reply of the entry lb_rnat2 held leaves from %v", got)
			}

			obj2, err := c.load(bpflb.Options{PinDir: pin})
			if err != nil {
				t.Fatal(err)
			}
			defer obj2.Close()
			if _, ok := obj2.RevNATCopied(); ok {
				t.Fatal("a second load found lb_rnat again")
			}
		})
	}
}

// TestLoadKeepsPinnedTableSizes loads over tables pinned with a size that
// differs from the options': each is reused at its size, and lb_rnat2,
// created after lb_flows2, takes the flow table's size.
func TestLoadKeepsPinnedTableSizes(t *testing.T) {
	pin := tempPin(t)
	e := loadEnv(t, bpflb.Options{PinDir: pin, FlowEntries: 8 * bpflb.FlowWays})
	e.obj.Close()
	if err := os.Remove(filepath.Join(pin, "lb_rnat2")); err != nil {
		t.Fatal(err)
	}
	e = loadEnv(t, bpflb.Options{PinDir: pin})
	if f, r := e.obj.Flows().MaxEntries(), e.obj.RevNAT().MaxEntries(); f != 8 || r != 8 {
		t.Fatalf("flow table has %d sets, reverse-NAT table %d, want 8 each", f, r)
	}
	// The programs use every set: flows spread over more than one.
	e.add(lb.Service{Name: "web", VIP: netip.AddrPortFrom(vip4, 80), Proto: lb.TCP, Backends: []lb.Backend{be("10.199.1.2:8080")}})
	for sp := uint16(1000); sp < 1064; sp++ {
		e.run(pktSpec{src: client4, dst: vip4, sport: sp, dport: 80, proto: 6}.bytes())
		if got := e.reply(ap("10.199.1.2:8080"), netip.AddrPortFrom(client4, sp), 6); got != netip.AddrPortFrom(vip4, 80) {
			t.Fatalf("reply of %d leaves from %v", sp, got)
		}
	}
	used := 0
	for i := range uint32(8) {
		var s bpflb.RevNATSet
		if err := e.obj.RevNAT().Lookup(i, &s); err != nil {
			t.Fatal(err)
		}
		if s.Head.Tag != [4]uint32{} {
			used++
		}
	}
	if used < 2 {
		t.Fatalf("64 flows use %d reverse-NAT sets", used)
	}
}
