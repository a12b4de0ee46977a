//go:build bpftest

package trace

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"golang.org/x/sys/unix"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf/link"

	"github.com/qbo/qbo/bpf"
)

// The bpftest tier loads trace.c into the running kernel and checks the
// events real activity produces. It needs root; run it with
//
//	go test -tags bpftest ./bpf/...

func requireRoot(tb testing.TB) {
	tb.Helper()
	if os.Geteuid() != 0 {
		tb.Fatal("the bpftest tier loads BPF programs and needs root (euid 0): run `go test -tags bpftest ./bpf/...` as root")
	}
}

// testPinDir returns a fresh pin directory under /sys/fs/bpf and removes it,
// with every map and link pinned in it, when the test ends.
func testPinDir(tb testing.TB) string {
	tb.Helper()
	requireRoot(tb)
	b := make([]byte, 6)
	rand.Read(b)
	dir := filepath.Join("/sys/fs/bpf", "qbo-test-"+hex.EncodeToString(b))
	tb.Cleanup(func() {
		if err := os.RemoveAll(dir); err != nil {
			tb.Errorf("removing %s: %v", dir, err)
		}
	})
	return dir
}

func loadTracer(tb testing.TB, dir string) *Tracer {
	tb.Helper()
	tr, err := Load(Options{PinDir: dir})
	if err != nil {
		tb.Fatalf("Load: %v", err)
	}
	tb.Cleanup(func() { tr.Close() })
	return tr
}

// collector keeps the events a test cares about, so that a test can wait
// for each expected event regardless of the order the ring delivered them.
type collector struct {
	mu      sync.Mutex
	events  []Event
	changed chan struct{} // closed and replaced on every append
}

// collect runs a Reader on tr for the rest of the test and keeps the events
// keep accepts.
func collect(tb testing.TB, tr *Tracer, keep func(Event) bool) (*collector, *Reader) {
	tb.Helper()
	r, err := NewReader(tr, 0)
	if err != nil {
		tb.Fatalf("NewReader: %v", err)
	}
	c := &collector{changed: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		for ev := range r.Events() {
			if keep(ev) {
				c.mu.Lock()
				c.events = append(c.events, ev)
				close(c.changed)
				c.changed = make(chan struct{})
				c.mu.Unlock()
			}
		}
	}()
	tb.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("Run returned %v after cancel, want nil", err)
		}
		select {
		case <-drained:
		case <-time.After(5 * time.Second):
			tb.Errorf("Events was not closed when Run returned")
		}
	})
	return c, r
}

// waitFor returns the first kept event that match accepts, waiting up to
// 10 s for it to arrive.
func waitFor[E Event](tb testing.TB, c *collector, what string, match func(E) bool) E {
	tb.Helper()
	deadline := time.After(10 * time.Second)
	for i := 0; ; {
		c.mu.Lock()
		for ; i < len(c.events); i++ {
			if e, ok := c.events[i].(E); ok && match(e) {
				c.mu.Unlock()
				return e
			}
		}
		changed := c.changed
		c.mu.Unlock()
		select {
		case <-changed:
		case <-deadline:
			c.mu.Lock()
			defer c.mu.Unlock()
			var kept strings.Builder
			for _, ev := range c.events[max(0, len(c.events)-20):] {
				fmt.Fprintf(&kept, "\n\t%+v", ev)
			}
			tb.Fatalf("no %s event within 10s; last of %d events kept:%s", what, len(c.events), kept.String())
		}
	}
}

func isProcessEvent(ev Event) bool {
	switch ev.(type) {
	case Exec, Fork, Exit:
		return true
	}
	return false
}

func checkRecent(tb testing.TB, what string, h Header, start time.Time) {
	tb.Helper()
	if h.Time.Before(start.Add(-time.Second)) || h.Time.After(time.Now().Add(time.Second)) {
		tb.Errorf("%s: time %v, want between %v and now", what, h.Time, start)
	}
}

