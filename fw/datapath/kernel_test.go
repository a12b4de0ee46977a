//go:build bpftest

package datapath

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"

	bpffw "github.com/qbo/qbo/bpf/fw"
	bpflb "github.com/qbo/qbo/bpf/lb"
	"github.com/qbo/qbo/fw"
	"github.com/qbo/qbo/fw/fwtest"
	"github.com/qbo/qbo/internal/netnstest"
)

// The bpftest tier loads bpf/fw into the running kernel and drives its
// programs with BPF_PROG_TEST_RUN on crafted packets. It needs root:
//
//	go test -tags bpftest ./fw/datapath/

const (
	next = bpffw.VerdictNext
	drop = bpffw.VerdictDrop
)

func randHex() string {
	b := make([]byte, 5)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// env is a loaded firewall in a fresh pin dir, with two interfaces (a veth pair)
// in a private network namespace that the test goroutine's thread enters
// (BPF_PROG_TEST_RUN resolves the context's ifindex in the caller's netns).
type env struct {
	t      testing.TB
	f      *bpffw.Firewall
	dp     *Datapath
	ifidx  map[string]int
	events *ebpf.Map
	ns     string
	dir    string // the pin directory
}

// newEnv loads the firewall into a fresh pin directory; before (if any)
// runs on the empty directory first (to leave what an older qbod left).
func newEnv(t testing.TB, before ...func(dir string)) *env {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("the bpftest tier loads BPF programs and needs root (euid 0)")
	}
	dir := filepath.Join("/sys/fs/bpf", "qbo-test-"+randHex())
	t.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			t.Errorf("removing %s: %v", dir, err)
		}
	})
	if len(before) > 0 {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		for _, f := range before {
			f(dir)
		}
	}
	f, err := bpffw.Load(bpffw.Options{PinDir: dir})
	if err != nil {
		t.Fatalf("loading: %v", err)
	}
	t.Cleanup(func() { f.Close() })
	events, err := ebpf.LoadPinnedMap(filepath.Join(dir, "events"), nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { events.Close() })

	ns := netnstest.New(t)
	// No dummy driver here: a veth pair gives two interfaces just as well.
	sh(t, "ip", "-n", ns, "link", "add", "d0", "type", "veth", "peer", "name", "d1")
	var links []struct {
		Ifindex int    `json:"ifindex"`
		Name    string `json:"ifname"`
	}
	if err := json.Unmarshal([]byte(sh(t, "ip", "-n", ns, "-j", "link", "show")), &links); err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, f: f, dp: New(f.Maps()), ifidx: map[string]int{}, events: events, ns: ns, dir: dir}
	for _, l := range links {
		e.ifidx[l.Name] = l.Ifindex
	}
	netnstest.Enter(t, ns)
	return e
}

