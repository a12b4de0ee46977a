package main

import (
	"fmt"
	"net/netip"
	"strconv"
	"time"

	"github.com/qbo/qbo/bpf/trace"
)

// process is the object of the processes mirror, keyed by pid.
type process struct {
	PID       uint32     `json:"pid"`
	PPID      uint32     `json:"ppid"`
	Comm      string     `json:"comm"`
	Exe       string     `json:"exe"`
	UID       uint32     `json:"uid"`
	Threads   int        `json:"threads"`
	StartTime *time.Time `json:"start_time"`
	CgroupID  uint64     `json:"cgroup_id,omitempty"`
	placement
}

// placement says which container, instance and nested container a process
// (or a connection, through its owner) belongs to; empty on the host.
type placement struct {
	Container string `json:"container,omitempty"`
	Instance  string `json:"instance,omitempty"`
	Nested    string `json:"nested,omitempty"`
}

// connection is the object of the connections mirror.
type connection struct {
	Family string `json:"family"`
	Src    string `json:"src"`
	Dst    string `json:"dst"`
	State  string `json:"state"`
	PID    uint32 `json:"pid"`
	Comm   string `json:"comm"`
	NetNS  uint32 `json:"netns"`
	placement
}

// dropEvent is one object of the events mirror.
type dropEvent struct {
	Kind     string    `json:"kind"`
	Time     time.Time `json:"time"`
	Reason   string    `json:"reason"`
	Code     uint32    `json:"reason_code"`
	Location string    `json:"location"`
	Proto    string    `json:"proto,omitempty"`
	Src      string    `json:"src,omitempty"`
	Dst      string    `json:"dst,omitempty"`
	Ifindex  uint32    `json:"ifindex"`
	NetNS    uint32    `json:"netns"`
	PID      uint32    `json:"pid"`
	Comm     string    `json:"comm"`
}

// stateSink is what the telemetry writes state into (a *mirror.State).
type stateSink interface {
	Upsert(key string, obj any, cause string)
	Delete(key string, cause string)
}

// streamSink is what the telemetry writes events into (a *mirror.Stream).
type streamSink interface {
	Publish(obj any, cause string)
}

// telemetry turns decoded kernel events into the process table, the
// connection table and the event stream. It is driven by one goroutine and
// owns its tables, so it needs no locks.
type telemetry struct {
	hostNS uint32 // qbod's network namespace: the one /proc/net/tcp lists
	// place finds a process's container (from its cgroup); nil places
	// everything on the host. Asked on exec and full listings only: a fork
	// inherits its parent's place, and reading /proc costs ~25 µs.
	place  func(pid uint32) placement
	procs  map[uint32]*process
	conns  map[string]*connection
	procM  stateSink
	connM  stateSink
	events streamSink
}

func newTelemetry(hostNS uint32, procM, connM stateSink, events streamSink) *telemetry {
	return &telemetry{
		hostNS: hostNS,
		procs:  make(map[uint32]*process),
		conns:  make(map[string]*connection),
		procM:  procM,
		connM:  connM,
		events: events,
	}
}

func procKey(pid uint32) string { return fmt.Sprint(pid) }

// connKey names a connection by its 4-tuple, plus its network namespace
// when that is not qbod's own (containers reuse addresses). IPv4-mapped IPv6
// addresses are unmapped so that a dual-stack socket and /proc agree.
func (t *telemetry) connKey(src, dst netip.AddrPort, netns uint32) string {
	key := "tcp " + unmap(src).String() + "->" + unmap(dst).String()
	if netns != 0 && netns != t.hostNS {
		key += " netns " + strconv.FormatUint(uint64(netns), 10)
	}
	return key
}

func unmap(ap netip.AddrPort) netip.AddrPort { return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()) }