func TestProcessEvents(t *testing.T) {
	tr := loadTracer(t, testPinDir(t))
	c, _ := collect(t, tr, isProcessEvent)
	me := uint32(os.Getpid())
	start := time.Now()

	cmd := exec.Command("/bin/true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	pid := uint32(cmd.Process.Pid)

	ex := waitFor(t, c, "exec of /bin/true", func(e Exec) bool { return e.PID == pid })
	if ex.PPID != me || ex.TID != pid || ex.OldTID != pid || ex.Comm != "true" || ex.Filename != "/bin/true" || ex.UID != 0 {
		t.Errorf("exec = %+v, want pid %d ppid %d tid/old tid %d comm true filename /bin/true uid 0", ex, pid, me, pid)
	}
	if ex.CgroupID == 0 {
		t.Errorf("exec has no cgroup id")
	}
	checkRecent(t, "exec", ex.Header, start)

	fk := waitFor(t, c, "fork of /bin/true", func(e Fork) bool { return e.ChildPID == pid })
	if fk.PID != me || fk.ChildTID != pid || fk.Thread {
		t.Errorf("fork = %+v, want parent %d, child tid %d, not a thread", fk, me, pid)
	}

	exit := waitFor(t, c, "exit of /bin/true", func(e Exit) bool { return e.PID == pid })
	if exit.Code != 0 || !exit.GroupDead || exit.Comm != "true" || exit.TID != pid {
		t.Errorf("exit = %+v, want code 0, group dead, comm true", exit)
	}

	cmd = exec.Command("/bin/sh", "-c", "exit 3")
	if err := cmd.Run(); err == nil {
		t.Fatal("sh -c 'exit 3' succeeded")
	}
	pid = uint32(cmd.Process.Pid)
	exit = waitFor(t, c, "exit of sh", func(e Exit) bool { return e.PID == pid && e.GroupDead })
	if exit.Code != 3<<8 {
		t.Errorf("exit code %#x, want 3<<8 (wait status of exit(3))", exit.Code)
	}
}

const threadProgram = `
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;
static const char *mode;

/* Runs in a second thread, so that its exec or fork does not come from
 * the thread group leader. */
static void *thread_main(void *arg)
{
	(void)arg;
	printf("tid %ld\n", (long)syscall(SYS_gettid));
	fflush(stdout);
	if (strcmp(mode, "exec") == 0) {
		char *argv[] = {"/bin/echo", "exec from a thread", NULL};
		execve("/bin/echo", argv, environ);
		_exit(127);
	}
	pid_t child = fork();
	if (child == 0) {
		char *argv[] = {"/bin/true", NULL};
		execve("/bin/true", argv, environ);
		_exit(127);
	}
	printf("child %d\n", (int)child);
	fflush(stdout);
	waitpid(child, NULL, 0);
	return NULL;
}

int main(int argc, char **argv)
{
	pthread_t th;

	if (argc != 2)
		return 2;
	mode = argv[1];
	if (pthread_create(&th, NULL, thread_main, NULL))
		return 1;
	pthread_join(th, NULL);
	return 0;
}
`

// buildThreadProgram compiles threadProgram with gcc into a temp dir.
func buildThreadProgram(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	src := filepath.Join(dir, "threads.c")
	bin := filepath.Join(dir, "threads")
	if err := os.WriteFile(src, []byte(threadProgram), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("gcc", "-pthread", "-O1", "-o", bin, src).CombinedOutput()
	if err != nil {
		t.Fatalf("gcc (needed to build the thread test program): %v\n%s", err, out)
	}
	return bin
}

// runThreads runs the thread program and returns its pid and the numbers
// it printed ("tid N", "child N").
func runThreads(t *testing.T, bin, mode string) (pid uint32, printed map[string]uint32) {
	t.Helper()
	cmd := exec.Command(bin, mode)
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v", bin, mode, err)
	}
	printed = map[string]uint32{}
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), " "); ok {
			if n, err := strconv.ParseUint(v, 10, 32); err == nil {
				printed[k] = uint32(n)
			}
		}
	}
	if printed["tid"] == 0 {
		t.Fatalf("%s %s printed no tid: %q", bin, mode, out)
	}
	return uint32(cmd.Process.Pid), printed
}