func sh(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func (e *env) resolve(name string) (int, error) {
	if i, ok := e.ifidx[name]; ok {
		return i, nil
	}
	return 0, fmt.Errorf("no interface %q", name)
}

func (e *env) apply(s fw.RuleSet, res fw.Resolved) *fw.Compiled {
	e.t.Helper()
	c, err := fw.Compile(s, res, Limits)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := e.dp.Apply(c, e.resolve, s.Reevaluate); err != nil {
		e.t.Fatal(err)
	}
	return c
}

// skbCtx is the prefix of struct __sk_buff up to ifindex.
type skbCtx struct {
	Len, PktType, Mark, QueueMapping, Protocol, VlanPresent, VlanTCI, VlanProto, Priority, IngressIfindex, Ifindex uint32
}

// xdpCtx is struct xdp_md.
type xdpCtx struct {
	Data, DataEnd, DataMeta, IngressIfindex, RxQueueIndex, EgressIfindex uint32
}

// minSKBFrame is the shortest frame BPF_PROG_TEST_RUN accepts for an skb
// program on this kernel; shorter ones go through fw_xdp_ingress, which
// runs the same judgement.
const minSKBFrame = 54

func (e *env) run(hook fw.Direction, iface string, frame []byte) uint32 {
	e.t.Helper()
	if len(frame) < minSKBFrame {
		if hook != fw.Ingress {
			e.t.Fatalf("a %d-byte frame can only be tested at ingress", len(frame))
		}
		ret, err := e.f.Programs().FwXdpIngress.Run(&ebpf.RunOptions{Data: frame,
			Context: xdpCtx{DataEnd: uint32(len(frame)), IngressIfindex: uint32(e.ifidx[iface])}})
		if err != nil {
			e.t.Fatalf("running XDP ingress on %d bytes: %v", len(frame), err)
		}
		switch ret {
		case 2: // XDP_PASS
			return next
		case 1: // XDP_DROP
			return drop
		}
		return ret + 1000
	}
	prog := e.f.Programs().FwIngress
	if hook == fw.Egress {
		prog = e.f.Programs().FwEgress
	}
	ret, err := prog.Run(&ebpf.RunOptions{Data: frame, Context: skbCtx{Ifindex: uint32(e.ifidx[iface])}})
	if err != nil {
		e.t.Fatalf("running %s on %d bytes: %v", hook, len(frame), err)
	}
	return ret
}

func (e *env) stats() map[string]uint64 {
	e.t.Helper()
	s, err := e.dp.Stats()
	if err != nil {
		e.t.Fatal(err)
	}
	return s
}

func (e *env) statsSum() uint64 {
	var n uint64
	for _, v := range e.stats() {
		n += v
	}
	return n
}

var (
	a     = netip.MustParseAddr
	pfx   = netip.MustParsePrefix
	hostA = a("10.198.1.7")
	hostB = a("10.198.2.9")
	six1  = a("fd00:198::7")
	six2  = a("fd00:198::8000:0:0:1")
)

func verdictName(v uint32) string {
	switch v {
	case next:
		return "next"
	case drop:
		return "drop"
	}
	return fmt.Sprint(v)
}

func TestEveryRuleField(t *testing.T) {
	e := newEnv(t)
	s := fw.RuleSet{
		Rules: []fw.Rule{
			{Name: "src4", Priority: 1, Action: fw.Deny, Src: pfx("10.198.3.0/24")},
			{Name: "dst4", Priority: 2, Action: fw.Deny, Dst: pfx("10.198.4.0/24")},
			{Name: "src6", Priority: 3, Action: fw.Deny, Src: pfx("fd00:198:3::/48")},
			{Name: "dst6", Priority: 4, Action: fw.Deny, Dst: pfx("fd00:198:4::/48")},
			{Name: "allow-port-in-range", Priority: 5, Action: fw.Allow, Proto: fw.ProtoTCP, Ports: fw.PortRange{Lo: 8081, Hi: 8081}},
			{Name: "tcp-range", Priority: 6, Action: fw.Deny, Proto: fw.ProtoTCP, Ports: fw.PortRange{Lo: 8000, Hi: 8100}},
			{Name: "udp53", Priority: 7, Action: fw.Deny, Proto: fw.ProtoUDP, Ports: fw.PortRange{Lo: 53, Hi: 53}},
			{Name: "icmp", Priority: 8, Action: fw.Deny, Proto: fw.ProtoICMP},
			{Name: "egress-only", Priority: 9, Action: fw.Deny, Direction: fw.Egress, Proto: fw.ProtoUDP, Ports: fw.PortRange{Lo: 9999, Hi: 9999}},
			{Name: "d1-only", Priority: 10, Action: fw.Deny, Target: fw.Target{Kind: fw.TargetIface, Name: "d1"}, Proto: fw.ProtoUDP, Ports: fw.PortRange{Lo: 7777, Hi: 7777}},
			{Name: "logged", Priority: 11, Action: fw.Deny, Log: true, Proto: fw.ProtoTCP, Ports: fw.PortRange{Lo: 22, Hi: 22}},
		},
		Policies: []fw.Policy{{Target: fw.Target{Kind: fw.TargetIface, Name: "d1"}, Direction: fw.Ingress, Action: fw.Deny}},
	}
	res := fw.Resolved{fw.Node: {"d0"}}
	c := e.apply(s, res)

	cases := []struct {
		name  string
		hook  fw.Direction
		iface string
		p     tpkt
		want  uint32
	}{
		{"src4 in prefix", fw.Ingress, "d0", tpkt{src: a("10.198.3.5"), dst: hostB, proto: 17, sport: 1, dport: 1}, drop},
		{"src4 outside prefix", fw.Ingress, "d0", tpkt{src: a("10.198.5.5"), dst: hostB, proto: 17, sport: 2, dport: 1}, next},
		{"dst4", fw.Ingress, "d0", tpkt{src: hostA, dst: a("10.198.4.200"), proto: 17, sport: 3, dport: 1}, drop},
		{"src6", fw.Ingress, "d0", tpkt{src: a("fd00:198:3::1"), dst: six2, proto: 17, sport: 4, dport: 1}, drop},
		{"src6 outside", fw.Ingress, "d0", tpkt{src: a("fd00:198:5::1"), dst: six2, proto: 17, sport: 5, dport: 1}, next},
		{"dst6", fw.Ingress, "d0", tpkt{src: six1, dst: a("fd00:198:4::9"), proto: 17, sport: 6, dport: 1}, drop},
		{"tcp range low edge", fw.Ingress, "d0", tpkt{src: hostA, dst: hostB, proto: 6, sport: 7, dport: 8000}, drop},
		{"tcp range high edge", fw.Ingress, "d0", tpkt{src: hostA, dst: hostB, proto: 6, sport: 8, dport: 8100}, drop},
		{"tcp below range", fw.Ingress, "d0", tpkt{src: hostA, dst: hostB, proto: 6, sport: 9, dport: 7999}, next},
		{"tcp above range", fw.Ingress, "d0", tpkt{src: hostA, dst: hostB, proto: 6, sport: 10, dport: 8101}, next},
		{"higher priority allow inside range", fw.Ingress, "d0", tpkt{src: hostA, dst: hostB, proto: 6, sport: 11, dport: 8081}, next},
		{"udp in tcp range is not tcp", fw.Ingress, "d0", tpkt{src: hostA, dst: hostB, proto: 17, sport: 12, dport: 8050}, next},
		{"udp53", fw.Ingress, "d0", tpkt{src: hostA, dst: hostB, proto: 17, sport: 13, dport: 53}, drop},
		{"tcp53 is not udp", fw.Ingress, "d0", tpkt{src: hostA, dst: hostB, proto: 6, sport: 14, dport: 53}, next},
		{"icmp4 echo", fw.Ingress, "d0", tpkt{src: hostA, dst: hostB, proto: 1, icmpType: 8}, drop},
		{"icmp6 echo", fw.Ingress, "d0", tpkt{src: six1, dst: six2, proto: 58, icmpType: 128}, drop},
		{"other proto", fw.Ingress, "d0", tpkt{src: hostA, dst: hostB, proto: 47}, next},
		{"egress rule on egress", fw.Egress, "d0", tpkt{src: hostA, dst: hostB, proto: 17, sport: 15, dport: 9999}, drop},
		{"egress rule not on ingress", fw.Ingress, "d0", tpkt{src: hostA, dst: hostB, proto: 17, sport: 16, dport: 9999}, next},
		{"iface rule on d1", fw.Egress, "d1", tpkt{src: hostA, dst: hostB, proto: 17, sport: 17, dport: 7777}, next},
		{"iface rule not on d0", fw.Ingress, "d0", tpkt{src: hostA, dst: hostB, proto: 17, sport: 18, dport: 7777}, next},
		{"d1 default deny ingress", fw.Ingress, "d1", tpkt{src: hostA, dst: hostB, proto: 17, sport: 19, dport: 1234}, drop},
		{"d1 egress default allow", fw.Egress, "d1", tpkt{src: hostA, dst: hostB, proto: 17, sport: 20, dport: 1234}, next},
		{"unattached lo", fw.Ingress, "lo", tpkt{src: a("10.198.3.5"), dst: hostB, proto: 17, sport: 21, dport: 1}, next},
		{"logged deny", fw.Ingress, "d0", tpkt{src: hostA, dst: hostB, proto: 6, sport: 22, dport: 22}, drop},
	}
	for _, tc := range cases {
		p := fw.Packet{Iface: tc.iface, Hook: tc.hook, Src: tc.p.src, Dst: tc.p.dst, Proto: tc.p.proto, DPort: tc.p.dport}
		if tc.iface == "lo" {
			p.Iface = "lo"
		}
		model := fw.Evaluate(&s, res, p)
		wantModel := uint32(next)
		if model.Action == fw.Deny {
			wantModel = drop
		}
		if wantModel != tc.want {
			t.Errorf("%s: the table disagrees with the reference model (%+v)", tc.name, model)
		}
		if got := e.run(tc.hook, tc.iface, tc.p.build()); got != tc.want {
			t.Errorf("%s: got %s, want %s", tc.name, verdictName(got), verdictName(tc.want))
		}
	}
	_ = c

	cnt, err := e.dp.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if cnt["src4"].Packets != 1 || cnt["tcp-range"].Packets != 2 || cnt["icmp"].Packets != 2 || cnt["src4"].Bytes == 0 {
		t.Errorf("counters: %+v", cnt)
	}

	// The logged deny went through the ring as one decodable record.
	rd, err := ringbuf.NewReader(e.events)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	// The record is in the ring already (prog.Run wrote it), so a
	// deadline only turns a missing record into a failure instead of a
	// test that waits forever.
	rd.SetDeadline(time.Now().Add(5 * time.Second))
	rec, err := rd.Read()
	if err != nil {
		t.Fatalf("reading the logged deny: %v", err)
	}
	d, err := e.dp.Decode(rec.RawSample)
	if err != nil {
		t.Fatal(err)
	}
	want := Deny{Rule: "logged", Iface: "d0", Hook: fw.Ingress, Proto: 6,
		Src: netip.AddrPortFrom(hostA, 22), Dst: netip.AddrPortFrom(hostB, 22)}
	d.BootNS, d.Ifindex, d.Len = 0, 0, 0
	if d != want {
		t.Errorf("deny event: got %+v, want %+v", d, want)
	}
	if rd.AvailableBytes() != 0 {
		t.Errorf("more records than the one logged deny")
	}
}

func TestStatefulRepliesAndRelatedICMP(t *testing.T) {
	e := newEnv(t)
	s := fw.RuleSet{Policies: []fw.Policy{{Target: fw.Node, Direction: fw.Ingress, Action: fw.Deny}}}
	res := fw.Resolved{fw.Node: {"d0"}}
	e.apply(s, res)

	out := tpkt{src: hostA, dst: hostB, proto: 6, sport: 40000, dport: 80}
	in := tpkt{src: hostB, dst: hostA, proto: 6, sport: 80, dport: 40000}
	if got := e.run(fw.Ingress, "d0", in.build()); got != drop {
		t.Fatalf("unsolicited inbound: %s", verdictName(got))
	}
	if got := e.run(fw.Egress, "d0", out.build()); got != next {
		t.Fatalf("outbound: %s", verdictName(got))
	}
	if got := e.run(fw.Ingress, "d0", in.build()); got != next {
		t.Fatalf("reply: %s", verdictName(got))
	}
	// An ICMP error about the outbound flow, from a router in between.
	icmpErr := tpkt{src: a("10.198.9.1"), dst: hostA, proto: 1, icmpType: 3, inner: out.quote()}
	if got := e.run(fw.Ingress, "d0", icmpErr.build()); got != next {
		t.Fatalf("related ICMP error: %s", verdictName(got))
	}
	unrelated := tpkt{src: a("10.198.9.1"), dst: hostA, proto: 1, icmpType: 3,
		inner: tpkt{src: hostA, dst: hostB, proto: 6, sport: 40001, dport: 80}.quote()}
	if got := e.run(fw.Ingress, "d0", unrelated.build()); got != drop {
		t.Fatalf("unrelated ICMP error: %s", verdictName(got))
	}
	// IPv6 too, with ICMPv6 packet-too-big.
	out6 := tpkt{src: six1, dst: six2, proto: 17, sport: 5000, dport: 53}
	if got := e.run(fw.Egress, "d0", out6.build()); got != next {
		t.Fatal(verdictName(got))
	}
	if got := e.run(fw.Ingress, "d0", tpkt{src: six2, dst: six1, proto: 17, sport: 53, dport: 5000}.build()); got != next {
		t.Fatalf("v6 reply: %s", verdictName(got))
	}
	ptb := tpkt{src: a("fd00:198::1"), dst: six1, proto: 58, icmpType: 2, inner: out6.quote()}
	if got := e.run(fw.Ingress, "d0", ptb.build()); got != next {
		t.Fatalf("related ICMPv6: %s", verdictName(got))
	}
	st := e.stats()
	if st["ct_reply"] != 2 || st["icmp_related"] != 2 || st["default_deny"] != 2 {
		t.Errorf("stats: %v", st)
	}

	// A new rule set denying the flow's port: established flows keep going
	// unless re-evaluation is on.
	s.Rules = []fw.Rule{{Name: "no-http-out", Action: fw.Deny, Direction: fw.Egress, Proto: fw.ProtoTCP, Ports: fw.PortRange{Lo: 80, Hi: 80}}}
	e.apply(s, res)
	if got := e.run(fw.Egress, "d0", out.build()); got != next {
		t.Fatalf("established after rule change: %s", verdictName(got))
	}
	fresh := tpkt{src: hostA, dst: hostB, proto: 6, sport: 40002, dport: 80}
	if got := e.run(fw.Egress, "d0", fresh.build()); got != drop {
		t.Fatalf("new flow after rule change: %s", verdictName(got))
	}
	s.Reevaluate = true
	e.apply(s, res)
	if got := e.run(fw.Ingress, "d0", in.build()); got != drop {
		t.Fatalf("reply with re-evaluation: %s", verdictName(got))
	}
	if got := e.run(fw.Egress, "d0", out.build()); got != drop {
		t.Fatalf("established with re-evaluation (entry was removed): %s", verdictName(got))
	}
	if st := e.stats(); st["reeval_deny"] != 1 {
		t.Errorf("reeval_deny: %v", st)
	}
}

func TestLaterFragmentsFollowTheFirst(t *testing.T) {
	e := newEnv(t)
	s := fw.RuleSet{Rules: []fw.Rule{{Name: "no-udp-53", Action: fw.Deny, Proto: fw.ProtoUDP, Ports: fw.PortRange{Lo: 53, Hi: 53}}}}
	e.apply(s, fw.Resolved{fw.Node: {"d0"}})
	for _, fam := range [][2]netip.Addr{{hostA, hostB}, {six1, six2}} {
		allowedFirst := tpkt{src: fam[0], dst: fam[1], proto: 17, sport: 1000, dport: 54, moreFrags: true, fragID: 7, payload: 32}
		allowedLater := allowedFirst
		allowedLater.fragOff = 5
		allowedLater.moreFrags = false
		deniedFirst := tpkt{src: fam[0], dst: fam[1], proto: 17, sport: 1000, dport: 53, moreFrags: true, fragID: 8, payload: 32}
		deniedLater := deniedFirst
		deniedLater.fragOff = 5
		orphan := deniedLater
		orphan.fragID = 99
		for _, c := range []struct {
			name string
			p    tpkt
			want uint32
		}{
			{"allowed first", allowedFirst, next}, {"allowed later", allowedLater, next},
			{"denied first", deniedFirst, drop}, {"denied later", deniedLater, drop},
			{"orphan later", orphan, drop},
		} {
			if got := e.run(fw.Ingress, "d0", c.p.build()); got != c.want {
				t.Errorf("%s %s: got %s, want %s", fam[0], c.name, verdictName(got), verdictName(c.want))
			}
		}
	}
	st := e.stats()
	if st["frag_allow"] != 2 || st["frag_deny"] != 2 || st["frag_orphan"] != 2 {
		t.Errorf("stats: %v", st)
	}
	// A fragmented datagram of a flow that is already tracked (its first
	// fragment passes by the connection table, without classification):
	// its later fragments follow it, in both directions of the flow.
	for _, fam := range [][2]netip.Addr{{hostA, hostB}, {six1, six2}} {
		open := tpkt{src: fam[0], dst: fam[1], proto: 17, sport: 2000, dport: 54}
		if got := e.run(fw.Ingress, "d0", open.build()); got != next {
			t.Fatalf("%s: opening datagram %s", fam[0], verdictName(got))
		}
		for i, dir := range [][2]netip.Addr{{fam[0], fam[1]}, {fam[1], fam[0]}} {
			sp, dp := uint16(2000), uint16(54)
			if i == 1 {
				sp, dp = dp, sp
			}
			first := tpkt{src: dir[0], dst: dir[1], proto: 17, sport: sp, dport: dp, moreFrags: true, fragID: uint32(20 + i), payload: 32}
			later := first
			later.fragOff, later.moreFrags = 5, false
			if got := e.run(fw.Ingress, "d0", first.build()); got != next {
				t.Errorf("%s dir %d: tracked first fragment %s", fam[0], i, verdictName(got))
			}
			if got := e.run(fw.Ingress, "d0", later.build()); got != next {
				t.Errorf("%s dir %d: later fragment of a tracked flow %s, want pass", fam[0], i, verdictName(got))
			}
		}
	}
}

// corpus is the malformed-input corpus: truncations of well-formed packets
// at every offset past Ethernet (BPF_PROG_TEST_RUN refuses less than an
// Ethernet header), bad IHL, bad version, IP options, fragments, IPv6
// extension header chains.
func corpus() map[string][]byte {
	out := map[string][]byte{}
	bases := map[string]tpkt{
		"tcp4":      {src: hostA, dst: hostB, proto: 6, sport: 1, dport: 2},
		"udp6":      {src: six1, dst: six2, proto: 17, sport: 1, dport: 2},
		"tcp4-opts": {src: hostA, dst: hostB, proto: 6, sport: 1, dport: 2, ipOpts: 12},
		"udp6-ext":  {src: six1, dst: six2, proto: 17, sport: 1, dport: 2, extHdrs: 3},
		"icmp4-err": {src: hostB, dst: hostA, proto: 1, icmpType: 3, inner: tpkt{src: hostA, dst: hostB, proto: 6, sport: 1, dport: 2}.quote()},
	}
	for name, p := range bases {
		full := p.build()
		out[name] = full
		for n := 14; n < len(full); n++ {
			out[fmt.Sprintf("%s-trunc-%d", name, n)] = full[:n]
		}
	}
	tcp4 := bases["tcp4"].build()
	for _, ihl := range []byte{0, 1, 4, 15} {
		b := append([]byte(nil), tcp4...)
		b[14] = 0x40 | ihl
		out[fmt.Sprintf("ihl-%d", ihl)] = b
	}
	short := append([]byte(nil), tcp4...)
	binary.BigEndian.PutUint16(short[16:], 10) // tot_len < IHL*4
	out["totlen-short"] = short
	v6in4 := append([]byte(nil), tcp4...)
	v6in4[14] = 0x65
	out["version-6-in-ipv4"] = v6in4
	out["ext-limit"] = tpkt{src: six1, dst: six2, proto: 17, sport: 1, dport: 2, extHdrs: 7}.build()
	out["arp"] = append([]byte{2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x06}, make([]byte, 28)...)
	out["later-frag4"] = tpkt{src: hostA, dst: hostB, proto: 17, fragOff: 100, fragID: 1234}.build()
	out["first-frag6-trunc-l4"] = tpkt{src: six1, dst: six2, proto: 6, moreFrags: true, fragID: 5}.build()[:14+40+8+10]
	return out
}

func TestMalformedInputHasDefinedCountedVerdicts(t *testing.T) {
	e := newEnv(t)
	e.apply(fw.RuleSet{}, fw.Resolved{fw.Node: {"d0"}})
	wantStat := map[string]string{
		"ihl-0": "bad_ihl", "ihl-1": "bad_ihl", "ihl-4": "bad_ihl", "ihl-15": "bad_ihl",
		"totlen-short": "bad_ihl", "version-6-in-ipv4": "bad_version", "ext-limit": "ext_limit",
		"arp": "not_ip", "later-frag4": "frag_orphan", "tcp4": "default_allow",
		"first-frag6-trunc-l4": "truncated",
	}
	for name, frame := range corpus() {
		// Each frame is judged as a new flow, whatever ran before it.
		if err := e.dp.FlushConnections(); err != nil {
			t.Fatal(err)
		}
		before := e.stats()
		got := e.run(fw.Ingress, "d0", frame)
		after := e.stats()
		var moved []string
		var delta uint64
		for k, v := range after {
			if v != before[k] {
				moved = append(moved, k)
				delta += v - before[k]
			}
		}
		if delta != 1 || len(moved) != 1 {
			t.Errorf("%s: %d bytes: want exactly one counter to move by one, got %v (+%d)", name, len(frame), moved, delta)
			continue
		}
		if got != next && got != drop {
			t.Errorf("%s: undefined verdict %d", name, got)
		}
		if w, ok := wantStat[name]; ok && moved[0] != w {
			t.Errorf("%s: counted as %s, want %s", name, moved[0], w)
		}
		// A verdict agrees with its counter: every pass counter passes.
		passing := map[string]bool{"not_ip": true, "default_allow": true, "rule_allow": true, "ct_established": true,
			"ct_reply": true, "icmp_related": true, "frag_allow": true, "unattached": true}
		if passing[moved[0]] != (got == next) {
			t.Errorf("%s: verdict %s with counter %s", name, verdictName(got), moved[0])
		}
	}
}

func TestDifferentialAgainstReferenceModel(t *testing.T) {
	e := newEnv(t)
	ifaces := []string{"d0", "d1"}
	res := fw.Resolved{fw.Node: {"d0"}}
	sport := uint16(20000)
	for seed := uint64(0); seed < 40; seed++ {
		r := mrand.New(mrand.NewPCG(seed, 42))
		s := fwtest.RuleSet(r, 1+r.IntN(300), ifaces)
		e.apply(s, res)
		for i := 0; i < 100; i++ {
			p := fwtest.Packet(r, ifaces)
			if err := e.dp.FlushConnections(); err != nil {
				t.Fatal(err)
			}
			sport++
			tp := tpkt{src: p.Src, dst: p.Dst, proto: p.Proto, dport: p.DPort, sport: sport}
			if p.Proto == fw.ProtoICMP || p.Proto == fw.ProtoICMPv6 {
				tp.icmpType = 8
				if p.Src.Is6() {
					tp.icmpType = 128
				}
			}
			want := fw.Evaluate(&s, res, p)
			wantV := uint32(next)
			if want.Action == fw.Deny {
				wantV = drop
			}
			if got := e.run(p.Hook, p.Iface, tp.build()); got != wantV {
				t.Fatalf("seed %d packet %+v: datapath %s, model %+v", seed, p, verdictName(got), want)
			}
			// A TCP or UDP packet without IPv4 options or IPv6
			// extension headers takes one of the program's plain copies
			// (qbo_parse_plain4/6); the same packet with options or an
			// extension header takes the general one, which must agree.
			if p.Proto == fw.ProtoTCP || p.Proto == fw.ProtoUDP {
				if err := e.dp.FlushConnections(); err != nil {
					t.Fatal(err)
				}
				if p.Src.Is4() {
					tp.ipOpts = 4
				} else {
					tp.extHdrs = 1
				}
				if got := e.run(p.Hook, p.Iface, tp.build()); got != wantV {
					t.Fatalf("seed %d packet %+v with IP options / an extension header: datapath %s, model %+v", seed, p, verdictName(got), want)
				}
			}
		}
	}
}

// TestPlainAndGeneralCopiesShareConnections: a connection recorded by
// one copy of the judge (plain IPv4 or IPv6, or the general parser's,
// here for a packet with IP options or an IPv6 extension header) is the
// same connection to the other.
func TestPlainAndGeneralCopiesShareConnections(t *testing.T) {
	e := newEnv(t)
	s := fw.RuleSet{Policies: []fw.Policy{{Target: fw.Node, Direction: fw.Ingress, Action: fw.Deny}}}
	e.apply(s, fw.Resolved{fw.Node: {"d0"}})
	type copies struct{ outOpts, inOpts int }
	cases := []copies{{4, 0}, {0, 8}, {8, 4}}
	// IPv6: the option bytes stand for a number of extension headers.
	cases6 := []copies{{1, 0}, {0, 2}, {2, 1}}
	for i, c := range append(cases, cases6...) {
		sport := uint16(41000 + i)
		out := tpkt{src: hostA, dst: hostB, proto: 17, sport: sport, dport: 53, ipOpts: c.outOpts}
		in := tpkt{src: hostB, dst: hostA, proto: 17, sport: 53, dport: sport, ipOpts: c.inOpts}
		if i >= len(cases) {
			out = tpkt{src: a("fd00:1::7"), dst: a("fd00:2::9"), proto: 17, sport: sport, dport: 53, extHdrs: c.outOpts}
			in = tpkt{src: out.dst, dst: out.src, proto: 17, sport: 53, dport: sport, extHdrs: c.inOpts}
		}
		if got := e.run(fw.Ingress, "d0", in.build()); got != drop {
			t.Fatalf("%+v: unsolicited inbound: %s", c, verdictName(got))
		}
		if got := e.run(fw.Egress, "d0", out.build()); got != next {
			t.Fatalf("%+v: outbound: %s", c, verdictName(got))
		}
		if got := e.run(fw.Ingress, "d0", in.build()); got != next {
			t.Fatalf("%+v: reply: %s", c, verdictName(got))
		}
		if out.src.Is4() {
			out.ipOpts = c.inOpts
		} else {
			out.extHdrs = c.inOpts
		}
		if got := e.run(fw.Egress, "d0", out.build()); got != next {
			t.Fatalf("%+v: outbound, other copy: %s", c, verdictName(got))
		}
	}
	if st := e.stats(); st["ct_reply"] != 6 || st["ct_established"] != 6 || st["default_deny"] != 6 {
		t.Errorf("stats: %v", st)
	}
}

// unmergeableTuples returns IPv6 rules needing 258 mask tuples of which
// no two can merge (each compares more source bits but fewer destination
// bits than the next, or the protocol or not): more than MaxTuples at d0.
func unmergeableTuples() fw.RuleSet {
	var s fw.RuleSet
	for i := 0; i <= 128; i++ {
		for _, proto := range []uint8{fw.ProtoAny, fw.ProtoUDP} {
			s.Rules = append(s.Rules, fw.Rule{Name: fmt.Sprintf("t%d-%d", i, proto), Action: fw.Allow, Proto: proto,
				Src: netip.PrefixFrom(a("fd00:1::3"), i).Masked(), Dst: netip.PrefixFrom(a("fd00:4::6"), 128-i).Masked()})
		}
	}
	return s
}

func TestCapacityRefusedBeforeAnyWrite(t *testing.T) {
	e := newEnv(t)
	e.apply(fw.RuleSet{Rules: []fw.Rule{{Name: "keep", Action: fw.Deny, Proto: fw.ProtoUDP}}}, fw.Resolved{fw.Node: {"d0"}})
	gen, _ := e.dp.Generation()
	tooMany := fw.RuleSet{}
	for i := 0; i <= bpffw.MaxRules; i++ {
		tooMany.Rules = append(tooMany.Rules, fw.Rule{Name: fmt.Sprintf("r%d", i), Action: fw.Allow})
	}
	// Entries: 40,000 rules of 8 port blocks each (1-30), distinct sources.
	tooBig := fw.RuleSet{}
	for i := 0; i < 40000; i++ {
		tooBig.Rules = append(tooBig.Rules, fw.Rule{Name: fmt.Sprintf("r%d", i), Action: fw.Allow, Proto: fw.ProtoTCP,
			Ports: fw.PortRange{Lo: 1, Hi: 30}, Src: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 9, byte(i >> 8), byte(i)}), 32)})
	}
	for name, s := range map[string]fw.RuleSet{"rules": tooMany, "tuples": unmergeableTuples(), "entries": tooBig} {
		_, err := fw.Compile(s, fw.Resolved{fw.Node: {"d0"}}, Limits)
		if !errors.Is(err, fw.ErrCapacity) {
			t.Fatalf("%s: want ErrCapacity, got %v", name, err)
		}
		t.Logf("%s: %v", name, err)
	}
	c, err := fw.Compile(fw.RuleSet{Rules: []fw.Rule{{Name: "x", Action: fw.Allow, Target: fw.Target{Kind: fw.TargetIface, Name: "nope0"}}}}, nil, Limits)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.dp.Apply(c, e.resolve, false); !errors.Is(err, ErrNoInterface) {
		t.Fatalf("unknown interface: %v", err)
	}
	if g, _ := e.dp.Generation(); g != gen {
		t.Fatalf("a refused set switched the generation %d -> %d", gen, g)
	}
	if got := e.run(fw.Ingress, "d0", tpkt{src: hostA, dst: hostB, proto: 17, sport: 1, dport: 1}.build()); got != drop {
		t.Fatalf("the old set is no longer enforced: %s", verdictName(got))
	}
}

