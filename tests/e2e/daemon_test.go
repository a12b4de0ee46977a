//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"gopkg.in/yaml.v3"

	"github.com/qbo/qbo/mirror"
)

// pinnedIDs returns the kernel IDs of every pinned map (files directly in
// the pin dir) and link (files in links/), by path.
func pinnedIDs(t *testing.T, pinDir string) map[string]int {
	t.Helper()
	ids := map[string]int{}
	for _, sub := range []struct{ dir, kind string }{{pinDir, "map"}, {filepath.Join(pinDir, "links"), "link"}} {
		ents, err := os.ReadDir(sub.dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			if e.IsDir() {
				continue
			}
			path := filepath.Join(sub.dir, e.Name())
			var info struct {
				ID int `json:"id"`
			}
			out := run(t, "bpftool", "-j", sub.kind, "show", "pinned", path)
			if err := json.Unmarshal([]byte(out), &info); err != nil || info.ID == 0 {
				t.Fatalf("bpftool %s show pinned %s: %v %s", sub.kind, path, err, out)
			}
			ids[sub.kind+" "+e.Name()] = info.ID
		}
	}
	return ids
}

func TestRestartReusesPinnedObjects(t *testing.T) {
	d := newDaemon(t)
	d.start()
	before := pinnedIDs(t, d.pinDir)
	if len(before) == 0 {
		t.Fatal("qbod pinned nothing")
	}

	// A second qbod on the same state dir refuses to start.
	out, err := exec.Command(filepath.Join(binDir, "qbod"), d.args()...).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "another qbod is running") {
		t.Errorf("second qbod: err %v, output %q; want a refusal naming the running one", err, out)
	}

	d.stop(syscall.SIGKILL) // no chance to clean anything up
	d.start()
	after := pinnedIDs(t, d.pinDir)
	for name, id := range before {
		if after[name] != id {
			t.Errorf("%s: id %d before the restart, %d after", name, id, after[name])
		}
	}
	// And once more after a graceful stop.
	d.stop(syscall.SIGTERM)
	d.start()
	again := pinnedIDs(t, d.pinDir)
	for name, id := range before {
		if again[name] != id {
			t.Errorf("%s: id %d before, %d after a SIGTERM restart", name, id, again[name])
		}
	}
}

func TestCLI(t *testing.T) {
	d := newDaemon(t)
	d.start()

	out, _, code := d.qbo("version")
	if code != 0 || !strings.Contains(out, "client: ") || !strings.Contains(out, "server: ") {
		t.Errorf("qbo version: exit %d, %q", code, out)
	}
	out, _, code = d.qbo("status")
	if code != 0 || !strings.Contains(out, "telemetry:") || !strings.Contains(out, "mirror processes:") {
		t.Errorf("qbo status: exit %d, %q", code, out)
	}

	out, _, code = d.qbo("get", "mirrors", "-o", "json")
	var mirrors []mirror.MirrorInfo
	if code != 0 || json.Unmarshal([]byte(out), &mirrors) != nil {
		t.Fatalf("get mirrors -o json: exit %d, %q", code, out)
	}
	names := map[string]string{}
	for _, m := range mirrors {
		names[m.Name] = m.Kind
	}
	for name, kind := range map[string]string{"processes": "state", "connections": "state", "events": "stream"} {
		if names[name] != kind {
			t.Errorf("get mirrors: %s is %q, want %q", name, names[name], kind)
		}
	}

	out, _, code = d.qbo("get", "processes", "-o", "json")
	var procs []processObj
	if code != 0 || json.Unmarshal([]byte(out), &procs) != nil {
		t.Fatalf("get processes -o json: exit %d", code)
	}
	found := false
	for _, p := range procs {
		found = found || p.PID == uint32(os.Getpid())
	}
	if !found {
		t.Errorf("get processes does not list the test process %d", os.Getpid())
	}
	out, _, code = d.qbo("get", "processes", strconv.Itoa(os.Getpid()))
	if code != 0 || !strings.Contains(out, "PID") || !strings.Contains(out, strconv.Itoa(os.Getpid())) {
		t.Errorf("get processes PID: exit %d, %q", code, out)
	}

	for _, c := range []struct {
		args []string
		code int
	}{
		{[]string{"get", "processes", "4294967295"}, 5}, // not found
		{[]string{"get"}, 2},                            // usage
		{[]string{"frobnicate"}, 2},
		{[]string{"get", "mirrors", "-o", "yaml"}, 2},
		{[]string{"watch", "no-such-mirror"}, 5},
		{[]string{"--server", d.listen, "--token", "wrong-token-wrong-token", "status"}, 4},
	} {
		if _, errOut, code := d.qbo(c.args...); code != c.code {
			t.Errorf("qbo %s: exit %d, want %d (stderr %q)", strings.Join(c.args, " "), code, c.code, errOut)
		}
	}

	// Over TCP with the token qbod generated.
	tok, err := os.ReadFile(filepath.Join(d.stateDir, "token"))
	if err != nil {
		t.Fatal(err)
	}
	if info, err := os.Stat(filepath.Join(d.stateDir, "token")); err != nil || info.Mode().Perm() != 0o600 {
		t.Errorf("token file mode: %v %v", info.Mode(), err)
	}
	out, errOut, code := d.qbo("--server", d.listen, "--token", strings.TrimSpace(string(tok)), "status", "-o", "json")
	if code != 0 || !strings.Contains(out, `"pin_dir"`) {
		t.Errorf("status over TCP: exit %d, %q %q", code, out, errOut)
	}
	if info, err := os.Stat(d.socket); err != nil || info.Mode().Perm() != 0o600 {
		t.Errorf("unix socket mode: %v %v, want 0600", info.Mode(), err)
	}
}