func TestThreadEvents(t *testing.T) {
	bin := buildThreadProgram(t)
	tr := loadTracer(t, testPinDir(t))
	c, _ := collect(t, tr, isProcessEvent)

	t.Run("exec from a thread", func(t *testing.T) {
		pid, printed := runThreads(t, bin, "exec")
		tid := printed["tid"]
		if tid == pid {
			t.Fatalf("the thread has the leader's id %d", pid)
		}

		fk := waitFor(t, c, "thread creation", func(e Fork) bool { return e.PID == pid && e.ChildTID == tid })
		if !fk.Thread || fk.ChildPID != pid || fk.TID != pid {
			t.Errorf("fork = %+v, want a thread of %d created by the leader", fk, pid)
		}

		ex := waitFor(t, c, "exec of /bin/echo", func(e Exec) bool { return e.PID == pid && e.Filename == "/bin/echo" })
		if ex.OldTID != tid || ex.TID != pid || ex.Comm != "echo" || ex.PPID != uint32(os.Getpid()) {
			t.Errorf("exec = %+v, want old tid %d, tid %d (after de_thread), comm echo", ex, tid, pid)
		}
	})

	t.Run("fork and exec from a thread", func(t *testing.T) {
		pid, printed := runThreads(t, bin, "fork")
		tid, child := printed["tid"], printed["child"]

		fk := waitFor(t, c, "fork from a thread", func(e Fork) bool { return e.ChildPID == child })
		if fk.Thread || fk.PID != pid || fk.TID != tid || fk.ChildTID != child {
			t.Errorf("fork = %+v, want process %d forked by thread %d of %d", fk, child, tid, pid)
		}

		ex := waitFor(t, c, "exec of the forked child", func(e Exec) bool { return e.PID == child })
		if ex.PPID != pid || ex.Filename != "/bin/true" || ex.OldTID != child {
			t.Errorf("exec = %+v, want ppid %d filename /bin/true", ex, pid)
		}
	})
}

