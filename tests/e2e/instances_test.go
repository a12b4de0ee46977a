//go:build e2e

package e2e

import (
	"archive/tar"
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qbo/qbo/mirror"
)

// The runtime tests drive real instances through the CLI and check the
// host dockerd independently with the docker CLI, by label.

const labelPrefix = "dev.qbo."

// runtimeDaemon is a qbod whose instance network is private to the test,
// so that it cannot meet another qbod's. runtimeSettings are more
// "key: value" lines of its runtime: section.
func runtimeDaemon(t *testing.T, runtimeSettings ...string) *daemon {
	t.Helper()
	d := newDaemon(t)
	s := randomSuffix()[:6]
	cfg := filepath.Join(t.TempDir(), "qbod.yaml")
	yaml := fmt.Sprintf("runtime:\n  network: qbo-e2e-%s\n  bridge: qboe2e%s\n  subnet: 10.213.%d.0/24\n", s, s, 100+int(s[0])%100)
	for _, kv := range runtimeSettings {
		yaml += "  " + kv + "\n"
	}
	if err := os.WriteFile(cfg, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	d.extra = []string{"--config", cfg}
	net := "qbo-e2e-" + s
	t.Cleanup(func() {
		if out, _ := exec.Command("docker", "network", "ls", "-q", "--filter", "name=^"+net+"$").Output(); len(bytes.TrimSpace(out)) > 0 {
			t.Errorf("network %s left behind", net)
			exec.Command("docker", "network", "rm", net).Run()
		}
	})
	return d
}

// labelled lists what the host dockerd holds with this label, by kind.
func labelled(t *testing.T, label string) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for kind, args := range map[string][]string{
		"container": {"ps", "-a", "--format", "{{.Names}}"},
		"volume":    {"volume", "ls", "--format", "{{.Name}}"},
		"network":   {"network", "ls", "--format", "{{.Name}}"},
	} {
		b, err := exec.Command("docker", append(args, "--filter", "label="+label)...).Output()
		if err != nil {
			t.Fatalf("docker %v: %v", args, err)
		}
		if s := strings.Fields(string(b)); len(s) > 0 {
			out[kind] = s
		}
	}
	return out
}

// forgetInstance removes, by label, whatever of an instance a failed test
// left, and reports it.
func forgetInstance(t *testing.T, d *daemon, name string) {
	t.Cleanup(func() {
		left := labelled(t, labelPrefix+"instance="+name)
		for _, c := range left["container"] {
			exec.Command("docker", "rm", "-f", "-v", c).Run()
		}
		for _, v := range left["volume"] {
			exec.Command("docker", "volume", "rm", "-f", v).Run()
		}
		if len(left) > 0 && !t.Failed() {
			t.Errorf("instance %s left %v", name, left)
		}
		os.RemoveAll(filepath.Join(d.stateDir, "instances", name))
	})
}

// busyboxImage imports a busybox image into the host dockerd and saves it
// to a tar, which the test loads into instances; both go at clean-up.
func busyboxImage(t *testing.T) (string, string) {
	t.Helper()
	ref := "qbo-e2e-busybox:" + randomSuffix()
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatalf("busybox-static is needed: %v", err)
	}
	var rootfs bytes.Buffer
	tw := tar.NewWriter(&rootfs)
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "bin/", Mode: 0o755})
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "bin/busybox", Mode: 0o755, Size: int64(len(bb))})
	tw.Write(bb)
	for _, a := range []string{"sh", "echo", "sleep"} {
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + a, Linkname: "busybox"})
	}
	tw.Close()
	cmd := exec.Command("docker", "import", "--change", "LABEL "+labelPrefix+"managed=true", "-", ref)
	cmd.Stdin = &rootfs
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("docker import: %v\n%s", err, out)
	}
	t.Cleanup(func() { exec.Command("docker", "rmi", "-f", ref).Run() })
	path := filepath.Join(t.TempDir(), "busybox.tar")
	run(t, "docker", "save", "-o", path, ref)
	return ref, path
}

