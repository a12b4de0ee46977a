//go:build integration

package engine

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"testing"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/opencontainers/runtime-spec/specs-go"
)

func TestDockerNegotiates(t *testing.T) {
	c, err := Docker(context.Background(), DefaultDockerHost)
	if err != nil {
		t.Fatalf("the integration tier needs the host dockerd (scripts/engines.sh start): %v", err)
	}
	defer c.Close()
	if v := c.ClientVersion(); v == "" || v > "1.99" {
		t.Errorf("negotiated API version %q", v)
	}
}

// TestContainerd lists and watches a container made directly in containerd
// (outside dockerd's namespace), through the classic services only.
func TestContainerd(t *testing.T) {
	ctx := context.Background()
	c, err := Containerd(ctx, DefaultContainerdAddress)
	if err != nil {
		t.Fatalf("the integration tier needs the host containerd (scripts/engines.sh start): %v", err)
	}
	t.Cleanup(func() { c.Close() }) // registered first: runs last
	b := make([]byte, 4)
	rand.Read(b)
	ns, id := "qbo-it-"+hex.EncodeToString(b), "probe"
	nctx := namespaces.WithNamespace(ctx, ns)
	t.Cleanup(func() {
		if ctr, err := c.LoadContainer(nctx, id); err == nil {
			ctr.Delete(nctx)
		}
		if err := c.NamespaceService().Delete(ctx, ns); err != nil {
			t.Errorf("removing namespace %s: %v", ns, err)
		}
	})

	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	hinted := make(chan struct{}, 1)
	watching := make(chan error, 1)
	go func() {
		watching <- WatchContainerd(wctx, c, func() {
			select {
			case hinted <- struct{}{}:
			default:
			}
		})
	}()
	// The subscription is in place once containerd has accepted it; a
	// create event before that would be missed, so create, and if no hint
	// comes, the listing below still proves the container is seen.
	_, err = c.NewContainer(nctx, id,
		containerd.WithSpec(&specs.Spec{Version: specs.Version}),
		containerd.WithRuntime("io.containerd.runc.v2", nil),
		containerd.WithContainerLabels(map[string]string{LabelManaged: "true"}))
	if err != nil {
		t.Fatal(err)
	}
	list, err := ContainerdContainers(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, ct := range list {
		if ct.Namespace == DockerNamespace {
			t.Errorf("dockerd's namespace listed: %+v", ct)
		}
		// No task yet: only metadata, state "created".
		if ct.Namespace == ns && ct.ID == id && ct.Labels[LabelManaged] == "true" && ct.Runtime == "io.containerd.runc.v2" && ct.State == NoTask {
			found = true
		}
	}
	if !found {
		t.Fatalf("container %s/%s not listed in %+v", ns, id, list)
	}
	ctr, err := c.LoadContainer(nctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if err := ctr.Delete(nctx); err != nil {
		t.Fatal(err)
	}
	// Events are hints: the subscription may not have been in place for
	// the first ones. Make more (create and delete a container) until one
	// is seen; containerd gives no signal that a subscription is live.
	for i := 0; ; i++ {
		select {
		case <-hinted:
			return
		case err := <-watching:
			t.Fatalf("watch ended: %v", err)
		default:
		}
		if i == 1000 {
			t.Fatal("no containerd event reached the watcher after 1000 container creations")
		}
		ctr, err := c.NewContainer(nctx, id, containerd.WithSpec(&specs.Spec{Version: specs.Version}),
			containerd.WithRuntime("io.containerd.runc.v2", nil))
		if err != nil {
			t.Fatal(err)
		}
		if err := ctr.Delete(nctx); err != nil {
			t.Fatal(err)
		}
	}
}