func TestHTTPEndpoints(t *testing.T) {
	d := newDaemon(t)
	d.start()
	get := func(path string) string {
		resp, err := http.Get("http://" + d.listen + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %s", path, resp.Status)
		}
		return string(body)
	}
	if got := get("/healthz"); strings.TrimSpace(got) != "ok" {
		t.Errorf("/healthz: %q", got)
	}
	metrics := get("/metrics")
	for _, name := range []string{"qbo_build_info", "qbo_trace_received_total", "qbo_trace_queue_dropped_total",
		"qbo_trace_ring_lost_total", "qbo_mirror_objects{mirror=\"processes\"}", "qbo_mirror_clients"} {
		if !strings.Contains(metrics, name) {
			t.Errorf("/metrics lacks %s", name)
		}
	}
	if page := get("/"); !strings.Contains(page, "<html") {
		t.Errorf("web page: %.200q", page)
	}
	// The websocket on TCP needs a token.
	resp, err := http.Get("http://" + d.listen + "/ws")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("/ws without token: %s, want 401", resp.Status)
	}

	// The AsyncAPI document qbod serves passes a real AsyncAPI parser.
	validator := os.Getenv("QBO_ASYNCAPI_VALIDATOR")
	if validator == "" {
		t.Fatal("QBO_ASYNCAPI_VALIDATOR is not set (make test sets it from scripts/asyncapi.sh install)")
	}
	spec := filepath.Join(t.TempDir(), "asyncapi.yaml")
	os.WriteFile(spec, []byte(get("/asyncapi.yaml")), 0o644)
	run(t, "node", validator, spec)
}

// TestMalformedInput sends garbage on one connection while a second client
// keeps working.
func TestMalformedInput(t *testing.T) {
	d := newDaemon(t)
	d.start()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	good := d.client(ctx)

	dialRaw := func() *websocket.Conn {
		c, _, err := websocket.Dial(ctx, "ws://unix/ws", &websocket.DialOptions{HTTPClient: d.httpClient()})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.CloseNow() })
		return c
	}
	readMsg := func(c *websocket.Conn) mirror.Message {
		t.Helper()
		_, data, err := c.Read(ctx)
		if err != nil {
			t.Fatalf("reading reply: %v", err)
		}
		var m mirror.Message
		if err := json.Unmarshal(data, &m); err != nil {
			t.Fatalf("reply is not JSON: %q", data)
		}
		return m
	}
	bad := dialRaw()
	for _, c := range []struct {
		name string
		typ  websocket.MessageType
		data string
		id   string
		code string
	}{
		{"not JSON", websocket.MessageText, "hello qbod", "", mirror.CodeBadRequest},
		{"JSON array", websocket.MessageText, "[1,2,3]", "", mirror.CodeBadRequest},
		{"binary garbage", websocket.MessageBinary, "\x00\xff\xfe\x01", "", mirror.CodeBadRequest},
		{"unknown command", websocket.MessageText, `{"type":"command","id":"7","command":"frobnicate"}`, "7", mirror.CodeUnknownCommand},
		{"bad args", websocket.MessageText, `{"type":"command","id":"8","command":"watch","args":{"mirror":42}}`, "8", mirror.CodeBadRequest},
		{"unknown mirror", websocket.MessageText, `{"type":"command","id":"9","command":"watch","args":{"mirror":"nope"}}`, "9", mirror.CodeNotFound},
	} {
		if err := bad.Write(ctx, c.typ, []byte(c.data)); err != nil {
			t.Fatalf("%s: write: %v", c.name, err)
		}
		m := readMsg(bad)
		if m.Error == nil || m.Error.Code != c.code || m.ID != c.id {
			t.Errorf("%s: got %+v, want error code %s for id %q", c.name, m, c.code, c.id)
		}
	}
	// A message over the read limit closes that connection only.
	huge := dialRaw()
	huge.Write(ctx, websocket.MessageText, []byte(`{"type":"command","id":"1","command":"status","args":{"x":"`+strings.Repeat("A", 4<<20)+`"}}`))
	_, _, err := huge.Read(ctx)
	if status := websocket.CloseStatus(err); status != websocket.StatusMessageTooBig {
		t.Errorf("huge message: read error %v (status %d), want close 1009", err, status)
	}
	var st map[string]any
	if err := good.Do(ctx, "status", nil, &st); err != nil {
		t.Fatalf("status on the good connection after garbage elsewhere: %v", err)
	}
	if err := bad.Write(ctx, websocket.MessageText, []byte(`{"type":"command","id":"10","command":"version"}`)); err != nil {
		t.Fatal(err)
	}
	if m := readMsg(bad); m.ID != "10" || m.OK == nil || !*m.OK {
		t.Errorf("version on the connection that sent garbage: %+v", m)
	}
	// A raw TCP peer that sends junk instead of an HTTP upgrade does no harm either.
	c, err := net.Dial("unix", d.socket)
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("\x16\x03\x01garbage\r\n\r\n"))
	c.Close()
	if err := good.Do(ctx, "version", nil, nil); err != nil && !errors.Is(err, context.Canceled) {
		t.Errorf("version after junk connection: %v", err)
	}
}