type instanceObj struct {
	Name       string `json:"name"`
	Status     string `json:"status"`
	Address    string `json:"address"`
	HostVeth   string `json:"host_veth"`
	Socket     string `json:"socket"`
	Containers []struct {
		Name  string `json:"name"`
		State string `json:"state"`
	} `json:"containers"`
}

func TestInstanceEndToEnd(t *testing.T) {
	d := runtimeDaemon(t)
	d.start()
	name := "e2e-" + randomSuffix()
	forgetInstance(t, d, name)
	ref, tarPath := busyboxImage(t)
	w := d.watch("instances")
	wc := d.watch("containers")
	before := sysctls(t)

	out, stderr, code := d.qbo("add", "instance", name, "--cpus", "1", "--memory", "512m", "-o", "json")
	if code != 0 {
		t.Fatalf("add instance: exit %d\n%s", code, stderr)
	}
	var inst instanceObj
	if err := json.Unmarshal([]byte(out), &inst); err != nil {
		t.Fatalf("add instance printed %q: %v", out, err)
	}
	if inst.Status != "ready" || inst.Address == "" || inst.HostVeth == "" {
		t.Fatalf("add instance: %+v", inst)
	}
	if _, err := os.Stat("/sys/class/net/" + inst.HostVeth); err != nil {
		t.Errorf("host veth %s: %v", inst.HostVeth, err)
	}
	if fi, err := os.Stat(inst.Socket); err != nil || fi.Mode()&os.ModeSocket == 0 {
		t.Errorf("inner dockerd socket %s: %v", inst.Socket, err)
	}

	// The host's containers mirror shows the instance's container as such.
	wc.waitFor("the instance's container", 30*time.Second, func(m mirror.Message) bool {
		var c struct {
			Instance string `json:"instance"`
			State    string `json:"state"`
		}
		return m.Type == mirror.TypeDelta && m.Key == "qbo-"+name && json.Unmarshal(m.Object, &c) == nil &&
			c.Instance == name && c.State == "running"
	})

	if _, stderr, code := d.qbo("load", "image", name, tarPath); code != 0 {
		t.Fatalf("load image: exit %d\n%s", code, stderr)
	}
	// --pull never: a nested run must never reach for a registry.
	out, stderr, code = d.qbo("exec", name, "--", "docker", "run", "--pull", "never", "--name", "hello", ref, "echo", "hello from a nested container")
	if code != 0 || out != "hello from a nested container\n" {
		t.Fatalf("nested run: exit %d, stdout %q\n%s", code, out, stderr)
	}
	after := sysctls(t)
	compareSysctls(t, before, after)
	// The observer sees the nested container inside the instance (inner
	// dockerd events are hints for a re-list).
	w.waitFor("the nested container in the instance", 30*time.Second, func(m mirror.Message) bool {
		var o instanceObj
		if m.Type != mirror.TypeDelta || m.Key != name || json.Unmarshal(m.Object, &o) != nil {
			return false
		}
		for _, c := range o.Containers {
			if c.Name == "hello" {
				return true
			}
		}
		return false
	})

	// The processes mirror places a process run in the instance there.
	wp := d.watch("processes")
	if _, stderr, code := d.qbo("exec", name, "--", "sleep", "1"); code != 0 {
		t.Fatalf("exec sleep: exit %d\n%s", code, stderr)
	}
	wp.waitFor("sleep placed in the instance", 30*time.Second, func(m mirror.Message) bool {
		var p struct {
			Comm, Instance, Container string
		}
		return m.Type == mirror.TypeDelta && m.Cause == "exec" && json.Unmarshal(m.Object, &p) == nil &&
			p.Comm == "sleep" && p.Instance == name && p.Container != ""
	})

	if _, stderr, code := d.qbo("delete", "instance", name); code != 0 {
		t.Fatalf("delete instance: exit %d\n%s", code, stderr)
	}
	if left := labelled(t, labelPrefix+"instance="+name); len(left) > 0 {
		t.Errorf("delete left %v", left)
	}
	if left := labelled(t, labelPrefix+"managed=true"); len(left["network"]) > 0 || len(left["container"]) > 0 {
		t.Errorf("delete left managed objects %v", left)
	}
	if _, err := os.Stat(filepath.Dir(inst.Socket)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket dir %s left: %v", filepath.Dir(inst.Socket), err)
	}

	// The observer saw it appear, become ready, run a container, and go,
	// in that order.
	w.waitFor("the instance's deletion", 30*time.Second, func(m mirror.Message) bool {
		return m.Type == mirror.TypeDelta && m.Key == name && m.Op == mirror.OpDelete
	})
	var order []string
	seen := func(ev string) {
		if len(order) == 0 || order[len(order)-1] != ev {
			order = append(order, ev)
		}
	}
	for _, m := range w.seen {
		if m.Type == mirror.TypeDelta && m.Key == name {
			handleDelta(t, m, seen)
		}
	}
	want := []string{"appeared", "ready", "container", "deleted"}
	if got := firstOccurrences(order); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("observer saw %v, want first occurrences %v in that order", order, want)
	}
}

