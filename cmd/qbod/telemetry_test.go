package main

import (
	"encoding/json"
	"net/netip"
	"testing"
	"time"

	"github.com/qbo/qbo/bpf/trace"
)

// recorder is a fake mirror that remembers every change in order.
type recorder struct {
	changes []string
	objs    map[string]string
}

func newRecorder() *recorder { return &recorder{objs: map[string]string{}} }

func (r *recorder) Upsert(key string, obj any, cause string) {
	b, _ := json.Marshal(obj)
	r.objs[key] = string(b)
	r.changes = append(r.changes, "upsert "+key+" "+cause)
}

func (r *recorder) Delete(key string, cause string) {
	delete(r.objs, key)
	r.changes = append(r.changes, "delete "+key+" "+cause)
}

func (r *recorder) Publish(obj any, cause string) {
	b, _ := json.Marshal(obj)
	r.changes = append(r.changes, "event "+cause+" "+string(b))
}

func (r *recorder) obj(t *testing.T, key string, v any) {
	t.Helper()
	if err := json.Unmarshal([]byte(r.objs[key]), v); err != nil {
		t.Fatalf("object %s: %v", key, err)
	}
}

const hostNS, containerNS = 4026531840, 4026532999

func hdr(pid, tid uint32, comm string) trace.Header {
	return trace.Header{Time: time.Unix(1700000000, 0), PID: pid, TID: tid, Comm: comm}
}

func TestProcessLifecycle(t *testing.T) {
	procs, conns, events := newRecorder(), newRecorder(), newRecorder()
	tel := newTelemetry(hostNS, procs, conns, events)
	tel.resyncProcesses(map[uint32]*process{100: {PID: 100, PPID: 1, Comm: "sh", Exe: "/bin/sh", Threads: 1}})

	tel.handle(trace.Fork{Header: hdr(100, 100, "sh"), ChildPID: 200, ChildTID: 200})
	tel.handle(trace.Fork{Header: hdr(200, 200, "sh"), ChildPID: 200, ChildTID: 201, Thread: true})
	tel.handle(trace.Exec{Header: hdr(200, 200, "echo"), PPID: 100, OldTID: 201, Filename: "/bin/echo"})
	var p process
	procs.obj(t, "200", &p)
	if p.PID != 200 || p.PPID != 100 || p.Comm != "echo" || p.Exe != "/bin/echo" || p.Threads != 1 {
		t.Errorf("after fork, clone, exec from the thread: %+v", p)
	}
	tel.handle(trace.Fork{Header: hdr(200, 200, "echo"), ChildPID: 200, ChildTID: 202, Thread: true})
	tel.handle(trace.Exit{Header: hdr(200, 202, "echo")})
	tel.handle(trace.Exit{Header: hdr(200, 200, "echo"), GroupDead: true})
	tel.handle(trace.Exit{Header: hdr(300, 300, "gone"), GroupDead: true}) // unknown: ignored
	want := []string{"upsert 200 fork", "upsert 200 clone", "upsert 200 exec", "upsert 200 clone",
		"upsert 200 thread_exit", "delete 200 exit"}
	if len(procs.changes) != len(want) {
		t.Fatalf("changes %q, want %q", procs.changes, want)
	}
	for i := range want {
		if procs.changes[i] != want[i] {
			t.Errorf("change %d: %q, want %q", i, procs.changes[i], want[i])
		}
	}
}

func TestConnectionLifecycle(t *testing.T) {
	procs, conns, events := newRecorder(), newRecorder(), newRecorder()
	tel := newTelemetry(hostNS, procs, conns, events)
	src := netip.MustParseAddrPort("[::ffff:127.0.0.1]:5000")
	dst := netip.MustParseAddrPort("127.0.0.1:80")
	unbound := netip.AddrPortFrom(src.Addr(), 0)
	tel.handle(trace.TCPState{Header: hdr(42, 42, "curl"), Src: unbound, Dst: dst, OldState: "CLOSE", NewState: "SYN_SENT", NetNS: hostNS})
	if len(conns.changes) != 0 {
		t.Fatalf("a connection without its local port was published: %q", conns.changes)
	}
	tel.handle(trace.TCPState{Header: hdr(42, 42, "curl"), Src: src, Dst: dst, OldState: "SYN_SENT", NewState: "ESTABLISHED", NetNS: hostNS})
	key := "tcp 127.0.0.1:5000->127.0.0.1:80"
	var c connection
	conns.obj(t, key, &c)
	if c.State != "ESTABLISHED" || c.PID != 42 || c.Comm != "curl" || c.Family != "ipv4" {
		t.Errorf("connection: %+v (softirq context must not erase the owner)", c)
	}
	tel.handle(trace.TCPState{Header: hdr(0, 0, ""), Src: src, Dst: dst, OldState: "LAST_ACK", NewState: "CLOSE", NetNS: hostNS})
	if _, ok := conns.objs[key]; ok || conns.changes[len(conns.changes)-1] != "delete "+key+" close" {
		t.Errorf("after CLOSE: %q", conns.changes)
	}
}

func TestDropEvent(t *testing.T) {
	procs, conns, events := newRecorder(), newRecorder(), newRecorder()
	tel := newTelemetry(hostNS, procs, conns, events)
	tel.handle(trace.Drop{Header: hdr(7, 7, "bash"), Reason: 3, ReasonName: "NO_SOCKET", L4Proto: 17,
		Src: netip.MustParseAddrPort("127.0.0.1:4000"), Dst: netip.MustParseAddrPort("127.0.0.1:9"), NetNS: 4026532000})
	if len(events.changes) != 1 {
		t.Fatalf("events: %q", events.changes)
	}
	var d dropEvent
	json.Unmarshal([]byte(events.changes[0][len("event drop "):]), &d)
	if d.Reason != "NO_SOCKET" || d.Proto != "udp" || d.Dst != "127.0.0.1:9" || d.NetNS != 4026532000 {
		t.Errorf("drop event: %+v", d)
	}
}

// TestConnectionsPerNamespace: the same 4-tuple in a container's namespace is
// another connection, and a resync from /proc (which lists only qbod's
// namespace) replaces the host's connections but keeps the container's.
func TestConnectionsPerNamespace(t *testing.T) {
	procs, conns, events := newRecorder(), newRecorder(), newRecorder()
	tel := newTelemetry(hostNS, procs, conns, events)
	src, dst := netip.MustParseAddrPort("10.0.0.2:5000"), netip.MustParseAddrPort("10.0.0.1:80")
	tel.handle(trace.TCPState{Header: hdr(1, 1, "a"), Src: src, Dst: dst, NewState: "ESTABLISHED", NetNS: hostNS})
	tel.handle(trace.TCPState{Header: hdr(2, 2, "b"), Src: src, Dst: dst, NewState: "ESTABLISHED", NetNS: containerNS})
	hostKey, ctrKey := "tcp 10.0.0.2:5000->10.0.0.1:80", "tcp 10.0.0.2:5000->10.0.0.1:80 netns 4026532999"
	if len(conns.objs) != 2 || conns.objs[hostKey] == "" || conns.objs[ctrKey] == "" {
		t.Fatalf("objects %v, want %q and %q", conns.objs, hostKey, ctrKey)
	}
	got := tel.resyncConnections([]*connection{{Family: "ipv4", Src: "127.0.0.1:22", Dst: "0.0.0.0:0", State: "LISTEN"}})
	if len(got) != 2 || got[ctrKey] == nil || got["tcp 127.0.0.1:22->0.0.0.0:0"] == nil {
		t.Errorf("after resync: %v", got)
	}
}