// TestBpftoolInspection: an operator can find qbo's objects by name and
// read its tables with field names.
func TestBpftoolInspection(t *testing.T) {
	d := newDaemon(t)
	d.start()
	progs := run(t, "bpftool", "prog", "show")
	for _, name := range []string{"sched_process_exec", "sched_process_fork", "sched_process_exit",
		"inet_sock_set_state", "kfree_skb"} {
		if !strings.Contains(progs, "name "+name) {
			t.Errorf("bpftool prog show lacks %s", name)
		}
	}
	links, err := os.ReadDir(filepath.Join(d.pinDir, "links"))
	if err != nil || len(links) < 5 {
		t.Fatalf("pinned links: %v %v", links, err)
	}
	for _, l := range links {
		out := run(t, "bpftool", "link", "show", "pinned", filepath.Join(d.pinDir, "links", l.Name()))
		if !strings.Contains(out, "prog ") {
			t.Errorf("link %s: %q", l.Name(), out)
		}
	}
	dump := run(t, "bpftool", "map", "dump", "pinned", filepath.Join(d.pinDir, "trace_stats"))
	for _, field := range []string{`"emitted"`, `"lost"`} {
		if !strings.Contains(dump, field) {
			t.Errorf("trace_stats dump lacks the BTF field name %s:\n%.400s", field, dump)
		}
	}
	if out := run(t, "bpftool", "map", "show", "pinned", filepath.Join(d.pinDir, "events")); !strings.Contains(out, "ringbuf") || !strings.Contains(out, "name events") {
		t.Errorf("events map: %q", out)
	}
}

// TestWebPageShowsMirrorLive loads the web page in headless Chromium over
// TCP with the token, opens the processes mirror, and reads the rendered
// table: the page speaks the same websocket protocol as every client.
//
// The table is read live through the DevTools protocol until it shows this
// process (or a minute passes). A one-shot --dump-dom does not work here:
// Chromium's virtual time does not wait for websocket messages, so under
// load it dumped the page before the snapshot had arrived.
func TestWebPageShowsMirrorLive(t *testing.T) {
	d := newDaemon(t)
	d.start()
	tok, err := os.ReadFile(filepath.Join(d.stateDir, "token"))
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + d.listen + "/?token=" + strings.TrimSpace(string(tok)) + "#processes"
	me := "<td>" + strconv.Itoa(os.Getpid()) + "</td>"
	page := openPage(t, url)
	var body, counts string
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		body = page.eval(`document.getElementById("tbody").innerHTML`)
		counts = page.eval(`document.getElementById("counts").textContent`)
		if strings.Contains(counts, "rows, seq ") && strings.Contains(body, me) {
			return
		}
	}
	// Tell a page problem from a mirror problem.
	list, _, _ := d.qbo("get", "processes", "-o", "json")
	inMirror := regexp.MustCompile(fmt.Sprintf(`"pid":\s*%d\b`, os.Getpid())).MatchString(list)
	t.Errorf("after a minute the processes table in the page lacks this test's pid %d (in the mirror: %v; counts %q; log %q)",
		os.Getpid(), inMirror, counts, page.eval(`document.getElementById("log").textContent`))
}

// cdpPage is a page of a headless Chromium driven through the DevTools
// protocol (Runtime.evaluate over the page's websocket).
type cdpPage struct {
	t    *testing.T
	conn *websocket.Conn
	id   int
}

