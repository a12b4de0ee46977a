//go:build e2e

package e2e

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/qbo/qbo/internal/netnstest"
	"github.com/qbo/qbo/mirror"
)

type processObj struct {
	PID     uint32 `json:"pid"`
	PPID    uint32 `json:"ppid"`
	Comm    string `json:"comm"`
	Exe     string `json:"exe"`
	Threads int    `json:"threads"`
}

func decodeObj[T any](t *testing.T, m mirror.Message) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(m.Object, &v); err != nil {
		t.Fatalf("decoding %s: %v", m.Object, err)
	}
	return v
}

// threadExecSource is a program whose second thread first forks and execs
// /bin/true, then execs /bin/echo itself: exec from a non-leader thread.
const threadExecSource = `
#include <pthread.h>
#include <sys/wait.h>
#include <unistd.h>
static void *run(void *arg) {
	pid_t child = fork();
	if (child == 0) {
		execl("/bin/true", "true", (char *)0);
		_exit(127);
	}
	waitpid(child, 0, 0);
	execl("/bin/echo", "echo", "from-thread", (char *)0);
	return 0;
}
int main(void) {
	pthread_t t;
	pthread_create(&t, 0, run, 0);
	pthread_join(t, 0);
	return 1;
}
`

func TestWatchProcessesSeesExec(t *testing.T) {
	d := newDaemon(t)
	d.start()
	w := d.watch("processes")
	me := uint32(os.Getpid())

	isExec := func(pid uint32, comm string) func(mirror.Message) bool {
		return func(m mirror.Message) bool {
			return m.Type == mirror.TypeDelta && m.Cause == "exec" && m.Key == strconv.Itoa(int(pid)) &&
				decodeObj[processObj](t, m).Comm == comm
		}
	}

	// A fresh process.
	echo := exec.Command("/bin/echo", "qbo-e2e")
	if err := echo.Run(); err != nil {
		t.Fatal(err)
	}
	pid := uint32(echo.Process.Pid)
	got := decodeObj[processObj](t, w.waitFor("exec of /bin/echo", 20*time.Second, isExec(pid, "echo")))
	if got.PID != pid || got.PPID != me || got.Exe != "/bin/echo" {
		t.Errorf("exec of /bin/echo: got %+v, want pid %d ppid %d exe /bin/echo", got, pid, me)
	}

	// Commands run from a second thread of a test program.
	dir := t.TempDir()
	src := filepath.Join(dir, "threadexec.c")
	if err := os.WriteFile(src, []byte(threadExecSource), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "threadexec")
	run(t, "gcc", "-O1", "-pthread", "-o", bin, src)
	prog := exec.Command(bin)
	if out, err := prog.CombinedOutput(); err != nil || string(out) != "from-thread\n" {
		t.Fatalf("threadexec: %v %q", err, out)
	}
	ppid := uint32(prog.Process.Pid)
	w.waitFor("the second thread of threadexec", 20*time.Second, func(m mirror.Message) bool {
		return m.Type == mirror.TypeDelta && m.Cause == "clone" && m.Key == strconv.Itoa(int(ppid)) &&
			decodeObj[processObj](t, m).Threads == 2
	})
	child := decodeObj[processObj](t, w.waitFor("exec of /bin/true from the thread's child", 20*time.Second,
		func(m mirror.Message) bool {
			return m.Type == mirror.TypeDelta && m.Cause == "exec" && decodeObj[processObj](t, m).Comm == "true" &&
				decodeObj[processObj](t, m).PPID == ppid
		}))
	if child.Exe != "/bin/true" {
		t.Errorf("exec from thread's child: got %+v, want exe /bin/true", child)
	}
	self := decodeObj[processObj](t, w.waitFor("exec of /bin/echo by the thread", 20*time.Second, isExec(ppid, "echo")))
	if self.PPID != me || self.Exe != "/bin/echo" || self.Threads != 1 {
		t.Errorf("exec by thread: got %+v, want ppid %d exe /bin/echo threads 1", self, me)
	}
}

type connectionObj struct {
	Src, Dst, State, Comm string
	PID                   uint32
}