// handleDelta turns a delta of the instances mirror into the events the
// end-to-end test orders.
func handleDelta(t *testing.T, m mirror.Message, seen func(string)) {
	if m.Op == mirror.OpDelete {
		seen("deleted")
		return
	}
	var o instanceObj
	if err := json.Unmarshal(m.Object, &o); err != nil {
		t.Fatalf("instance object %s: %v", m.Object, err)
	}
	seen("appeared")
	if o.Status == "ready" {
		seen("ready")
	}
	for _, c := range o.Containers {
		if c.Name == "hello" {
			seen("container")
		}
	}
}

// firstOccurrences keeps the first occurrence of each event, in the order
// they happened.
func firstOccurrences(order []string) []string {
	var got []string
	have := map[string]bool{}
	for _, e := range order {
		if !have[e] {
			have[e] = true
			got = append(got, e)
		}
	}
	return got
}

// sysctls reads every host sysctl.
func sysctls(t *testing.T) map[string]string {
	t.Helper()
	out, err := exec.Command("sysctl", "-a").Output() // a few keys are unreadable by design (stable_secret); their errors go to stderr
	if len(out) == 0 {
		t.Fatalf("sysctl -a: %v", err)
	}
	m := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), " = "); ok {
			m[k] = v
		}
	}
	return m
}

// volatileSysctls change by themselves while anything runs on the host;
// they are counters or fresh values, not settings.
var volatileSysctls = map[string]string{
	"fs.dentry-state":                   "dentry cache counters",
	"fs.file-nr":                        "open file handles",
	"fs.inode-nr":                       "inode counters",
	"fs.inode-state":                    "inode counters",
	"fs.aio-nr":                         "in-flight AIO requests",
	"fs.quota.syncs":                    "quota sync counter",
	"kernel.ns_last_pid":                "last PID handed out",
	"kernel.random.uuid":                "a fresh UUID on every read",
	"kernel.random.entropy_avail":       "entropy estimate",
	"kernel.pty.nr":                     "open pseudo-terminals",
	"net.netfilter.nf_conntrack_count":  "tracked connections",
	"kernel.perf_event_max_sample_rate": "lowered by the kernel itself when perf interrupts run long",
}

// ifaceKey matches sysctls that belong to one network interface.
var ifaceKey = regexp.MustCompile(`^net\.(ipv4|ipv6)\.(conf|neigh)\.([^.]+)\.`)

