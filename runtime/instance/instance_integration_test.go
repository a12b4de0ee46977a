//go:build integration

package instance

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"

	"github.com/qbo/qbo/runtime/engine"
)

func suffix() string {
	b := make([]byte, 3)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// newManager connects to the host dockerd (it must run: make test starts it)
// and gives the test a network of its own, removed at the end.
func newManager(t *testing.T) (*Manager, *client.Client) {
	t.Helper()
	ctx := context.Background()
	docker, err := engine.Docker(ctx, engine.DefaultDockerHost)
	if err != nil {
		t.Fatalf("the integration tier needs the host dockerd (scripts/engines.sh start): %v", err)
	}
	t.Cleanup(func() { docker.Close() })
	s := suffix()
	cfg := DefaultConfig(t.TempDir())
	cfg.Network, cfg.Bridge = "qbo-it-"+s, "qboit"+s
	cfg.Subnet = netip.MustParsePrefix("10.213.250.0/24")
	m := New(docker, cfg, nil)
	t.Cleanup(func() {
		if _, err := docker.NetworkRemove(context.Background(), cfg.Network, client.NetworkRemoveOptions{}); err == nil {
			t.Errorf("network %s was left behind", cfg.Network)
		}
	})
	return m, docker
}

// assertGone checks by label that nothing of instance name is left, and
// removes what is (so a failure does not leak).
func assertGone(t *testing.T, m *Manager, docker *client.Client, name string) {
	t.Helper()
	ctx := context.Background()
	f := m.managed(engine.LabelInstance + "=" + name)
	cl, err := docker.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: f})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cl.Items {
		t.Errorf("container %v of %s left behind", c.Names, name)
		docker.ContainerRemove(ctx, c.ID, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true})
	}
	vl, err := docker.VolumeList(ctx, client.VolumeListOptions{Filters: f})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vl.Items {
		t.Errorf("volume %s of %s left behind", v.Name, name)
		docker.VolumeRemove(ctx, v.Name, client.VolumeRemoveOptions{Force: true})
	}
	if _, err := os.Stat(m.SocketDir(name)); err == nil {
		t.Errorf("socket dir %s left behind", m.SocketDir(name))
		os.RemoveAll(m.SocketDir(name))
	}
}