// TestLargeRuleSets applies 65,536-rule sets (the benchmark's, a random
// one drawing every field from a handful of values, which needs about 110
// mask tuples at an interface, and a busier mixed one) and checks sampled
// packets through the programs against the reference model.
func TestLargeRuleSets(t *testing.T) {
	e := newEnv(t)
	const n = 65536
	r := mrand.New(mrand.NewPCG(21, 22))
	res := fw.Resolved{fw.Node: {"d0", "d1"}}
	sport := uint16(1000)
	for _, c := range []struct {
		name string
		s    fw.RuleSet
		hook fw.Direction
	}{
		{"benchmark", fwtest.BenchRules(n, "d0"), fw.Egress},
		{"random", fwtest.RuleSet(r, n, []string{"d0", "d1"}), fw.Ingress},
		{"mixed", fwtest.LargeRuleSet(r, n, "d1"), fw.Ingress},
	} {
		e.apply(c.s, res)
		for i := 0; i < 48; i++ {
			p := fwtest.PacketFor(c.s.Rules[r.IntN(n)], []string{"d0", "d1"}[r.IntN(2)], c.hook)
			if i%2 == 1 {
				p.Src = netip.AddrFrom4([4]byte{10, byte(r.IntN(4)), byte(r.IntN(256)), byte(r.IntN(256))})
				p.Dst, p.Proto, p.DPort = hostB, fw.ProtoUDP, uint16(1+r.IntN(65535))
			}
			sport++
			tp := tpkt{src: p.Src, dst: p.Dst, proto: p.Proto, sport: sport, dport: p.DPort}
			if p.Proto == fw.ProtoICMP {
				tp.icmpType = 8
			} else if p.Proto == fw.ProtoICMPv6 {
				tp.icmpType = 128
			}
			want := fw.Evaluate(&c.s, res, p)
			wantV := uint32(next)
			if want.Action == fw.Deny {
				wantV = drop
			}
			if got := e.run(p.Hook, p.Iface, tp.build()); got != wantV {
				t.Fatalf("%s: packet %+v: datapath %s, model %+v", c.name, p, verdictName(got), want)
			}
		}
	}
	// The second set shares no name with the first: its rules got the
	// first's counter slots.
	cnt, err := e.dp.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if len(cnt) != n {
		t.Errorf("%d counters after replacing %d rules by %d others", len(cnt), n, n)
	}
	if _, ok := cnt["r0"]; ok {
		t.Errorf("a removed rule still has a counter")
	}
}