func (t *telemetry) handle(ev trace.Event) {
	switch e := ev.(type) {
	case trace.Exec:
		p := t.procs[e.PID]
		if p == nil {
			p = &process{PID: e.PID, StartTime: timePtr(e.Time)}
			t.procs[e.PID] = p
		}
		// execve from any thread leaves a single-threaded process.
		p.PPID, p.Comm, p.Exe, p.UID, p.Threads, p.CgroupID = e.PPID, e.Comm, e.Filename, e.UID, 1, e.CgroupID
		// A container's first process enters its cgroup before it execs.
		p.placement = t.placeOf(e.PID)
		t.procM.Upsert(procKey(e.PID), p, "exec")
	case trace.Fork:
		if e.Thread {
			p := t.procs[e.PID]
			if p == nil {
				return // the thread's process predates the table; the next resync adds it
			}
			p.Threads++
			t.procM.Upsert(procKey(e.PID), p, "clone")
			return
		}
		child := &process{PID: e.ChildPID, PPID: e.PID, Comm: e.Comm, UID: e.UID, Threads: 1,
			StartTime: timePtr(e.Time), CgroupID: e.CgroupID}
		if parent := t.procs[e.PID]; parent != nil {
			child.Exe, child.placement = parent.Exe, parent.placement
		}
		t.procs[e.ChildPID] = child
		t.procM.Upsert(procKey(e.ChildPID), child, "fork")
	case trace.Exit:
		p := t.procs[e.PID]
		if p == nil {
			return
		}
		if e.GroupDead {
			delete(t.procs, e.PID)
			t.procM.Delete(procKey(e.PID), "exit")
			return
		}
		if p.Threads > 1 {
			p.Threads--
			t.procM.Upsert(procKey(e.PID), p, "thread_exit")
		}
	case trace.TCPState:
		key := t.connKey(e.Src, e.Dst, e.NetNS)
		if e.NewState == "CLOSE" {
			if _, ok := t.conns[key]; ok {
				delete(t.conns, key)
				t.connM.Delete(key, "close")
			}
			return
		}
		c := t.conns[key]
		if c == nil && e.Src.Port() == 0 {
			// CLOSE -> SYN_SENT happens before connect picks the local
			// port; the connection appears with its real 4-tuple at the
			// next transition (the kernel remembers its owner until then).
			return
		}
		if c == nil {
			c = &connection{Family: familyName(e.Src.Addr()), Src: unmap(e.Src).String(), Dst: unmap(e.Dst).String(),
				NetNS: e.NetNS}
			t.conns[key] = c
		}
		c.State = string(e.NewState)
		if e.PID != 0 {
			c.PID, c.Comm = e.PID, e.Comm
			if p := t.procs[e.PID]; p != nil {
				c.placement = p.placement
			}
		}
		t.connM.Upsert(key, c, "tcp_state")
	case trace.Drop:
		d := dropEvent{Kind: "drop", Time: e.Time, Reason: e.ReasonName, Code: e.Reason,
			Location: fmt.Sprintf("%#x", e.Location), Ifindex: e.Ifindex, NetNS: e.NetNS,
			PID: e.PID, Comm: e.Comm, Proto: protoName(e.L4Proto)}
		if e.Src.IsValid() {
			d.Src, d.Dst = e.Src.String(), e.Dst.String()
		}
		t.events.Publish(d, "drop")
	}
}

// resyncProcesses replaces the process table with a full listing (lists are
// truth; events are hints) and returns the objects for the mirror.
func (t *telemetry) resyncProcesses(list map[uint32]*process) map[string]any {
	t.procs = list
	out := make(map[string]any, len(list))
	for pid, p := range list {
		p.placement = t.placeOf(pid)
		out[procKey(pid)] = p
	}
	return out
}

func (t *telemetry) placeOf(pid uint32) placement {
	if t.place == nil {
		return placement{}
	}
	return t.place(pid)
}

// resyncConnections does the same for the TCP connections of qbod's own
// namespace, the only ones /proc/net/tcp lists; connections in other
// namespaces (containers, instances) are kept as the events left them.
func (t *telemetry) resyncConnections(list []*connection) map[string]any {
	conns := make(map[string]*connection, len(list))
	for k, c := range t.conns {
		if c.NetNS != 0 && c.NetNS != t.hostNS {
			conns[k] = c
		}
	}
	for _, c := range list {
		c.NetNS = t.hostNS
		src, dst := netip.MustParseAddrPort(c.Src), netip.MustParseAddrPort(c.Dst)
		conns[t.connKey(src, dst, c.NetNS)] = c
	}
	t.conns = conns
	out := make(map[string]any, len(conns))
	for k, c := range conns {
		out[k] = c
	}
	return out
}

func timePtr(t time.Time) *time.Time { return &t }

func familyName(a netip.Addr) string {
	if a.Is4() || a.Is4In6() {
		return "ipv4"
	}
	return "ipv6"
}

func protoName(p uint8) string {
	switch p {
	case 0:
		return ""
	case 1:
		return "icmp"
	case 6:
		return "tcp"
	case 17:
		return "udp"
	case 58:
		return "icmpv6"
	}
	return fmt.Sprint(p)
}