// openPage starts headless Chromium on url (stopped at cleanup) and
// connects to the page.
func openPage(t *testing.T, url string) *cdpPage {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
		"--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir="+t.TempDir(), "--remote-debugging-port=0", "--remote-allow-origins=*", url)
	// Its renderer and helper processes go with it: a group of its own.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("chromium: %v", err)
	}
	t.Cleanup(func() { cancel(); cmd.Wait() })
	// "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/ID"
	port := make(chan string, 1)
	go func() {
		re := regexp.MustCompile(`DevTools listening on ws://127\.0\.0\.1:(\d+)/`)
		buf := make([]byte, 0, 4096)
		tmp := make([]byte, 512)
		sent := false
		for {
			n, err := stderr.Read(tmp)
			if !sent {
				buf = append(buf, tmp[:n]...)
				if m := re.FindSubmatch(buf); m != nil {
					port <- string(m[1])
					sent = true
				}
			}
			if err != nil {
				if !sent {
					close(port)
				}
				return
			}
		}
	}()
	var p string
	select {
	case p = <-port:
	case <-time.After(time.Minute):
	}
	if p == "" {
		t.Fatal("chromium did not report its DevTools port")
	}
	var wsURL string
	for deadline := time.Now().Add(30 * time.Second); wsURL == "" && time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		resp, err := http.Get("http://127.0.0.1:" + p + "/json/list")
		if err != nil {
			continue
		}
		var targets []struct{ Type, URL, WebSocketDebuggerURL string }
		err = json.NewDecoder(resp.Body).Decode(&targets)
		resp.Body.Close()
		if err != nil {
			continue
		}
		for _, tg := range targets {
			if tg.Type == "page" && strings.HasPrefix(tg.URL, "http://") {
				wsURL = tg.WebSocketDebuggerURL
			}
		}
	}
	if wsURL == "" {
		t.Fatal("chromium lists no page for the URL")
	}
	dctx, dcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer dcancel()
	conn, _, err := websocket.Dial(dctx, wsURL, nil)
	if err != nil {
		t.Fatalf("connecting to the page's DevTools: %v", err)
	}
	conn.SetReadLimit(16 << 20)
	t.Cleanup(func() { conn.CloseNow() })
	return &cdpPage{t: t, conn: conn}
}

// eval returns the string value of expression in the page ("" if it
// throws, e.g. before the element exists).
func (p *cdpPage) eval(expression string) string {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	p.id++
	req, _ := json.Marshal(map[string]any{"id": p.id, "method": "Runtime.evaluate",
		"params": map[string]any{"expression": expression, "returnByValue": true}})
	if err := p.conn.Write(ctx, websocket.MessageText, req); err != nil {
		p.t.Fatalf("DevTools: %v", err)
	}
	for {
		_, msg, err := p.conn.Read(ctx)
		if err != nil {
			p.t.Fatalf("DevTools: %v", err)
		}
		var r struct {
			ID     int
			Result struct {
				Result struct{ Value any }
			}
		}
		if json.Unmarshal(msg, &r) != nil || r.ID != p.id {
			continue // an event, or another reply
		}
		v, _ := r.Result.Result.Value.(string)
		return v
	}
}

// TestAsyncAPICoversEveryCommandAndMirror: every command qbod answers is an
// operation of the document it serves (by title), and every mirror has its
// snapshot and delta messages, so the contract cannot fall behind the code.
func TestAsyncAPICoversEveryCommandAndMirror(t *testing.T) {
	d := runtimeDaemon(t) // every subsystem running
	d.start()
	var st struct {
		Commands []string            `json:"commands"`
		Mirrors  []mirror.MirrorInfo `json:"mirrors"`
	}
	out, _, code := d.qbo("status", "-o", "json")
	if code != 0 || json.Unmarshal([]byte(out), &st) != nil || len(st.Commands) == 0 {
		t.Fatalf("status: exit %d\n%s", code, out)
	}
	resp, err := http.Get("http://" + d.listen + "/asyncapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var doc struct {
		Operations map[string]struct {
			Title string `yaml:"title"`
		} `yaml:"operations"`
		Components struct {
			Messages map[string]any `yaml:"messages"`
		} `yaml:"components"`
	}
	if err := yaml.NewDecoder(resp.Body).Decode(&doc); err != nil {
		t.Fatal(err)
	}
	titles := map[string]bool{}
	for _, op := range doc.Operations {
		titles[op.Title] = true
	}
	for _, c := range st.Commands {
		if !titles[c] {
			t.Errorf("command %q has no operation titled %q in asyncapi.yaml", c, c)
		}
	}
	for _, m := range st.Mirrors {
		for _, suffix := range []string{"Snapshot", "Delta"} {
			if _, ok := doc.Components.Messages[m.Name+suffix]; !ok {
				t.Errorf("mirror %q has no message %s%s in asyncapi.yaml", m.Name, m.Name, suffix)
			}
		}
	}
}