func TestTCPStateEvents(t *testing.T) {
	tr := loadTracer(t, testPinDir(t))
	c, _ := collect(t, tr, func(ev Event) bool { _, ok := ev.(TCPState); return ok })
	me := uint32(os.Getpid())
	lo := netip.MustParseAddr("127.0.0.1")

	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	lport := uint16(ln.Addr().(*net.TCPAddr).Port)
	server := netip.AddrPortFrom(lo, lport)

	listen := waitFor(t, c, "LISTEN", func(e TCPState) bool { return e.Src == server && e.NewState == TCPListen })
	if listen.PID != me || listen.OldState != TCPClose || listen.Family != 4 {
		t.Errorf("listen = %+v, want pid %d, CLOSE -> LISTEN", listen, me)
	}

	conn, err := net.Dial("tcp4", server.String())
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	client := netip.MustParseAddrPort(conn.LocalAddr().String())

	isClient := func(e TCPState) bool { return e.Src == client && e.Dst == server }
	isServer := func(e TCPState) bool { return e.Src == server && e.Dst == client }
	transition := func(match func(TCPState) bool, from, to TCPStateName) TCPState {
		t.Helper()
		e := waitFor(t, c, string(from)+" -> "+string(to), func(e TCPState) bool {
			return match(e) && e.OldState == from && e.NewState == to
		})
		if e.PID != me || e.Comm == "" {
			t.Errorf("%s -> %s attributed to pid %d comm %q, want %d", from, to, e.PID, e.Comm, me)
		}
		return e
	}

	est := transition(isClient, TCPSynSent, TCPEstablished)
	// connect() enters SYN_SENT before it picks the local port, so that
	// event is found by its cookie.
	synSent := transition(func(e TCPState) bool { return e.Cookie == est.Cookie }, TCPClose, TCPSynSent)
	if synSent.Dst != server || est.Cookie == 0 {
		t.Errorf("SYN_SENT = %+v, want destination %v and the cookie of the established socket", synSent, server)
	}
	synRecv := transition(isServer, TCPListen, TCPSynRecv)
	transition(isServer, TCPSynRecv, TCPEstablished)
	if synRecv.Cookie == est.Cookie || synRecv.Cookie == listen.Cookie {
		t.Errorf("accepted socket shares a cookie with the client or listener")
	}

	conn.Close()
	transition(isClient, TCPEstablished, TCPFinWait1)
	srv.Close()
	clientClose := waitFor(t, c, "client CLOSE", func(e TCPState) bool { return isClient(e) && e.NewState == TCPClose })
	if clientClose.Cookie != est.Cookie || clientClose.PID != me {
		t.Errorf("client close = %+v, want cookie %#x pid %d", clientClose, est.Cookie, me)
	}
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/ns/net", &st); err != nil {
		t.Fatal(err)
	}
	if uint64(clientClose.NetNS) != st.Ino {
		t.Errorf("client close netns %d, want this process's %d", clientClose.NetNS, st.Ino)
	}
	waitFor(t, c, "server CLOSE", func(e TCPState) bool { return isServer(e) && e.NewState == TCPClose })
	ln.Close()
	lclose := waitFor(t, c, "listener CLOSE", func(e TCPState) bool {
		return e.Src == server && e.OldState == TCPListen && e.NewState == TCPClose
	})
	if lclose.Cookie != listen.Cookie || lclose.PID != me {
		t.Errorf("listener close = %+v, want cookie %#x pid %d", lclose, listen.Cookie, me)
	}

	// CLOSE forgot the three sockets and the listening port.
	var (
		skaddr uint64
		owner  traceSkOwner
	)
	it := tr.objs.TraceSkOwner.Iterate()
	for it.Next(&skaddr, &owner) {
		if skaddr == listen.Cookie || skaddr == est.Cookie || skaddr == synRecv.Cookie {
			t.Errorf("trace_sk_owner still holds socket %#x: %+v", skaddr, owner)
		}
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	var (
		lk traceListenKey
		lv traceListenVal
	)
	it = tr.objs.TraceListen.Iterate()
	for it.Next(&lk, &lv) {
		if lk.Port == lport {
			t.Errorf("trace_listen still holds port %d: %+v", lport, lv)
		}
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
}

// closedUDPPort returns a loopback UDP port that nothing listens on.
func closedUDPPort(tb testing.TB) uint16 {
	tb.Helper()
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	port := uint16(pc.LocalAddr().(*net.UDPAddr).Port)
	pc.Close()
	return port
}

func TestDropEvents(t *testing.T) {
	tr := loadTracer(t, testPinDir(t))
	c, r := collect(t, tr, func(ev Event) bool { d, ok := ev.(Drop); return ok && d.L4Proto == syscall.IPPROTO_UDP })

	var ns syscall.Stat_t
	if err := syscall.Stat("/proc/self/ns/net", &ns); err != nil {
		t.Fatal(err)
	}
	lo, err := net.InterfaceByName("lo")
	if err != nil {
		t.Fatal(err)
	}

	dport := closedUDPPort(t)
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	if _, err := pc.WriteTo([]byte("qbo"), &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1), Port: int(dport)}); err != nil {
		t.Fatal(err)
	}
	src := netip.MustParseAddrPort(pc.LocalAddr().String())
	dst := netip.AddrPortFrom(netip.MustParseAddr("127.0.0.1"), dport)

	d := waitFor(t, c, "drop of the datagram", func(d Drop) bool { return d.Dst == dst })
	if st := r.Stats(); st.Received == 0 || st.Decoded == 0 || st.Decoded+st.DecodeErrors != st.Received {
		t.Errorf("reader stats %+v: want received = decoded + decode errors > 0", st)
	}
	if d.ReasonName != "NO_SOCKET" || d.Src != src || d.EtherProto != 0x0800 {
		t.Errorf("drop = %+v, want NO_SOCKET from %v, ether proto IPv4", d, src)
	}
	if d.Ifindex != uint32(lo.Index) || d.NetNS != uint32(ns.Ino) || d.Location == 0 {
		t.Errorf("drop = %+v, want ifindex %d (lo), netns %d, a location", d, lo.Index, ns.Ino)
	}
}

func pinnedLinkIDs(t *testing.T, dir string, names []string) map[string]link.ID {
	t.Helper()
	ids := map[string]link.ID{}
	for _, name := range names {
		l, err := link.LoadPinnedLink(filepath.Join(bpf.LinksDir(dir), "trace_"+name), nil)
		if err != nil {
			t.Fatalf("pinned link of %s: %v", name, err)
		}
		info, err := l.Info()
		l.Close()
		if err != nil {
			t.Fatal(err)
		}
		ids[name] = info.ID
	}
	return ids
}