// busyboxTar imports a one-binary busybox image into dockerd c under ref
// and returns the path of its `docker save` tar.
func busyboxTar(t *testing.T, c *client.Client, ref string) string {
	t.Helper()
	ctx := context.Background()
	var rootfs bytes.Buffer
	tw := tar.NewWriter(&rootfs)
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatalf("busybox-static is needed: %v", err)
	}
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: "bin/", Mode: 0o755})
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "bin/busybox", Mode: 0o755, Size: int64(len(bb))})
	tw.Write(bb)
	tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/sh", Linkname: "busybox"})
	tw.Close()
	body, err := c.ImageImport(ctx, client.ImageImportSource{Source: &rootfs, SourceName: "-"}, ref,
		client.ImageImportOptions{Changes: []string{`LABEL ` + engine.LabelManaged + `=true`, `ENTRYPOINT ["/bin/busybox"]`}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := engine.DrainMessages(body); err != nil {
		t.Fatal(err)
	}
	body.Close()
	t.Cleanup(func() { c.ImageRemove(context.Background(), ref, client.ImageRemoveOptions{Force: true}) })
	r, err := c.ImageSave(ctx, []string{ref})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	path := filepath.Join(t.TempDir(), "busybox.tar")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := io.Copy(f, r); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestLifecycle(t *testing.T) {
	m, docker := newManager(t)
	ctx := context.Background()
	name := "it-" + suffix()
	t.Cleanup(func() { m.Delete(context.Background(), name); assertGone(t, m, docker, name) })

	inst, err := m.Create(ctx, Spec{Name: name, CPUs: 1, Memory: 512 << 20})
	if err != nil {
		t.Fatal(err)
	}
	if inst.Status != StatusReady || inst.Address == "" || inst.HostVeth == "" || inst.CPUs != 1 || inst.Memory != 512<<20 {
		t.Fatalf("created instance: %+v", inst)
	}
	if !m.cfg.Subnet.Contains(netip.MustParseAddr(inst.Address)) {
		t.Errorf("address %s outside %s", inst.Address, m.cfg.Subnet)
	}
	if _, err := os.Stat("/sys/class/net/" + inst.HostVeth); err != nil {
		t.Errorf("host veth %s: %v", inst.HostVeth, err)
	}
	if _, err := m.Create(ctx, Spec{Name: name}); !errors.Is(err, engine.ErrExists) {
		t.Errorf("second create: %v, want ErrExists", err)
	}

	// Exec runs in the instance.
	res, err := m.Exec(ctx, name, []string{"sh", "-c", "echo out; echo err >&2; exit 3"})
	if err != nil || res.ExitCode != 3 || res.Stdout != "out\n" || res.Stderr != "err\n" {
		t.Fatalf("exec: %+v, %v", res, err)
	}

	// Load a busybox image and run a nested container that prints a line.
	ref := "qbo-it-busybox:" + suffix()
	path := busyboxTar(t, docker, ref)
	loaded, err := m.LoadImage(ctx, name, path)
	if err != nil || len(loaded) != 1 || loaded[0] != ref {
		t.Fatalf("load image: %v, %v", loaded, err)
	}
	inner, err := m.Inner(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	out := runNested(t, inner, ref, "nested", "echo", "hello from nested")
	if out != "hello from nested\n" {
		t.Fatalf("nested output %q", out)
	}
	got, err := m.Get(ctx, name)
	if err != nil || len(got.Containers) != 1 || got.Containers[0].Name != "nested" {
		t.Fatalf("inner containers: %+v, %v", got.Containers, err)
	}

	// The instance's own processes are attributed to it.
	a, err := m.Attribute(got.PID)
	if err != nil || a.Instance != name || a.Container != got.ID {
		t.Errorf("attribute pid %d: %+v, %v", got.PID, a, err)
	}
	// So are those of a nested container: on the host its cgroup reads
	// /docker/OUTER/docker/INNER.
	sleeper, err := inner.ContainerCreate(ctx, client.ContainerCreateOptions{Name: "sleeper", Config: &container.Config{Image: ref, Cmd: []string{"sleep", "300"}}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := inner.ContainerStart(ctx, sleeper.ID, client.ContainerStartOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := m.List(ctx); err != nil { // attribution uses the last list
		t.Fatal(err)
	}
	pid := hostPIDIn(t, "/docker/"+got.ID+"/docker/"+sleeper.ID)
	a, err = m.Attribute(pid)
	if err != nil || a.Instance != name || a.Container != got.ID || a.Nested != "sleeper" {
		t.Errorf("attribute nested pid %d: %+v, %v", pid, a, err)
	}

	if err := m.Delete(ctx, name); err != nil {
		t.Fatal(err)
	}
	assertGone(t, m, docker, name)
	if err := m.Delete(ctx, name); !errors.Is(err, engine.ErrNotFound) {
		t.Errorf("second delete: %v, want ErrNotFound", err)
	}
}

// runNested runs a container in the inner dockerd and returns its output.
func runNested(t *testing.T, c *client.Client, ref, name string, argv ...string) string {
	t.Helper()
	ctx := context.Background()
	cr, err := c.ContainerCreate(ctx, client.ContainerCreateOptions{Name: name, Config: &container.Config{Image: ref, Cmd: argv}})
	if err != nil {
		t.Fatal(err)
	}
	wait := c.ContainerWait(ctx, cr.ID, client.ContainerWaitOptions{Condition: container.WaitConditionNextExit})
	if _, err := c.ContainerStart(ctx, cr.ID, client.ContainerStartOptions{}); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-wait.Result:
		if r.StatusCode != 0 {
			t.Fatalf("nested container exited %d", r.StatusCode)
		}
	case err := <-wait.Error:
		t.Fatal(err)
	}
	logs, err := c.ContainerLogs(ctx, cr.ID, client.ContainerLogsOptions{ShowStdout: true, ShowStderr: true})
	if err != nil {
		t.Fatal(err)
	}
	defer logs.Close()
	var out bytes.Buffer
	stdcopy.StdCopy(&out, &out, logs)
	return out.String()
}

func TestInvalidCreatesNothing(t *testing.T) {
	m, docker := newManager(t)
	ctx := context.Background()
	name := "it-" + suffix()
	cases := []struct {
		spec Spec
		want error
		msg  string
	}{
		{Spec{Name: "Bad_Name"}, engine.ErrInvalid, "instance name"},
		{Spec{Name: strings.Repeat("a", 40)}, engine.ErrInvalid, "instance name"},
		{Spec{Name: name, CPUs: 4096}, engine.ErrInvalid, "cpus"},
		{Spec{Name: name, Memory: 1 << 10}, engine.ErrInvalid, "at least 64MiB"},
		{Spec{Name: name, Memory: 1 << 50}, engine.ErrInvalid, "the host has"},
		{Spec{Name: name, GPUs: -2}, engine.ErrInvalid, "gpus"},
		{Spec{Name: name, Image: "qbo-no-such-image:" + suffix()}, engine.ErrNotFound, "never pull"},
	}
	for _, c := range cases {
		_, err := m.Create(ctx, c.spec)
		if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("create %+v: %v, want %v mentioning %q", c.spec, err, c.want, c.msg)
		}
		assertGone(t, m, docker, c.spec.Name)
	}
	// A GPU request passes validation but no GPU driver exists here: the
	// start step fails and everything is rolled back.
	_, err := m.Create(ctx, Spec{Name: name, GPUs: 1})
	if err == nil || !strings.Contains(err.Error(), "start") {
		t.Errorf("create with --gpus 1 on a host without GPUs: %v", err)
	}
	assertGone(t, m, docker, name)
	// A volume of that name that is not ours (another qbod's, or a user's):
	// creation refuses, and leaves it alone.
	foreign := "it-foreign-" + suffix()
	if _, err := docker.VolumeCreate(ctx, client.VolumeCreateOptions{Name: volumeName(foreign)}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		docker.VolumeRemove(context.Background(), volumeName(foreign), client.VolumeRemoveOptions{Force: true})
	})
	if _, err := m.Create(ctx, Spec{Name: foreign}); !errors.Is(err, engine.ErrExists) {
		t.Errorf("create over a foreign volume: %v, want ErrExists", err)
	}
	if _, err := docker.VolumeInspect(ctx, volumeName(foreign), client.VolumeInspectOptions{}); err != nil {
		t.Errorf("the foreign volume is gone: %v", err)
	}
	if err := m.Delete(ctx, "it-unknown-"+suffix()); !errors.Is(err, engine.ErrNotFound) {
		t.Errorf("delete unknown: %v", err)
	}
	if _, err := m.Exec(ctx, "it-unknown-"+suffix(), []string{"true"}); !errors.Is(err, engine.ErrNotFound) {
		t.Errorf("exec unknown: %v", err)
	}
}

// TestRecover leaves what a qbod killed at two different steps would, and
// checks Recover completes the one with a container and removes the other.
func TestRecover(t *testing.T) {
	m, docker := newManager(t)
	ctx := context.Background()
	half, made := "it-half-"+suffix(), "it-made-"+suffix()
	t.Cleanup(func() {
		m.Delete(context.Background(), made)
		assertGone(t, m, docker, half)
		assertGone(t, m, docker, made)
	})
	ref, err := m.resolveImage(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	// Killed after the volume step.
	os.MkdirAll(m.SocketDir(half), 0o700)
	if _, err := docker.VolumeCreate(ctx, client.VolumeCreateOptions{Name: volumeName(half), Labels: m.labels(half, engine.RoleStorage)}); err != nil {
		t.Fatal(err)
	}
	// Killed after the container step, before start.
	os.MkdirAll(m.SocketDir(made), 0o700)
	if _, err := docker.VolumeCreate(ctx, client.VolumeCreateOptions{Name: volumeName(made), Labels: m.labels(made, engine.RoleStorage)}); err != nil {
		t.Fatal(err)
	}
	if err := m.ensureNetwork(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := m.createContainer(ctx, Spec{Name: made}, ref); err != nil {
		t.Fatal(err)
	}
	rec, err := m.Recover(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !contains(rec.Removed, half) || !contains(rec.Completed, made) {
		t.Fatalf("recovery %+v", rec)
	}
	assertGone(t, m, docker, half)
	inst, err := m.Get(ctx, made)
	if err != nil || inst.Status != StatusReady {
		t.Fatalf("completed instance: %+v, %v", inst, err)
	}
	if err := m.Delete(ctx, made); err != nil {
		t.Fatal(err)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

var _ = time.Second

// hostPIDIn finds a host process whose cgroup (every hierarchy on this host
// carries the same docker path) ends with path.
func hostPIDIn(t *testing.T, path string) int {
	t.Helper()
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cgroup")
		if err == nil && strings.Contains(string(b), path+"\n") {
			return pid
		}
	}
	t.Fatalf("no host process in cgroup %s", path)
	return 0
}