// compareSysctls fails on any setting that changed. Allowed: the volatile
// counters above, and the per-interface keys of interfaces that exist in
// only one snapshot (the instance's bridge and veth appear; other tests on
// the machine add and remove their own). Keys of interfaces present in both,
// including "all" and "default", must not change.
func compareSysctls(t *testing.T, before, after map[string]string) {
	t.Helper()
	ifaces := func(m map[string]string) map[string]bool {
		s := map[string]bool{}
		for k := range m {
			if g := ifaceKey.FindStringSubmatch(k); g != nil {
				s[g[3]] = true
			}
		}
		return s
	}
	ib, ia := ifaces(before), ifaces(after)
	transient := func(k string) bool {
		g := ifaceKey.FindStringSubmatch(k)
		return g != nil && !(ib[g[3]] && ia[g[3]])
	}
	for k, v := range before {
		if _, ok := volatileSysctls[k]; ok || transient(k) {
			continue
		}
		if w, ok := after[k]; !ok {
			t.Errorf("sysctl %s disappeared", k)
		} else if w != v {
			t.Errorf("sysctl %s changed: %q -> %q", k, v, w)
		}
	}
	for k := range after {
		if _, ok := before[k]; !ok && !transient(k) {
			t.Errorf("sysctl %s appeared", k)
		}
	}
}

// TestInstanceKilledMidCreate kills qbod right after dockerd reports the
// volume, or the container, of a new instance, restarts it, and checks the
// instance is either complete or entirely gone.
func TestInstanceKilledMidCreate(t *testing.T) {
	for _, step := range []string{"volume", "container"} {
		t.Run("after-"+step, func(t *testing.T) { killMidCreate(t, step) })
	}
}

func killMidCreate(t *testing.T, step string) {
	d := runtimeDaemon(t)
	d.start()
	name := "e2e-kill-" + randomSuffix()
	forgetInstance(t, d, name)

	// Volume events carry no labels: those are matched by name.
	filter := []string{"--filter", "type=container", "--filter", "label=" + labelPrefix + "instance=" + name}
	if step == "volume" {
		filter = []string{"--filter", "type=volume", "--filter", "volume=qbo-" + name + "-docker"}
	}
	// --since replays from dockerd's buffer whatever happened before the
	// subscription was in place, so the event cannot be missed.
	now := time.Now()
	since := fmt.Sprintf("%d.%09d", now.Unix(), now.Nanosecond())
	events := exec.Command("docker", append(append([]string{"events", "--since", since}, filter...), "--format", "{{.Type}} {{.Action}}")...)
	evOut, err := events.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := events.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { events.Process.Kill(); events.Wait() })
	add := exec.Command(filepath.Join(binDir, "qbo"), "--socket", d.socket, "add", "instance", name)
	var addOut bytes.Buffer
	add.Stdout, add.Stderr = &addOut, &addOut
	if err := add.Start(); err != nil {
		t.Fatal(err)
	}
	// If qbo add ends without the event (it failed early), end the events
	// stream too, so the test fails instead of waiting forever.
	addDone := make(chan struct{})
	go func() { add.Wait(); close(addDone); events.Process.Kill() }()
	sc := bufio.NewScanner(evOut)
	if !sc.Scan() {
		<-addDone
		t.Fatalf("no %s event before qbo add ended: %v; qbo add said %s", step, sc.Err(), addOut.String())
	}
	d.stop(syscall.SIGKILL)
	<-addDone
	t.Logf("killed qbod after %q; qbo add said %q; left behind: %v", sc.Text(), strings.TrimSpace(addOut.String()), labelled(t, labelPrefix+"instance="+name))

	d.start()
	waitRecovery(t, d)
	left := labelled(t, labelPrefix+"instance="+name)
	switch {
	case len(left["container"]) == 1:
		// Completed: its dockerd answers and it is ready.
		if out, stderr, code := d.qbo("exec", name, "--", "docker", "version", "--format", "{{.Server.Version}}"); code != 0 {
			t.Fatalf("completed instance does not answer: exit %d %s %s", code, out, stderr)
		}
		if _, stderr, code := d.qbo("delete", "instance", name); code != 0 {
			t.Fatalf("delete: exit %d %s", code, stderr)
		}
		t.Log("recovery completed the instance")
	case len(left) == 0:
		if _, err := os.Stat(filepath.Join(d.stateDir, "instances", name)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("socket dir of a removed instance left: %v", err)
		}
		if _, _, code := d.qbo("get", "instances", name); code != 5 {
			t.Errorf("get instances %s: exit %d, want 5 (not found)", name, code)
		}
		t.Log("recovery removed the half-made instance")
	default:
		t.Fatalf("half-made instance after recovery: %v", left)
	}
	if left := labelled(t, labelPrefix+"instance="+name); len(left) > 0 {
		t.Errorf("left behind: %v", left)
	}
}

