package trace

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"reflect"
	"testing"
	"unsafe"

	"github.com/cilium/ebpf/btf"
)

// record encodes a generated record struct the way the kernel lays it out,
// through encoding/binary rather than the decoder's unsafe copy, so that
// the two methods check each other.
func record(t testing.TB, v any) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := binary.Write(&buf, binary.LittleEndian, v); err != nil {
		t.Fatalf("encoding %T: %v", v, err)
	}
	return buf.Bytes()
}

func comm(s string) (c [16]int8) {
	for i := range min(len(s), 15) {
		c[i] = int8(s[i])
	}
	return c
}

func hdr(kind traceQboEventKind, size int) traceQboEventHdr {
	return traceQboEventHdr{Kind: kind, Version: traceQboEventVersionQBO_EVENT_V1, Size: uint16(size), Cpu: 1, TsNs: 5_000_000_000}
}

var task = traceTaskCtx{CgroupId: 4242, Pid: 100, Tid: 101, Uid: 1000, Gid: 1000, Comm: comm("worker")}

func wantHeader() Header {
	return Header{Time: bootTime(5_000_000_000), PID: 100, TID: 101, UID: 1000, CgroupID: 4242, Comm: "worker"}
}

func v4(s string) (a [16]uint8) {
	b := netip.MustParseAddr(s).As4()
	copy(a[:], b[:])
	return a
}

func v6(s string) [16]uint8 { return netip.MustParseAddr(s).As16() }

func execRecord() traceExecEvent {
	e := traceExecEvent{Hdr: hdr(traceQboEventKindQBO_EV_EXEC, execSize), Task: task, Ppid: 1, OldTid: 103}
	for i, c := range "/usr/bin/worker" {
		e.Filename[i] = int8(c)
	}
	return e
}

func tcpRecord() traceTcpEvent {
	return traceTcpEvent{
		Hdr: hdr(traceQboEventKindQBO_EV_TCP_STATE, tcpSize), Task: task, Skaddr: 0xffff8880deadbeef,
		Saddr: v4("10.0.0.1"), Daddr: v4("10.0.0.2"), Sport: 40000, Dport: 443,
		Family: 4, Oldstate: 2, Newstate: 1, Netns: 4026531840,
	}
}

func dropRecord() traceDropEvent {
	return traceDropEvent{
		Hdr: hdr(traceQboEventKindQBO_EV_DROP, dropSize), Task: task, Location: 0xffffffff81000000,
		Reason: 3, Ifindex: 1, Netns: 4026531840, EthProto: 0x0800, L4Proto: 17, Family: 4,
		Saddr: v4("127.0.0.1"), Daddr: v4("127.0.0.2"), Sport: 5000, Dport: 9,
	}
}

func TestDecode(t *testing.T) {
	tcp6 := tcpRecord()
	tcp6.Family, tcp6.Saddr, tcp6.Daddr, tcp6.Oldstate, tcp6.Newstate = 6, v6("fd00::1"), v6("fd00::2"), 10, 3

	unparsed := dropRecord()
	unparsed.Family, unparsed.L4Proto, unparsed.Saddr, unparsed.Daddr, unparsed.Sport, unparsed.Dport = 0, 0, [16]uint8{}, [16]uint8{}, 0, 0

	for _, tc := range []struct {
		name string
		raw  any
		want Event
	}{
		{"exec", execRecord(), Exec{Header: wantHeader(), PPID: 1, OldTID: 103, Filename: "/usr/bin/worker"}},
		{"fork", traceForkEvent{Hdr: hdr(traceQboEventKindQBO_EV_FORK, forkSize), Task: task, ChildPid: 100, ChildTid: 104, Thread: 1},
			Fork{Header: wantHeader(), ChildPID: 100, ChildTID: 104, Thread: true}},
		{"process fork", traceForkEvent{Hdr: hdr(traceQboEventKindQBO_EV_FORK, forkSize), Task: task, ChildPid: 105, ChildTid: 105},
			Fork{Header: wantHeader(), ChildPID: 105, ChildTID: 105}},
		{"exit", traceExitEvent{Hdr: hdr(traceQboEventKindQBO_EV_EXIT, exitSize), Task: task, ExitCode: 3 << 8, GroupDead: 1},
			Exit{Header: wantHeader(), Code: 768, GroupDead: true}},
		{"tcp4", tcpRecord(), TCPState{
			Header: wantHeader(), Family: 4, Cookie: 0xffff8880deadbeef, NetNS: 4026531840,
			Src: netip.MustParseAddrPort("10.0.0.1:40000"), Dst: netip.MustParseAddrPort("10.0.0.2:443"),
			OldState: TCPSynSent, NewState: TCPEstablished,
		}},
		{"tcp6", tcp6, TCPState{
			Header: wantHeader(), Family: 6, Cookie: 0xffff8880deadbeef, NetNS: 4026531840,
			Src: netip.MustParseAddrPort("[fd00::1]:40000"), Dst: netip.MustParseAddrPort("[fd00::2]:443"),
			OldState: TCPListen, NewState: TCPSynRecv,
		}},
		{"drop", dropRecord(), Drop{
			Header: wantHeader(), Reason: 3, ReasonName: DropReasonName(3), Location: 0xffffffff81000000,
			Ifindex: 1, NetNS: 4026531840, EtherProto: 0x0800, L4Proto: 17,
			Src: netip.MustParseAddrPort("127.0.0.1:5000"), Dst: netip.MustParseAddrPort("127.0.0.2:9"),
		}},
		{"drop unparsed", unparsed, Drop{
			Header: wantHeader(), Reason: 3, ReasonName: DropReasonName(3), Location: 0xffffffff81000000,
			Ifindex: 1, NetNS: 4026531840, EtherProto: 0x0800,
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw := record(t, tc.raw)
			got, err := Decode(raw)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("Decode:\n got %#v\nwant %#v", got, tc.want)
			}
			// Fields a newer kernel side appends are ignored.
			longer, err := Decode(append(raw, 1, 2, 3, 4, 5, 6, 7, 8))
			if err != nil || !reflect.DeepEqual(longer, tc.want) {
				t.Errorf("Decode of a longer record = %#v, %v", longer, err)
			}
		})
	}
}