// TestLargeIfindex checks an interface whose ifindex is past the direct
// array (fw_ifslot_hi), next to one below it.
func TestLargeIfindex(t *testing.T) {
	e := newEnv(t)
	sh(t, "ip", "-n", e.ns, "link", "add", "name", "h0", "index", "70000", "type", "veth", "peer", "name", "h1")
	e.ifidx["h0"] = 70000
	s := fw.RuleSet{Rules: []fw.Rule{
		{Name: "h0-dns", Action: fw.Deny, Proto: fw.ProtoUDP, Ports: fw.PortRange{Lo: 53, Hi: 53}, Target: fw.Target{Kind: fw.TargetIface, Name: "h0"}},
		{Name: "d0-dns", Action: fw.Deny, Proto: fw.ProtoUDP, Ports: fw.PortRange{Lo: 54, Hi: 54}, Target: fw.Target{Kind: fw.TargetIface, Name: "d0"}},
	}}
	e.apply(s, nil)
	for _, c := range []struct {
		iface string
		dport uint16
		want  uint32
	}{{"h0", 53, drop}, {"h0", 54, next}, {"d0", 54, drop}, {"d0", 53, next}} {
		if got := e.run(fw.Ingress, c.iface, tpkt{src: hostA, dst: hostB, proto: 17, sport: 7, dport: c.dport}.build()); got != c.want {
			t.Errorf("%s port %d: got %s, want %s", c.iface, c.dport, verdictName(got), verdictName(c.want))
		}
	}
}