func TestRestart(t *testing.T) {
	dir := testPinDir(t)
	t1, err := Load(Options{PinDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	maps1, err := t1.MapIDs()
	if err != nil {
		t.Fatal(err)
	}
	links1, err := t1.linkIDs()
	if err != nil {
		t.Fatal(err)
	}
	if len(maps1) != 4 || len(links1) != 5 {
		t.Fatalf("maps %v links %v, want 4 maps and 5 links", maps1, links1)
	}
	before, err := t1.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if err := t1.Close(); err != nil {
		t.Fatal(err)
	}

	// Nobody holds the object now: the pins alone keep it attached.
	names := make([]string, 0, len(links1))
	for name := range links1 {
		names = append(names, name)
	}
	if got := pinnedLinkIDs(t, dir, names); !equalMaps(got, links1) {
		t.Fatalf("pinned links %v, want %v", got, links1)
	}
	if err := exec.Command("/bin/true").Run(); err != nil {
		t.Fatal(err)
	}

	t2 := loadTracer(t, dir)
	maps2, err := t2.MapIDs()
	if err != nil {
		t.Fatal(err)
	}
	links2, err := t2.linkIDs()
	if err != nil {
		t.Fatal(err)
	}
	if !equalMaps(maps1, maps2) {
		t.Errorf("map IDs changed across restart: %v then %v", maps1, maps2)
	}
	if !equalMaps(links1, links2) {
		t.Errorf("link IDs changed across restart of an unchanged program: %v then %v", links1, links2)
	}
	after, err := t2.Stats()
	if err != nil {
		t.Fatal(err)
	}
	// Nothing reads the ring in this test, so it may have filled up:
	// count lost records as written too.
	written := func(s KernelStats) uint64 { return s.Kinds[KindExec].Emitted + s.Kinds[KindExec].Lost }
	if written(after) <= written(before) {
		t.Errorf("exec records %d before the restart, %d after: telemetry stopped while closed",
			written(before), written(after))
	}
	t2.Close()

	// A pin that holds another program's link (as after an upgrade) is
	// replaced; the others are kept.
	forkPin := filepath.Join(bpf.LinksDir(dir), "trace_"+traceProgSchedProcessFork)
	if err := os.Remove(forkPin); err != nil {
		t.Fatal(err)
	}
	stale, err := link.NewFromID(links1[traceProgKfreeSkb])
	if err != nil {
		t.Fatal(err)
	}
	if err := stale.Pin(forkPin); err != nil {
		t.Fatal(err)
	}
	stale.Close()

	t3 := loadTracer(t, dir)
	links3, err := t3.linkIDs()
	if err != nil {
		t.Fatal(err)
	}
	for name, id := range links3 {
		if replaced := id != links1[name]; replaced != (name == traceProgSchedProcessFork) {
			t.Errorf("link of %s: id %d, was %d", name, id, links1[name])
		}
	}
	if got := pinnedLinkIDs(t, dir, names); !equalMaps(got, links3) {
		t.Errorf("pinned links %v, want %v", got, links3)
	}
	entries, err := os.ReadDir(bpf.LinksDir(dir))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != len(names) {
		t.Errorf("links dir holds %d pins, want %d: a pin in flight was left", len(entries), len(names))
	}
}

func equalMaps[K comparable, V comparable](a, b map[K]V) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// TestBpftoolDump checks that the pinned maps carry BTF, so that bpftool
// prints field names.
func TestBpftoolDump(t *testing.T) {
	dir := testPinDir(t)
	tr := loadTracer(t, dir)
	if err := exec.Command("/bin/true").Run(); err != nil {
		t.Fatal(err)
	}
	if _, err := tr.Stats(); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("bpftool", "-j", "map", "dump", "pinned", filepath.Join(dir, "trace_stats")).Output()
	if err != nil {
		t.Fatalf("bpftool map dump: %v", err)
	}
	var entries []struct {
		Formatted struct {
			Values []struct {
				Value map[string]uint64 `json:"value"`
			} `json:"values"`
		} `json:"formatted"`
	}
	if err := json.Unmarshal(out, &entries); err != nil {
		t.Fatalf("bpftool output: %v\n%s", err, out)
	}
	if len(entries) == 0 || len(entries[0].Formatted.Values) == 0 {
		t.Fatalf("bpftool printed no formatted values (no BTF?):\n%.500s", out)
	}
	if _, ok := entries[0].Formatted.Values[0].Value["emitted"]; !ok {
		t.Errorf("bpftool printed no field \"emitted\":\n%.500s", out)
	}
}

// dropSource sends UDP datagrams to a closed loopback port: each one is
// dropped (NO_SOCKET) and so produces one drop event, cheaply.
type dropSource struct {
	fd    int
	to    *syscall.SockaddrInet4
	dport uint16
}

func newDropSource(b *testing.B) *dropSource {
	b.Helper()
	dport := closedUDPPort(b)
	fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_DGRAM, 0)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { syscall.Close(fd) })
	return &dropSource{fd: fd, dport: dport, to: &syscall.SockaddrInet4{Port: int(dport), Addr: [4]byte{127, 0, 0, 1}}}
}