// TestDecodeForeign: records of the load balancer's and the firewall's kinds
// pass through whole, copied, for their owners to decode.
func TestDecodeForeign(t *testing.T) {
	raw := []byte{32, 7, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}
	for len(raw) < hdrSize {
		raw = append(raw, 0)
	}
	ev, err := Decode(raw)
	if err != nil {
		t.Fatal(err)
	}
	f, ok := ev.(Foreign)
	if !ok || f.KindID != 32 || !bytes.Equal(f.Raw, raw) || f.Kind() != KindForeign {
		t.Fatalf("Decode = %#v", ev)
	}
	raw[4] = 99
	if f.Raw[4] == 99 {
		t.Error("Foreign.Raw aliases the reader's buffer")
	}
}

func TestDecodeErrors(t *testing.T) {
	exec := record(t, execRecord())
	badVersion := bytes.Clone(exec)
	badVersion[1] = 2
	unknownKind := bytes.Clone(exec)
	unknownKind[0] = 15
	badFamily := tcpRecord()
	badFamily.Family = 5
	badDropFamily := dropRecord()
	badDropFamily.Family = 2

	for _, tc := range []struct {
		name string
		raw  []byte
		want error
	}{
		{"nil", nil, ErrTruncated},
		{"short header", exec[:hdrSize-1], ErrTruncated},
		{"header only", exec[:hdrSize], ErrTruncated},
		{"short exec", exec[:execSize-1], ErrTruncated},
		{"unknown kind", unknownKind, ErrUnknownKind},
		{"kind none", make([]byte, 64), ErrUnknownVersion},
		{"unknown version", badVersion, ErrUnknownVersion},
		{"tcp family", record(t, badFamily), ErrMalformed},
		{"drop family", record(t, badDropFamily), ErrMalformed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ev, err := Decode(tc.raw)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Decode = %#v, %v; want error %v", ev, err, tc.want)
			}
		})
	}
}

func TestTCPStateName(t *testing.T) {
	for s, want := range map[uint8]TCPStateName{1: "ESTABLISHED", 7: "CLOSE", 10: "LISTEN", 13: "BOUND_INACTIVE", 0: "STATE_0", 99: "STATE_99"} {
		if got := tcpStateName(s); got != want {
			t.Errorf("tcpStateName(%d) = %q, want %q", s, got, want)
		}
	}
}

func TestDropReasonTable(t *testing.T) {
	e := &btf.Enum{Name: "skb_drop_reason", Values: []btf.EnumValue{
		{Name: "SKB_NOT_DROPPED_YET", Value: 0},
		{Name: "SKB_DROP_REASON_NOT_SPECIFIED", Value: 2},
		{Name: "SKB_DROP_REASON_NO_SOCKET", Value: 3},
		{Name: "SKB_DROP_REASON_SUBSYS_MASK", Value: 0xffff0000},
	}}
	got := dropReasonTable(e)
	want := []string{"", "", "NOT_SPECIFIED", "NO_SOCKET"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("dropReasonTable = %q, want %q", got, want)
	}
}

// TestDropReasonNameKernel reads the running kernel's BTF, which any
// kernel qbo supports has; without it only the numeric fallback is checked.
func TestDropReasonNameKernel(t *testing.T) {
	if got := DropReasonName(1 << 31); got != "2147483648" {
		t.Errorf("DropReasonName(1<<31) = %q, want the number", got)
	}
	if dropReasons() == nil {
		t.Skip("no kernel BTF at /sys/kernel/btf/vmlinux: names cannot be resolved here")
	}
	if got := DropReasonName(3); got != "NO_SOCKET" {
		t.Errorf("DropReasonName(3) = %q, want NO_SOCKET", got)
	}
}

