//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
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
	w.waitFor("the containerd container", 60*time.Second, func(m mirror.Message) bool {
		var o struct {
			Engine    string `json:"engine"`
			Namespace string `json:"namespace"`
		}
		return m.Type == mirror.TypeDelta && m.Op == mirror.OpUpsert && m.Key == key &&
			json.Unmarshal(m.Object, &o) == nil && o.Engine == "containerd" && o.Namespace == ns
	})
	if err := ctr.Delete(nctx); err != nil {
		t.Fatal(err)
	}
	w.waitFor("the containerd container's removal", 60*time.Second, func(m mirror.Message) bool {
		return m.Type == mirror.TypeDelta && m.Op == mirror.OpDelete && m.Key == key
	})
}