// pfFrame is a UDP frame from src; the prefilter reads only the source.
func pfFrame(src string) []byte {
	dst := hostB
	if a(src).Is6() {
		dst = six2
	}
	return tpkt{src: a(src), dst: dst, proto: 17, sport: 9, dport: 9}.build()
}

func newPrefilter(t testing.TB, f *bpffw.Firewall) *Prefilter {
	t.Helper()
	pf, err := NewPrefilter(f.Maps())
	if err != nil {
		t.Fatal(err)
	}
	return pf
}

// pfRun runs fw_xdp_prefilter on frame and returns its XDP verdict.
func (e *env) pfRun(frame []byte) uint32 {
	e.t.Helper()
	got, err := e.f.Programs().FwXdpPrefilter.Run(&ebpf.RunOptions{Data: frame})
	if err != nil {
		e.t.Fatal(err)
	}
	return got
}

const (
	xdpDrop = 1
	xdpPass = 2
)

func TestPrefilter(t *testing.T) {
	e := newEnv(t)
	pf := newPrefilter(t, e.f)
	vlan := func(f []byte) []byte { // an 802.1Q tag before the IP header
		return slices.Concat(f[:12], []byte{0x81, 0x00, 0, 7}, f[12:])
	}
	check := func(stage string, cases []struct {
		name  string
		frame []byte
		want  uint32
	}) {
		t.Helper()
		for _, c := range cases {
			if got := e.pfRun(c.frame); got != c.want {
				t.Errorf("%s: %s: got %d want %d", stage, c.name, got, c.want)
			}
		}
	}
	type tc = struct {
		name  string
		frame []byte
		want  uint32
	}
	// Empty maps: everything passes, and malformed or non-IP frames pass
	// on to the full parser.
	malformed := []tc{
		{"arp", append([]byte{2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x06}, make([]byte, 28)...), xdpPass},
		{"truncated ip", pfFrame("10.0.0.1")[:20], xdpPass},
		{"truncated ipv6", pfFrame("fd00::1")[:40], xdpPass},
		{"truncated vlan", vlan(pfFrame("10.0.0.1"))[:16], xdpPass},
	}
	check("empty", append([]tc{
		{"v4", pfFrame("10.0.0.1"), xdpPass},
		{"v4 zero", pfFrame("0.0.0.0"), xdpPass},
		{"v4 broadcast", pfFrame("255.255.255.255"), xdpPass},
		{"v6", pfFrame("fd00::1"), xdpPass},
	}, malformed...))
	st, err := pf.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st["pass"] != 4 || st["drop"] != 0 || st["not_ip"] != 1 || st["malformed"] != 3 {
		t.Errorf("stats %v", st)
	}

	add := []netip.Prefix{pfx("10.0.0.0/8"), pfx("172.16.0.0/16"), pfx("192.168.2.0/23"), pfx("192.168.7.0/24"),
		pfx("192.168.9.128/25"), pfx("192.168.10.6/31"), pfx("192.168.11.77/32"), pfx("fd00:198:3::/48"),
		// Overlapping: a /32 and a /25 inside a /16, and the /16 inside the /8.
		pfx("100.64.0.0/16"), pfx("100.64.3.0/25"), pfx("100.64.5.5/32"), pfx("10.9.0.0/16")}
	if n, err := pf.Add(add); err != nil || n != len(add) {
		t.Fatalf("add: %d %v", n, err)
	}
	if n, err := pf.Add(add[:3]); err != nil || n != 0 {
		t.Fatalf("adding again: %d %v, want 0 changed", n, err)
	}
	loaded := []tc{
		{"/8 first", pfFrame("10.0.0.0"), xdpDrop},
		{"/8 last", pfFrame("10.255.255.255"), xdpDrop},
		{"below /8", pfFrame("9.255.255.255"), xdpPass},
		{"above /8", pfFrame("11.0.0.0"), xdpPass},
		{"/16", pfFrame("172.16.200.1"), xdpDrop},
		{"beside /16", pfFrame("172.17.0.1"), xdpPass},
		{"/23 low half", pfFrame("192.168.2.1"), xdpDrop},
		{"/23 high half", pfFrame("192.168.3.254"), xdpDrop},
		{"beside /23", pfFrame("192.168.4.1"), xdpPass},
		{"/24", pfFrame("192.168.7.9"), xdpDrop},
		{"beside /24", pfFrame("192.168.6.255"), xdpPass},
		{"/25 first", pfFrame("192.168.9.128"), xdpDrop},
		{"/25 last", pfFrame("192.168.9.255"), xdpDrop},
		{"other half of /25", pfFrame("192.168.9.127"), xdpPass},
		{"/31 even", pfFrame("192.168.10.6"), xdpDrop},
		{"/31 odd", pfFrame("192.168.10.7"), xdpDrop},
		{"beside /31", pfFrame("192.168.10.8"), xdpPass},
		{"/32", pfFrame("192.168.11.77"), xdpDrop},
		{"neighbour of /32", pfFrame("192.168.11.78"), xdpPass},
		{"v4 via vlan", vlan(pfFrame("192.168.11.77")), xdpDrop},
		{"overlap /16", pfFrame("100.64.200.1"), xdpDrop},
		{"overlap /25", pfFrame("100.64.3.1"), xdpDrop},
		{"v6 in /48", pfFrame("fd00:198:3::9"), xdpDrop},
		{"v6 outside", pfFrame("fd00:198:4::9"), xdpPass},
	}
	check("loaded", append(loaded, malformed...))

	// Deleting a prefix another one overlaps keeps the other's addresses
	// denied, both ways round.
	if n, err := pf.Delete([]netip.Prefix{pfx("100.64.0.0/16"), pfx("10.9.0.0/16"), pfx("203.0.113.0/24")}); err != nil || n != 2 {
		t.Fatalf("delete: %d %v, want 2 changed", n, err)
	}
	check("deleted /16s", []tc{
		{"/25 inside deleted /16", pfFrame("100.64.3.1"), xdpDrop},
		{"/32 inside deleted /16", pfFrame("100.64.5.5"), xdpDrop},
		{"rest of deleted /16", pfFrame("100.64.200.1"), xdpPass},
		{"deleted /16 inside /8", pfFrame("10.9.1.1"), xdpDrop},
	})
	if _, err := pf.Delete([]netip.Prefix{pfx("100.64.3.0/25"), pfx("10.0.0.0/8")}); err != nil {
		t.Fatal(err)
	}
	check("deleted /25 and /8", []tc{
		{"the /25", pfFrame("100.64.3.1"), xdpPass},
		{"the /32 beside it", pfFrame("100.64.5.5"), xdpDrop},
		{"the /8", pfFrame("10.9.1.1"), xdpPass},
	})
	// The last IPv6 prefix gone: the trie is skipped again.
	if n, err := pf.Delete([]netip.Prefix{pfx("fd00:198:3::/48")}); err != nil || n != 1 {
		t.Fatalf("delete v6: %d %v", n, err)
	}
	check("no v6", []tc{{"v6", pfFrame("fd00:198:3::9"), xdpPass}})
	var cfg bpffw.PFConfig
	if err := e.f.Maps().QboPfCfg.Lookup(uint32(0), &cfg); err != nil {
		t.Fatal(err)
	}
	if want := (bpffw.PFConfig{V4Prefixes: uint32(len(add) - 5), V6Prefixes: 0}); cfg != want {
		t.Errorf("config %+v, want %+v", cfg, want)
	}
}

