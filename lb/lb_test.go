package lb

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"path/filepath"
	"reflect"
	"testing"
)

func backends(n int, weight func(i int) uint32) []Backend {
	var bs []Backend
	for i := range n {
		bs = append(bs, Backend{
			Addr:   netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 199, byte(i >> 8), byte(i)}), 80),
			Weight: weight(i), ID: uint32(i + 1),
		})
	}
	return bs
}

func TestMaglevWeightedShares(t *testing.T) {
	for _, tc := range []struct {
		n int
		w func(int) uint32
	}{
		{3, func(int) uint32 { return 1 }},
		{3, func(i int) uint32 { return uint32(i + 1) }},
		{10, func(i int) uint32 { return uint32(1 + i%3) }},
		{100, func(int) uint32 { return 1 }},
	} {
		bs := backends(tc.n, tc.w)
		m := TableSizeFor(tc.n, 0)
		tab := Maglev(bs, m)
		count := map[uint32]int{}
		for _, id := range tab {
			count[id]++
		}
		var total uint32
		for _, b := range bs {
			total += b.Weight
		}
		for _, b := range bs {
			want := float64(m) * float64(b.Weight) / float64(total)
			got := float64(count[b.ID])
			if d := (got - want) / want; d > 0.05 || d < -0.05 {
				t.Errorf("n=%d m=%d backend %d weight %d: %v slots, want %.1f", tc.n, m, b.ID, b.Weight, got, want)
			}
		}
	}
}

func TestMaglevRemovalMovesLittle(t *testing.T) {
	bs := backends(10, func(int) uint32 { return 1 })
	m := uint32(1021)
	before := Maglev(bs, m)
	after := Maglev(append(append([]Backend{}, bs[:3]...), bs[4:]...), m)
	moved := 0
	for i := range before {
		if before[i] != bs[3].ID && before[i] != after[i] {
			moved++
		}
		if after[i] == bs[3].ID {
			t.Fatalf("slot %d still on removed backend", i)
		}
	}
	// Slots of remaining backends that moved anyway: Maglev bounds this
	// to a few percent of the table.
	if frac := float64(moved) / float64(m); frac > 0.05 {
		t.Errorf("%.3f of slots of remaining backends moved", frac)
	}
}

func TestMaglevIndependentOfOrderAndIDsFollow(t *testing.T) {
	bs := backends(5, func(int) uint32 { return 1 })
	rev := []Backend{bs[4], bs[3], bs[2], bs[1], bs[0]}
	if !reflect.DeepEqual(Maglev(bs, 251), Maglev(rev, 251)) {
		t.Fatal("table depends on backend order")
	}
}

func TestTableSizeFor(t *testing.T) {
	for _, m := range TableSizes {
		if !IsPrime(m) {
			t.Errorf("%d is not prime", m)
		}
	}
	if got := TableSizeFor(3, 0); got < 300 {
		t.Errorf("TableSizeFor(3) = %d", got)
	}
	if got := TableSizeFor(MaxBackends, 0); uint64(got) < 100*MaxBackends {
		t.Errorf("TableSizeFor(max) = %d", got)
	}
}

func TestStateReconcileConverges(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	s := NewState()
	actual := NewTables()
	perService := NewTables() // programmed one changed service at a time
	for step := range 300 {
		name := fmt.Sprintf("svc%d", rng.IntN(8))
		before := s.Services[name]
		switch rng.IntN(4) {
		case 0:
			vip := netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 0, 0, byte(rng.IntN(8))}), 80)
			s.AddService(Service{Name: name, VIP: vip, Proto: TCP, Backends: backends(rng.IntN(4), func(int) uint32 { return 1 })})
		case 1:
			s.DeleteService(name)
		case 2:
			s.AddBackend(name, Backend{Addr: netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, 1, 0, byte(rng.IntN(16))}), 80)})
		case 3:
			if svc, ok := s.Services[name]; ok && len(svc.Backends) > 0 {
				s.DeleteBackend(name, svc.Backends[rng.IntN(len(svc.Backends))].Addr)
			}
		}
		want := s.Tables()
		ops := Diff(want, actual)
		actual.Apply(ops)
		if !reflect.DeepEqual(normal(want), normal(actual)) {
			t.Fatalf("step %d: tables differ after applying %v", step, ops)
		}
		perService.Apply(Order(Diff(ServiceTables(s.Services[name]), ServiceTables(before))))
		if !reflect.DeepEqual(normal(want), normal(perService)) {
			t.Fatalf("step %d: per-service diffs diverge from the desired tables", step)
		}
		if again := Diff(want, actual); len(again) != 0 {
			t.Fatalf("step %d: second diff not empty: %v", step, again)
		}
	}
}

