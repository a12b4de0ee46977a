//go:build e2e

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/qbo/qbo/mirror"
)

var binDir = os.Getenv("QBO_BIN")

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "e2e: must run as root (make test-e2e)")
		os.Exit(1)
	}
	if binDir == "" {
		fmt.Fprintln(os.Stderr, "e2e: QBO_BIN must name the directory with the built qbod and qbo (make test-e2e sets it)")
		os.Exit(1)
	}
	os.Exit(m.Run())
}

func randomSuffix() string {
	b := make([]byte, 4)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// syncBuffer is a bytes.Buffer safe for the copying goroutine of exec.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// daemon is one qbod started by a test.
type daemon struct {
	t        *testing.T
	stateDir string
	socket   string
	pinDir   string
	listen   string
	extra    []string // more flags for start, e.g. --config
	cmd      *exec.Cmd
	log      *syncBuffer
	done     chan struct{} // closed when the process has exited
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// newDaemon prepares (but does not start) a qbod with private paths and
// registers the clean-up of everything it may create.
func newDaemon(t *testing.T) *daemon {
	t.Helper()
	dir := t.TempDir()
	d := &daemon{
		t:        t,
		stateDir: filepath.Join(dir, "state"),
		socket:   filepath.Join(dir, "qbod.sock"),
		pinDir:   "/sys/fs/bpf/qbo-e2e-" + randomSuffix(),
		listen:   freePort(t),
	}
	t.Cleanup(func() {
		d.stop(syscall.SIGTERM)
		out, err := exec.Command(filepath.Join(binDir, "qbod"), d.args("--cleanup")...).CombinedOutput()
		if err != nil {
			t.Errorf("qbod --cleanup: %v\n%s", err, out)
		}
		if _, err := os.Stat(d.pinDir); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("pin dir %s still exists after --cleanup", d.pinDir)
			os.RemoveAll(d.pinDir)
		}
		if t.Failed() && d.log != nil {
			t.Logf("qbod log:\n%s", d.log)
		}
	})
	return d
}

func (d *daemon) args(extra ...string) []string {
	args := []string{"--state-dir", d.stateDir, "--socket", d.socket, "--pin-dir", d.pinDir,
		"--listen", d.listen, "--log-level", "debug"}
	if !hasFlag(extra, "--config") && !hasFlag(d.extra, "--config") {
		args = append(args, "--config", "/dev/null") // embedded defaults only, whatever /etc/qbo holds
	}
	return append(args, extra...)
}

// start runs qbod and waits, with a deadline, until its unix socket answers
// /healthz.
func (d *daemon) start() {
	d.t.Helper()
	d.startInNetns("")
}

// startInNetns is start with qbod inside network namespace ns ("" for the
// test's own). It uses nsenter, not "ip netns exec": that also gives the
// process a private /sys, hence a private bpffs whose pins (and links)
// vanish when qbod exits.
func (d *daemon) startInNetns(ns string) {
	d.t.Helper()
	d.log = &syncBuffer{}
	d.cmd = exec.Command(filepath.Join(binDir, "qbod"), d.args(d.extra...)...)
	if ns != "" {
		d.cmd = exec.Command("nsenter", append([]string{"--net=/run/netns/" + ns, filepath.Join(binDir, "qbod")}, d.args(d.extra...)...)...)
	}
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	if err := d.cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	d.done = make(chan struct{})
	go func() { d.cmd.Wait(); close(d.done) }()
	client := d.httpClient()
	deadline := time.After(30 * time.Second)
	for {
		if resp, err := client.Get("http://unix/healthz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		select {
		case <-d.done:
			d.t.Fatalf("qbod exited during start: %v\n%s", d.cmd.ProcessState, d.log)
		case <-deadline:
			d.t.Fatalf("qbod did not answer /healthz within 30s\n%s", d.log)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// stop sends sig and waits for qbod to exit.
func (d *daemon) stop(sig syscall.Signal) {
	if d.cmd == nil || d.done == nil {
		return
	}
	d.cmd.Process.Signal(sig)
	select {
	case <-d.done:
	case <-time.After(30 * time.Second):
		d.t.Errorf("qbod did not exit within 30s of %v", sig)
		d.cmd.Process.Kill()
		<-d.done
	}
	d.cmd, d.done = nil, nil
}

// httpClient talks HTTP over the unix socket.
func (d *daemon) httpClient() *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", d.socket)
		},
	}}
}

// client connects a websocket client over the unix socket.
func (d *daemon) client(ctx context.Context) *mirror.Client {
	d.t.Helper()
	c, err := mirror.Dial(ctx, mirror.DialOptions{Socket: d.socket})
	if err != nil {
		d.t.Fatal(err)
	}
	d.t.Cleanup(func() { c.Close() })
	return c
}

// qbo runs the CLI against this daemon and returns stdout, stderr and the
// exit code.
func (d *daemon) qbo(args ...string) (string, string, int) {
	d.t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "qbo"), append([]string{"--socket", d.socket}, args...)...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee := (*exec.ExitError)(nil); errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		d.t.Fatal(err)
	}
	return out.String(), errb.String(), code
}

// watcher is a running "qbo watch MIRROR -o json" whose lines are decoded
// into messages.
type watcher struct {
	t    *testing.T
	msgs chan mirror.Message
	seen []mirror.Message
}

// watch starts the CLI watching a mirror and waits for its snapshot to end.
func (d *daemon) watch(name string) *watcher {
	d.t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "qbo"), "--socket", d.socket, "watch", name, "-o", "json")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		d.t.Fatal(err)
	}
	stderr := &syncBuffer{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	w := &watcher{t: d.t, msgs: make(chan mirror.Message, 1<<16)}
	go func() {
		defer close(w.msgs)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 1<<20), 16<<20)
		for sc.Scan() {
			var m mirror.Message
			if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
				d.t.Errorf("watch %s printed a line that is not a message: %q", name, sc.Text())
				continue
			}
			w.msgs <- m
		}
	}()
	d.t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		if d.t.Failed() {
			d.t.Logf("watch %s stderr:\n%s", name, stderr)
		}
	})
	w.waitFor("snapshot_end", 30*time.Second, func(m mirror.Message) bool { return m.Type == mirror.TypeSnapshotEnd })
	return w
}

// waitFor reads messages until match returns true or the deadline passes.
func (w *watcher) waitFor(what string, within time.Duration, match func(mirror.Message) bool) mirror.Message {
	w.t.Helper()
	deadline := time.After(within)
	for {
		select {
		case m, ok := <-w.msgs:
			if !ok {
				w.t.Fatalf("watch ended before %s", what)
			}
			w.seen = append(w.seen, m)
			if match(m) {
				return m
			}
		case <-deadline:
			var last []string
			for _, m := range w.seen[max(0, len(w.seen)-20):] {
				b, _ := json.Marshal(m)
				last = append(last, string(b))
			}
			w.t.Fatalf("no %s within %v (%d messages seen; the last ones:\n%s)", what, within, len(w.seen), strings.Join(last, "\n"))
		}
	}
}

// run runs a command and fails the test when it fails.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func hasFlag(args []string, flag string) bool {
	for _, a := range args {
		if a == flag {
			return true
		}
	}
	return false
}