// TestPrefilterDifferential checks the program against a reference
// (netip.Prefix.Contains over the set) for random sets of overlapping
// IPv4 prefixes of every length, as they are added to and deleted from.
func TestPrefilterDifferential(t *testing.T) {
	e := newEnv(t)
	pf := newPrefilter(t, e.f)
	r := mrand.New(mrand.NewPCG(7, 8))
	ref := refSet{}
	for step := range 24 {
		var batch []netip.Prefix
		for range 1 + r.IntN(40) {
			batch = append(batch, randPrefix(r))
		}
		if step%3 == 2 {
			for q := range ref {
				if r.IntN(2) == 0 {
					batch = append(batch, q)
				}
			}
			if _, err := pf.Delete(batch); err != nil {
				t.Fatal(err)
			}
			for _, q := range batch {
				delete(ref, q)
			}
		} else {
			if _, err := pf.Add(batch); err != nil {
				t.Fatal(err)
			}
			for _, q := range batch {
				ref[q] = true
			}
		}
		var set []netip.Prefix
		for q := range ref {
			set = append(set, q)
		}
		for _, x := range probes(r, set, 100) {
			want := uint32(xdpPass)
			if ref.contains(x) {
				want = xdpDrop
			}
			if got := e.pfRun(pfFrame(x.String())); got != want {
				t.Fatalf("step %d: %s: verdict %d, want %d (set %v)", step, x, got, want, set)
			}
		}
		if !sameSet(pf.Prefixes(), ref) {
			t.Fatalf("step %d: Prefixes %v, want %v", step, pf.Prefixes(), ref)
		}
	}
}