func normal(t Tables) Tables {
	for k, v := range t.Maglev {
		if len(v) == 0 {
			t.Maglev[k] = nil
		}
	}
	return t
}

func TestDeleteBackendDrainsAndReAddKeepsID(t *testing.T) {
	s := NewState()
	svc, err := s.AddService(Service{Name: "web", VIP: netip.MustParseAddrPort("10.0.0.1:80"), Proto: TCP, Backends: backends(3, func(int) uint32 { return 1 })})
	if err != nil {
		t.Fatal(err)
	}
	id := svc.Backends[1].ID
	if _, _, err := s.DeleteBackend("web", svc.Backends[1].Addr); err != nil {
		t.Fatal(err)
	}
	tab := s.Tables()
	if tab.Backends[id].Flags&BackendDraining == 0 {
		t.Fatal("deleted backend not draining")
	}
	for _, slot := range tab.Maglev[svc.ID] {
		if slot == id {
			t.Fatal("draining backend still in maglev table")
		}
	}
	got, err := s.AddBackend("web", svc.Backends[1])
	if err != nil {
		t.Fatal(err)
	}
	if got.Backends[len(got.Backends)-1].ID != id {
		t.Fatal("re-added backend got a new ID")
	}
}

func TestValidation(t *testing.T) {
	s := NewState()
	bad := []Service{
		{Name: "", VIP: netip.MustParseAddrPort("10.0.0.1:80"), Proto: TCP},
		{Name: "a", VIP: netip.MustParseAddrPort("10.0.0.1:0"), Proto: TCP},
		{Name: "a", VIP: netip.MustParseAddrPort("10.0.0.1:80"), Proto: 1},
		{Name: "a", VIP: netip.MustParseAddrPort("10.0.0.1:80"), Proto: TCP, Backends: []Backend{{Addr: netip.MustParseAddrPort("[fd00::1]:80")}}},
		{Name: "a", VIP: netip.MustParseAddrPort("10.0.0.1:80"), Proto: TCP, Mode: ModeDSR, Backends: []Backend{{Addr: netip.MustParseAddrPort("10.0.0.2:81")}}},
	}
	for _, b := range bad {
		if _, err := s.AddService(b); err == nil {
			t.Errorf("%+v accepted", b)
		}
	}
	if _, err := ParseBackend("10.0.0.1:80@0"); err == nil {
		t.Error("weight 0 accepted")
	}
	if b, err := ParseBackend("10.0.0.1:80@7"); err != nil || b.Weight != 7 {
		t.Errorf("ParseBackend: %v %v", b, err)
	}
	if ap, p, err := ParseVIP("[fd00::1]:53/udp"); err != nil || p != UDP || ap.Port() != 53 {
		t.Errorf("ParseVIP: %v %v %v", ap, p, err)
	}
}

func TestSaveLoadRoundTrip(t *testing.T) {
	s := NewState()
	if _, err := s.AddService(Service{Name: "web", VIP: netip.MustParseAddrPort("10.0.0.1:80"), Proto: TCP, Backends: backends(3, func(int) uint32 { return 2 })}); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "lb.json")
	if err := s.Save(path); err != nil {
		t.Fatal(err)
	}
	got, err := LoadState(path)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got.Tables(), s.Tables()) {
		t.Fatal("tables differ after round trip")
	}
}
