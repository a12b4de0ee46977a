//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/cio"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	"github.com/opencontainers/runtime-spec/specs-go"

	"github.com/qbo/qbo/mirror"
)

// TestContainersMirrorSeesContainerd makes a container directly in
// containerd (no dockerd, a namespace of its own, metadata only) and checks
// the containers mirror shows it and then drops it: containerd events and
// lists feed the mirror as Docker's do.
func TestContainersMirrorSeesContainerd(t *testing.T) {
	d := runtimeDaemon(t)
	d.start()
	w := d.watch("containers")

	ctx := context.Background()
	c, err := containerd.New("/run/containerd/containerd.sock")
	if err != nil {
		t.Fatalf("containerd (scripts/engines.sh start): %v", err)
	}
	t.Cleanup(func() { c.Close() })
	ns, id := "qbo-e2e-"+randomSuffix(), "probe"
	nctx := namespaces.WithNamespace(ctx, ns)
	t.Cleanup(func() {
		if ctr, err := c.LoadContainer(nctx, id); err == nil {
			ctr.Delete(nctx)
		}
		if err := c.NamespaceService().Delete(ctx, ns); err != nil {
			t.Errorf("removing containerd namespace %s: %v", ns, err)
		}
	})
	ctr, err := c.NewContainer(nctx, id, containerd.WithSpec(&specs.Spec{Version: specs.Version}),
		containerd.WithRuntime("io.containerd.runc.v2", nil))
	if err != nil {
		t.Fatal(err)
	}
	key := "containerd/" + ns + "/" + id
	w.waitFor("the containerd container, without a task (state created)", 60*time.Second, func(m mirror.Message) bool {
		var o struct {
			Engine    string `json:"engine"`
			Namespace string `json:"namespace"`
			State     string `json:"state"`
		}
		return m.Type == mirror.TypeDelta && m.Op == mirror.OpUpsert && m.Key == key &&
			json.Unmarshal(m.Object, &o) == nil && o.Engine == "containerd" && o.Namespace == ns && o.State == "created"
	})
	if err := ctr.Delete(nctx); err != nil {
		t.Fatal(err)
	}
	w.waitFor("the containerd container's removal", 60*time.Second, func(m mirror.Message) bool {
		return m.Type == mirror.TypeDelta && m.Op == mirror.OpDelete && m.Key == key
	})
}

// TestContainersMirrorFollowsContainerdTaskState runs a real task in
// containerd (no image: a root filesystem of the host's /usr, read-only)
// and checks the containers mirror follows its state through containerd's
// task events: running, paused, running, stopped, then created again once
// the task is deleted. The resync is pushed past the test's deadlines, so
// only the events can make the changes appear.
func TestContainersMirrorFollowsContainerdTaskState(t *testing.T) {
	d := runtimeDaemon(t, "resync: 10m")
	d.start()
	w := d.watch("containers")

	ctx := context.Background()
	c, err := containerd.New("/run/containerd/containerd.sock")
	if err != nil {
		t.Fatalf("containerd (scripts/engines.sh start): %v", err)
	}
	t.Cleanup(func() { c.Close() })
	ns, id := "qbo-e2e-"+randomSuffix(), "sleeper"
	nctx := namespaces.WithNamespace(ctx, ns)
	t.Cleanup(func() {
		if ctr, err := c.LoadContainer(nctx, id); err == nil {
			if task, err := ctr.Task(nctx, nil); err == nil {
				task.Kill(nctx, syscall.SIGKILL)
				if ch, err := task.Wait(nctx); err == nil {
					<-ch
				}
				task.Delete(nctx)
			}
			ctr.Delete(nctx)
		}
		if err := c.NamespaceService().Delete(ctx, ns); err != nil {
			t.Errorf("removing containerd namespace %s: %v", ns, err)
		}
	})

	// Debian 12 has a merged /usr: bin and lib are links into it.
	rootfs := t.TempDir()
	for _, dir := range []string{"usr", "tmp"} {
		if err := os.Mkdir(filepath.Join(rootfs, dir), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, l := range []string{"bin", "lib", "lib64", "sbin"} {
		if err := os.Symlink("usr/"+l, filepath.Join(rootfs, l)); err != nil {
			t.Fatal(err)
		}
	}
	ctr, err := c.NewContainer(nctx, id, containerd.WithRuntime("io.containerd.runc.v2", nil),
		containerd.WithNewSpec(oci.WithRootFSPath(rootfs), oci.WithProcessArgs("/usr/bin/sleep", "3600"),
			oci.WithMounts([]specs.Mount{{Destination: "/usr", Type: "bind", Source: "/usr", Options: []string{"rbind", "ro"}}})))
	if err != nil {
		t.Fatal(err)
	}
	key := "containerd/" + ns + "/" + id
	waitState := func(want string) {
		t.Helper()
		w.waitFor("state "+want+" of "+key, 20*time.Second, func(m mirror.Message) bool {
			var o struct {
				State string `json:"state"`
			}
			return m.Type == mirror.TypeDelta && m.Op == mirror.OpUpsert && m.Key == key &&
				json.Unmarshal(m.Object, &o) == nil && o.State == want
		})
	}
	waitState("created") // no task yet

	task, err := ctr.NewTask(nctx, cio.NullIO)
	if err != nil {
		t.Fatal(err)
	}
	exited, err := task.Wait(nctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := task.Start(nctx); err != nil {
		t.Fatal(err)
	}
	waitState("running")
	if err := task.Pause(nctx); err != nil {
		t.Fatal(err)
	}
	waitState("paused")
	if err := task.Resume(nctx); err != nil {
		t.Fatal(err)
	}
	waitState("running")
	if err := task.Kill(nctx, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-exited
	waitState("stopped")

	// get containers answers the same, from the mirror.
	out, errOut, code := d.qbo("get", "containers", key, "-o", "json")
	if code != 0 || !strings.Contains(out, `"state": "stopped"`) {
		t.Errorf("get containers %s: exit %d %q %q, want state stopped", key, code, out, errOut)
	}

	if _, err := task.Delete(nctx); err != nil {
		t.Fatal(err)
	}
	waitState("created") // metadata only again
	if err := ctr.Delete(nctx); err != nil {
		t.Fatal(err)
	}
	w.waitFor("the containerd container's removal", 20*time.Second, func(m mirror.Message) bool {
		return m.Type == mirror.TypeDelta && m.Op == mirror.OpDelete && m.Key == key
	})
}