// A restarted qbod re-opens the pinned maps and reads the same set back;
// one from before the bitmaps (only the record tries filled) gets its
// lookup maps rebuilt.
func TestPrefilterRestart(t *testing.T) {
	e := newEnv(t)
	pf := newPrefilter(t, e.f)
	set := []netip.Prefix{pfx("10.0.0.0/8"), pfx("192.168.1.0/25"), pfx("192.168.1.200/32"), pfx("fd00::/64")}
	if _, err := pf.Add(set); err != nil {
		t.Fatal(err)
	}
	f2, err := bpffw.Load(bpffw.Options{PinDir: e.dir})
	if err != nil {
		t.Fatal(err)
	}
	defer f2.Close()
	pf2, err := NewPrefilter(f2.Maps())
	if err != nil {
		t.Fatal(err)
	}
	if got := pf2.Prefixes(); !slices.Equal(got, []netip.Prefix{set[0], set[1], set[2], set[3]}) {
		t.Fatalf("after restart: %v, want %v", got, set)
	}
	// The old version's state: the record alone.
	words := make([]uint32, bpffw.PrefilterV4Words)
	for w := range words {
		words[w] = uint32(w)
	}
	for _, m := range []*ebpf.Map{f2.Maps().QboPfV4Full, f2.Maps().QboPfV4Part} {
		if _, err := m.BatchUpdate(words, make([]uint64, len(words)), nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := f2.Maps().QboPfV4Host.Delete(uint32(192<<16 | 168<<8 | 1)); err != nil {
		t.Fatal(err)
	}
	if err := f2.Maps().QboPfCfg.Update(uint32(0), bpffw.PFConfig{}, ebpf.UpdateAny); err != nil {
		t.Fatal(err)
	}
	if got := e.pfRun(pfFrame("10.1.1.1")); got != xdpPass {
		t.Fatalf("cleared bitmaps still drop: %d", got)
	}
	if _, err := NewPrefilter(f2.Maps()); err != nil {
		t.Fatal(err)
	}
	for src, want := range map[string]uint32{"10.1.1.1": xdpDrop, "192.168.1.5": xdpDrop, "192.168.1.200": xdpDrop,
		"192.168.1.199": xdpPass, "fd00::5": xdpDrop, "11.0.0.1": xdpPass} {
		if got := e.pfRun(pfFrame(src)); got != want {
			t.Errorf("after rebuilding: %s: %d, want %d", src, got, want)
		}
	}
}

// lb_xdp, which owns an uplink's XDP hook, runs the prefilter the firewall
// fills: bpf/lb loaded in the same pin directory shares its maps by name.
func TestPrefilterSharedWithLBXDP(t *testing.T) {
	e := newEnv(t)
	pf := newPrefilter(t, e.f)
	lbo, err := bpflb.LoadUnattached(bpflb.Options{PinDir: e.dir})
	if err != nil {
		t.Fatal(err)
	}
	defer lbo.Close()
	if _, err := pf.Add([]netip.Prefix{pfx("192.0.2.0/24"), pfx("198.51.100.7/32"), pfx("2001:db8::/32")}); err != nil {
		t.Fatal(err)
	}
	for src, want := range map[string]uint32{"192.0.2.9": xdpDrop, "198.51.100.7": xdpDrop, "198.51.100.8": xdpPass,
		"2001:db8::1": xdpDrop, "2001:db9::1": xdpPass} {
		got, err := lbo.XDP().Run(&ebpf.RunOptions{Data: pfFrame(src)})
		if err != nil {
			t.Fatal(err)
		}
		if got != want {
			t.Errorf("lb_xdp from %s: %d, want %d", src, got, want)
		}
	}
}

// FuzzProgram feeds arbitrary frames to the ingress program: every one
// gets a defined verdict and moves exactly one counter.
func FuzzProgram(f *testing.F) {
	for _, frame := range corpus() {
		f.Add(frame)
	}
	e := newEnv(f)
	e.apply(fw.RuleSet{Rules: []fw.Rule{{Name: "d", Action: fw.Deny, Proto: fw.ProtoTCP, Ports: fw.PortRange{Lo: 2, Hi: 2}}}}, fw.Resolved{fw.Node: {"d0"}})
	f.Fuzz(func(t *testing.T, frame []byte) {
		if len(frame) < 14 || len(frame) > 1500 {
			return
		}
		// The fuzz function runs on another goroutine: enter the
		// namespace for the ifindex to resolve to d0.
		e.t = t
		netnstest.Enter(t, e.ns)
		before := e.statsSum()
		got := e.run(fw.Ingress, "d0", frame)
		if got != next && got != drop {
			t.Fatalf("undefined verdict %d", got)
		}
		if after := e.statsSum(); after != before+1 {
			t.Fatalf("counters moved by %d, want 1", after-before)
		}
	})
}

func TestAttachUpdateDetach(t *testing.T) {
	e := newEnv(t)
	// (Debian's bpftool 7.1 does not list TCX; ask the kernel directly.)
	enterCheck := func(want int) {
		t.Helper()
		n := 0
		for _, at := range []ebpf.AttachType{ebpf.AttachTCXIngress, ebpf.AttachTCXEgress} {
			res, err := link.QueryPrograms(link.QueryOptions{Target: e.ifidx["d0"], Attach: at})
			if err != nil {
				t.Fatal(err)
			}
			n += len(res.Programs)
		}
		if n != want {
			t.Fatalf("want %d firewall programs on d0, the kernel has %d", want, n)
		}
	}
	if err := e.f.Attach("d0", e.ifidx["d0"]); err != nil {
		t.Fatal(err)
	}
	enterCheck(2)
	// Attaching again updates the pinned links in place (no duplicates).
	if err := e.f.Attach("d0", e.ifidx["d0"]); err != nil {
		t.Fatal(err)
	}
	enterCheck(2)
	if err := e.f.DetachExcept([]string{"d0"}); err != nil {
		t.Fatal(err)
	}
	enterCheck(2)
	if err := e.f.DetachExcept(nil); err != nil {
		t.Fatal(err)
	}
	enterCheck(0)
}
