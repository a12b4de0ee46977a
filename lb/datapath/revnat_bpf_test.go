//go:build bpftest

package datapath

import (
	"encoding/binary"
	"errors"
	"math/bits"
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

// TestRevNATGeneralCopy sends IPv4 replies that qbo_parse_plain4 does not
// take (IP options, a VLAN tag) through lb_revnat: its general copy must
// translate them as the plain copy does, with valid checksums.
func TestRevNATGeneralCopy(t *testing.T) {
	e := newEnv(t)
	e.add(lb.Service{Name: "web", VIP: netip.AddrPortFrom(vip4, 80), Proto: lb.TCP, Backends: []lb.Backend{be("10.199.1.2:8080")}})
	backend := ap("10.199.1.2:8080")
	for i, c := range []struct {
		name string
		ihl  int
		vlan bool
	}{{"plain", 5, false}, {"ip options", 6, false}, {"vlan", 5, true}} {
		t.Run(c.name, func(t *testing.T) {
			client := netip.AddrPortFrom(client4, uint16(6000+i))
			e.t = t
			e.run(pktSpec{src: client.Addr(), dst: vip4, sport: client.Port(), dport: 80, proto: 6}.bytes())
			frame := pktSpec{src: backend.Addr(), dst: client.Addr(), sport: backend.Port(), dport: client.Port(), proto: 6,
				ihl: c.ihl, vlan: c.vlan, payload: []byte("hi")}.bytes()
			out := make([]byte, len(frame))
			ret, err := e.obj.TC().Run(&ebpf.RunOptions{Data: frame, DataOut: out})
			if err != nil || ret != 0 {
				t.Fatalf("tc verdict %d: %v", ret, err)
			}
			if c.vlan { // check the frame as it would be without its tag
				out = append(out[:12:12], out[16:]...)
			}
			checkSums4(t, out, 6)
			ihl := int(out[14]&0xf) * 4
			src := netip.AddrPortFrom(netip.AddrFrom4([4]byte(out[26:30])), binary.BigEndian.Uint16(out[14+ihl:]))
			if want := netip.AddrPortFrom(vip4, 80); src != want {
				t.Fatalf("reply leaves from %v, want %v", src, want)
			}
		})
	}
}

// TestRevNATReplacesLeastRecentlyUsed fills the one flow set with NAT
// flows, lets a reply refresh the oldest (a reply uses its flow's entry),
// and checks that a fifth flow replaces the least recently used one, whose
// reply keeps its translation in lb_rnat_spill (it is four inserts old at
// most: in use).
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
	if got := e.inSet(); got[1002] || len(got) != 4 {
		t.Fatalf("the set holds %v, want 1001 1003 1004 1005", got)
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

// TestRevNATKeptForLiveFlow: a NAT flow that had a packet after an insert
// into its set is in use even when it has been outlived by a set's worth
// of inserts: evicted, its reply's translation moves to lb_rnat_spill
// instead of being dropped as stale. Ways fill in order and ties go to
// the lower way, so 1004 (way 3) is the last of the first four to go.
func TestRevNATKeptForLiveFlow(t *testing.T) {
	e := newSmallEnv(t)
	e.add(lb.Service{Name: "web", VIP: netip.AddrPortFrom(vip4, 80), Proto: lb.TCP, Backends: []lb.Backend{be("10.199.1.2:8080")}})
	backend, service := ap("10.199.1.2:8080"), netip.AddrPortFrom(vip4, 80)
	send := func(sp uint16) { e.run(pktSpec{src: client4, dst: vip4, sport: sp, dport: 80, proto: 6}.bytes()) }
	for sp := uint16(1001); sp <= 1004; sp++ {
		send(sp) // clock 1-4
	}
	stale, spills := e.stat("rnat_stale"), e.stat("rnat_spill")
	send(1005) // clock 5: 1001 goes, 4 inserts old: stale
	send(1004) // a packet after an insert: 1004 is in use from now on
	send(1006) // 1002 goes, stale
	send(1007) // 1003 goes, stale
	send(1008) // 1005 (way 0) and 1004 both last used at 5: 1005 goes, 3 inserts old
	send(1009) // 1004 goes, 4 inserts old, but in use
	if got := e.inSet(); got[1004] || len(got) != 4 {
		t.Fatalf("the set holds %v, want 1006-1009", got)
	}
	if n := e.stat("rnat_stale") - stale; n != 3 {
		t.Errorf("%d entries dropped as stale, want 3 (1001-1003)", n)
	}
	if n := e.stat("rnat_spill") - spills; n != 2 {
		t.Errorf("%d entries spilled, want 2 (1005, 1004)", n)
	}
	for sp, want := range map[uint16]netip.AddrPort{1001: backend, 1004: service, 1005: service, 1009: service} {
		if got := e.reply(backend, netip.AddrPortFrom(client4, sp), 6); got != want {
			t.Errorf("reply of %d leaves from %v, want %v", sp, got, want)
		}
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

// TestRevNATTornEntryIsAMiss gives the entry of a NAT flow a service that
// its check word was not computed for (what a reader sees in the middle of
// a concurrent write): the reply must leave untranslated. Restoring the
// entry translates it again.
func TestRevNATTornEntryIsAMiss(t *testing.T) {
	e := newSmallEnv(t)
	e.add(lb.Service{Name: "web", VIP: netip.AddrPortFrom(vip4, 80), Proto: lb.TCP, Backends: []lb.Backend{be("10.199.1.2:8080")}})
	backend, client := ap("10.199.1.2:8080"), netip.AddrPortFrom(client4, 2000)
	e.run(pktSpec{src: client4, dst: vip4, sport: 2000, dport: 80, proto: 6}.bytes())
	s := e.flowSet()
	way := -1
	for i := range s.Way {
		if s.Head.Tag[i] != 0 {
			way = i
		}
	}
	if way < 0 {
		t.Fatal("flow not recorded")
	}
	good := s
	s.Way[way].Service++
	for _, c := range []struct {
		name string
		set  bpflb.FlowSet
		want netip.AddrPort
	}{
		{"torn", s, backend},
		{"restored", good, netip.AddrPortFrom(vip4, 80)},
	} {
		if err := e.obj.Flows().Put(uint32(0), c.set); err != nil {
			t.Fatal(err)
		}
		if got := e.reply(backend, client, 6); got != c.want {
			t.Fatalf("%s entry: reply leaves from %v, want %v", c.name, got, c.want)
		}
	}
}

// The check words of an older qbo's tables (lb_flow_check, lb_rnat_check
// in lb.c).
func flowCheck(tag, backend, service uint32) uint32 {
	return tag ^ backend*0x9e3779b1 ^ service*0x85ebca77
}

func revNATCheck(tag uint32, v bpflb.RevNATVal) uint32 {
	a := v.Vip[0] ^ bits.RotateLeft32(v.Vip[1], 8) ^ bits.RotateLeft32(v.Vip[2], 16) ^ bits.RotateLeft32(v.Vip[3], 24)
	return tag ^ a*0x9e3779b1 ^ uint32(v.Vport)*0x85ebca77
}

// pinOld pins an older qbo's table name in pin, as that qbo created it:
// lb_flows2 and lb_rnat2 (arrays of 8 sets), lb_rnat (an LRU hash).
func pinOld(t *testing.T, pin, name string) *ebpf.Map {
	t.Helper()
	spec := &ebpf.MapSpec{Name: name, Type: ebpf.Array, KeySize: 4, MaxEntries: 8, Flags: 1 << 10, Pinning: ebpf.PinByName}
	switch name {
	case "lb_flows2":
		spec.ValueSize = 256
	case "lb_rnat2":
		spec.ValueSize = 320
	case "lb_rnat":
		spec = &ebpf.MapSpec{Name: name, Type: ebpf.LRUHash, KeySize: 40, ValueSize: 20,
			MaxEntries: 1024, Flags: 2 /* BPF_F_NO_COMMON_LRU */, Pinning: ebpf.PinByName}
	}
	m, err := ebpf.NewMapWithOptions(spec, ebpf.MapOptions{PinPath: pin})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// flows lists the flow table's entries whose tag is set.
func (e *env) flows() []bpflb.FlowEnt {
	e.t.Helper()
	var out []bpflb.FlowEnt
	var s bpflb.FlowSet
	for i := range e.obj.Flows().MaxEntries() {
		if err := e.obj.Flows().Lookup(i, &s); err != nil {
			e.t.Fatal(err)
		}
		for w := range s.Way {
			if s.Head.Tag[w] != 0 {
				out = append(out, s.Way[w])
			}
		}
	}
	return out
}

// TestUpgradeCopiesOldTables loads over a pin directory that holds an
// older qbo's flow table (lb_flows2) and reverse-NAT tables (lb_rnat2 and
// the older lb_rnat): its intact flows are copied into lb_flows3, where
// the new lb_revnat also finds their replies; replies whose flow the old
// flow table no longer held go to lb_rnat_spill; what lb_flows3 already
// holds keeps its entry; a torn entry is not copied; the old pins are
// removed. The second case goes through Load (copy, attach to no uplink,
// copy again), the first through LoadUnattached.
func TestUpgradeCopiesOldTables(t *testing.T) {
	backend := ap("10.199.1.2:8080")
	both := netip.AddrPortFrom(client4, 6000)    // in lb_flows3 and lb_rnat
	oldFlow := netip.AddrPortFrom(client4, 7000) // in lb_flows2 only
	torn := netip.AddrPortFrom(client4, 7001)    // in lb_flows2, check wrong
	fromRnat := netip.AddrPortFrom(client4, 5555)
	fromRnat2 := netip.AddrPortFrom(client4, 5556)
	for _, c := range []struct {
		name string
		load func(bpflb.Options) (*bpflb.Objects, error)
	}{
		{"unattached", bpflb.LoadUnattached},
		{"load", bpflb.Load},
	} {
		t.Run(c.name, func(t *testing.T) {
			pin := tempPin(t)
			// A NAT flow recorded by the new lb_xdp before the copy (as
			// after the first copy in Load); its entry names the IDs.
			e := loadEnv(t, bpflb.Options{PinDir: pin, FlowEntries: 64 * bpflb.FlowWays})
			e.add(lb.Service{Name: "web", VIP: netip.AddrPortFrom(vip4, 80), Proto: lb.TCP, Backends: []lb.Backend{be(backend.String())}})
			e.run(pktSpec{src: client4, dst: vip4, sport: both.Port(), dport: 80, proto: 6}.bytes())
			recorded := e.flows()
			if len(recorded) != 1 {
				t.Fatalf("%d flows recorded, want 1", len(recorded))
			}
			bid, sid := recorded[0].Backend, recorded[0].Service
			e.obj.Close()

			var fs bpflb.FlowSet
			for w, sp := range []uint16{oldFlow.Port(), torn.Port()} {
				tag := uint32(0x1000*w) | 1
				fs.Head.Tag[w] = tag
				fs.Head.Check[w] = flowCheck(tag, bid, sid)
				fs.Way[w] = bpflb.FlowEnt{Key: bpflb.FlowKey{Saddr: Addr4(client4), Daddr: Addr4(vip4),
					Sport: Port(sp), Dport: Port(80), Proto: 6, Family: 4}, Backend: bid, Service: sid}
			}
			fs.Head.Check[1]++ // torn
			if err := pinOld(t, pin, "lb_flows2").Put(uint32(3), fs); err != nil {
				t.Fatal(err)
			}
			var rs bpflb.RevNATSet
			rs.Head.Tag[2] = 0x4321
			rs.Way[2] = bpflb.RevNATEnt{Key: replyKey(backend, fromRnat2, 6), Val: revNATVal(ap("10.199.100.8:443"))}
			rs.Head.Check[2] = revNATCheck(rs.Head.Tag[2], rs.Way[2].Val)
			if err := pinOld(t, pin, "lb_rnat2").Put(uint32(5), rs); err != nil {
				t.Fatal(err)
			}
			rn := pinOld(t, pin, "lb_rnat")
			for k, v := range map[bpflb.FlowKey]bpflb.RevNATVal{
				replyKey(backend, fromRnat, 6): revNATVal(ap("10.199.100.7:443")),
				replyKey(backend, both, 6):     revNATVal(ap("10.199.100.9:99")),
				replyKey(backend, oldFlow, 6):  revNATVal(ap("10.199.100.9:98")),
			} {
				if err := rn.Put(k, v); err != nil {
					t.Fatal(err)
				}
			}

			obj, err := c.load(bpflb.Options{PinDir: pin})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { obj.Close() })
			if got, ok := obj.Upgraded(); !ok || got != (bpflb.UpgradeCopy{Flows: 1, Replies: 2}) {
				t.Fatalf("copied %+v (ok %v), want 1 flow and 2 replies", got, ok)
			}
			for _, name := range []string{"lb_flows2", "lb_rnat2", "lb_rnat"} {
				if _, err := os.Stat(filepath.Join(pin, name)); !errors.Is(err, os.ErrNotExist) {
					t.Fatalf("%s still pinned: %v", name, err)
				}
			}
			e = &env{t: t, obj: obj, dp: New(obj), state: lb.NewState()}
			if n := len(e.flows()); n != 2 {
				t.Errorf("lb_flows3 holds %d flows, want 2 (%v, %v)", n, both, oldFlow)
			}
			for client, want := range map[netip.AddrPort]netip.AddrPort{
				both:      netip.AddrPortFrom(vip4, 80), // lb_flows3's own entry wins
				oldFlow:   netip.AddrPortFrom(vip4, 80), // its copied flow entry
				fromRnat:  ap("10.199.100.7:443"),
				fromRnat2: ap("10.199.100.8:443"),
				torn:      backend,
			} {
				if got := e.reply(backend, client, 6); got != want {
					t.Errorf("reply to %v leaves from %v, want %v", client, got, want)
				}
			}

			obj2, err := c.load(bpflb.Options{PinDir: pin})
			if err != nil {
				t.Fatal(err)
			}
			defer obj2.Close()
			if _, ok := obj2.Upgraded(); ok {
				t.Fatal("a second load found old tables again")
			}
		})
	}
}

// TestLoadKeepsPinnedTableSizes loads over a flow table pinned with a size
// that differs from the options': it is reused at its size. A new flow
// table that replaces an older qbo's lb_flows2 takes that table's size.
func TestLoadKeepsPinnedTableSizes(t *testing.T) {
	pin := tempPin(t)
	e := loadEnv(t, bpflb.Options{PinDir: pin, FlowEntries: 8 * bpflb.FlowWays})
	e.obj.Close()
	e = loadEnv(t, bpflb.Options{PinDir: pin})
	if f := e.obj.Flows().MaxEntries(); f != 8 {
		t.Fatalf("flow table has %d sets, want 8", f)
	}
	// The programs use every set: flows spread over more than one, and
	// each reply finds its flow's set.
	e.add(lb.Service{Name: "web", VIP: netip.AddrPortFrom(vip4, 80), Proto: lb.TCP, Backends: []lb.Backend{be("10.199.1.2:8080")}})
	for sp := uint16(1000); sp < 1016; sp++ {
		e.run(pktSpec{src: client4, dst: vip4, sport: sp, dport: 80, proto: 6}.bytes())
		if got := e.reply(ap("10.199.1.2:8080"), netip.AddrPortFrom(client4, sp), 6); got != netip.AddrPortFrom(vip4, 80) {
			t.Fatalf("reply of %d leaves from %v", sp, got)
		}
	}
	used := 0
	for i := range uint32(8) {
		var s bpflb.FlowSet
		if err := e.obj.Flows().Lookup(i, &s); err != nil {
			t.Fatal(err)
		}
		if s.Head.Tag != [4]uint32{} {
			used++
		}
	}
	if used < 2 {
		t.Fatalf("16 flows use %d sets", used)
	}

	pin = tempPin(t)
	if err := os.MkdirAll(pin, 0o700); err != nil {
		t.Fatal(err)
	}
	pinOld(t, pin, "lb_flows2")
	e = loadEnv(t, bpflb.Options{PinDir: pin, FlowEntries: 1024})
	if f := e.obj.Flows().MaxEntries(); f != 8 {
		t.Fatalf("flow table replacing lb_flows2 has %d sets, want its 8", f)
	}
}