// waitRecovery waits until qbod reports its start-up recovery done.
func waitRecovery(t *testing.T, d *daemon) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	for {
		out, _, code := d.qbo("status", "-o", "json")
		var st struct {
			Systems map[string]struct {
				Recovery *json.RawMessage `json:"recovery"`
				Error    string           `json:"error"`
			} `json:"systems"`
		}
		if code == 0 && json.Unmarshal([]byte(out), &st) == nil {
			if rt := st.Systems["runtime"]; rt.Error != "" {
				t.Fatalf("runtime subsystem: %s", rt.Error)
			} else if rt.Recovery != nil {
				t.Logf("recovery: %s", *rt.Recovery)
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("qbod did not finish its recovery within 90s: %s", out)
		}
		select {
		case <-d.done:
			t.Fatalf("qbod exited: %s", d.log)
		case <-time.After(100 * time.Millisecond): // poll interval, not a synchronisation
		}
	}
}

func TestInstanceErrors(t *testing.T) {
	d := runtimeDaemon(t)
	d.start()
	name := "e2e-err-" + randomSuffix()
	forgetInstance(t, d, name)
	cases := []struct {
		args []string
		code int
		msg  string
	}{
		{[]string{"add", "instance", "Not_A_Name"}, 2, "instance name"},
		{[]string{"add", "instance", name, "--cpus", "9999"}, 2, "cpus"},
		{[]string{"add", "instance", name, "--memory", "1k"}, 2, "at least 64MiB"},
		{[]string{"add", "instance", name, "--memory", "900t"}, 2, "the host has"},
		{[]string{"add", "instance", name, "--memory", "lots"}, 2, "size"},
		{[]string{"add", "instance", name, "--image", "qbo-e2e-missing:" + randomSuffix()}, 5, "never pull"},
		// No GPU driver on this host: validation passes, start fails,
		// creation rolls back.
		{[]string{"add", "instance", name, "--gpus", "1"}, 1, "device driver"},
		{[]string{"get", "instances", name}, 5, "not found"},
		{[]string{"delete", "instance", name}, 5, "not found"},
		{[]string{"exec", name, "--", "true"}, 5, "not found"},
		{[]string{"load", "image", name, "/etc/hostname"}, 5, "not found"},
		{[]string{"load", "image", name, "/nonexistent.tar"}, 5, "not found"},
		{[]string{"build", "image", "kubernetes"}, 2, "only image"},
	}
	for _, c := range cases {
		_, stderr, code := d.qbo(c.args...)
		if code != c.code || !strings.Contains(stderr, c.msg) {
			t.Errorf("qbo %s: exit %d %q, want exit %d mentioning %q", strings.Join(c.args, " "), code, stderr, c.code, c.msg)
		}
	}
	if left := labelled(t, labelPrefix+"instance="+name); len(left) > 0 {
		t.Errorf("failed commands left %v", left)
	}
	if left := labelled(t, labelPrefix+"role=network"); len(left) > 0 {
		t.Errorf("failed commands left networks %v", left)
	}
	if _, err := os.Stat(filepath.Join(d.stateDir, "instances", name)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket dir left: %v", err)
	}
}