func TestWatchConnectionsSeesLoopbackTCP(t *testing.T) {
	d := newDaemon(t)
	d.start()
	w := d.watch("connections")

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	conn, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	key := fmt.Sprintf("tcp %s->%s", conn.LocalAddr(), ln.Addr())
	est := decodeObj[connectionObj](t, w.waitFor("ESTABLISHED for "+key, 20*time.Second, func(m mirror.Message) bool {
		return m.Type == mirror.TypeDelta && m.Op == mirror.OpUpsert && m.Key == key &&
			decodeObj[connectionObj](t, m).State == "ESTABLISHED"
	}))
	if est.PID != uint32(os.Getpid()) {
		t.Errorf("connection %s: pid %d, want %d (the test, which called connect)", key, est.PID, os.Getpid())
	}
	conn.Close()
	(<-accepted).Close()
	w.waitFor("delete of "+key, 20*time.Second, func(m mirror.Message) bool {
		return m.Type == mirror.TypeDelta && m.Op == mirror.OpDelete && m.Key == key
	})
}

type dropObj struct {
	Kind   string `json:"kind"`
	Reason string `json:"reason"`
	Proto  string `json:"proto"`
	Src    string `json:"src"`
	Dst    string `json:"dst"`
	NetNS  uint32 `json:"netns"`
}

func TestDropInNamespaceAppearsInEvents(t *testing.T) {
	d := newDaemon(t)
	d.start()
	w := d.watch("events")
	ns := netnstest.New(t)
	port := 40000 + time.Now().Nanosecond()%20000
	// A UDP datagram to a closed port is dropped with reason NO_SOCKET.
	run(t, "ip", "netns", "exec", ns, "bash", "-c", fmt.Sprintf("echo qbo > /dev/udp/127.0.0.1/%d", port))
	dst := fmt.Sprintf("127.0.0.1:%d", port)
	got := decodeObj[dropObj](t, w.waitFor("drop to "+dst, 20*time.Second, func(m mirror.Message) bool {
		return m.Type == mirror.TypeDelta && m.Op == mirror.OpEvent && decodeObj[dropObj](t, m).Dst == dst
	}))
	if got.Kind != "drop" || got.Reason != "NO_SOCKET" || got.Proto != "udp" {
		t.Errorf("drop event: got %+v, want kind drop, reason NO_SOCKET, proto udp", got)
	}
	hostNS, err := os.Readlink("/proc/self/ns/net")
	if err != nil {
		t.Fatal(err)
	}
	if got.NetNS == 0 || fmt.Sprintf("net:[%d]", got.NetNS) == hostNS {
		t.Errorf("drop event netns %d: want the test namespace's, not the host's %s", got.NetNS, hostNS)
	}
}

// TestLossIsAnnounced gives qbod a reader queue of one event and floods it:
// the events that do not fit are counted and announced as a loss delta.
func TestLossIsAnnounced(t *testing.T) {
	d := newDaemon(t)
	cfg := filepath.Join(t.TempDir(), "qbod.yaml")
	if err := os.WriteFile(cfg, []byte("trace:\n  enabled: true\n  queue: 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	d.extra = []string{"--config", cfg}
	d.start()
	w := d.watch("events")
	ns := netnstest.New(t)
	run(t, "ip", "netns", "exec", ns, "bash", "-c", "for i in $(seq 5000); do echo x > /dev/udp/127.0.0.1/9; done")
	m := w.waitFor("a loss notice", 30*time.Second, func(m mirror.Message) bool {
		return m.Type == mirror.TypeDelta && m.Op == mirror.OpLoss
	})
	n := decodeObj[mirror.LossNotice](t, m)
	if n.Source != "queue" || n.Count == 0 || n.Total < n.Count {
		t.Errorf("loss notice %+v: want source queue and a positive count", n)
	}
	var st struct {
		Trace struct {
			QueueDropped uint64 `json:"queue_dropped"`
		} `json:"trace"`
	}
	out, _, code := d.qbo("status", "-o", "json")
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil || st.Trace.QueueDropped < n.Total {
		t.Errorf("status after loss: code %d, %s", code, out)
	}
}