// TestRecordLayout checks the bpf2go-generated Go structs against the C
// structs in the compiled object's BTF: size and every member's offset.
// binary.Size equal to unsafe.Sizeof also proves there is no implicit
// padding, i.e. the kernel side writes every byte a record has.
func TestRecordLayout(t *testing.T) {
	spec, err := loadTrace()
	if err != nil {
		t.Fatal(err)
	}
	for cName, goVal := range map[string]any{
		"qbo_event_hdr": traceQboEventHdr{},
		"task_ctx":      traceTaskCtx{},
		"qbo_kind_stat": traceQboKindStat{},
		"exec_event":    traceExecEvent{},
		"fork_event":    traceForkEvent{},
		"exit_event":    traceExitEvent{},
		"tcp_event":     traceTcpEvent{},
		"drop_event":    traceDropEvent{},
		"sk_owner":      traceSkOwner{},
		"listen_key":    traceListenKey{},
		"listen_val":    traceListenVal{},
	} {
		t.Run(cName, func(t *testing.T) {
			var s *btf.Struct
			if err := spec.Types.TypeByName(cName, &s); err != nil {
				t.Fatal(err)
			}
			goType := reflect.TypeOf(goVal)
			if got := int(goType.Size()); got != int(s.Size) {
				t.Errorf("Go size %d, C size %d", got, s.Size)
			}
			if got := binary.Size(goVal); got != int(s.Size) {
				t.Errorf("binary.Size %d, C size %d", got, s.Size)
			}
			var goFields []reflect.StructField
			for i := range goType.NumField() {
				if f := goType.Field(i); f.Name != "_" {
					goFields = append(goFields, f)
				}
			}
			if len(goFields) != len(s.Members) {
				t.Fatalf("Go has %d fields, C has %d members", len(goFields), len(s.Members))
			}
			for i, m := range s.Members {
				if got, want := goFields[i].Offset, uintptr(m.Offset.Bytes()); got != want {
					t.Errorf("%s.%s at offset %d, C %s at %d", goType.Name(), goFields[i].Name, got, m.Name, want)
				}
			}
		})
	}
	if hdrSize != 16 || unsafe.Offsetof(traceExecEvent{}.Hdr) != 0 {
		t.Errorf("every record must start with the 16-byte qbo_event_hdr")
	}
}

func TestKindName(t *testing.T) {
	for k, want := range map[traceQboEventKind]string{
		traceQboEventKindQBO_EV_EXEC: "exec", traceQboEventKindQBO_EV_FORK: "fork", traceQboEventKindQBO_EV_EXIT: "exit",
		traceQboEventKindQBO_EV_TCP_STATE: "tcp_state", traceQboEventKindQBO_EV_DROP: "drop", 17: "kind_17",
	} {
		if got := kindName(k); got != want {
			t.Errorf("kindName(%d) = %q, want %q", k, got, want)
		}
	}
	for _, ev := range []Event{Exec{}, Fork{}, Exit{}, TCPState{}, Drop{}} {
		if ev.Kind() == "" {
			t.Errorf("%T has no kind", ev)
		}
	}
}

func FuzzDecode(f *testing.F) {
	for _, v := range []any{
		execRecord(), tcpRecord(), dropRecord(),
		traceForkEvent{Hdr: hdr(traceQboEventKindQBO_EV_FORK, forkSize), Task: task},
		traceExitEvent{Hdr: hdr(traceQboEventKindQBO_EV_EXIT, exitSize), Task: task},
	} {
		raw := record(f, v)
		f.Add(raw)
		f.Add(raw[:len(raw)/2])
	}
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, raw []byte) {
		ev, err := Decode(raw)
		if err != nil {
			if ev != nil {
				t.Fatalf("Decode returned %#v with error %v", ev, err)
			}
			for _, s := range []error{ErrTruncated, ErrUnknownKind, ErrUnknownVersion, ErrMalformed} {
				if errors.Is(err, s) {
					return
				}
			}
			t.Fatalf("Decode error %v wraps no sentinel", err)
		}
		switch ev.(type) {
		case Exec, Fork, Exit, TCPState, Drop, Foreign:
		default:
			t.Fatalf("Decode returned %T", ev)
		}
		if again, _ := Decode(raw); !reflect.DeepEqual(again, ev) {
			t.Fatalf("Decode is not deterministic: %#v then %#v", ev, again)
		}
	})
}

func BenchmarkDecode(b *testing.B) {
	for _, tc := range []struct {
		name string
		v    any
	}{
		{"exec", execRecord()},
		{"fork", traceForkEvent{Hdr: hdr(traceQboEventKindQBO_EV_FORK, forkSize), Task: task, ChildPid: 1, ChildTid: 2, Thread: 1}},
		{"exit", traceExitEvent{Hdr: hdr(traceQboEventKindQBO_EV_EXIT, exitSize), Task: task}},
		{"tcp_state", tcpRecord()},
		{"drop", dropRecord()},
	} {
		raw := record(b, tc.v)
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(raw)))
			for b.Loop() {
				if _, err := Decode(raw); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