func (s *dropSource) send(b *testing.B, n int) {
	payload := []byte("qbo")
	for range n {
		if err := syscall.Sendto(s.fd, payload, 0, s.to); err != nil {
			b.Fatal(err)
		}
	}
}

// counter runs a Reader until stop is called and counts the drop events
// of src that reach the channel.
type counter struct {
	r    *Reader
	mu   sync.Mutex
	n    int
	stop func()
}

func startCounter(b *testing.B, tr *Tracer, src *dropSource) *counter {
	b.Helper()
	r, err := NewReader(tr, 0)
	if err != nil {
		b.Fatal(err)
	}
	c := &counter{r: r}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	go func() {
		for ev := range r.Events() {
			if d, ok := ev.(Drop); ok && d.Dst.Port() == src.dport {
				c.mu.Lock()
				c.n++
				c.mu.Unlock()
			}
		}
	}()
	c.stop = func() {
		cancel()
		if err := <-done; err != nil {
			b.Errorf("Run: %v", err)
		}
	}
	return c
}

func (c *counter) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

// waitCount waits until want events were counted or none arrived for
// 500 ms (the rest were lost), and returns the count.
func (c *counter) waitCount(want int) int {
	last, lastChange := -1, time.Now()
	for n := c.count(); ; n = c.count() {
		if n >= want || time.Since(lastChange) > 500*time.Millisecond {
			return n
		}
		if n != last {
			last, lastChange = n, time.Now()
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// BenchmarkRingToChannel measures the path from the kernel program through
// the ring buffer and Reader to the channel, with drop events as the load.
//
// live: the benchmark sends while the Reader runs, so events/s is bounded
// by how fast one core can produce drops; it shows whether the reader keeps
// up (ring-lost and queue-dropped stay 0).
// drain: the ring is filled first with no reader, then drained; events/s
// is the Reader's own throughput.
func BenchmarkRingToChannel(b *testing.B) {
	b.Run("live", func(b *testing.B) {
		tr := loadTracer(b, testPinDir(b))
		src := newDropSource(b)
		c := startCounter(b, tr, src)
		defer c.stop()
		k0, err := tr.Stats()
		if err != nil {
			b.Fatal(err)
		}

		b.ResetTimer()
		start := time.Now()
		src.send(b, b.N)
		n := c.waitCount(b.N)
		elapsed := time.Since(start)
		b.StopTimer()

		k1, err := tr.Stats()
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(n)/elapsed.Seconds(), "events/s")
		b.ReportMetric(float64(b.N-n), "missing")
		b.ReportMetric(float64(k1.Kinds[KindDrop].Lost-k0.Kinds[KindDrop].Lost), "ring-lost")
		b.ReportMetric(float64(c.r.Stats().QueueDropped), "queue-dropped")
	})

	b.Run("drain", func(b *testing.B) {
		tr := loadTracer(b, testPinDir(b))
		src := newDropSource(b)
		// A batch must fit the 4 MiB ring with room for the host's own
		// events: drop records take 128 bytes with the ring's header.
		const batch = 16384
		var received int
		var elapsed time.Duration
		b.ResetTimer()
		for left := b.N; left > 0; left -= batch {
			n := min(left, batch)
			b.StopTimer()
			src.send(b, n)
			b.StartTimer()
			start := time.Now()
			c := startCounter(b, tr, src)
			received += c.waitCount(n)
			elapsed += time.Since(start)
			b.StopTimer()
			c.stop()
		}
		k, err := tr.Stats()
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(received)/elapsed.Seconds(), "events/s")
		b.ReportMetric(float64(b.N-received), "missing")
		b.ReportMetric(float64(k.Kinds[KindDrop].Lost), "ring-lost")
	})
}
